//! One worker thread: a mio event loop that owns its connections (client state, framing,
//! timers) and its own counters and histograms. It reads into one large buffer shared by all
//! its connections, parses frames in place and does not allocate per message.
//!
//! The coordinator (`run.rs`) only flips the shared phase and reads published snapshots.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use wsgate_proto::deflate;
use wsgate_proto::handshake::client;
use wsgate_proto::{frame, OpCode};

use crate::inflate::Inflater;
use crate::plan::{ConnSpec, Mode, Plan, Role};
use crate::stamp::{self, Stamp};
use crate::stats::{new_hist, Counters};
use crate::sys;
use crate::tls::Sock;
use crate::ws::{Decoder, Event, Step, MAX_COMPRESSED};

pub const CONNECT: u8 = 0;
pub const RUN: u8 = 1;
pub const DRAIN: u8 = 2;
pub const STOP: u8 = 3;

const READ_BUF: usize = 256 * 1024;
/// Poll at least this often, for timers and snapshots.
const MAX_WAIT_NS: u64 = 10_000_000;
/// The poll token of the worker's timer (connections are slab keys, far below it).
const TIMER: usize = usize::MAX;
const PUBLISH_EVERY_NS: u64 = 100_000_000;
const CLOSE_TIMEOUT_NS: u64 = 1_000_000_000;
/// An open-loop send this late is counted as late (the loadgen fell behind its schedule).
const LATE_NS: u64 = 1_000_000;

/// Whether a send `lag_ns` behind its slot is late: over `LATE_NS`, or over a tenth of the
/// interval between the thread's sends where that is longer (a publish 1.3 ms late on a
/// 100 ms schedule, 10 publishes/s, has not fallen behind).
fn is_late(lag_ns: u64, send_every_ns: u64) -> bool {
    lag_ns > LATE_NS.max(send_every_ns / 10)
}

/// Whether a stamp says its message was sent after `now`, when it arrived: a corrupt stamp,
/// or one from another machine's clock (CLOCK_MONOTONIC counts from each one's boot). Its
/// latency would be fiction, so it is counted and not recorded (it was recorded as 1 ns).
///
/// No tolerance: on one machine CLOCK_MONOTONIC is one clock for every CPU and process
/// (Linux checks at boot that the CPUs' TSCs agree, and uses another clock source where
/// they do not; kvm-clock and the like keep it monotonic across vCPUs), and a stamp is read
/// before the write that leads to the read after which `now` is taken, two system calls and
/// a server apart: microseconds, where any skew left between CPUs is tens of nanoseconds.
/// A stamp later than `now` by even a little is not skew.
#[inline]
fn from_the_future(ts: u64, now: u64) -> bool {
    ts > now
}

/// The kind of [`Shared::open_errors`] a publish the server refused is: the one that does
/// not end its connection.
pub const REFUSED: &str = "refused";

/// A message that arrived without a stamp to place it (one from the future; for an echo also
/// none): it is an answer or a delivery all the same, of the window's sends once the window
/// has opened at `mstart` (as far as can be told), so that it is not counted lost, nor
/// waited for by the drain. (A delivery without a stamp may not be one of ours at all.)
fn arrived_unplaced(c: &mut Counters, mstart: u64, now: u64) {
    if now >= mstart {
        c.unplaced += 1;
    }
}

/// Most sends or connects started in one loop turn, so events keep being served.
const BURST: usize = 4096;
/// Outbound bytes a connection may queue before sends to it are dropped and counted.
const MAX_BACKLOG: usize = 32 << 20;
/// Full reads from one connection per loop turn before it yields to the others.
const READS_PER_TURN: usize = 4;

/// State shared between the coordinator and the workers.
pub struct Shared {
    pub phase: AtomicU8,
    /// Measured window [mstart, mend) in CLOCK_MONOTONIC ns; set before phase RUN.
    pub mstart: AtomicU64,
    pub mend: AtomicU64,
    /// Connections that became ready (subscribed, open) or failed during the connect phase.
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    /// Subscribers among `ready`.
    pub ready_subs: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    /// The first error of each kind on a connection after its handshake (its subscribe, if
    /// any), in order, a refused publish ([`REFUSED`]) among them: the coordinator says each
    /// once, as it comes, and the failure of a run that measured nothing gives them as its
    /// reason.
    pub open_errors: Mutex<Vec<(&'static str, String)>>,
    pub live: Vec<Mutex<Live>>,
}

impl Shared {
    pub fn new(threads: usize) -> Self {
        Shared {
            phase: AtomicU8::new(CONNECT),
            mstart: AtomicU64::new(u64::MAX),
            mend: AtomicU64::new(u64::MAX),
            ready: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ready_subs: AtomicU64::new(0),
            first_error: Mutex::new(None),
            open_errors: Mutex::new(Vec::new()),
            live: (0..threads).map(|_| Mutex::new(Live::default())).collect(),
        }
    }

    pub fn ready_subs(&self) -> u64 {
        self.ready_subs.load(Ordering::Acquire)
    }

    fn error(&self, msg: String) {
        let mut e = self.first_error.lock().expect("not poisoned");
        if e.is_none() {
            *e = Some(msg);
        }
    }

    /// Keeps `msg` if it is the first error of its `kind` on an open connection; later ones
    /// are only counted, so that a server failing every connection does not flood stderr.
    fn open_error(&self, kind: &'static str, msg: String) {
        let mut e = self.open_errors.lock().expect("not poisoned");
        if !e.iter().any(|(k, _)| *k == kind) {
            e.push((kind, msg));
        }
    }
}

/// A worker's snapshot, replaced every 100 ms; the coordinator takes `interval`.
#[derive(Default)]
pub struct Live {
    pub counters: Counters,
    pub interval: Option<Histogram<u64>>,
    /// Echo messages sent and not answered yet.
    pub outstanding: u64,
    pub open: u64,
}

/// What a worker hands back when it ends.
pub struct ThreadResult {
    pub counters: Counters,
    pub hist: Histogram<u64>,
    /// Subscribers' latency by the `Plan::targets` index they connected to.
    pub per_target: Vec<Histogram<u64>>,
    pub cpu_ns: u64,
    pub loop_lag_max_ns: u64,
    pub send_lag_max_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Connecting,
    Handshaking,
    /// Sent the subscribe op, waiting for `{"op":"ok"}`.
    Subscribing,
    Open,
    Closing,
}

/// Per (subscriber, publisher) sequence state over the measured window: the first number
/// counted, the next one expected and a 64-bit window of recently seen ones (bit k:
/// `next - 1 - k` was seen).
#[derive(Clone, Copy, Default)]
pub struct SeqTrack {
    first: u32,
    next: u32,
    window: u64,
    /// `first` and `next` are set: from the start when the publisher's numbering of the
    /// window is known ([`SeqTrack::starting_at`]), else by the first delivery.
    started: bool,
    /// The publisher's numbering is known ([`SeqTrack::starting_at`]); else someone else
    /// publishes, and the track follows a renumbering (see [`SeqTrack::on_stamped`]).
    exact: bool,
    /// The newest stamp time seen (ns), for [`SeqTrack::on_stamped`].
    newest: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SeqOutcome {
    InOrder,
    /// `n` numbers were skipped: not delivered, or not yet.
    Gap(u64),
    Duplicate,
    /// Delivered after a later number, filling a gap counted before (assumed when it is too
    /// old for the window to tell).
    Late,
    /// Delivered after a later number that started the track, so no gap was counted for it.
    BeforeStart,
}

impl SeqTrack {
    /// A track that expects `first` before anything else: a publisher that numbers the
    /// window's publishes from `first`, so loss and reordering count from the very first.
    pub fn starting_at(first: u32) -> Self {
        SeqTrack {
            first,
            next: first,
            window: 0,
            started: true,
            exact: true,
            newest: 0,
        }
    }

    /// `on`, knowing the delivery's stamp time. A publisher numbers its publishes from 0
    /// when it connects and again from 0 at its own window, which a passive process may
    /// watch from before: a number behind the track with a stamp newer than any seen is
    /// that renumbering (a late or repeated delivery carries an older or equal stamp), and
    /// the track starts again at 0, so that a lost first publish still counts as a gap.
    pub fn on_stamped(&mut self, seq: u32, ts: u64) -> SeqOutcome {
        let behind = self.started && (seq.wrapping_sub(self.next) as i32) < 0;
        if !self.exact && behind && ts > self.newest {
            *self = SeqTrack {
                exact: false,
                ..SeqTrack::starting_at(0)
            };
        }
        self.newest = self.newest.max(ts);
        self.on(seq)
    }

    pub fn on(&mut self, seq: u32) -> SeqOutcome {
        if !self.started {
            *self = SeqTrack {
                first: seq,
                next: seq.wrapping_add(1),
                window: 1,
                started: true,
                ..*self
            };
            return SeqOutcome::InOrder;
        }
        if (seq.wrapping_sub(self.first) as i32) < 0 {
            return SeqOutcome::BeforeStart;
        }
        let d = seq.wrapping_sub(self.next) as i32;
        if d >= 0 {
            let shift = d as u64 + 1;
            self.window = if shift >= 64 { 0 } else { self.window << shift } | 1;
            self.next = seq.wrapping_add(1);
            if d == 0 {
                SeqOutcome::InOrder
            } else {
                SeqOutcome::Gap(d as u64)
            }
        } else {
            let back = (-(d as i64) - 1) as u64;
            if back >= 64 {
                return SeqOutcome::Late;
            }
            let bit = 1u64 << back;
            if self.window & bit != 0 {
                SeqOutcome::Duplicate
            } else {
                self.window |= bit;
                SeqOutcome::Late
            }
        }
    }
}

struct Conn {
    sock: Sock,
    gen: u64,
    role: Role,
    id: u32,
    /// Index in `Plan::targets`.
    target: u16,
    st: St,
    /// The `Sec-WebSocket-Key` sent, which the response must answer.
    key: String,
    /// Intended start of the connect, ns.
    t0: u64,
    out: Vec<u8>,
    out_pos: usize,
    dirty: bool,
    carry: Vec<u8>,
    dec: Decoder,
    /// Stamp of a message whose first frame has arrived, not yet its last byte.
    pending: Option<Stamp>,
    /// The last frame of `pending`'s message is arriving: it is timed at its last byte
    /// (it was timed at its first 256, so a message that trickled in looked fast).
    timed_at_end: bool,
    /// A compressed message in several frames (RFC 7692 §6.1): its opcode and its payload
    /// so far; it inflates only whole, at its last frame. The buffer is kept for the next.
    deflated_opcode: OpCode,
    deflated: Vec<u8>,
    inflight: u32,
    /// Sequence number of the next publish; the window's are numbered from 0.
    seq: u32,
    /// `seq` was reset for the window's first publish.
    window_numbered: bool,
    /// Subscribers: sequence state per publisher id.
    tracks: Vec<SeqTrack>,
    /// Echo connections: the sequence numbers answered, of the sends before the window and
    /// of those from its start, each numbered from 0 (see `send`): a number answered twice
    /// is a duplicate echo, not a second answer.
    echoed: [SeqTrack; 2],
    /// Subscribers: subscribed before the window started, with our own publishers, so
    /// every publish of the window is due and numbered from 0.
    exact_start: bool,
    /// Counted in `ready`/`failed` already.
    reported: bool,
}

/// A xorshift64* PRNG: masks must be unpredictable per frame, not cryptographic.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS's random source.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(sys::mono_ns());
        Rng(h.finish() | 1)
    }

    #[inline]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[inline]
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_ne_bytes()
    }
}

pub struct Worker {
    idx: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    poll: Poll,
    conns: Slab<Conn>,
    buf: Vec<u8>,
    rng: Rng,
    /// permessage-deflate: one decompressor for all of this thread's connections.
    inflater: Inflater,
    gen: u64,
    c: Counters,
    hist: Histogram<u64>,
    per_target: Vec<Histogram<u64>>,
    interval: Histogram<u64>,
    /// Connections still to open, in order, and when the next one is due.
    todo: VecDeque<ConnSpec>,
    next_connect: u64,
    connect_every: u64,
    /// Senders ready to send (round-robin for open loop).
    senders: Vec<usize>,
    rr: usize,
    next_send: u64,
    send_every: u64,
    /// Wakes the poll at sub-millisecond deadlines; `timer_at` is the deadline it is armed
    /// for (0: none, or fired).
    timer: sys::Timer,
    timer_at: u64,
    timeouts: VecDeque<(u64, usize, u64)>,
    holds: VecDeque<(u64, usize, u64)>,
    closes: VecDeque<(u64, usize, u64)>,
    dirty: Vec<usize>,
    /// Connections left readable at the end of their turn (edge-triggered: no new event).
    again: Vec<usize>,
    outstanding: u64,
    // honesty
    loop_lag_max: u64,
    send_lag_max: u64,
    cpu_start: Option<u64>,
    cpu_ns: Option<u64>,
    kicked: bool,
    stopping: Option<u64>,
    mstart: u64,
    mend: u64,
}

impl Worker {
    pub fn new(idx: usize, plan: Arc<Plan>, shared: Arc<Shared>) -> io::Result<Self> {
        let t = plan.threads as f64;
        let per_thread = |rate: f64| {
            if rate > 0.0 {
                (1e9 * t / rate) as u64
            } else {
                0
            }
        };
        let senders = plan.senders_in(idx);
        let total_senders = plan.total_senders().max(1);
        // Each thread sends its senders' share of the total rate.
        // 0: this thread sends nothing (no rate, or none of the senders is on it).
        let send_every = match plan.mode {
            Mode::Connect => per_thread(plan.rate).max(1),
            _ if plan.rate > 0.0 && senders > 0 => {
                ((1e9 * total_senders as f64 / (plan.rate * senders as f64)) as u64).max(1)
            }
            _ => 0,
        };
        let targets = plan.targets.len();
        let poll = Poll::new()?;
        let timer = sys::Timer::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&timer.as_raw_fd()),
            Token(TIMER),
            Interest::READABLE,
        )?;
        Ok(Worker {
            idx,
            timer,
            timer_at: 0,
            todo: plan.conns[idx].iter().copied().collect(),
            next_connect: 0,
            connect_every: per_thread(plan.connect_rate),
            send_every,
            inflater: Inflater::new(plan.inflate_once),
            plan,
            shared,
            poll,
            conns: Slab::new(),
            buf: vec![0; READ_BUF],
            rng: Rng::new(),
            gen: 0,
            c: Counters::default(),
            hist: new_hist(),
            per_target: (0..targets).map(|_| new_hist()).collect(),
            interval: new_hist(),
            senders: Vec::new(),
            rr: 0,
            next_send: 0,
            timeouts: VecDeque::new(),
            holds: VecDeque::new(),
            closes: VecDeque::new(),
            dirty: Vec::new(),
            again: Vec::new(),
            outstanding: 0,
            loop_lag_max: 0,
            send_lag_max: 0,
            cpu_start: None,
            cpu_ns: None,
            kicked: false,
            stopping: None,
            mstart: u64::MAX,
            mend: u64::MAX,
        })
    }

    #[inline]
    fn in_window(&self, ts: u64) -> bool {
        ts >= self.mstart && ts < self.mend
    }

    pub fn run(mut self) -> ThreadResult {
        if !self.plan.cpus.is_empty() {
            let cpu = self.plan.cpus[self.idx % self.plan.cpus.len()];
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                eprintln!("warning: could not pin thread {} to cpu {cpu}", self.idx);
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut next_publish = 0;
        let mut deadline = u64::MAX;
        loop {
            let now = sys::mono_ns();
            let phase = self.shared.phase.load(Ordering::Acquire);
            if phase >= RUN {
                if self.mstart == u64::MAX {
                    self.mstart = self.shared.mstart.load(Ordering::Acquire);
                    self.next_send = now;
                }
                // Ctrl-C moves the end of the window earlier.
                self.mend = self.shared.mend.load(Ordering::Acquire);
            }
            if self.cpu_start.is_none() && now >= self.mstart {
                self.cpu_start = Some(sys::thread_cpu_ns());
            }
            if self.cpu_ns.is_none() && (now >= self.mend || phase == STOP) {
                self.cpu_ns = Some(sys::thread_cpu_ns() - self.cpu_start.unwrap_or(0));
            }
            if deadline != u64::MAX && now > deadline && self.in_window(now) {
                self.loop_lag_max = self.loop_lag_max.max(now - deadline);
            }

            self.connect_due(now, phase);
            if phase == RUN {
                self.send_due(now);
            }
            if self.timer_due(now) {
                // A timeout only counts for what has not arrived: what the sockets already
                // hold is read first, so a stall of this loop (descheduled, a busy machine)
                // between the last poll and now is not blamed on the server.
                self.poll_ready(&mut events);
            }
            self.expire(now);
            if phase == STOP && self.stopping.is_none() {
                self.stopping = Some(now + CLOSE_TIMEOUT_NS);
                self.close_all(now);
            }
            self.flush_dirty();
            if now >= next_publish || phase >= DRAIN {
                self.publish();
                next_publish = now + PUBLISH_EVERY_NS;
            }
            if let Some(until) = self.stopping {
                if self.conns.is_empty() || now >= until {
                    break;
                }
            }

            deadline = self.next_deadline(now, phase).min(next_publish);
            let wait = if self.again.is_empty() {
                deadline.saturating_sub(now).min(MAX_WAIT_NS)
            } else {
                0
            };
            // epoll waits whole milliseconds: a deadline within one is the timer's, and
            // the poll's own timeout (rounded up) only backs it.
            if wait > 0 && wait < MAX_WAIT_NS && self.timer_at != now + wait {
                // Armed once per deadline, not once per loop pass.
                self.timer_at = now + wait;
                if self.timer.arm_at(self.timer_at).is_err() {
                    self.shared.error("timerfd_settime failed".into());
                    break;
                }
            }
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_nanos(wait)))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.shared.error(format!("poll: {e}"));
                    break;
                }
            }
            for key in std::mem::take(&mut self.again) {
                self.on_event(key);
            }
            for ev in events.iter() {
                self.on_event(ev.token().0);
            }
        }
        let now = sys::mono_ns();
        if self.cpu_ns.is_none() {
            self.cpu_ns = Some(sys::thread_cpu_ns() - self.cpu_start.unwrap_or(0));
        }
        let _ = now;
        self.publish();
        ThreadResult {
            counters: self.c,
            hist: self.hist,
            per_target: self.per_target,
            cpu_ns: self.cpu_ns.unwrap_or(0),
            loop_lag_max_ns: self.loop_lag_max,
            send_lag_max_ns: self.send_lag_max,
        }
    }

    /// Whether a connect or close timeout is due at `now`.
    fn timer_due(&self, now: u64) -> bool {
        [&self.timeouts, &self.closes]
            .iter()
            .any(|q| q.front().is_some_and(|&(t, _, _)| t <= now))
    }

    /// Handles the events the sockets have ready, without waiting.
    fn poll_ready(&mut self, events: &mut Events) {
        if self.poll.poll(events, Some(Duration::ZERO)).is_ok() {
            for ev in events.iter() {
                self.on_event(ev.token().0);
            }
        }
    }

    fn next_deadline(&self, now: u64, phase: u8) -> u64 {
        let mut d = now + MAX_WAIT_NS;
        if !self.todo.is_empty() && phase < DRAIN {
            d = d.min(self.next_connect);
        }
        if phase == RUN && self.send_every > 0 && self.next_send < self.mend {
            d = d.min(self.next_send);
        }
        for q in [&self.timeouts, &self.holds, &self.closes] {
            if let Some(&(t, _, _)) = q.front() {
                d = d.min(t);
            }
        }
        d
    }

    fn publish(&mut self) {
        let mut live = self.shared.live[self.idx].lock().expect("not poisoned");
        live.counters = self.c;
        live.outstanding = self.outstanding;
        live.open = self.conns.len() as u64;
        if self.plan.intervals {
            match &mut live.interval {
                Some(h) => {
                    h.add(&self.interval).expect("same bounds");
                }
                None => live.interval = Some(self.interval.clone()),
            }
            self.interval.reset();
        }
    }

    // ---- connecting -------------------------------------------------------------------

    fn connect_due(&mut self, now: u64, phase: u8) {
        if phase >= DRAIN {
            return;
        }
        if self.plan.mode == Mode::Connect {
            // Churn: new connections at the configured rate during the run.
            if phase != RUN {
                return;
            }
            let mut n = 0;
            while self.next_send <= now && self.next_send < self.mend && n < BURST {
                let t0 = self.next_send;
                self.next_send += self.send_every;
                self.send_lag_max_update(now, t0);
                let source = self.source_for(self.gen as usize * self.plan.threads + self.idx);
                let spec = ConnSpec {
                    role: Role::Churn,
                    id: 0,
                    source,
                    target: 0,
                };
                self.c.sent += 1;
                if self.in_window(t0) {
                    self.c.sent_window += 1;
                }
                self.open(spec, t0, now);
                n += 1;
            }
            return;
        }
        if self.next_connect == 0 {
            self.next_connect = now;
        }
        let mut n = 0;
        while n < BURST && self.next_connect <= now {
            let Some(spec) = self.todo.pop_front() else {
                break;
            };
            self.open(spec, now, now);
            self.next_connect += self.connect_every;
            n += 1;
        }
    }

    fn source_for(&self, i: usize) -> Option<std::net::IpAddr> {
        let s = &self.plan.sources;
        (!s.is_empty()).then(|| s[i % s.len()])
    }

    fn open(&mut self, spec: ConnSpec, t0: u64, now: u64) {
        self.gen += 1;
        let gen = self.gen;
        let sock = match self.socket(&spec) {
            Ok(s) => s,
            Err(e) => {
                self.c.err_connect += 1;
                let addr = self.plan.targets[spec.target as usize].1;
                self.report_failed(format!("connect to {addr}: {e}"));
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Conn {
            sock,
            gen,
            role: spec.role,
            id: spec.id,
            target: spec.target,
            st: St::Connecting,
            key: String::new(),
            t0,
            out: Vec::new(),
            out_pos: 0,
            dirty: false,
            carry: Vec::new(),
            dec: Decoder::default(),
            pending: None,
            timed_at_end: false,
            deflated_opcode: OpCode::Binary,
            deflated: Vec::new(),
            inflight: 0,
            seq: 0,
            window_numbered: false,
            tracks: Vec::new(),
            echoed: [SeqTrack::starting_at(0); 2],
            exact_start: false,
            reported: false,
        };
        if let Err(e) = self.poll.registry().register(
            &mut conn.sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.c.err_connect += 1;
            self.report_failed(format!("register: {e}"));
            return;
        }
        let churn = conn.role == Role::Churn;
        entry.insert(conn);
        self.timeouts
            .push_back((now + self.plan.connect_timeout_ns, key, gen));
        if churn {
            // A handshake under way: the drain waits for it, the end counts it as timed
            // out. (Counted once the connection exists: one that failed to open is a
            // connect error, not a handshake to wait for.)
            self.outstanding += 1;
        }
    }

    fn socket(&self, spec: &ConnSpec) -> io::Result<Sock> {
        let addr = self.plan.targets[spec.target as usize].1;
        let s = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        s.set_nodelay(true)?;
        if let Some(src) = spec.source {
            // Best effort: without it each source address still gives ~28k ports.
            let _ = sys::set_bind_address_no_port(&s);
            s.bind(&std::net::SocketAddr::new(src, 0).into())?;
        }
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Sock::new(TcpStream::from_std(s.into()), self.plan.tls.as_ref())
    }

    fn report_ready(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.reported {
            c.reported = true;
            if self.plan.mode != Mode::Connect {
                self.shared.ready.fetch_add(1, Ordering::AcqRel);
            }
            if c.role == Role::Subscriber {
                self.shared.ready_subs.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    fn report_failed(&mut self, msg: String) {
        if self.plan.mode != Mode::Connect {
            self.shared.failed.fetch_add(1, Ordering::AcqRel);
        }
        self.shared.error(msg);
    }

    // ---- events ----------------------------------------------------------------------

    fn on_event(&mut self, key: usize) {
        if key == TIMER {
            self.timer_at = 0;
            return self.timer.clear();
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.st == St::Connecting {
            match conn.sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.c.err_connect += 1;
                    let addr = self.plan.targets[usize::from(conn.target)].1;
                    let msg = format!("connect to {addr}: {e}");
                    self.fail(key, "connect", msg);
                    return;
                }
                Ok(None) => {}
            }
            match conn.sock.peer_addr() {
                Ok(_) => self.on_connected(key),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.c.err_connect += 1;
                    let addr = self.plan.targets[usize::from(conn.target)].1;
                    let msg = format!("connect to {addr}: {e}");
                    self.fail(key, "connect", msg);
                    return;
                }
            }
        }
        if self.conns.contains(key) {
            self.on_readable(key);
        }
        if let Some(c) = self.conns.get_mut(key) {
            // TLS: what rustls could not write at once (wss:// only; plain has nothing).
            if let Err(e) = c.sock.flush_tls() {
                self.c.err_reset += 1;
                self.fail(key, "write", format!("write: {e}"));
                return;
            }
        }
        if let Some(c) = self.conns.get(key) {
            if c.out.len() > c.out_pos {
                self.flush(key);
            }
        }
    }

    fn on_connected(&mut self, key: usize) {
        let plan = Arc::clone(&self.plan);
        let r = [self.rng.next(), self.rng.next()];
        let conn = &mut self.conns[key];
        if conn.role == Role::HttpPublisher {
            conn.st = St::Open;
            self.timeouts_clear(key);
            self.on_open(key);
            return;
        }
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&r[0].to_ne_bytes());
        nonce[8..].copy_from_slice(&r[1].to_ne_bytes());
        conn.key = client::key(nonce);
        let path = if conn.role == Role::Subscriber {
            &plan.sub_path
        } else {
            &plan.path
        };
        let authorization = plan.authorization.as_deref().map(|a| ("Authorization", a));
        let extensions = plan
            .deflate
            .then_some(("Sec-WebSocket-Extensions", deflate::CLIENT_OFFER));
        let headers: Vec<(&str, &str)> = authorization.into_iter().chain(extensions).collect();
        client::Request {
            host: &plan.host,
            path,
            key: &conn.key,
            protocols: &[],
            headers: &headers,
        }
        .encode(&mut conn.out);
        conn.st = St::Handshaking;
        self.mark_dirty(key);
    }

    fn timeouts_clear(&mut self, _key: usize) {
        // Entries are checked against the state when they fire; nothing to do.
    }

    fn on_readable(&mut self, key: usize) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut reads = 0;
        while let Some(conn) = self.conns.get_mut(key) {
            let carry = conn.carry.len();
            if carry >= buf.len() {
                buf.resize(carry * 2, 0);
            }
            buf[..carry].copy_from_slice(&conn.carry);
            let room = buf.len() - carry;
            match conn.sock.read(&mut buf[carry..]) {
                Ok(0) => {
                    let st = conn.st;
                    if st == St::Closing {
                        self.drop_conn(key);
                    } else if st == St::Handshaking {
                        self.c.err_handshake += 1;
                        self.fail(key, "handshake", "server closed during handshake".into());
                    } else {
                        self.c.err_closed += 1;
                        self.fail(key, "close", "server closed the connection".into());
                    }
                    break;
                }
                Ok(n) => {
                    conn.carry.clear();
                    self.c.bytes_in += n as u64;
                    let now = sys::mono_ns();
                    let used = self.process(key, &buf[..carry + n], now);
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.carry.extend_from_slice(&buf[used..carry + n]);
                    } else {
                        break;
                    }
                    // Edge-triggered: a short read drained the socket; more data makes a
                    // new edge, so there is no need for a read that ends in WouldBlock.
                    if n < room {
                        break;
                    }
                    reads += 1;
                    if reads == READS_PER_TURN {
                        self.again.push(key);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if conn.st == St::Closing {
                        self.drop_conn(key);
                    } else {
                        self.c.err_reset += 1;
                        self.fail(key, "read", format!("read: {e}"));
                    }
                    break;
                }
            }
        }
        self.buf = buf;
    }

    /// Handles the bytes; returns how many were consumed (the rest is carried).
    fn process(&mut self, key: usize, data: &[u8], now: u64) -> usize {
        let mut off = 0;
        let conn = &mut self.conns[key];
        if conn.st == St::Handshaking {
            let checked = client::Response::parse(data).and_then(|response| {
                response
                    .map(|r| {
                        let accepted = if self.plan.deflate {
                            r.check_deflate(&conn.key, &[])
                        } else {
                            r.check(&conn.key, &[])
                        };
                        accepted.map(|a| {
                            conn.dec.deflate = a.deflate.is_some();
                            r.head_len
                        })
                    })
                    .transpose()
            });
            match checked {
                Ok(None) => return 0,
                Ok(Some(n)) => {
                    off = n;
                    self.on_handshake(key, now);
                }
                Err(e) => {
                    self.c.err_handshake += 1;
                    self.fail(key, "handshake", format!("handshake: {e}"));
                    return data.len();
                }
            }
        }
        let Some(conn) = self.conns.get(key) else {
            return data.len();
        };
        if conn.role == Role::HttpPublisher {
            return off + self.process_http(key, &data[off..]);
        }
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return data.len();
            };
            match conn.dec.decode(&data[off..]) {
                Ok(Step::NeedMore) => return off,
                Ok(Step::Skipped(n)) => {
                    off += n;
                    if conn.timed_at_end && !conn.dec.in_payload() {
                        // The message's last byte: now it has arrived.
                        conn.timed_at_end = false;
                        let s = conn.pending.take();
                        self.on_message(key, s, now);
                    }
                }
                Ok(Step::Frame { consumed, event }) => {
                    off += consumed;
                    self.on_frame(key, event, now);
                }
                Err(e) => {
                    self.c.err_protocol += 1;
                    let mask = self.rng.mask();
                    let conn = &mut self.conns[key];
                    // RFC 6455 §7.4.1: 1002 protocol error.
                    close_frame(&mut conn.out, 1002, mask);
                    self.flush(key);
                    self.fail(key, "protocol", format!("protocol: {e}"));
                    return data.len();
                }
            }
        }
    }

    fn process_http(&mut self, key: usize, data: &[u8]) -> usize {
        let mut off = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&data[off..]) {
                Ok(httparse::Status::Complete(n)) => {
                    let len = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0usize);
                    if data.len() - off < n + len {
                        return off;
                    }
                    off += n + len;
                    if (200..300).contains(&resp.code.unwrap_or(0)) {
                        self.c.received += 1;
                    } else {
                        self.c.err_http += 1;
                    }
                }
                Ok(httparse::Status::Partial) => {
                    if data.len() - off > client::MAX_RESPONSE_HEAD {
                        self.c.err_protocol += 1;
                        self.fail(key, "http response", "http response too large".into());
                        return data.len();
                    }
                    return off;
                }
                Err(e) => {
                    self.c.err_protocol += 1;
                    self.fail(key, "http response", format!("http response: {e}"));
                    return data.len();
                }
            }
        }
    }

    fn on_handshake(&mut self, key: usize, now: u64) {
        let plan = Arc::clone(&self.plan);
        let (t0, role) = (self.conns[key].t0, self.conns[key].role);
        let in_window = self.in_window(t0);
        let conn = &mut self.conns[key];
        if role == Role::Churn {
            self.outstanding = self.outstanding.saturating_sub(1);
            self.c.handshakes += 1;
            self.c.received += 1;
            if in_window {
                self.c.received_window += 1;
                let lat = now.saturating_sub(t0).max(1);
                self.hist.saturating_record(lat);
                if plan.intervals {
                    self.interval.saturating_record(lat);
                }
            }
            conn.st = St::Open;
            let gen = conn.gen;
            self.holds.push_back((now + plan.hold_ns, key, gen));
            return;
        }
        self.c.handshakes += 1;
        if conn.role == Role::Subscriber {
            if let Some(msg) = &plan.subscribe_msg {
                let mask = self.rng.mask();
                frame::encode_client_into(&mut conn.out, OpCode::Text, mask, msg);
                conn.st = St::Subscribing;
                self.mark_dirty(key);
                return;
            }
        }
        conn.st = St::Open;
        self.on_open(key);
    }

    fn on_open(&mut self, key: usize) {
        self.report_ready(key);
        // The coordinator sets the window's start before the run phase; until then it is
        // u64::MAX, and no publish of the window can have been sent.
        let mstart = self.shared.mstart.load(Ordering::Acquire);
        let conn = &mut self.conns[key];
        conn.exact_start = self.plan.publishers > 0 && sys::mono_ns() < mstart;
        let role = conn.role;
        if matches!(role, Role::Echo | Role::Publisher | Role::HttpPublisher) {
            self.senders.push(key);
            if self.plan.rate == 0.0 && self.kicked {
                self.kick(key);
            }
        }
    }

    fn on_frame(&mut self, key: usize, ev: Event<'_>, now: u64) {
        match ev {
            Event::Data {
                opcode,
                fin: false,
                compressed: true,
                head,
                ..
            } => {
                let conn = &mut self.conns[key];
                conn.deflated_opcode = opcode;
                conn.deflated.clear();
                conn.deflated.extend_from_slice(head);
            }
            Event::Data {
                opcode,
                fin,
                compressed,
                head,
                len,
            } => self.on_data(key, opcode, fin, compressed, head, len, now),
            Event::Continuation {
                fin,
                compressed: true,
                head,
                ..
            } => {
                let conn = &mut self.conns[key];
                if conn.deflated.len() + head.len() > MAX_COMPRESSED {
                    self.c.err_protocol += 1;
                    self.fail(
                        key,
                        "inflate",
                        "compressed message over the size limit".into(),
                    );
                    return;
                }
                conn.deflated.extend_from_slice(head);
                if fin {
                    let (opcode, whole) =
                        (conn.deflated_opcode, std::mem::take(&mut conn.deflated));
                    let len = whole.len() as u64;
                    self.on_data(key, opcode, true, true, &whole, len, now);
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.deflated = whole;
                    }
                }
            }
            Event::Continuation { fin, len, .. } => {
                // Each frame of a plain message counts its own payload (only the first did);
                // a compressed one counts its inflated size once, in `on_data`.
                self.c.payload_in += len;
                let s = self.conns[key].pending.take();
                self.frame_ends(key, fin, s, now);
            }
            Event::Ping(payload) => {
                let mask = self.rng.mask();
                let conn = &mut self.conns[key];
                frame::encode_client_into(&mut conn.out, OpCode::Pong, mask, payload);
                self.mark_dirty(key);
            }
            Event::Pong => {}
            Event::Close { code, reason } => {
                let conn = &mut self.conns[key];
                if conn.st == St::Closing {
                    self.drop_conn(key);
                } else {
                    // RFC 6455 §5.5.1: reply with a close frame, echoing the code.
                    self.c.err_closed += 1;
                    let mask = self.rng.mask();
                    close_frame(&mut conn.out, code.unwrap_or(1000), mask);
                    self.flush(key);
                    let msg = match code {
                        Some(code) => format!(
                            "server closed the connection: code {code}, reason {:?}",
                            String::from_utf8_lossy(reason)
                        ),
                        None => "server closed the connection: no code".to_string(),
                    };
                    self.fail(key, "close", msg);
                }
            }
        }
    }

    /// A data message's first frame, with its payload or the head of it; a compressed
    /// message's whole payload, to inflate.
    #[allow(clippy::too_many_arguments)]
    fn on_data(
        &mut self,
        key: usize,
        opcode: OpCode,
        fin: bool,
        compressed: bool,
        head: &[u8],
        len: u64,
        now: u64,
    ) {
        let head = if compressed {
            match self.inflater.inflate(head, MAX_COMPRESSED) {
                Ok(data) => data,
                Err(e) => {
                    self.c.err_protocol += 1;
                    self.fail(key, "inflate", format!("inflate: {e}"));
                    return;
                }
            }
        } else {
            head
        };
        self.c.payload_in += if compressed { head.len() as u64 } else { len };
        let conn = &mut self.conns[key];
        if conn.st == St::Subscribing {
            if opcode == OpCode::Text && memchr::memmem::find(head, b"\"ok\"").is_some() {
                conn.st = St::Open;
                self.on_open(key);
            } else if memchr::memmem::find(head, b"\"error\"").is_some() {
                self.c.err_protocol += 1;
                let msg = format!("subscribe: {}", String::from_utf8_lossy(head));
                self.fail(key, "subscribe", msg);
            }
            return;
        }
        if conn.role == Role::Publisher && head.starts_with(b"{\"op\":\"error\"") {
            // The server refused a publish (wsgate dialect): counted, and the first
            // one said, not taken for a broadcast. As an error after the handshake, not
            // the connect phase's, which kept only the first error and so lost it after
            // any other.
            self.c.err_refused += 1;
            let msg = format!("publish refused: {}", String::from_utf8_lossy(head));
            self.shared.open_error(REFUSED, msg);
            return;
        }
        let s = stamp::find(head);
        self.frame_ends(key, fin, s, now);
    }

    /// A data frame's header and head have arrived: with `fin` the message is timed when
    /// the rest of the frame's payload has (at once if it is all here), else its stamp waits
    /// for the last frame.
    fn frame_ends(&mut self, key: usize, fin: bool, s: Option<Stamp>, now: u64) {
        let conn = &mut self.conns[key];
        if !fin || conn.dec.in_payload() {
            conn.pending = s;
            conn.timed_at_end = fin;
        } else {
            self.on_message(key, s, now);
        }
    }

    #[inline]
    fn on_message(&mut self, key: usize, s: Option<Stamp>, now: u64) {
        // Whether the stamp was taken in the measured window (read before `conn` borrows).
        let in_window = s.is_some_and(|s| self.in_window(s.ts));
        let conn = &mut self.conns[key];
        match conn.role {
            Role::Subscriber => {
                self.c.received += 1;
                let Some(s) = s else {
                    self.c.bad_stamp += 1;
                    return;
                };
                if from_the_future(s.ts, now) {
                    // Nor is its window known, nor its sequence number to be trusted.
                    self.c.future_stamp += 1;
                    arrived_unplaced(&mut self.c, self.mstart, now);
                    return;
                }
                let p = s.publisher as usize;
                if p >= 1 << 16 {
                    self.c.bad_stamp += 1;
                    return;
                }
                // Sequence numbers count over the window only: a publisher numbers its
                // window from 0 (see `send`), and warm-up deliveries are not tracked.
                if !in_window {
                    return;
                }
                self.c.received_window += 1;
                if p >= conn.tracks.len() {
                    let track = if conn.exact_start {
                        SeqTrack::starting_at(0)
                    } else {
                        // Someone else publishes: start at the first delivery.
                        SeqTrack::default()
                    };
                    conn.tracks.resize(p + 1, track);
                }
                match conn.tracks[p].on_stamped(s.seq, s.ts) {
                    SeqOutcome::InOrder => {}
                    SeqOutcome::Gap(n) => self.c.gaps += n,
                    SeqOutcome::Duplicate => self.c.duplicates += 1,
                    SeqOutcome::Late => {
                        self.c.reordered += 1;
                        self.c.gaps_filled += 1;
                    }
                    SeqOutcome::BeforeStart => self.c.reordered += 1,
                }
                let lat = now.saturating_sub(s.ts).max(1);
                self.hist.saturating_record(lat);
                self.per_target[conn.target as usize].saturating_record(lat);
                if self.plan.intervals {
                    self.interval.saturating_record(lat);
                }
            }
            Role::Echo => {
                self.c.received += 1;
                // An echo without a stamp to time it by is still an answer: the closed loop
                // goes on (it stopped at a stamp it could not read).
                let s = match s {
                    None => {
                        self.c.bad_stamp += 1;
                        None
                    }
                    Some(s) if from_the_future(s.ts, now) => {
                        self.c.future_stamp += 1;
                        None
                    }
                    s => s,
                };
                if let Some(s) = s {
                    let track = &mut conn.echoed[usize::from(s.ts >= self.mstart)];
                    match track.on(s.seq) {
                        SeqOutcome::Duplicate => {
                            // Its send was answered already: not an answer to another one
                            // (in closed loop it sent one more message, and hid a lost echo
                            // from the timeouts), nor a second latency sample of the same
                            // send.
                            if in_window {
                                self.c.duplicates += 1;
                            }
                            return;
                        }
                        // Behind the echo of a later send on this connection.
                        SeqOutcome::Late | SeqOutcome::BeforeStart if in_window => {
                            self.c.reordered += 1
                        }
                        _ => {}
                    }
                } else {
                    arrived_unplaced(&mut self.c, self.mstart, now);
                }
                conn.inflight = conn.inflight.saturating_sub(1);
                self.outstanding = self.outstanding.saturating_sub(1);
                if let Some(s) = s.filter(|_| in_window) {
                    self.c.received_window += 1;
                    let lat = now.saturating_sub(s.ts).max(1);
                    self.hist.saturating_record(lat);
                    if self.plan.intervals {
                        self.interval.saturating_record(lat);
                    }
                }
                // Closed loop: answer each echo with the next message.
                if self.plan.rate == 0.0
                    && self.shared.phase.load(Ordering::Relaxed) == RUN
                    && now < self.mend
                {
                    self.send(key, now);
                }
            }
            // Raw-dialect publishers get the broadcast too; it is not theirs to time.
            _ => self.c.received_other += 1,
        }
    }

    // ---- sending ---------------------------------------------------------------------

    /// Closed loop: fill the pipeline of a sender.
    fn kick(&mut self, key: usize) {
        let now = sys::mono_ns();
        for _ in 0..self.plan.pipeline.max(1) {
            self.send(key, now);
        }
    }

    fn send_due(&mut self, now: u64) {
        if self.plan.mode == Mode::Connect {
            return;
        }
        if self.plan.rate == 0.0 {
            if !self.kicked {
                self.kicked = true;
                if self.plan.mode == Mode::Echo {
                    for key in self.senders.clone() {
                        self.kick(key);
                    }
                }
            }
            return;
        }
        if self.send_every == 0 {
            // None of the senders is on this thread (a subscriber-only thread used to
            // wake up every nanosecond of the run for nothing).
            return;
        }
        let mut n = 0;
        while self.next_send <= now && self.next_send < self.mend && n < BURST {
            let t = self.next_send;
            self.next_send += self.send_every;
            n += 1;
            if self.senders.is_empty() {
                continue;
            }
            self.send_lag_max_update(now, t);
            self.rr = (self.rr + 1) % self.senders.len();
            let key = self.senders[self.rr];
            self.send(key, t);
        }
    }

    fn send_lag_max_update(&mut self, now: u64, intended: u64) {
        let lag = now.saturating_sub(intended);
        if is_late(lag, self.send_every) && self.in_window(intended) {
            self.c.late_sends += 1;
        }
        if self.in_window(intended) {
            self.send_lag_max = self.send_lag_max.max(lag);
        }
    }

    /// Sends one stamped message, timed from `ts` (the intended send time in open loop).
    fn send(&mut self, key: usize, ts: u64) {
        let mask = self.rng.mask();
        let in_window = self.in_window(ts);
        let plan = &*self.plan;
        let conn = &mut self.conns[key];
        if conn.out.len() - conn.out_pos > MAX_BACKLOG {
            self.c.backlog_drops += 1;
            return;
        }
        if in_window && !conn.window_numbered {
            // The window's first publish is number 0, as subscribers expect (issue 9).
            conn.window_numbered = true;
            conn.seq = 0;
        }
        let s = Stamp {
            ts,
            publisher: conn.id,
            seq: conn.seq,
        };
        conn.seq = conn.seq.wrapping_add(1);
        let size = plan.size;
        match conn.role {
            Role::HttpPublisher => {
                conn.out.extend_from_slice(&plan.http_head);
                conn.out.push(b'"');
                let start = conn.out.len();
                conn.out.resize(start + size, 0);
                stamp::write(&mut conn.out[start..], s);
                conn.out.push(b'"');
            }
            _ => {
                let (pre, suf) = (&plan.prefix, &plan.suffix);
                let len = pre.len() + size + suf.len();
                frame::encode_client_with(&mut conn.out, plan.opcode, mask, len, |p| {
                    p[..pre.len()].copy_from_slice(pre);
                    stamp::write(&mut p[pre.len()..pre.len() + size], s);
                    p[pre.len() + size..].copy_from_slice(suf);
                });
            }
        }
        if conn.role == Role::Echo {
            conn.inflight += 1;
            self.outstanding += 1;
        }
        self.c.sent += 1;
        if in_window {
            self.c.sent_window += 1;
        }
        self.mark_dirty(key);
    }

    fn mark_dirty(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    fn flush_dirty(&mut self) {
        while let Some(key) = self.dirty.pop() {
            if let Some(c) = self.conns.get_mut(key) {
                c.dirty = false;
                self.flush(key);
            }
        }
    }

    fn flush(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.st == St::Connecting {
            return;
        }
        while conn.out_pos < conn.out.len() {
            match conn.sock.write(&conn.out[conn.out_pos..]) {
                Ok(0) => break,
                Ok(n) => conn.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if conn.st == St::Closing {
                        self.drop_conn(key);
                    } else {
                        self.c.err_reset += 1;
                        self.fail(key, "write", format!("write: {e}"));
                    }
                    return;
                }
            }
        }
        conn.out.clear();
        conn.out_pos = 0;
    }

    // ---- timers and closing ----------------------------------------------------------

    fn expire(&mut self, now: u64) {
        while let Some(&(t, key, gen)) = self.timeouts.front() {
            if t > now {
                break;
            }
            self.timeouts.pop_front();
            if let Some(c) = self.conns.get(key) {
                let waiting = matches!(c.st, St::Connecting | St::Handshaking | St::Subscribing)
                    || (c.role == Role::HttpPublisher && !c.reported);
                if c.gen == gen && waiting {
                    self.c.err_timeout += 1;
                    let msg = format!("timeout connecting to {}", self.plan.url);
                    self.fail(key, "timeout", msg);
                }
            }
        }
        while let Some(&(t, key, gen)) = self.holds.front() {
            if t > now {
                break;
            }
            self.holds.pop_front();
            if self
                .conns
                .get(key)
                .is_some_and(|c| c.gen == gen && c.st == St::Open)
            {
                self.start_close(key, now);
            }
        }
        while let Some(&(t, key, gen)) = self.closes.front() {
            if t > now {
                break;
            }
            self.closes.pop_front();
            if self.conns.get(key).is_some_and(|c| c.gen == gen) {
                if self.plan.mode == Mode::Connect && self.stopping.is_none() {
                    self.c.err_timeout += 1;
                }
                self.drop_conn(key);
            }
        }
    }

    fn start_close(&mut self, key: usize, now: u64) {
        let mask = self.rng.mask();
        let conn = &mut self.conns[key];
        let gen = conn.gen;
        close_frame(&mut conn.out, 1000, mask);
        conn.st = St::Closing;
        // A churned connection's close handshake gets the same patience as its opening one:
        // on a loaded machine the server's answer can take over a second, which is a slow
        // server, not a missing answer.
        let patience = if self.plan.mode == Mode::Connect {
            self.plan.connect_timeout_ns
        } else {
            CLOSE_TIMEOUT_NS
        };
        self.closes.push_back((now + patience, key, gen));
        self.flush(key);
    }

    fn close_all(&mut self, now: u64) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(c) = self.conns.get(key) else {
                continue;
            };
            match (c.st, c.role) {
                (St::Open | St::Subscribing, r) if r != Role::HttpPublisher => {
                    self.start_close(key, now)
                }
                (St::Closing, _) => {}
                _ => self.drop_conn(key),
            }
        }
        // Echo replies and churn handshakes still missing at the end count as timeouts.
        self.c.err_timeout += self.outstanding;
        self.outstanding = 0;
    }

    /// Drops a connection that failed; during the connect phase it also counts as failed.
    /// `kind` is the sort of error `msg` says ("protocol", "close", ...): after the handshake
    /// the first of each kind is said (such errors were only counted, and a run that failed
    /// that way gave no reason).
    fn fail(&mut self, key: usize, kind: &'static str, msg: String) {
        if let Some(c) = self.conns.get(key) {
            // A churned connection is never reported ready: it is open once handshaken.
            let open = c.reported || (self.plan.mode == Mode::Connect && c.st == St::Open);
            if open {
                self.shared.open_error(kind, msg);
            } else if self.plan.mode != Mode::Connect {
                self.conns[key].reported = true;
                self.report_failed(msg);
            } else {
                self.shared.error(msg);
            }
        }
        self.drop_conn(key);
    }

    fn drop_conn(&mut self, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut c.sock);
            if c.role == Role::Echo {
                self.outstanding = self.outstanding.saturating_sub(u64::from(c.inflight));
                if self.stopping.is_none() {
                    self.c.err_timeout += u64::from(c.inflight);
                }
            }
            if c.role == Role::Churn
                && matches!(c.st, St::Connecting | St::Handshaking)
                && self.stopping.is_none()
            {
                // Failed before its handshake completed (counted by its error). At the end
                // it stays outstanding, to be counted as timed out.
                self.outstanding = self.outstanding.saturating_sub(1);
            }
            if let Some(i) = self.senders.iter().position(|&k| k == key) {
                self.senders.swap_remove(i);
            }
        }
    }
}

/// Appends a masked close frame with `code` and no reason.
fn close_frame(out: &mut Vec<u8>, code: u16, key: [u8; 4]) {
    frame::encode_client_into(out, OpCode::Close, key, &code.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_is_late_against_its_own_schedule() {
        // 1,000 sends/s and faster: more than 1 ms behind.
        assert!(!is_late(1_000_000, 1_000_000));
        assert!(is_late(1_000_001, 1_000_000));
        assert!(is_late(1_000_001, 10_000));
        // 10 sends/s: a tenth of the 100 ms between them (the compare.sh 10k-10 runs saw
        // 1.1-1.3 ms lags there and called the loadgen saturated).
        assert!(!is_late(1_300_000, 100_000_000));
        assert!(!is_late(10_000_000, 100_000_000));
        assert!(is_late(10_000_001, 100_000_000));
    }

    #[test]
    fn seq_tracking() {
        let mut t = SeqTrack::default();
        assert_eq!(t.on(0), SeqOutcome::InOrder);
        assert_eq!(t.on(1), SeqOutcome::InOrder);
        assert_eq!(t.on(4), SeqOutcome::Gap(2));
        assert_eq!(t.on(2), SeqOutcome::Late);
        assert_eq!(t.on(2), SeqOutcome::Duplicate);
        assert_eq!(t.on(4), SeqOutcome::Duplicate);
        assert_eq!(t.on(5), SeqOutcome::InOrder);
        assert_eq!(t.on(3), SeqOutcome::Late);
        assert_eq!(t.on(200), SeqOutcome::Gap(194));
        assert_eq!(t.on(10), SeqOutcome::Late, "too old to tell");
    }

    // Issue 9 item 11: with the publisher's numbering of the window known, a loss or a
    // reordering at its very first publish counts.
    #[test]
    fn seq_counts_from_the_first_publish_of_the_window() {
        let mut t = SeqTrack::starting_at(0);
        assert_eq!(t.on(1), SeqOutcome::Gap(1), "the first publish was lost");
        assert_eq!(t.on(2), SeqOutcome::InOrder);
        let mut t = SeqTrack::starting_at(0);
        assert_eq!(t.on(1), SeqOutcome::Gap(1));
        assert_eq!(t.on(0), SeqOutcome::Late, "the first publish came second");
        assert_eq!(t.on(0), SeqOutcome::Duplicate);
        assert_eq!(t.on(2), SeqOutcome::InOrder);
        let mut t = SeqTrack::starting_at(0);
        assert_eq!(t.on(0), SeqOutcome::InOrder);
        // The old behaviour, kept where the numbering is unknown: the first delivery starts
        // the track, and one numbered before it is reordered without having been a gap.
        let mut t = SeqTrack::default();
        assert_eq!(t.on(5), SeqOutcome::InOrder);
        assert_eq!(t.on(4), SeqOutcome::BeforeStart);
        assert_eq!(t.on(7), SeqOutcome::Gap(1));
        assert_eq!(t.on(6), SeqOutcome::Late);
        assert_eq!(t.on(4), SeqOutcome::BeforeStart);
    }

    /// A passive process watching from before the publisher's window sees its numbering
    /// restart at 0 there: a new start, not 500 reorderings and duplicates. Told apart from
    /// late and repeated deliveries by their stamps, which are not newer.
    #[test]
    fn a_passive_track_follows_the_publishers_renumbering() {
        let mut t = SeqTrack::default();
        assert_eq!(t.on_stamped(500, 10), SeqOutcome::InOrder);
        assert_eq!(t.on_stamped(501, 11), SeqOutcome::InOrder);
        assert_eq!(
            t.on_stamped(0, 12),
            SeqOutcome::InOrder,
            "the window's numbering"
        );
        assert_eq!(t.on_stamped(1, 13), SeqOutcome::InOrder);
        assert_eq!(
            t.on_stamped(0, 12),
            SeqOutcome::Duplicate,
            "a repeat: same stamp"
        );
        assert_eq!(t.on_stamped(3, 15), SeqOutcome::Gap(1));
        assert_eq!(t.on_stamped(2, 14), SeqOutcome::Late, "sent earlier");
        // The window's first publish lost: the renumbering still starts at 0.
        let mut t = SeqTrack::default();
        assert_eq!(t.on_stamped(500, 10), SeqOutcome::InOrder);
        assert_eq!(
            t.on_stamped(1, 12),
            SeqOutcome::Gap(1),
            "publish 0 was lost"
        );
        // A track that began at the window's 0: a real duplicate of 0 stays one.
        let mut t = SeqTrack::default();
        for i in 0..10 {
            assert_eq!(t.on_stamped(i, 100 + u64::from(i)), SeqOutcome::InOrder);
        }
        assert_eq!(t.on_stamped(0, 100), SeqOutcome::Duplicate);
        assert_eq!(t.on_stamped(10, 110), SeqOutcome::InOrder);
        // Where the publisher's numbering is known, nothing is a renumbering.
        let mut t = SeqTrack::starting_at(0);
        assert_eq!(t.on_stamped(0, 1), SeqOutcome::InOrder);
        assert_eq!(t.on_stamped(1, 2), SeqOutcome::InOrder);
        assert_eq!(t.on_stamped(0, 3), SeqOutcome::Duplicate);
    }

    #[test]
    fn seq_wraps() {
        let mut t = SeqTrack::default();
        assert_eq!(t.on(u32::MAX - 1), SeqOutcome::InOrder);
        assert_eq!(t.on(u32::MAX), SeqOutcome::InOrder);
        assert_eq!(t.on(0), SeqOutcome::InOrder);
        assert_eq!(t.on(u32::MAX), SeqOutcome::Duplicate);
    }

    #[test]
    fn rng_masks_differ() {
        let mut r = Rng::new();
        let a = r.mask();
        let b = r.mask();
        let c = r.mask();
        assert!(a != b || b != c);
    }
}
