//! wss:// end to end on both drivers: a test CA and certificates made at test time (rcgen),
//! rustls + tungstenite as the client; bad certificates, bad first bytes and stalled
//! handshakes; the settings errors of the binary.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};
use util::*;
use wsgate::metrics::ReactorMetrics;

/// A CA and the files of leaf certificates it signed, in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wsgate-tls-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wsgate test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca, ca_key }
    }

    /// Writes `<file>.pem` (leaf then CA) and `<file>.key` for `names`; returns "cert:key".
    fn leaf(&self, file: &str, names: &[&str], expired: bool) -> String {
        self.leaf_of(&rcgen::PKCS_ECDSA_P256_SHA256, file, names, expired)
    }

    /// `leaf` with a key for `alg`.
    fn leaf_of(
        &self,
        alg: &'static rcgen::SignatureAlgorithm,
        file: &str,
        names: &[&str],
        expired: bool,
    ) -> String {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert_file, key_file) = self.files(file);
        std::fs::write(&cert_file, cert.pem() + &self.ca.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        format!("{}:{}", cert_file.display(), key_file.display())
    }

    fn files(&self, file: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        )
    }

    /// A client trusting the test CA (ALPN http/1.1, TLS 1.2 and 1.3 unless `versions`).
    fn client(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
        self.client_on(rustls::crypto::ring::default_provider(), versions)
    }

    /// `client` on `provider`.
    fn client_on(
        &self,
        provider: CryptoProvider,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A gateway with a TLS listener on 127.0.0.1:0 serving `certs`.
fn tls_server(io: wsgate::config::IoBackend, certs: Vec<String>) -> (TestServer, SocketAddr) {
    let server = TestServer::start(io, |raw| {
        raw.tls.listen = Some(Some("127.0.0.1:0".into()));
        raw.tls.certs = Some(certs);
    });
    let addr = server.server().tls_addr().expect("a TLS listener");
    (server, addr)
}

/// A TLS stream to `addr` for `name`, the handshake done.
fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> Result<Tls, std::io::Error> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(TIMEOUT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let conn =
        ClientConnection::new(config, ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

fn wss(addr: SocketAddr, config: Arc<ClientConfig>, path: &str) -> WebSocket<Tls> {
    let tls = tls_connect(addr, config, "localhost").expect("TLS handshake");
    let url = format!("wss://localhost:{}{path}", addr.port());
    match tungstenite::client(url, tls) {
        Ok((ws, _)) => ws,
        Err(e) => panic!("upgrade over TLS failed: {e}"),
    }
}

/// Reads the next message (over TLS or not).
fn recv<S: Read + Write>(ws: &mut WebSocket<S>) -> Message {
    ws.read().expect("a message before the timeout")
}

fn tls_metric(server: &TestServer, f: fn(&ReactorMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    let metrics = &server.server().shared().metrics;
    metrics.iter().map(|m| ReactorMetrics::get(f(m))).sum()
}

/// Reads until the server closes; returns everything read (EOF or reset both count).
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

/// A TCP stream that counts the TLS application-data records the server sends.
struct RecordCounter {
    tcp: TcpStream,
    /// Bytes left of the record being read, or of a split header.
    header: Vec<u8>,
    body_left: usize,
    records: Arc<std::sync::atomic::AtomicUsize>,
}

impl Read for RecordCounter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tcp.read(buf)?;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(rest.len());
                self.body_left -= k;
                rest = &rest[k..];
                continue;
            }
            let k = (5 - self.header.len()).min(rest.len());
            self.header.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
            if self.header.len() == 5 {
                if self.header[0] == 0x17 {
                    self.records
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header.clear();
            }
        }
        Ok(n)
    }
}

impl Write for RecordCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// A client session cache that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct TicketCounter {
    inner: rustls::client::ClientSessionMemoryCache,
    tls13_tickets: std::sync::atomic::AtomicUsize,
}

impl Default for TicketCounter {
    fn default() -> Self {
        Self {
            inner: rustls::client::ClientSessionMemoryCache::new(16),
            tls13_tickets: Default::default(),
        }
    }
}

impl rustls::client::ClientSessionStore for TicketCounter {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group);
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }

    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, v);
    }

    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name);
    }

    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        v: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tls13_tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.insert_tls13_ticket(name, v);
    }

    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// A masked WebSocket close frame, code 1000.
const CLOSE_1000: [u8; 8] = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2];

/// A TLS connection to `addr` upgraded to a WebSocket on /echo, its 101 read. The request
/// is queued before the handshake, so it leaves with the client's Finished, in one write.
fn upgraded(addr: SocketAddr, config: Arc<ClientConfig>) -> (ClientConnection, TcpStream) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(config, name).unwrap();
    let request = "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    tls.writer().write_all(request.as_bytes()).unwrap();
    let mut plain = Vec::new();
    let head_done = |p: &[u8]| p.windows(4).any(|w| w == b"\r\n\r\n");
    exchange(&mut tls, &mut tcp, &mut plain, &head_done);
    assert!(
        plain.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&plain)
    );
    assert!(plain.ends_with(b"\r\n\r\n"), "nothing after the head yet");
    (tls, tcp)
}

/// Writes what `tls` has to say and reads (answering as rustls needs) until `until` holds
/// for the plaintext read, or the server closes; returns whether it said close_notify.
fn exchange(
    tls: &mut ClientConnection,
    tcp: &mut TcpStream,
    plain: &mut Vec<u8>,
    until: &dyn Fn(&[u8]) -> bool,
) -> bool {
    while !until(plain) {
        while tls.wants_write() {
            tls.write_tls(tcp).unwrap();
        }
        if tls.read_tls(tcp).unwrap() == 0 {
            return false;
        }
        tls.process_new_packets().unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
    }
    false
}

for_each_driver! {
    // aws-lc-rs signs and exchanges keys (src/transport/tls/mod.rs, `provider`): an RSA-2048
    // certificate, and a client offering only the post-quantum hybrid X25519MLKEM768 (what
    // Chromium offers first), which ring alone does not have.
    fn rsa_certificate_and_post_quantum_key_exchange(io: IoBackend) {
        let pki = Pki::new(&format!("rsa-pq-{io:?}"));
        let rsa = pki.leaf_of(&rcgen::PKCS_RSA_SHA256, "rsa", &["localhost"], false);
        let (_server, addr) = tls_server(io, vec![rsa]);
        let pq = rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768;
        let provider = CryptoProvider {
            kx_groups: vec![pq],
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        let mut ws = wss(addr, pki.client_on(provider, BOTH), "/echo");
        let tls = ws.get_ref();
        assert_eq!(tls.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(tls.conn.negotiated_key_exchange_group().map(|g| g.name()), Some(pq.name()));
        // The leaf's key is RSA: its DER holds the rsaEncryption OID (1.2.840.113549.1.1.1).
        let rsa_encryption = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        let leaf = &tls.conn.peer_certificates().unwrap()[0];
        assert!(leaf.windows(rsa_encryption.len()).any(|w| w == rsa_encryption));
        ws.send(Message::text("post-quantum hello")).unwrap();
        assert_eq!(recv(&mut ws), Message::text("post-quantum hello"));
    }

    fn echo_over_wss_tls13_and_tls12(io: IoBackend) {
        let pki = Pki::new(&format!("echo-{io:?}"));
        let (server, addr) = tls_server(io, vec![pki.leaf("localhost", &["localhost"], false)]);
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
            let mut ws = wss(addr, pki.client(versions), "/echo");
            let tls = ws.get_ref();
            assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            assert_eq!(tls.conn.protocol_version(), Some(versions[0].version));
            // The server's preference, although rustls' client lists AES-256 first.
            let suite = tls.conn.negotiated_cipher_suite().unwrap().suite();
            assert!(
                [
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ]
                .contains(&suite),
                "{suite:?}"
            );
            ws.send(Message::text("hello over tls")).unwrap();
            assert_eq!(recv(&mut ws), Message::text("hello over tls"));
            // Larger than a record and than a read: records split across reads.
            let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
            ws.send(Message::binary(big.clone())).unwrap();
            assert_eq!(recv(&mut ws), Message::binary(big));
            for i in 0..50 {
                ws.send(Message::text(format!("m{i}"))).unwrap();
            }
            for i in 0..50 {
                assert_eq!(recv(&mut ws), Message::text(format!("m{i}")));
            }
            if versions[0] == &rustls::version::TLS13 {
                // Key updates mid-stream, each asking for ours too (our record layer
                // answers and follows them).
                for i in 0..3 {
                    ws.get_mut().conn.refresh_traffic_keys().unwrap();
                    ws.send(Message::text(format!("after update {i}"))).unwrap();
                    assert_eq!(recv(&mut ws), Message::text(format!("after update {i}")));
                }
            }
        }
        // The plain listener still serves beside the TLS one.
        let mut plain = connect(&server, "/echo");
        plain.send(Message::text("plain")).unwrap();
        assert_eq!(recv(&mut plain), Message::text("plain"));
        assert_eq!(tls_metric(&server, |m| &m.tls_handshakes), 2);
    }

    fn a_session_resumes_with_its_ticket_and_not_with_another_servers(io: IoBackend) {
        use rustls::HandshakeKind::{Full, Resumed};
        let pki = Pki::new(&format!("resume-{io:?}"));
        let certs = vec![pki.leaf("localhost", &["localhost"], false)];
        let (server, addr) = tls_server(io, certs.clone());
        let (other, other_addr) = tls_server(io, certs);
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
            // One client config: its session cache keeps the tickets it was given.
            let mut client = pki.client(versions);
            let store = Arc::new(TicketCounter::default());
            Arc::get_mut(&mut client).unwrap().resumption =
                rustls::client::Resumption::store(store.clone());
            let mut kinds = Vec::new();
            for to in [addr, addr, other_addr, other_addr] {
                let mut ws = wss(to, client.clone(), "/echo");
                kinds.push(ws.get_ref().conn.handshake_kind());
                ws.send(Message::text("again")).unwrap();
                assert_eq!(recv(&mut ws), Message::text("again"));
            }
            // The other gateway cannot read the first one's ticket: a full handshake,
            // then its own ticket resumes.
            let expected = [Full, Resumed, Full, Resumed].map(Some);
            assert_eq!(kinds, expected, "{versions:?}");
            // TLS 1.3: one ticket per connection, not rustls' default two.
            let tickets = store.tls13_tickets.load(std::sync::atomic::Ordering::Relaxed);
            let one_each = if versions[0] == &rustls::version::TLS13 { 4 } else { 0 };
            assert_eq!(tickets, one_each, "{versions:?}");
        }
        assert_eq!(tls_metric(&server, |m| &m.tls_handshakes), 4);
        assert_eq!(tls_metric(&other, |m| &m.tls_handshakes), 4);
    }

    fn pubsub_over_wss_with_a_plain_publisher(io: IoBackend) {
        let pki = Pki::new(&format!("pubsub-{io:?}"));
        let certs = vec![pki.leaf("localhost", &["localhost"], false)];
        let server = TestServer::start(io, |raw| {
            raw.tls.listen = Some(Some("127.0.0.1:0".into()));
            raw.tls.certs = Some(certs);
            raw.pubsub.client_publish = Some(vec!["news".into()]);
        });
        let addr = server.server().tls_addr().unwrap();
        let config = pki.client(BOTH);
        let mut subs: Vec<_> = (0..4).map(|_| wss(addr, config.clone(), "/ws?subscribe=news")).collect();
        for i in 0..20 {
            let body = format!("{{\"n\":{i}}}");
            let request = format!(
                "POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            assert_eq!(http(&server, &request).status, 202);
        }
        for ws in &mut subs {
            for i in 0..20 {
                let expected = format!("{{\"topic\":\"news\",\"data\":{{\"n\":{i}}}}}");
                assert_eq!(recv(ws), Message::text(expected));
            }
        }
        // A client publish over wss reaches the other TLS subscribers.
        let mut publisher = wss(addr, config, "/ws");
        publisher
            .send(Message::text(r#"{"op":"publish","topic":"news","data":"tls"}"#))
            .unwrap();
        for ws in &mut subs {
            assert_eq!(recv(ws), Message::text(r#"{"topic":"news","data":"tls"}"#));
        }
    }

    fn close_over_wss_ends_with_close_notify(io: IoBackend) {
        let pki = Pki::new(&format!("close-{io:?}"));
        let (_server, addr) = tls_server(io, vec![pki.leaf("localhost", &["localhost"], false)]);
        let mut ws = wss(addr, pki.client(BOTH), "/echo");
        ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).unwrap();
        match recv(&mut ws) {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected the close reply, got {other:?}"),
        }
        assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)));
        // rustls reads EOF as Ok(0) only after close_notify (a bare FIN is an error).
        let tls = ws.get_mut();
        let mut byte = [0u8; 1];
        assert_eq!(tls.read(&mut byte).expect("close_notify before the FIN"), 0);
    }

    fn a_wss_connection_takes_three_writes(io: IoBackend) {
        let pki = Pki::new(&format!("writes-{io:?}"));
        let (server, addr) = tls_server(io, vec![pki.leaf("localhost", &["localhost"], false)]);
        let (mut tls, mut tcp) = upgraded(addr, pki.client(&[&rustls::version::TLS13]));
        let mut plain = Vec::new();
        // A masked close frame (1000), then the reply, close_notify and the FIN.
        tls.writer().write_all(&CLOSE_1000).unwrap();
        let closed = exchange(&mut tls, &mut tcp, &mut plain, &|_| false);
        assert!(closed, "close_notify before the FIN");
        assert_eq!(plain, [0x88, 0x02, 0x03, 0xe8], "the close reply");
        // The server's flight; the session ticket with the 101; the close reply with
        // close_notify. (A flush counts its writes once it has made them all.)
        wait_until("the writes counted", || tls_metric(&server, |m| &m.writes) >= 3);
        assert_eq!(tls_metric(&server, |m| &m.writes), 3);
    }

    // RFC 8446 §6.1 (and RFC 5246 §7.2.1): the server answers a client's close_notify
    // with its own before the FIN, with or without a WebSocket close before it.
    fn a_clients_close_notify_is_answered(io: IoBackend) {
        let pki = Pki::new(&format!("notify-{io:?}"));
        let (_server, addr) = tls_server(io, vec![pki.leaf("localhost", &["localhost"], false)]);
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            for ws_close in [false, true] {
                let (mut tls, mut tcp) = upgraded(addr, pki.client(&[version]));
                if ws_close {
                    tls.writer().write_all(&CLOSE_1000).unwrap();
                }
                tls.send_close_notify();
                let mut plain = Vec::new();
                let case = format!("{version:?}, WebSocket close first: {ws_close}");
                assert!(
                    exchange(&mut tls, &mut tcp, &mut plain, &|_| false),
                    "{case}: close_notify before the FIN"
                );
                let reply: &[u8] = if ws_close { &[0x88, 0x02, 0x03, 0xe8] } else { &[] };
                assert_eq!(plain, reply, "{case}");
            }
        }
    }

    fn drain_closes_wss_with_1001(io: IoBackend) {
        let pki = Pki::new(&format!("drain-{io:?}"));
        let (mut server, addr) = tls_server(io, vec![pki.leaf("localhost", &["localhost"], false)]);
        let mut ws = wss(addr, pki.client(BOTH), "/ws?subscribe=a");
        let drain = std::thread::spawn(move || server.shutdown());
        match recv(&mut ws) {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected close 1001, got {other:?}"),
        }
        drop(ws);
        drain.join().unwrap();
    }

    fn sni_picks_the_certificate_and_a_wrong_name_fails(io: IoBackend) {
        let pki = Pki::new(&format!("sni-{io:?}"));
        let certs = vec![
            pki.leaf("a", &["a.test", "localhost"], false),
            pki.leaf("b", &["b.test"], false),
        ];
        let (server, addr) = tls_server(io, certs);
        let config = pki.client(BOTH);
        for name in ["a.test", "b.test", "localhost"] {
            let tls = tls_connect(addr, config.clone(), name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!tls.conn.is_handshaking());
        }
        let err = tls_connect(addr, config, "c.test").expect_err("no certificate for c.test");
        assert!(err.to_string().contains("certificate not valid for name"), "{err}");
        wait_until("the failed handshake counted", || {
            tls_metric(&server, |m| &m.tls_handshake_failures) == 1
        });
    }

    fn an_expired_certificate_is_refused_by_the_client(io: IoBackend) {
        let pki = Pki::new(&format!("expired-{io:?}"));
        let (_server, addr) = tls_server(io, vec![pki.leaf("old", &["localhost"], true)]);
        let err = tls_connect(addr, pki.client(BOTH), "localhost").expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
    }

    fn garbage_instead_of_a_client_hello_is_closed(io: IoBackend) {
        let pki = Pki::new(&format!("garbage-{io:?}"));
        let (server, addr) = tls_server(io, vec![pki.leaf("localhost", &["localhost"], false)]);
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(b"\x00\x01\x02 not tls at all").unwrap();
        assert_eq!(read_to_close(&mut stream), b"", "closed without an answer");
        // A record header that is a handshake but whose body is garbage: a fatal alert.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff").unwrap();
        let answer = read_to_close(&mut stream);
        assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:02x?}");
        assert_eq!(tls_metric(&server, |m| &m.tls_not_tls), 1);
        wait_until("the bad hello counted", || {
            tls_metric(&server, |m| &m.tls_handshake_failures) == 1
        });
    }

    fn plain_http_to_the_tls_port_gets_400(io: IoBackend) {
        let pki = Pki::new(&format!("plain-{io:?}"));
        let (server, addr) = tls_server(io, vec![pki.leaf("localhost", &["localhost"], false)]);
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(upgrade_request("/echo", "").as_bytes()).unwrap();
        let answer = String::from_utf8(read_to_close(&mut stream)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains(r#""error":"bad_request""#), "{answer}");
        assert!(answer.contains("TLS port"), "{answer}");
        assert_eq!(tls_metric(&server, |m| &m.tls_plain_http), 1);
    }

    fn a_stalled_handshake_is_closed_by_the_handshake_timeout(io: IoBackend) {
        let pki = Pki::new(&format!("stalled-{io:?}"));
        let certs = vec![pki.leaf("localhost", &["localhost"], false)];
        let server = TestServer::start(io, |raw| {
            raw.tls.listen = Some(Some("127.0.0.1:0".into()));
            raw.tls.certs = Some(certs);
            raw.limits.handshake_timeout = Some(Duration::from_millis(300));
        });
        let addr = server.server().tls_addr().unwrap();
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).unwrap();
        silent.set_read_timeout(Some(TIMEOUT)).unwrap();
        // Half a ClientHello record, then nothing.
        let mut half = TcpStream::connect(addr).unwrap();
        half.set_read_timeout(Some(TIMEOUT)).unwrap();
        half.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").unwrap();
        assert_eq!(read_to_close(&mut silent), b"");
        assert_eq!(read_to_close(&mut half), b"");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "closed before the timeout: {took:?}");
        assert!(took < Duration::from_secs(5), "closed late: {took:?}");
        wait_until("the timeouts counted", || tls_metric(&server, |m| &m.tls_timeouts) == 2);
    }

    fn metrics_show_the_certificate_expiry(io: IoBackend) {
        let pki = Pki::new(&format!("metrics-{io:?}"));
        let (server, _) = tls_server(io, vec![pki.leaf("localhost", &["localhost"], false)]);
        let text = http(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body_text();
        let line = text
            .lines()
            .find(|l| l.starts_with("wsgate_tls_certificate_expiry_seconds{"))
            .expect("an expiry gauge");
        let expiry: i64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // rcgen's default validity ends in 4096.
        assert!(expiry > now + 86_400 * 365, "{line}");
        assert!(text.contains("wsgate_tls_reloads_total{result=\"failed\"} 0"), "{text}");
    }

    fn reload_under_load_drops_no_connection(io: IoBackend) {
        let pki = Pki::new(&format!("reload-{io:?}"));
        let (server, addr) = tls_server(io, vec![pki.leaf("site", &["localhost"], false)]);
        let config = pki.client(BOTH);
        let leaf = |tls: &Tls| tls.conn.peer_certificates().unwrap()[0].to_vec();
        // A fresh client each time: a resumed session would not show the certificate.
        let served = || leaf(&tls_connect(addr, pki.client(BOTH), "localhost").unwrap());
        let old_leaf = served();
        let certs = server.server().shared().config.tls.acceptor.as_ref().unwrap().certs().clone();
        let mut reloader = wsgate::reload::Reloader::default();
        let watched = certs.clone();
        reloader.register("certs", certs.files(), Box::new(move || watched.reload()));
        // Clients echoing without pause while the certificates change under them.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..6)
            .map(|c| {
                let mut ws = wss(addr, config.clone(), "/echo");
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let text = format!("client {c} message {n}");
                        ws.send(Message::text(text.clone())).expect("send on a live connection");
                        assert_eq!(recv(&mut ws), Message::text(text));
                        n += 1;
                    }
                    let before = leaf(ws.get_ref());
                    ws.close(None).unwrap();
                    (n, before)
                })
            })
            .collect();
        // A new certificate in the same files: the watcher sees the change and reloads.
        let new = pki.leaf("site", &["localhost"], false);
        assert_eq!(reloader.check(), 1);
        let new_leaf = served();
        assert_ne!(new_leaf, old_leaf, "a new connection gets the new certificate");
        // A bad key: the reload fails and the certificate loaded last stays.
        let (_, key) = pki.files("site");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        assert_eq!(reloader.check(), 1);
        assert_eq!(served(), new_leaf);
        let status = certs.status();
        assert_eq!((status.reloads, status.reload_failures), (1, 1));
        let text = http(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body_text();
        assert!(text.contains("wsgate_tls_reloads_total{result=\"failed\"} 1"), "{text}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for client in clients {
            let (echoed, kept) = client.join().expect("no client lost its connection");
            assert!(echoed > 0);
            assert_eq!(kept, old_leaf, "an existing connection keeps its certificate");
        }
        drop(new);
    }

    fn a_flood_of_handshakes_waits_its_turn_and_all_finish(io: IoBackend) {
        let pki = Pki::new(&format!("flood-{io:?}"));
        let certs = vec![pki.leaf("localhost", &["localhost"], false)];
        let server = TestServer::start(io, |raw| {
            raw.tls.listen = Some(Some("127.0.0.1:0".into()));
            raw.tls.certs = Some(certs);
            raw.tls.handshakes_per_turn = Some(1);
        });
        let addr = server.server().tls_addr().unwrap();
        let config = pki.client(BOTH);
        let mut established = wss(addr, config.clone(), "/echo");
        let flood: Vec<_> = (0..24)
            .map(|_| {
                let config = config.clone();
                std::thread::spawn(move || wss(addr, config, "/echo"))
            })
            .collect();
        // The established connection is served while the handshakes go one per turn.
        for i in 0..20 {
            established.send(Message::text(format!("{i}"))).unwrap();
            assert_eq!(recv(&mut established), Message::text(format!("{i}")));
        }
        for client in flood {
            let mut ws = client.join().expect("every deferred handshake finishes");
            ws.send(Message::text("late")).unwrap();
            assert_eq!(recv(&mut ws), Message::text("late"));
        }
        assert_eq!(tls_metric(&server, |m| &m.tls_handshakes), 25);
    }

    fn a_turns_deliveries_to_a_subscriber_share_records(io: IoBackend) {
        let pki = Pki::new(&format!("records-{io:?}"));
        let certs = vec![pki.leaf("localhost", &["localhost"], false)];
        // One reactor, so that the publisher's messages and the subscriber's deliveries are
        // one turn's work (across reactors they would arrive in as many turns as wake-ups).
        let server = TestServer::start(io, |raw| {
            raw.net.threads = Some(1);
            raw.pubsub.client_publish = Some(vec!["*".into()]);
            raw.tls.listen = Some(Some("127.0.0.1:0".into()));
            raw.tls.certs = Some(certs);
        });
        let addr = server.server().tls_addr().expect("a TLS listener");
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let records = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = RecordCounter { tcp: stream, header: Vec::new(), body_left: 0, records: records.clone() };
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(pki.client(BOTH), name).unwrap();
        let url = format!("wss://localhost:{}/ws?subscribe=t", addr.port());
        let (mut ws, _) = tungstenite::client(url, StreamOwned::new(conn, counter)).unwrap();
        // Twenty publishes in one write from a /ws publisher: one read, one turn's
        // deliveries on the server.
        let one = client_frame(true, 1, br#"{"op":"publish","topic":"t","data":7}"#);
        let mut publisher = raw_upgrade(&server, "/ws");
        let before = records.load(std::sync::atomic::Ordering::Relaxed);
        publisher.write_all(&one.repeat(20)).unwrap();
        for _ in 0..20 {
            assert_eq!(recv(&mut ws), Message::text(r#"{"topic":"t","data":7}"#));
        }
        let used = records.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!((1..=4).contains(&used), "20 deliveries took {used} records");
    }
}

fn exits_2_naming(args: &[&str], expected: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    for part in expected {
        assert!(
            stderr.contains(part),
            "{args:?}: expected {part:?} in {stderr}"
        );
    }
}

#[test]
fn bad_certificates_at_start_exit_2_naming_the_file() {
    let pki = Pki::new("cli");
    let good = pki.leaf("good", &["localhost"], false);
    let other = pki.leaf("other", &["localhost"], false);
    let (good_cert, good_key) = good.split_once(':').unwrap();
    let (_, other_key) = other.split_once(':').unwrap();
    let listen = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-certs",
    ];
    let run = |pair: &str, expected: &[&str]| {
        let mut args = listen.to_vec();
        args.push(pair);
        exits_2_naming(&args, expected);
    };
    let missing = pki.dir.join("missing.pem");
    run(
        &format!("{}:{good_key}", missing.display()),
        &["tls_certs", "missing.pem", "No such file"],
    );
    run(
        &format!("{good_cert}:{other_key}"),
        &["other.key", "does not match", "good.pem"],
    );
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    run(
        &format!("{}:{good_key}", garbage.display()),
        &["garbage.pem", "no certificate"],
    );
    run(
        &format!("{good_cert}:{}", garbage.display()),
        &["garbage.pem", "no PEM item"],
    );
    let unreadable: &Path = &pki.dir; // a directory: cannot be read as a file
    run(
        &format!("{good_cert}:{}", unreadable.display()),
        &["tls_certs", "wsgate-tls-"],
    );
    run("just-one-file.pem", &["not CERT_PEM:KEY_PEM"]);
    exits_2_naming(&["serve", "--tls-listen", "127.0.0.1:0"], &["tls_certs"]);
    exits_2_naming(&["serve", "--tls-certs", &good], &["tls_listen"]);
}

/// SIGHUP reloads the certificates of the running binary.
#[test]
fn sighup_reloads_the_certificates() {
    let pki = Pki::new("sighup");
    let pair = pki.leaf("site", &["localhost"], false);
    let mut gateway =
        GatewayProcess::one_reactor(&["--tls-listen", "127.0.0.1:0", "--tls-certs", &pair]);
    let line = gateway.wait_log("listening for TLS (wss://) on ");
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let leaf = |addr| {
        let tls = tls_connect(addr, pki.client(BOTH), "localhost").unwrap();
        tls.conn.peer_certificates().unwrap()[0].to_vec()
    };
    let old = leaf(addr);
    let _new = pki.leaf("site", &["localhost"], false);
    gateway.signal("HUP");
    let reloaded = gateway.wait_log("reloaded");
    assert!(reloaded.contains("tls certificates"), "{reloaded}");
    assert_ne!(leaf(addr), old);
    gateway.stop();
}
