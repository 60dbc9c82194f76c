//! The per-core loop: owns this core's connections and drives the protocol core, the I/O
//! driver and the fan-out inbox.
//!
//! One turn: wait for completions; feed received bytes to each connection's state
//! machine (HTTP request, then WebSocket); answer messages (echo, pub/sub ops); deliver
//! what other reactors published; run timers when due; then flush every connection with
//! queued output in one vectored write (corking: a subscriber that got ten deliveries
//! this turn gets them in one `writev`).

use std::io;
use std::mem;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use hdrhistogram::Histogram;
use slab::Slab;

use crate::broadcast::{self, Delivery, TopicId, Topics};
use crate::config::SlowConsumerPolicy;
use crate::control::{self, ControlError, ErrorCode, Op};
use crate::driver::{Completion, ConnId, Driver, SendStatus};
use crate::http::{self, Route};
use crate::metrics::{self, ReactorMetrics};
use crate::server::Shared;
use wsgate_proto::handshake::{self, HttpError, Request, UpgradePolicy};
use wsgate_proto::http1::ChunkedDecoder;
use wsgate_proto::{CloseCode, Connection, Event, OpCode, OutQueue};

/// Reads per readable socket per turn before others get a go.
const READS_PER_TURN: usize = 16;

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
    topics: Topics,
    inbox: Receiver<Delivery>,
    events: Vec<Event>,
    /// Connections with output queued or a state change this turn.
    flush: Vec<ConnId>,
    /// Connections to read again next turn (unread bytes remain, or resumed).
    read_again: Vec<ConnId>,
    /// Subscribers holding deliveries until `corked_until` (`write_delay`).
    corked: Vec<ConnId>,
    corked_until: Option<Instant>,
    /// Slow consumers that could not even take a close frame: closed after this turn.
    abort: Vec<ConnId>,
    /// Publish instants of what was delivered this turn, for the latency histogram.
    published: Vec<Instant>,
    latency: Histogram<u64>,
    drain_deadline: Option<Instant>,
    now: Instant,
}

struct Conn<Io> {
    io: Io,
    out: OutQueue,
    phase: Phase,
    /// Already in `Core::flush`.
    in_flush: bool,
    /// Already in `Core::corked`.
    corked: bool,
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
    /// Reading an HTTP request head (and body); `head` holds a split one, `chunked` a
    /// parsed head whose chunked body is still arriving.
    Request {
        head: Vec<u8>,
        chunked: Option<Box<ChunkedBody>>,
        deadline: Instant,
    },
    /// `subs` is empty except on /ws.
    WebSocket {
        ws: Connection,
        route: Route,
        subs: Subs,
    },
    /// Flushing the last bytes, then FIN, then waiting for the peer's FIN.
    Closing { deadline: Instant, fin_sent: bool },
    /// Closed, with driver operations still in flight.
    Released,
}

/// A request whose chunked body is still arriving: the head, the decoder, the payload so far.
struct ChunkedBody {
    req: Request,
    decoder: ChunkedDecoder,
    data: Vec<u8>,
}

/// A connection's topics: up to four inline, so most subscribers allocate nothing.
type Subs = smallvec::SmallVec<[TopicId; 4]>;

/// What to do after answering a request.
enum Next {
    Upgraded,
    KeepAlive,
    Close,
}

impl<D: Driver> Reactor<D> {
    pub fn new(index: usize, driver: D, shared: Arc<Shared>, inbox: Receiver<Delivery>) -> Self {
        let core = Core {
            index,
            shared,
            conns: Slab::new(),
            topics: Topics::default(),
            inbox,
            events: Vec::new(),
            flush: Vec::new(),
            read_again: Vec::new(),
            corked: Vec::new(),
            corked_until: None,
            abort: Vec::new(),
            published: Vec::new(),
            latency: metrics::new_histogram(),
            drain_deadline: None,
            now: Instant::now(),
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
            if let Some(until) = self.core.corked_until {
                wake_at = wake_at.min(until);
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
            self.core.drain_inbox();
            if self.core.now >= next_sweep {
                self.core.sweep();
                next_sweep = self.core.now + tick;
            }
            for id in mem::take(&mut self.core.abort) {
                self.close_now(id);
            }
            self.core.uncork();
            self.flush();
            self.core.record_latency();
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
        self.core.fold_latency();
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
                        // The queue may have been cleared meanwhile (EOF, timeout).
                        c.out.advance(n.min(c.out.len_bytes()));
                        ReactorMetrics::add(
                            &self.core.shared.metrics[self.core.index].bytes_out,
                            n as u64,
                        );
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
                chunked: None,
                deadline: self.core.now + shared.config.handshake_timeout,
            },
            in_flush: false,
            corked: false,
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
        let mut bytes_in = 0;
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.core.conns.get_mut(id.index()) else {
                break;
            };
            if conn.paused {
                conn.read_pending = true;
                break;
            }
            if matches!(conn.phase, Phase::Released) {
                break;
            }
            match self.driver.recv(&mut conn.io) {
                Ok(Some((buf, len))) => {
                    let Reactor { driver, core } = self;
                    let lent = driver.buf(buf);
                    // A read that filled the lent buffer may have left bytes behind.
                    let full = len == lent.len();
                    let bytes = &mut lent[..len];
                    bytes_in += len;
                    core.on_bytes(id, bytes);
                    driver.release(buf);
                    if full || closed {
                        continue;
                    }
                }
                Ok(None) => self.core.on_eof(id),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.close_now(id),
            }
            ReactorMetrics::add(&self.core.metrics().bytes_in, bytes_in as u64);
            return;
        }
        ReactorMetrics::add(&self.core.metrics().bytes_in, bytes_in as u64);
        // Bytes may remain and no new edge will come for them.
        if self.core.conns.contains(id.index()) {
            self.core.read_again.push(id);
        }
    }

    /// Writes each connection's queued frames in one call, and finishes closes.
    fn flush(&mut self) {
        let cap = self.core.shared.config.max_outbound_bytes;
        let mut bytes_out = 0;
        while let Some(id) = self.core.flush.pop() {
            let Some(conn) = self.core.conns.get_mut(id.index()) else {
                continue;
            };
            conn.in_flush = false;
            let mut failed = false;
            while !conn.blocked && !conn.out.is_empty() {
                match self.driver.send(id, &mut conn.io, &conn.out) {
                    Ok(SendStatus::Wrote(0)) => conn.blocked = true,
                    Ok(SendStatus::Wrote(n)) => {
                        conn.out.advance(n);
                        bytes_out += n;
                    }
                    Ok(SendStatus::Submitted) => conn.blocked = true,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                self.close_now(id);
                continue;
            }
            // Backpressure on echo: stop reading while the queue is over the cap, resume at
            // half. (Fan-out deliveries are bounded by the slow-consumer policy instead.)
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
        ReactorMetrics::add(&self.core.metrics().bytes_out, bytes_out as u64);
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
                Phase::Request {
                    head,
                    chunked: None,
                    ..
                } if head.is_empty() => self.close_now(ConnId(key as u32)),
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
            self.core.leave_topics(id);
            self.core.conns[id.index()].phase = Phase::Released;
        }
    }
}

impl<Io> Core<Io> {
    fn metrics(&self) -> &ReactorMetrics {
        &self.shared.metrics[self.index]
    }

    fn remove(&mut self, id: ConnId) {
        self.leave_topics(id);
        self.conns.remove(id.index());
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        ReactorMetrics::sub(&self.metrics().connections, 1);
    }

    fn schedule(&mut self, id: ConnId) {
        let conn = &mut self.conns[id.index()];
        if !conn.in_flush {
            conn.in_flush = true;
            self.flush.push(id);
        }
    }

    /// Releases corked deliveries once their delay is up.
    fn uncork(&mut self) {
        if self.corked_until.is_some_and(|until| self.now >= until) {
            self.corked_until = None;
            for id in mem::take(&mut self.corked) {
                if let Some(conn) = self.conns.get_mut(id.index()) {
                    conn.corked = false;
                    self.schedule(id);
                }
            }
        }
    }

    fn unblock(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id.index()) {
            conn.blocked = false;
            self.schedule(id);
        }
    }

    /// Unsubscribes a /ws connection from all its topics.
    fn leave_topics(&mut self, id: ConnId) {
        if let Some(Conn {
            phase: Phase::WebSocket { subs, .. },
            ..
        }) = self.conns.get_mut(id.index())
        {
            for topic in mem::take(subs) {
                self.topics
                    .unsubscribe(&self.shared.fanout, self.index, topic, id);
            }
        }
    }

    /// Moves to the closing phase: flush, FIN, wait for the peer's FIN until `deadline`.
    /// With `abandon`, the queue is dropped and the socket closed at the next flush.
    fn set_closing(&mut self, id: ConnId, deadline: Instant, abandon: bool) {
        self.leave_topics(id);
        let conn = &mut self.conns[id.index()];
        if abandon {
            conn.out.clear();
            conn.eof = true;
        }
        conn.phase = Phase::Closing {
            deadline,
            fin_sent: abandon,
        };
        self.schedule(id);
    }

    fn begin_closing(&mut self, id: ConnId) {
        let deadline = self.now + self.shared.config.limits.close_timeout;
        self.set_closing(id, deadline, false);
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
            _ => self.set_closing(id, self.now, true),
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
        let mut messages = 0;
        let mut events = mem::take(&mut self.events);
        while !bytes.is_empty() {
            let conn = &mut self.conns[id.index()];
            let Phase::WebSocket { ws, route, .. } = &mut conn.phase else {
                break;
            };
            let route = *route;
            let limits = if route == Route::PubSub {
                &self.shared.config.pubsub_limits
            } else {
                &self.shared.config.limits
            };
            let n = ws.handle_bytes(self.now, limits, bytes, &mut conn.out, &mut events);
            bytes = &mut mem::take(&mut bytes)[n..];
            for event in events.drain(..) {
                match event {
                    Event::Message { opcode, data } => {
                        messages += 1;
                        match route {
                            Route::Echo => self.echo(id, opcode, &data),
                            _ => self.on_control(id, opcode, data),
                        }
                    }
                    Event::PeerClosed(_) => {}
                    Event::Failed(err) => {
                        tracing::debug!(reactor = self.index, "closing: {err}");
                        ReactorMetrics::add(&self.metrics().protocol_errors, 1);
                    }
                }
            }
        }
        self.events = events;
        ReactorMetrics::add(&self.metrics().messages_in, messages);
        let conn = &mut self.conns[id.index()];
        match &conn.phase {
            Phase::WebSocket { ws, .. } if ws.is_closed() => self.begin_closing(id),
            _ if !conn.out.is_empty() => self.schedule(id),
            _ => {}
        }
    }

    fn echo(&mut self, id: ConnId, opcode: OpCode, data: &[u8]) {
        let conn = &mut self.conns[id.index()];
        if let Phase::WebSocket { ws, .. } = &mut conn.phase {
            ws.send_message(opcode, data, &mut conn.out);
        }
    }

    /// A message on /ws: one control op, answered on the same connection.
    fn on_control(&mut self, id: ConnId, opcode: OpCode, data: Vec<u8>) {
        let reply = if opcode == OpCode::Binary {
            Err(ControlError::new(
                None,
                ErrorCode::BadRequest,
                "binary messages are not supported on /ws",
            ))
        } else {
            control::parse(&data).and_then(|c| self.apply(id, c))
        };
        match reply {
            Ok(()) => {}
            Err(err) => self.reply(id, control::error(&err)),
        }
    }

    fn reply(&mut self, id: ConnId, frame: Bytes) {
        let conn = &mut self.conns[id.index()];
        if let Phase::WebSocket { ws, .. } = &mut conn.phase {
            ws.send_frame(frame, &mut conn.out);
        }
    }

    /// Carries out a control op. Ops with an `id` are acknowledged with `ok`, a publish
    /// before its deliveries, so a publisher subscribed to the topic sees its `ok` first.
    fn apply(&mut self, id: ConnId, c: control::Control) -> Result<(), ControlError> {
        let config = &self.shared.config;
        let invalid = |id: &Option<String>, message| {
            ControlError::new(id.clone(), ErrorCode::InvalidTopic, message)
        };
        match c.op {
            Op::Subscribe(topic) => {
                broadcast::check_topic(&topic, config.max_topic_len)
                    .map_err(|m| invalid(&c.id, m))?;
                self.subscribe(id, &topic).map_err(|message| {
                    ControlError::new(c.id.clone(), ErrorCode::TooManySubscriptions, message)
                })?;
            }
            Op::Unsubscribe(topic) => {
                broadcast::check_topic(&topic, config.max_topic_len)
                    .map_err(|m| invalid(&c.id, m))?;
                self.unsubscribe(id, &topic);
            }
            Op::Publish { topic, data } => {
                broadcast::check_topic(&topic, config.max_topic_len)
                    .map_err(|m| invalid(&c.id, m))?;
                if !broadcast::topic_allowed(&topic, &config.client_publish) {
                    return Err(ControlError::new(
                        c.id,
                        ErrorCode::Forbidden,
                        "publishing to this topic is not allowed",
                    ));
                }
                if data.len() > config.max_publish_bytes {
                    return Err(ControlError::new(
                        c.id,
                        ErrorCode::TooLarge,
                        "data is over the publish size limit",
                    ));
                }
                if let Some(request) = &c.id {
                    self.reply(id, control::ok(Some(request)));
                }
                self.publish(&topic, data);
                return Ok(());
            }
        }
        if let Some(request) = &c.id {
            self.reply(id, control::ok(Some(request)));
        }
        Ok(())
    }

    fn subscribe(&mut self, id: ConnId, topic: &str) -> Result<(), &'static str> {
        let max = self.shared.config.max_subscriptions;
        let Phase::WebSocket { subs, .. } = &mut self.conns[id.index()].phase else {
            return Ok(());
        };
        if self.topics.find(topic).is_some_and(|t| subs.contains(&t)) {
            return Ok(());
        }
        if subs.len() >= max {
            return Err("subscription limit reached");
        }
        let (topic, _) = self
            .topics
            .subscribe(&self.shared.fanout, self.index, topic, id);
        subs.push(topic);
        Ok(())
    }

    fn unsubscribe(&mut self, id: ConnId, topic: &str) {
        let Some(topic) = self.topics.find(topic) else {
            return;
        };
        let Phase::WebSocket { subs, .. } = &mut self.conns[id.index()].phase else {
            return;
        };
        if let Some(at) = subs.iter().position(|&t| t == topic) {
            subs.swap_remove(at);
            self.topics
                .unsubscribe(&self.shared.fanout, self.index, topic, id);
        }
    }

    /// Encodes a publish once and hands it to every interested reactor, this one included.
    fn publish(&mut self, topic: &str, data: &[u8]) {
        let frame = broadcast::encode_delivery(topic, data);
        let name: Arc<str> = Arc::from(topic);
        ReactorMetrics::add(&self.metrics().publishes, 1);
        if self
            .shared
            .fanout
            .publish(self.index, &name, &frame, self.now)
        {
            self.deliver(topic, &frame, self.now);
        }
    }

    /// Takes what other reactors published. Each frame is copied once into this core's
    /// memory, so the many reference counts taken here never bounce between cores.
    fn drain_inbox(&mut self) {
        self.shared.fanout.rearm(self.index);
        while let Ok(d) = self.inbox.try_recv() {
            let frame = Bytes::copy_from_slice(&d.frame);
            self.deliver(&d.topic, &frame, d.published);
        }
    }

    /// Queues a frame to every local subscriber of `topic`, applying the slow-consumer
    /// policy to those whose queue is over the cap. No copy and no allocation per
    /// subscriber: each gets a reference.
    fn deliver(&mut self, topic: &str, frame: &Bytes, published: Instant) {
        let config = &self.shared.config;
        let cap = config.max_outbound_bytes;
        let (mut delivered, mut dropped, mut closed) = (0, 0, 0);
        for id in self.topics.subscribers(topic) {
            let conn = &mut self.conns[id.index()];
            let Phase::WebSocket { ws, .. } = &mut conn.phase else {
                continue;
            };
            if conn.out.len_bytes() + frame.len() <= cap {
                if ws.send_frame(frame.clone(), &mut conn.out) {
                    delivered += 1;
                }
            } else {
                match config.slow_consumer {
                    SlowConsumerPolicy::Drop => dropped += 1,
                    SlowConsumerPolicy::Close if ws.is_open() => {
                        closed += 1;
                        if conn.out.len_bytes() > 2 * cap {
                            // Not even room for a close frame: abort.
                            self.abort.push(id);
                            continue;
                        }
                        ws.close(
                            self.now,
                            &config.limits,
                            CloseCode::POLICY,
                            "slow consumer",
                            &mut conn.out,
                        );
                    }
                    SlowConsumerPolicy::Close => {}
                }
            }
            if conn.in_flush || conn.corked {
                continue;
            }
            if config.write_delay.is_zero() {
                conn.in_flush = true;
                self.flush.push(id);
            } else {
                conn.corked = true;
                self.corked.push(id);
                self.corked_until
                    .get_or_insert(self.now + config.write_delay);
            }
        }
        let m = &self.shared.metrics[self.index];
        ReactorMetrics::add(&m.deliveries, delivered);
        ReactorMetrics::add(&m.dropped, dropped);
        ReactorMetrics::add(&m.slow_consumer_closes, closed);
        if delivered > 0 {
            self.published.push(published);
        }
    }

    /// Publish-to-write latency of this turn's deliveries (their frames were just written,
    /// unless some are still corked: then they are counted when those are).
    fn record_latency(&mut self) {
        if self.published.is_empty() || self.corked_until.is_some() {
            return;
        }
        let now = Instant::now();
        for t in self.published.drain(..) {
            let _ = self
                .latency
                .record(now.saturating_duration_since(t).as_micros().max(1) as u64);
        }
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

    fn on_request_bytes(&mut self, id: ConnId, bytes: &mut [u8]) {
        let Phase::Request { head, chunked, .. } = &mut self.conns[id.index()].phase else {
            unreachable!("request phase")
        };
        // A chunked body under way takes the bytes before any new head.
        let mut pending = chunked.take();
        // The common case parses straight from the read buffer; a split head is copied.
        let mut split = mem::take(head);
        let mut input: &mut [u8] = if split.is_empty() {
            bytes
        } else {
            split.extend_from_slice(bytes);
            &mut split
        };
        let max_head = self.shared.config.max_header_bytes;
        let max_body = self.shared.config.max_publish_bytes;
        loop {
            let (next, rest) = if let Some(mut body) = pending.take() {
                // ── chunked request bodies (RFC 9112 §7.1): decoded as they arrive, nothing
                // buffered but the payload, 413 as soon as a chunk size passes the limit.
                match body.decoder.decode(input, &mut body.data) {
                    Ok(None) => return self.keep_chunked(id, body),
                    Err(err) => return self.reject(id, &err),
                    Ok(Some(n)) => {
                        let rest = &mut mem::take(&mut input)[n..];
                        (self.dispatch(id, &body.req, &body.data), rest)
                    }
                }
            } else {
                let req = match handshake::parse_request(input, max_head) {
                    Ok(Some(req)) => req,
                    Ok(None) => return self.keep_partial(id, input),
                    Err(err) => return self.reject(id, &err),
                };
                if req.chunked {
                    input = &mut mem::take(&mut input)[req.head_len..];
                    pending = Some(Box::new(ChunkedBody {
                        req,
                        decoder: ChunkedDecoder::new(max_body),
                        data: Vec::new(),
                    }));
                    continue;
                }
                // ── end of chunked bodies.
                let body_len = req.content_length.unwrap_or(0);
                if body_len > max_body {
                    return self.reject(id, &HttpError::BODY_TOO_LARGE);
                }
                let total = req.head_len + body_len;
                if input.len() < total {
                    return self.keep_partial(id, input);
                }
                let (this, rest) = mem::take(&mut input).split_at_mut(total);
                (self.dispatch(id, &req, &this[req.head_len..]), rest)
            };
            match next {
                // Bytes right behind the upgrade request are the client's first frames.
                Next::Upgraded if rest.is_empty() => return,
                Next::Upgraded => return self.on_frame_bytes(id, rest),
                Next::Close => return self.begin_closing(id),
                Next::KeepAlive => {
                    let deadline = self.now + self.shared.config.handshake_timeout;
                    self.conns[id.index()].phase = Phase::Request {
                        head: Vec::new(),
                        chunked: None,
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

    fn keep_chunked(&mut self, id: ConnId, body: Box<ChunkedBody>) {
        if let Phase::Request { chunked, .. } = &mut self.conns[id.index()].phase {
            *chunked = Some(body);
        }
    }

    fn reject(&mut self, id: ConnId, err: &HttpError) {
        ReactorMetrics::add(&self.metrics().handshakes_rejected, 1);
        self.conns[id.index()].out.push(err.response().into());
        self.begin_closing(id);
    }

    fn dispatch(&mut self, id: ConnId, req: &Request, body: &[u8]) -> Next {
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
            let err = HttpError::new(503, reason).with_header("Retry-After", "1");
            conn.out.push(err.response().into());
            return Next::Close;
        }
        if route.is_websocket() {
            return self.upgrade(id, req, route);
        }
        let keep_alive = req.keep_alive && !draining;
        let response = match route {
            Route::Publish => match http::check_publish(req, body, config) {
                Ok((topic, data)) => {
                    self.publish(&topic, data);
                    http::published(&topic, keep_alive)
                }
                Err(response) => response,
            },
            Route::Metrics if req.method == handshake::Method::Get => {
                http::metrics(&self.shared, keep_alive)
            }
            _ => http::respond(route, req, draining),
        };
        self.conns[id.index()].out.push(response.into());
        self.schedule(id);
        if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    fn upgrade(&mut self, id: ConnId, req: &Request, route: Route) -> Next {
        let config = &self.shared.config;
        let policy = UpgradePolicy {
            subprotocols: &config.subprotocols,
            allowed_origins: config.allowed_origins.as_deref(),
        };
        let checked = handshake::validate_upgrade(req, &policy).and_then(|upgrade| {
            let topics = if route == Route::PubSub {
                http::subscribe_query(req, config)?
            } else {
                Vec::new()
            };
            Ok((upgrade, topics))
        });
        let conn = &mut self.conns[id.index()];
        match checked {
            Ok((upgrade, topics)) => {
                ReactorMetrics::add(&self.shared.metrics[self.index].handshakes_ok, 1);
                conn.out.push(upgrade.response().into());
                conn.phase = Phase::WebSocket {
                    ws: Connection::new(self.now),
                    route,
                    subs: Subs::new(),
                };
                for topic in &topics {
                    // Within the limit: `subscribe_query` checked the count.
                    let _ = self.subscribe(id, topic);
                }
                self.schedule(id);
                Next::Upgraded
            }
            Err(err) => {
                ReactorMetrics::add(&self.shared.metrics[self.index].handshakes_rejected, 1);
                conn.out.push(err.response().into());
                Next::Close
            }
        }
    }

    /// Runs every connection's timers, and publishes this reactor's latency samples.
    fn sweep(&mut self) {
        self.fold_latency();
        let now = self.now;
        let mut due = Vec::new();
        let mut timed_out = Vec::new();
        for (key, conn) in &mut self.conns {
            let id = ConnId(key as u32);
            // Idle connections give back their buffers' memory (re-grown on demand).
            conn.out.release_idle();
            match &mut conn.phase {
                Phase::Request { deadline, .. } if now >= *deadline => timed_out.push(id),
                // Too slow to finish closing: drop it.
                Phase::Closing { deadline, .. } if now >= *deadline => due.push((id, true)),
                Phase::WebSocket { ws, route, .. } => {
                    ws.release_idle();
                    let limits = if *route == Route::PubSub {
                        &self.shared.config.pubsub_limits
                    } else {
                        &self.shared.config.limits
                    };
                    if ws.poll_timeout(limits).is_some_and(|t| now >= t) {
                        ws.handle_timeout(now, limits, &mut conn.out);
                        due.push((id, ws.is_closed()));
                    }
                }
                _ => {}
            }
        }
        ReactorMetrics::add(&self.metrics().handshakes_timed_out, timed_out.len() as u64);
        for id in timed_out {
            // Too slow to send a request: dropped without an answer.
            self.set_closing(id, now, true);
        }
        for (id, closed) in due {
            match &self.conns[id.index()].phase {
                Phase::Closing { .. } => self.set_closing(id, now, true),
                _ if closed => self.begin_closing(id),
                _ => self.schedule(id),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection costs its slab entry and its subscriptions, nothing else: keep
    /// the entry small (the idle-memory target is 300 bytes of RSS per connection).
    #[test]
    fn idle_connection_footprint() {
        assert!(std::mem::size_of::<Conn<mio::net::TcpStream>>() <= 232);
        assert!(std::mem::size_of::<Connection>() <= 104);
    }
}
