//! The per-core loop: owns this core's connections and drives the protocol core, the I/O
//! driver and (for pub/sub) the fan-out inbox.
//!
//! One turn: wait for completions; feed received bytes to each connection's state
//! machine (HTTP request, then WebSocket); queue what it answers; run timers when due;
//! then flush every connection with queued output in one vectored write (corking).

use std::io;
use std::mem;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::driver::{Completion, ConnId, Driver, SendStatus};
use crate::http::{self, Route};
use crate::metrics::ReactorMetrics;
use crate::proto::handshake::{self, HttpError, Request, UpgradePolicy};
use crate::proto::{CloseCode, Connection, Event, OutQueue};
use crate::server::Shared;

/// Reads per readable socket per turn before others get a go.
const READS_PER_TURN: usize = 16;
/// Largest request body accepted (plain HTTP).
pub const MAX_BODY: usize = 1 << 20;

/// One core's event loop.
pub struct Reactor<D: Driver> {
    driver: D,
    core: Core<D::Io>,
}

/// Everything but the driver, so that bytes borrowed from a driver buffer can be fed to it.
struct Core<Io> {
    index: usize,
    shared: Arc<Shared>,
    conns: Slab<Conn<Io>>,
    events: Vec<Event>,
    /// Connections with output queued or a state change this turn.
    flush: Vec<ConnId>,
    /// Connections to read again next turn (unread bytes remain, or resumed).
    read_again: Vec<ConnId>,
    drain_deadline: Option<Instant>,
    now: Instant,
}

struct Conn<Io> {
    io: Io,
    out: OutQueue,
    phase: Phase,
    /// Already in `Core::flush`.
    in_flush: bool,
    /// A write came up short (epoll) or a send is in flight (io_uring).
    blocked: bool,
    /// Reading stopped: the outbound queue is over the cap (backpressure).
    paused: bool,
    /// Readable while paused.
    read_pending: bool,
    /// Accepted over `max_connections`: the request gets 503.
    over_limit: bool,
    /// The peer sent FIN.
    eof: bool,
}

enum Phase {
    /// Reading an HTTP request head (and body); `head` holds a split one.
    Request {
        head: Vec<u8>,
        deadline: Instant,
    },
    WebSocket {
        ws: Connection,
        route: Route,
    },
    /// Flushing the last bytes, then FIN, then waiting for the peer's FIN.
    Closing {
        deadline: Instant,
        fin_sent: bool,
    },
    /// Closed, with driver operations still in flight.
    Released,
}

/// What to do after answering a request.
enum Next {
    Upgraded,
    KeepAlive,
    Close,
}

impl<D: Driver> Reactor<D> {
    pub fn new(index: usize, driver: D, shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        let core = Core {
            index,
            shared,
            conns: Slab::new(),
            events: Vec::new(),
            flush: Vec::new(),
            read_again: Vec::new(),
            drain_deadline: None,
            now,
        };
        Self { driver, core }
    }

    /// Runs until drained.
    pub fn run(mut self) -> io::Result<()> {
        let config = &self.core.shared.config;
        let shortest = [
            config.handshake_timeout,
            config.limits.close_timeout,
            config.limits.pong_timeout,
        ]
        .into_iter()
        .chain(config.limits.idle_timeout)
        .min()
        .expect("non-empty");
        let tick = (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let mut next_sweep = Instant::now() + tick;
        let mut completions = Vec::with_capacity(1024);
        tracing::debug!(
            reactor = self.core.index,
            driver = self.driver.name(),
            "reactor started"
        );
        // A drain requested before this thread started is seen on the first turn.
        self.core.shared.waker(self.core.index).wake();
        loop {
            let mut wake_at = next_sweep;
            if let Some(deadline) = self.core.drain_deadline {
                wake_at = wake_at.min(deadline);
            }
            let timeout = if self.core.read_again.is_empty() {
                wake_at.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            self.driver.wait(Some(timeout), &mut completions)?;
            self.core.now = Instant::now();
            for completion in completions.drain(..) {
                self.handle(completion);
            }
            for id in mem::take(&mut self.core.read_again) {
                self.read(id, false);
            }
            if self.core.now >= next_sweep {
                self.core.sweep();
                next_sweep = self.core.now + tick;
            }
            self.flush();
            if let Some(deadline) = self.core.drain_deadline {
                if self.core.conns.is_empty() || self.core.now >= deadline {
                    break;
                }
            }
        }
        let left = self.core.conns.len();
        let ids: Vec<ConnId> = self
            .core
            .conns
            .iter()
            .map(|(key, _)| ConnId(key as u32))
            .collect();
        for id in ids {
            self.close_now(id);
        }
        tracing::debug!(reactor = self.core.index, left, "reactor drained");
        Ok(())
    }

    fn handle(&mut self, completion: Completion<D::Io>) {
        match completion {
            Completion::Accepted { io, peer } => self.accept(io, peer),
            Completion::Readable { conn, closed } => self.read(conn, closed),
            Completion::Received { conn, result } => match result {
                Ok(Some((buf, len))) => {
                    let Reactor { driver, core } = self;
                    core.on_bytes(conn, &mut driver.buf(buf)[..len]);
                    driver.release(buf);
                }
                Ok(None) => self.core.on_eof(conn),
                Err(_) => self.close_now(conn),
            },
            Completion::Writable(id) => self.core.unblock(id),
            Completion::Sent { conn, result } => match result {
                Ok(n) => {
                    if let Some(c) = self.core.conns.get_mut(conn.index()) {
                        c.out.advance(n);
                    }
                    self.core.unblock(conn);
                }
                Err(_) => self.close_now(conn),
            },
            Completion::Released(id) => {
                if self.core.conns.contains(id.index()) {
                    self.core.remove(id);
                }
            }
            Completion::Woken => {
                if self.core.shared.draining.load(Ordering::Acquire)
                    && self.core.drain_deadline.is_none()
                {
                    self.start_drain();
                }
            }
        }
    }

    fn accept(&mut self, mut io: D::Io, peer: std::net::SocketAddr) {
        if self.core.drain_deadline.is_some() {
            return;
        }
        let shared = &self.core.shared;
        let open = shared.open.fetch_add(1, Ordering::Relaxed);
        let entry = self.core.conns.vacant_entry();
        let id = ConnId(entry.key() as u32);
        if let Err(e) = self.driver.attach(id, &mut io) {
            tracing::debug!(%peer, "attach failed: {e}");
            shared.open.fetch_sub(1, Ordering::Relaxed);
            self.driver.close(id, &mut io);
            return;
        }
        let metrics = &shared.metrics[self.core.index];
        ReactorMetrics::add(&metrics.connections, 1);
        ReactorMetrics::add(&metrics.accepted, 1);
        entry.insert(Conn {
            io,
            out: OutQueue::default(),
            phase: Phase::Request {
                head: Vec::new(),
                deadline: self.core.now + shared.config.handshake_timeout,
            },
            in_flush: false,
            blocked: false,
            paused: false,
            read_pending: false,
            over_limit: open >= shared.config.max_connections,
            eof: false,
        });
    }

    /// Reads what a readable socket has (epoll): until a short read, which means the
    /// receive queue was empty (new bytes raise a new edge), or to EOF when `closed`.
    fn read(&mut self, id: ConnId, closed: bool) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.core.conns.get_mut(id.index()) else {
                return;
            };
            if conn.paused {
                conn.read_pending = true;
                return;
            }
            if matches!(conn.phase, Phase::Released) {
                return;
            }
            match self.driver.recv(&mut conn.io) {
                Ok(Some((buf, len))) => {
                    let Reactor { driver, core } = self;
                    let bytes = &mut driver.buf(buf)[..len];
                    let full = len == bytes.len() && len == crate::driver::epoll::READ_BUF;
                    core.on_bytes(id, bytes);
                    driver.release(buf);
                    if !full && !closed {
                        return;
                    }
                }
                Ok(None) => return self.core.on_eof(id),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close_now(id),
            }
        }
        // Bytes may remain and no new edge will come for them.
        self.core.read_again.push(id);
    }

    /// Writes each connection's queued frames in one call, and finishes closes.
    fn flush(&mut self) {
        let cap = self.core.shared.config.max_outbound_bytes;
        while let Some(id) = self.core.flush.pop() {
            let Some(conn) = self.core.conns.get_mut(id.index()) else {
                continue;
            };
            conn.in_flush = false;
            while !conn.blocked && !conn.out.is_empty() {
                match self.driver.send(id, &mut conn.io, &conn.out) {
                    Ok(SendStatus::Wrote(0)) => conn.blocked = true,
                    Ok(SendStatus::Wrote(n)) => conn.out.advance(n),
                    Ok(SendStatus::Submitted) => conn.blocked = true,
                    Err(_) => {
                        conn.out.clear();
                        conn.eof = true;
                        conn.phase = Phase::Closing {
                            deadline: self.core.now,
                            fin_sent: true,
                        };
                    }
                }
            }
            // Backpressure: stop reading while the queue is over the cap, resume at half.
            if !conn.paused && conn.out.len_bytes() > cap {
                conn.paused = true;
                self.driver.set_receiving(id, &mut conn.io, false);
            } else if conn.paused && conn.out.len_bytes() <= cap / 2 {
                conn.paused = false;
                self.driver.set_receiving(id, &mut conn.io, true);
                if mem::take(&mut conn.read_pending) {
                    self.core.read_again.push(id);
                }
            }
            if let Phase::Closing { fin_sent, .. } = &mut conn.phase {
                if conn.out.is_empty() {
                    if conn.eof {
                        self.close_now(id);
                    } else if !*fin_sent {
                        *fin_sent = true;
                        self.driver.shutdown_write(&mut conn.io);
                    }
                }
            }
        }
    }

    fn start_drain(&mut self) {
        let now = self.core.now;
        self.core.drain_deadline = Some(now + self.core.shared.config.drain_grace);
        self.driver.stop_accepting();
        let ids: Vec<usize> = self.core.conns.iter().map(|(key, _)| key).collect();
        for key in ids {
            let conn = &mut self.core.conns[key];
            match &mut conn.phase {
                // Idle keep-alive connections go now; a request under way finishes and is
                // answered 503 with `Connection: close` (its head timeout still applies).
                Phase::Request { head, .. } if head.is_empty() => {
                    self.close_now(ConnId(key as u32))
                }
                Phase::Request { .. } => {}
                Phase::WebSocket { ws, .. } => {
                    let limits = &self.core.shared.config.limits;
                    ws.close(
                        now,
                        limits,
                        CloseCode::GOING_AWAY,
                        "server shutting down",
                        &mut conn.out,
                    );
                    self.core.schedule(ConnId(key as u32));
                }
                Phase::Closing { .. } | Phase::Released => {}
            }
        }
    }

    fn close_now(&mut self, id: ConnId) {
        let Some(conn) = self.core.conns.get_mut(id.index()) else {
            return;
        };
        if matches!(conn.phase, Phase::Released) {
            return;
        }
        if self.driver.close(id, &mut conn.io) {
            self.core.remove(id);
        } else {
            conn.phase = Phase::Released;
        }
    }
}

impl<Io> Core<Io> {
    fn remove(&mut self, id: ConnId) {
        self.conns.remove(id.index());
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        ReactorMetrics::sub(&self.metrics().connections, 1);
    }

    fn metrics(&self) -> &ReactorMetrics {
        &self.shared.metrics[self.index]
    }

    fn schedule(&mut self, id: ConnId) {
        let conn = &mut self.conns[id.index()];
        if !conn.in_flush {
            conn.in_flush = true;
            self.flush.push(id);
        }
    }

    fn unblock(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id.index()) {
            conn.blocked = false;
            self.schedule(id);
        }
    }

    fn begin_closing(&mut self, id: ConnId) {
        let deadline = self.now + self.shared.config.limits.close_timeout;
        self.conns[id.index()].phase = Phase::Closing {
            deadline,
            fin_sent: false,
        };
        self.schedule(id);
    }

    fn on_eof(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.index()) else {
            return;
        };
        conn.eof = true;
        match conn.phase {
            // A half-closed client may still be owed its close reply or response.
            Phase::Closing { .. } => self.schedule(id),
            // Gone without a close handshake, or before finishing a request: nothing to send.
            _ => {
                conn.out.clear();
                conn.phase = Phase::Closing {
                    deadline: self.now,
                    fin_sent: true,
                };
                self.schedule(id);
            }
        }
    }

    fn on_bytes(&mut self, id: ConnId, bytes: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(id.index()) else {
            return;
        };
        match conn.phase {
            Phase::Request { .. } => self.on_request_bytes(id, bytes),
            Phase::WebSocket { .. } => self.on_frame_bytes(id, bytes),
            // Lingering for the peer's FIN: whatever it still sends is dropped.
            Phase::Closing { .. } | Phase::Released => {}
        }
    }

    fn on_frame_bytes(&mut self, id: ConnId, mut bytes: &mut [u8]) {
        let conn = &mut self.conns[id.index()];
        let Phase::WebSocket { ws, route } = &mut conn.phase else {
            unreachable!("websocket phase")
        };
        let limits = &self.shared.config.limits;
        while !bytes.is_empty() {
            let n = ws.handle_bytes(self.now, limits, bytes, &mut conn.out, &mut self.events);
            bytes = &mut mem::take(&mut bytes)[n..];
            for event in self.events.drain(..) {
                match event {
                    Event::Message { opcode, data } => match route {
                        Route::Echo => {
                            ws.send_message(opcode, &data, &mut conn.out);
                        }
                        Route::Health | Route::NotFound => unreachable!("not a websocket route"),
                    },
                    Event::PeerClosed(_) => {}
                    Event::Failed(err) => {
                        tracing::debug!(reactor = self.index, "closing: {err}");
                        ReactorMetrics::add(&self.shared.metrics[self.index].protocol_errors, 1);
                    }
                }
            }
        }
        if ws.is_closed() {
            self.begin_closing(id);
        } else if !conn.out.is_empty() {
            self.schedule(id);
        }
    }

    fn on_request_bytes(&mut self, id: ConnId, bytes: &mut [u8]) {
        let Phase::Request { head, .. } = &mut self.conns[id.index()].phase else {
            unreachable!("request phase")
        };
        // The common case parses straight from the read buffer; a split head is copied.
        let mut split = mem::take(head);
        let mut input: &mut [u8] = if split.is_empty() {
            bytes
        } else {
            split.extend_from_slice(bytes);
            &mut split
        };
        let max_head = self.shared.config.max_header_bytes;
        loop {
            let req = match handshake::parse_request(input, max_head) {
                Ok(Some(req)) => req,
                Ok(None) => return self.keep_partial(id, input),
                Err(err) => return self.reject(id, &err),
            };
            let body_len = req.content_length.unwrap_or(0);
            if body_len > MAX_BODY {
                let err = HttpError {
                    status: 413,
                    reason: "request body over the limit",
                    extra_header: None,
                };
                return self.reject(id, &err);
            }
            let total = req.head_len + body_len;
            if input.len() < total {
                return self.keep_partial(id, input);
            }
            let (this, rest) = mem::take(&mut input).split_at_mut(total);
            match self.dispatch(id, &req, &this[req.head_len..]) {
                // Bytes right behind the upgrade request are the client's first frames.
                Next::Upgraded => {
                    return if rest.is_empty() {
                        ()
                    } else {
                        self.on_frame_bytes(id, rest)
                    }
                }
                Next::Close => return self.begin_closing(id),
                Next::KeepAlive => {
                    let deadline = self.now + self.shared.config.handshake_timeout;
                    self.conns[id.index()].phase = Phase::Request {
                        head: Vec::new(),
                        deadline,
                    };
                    if rest.is_empty() {
                        return;
                    }
                    input = rest;
                }
            }
        }
    }

    fn keep_partial(&mut self, id: ConnId, input: &[u8]) {
        if let Phase::Request { head, .. } = &mut self.conns[id.index()].phase {
            head.clear();
            head.extend_from_slice(input);
        }
    }

    fn reject(&mut self, id: ConnId, err: &HttpError) {
        ReactorMetrics::add(&self.metrics().handshakes_failed, 1);
        self.conns[id.index()].out.push(err.response().into());
        self.begin_closing(id);
    }

    fn dispatch(&mut self, id: ConnId, req: &Request, _body: &[u8]) -> Next {
        let config = &self.shared.config;
        let route = Route::of(req, config);
        let draining = self.drain_deadline.is_some();
        let conn = &mut self.conns[id.index()];
        if conn.over_limit || (draining && route.is_websocket()) {
            let reason = if draining {
                "server shutting down"
            } else {
                "server at its connection limit"
            };
            let err = HttpError {
                status: 503,
                reason,
                extra_header: Some(("Retry-After", "1")),
            };
            conn.out.push(err.response().into());
            return Next::Close;
        }
        if route.is_websocket() {
            let policy = UpgradePolicy {
                subprotocols: &config.subprotocols,
                allowed_origins: config.allowed_origins.as_deref(),
            };
            return match handshake::validate_upgrade(req, &policy) {
                Ok(upgrade) => {
                    ReactorMetrics::add(&self.shared.metrics[self.index].handshakes_ok, 1);
                    conn.out.push(upgrade.response().into());
                    conn.phase = Phase::WebSocket {
                        ws: Connection::new(self.now),
                        route,
                    };
                    self.schedule(id);
                    Next::Upgraded
                }
                Err(err) => {
                    ReactorMetrics::add(&self.shared.metrics[self.index].handshakes_failed, 1);
                    conn.out.push(err.response().into());
                    Next::Close
                }
            };
        }
        conn.out.push(http::respond(route, req, draining).into());
        self.schedule(id);
        if req.keep_alive && !draining {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Runs every connection's timers.
    fn sweep(&mut self) {
        let now = self.now;
        let limits = &self.shared.config.limits;
        let mut due = Vec::new();
        for (key, conn) in &mut self.conns {
            let id = ConnId(key as u32);
            match &mut conn.phase {
                Phase::Request { deadline, .. } | Phase::Closing { deadline, .. }
                    if now >= *deadline =>
                {
                    // Too slow to send a request, or to finish closing: drop it.
                    conn.out.clear();
                    conn.eof = true;
                    conn.phase = Phase::Closing {
                        deadline: now,
                        fin_sent: true,
                    };
                    due.push(id);
                }
                Phase::WebSocket { ws, .. } => {
                    if ws.poll_timeout(limits).is_some_and(|t| now >= t) {
                        ws.handle_timeout(now, limits, &mut conn.out);
                        if ws.is_closed() {
                            conn.phase = Phase::Closing {
                                deadline: now + limits.close_timeout,
                                fin_sent: false,
                            };
                        }
                        due.push(id);
                    }
                }
                _ => {}
            }
        }
        for id in due {
            self.schedule(id);
        }
    }
}
