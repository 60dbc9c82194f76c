//! The reactor on the in-memory driver: backpressure, slow consumers, the close lifecycle,
//! drain and timers, with no sockets, no sleeps and a clock the test moves.

use std::cell::Cell;
use std::time::{Duration, Instant};

use wsgate_proto::frame::FrameHeader;
use wsgate_proto::OpCode;

use super::Reactor;
use crate::config::{Config, RawConfig, SlowConsumerPolicy};
use crate::driver::memory::{MemoryDriver, Net};
use crate::driver::ConnId;
use crate::metrics::ReactorMetrics;
use crate::shared::Shared;

thread_local! {
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The reactor thread's CPU time as the batching controller sees it.
    static CPU: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// The wall clock (since the Unix epoch): moves with `NOW`, or steps on its own.
    static WALL: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

fn clock() -> Instant {
    NOW.with(|now| now.get().expect("the harness set the clock"))
}

fn cpu() -> Duration {
    CPU.with(Cell::get)
}

fn wall() -> Duration {
    WALL.with(Cell::get)
}

/// One reactor on the in-memory driver, with a clock that moves only when told.
struct Harness {
    reactor: Reactor<MemoryDriver>,
    net: Net,
    drained: bool,
}

impl Harness {
    fn new(tweak: impl FnOnce(&mut Config)) -> Self {
        NOW.with(|now| now.set(Some(Instant::now())));
        CPU.with(|cpu| cpu.set(Duration::ZERO));
        WALL.with(|wall| wall.set(super::wall_clock()));
        let mut config = RawConfig::default().validate().expect("defaults are valid");
        config.net.threads = 1;
        tweak(&mut config);
        let (shared, mut inboxes) = Shared::new(config, "memory", 1).expect("eventfd");
        let (driver, net) = MemoryDriver::new();
        let inbox = inboxes.remove(0);
        let clocks = super::Clocks {
            now: clock,
            cpu,
            wall,
        };
        let reactor = Reactor::with_clocks(0, driver, shared, inbox, clocks);
        Self {
            reactor,
            net,
            drained: false,
        }
    }

    /// Runs one turn of the loop at the current time.
    fn turn(&mut self) {
        self.drained |= self.reactor.turn();
    }

    /// Moves the clock forward, then runs a turn.
    fn advance(&mut self, by: Duration) {
        NOW.with(|now| now.set(Some(now.get().expect("set") + by)));
        WALL.with(|wall| wall.set(wall.get() + by));
        self.turn();
    }

    /// Steps the wall clock alone (NTP setting the system clock), forward or back.
    fn step_wall(&mut self, forward: bool, by: Duration) {
        WALL.with(|wall| {
            wall.set(if forward {
                wall.get() + by
            } else {
                wall.get() - by
            })
        });
    }

    /// Moves the clock forward with the reactor on the CPU for `busy` of it, then runs a turn.
    fn advance_busy(&mut self, by: Duration, busy: Duration) {
        CPU.with(|cpu| cpu.set(cpu.get() + busy));
        self.advance(by);
    }

    fn batch_delay(&self) -> Duration {
        self.reactor.core.batch.delay()
    }

    /// Every publish-to-write sample so far (folded into /metrics or not yet).
    fn publish_to_write(&self) -> hdrhistogram::Histogram<u64> {
        let mut all = self.metrics().latency_us.lock().unwrap().clone();
        all.add(&self.reactor.core.latency).unwrap();
        all
    }

    fn metrics(&self) -> &ReactorMetrics {
        &self.reactor.core.shared.metrics[0]
    }

    /// A peer that upgraded on `path`; the 101 is read and checked.
    fn websocket(&mut self, path: &str) -> ConnId {
        self.websocket_with(path, "").0
    }

    /// A peer that upgraded on `path` sending `headers` too (each ending in CRLF); the 101
    /// is read, checked and returned.
    fn websocket_with(&mut self, path: &str, headers: &str) -> (ConnId, String) {
        let id = self.net.connect();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             {headers}\r\n"
        );
        self.net.send(id, request.as_bytes());
        self.turn();
        self.turn();
        let response = String::from_utf8(self.net.read(id)).expect("ascii");
        assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
        (id, response)
    }

    fn send_text(&mut self, id: ConnId, text: &str) {
        self.send_frame(id, OpCode::Text as u8, text.as_bytes());
    }

    fn send_frame(&mut self, id: ConnId, opcode: u8, payload: &[u8]) {
        let frame = wsgate_proto::frame::encode_client_raw(true, 0, opcode, [1, 2, 3, 4], payload);
        self.net.send(id, &frame);
    }

    /// Every complete frame the server wrote to `id` so far: (opcode, payload).
    fn frames(&mut self, id: ConnId) -> Vec<(OpCode, Vec<u8>)> {
        parse_frames(&self.net.read(id))
    }

    fn texts(&mut self, id: ConnId) -> Vec<String> {
        self.frames(id)
            .into_iter()
            .map(|(op, payload)| {
                assert_eq!(op, OpCode::Text);
                String::from_utf8(payload).expect("utf-8")
            })
            .collect()
    }
}

fn parse_frames(mut bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
    let mut frames = Vec::new();
    while let Some((header, n)) = FrameHeader::parse(bytes).expect("a valid server frame") {
        assert!(header.mask.is_none(), "server frames are not masked");
        let end = n + header.len as usize;
        assert!(bytes.len() >= end, "a whole frame per flush");
        frames.push((header.opcode, bytes[n..end].to_vec()));
        bytes = &bytes[end..];
    }
    assert!(bytes.is_empty(), "trailing bytes");
    frames
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[test]
fn echo_then_close_handshake_releases_the_connection() {
    let mut h = Harness::new(|_| {});
    let id = h.websocket("/echo");
    h.send_text(id, "hello");
    h.turn();
    h.turn();
    assert_eq!(h.texts(id), ["hello"]);
    h.send_frame(id, 0x8, &1000u16.to_be_bytes());
    h.turn();
    h.turn();
    let frames = h.frames(id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, OpCode::Close);
    assert_eq!(close_code(&frames[0].1), 1000);
    assert!(h.net.fin(id), "FIN after the close reply");
    assert!(!h.net.closed(id), "waits for the peer's FIN");
    h.net.shutdown(id);
    h.turn();
    h.turn();
    assert!(h.net.closed(id));
    assert!(h.reactor.core.conns.is_empty(), "removed at Released");
    assert_eq!(ReactorMetrics::get(&h.metrics().connections), 0);
}

#[test]
fn echo_backpressure_pauses_reading_and_loses_nothing() {
    let mut h = Harness::new(|c| c.limits.max_outbound_bytes = 4096);
    let id = h.websocket("/echo");
    h.net.set_window(id, 0);
    let payload = "x".repeat(1000);
    for _ in 0..20 {
        h.send_text(id, &payload);
    }
    for _ in 0..5 {
        h.turn();
    }
    assert!(!h.net.receiving(id), "reading stops over the cap");
    let mut got = Vec::new();
    for _ in 0..100 {
        h.net.set_window(id, 2000);
        let mut bytes = h.net.read(id);
        h.turn();
        bytes.extend(h.net.read(id));
        got.extend(bytes);
        if parse_frames_partial(&got) == 20 {
            break;
        }
    }
    let frames = parse_frames(&got);
    assert_eq!(frames.len(), 20, "every echo arrives, in order");
    assert!(frames.iter().all(|(_, p)| p == payload.as_bytes()));
    assert!(h.net.receiving(id), "reading resumed");
}

/// Pipelined requests for large answers (`GET /metrics`: ~35 bytes asking for several KB)
/// wait unparsed while what is queued for a client that does not read is over the cap,
/// so one connection cannot pile answers up without bound; once it reads, every request
/// is answered, in order.
#[test]
fn pipelined_requests_wait_while_their_answers_are_over_the_cap() {
    // With `fin`, the client half-closes right behind its requests: they are answered
    // all the same (they were dropped when the FIN came while they waited), then the
    // connection closes.
    for fin in [false, true] {
        let mut h = Harness::new(|c| c.limits.max_outbound_bytes = 4096);
        let id = h.net.connect();
        h.net.set_window(id, 0);
        let pair =
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        h.net.send(id, pair.repeat(100).as_bytes());
        if fin {
            h.net.shutdown(id);
        }
        for _ in 0..5 {
            h.turn();
        }
        let queued = h.reactor.core.conns[id].out.len_bytes();
        assert!(queued > 4096, "one answer is over the cap: {queued}");
        assert!(
            queued < 4 * 4096,
            "the rest wait unanswered: {queued} bytes queued"
        );
        if !fin {
            assert!(!h.net.receiving(id), "reading stops over the cap");
        }
        let mut got = Vec::new();
        for _ in 0..1000 {
            h.net.set_window(id, 4096);
            got.extend(h.net.read(id));
            h.turn();
            if got.windows(12).filter(|w| w == b"HTTP/1.1 200").count() == 200 {
                break;
            }
        }
        let text = String::from_utf8(got).unwrap();
        let answers: Vec<&str> = text.split("HTTP/1.1 200 OK").skip(1).collect();
        assert_eq!(answers.len(), 200, "fin {fin}: every request answered");
        for (i, answer) in answers.iter().enumerate() {
            let health = answer.ends_with("\r\n\r\nok\n");
            assert_eq!(
                health,
                i % 2 == 1,
                "answer {i} in request order: {answer:.80}"
            );
        }
        if fin {
            for _ in 0..3 {
                h.turn();
            }
            assert!(h.net.read(id).is_empty());
            assert!(h.net.closed(id), "closed once answered");
        } else {
            assert!(h.net.receiving(id), "reading resumed");
        }
    }
}

/// The length of one `/metrics` answer on a fresh reactor.
fn metrics_answer_len() -> usize {
    let mut h = Harness::new(|_| {});
    let id = h.net.connect();
    h.net.send(id, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    h.turn();
    h.net.read(id).len()
}

/// Pipelined requests kept unparsed because an earlier answer was still in flight, which
/// then completes (the queue back under the cap) in the same turn, before the flush: they
/// are answered without the client sending more, and, with a FIN behind them, before the
/// close. (They waited until `handshake_timeout`, or were dropped at the FIN.)
#[test]
fn requests_kept_behind_a_send_that_completes_are_answered() {
    for fin in [false, true] {
        let cap = metrics_answer_len() + 100;
        let mut h = Harness::new(|c| c.limits.max_outbound_bytes = cap);
        let id = h.net.connect();
        h.net.set_window(id, 0);
        let healthz = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        h.net.send(id, healthz.repeat(5).as_bytes());
        h.turn();
        let in_flight = h.reactor.core.conns[id].out.len_bytes();
        assert!(in_flight > 150 && in_flight <= cap, "{in_flight}");
        h.net.send(
            id,
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n{healthz}").as_bytes(),
        );
        h.net.set_window(id, usize::MAX);
        // Taking the answers completes the send: its `Sent` comes behind the bytes.
        let mut got = h.net.read(id);
        if fin {
            h.net.shutdown(id);
        }
        for _ in 0..5 {
            h.turn();
            got.extend(h.net.read(id));
        }
        let n = String::from_utf8_lossy(&got)
            .matches("HTTP/1.1 200 OK")
            .count();
        assert_eq!(n, 7, "fin {fin}: 5 healthz, metrics, healthz");
        assert_eq!(h.net.closed(id), fin);
        assert_eq!(ReactorMetrics::get(&h.metrics().handshakes_timed_out), 0);
    }
}

/// A FIN reported while reading is paused and the queue is under the cap but over half
/// of it (io_uring reports one that completed before its cancel): the kept requests are
/// still answered.
#[test]
fn a_fin_while_paused_under_the_cap_keeps_the_requests() {
    let cap = metrics_answer_len() + 900;
    let mut h = Harness::new(|c| c.limits.max_outbound_bytes = cap);
    let id = h.net.connect();
    h.net.set_window(id, 0);
    let healthz = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    h.net.send(id, healthz.repeat(11).as_bytes());
    h.turn();
    h.net.send(
        id,
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n{healthz}").as_bytes(),
    );
    h.turn();
    assert!(!h.net.receiving(id), "paused");
    h.net.set_window(id, usize::MAX);
    let mut got = h.net.read(id);
    h.turn();
    let pending = h.reactor.core.conns[id].out.len_bytes();
    assert!(pending > cap / 2 && pending <= cap, "{pending} of {cap}");
    h.reactor.core.on_eof(id);
    for _ in 0..5 {
        got.extend(h.net.read(id));
        h.turn();
    }
    got.extend(h.net.read(id));
    let n = String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200 OK")
        .count();
    assert_eq!(n, 13);
    assert!(h.net.closed(id));
}

/// A publish sent a byte at a time, head and body, with either framing, is published once
/// whole (the body is taken as it arrives; the head is parsed once per line).
#[test]
fn a_publish_sent_a_byte_at_a_time_arrives_whole() {
    let mut h = Harness::new(|_| {});
    let sub = subscribe(&mut h, "t");
    let body = format!(r#"{{"n":"{}"}}"#, "x".repeat(3000));
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    for (framing, payload) in [
        (format!("Content-Length: {}", body.len()), body.clone()),
        ("Transfer-Encoding: chunked".to_owned(), chunked),
    ] {
        let publisher = h.net.connect();
        let request = format!("POST /publish/t HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n{payload}");
        for byte in request.as_bytes() {
            h.net.send(publisher, &[*byte]);
        }
        h.turn();
        let response = String::from_utf8(h.net.read(publisher)).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 202 "),
            "{framing}: {response}"
        );
        assert_eq!(
            h.texts(sub),
            [format!(r#"{{"topic":"t","data":{body}}}"#)],
            "{framing}"
        );
    }
}

/// A head sent a byte at a time is refused with 431 as soon as it passes
/// `max_header_bytes`, line feed or not.
#[test]
fn a_head_growing_a_byte_at_a_time_is_refused_at_the_limit() {
    let mut h = Harness::new(|c| c.limits.max_header_bytes = 256);
    let id = h.net.connect();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: {}",
        "a".repeat(300)
    );
    for byte in head.as_bytes() {
        h.net.send(id, &[*byte]);
    }
    h.turn();
    let response = String::from_utf8(h.net.read(id)).unwrap();
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
}

/// Counts the complete frames at the start of `bytes`.
fn parse_frames_partial(mut bytes: &[u8]) -> usize {
    let mut n = 0;
    while let Ok(Some((header, len))) = FrameHeader::parse(bytes) {
        let end = len + header.len as usize;
        if bytes.len() < end {
            break;
        }
        bytes = &bytes[end..];
        n += 1;
    }
    n
}

/// A reactor whose connections may queue `cap` outbound bytes, slow consumers getting
/// `policy`.
fn capped(cap: usize, policy: SlowConsumerPolicy) -> Harness {
    Harness::new(|c| {
        c.limits.max_outbound_bytes = cap;
        c.pubsub.slow_consumer = policy;
    })
}

fn subscribe(h: &mut Harness, topic: &str) -> ConnId {
    let id = h.websocket(&format!("/ws?subscribe={topic}"));
    assert!(h.reactor.core.topics.find(topic).is_some());
    id
}

fn http_publish(h: &mut Harness, topic: &str, body: &str) {
    let id = h.net.connect();
    let request = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    h.net.send(id, request.as_bytes());
    h.turn();
    let response = String::from_utf8(h.net.read(id)).expect("ascii");
    assert!(response.starts_with("HTTP/1.1 202 "), "{response}");
}

#[test]
fn slow_consumer_is_closed_with_1008_and_others_get_everything() {
    let mut h = capped(2048, SlowConsumerPolicy::Close);
    let fast = subscribe(&mut h, "t");
    let slow = subscribe(&mut h, "t");
    h.net.set_window(slow, 0);
    let body = format!("\"{}\"", "y".repeat(200));
    let mut fast_got = Vec::new();
    for _ in 0..30 {
        http_publish(&mut h, "t", &body);
        h.turn();
        fast_got.extend(h.texts(fast));
    }
    assert_eq!(fast_got.len(), 30, "the fast subscriber misses nothing");
    assert_eq!(
        ReactorMetrics::get(&h.metrics().slow_consumer_closes),
        1,
        "closed once"
    );
    h.net.set_window(slow, usize::MAX);
    let mut bytes = h.net.read(slow);
    h.turn();
    bytes.extend(h.net.read(slow));
    let frames = parse_frames(&bytes);
    let (last_op, last) = frames.last().expect("frames");
    assert_eq!(*last_op, OpCode::Close);
    assert_eq!(close_code(last), 1008);
    let deliveries = frames.len() - 1;
    assert!(deliveries < 30, "the slow one got {deliveries}");
    http_publish(&mut h, "t", &body);
    h.turn();
    assert!(
        h.net.read(slow).is_empty(),
        "nothing follows the close frame"
    );
    assert_eq!(h.texts(fast).len(), 1);
}

#[test]
fn slow_consumer_drop_policy_skips_and_counts() {
    let mut h = capped(1024, SlowConsumerPolicy::Drop);
    let slow = subscribe(&mut h, "t");
    h.net.set_window(slow, 0);
    let body = format!("\"{}\"", "z".repeat(300));
    for _ in 0..10 {
        http_publish(&mut h, "t", &body);
        h.turn();
    }
    let dropped = ReactorMetrics::get(&h.metrics().dropped);
    let delivered = ReactorMetrics::get(&h.metrics().deliveries);
    assert_eq!(dropped + delivered, 10);
    assert!(dropped >= 6, "{dropped} dropped");
    h.net.set_window(slow, usize::MAX);
    let mut bytes = h.net.read(slow);
    h.turn();
    bytes.extend(h.net.read(slow));
    assert_eq!(
        parse_frames(&bytes).len() as u64,
        delivered,
        "no gaps inside a frame"
    );
    assert!(!h.net.closed(slow), "drop never closes");
}

/// A delivery larger than `max_outbound_bytes` reaches a subscriber with nothing queued
/// (it used to be closed 1008 "slow consumer", or under `drop` never got it); a second
/// one behind it, unsent, gets the policy as before.
#[test]
fn a_delivery_over_the_cap_reaches_a_subscriber_with_nothing_queued() {
    for policy in [SlowConsumerPolicy::Close, SlowConsumerPolicy::Drop] {
        let mut h = capped(1024, policy);
        let sub = subscribe(&mut h, "t");
        let body = format!("\"{}\"", "y".repeat(2000));
        http_publish(&mut h, "t", &body);
        h.turn();
        assert_eq!(
            h.texts(sub),
            [format!(r#"{{"topic":"t","data":{body}}}"#)],
            "{policy:?}"
        );
        let m = h.metrics();
        assert_eq!(
            ReactorMetrics::get(&m.slow_consumer_closes),
            0,
            "{policy:?}"
        );
        assert_eq!(ReactorMetrics::get(&m.dropped), 0, "{policy:?}");
        h.net.set_window(sub, 0);
        for _ in 0..2 {
            http_publish(&mut h, "t", &body);
            h.turn();
        }
        let m = h.metrics();
        let acted = ReactorMetrics::get(&m.slow_consumer_closes) + ReactorMetrics::get(&m.dropped);
        assert_eq!(acted, 1, "{policy:?}: the second waits behind the first");
    }
}

/// A delivery larger than twice the cap, taken by an empty queue, and a second one behind
/// it: the subscriber gets the first and then close 1008, not an abort without either.
#[test]
fn a_slow_consumer_behind_one_large_delivery_is_told_1008() {
    let mut h = capped(1024, SlowConsumerPolicy::Close);
    let sub = subscribe(&mut h, "t");
    h.net.set_window(sub, 0);
    let body = format!("\"{}\"", "y".repeat(3000));
    for _ in 0..2 {
        http_publish(&mut h, "t", &body);
        h.turn();
    }
    h.net.set_window(sub, usize::MAX);
    let mut bytes = Vec::new();
    for _ in 0..4 {
        bytes.extend(h.net.read(sub));
        h.turn();
    }
    let frames = parse_frames(&bytes);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].0, OpCode::Text);
    assert_eq!(frames[1].0, OpCode::Close);
    assert_eq!(close_code(&frames[1].1), 1008);
}

/// Issue 9 item 5: a publisher that half-closes gets the copy of its own publish.
#[test]
fn half_closed_publisher_gets_its_own_delivery() {
    let mut h = Harness::new(|c| c.pubsub.client_publish = vec!["*".into()]);
    let id = subscribe(&mut h, "t");
    h.send_text(id, r#"{"op":"publish","topic":"t","data":1}"#);
    h.net.shutdown(id);
    for _ in 0..4 {
        h.turn();
    }
    assert_eq!(h.texts(id), [r#"{"topic":"t","data":1}"#]);
    assert!(h.net.closed(id), "closed once written");
}

#[test]
fn drain_closes_websockets_with_1001_and_idle_http_at_once() {
    let mut h = Harness::new(|c| c.net.drain_grace = Duration::from_secs(10));
    let ws = h.websocket("/echo");
    let idle = h.net.connect();
    h.turn();
    h.reactor.core.shared.drain();
    h.net.wake();
    h.turn();
    assert!(!h.net.accepting(), "stopped accepting");
    assert!(
        h.net.closed(idle),
        "an idle keep-alive connection goes at once"
    );
    let frames = h.frames(ws);
    assert_eq!(frames.len(), 1);
    assert_eq!(close_code(&frames[0].1), 1001);
    assert!(!h.drained, "waits for the close handshake");
    h.send_frame(ws, 0x8, &1001u16.to_be_bytes());
    h.net.shutdown(ws);
    for _ in 0..3 {
        h.turn();
    }
    assert!(h.net.closed(ws));
    assert!(h.drained, "drained once every connection is gone");
}

/// A refused publish answered while draining says `Connection: close`, as every other
/// answer then does (it said keep-alive, and the server closed anyway).
#[test]
fn a_refused_publish_while_draining_says_connection_close() {
    let mut h = Harness::new(|c| c.net.drain_grace = Duration::from_secs(10));
    let id = h.net.connect();
    h.net.send(id, b"GET /publish/t HTTP/1.1\r\nHost: x\r\n");
    h.turn();
    h.reactor.core.shared.drain();
    h.net.wake();
    h.turn();
    h.net.send(id, b"\r\n");
    h.turn();
    let response = String::from_utf8(h.net.read(id)).expect("ascii");
    assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response}"
    );
    h.turn();
    assert!(h.net.fin(id), "and closes it");
}

#[test]
fn drain_ends_at_the_grace_period() {
    let mut h = Harness::new(|c| c.net.drain_grace = Duration::from_secs(2));
    let ws = h.websocket("/echo");
    h.reactor.core.shared.drain();
    h.net.wake();
    h.turn();
    assert!(!h.drained);
    h.advance(Duration::from_secs(3));
    assert!(h.drained, "the grace period bounds the drain");
    h.reactor.finish();
    assert!(h.net.closed(ws));
}

#[test]
fn idle_connection_is_pinged_then_closed_without_a_pong() {
    let mut h = Harness::new(|c| {
        c.limits.echo.idle_timeout = Some(Duration::from_secs(5));
        c.limits.echo.pong_timeout = Duration::from_secs(2);
    });
    let id = h.websocket("/echo");
    h.advance(Duration::from_secs(4));
    assert!(h.frames(id).is_empty(), "not idle long enough");
    h.advance(Duration::from_secs(2));
    let frames = h.frames(id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, OpCode::Ping);
    h.advance(Duration::from_secs(3));
    let frames = h.frames(id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, OpCode::Close);
    assert_eq!(close_code(&frames[0].1), 1008);
}

#[test]
fn pong_keeps_an_idle_connection_open() {
    let mut h = Harness::new(|c| {
        c.limits.echo.idle_timeout = Some(Duration::from_secs(5));
        c.limits.echo.pong_timeout = Duration::from_secs(2);
    });
    let id = h.websocket("/echo");
    h.advance(Duration::from_secs(6));
    assert_eq!(h.frames(id)[0].0, OpCode::Ping);
    h.send_frame(id, 0xa, b"");
    h.turn();
    h.advance(Duration::from_secs(3));
    assert!(h.frames(id).is_empty(), "no close after the pong");
    assert!(!h.net.fin(id));
}

#[test]
fn silent_connection_times_out_without_an_answer() {
    let mut h = Harness::new(|c| c.limits.handshake_timeout = Duration::from_secs(1));
    let id = h.net.connect();
    h.net.send(id, b"GET /echo HTTP/1.1\r\n");
    h.turn();
    h.advance(Duration::from_secs(2));
    h.turn();
    assert!(h.net.read(id).is_empty(), "no response to half a request");
    assert!(h.net.closed(id));
    assert_eq!(ReactorMetrics::get(&h.metrics().handshakes_timed_out), 1);
}

/// A kept-alive connection idle between requests (a scraper between scrapes) is closed at
/// `handshake_timeout` too, but is not counted as a handshake that timed out; one that
/// stops halfway through its second request, or never sends one, is.
#[test]
fn an_idle_keep_alive_is_closed_but_not_counted_as_a_handshake_timeout() {
    let mut h = Harness::new(|c| c.limits.handshake_timeout = Duration::from_secs(1));
    let idle = h.net.connect();
    let partial = h.net.connect();
    let silent = h.net.connect();
    for id in [idle, partial] {
        h.net.send(id, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    h.turn();
    for id in [idle, partial] {
        let response = String::from_utf8(h.net.read(id)).expect("ascii");
        assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    }
    h.net.send(partial, b"GET /healthz HTTP/1.1\r\n");
    h.turn();
    h.advance(Duration::from_secs(2));
    h.turn();
    for id in [idle, partial, silent] {
        assert!(h.net.read(id).is_empty());
        assert!(h.net.closed(id));
    }
    assert_eq!(ReactorMetrics::get(&h.metrics().handshakes_timed_out), 2);
}

#[test]
fn close_reply_that_never_comes_ends_at_close_timeout() {
    let mut h = Harness::new(|c| c.limits.echo.close_timeout = Duration::from_secs(1));
    let id = h.websocket("/echo");
    // A protocol error: an unmasked frame. The server sends 1002 and waits for the peer.
    h.net.send(id, &[0x81, 0x00]);
    h.turn();
    h.turn();
    let frames = h.frames(id);
    assert_eq!(close_code(&frames[0].1), 1002);
    assert!(!h.net.closed(id));
    h.advance(Duration::from_secs(2));
    h.turn();
    assert!(h.net.closed(id), "closed at the deadline");
}

#[test]
fn deliveries_of_one_turn_leave_in_one_send() {
    let mut h = Harness::new(|_| {});
    let id = subscribe(&mut h, "t");
    let before = h.net.sends(id);
    let publisher = h.net.connect();
    let pipelined: String = (0..5)
        .map(|i| format!("POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{i}"))
        .collect();
    h.net.send(publisher, pipelined.as_bytes());
    h.turn();
    assert_eq!(
        h.net.sends(id) - before,
        1,
        "corked: one send for five deliveries"
    );
    let texts = h.texts(id);
    let expected: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"topic":"t","data":{i}}}"#))
        .collect();
    assert_eq!(texts, expected);
}

/// An idle connection costs its table slot and its subscriptions, nothing else: keep the
/// slot small (216 bytes, 16 of them a /ws token: the pointer to its shared permissions,
/// its expiry and subject; the rate buckets and client key, 24 bytes, sit beside the slots
/// only when limits are configured; the idle-memory target is under 300 bytes of RSS per
/// connection with the driver's own per-connection state).
#[test]
fn idle_connection_footprint() {
    let slot = std::mem::size_of::<Option<super::conn::Conn>>();
    assert!(slot <= 216, "{slot} bytes");
    assert_eq!(std::mem::size_of::<Option<super::conn::Token>>(), 16);
    assert_eq!(std::mem::size_of::<super::conn::Limited>(), 24);
    // A TLS session's pointer sits beside the slots too (`Conns::transports`).
    assert_eq!(std::mem::size_of::<crate::transport::Transport>(), 8);
    assert!(std::mem::size_of::<wsgate_proto::Connection>() <= 96);
}

/// Issue 10: a connection that negotiated permessage-deflate holds exactly as much heap as
/// one that did not, idle and after a compressed message each way: nothing is allocated
/// per connection for compression. Two reactors go through the same steps (so their tables
/// grow alike), one offering deflate on every connection, the other nothing; every heap
/// byte this thread holds is counted (the reactor, the in-memory network and the test).
#[test]
fn deflate_costs_no_heap_per_connection() {
    const N: usize = 200;
    let big = format!("[{}1]", "{\"price\":42000.5,\"side\":\"buy\"},".repeat(40));
    let compressed = wsgate_proto::deflate::Deflater::new(6, 0)
        .compress(big.as_bytes())
        .expect("compressible")
        .to_vec();
    // Live heap, against the harness's start: with N/2 and N idle connections, then after
    // the first N/2 and all N have echoed one message.
    let measure = |offer: &str| -> [isize; 4] {
        let mut h = Harness::new(|_| {});
        let mut ids = Vec::with_capacity(N);
        h.advance(h.reactor.core.tick);
        let start = crate::sys::heap::live();
        let mut at = [0; 4];
        for i in 0..N {
            let (id, response) = h.websocket_with("/echo", offer);
            assert_eq!(response.contains("permessage-deflate"), !offer.is_empty());
            drop(response);
            ids.push(id);
            if i + 1 == N / 2 {
                h.advance(h.reactor.core.tick);
                at[0] = crate::sys::heap::live() - start;
            }
        }
        h.advance(h.reactor.core.tick);
        at[1] = crate::sys::heap::live() - start;
        // One message each way on every connection: compressed where negotiated.
        let (rsv, payload) = if offer.is_empty() {
            (0, big.as_bytes())
        } else {
            (0b100, &compressed[..])
        };
        let frame = wsgate_proto::frame::encode_client_raw(true, rsv, 0x1, [1, 2, 3, 4], payload);
        for (i, &id) in ids.iter().enumerate() {
            h.net.send(id, &frame);
            h.turn();
            h.turn();
            let reply = h.net.read(id);
            let (header, _) = FrameHeader::parse(&reply).unwrap().unwrap();
            assert_eq!(header.rsv, rsv, "compressed back where negotiated");
            drop(reply);
            if i + 1 == N / 2 || i + 1 == N {
                h.advance(h.reactor.core.tick);
                at[2 + i / (N / 2)] = crate::sys::heap::live() - start;
            }
        }
        drop(frame);
        at
    };
    let plain = measure("");
    let deflate =
        measure("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    // Idle: byte for byte the same, whether N/2 or N connections are open.
    assert_eq!(deflate[..2], plain[..2], "idle");
    // After compressing: more by the reactor's one Inflater and Deflater (allocated at the
    // first use), the same amount with N/2 as with N connections: none of it per connection.
    let per_reactor = deflate[2] - plain[2];
    assert_eq!(deflate[3] - plain[3], per_reactor, "{plain:?} {deflate:?}");
    assert!((0..1 << 20).contains(&per_reactor), "{per_reactor}");
    eprintln!(
        "heap held by {N} idle connections: {} B with deflate, {} B without; after a message \
         each way: {} B and {} B (+{per_reactor} B: the reactor's compressor and decompressor)",
        deflate[1], plain[1], deflate[3], plain[3]
    );
}

/// Issue 9 item 8: partial messages share one budget; past it a connection closes with
/// 1013, is counted, and gives its part back, while well-behaved neighbours keep working.
#[test]
fn stalled_partial_messages_are_bounded_by_the_budget() {
    let mut h = Harness::new(|c| {
        c.limits.max_buffered_bytes = 100_000;
        c.limits.echo.max_message_size = 60_000;
        c.limits.echo.max_frame_size = 60_000;
    });
    let good = h.websocket("/echo");
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let id = h.websocket("/echo");
        // The first 1,000 bytes of a 30,000-byte frame, and then nothing.
        let frame =
            wsgate_proto::frame::encode_client_raw(false, 0, 0x2, [9, 9, 9, 9], &[0; 30_000]);
        h.net.send(id, &frame[..1000]);
        h.turn();
        stalled.push(id);
    }
    // 3 × 30,000 fit in 100,000; the 4th and 5th are refused before storing a byte.
    assert_eq!(h.reactor.core.inbound.used(), 90_000);
    assert_eq!(ReactorMetrics::get(&h.metrics().over_budget_closes), 2);
    for &id in &stalled[3..] {
        let frames = h.frames(id);
        assert_eq!(close_code(&frames[0].1), 1013);
    }
    h.send_text(good, "still here");
    h.turn();
    assert_eq!(h.texts(good), ["still here"], "a neighbour is unaffected");
    assert_eq!(ReactorMetrics::get(&h.metrics().buffered_bytes), 90_000);
    // A stalled one goes away: its part comes back, and the gauge says so at once, not
    // when some other connection next sends a frame.
    h.net.shutdown(stalled[0]);
    h.turn();
    h.turn();
    assert_eq!(h.reactor.core.inbound.used(), 60_000);
    assert_eq!(ReactorMetrics::get(&h.metrics().buffered_bytes), 60_000);
}

/// A keep-alive HTTP publisher: each call queues one publish, handled at the next turn.
fn publish_on(h: &mut Harness, publisher: ConnId, topic: &str, body: &str) {
    let _responses = h.net.read(publisher);
    let request = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    h.net.send(publisher, request.as_bytes());
}

fn delivery(topic: &str, i: usize) -> String {
    format!(r#"{{"topic":"{topic}","data":{i}}}"#)
}

const MS: Duration = Duration::from_millis(1);

/// Publishes every millisecond with the reactor on the CPU all the time, for `n` ms.
fn busy_stream(h: &mut Harness, publisher: ConnId, from: usize, n: usize) {
    for i in from..from + n {
        publish_on(h, publisher, "t", &i.to_string());
        h.advance_busy(MS, MS);
    }
}

#[test]
fn light_load_writes_every_delivery_in_its_turn() {
    let mut h = Harness::new(|_| {});
    let id = subscribe(&mut h, "t");
    let publisher = h.net.connect();
    // 100 publishes/s for 2 s with the reactor on the CPU 10% of the time.
    for i in 0..200 {
        publish_on(&mut h, publisher, "t", &i.to_string());
        h.advance_busy(10 * MS, MS);
        assert_eq!(h.texts(id), [delivery("t", i)], "written in its own turn");
        assert_eq!(h.batch_delay(), Duration::ZERO);
    }
    let latency = h.publish_to_write();
    assert_eq!(latency.len(), 200);
    assert_eq!(latency.max(), 1, "no sample waited (1 µs is the floor)");
}

#[test]
fn busy_reactor_batches_within_the_bound_and_loses_nothing() {
    let max = 20 * MS;
    let mut h = Harness::new(|c| c.pubsub.max_batch_delay = max);
    let subs: Vec<ConnId> = (0..3).map(|_| subscribe(&mut h, "t")).collect();
    let sends_before: Vec<usize> = subs.iter().map(|&id| h.net.sends(id)).collect();
    let publisher = h.net.connect();
    let mut most = Duration::ZERO;
    for second in 0..2 {
        for i in 0..1000 {
            busy_stream(&mut h, publisher, second * 1000 + i, 1);
            most = most.max(h.batch_delay());
        }
    }
    // The stream stops; what still waits leaves by its deadline, no later: the loop
    // wakes up for it.
    // The delay that brings the load down, within the bound.
    let settled = h.batch_delay();
    assert!(settled > Duration::ZERO && settled <= max, "{settled:?}");
    let end = clock() + max;
    while let Some(due) = h.reactor.core.corked.due() {
        let wake = h.reactor.core.wake_at();
        assert!(due <= wake && wake <= end, "a slot waits past the bound");
        h.advance(wake - clock());
    }
    assert!(most > Duration::ZERO && most <= max, "{most:?}");
    let expected: Vec<String> = (0..2000).map(|i| delivery("t", i)).collect();
    for (&id, before) in subs.iter().zip(sends_before) {
        assert_eq!(h.texts(id), expected, "every delivery, in order");
        let writes = h.net.sends(id) - before;
        assert!(writes * 4 < 2000, "{writes} writes for 2,000 frames");
    }
    let latency = h.publish_to_write();
    assert_eq!(latency.len(), 2000);
    assert!(latency.max() > 1, "frames did wait");
    assert!(
        latency.max() <= latency.highest_equivalent(max.as_micros() as u64),
        "a frame waited {} µs, over the bound",
        latency.max()
    );
    let gauge = ReactorMetrics::get(&h.metrics().batch_delay_us);
    assert_eq!(gauge, h.batch_delay().as_micros() as u64);
    // Calm again: batching winds down and deliveries leave in their turn.
    for _ in 0..20 {
        h.advance(50 * MS);
    }
    assert_eq!(h.batch_delay(), Duration::ZERO);
    publish_on(&mut h, publisher, "t", "2000");
    h.turn();
    for &id in &subs {
        assert_eq!(h.texts(id), [delivery("t", 2000)]);
    }
}

/// A fan-out gives every subscriber its frames at the same instants; a busy reactor
/// spreads their writes over the delay (cork.rs) rather than making them all at once, and
/// the publish counts as written when its last subscriber's write is.
#[test]
fn busy_reactor_spreads_a_fan_out_over_the_delay() {
    let max = 20 * MS;
    let mut h = Harness::new(|c| c.pubsub.max_batch_delay = max);
    let subs: Vec<ConnId> = (0..32).map(|_| subscribe(&mut h, "t")).collect();
    let publisher = h.net.connect();
    busy_stream(&mut h, publisher, 0, 300);
    let delay = h.batch_delay();
    assert!(delay >= MS, "busy: batching, {delay:?}");
    // Everything corked so far leaves; then one more publish.
    while h.reactor.core.corked.due().is_some() {
        let wake = h.reactor.core.wake_at();
        h.advance(wake - clock());
    }
    for &id in &subs {
        let _ = h.texts(id);
    }
    let earlier = h.publish_to_write();
    let before = earlier.len();
    publish_on(&mut h, publisher, "t", "300");
    h.turn();
    let published = clock();
    let mut reached = vec![];
    while h.reactor.core.corked.due().is_some() {
        let wake = h.reactor.core.wake_at();
        assert!(wake <= published + max, "past the bound");
        h.advance(wake - clock());
        let now: usize = subs.iter().map(|&id| h.texts(id).len()).sum();
        reached.push(now);
    }
    let total: usize = reached.iter().sum();
    assert_eq!(total, 32, "each subscriber once: {reached:?}");
    assert!(reached.len() >= 2, "in several turns: {reached:?}");
    assert!(reached.iter().all(|&n| n <= 16), "{reached:?}");
    let latency = h.publish_to_write();
    assert_eq!(
        latency.len(),
        before + 1,
        "one sample, when the last one left"
    );
    let waited = clock().saturating_duration_since(published).as_micros() as u64;
    let (low, high) = (
        latency.lowest_equivalent(waited),
        latency.highest_equivalent(waited),
    );
    assert_eq!(
        latency.count_between(low, high) - earlier.count_between(low, high),
        1,
        "{waited} µs: to the last write"
    );
}

#[test]
fn batching_stays_off_when_subscribers_receive_too_rarely() {
    let mut h = Harness::new(|c| c.pubsub.max_batch_delay = 20 * MS);
    let id = subscribe(&mut h, "t");
    let publisher = h.net.connect();
    // Busy with something else; this topic gets a publish every 50 ms: no delay within
    // 20 ms could put two of its frames in one write, and the rate says so before any
    // delivery waits.
    for i in 0..40 {
        publish_on(&mut h, publisher, "t", &i.to_string());
        h.advance_busy(MS, MS);
        for _ in 0..49 {
            h.advance_busy(MS, MS);
            assert_eq!(h.batch_delay(), Duration::ZERO);
        }
        assert_eq!(h.texts(id), [delivery("t", i)]);
    }
    let latency = h.publish_to_write();
    assert_eq!(latency.len(), 40);
    assert_eq!(latency.max(), 1, "no delivery waited");
}

#[test]
fn replies_do_not_wait_for_the_batching_delay() {
    let mut h = Harness::new(|c| c.pubsub.max_batch_delay = 20 * MS);
    let id = subscribe(&mut h, "t");
    let publisher = h.net.connect();
    busy_stream(&mut h, publisher, 0, 200);
    assert!(h.batch_delay() > Duration::ZERO, "busy: batching");
    h.advance(20 * MS);
    let _ = h.texts(id);
    publish_on(&mut h, publisher, "t", "1");
    h.turn();
    assert!(h.net.read(id).is_empty(), "the delivery waits");
    // A ping's pong leaves at once and takes the waiting delivery with it.
    h.send_frame(id, 0x9, b"p");
    h.turn();
    let frames = h.frames(id);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].1, delivery("t", 1).as_bytes());
    assert_eq!(frames[1], (OpCode::Pong, b"p".to_vec()));
}

/// Regression: a publish whose only waiting subscriber a reply flushed was sampled when
/// the emptied slot's tick came, up to 1.25 times the delay after its frame had left.
#[test]
fn a_delivery_a_reply_takes_along_is_sampled_when_it_leaves() {
    let mut h = Harness::new(|c| c.pubsub.max_batch_delay = 20 * MS);
    let id = subscribe(&mut h, "t");
    let publisher = h.net.connect();
    batching_and_settled(&mut h, publisher, &[id]);
    let before = h.publish_to_write().len();
    publish_on(&mut h, publisher, "t", "1");
    h.turn();
    assert!(h.net.read(id).is_empty(), "the delivery waits");
    assert!(h.reactor.core.corked.due().is_some());
    // Half a millisecond later a ping comes; its pong takes the delivery along.
    let at = Duration::from_micros(500);
    h.send_frame(id, 0x9, b"p");
    h.advance(at);
    assert_eq!(h.frames(id).len(), 2);
    assert!(
        h.reactor.core.corked.due().is_none(),
        "nothing waits in the slot any more"
    );
    let latency = h.publish_to_write();
    assert_eq!(latency.len(), before + 1, "sampled in the pong's turn");
    let us = at.as_micros() as u64;
    assert_eq!(
        latency.count_between(
            latency.lowest_equivalent(us),
            latency.highest_equivalent(us)
        ),
        1,
        "sampled when it left"
    );
}

/// A connection that is gone while it waits leaves its slot; the publish is sampled when
/// the last subscriber that does wait leaves, not earlier.
#[test]
fn a_slot_empties_when_its_connections_leave_early() {
    let mut h = Harness::new(|c| c.pubsub.max_batch_delay = 20 * MS);
    let subs: Vec<ConnId> = (0..2).map(|_| subscribe(&mut h, "t")).collect();
    let publisher = h.net.connect();
    batching_and_settled(&mut h, publisher, &subs);
    let before = h.publish_to_write().len();
    publish_on(&mut h, publisher, "t", "1");
    h.turn();
    // One subscriber's pong takes its delivery; the other's still waits.
    h.send_frame(subs[0], 0x9, b"p");
    h.advance(MS);
    assert_eq!(h.frames(subs[0]).len(), 2);
    assert!(h.net.read(subs[1]).is_empty(), "still waits");
    assert_eq!(h.publish_to_write().len(), before, "not written to all yet");
    // The other one hangs up: nothing is left to wait for.
    h.net.shutdown(subs[1]);
    h.advance(MS);
    h.turn();
    assert!(h.reactor.core.corked.due().is_none());
    assert_eq!(h.publish_to_write().len(), before + 1);
}

/// Batching on, then everything that waits has left.
fn batching_and_settled(h: &mut Harness, publisher: ConnId, subs: &[ConnId]) {
    busy_stream(h, publisher, 0, 300);
    assert!(h.batch_delay() > Duration::ZERO, "busy: batching");
    while h.reactor.core.corked.due().is_some() {
        let wake = h.reactor.core.wake_at();
        h.advance(wake - clock());
    }
    for &id in subs {
        let _ = h.texts(id);
    }
}

/// Regression: a pong queued behind a write in flight was held back by the next
/// delivery's batch (the completion does not flush a connection that waits for its slot).
#[test]
fn a_reply_behind_a_write_in_flight_does_not_wait_for_a_batch() {
    let mut h = Harness::new(|c| c.pubsub.max_batch_delay = 20 * MS);
    let id = subscribe(&mut h, "t");
    let publisher = h.net.connect();
    batching_and_settled(&mut h, publisher, &[id]);
    // A delivery whose write stalls: it stays in flight.
    h.net.set_window(id, 0);
    publish_on(&mut h, publisher, "t", "1");
    h.turn();
    while h.reactor.core.corked.due().is_some() {
        let wake = h.reactor.core.wake_at();
        h.advance(wake - clock());
    }
    // A ping's pong queues behind it, then another delivery comes.
    h.send_frame(id, 0x9, b"p");
    h.turn();
    publish_on(&mut h, publisher, "t", "2");
    h.turn();
    // The write completes: what queued behind it leaves in the same turn, no later.
    h.net.set_window(id, 1 << 20);
    let mut wire = h.net.read(id);
    h.turn();
    wire.extend(h.net.read(id));
    let frames: Vec<(OpCode, Vec<u8>)> = parse_frames(&wire);
    assert_eq!(
        frames,
        [
            (OpCode::Text, delivery("t", 1).into_bytes()),
            (OpCode::Pong, b"p".to_vec()),
            (OpCode::Text, delivery("t", 2).into_bytes()),
        ]
    );
}

/// Regression: a slow consumer's 1008 close waited for the connection's batch.
#[test]
fn a_slow_consumer_close_does_not_wait_for_a_batch() {
    let mut h = Harness::new(|c| {
        c.pubsub.max_batch_delay = 20 * MS;
        // Above what a settled stream queues (up to 20 frames of about 30 bytes).
        c.limits.max_outbound_bytes = 1000;
    });
    let id = subscribe(&mut h, "t");
    let publisher = h.net.connect();
    batching_and_settled(&mut h, publisher, &[id]);
    // Deliveries wait for the slot and fill the queue past the cap in one turn.
    for i in 0..10 {
        http_publish(&mut h, "t", &format!("\"{}\"", "x".repeat(120 + i)));
    }
    h.turn();
    let frames = h.frames(id);
    let last = frames.last().expect("written in this turn");
    assert_eq!(last.0, OpCode::Close, "{frames:?}");
    assert_eq!(close_code(&last.1), 1008);
}

#[test]
fn zero_max_batch_delay_never_batches() {
    let mut h = Harness::new(|c| c.pubsub.max_batch_delay = Duration::ZERO);
    let id = subscribe(&mut h, "t");
    let publisher = h.net.connect();
    for i in 0..300 {
        publish_on(&mut h, publisher, "t", &i.to_string());
        h.advance_busy(MS, MS);
        assert_eq!(h.texts(id), [delivery("t", i)]);
    }
    assert_eq!(h.batch_delay(), Duration::ZERO);
}

/// A clustered reactor whose bridge thread does not run: the test plays the bridge.
fn clustered() -> Harness {
    let h = Harness::new(|c| {
        c.cluster.urls = vec!["nats://127.0.0.1:1".into()];
        c.cluster.confirm_timeout = Duration::from_secs(2);
    });
    let link = h.reactor.core.shared.cluster.clone().expect("clustered");
    link.stats
        .connected
        .store(true, std::sync::atomic::Ordering::Release);
    h
}

#[test]
fn a_subscribe_ok_waits_for_the_bridge_to_confirm() {
    let mut h = clustered();
    let (a, b) = (h.websocket("/ws"), h.websocket("/ws"));
    h.send_text(a, r#"{"op":"subscribe","topic":"t","id":1}"#);
    h.send_text(b, r#"{"op":"subscribe","topic":"t","id":2}"#);
    h.turn();
    h.turn();
    assert!(h.texts(a).is_empty() && h.texts(b).is_empty(), "held");
    // Other ops are answered meanwhile.
    h.send_text(a, r#"{"op":"subscribe","topic":"u","id":3}"#);
    h.send_text(a, r#"{"op":"unsubscribe","topic":"zz","id":4}"#);
    h.turn();
    assert_eq!(h.texts(a), [r#"{"op":"ok","id":4}"#]);
    h.reactor.core.shared.fanout.confirm(&"t".into());
    h.turn();
    h.turn();
    assert_eq!(h.texts(a), [r#"{"op":"ok","id":1}"#]);
    assert_eq!(h.texts(b), [r#"{"op":"ok","id":2}"#]);
    // Confirmed stays confirmed: the next subscriber is answered at once.
    let c = h.websocket("/ws");
    h.send_text(c, r#"{"op":"subscribe","topic":"t","id":5}"#);
    h.turn();
    assert_eq!(h.texts(c), [r#"{"op":"ok","id":5}"#]);
    // Never confirmed: sent at the timeout, and counted.
    h.advance(Duration::from_millis(1900));
    assert!(h.texts(a).is_empty());
    h.advance(Duration::from_millis(200));
    assert_eq!(h.texts(a), [r#"{"op":"ok","id":3}"#]);
    let link = h.reactor.core.shared.cluster.clone().unwrap();
    assert_eq!(ReactorMetrics::get(&link.stats.unconfirmed), 1);
}

/// A client that repeats a subscribe with long ids while the topic waits for NATS cannot
/// make the reactor hold replies without bound: past `max_outbound_bytes` of held replies
/// the next is sent at once, counted as unconfirmed.
#[test]
fn held_oks_are_bounded_by_the_outbound_cap() {
    let mut h = clustered();
    let a = h.websocket("/ws");
    let id = "x".repeat(60_000);
    let reply = format!(r#"{{"op":"ok","id":"{id}"}}"#).len();
    for _ in 0..40 {
        h.send_text(
            a,
            &format!(r#"{{"op":"subscribe","topic":"t","id":"{id}"}}"#),
        );
        h.turn();
    }
    let cap = h.reactor.core.shared.config.limits.max_outbound_bytes;
    let held = h.reactor.core.held.len();
    assert!(
        h.reactor.core.held_bytes <= cap,
        "{}",
        h.reactor.core.held_bytes
    );
    assert_eq!(held, cap / reply, "held until the cap");
    assert_eq!(h.texts(a).len(), 40 - held, "the rest answered at once");
    let link = h.reactor.core.shared.cluster.clone().unwrap();
    assert_eq!(
        ReactorMetrics::get(&link.stats.unconfirmed),
        (40 - held) as u64
    );
    // Confirmed: the held ones follow, and the count of held bytes is back to 0.
    h.reactor.core.shared.fanout.confirm(&"t".into());
    h.turn();
    h.turn();
    assert_eq!(h.texts(a).len(), held);
    assert_eq!(h.reactor.core.held_bytes, 0);
}

#[test]
fn a_held_ok_is_dropped_with_its_connection_and_not_held_while_disconnected() {
    let mut h = clustered();
    let a = h.websocket("/ws");
    h.send_text(a, r#"{"op":"subscribe","topic":"t","id":1}"#);
    h.turn();
    h.net.shutdown(a);
    h.turn();
    h.turn();
    assert!(h.reactor.core.held.is_empty(), "gone with the connection");
    let link = h.reactor.core.shared.cluster.clone().unwrap();
    link.stats
        .connected
        .store(false, std::sync::atomic::Ordering::Release);
    let b = h.websocket("/ws");
    h.send_text(b, r#"{"op":"subscribe","topic":"v","id":2}"#);
    h.turn();
    assert_eq!(h.texts(b), [r#"{"op":"ok","id":2}"#], "nothing to wait for");
}

/// Issue 12: a /ws client over its message rate gets `rate_limited` replies, and is closed
/// with 1008 when it keeps going; its neighbour on the same reactor loses nothing.
#[test]
fn a_flooding_client_is_limited_then_closed_and_its_neighbour_unaffected() {
    let mut h = Harness::new(|c| {
        c.pubsub.client_publish = vec!["*".into()];
        c.rate.messages = crate::limits::Rate::new(10, 3);
        c.rate.max_rate_limited = 2;
    });
    let neighbour = subscribe(&mut h, "t");
    let flooder = h.websocket("/ws");
    for i in 0..6 {
        h.send_text(
            flooder,
            &format!(r#"{{"op":"publish","topic":"t","data":{i}}}"#),
        );
    }
    h.send_text(neighbour, r#"{"op":"subscribe","topic":"u","id":7}"#);
    h.turn();
    h.turn();
    let frames = h.frames(flooder);
    let limited = r#"{"op":"error","code":"rate_limited","message":"message rate limit exceeded; slow down"}"#;
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[0], (OpCode::Text, limited.as_bytes().to_vec()));
    assert_eq!(frames[1], (OpCode::Text, limited.as_bytes().to_vec()));
    assert_eq!(frames[2].0, OpCode::Close);
    assert_eq!(close_code(&frames[2].1), 1008);
    assert_eq!(&frames[2].1[2..], b"rate limit exceeded");
    assert_eq!(
        h.texts(neighbour),
        [
            r#"{"topic":"t","data":0}"#,
            r#"{"topic":"t","data":1}"#,
            r#"{"topic":"t","data":2}"#,
            r#"{"op":"ok","id":7}"#,
        ]
    );
    assert_eq!(ReactorMetrics::get(&h.metrics().messages_rate_limited), 2);
    assert_eq!(ReactorMetrics::get(&h.metrics().rate_limit_closes), 1);
    // What the flooder sends after the close is left unread: the server stops reading it.
    assert!(
        !h.net.receiving(flooder),
        "still reading a flooder after its close"
    );
    h.send_text(flooder, r#"{"op":"publish","topic":"t","data":9}"#);
    h.turn();
    assert!(h.net.fin(flooder), "FIN after the close frame");
    assert!(h.texts(neighbour).is_empty());
}

/// Back under the rate, a client's messages pass again and its refusals are forgotten.
#[test]
fn the_message_rate_refills_with_the_clock() {
    let mut h = Harness::new(|c| {
        c.rate.messages = crate::limits::Rate::new(10, 1);
        c.rate.max_rate_limited = 1;
    });
    let id = h.websocket("/ws");
    let op = |i: u32| format!(r#"{{"op":"subscribe","topic":"t{i}","id":{i}}}"#);
    for i in 0..10 {
        h.send_text(id, &op(2 * i));
        h.send_text(id, &op(2 * i + 1));
        h.turn();
        let texts = h.texts(id);
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert_eq!(texts[0], format!(r#"{{"op":"ok","id":{}}}"#, 2 * i));
        assert!(texts[1].contains("rate_limited"), "{texts:?}");
        h.advance(Duration::from_millis(100));
    }
}

#[test]
fn subscribe_ops_are_rate_limited_with_their_id() {
    let mut h = Harness::new(|c| c.rate.subscribe_ops = crate::limits::Rate::new(2, 2));
    let id = h.websocket("/ws?subscribe=a,b,c");
    h.send_text(id, r#"{"op":"subscribe","topic":"x","id":1}"#);
    h.send_text(id, r#"{"op":"unsubscribe","topic":"a","id":2}"#);
    h.send_text(id, r#"{"op":"subscribe","topic":"y","id":3}"#);
    h.turn();
    assert_eq!(
        h.texts(id),
        [
            r#"{"op":"ok","id":1}"#,
            r#"{"op":"ok","id":2}"#,
            r#"{"op":"error","id":3,"code":"rate_limited","message":"too many subscribe and unsubscribe ops; slow down"}"#,
        ],
        "?subscribe= at the upgrade is not charged"
    );
    assert!(h.reactor.core.topics.find("y").is_none());
    assert_eq!(ReactorMetrics::get(&h.metrics().ops_rate_limited), 1);
    h.advance(Duration::from_millis(500));
    h.send_text(id, r#"{"op":"subscribe","topic":"y","id":4}"#);
    h.turn();
    assert_eq!(h.texts(id), [r#"{"op":"ok","id":4}"#]);
}

/// Issue 12: connections per client IP (the memory driver's peers are all 127.0.0.1).
#[test]
fn connections_per_ip_get_429_and_closing_frees_a_slot() {
    let mut h = Harness::new(|c| c.rate.max_connections_per_ip = 2);
    let a = h.websocket("/ws");
    let _b = h.websocket("/echo");
    let refused = h.net.connect();
    h.net
        .send(refused, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    h.turn();
    let response = String::from_utf8(h.net.read(refused)).unwrap();
    assert!(response.starts_with("HTTP/1.1 429 "), "{response}");
    assert!(response.contains("\r\nRetry-After: 1\r\n"), "{response}");
    assert!(response.ends_with(
        r#"{"error":"rate_limited","message":"too many connections from this address"}"#
    ));
    assert_eq!(ReactorMetrics::get(&h.metrics().ip_limited), 1);
    // The refused one was never counted; closing a counted one frees its slot.
    h.net.shutdown(a);
    for _ in 0..4 {
        h.turn();
    }
    assert!(h.net.closed(a));
    h.websocket("/ws");
    assert_eq!(h.reactor.core.shared.clients.len(), 1);
}

#[test]
fn new_connections_per_ip_per_second_get_429_with_retry_after() {
    let mut h = Harness::new(|c| c.rate.connects = crate::limits::Rate::new(2, 2));
    h.websocket("/ws");
    h.websocket("/ws");
    let refused = h.net.connect();
    h.net
        .send(refused, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    h.turn();
    let response = String::from_utf8(h.net.read(refused)).unwrap();
    assert!(response.starts_with("HTTP/1.1 429 "), "{response}");
    assert!(response.contains("\r\nRetry-After: 1\r\n"), "{response}");
    assert_eq!(ReactorMetrics::get(&h.metrics().ip_rate_limited), 1);
    // One more fits 500 ms on (the table's clock started a moment after the harness's).
    h.advance(Duration::from_millis(600));
    h.websocket("/ws");
}

const SECRET: &[u8] = b"reactor test secret";

/// Verifies HS256 tokens signed with `SECRET`; no pings (the test peers do not answer).
fn with_tokens(c: &mut Config, test: &str) {
    let path = std::env::temp_dir().join(format!("wsgate-{}-{test}", std::process::id()));
    std::fs::write(&path, SECRET).unwrap();
    let mut auth = c.auth.clone();
    auth.jwt_secret_file = Some(path.to_str().unwrap().to_owned());
    c.auth.verifier = crate::auth::Verifier::from_config(&auth)
        .unwrap()
        .map(std::sync::Arc::new);
    std::fs::remove_file(path).unwrap();
    c.limits.pubsub.idle_timeout = None;
}

fn sign(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// A token for `sub` valid for `secs` more seconds (by the wall clock), that may
/// subscribe to `topics`.
fn token(sub: &str, secs: i64, topics: &[&str]) -> String {
    let exp = crate::auth::unix_now() as i64 + secs;
    sign(serde_json::json!({"sub": sub, "exp": exp, "subscribe": topics}))
}

/// Issue 12: at `exp` (plus the leeway) the timer sweep closes the connection with 1008.
#[test]
fn a_connection_is_closed_when_its_token_expires() {
    let mut h = Harness::new(|c| with_tokens(c, "expiry"));
    let id = h.websocket(&format!("/ws?token={}", token("alice", 100, &["a"])));
    let other = h.websocket("/ws");
    let leeway = crate::auth::LEEWAY_SECS;
    h.advance(Duration::from_secs(100 + leeway - 2));
    assert!(h.frames(id).is_empty(), "still valid within the leeway");
    h.advance(Duration::from_secs(2));
    let frames = h.frames(id);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(close_code(&frames[0].1), 1008);
    assert_eq!(&frames[0].1[2..], b"token expired");
    assert_eq!(ReactorMetrics::get(&h.metrics().token_expired_closes), 1);
    h.advance(Duration::from_secs(1));
    assert!(h.frames(id).is_empty(), "closed once");
    assert!(
        h.frames(other).is_empty(),
        "a connection without a token stays"
    );
}

/// A step of the system clock reaches the tokens at the next sweep: before, token time was
/// the start's wall clock plus monotonic time for the reactor's whole life, so a clock set
/// right by NTP after the start (one that was wrong at boot) was never seen.
#[test]
fn token_expiry_follows_a_step_of_the_wall_clock() {
    let mut h = Harness::new(|c| with_tokens(c, "expiry"));
    let id = h.websocket(&format!("/ws?token={}", token("alice", 100, &["a"])));
    let tick = h.reactor.core.tick;
    // Back an hour: the token has 3,700 s left by the clock, and nothing happens.
    h.step_wall(false, Duration::from_secs(3600));
    h.advance(Duration::from_secs(200));
    assert!(h.frames(id).is_empty(), "not expired by the clock set back");
    // Forward two hours: an hour past its `exp`.
    h.step_wall(true, Duration::from_secs(7200));
    h.advance(tick);
    let frames = h.frames(id);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(close_code(&frames[0].1), 1008);
    assert_eq!(&frames[0].1[2..], b"token expired");
}

/// A refresh before `exp` extends the connection; its permissions become the new token's.
#[test]
fn a_refresh_extends_the_connection_and_replaces_its_permissions() {
    let mut h = Harness::new(|c| with_tokens(c, "refresh"));
    let id = h.websocket(&format!(
        "/ws?subscribe=a,b&token={}",
        token("alice", 100, &["a", "b"])
    ));
    h.advance(Duration::from_secs(90));
    let refresh = |t: &str, id: u32| format!(r#"{{"op":"refresh","token":"{t}","id":{id}}}"#);
    h.send_text(id, &refresh(&token("alice", 1000, &["b", "c"]), 1));
    h.send_text(id, &refresh(&token("bob", 1000, &["a"]), 2));
    h.send_text(id, &refresh("not.a.jwt", 3));
    h.send_text(id, &refresh(&token("alice", -3600, &["a"]), 4));
    h.send_text(id, r#"{"op":"subscribe","topic":"a","id":5}"#);
    h.send_text(id, r#"{"op":"subscribe","topic":"c","id":6}"#);
    h.turn();
    assert_eq!(
        h.texts(id),
        [
            r#"{"op":"ok","id":1}"#,
            r#"{"op":"error","id":2,"code":"unauthorized","message":"token names another subject"}"#,
            r#"{"op":"error","id":3,"code":"unauthorized","message":"malformed token"}"#,
            r#"{"op":"error","id":4,"code":"unauthorized","message":"token expired"}"#,
            r#"{"op":"error","id":5,"code":"forbidden","message":"subscribing to this topic is not allowed"}"#,
            r#"{"op":"ok","id":6}"#,
        ]
    );
    assert!(
        h.reactor.core.topics.find("a").is_none(),
        "no longer allowed: dropped"
    );
    assert!(h.reactor.core.topics.find("b").is_some());
    assert_eq!(ReactorMetrics::get(&h.metrics().token_refreshes), 1);
    // Past the first token's expiry the connection stays; past the second's it closes.
    h.advance(Duration::from_secs(100));
    assert!(h.frames(id).is_empty());
    h.advance(Duration::from_secs(1000));
    let frames = h.frames(id);
    assert_eq!(close_code(&frames[0].1), 1008);
}

#[test]
fn a_refresh_needs_a_token_to_replace() {
    let mut h = Harness::new(|c| with_tokens(c, "no-token"));
    let id = h.websocket("/ws");
    let t = token("alice", 100, &["a"]);
    h.send_text(id, &format!(r#"{{"op":"refresh","token":"{t}"}}"#));
    h.turn();
    assert_eq!(
        h.texts(id),
        [
            r#"{"op":"error","code":"bad_request","message":"the connection has no token to refresh"}"#
        ]
    );
}
