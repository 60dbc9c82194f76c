//! The per-core loop: owns this core's connections and drives the transport, the protocol
//! core, the applications and the fan-out inbox from the driver's completions.
//!
//! ```text
//!   driver.wait ─▶ driver.next ─▶ completion
//!                                   │ Received: transport ─▶ request phase (request.rs)
//!                                   │                        or WebSocket ─▶ app (crate::app)
//!                                   │ Sent / Eof / Failed / Released: lifecycle (conn.rs)
//!   inbox (other reactors' publishes) ─▶ delivery with the slow-consumer policy (delivery.rs)
//!   timers (sweep) ─▶ pings, timeouts, close deadlines
//!   flush: one vectored send per connection with output queued this turn (corking);
//!          under load, deliveries first wait, up to the batching delay (batch.rs), in
//!          slots that leave in turn (cork.rs)
//! ```
//!
//! The files split the loop by concern: this one is the loop and the driver glue,
//! `conn.rs` the connection lifecycle (phase, backpressure, closing), `request.rs` the
//! HTTP request phase (parse, route, upgrade), `delivery.rs` fan-out into the local
//! queues, `batch.rs` and `cork.rs` how long and where deliveries wait under load.
//! Applications see a connection only through `app::Session`, which `Ctx` implements.

mod batch;
mod conn;
mod cork;
mod delivery;
mod request;
#[cfg(test)]
mod tests;

use std::io;
use std::mem;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use hdrhistogram::Histogram;

use crate::app::control::{self, ControlError, ErrorCode};
use crate::app::{self, RefreshError, Route, Session, SubscribeError};
use crate::auth::Permissions;
use crate::broadcast::{Delivery, Topics};
use crate::driver::{Completion, ConnId, Driver};
use crate::limits::{self as rate, Verdict};
use crate::metrics::{self, ReactorMetrics};
use crate::shared::Shared;
use crate::transport::TransportError;
use batch::Batching;
use conn::{Conns, Limited, Phase, Recv, Scheduled, Send};
use cork::Corked;
use delivery::Held;
use wsgate_proto::deflate::{Deflater, Inflater};
use wsgate_proto::{Budget, CloseCode, Event, OpCode, ProtocolError};

/// One core's event loop.
pub struct Reactor<D: Driver> {
    driver: D,
    core: Core,
    /// Where the loop reads the time (a fixed clock in tests).
    clock: fn() -> Instant,
}

/// Everything but the driver, so that bytes borrowed from a driver buffer can be fed to it.
struct Core {
    index: usize,
    shared: Arc<Shared>,
    conns: Conns,
    topics: Topics,
    inbox: Receiver<Delivery>,
    events: Vec<Event>,
    /// Connections with output queued or a state change this turn.
    flush: Vec<ConnId>,
    /// Subscribers holding deliveries for at most the batching delay, by slot.
    corked: Corked,
    batch: Batching,
    /// Connections to hand to `Driver::close` before the next completion.
    to_close: Vec<ConnId>,
    /// Subscribe replies waiting for the cluster bridge to confirm their topic, and their
    /// bytes (at most `max_outbound_bytes`).
    held: Vec<Held>,
    held_bytes: usize,
    /// Publish instants of what was delivered and not yet written, each with the slots of
    /// `corked` its deliveries wait in (a bit each), for the latency histogram.
    published: Vec<(Instant, u16)>,
    /// Whether an entry of `published` may have no slot left to wait for.
    published_done: bool,
    latency: Histogram<u64>,
    /// Memory for partial WebSocket messages, shared by this reactor's connections.
    inbound: Budget,
    /// permessage-deflate: one decompressor and one compressor for all connections, each
    /// message on its own (no context takeover); allocated at their first use.
    inflater: Inflater,
    deflater: Deflater,
    /// The transport's working space: TLS plaintext received, frames gathered into a record.
    scratch: Vec<u8>,
    /// TLS handshake steps taken this turn, against `tls_handshakes_per_turn`.
    handshakes: usize,
    /// TLS handshakes whose bytes wait for the next turn's budget, oldest first.
    deferred: Vec<ConnId>,
    drain_deadline: Option<Instant>,
    tick: Duration,
    next_sweep: Instant,
    now: Instant,
    /// When the reactor started: the origin of its connections' rate buckets.
    epoch: Instant,
    /// The wall-clock time at `epoch` (since the Unix epoch), for token expiry. Taken
    /// again from `wall` at each sweep, so that a step of the system clock (NTP setting
    /// one that was wrong at boot) or time the monotonic clock did not count (a suspend)
    /// reaches the tokens within a tick, not never.
    unix_epoch: Duration,
    /// Where the wall clock is read (a clock the test moves in tests).
    wall: fn() -> Duration,
    /// Timer sweeps so far: which shard of the shared limit tables to sweep next.
    sweeps: usize,
    /// Whether a per-connection or per-IP limit is configured: then `limited` holds each
    /// connection's buckets, indexed like the connections; otherwise it stays empty.
    limits_on: bool,
    limited: Vec<Limited>,
}

impl<D: Driver> Reactor<D> {
    pub fn new(index: usize, driver: D, shared: Arc<Shared>, inbox: Receiver<Delivery>) -> Self {
        let clocks = Clocks {
            now: Instant::now,
            cpu: thread_cpu,
            wall: wall_clock,
        };
        Self::with_clocks(index, driver, shared, inbox, clocks)
    }

    /// With the clocks the loop reads the time, its thread's CPU time and the wall clock
    /// from.
    fn with_clocks(
        index: usize,
        driver: D,
        shared: Arc<Shared>,
        inbox: Receiver<Delivery>,
        clocks: Clocks,
    ) -> Self {
        let Clocks {
            now: clock,
            cpu,
            wall,
        } = clocks;
        let config = &shared.config;
        let shortest = [
            config.limits.handshake_timeout,
            config.limits.echo.close_timeout,
            config.limits.echo.pong_timeout,
        ]
        .into_iter()
        .chain(config.limits.echo.idle_timeout)
        .min()
        .expect("non-empty");
        let tick = (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let inbound = Budget::new(config.limits.max_buffered_bytes / config.net.threads as u64);
        let deflater = Deflater::new(config.deflate.level, config.deflate.min_size);
        let rate = &config.rate;
        let limits_on = rate.messages.is_some()
            || rate.bytes.is_some()
            || rate.subscribe_ops.is_some()
            || rate.connects.is_some()
            || rate.max_connections_per_ip > 0;
        let now = clock();
        let batch = Batching::new(config.pubsub.max_batch_delay, now, cpu);
        let core = Core {
            index,
            shared,
            conns: Conns::default(),
            topics: Topics::default(),
            inbox,
            events: Vec::new(),
            flush: Vec::new(),
            corked: Corked::new(now),
            batch,
            to_close: Vec::new(),
            held: Vec::new(),
            held_bytes: 0,
            published: Vec::new(),
            published_done: false,
            latency: metrics::new_histogram(),
            inbound,
            inflater: Inflater::default(),
            deflater,
            scratch: Vec::new(),
            handshakes: 0,
            deferred: Vec::new(),
            drain_deadline: None,
            tick,
            next_sweep: now + tick,
            now,
            epoch: now,
            unix_epoch: wall(),
            wall,
            sweeps: 0,
            limits_on,
            limited: Vec::new(),
        };
        Self {
            driver,
            core,
            clock,
        }
    }

    /// Runs until drained.
    pub fn run(mut self) -> io::Result<()> {
        tracing::debug!(
            reactor = self.core.index,
            driver = self.driver.name(),
            "reactor started"
        );
        // A drain requested before this thread started is seen on the first turn.
        self.core.shared.waker(self.core.index).wake();
        loop {
            let timeout = self
                .core
                .wake_at()
                .saturating_duration_since((self.clock)());
            self.driver.wait(Some(timeout))?;
            if self.turn() {
                break;
            }
        }
        self.finish();
        Ok(())
    }

    /// One turn after `wait`: handles the completions, the inbox, timers, then flushes.
    /// Returns true once drained.
    fn turn(&mut self) -> bool {
        self.core.now = (self.clock)();
        self.core.resume_handshakes();
        self.close_pending();
        while let Some(completion) = self.driver.next() {
            self.handle(completion);
            self.close_pending();
        }
        self.core.drain_inbox();
        if self.core.now >= self.core.next_sweep {
            self.core.sweep();
            self.core.sweep_tables();
            self.driver.release_idle_memory(self.core.now);
            self.core.next_sweep = self.core.now + self.core.tick;
        }
        self.core.uncork();
        self.flush();
        self.close_pending();
        let end = (self.clock)();
        self.core.record_latency(end);
        if let Some(delay) = self.core.batch.update(self.core.now, end) {
            let gauge = &self.core.metrics().batch_delay_us;
            gauge.store(
                delay.as_micros() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        match self.core.drain_deadline {
            Some(deadline) => self.core.conns.is_empty() || self.core.now >= deadline,
            None => false,
        }
    }

    fn handle(&mut self, completion: Completion) {
        let core = &mut self.core;
        match completion {
            Completion::Accepted {
                conn,
                peer,
                listener,
            } => {
                if core.drain_deadline.is_some() {
                    self.driver.close(conn);
                } else {
                    tracing::trace!(%peer, "accepted");
                    core.accept(conn, peer.ip(), listener);
                }
            }
            Completion::Received { conn, buf, len } => {
                let wire = &mut self.driver.buf(buf)[..len];
                ReactorMetrics::add(&core.metrics().bytes_in, len as u64);
                core.on_wire(conn, wire);
                self.driver.release(buf);
            }
            Completion::Eof(conn) => core.on_eof(conn),
            Completion::Sent { conn, bytes } => core.on_sent(conn, bytes),
            Completion::Failed { conn, error } => {
                tracing::trace!(reactor = core.index, "connection failed: {error}");
                core.close_now(conn);
            }
            Completion::Released(conn) => core.remove(conn),
            Completion::Woken => {
                if core.shared.is_draining() && core.drain_deadline.is_none() {
                    self.driver.stop_accepting();
                    core.start_drain();
                }
            }
        }
    }

    /// Hands the connections the core gave up on to the driver.
    fn close_pending(&mut self) {
        for id in self.core.to_close.drain(..) {
            self.driver.close(id);
        }
    }

    /// Sends each scheduled connection's queued output in one call, applies backpressure,
    /// and finishes closes.
    fn flush(&mut self) {
        let cap = self.core.shared.config.limits.max_outbound_bytes;
        let mut writes = 0;
        while let Some(id) = self.core.flush.pop() {
            self.core.conns.prefetch(&self.core.flush);
            let Some((conn, transport)) = self.core.conns.with_transport(id) else {
                continue;
            };
            conn.scheduled = Scheduled::No;
            if !conn.is_live() {
                continue;
            }
            if conn.send == Send::Idle && !transport.is_idle(&conn.out) {
                let fin_next = matches!(
                    conn.phase,
                    Phase::Closing {
                        fin_sent: false,
                        ..
                    }
                );
                if fin_next {
                    // The last frames of a clean close take TLS close_notify along: one
                    // write, not two.
                    transport.outgoing(&mut conn.out, &mut self.core.scratch);
                    if conn.out.is_empty() {
                        transport.close();
                    }
                }
                let wire = transport.outgoing(&mut conn.out, &mut self.core.scratch);
                if !wire.is_empty() {
                    self.driver.send(id, wire);
                    conn.send = Send::InFlight;
                    writes += 1;
                } else if transport.is_stuck(&conn.out) {
                    // Nothing queued can leave (TLS could not encrypt it): close now,
                    // rather than leave the client waiting for frames that never come.
                    tracing::debug!(reactor = self.core.index, "tls: cannot encrypt, closing");
                    ReactorMetrics::add(&self.core.metrics().tls_errors, 1);
                    self.core.close_now(id);
                    continue;
                }
            }
            // Backpressure on echo and on pipelined HTTP requests: stop reading while the
            // queue is over the cap, resume at half. (Fan-out deliveries are bounded by
            // the slow-consumer policy instead.)
            let pending = transport.pending(&conn.out);
            // Pipelined requests left unparsed while the answers were over the cap are
            // parsed when reading resumes.
            let mut reparse = false;
            let mut peer_closed = false;
            match conn.recv {
                Recv::On if pending > cap => {
                    conn.recv = Recv::Paused;
                    self.driver.set_receiving(id, false);
                }
                Recv::Paused if pending <= cap / 2 => {
                    conn.recv = Recv::On;
                    self.driver.set_receiving(id, true);
                    reparse =
                        matches!(&conn.phase, Phase::Request { head, .. } if !head.is_empty());
                }
                Recv::Pausing if pending <= cap / 2 => {
                    // Drained before the driver was ever told: parse them now.
                    conn.recv = Recv::On;
                    reparse = matches!(conn.phase, Phase::Request { .. });
                }
                Recv::Pausing => {
                    conn.recv = Recv::Paused;
                    self.driver.set_receiving(id, false);
                }
                Recv::PausedEof if pending <= cap / 2 => {
                    // The socket is at its end: nothing to read, the requests are all here.
                    conn.recv = Recv::Eof;
                    reparse = matches!(conn.phase, Phase::Request { .. });
                    peer_closed = true;
                }
                Recv::Stopping => {
                    conn.recv = Recv::Stopped;
                    self.driver.set_receiving(id, false);
                }
                _ => {}
            }
            if let Phase::Closing { fin_sent, .. } = &mut conn.phase {
                if conn.send == Send::Idle && transport.is_idle(&conn.out) {
                    if !*fin_sent {
                        *fin_sent = true;
                        // A clean TLS close says close_notify before the FIN (unless it
                        // left with the last frames), also when the peer closed first:
                        // RFC 8446 §6.1 asks it of each side, and a client still reading
                        // would otherwise see a truncation.
                        if transport.close() {
                            let wire = transport.outgoing(&mut conn.out, &mut self.core.scratch);
                            self.driver.send(id, wire);
                            conn.send = Send::InFlight;
                            writes += 1;
                        }
                        if conn.recv != Recv::Eof {
                            self.driver.shutdown_write(id);
                        }
                    }
                    // The peer is gone too: close once our last bytes have left.
                    if conn.recv == Recv::Eof && conn.send == Send::Idle {
                        self.core.close_now(id);
                    }
                }
            }
            if reparse {
                self.core.on_request_bytes(id, &mut []);
                if peer_closed {
                    self.core.on_eof(id);
                }
            }
        }
        ReactorMetrics::add(&self.core.metrics().writes, writes);
    }

    /// After the drain: closes what is left and publishes the last latency samples.
    fn finish(&mut self) {
        let left = self.core.conns.len();
        for id in self.core.conns.ids() {
            self.core.close_now(id);
        }
        self.close_pending();
        self.core.fold_latency();
        tracing::debug!(reactor = self.core.index, left, "reactor drained");
    }
}

impl Core {
    fn metrics(&self) -> &ReactorMetrics {
        &self.shared.metrics[self.index]
    }

    /// `wsgate_buffered_bytes`: what partial messages hold of the budget now.
    fn show_buffered(&self) {
        self.metrics()
            .buffered_bytes
            .store(self.inbound.used(), std::sync::atomic::Ordering::Relaxed);
    }

    /// When the loop must wake up at the latest: the next sweep, the drain deadline or
    /// the end of a batching delay.
    fn wake_at(&self) -> Instant {
        if !self.deferred.is_empty() {
            return self.now;
        }
        [self.drain_deadline, self.corked.wake(), self.held_until()]
            .into_iter()
            .flatten()
            .fold(self.next_sweep, Instant::min)
    }

    /// Handshakes deferred by the last turn, up to this turn's budget (the rest wait on).
    fn resume_handshakes(&mut self) {
        self.handshakes = 0;
        let budget = self.shared.config.tls.handshakes_per_turn;
        let n = self.deferred.len().min(budget);
        for id in self.deferred.drain(..n).collect::<Vec<_>>() {
            self.on_wire(id, &mut []);
        }
    }

    /// Bytes from the driver: through the transport, then to the protocol.
    fn on_wire(&mut self, id: ConnId, wire: &mut [u8]) {
        let Some((conn, transport)) = self.conns.with_transport(id).filter(|(c, _)| c.is_live())
        else {
            return;
        };
        let handshaking = transport.is_handshaking();
        if handshaking && !matches!(conn.phase, Phase::Request { .. }) {
            // The peer left (EOF, timeout) before its handshake was taken: no work for it.
            return;
        }
        if handshaking {
            // A handshake step costs up to ~0.3 ms of CPU: past the turn's budget, the bytes
            // wait so that established connections are served first (as uWebSockets does).
            if self.handshakes >= self.shared.config.tls.handshakes_per_turn {
                match transport.defer(wire) {
                    Some(first) => {
                        if first {
                            self.deferred.push(id);
                        }
                    }
                    None => {
                        // More than a ClientHello before its turn came: not a handshake.
                        tracing::debug!(reactor = self.index, "tls: too much before the handshake");
                        ReactorMetrics::add(&self.metrics().tls_handshake_failures, 1);
                        let deadline = self.now + self.shared.config.limits.echo.close_timeout;
                        self.set_closing(id, deadline, true);
                    }
                }
                return;
            }
            self.handshakes += 1;
        }
        let mut scratch = mem::take(&mut self.scratch);
        scratch.clear();
        match transport.receive(wire, &mut scratch) {
            Ok(received) => {
                let handshaken = handshaking && !transport.is_handshaking();
                // Handshake records (or a key update) to send.
                let to_send = !transport.is_idle(&conn.out);
                if handshaken {
                    ReactorMetrics::add(&self.metrics().tls_handshakes, 1);
                }
                if to_send {
                    self.schedule(id);
                }
                if !received.plain.is_empty() {
                    self.on_bytes(id, received.plain);
                }
                if received.peer_closed {
                    self.on_eof(id);
                }
            }
            Err(e) => {
                tracing::debug!(reactor = self.index, "transport: {e}");
                let m = self.metrics();
                ReactorMetrics::add(
                    match e {
                        TransportError::PlainHttp => &m.tls_plain_http,
                        TransportError::NotTls(_) => &m.tls_not_tls,
                        TransportError::Handshake(_) => &m.tls_handshake_failures,
                        TransportError::Tls(_) => &m.tls_errors,
                    },
                    1,
                );
                // Whatever the transport queued (an alert, a 400) is written, then FIN.
                let deadline = self.now + self.shared.config.limits.echo.close_timeout;
                self.conns[id].out.clear();
                self.set_closing(id, deadline, false);
            }
        }
        if scratch.capacity() > 1 << 20 {
            scratch = Vec::new();
        }
        self.scratch = scratch;
    }

    fn on_bytes(&mut self, id: ConnId, bytes: &mut [u8]) {
        match self.conns[id].phase {
            Phase::Request { .. } => self.on_request_bytes(id, bytes),
            Phase::WebSocket { .. } => self.on_frame_bytes(id, bytes),
            // Lingering for the peer's FIN: whatever it still sends is dropped.
            Phase::Closing { .. } | Phase::Gone => {}
        }
    }

    fn on_frame_bytes(&mut self, id: ConnId, mut bytes: &mut [u8]) {
        let mut messages = 0;
        let mut over_rate = false;
        let mut events = mem::take(&mut self.events);
        while !bytes.is_empty() && !over_rate {
            let conn = &mut self.conns[id];
            let Phase::WebSocket { ws, .. } = &mut conn.phase else {
                break;
            };
            let route = conn.route;
            let limits = limits(&self.shared, route);
            let n = ws.handle_bytes(
                self.now,
                limits,
                &mut self.inbound,
                &mut self.inflater,
                bytes,
                &mut conn.out,
                &mut events,
            );
            bytes = &mut mem::take(&mut bytes)[n..];
            for event in events.drain(..) {
                match event {
                    Event::Message { opcode, data } => {
                        messages += 1;
                        match self.meter_message(id, route, data.len()) {
                            Verdict::Pass => {
                                app::on_message(route, &mut Ctx { core: self, id }, opcode, data)
                            }
                            Verdict::Refuse => {}
                            Verdict::Close => over_rate = true,
                        }
                    }
                    Event::PeerClosed(_) => {}
                    Event::Failed(ProtocolError::OverBudget) => {
                        tracing::debug!(reactor = self.index, "closing: over the budget");
                        ReactorMetrics::add(&self.metrics().over_budget_closes, 1);
                    }
                    Event::Failed(err) => {
                        tracing::debug!(reactor = self.index, "closing: {err}");
                        ReactorMetrics::add(&self.metrics().protocol_errors, 1);
                    }
                }
            }
        }
        self.events = events;
        ReactorMetrics::add(&self.metrics().messages_in, messages);
        self.show_buffered();
        let conn = &mut self.conns[id];
        if over_rate {
            // Past the rate limit: what the client still sends is left unread (reading and
            // dropping a flood would still cost this reactor a syscall and a copy per read).
            conn.recv = Recv::Stopping;
        }
        match &conn.phase {
            Phase::WebSocket { ws, .. } if ws.is_closed() || over_rate => self.begin_closing(id),
            _ if !conn.out.is_empty() => self.schedule(id),
            _ => {}
        }
    }

    /// The reactor's time in its connections' rate buckets.
    fn micros(&self) -> u32 {
        rate::micros(self.now, self.epoch)
    }

    /// Seconds since the Unix epoch by the reactor's clock (tokens' `exp` and `nbf`).
    fn unix_now(&self) -> u64 {
        (self.unix_epoch + self.now.saturating_duration_since(self.epoch)).as_secs()
    }

    /// Charges a message to a /ws connection's meter. Refused: answered `rate_limited`
    /// (without the request's id: the message is not parsed); past `max_rate_limited`
    /// refusals in a row, closed with 1008.
    fn meter_message(&mut self, id: ConnId, route: Route, len: usize) -> Verdict {
        if route != Route::PubSub {
            return Verdict::Pass;
        }
        let now_us = self.micros();
        let Some(limited) = self.limited.get_mut(id.index()) else {
            return Verdict::Pass;
        };
        let verdict = limited.meter.message(&self.shared.config.rate, now_us, len);
        let conn = &mut self.conns[id];
        let Phase::WebSocket { ws, .. } = &mut conn.phase else {
            return verdict;
        };
        let metrics = &self.shared.metrics[self.index];
        match verdict {
            Verdict::Pass => {}
            Verdict::Refuse => {
                ReactorMetrics::add(&metrics.messages_rate_limited, 1);
                let err = ControlError::new(
                    None,
                    ErrorCode::RateLimited,
                    "message rate limit exceeded; slow down",
                );
                ws.send_message(OpCode::Text, &control::error(&err), &mut conn.out);
            }
            Verdict::Close => {
                ReactorMetrics::add(&metrics.rate_limit_closes, 1);
                let limits = &self.shared.config.limits.pubsub;
                let reason = "rate limit exceeded";
                ws.close(self.now, limits, CloseCode::POLICY, reason, &mut conn.out);
            }
        }
        verdict
    }

    /// Publish-to-write latency of the publishes whose last frames were just handed to the
    /// driver (none of them waits in a slot any more).
    fn record_latency(&mut self, now: Instant) {
        if !mem::take(&mut self.published_done) {
            return;
        }
        let latency = &mut self.latency;
        self.published.retain(|&(t, waits)| {
            if waits == 0 {
                let us = now.saturating_duration_since(t).as_micros().max(1);
                let _ = latency.record(us as u64);
            }
            waits != 0
        });
    }

    /// Folds this reactor's latency samples into the shared histogram for `/metrics`.
    fn fold_latency(&mut self) {
        if self.latency.is_empty() {
            return;
        }
        if let Ok(mut shared) = self.metrics().latency_us.lock() {
            let _ = shared.add(&self.latency);
        }
        self.latency.reset();
    }
}

/// Where a reactor reads the time: monotonic, its thread's CPU time, and the wall clock
/// (since the Unix epoch).
struct Clocks {
    now: fn() -> Instant,
    cpu: fn() -> Duration,
    wall: fn() -> Duration,
}

/// Time since the Unix epoch by the system clock (0 before it).
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The reactor thread's CPU time.
fn thread_cpu() -> Duration {
    Duration::from_nanos(crate::sys::thread_cpu_ns())
}

/// The protocol limits of a route: /ws messages are bounded by the publish size.
fn limits(shared: &Shared, route: Route) -> &wsgate_proto::Limits {
    if route == Route::PubSub {
        &shared.config.limits.pubsub
    } else {
        &shared.config.limits.echo
    }
}

/// An application's view of the connection it runs on.
struct Ctx<'a> {
    core: &'a mut Core,
    id: ConnId,
}

impl Ctx<'_> {
    /// Charges a subscribe or unsubscribe op to the connection's meter.
    fn meter_op(&mut self) -> Result<(), SubscribeError> {
        let now_us = self.core.micros();
        let Some(limited) = self.core.limited.get_mut(self.id.index()) else {
            return Ok(());
        };
        if limited.meter.op(&self.core.shared.config.rate, now_us) {
            return Ok(());
        }
        let metrics = &self.core.shared.metrics[self.core.index];
        ReactorMetrics::add(&metrics.ops_rate_limited, 1);
        Err(SubscribeError::RateLimited)
    }
}

impl Session for Ctx<'_> {
    fn shared(&self) -> &Shared {
        &self.core.shared
    }

    fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let conn = &mut self.core.conns[self.id];
        if let Phase::WebSocket { ws, .. } = &mut conn.phase {
            ws.send_compressible(opcode, payload, &mut self.core.deflater, &mut conn.out);
        }
    }

    fn subscribe(&mut self, topic: &str) -> Result<(), SubscribeError> {
        self.meter_op()?;
        self.core.subscribe(self.id, topic)
    }

    fn unsubscribe(&mut self, topic: &str) -> Result<(), SubscribeError> {
        self.meter_op()?;
        self.core.unsubscribe(self.id, topic);
        Ok(())
    }

    fn send_when_subscribed(&mut self, topic: &str, reply: Vec<u8>) {
        if self
            .core
            .shared
            .fanout
            .confirmed_or_wait(topic, self.core.index)
        {
            self.send(OpCode::Text, &reply);
        } else if let Err(reply) = self.core.hold(self.id, topic, reply) {
            self.send(OpCode::Text, &reply);
        }
    }

    fn publish(&mut self, topic: &str, data: &[u8]) {
        self.core.publish(topic, data);
    }

    fn permissions(&self) -> Option<&Permissions> {
        match &self.core.conns[self.id].phase {
            Phase::WebSocket { token, .. } => token.as_ref().map(|t| &*t.permissions),
            _ => None,
        }
    }

    fn refresh(&mut self, token: &str) -> Result<(), RefreshError> {
        let core = &mut *self.core;
        let now = core.unix_now();
        let verifier = core.shared.config.auth.verifier.as_ref();
        let Phase::WebSocket {
            subs, token: held, ..
        } = &mut core.conns[self.id].phase
        else {
            return Err(RefreshError::NoToken);
        };
        let (Some(verifier), Some(held)) = (verifier, held.as_mut().filter(|t| t.expires != 0))
        else {
            return Err(RefreshError::NoToken);
        };
        if held.expired(now) {
            // Closed at the next sweep.
            return Err(RefreshError::Invalid(crate::auth::AuthError::Expired));
        }
        let claims = verifier.verify(token, now).map_err(RefreshError::Invalid)?;
        if claims.subject != held.subject {
            return Err(RefreshError::Subject);
        }
        let dropped: Vec<String> = subs
            .iter()
            .filter_map(|&t| core.topics.name(t))
            .filter(|name| !claims.permissions.may_subscribe(name))
            .map(str::to_owned)
            .collect();
        *held = conn::Token::of(claims);
        for topic in dropped {
            core.unsubscribe(self.id, &topic);
        }
        ReactorMetrics::add(&core.shared.metrics[core.index].token_refreshes, 1);
        Ok(())
    }

    fn draining(&self) -> bool {
        self.core.drain_deadline.is_some()
    }

    fn now(&self) -> Instant {
        self.core.now
    }

    fn unix_now(&self) -> u64 {
        self.core.unix_now()
    }

    fn metrics(&self) -> &ReactorMetrics {
        self.core.metrics()
    }
}
