//! I/O drivers: the only code that touches file descriptors. It never parses WebSocket.
//!
//! One small, completion-shaped interface serves both backends. io_uring delivers
//! completions natively (bytes already received into a provided buffer, sends finished);
//! epoll reports readiness, and the reactor then calls [`Driver::recv`], which reads
//! into a buffer lent from the driver's pool. Either way the reactor parses bytes from a
//! lent buffer and gives it back right after, so an idle connection holds no buffer.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::buf::BufId;
use crate::config::IoBackend;
use wsgate_proto::OutQueue;

pub mod epoll;
#[allow(unsafe_code)]
pub mod uring;

/// The driver the reactors run, once chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Epoll,
    Uring,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            Self::Uring => "uring",
        }
    }
}

/// Chooses the driver: `auto` takes io_uring when [`uring::available`] passes and
/// otherwise falls back to epoll, logging why once; `uring` fails when unavailable.
pub fn select(wanted: IoBackend) -> io::Result<Backend> {
    match wanted {
        IoBackend::Epoll => Ok(Backend::Epoll),
        IoBackend::Uring => uring::available().map(|()| Backend::Uring).map_err(|why| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io uring requested but io_uring is unavailable: {why}"),
            )
        }),
        IoBackend::Auto => match uring::available() {
            Ok(()) => Ok(Backend::Uring),
            Err(why) => {
                tracing::info!("io_uring unavailable ({why}): using epoll");
                Ok(Backend::Epoll)
            }
        },
    }
}

/// A connection's index in its reactor's slab; also its epoll token / io_uring user data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

impl ConnId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Something that happened on a driver's descriptors.
#[derive(Debug)]
pub enum Completion<Io> {
    /// A new connection was accepted.
    Accepted { io: Io, peer: SocketAddr },
    /// (epoll) The socket has bytes or an EOF: call `Driver::recv` until a short read, or
    /// until EOF when `closed` (the peer's FIN came with the data: no further edge follows).
    Readable { conn: ConnId, closed: bool },
    /// (io_uring) Bytes were received into a lent buffer; `Ok(None)` is EOF.
    Received {
        conn: ConnId,
        result: io::Result<Option<(BufId, usize)>>,
    },
    /// (epoll) The socket can take more bytes after a short write.
    Writable(ConnId),
    /// (io_uring) A send submitted by `Driver::send` finished.
    Sent {
        conn: ConnId,
        result: io::Result<usize>,
    },
    /// (io_uring) The last operation of a closed connection finished: its id may be reused.
    Released(ConnId),
    /// Another thread called `wake` on this reactor's waker.
    Woken,
}

/// What `Driver::send` did.
#[derive(Debug, PartialEq, Eq)]
pub enum SendStatus {
    /// Written synchronously (epoll): advance the queue by this many bytes.
    Wrote(usize),
    /// Submitted (io_uring): the queued frames are in flight until `Completion::Sent`.
    Submitted,
}

/// Per-reactor I/O: one listener, its connections, a waker.
pub trait Driver {
    /// Per-connection I/O state, stored in the reactor's `Conn`.
    type Io;

    /// Which backend this is, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Waits up to `timeout` for at least one completion and appends what happened.
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion<Self::Io>>,
    ) -> io::Result<()>;

    /// Starts receiving on a newly accepted connection.
    fn attach(&mut self, conn: ConnId, io: &mut Self::Io) -> io::Result<()>;

    /// (epoll) Reads into a lent buffer: `Ok(Some((buf, n)))`, `Ok(None)` at EOF, or
    /// `WouldBlock` once drained. Give the buffer back with `release`.
    fn recv(&mut self, io: &mut Self::Io) -> io::Result<Option<(BufId, usize)>>;

    /// The bytes of a lent buffer.
    fn buf(&mut self, buf: BufId) -> &mut [u8];

    /// Gives a lent buffer back.
    fn release(&mut self, buf: BufId);

    /// Writes (or submits) the queued frames in one vectored call. The queue must not
    /// change in front until the bytes are accounted for (`Wrote` now, or `Sent` later).
    fn send(&mut self, conn: ConnId, io: &mut Self::Io, out: &OutQueue) -> io::Result<SendStatus>;

    /// Stops or restarts receiving (backpressure). epoll: nothing to do, the reactor just
    /// doesn't call `recv`; io_uring cancels or re-arms the multishot receive.
    fn set_receiving(&mut self, conn: ConnId, io: &mut Self::Io, on: bool);

    /// Half-closes: sends FIN after the queued bytes.
    fn shutdown_write(&mut self, io: &mut Self::Io);

    /// Closes the connection. `true`: done, drop `io` and free the id; `false`: operations
    /// are in flight, keep `io` (and the queue it may be sending from) until
    /// `Completion::Released`.
    fn close(&mut self, conn: ConnId, io: &mut Self::Io) -> bool;

    /// Stops accepting (drain).
    fn stop_accepting(&mut self);
}
