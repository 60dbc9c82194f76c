//! Where fan-out deliveries wait while the reactor batches (batch.rs decides how long).
//!
//! A fan-out gives every subscriber its frames at the same instants, so if each waiting
//! connection left a fixed delay after its first frame, all of them would leave together:
//! one burst of writes (2–3 ms of kernel time for 1,000 subscribers, tens of ms for
//! 10,000) during which the reactor reads nothing, the last socket of the burst waits for
//! all the others, and a publish read late opens its batches late. Instead the connections
//! are spread over `SLOTS` slots by their index, and the slots leave in turn, one a tick,
//! on a grid that divides the delay:
//!
//! ```text
//!   delay ├───────────────────────────────┤
//!   slot  0       1       2       3       0       1 …     (a tick: delay / 4, at least 250 µs)
//! ```
//!
//! A connection's frames leave at the first turn from its slot's next tick on: each write
//! carries what came in the last `delay`, and the reactor writes a quarter of its
//! subscribers a tick. Four slots, not more: on loopback at 1,000 subscribers × 1,000/s
//! and a 12 ms delay, one slot (one burst) cost 0.52× Bun's CPU with p99 1.6× Bun's, 16
//! slots 0.63× with p99 1.2×, and 4 slots 0.49× with p99 1.17× (runs each beside Bun;
//! docs/performance.md). The loop wakes up for a slot a quarter of the delay after its tick
//! if nothing else woke it by then, and never later than `max_batch_delay` after the
//! slot's first frame: no frame waits longer than that bound.

use std::time::{Duration, Instant};

use super::conn::Scheduled;
use super::Core;
use crate::driver::ConnId;

/// Slots the waiting connections are spread over.
pub(super) const SLOTS: usize = 4;
/// The shortest time between two slots' ticks: fewer slots for a short delay, so that the
/// loop does not wake up more often than this for them.
const TICK: Duration = Duration::from_micros(250);

/// The waiting connections, by slot.
pub(super) struct Corked {
    /// The origin of the grid of ticks.
    epoch: Instant,
    slots: [Slot; SLOTS],
    /// The connections of the slots leaving this turn (kept for its capacity).
    leaving: Vec<(ConnId, u8)>,
}

#[derive(Default)]
struct Slot {
    /// Every connection that joined since the slot opened, including any that left early.
    conns: Vec<ConnId>,
    /// How many of `conns` still wait here: a connection leaves early when a reply flushes
    /// it, or when it is gone.
    live: u32,
    /// The tick its connections may leave at, in the first turn from then on; `None`
    /// while it is empty.
    due: Option<Instant>,
    /// When the loop wakes up for them if no other work woke it since `due`.
    wake: Option<Instant>,
}

impl Corked {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            slots: Default::default(),
            leaving: Vec::new(),
        }
    }

    /// Makes `id` wait in its slot, for `delay` (not zero) or a quarter more if the loop
    /// has nothing else to wake up for, never past `max`; returns the slot.
    pub fn cork(&mut self, id: ConnId, now: Instant, delay: Duration, max: Duration) -> u8 {
        let n = (delay.as_nanos() / TICK.as_nanos()).clamp(1, SLOTS as u128) as usize;
        let s = id.index() % n;
        if self.slots[s].due.is_none() {
            let tick = self.tick(s, n, now, delay);
            let slot = &mut self.slots[s];
            slot.due = Some(tick);
            slot.wake = Some((tick + delay / 4).min(now + max.max(delay)));
        }
        self.slots[s].conns.push(id);
        self.slots[s].live += 1;
        s as u8
    }

    /// A connection of slot `s` left before its tick. Returns whether the slot is empty now:
    /// then it closes, and nothing waits for its tick any more.
    fn left_early(&mut self, s: u8) -> bool {
        let slot = &mut self.slots[usize::from(s)];
        slot.live = slot.live.saturating_sub(1);
        if slot.live > 0 || slot.due.is_none() {
            return false;
        }
        slot.due = None;
        slot.wake = None;
        slot.conns.clear();
        true
    }

    /// Slot `s`'s first tick after `now` on the grid of `n` slots over `delay`: in
    /// `(now, now + delay]`.
    fn tick(&self, s: usize, n: usize, now: Instant, delay: Duration) -> Instant {
        let q = (delay.as_nanos() / n as u128).max(1);
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        let first = since / q + 1;
        let k = first + (s as u128 + n as u128 - first % n as u128) % n as u128;
        self.epoch + Duration::from_nanos((k * q) as u64)
    }

    /// The earliest tick a slot waits for.
    pub fn due(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.due).min()
    }

    /// When the loop must wake up at the latest for the waiting connections. A slot whose
    /// tick has come leaves in the next turn, whatever woke the loop: under load, turns
    /// come often, so the slots mostly leave without a wake-up of their own (on this VM a
    /// sleep and a wake-up cost the reactor about 100 µs of CPU).
    pub fn wake(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.wake).min()
    }

    /// Takes the connections of the slots whose tick has come into `leaving`, each with its
    /// slot; returns those slots as a mask (bit `s` for slot `s`).
    fn take_due(&mut self, now: Instant) -> u16 {
        let out = &mut self.leaving;
        let mut mask = 0;
        for (s, slot) in self.slots.iter_mut().enumerate() {
            if slot.due.is_some_and(|due| due <= now) {
                slot.due = None;
                slot.wake = None;
                slot.live = 0;
                mask |= 1 << s;
                out.extend(slot.conns.drain(..).map(|id| (id, s as u8)));
            }
        }
        mask
    }
}

impl Core {
    /// Releases the waiting connections whose slot's tick has come, and marks the
    /// publishes that waited only for those slots as written.
    pub(super) fn uncork(&mut self) {
        if self.corked.due().is_none_or(|due| self.now < due) {
            return;
        }
        let mask = self.corked.take_due(self.now);
        let mut leaving = std::mem::take(&mut self.corked.leaving);
        for (id, slot) in leaving.drain(..) {
            // A connection a reply flushed meanwhile, or that waits in another slot now,
            // is not this slot's any more.
            if self
                .conns
                .get_mut(id)
                .is_some_and(|c| c.scheduled == Scheduled::Corked(slot))
            {
                self.schedule(id);
            }
        }
        self.corked.leaving = leaving;
        self.written(mask);
    }

    /// A connection waiting in `slot` leaves before its tick (a reply flushes it, or it is
    /// gone). If it was the slot's last, the publishes that waited only for that slot have
    /// had their last frames handed to the driver in this turn: they are sampled now, not
    /// when the empty slot's tick would have come.
    pub(super) fn uncorked_early(&mut self, slot: u8) {
        if self.corked.left_early(slot) {
            self.written(1 << slot);
        }
    }

    /// The slots in `mask` have left: no publish waits for them any more.
    fn written(&mut self, mask: u16) {
        for (_, waits) in &mut self.published {
            *waits &= !mask;
        }
        self.published_done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn every_tick_is_within_the_delay_and_slots_take_turns() {
        let epoch = Instant::now();
        let c = Corked::new(epoch);
        for delay_us in [250, 400, 1000, 3_300, 5_000, 20_000] {
            let delay = Duration::from_micros(delay_us);
            for at_us in (0..50_000).step_by(37) {
                let now = epoch + Duration::from_micros(at_us);
                let n = (delay_us / 250).clamp(1, SLOTS as u64) as usize;
                let mut ticks: Vec<Instant> = (0..n).map(|s| c.tick(s, n, now, delay)).collect();
                for &t in &ticks {
                    assert!(t > now && t <= now + delay, "{delay:?} at {at_us} µs");
                }
                // The slots' ticks are spread over the delay, a tick apart.
                ticks.sort();
                for w in ticks.windows(2) {
                    assert_eq!(w[1] - w[0], delay / n as u32);
                }
            }
        }
    }

    #[test]
    fn slots_leave_in_turn() {
        let epoch = Instant::now();
        let mut c = Corked::new(epoch);
        let now = epoch + Duration::from_micros(100);
        for i in 0..64 {
            c.cork(ConnId(i), now, 4 * MS, 20 * MS);
        }
        let mut left = 0;
        let mut t = now;
        while let Some(due) = c.due() {
            assert!(due > t && due <= now + 4 * MS);
            assert_eq!(c.wake(), Some(due + MS), "or a quarter of the delay later");
            t = due;
            let mask = c.take_due(t);
            assert_eq!(mask.count_ones(), 1, "one slot a tick");
            assert_eq!(c.leaving.len(), 16, "64 connections over 4 slots");
            left += c.leaving.len();
            c.leaving.clear();
        }
        assert_eq!(left, 64);
    }

    #[test]
    fn a_short_delay_uses_fewer_slots() {
        let epoch = Instant::now();
        let mut c = Corked::new(epoch);
        for i in 0..64 {
            assert!(usize::from(c.cork(ConnId(i), epoch, Duration::from_micros(500), 20 * MS)) < 2);
        }
        let mut ticks = 0;
        while let Some(due) = c.due() {
            c.take_due(due);
            ticks += 1;
        }
        assert_eq!((ticks, c.leaving.len()), (2, 64));
    }
}
