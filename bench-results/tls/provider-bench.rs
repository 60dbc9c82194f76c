//! ring vs aws-lc-rs: server-side full TLS 1.3 handshake cost and bulk encrypt/decrypt cost.
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};


fn main() {
    let args: Vec<String> = std::env::args().collect();
    let alg_name = args.get(1).map(String::as_str).unwrap_or("ecdsa");
    let alg: &rcgen::SignatureAlgorithm = match alg_name {
        "rsa" => &rcgen::PKCS_RSA_SHA256,
        _ => &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let key = if alg_name == "rsa" {
        let pem = std::fs::read_to_string(args.get(2).expect("rsa key pem")).unwrap();
        rcgen::KeyPair::from_pem_and_sign_algo(&pem, alg).unwrap()
    } else {
        rcgen::KeyPair::generate_for(alg).unwrap()
    };
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_der: CertificateDer<'static> = cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    for (name, provider) in [
        ("ring", rustls::crypto::ring::default_provider()),
        ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider()),
    ] {
        let provider = Arc::new(provider);
        let server = Arc::new(
            ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13]).unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert_der.clone()], key_der.clone_key())
                .unwrap(),
        );
        let mut roots = RootCertStore::empty();
        roots.add(cert_der.clone()).unwrap();
        // Same client provider for both (ring), so only the server side differs.
        let client = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13]).unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let n = 2000;
        let mut server_ns = 0u128;
        let mut buf = Vec::new();
        for _ in 0..n {
            let mut c = ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
            let mut s = ServerConnection::new(server.clone()).unwrap();
            while c.is_handshaking() || s.is_handshaking() {
                buf.clear();
                while c.wants_write() { c.write_tls(&mut buf).unwrap(); }
                let t = Instant::now();
                if !buf.is_empty() { s.read_tls(&mut &buf[..]).unwrap(); s.process_new_packets().unwrap(); }
                buf.clear();
                while s.wants_write() { s.write_tls(&mut buf).unwrap(); }
                server_ns += t.elapsed().as_nanos();
                if !buf.is_empty() { c.read_tls(&mut &buf[..]).unwrap(); c.process_new_packets().unwrap(); }
            }
        }
        let hs_us = server_ns as f64 / n as f64 / 1000.0;
        // Bulk: server encrypts records of `size` plaintext; measure ns per record.
        let mut c = ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            buf.clear(); while c.wants_write() { c.write_tls(&mut buf).unwrap(); }
            if !buf.is_empty() { s.read_tls(&mut &buf[..]).unwrap(); s.process_new_packets().unwrap(); }
            buf.clear(); while s.wants_write() { s.write_tls(&mut buf).unwrap(); }
            if !buf.is_empty() { c.read_tls(&mut &buf[..]).unwrap(); c.process_new_packets().unwrap(); }
        }
        let mut out = Vec::with_capacity(1 << 20);
        let mut line = format!("{name:10} {alg_name}: server handshake {hs_us:.1} us");
        for size in [64usize, 1024, 16384] {
            let data = vec![7u8; size];
            let iters = (64 << 20) / size.max(1024);
            let t = Instant::now();
            for _ in 0..iters {
                s.writer().write_all(&data).unwrap();
                out.clear();
                while s.wants_write() { s.write_tls(&mut out).unwrap(); }
            }
            let ns = t.elapsed().as_nanos() as f64 / iters as f64;
            // decrypt side, on the client (same provider? the client is ring): skip
            line += &format!(", encrypt {size} B {ns:.0} ns ({:.2} GB/s)", size as f64 / ns);
            let _ = c.reader().read(&mut [0u8; 0]);
        }
        println!("{line}");
    }
}
