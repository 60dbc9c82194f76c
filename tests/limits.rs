//! Rate and connection limits (issue 12) over real sockets on both drivers: a flooding /ws
//! client is refused then closed while its neighbour on the same reactor loses nothing;
//! connections per client IP and per second get 429 with `Retry-After` before the upgrade.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;
use util::*;
use wsgate::metrics::ReactorMetrics;

fn send(ws: &mut Client, op: Value) {
    ws.send(Message::Text(op.to_string())).unwrap();
}

fn text(ws: &mut Client) -> Value {
    match recv(ws) {
        Message::Text(t) => serde_json::from_str(&t).expect("JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

/// A counter summed over the reactors.
fn total(
    server: &TestServer,
    counter: fn(&ReactorMetrics) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    let metrics = &server.server().shared().metrics;
    metrics
        .iter()
        .map(|m| ReactorMetrics::get(counter(m)))
        .sum()
}

/// Asserts `response` is the per-IP 429: `Retry-After: 1` and the JSON error body.
fn assert_client_limited(response: &Response) {
    assert_eq!(response.status, 429, "{}", response.body_text());
    assert_eq!(response.header("retry-after"), Some("1"));
    let body: Value = serde_json::from_slice(&response.body).expect("JSON body");
    assert_eq!(
        body,
        json!({"error": "rate_limited", "message": "too many connections from this address"})
    );
}

for_each_driver! {
    fn a_flooding_client_is_closed_and_its_neighbour_loses_nothing(io: IoBackend) {
        let server = TestServer::start(io, |c| {
            c.net.threads = Some(1);
            c.pubsub.client_publish = Some(vec!["*".into()]);
            c.rate.message_rate = Some(2);
            c.rate.message_burst = Some(20);
            c.rate.max_rate_limited = Some(10);
        });
        let mut neighbour = connect(&server, "/ws?subscribe=t");
        let mut flooder = connect(&server, "/ws");
        for i in 0..300 {
            send(&mut flooder, json!({"op": "publish", "topic": "t", "data": i, "id": i}));
        }
        flooder.flush().unwrap();
        // The flooder sees oks for the burst (and what refilled meanwhile), ten
        // rate_limited errors, then close 1008.
        let mut accepted = Vec::new();
        let mut limited = 0;
        let close = loop {
            match recv(&mut flooder) {
                Message::Text(t) => {
                    let reply: Value = serde_json::from_str(&t).unwrap();
                    if reply["op"] == "ok" {
                        assert_eq!(limited, 0, "nothing passes between refusals here: {reply}");
                        accepted.push(reply["id"].as_i64().unwrap());
                    } else {
                        assert_eq!(reply["code"], "rate_limited", "{reply}");
                        limited += 1;
                    }
                }
                Message::Close(frame) => break frame.expect("a close code"),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(close.code, CloseCode::Policy);
        assert_eq!(close.reason, "rate limit exceeded");
        assert_eq!(limited, 10);
        assert!((20..=22).contains(&accepted.len()), "{accepted:?}");
        assert_eq!(accepted, (0..accepted.len() as i64).collect::<Vec<_>>());
        // The neighbour got every accepted publish, in order, and is still served.
        for &i in &accepted {
            assert_eq!(text(&mut neighbour), json!({"topic": "t", "data": i}));
        }
        send(&mut neighbour, json!({"op": "subscribe", "topic": "u", "id": "still"}));
        assert_eq!(text(&mut neighbour), json!({"op": "ok", "id": "still"}));
        assert_eq!(total(&server, |m| &m.messages_rate_limited), 10);
        assert_eq!(total(&server, |m| &m.rate_limit_closes), 1);
        let metrics = http(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body_text();
        assert!(metrics.contains("wsgate_rate_limit_closes_total{reactor=\"0\"} 1\n"), "{metrics}");
    }

    fn connections_per_ip_are_limited_and_closing_frees_a_slot(io: IoBackend) {
        let server = TestServer::start(io, |c| c.rate.max_connections_per_ip = Some(2));
        let first = connect(&server, "/ws");
        let mut second = connect(&server, "/echo");
        // The third, before its upgrade, and a plain request alike.
        assert_client_limited(&http(&server, &upgrade_request("/ws", "")));
        assert_client_limited(&http(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(try_connect(&server, "/ws", |_| {}).is_err());
        // The two admitted are unaffected.
        second.send(Message::Text("still here".into())).unwrap();
        assert_eq!(recv(&mut second), Message::Text("still here".into()));
        // Closing one frees its slot once the server has let the connection go.
        drop(first);
        wait_until("the closed connection to be released", || {
            server.open_connections() == 1
        });
        let third = connect(&server, "/ws");
        assert_eq!(server.server().shared().clients.len(), 1, "one IP");
        assert_eq!(total(&server, |m| &m.ip_limited), 3);
        drop(second);
        drop(third);
        wait_until("every connection to be released", || server.open_connections() == 0);
        assert!(server.server().shared().clients.is_empty(), "entries go at 0");
    }

    fn new_connections_per_ip_per_second_get_429(io: IoBackend) {
        let server = TestServer::start(io, |c| c.rate.connection_rate_per_ip = Some(1));
        let _first = connect(&server, "/ws");
        // Within the same second (a connect takes well under a millisecond here).
        assert_client_limited(&http(&server, &upgrade_request("/ws", "")));
        assert_eq!(total(&server, |m| &m.ip_rate_limited), 1);
    }
}

/// Past `max_connections` connections are still accepted, to be answered 503, so idle ones
/// can exhaust the process's descriptors (EMFILE on accept). Then a client waiting in the
/// backlog must be accepted once descriptors are free again (epoll waited for a new edge,
/// which never came), and the reactor must not spin on the failing accept (io_uring
/// re-armed it at once: a core's worth of CPU and a million log lines).
#[test]
fn a_reactor_out_of_descriptors_accepts_again_when_they_are_freed() {
    for io in ["epoll", "uring"] {
        if io == "uring" && wsgate::driver::uring::available().is_err() {
            continue;
        }
        let mut gateway = GatewayProcess::one_reactor_with_files_limit(120, &["--io", io]);
        let addr = gateway.addr.clone();
        let idle: Vec<TcpStream> = (0..150)
            .map(|_| TcpStream::connect(addr.as_str()).unwrap())
            .collect();
        gateway.wait_log("accept failed");
        let mut queued = TcpStream::connect(addr.as_str()).unwrap();
        queued.set_read_timeout(Some(TIMEOUT)).unwrap();
        queued
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Half a second of exhaustion: a spinning reactor logs thousands of failures.
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            gateway.count_log("accept failed") <= 2,
            "{io}: {} failures logged",
            gateway.count_log("accept failed")
        );
        drop(idle);
        // Answered: 200, or 503 if it was accepted before the closed ones were counted out.
        let status = read_response(&mut queued).status;
        assert!([200, 503].contains(&status), "{io}: {status}");
    }
}
