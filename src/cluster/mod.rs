//! Several wsgate nodes, one set of topics: the bridge between this node's fan-out and
//! NATS. It owns one thread per node (`nats.rs`: async-nats on a current-thread tokio
//! runtime; the reactors never block on it) and the [`Link`] the reactors and the fan-out
//! reach it by. It must not touch connections: what it receives enters the fan-out like
//! any publish (`Fanout::publish`), encoded once per node.
//!
//! ```text
//!   reactor publish ──try_send──▶ outbox ─▶ bridge thread ─▶ PUB <prefix>.<topic>
//!   Fanout interest 0↔1 ─▶ changed set + notify ─▶ SUB / UNSUB, round trip, Fanout::confirm
//!   MSG <prefix>.<topic> ─▶ bridge thread ─▶ prepare once ─▶ one Delivery per reactor
//! ```
//!
//! Guarantees: while NATS is connected, each subscriber on any node gets each message
//! once, in each publisher's order (one NATS connection per node, one relay per topic,
//! `no_echo` so a node never hears its own publishes). While it is not, local fan-out
//! goes on, publishes for other nodes are dropped and counted (at most once), and the
//! client reconnects with backoff and re-subscribes (async-nats keeps the subscriptions).

mod nats;
pub mod subject;

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::broadcast::InterestListener;
use crate::config::cluster::Cluster;

pub use nats::spawn;

/// A publish on its way to NATS.
#[derive(Debug)]
struct Outgoing {
    topic: Arc<str>,
    data: Bytes,
}

/// The bridge's counters, shown by `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// The bridge is connected and its subscriptions are in place.
    pub connected: AtomicBool,
    /// Messages published to NATS.
    pub messages_out: AtomicU64,
    /// Messages received from NATS (including refused ones).
    pub messages_in: AtomicU64,
    /// Reconnections after a lost connection.
    pub reconnects: AtomicU64,
    /// Publishes not sent to NATS: disconnected, or the outbox full.
    pub dropped_out: AtomicU64,
    /// Messages from NATS not delivered: not JSON, too large, or lost by a slow relay.
    pub dropped_in: AtomicU64,
    /// Subscribes acknowledged before NATS confirmed the node's interest (timeout).
    pub unconfirmed: AtomicU64,
    /// Messages from NATS compressed here for permessage-deflate subscribers.
    pub compressions: AtomicU64,
}

/// The reactors' and the fan-out's handle on the bridge.
#[derive(Debug)]
pub struct Link {
    pub stats: Stats,
    outbox: mpsc::Sender<Outgoing>,
    /// The bridge thread's end of `outbox`, taken when it starts.
    outbox_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Topics whose node-wide interest changed since the bridge last looked.
    changed: Mutex<HashSet<Arc<str>>>,
    wake: Notify,
    stop: Notify,
    stopping: AtomicBool,
}

impl Link {
    pub fn new(config: &Cluster) -> Self {
        let (outbox, outbox_rx) = mpsc::channel(config.outbox_capacity);
        Self {
            stats: Stats::default(),
            outbox,
            outbox_rx: Mutex::new(Some(outbox_rx)),
            changed: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Queues a publish accepted on this node for the other nodes; never blocks. Dropped
    /// (and counted) when the outbox is full; the bridge drops it while disconnected.
    pub fn publish(&self, topic: &str, data: &[u8]) {
        let outgoing = Outgoing {
            topic: Arc::from(topic),
            data: Bytes::copy_from_slice(data),
        };
        if self.outbox.try_send(outgoing).is_err() {
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.stats.connected.load(Ordering::Acquire)
    }

    /// Asks the bridge thread to finish (it closes its NATS connection).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_one();
    }

    /// Appends the bridge's metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 8] = [
            (
                "cluster_connected",
                "gauge",
                "1 while the NATS bridge is connected with its subscriptions in place.",
                u64::from(self.is_connected()),
            ),
            (
                "cluster_messages_out_total",
                "counter",
                "Messages published to NATS.",
                get(&s.messages_out),
            ),
            (
                "cluster_messages_in_total",
                "counter",
                "Messages received from NATS.",
                get(&s.messages_in),
            ),
            (
                "cluster_reconnects_total",
                "counter",
                "Reconnections to NATS after a lost connection.",
                get(&s.reconnects),
            ),
            (
                "cluster_dropped_total{direction=\"out\"}",
                "counter",
                "Messages lost between this node and NATS (out: not published, \
                 in: received but not delivered).",
                get(&s.dropped_out),
            ),
            (
                "cluster_dropped_total{direction=\"in\"}",
                "",
                "",
                get(&s.dropped_in),
            ),
            (
                "cluster_unconfirmed_subscribes_total",
                "counter",
                "Subscribes acknowledged before NATS confirmed the node's interest.",
                get(&s.unconfirmed),
            ),
            (
                "cluster_compressions_total",
                "counter",
                "Messages from NATS compressed by the bridge for permessage-deflate subscribers.",
                get(&s.compressions),
            ),
        ];
        for (name, kind, help, value) in rows {
            if !kind.is_empty() {
                let family = name.split('{').next().unwrap_or(name);
                let _ = writeln!(
                    out,
                    "# HELP wsgate_{family} {help}\n# TYPE wsgate_{family} {kind}"
                );
            }
            let _ = writeln!(out, "wsgate_{name} {value}");
        }
    }

    fn take_changed(&self) -> Vec<Arc<str>> {
        self.changed
            .lock()
            .expect("changed lock poisoned")
            .drain()
            .collect()
    }
}

impl InterestListener for Link {
    fn changed(&self, topic: &Arc<str>) {
        self.changed
            .lock()
            .expect("changed lock poisoned")
            .insert(topic.clone());
        self.wake.notify_one();
    }

    fn confirming(&self) -> bool {
        self.is_connected()
    }
}
