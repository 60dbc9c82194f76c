//! Rate and connection limits: the token bucket (as GCRA, one integer of state per bucket),
//! the per-connection [`Meter`] of /ws messages, bytes and subscription ops, and the
//! sharded [`Table`] the reactors share for connections per client IP and HTTP publishes
//! per token. Time is passed in by the caller; nothing here reads a clock or makes a
//! syscall, and nothing here knows about sockets or the protocol.
//!
//! A token bucket of capacity `burst` refilled at `per_sec` is kept as the generic cell
//! rate algorithm (GCRA, "virtual scheduling", ITU-T I.371): the state is the instant at
//! which the bucket would be full again, stored as how far it lies ahead of now. An event
//! of cost `c` conforms when that lead plus `c / per_sec` stays within `burst / per_sec`;
//! refusing one changes nothing.

use std::collections::hash_map::{Entry, HashMap, RandomState};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::rate::RateLimits;

/// Longest lead a bucket may take (about 17.9 minutes): a connection's buckets are 32-bit
/// microsecond instants, which stay unambiguous within ±2^31 µs of now.
pub const MAX_AHEAD_US: u64 = 1 << 30;

/// A rate: `per_sec` units per second in bursts of up to `burst` units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    per_sec: u64,
    window_us: u64,
}

impl Rate {
    /// `None` when `per_sec` is 0 (unlimited). A burst below one unit is one unit.
    pub fn new(per_sec: u64, burst: u64) -> Option<Self> {
        (per_sec > 0).then(|| Self {
            per_sec,
            window_us: burst.max(1).saturating_mul(1_000_000) / per_sec,
        })
    }

    /// How long a full burst lasts, in microseconds.
    pub fn window_us(&self) -> u64 {
        self.window_us
    }

    /// The time `units` take at this rate, rounded to the nearest microsecond.
    fn cost_us(&self, units: u64) -> u64 {
        units
            .saturating_mul(1_000_000)
            .saturating_add(self.per_sec / 2)
            / self.per_sec
    }

    /// Given the bucket's lead over now, the new lead if `units` conform, or how long
    /// until they would (µs). An empty bucket (no lead) takes any cost, so that an event
    /// larger than the burst is slowed down, not refused for ever.
    pub fn admit(&self, lead_us: u64, units: u64) -> Result<u64, u64> {
        let lead = lead_us.saturating_add(self.cost_us(units));
        if lead_us == 0 || lead <= self.window_us {
            Ok(lead.min(MAX_AHEAD_US))
        } else {
            Err(lead - self.window_us)
        }
    }
}

/// The reactor's time in a connection's buckets: microseconds since the reactor started,
/// wrapping every 71.6 minutes (the timer sweep keeps every bucket within 2^31 µs of now).
pub fn micros(now: Instant, epoch: Instant) -> u32 {
    now.saturating_duration_since(epoch).as_micros() as u32
}

/// What a message's meter says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over a rate: answer `rate_limited` and drop the message.
    Refuse,
    /// Over a rate `max_rate_limited` times in a row: close with 1008.
    Close,
}

/// One /ws connection's buckets: messages, message bytes and subscription ops, each the
/// instant (see [`micros`]) at which it would be full, and the messages refused in a row.
/// 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meter {
    messages: u32,
    bytes: u32,
    ops: u32,
    refused: u8,
}

impl Meter {
    /// Full buckets at `now`.
    pub fn new(now: u32) -> Self {
        Self {
            messages: now,
            bytes: now,
            ops: now,
            refused: 0,
        }
    }

    /// Charges one message of `len` bytes at `now`.
    pub fn message(&mut self, limits: &RateLimits, now: u32, len: usize) -> Verdict {
        let messages = charge(limits.messages, self.messages, now, 1);
        let bytes = charge(limits.bytes, self.bytes, now, len as u64);
        if let (Ok(messages), Ok(bytes)) = (messages, bytes) {
            self.messages = messages;
            self.bytes = bytes;
            self.refused = 0;
            return Verdict::Pass;
        }
        self.refused = self.refused.saturating_add(1);
        if u32::from(self.refused) > limits.max_rate_limited {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }

    /// Charges one subscribe or unsubscribe op at `now`; false when over the rate.
    pub fn op(&mut self, limits: &RateLimits, now: u32) -> bool {
        match charge(limits.subscribe_ops, self.ops, now, 1) {
            Ok(ops) => {
                self.ops = ops;
                true
            }
            Err(()) => false,
        }
    }

    /// Moves full buckets' instants up to `now`; the timer sweep calls it at least every
    /// second so that no instant falls 2^31 µs behind and reads as ahead.
    pub fn settle(&mut self, now: u32) {
        for tat in [&mut self.messages, &mut self.bytes, &mut self.ops] {
            if lead(*tat, now) == 0 {
                *tat = now;
            }
        }
    }
}

/// How far `tat` lies ahead of `now` (0 when behind).
fn lead(tat: u32, now: u32) -> u64 {
    (tat.wrapping_sub(now) as i32).max(0) as u64
}

/// The bucket's new instant if `units` conform (unchanged without a rate).
fn charge(rate: Option<Rate>, tat: u32, now: u32, units: u64) -> Result<u32, ()> {
    match rate {
        None => Ok(tat),
        Some(rate) => rate
            .admit(lead(tat, now), units)
            .map(|lead| now.wrapping_add(lead as u32))
            .map_err(|_| ()),
    }
}

/// A client IP as the per-IP limits count it: an IPv4 address (also when IPv4-mapped), or
/// the network of an IPv6 address to `prefix` bits (at most 64).
pub fn client_key(ip: IpAddr, prefix: u32) -> NonZeroU64 {
    let key = match ip {
        IpAddr::V4(v4) => 1 << 32 | u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => 1 << 32 | u64::from(u32::from(v4)),
            None => {
                let top = (u128::from(v6) >> 64) as u64;
                // The 0:1::/32 range (IPv4 above) and ::/64 (loopback) are reserved.
                (top & (u64::MAX << (64 - prefix.clamp(1, 64)))).max(2)
            }
        },
    };
    NonZeroU64::new(key).expect("never 0")
}

/// Why a client was refused before its request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// At its limit of open connections.
    TooMany,
    /// Over its rate; the bucket has room again after this long.
    TooFast(Duration),
}

impl Refusal {
    /// Seconds for `Retry-After`: at least 1, at most 10 (with bursts of one second's
    /// worth and rates of at least 1 per second, a bucket always has room within 1 s).
    pub fn retry_after(self) -> u8 {
        match self {
            Self::TooMany => 1,
            Self::TooFast(wait) => wait.as_micros().div_ceil(1_000_000).clamp(1, 10) as u8,
        }
    }
}

/// The `Retry-After` header value for `seconds` (1 to 10).
pub fn retry_after_header(seconds: u8) -> &'static str {
    const VALUES: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    VALUES[usize::from(seconds.clamp(1, 10)) - 1]
}

/// Per-key state in a [`Table`]: open connections, and the rate bucket's instant in
/// microseconds since the table's epoch.
#[derive(Debug, Default)]
struct Slot {
    open: u32,
    tat_us: u64,
}

const SHARDS: usize = 64;

/// Counts and rates per key (a client IP, a publish token), shared by the reactors. Each
/// key lives in one of 64 shards behind its own mutex, taken once per accept, close or
/// HTTP publish, never per message; a key's entry goes once its count is 0 and its bucket
/// is full again (at its next close, or at the sweep of its shard).
#[derive(Debug)]
pub struct Table {
    epoch: Instant,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<u64, Slot>>]>,
}

impl Table {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The key for a secret (a publish token): a keyed hash, so the table holds no token.
    pub fn secret_key(&self, secret: &[u8]) -> u64 {
        self.hasher.hash_one(secret)
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        // Keys are addresses or hashes: Fibonacci hashing spreads either over the shards.
        let index = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
        self.shards[index % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Counts a new connection for `key` unless that passes `max_open` (0: no limit) or
    /// `rate`. A refused one is not counted.
    pub fn open(
        &self,
        key: u64,
        now: Instant,
        max_open: u32,
        rate: Option<Rate>,
    ) -> Result<(), Refusal> {
        let now = self.micros(now);
        let mut shard = self.shard(key);
        let slot = shard.entry(key).or_default();
        let refusal = if max_open > 0 && slot.open >= max_open {
            Some(Refusal::TooMany)
        } else {
            match rate.map(|r| r.admit(slot.tat_us.saturating_sub(now), 1)) {
                Some(Err(wait)) => Some(Refusal::TooFast(Duration::from_micros(wait))),
                Some(Ok(lead)) => {
                    slot.tat_us = now + lead;
                    None
                }
                None => None,
            }
        };
        match refusal {
            None => {
                slot.open += 1;
                Ok(())
            }
            Some(refusal) => {
                if slot.open == 0 && slot.tat_us <= now {
                    shard.remove(&key);
                }
                Err(refusal)
            }
        }
    }

    /// A connection counted by `open` is gone.
    pub fn close(&self, key: u64, now: Instant) {
        let now = self.micros(now);
        let mut shard = self.shard(key);
        if let Entry::Occupied(mut e) = shard.entry(key) {
            let slot = e.get_mut();
            slot.open = slot.open.saturating_sub(1);
            if slot.open == 0 && slot.tat_us <= now {
                e.remove();
            }
        }
    }

    /// Charges one event (an HTTP publish) to `key`'s bucket.
    pub fn take(&self, key: u64, now: Instant, rate: Rate) -> Result<(), Refusal> {
        let now = self.micros(now);
        let mut shard = self.shard(key);
        let slot = shard.entry(key).or_default();
        match rate.admit(slot.tat_us.saturating_sub(now), 1) {
            Ok(lead) => {
                slot.tat_us = now + lead;
                Ok(())
            }
            Err(wait) => Err(Refusal::TooFast(Duration::from_micros(wait))),
        }
    }

    /// Forgets the keys of shard `turn % 64` that hold no connection and whose bucket is
    /// full again. A reactor calls it at each timer sweep with a counter of its own.
    pub fn sweep(&self, turn: usize, now: Instant) {
        let now = self.micros(now);
        let mut shard = self.shards[turn % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shard.retain(|_, slot| slot.open > 0 || slot.tat_us > now);
    }

    /// Keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tweak: impl FnOnce(&mut crate::config::rate::Raw)) -> RateLimits {
        let mut raw = crate::config::RawConfig::default();
        tweak(&mut raw.rate);
        raw.validate().expect("valid").rate
    }

    #[test]
    fn gcra_is_a_token_bucket() {
        // 10 per second in bursts of 3: three at once, then one every 100 ms.
        let rate = Rate::new(10, 3).unwrap();
        let mut lead = 0;
        for _ in 0..3 {
            lead = rate.admit(lead, 1).unwrap();
        }
        assert_eq!(lead, 300_000);
        assert_eq!(rate.admit(lead, 1), Err(100_000), "full: wait 100 ms");
        // 100 ms later one more fits, and only one.
        lead = rate.admit(lead - 100_000, 1).unwrap();
        assert!(rate.admit(lead, 1).is_err());
        // An event over the whole burst passes only from an empty bucket.
        assert_eq!(rate.admit(0, 50), Ok(5_000_000));
        assert!(rate.admit(1, 50).is_err());
        assert_eq!(rate.admit(0, u64::MAX), Ok(MAX_AHEAD_US));
        assert_eq!(Rate::new(0, 10), None, "0 is unlimited");
    }

    #[test]
    fn meter_refuses_then_closes_and_recovers() {
        let limits = limits(|r| {
            r.message_rate = Some(100);
            r.message_burst = Some(5);
            r.max_rate_limited = Some(3);
        });
        let t0 = u32::MAX - 20_000; // across the wrap of the 32-bit clock
        let mut meter = Meter::new(t0);
        for _ in 0..5 {
            assert_eq!(meter.message(&limits, t0, 10), Verdict::Pass);
        }
        for _ in 0..3 {
            assert_eq!(meter.message(&limits, t0, 10), Verdict::Refuse);
        }
        assert_eq!(meter.message(&limits, t0, 10), Verdict::Close);
        // Back under the rate: 10 ms buys one message and clears the refusals.
        let later = t0.wrapping_add(30_000);
        assert_eq!(meter.message(&limits, later, 10), Verdict::Pass);
        assert_eq!(meter.message(&limits, later, 10), Verdict::Pass);
        assert_eq!(meter.message(&limits, later, 10), Verdict::Pass);
        assert_eq!(meter.message(&limits, later, 10), Verdict::Refuse);
    }

    #[test]
    fn bytes_and_ops_have_their_own_buckets() {
        let limits = limits(|r| {
            r.byte_rate = Some(1000);
            r.subscribe_rate = Some(2);
        });
        let mut meter = Meter::new(0);
        assert_eq!(meter.message(&limits, 0, 600), Verdict::Pass);
        assert_eq!(meter.message(&limits, 0, 600), Verdict::Refuse);
        assert_eq!(meter.message(&limits, 0, 400), Verdict::Pass);
        assert_eq!(meter.message(&limits, 200_000, 200), Verdict::Pass);
        assert!(meter.op(&limits, 0) && meter.op(&limits, 0) && !meter.op(&limits, 0));
        assert!(meter.op(&limits, 500_000));
        let unlimited = RateLimits::default();
        let mut meter = Meter::new(0);
        for _ in 0..10_000 {
            assert_eq!(meter.message(&unlimited, 0, 1 << 20), Verdict::Pass);
            assert!(meter.op(&unlimited, 0));
        }
    }

    /// An idle connection's instants are moved along by the sweep, so a bucket idle for
    /// longer than the 32-bit clock's half period does not read as far ahead.
    #[test]
    fn settle_keeps_idle_buckets_unambiguous() {
        let limits = limits(|r| r.message_rate = Some(1));
        let mut meter = Meter::new(0);
        assert_eq!(meter.message(&limits, 0, 1), Verdict::Pass);
        let mut now = 0u32;
        for _ in 0..3000 {
            now = now.wrapping_add(1_000_000);
            meter.settle(now);
        }
        assert_eq!(meter.message(&limits, now, 1), Verdict::Pass);
    }

    #[test]
    fn client_keys_group_ipv6_by_prefix() {
        let key = |ip: &str, prefix| client_key(ip.parse().unwrap(), prefix).get();
        assert_eq!(key("10.0.0.1", 64), key("::ffff:10.0.0.1", 64));
        assert_ne!(key("10.0.0.1", 64), key("10.0.0.2", 64));
        assert_eq!(key("2001:db8:1:2::1", 64), key("2001:db8:1:2:ffff::9", 64));
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_eq!(key("2001:db8:1:2::1", 48), key("2001:db8:1:3::1", 48));
        assert_ne!(key("::1", 64), key("0.0.0.1", 64));
        assert_ne!(key("2001:db8::1", 64), key("10.0.0.1", 64));
    }

    #[test]
    fn table_counts_and_forgets() {
        let t0 = Instant::now();
        let table = Table::new(t0);
        assert!(table.open(7, t0, 2, None).is_ok());
        assert!(table.open(7, t0, 2, None).is_ok());
        assert_eq!(table.open(7, t0, 2, None), Err(Refusal::TooMany));
        assert!(table.open(8, t0, 2, None).is_ok(), "another key");
        table.close(7, t0);
        assert!(table.open(7, t0, 2, None).is_ok(), "closing frees a slot");
        for key in [7, 7, 8] {
            table.close(key, t0);
        }
        assert!(table.is_empty(), "entries go at 0");
        // The rate outlives the count until its bucket is full again.
        let rate = Rate::new(2, 2);
        assert!(table.open(9, t0, 0, rate).is_ok());
        assert!(table.open(9, t0, 0, rate).is_ok());
        let refusal = table.open(9, t0, 0, rate).unwrap_err();
        assert_eq!(refusal, Refusal::TooFast(Duration::from_millis(500)));
        assert_eq!(refusal.retry_after(), 1);
        table.close(9, t0);
        table.close(9, t0);
        assert_eq!(table.len(), 1, "kept while the bucket refills");
        assert_eq!(
            table.open(9, t0, 0, rate).unwrap_err(),
            Refusal::TooFast(Duration::from_millis(500)),
            "reconnecting does not reset the rate"
        );
        let later = t0 + Duration::from_secs(1);
        for turn in 0..SHARDS {
            table.sweep(turn, later);
        }
        assert!(table.is_empty(), "swept once full");
        assert_eq!(
            Refusal::TooFast(Duration::from_millis(2500)).retry_after(),
            3
        );
    }
}
