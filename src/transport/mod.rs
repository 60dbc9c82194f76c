//! The per-connection transport, between the driver's bytes and the protocol.
//!
//! ```text
//!   driver ──wire bytes (lent buffer)──▶ Transport::receive ──plaintext──▶ HTTP / WebSocket
//!   driver ◀──wire queue── Transport::outgoing ◀──plaintext frames (OutQueue)── connection
//! ```
//!
//! `Plain` passes both ways untouched and holds nothing (`plain.rs`). `Tls` (`tls/`, the
//! only module that uses rustls: the handshake on rustls, then for TLS 1.3 our own record
//! layer, `tls/records.rs`) decrypts the records in the lent buffer and encrypts a turn's
//! queued frames together, as few records as fit, before the driver sends them. It is
//! boxed, and the reactor keeps transports beside its connection slots, so a plain
//! connection's slot does not grow.

mod plain;
pub mod tls;

use wsgate_proto::OutQueue;

use crate::driver::ListenerId;
use plain::Plain;

/// The listener whose connections speak TLS (the plain one is `ListenerId(0)`).
pub const TLS_LISTENER: ListenerId = ListenerId(1);

/// Why a transport gave up on a connection. Whatever it still has to say (a TLS alert, a
/// plain-HTTP 400) is queued: write it, then close.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An HTTP request on the TLS port (answered 400).
    #[error("plain HTTP request on the TLS port")]
    PlainHttp,
    /// Bytes that are not a TLS record where a ClientHello must be.
    #[error("not TLS: first byte {0:#04x}")]
    NotTls(u8),
    /// The TLS handshake failed (an alert is queued).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// A TLS error after the handshake (a bad record, a peer's fatal alert).
    #[error("TLS: {0}")]
    Tls(String),
}

/// What one receive produced.
#[derive(Debug)]
pub struct Received<'a> {
    /// Plaintext for the protocol (in the lent buffer, or the reactor's scratch for TLS).
    pub plain: &'a mut [u8],
    /// The peer closed its side cleanly (TLS close_notify): treat like EOF.
    pub peer_closed: bool,
}

/// How one connection's bytes travel.
#[derive(Debug, Default)]
pub enum Transport {
    /// TCP as is.
    #[default]
    Plain,
    /// TLS, boxed: an idle session's rustls state lives outside the connection slot.
    Tls(Box<tls::Session>),
}

impl Transport {
    /// Turns bytes received from the driver into plaintext. Plain returns `wire` itself;
    /// TLS decrypts in `wire` and appends the plaintext to `scratch` (the reactor's, empty
    /// on entry), keeping only a split record's tail until the rest arrives.
    pub fn receive<'a>(
        &mut self,
        wire: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<Received<'a>, TransportError> {
        match self {
            Self::Plain => Ok(Received {
                plain: wire,
                peer_closed: false,
            }),
            Self::Tls(session) => {
                let peer_closed = session.receive(wire, scratch)?;
                Ok(Received {
                    plain: scratch,
                    peer_closed,
                })
            }
        }
    }

    /// The bytes the driver should send next, after taking in what `plain` has queued (TLS
    /// encrypts it into its own queue, `scratch` gathering the frames of one record).
    pub fn outgoing<'a>(
        &'a mut self,
        plain: &'a mut OutQueue,
        scratch: &mut Vec<u8>,
    ) -> &'a OutQueue {
        match self {
            Self::Plain => plain,
            Self::Tls(session) => session.outgoing(plain, scratch),
        }
    }

    /// The driver wrote `n` bytes of what `outgoing` returned.
    pub fn sent(&mut self, plain: &mut OutQueue, n: usize) {
        match self {
            Self::Plain => Plain::sent(plain, n),
            Self::Tls(session) => session.sent(n),
        }
    }

    /// Bytes waiting to be written, plaintext and wire together (for backpressure and the
    /// slow-consumer cap).
    pub fn pending(&self, plain: &OutQueue) -> usize {
        match self {
            Self::Plain => plain.len_bytes(),
            Self::Tls(session) => plain.len_bytes() + session.wire_len(),
        }
    }

    /// Whether anything is left to write.
    pub fn is_idle(&self, plain: &OutQueue) -> bool {
        match self {
            Self::Plain => plain.is_empty(),
            Self::Tls(session) => plain.is_empty() && session.wire_len() == 0,
        }
    }

    /// Whether what `plain` holds can never be sent (TLS could not encrypt it): the
    /// connection must be closed rather than left to wait.
    pub fn is_stuck(&self, plain: &OutQueue) -> bool {
        match self {
            Self::Plain => false,
            Self::Tls(session) => session.is_stuck(plain),
        }
    }

    /// Still in the TLS handshake (the handshake timeout and per-turn bound apply).
    pub fn is_handshaking(&self) -> bool {
        match self {
            Self::Plain => false,
            Self::Tls(session) => session.is_handshaking(),
        }
    }

    /// Keeps `wire` unprocessed until `receive` is called again (with no new bytes, at a
    /// later turn): a TLS handshake waiting for the reactor's per-turn budget. Returns
    /// whether it was not waiting already; `None` when the client sent more than a
    /// handshake can hold before its turn (see `tls::MAX_DEFERRED`).
    pub fn defer(&mut self, wire: &[u8]) -> Option<bool> {
        match self {
            Self::Plain => Some(false),
            Self::Tls(session) => session.defer(wire),
        }
    }

    /// Before the FIN of a clean close: queues what the transport says last (TLS
    /// close_notify). Returns whether it queued anything.
    pub fn close(&mut self) -> bool {
        match self {
            Self::Plain => false,
            Self::Tls(session) => session.close_notify(),
        }
    }

    /// Starts loading this connection's TLS session into the cache (no-op for plain).
    pub fn prefetch_session(&self) {
        if let Self::Tls(session) = self {
            crate::sys::prefetch(&**session);
        }
    }

    /// Starts loading the keys a TLS send uses (the session itself should be cached by now:
    /// `prefetch_session` a connection earlier).
    pub fn prefetch_keys(&self) {
        if let Self::Tls(session) = self {
            session.prefetch_keys();
        }
    }

    /// Gives back memory an idle connection does not need.
    pub fn release_idle(&mut self) {
        if let Self::Tls(session) = self {
            session.release_idle();
        }
    }
}
