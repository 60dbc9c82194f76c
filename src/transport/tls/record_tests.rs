//! Our TLS 1.3 record layer against rustls' client, in memory: the bytes are handed across
//! by hand, so each test decides exactly which records the server sees. Interop (key
//! updates both ways, every TLS 1.3 suite) uses the client as is; hostile records are
//! sealed by hand with the client's extracted keys (`tests/util/tls13_oracle.rs`),
//! independently of `records.rs`.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;

#[path = "../../../tests/util/localhost_cert.rs"]
mod localhost_cert;
#[path = "../../../tests/util/tls13_oracle.rs"]
mod tls13_oracle;

use tls13_oracle::Oracle;

/// An acceptor for `localhost` (its files in a fresh directory, removed once loaded) and
/// roots trusting it.
fn acceptor(test: &str) -> (Acceptor, RootCertStore) {
    let dir = std::env::temp_dir().join(format!("wsgate-records-{}-{test}", std::process::id()));
    let (cert, key, roots) = localhost_cert::localhost_cert(&dir);
    let acceptor = Acceptor::new(vec![CertFiles { cert, key }], MinVersion::Tls12).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (acceptor, roots)
}

/// A rustls client offering TLS 1.3 with `suite` (all of ring's when `None`).
fn client(roots: &RootCertStore, suite: Option<rustls::SupportedCipherSuite>) -> ClientConnection {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        provider.cipher_suites = vec![suite];
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    let name = ServerName::try_from("localhost").unwrap();
    ClientConnection::new(Arc::new(config), name).unwrap()
}

/// The server's session and a client, with the bytes between them in our hands.
struct Pair {
    client: ClientConnection,
    server: Session,
    /// The connection's plaintext queue (frames to send).
    plain: OutQueue,
    /// Plaintext the server received.
    received: Vec<u8>,
    /// Plaintext the client received.
    client_got: Vec<u8>,
}

impl Pair {
    fn new(test: &str, suite: Option<rustls::SupportedCipherSuite>) -> Self {
        let mut pair = Self::unshaken(test, suite);
        pair.pump();
        assert!(!pair.client.is_handshaking());
        assert!(matches!(pair.server.engine, Engine::Records(_)));
        pair
    }

    /// Before the handshake: nothing has been sent yet.
    fn unshaken(test: &str, suite: Option<rustls::SupportedCipherSuite>) -> Self {
        let (acceptor, roots) = acceptor(test);
        Self {
            client: client(&roots, suite),
            server: acceptor.session(),
            plain: OutQueue::default(),
            received: Vec::new(),
            client_got: Vec::new(),
        }
    }

    /// Client bytes to the server. Returns whether the peer closed.
    fn server_takes(&mut self, mut wire: Vec<u8>) -> Result<bool, TransportError> {
        let mut plain = Vec::new();
        let closed = self.server.receive(&mut wire, &mut plain)?;
        self.received.extend_from_slice(&plain);
        Ok(closed)
    }

    /// Whatever the server has to send, as the driver would take it.
    fn server_sends(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let wire = self.server.outgoing(&mut self.plain, &mut Vec::new());
            let bytes: Vec<u8> = wire.frames().flat_map(|f| f.to_vec()).collect();
            if bytes.is_empty() {
                return out;
            }
            self.server.sent(bytes.len());
            out.extend_from_slice(&bytes);
        }
    }

    /// Whatever the client has to send.
    fn client_sends(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn pump(&mut self) {
        for _ in 0..16 {
            let wire = self.client_sends();
            let mut moved = !wire.is_empty();
            if moved {
                self.server_takes(wire)
                    .expect("the server takes the client's records");
            }
            let back = self.server_sends();
            if !back.is_empty() {
                moved = true;
                self.client_takes(&back)
                    .expect("the client takes the server's records");
            }
            if !moved {
                return;
            }
        }
        panic!("the two sides kept talking");
    }

    fn client_takes(&mut self, mut wire: &[u8]) -> Result<(), rustls::Error> {
        while !wire.is_empty() {
            self.client.read_tls(&mut wire).unwrap();
            self.client.process_new_packets()?;
            let _ = self.client.reader().read_to_end(&mut self.client_got);
        }
        Ok(())
    }

    fn client_reads(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.client_got)
    }

    /// The client's keys, for sealing records by hand (the client is gone after this).
    fn hand_made(self) -> (Oracle, Session) {
        let secrets = self.client.dangerous_extract_secrets().unwrap();
        (Oracle::new(secrets), self.server)
    }
}

/// The ciphertext a session has queued (alerts, answers), with nothing more to encrypt.
fn queued(server: &mut Session) -> Vec<u8> {
    let wire = server.outgoing(&mut OutQueue::default(), &mut Vec::new());
    wire.frames().flat_map(|f| f.to_vec()).collect()
}

fn aes128() -> Option<rustls::SupportedCipherSuite> {
    Some(rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256)
}

/// A hostile record after the handshake: the session fails with `reason` in its error and
/// answers with the fatal alert `description` (sealed, as TLS 1.3 alerts are).
fn refused(
    test: &str,
    records: impl FnOnce(&mut Oracle) -> Vec<u8>,
    description: u8,
    reason: &str,
) {
    let (mut made, mut server) = Pair::new(test, aes128()).hand_made();
    let mut wire = records(&mut made);
    let err = server.receive(&mut wire, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains(reason), "{test}: {err}");
    let sent = queued(&mut server);
    assert_eq!(
        made.open(&sent).unwrap(),
        vec![(21, vec![2, description])],
        "{test}"
    );
    // Nothing more is read.
    let mut more = made.sealed(23, b"late");
    assert!(!server.receive(&mut more, &mut Vec::new()).unwrap());
}

#[test]
fn every_tls13_suite_moves_to_our_record_layer_and_talks_both_ways() {
    use rustls::crypto::ring::cipher_suite::*;
    for suite in [
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let mut pair = Pair::new("suites", Some(suite));
        // Larger than a record both ways: split into records and joined again.
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        pair.client.writer().write_all(&big).unwrap();
        pair.plain.push(big.clone().into());
        pair.plain.push(b"and a frame after it".to_vec().into());
        pair.pump();
        assert_eq!(pair.received, big, "{suite:?}");
        let mut expected = big.clone();
        expected.extend_from_slice(b"and a frame after it");
        assert_eq!(pair.client_reads(), expected, "{suite:?}");
    }
}

#[test]
fn a_client_key_update_is_followed_and_answered() {
    let mut pair = Pair::new("keyupdate", None);
    for round in 0..3 {
        // rustls' client asks for our update too (update_requested).
        pair.client.refresh_traffic_keys().unwrap();
        let wire = pair.client_sends();
        pair.server_takes(wire).unwrap();
        // Our answer: one KeyUpdate record (4 + 1 bytes of handshake, type, tag).
        let answer = pair.server_sends();
        assert_eq!(answer.len(), 5 + 5 + 1 + 16, "round {round}");
        pair.client_takes(&answer).unwrap();
        // Both sides now use new keys both ways.
        pair.received.clear();
        pair.client.writer().write_all(b"after the update").unwrap();
        pair.plain
            .push(format!("reply {round}").into_bytes().into());
        pair.pump();
        assert_eq!(pair.received, b"after the update", "round {round}");
        assert_eq!(pair.client_reads(), format!("reply {round}").as_bytes());
    }
}

#[test]
fn a_key_update_in_the_read_that_ends_the_handshake_is_answered_by_our_layer() {
    // OpenSSL's s_client sends a key update as soon as its side of the handshake is done,
    // so its Finished, its KeyUpdate and its first request can reach us in one read,
    // before the session has moved to our record layer. rustls must not take that
    // KeyUpdate: its answer would be lost in the hand-over, and the next record we sealed
    // would be under keys the client had not been told of (the CI failure of a113339:
    // "decryption failed or bad record mac" in s_client).
    let mut pair = Pair::unshaken("early-keyupdate", None);
    // ClientHello; the server's flight; the client is done, its Finished not yet sent.
    let hello = pair.client_sends();
    pair.server_takes(hello).unwrap();
    let flight = pair.server_sends();
    pair.client_takes(&flight).unwrap();
    assert!(!pair.client.is_handshaking());
    for round in 0..2 {
        pair.client.refresh_traffic_keys().unwrap();
        pair.client.writer().write_all(b"request").unwrap();
        let wire = pair.client_sends();
        pair.server_takes(wire).unwrap();
        assert!(matches!(pair.server.engine, Engine::Records(_)));
        assert_eq!(pair.received, b"request", "round {round}");
        pair.received.clear();
        pair.plain
            .push(format!("reply {round}").into_bytes().into());
        let answer = pair.server_sends();
        pair.client_takes(&answer)
            .unwrap_or_else(|e| panic!("round {round}: the client cannot open our records: {e}"));
        assert_eq!(pair.client_reads(), format!("reply {round}").as_bytes());
    }
}

#[test]
fn our_keys_are_updated_before_the_confidentiality_limit() {
    let mut pair = Pair::new("limit", None);
    fn records(pair: &mut Pair) -> &mut Records {
        match &mut pair.server.engine {
            Engine::Records(records) => records,
            _ => unreachable!("a TLS 1.3 session"),
        }
    }
    // A limit two records away (the real one is 2^24 records for AES-GCM): frame 0, then
    // the KeyUpdate as the key's last record.
    let seq = records(&mut pair).tx.seq;
    assert!(seq > 0, "the session ticket went out under this key");
    records(&mut pair).tx_limit = seq + 2;
    pair.plain.push(b"frame 0".to_vec().into());
    pair.pump();
    pair.plain.push(b"frame 1".to_vec().into());
    pair.pump();
    let after = records(&mut pair).tx.seq;
    assert_eq!(after, 1, "frame 1 is the first record under the new key");
    // The client followed our KeyUpdate: every frame arrived.
    assert_eq!(pair.client_reads(), b"frame 0frame 1");
}

#[test]
fn records_split_anywhere_padding_and_empty_records_are_read() {
    let (mut made, mut server) = Pair::new("split", aes128()).hand_made();
    let mut wire = made.sealed(23, b"hello ");
    wire.extend(made.sealed(23, b""));
    let mut padded = b"world".to_vec();
    padded.push(23);
    padded.extend([0; 300]);
    wire.extend(made.record(&padded));
    wire.extend(made.sealed(21, &[1, alert::USER_CANCELED]));
    wire.extend(made.sealed(23, b"!"));
    let mut got = Vec::new();
    // One byte at a time: every record waits in `carry` until its last byte.
    for byte in wire {
        assert!(!server.receive(&mut [byte], &mut got).unwrap());
    }
    assert_eq!(got, b"hello world!");
    assert!(server.carry.is_empty());
}

#[test]
fn close_notify_ends_reading_and_is_answered_once() {
    let (mut made, mut server) = Pair::new("close", aes128()).hand_made();
    let mut wire = made.sealed(23, b"last words");
    wire.extend(made.sealed(21, &[1, alert::CLOSE_NOTIFY]));
    wire.extend(made.sealed(23, b"ignored"));
    let mut got = Vec::new();
    assert!(
        server.receive(&mut wire, &mut got).unwrap(),
        "the peer closed"
    );
    assert_eq!(got, b"last words");
    assert!(server.close_notify());
    assert!(!server.close_notify(), "once");
    let sent = queued(&mut server);
    assert_eq!(
        made.open(&sent).unwrap(),
        vec![(21, vec![1, alert::CLOSE_NOTIFY])]
    );
}

/// Regression: frames the session could not encrypt were dropped and the connection left
/// open, sending nothing until the close deadline or the slow-consumer cap.
#[test]
fn frames_that_cannot_be_encrypted_stay_queued_and_the_session_says_it_is_stuck() {
    let mut pair = Pair::new("stuck", aes128());
    pair.plain.push(b"before".to_vec().into());
    pair.pump();
    assert_eq!(pair.client_reads(), b"before");
    assert!(!pair.server.is_stuck(&pair.plain), "nothing queued");
    // The record layer loses its keys (as when handing them over fails).
    pair.server.engine = Engine::Gone;
    pair.plain.push(b"lost?".to_vec().into());
    assert!(queued_from(&mut pair).is_empty(), "nothing can be sealed");
    assert_eq!(
        pair.plain.len_bytes(),
        5,
        "the frame is still queued, not dropped"
    );
    assert!(pair.server.is_stuck(&pair.plain));
}

/// A session that failed on a bad record, with its alert queued and no frames, is not
/// stuck: the alert is written and the close goes on as usual.
#[test]
fn a_failed_session_with_only_its_alert_to_send_is_not_stuck() {
    let (mut made, mut server) = Pair::new("alert", aes128()).hand_made();
    let mut record = made.sealed(23, b"tampered");
    record[7] ^= 1;
    assert!(server.receive(&mut record, &mut Vec::new()).is_err());
    let plain = OutQueue::default();
    assert!(!server.is_stuck(&plain), "the alert is still to be written");
    assert!(!queued(&mut server).is_empty());
    server.sent(server.wire_len());
    assert!(!server.is_stuck(&plain), "nothing left to send");
}

fn queued_from(pair: &mut Pair) -> Vec<u8> {
    let wire = pair.server.outgoing(&mut pair.plain, &mut Vec::new());
    wire.frames().flat_map(|f| f.to_vec()).collect()
}

#[test]
fn a_record_that_does_not_authenticate_is_bad_record_mac() {
    refused(
        "mac",
        |made| {
            let mut record = made.sealed(23, b"tampered");
            record[7] ^= 1;
            record
        },
        alert::BAD_RECORD_MAC,
        "does not authenticate",
    );
    refused(
        "replay",
        |made| {
            let record = made.sealed(23, b"twice");
            [record.clone(), record].concat()
        },
        alert::BAD_RECORD_MAC,
        "does not authenticate",
    );
}

#[test]
fn oversized_records_are_record_overflow() {
    // The header alone says too much: refused before the body arrives.
    refused(
        "overflow-header",
        |_| vec![23, 3, 3, 0x41, 0x01],
        alert::RECORD_OVERFLOW,
        "16641 bytes",
    );
    refused(
        "overflow-plaintext",
        |made| made.sealed(23, &vec![b'x'; (1 << 14) + 1]),
        alert::RECORD_OVERFLOW,
        "16385 bytes of plaintext",
    );
}

#[test]
fn what_may_not_come_after_the_handshake_is_unexpected_message() {
    type Case = (&'static str, fn(&mut Oracle) -> Vec<u8>, &'static str);
    let cases: [Case; 6] = [
        (
            "plaintext-handshake",
            |_| vec![22, 3, 3, 0, 1, 0],
            "type 22",
        ),
        ("ccs", |_| vec![20, 3, 3, 0, 1, 1], "type 20"),
        ("no-type", |made| made.record(&[0; 20]), "no content type"),
        (
            "inner-type",
            |made| made.sealed(25, b"x"),
            "inner content type 25",
        ),
        (
            "ticket",
            |made| made.sealed(22, &[4, 0, 0, 1, 0]),
            "message 4",
        ),
        (
            "after-key-update",
            |made| made.sealed(22, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0]),
            "after a KeyUpdate",
        ),
    ];
    for (test, records, reason) in cases {
        refused(test, records, alert::UNEXPECTED_MESSAGE, reason);
    }
    refused(
        "split-handshake",
        |made| made.sealed(22, &[24, 0, 0, 1]),
        alert::UNEXPECTED_MESSAGE,
        "split across records",
    );
    refused(
        "empty-handshake",
        |made| made.sealed(22, &[]),
        alert::UNEXPECTED_MESSAGE,
        "empty handshake",
    );
}

#[test]
fn malformed_alerts_and_key_updates_are_refused() {
    refused(
        "long-alert",
        |made| made.sealed(21, &[1, 0, 0]),
        alert::DECODE_ERROR,
        "not 2 bytes",
    );
    refused(
        "short-header",
        |made| made.sealed(22, &[24, 0, 0]),
        alert::DECODE_ERROR,
        "truncated",
    );
    refused(
        "long-key-update",
        |made| made.sealed(22, &[24, 0, 0, 2, 0, 0]),
        alert::DECODE_ERROR,
        "not 1 byte",
    );
    refused(
        "bad-request",
        |made| made.sealed(22, &[24, 0, 0, 1, 2]),
        alert::ILLEGAL_PARAMETER,
        "request 2",
    );
}

#[test]
fn a_fatal_alert_from_the_peer_is_not_answered() {
    let (mut made, mut server) = Pair::new("peer-alert", aes128()).hand_made();
    let mut wire = made.sealed(21, &[2, 40]);
    let err = server.receive(&mut wire, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("alert 40"), "{err}");
    assert!(queued(&mut server).is_empty());
}

#[test]
fn a_requested_key_update_is_answered_under_the_old_key() {
    let (mut made, mut server) = Pair::new("answer", aes128()).hand_made();
    let mut wire = made.sealed(22, &[24, 0, 0, 1, 1]);
    assert!(!server.receive(&mut wire, &mut Vec::new()).unwrap());
    let sent = queued(&mut server);
    assert_eq!(made.open(&sent).unwrap(), vec![(22, vec![24, 0, 0, 1, 0])]);
    // The client's old key no longer opens anything.
    let mut stale = made.sealed(23, b"old key");
    assert!(server.receive(&mut stale, &mut Vec::new()).is_err());
}

#[test]
fn nothing_follows_our_close_notify() {
    // Found by the tls_records fuzz target: a bad record after our close_notify was
    // answered with a fatal alert after it.
    let (mut made, mut server) = Pair::new("after-close", aes128()).hand_made();
    assert!(server.close_notify());
    let mut record = made.sealed(23, b"tampered");
    record[7] ^= 1;
    assert!(server.receive(&mut record, &mut Vec::new()).is_err());
    let sent = queued(&mut server);
    assert_eq!(
        made.open(&sent).unwrap(),
        vec![(21, vec![1, alert::CLOSE_NOTIFY])],
        "close_notify alone"
    );
}

#[test]
fn empty_frames_in_the_queue_lose_nothing() {
    // Found by the tls_records fuzz target: an empty frame ended the record being filled,
    // and the frames after it were dropped.
    let mut pair = Pair::new("empty-frames", None);
    for frame in ["", "one", "", "", "two", ""] {
        pair.plain.push(frame.as_bytes().to_vec().into());
    }
    pair.pump();
    assert_eq!(pair.client_reads(), b"onetwo");
}

/// A handshake waiting for the reactor's next turn keeps its ClientHello, and is answered
/// at that turn; a client that sends more than a handshake can hold before then is
/// refused, and what it sent is not kept (a flood of such clients grew the process by
/// their bytes).
#[test]
fn a_deferred_handshake_keeps_a_client_hello_and_no_more() {
    let mut pair = Pair::unshaken("deferred", None);
    let hello = pair.client_sends();
    assert_eq!(pair.server.defer(&hello), Some(true));
    assert_eq!(pair.server.defer(&[]), Some(false), "already waiting");
    pair.server_takes(Vec::new()).unwrap();
    assert!(!pair.server_sends().is_empty(), "the server's flight");
    let mut other = Pair::unshaken("deferred-flood", None);
    let hello = other.client_sends();
    assert_eq!(other.server.defer(&hello), Some(true));
    assert_eq!(other.server.defer(&vec![0x17; MAX_DEFERRED]), None);
    assert_eq!(other.server.carry.len(), hello.len(), "nothing of it kept");
}
