//! The io_uring driver: one ring per reactor, multishot accept and receive, corked
//! `sendmsg`, cancellation on close and drain.
//!
//! # What is in flight
//!
//! - One multishot `ACCEPT` on the reactor's SO_REUSEPORT listener (until `stop_accepting`).
//! - One `READ` of 8 bytes on the reactor's eventfd (cross-thread wake), re-armed per wake.
//! - Per connection: at most one multishot `RECV` (buffer select from the reactor's
//!   provided-buffer ring) and at most one `SENDMSG` (the corked queue).
//!
//! `user_data` is `conn << 2 | op` for connection operations and `u64::MAX - n` for the
//! listener and the waker, so a completion finds its connection without a lookup table.
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
//! 2. **Send memory**: a `SENDMSG` points at a `msghdr` and an iovec array in a boxed
//!    `SendBuf` that the connection's slot owns until the completion, and the iovecs point
//!    into `Bytes` frames the `SendBuf` holds clones of. The reactor's `OutQueue` may drop,
//!    clear or advance its own references meanwhile: the bytes stay alive.
//! 3. **The wake counter** (8 bytes) is a box the driver owns for its whole life.
//! 4. **Teardown**: a connection's slot is only reset after the last completion of its
//!    operations (`close` returns false until then and `Completion::Released` follows). On
//!    drop the driver cancels everything and waits for the completions (up to a second);
//!    if the kernel has not answered by then, it leaks the memory rather than free it
//!    under the kernel.
//!
//! Descriptors are plain (not registered): the reactor's `UringIo` owns the socket and
//! closes it when dropped, which the reactor does only after `Released`.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::{Completion, ConnId, Driver, SendStatus};
use crate::buf::BufId;
use crate::config::uring::Uring;
use crate::sys::EventFd;
use wsgate_proto::OutQueue;

/// Most slices in one `sendmsg` (more frames wait for the next turn).
pub const MAX_IOV: usize = 64;

const ACCEPT: u64 = u64::MAX - 1;
const WAKE: u64 = u64::MAX - 2;
const OP_RECV: u64 = 0;
const OP_SEND: u64 = 1;
const OP_CANCEL: u64 = 2;
/// The buffer group of the reactor's receive ring (one ring per io_uring instance).
const BGID: u16 = 0;

fn user_data(conn: ConnId, op: u64) -> u64 {
    u64::from(conn.0) << 2 | op
}

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

/// A connection's socket, owned by the reactor's `Conn`.
#[derive(Debug)]
pub struct UringIo {
    stream: TcpStream,
}

/// The `sendmsg` arguments of one in-flight send: stable on the heap until its completion.
struct SendBuf {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
    /// INVARIANT: every `iov[..hdr.msg_iovlen]` points into one of these frames.
    keep: Vec<Bytes>,
}

impl SendBuf {
    fn new() -> Box<Self> {
        Box::new(Self {
            // SAFETY: msghdr is a plain C struct; all-zero (null pointers, zero lengths)
            // is its documented empty value.
            hdr: unsafe { std::mem::zeroed() },
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV],
            keep: Vec::with_capacity(8),
        })
    }
}

/// The driver's view of one connection, indexed by `ConnId`.
#[derive(Default)]
struct Slot {
    fd: RawFd,
    /// A multishot receive is armed (its final completion has not come yet).
    recv_armed: bool,
    /// A cancel was submitted for the armed receive.
    recv_cancelled: bool,
    /// The reactor wants bytes (attach, `set_receiving(true)`).
    receiving: bool,
    /// The receive ended with ENOBUFS: re-arm once buffers are back.
    starved: bool,
    /// `close` was called: completions are swallowed, `Released` follows the last one.
    closing: bool,
    /// INVARIANT: `Some` exactly while a `SENDMSG` for this slot is in flight.
    send: Option<Box<SendBuf>>,
}

impl Slot {
    fn busy(&self) -> bool {
        self.recv_armed || self.send.is_some()
    }
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

    fn mem_layout(count: u16, size: u32) -> io::Result<Layout> {
        usize::from(count)
            .checked_mul(size as usize)
            .and_then(|bytes| Layout::from_size_align(bytes, 64).ok())
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

/// Per-reactor io_uring driver.
pub struct UringDriver {
    ring: IoUring,
    listener: Option<TcpListener>,
    accepting: bool,
    /// The multishot accept ended (error): re-arm next turn.
    rearm_accept: bool,
    waker: Arc<EventFd>,
    /// INVARIANT: written by the kernel while the wake `READ` is in flight; never moved.
    wake_buf: Box<u64>,
    bufs: BufRing,
    slots: Vec<Slot>,
    /// Connections whose receive ran out of buffers.
    starved: Vec<ConnId>,
    /// Boxed: a `SendBuf` moves into a slot while the kernel points into it.
    #[allow(clippy::vec_box)]
    send_pool: Vec<Box<SendBuf>>,
    /// Entries the submission queue could not take yet.
    backlog: VecDeque<squeue::Entry>,
    /// Operations whose final completion has not arrived (cancels excluded).
    inflight: usize,
    cqes: Vec<(u64, i32, u32)>,
    flags: &'static str,
    /// Receives that ended for want of a buffer (logged at exit: size the ring up if high).
    starvations: u64,
}

impl UringDriver {
    /// Builds the ring on the calling thread, which must be the reactor's thread: with
    /// SINGLE_ISSUER only the creating thread may submit.
    pub fn new(listener: TcpListener, waker: Arc<EventFd>, opts: &Uring) -> io::Result<Self> {
        let (ring, flags) = Self::build_ring(opts.entries)?;
        let bufs = BufRing::new(&ring, opts.bufs, opts.buf_size)?;
        // The wake READ must block in the kernel (poll), not fail with EAGAIN: clear
        // O_NONBLOCK. `wake` writes never block in practice (the counter is read to zero
        // on each wake, far from its 2^64-2 limit).
        crate::sys::set_blocking(waker.as_raw_fd())?;
        let mut this = Self {
            ring,
            listener: Some(listener),
            accepting: true,
            rearm_accept: false,
            waker,
            wake_buf: Box::new(0),
            bufs,
            slots: Vec::new(),
            starved: Vec::new(),
            send_pool: Vec::new(),
            backlog: VecDeque::new(),
            inflight: 0,
            cqes: Vec::with_capacity(256),
            flags,
            starvations: 0,
        };
        this.arm_accept();
        this.arm_wake();
        tracing::debug!(flags = this.flags, "io_uring ring ready");
        Ok(this)
    }

    fn build_ring(entries: u32) -> io::Result<(IoUring, &'static str)> {
        let cq = entries.saturating_mul(4);
        let mut builder = IoUring::builder();
        builder
            .setup_cqsize(cq)
            .setup_single_issuer()
            .setup_defer_taskrun();
        if let Ok(ring) = builder.build(entries) {
            return Ok((ring, "single_issuer+defer_taskrun"));
        }
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq).setup_coop_taskrun();
        if let Ok(ring) = builder.build(entries) {
            return Ok((ring, "coop_taskrun"));
        }
        let ring = IoUring::builder().setup_cqsize(cq).build(entries)?;
        Ok((ring, "plain"))
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
        let _ = self.ring.submit();
        if !self.try_push(&entry) {
            self.backlog.push_back(entry);
        }
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every entry built here points only at memory that rule 1-3 of the module
        // doc keeps alive until its completion.
        unsafe { self.ring.submission().push(entry).is_ok() }
    }

    fn drain_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            if !self.try_push(&entry) {
                let _ = self.ring.submit();
                if !self.try_push(&entry) {
                    self.backlog.push_front(entry);
                    return;
                }
            }
        }
    }

    fn arm_accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ACCEPT);
        self.inflight += 1;
        self.push(entry);
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
        debug_assert!(!slot.recv_armed && !slot.closing);
        slot.recv_armed = true;
        slot.recv_cancelled = false;
        slot.starved = false;
        let entry = opcode::RecvMulti::new(types::Fd(slot.fd), BGID)
            .build()
            .user_data(user_data(conn, OP_RECV));
        self.inflight += 1;
        self.push(entry);
    }

    fn cancel(&mut self, target: u64, conn: ConnId) {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(conn, OP_CANCEL));
        self.push(entry);
    }

    fn cancel_recv(&mut self, conn: ConnId) {
        let slot = &mut self.slots[conn.index()];
        if slot.recv_armed && !slot.recv_cancelled {
            slot.recv_cancelled = true;
            self.cancel(user_data(conn, OP_RECV), conn);
        }
    }

    fn rearm_starved(&mut self) {
        if self.starved.is_empty() || !self.bufs.has_free() {
            return;
        }
        for conn in std::mem::take(&mut self.starved) {
            let ok = self
                .slots
                .get(conn.index())
                .is_some_and(|s| s.starved && s.receiving && !s.closing && !s.recv_armed);
            if ok {
                self.arm_recv(conn);
            }
        }
    }

    fn on_cqe(&mut self, ud: u64, res: i32, flags: u32, out: &mut Vec<Completion<UringIo>>) {
        let more = cqueue::more(flags);
        match ud {
            ACCEPT => self.on_accept(res, more, out),
            WAKE => {
                self.inflight -= 1;
                if res >= 0 {
                    out.push(Completion::Woken);
                }
                self.arm_wake();
            }
            _ => {
                let conn = ConnId((ud >> 2) as u32);
                match ud & 3 {
                    OP_RECV => self.on_recv(conn, res, flags, more, out),
                    OP_SEND => self.on_send(conn, res, out),
                    _ => {} // a cancel's own completion: nothing waits for it
                }
            }
        }
    }

    fn on_accept(&mut self, res: i32, more: bool, out: &mut Vec<Completion<UringIo>>) {
        if !more {
            self.inflight -= 1;
        }
        if res >= 0 {
            // SAFETY: the kernel just created this descriptor for us and nothing else
            // owns it.
            let stream = unsafe { TcpStream::from_raw_fd(res) };
            match stream.peer_addr() {
                Ok(peer) => out.push(Completion::Accepted {
                    io: UringIo { stream },
                    peer,
                }),
                // Reset before we looked: drop it.
                Err(_) => drop(stream),
            }
        } else if -res != libc::ECANCELED {
            let err = io::Error::from_raw_os_error(-res);
            if -res != libc::ECONNABORTED && -res != libc::EINTR {
                tracing::warn!("accept failed: {err}");
            }
        }
        if !more {
            if self.accepting {
                // Re-armed next turn: after EMFILE an immediate re-arm would spin.
                self.rearm_accept = true;
            } else {
                self.listener = None;
            }
        }
    }

    fn on_recv(
        &mut self,
        conn: ConnId,
        res: i32,
        flags: u32,
        more: bool,
        out: &mut Vec<Completion<UringIo>>,
    ) {
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            debug_assert!(false, "receive completion for unknown {conn:?}");
            return;
        };
        if !more {
            slot.recv_armed = false;
            slot.recv_cancelled = false;
            self.inflight -= 1;
        }
        let closing = slot.closing;
        let mut rearm = !more && slot.receiving && !closing;
        if res > 0 {
            let bid = cqueue::buffer_select(flags).expect("buffer-select receive names its buffer");
            let taken = self.bufs.take(bid);
            debug_assert!(taken, "kernel lent buffer {bid} twice");
            if closing {
                self.bufs.give_back(bid);
            } else {
                out.push(Completion::Received {
                    conn,
                    result: Ok(Some((BufId(u32::from(bid)), res as usize))),
                });
            }
        } else if res == 0 {
            rearm = false;
            if !closing {
                out.push(Completion::Received {
                    conn,
                    result: Ok(None),
                });
            }
        } else if -res == libc::ENOBUFS {
            // Every buffer is lent out; the bytes wait in the socket. Re-arm when some are back.
            self.starvations += 1;
            if rearm {
                rearm = false;
                self.slots[conn.index()].starved = true;
                self.starved.push(conn);
            }
        } else if -res != libc::ECANCELED {
            rearm = false;
            if !closing {
                out.push(Completion::Received {
                    conn,
                    result: Err(io::Error::from_raw_os_error(-res)),
                });
            }
        }
        if rearm {
            self.arm_recv(conn);
        }
        self.maybe_release(conn, out);
    }

    fn on_send(&mut self, conn: ConnId, res: i32, out: &mut Vec<Completion<UringIo>>) {
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            debug_assert!(false, "send completion for unknown {conn:?}");
            return;
        };
        let mut sb = slot.send.take().expect("a send completion has its SendBuf");
        self.inflight -= 1;
        sb.keep.clear();
        self.send_pool.push(sb);
        if !slot.closing {
            let result = if res >= 0 {
                Ok(res as usize)
            } else {
                Err(io::Error::from_raw_os_error(-res))
            };
            out.push(Completion::Sent { conn, result });
        }
        self.maybe_release(conn, out);
    }

    fn maybe_release(&mut self, conn: ConnId, out: &mut Vec<Completion<UringIo>>) {
        let slot = &mut self.slots[conn.index()];
        if slot.closing && !slot.busy() {
            *slot = Slot::default();
            out.push(Completion::Released(conn));
        }
    }

    /// Moves the completion queue's entries out (reusing `self.cqes`' allocation), so they
    /// can be handled while the driver is borrowed mutably. Hand the vector back when done.
    fn take_cqes(&mut self) -> Vec<(u64, i32, u32)> {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        cqes
    }

    fn reap(&mut self, out: &mut Vec<Completion<UringIo>>) {
        let mut cqes = self.take_cqes();
        for &(ud, res, flags) in &cqes {
            self.on_cqe(ud, res, flags, out);
        }
        cqes.clear();
        self.cqes = cqes;
    }
}

impl Driver for UringDriver {
    type Io = UringIo;

    fn name(&self) -> &'static str {
        "uring"
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion<UringIo>>,
    ) -> io::Result<()> {
        if self.rearm_accept && self.accepting {
            self.rearm_accept = false;
            self.arm_accept();
        }
        self.rearm_starved();
        self.drain_backlog();
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
        self.reap(out);
        Ok(())
    }

    fn attach(&mut self, conn: ConnId, io: &mut UringIo) -> io::Result<()> {
        io.stream.set_nodelay(true)?;
        let index = conn.index();
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, Slot::default);
        }
        let slot = &mut self.slots[index];
        debug_assert!(
            !slot.busy(),
            "{conn:?} reused while operations are in flight"
        );
        *slot = Slot {
            fd: io.stream.as_raw_fd(),
            receiving: true,
            ..Slot::default()
        };
        self.arm_recv(conn);
        Ok(())
    }

    fn recv(&mut self, _io: &mut UringIo) -> io::Result<Option<(BufId, usize)>> {
        // Bytes arrive as `Completion::Received`; nothing is ever waiting to be read.
        Err(io::ErrorKind::WouldBlock.into())
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

    fn send(&mut self, conn: ConnId, io: &mut UringIo, out: &OutQueue) -> io::Result<SendStatus> {
        let slot = &self.slots[conn.index()];
        if slot.send.is_some() || slot.closing {
            // One send in flight per connection (its completion unblocks the reactor), and
            // nothing new for a closing one (`Released` follows). Replacing the SendBuf of
            // a send in flight would free memory the kernel reads.
            debug_assert!(slot.closing, "one send in flight per connection");
            return Ok(SendStatus::Submitted);
        }
        let mut sb = self.send_pool.pop().unwrap_or_else(SendBuf::new);
        let mut n = 0;
        for (slot, frame) in sb.iov.iter_mut().zip(out.frames()) {
            *slot = libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            };
            n += 1;
        }
        sb.keep.extend(out.frames().take(n).cloned());
        sb.hdr.msg_iov = sb.iov.as_mut_ptr();
        sb.hdr.msg_iovlen = n as _;
        let entry = opcode::SendMsg::new(types::Fd(io.stream.as_raw_fd()), &sb.hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data(conn, OP_SEND));
        let slot = &mut self.slots[conn.index()];
        // Moving the box moves only the pointer: `hdr` and `iov` stay where they are.
        slot.send = Some(sb);
        self.inflight += 1;
        self.push(entry);
        Ok(SendStatus::Submitted)
    }

    fn set_receiving(&mut self, conn: ConnId, _io: &mut UringIo, on: bool) {
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            return;
        };
        if slot.closing || slot.receiving == on {
            return;
        }
        slot.receiving = on;
        if !on {
            self.cancel_recv(conn);
        } else if !slot.recv_armed {
            // If buffers are still short this ends in ENOBUFS and waits in `starved`.
            self.arm_recv(conn);
        }
        // Armed and cancelled: the final completion re-arms, since `receiving` is set.
    }

    fn shutdown_write(&mut self, io: &mut UringIo) {
        let _ = io.stream.shutdown(Shutdown::Write);
    }

    fn close(&mut self, conn: ConnId, _io: &mut UringIo) -> bool {
        let Some(slot) = self.slots.get_mut(conn.index()) else {
            return true; // never attached
        };
        if !slot.busy() {
            *slot = Slot::default();
            return true;
        }
        slot.closing = true;
        slot.receiving = false;
        let sending = slot.send.is_some();
        self.cancel_recv(conn);
        if sending {
            // A peer that stopped reading would hold the send forever.
            self.cancel(user_data(conn, OP_SEND), conn);
        }
        false
    }

    fn stop_accepting(&mut self) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        self.rearm_accept = false;
        if self.listener.is_some() {
            // The listener closes when the accept's final completion arrives.
            self.cancel(ACCEPT, ConnId(u32::MAX));
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        tracing::debug!(
            starvations = self.starvations,
            "io_uring driver stopping (receives that ran out of buffers)"
        );
        // Cancel what is still armed and wait for the kernel to let go of our memory.
        self.accepting = false;
        if self.listener.is_some() {
            self.cancel(ACCEPT, ConnId(u32::MAX));
        }
        self.cancel(WAKE, ConnId(u32::MAX));
        for index in 0..self.slots.len() {
            let conn = ConnId(index as u32);
            let slot = &mut self.slots[index];
            slot.closing = true;
            slot.receiving = false;
            let sending = slot.send.is_some();
            self.cancel_recv(conn);
            if sending {
                self.cancel(user_data(conn, OP_SEND), conn);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut sink = Vec::new();
        while self.inflight > 0 && Instant::now() < deadline {
            self.drain_backlog();
            let ts = types::Timespec::from(Duration::from_millis(50));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut cqes = self.take_cqes();
            for &(ud, res, flags) in &cqes {
                match ud {
                    // Not re-armed while dropping.
                    WAKE => self.inflight -= 1,
                    _ => self.on_cqe(ud, res, flags, &mut sink),
                }
            }
            cqes.clear();
            self.cqes = cqes;
            // Accepted sockets are closed; received buffers need no give-back.
            sink.clear();
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
            for slot in &mut self.slots {
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
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn user_data_leaves_room_for_sentinels() {
        let top = user_data(ConnId(u32::MAX), OP_CANCEL);
        assert!(top < WAKE, "connection ids never reach the sentinels");
        assert_eq!(user_data(ConnId(5), OP_SEND) >> 2, 5);
        assert_eq!(user_data(ConnId(5), OP_SEND) & 3, OP_SEND);
    }
}
