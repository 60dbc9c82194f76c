//! /ws pub/sub, HTTP publish, fan-out across reactors, slow consumers and metrics.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use serde_json::{json, Value};
use tungstenite::Message;
use util::*;
use wsgate::metrics::ReactorMetrics;

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
        assert_json_error(&r, 400, "too_many_subscriptions");
        // Two hex digits after `%`, nothing else (`from_str_radix` took "+4").
        let r = http(&server, &upgrade_request("/ws?subscribe=%+4", ""));
        assert!(r.body_text().contains("badly escaped"), "{}", r.body_text());
        // Refused where the list passes the limit, not after reading the rest of it (which
        // was a quadratic duplicate check over the whole list); 64 topics named again and
        // again are 64.
        let over = format!("/ws?subscribe={},bad%20topic", many.join(","));
        let r = http(&server, &upgrade_request(&over, ""));
        assert!(r.body_text().contains("too many topics"), "{}", r.body_text());
        let again = vec![many[..64].join(","); 4].join(",");
        let r = http(&server, &upgrade_request(&format!("/ws?subscribe={again}"), ""));
        assert_eq!(r.status, 101, "{}", r.body_text());
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
        // The value is held to the limit, as on /ws: whitespace around it does not count
        // (a trailing newline got 413), one byte more of value does, and that 413 leaves
        // the connection usable.
        let exact = format!("\"{}\"", "x".repeat(1022));
        assert_eq!(good.publish("t", &format!("{exact}\n")).status, 202);
        assert_eq!(next_text(&mut ws), format!(r#"{{"topic":"t","data":{exact}}}"#));
        let over = format!("\"{}\"", "x".repeat(1023));
        let r = good.publish("t", &format!(" {over}"));
        assert_json_error(&r, 413, "too_large");
        // Percent-escapes in the topic are decoded, as in `?subscribe=`.
        let mut slash = connect(&server, "/ws?subscribe=a/b");
        assert_eq!(good.publish("%61%2Fb", "2").status, 202);
        assert_eq!(next_json(&mut slash), json!({"topic": "a/b", "data": 2}));
        assert_json_error(&good.publish("%+4", "1"), 400, "invalid_topic");
        assert_json_error(&good.publish("a%2", "1"), 400, "invalid_topic");
        let r = http(&server, "GET /publish/t HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
        assert_eq!(total(&server, |m| &m.publishes), 7);
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
        let server = TestServer::start(io, |c| {
            c.limits.max_publish_bytes = Some(1024);
            c.pubsub.client_publish = Some(vec!["*".into()]);
        });
        // Within the limit whatever its spelling: the longest topic written with `\u`
        // escapes, a long id, the largest value (each of these closed with 1009).
        let mut ws = connect(&server, "/ws");
        let topic = "\\u0061".repeat(128);
        let id = "i".repeat(300);
        let data = format!("\"{}\"", "x".repeat(1022));
        let op = format!(r#"{{"op":"publish","topic":"{topic}","data":{data},"id":"{id}"}}"#);
        ws.send(Message::text(op)).unwrap();
        assert_eq!(next_json(&mut ws), json!({"op": "ok", "id": id}));
        let mut stream = raw_upgrade(&server, "/ws");
        stream.write_all(&client_frame(true, 0x1, &vec![b' '; 8192])).unwrap();
        assert_eq!(read_close_code(&mut stream), 1009);
    }

    // Issue 9 item 2: for any JSON text, a /ws publish and an HTTP publish deliver the same
    // bytes (the value as sent, without the whitespace around it), or refuse it alike.
    fn ws_and_http_publish_agree_on_arbitrary_json(io: IoBackend) {
        let server = TestServer::start(io, |c| c.pubsub.client_publish = Some(vec!["*".into()]));
        let config = ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() };
        proptest::test_runner::TestRunner::new(config)
            .run(&json_text(), |text| {
                let (http, ws) = publish_both_ways(&server, &text);
                prop_assert_eq!(&http, &ws, "{:?}", text);
                let valid = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
                let value = text.trim_matches([' ', '\t', '\n', '\r']).to_owned();
                let expected =
                    if valid { Outcome::Delivered(value) } else { Outcome::Refused("bad_json".into()) };
                prop_assert_eq!(http, expected, "{:?}", text);
                Ok(())
            })
            .unwrap();
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

/// How a publish ended: the `data` a subscriber got, or the error code.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered(String),
    Refused(String),
}

/// Publishes `text` as `data` over HTTP (topic `h`) and over `/ws` (topic `w`), each from a
/// fresh connection, and returns both outcomes as a subscriber of both topics saw them.
fn publish_both_ways(server: &TestServer, text: &str) -> (Outcome, Outcome) {
    let mut sub = connect(server, "/ws?subscribe=h,w");
    let http = Publisher::new(server, None).publish("h", text);
    let http = match http.status {
        202 => None,
        _ => {
            let body: Value = serde_json::from_slice(&http.body).expect("a json error body");
            Some(Outcome::Refused(body["error"].as_str().unwrap().to_owned()))
        }
    };
    let mut publisher = connect(server, "/ws");
    // `data` last, so nothing after it but the closing brace.
    let op = format!(r#"{{"op":"publish","topic":"w","id":1,"data":{text}}}"#);
    publisher.send(Message::text(op)).unwrap();
    let reply = next_json(&mut publisher);
    let ws = match reply["op"].as_str() {
        Some("ok") => None,
        _ => Some(Outcome::Refused(reply["code"].as_str().unwrap().to_owned())),
    };
    // Deliveries, in whichever order the two reactors queued them.
    let mut delivered = std::collections::HashMap::new();
    for _ in 0..[&http, &ws].iter().filter(|o| o.is_none()).count() {
        let Message::Text(text) = recv(&mut sub) else {
            panic!("expected a delivery")
        };
        let (topic, data) = text
            .strip_prefix(r#"{"topic":""#)
            .and_then(|t| t.split_once(r#"","data":"#))
            .expect("a delivery envelope");
        let data = data.strip_suffix('}').expect("closing brace").to_owned();
        delivered.insert(topic.to_owned(), Outcome::Delivered(data));
    }
    let mut take = |topic: &str| delivered.remove(topic).expect("a delivery");
    (
        http.unwrap_or_else(|| take("h")),
        ws.unwrap_or_else(|| take("w")),
    )
}

/// JSON text that stresses what a publish path could alter: every kind of escape (lone
/// surrogates and pairs included), any Unicode, numbers of any size, whitespace everywhere,
/// deep nesting; and now and then something invalid inside a string or number, which no
/// context can make valid.
fn json_text() -> impl Strategy<Value = String> {
    let ws = || {
        proptest::collection::vec(
            prop_oneof![Just(" "), Just("\t"), Just("\n"), Just("\r")],
            0..3,
        )
        .prop_map(|w| w.concat())
    };
    let piece = prop_oneof![
        24 => "[a-zA-Z0-9 ]{1,4}",
        12 => any::<char>()
            .prop_filter("needs escaping", |c| !matches!(c, '"' | '\\' | '\0'..='\x1f'))
            .prop_map(String::from),
        12 => proptest::sample::select(&["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"][..])
            .prop_map(String::from),
        12 => any::<u16>().prop_map(|u| format!("\\u{u:04x}")),
        6 => (0xd800u16..0xdc00, 0xdc00u16..0xe000).prop_map(|(h, l)| format!("\\u{h:04X}\\u{l:04x}")),
        1 => proptest::sample::select(&["\\x", "\\u12", "\\u{1}", "\u{1}", "\t"][..]).prop_map(String::from),
    ];
    let string = proptest::collection::vec(piece, 0..6).prop_map(|p| format!("\"{}\"", p.concat()));
    let number = prop_oneof![
        8 => "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,5})?",
        1 => proptest::sample::select(&["01", "1.", "-", ".5", "1e", "+1"][..]).prop_map(String::from),
    ];
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        number,
        string.clone(),
    ];
    let value = leaf.clone().prop_recursive(6, 48, 5, move |inner| {
        prop_oneof![
            proptest::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(|items| {
                let items: Vec<String> = items.into_iter().map(|(a, v, b)| a + &v + &b).collect();
                format!("[{}]", items.join(","))
            }),
            proptest::collection::vec((ws(), string.clone(), ws(), ws(), inner, ws()), 0..5)
                .prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
        ]
    });
    let deep = (1usize..2000, leaf).prop_map(|(depth, leaf)| {
        format!("{}{leaf}{}", "[{\"k\":".repeat(depth), "}]".repeat(depth))
    });
    (ws(), prop_oneof![8 => value, 1 => deep], ws()).prop_map(|(a, v, b)| a + &v + &b)
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
