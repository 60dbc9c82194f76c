//! The per-connection transport, between the driver's bytes and the protocol.
//!
//! ```text
//!   driver ──wire bytes (lent buffer)──▶ Transport::receive ──plaintext──▶ HTTP / WebSocket
//!   driver ◀──wire queue── Transport::outgoing ◀──plaintext frames (OutQueue)── connection
//! ```
//!
//! Today only `Plain`, which passes both ways through untouched and holds nothing, so an
//! idle plain connection still holds no buffer. A TLS transport decrypts in place in the
//! lent buffer and encrypts a turn's queued frames together before the driver sends them.

use wsgate_proto::OutQueue;

/// Why a transport gave up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {}

/// How one connection's bytes travel.
#[derive(Debug, Default)]
pub enum Transport {
    /// TCP as is.
    #[default]
    Plain,
}

impl Transport {
    /// Turns bytes received from the driver into plaintext, in place: the returned slice
    /// lies inside `wire`.
    pub fn receive<'a>(&mut self, wire: &'a mut [u8]) -> Result<&'a mut [u8], TransportError> {
        match self {
            Self::Plain => Ok(wire),
        }
    }

    /// The bytes the driver should send next, after taking in what `plain` has queued (a
    /// TLS transport encrypts it into its own queue and empties `plain`).
    pub fn outgoing<'a>(&'a mut self, plain: &'a mut OutQueue) -> &'a OutQueue {
        match self {
            Self::Plain => plain,
        }
    }

    /// The driver wrote `n` bytes of what `outgoing` returned.
    pub fn sent(&mut self, plain: &mut OutQueue, n: usize) {
        match self {
            Self::Plain => plain.advance(n.min(plain.len_bytes())),
        }
    }

    /// Bytes waiting to be written, plaintext and wire together (for backpressure and the
    /// slow-consumer cap).
    pub fn pending(&self, plain: &OutQueue) -> usize {
        match self {
            Self::Plain => plain.len_bytes(),
        }
    }

    /// Whether anything is left to write.
    pub fn is_idle(&self, plain: &OutQueue) -> bool {
        match self {
            Self::Plain => plain.is_empty(),
        }
    }
}
