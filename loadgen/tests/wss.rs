//! wss:// in each mode against an in-process wsgate with a TLS listener and a certificate
//! made at test time (rcgen): `--ca FILE` and `--insecure`.

mod util;

use std::path::PathBuf;

use util::*;
use wsgate::config::RawConfig;
use wsgate::server::Server;

struct TlsGateway {
    server: Option<Server>,
    ca: PathBuf,
}

impl TlsGateway {
    fn start(name: &str, tweak: impl FnOnce(&mut RawConfig)) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (ca, key_file) = (tmp(&format!("{name}.pem")), tmp(&format!("{name}.key")));
        std::fs::write(&ca, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let mut raw = RawConfig {
            net: wsgate::config::net::Raw {
                listen: Some(([127, 0, 0, 1], 0).into()),
                threads: Some(2),
                pin: Some(false),
                ..Default::default()
            },
            ..Default::default()
        };
        raw.tls.listen = Some(Some("127.0.0.1:0".into()));
        raw.tls.certs = Some(vec![format!("{}:{}", ca.display(), key_file.display())]);
        tweak(&mut raw);
        let server = Server::start(raw.validate().unwrap()).expect("wsgate starts");
        Self {
            server: Some(server),
            ca,
        }
    }

    fn url(&self, path: &str) -> String {
        let addr = self.server.as_ref().unwrap().tls_addr().unwrap();
        format!("wss://localhost:{}{path}", addr.port())
    }
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown();
        }
    }
}

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = SHORT.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn echo_over_wss_trusting_the_ca() {
    let gw = TlsGateway::start("wss-echo", |_| {});
    let ca = gw.ca.display().to_string();
    let v = loadgen_ok(
        "echo",
        &gw.url("/echo"),
        &args(&["--connections", "10", "--pipeline", "4", "--ca", &ca]),
    );
    assert!(v["received"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(errors_total(&v), 0, "{v}");
}

#[test]
fn fanout_over_wss_insecure() {
    let gw = TlsGateway::start("wss-fanout", |c| {
        c.pubsub.client_publish = Some(vec!["*".into()])
    });
    let v = loadgen_ok(
        "fanout",
        &gw.url("/ws"),
        &args(&["--subscribers", "20", "--rate", "200", "--insecure"]),
    );
    let f = &v["fanout"];
    assert!(f["expected"].as_u64().unwrap() >= 20 * 150, "{v}");
    assert_eq!(f["deliveries"], f["expected"], "{v}");
    assert_eq!(f["lost"], 0, "{v}");
    assert_eq!(errors_total(&v), 0, "{v}");
}

#[test]
fn connect_over_wss_makes_full_handshakes() {
    let gw = TlsGateway::start("wss-connect", |_| {});
    let ca = gw.ca.display().to_string();
    let v = loadgen_ok(
        "connect",
        &gw.url("/echo"),
        &args(&["--rate", "50", "--hold", "100ms", "--ca", &ca]),
    );
    assert!(v["received"].as_u64().unwrap() >= 40, "{v}");
    assert_eq!(errors_total(&v), 0, "{v}");
    let metrics = &gw.server.as_ref().unwrap().shared().metrics;
    let handshakes: u64 = metrics
        .iter()
        .map(|m| wsgate::metrics::ReactorMetrics::get(&m.tls_handshakes))
        .sum();
    assert!(handshakes >= 40, "{handshakes} TLS handshakes");
}

#[test]
fn wss_without_a_ca_or_insecure_is_refused() {
    let (out, _) = loadgen("echo", "wss://localhost:1/echo", &SHORT);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--ca"), "{stderr}");
}
