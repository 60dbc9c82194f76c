//! The io_uring driver: one ring per reactor, multishot accept and receive, `send` of a
//! batch's small frames copied together or `sendmsg` of larger ones, cancellation on close
//! and drain.
//!
//! # What is in flight
//!
//! - One multishot `ACCEPT` per listener (until `stop_accepting`).
//! - One `READ` of 8 bytes on the reactor's eventfd (cross-thread wake), re-armed per wake.
//! - Per connection: at most one multishot `RECV` (buffer select from the reactor's
//!   provided-buffer ring) and at most one `SEND` or `SENDMSG` (a send the socket took
//!   only part of is resubmitted from where it stopped, and reported once, whole).
//!
//! `user_data` is `conn << 2 | op` for connection operations and `u64::MAX - n` for the
//! listeners and the waker, so a completion finds its connection without a lookup table.
//! `wait` reaps the completion queue; `next` turns one entry at a time into a
//! [`Completion`], so entries of a connection closed meanwhile are dropped, not reported.
//!
//! # Buffer ownership (the rules every `unsafe` block below relies on)
//!
//! 1. **Receive buffers** live in one allocation per reactor, cut into `count` buffers of
//!    `size` bytes, published to the kernel through a registered buffer ring. A buffer
//!    belongs to the kernel while its id is in the ring. A `RECV` completion hands its id
//!    to the reactor (`Completion::Received`); from then until `release` the kernel cannot
//!    pick it (it is not in the ring) and the reactor may read and write it. `release`
//!    puts the id back at the ring's tail; a second `release` of the same id is ignored
//!    (tracked in `lent`), so the kernel never gets a buffer the reactor still holds.
//!    When idle, the pages of buffers in the ring may be handed back to the system
//!    (`MADV_DONTNEED`, `BufRing::release_pages`): the kernel's next write into
//!    them faults in zeroed pages, and no received byte is lost as long as the kernel
//!    is not writing into them at the time.
//! 2. **Send memory**: a `SENDMSG` points at a `msghdr` and an iovec array in a boxed
//!    `SendBuf` that the connection's slot owns until the completion, and the iovecs point
//!    into `Bytes` frames the `SendBuf` holds clones of; a `SEND` points into the same
//!    box's `flat` copy, which is neither grown nor cleared until the completion. The
//!    reactor's `OutQueue` may drop, clear or advance its own references meanwhile: the
//!    bytes stay alive.
//! 3. **The wake counter** (8 bytes) is a box the driver owns for its whole life.
//! 4. **Teardown**: a connection's slot, and the socket it owns, stay until the last
//!    completion of its operations (`Completion::Released` follows). On drop the driver
//!    cancels everything and waits for the completions (up to a second); if the kernel
//!    has not answered by then, it leaks the memory rather than free it under the kernel.
//!
//! Descriptors are plain (not registered); a slot closes its socket when it goes, so no
//! operation still queued for the kernel can name a descriptor number since reused.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use slab::Slab;
use smallvec::SmallVec;
use wsgate_proto::OutQueue;

use super::{
    copy_small_frames, AcceptBackoff, Completion, ConnId, Driver, Flags, IdleClock, ListenerId,
    MAX_IOV,
};
use crate::buf::BufId;
use crate::config::uring::Uring;
use crate::sys::EventFd;

/// The completion of a cancel aimed at a listener or the waker: nothing waits for it.
const IGNORED: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
/// Listener `i`'s accept has user data `ACCEPT_0 - i`.
const ACCEPT_0: u64 = u64::MAX - 2;
/// A `ListenerId` is one byte.
const MAX_LISTENERS: usize = 256;
const OP_RECV: u64 = 0;
const OP_SEND: u64 = 1;
const OP_CANCEL: u64 = 2;
/// The buffer group of the reactor's receive ring (one ring per io_uring instance).
const BGID: u16 = 0;
/// Completions the reap queue holds without growing (a fan-out's turn can reap one entry
/// per subscriber; it grows past this and is given back when the driver idles).
const CQES_KEPT: usize = 256;

fn user_data(conn: ConnId, op: u64) -> u64 {
    u64::from(conn.0) << 2 | op
}

fn accept_data(listener: usize) -> u64 {
    ACCEPT_0 - listener as u64
}

// `Slot::flags` bits.
/// A multishot receive is armed (its final completion has not come yet).
const RECV_ARMED: u8 = 1 << 0;
/// A cancel was submitted for the armed receive.
const RECV_CANCELLED: u8 = 1 << 1;
/// The reactor wants bytes (accept, `set_receiving(true)`).
const RECEIVING: u8 = 1 << 2;
/// The receive ended with ENOBUFS: re-arm once buffers are back.
const STARVED: u8 = 1 << 3;
/// EOF or a receive error was reported: never re-armed.
const RECV_DONE: u8 = 1 << 4;
/// `shutdown_write` waits for the send in flight.
const SHUT_AFTER_SEND: u8 = 1 << 5;
/// `close` was called: completions are dropped, `Released` follows the last one.
const CLOSING: u8 = 1 << 6;

/// Whether this kernel (and sandbox) runs the io_uring driver; `Err` says why not.
/// Probed once per process: ring creation, the opcodes used, buffer-ring registration.
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // On a thread of its own: tearing the probe ring down later interrupts the
            // thread that created it (TWA_SIGNAL task work), which a caller blocked in a
            // socket read with a timeout would see as EINTR.
            std::thread::Builder::new()
                .name("wsgate-uring-probe".into())
                .spawn(probe)
                .map_err(|e| format!("cannot start the probe thread: {e}"))?
                .join()
                .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
        })
        .clone()
}

fn probe() -> Result<(), String> {
    // Multishot receive (the one feature opcodes cannot reveal) came in Linux 6.0.
    let release = kernel_release();
    if let Some((major, minor)) = parse_release(&release) {
        if (major, minor) < (6, 0) {
            return Err(format!(
                "kernel {release} lacks multishot recv (needs Linux 6.0)"
            ));
        }
    }
    let ring = IoUring::new(8).map_err(|e| {
        format!("io_uring_setup failed: {e} (kernel.io_uring_disabled or a seccomp profile?)")
    })?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Read::CODE, "READ"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring opcode {name} unsupported"));
        }
    }
    let mut bufs =
        BufRing::new(&ring, 1, 64).map_err(|e| format!("buffer ring registration failed: {e}"))?;
    let unregistered = ring.submitter().unregister_buf_ring(BGID);
    drop(ring);
    if unregistered.is_ok() {
        // SAFETY: unregistered, and no receive was ever submitted on this ring.
        unsafe { bufs.free() };
    }
    Ok(())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A copy buffer longer than this is freed when its send ends rather than kept in the
/// pool, so that a pool of many sends does not hold 16 KiB each.
const FLAT_KEPT: usize = 4096;

/// The arguments of one send in flight: stable on the heap until its completion. Either
/// `flat` (a copy of small frames, sent with `SEND`) or a `sendmsg` over `iov`, sized for
/// the common one or two frames inline; longer sends spill.
struct SendBuf {
    hdr: libc::msghdr,
    /// INVARIANT: every entry points into one of `keep`'s frames, and while the send is
    /// in flight `hdr.msg_iov`/`msg_iovlen` describe exactly these entries.
    iov: SmallVec<[libc::iovec; 2]>,
    keep: SmallVec<[Bytes; 2]>,
    /// A copy of the frames when they are several and small ([`super::FLAT_MAX`]); empty
    /// when the send goes by `iov`. Its capacity is kept for the next send.
    flat: Vec<u8>,
    /// Bytes of the whole send, reported in `Sent` once all are written.
    total: usize,
    written: usize,
}

impl SendBuf {
    fn new() -> Box<Self> {
        Box::new(Self {
            // SAFETY: msghdr is a plain C struct; all-zero (null pointers, zero lengths)
            // is its documented empty value.
            hdr: unsafe { std::mem::zeroed() },
            iov: SmallVec::new(),
            keep: SmallVec::new(),
            flat: Vec::new(),
            total: 0,
            written: 0,
        })
    }

    /// Copies the queue's oldest frames into `flat` when they are several and small, or
    /// else takes clones of them (up to `MAX_IOV`).
    fn fill(&mut self, out: &OutQueue) {
        if copy_small_frames(out, &mut self.flat) > 0 {
            self.total = self.flat.len();
            return;
        }
        for frame in out.frames().take(MAX_IOV) {
            let frame = frame.clone();
            self.iov.push(libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            });
            self.total += frame.len();
            self.keep.push(frame);
        }
    }

    /// Drops `n` written bytes from the front of the iovecs (a short send; a `flat` send
    /// goes on from `written`).
    fn advance(&mut self, mut n: usize) {
        if !self.flat.is_empty() {
            return;
        }
        let whole = self
            .iov
            .iter()
            .take_while(|iov| {
                let all = iov.iov_len <= n;
                if all {
                    n -= iov.iov_len;
                }
                all
            })
            .count();
        self.iov.drain(..whole);
        if n > 0 {
            let first = &mut self.iov[0];
            // Still inside the same frame: `n < iov_len`.
            first.iov_base = first.iov_base.cast::<u8>().wrapping_add(n).cast();
            first.iov_len -= n;
        }
    }

    /// The `SEND` of what `flat` holds from `written` on, or else the `SENDMSG` of the
    /// iovecs as they stand.
    fn entry(&mut self, fd: RawFd, conn: ConnId) -> squeue::Entry {
        let entry = if self.flat.is_empty() {
            self.hdr.msg_iov = self.iov.as_mut_ptr();
            self.hdr.msg_iovlen = self.iov.len() as _;
            opcode::SendMsg::new(types::Fd(fd), &self.hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        } else {
            let rest = &self.flat[self.written..];
            opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        };
        entry.user_data(user_data(conn, OP_SEND))
    }

    /// Forgets the send (its completion came) so the box can serve another.
    fn clear(&mut self) {
        self.iov.clear();
        self.keep.clear();
        if self.flat.capacity() > FLAT_KEPT {
            self.flat = Vec::new();
        }
        self.flat.clear();
        self.total = 0;
        self.written = 0;
        // A long send spilled to the heap: return to the inline size.
        self.iov.shrink_to_fit();
        self.keep.shrink_to_fit();
    }
}

/// The driver's view of one connection, keyed by `ConnId`: 16 bytes, and so is its slab
/// entry (the socket's unused -1 holds the slab's tag).
struct Slot {
    /// Closed when the slot goes (after the last completion of its operations).
    stream: TcpStream,
    flags: Flags,
    /// INVARIANT: `Some` exactly while a `SENDMSG` for this slot is in flight.
    send: Option<Box<SendBuf>>,
}

impl Slot {
    fn busy(&self) -> bool {
        self.flags.has(RECV_ARMED) || self.send.is_some()
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// One of the reactor's listeners.
struct Listener {
    /// `None` once stopped and its accept has ended.
    socket: Option<TcpListener>,
    /// Its multishot accept is in flight.
    armed: bool,
}

/// How the ring was set up (the best the kernel offers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// SINGLE_ISSUER | DEFER_TASKRUN (6.1): the kernel completes operations only inside
    /// this thread's `io_uring_enter`.
    DeferTaskrun,
    /// COOP_TASKRUN (5.19).
    CoopTaskrun,
    Plain,
}

/// A registered provided-buffer ring and the buffers it lends.
struct BufRing {
    /// INVARIANT: `entries` page-aligned `BufRingEntry`s, registered as group `BGID`.
    ring: NonNull<types::BufRingEntry>,
    /// INVARIANT: `count * size` bytes; buffer `i` starts at `i * size`.
    mem: NonNull<u8>,
    count: u16,
    size: u32,
    /// Our copy of the ring's tail (the kernel only reads it).
    tail: u16,
    /// Buffers handed to the reactor and not yet released.
    lent: Vec<bool>,
    lent_count: usize,
}

impl BufRing {
    /// Allocates `count` buffers of `size` bytes, registers them with `ring` and publishes
    /// them all.
    fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768 and size positive",
            ));
        }
        let ring_layout = Self::ring_layout(count);
        let mem_layout = Self::mem_layout(count, size)?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 1).
        let (ring_ptr, mem_ptr) =
            unsafe { (alloc::alloc_zeroed(ring_layout), alloc::alloc(mem_layout)) };
        let (Some(ring_ptr), Some(mem)) = (NonNull::new(ring_ptr), NonNull::new(mem_ptr)) else {
            alloc::handle_alloc_error(ring_layout);
        };
        let mut this = Self {
            ring: ring_ptr.cast(),
            mem,
            count,
            size,
            tail: 0,
            lent: vec![false; usize::from(count)],
            lent_count: 0,
        };
        // SAFETY: the ring memory is `count` zeroed entries, page aligned, and is freed
        // only after the group is unregistered with no receive in flight (rule 4).
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(this.ring.as_ptr() as u64, count, BGID, 0)
        };
        if let Err(e) = registered {
            // SAFETY: the kernel refused the ring, so it never saw this memory.
            unsafe { this.free() };
            return Err(e);
        }
        for bid in 0..count {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    fn ring_layout(count: u16) -> Layout {
        let bytes = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        Layout::from_size_align(bytes, 4096).expect("small power-of-two layout")
    }

    /// Page aligned, so that buffers of a page multiple share no page and
    /// `release_pages` can return each one whole.
    fn mem_layout(count: u16, size: u32) -> io::Result<Layout> {
        usize::from(count)
            .checked_mul(size as usize)
            .and_then(|bytes| Layout::from_size_align(bytes, 4096).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring too large"))
    }

    /// Writes buffer `bid` at the tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let mask = self.count - 1;
        // SAFETY: `tail & mask < count`, inside the ring allocation; the kernel reads
        // entries only up to the published tail, and this one is past it.
        let entry = unsafe { &mut *self.ring.as_ptr().add(usize::from(self.tail & mask)) };
        // SAFETY: `bid < count`, so the offset is inside `mem`.
        let addr = unsafe { self.mem.as_ptr().add(usize::from(bid) * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed buffers visible to the kernel.
    fn publish(&mut self) {
        // SAFETY: the tail field sits in the first entry of our live, aligned ring; the
        // kernel reads it concurrently, so it is written atomically with release order
        // (the entries written before become visible first).
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// Marks `bid` as lent (a completion handed it to us).
    fn take(&mut self, bid: u16) -> bool {
        match self.lent.get_mut(usize::from(bid)) {
            Some(lent) if !*lent => {
                *lent = true;
                self.lent_count += 1;
                true
            }
            _ => false,
        }
    }

    /// Gives a lent buffer back to the kernel.
    fn give_back(&mut self, bid: u16) {
        match self.lent.get_mut(usize::from(bid)) {
            Some(lent) if *lent => {
                *lent = false;
                self.lent_count -= 1;
                self.push(bid);
                self.publish();
            }
            _ => debug_assert!(false, "released buffer {bid} was not lent"),
        }
    }

    fn get(&mut self, bid: u16) -> &mut [u8] {
        assert!(
            self.lent.get(usize::from(bid)).copied().unwrap_or(false),
            "buffer {bid} read while not lent"
        );
        // SAFETY: `bid` is lent: the kernel does not own it (rule 1) and it lies inside
        // `mem`; `&mut self` ensures one live borrow at a time.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.mem.as_ptr().add(usize::from(bid) * self.size as usize),
                self.size as usize,
            )
        }
    }

    fn has_free(&self) -> bool {
        self.lent_count < usize::from(self.count)
    }

    /// Hands the pages of every buffer in the ring (not lent) back to the system; the
    /// kernel's next write into one faults in a zeroed page. Returns the bytes released.
    ///
    /// # Safety
    ///
    /// The kernel must not be writing into a buffer of the ring during the call, and
    /// every buffer it has written into must already be lent (its completion reaped and
    /// taken): otherwise received bytes could be zeroed before the reactor reads them.
    unsafe fn release_pages(&mut self) -> usize {
        let page = page_size();
        let size = self.size as usize;
        let base = self.mem.as_ptr() as usize;
        let mut released = 0;
        let mut bid = 0;
        while bid < self.lent.len() {
            if self.lent[bid] {
                bid += 1;
                continue;
            }
            let first = bid;
            while bid < self.lent.len() && !self.lent[bid] {
                bid += 1;
            }
            // Whole pages only: a page shared with a lent buffer keeps its bytes.
            let start = (base + first * size).next_multiple_of(page);
            let end = (base + bid * size) / page * page;
            if start < end {
                // SAFETY: [start, end) lies inside `mem` (rounded inwards to pages) and
                // holds only buffers in the ring: no Rust reference points into it (`get`
                // lends only lent buffers) and the caller guarantees the kernel neither
                // writes into it now nor holds unreported bytes in it. MADV_DONTNEED on
                // this private anonymous memory only replaces its contents with zeros.
                let res = unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                };
                if res == 0 {
                    released += end - start;
                }
            }
        }
        released
    }

    /// Frees the memory.
    ///
    /// # Safety
    ///
    /// The kernel must no longer use the ring or the buffers: the group is unregistered or
    /// the io_uring instance closed, and no receive is in flight.
    unsafe fn free(&mut self) {
        let mem_layout = Self::mem_layout(self.count, self.size).expect("checked in new");
        // SAFETY: allocated in `new` with these layouts; the caller guarantees no kernel use.
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), Self::ring_layout(self.count));
            alloc::dealloc(self.mem.as_ptr(), mem_layout);
        }
    }
}

/// The system's page size (4 KiB when it cannot be read).
fn page_size() -> usize {
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096)
}

/// Per-reactor io_uring driver.
pub struct UringDriver {
    ring: IoUring,
    setup: Setup,
    /// Indexed by `ListenerId`.
    listeners: Vec<Listener>,
    accepting: bool,
    /// After a failed accept (EMFILE): when the listeners are armed again.
    backoff: AcceptBackoff,
    waker: Arc<EventFd>,
    /// INVARIANT: written by the kernel while the wake `READ` is in flight; never moved.
    wake_buf: Box<u64>,
    bufs: BufRing,
    /// The connections; a key is a `ConnId`, freed when `Released` is handed out.
    slots: Slab<Slot>,
    /// Connections whose receive ran out of buffers.
    starved: Vec<ConnId>,
    /// Boxed: a `SendBuf` moves into a slot while the kernel points into it.
    #[allow(clippy::vec_box)]
    send_pool: Vec<Box<SendBuf>>,
    /// Entries the submission queue could not take yet.
    backlog: VecDeque<squeue::Entry>,
    /// Operations whose final completion has not arrived (cancels excluded).
    inflight: usize,
    /// Completion entries reaped and not yet handed out by `next`.
    cqes: VecDeque<(u64, i32, u32)>,
    /// Closed this turn with nothing in flight: `Released` at the next turn.
    closed: Vec<ConnId>,
    /// `Released` due this turn, handed out first.
    released: Vec<ConnId>,
    idle: IdleClock,
    /// Receives that ended for want of a buffer (logged at exit: size the ring up if high).
    starvations: u64,
}

impl UringDriver {
    /// Builds the ring on the calling thread, which must be the reactor's thread: with
    /// SINGLE_ISSUER only the creating thread may submit. The listeners' order gives
    /// their `ListenerId`.
    pub fn new(listeners: Vec<TcpListener>, waker: Arc<EventFd>, opts: &Uring) -> io::Result<Self> {
        assert!(listeners.len() <= MAX_LISTENERS, "a ListenerId is one byte");
        let (ring, setup) = Self::build_ring(opts.entries)?;
        let bufs = BufRing::new(&ring, opts.bufs, opts.buf_size)?;
        // The wake READ must block in the kernel (poll), not fail with EAGAIN: clear
        // O_NONBLOCK. `wake` writes never block in practice (the counter is read to zero
        // on each wake, far from its 2^64-2 limit).
        crate::sys::set_blocking(waker.as_raw_fd())?;
        let listeners = listeners
            .into_iter()
            .map(|socket| Listener {
                socket: Some(socket),
                armed: false,
            })
            .collect();
        let mut this = Self {
            ring,
            setup,
            listeners,
            accepting: true,
            backoff: AcceptBackoff::default(),
            waker,
            wake_buf: Box::new(0),
            bufs,
            slots: Slab::new(),
            starved: Vec::new(),
            send_pool: Vec::new(),
            backlog: VecDeque::new(),
            inflight: 0,
            cqes: VecDeque::with_capacity(CQES_KEPT),
            closed: Vec::new(),
            released: Vec::new(),
            idle: IdleClock::default(),
            starvations: 0,
        };
        this.arm_accepts();
        this.arm_wake();
        tracing::debug!(setup = ?this.setup, "io_uring ring ready");
        Ok(this)
    }

    fn build_ring(entries: u32) -> io::Result<(IoUring, Setup)> {
        let cq = entries.saturating_mul(4);
        let mut builder = IoUring::builder();
        builder
            .setup_cqsize(cq)
            .setup_single_issuer()
            .setup_defer_taskrun();
        if let Ok(ring) = builder.build(entries) {
            return Ok((ring, Setup::DeferTaskrun));
        }
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq).setup_coop_taskrun();
        if let Ok(ring) = builder.build(entries) {
            return Ok((ring, Setup::CoopTaskrun));
        }
        let ring = IoUring::builder().setup_cqsize(cq).build(entries)?;
        Ok((ring, Setup::Plain))
    }

    /// Queues an entry, submitting when the queue is full; what still does not fit waits
    /// in the backlog for the next `wait`.
    fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        if self.try_push(&entry) {
            return;
        }
        self.submit_and_reap();
        if !self.try_push(&entry) {
            self.backlog.push_back(entry);
        }
    }

    /// Submits the full queue in the middle of a turn. The kernel runs most sends inline
    /// and posts their completions at once, so they are taken now: a turn with more sends
    /// than the completion queue holds (a fan-out to 10,000 subscribers on 4,096 entries)
    /// would otherwise spill into the kernel's overflow list, an allocation per entry.
    fn submit_and_reap(&mut self) {
        let _ = self.ring.submit();
        self.reap();
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every entry built here points only at memory that rule 1-3 of the module
        // doc keeps alive until its completion.
        unsafe { self.ring.submission().push(entry).is_ok() }
    }

    fn drain_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            if !self.try_push(&entry) {
                self.submit_and_reap();
                if !self.try_push(&entry) {
                    self.backlog.push_front(entry);
                    return;
                }
            }
        }
    }

    /// Arms the accept of every listener that has none in flight (while accepting).
    fn arm_accepts(&mut self) {
        if !self.accepting || self.backoff.waiting() {
            return;
        }
        // A wait that ended: armed again now.
        self.backoff.retry_due();
        for index in 0..self.listeners.len() {
            let listener = &mut self.listeners[index];
            let Some(socket) = &listener.socket else {
                continue;
            };
            if listener.armed {
                continue;
            }
            listener.armed = true;
            let entry = opcode::AcceptMulti::new(types::Fd(socket.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(accept_data(index));
            self.inflight += 1;
            self.push(entry);
        }
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(self.waker.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(WAKE);
        self.inflight += 1;
        self.push(entry);
    }

    fn arm_recv(&mut self, conn: ConnId) {
        let slot = &mut self.slots[conn.index()];
        debug_assert!(!slot.flags.has(RECV_ARMED | RECV_DONE | CLOSING));
        slot.flags.insert(RECV_ARMED);
        slot.flags.remove(RECV_CANCELLED | STARVED);
        let entry = opcode::RecvMulti::new(types::Fd(slot.fd()), BGID)
            .build()
            .user_data(user_data(conn, OP_RECV));
        self.inflight += 1;
        self.push(entry);
    }

    fn cancel(&mut self, target: u64, user_data: u64) {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        self.push(entry);
    }

    fn cancel_recv(&mut self, conn: ConnId) {
        let slot = &mut self.slots[conn.index()];
        if slot.flags.has(RECV_ARMED) && !slot.flags.has(RECV_CANCELLED) {
            slot.flags.insert(RECV_CANCELLED);
            self.cancel(user_data(conn, OP_RECV), user_data(conn, OP_CANCEL));
        }
    }

    /// Cancels what a closing connection has in flight.
    fn cancel_all(&mut self, conn: ConnId) {
        self.cancel_recv(conn);
        if self.slots[conn.index()].send.is_some() {
            // A peer that stopped reading would hold the send forever.
            self.cancel(user_data(conn, OP_SEND), user_data(conn, OP_CANCEL));
        }
    }

    fn rearm_starved(&mut self) {
        if self.starved.is_empty() || !self.bufs.has_free() {
            return;
        }
        for conn in std::mem::take(&mut self.starved) {
            let ok = self.slots.get(conn.index()).is_some_and(|s| {
                s.flags.has(STARVED)
                    && s.flags.has(RECEIVING)
                    && !s.flags.has(CLOSING | RECV_ARMED | RECV_DONE)
            });
            if ok {
                self.arm_recv(conn);
            }
        }
    }

    /// Turns one completion entry into what the reactor sees, if anything.
    fn on_cqe(&mut self, ud: u64, res: i32, flags: u32) -> Option<Completion> {
        let more = cqueue::more(flags);
        match ud {
            IGNORED => None,
            WAKE => {
                self.inflight -= 1;
                self.arm_wake();
                (res >= 0).then_some(Completion::Woken)
            }
            ud if ud > ACCEPT_0 - MAX_LISTENERS as u64 => {
                self.on_accept((ACCEPT_0 - ud) as usize, res, more)
            }
            _ => {
                let conn = ConnId((ud >> 2) as u32);
                match ud & 3 {
                    OP_RECV => self.on_recv(conn, res, flags, more),
                    OP_SEND => self.on_send(conn, res),
                    _ => None, // a cancel's own completion: nothing waits for it
                }
            }
        }
    }

    fn on_accept(&mut self, index: usize, res: i32, more: bool) -> Option<Completion> {
        // SAFETY: the kernel just created this descriptor for us and nothing else owns it.
        let stream = (res >= 0).then(|| unsafe { TcpStream::from_raw_fd(res) });
        if !more {
            let listener = &mut self.listeners[index];
            listener.armed = false;
            self.inflight -= 1;
            if !self.accepting {
                listener.socket = None;
            }
            // Otherwise re-armed next turn, or after the backoff of a failure below.
        }
        let Some(stream) = stream else {
            if !matches!(-res, libc::ECANCELED | libc::ECONNABORTED | libc::EINTR) {
                // EMFILE and the like: an immediate re-arm would fail again at once, the
                // reactor spinning on it.
                let error = io::Error::from_raw_os_error(-res);
                self.backoff.failed(&error);
            }
            return None;
        };
        self.backoff.succeeded();
        if !self.accepting {
            return None; // accepted before the cancel landed: closed unseen
        }
        // A connection its client reset while it waited in the queue has no peer any more
        // (the multishot accept learns none): it is still reported, as epoll's `accept`
        // reports it, so that it is counted, and its receive fails at once.
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let _ = stream.set_nodelay(true);
        let key = self.slots.insert(Slot {
            stream,
            flags: Flags(RECEIVING),
            send: None,
        });
        let conn = ConnId(u32::try_from(key).expect("fewer than 2^32 sockets"));
        self.arm_recv(conn);
        Some(Completion::Accepted {
            conn,
            peer,
            listener: ListenerId(index as u8),
        })
    }

    fn on_recv(&mut self, conn: ConnId, res: i32, flags: u32, more: bool) -> Option<Completion> {
        if !more {
            self.inflight -= 1;
        }
        let bid = (res > 0).then(|| {
            let bid = cqueue::buffer_select(flags).expect("buffer-select receive names its buffer");
            let taken = self.bufs.take(bid);
            debug_assert!(taken, "kernel lent buffer {bid} twice");
            bid
        });
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            debug_assert!(false, "receive completion for unknown {conn:?}");
            if let Some(bid) = bid {
                self.bufs.give_back(bid);
            }
            return None;
        };
        if !more {
            slot.flags.remove(RECV_ARMED | RECV_CANCELLED);
        }
        if slot.flags.has(CLOSING) {
            if let Some(bid) = bid {
                self.bufs.give_back(bid);
            }
            return self.try_release(conn);
        }
        let mut rearm = !more && slot.flags.has(RECEIVING);
        let completion = if let Some(bid) = bid {
            self.idle.touch();
            Some(Completion::Received {
                conn,
                buf: BufId(u32::from(bid)),
                len: res as usize,
            })
        } else if res == 0 {
            rearm = false;
            slot.flags.insert(RECV_DONE);
            Some(Completion::Eof(conn))
        } else if -res == libc::ENOBUFS {
            // Every buffer is lent out; the bytes wait in the socket. Re-arm when some are back.
            self.starvations += 1;
            if rearm {
                rearm = false;
                slot.flags.insert(STARVED);
                self.starved.push(conn);
            }
            None
        } else if -res == libc::ECANCELED {
            None
        } else {
            rearm = false;
            slot.flags.insert(RECV_DONE);
            Some(Completion::Failed {
                conn,
                error: io::Error::from_raw_os_error(-res),
            })
        };
        if rearm {
            self.arm_recv(conn);
        }
        completion
    }

    fn on_send(&mut self, conn: ConnId, res: i32) -> Option<Completion> {
        self.inflight -= 1;
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            debug_assert!(false, "send completion for unknown {conn:?}");
            return None;
        };
        let mut sb = slot.send.take().expect("a send completion has its SendBuf");
        let outcome = if slot.flags.has(CLOSING) {
            None
        } else if res < 0 {
            Some(Err(io::Error::from_raw_os_error(-res)))
        } else {
            let n = res as usize;
            sb.written += n;
            if sb.written >= sb.total {
                Some(Ok(sb.total))
            } else if n == 0 {
                Some(Err(io::ErrorKind::WriteZero.into()))
            } else {
                // The socket took part of it: send the rest from the same frames.
                sb.advance(n);
                let entry = sb.entry(slot.fd(), conn);
                slot.send = Some(sb);
                self.inflight += 1;
                self.push(entry);
                return None;
            }
        };
        if outcome.is_some() && slot.flags.has(SHUT_AFTER_SEND) {
            slot.flags.remove(SHUT_AFTER_SEND);
            let _ = slot.stream.shutdown(Shutdown::Write);
        }
        sb.clear();
        self.send_pool.push(sb);
        match outcome {
            None => self.try_release(conn),
            Some(Ok(bytes)) => Some(Completion::Sent { conn, bytes }),
            Some(Err(error)) => Some(Completion::Failed { conn, error }),
        }
    }

    /// `Released` once a closing connection has nothing in flight: its slot goes now.
    fn try_release(&mut self, conn: ConnId) -> Option<Completion> {
        let slot = &self.slots[conn.index()];
        if !slot.flags.has(CLOSING) || slot.busy() {
            return None;
        }
        self.slots.remove(conn.index());
        Some(Completion::Released(conn))
    }

    /// Moves the completion queue's entries to `cqes`.
    fn reap(&mut self) {
        let Self { ring, cqes, .. } = self;
        cqes.extend(
            ring.completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
    }

    /// Hands the receive ring's idle pages back, when that cannot lose bytes.
    fn release_ring_pages(&mut self) -> usize {
        // Only when the kernel fills provided buffers solely inside this thread's
        // `io_uring_enter` (DEFER_TASKRUN: receives complete as deferred task work, and
        // sockets are polled, never handed to io-wq workers) and every buffer it picked is
        // accounted for: the completion queue reaped to its end, nothing overflowed, and
        // every reaped entry handed out. Under COOP_TASKRUN or plain rings the kernel may
        // fill a buffer whenever this thread enters the kernel, so the pages stay.
        if self.setup != Setup::DeferTaskrun
            || !self.cqes.is_empty()
            || !self.ring.completion().is_empty()
            || self.ring.submission().cq_overflow()
        {
            return 0;
        }
        // SAFETY: per the above, no buffer in the ring is being written or holds bytes
        // that were not reported and taken (rule 1).
        unsafe { self.bufs.release_pages() }
    }
}

impl Driver for UringDriver {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.released.append(&mut self.closed);
        self.arm_accepts();
        self.rearm_starved();
        self.drain_backlog();
        let pending = !self.released.is_empty() || !self.cqes.is_empty();
        let timeout = if pending {
            Some(Duration::ZERO)
        } else {
            self.backoff.bound(timeout)
        };
        let submitter = self.ring.submitter();
        let res = match timeout {
            None => submitter.submit_and_wait(1),
            Some(timeout) => {
                let ts = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(1, &args)
            }
        };
        match res {
            Ok(_) => {}
            // ETIME: the timeout passed; EINTR: a signal; EBUSY: the completion queue
            // overflowed and must be reaped before more submissions.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.reap();
        Ok(())
    }

    fn next(&mut self) -> Option<Completion> {
        if let Some(conn) = self.released.pop() {
            self.slots.remove(conn.index());
            return Some(Completion::Released(conn));
        }
        while let Some((ud, res, flags)) = self.cqes.pop_front() {
            if let Some(completion) = self.on_cqe(ud, res, flags) {
                return Some(completion);
            }
        }
        None
    }

    fn buf(&mut self, buf: BufId) -> &mut [u8] {
        let bid = u16::try_from(buf.0).expect("buffer ids come from a u16 ring");
        self.bufs.get(bid)
    }

    fn release(&mut self, buf: BufId) {
        if let Ok(bid) = u16::try_from(buf.0) {
            self.bufs.give_back(bid);
        }
    }

    fn send(&mut self, conn: ConnId, out: &OutQueue) {
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            return;
        };
        if slot.flags.has(CLOSING) {
            return;
        }
        if slot.send.is_some() {
            // Replacing the SendBuf of a send in flight would free memory the kernel reads.
            debug_assert!(false, "one send in flight per connection");
            return;
        }
        let mut sb = self.send_pool.pop().unwrap_or_else(SendBuf::new);
        sb.fill(out);
        let entry = sb.entry(slot.fd(), conn);
        // Moving the box moves only the pointer: `hdr` and `iov` stay where they are.
        slot.send = Some(sb);
        self.inflight += 1;
        self.push(entry);
        self.idle.touch();
    }

    fn set_receiving(&mut self, conn: ConnId, on: bool) {
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            return;
        };
        if slot.flags.has(CLOSING) || slot.flags.has(RECEIVING) == on {
            return;
        }
        if !on {
            slot.flags.remove(RECEIVING);
            self.cancel_recv(conn);
            return;
        }
        slot.flags.insert(RECEIVING);
        if !slot.flags.has(RECV_ARMED | RECV_DONE) {
            // If buffers are still short this ends in ENOBUFS and waits in `starved`.
            self.arm_recv(conn);
        }
        // Armed and cancelled: the final completion re-arms, since RECEIVING is set.
    }

    fn shutdown_write(&mut self, conn: ConnId) {
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            return;
        };
        if slot.flags.has(CLOSING) {
            return;
        }
        if slot.send.is_some() {
            slot.flags.insert(SHUT_AFTER_SEND);
        } else {
            let _ = slot.stream.shutdown(Shutdown::Write);
        }
    }

    fn close(&mut self, conn: ConnId) {
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            return;
        };
        if slot.flags.has(CLOSING) {
            return;
        }
        slot.flags.insert(CLOSING);
        slot.flags.remove(RECEIVING | SHUT_AFTER_SEND);
        if slot.busy() {
            self.cancel_all(conn);
        } else {
            self.closed.push(conn);
        }
    }

    fn stop_accepting(&mut self) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        for index in 0..self.listeners.len() {
            if self.listeners[index].armed {
                // The listener closes when the accept's final completion arrives.
                self.cancel(accept_data(index), IGNORED);
            } else {
                self.listeners[index].socket = None;
            }
        }
    }

    fn release_idle_memory(&mut self, now: Instant) {
        if !self.idle.idle(now) {
            return;
        }
        // Sends in flight keep theirs; the pool refills on demand.
        self.send_pool = Vec::new();
        // After many connections left: keeps the ids that are in use, and the lowest
        // free ones are handed out first.
        self.slots.shrink_to_fit();
        if self.backlog.is_empty() {
            self.backlog = VecDeque::new();
        }
        if self.starved.is_empty() {
            self.starved = Vec::new();
        }
        if self.cqes.is_empty() {
            self.cqes = VecDeque::with_capacity(CQES_KEPT);
        }
        let released = self.release_ring_pages();
        crate::sys::trim_heap();
        tracing::debug!(released, "io_uring driver idle: memory given back");
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        tracing::debug!(
            starvations = self.starvations,
            "io_uring driver stopping (receives that ran out of buffers)"
        );
        // Cancel what is still armed and wait for the kernel to let go of our memory.
        self.stop_accepting();
        self.cancel(WAKE, IGNORED);
        let keys: Vec<usize> = self.slots.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = ConnId(key as u32);
            let slot = &mut self.slots[key];
            slot.flags.insert(CLOSING);
            slot.flags.remove(RECEIVING);
            self.cancel_all(conn);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            // Entries reaped but never handed out are settled like the later ones.
            while let Some((ud, res, flags)) = self.cqes.pop_front() {
                match ud {
                    // Not re-armed while dropping.
                    WAKE => self.inflight -= 1,
                    // Accepted sockets close, received buffers go back, slots go.
                    _ => drop(self.on_cqe(ud, res, flags)),
                }
            }
            if self.inflight == 0 || Instant::now() >= deadline {
                break;
            }
            self.drain_backlog();
            let ts = types::Timespec::from(Duration::from_millis(50));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
        }
        if self.inflight == 0 {
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
            // SAFETY: no operation is in flight and the group is unregistered: the kernel
            // holds no pointer into the buffer ring (rule 4).
            unsafe { self.bufs.free() };
        } else {
            tracing::warn!(
                inflight = self.inflight,
                "io_uring operations outlived the driver; leaking their buffers"
            );
            // Send buffers still owned by slots are leaked too.
            for (_, slot) in &mut self.slots {
                if let Some(sb) = slot.send.take() {
                    Box::leak(sb);
                }
            }
            let wake = std::mem::replace(&mut self.wake_buf, Box::new(0));
            Box::leak(wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::super::IDLE_AFTER;
    use super::*;

    /// `frames` frames of `len` bytes.
    fn queue(frames: usize, len: usize) -> OutQueue {
        super::super::tests::queue(&vec![&vec![7; len][..]; frames])
    }

    /// Up to 16 KiB of several frames is copied (near saturation a write carries dozens of
    /// small frames); a copy longer than 4 KiB is not kept in the pool after its send.
    #[test]
    fn several_frames_up_to_16_kib_are_copied_and_long_copies_not_kept() {
        let mut sb = SendBuf::new();
        sb.fill(&queue(64, 200));
        assert_eq!((sb.flat.len(), sb.keep.len()), (12_800, 0), "copied");
        assert_eq!(sb.total, 12_800);
        sb.clear();
        assert_eq!(sb.flat.capacity(), 0, "a long copy is freed");
        sb.fill(&queue(4, 100));
        assert_eq!(sb.flat.len(), 400);
        sb.clear();
        assert!(sb.flat.capacity() >= 400, "a short one keeps its buffer");
        // Past 16 KiB, or one frame alone: sent from clones of the frames.
        sb.fill(&queue(64, 300));
        assert_eq!((sb.flat.len(), sb.keep.len()), (0, 64));
        sb.clear();
        sb.fill(&queue(1, 100));
        assert_eq!((sb.flat.len(), sb.keep.len()), (0, 1));
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn idle_connections_and_sends_stay_small() {
        assert!(std::mem::size_of::<Slot>() <= 16);
        // A niche is left for the slab's tag: its entries are no bigger.
        assert_eq!(
            std::mem::size_of::<Option<Slot>>(),
            std::mem::size_of::<Slot>()
        );
        assert!(std::mem::size_of::<SendBuf>() <= 208);
    }

    /// Pages of `bufs`' memory that are resident.
    fn resident(bufs: &BufRing) -> usize {
        let len = usize::from(bufs.count) * bufs.size as usize;
        let mut vec = vec![0u8; len.div_ceil(page_size())];
        // SAFETY: mincore reads the page tables of [mem, mem + len), our allocation, whose
        // start is page aligned (`mem_layout`), into a vector of one byte per page.
        let res = unsafe { libc::mincore(bufs.mem.as_ptr().cast(), len, vec.as_mut_ptr()) };
        assert_eq!(res, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|&&page| page & 1 != 0).count()
    }

    /// A driver on one listener of 127.0.0.1, and its address; `None`, saying why, where
    /// io_uring is unavailable.
    fn listening(opts: Uring) -> Option<(UringDriver, SocketAddr)> {
        if let Err(why) = available() {
            eprintln!("skipping: io_uring unavailable: {why}");
            return None;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let waker = Arc::new(EventFd::new().unwrap());
        Some((
            UringDriver::new(vec![listener], waker, &opts).unwrap(),
            addr,
        ))
    }

    /// Connects `n` clients to `addr` and turns the driver until it accepted them all.
    fn connect(
        driver: &mut UringDriver,
        addr: SocketAddr,
        n: usize,
    ) -> (Vec<TcpStream>, Vec<ConnId>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut clients, mut conns) = (Vec::new(), Vec::new());
        while conns.len() < n {
            assert!(Instant::now() < deadline, "{} of {n} accepted", conns.len());
            if clients.len() < n {
                clients.push(TcpStream::connect(addr).unwrap());
            }
            driver.wait(Some(Duration::from_millis(1))).unwrap();
            while let Some(completion) = driver.next() {
                match completion {
                    Completion::Accepted { conn, .. } => conns.push(conn),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        (clients, conns)
    }

    /// Turns the driver until `n` bytes of `conn` arrived; returns them.
    fn receive(driver: &mut UringDriver, conn: ConnId, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(Instant::now() < deadline, "{} of {n} bytes", got.len());
            driver.wait(Some(Duration::from_millis(50))).unwrap();
            while let Some(completion) = driver.next() {
                match completion {
                    Completion::Received { conn: c, buf, len } if c == conn => {
                        got.extend_from_slice(&driver.buf(buf)[..len]);
                        driver.release(buf);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        got
    }

    #[test]
    fn idle_release_returns_the_receive_rings_pages() {
        let Some((mut driver, addr)) = listening(Uring {
            entries: 64,
            bufs: 8,
            buf_size: 16384,
        }) else {
            return;
        };
        if driver.setup != Setup::DeferTaskrun {
            eprintln!("skipping: pages are only released under DEFER_TASKRUN");
            return;
        }
        let (mut clients, conns) = connect(&mut driver, addr, 1);
        let (client, conn) = (&mut clients[0], conns[0]);
        // More than the ring holds: the kernel cycles through every buffer.
        let data: Vec<u8> = (0..256 * 1024).map(|i: u32| (i % 251) as u8).collect();
        client.write_all(&data).unwrap();
        assert!(receive(&mut driver, conn, data.len()) == data);
        let touched = resident(&driver.bufs);
        assert!(touched > 0, "receiving touched the ring");

        let t0 = Instant::now();
        driver.release_idle_memory(t0);
        assert_eq!(resident(&driver.bufs), touched, "not idle yet");
        driver.release_idle_memory(t0 + IDLE_AFTER / 2);
        assert_eq!(resident(&driver.bufs), touched, "not idle long enough");
        driver.release_idle_memory(t0 + IDLE_AFTER);
        assert_eq!(resident(&driver.bufs), 0, "idle: every page given back");

        // The ring still works, and what arrives is intact.
        let data: Vec<u8> = (0..100_000).map(|i: u32| (i % 241) as u8).collect();
        client.write_all(&data).unwrap();
        assert!(receive(&mut driver, conn, data.len()) == data);
        assert!(resident(&driver.bufs) > 0);
    }

    /// A turn that sends to more connections than the completion queue holds (a fan-out
    /// to 10,000 on a queue of 4,096) takes each submit's completions as it goes: none
    /// spills into the kernel's overflow list (an allocation per entry), and every send
    /// is reported once.
    #[test]
    fn a_turn_of_more_sends_than_the_completion_queue_holds_does_not_overflow_it() {
        const CONNS: usize = 100;
        // A submission queue of 8 entries, a completion queue of 32.
        let Some((mut driver, addr)) = listening(Uring {
            entries: 8,
            bufs: 8,
            buf_size: 4096,
        }) else {
            return;
        };
        let (mut clients, mut conns) = connect(&mut driver, addr, CONNS);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = OutQueue::default();
        out.push(Bytes::from_static(b"fan-out"));
        for &conn in &conns {
            driver.send(conn, &out);
        }
        assert!(
            !driver.ring.submission().cq_overflow(),
            "the completion queue overflowed"
        );
        let mut sent = Vec::new();
        while sent.len() < CONNS {
            assert!(Instant::now() < deadline, "{} of {CONNS} sent", sent.len());
            driver.wait(Some(Duration::from_millis(50))).unwrap();
            while let Some(completion) = driver.next() {
                match completion {
                    Completion::Sent { conn, bytes: 7 } => sent.push(conn),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        sent.sort_unstable_by_key(|c| c.0);
        conns.sort_unstable_by_key(|c| c.0);
        assert_eq!(sent, conns, "every send reported once");
        for client in &mut clients {
            let mut got = [0; 7];
            client.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"fan-out");
        }
    }

    #[test]
    fn user_data_leaves_room_for_sentinels() {
        let top = user_data(ConnId(u32::MAX), OP_CANCEL);
        assert!(
            top < accept_data(MAX_LISTENERS - 1),
            "connection ids never reach the sentinels"
        );
        assert!(accept_data(MAX_LISTENERS - 1) > ACCEPT_0 - MAX_LISTENERS as u64);
        assert_eq!(user_data(ConnId(5), OP_SEND) >> 2, 5);
        assert_eq!(user_data(ConnId(5), OP_SEND) & 3, OP_SEND);
    }
}
