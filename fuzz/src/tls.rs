//! Our TLS 1.3 record layer (`src/transport/tls/records.rs`) after a real handshake with
//! rustls' client, in memory (the `tls_records` target). The input picks the suite, then
//! steps until it runs out:
//! - a record sealed with the client's keys (`tests/util/tls13_oracle.rs`): any inner
//!   content type (mostly application data), any content and padding, sometimes one byte
//!   flipped;
//! - raw bytes from the peer (headers, garbage, truncations);
//! - delivery of what the peer sent so far, split at the input's sizes;
//! - a frame the server sends, or its close (close_notify).
//!
//! Checked: nothing panics; the server's plaintext is always a prefix of the application
//! data sealed, in order (exactly all of it while every byte delivered came from untampered
//! records); once the session has failed or the peer closed, nothing more is read; what the
//! server sends opens with the client's keys (until the client asked for a key update, which
//! the oracle cannot follow): the frames it was given, in order, as application data, then
//! at most one alert, and nothing after it.

use std::sync::{Arc, OnceLock};

use arbitrary::Unstructured;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use wsgate::transport::tls::{Acceptor, CertFiles, MinVersion};
use wsgate::transport::Transport;
use wsgate_proto::OutQueue;

use super::{blob, byte, u16_le};

#[path = "../../tests/util/tls13_oracle.rs"]
mod tls13_oracle;

use tls13_oracle::Oracle;

/// The gateway's acceptor (a committed certificate for `localhost`, valid until 2126) and a
/// client per TLS 1.3 suite, made once.
struct Fixture {
    acceptor: Acceptor,
    clients: Vec<Arc<ClientConfig>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tls");
        let files = CertFiles {
            cert: format!("{dir}/localhost.pem").into(),
            key: format!("{dir}/localhost.key").into(),
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&files.cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let acceptor = Acceptor::new(vec![files], MinVersion::Tls13).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let clients = (provider.cipher_suites.iter())
            .filter(|suite| suite.version() == &rustls::version::TLS13)
            .map(|&suite| {
                let provider = rustls::crypto::CryptoProvider {
                    cipher_suites: vec![suite],
                    ..rustls::crypto::ring::default_provider()
                };
                let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
                config.enable_secret_extraction = true;
                Arc::new(config)
            })
            .collect();
        Fixture { acceptor, clients }
    })
}

/// The server under test, its plaintext queue and the reactor's scratch.
struct Server {
    transport: Transport,
    plain: OutQueue,
    scratch: Vec<u8>,
}

impl Server {
    /// Everything it has to send, as the driver would take it.
    fn sends(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let wire = self.transport.outgoing(&mut self.plain, &mut self.scratch);
            let bytes: Vec<u8> = wire.frames().flat_map(|f| f.to_vec()).collect();
            if bytes.is_empty() {
                return out;
            }
            self.transport.sent(&mut self.plain, bytes.len());
            out.extend_from_slice(&bytes);
        }
    }
}

/// A full handshake and the session ticket, bytes handed across in memory.
fn handshake(client: &mut ClientConnection, server: &mut Server) {
    for _ in 0..16 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            server.scratch.clear();
            let received = server
                .transport
                .receive(&mut wire, &mut server.scratch)
                .unwrap();
            assert!(received.plain.is_empty() && !received.peer_closed);
        }
        let back = server.sends();
        let mut rd = &back[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
        }
        if wire.is_empty() && back.is_empty() {
            assert!(!client.is_handshaking() && !server.transport.is_handshaking());
            return;
        }
    }
    panic!("the handshake did not end");
}

pub fn run(data: &[u8]) {
    let fixture = fixture();
    let mut u = Unstructured::new(data);
    let config = &fixture.clients[usize::from(byte(&mut u).unwrap_or(0)) % fixture.clients.len()];
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(config.clone(), name).unwrap();
    let mut server = Server {
        transport: Transport::Tls(Box::new(fixture.acceptor.session())),
        plain: OutQueue::default(),
        scratch: Vec::new(),
    };
    handshake(&mut client, &mut server);
    let mut oracle = Oracle::new(client.dangerous_extract_secrets().unwrap());

    // What the peer sent and the server has not been given yet.
    let mut pending = Vec::new();
    // The application data sealed, in order, and what the server read of it.
    let (mut sealed, mut read) = (Vec::new(), Vec::new());
    // Every byte delivered came from untampered application-data records.
    let mut clean = true;
    // The session ended (failed, or the peer's close_notify): nothing more may be read.
    let mut ended = false;
    // The frames the server was given, and what the client opened of its records.
    let (mut frames, mut opened) = (Vec::new(), Vec::new());
    let mut alerts = 0;
    // The client sealed a handshake record: it may have asked for our keys' update.
    let mut rekeyed = false;

    while !u.is_empty() {
        let Ok(step) = byte(&mut u) else { break };
        match step % 6 {
            0 | 1 => {
                let kind = byte(&mut u).unwrap_or(0);
                let content_type = match kind % 8 {
                    0..=4 => 23,
                    5 => 21,
                    6 => 22,
                    _ => byte(&mut u).unwrap_or(0),
                };
                let content = blob(&mut u).unwrap_or_default();
                let padding = usize::from(byte(&mut u).unwrap_or(0) % 64);
                let flip = u16_le(&mut u).unwrap_or(0);
                let mut record = if padding == 0 {
                    oracle.sealed(content_type, &content)
                } else {
                    let mut inner = content.clone();
                    inner.push(content_type);
                    inner.resize(inner.len() + padding, 0);
                    oracle.record(&inner)
                };
                if kind & 0x80 != 0 {
                    let at = usize::from(flip) % record.len();
                    record[at] ^= (flip >> 8) as u8 | 1;
                    clean = false;
                } else if content_type == 23 && content.len() < 1 << 14 {
                    sealed.extend_from_slice(&content);
                } else {
                    clean = false;
                }
                rekeyed |= content_type == 22;
                pending.extend_from_slice(&record);
            }
            2 => {
                let raw = blob(&mut u).unwrap_or_default();
                clean &= raw.is_empty();
                pending.extend_from_slice(&raw);
            }
            3 => {
                // Deliver what is pending, in pieces of these sizes (0: the rest).
                let sizes = blob(&mut u).unwrap_or_default();
                let mut rest = std::mem::take(&mut pending);
                let mut sizes = sizes.iter().map(|&s| usize::from(s));
                while !rest.is_empty() {
                    let n = match sizes.next() {
                        Some(0) | None => rest.len(),
                        Some(n) => n.min(rest.len()),
                    };
                    let mut piece: Vec<u8> = rest.drain(..n).collect();
                    server.scratch.clear();
                    match server.transport.receive(&mut piece, &mut server.scratch) {
                        Ok(received) => {
                            assert!(
                                !ended || received.plain.is_empty(),
                                "read after the session ended"
                            );
                            read.extend_from_slice(received.plain);
                            ended |= received.peer_closed;
                        }
                        Err(_) => {
                            assert!(!ended, "failed after the session ended");
                            ended = true;
                        }
                    }
                }
                if clean {
                    // Whole, untampered application data only: all of it was read.
                    assert_eq!(read, sealed);
                }
            }
            4 => {
                let frame = blob(&mut u).unwrap_or_default();
                frames.extend_from_slice(&frame);
                server.plain.push(frame.into());
            }
            _ => {
                server.transport.close();
            }
        }
        let sent = server.sends();
        if !rekeyed {
            let records = oracle.open(&sent).expect("the server's records open");
            for (content_type, content) in records {
                assert_eq!(alerts, 0, "a record after an alert");
                match content_type {
                    23 => opened.extend_from_slice(&content),
                    21 => {
                        assert_eq!(content.len(), 2, "an alert is 2 bytes");
                        alerts += 1;
                    }
                    other => panic!("the server sent content type {other} unasked"),
                }
            }
        }
        assert!(read.len() <= sealed.len() && read == sealed[..read.len()]);
        assert!(opened.len() <= frames.len() && opened == frames[..opened.len()]);
    }
}
