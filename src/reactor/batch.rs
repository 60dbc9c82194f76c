//! Write batching under load: how long fan-out deliveries may wait so that several frames
//! leave in one write. Each write costs a syscall and the kernel's TCP send (about a
//! microsecond on loopback) whatever it carries, so a busy reactor that holds frames for
//! a few milliseconds spends less per delivery, while an idle one would only add latency.
//! Where they wait, and how their writes are spread over the delay, is cork.rs.
//!
//! The controller looks for the *smallest* delay that brings the reactor's load down to
//! a target, not the longest it may take. Once per window it measures the load: the larger
//! of two shares of the window's wall time, the thread's CPU time (which counts the
//! kernel's work in its writes, on both drivers, even inside io_uring's submit) and the
//! time its turns took (which also counts time the thread was runnable but preempted).
//! From the window's deliveries it knows the frames per write `f` the current delay gave,
//! and how often a subscriber receives (`r`, frames a second per connection that received
//! any: deliveries over distinct receivers). A waiting connection writes at its slot's
//! tick, once a delay, so it carries the frames of one delay, or those that came together
//! anyway (`f0`, several publishes in one turn). A model of the cost per delivery, a fixed
//! part plus a per-write part spread over `f` frames, then says what load each delay
//! would give:
//!
//! ```text
//!   cost(f) ∝ (1 − WRITE_SHARE) + WRITE_SHARE / f        f(delay) = max(f0, r · delay)
//!   load(delay) = load_now · cost(f(delay)) / cost(f_now)
//! ```
//!
//! and it steps to the delay whose load is the aim (`TARGET`, or a quarter above the
//! floor no delay can go below, if that is higher: frames beyond that buy little CPU for
//! their latency). After each change it waits a window before judging (that window
//! still holds frames corked under the old delay). Off while the reactor is mostly idle
//! (deliveries leave in the turn that queued them), and while subscribers receive too
//! rarely for any delay within `max_batch_delay` to put `WORTH` times the frames in a
//! write: then waiting would cost latency and save nothing.

use std::time::{Duration, Instant};

use crate::driver::ConnId;

/// How often the load is measured and the delay adjusted.
const WINDOW: Duration = Duration::from_millis(50);
/// Load (share of wall time the thread was busy) at which batching starts ...
const START: f64 = 0.5;
/// ... and under which, estimated without batching, it stops again.
const STOP: f64 = 0.4;
/// The load the delay aims for.
const TARGET: f64 = 0.35;
/// The aim is at least this much above the floor (the load with every frame of a
/// connection in one write), whatever `TARGET` says.
const OVER_FLOOR: f64 = 1.25;
/// Share of a delivery's cost at one frame per write that is the write's (syscall, TCP
/// send, wake-up of the receiver) rather than the frame's. On loopback at 1,000
/// subscribers the bare write loop pays almost all of its cost per write (3.5–6 µs, at 1
/// to 64 frames a write: `scripts/compare.sh 1k-floor`), and wsgate's runs at fixed delays
/// fit 440 ns a frame + 2.25 µs a write: 0.84 at one frame. (0.6, a guess from before the
/// floor was measured, held 1,000 × 1,000/s at 6 ms, 864 ns a delivery; at the 14 ms
/// bound it costs 462.)
const WRITE_SHARE: f64 = 0.85;
/// The shortest delay kept.
const SHORTEST: Duration = Duration::from_micros(250);
/// A change smaller than this share of the delay is not worth a window of settling.
const DEAD_BAND: f64 = 0.2;
/// A change from one delay to another is by at most this factor either way.
const MAX_STEP: f64 = 4.0;
/// Times the frames per write without a delay that the full bound must promise for
/// batching to be worth its latency.
const WORTH: f64 = 1.5;
/// Bits of the sketch that counts a window's distinct receivers (linear counting: exact
/// enough far past this many connections a reactor).
const SEEN_BITS: usize = 1 << 16;

/// The reactor's batching state.
pub(super) struct Batching {
    max: Duration,
    delay: Duration,
    /// Where the thread's CPU time is read (a test clock in tests).
    cpu: fn() -> Duration,
    window_start: Instant,
    cpu_start: Duration,
    /// Load averaged over the windows judged since the delay last changed, 0 to 1.
    load: f64,
    /// Windows averaged into `load`.
    judged: u32,
    /// The window after a change is not judged: it still holds frames of the old delay.
    settling: bool,
    /// Frames per write without a delay (several publishes in one turn share a write
    /// anyway), as last measured.
    unbatched_frames: f64,
    /// Batches opened in this window (a connection's first waiting frame), and frames that
    /// joined one already open.
    opened: u64,
    joined: u64,
    /// The connections that received in this window, hashed into a bitmap.
    seen: Box<[u64]>,
    /// Wall time spent in turns (outside the driver's wait) in this window.
    turns: Duration,
}

impl Batching {
    pub fn new(max: Duration, now: Instant, cpu: fn() -> Duration) -> Self {
        Self {
            max,
            delay: Duration::ZERO,
            cpu,
            window_start: now,
            cpu_start: cpu(),
            load: 0.0,
            judged: 0,
            settling: false,
            unbatched_frames: 1.0,
            opened: 0,
            joined: 0,
            seen: vec![0; SEEN_BITS / 64].into_boxed_slice(),
            turns: Duration::ZERO,
        }
    }

    /// How long a delivery to a connection with nothing waiting may wait now (0: not at all).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// A connection's first frame of a write is queued (it waits, or leaves this turn).
    pub fn opened(&mut self) {
        self.opened += 1;
    }

    /// A frame joins the ones queued for a connection's next write.
    pub fn joined(&mut self) {
        self.joined += 1;
    }

    /// A connection was delivered to (once per delivery, after `opened` or `joined`).
    pub fn received(&mut self, id: ConnId) {
        if self.max.is_zero() {
            // Batching is off: nothing reads the sketch.
            return;
        }
        // A multiply-xorshift mix, so that any pattern of indexes spreads evenly.
        let mut x = u64::from(id.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let bit = (x >> 48) as usize % SEEN_BITS;
        self.seen[bit / 64] |= 1 << (bit % 64);
    }

    /// Distinct connections delivered to in this window, estimated from the sketch.
    fn receivers(&self) -> f64 {
        let set: u32 = self.seen.iter().map(|w| w.count_ones()).sum();
        let m = SEEN_BITS as f64;
        let empty = (m - f64::from(set)).max(0.5);
        -m * (empty / m).ln()
    }

    /// After each turn, with its start (when the driver's wait returned) and its end:
    /// once a window has passed, measures the load and adjusts the delay. Returns the new
    /// delay when it changed.
    pub fn update(&mut self, start: Instant, now: Instant) -> Option<Duration> {
        self.turns += now.saturating_duration_since(start);
        let wall = now.saturating_duration_since(self.window_start);
        if wall < WINDOW || self.max.is_zero() {
            return None;
        }
        let cpu = (self.cpu)();
        let used = cpu.saturating_sub(self.cpu_start).max(self.turns);
        let load = (used.as_secs_f64() / wall.as_secs_f64()).min(1.0);
        let (opened, joined) = (self.opened, self.joined);
        // Frames a second per connection that received any.
        let rate = (opened + joined) as f64 / self.receivers().max(1.0) / wall.as_secs_f64();
        self.window_start = now;
        self.cpu_start = cpu;
        self.opened = 0;
        self.joined = 0;
        self.seen.fill(0);
        self.turns = Duration::ZERO;
        if std::mem::take(&mut self.settling) {
            return None;
        }
        self.judged += 1;
        self.load += (load - self.load) / f64::from(self.judged.min(4));
        let next = self.next_delay(opened, joined, rate);
        if next == self.delay {
            return None;
        }
        self.delay = next;
        self.settling = true;
        self.judged = 0;
        self.load = 0.0;
        Some(next)
    }

    fn next_delay(&mut self, opened: u64, joined: u64, rate: f64) -> Duration {
        if opened == 0 {
            // Busy, but not with deliveries: nothing for batching to save.
            return Duration::ZERO;
        }
        // Frames per write the window's delay gave.
        let frames = 1.0 + joined as f64 / opened as f64;
        if self.delay.is_zero() {
            self.unbatched_frames = frames;
        }
        let f0 = self.unbatched_frames;
        let max = self.max.as_secs_f64();
        if f0.max(rate * max) < WORTH * f0 {
            // Subscribers receive too rarely: even the bound would not gather enough.
            return Duration::ZERO;
        }
        let unbatched = self.load * cost(f0) / cost(frames);
        let started = !self.delay.is_zero();
        if (!started && self.load < START) || unbatched < STOP {
            return Duration::ZERO;
        }
        let aim = aim(self.load, frames);
        if aim >= unbatched {
            return Duration::ZERO;
        }
        // cost(f) = cost(frames) · aim / load, solved for f; then f = rate · delay.
        let room = cost(frames) * aim / self.load - (1.0 - WRITE_SHARE);
        let needed = if room > 0.0 {
            WRITE_SHARE / room
        } else {
            f64::INFINITY
        };
        let mut wanted = (needed / rate).min(max);
        if started {
            let delay = self.delay.as_secs_f64();
            wanted = wanted.clamp(delay / MAX_STEP, delay * MAX_STEP);
            if (wanted - delay).abs() <= DEAD_BAND * delay {
                return self.delay;
            }
        }
        Duration::from_secs_f64(wanted).clamp(SHORTEST.min(self.max), self.max)
    }
}

/// A delivery's cost at `frames` per write, relative to one frame per write.
fn cost(frames: f64) -> f64 {
    (1.0 - WRITE_SHARE) + WRITE_SHARE / frames
}

/// The load to aim for, from the load at `frames` per write: `TARGET`, or a quarter above
/// the floor (every frame of a connection in one write), whichever is higher.
fn aim(load: f64, frames: f64) -> f64 {
    TARGET.max(OVER_FLOOR * load * (1.0 - WRITE_SHARE) / cost(frames))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    thread_local! {
        static CPU: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    }

    fn cpu() -> Duration {
        CPU.with(Cell::get)
    }

    fn no_cpu() -> Duration {
        Duration::ZERO
    }

    /// A reactor fanning out to `subscribers` that each receive `rate` frames a second,
    /// `burst` of them in one turn; a delivery costs `frame` plus `write` spread over the
    /// frames that share its write (the model's shape, with a write share of 0.85 at one
    /// frame per write).
    struct Load {
        subscribers: f64,
        rate: f64,
        burst: f64,
        frame: Duration,
        write: Duration,
    }

    impl Load {
        /// 1,000 subscribers at `rate` frames a second each, 0.8 of a core unbatched at
        /// 1,000/s.
        fn thousand(rate: f64) -> Self {
            Self {
                subscribers: 1000.0,
                rate,
                burst: 1.0,
                frame: Duration::from_nanos(120),
                write: Duration::from_nanos(680),
            }
        }

        /// Frames per write at a delay: a waiting subscriber writes once a delay.
        fn frames(&self, delay: Duration) -> f64 {
            self.burst.max(self.rate * delay.as_secs_f64())
        }

        /// The load a delay gives, in share of the core.
        fn at(&self, delay: Duration) -> f64 {
            let f = self.frames(delay);
            let per = self.frame.as_secs_f64() + self.write.as_secs_f64() / f;
            (self.subscribers * self.rate * per).min(1.0)
        }
    }

    /// Runs the controller against `load` for `windows` windows of 50 ms, one turn each;
    /// returns the delay after each window.
    fn run(b: &mut Batching, t: &mut Instant, load: &Load, windows: usize) -> Vec<Duration> {
        let mut delays = Vec::new();
        for _ in 0..windows {
            let d = b.delay();
            let frames = load.subscribers * load.rate * WINDOW.as_secs_f64();
            let writes = (frames / load.frames(d)).round() as u64;
            for _ in 0..writes {
                b.opened();
            }
            for _ in 0..(frames.round() as u64).saturating_sub(writes) {
                b.joined();
            }
            for i in 0..load.subscribers as u32 {
                b.received(ConnId(i));
            }
            CPU.with(|c| c.set(c.get() + WINDOW.mul_f64(load.at(d))));
            // The window's turns took no wall time (the load is the CPU clock's).
            *t += WINDOW;
            b.update(*t, *t);
            delays.push(b.delay());
        }
        delays
    }

    fn fresh(max: Duration) -> (Batching, Instant) {
        CPU.with(|c| c.set(Duration::ZERO));
        let t = Instant::now();
        (Batching::new(max, t, cpu), t)
    }

    /// 1,000 subscribers × 1,000/s, 0.8 of a core unbatched: the delay settles at the few
    /// milliseconds that bring the load to the aim (0.35), far below the 20 ms it may take.
    #[test]
    fn settles_at_the_smallest_delay_that_reaches_the_aim() {
        let (mut b, mut t) = fresh(20 * MS);
        let load = Load::thousand(1000.0);
        assert!((load.at(Duration::ZERO) - 0.8).abs() < 1e-9);
        let delays = run(&mut b, &mut t, &load, 40);
        let last = *delays.last().unwrap();
        assert!(last >= 2 * MS && last <= 6 * MS, "{delays:?}");
        // The aim, 0.35 (the floor, 0.12, is far under it), or under it.
        assert!(load.at(last) <= 0.4, "load {} at {last:?}", load.at(last));
        // Settled: the last second changed nothing.
        assert!(delays[20..].iter().all(|&d| d == last), "{delays:?}");
        // Each change waits a window before it is judged.
        for w in delays.windows(3) {
            assert!(!(w[0] != w[1] && w[1] != w[2]), "{delays:?}");
        }
    }

    /// The same reactor at a quarter of the rate is not busy enough to batch at all.
    #[test]
    fn light_load_never_batches() {
        let (mut b, mut t) = fresh(20 * MS);
        let load = Load::thousand(250.0);
        assert!(load.at(Duration::ZERO) < START);
        let delays = run(&mut b, &mut t, &load, 40);
        assert!(delays.iter().all(|d| d.is_zero()), "{delays:?}");
    }

    /// Saturated and each subscriber receives only 100/s: the aim needs more than the
    /// bound, so the delay goes to the bound, never past it; when the load goes away,
    /// batching ends.
    #[test]
    fn saturated_takes_the_bound_and_no_more_then_stops() {
        let (mut b, mut t) = fresh(20 * MS);
        let load = Load {
            subscribers: 10_000.0,
            rate: 100.0,
            burst: 1.0,
            frame: Duration::from_nanos(400),
            write: Duration::from_nanos(600),
        };
        let delays = run(&mut b, &mut t, &load, 30);
        assert!(delays.iter().all(|&d| d <= 20 * MS), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), 20 * MS, "{delays:?}");
        let calm = Load { rate: 10.0, ..load };
        let delays = run(&mut b, &mut t, &calm, 10);
        assert_eq!(*delays.last().unwrap(), Duration::ZERO, "{delays:?}");
    }

    /// The rate falls while batching: the delay shrinks with it rather than staying long.
    #[test]
    fn follows_a_falling_load_down() {
        let (mut b, mut t) = fresh(20 * MS);
        // A whole core unbatched at 1,000/s.
        let load = |rate| Load {
            frame: Duration::from_nanos(150),
            write: Duration::from_nanos(850),
            ..Load::thousand(rate)
        };
        let delays = run(&mut b, &mut t, &load(1000.0), 30);
        let high = *delays.last().unwrap();
        let delays = run(&mut b, &mut t, &load(500.0), 30);
        let lower = *delays.last().unwrap();
        assert!(lower < high, "{high:?} then {lower:?}");
        let delays = run(&mut b, &mut t, &load(200.0), 10);
        assert_eq!(*delays.last().unwrap(), Duration::ZERO, "{delays:?}");
    }

    /// Busy, but each subscriber receives 10/s: no delay within 20 ms puts two frames in a
    /// write, and the rate says so before any delay is tried.
    #[test]
    fn never_batches_when_subscribers_receive_too_rarely() {
        let (mut b, mut t) = fresh(20 * MS);
        let load = Load {
            subscribers: 10_000.0,
            rate: 10.0,
            burst: 1.0,
            frame: Duration::from_nanos(2000),
            write: Duration::from_nanos(4000),
        };
        assert!(load.at(Duration::ZERO) >= START);
        let delays = run(&mut b, &mut t, &load, 80);
        assert!(delays.iter().all(|d| d.is_zero()), "{delays:?}");
    }

    /// The sketch counts distinct receivers, not deliveries, within a few percent.
    #[test]
    fn counts_distinct_receivers() {
        let (mut b, _) = fresh(20 * MS);
        for n in [1u32, 10, 1000, 10_000, 50_000] {
            b.seen.fill(0);
            for _ in 0..3 {
                for i in 0..n {
                    b.received(ConnId(i * 7 + 3));
                }
            }
            let c = b.receivers();
            let n = f64::from(n);
            assert!((c - n).abs() <= 0.03 * n + 0.5, "{c} for {n}");
        }
    }

    /// A publisher whose publishes arrive 16 at a time (a late one catching up) already
    /// puts 16 frames in each write without a delay: the 20 ms bound could not make that
    /// 1.5 times more, so nothing waits even though the reactor is busy.
    #[test]
    fn publishes_that_arrive_in_bursts_need_no_delay() {
        let (mut b, mut t) = fresh(20 * MS);
        let load = Load {
            burst: 16.0,
            frame: Duration::from_nanos(600),
            write: Duration::from_nanos(3400),
            ..Load::thousand(1000.0)
        };
        assert!(load.at(Duration::ZERO) >= START);
        let delays = run(&mut b, &mut t, &load, 40);
        assert!(delays.iter().all(|d| d.is_zero()), "{delays:?}");
    }

    /// A reactor preempted in the middle of its turns uses little CPU, but its turns run
    /// long: that is load too.
    #[test]
    fn long_turns_count_as_load_without_cpu_time() {
        let mut t = Instant::now();
        let mut b = Batching::new(20 * MS, t, no_cpu);
        for _ in 0..4 {
            for _ in 0..10 {
                b.opened();
                b.joined();
            }
            let start = t;
            t += 60 * MS;
            b.update(start, t);
        }
        assert!(b.delay() > Duration::ZERO, "{:?}", b.delay());
        // Short turns again: batching ends.
        for _ in 0..10 {
            t += 60 * MS;
            b.update(t, t);
        }
        assert_eq!(b.delay(), Duration::ZERO);
    }

    #[test]
    fn zero_bound_never_batches() {
        let (mut b, mut t) = fresh(Duration::ZERO);
        let delays = run(&mut b, &mut t, &Load::thousand(1000.0), 20);
        assert!(delays.iter().all(|d| d.is_zero()), "{delays:?}");
    }
}
