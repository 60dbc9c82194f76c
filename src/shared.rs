//! What every reactor shares: the configuration, the counters, the fan-out mesh, the
//! drain flag and the wakers. Built once by `server::Server::start` (or a test harness)
//! and handed to each reactor in an `Arc`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::broadcast::{Delivery, Fanout};
use crate::config::Config;
use crate::limits::Table;
use crate::metrics::ReactorMetrics;
use crate::sys::EventFd;

/// State every reactor sees.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// Set once on SIGTERM/SIGINT (or `Server::drain`); reactors then stop accepting,
    /// close with 1001 and exit when their connections are gone or the grace ends.
    pub draining: AtomicBool,
    /// Open connections across all reactors (for `max_connections`).
    pub open: AtomicUsize,
    /// One set of counters per reactor, indexed like the reactors.
    pub metrics: Vec<ReactorMetrics>,
    /// Topic interest and the inboxes between reactors.
    pub fanout: Fanout,
    /// The I/O backend the reactors run.
    pub io: &'static str,
    /// Open connections and connection rate per client IP (`[rate]` settings).
    pub clients: Table,
    /// HTTP publishes per bearer token (`publish_rate_per_token`).
    pub publishers: Table,
    wakers: Vec<Arc<EventFd>>,
}

impl Shared {
    /// Shared state for `reactors` reactors; returns each reactor's inbox, in order.
    pub fn new(
        config: Config,
        io: &'static str,
        reactors: usize,
    ) -> std::io::Result<(Arc<Self>, Vec<Receiver<Delivery>>)> {
        let wakers = (0..reactors)
            .map(|_| EventFd::new().map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        let (fanout, inboxes) = Fanout::new(&wakers, config.pubsub.inbox_capacity);
        let shared = Arc::new(Self {
            config,
            draining: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            metrics: (0..reactors).map(|_| ReactorMetrics::default()).collect(),
            fanout,
            io,
            clients: Table::new(std::time::Instant::now()),
            publishers: Table::new(std::time::Instant::now()),
            wakers,
        });
        Ok((shared, inboxes))
    }

    pub fn waker(&self, reactor: usize) -> &Arc<EventFd> {
        &self.wakers[reactor]
    }

    pub fn reactors(&self) -> usize {
        self.wakers.len()
    }

    /// Asks every reactor to drain.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        for waker in &self.wakers {
            waker.wake();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
