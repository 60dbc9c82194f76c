//! The epoll driver, on mio: readiness turned into completions by doing the reads and
//! writes itself (monoio's model).
//!
//! Sockets are registered edge-triggered for reads and writes once, at accept, so a steady
//! connection costs no `epoll_ctl`. A readable edge is remembered on the socket and queued;
//! `next` reads lazily, one read per call, so the reactor holds one lent buffer at a time.
//! A socket gets [`READS_PER_TURN`] reads a turn; one with bytes left is carried over to the
//! next turn, and `wait` does not block while any are. A read that fills the buffer, or one
//! after the peer's FIN, means more may be waiting, for which no new edge will come.
//!
//! `send` writes at once. What the socket did not take is kept as slices of the same
//! `Bytes` and finished on the writable edge (which only follows a short write), then the
//! whole is reported as one `Sent`. Completions of calls made during a turn (`Sent`,
//! `Failed` from a write, `Released`) are handed out at the next turn, as io_uring's are.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, TcpListener as StdListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use mio::event::Event;
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use wsgate_proto::OutQueue;

use super::{
    copy_small_frames, AcceptBackoff, Completion, ConnId, Driver, Flags, IdleClock, ListenerId,
    MAX_IOV,
};
use crate::buf::{BufId, BufPool};
use crate::sys::{EventFd, TimerFd};

/// Reads per socket per turn before the others get a go.
pub const READS_PER_TURN: u8 = 16;

/// Size of a lent read buffer.
pub const READ_BUF: usize = 64 * 1024;

const WAKER: Token = Token(usize::MAX);
const TIMER: Token = Token(usize::MAX - 1);
/// Listener `i` has token `LISTENER_0 - i`; connections have their id, far below.
const LISTENER_0: usize = usize::MAX - 2;

// `Sock::flags` bits.
/// The reactor wants bytes (`set_receiving`).
const RECEIVING: u8 = 1 << 0;
/// An edge came and no read has found the socket empty since.
const READABLE: u8 = 1 << 1;
/// The peer's FIN (or an error) was seen: read until EOF, no further edge comes.
const HUP: u8 = 1 << 2;
/// In `reading` or `carry` (at most once).
const QUEUED: u8 = 1 << 3;
/// EOF or a read error was reported: no more reads.
const READ_DONE: u8 = 1 << 4;
/// `shutdown_write` waits for the unfinished send.
const SHUT_AFTER_SEND: u8 = 1 << 5;
/// `close` was called: only `Released` follows.
const CLOSED: u8 = 1 << 6;

pub struct EpollDriver {
    poll: Poll,
    events: Events,
    /// Indexed by `ListenerId`; `None` once stopped.
    listeners: Vec<Option<TcpListener>>,
    /// Listeners that may have connections waiting (an edge, and no `WouldBlock` since).
    acceptable: Vec<ListenerId>,
    /// After a failed accept (EMFILE): when every listener is tried again.
    backoff: AcceptBackoff,
    waker: Arc<EventFd>,
    /// Ends a wait whose timeout is not a whole number of milliseconds on time.
    timer: TimerFd,
    /// Whether `timer` is set and has not fired.
    timer_set: bool,
    pool: BufPool,
    /// The connections; a key is a `ConnId`, freed when `Released` is handed out.
    socks: Slab<Sock>,
    /// This turn's completions, handed out before accepts and reads.
    ready: VecDeque<Completion>,
    /// Completions of calls made this turn (sends, closes): the next turn's.
    later: Vec<Completion>,
    /// Sockets to read this turn, in order; `next` reads the front one.
    reading: VecDeque<ConnId>,
    /// Sockets whose read budget ran out with bytes left: read next turn.
    carry: Vec<ConnId>,
    idle: IdleClock,
    /// The copy a send of several small frames makes ([`copy_small_frames`]), reused.
    flat: Vec<u8>,
}

/// One connection: 16 bytes while idle, and so is its slab entry (the socket's unused -1
/// holds the slab's tag).
struct Sock {
    /// Closed when `Released` is handed out (deregistered at `close`).
    stream: TcpStream,
    flags: Flags,
    /// Reads this turn (the budget is `READS_PER_TURN`).
    reads: u8,
    /// What a short write left, finished on the writable edge.
    unsent: Option<Box<Unsent>>,
}

/// The rest of a send the socket did not take at once.
struct Unsent {
    /// Slices of the caller's frames (shared, not copied), oldest first; or the rest of a
    /// copy of small frames, as one. At most `MAX_IOV`.
    frames: Vec<Bytes>,
    /// Bytes the whole send covers, reported in `Sent`.
    total: usize,
}

impl EpollDriver {
    /// Takes the reactor's listeners (their order gives their `ListenerId`) and its waker.
    pub fn new(listeners: Vec<StdListener>, waker: Arc<EventFd>) -> io::Result<Self> {
        Self::with_read_buf(listeners, waker, READ_BUF)
    }

    /// As `new`, with lent buffers of `read_buf` bytes (tests use small ones).
    pub(crate) fn with_read_buf(
        listeners: Vec<StdListener>,
        waker: Arc<EventFd>,
        read_buf: usize,
    ) -> io::Result<Self> {
        assert!(
            listeners.len() <= usize::from(u8::MAX) + 1,
            "a ListenerId is one byte"
        );
        let poll = Poll::new()?;
        let mut registered = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let mut listener = TcpListener::from_std(listener);
            poll.registry().register(
                &mut listener,
                Token(LISTENER_0 - index),
                Interest::READABLE,
            )?;
            registered.push(Some(listener));
        }
        poll.registry()
            .register(&mut SourceFd(&waker.as_raw_fd()), WAKER, Interest::READABLE)?;
        let timer = TimerFd::new()?;
        poll.registry()
            .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            listeners: registered,
            acceptable: Vec::new(),
            backoff: AcceptBackoff::default(),
            waker,
            timer,
            timer_set: false,
            pool: BufPool::new(read_buf),
            socks: Slab::new(),
            ready: VecDeque::new(),
            later: Vec::new(),
            reading: VecDeque::new(),
            carry: Vec::new(),
            idle: IdleClock::default(),
            flat: Vec::new(),
        })
    }

    /// Whether `completion` may still be handed out (its connection was not closed since).
    fn current(&self, completion: &Completion) -> bool {
        let conn = match completion {
            Completion::Received { conn, .. }
            | Completion::Sent { conn, .. }
            | Completion::Failed { conn, .. }
            | Completion::Accepted { conn, .. }
            | Completion::Eof(conn) => *conn,
            Completion::Released(_) | Completion::Woken => return true,
        };
        self.socks
            .get(conn.index())
            .is_some_and(|sock| !sock.flags.has(CLOSED))
    }

    /// epoll waits whole milliseconds, and mio rounds a timeout up to the next one, so a
    /// wait of 1.2 ms would end at 2 ms: a batch due at its bound would leave up to 1 ms
    /// past it. A timeout with a fraction of a millisecond sets the timer instead, which
    /// ends the wait on time; the rounded-up epoll timeout stays as a backstop.
    fn set_timer(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match timeout {
            // Not a wait: a timer set earlier may fire meanwhile, and is cleared then.
            Some(Duration::ZERO) => {}
            Some(after) if after.subsec_nanos() % 1_000_000 != 0 => {
                self.timer.set(after)?;
                self.timer_set = true;
            }
            _ if self.timer_set => {
                // An earlier wait's timer would end this one early.
                self.timer.set(Duration::ZERO)?;
                self.timer_set = false;
            }
            _ => {}
        }
        Ok(())
    }

    /// Records one readiness event.
    fn on_event(&mut self, event: &Event) {
        match event.token() {
            WAKER => {
                self.waker.drain();
                self.ready.push_back(Completion::Woken);
            }
            TIMER => {
                self.timer.clear();
                self.timer_set = false;
            }
            Token(key) if key > LISTENER_0 - self.listeners.len() => {
                let listener = ListenerId((LISTENER_0 - key) as u8);
                if !self.acceptable.contains(&listener) && !self.backoff.waiting() {
                    self.acceptable.push(listener);
                }
            }
            Token(key) => {
                let conn = ConnId(key as u32);
                let Some(sock) = open(&mut self.socks, conn) else {
                    return;
                };
                let hup = event.is_read_closed() || event.is_error();
                if event.is_readable() || hup {
                    sock.flags
                        .insert(if hup { READABLE | HUP } else { READABLE });
                    if sock.wants_read() && !sock.flags.has(QUEUED) {
                        sock.flags.insert(QUEUED);
                        sock.reads = 0;
                        self.reading.push_back(conn);
                    }
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    if let Some(done) = sock.finish_send(conn) {
                        self.ready.push_back(done);
                    }
                }
            }
        }
    }

    /// Accepts one connection on `listener`; `None` when there was none to report.
    fn accept(&mut self, listener: ListenerId) -> Option<Completion> {
        let index = usize::from(listener.0);
        let Some(socket) = &self.listeners[index] else {
            self.acceptable.retain(|&l| l != listener);
            return None;
        };
        match socket.accept() {
            Ok((stream, peer)) => {
                // A plain std stream (mio's carries a selector id in debug builds); it is
                // non-blocking, as mio accepted it.
                let stream = TcpStream::from(stream);
                let entry = self.socks.vacant_entry();
                let conn = ConnId(u32::try_from(entry.key()).expect("fewer than 2^32 sockets"));
                let registered = stream.set_nodelay(true).and_then(|()| {
                    self.poll.registry().register(
                        &mut SourceFd(&stream.as_raw_fd()),
                        Token(entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                });
                if let Err(e) = registered {
                    tracing::debug!(%peer, "dropping an accepted connection: {e}");
                    return None;
                }
                entry.insert(Sock {
                    stream,
                    flags: Flags(RECEIVING),
                    reads: 0,
                    unsent: None,
                });
                self.backoff.succeeded();
                Some(Completion::Accepted {
                    conn,
                    peer,
                    listener,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.acceptable.retain(|&l| l != listener);
                None
            }
            // Per-connection failures: go on with the next one.
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionAborted
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                None
            }
            // fd exhaustion (EMFILE) would spin: the listeners rest, then are tried again
            // (closed connections free descriptors without a new edge on the listener).
            Err(e) => {
                self.backoff.failed(&e);
                self.acceptable.clear();
                None
            }
        }
    }

    /// Reads once from `conn`, the front of `reading`; `None` when there was nothing to
    /// report (it left the queue).
    fn read(&mut self, conn: ConnId) -> Option<Completion> {
        let Some(sock) = self.socks.get_mut(conn.index()) else {
            self.reading.pop_front();
            return None;
        };
        // A stale entry (closed, or the id reused), or reading held by `set_receiving`:
        // the readiness stays recorded in READABLE.
        if !sock.flags.has(QUEUED) || sock.flags.has(CLOSED) || !sock.wants_read() {
            if !sock.flags.has(CLOSED) {
                sock.flags.remove(QUEUED);
            }
            self.reading.pop_front();
            return None;
        }
        let buf = self.pool.lend();
        let result = loop {
            match (&sock.stream).read(self.pool.get(buf)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => break result,
            }
        };
        let (done, completion) = match result {
            Ok(0) => {
                sock.flags.insert(READ_DONE);
                (true, Some(Completion::Eof(conn)))
            }
            Ok(len) => {
                sock.reads += 1;
                let more = len == self.pool.size() || sock.flags.has(HUP);
                if more && sock.reads >= READS_PER_TURN {
                    // Still QUEUED: no second entry for it this turn.
                    self.reading.pop_front();
                    self.carry.push(conn);
                }
                self.idle.touch();
                let received = Completion::Received { conn, buf, len };
                (!more, Some(received))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (true, None),
            Err(error) => {
                sock.flags.insert(READ_DONE);
                (true, Some(Completion::Failed { conn, error }))
            }
        };
        if done {
            // Drained: a new edge comes with new bytes.
            sock.flags.remove(READABLE | QUEUED);
            self.reading.pop_front();
        }
        if !matches!(completion, Some(Completion::Received { .. })) {
            self.pool.give_back(buf);
        }
        completion
    }
}

impl Sock {
    fn wants_read(&self) -> bool {
        self.flags.has(RECEIVING) && !self.flags.has(READ_DONE | CLOSED)
    }

    /// Writes what a short write left (the socket became writable); the completion once it
    /// is all written or the write failed.
    fn finish_send(&mut self, conn: ConnId) -> Option<Completion> {
        let unsent = self.unsent.as_mut()?;
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        for (slice, frame) in iov.iter_mut().zip(&unsent.frames) {
            *slice = IoSlice::new(frame);
        }
        let n = unsent.frames.len();
        let written = match send_slices(&self.stream, &iov[..n]) {
            Ok(written) => written,
            Err(error) => {
                self.unsent = None;
                return Some(Completion::Failed { conn, error });
            }
        };
        skip_front(&mut unsent.frames, written);
        if !unsent.frames.is_empty() {
            // Short again: the next edge follows when the socket drains.
            return None;
        }
        let total = unsent.total;
        self.unsent = None;
        Some(self.sent(conn, total))
    }

    /// A send finished: the `Sent`, after the FIN that waited for it.
    fn sent(&mut self, conn: ConnId, bytes: usize) -> Completion {
        if self.flags.has(SHUT_AFTER_SEND) {
            self.flags.remove(SHUT_AFTER_SEND);
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Completion::Sent { conn, bytes }
    }
}

/// The open socket `conn`, if it is one.
fn open(socks: &mut Slab<Sock>, conn: ConnId) -> Option<&mut Sock> {
    socks
        .get_mut(conn.index())
        .filter(|sock| !sock.flags.has(CLOSED))
}

/// One `send` (one slice) or `sendmsg` (several), with `WouldBlock` as zero bytes written.
/// Not `writev`: a write to a socket goes through the file layer first (the file position
/// lock, the area check, fsnotify), which the socket calls skip; and `send` does not copy
/// a message header and an iovec array in. Profiled at 10,000 subscribers × 10/s (one
/// frame per write), the file layer was ~9 % of the server's CPU.
fn send_slices(stream: &TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    let socket = socket2::SockRef::from(stream);
    loop {
        let sent = match iov {
            [one] => socket.send_with_flags(one, libc::MSG_NOSIGNAL),
            _ => socket.send_vectored_with_flags(iov, libc::MSG_NOSIGNAL),
        };
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

/// Drops `n` written bytes from the front of `frames`.
fn skip_front(frames: &mut Vec<Bytes>, mut n: usize) {
    let whole = frames
        .iter()
        .take_while(|frame| {
            let all = frame.len() <= n;
            if all {
                n -= frame.len();
            }
            all
        })
        .count();
    frames.drain(..whole);
    if n > 0 {
        frames[0].advance(n);
    }
}

impl Driver for EpollDriver {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // Last turn's calls complete now; anything of a since-closed socket is dropped
        // before its `Released` frees the id.
        let mut ready = std::mem::take(&mut self.ready);
        ready.extend(self.later.drain(..));
        ready.retain(|completion| self.current(completion));
        self.ready = ready;
        for conn in self.carry.drain(..) {
            if let Some(sock) = self.socks.get_mut(conn.index()) {
                sock.reads = 0;
                self.reading.push_back(conn);
            }
        }
        if self.backoff.retry_due() {
            let open = self
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_some());
            self.acceptable = open.map(|(i, _)| ListenerId(i as u8)).collect();
        }
        let pending =
            !self.ready.is_empty() || !self.reading.is_empty() || !self.acceptable.is_empty();
        let timeout = if pending {
            Some(Duration::ZERO)
        } else {
            self.backoff.bound(timeout)
        };
        self.set_timer(timeout)?;
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in &events {
            self.on_event(event);
        }
        self.events = events;
        Ok(())
    }

    fn next(&mut self) -> Option<Completion> {
        while let Some(completion) = self.ready.pop_front() {
            if let Completion::Released(conn) = completion {
                self.socks.remove(conn.index());
                return Some(completion);
            }
            if self.current(&completion) {
                return Some(completion);
            }
        }
        while let Some(&listener) = self.acceptable.last() {
            if let Some(accepted) = self.accept(listener) {
                return Some(accepted);
            }
        }
        while let Some(&conn) = self.reading.front() {
            if let Some(completion) = self.read(conn) {
                return Some(completion);
            }
        }
        None
    }

    fn buf(&mut self, buf: BufId) -> &mut [u8] {
        self.pool.get(buf)
    }

    fn release(&mut self, buf: BufId) {
        self.pool.give_back(buf);
    }

    fn send(&mut self, conn: ConnId, out: &OutQueue) {
        let Some(sock) = open(&mut self.socks, conn) else {
            return;
        };
        if sock.unsent.is_some() {
            debug_assert!(false, "one send in flight per connection");
            return;
        }
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        self.flat.clear();
        let slices = if copy_small_frames(out, &mut self.flat) > 0 {
            iov[0] = IoSlice::new(&self.flat);
            1
        } else {
            out.fill_iovecs(&mut iov)
        };
        let total = iov[..slices].iter().map(|slice| slice.len()).sum();
        let written = match send_slices(&sock.stream, &iov[..slices]) {
            Ok(written) => written,
            Err(error) => {
                self.later.push(Completion::Failed { conn, error });
                return;
            }
        };
        self.idle.touch();
        if written == total {
            let sent = sock.sent(conn, total);
            self.later.push(sent);
            return;
        }
        // What the socket did not take: the rest of the copy, or clones of the frames.
        let frames = if self.flat.is_empty() {
            let mut frames: Vec<Bytes> = out.frames().take(slices).cloned().collect();
            skip_front(&mut frames, written);
            frames
        } else {
            vec![Bytes::copy_from_slice(&self.flat[written..])]
        };
        sock.unsent = Some(Box::new(Unsent { frames, total }));
    }

    fn set_receiving(&mut self, conn: ConnId, on: bool) {
        let Some(sock) = open(&mut self.socks, conn) else {
            return;
        };
        if !on {
            sock.flags.remove(RECEIVING);
            return;
        }
        sock.flags.insert(RECEIVING);
        // Readiness that came while held: no new edge will come for those bytes.
        if sock.flags.has(READABLE) && sock.wants_read() && !sock.flags.has(QUEUED) {
            sock.flags.insert(QUEUED);
            self.carry.push(conn);
        }
    }

    fn shutdown_write(&mut self, conn: ConnId) {
        let Some(sock) = open(&mut self.socks, conn) else {
            return;
        };
        if sock.unsent.is_some() {
            sock.flags.insert(SHUT_AFTER_SEND);
        } else {
            let _ = sock.stream.shutdown(Shutdown::Write);
        }
    }

    fn close(&mut self, conn: ConnId) {
        let Some(sock) = open(&mut self.socks, conn) else {
            return;
        };
        // No events for it from now on; the descriptor closes when `Released` is handed out.
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&sock.stream.as_raw_fd()));
        sock.unsent = None;
        sock.flags = Flags(CLOSED);
        self.later.push(Completion::Released(conn));
    }

    fn stop_accepting(&mut self) {
        for listener in &mut self.listeners {
            if let Some(mut listener) = listener.take() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
        }
        self.acceptable.clear();
    }

    fn release_idle_memory(&mut self, now: Instant) {
        if !self.idle.idle(now) {
            return;
        }
        self.pool.shrink();
        // After many connections left: keeps the ids that are in use, and the lowest
        // free ones are handed out first.
        self.socks.shrink_to_fit();
        // A burst (a fan-out to every socket) grows these; they are empty between turns.
        if self.ready.is_empty() {
            self.ready = VecDeque::new();
        }
        if self.later.is_empty() {
            self.later = Vec::new();
        }
        if self.reading.is_empty() {
            self.reading = VecDeque::new();
        }
        if self.carry.is_empty() {
            self.carry = Vec::new();
        }
        crate::sys::trim_heap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_stays_small() {
        assert!(std::mem::size_of::<Sock>() <= 16);
        // A niche is left for the slab's tag: its entries are no bigger.
        assert_eq!(
            std::mem::size_of::<Option<Sock>>(),
            std::mem::size_of::<Sock>()
        );
    }

    #[test]
    fn skip_front_drops_written_bytes() {
        let mut frames = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")];
        skip_front(&mut frames, 0);
        assert_eq!(frames, [&b"abc"[..], &b"de"[..]]);
        skip_front(&mut frames, 1);
        assert_eq!(frames, [&b"bc"[..], &b"de"[..]]);
        skip_front(&mut frames, 2);
        assert_eq!(frames, [&b"de"[..]]);
        skip_front(&mut frames, 2);
        assert!(frames.is_empty());
    }
}
