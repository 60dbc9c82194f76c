use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::SignatureScheme;
use std::time::Instant;

fn bench(name: &str, p: &CryptoProvider, der: &[u8], scheme: SignatureScheme) {
    let key = p.key_provider.load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))).unwrap();
    let signer = key.choose_scheme(&[scheme]).unwrap();
    let msg = [7u8; 130];
    for _ in 0..50 { signer.sign(&msg).unwrap(); }
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n { signer.sign(&msg).unwrap(); }
    println!("{name} {scheme:?}: {:.1} us/sign", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}

fn kx(name: &str, p: &CryptoProvider) {
    for g in p.kx_groups.iter().take(2) {
        let peer = g.start().unwrap();
        let peer_pub = peer.pub_key().to_vec();
        let n = 3000;
        let t = Instant::now();
        for _ in 0..n {
            let k = g.start().unwrap();
            let _ = k.pub_key().len();
            k.complete(&peer_pub).unwrap();
        }
        println!("{name} kx {:?}: {:.1} us", g.name(), t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}

fn main() {
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
    let rsa = match rsa { Ok(k) => k.serialize_der(), Err(_) => {
        // rcgen cannot generate RSA on ring; read from file
        std::fs::read(std::env::args().nth(1).expect("rsa pkcs8 der path")).unwrap()
    }};
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_der();
    let ring = rustls::crypto::ring::default_provider();
    let aws = rustls::crypto::aws_lc_rs::default_provider();
    for _ in 0..3 {
        kx("ring", &ring);
        kx("aws ", &aws);
        bench("ring", &ring, &rsa, SignatureScheme::RSA_PSS_SHA256);
        bench("aws ", &aws, &rsa, SignatureScheme::RSA_PSS_SHA256);
        bench("ring", &ring, &ec, SignatureScheme::ECDSA_NISTP256_SHA256);
        bench("aws ", &aws, &ec, SignatureScheme::ECDSA_NISTP256_SHA256);
    }
}
