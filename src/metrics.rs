//! Per-reactor counters. Each reactor writes only its own (relaxed atomics, no sharing
//! of cache lines between reactors); `/metrics` and tests read them all.

use std::sync::atomic::{AtomicU64, Ordering};

/// One reactor's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ReactorMetrics {
    /// Connections open on this reactor (any phase).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Upgrades completed.
    pub handshakes_ok: AtomicU64,
    /// Requests answered with an error status instead of an upgrade.
    pub handshakes_failed: AtomicU64,
    /// WebSocket connections failed for a protocol violation.
    pub protocol_errors: AtomicU64,
}

impl ReactorMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
