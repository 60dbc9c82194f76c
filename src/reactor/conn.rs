//! A connection's lifecycle in its reactor: the table of connections, the phases (HTTP
//! request, WebSocket, closing, gone), the send and receive states, scheduling for the
//! flush, closing, EOF, drain and the timer sweep.
//!
//! ```text
//!   Accepted ─▶ Request ─(upgrade)─▶ WebSocket ─(close handshake, EOF, timeout)─▶ Closing
//!                  │ (keep-alive: back to Request)                                  │
//!                  └──(error, EOF)──────────────────────────────────────────────────┤
//!   Closing: flush what is queued, FIN, wait for the peer's FIN (or the deadline)    ▼
//!   Gone: handed to Driver::close, removed at Completion::Released ◀────────────────┘
//! ```

use std::mem;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::ops::{Index, IndexMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use wsgate_proto::{CloseCode, Connection, OutQueue};

use super::request::PendingBody;
use super::{limits, Core};
use crate::app::Route;
use crate::auth::Permissions;
use crate::broadcast::TopicId;
use crate::driver::{ConnId, ListenerId};
use crate::limits::{self, Meter};
use crate::metrics::ReactorMetrics;
use crate::transport::{Transport, TLS_LISTENER};

/// One connection's state in its reactor. Its socket belongs to the driver.
pub(super) struct Conn {
    pub out: OutQueue,
    pub phase: Phase,
    /// The WebSocket's route once upgraded (`NotFound` before). Kept out of `Phase` so
    /// that its WebSocket variant stays within 128 bytes.
    pub route: Route,
    pub send: Send,
    pub recv: Recv,
    pub scheduled: Scheduled,
    /// Accepted over `max_connections`: the request gets 503.
    pub admission: Admission,
}

/// A /ws connection's token: its permissions (interned: shared by every connection with
/// the same pattern sets), expiry and subject; 16 bytes in the phase. (Boxed, it measured
/// 75 bytes of RSS per connection with a token, the allocation and the heap fragmentation
/// around it, against 17 inline.)
#[derive(Debug)]
pub(super) struct Token {
    pub permissions: Arc<Permissions>,
    /// `exp`, in seconds since the Unix epoch; 0 once closed at its expiry.
    pub expires: u32,
    /// `Claims::subject`: the keyed hash of `sub`.
    pub subject: u32,
}

impl Token {
    pub fn of(claims: crate::auth::Claims) -> Self {
        Self {
            expires: claims.expires.clamp(1, u32::MAX.into()) as u32,
            subject: claims.subject,
            permissions: claims.permissions,
        }
    }

    /// Whether the token has expired at `now` (Unix seconds), with the same leeway as
    /// at the upgrade.
    pub fn expired(&self, now: u64) -> bool {
        self.expires != 0 && u64::from(self.expires) + crate::auth::LEEWAY_SECS <= now
    }
}

/// A connection's rate buckets and the key it is counted under in `Shared::clients`:
/// 24 bytes, kept in `Core::limited` beside the slots only when a `[rate]` limit other
/// than the HTTP publish rate is configured, so the slot itself does not grow.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limited {
    pub meter: Meter,
    pub client: Option<NonZeroU64>,
}

impl Limited {
    /// An entry no connection uses yet.
    pub fn idle() -> Self {
        Self {
            meter: Meter::new(0),
            client: None,
        }
    }
}

pub(super) enum Phase {
    /// Reading an HTTP request head (and body); `head` holds a split one, `body` a parsed
    /// head whose body is still arriving; `served` once a request on this connection was
    /// answered (kept alive).
    Request {
        head: Vec<u8>,
        body: Option<Box<PendingBody>>,
        deadline: Instant,
        served: bool,
    },
    /// `subs` is empty except on /ws; `token` is the /ws connection's, if any.
    WebSocket {
        ws: Connection,
        subs: Subs,
        token: Option<Token>,
    },
    /// Flushing the last bytes, then FIN, then waiting for the peer's FIN.
    Closing { deadline: Instant, fin_sent: bool },
    /// Handed to `Driver::close`; removed at `Completion::Released`.
    Gone,
}

/// Whether a send is in flight (the driver allows one per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Send {
    Idle,
    InFlight,
}

/// The receiving side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recv {
    On,
    /// Stopped: the outbound queue is over the cap (backpressure).
    Paused,
    /// Pipelined requests were left unparsed, their answers over the cap: the flush
    /// pauses reading (`Paused`), or parses them at once if the queue has drained to
    /// half the cap meanwhile.
    Pausing,
    /// The peer sent FIN.
    Eof,
    /// `Paused` with pipelined requests left unparsed, and then the peer sent FIN: they
    /// are still answered, as the queue drains, before the connection closes.
    PausedEof,
    /// Closed for flooding: the driver is told at the next flush to stop reading
    /// (`Stopped`), so what the client still sends costs nothing but its TCP window, and
    /// the close deadline ends the connection.
    Stopping,
    Stopped,
}

/// Whether the connection is waiting for this turn's flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scheduled {
    No,
    /// Deliveries wait in this slot of `Core::corked` until its tick (cork.rs).
    Corked(u8),
    /// In `Core::flush`: written at the end of this turn.
    Flush,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    Admitted,
    /// Over `max_connections`: its request is answered 503.
    OverLimit,
    /// Over a per-IP limit: its request is answered 429 with this `Retry-After`.
    ClientLimited {
        retry_after: u8,
    },
}

/// A connection's topics: up to four inline, so most subscribers allocate nothing.
pub(super) type Subs = smallvec::SmallVec<[TopicId; 4]>;

impl Conn {
    /// Not yet handed to the driver's `close`.
    pub fn is_live(&self) -> bool {
        !matches!(self.phase, Phase::Gone)
    }
}

/// The reactor's connections, indexed by the id the driver gave each.
#[derive(Default)]
pub(super) struct Conns {
    slots: Vec<Option<Conn>>,
    /// Transports indexed like `slots`, grown only by TLS connections (each a pointer to
    /// its boxed session), so that a plain connection's slot holds no transport at all.
    transports: Vec<Transport>,
    /// The transport of every plain connection: `Plain` holds no state, so it is shared.
    plain: Transport,
    len: usize,
}

impl Conns {
    pub fn insert(&mut self, id: ConnId, conn: Conn, transport: Transport) {
        if self.slots.len() <= id.index() {
            self.slots.resize_with(id.index() + 1, || None);
        }
        if matches!(transport, Transport::Tls(_)) && self.transports.len() <= id.index() {
            self.transports
                .resize_with(id.index() + 1, Transport::default);
        }
        if let Some(slot) = self.transports.get_mut(id.index()) {
            *slot = transport;
        }
        let slot = &mut self.slots[id.index()];
        debug_assert!(slot.is_none(), "the driver reused {id:?} before Released");
        if slot.replace(conn).is_none() {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let conn = self.slots.get_mut(id.index())?.take()?;
        if let Some(transport) = self.transports.get_mut(id.index()) {
            *transport = Transport::Plain;
        }
        self.len -= 1;
        Some(conn)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slots.get_mut(id.index())?.as_mut()
    }

    /// A connection with its transport.
    pub fn with_transport(&mut self, id: ConnId) -> Option<(&mut Conn, &mut Transport)> {
        let conn = self.slots.get_mut(id.index())?.as_mut()?;
        let transport = match self.transports.get_mut(id.index()) {
            Some(transport) => transport,
            None => &mut self.plain,
        };
        Some((conn, transport))
    }

    /// Starts loading the TLS state of the connections `next` flushes (last first): the
    /// keys of the next one, whose session was asked for a turn of the loop ago, and the
    /// session of the one after.
    pub fn prefetch(&self, next: &[ConnId]) {
        let mut ahead = next.iter().rev().map(|id| self.transports.get(id.index()));
        if let Some(Some(transport)) = ahead.next() {
            transport.prefetch_keys();
        }
        if let Some(Some(transport)) = ahead.next() {
            transport.prefetch_session();
        }
    }

    /// The transports that hold state (TLS sessions), for the timer sweep.
    pub fn transports_mut(&mut self) -> impl Iterator<Item = &mut Transport> {
        self.transports.iter_mut()
    }

    /// Whether the connection is still in its TLS handshake.
    pub fn is_handshaking(&self, id: ConnId) -> bool {
        self.transports
            .get(id.index())
            .is_some_and(Transport::is_handshaking)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn ids(&self) -> Vec<ConnId> {
        let present = self.slots.iter().enumerate().filter(|(_, c)| c.is_some());
        present.map(|(i, _)| ConnId(i as u32)).collect()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut Conn)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| c.as_mut().map(|c| (ConnId(i as u32), c)))
    }
}

impl Index<ConnId> for Conns {
    type Output = Conn;

    fn index(&self, id: ConnId) -> &Conn {
        self.slots[id.index()]
            .as_ref()
            .expect("a connection the reactor knows")
    }
}

impl IndexMut<ConnId> for Conns {
    fn index_mut(&mut self, id: ConnId) -> &mut Conn {
        self.slots[id.index()]
            .as_mut()
            .expect("a connection the reactor knows")
    }
}

impl Core {
    pub(super) fn accept(&mut self, id: ConnId, ip: IpAddr, listener: ListenerId) {
        let shared = &self.shared;
        let open = shared.open.fetch_add(1, Ordering::Relaxed);
        let metrics = &shared.metrics[self.index];
        ReactorMetrics::add(&metrics.connections, 1);
        ReactorMetrics::add(&metrics.accepted, 1);
        let (admission, client) = if open >= shared.config.limits.max_connections {
            (Admission::OverLimit, None)
        } else {
            match self.admit_client(ip) {
                Ok(client) => (Admission::Admitted, client),
                Err(retry_after) => (Admission::ClientLimited { retry_after }, None),
            }
        };
        let shared = &self.shared;
        let transport = match &shared.config.tls.acceptor {
            Some(tls) if listener == TLS_LISTENER => Transport::Tls(Box::new(tls.session())),
            _ => Transport::Plain,
        };
        self.conns.insert(
            id,
            Conn {
                out: OutQueue::default(),
                phase: Phase::Request {
                    head: Vec::new(),
                    body: None,
                    deadline: self.now + shared.config.limits.handshake_timeout,
                    served: false,
                },
                send: Send::Idle,
                recv: Recv::On,
                scheduled: Scheduled::No,
                admission,
                route: Route::NotFound,
            },
            transport,
        );
        if self.limits_on {
            let slot = id.index();
            if self.limited.len() <= slot {
                self.limited.resize(slot + 1, Limited::idle());
            }
            self.limited[slot] = Limited {
                meter: Meter::new(self.micros()),
                client,
            };
        }
    }

    /// Counts a new connection from `ip` against the per-IP limits: the key it is counted
    /// under (none when the limits are off), or the `Retry-After` of its 429.
    fn admit_client(&self, ip: IpAddr) -> Result<Option<NonZeroU64>, u8> {
        let rate = &self.shared.config.rate;
        if rate.max_connections_per_ip == 0 && rate.connects.is_none() {
            return Ok(None);
        }
        let key = limits::client_key(ip, rate.ipv6_prefix);
        let clients = &self.shared.clients;
        match clients.open(
            key.get(),
            self.now,
            rate.max_connections_per_ip,
            rate.connects,
        ) {
            Ok(()) => Ok(Some(key)),
            Err(refusal) => {
                let metrics = &self.shared.metrics[self.index];
                let counter = match refusal {
                    limits::Refusal::TooMany => &metrics.ip_limited,
                    limits::Refusal::TooFast(_) => &metrics.ip_rate_limited,
                };
                ReactorMetrics::add(counter, 1);
                Err(refusal.retry_after())
            }
        }
    }

    /// Sweeps the next shard of the tables shared by the reactors.
    pub(super) fn sweep_tables(&mut self) {
        self.shared.clients.sweep(self.sweeps, self.now);
        self.shared.publishers.sweep(self.sweeps, self.now);
        self.sweeps = self.sweeps.wrapping_add(1);
    }

    /// The driver released the connection: forget it.
    pub(super) fn remove(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(id) {
            if let Scheduled::Corked(slot) = conn.scheduled {
                self.uncorked_early(slot);
            }
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            ReactorMetrics::sub(&self.metrics().connections, 1);
            if let Some(limited) = self.limited.get_mut(id.index()) {
                if let Some(key) = limited.client.take() {
                    self.shared.clients.close(key.get(), self.now);
                }
            }
        }
    }

    /// Gives up on a connection: it leaves its topics, its queue is dropped and the driver
    /// closes the socket.
    pub(super) fn close_now(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id).filter(|c| c.is_live()) else {
            return;
        };
        conn.out.clear();
        let phase = mem::replace(&mut conn.phase, Phase::Gone);
        self.leave_websocket(id, phase);
        self.to_close.push(id);
    }

    /// Queues the connection for this turn's flush (a corked one too: a reply does not
    /// wait for the batching delay, and takes the corked deliveries with it).
    pub(super) fn schedule(&mut self, id: ConnId) {
        let conn = &mut self.conns[id];
        match mem::replace(&mut conn.scheduled, Scheduled::Flush) {
            Scheduled::Flush => {}
            Scheduled::Corked(slot) => {
                self.flush.push(id);
                self.uncorked_early(slot);
            }
            Scheduled::No => self.flush.push(id),
        }
    }

    pub(super) fn on_sent(&mut self, id: ConnId, bytes: usize) {
        let Some((conn, transport)) = self.conns.with_transport(id).filter(|(c, _)| c.is_live())
        else {
            return;
        };
        conn.send = Send::Idle;
        transport.sent(&mut conn.out, bytes);
        ReactorMetrics::add(&self.shared.metrics[self.index].bytes_out, bytes as u64);
        // The flush writes what came meanwhile, resumes reading, or finishes a close;
        // deliveries that came meanwhile and wait for their batch keep waiting.
        let work = !transport.is_idle(&conn.out)
            || matches!(conn.recv, Recv::Paused | Recv::Pausing | Recv::PausedEof)
            || matches!(conn.phase, Phase::Closing { .. });
        if work && !matches!(conn.scheduled, Scheduled::Corked(_)) {
            self.schedule(id);
        }
    }

    /// Moves to the closing phase: flush, FIN, wait for the peer's FIN until `deadline`.
    /// With `abandon`, the queue is dropped and the socket closed at the next flush.
    pub(super) fn set_closing(&mut self, id: ConnId, deadline: Instant, abandon: bool) {
        let conn = &mut self.conns[id];
        if abandon {
            conn.out.clear();
            conn.recv = Recv::Eof;
        }
        let phase = mem::replace(
            &mut conn.phase,
            Phase::Closing {
                deadline,
                fin_sent: abandon,
            },
        );
        self.leave_websocket(id, phase);
        self.schedule(id);
    }

    /// A connection left `phase`: if it was a WebSocket, it leaves its topics and gives
    /// back what its partial message held of the reactor's budget.
    fn leave_websocket(&mut self, id: ConnId, phase: Phase) {
        if let Phase::WebSocket { ws, subs, .. } = phase {
            self.inbound.give(ws.reserved());
            self.show_buffered();
            self.leave_topics(id, subs);
        }
    }

    pub(super) fn begin_closing(&mut self, id: ConnId) {
        let deadline = self.now + self.shared.config.limits.echo.close_timeout;
        self.set_closing(id, deadline, false);
    }

    /// The peer sent FIN. Everything already queued for it is still written (a half-closed
    /// peer may be reading), and so are the answers to the pipelined requests it sent
    /// before, then the connection closes. Called again once those requests are parsed.
    pub(super) fn on_eof(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id).filter(|c| c.is_live()) else {
            return;
        };
        // Unparsed requests behind answers over the cap (which a completed send may have
        // brought back under it since), or left so by a reparse in this flush.
        let unparsed = matches!(&conn.phase, Phase::Request { head, .. } if !head.is_empty());
        let waiting = matches!(conn.recv, Recv::Paused | Recv::Pausing);
        if unparsed && (waiting || self.answers_over_cap(id)) {
            self.conns[id].recv = Recv::PausedEof;
            return;
        }
        let conn = &mut self.conns[id];
        conn.recv = Recv::Eof;
        match conn.phase {
            Phase::Closing { .. } => self.schedule(id),
            _ => self.begin_closing(id),
        }
    }

    /// Draining: idle keep-alive connections go now; a request under way finishes and is
    /// answered 503 with `Connection: close`; WebSockets get close 1001.
    pub(super) fn start_drain(&mut self) {
        let now = self.now;
        self.drain_deadline = Some(now + self.shared.config.net.drain_grace);
        let mut idle = Vec::new();
        let mut closing = Vec::new();
        for (id, conn) in self.conns.iter_mut() {
            match &mut conn.phase {
                Phase::Request {
                    head, body: None, ..
                } if head.is_empty() => idle.push(id),
                Phase::WebSocket { ws, .. } => {
                    ws.close(
                        now,
                        limits(&self.shared, conn.route),
                        CloseCode::GOING_AWAY,
                        "server shutting down",
                        &mut conn.out,
                    );
                    closing.push(id);
                }
                Phase::Request { .. } | Phase::Closing { .. } | Phase::Gone => {}
            }
        }
        for id in idle {
            self.close_now(id);
        }
        for id in closing {
            self.schedule(id);
        }
    }

    /// Runs every connection's timers, and publishes this reactor's latency samples.
    pub(super) fn sweep(&mut self) {
        self.fold_latency();
        let now = self.now;
        self.unix_epoch = (self.wall)().saturating_sub(now.saturating_duration_since(self.epoch));
        let now_us = self.micros();
        let unix_now = self.unix_now();
        let mut due = Vec::new();
        let mut timed_out = Vec::new();
        let mut idle_closed = Vec::new();
        let mut expired = Vec::new();
        let mut tokens_expired = Vec::new();
        for transport in self.conns.transports_mut() {
            transport.release_idle();
        }
        for (id, conn) in self.conns.iter_mut() {
            // Idle connections give back their buffers' memory (re-grown on demand).
            conn.out.release_idle();
            match &mut conn.phase {
                Phase::Request {
                    deadline,
                    head,
                    body,
                    served,
                } if now >= *deadline => {
                    // A kept-alive connection idle between requests is closed at the same
                    // deadline, but it did not time out in a handshake.
                    let idle = *served && head.is_empty() && body.is_none();
                    if idle {
                        idle_closed.push(id);
                    } else {
                        timed_out.push(id);
                    }
                }
                // Too slow to finish closing: drop it.
                Phase::Closing { deadline, .. } if now >= *deadline => expired.push(id),
                Phase::WebSocket { ws, token, .. } => {
                    ws.release_idle();
                    let limits = limits(&self.shared, conn.route);
                    if let Some(token) = token.as_mut().filter(|t| t.expired(unix_now)) {
                        token.expires = 0;
                        let reason = "token expired";
                        ws.close(now, limits, CloseCode::POLICY, reason, &mut conn.out);
                        tokens_expired.push(id);
                        continue;
                    }
                    if ws.poll_timeout(limits).is_some_and(|t| now >= t) {
                        ws.handle_timeout(now, limits, &mut conn.out);
                        due.push((id, ws.is_closed()));
                    }
                }
                _ => {}
            }
        }
        ReactorMetrics::add(&self.metrics().handshakes_timed_out, timed_out.len() as u64);
        let tls_timeouts = timed_out
            .iter()
            .filter(|&&id| self.conns.is_handshaking(id));
        ReactorMetrics::add(&self.metrics().tls_timeouts, tls_timeouts.count() as u64);
        for id in timed_out.into_iter().chain(idle_closed) {
            // Too slow to send a request: dropped without an answer.
            self.set_closing(id, now, true);
        }
        for id in expired {
            self.close_now(id);
        }
        let closes = tokens_expired.len() as u64;
        ReactorMetrics::add(&self.metrics().token_expired_closes, closes);
        for id in tokens_expired {
            self.schedule(id);
        }
        for limited in &mut self.limited {
            limited.meter.settle(now_us);
        }
        for (id, closed) in due {
            if closed {
                self.begin_closing(id);
            } else {
                self.schedule(id);
            }
        }
    }
}
