//! /ws pub/sub, HTTP publish, fan-out across reactors, slow consumers and metrics.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tungstenite::Message;
use util::*;
use wsgate::metrics::ReactorMetrics;

/// The next text message as JSON (pings and pongs are skipped).
fn next_json(ws: &mut Client) -> Value {
    loop {
        match recv(ws) {
            Message::Text(text) => return serde_json::from_str(&text).expect("valid json"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

fn send_json(ws: &mut Client, value: Value) {
    ws.send(Message::text(value.to_string())).unwrap();
}

/// Sends a control message with an id and asserts the `ok`.
fn op_ok(ws: &mut Client, mut value: Value) {
    value["id"] = json!(77);
    send_json(ws, value);
    assert_eq!(next_json(ws), json!({"op": "ok", "id": 77}));
}

fn error_code(ws: &mut Client, text: &str) -> Value {
    ws.send(Message::text(text)).unwrap();
    let reply = next_json(ws);
    assert_eq!(reply["op"], "error", "{text} → {reply}");
    reply["code"].clone()
}

/// A keep-alive HTTP connection for publishing.
struct Publisher {
    stream: TcpStream,
    token: Option<String>,
}

impl Publisher {
    fn new(server: &TestServer, token: Option<&str>) -> Self {
        Self {
            stream: tcp(server),
            token: token.map(str::to_owned),
        }
    }

    fn publish(&mut self, topic: &str, body: &str) -> Response {
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).unwrap();
        read_response(&mut self.stream)
    }
}

fn total(
    server: &TestServer,
    counter: fn(&ReactorMetrics) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    server
        .server()
        .shared()
        .metrics
        .iter()
        .map(|m| ReactorMetrics::get(counter(m)))
        .sum()
}

/// Waits until `done` holds, failing after the test timeout (no fixed sleeps).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

for_each_driver! {
    fn subscribe_publish_unsubscribe(io: IoBackend) {
        let server = TestServer::start(io, |c| c.pubsub.client_publish = Some(vec!["chat.*".into()]));
        let mut alice = connect(&server, "/ws");
        let mut bob = connect(&server, "/ws");
        op_ok(&mut alice, json!({"op": "subscribe", "topic": "chat.room"}));
        op_ok(&mut bob, json!({"op": "subscribe", "topic": "chat.room"}));
        op_ok(&mut bob, json!({"op": "publish", "topic": "chat.room", "data": {"text": "hi", "n": [1, 2]}}));
        let delivery = json!({"topic": "chat.room", "data": {"text": "hi", "n": [1, 2]}});
        assert_eq!(next_json(&mut alice), delivery);
        assert_eq!(next_json(&mut bob), delivery, "publishers get their own message when subscribed");
        // Without an id, ops succeed silently.
        send_json(&mut alice, json!({"op": "unsubscribe", "topic": "chat.room"}));
        op_ok(&mut alice, json!({"op": "subscribe", "topic": "chat.marker"}));
        send_json(&mut bob, json!({"op": "publish", "topic": "chat.room", "data": 1}));
        send_json(&mut bob, json!({"op": "publish", "topic": "chat.marker", "data": 2}));
        assert_eq!(next_json(&mut alice), json!({"topic": "chat.marker", "data": 2}), "unsubscribed: no chat.room");
        assert_eq!(next_json(&mut bob), json!({"topic": "chat.room", "data": 1}));
    }

    fn subscribe_in_the_upgrade_url(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut ws = connect(&server, "/ws?subscribe=a,b%2Fc&other=1");
        let mut publisher = Publisher::new(&server, None);
        assert_eq!(publisher.publish("b/c", "\"x\"").status, 202);
        assert_eq!(publisher.publish("a", "{\"y\":true}").status, 202);
        assert_eq!(next_json(&mut ws), json!({"topic": "b/c", "data": "x"}));
        assert_eq!(next_json(&mut ws), json!({"topic": "a", "data": {"y": true}}));
        assert_eq!(http(&server, &upgrade_request("/ws?subscribe=bad%20topic", "")).status, 400);
        let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        let r = http(&server, &upgrade_request(&format!("/ws?subscribe={}", many.join(",")), ""));
        assert_eq!(r.status, 400, "over max_subscriptions");
    }

    fn every_subscriber_on_every_reactor_gets_every_message_once_in_order(io: IoBackend) {
        const PUBLISHERS: usize = 4;
        const MESSAGES: usize = 300;
        let server = TestServer::start(io, |c| c.pubsub.client_publish = Some(vec!["*".into()]));
        let mut subscribers: Vec<Client> = (0..24).map(|_| connect(&server, "/ws?subscribe=feed")).collect();
        let per_reactor: Vec<u64> =
            server.server().shared().metrics.iter().map(|m| ReactorMetrics::get(&m.handshakes_ok)).collect();
        assert!(per_reactor.iter().all(|&n| n > 0), "subscribers on every reactor: {per_reactor:?}");
        // Half the publishers over HTTP, half as /ws clients, all at once.
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let addr = server.addr;
                let url = server.url("/ws");
                std::thread::spawn(move || {
                    let body = |s: usize| json!({"p": p, "s": s}).to_string();
                    if p % 2 == 0 {
                        let stream = TcpStream::connect(addr).unwrap();
                        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                        let mut publisher = Publisher { stream, token: None };
                        for s in 0..MESSAGES {
                            assert_eq!(publisher.publish("feed", &body(s)).status, 202);
                        }
                    } else {
                        let (mut ws, _) = tungstenite::connect(url).unwrap();
                        for s in 0..MESSAGES {
                            let op = json!({"op": "publish", "topic": "feed", "data": {"p": p, "s": s}});
                            ws.send(Message::text(op.to_string())).unwrap();
                        }
                        ws.close(None).unwrap();
                        while ws.read().is_ok() {}
                    }
                })
            })
            .collect();
        for ws in &mut subscribers {
            let mut next = [0usize; PUBLISHERS];
            for _ in 0..PUBLISHERS * MESSAGES {
                let m = next_json(ws);
                assert_eq!(m["topic"], "feed");
                let (p, s) = (m["data"]["p"].as_u64().unwrap() as usize, m["data"]["s"].as_u64().unwrap() as usize);
                assert_eq!(s, next[p], "publisher {p}: in order, no loss, no duplicate");
                next[p] += 1;
            }
        }
        for p in publishers {
            p.join().unwrap();
        }
        // Nothing extra is pending: the next message is a marker published last.
        Publisher::new(&server, None).publish("feed", "\"end\"");
        for ws in &mut subscribers {
            assert_eq!(next_json(ws), json!({"topic": "feed", "data": "end"}));
        }
        assert_eq!(total(&server, |m| &m.deliveries), 24 * (PUBLISHERS * MESSAGES + 1) as u64);
    }

    fn slow_consumer_is_closed_while_others_get_everything(io: IoBackend) {
        slow_consumer(io, "close");
    }

    fn slow_consumer_is_skipped_under_drop_policy(io: IoBackend) {
        slow_consumer(io, "drop");
    }

    fn http_publish_statuses(io: IoBackend) {
        let server = TestServer::start(io, |c| {
            c.http.publish_token = Some(Some("s3cret".into()));
            c.limits.max_publish_bytes = Some(1024);
        });
        let mut ws = connect(&server, "/ws?subscribe=t");
        assert_eq!(Publisher::new(&server, None).publish("t", "1").status, 401);
        let r = Publisher::new(&server, Some("wrong")).publish("t", "1");
        assert_eq!((r.status, r.header("www-authenticate")), (401, Some("Bearer")));
        let mut good = Publisher::new(&server, Some("s3cret"));
        for i in 0..5 {
            let r = good.publish("t", &i.to_string());
            assert_eq!(r.status, 202, "keep-alive publish {i}");
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body, json!({"ok": true, "topic": "t"}));
        }
        for i in 0..5 {
            assert_eq!(next_json(&mut ws), json!({"topic": "t", "data": i}));
        }
        assert_eq!(good.publish("t", "{not json").status, 400);
        assert_eq!(good.publish("bad%20topic", "1").status, 400);
        let big = format!("\"{}\"", "x".repeat(2000));
        assert_eq!(Publisher::new(&server, Some("s3cret")).publish("t", &big).status, 413);
        let r = http(&server, "GET /publish/t HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
        assert_eq!(total(&server, |m| &m.publishes), 5);
    }

    fn bad_control_messages_get_errors_and_the_connection_stays(io: IoBackend) {
        let server = TestServer::start(io, |c| {
            c.limits.max_subscriptions = Some(2);
            c.pubsub.client_publish = Some(vec!["open.*".into()]);
        });
        let mut ws = connect(&server, "/ws");
        assert_eq!(error_code(&mut ws, "{not json"), "bad_json");
        assert_eq!(error_code(&mut ws, "[1]"), "bad_request");
        assert_eq!(error_code(&mut ws, r#"{"op":"dance"}"#), "unknown_op");
        assert_eq!(error_code(&mut ws, r#"{"op":"subscribe"}"#), "bad_request");
        assert_eq!(error_code(&mut ws, r#"{"op":"subscribe","topic":7}"#), "bad_request");
        assert_eq!(error_code(&mut ws, r#"{"op":"subscribe","topic":"no spaces"}"#), "invalid_topic");
        let long = format!(r#"{{"op":"subscribe","topic":"{}"}}"#, "a".repeat(129));
        assert_eq!(error_code(&mut ws, &long), "invalid_topic");
        assert_eq!(error_code(&mut ws, r#"{"op":"publish","topic":"closed.x","data":1}"#), "forbidden");
        assert_eq!(error_code(&mut ws, r#"{"op":"publish","topic":"open.x"}"#), "bad_request");
        let reply = {
            ws.send(Message::text(r#"{"op":"dance","id":"q1"}"#)).unwrap();
            next_json(&mut ws)
        };
        assert_eq!(reply["id"], "q1", "errors carry the id");
        ws.send(Message::binary(vec![1u8, 2])).unwrap();
        assert_eq!(next_json(&mut ws)["code"], "bad_request");
        op_ok(&mut ws, json!({"op": "subscribe", "topic": "a"}));
        op_ok(&mut ws, json!({"op": "subscribe", "topic": "a"}));
        op_ok(&mut ws, json!({"op": "subscribe", "topic": "b"}));
        assert_eq!(error_code(&mut ws, r#"{"op":"subscribe","topic":"c"}"#), "too_many_subscriptions");
        op_ok(&mut ws, json!({"op": "publish", "topic": "open.x", "data": null}));
        assert_eq!(total(&server, |m| &m.protocol_errors), 0, "none of it closed the connection");
    }

    fn oversized_control_message_closes_with_1009(io: IoBackend) {
        let server = TestServer::start(io, |c| c.limits.max_publish_bytes = Some(1024));
        let mut stream = raw_upgrade(&server, "/ws");
        stream.write_all(&client_frame(true, 0x1, &vec![b' '; 8192])).unwrap();
        assert_eq!(read_close_code(&mut stream), 1009);
    }

    fn metrics_move(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut subs: Vec<Client> = (0..3).map(|_| connect(&server, "/ws?subscribe=m")).collect();
        let before = http(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(before.status, 200);
        assert!(before.header("content-type").unwrap().starts_with("text/plain"));
        let scrape = |text: &str, family: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(family) && !l.starts_with('#'))
                .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap() as u64)
                .sum()
        };
        let text = before.body_text();
        assert_eq!(scrape(&text, "wsgate_deliveries_total{"), 0);
        assert!(scrape(&text, "wsgate_connections{") >= 4, "3 subscribers and the scraper");
        assert_eq!(scrape(&text, "wsgate_handshakes_total{reactor=\"0\",result=\"ok\"}")
            + scrape(&text, "wsgate_handshakes_total{reactor=\"1\",result=\"ok\"}"), 3);
        Publisher::new(&server, None).publish("m", "42");
        for ws in &mut subs {
            assert_eq!(next_json(ws)["data"], 42);
        }
        let after = http(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body_text();
        assert_eq!(scrape(&after, "wsgate_deliveries_total{"), 3);
        assert_eq!(scrape(&after, "wsgate_publishes_total{"), 1);
        assert!(scrape(&after, "wsgate_bytes_out_total{") > scrape(&text, "wsgate_bytes_out_total{"));
        assert!(after.contains("wsgate_inbox_depth{reactor=\"1\"}"));
        assert!(after.contains("wsgate_publish_to_write_seconds{quantile=\"0.99\"}"));
    }
}

fn slow_consumer(io: wsgate::config::IoBackend, policy: &str) {
    const GOOD: usize = 100;
    const MESSAGES: usize = 400;
    let server = TestServer::start(io, |c| {
        c.limits.max_outbound_bytes = Some(64 * 1024);
        c.net.socket_send_buffer = Some(16 * 1024);
        c.pubsub.slow_consumer = Some(if policy == "close" {
            wsgate::config::SlowConsumerPolicy::Close
        } else {
            wsgate::config::SlowConsumerPolicy::Drop
        });
    });
    // The slow one: a tiny receive buffer, and it does not read.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut slow, _) = tungstenite::client(server.url("/ws?subscribe=big"), stream).unwrap();
    let received = Arc::new((0..GOOD).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
    let readers: Vec<_> = (0..GOOD)
        .map(|i| {
            let mut ws = connect(&server, "/ws?subscribe=big");
            let received = received.clone();
            std::thread::spawn(move || {
                for s in 0..MESSAGES {
                    let m = next_json(&mut ws);
                    assert_eq!(m["data"]["s"], s, "reader {i} in order");
                    received[i].fetch_add(1, Ordering::Release);
                }
            })
        })
        .collect();
    let pad = "x".repeat(1000);
    let mut publisher = Publisher::new(&server, None);
    for s in 0..MESSAGES {
        assert_eq!(
            publisher
                .publish("big", &json!({"s": s, "pad": pad}).to_string())
                .status,
            202
        );
        // Keep the good readers within reach of the cap: the test is about one consumer.
        if s % 16 == 15 {
            wait_until("readers to catch up", || {
                received.iter().all(|r| r.load(Ordering::Acquire) > s)
            });
        }
    }
    for r in readers {
        r.join()
            .expect("every good reader got every message in order");
    }
    if policy == "close" {
        assert_eq!(total(&server, |m| &m.slow_consumer_closes), 1);
        // The slow reader finds the close frame after what was already buffered for it.
        let code = loop {
            match slow.read() {
                Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        };
        assert_eq!(code, Some(1008));
    } else {
        assert!(
            total(&server, |m| &m.dropped) > 0,
            "deliveries were skipped"
        );
        assert_eq!(total(&server, |m| &m.slow_consumer_closes), 0);
        // It is still subscribed and gets what fits, in order, then a marker.
        Publisher::new(&server, None).publish("big", "\"end\"");
        let mut last = -1i64;
        loop {
            let m = next_json(&mut slow);
            if m["data"] == "end" {
                break;
            }
            let s = m["data"]["s"].as_i64().unwrap();
            assert!(s > last, "gaps, but never out of order");
            last = s;
        }
    }
}
