//! Write batching under load: how long fan-out deliveries may wait so that several frames
//! leave in one write. Each write costs a syscall and the kernel's TCP send (about a
//! microsecond on loopback) whatever it carries, so a busy reactor that holds frames for
//! a few milliseconds spends several times less per delivery, while an idle one would only
//! add latency.
//!
//! A controller on the reactor's load picks the delay once per window. The load is the
//! larger of two shares of the window's wall time: the thread's CPU time (which counts the
//! kernel's work in its writes, on both drivers, even inside io_uring's submit) and the
//! time its turns took (which also counts time the thread was runnable but preempted:
//! long turns). The delay is off while the reactor is mostly idle (deliveries leave in the turn that queued them, as without batching);
//! started and doubled while it is busy; halved as it calms; never past `max_batch_delay`;
//! and switched off for a while when the batches show that subscribers receive too rarely
//! for any delay within the bound to put two frames in one write.

use std::time::{Duration, Instant};

/// How often the load is measured and the delay adjusted.
const WINDOW: Duration = Duration::from_millis(50);
/// Load (share of wall time the thread was on the CPU) at which the delay grows ...
const BUSY: f64 = 0.6;
/// ... and under which it is halved (at most doubling the writes: back under `BUSY`).
const CALM: f64 = 0.3;
/// The first delay tried, and the shortest kept.
const FIRST: Duration = Duration::from_millis(1);
/// How long batching stays off once it proved useless at the current rates.
const HOLD_OFF: Duration = Duration::from_secs(2);

/// The reactor's batching state.
pub(super) struct Batching {
    max: Duration,
    delay: Duration,
    /// Where the thread's CPU time is read (a test clock in tests).
    cpu: fn() -> Duration,
    window_start: Instant,
    cpu_start: Duration,
    /// Smoothed load over the last windows, 0 to 1.
    load: f64,
    /// No batching before this (it did not help).
    hold_off: Option<Instant>,
    /// Batches opened in this window (a connection's first waiting frame), and frames that
    /// joined one already open.
    opened: u64,
    joined: u64,
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
            hold_off: None,
            opened: 0,
            joined: 0,
            turns: Duration::ZERO,
        }
    }

    /// How long a delivery to a connection with nothing waiting may wait now (0: not at all).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// A connection's first frame starts waiting.
    pub fn opened(&mut self) {
        self.opened += 1;
    }

    /// A frame joins a connection's waiting ones.
    pub fn joined(&mut self) {
        self.joined += 1;
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
        self.load = 0.5 * self.load + 0.5 * (used.as_secs_f64() / wall.as_secs_f64()).min(1.0);
        // Frames per batch beyond the first; none without batches to judge by.
        let extra = (self.opened > 0).then(|| self.joined as f64 / self.opened as f64);
        let before = self.delay;
        self.delay = self.next_delay(now, extra);
        self.window_start = now;
        self.cpu_start = cpu;
        self.opened = 0;
        self.joined = 0;
        self.turns = Duration::ZERO;
        (self.delay != before).then_some(self.delay)
    }

    fn next_delay(&mut self, now: Instant, extra: Option<f64>) -> Duration {
        let busy = self.load >= BUSY;
        if self.delay.is_zero() {
            let held = self.hold_off.is_some_and(|until| now < until);
            return if busy && !held {
                FIRST.min(self.max)
            } else {
                Duration::ZERO
            };
        }
        // A batch of `delay` gathered `extra` frames after its first; at the longest delay
        // it would gather proportionally more. Under half a frame: useless (judged once
        // the delay is long enough for the count to mean something).
        let at_max = extra.map(|e| e * self.max.as_secs_f64() / self.delay.as_secs_f64());
        if self.delay >= self.max / 4 && at_max.is_some_and(|f| f < 0.5) {
            self.hold_off = Some(now + HOLD_OFF);
            Duration::ZERO
        } else if busy {
            (self.delay * 2).min(self.max)
        } else if self.load < CALM {
            let half = self.delay / 2;
            if half < FIRST {
                Duration::ZERO
            } else {
                half
            }
        } else {
            self.delay
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_cpu() -> Duration {
        Duration::ZERO
    }

    /// A reactor preempted in the middle of its turns uses little CPU, but its turns run
    /// long: that is load too.
    #[test]
    fn long_turns_count_as_load_without_cpu_time() {
        let ms = Duration::from_millis(1);
        let mut t = Instant::now();
        let mut b = Batching::new(20 * ms, t, no_cpu);
        for _ in 0..4 {
            b.opened();
            b.joined();
            let start = t;
            t += 60 * ms;
            b.update(start, t);
        }
        assert!(b.delay() >= 2 * ms, "{:?}", b.delay());
        // Short turns again: the delay winds down to nothing.
        for _ in 0..10 {
            t += 60 * ms;
            b.update(t, t);
        }
        assert_eq!(b.delay(), Duration::ZERO);
    }
}
