//! TLS on rustls 0.23: the certificates (loaded, chosen by SNI, reloaded) and the
//! per-connection session. The only module that names rustls, so its API changes stay
//! here.
//!
//! A session does its handshake on rustls' unbuffered API. A TLS 1.3 session then moves to
//! our record layer (`records.rs`) on the keys rustls hands over; a TLS 1.2 session stays
//! on rustls'. Either way records are decrypted in the driver's lent buffer and the
//! plaintext is appended to the reactor's scratch; only a record split across two reads is
//! kept, in `carry`, until its rest arrives. Outgoing, a turn's queued frames are encrypted
//! together: one 16 KiB record carries as many frames as fit, and one buffer holds all of a
//! send's records.
//!
//! The crypto provider mixes ring and aws-lc-rs: see `provider` for why.

use std::mem;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{ProtocolVersion, ServerConfig};
use wsgate_proto::OutQueue;

use super::TransportError;
use records::{alert, Records};

#[cfg(test)]
mod record_tests;
mod records;

/// What a session keeps while its handshake waits for the reactor's next turn: a client
/// has nothing to send before the server's first flight but its ClientHello (rustls takes
/// handshake messages up to 64 KiB), so more is not a handshake, and is not held.
pub(super) const MAX_DEFERRED: usize = 96 << 10;

/// Largest TLS plaintext record (RFC 8446 §5.1: 2^14).
const MAX_RECORD: usize = 1 << 14;
/// Most ciphertext bytes a record adds: header 5, TLS 1.2's explicit nonce 8, tag 16 (TLS
/// 1.3: header, content type 1, tag).
const MAX_OVERHEAD: usize = 5 + 8 + 16;
/// Most plaintext encrypted for one send: four full records (what is left waits for the
/// next send, so ciphertext never piles up beyond one send).
const MAX_BATCH: usize = 4 * MAX_RECORD;

/// The crypto provider: ring's cipher suites, aws-lc-rs' signatures and key exchange.
/// Measured on this machine (quiet, one core; bench-results/tls/provider-parts.txt):
/// - aws-lc-rs signs RSA-2048 PSS in 277 µs against ring's 486 µs (aws-lc has AVX-512
///   IFMA code for RSA), and a full RSA handshake is mostly that one signature; ECDSA P-256
///   signs in 15 vs 17 µs.
/// - aws-lc-rs does an X25519 exchange (key pair + agreement) in 28 µs against 50 µs, once
///   per full handshake.
/// - The session keys stay ring's (and our TLS 1.3 record layer seals with ring directly):
///   ring keeps them in Rust's heap, 2 × 544 B per connection, while aws-lc-rs keeps them in
///   C contexts of its own that cost 230 B more per idle connection (RSS at 10,000 idle wss
///   connections, before our record layer: 3,996 B ring, 4,253 B aws-lc-rs, 4,023 B this
///   mix), and records of fan-out size encrypt within the noise of each other
///   (bench-results/tls/provider.txt; only 16 KiB records are faster on aws-lc-rs).
///
/// aws-lc's C sources take about a minute of one core to build here. With two providers
/// compiled in, `install_default_provider` names the default.
///
/// The server picks the cipher suite, AES-128-GCM first (with SHA-256 in TLS 1.3), as
/// BoringSSL and Go do, rather than following the client: rustls' clients and others list
/// AES-256-GCM-SHA384 first, whose key schedule hashes with SHA-512 blocks (9.5 % of a full
/// handshake's CPU in a profile here) where SHA-256 runs on the CPU's SHA extensions, and
/// AES-128 encrypts every record in 10 rounds instead of 14. Every TLS 1.3 client must
/// implement TLS_AES_128_GCM_SHA256 (RFC 8446 §9.1). The rest keep ring's order.
fn provider() -> CryptoProvider {
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    };
    let aws_lc = rustls::crypto::aws_lc_rs::default_provider();
    let mut provider = CryptoProvider {
        kx_groups: aws_lc.kx_groups,
        key_provider: aws_lc.key_provider,
        ..rustls::crypto::ring::default_provider()
    };
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

/// Makes `provider` the process's default, for the rustls users that take the default (the
/// NATS client's TLS): with two providers compiled in, rustls would refuse to guess and
/// panic. A second call changes nothing.
pub fn install_default_provider() {
    let _ = provider().install_default();
}

/// The lowest TLS version accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// One certificate's files: a PEM chain (leaf first) and its PEM private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes the TLS sessions of new connections: the rustls settings and the certificates.
#[derive(Debug)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    certs: Arc<Certs>,
}

impl Acceptor {
    /// Loads every certificate; an error names the file and why.
    pub fn new(files: Vec<CertFiles>, min: MinVersion) -> Result<Self, String> {
        let provider = Arc::new(provider());
        let certs = Arc::new(Certs::load(files, provider.clone())?);
        let versions: &[&rustls::SupportedProtocolVersion] = match min {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        // WebSocket runs over HTTP/1.1 (RFC 6455 §4.1); a client offering only h2 fails.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Our order of cipher suites, not the client's (see `provider`).
        config.ignore_client_order = true;
        // Resumption without server memory: the session state travels in the ticket,
        // encrypted under a key only this process knows (ChaCha20-Poly1305, rotated every 6
        // hours), instead of rustls' default 256-entry cache, which at thousands of
        // connections forgets a session before its client comes back. No session-ID cache
        // either (TLS 1.2 clients resume with tickets too). One TLS 1.3 ticket per
        // handshake, not two: a client reconnects with one, and each costs the server a key
        // derivation, an encryption and a record. docs/tls.md has the measurements.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 1;
        // TLS 1.3 sessions move to our record layer after the handshake (records.rs).
        config.enable_secret_extraction = true;
        Ok(Self {
            config: Arc::new(config),
            certs,
        })
    }

    /// A new connection's session.
    pub fn session(&self) -> Session {
        let conn = UnbufferedServerConnection::new(self.config.clone())
            .expect("a server config with certificates starts a session");
        Session {
            engine: Engine::Rustls(Box::new(conn)),
            wire: OutQueue::default(),
            carry: Vec::new(),
            phase: SessionPhase::Fresh,
            close_sent: false,
            deferred: false,
            record_overhead: 0,
        }
    }

    /// The certificates, to reload and to report.
    pub fn certs(&self) -> &Arc<Certs> {
        &self.certs
    }
}

/// The loaded certificates; reloading swaps them whole, for new handshakes only (a
/// session keeps the certificate it was given).
#[derive(Debug)]
pub struct Certs {
    files: Vec<CertFiles>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Vec<Loaded>>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The leaf's notAfter, seconds since the Unix epoch.
    not_after: i64,
}

/// What `/metrics` shows of the certificates.
#[derive(Debug, Default)]
pub struct CertStatus {
    pub reloads: u64,
    pub reload_failures: u64,
    /// Each certificate file and its leaf's expiry (Unix seconds).
    pub expiry: Vec<(String, i64)>,
}

impl Certs {
    fn load(files: Vec<CertFiles>, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let loaded = load_all(&files, &provider)?;
        Ok(Self {
            files,
            provider,
            current: RwLock::new(Arc::new(loaded)),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// The files to watch.
    pub fn files(&self) -> Vec<PathBuf> {
        let pairs = self.files.iter();
        pairs
            .flat_map(|f| [f.cert.clone(), f.key.clone()])
            .collect()
    }

    /// Loads every file again; on any error the old certificates stay (and it is counted).
    pub fn reload(&self) -> Result<(), String> {
        match load_all(&self.files, &self.provider) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    pub fn status(&self) -> CertStatus {
        let current = self.current();
        CertStatus {
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            expiry: self
                .files
                .iter()
                .zip(current.iter())
                .map(|(f, l)| (f.cert.display().to_string(), l.not_after))
                .collect(),
        }
    }

    fn current(&self) -> Arc<Vec<Loaded>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for Certs {
    /// The first certificate valid for the SNI name; the first one when none is (or no
    /// name was sent): the client then refuses it, as it should.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current();
        let name = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok());
        if let (Some(name), true) = (name, current.len() > 1) {
            let valid = |l: &&Loaded| {
                let leaf = l.key.end_entity_cert().ok();
                leaf.and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
            };
            if let Some(found) = current.iter().find(valid) {
                return Some(found.key.clone());
            }
        }
        current.first().map(|l| l.key.clone())
    }
}

fn load_all(files: &[CertFiles], provider: &CryptoProvider) -> Result<Vec<Loaded>, String> {
    files.iter().map(|f| load_pair(f, provider)).collect()
}

/// One certificate and key; the error names the file and the reason.
fn load_pair(files: &CertFiles, provider: &CryptoProvider) -> Result<Loaded, String> {
    let (cert, key) = (files.cert.display(), files.key.display());
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {}", pem_error(e)))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{cert}: no certificate in the file"));
    };
    let not_after =
        not_after(leaf).ok_or_else(|| format!("{cert}: not a valid X.509 certificate"))?;
    let private =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("{key}: {}", pem_error(e)))?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!("{key}: does not match {cert}"),
        other => format!("{key}: {other}"),
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        not_after,
    })
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("bad PEM: {other:?}"),
    }
}

/// Where a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionPhase {
    /// No byte yet: the first one tells a ClientHello from a plain request.
    Fresh,
    Handshaking,
    Open,
    /// The peer sent close_notify: what it sends after is ignored.
    PeerClosed,
    /// Failed: nothing more is read; what is queued (an alert) is still written.
    Failed,
}

/// Who seals and opens a session's records.
enum Engine {
    /// The handshake, and a TLS 1.2 session throughout: rustls.
    Rustls(Box<UnbufferedServerConnection>),
    /// A TLS 1.3 session after its handshake: our record layer on the session's keys.
    Records(Box<Records>),
    /// Handing the keys over failed: nothing more is read or written.
    Gone,
}

/// One connection's TLS state: the engine, the ciphertext waiting to be sent, and a split
/// record's head. Idle, `wire` and `carry` hold no memory.
pub struct Session {
    engine: Engine,
    /// Ciphertext for the driver, oldest first.
    wire: OutQueue,
    /// The head of a record whose rest has not arrived.
    carry: Vec<u8>,
    phase: SessionPhase,
    close_sent: bool,
    /// Bytes wait in `carry` for the reactor's next handshake budget.
    deferred: bool,
    /// Ciphertext bytes a record of rustls' adds in this session (header, tag, TLS 1.2's
    /// explicit nonce), learnt from the first record sent; 0 until then.
    record_overhead: u8,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("phase", &self.phase)
            .field("wire", &self.wire.len_bytes())
            .field("carry", &self.carry.len())
            .finish()
    }
}

impl Session {
    /// Decrypts `wire`, appending plaintext to `plain`. Returns true when the peer has just
    /// closed cleanly (close_notify).
    pub(super) fn receive(
        &mut self,
        wire: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Result<bool, TransportError> {
        self.deferred = false;
        match self.phase {
            SessionPhase::Fresh => {
                let first = self.carry.first().or(wire.first()).copied();
                self.first_byte(first)?;
            }
            SessionPhase::Handshaking | SessionPhase::Open => {}
            SessionPhase::PeerClosed | SessionPhase::Failed => return Ok(false),
        }
        let result = if self.carry.is_empty() {
            self.process(wire, plain).map(|used| {
                self.carry.extend_from_slice(&wire[used..]);
            })
        } else {
            let mut carry = mem::take(&mut self.carry);
            carry.extend_from_slice(wire);
            self.process(&mut carry, plain).map(|used| {
                carry.drain(..used);
                if !carry.is_empty() {
                    self.carry = carry;
                }
            })
        };
        match result {
            Ok(()) => Ok(self.phase == SessionPhase::PeerClosed),
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    /// A TLS connection starts with a handshake record (0x16); a letter is a plain HTTP
    /// request, answered 400 in plain text as it expects.
    fn first_byte(&mut self, first: Option<u8>) -> Result<(), TransportError> {
        match first {
            None => Ok(()),
            Some(0x16) => {
                self.phase = SessionPhase::Handshaking;
                Ok(())
            }
            Some(b) if b.is_ascii_uppercase() => {
                self.phase = SessionPhase::Failed;
                let body = br#"{"error":"bad_request","message":"plain HTTP request on the TLS port: use https:// or wss://"}"#;
                let response = wsgate_proto::outgoing::http_response(
                    400,
                    "application/json",
                    &[],
                    body,
                    false,
                );
                self.wire.push(Bytes::from(response));
                Err(TransportError::PlainHttp)
            }
            Some(b) => {
                self.phase = SessionPhase::Failed;
                Err(TransportError::NotTls(b))
            }
        }
    }

    /// Runs the engine over the records in `buf`; returns how many bytes it used (the rest
    /// is a partial record).
    fn process(&mut self, buf: &mut [u8], plain: &mut Vec<u8>) -> Result<usize, TransportError> {
        let conn = match &mut self.engine {
            Engine::Rustls(conn) => conn,
            Engine::Records(records) => {
                return open(records, buf, plain, &mut self.wire, &mut self.phase)
            }
            Engine::Gone => return Err(TransportError::Tls("the session lost its keys".into())),
        };
        let mut used = 0;
        // Handshake records being encoded, until rustls says to transmit them.
        let mut flight = Vec::new();
        let mut hand_over = false;
        loop {
            let handshaking = conn.is_handshaking();
            // Once a TLS 1.3 handshake is done, the rest of the read is for our record layer:
            // rustls only finishes what it has to send (the session ticket). A KeyUpdate
            // that came with the client's Finished, taken by rustls, would be answered
            // after the hand-over by nobody, under keys rustls had already moved on.
            let ours = !handshaking && conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
            let input: &mut [u8] = if ours { &mut [] } else { &mut buf[used..] };
            let UnbufferedStatus { discard, state } = conn.process_tls_records(input);
            let state = match state {
                Ok(state) => state,
                Err(e) if handshaking => return Err(TransportError::Handshake(e.to_string())),
                Err(e) => return Err(TransportError::Tls(e.to_string())),
            };
            let more = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(|e| TransportError::Tls(e.to_string()))?;
                        plain.extend_from_slice(record.payload);
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut flight, |out| encode.encode(out));
                    true
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    if !flight.is_empty() {
                        self.wire.push(Bytes::from(mem::take(&mut flight)));
                    }
                    transmit.done();
                    true
                }
                ConnectionState::PeerClosed => {
                    self.phase = SessionPhase::PeerClosed;
                    // Nothing after close_notify counts (RFC 8446 §6.1).
                    return Ok(buf.len());
                }
                ConnectionState::WriteTraffic(_) => {
                    self.phase = SessionPhase::Open;
                    hand_over = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
                    false
                }
                ConnectionState::BlockedHandshake | ConnectionState::Closed => false,
                other => {
                    // Early data is off (max_early_data_size 0); nothing else is expected.
                    return Err(TransportError::Tls(format!("unexpected state {other:?}")));
                }
            };
            used += discard;
            if !more {
                break;
            }
        }
        if hand_over {
            // What follows the client's Finished (its upgrade request, often in the same
            // read) is ours to open.
            self.hand_over()?;
            if let Engine::Records(records) = &mut self.engine {
                used += open(
                    records,
                    &mut buf[used..],
                    plain,
                    &mut self.wire,
                    &mut self.phase,
                )?;
            }
        }
        Ok(used)
    }

    /// Moves a TLS 1.3 session whose handshake is done to our record layer.
    fn hand_over(&mut self) -> Result<(), TransportError> {
        let Engine::Rustls(conn) = mem::replace(&mut self.engine, Engine::Gone) else {
            return Err(TransportError::Tls("no rustls session to hand over".into()));
        };
        let (secrets, kernel) = (*conn)
            .dangerous_into_kernel_connection()
            .map_err(|e| TransportError::Tls(format!("cannot take the session's keys: {e}")))?;
        let records = Records::new(secrets, kernel).map_err(|e| TransportError::Tls(e.reason))?;
        self.engine = Engine::Records(Box::new(records));
        Ok(())
    }

    /// After an error: reads nothing more, and queues the alert rustls prepared (our record
    /// layer queued its own already).
    fn fail(&mut self) {
        self.phase = SessionPhase::Failed;
        self.carry = Vec::new();
        let Engine::Rustls(conn) = &mut self.engine else {
            return;
        };
        let mut alert = Vec::new();
        for _ in 0..4 {
            match conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut alert, |out| encode.encode(out));
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    if !alert.is_empty() {
                        self.wire.push(Bytes::from(mem::take(&mut alert)));
                    }
                    transmit.done();
                }
                _ => break,
            }
        }
    }

    /// Encrypts what `plain` holds (up to `MAX_BATCH`) once less than a record of
    /// ciphertext waits; returns the ciphertext to send. So the session ticket sent after
    /// the handshake and the 101 response leave in one write, and ciphertext never piles up
    /// beyond one send.
    pub(super) fn outgoing<'a>(
        &'a mut self,
        plain: &mut OutQueue,
        scratch: &mut Vec<u8>,
    ) -> &'a OutQueue {
        let may_encrypt = matches!(self.phase, SessionPhase::Open | SessionPhase::PeerClosed);
        let room = self.wire.len_bytes() < MAX_RECORD;
        if room && !plain.is_empty() && may_encrypt && !self.close_sent {
            self.encrypt(plain, scratch);
        }
        &self.wire
    }

    fn encrypt(&mut self, plain: &mut OutQueue, scratch: &mut Vec<u8>) {
        let total = plain.len_bytes().min(MAX_BATCH);
        let conn = match &mut self.engine {
            Engine::Rustls(conn) => conn,
            Engine::Records(records) => {
                // Sealed straight from the frames into a buffer of the exact size, which
                // becomes `Bytes` without a second allocation.
                let overhead = total.div_ceil(records::MAX_PLAINTEXT) * records::OVERHEAD;
                let mut out = Vec::with_capacity(total + overhead);
                let sealed = records.seal_data(&mut out, plain.frames().map(|f| &f[..]), total);
                match sealed {
                    Ok(()) => {
                        plain.advance(total);
                        self.wire.push(Bytes::from(out));
                    }
                    Err(e) => {
                        tracing::debug!("tls: cannot encrypt: {}", e.reason);
                        self.phase = SessionPhase::Failed;
                    }
                }
                return;
            }
            Engine::Gone => {
                self.phase = SessionPhase::Failed;
                return;
            }
        };
        let front = plain.frames().next().expect("not empty");
        // One frame covering the batch is encrypted from where it is; several are gathered
        // so that a record carries as many of them as fit.
        let data: &[u8] = if front.len() >= total {
            &front[..total]
        } else {
            scratch.clear();
            for frame in plain.frames() {
                let take = frame.len().min(total - scratch.len());
                scratch.extend_from_slice(&frame[..take]);
                if scratch.len() == total {
                    break;
                }
            }
            scratch
        };
        // Sized exactly, so that the buffer becomes `Bytes` without a second allocation:
        // from the overhead the session's records have shown, or else by rustls itself (a
        // call with too little room only counts, before it encrypts anything).
        let records = total.div_ceil(MAX_RECORD);
        let mut out = vec![0; total + records * usize::from(self.record_overhead)];
        let written = match conn.process_tls_records(&mut []).state {
            Ok(ConnectionState::WriteTraffic(mut traffic)) => loop {
                match traffic.encrypt(data, &mut out) {
                    Ok(n) => break Some(n),
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) if out.len() < required_size => out.resize(required_size, 0),
                    Err(e) => {
                        tracing::debug!("tls: cannot encrypt: {e}");
                        break None;
                    }
                }
            },
            other => {
                tracing::debug!("tls: cannot encrypt in state {:?}", other.map(|_| ()));
                None
            }
        };
        match written {
            Some(n) => {
                plain.advance(total);
                // One record's worth, if nothing else went out with it (a ticket or a
                // key update before it would add a record of its own).
                if records == 1 && self.record_overhead == 0 && n - total <= MAX_OVERHEAD {
                    self.record_overhead = (n - total) as u8;
                }
                out.truncate(n);
                self.wire.push(Bytes::from(out));
            }
            None => self.phase = SessionPhase::Failed,
        }
    }

    /// Keeps `wire` to process at a later turn (the reactor's handshake budget is spent);
    /// returns whether the session was not waiting already, or `None` (nothing kept) past
    /// [`MAX_DEFERRED`].
    pub(super) fn defer(&mut self, wire: &[u8]) -> Option<bool> {
        if self.carry.len() + wire.len() > MAX_DEFERRED {
            return None;
        }
        self.carry.extend_from_slice(wire);
        Some(!mem::replace(&mut self.deferred, true))
    }

    /// The driver wrote `n` bytes of the ciphertext.
    pub(super) fn sent(&mut self, n: usize) {
        self.wire.advance(n.min(self.wire.len_bytes()));
    }

    /// Whether plaintext waits that can never leave: encrypting failed (or the session
    /// failed while it was queued), and what was encrypted before has gone.
    pub(super) fn is_stuck(&self, plain: &OutQueue) -> bool {
        self.phase == SessionPhase::Failed && self.wire.is_empty() && !plain.is_empty()
    }

    pub(super) fn wire_len(&self) -> usize {
        self.wire.len_bytes()
    }

    pub(super) fn is_handshaking(&self) -> bool {
        matches!(self.phase, SessionPhase::Fresh | SessionPhase::Handshaking)
    }

    /// Queues close_notify once, after everything else (an open session only).
    pub(super) fn close_notify(&mut self) -> bool {
        let open = matches!(self.phase, SessionPhase::Open | SessionPhase::PeerClosed);
        if !open || self.close_sent {
            return false;
        }
        self.close_sent = true;
        let out = match &mut self.engine {
            Engine::Records(records) => records.alert(alert::CLOSE_NOTIFY),
            Engine::Rustls(conn) => {
                let mut out = vec![0; 64];
                match conn.process_tls_records(&mut []).state {
                    Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                        (traffic.queue_close_notify(&mut out).ok()).map(|n| {
                            out.truncate(n);
                            out
                        })
                    }
                    _ => None,
                }
            }
            Engine::Gone => None,
        };
        let Some(out) = out else {
            return false;
        };
        self.wire.push(Bytes::from(out));
        true
    }

    pub(super) fn prefetch_keys(&self) {
        if let Engine::Records(records) = &self.engine {
            records.prefetch_tx();
        }
    }

    pub(super) fn release_idle(&mut self) {
        self.wire.release_idle();
        if self.carry.is_empty() {
            self.carry = Vec::new();
        }
    }
}

/// Opens records with our record layer; a fatal error queues its alert.
fn open(
    records: &mut Records,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    wire: &mut OutQueue,
    phase: &mut SessionPhase,
) -> Result<usize, TransportError> {
    match records.open(buf, plain, wire) {
        Ok(opened) => {
            if opened.peer_closed {
                *phase = SessionPhase::PeerClosed;
            }
            Ok(opened.used)
        }
        Err(fatal) => {
            if let Some(alert) = fatal.alert.and_then(|a| records.alert(a)) {
                wire.push(Bytes::from(alert));
            }
            Err(TransportError::Tls(fatal.reason))
        }
    }
}

/// Appends what `encode` writes to `out`, growing it to the size rustls asks for.
fn encode_into(out: &mut Vec<u8>, mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// The leaf's notAfter (RFC 5280 §4.1.2.5) in Unix seconds, read from its DER without a
/// full X.509 parser; `None` for anything malformed.
fn not_after(der: &[u8]) -> Option<i64> {
    let (certificate, _) = der_item(der, 0x30)?;
    let (tbs, _) = der_item(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_item(rest, 0xa0)?.1; // version
    }
    for tag in [0x02, 0x30, 0x30] {
        rest = der_item(rest, tag)?.1; // serial, signature algorithm, issuer
    }
    let (validity, _) = der_item(rest, 0x30)?;
    let tag = *validity.first()?;
    let after = der_item(validity, tag)?.1; // notBefore
    let tag = *after.first()?;
    let (time, _) = der_item(after, tag)?;
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, rest) = match tag {
        // UTCTime YYMMDDHHMMSSZ: 50..99 are 19xx.
        0x17 if time.len() == 13 => {
            let yy = digits(&time[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &time[2..])
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ.
        0x18 if time.len() == 15 => (digits(&time[..4])?, &time[4..]),
        _ => return None,
    };
    let [month, day, hour, minute, second] =
        [0, 2, 4, 6, 8].map(|i| rest.get(i..i + 2).and_then(digits));
    let (month, day) = (month?, day?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour? * 3600 + minute? * 60 + second?)
}

/// Splits a DER item with `tag` off the front of `der`: (its contents, what follows).
fn der_item(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = der.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, mut rest) = rest.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, &b| l << 8 | usize::from(b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_from_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        // GeneralizedTime from 2050 on (RFC 5280 §4.1.2.5), UTCTime before.
        for ((y, m, d), unix) in [
            ((2031, 7, 15), 1_941_840_000),
            ((2051, 1, 1), 2_556_144_000),
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()), Some(unix));
        }
    }

    #[test]
    fn malformed_der_has_no_expiry() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }
}
