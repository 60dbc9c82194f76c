//! I/O drivers: the only code that touches file descriptors. It never parses WebSocket.
//!
//! Drivers own their sockets, keyed by [`ConnId`], and report one set of completions on
//! both backends: accepted, received (bytes in a lent buffer), EOF, sent, failed,
//! released, woken. io_uring produces them natively; epoll emulates them by doing the
//! read or the write itself on readiness (monoio's model). The reactor never learns which
//! backend it runs on and holds no socket.
//!
//! A turn: [`Driver::wait`] blocks until something is ready (or the timeout), then
//! [`Driver::next`] hands out completions one at a time until the turn's are used up.
//! A received buffer is lent until [`Driver::release`]; release it before asking for the
//! next completion, so a reactor holds one buffer at a time and an idle connection none
//! (epoll reads lazily, inside `next`, for exactly that reason).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wsgate_proto::OutQueue;

use crate::buf::BufId;
use crate::config::IoBackend;

pub mod epoll;
#[cfg(test)]
pub mod memory;
#[allow(unsafe_code)]
pub mod uring;

/// Most slices in one vectored send (Linux IOV_MAX is 1024; more frames wait for the next).
pub const MAX_IOV: usize = 64;

/// Several frames that together are at most this long are copied into one buffer and
/// sent as one slice, not as a slice each: a fan-out batch is a few hundred bytes to a few
/// KiB in several frames, and copying it in user space costs less than the kernel's
/// walk of a long iovec (and, on io_uring, a clone and a drop of each frame kept for the
/// send plus the heap spill of the iovec and frame arrays past two). At 1,000
/// subscribers × 1,000/s, io_uring at 6 frames a write: 5 % less CPU per delivery (767 vs
/// 808 ns, medians of 5 rounds, lower in each); epoll at 14 frames a write: 4–9 % less
/// (446 vs 466 ns and 475 vs 520 ns, two runs of 3 rounds, lower in each of the 6).
/// 16 KiB, not 4: near saturation (1,000 subscribers × 4,000/s) writes carry 25–60 frames
/// of about 100 bytes, and past 4 KiB io_uring went back to clones: 242 against 214–226
/// ns a delivery, and p99 over 250 ms where the copy kept it at 20–26 ms.
const FLAT_MAX: usize = 16384;

/// Appends the front of `out` to `flat` when it is several small frames, and returns how
/// many it copied; 0, with `flat` as it was, when it is not. It copies the longest run of
/// the oldest frames that fits in [`FLAT_MAX`] if that run is the whole queue or at least
/// [`MAX_IOV`] frames (as many as a vectored send would carry), so that a backlog of
/// small frames goes in writes of up to `FLAT_MAX` bytes, not of `MAX_IOV` frames; when
/// the oldest `MAX_IOV` frames are more than `FLAT_MAX` bytes, a vectored send over them
/// carries more than a copy would.
fn copy_small_frames(out: &OutQueue, flat: &mut Vec<u8>) -> usize {
    let mut total = 0;
    let mut n = 0;
    let mut whole = true;
    for frame in out.frames() {
        if total + frame.len() > FLAT_MAX {
            whole = false;
            break;
        }
        total += frame.len();
        n += 1;
    }
    if n < 2 || !(whole || n >= MAX_IOV) {
        return 0;
    }
    flat.reserve(total);
    for frame in out.frames().take(n) {
        flat.extend_from_slice(frame);
    }
    n
}

/// How long a driver sees no bytes move before [`Driver::release_idle_memory`] acts.
pub const IDLE_AFTER: Duration = Duration::from_secs(2);

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

/// A connection's id within its reactor: given by the driver when it accepts, and not
/// given to another connection before [`Completion::Released`] for this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

impl ConnId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Which of the reactor's listeners accepted a connection (their order at start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub u8);

/// Something that finished on a driver's descriptors.
#[derive(Debug)]
pub enum Completion {
    /// A new connection, now owned by the driver under `conn`; receiving is on.
    Accepted {
        conn: ConnId,
        peer: SocketAddr,
        listener: ListenerId,
    },
    /// `len` bytes (at least one) arrived in the lent buffer `buf`: read them, then
    /// `release` it.
    Received {
        conn: ConnId,
        buf: BufId,
        len: usize,
    },
    /// The peer sent FIN: no more bytes will come (sending may still work).
    Eof(ConnId),
    /// The send in flight finished: all `bytes` it covered were written.
    Sent { conn: ConnId, bytes: usize },
    /// The connection broke (reset, send or receive error): close it.
    Failed { conn: ConnId, error: io::Error },
    /// After `close`: nothing is in flight any more, the id may be reused.
    Released(ConnId),
    /// Another thread called `wake` on this reactor's waker.
    Woken,
}

/// Per-reactor I/O: its listeners, its connections, a waker.
///
/// What a call starts completes at a later turn on both backends: the `Sent` of a
/// `send` (even one epoll wrote at once) and the `Released` of a `close`.
pub trait Driver {
    /// Which backend this is, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Blocks up to `timeout` until at least one completion is ready; returns at once
    /// when some are already pending (a busy connection's reads carried over, a `Sent`
    /// or `Released` of the last turn).
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// The next completion of this turn, `None` once the turn's are used up.
    fn next(&mut self) -> Option<Completion>;

    /// The bytes of a lent buffer.
    fn buf(&mut self, buf: BufId) -> &mut [u8];

    /// Gives a lent buffer back.
    fn release(&mut self, buf: BufId);

    /// Sends the front of `out` (up to [`MAX_IOV`] frames, or a copy of up to
    /// `FLAT_MAX` bytes of small frames: `copy_small_frames`) in one write. One
    /// `Sent` with the total follows, or `Failed`: what the socket does not take at once
    /// the driver finishes on its own. At most one send per connection is in flight: the
    /// caller keeps the queue's front as it is and waits for `Sent` before sending again.
    /// The driver keeps what it still needs alive itself (clones of the `Bytes`), so the
    /// caller may drop its queue at any time (a close).
    fn send(&mut self, conn: ConnId, out: &OutQueue);

    /// Stops or restarts receiving (backpressure). While off, no `Received` or `Eof`
    /// comes for `conn` beyond what was already complete (io_uring: receives the kernel
    /// finished before its cancel landed); bytes that arrive meanwhile wait in the socket
    /// and come after it is back on.
    fn set_receiving(&mut self, conn: ConnId, on: bool);

    /// Half-closes: FIN after the bytes already sent, including a send still in flight.
    fn shutdown_write(&mut self, conn: ConnId);

    /// Closes the connection. Only `Released(conn)` follows (once nothing of it is in
    /// flight, at a later turn); other completions for it that were pending are dropped.
    fn close(&mut self, conn: ConnId);

    /// Stops accepting on every listener (drain). No `Accepted` comes after it.
    fn stop_accepting(&mut self);

    /// Gives back memory that only a busy reactor needs (pooled send state, queue capacity,
    /// io_uring's receive-buffer pages) once no bytes have moved for [`IDLE_AFTER`]. Call it
    /// from the timer sweep with the turn's time; it is cheap when there is nothing to do.
    fn release_idle_memory(&mut self, now: Instant);
}

/// A socket's state bits, one byte per connection; each driver names its own bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Flags(u8);

impl Flags {
    fn has(self, bits: u8) -> bool {
        self.0 & bits != 0
    }

    fn insert(&mut self, bits: u8) {
        self.0 |= bits;
    }

    fn remove(&mut self, bits: u8) {
        self.0 &= !bits;
    }
}

/// Tells a driver when bytes have not moved for [`IDLE_AFTER`]: once per quiet spell.
#[derive(Debug, Default)]
struct IdleClock {
    /// Bytes moved since the last `idle` call.
    active: bool,
    /// Start of the current quiet spell; `None` before any activity and once it was reported.
    quiet_since: Option<Instant>,
}

impl IdleClock {
    fn touch(&mut self) {
        self.active = true;
    }

    /// Whether the quiet spell that `now` is in just reached [`IDLE_AFTER`].
    fn idle(&mut self, now: Instant) -> bool {
        if std::mem::take(&mut self.active) {
            self.quiet_since = Some(now);
            return false;
        }
        match self.quiet_since {
            Some(since) if now.saturating_duration_since(since) >= IDLE_AFTER => {
                self.quiet_since = None;
                true
            }
            _ => false,
        }
    }
}

/// After an accept fails for want of resources (EMFILE: a flood of connections held past
/// `max_connections` while they wait for their 503), how long before the listeners are
/// tried again. Descriptors freed by closing connections give the listener no new event,
/// so waiting for one (epoll's edge) can wait forever, and re-arming at once (io_uring)
/// spins on the same error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// When a driver may accept again after a failed accept; warns once per spell of failures.
/// The clock is read only while a failure is being waited out: never on a healthy turn.
#[derive(Debug, Default)]
struct AcceptBackoff {
    until: Option<Instant>,
    failing: bool,
}

impl AcceptBackoff {
    /// An accept failed with `error`: no accepting for [`ACCEPT_RETRY`].
    fn failed(&mut self, error: &io::Error) {
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(
                "accept failed: {error}; trying again every {} ms",
                ACCEPT_RETRY.as_millis()
            );
        }
        self.until = Some(Instant::now() + ACCEPT_RETRY);
    }

    /// A connection was accepted.
    fn succeeded(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::info!("accepting again");
        }
    }

    /// Whether the listeners are waiting out a failure.
    fn waiting(&self) -> bool {
        self.until.is_some_and(|until| Instant::now() < until)
    }

    /// Whether a wait just ended (once per failure): the listeners are tried again.
    fn retry_due(&mut self) -> bool {
        self.until
            .take_if(|until| Instant::now() >= *until)
            .is_some()
    }

    /// `timeout`, shortened to end when the wait does.
    fn bound(&self, timeout: Option<Duration>) -> Option<Duration> {
        match self.until {
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                Some(timeout.map_or(left, |t| t.min(left)))
            }
            None => timeout,
        }
    }
}

#[cfg(test)]
mod tests;
