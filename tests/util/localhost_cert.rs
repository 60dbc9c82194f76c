//! A self-signed certificate for `localhost` (ECDSA P-256) in PEM files, and roots trusting
//! it: for the in-memory TLS tests, `tests/tls_memory.rs` and the unit tests of
//! `src/transport/tls/`, which include this file by its path.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Writes `dir/leaf.pem` and `dir/leaf.key` (`dir` made afresh); returns their paths and
/// the roots.
pub fn localhost_cert(dir: &Path) -> (PathBuf, PathBuf, RootCertStore) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.join("leaf.pem"), dir.join("leaf.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    (cert_file, key_file, roots)
}
