//! Regression tests: one per fixed bug, each linked to the issue item it fixes. Some run the
//! `wsgate` binary, since what they guard is what a user starting it sees.

mod util;

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use util::{GatewayProcess, TIMEOUT};

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

/// Starts `wsgate serve ARGS` (epoll, unpinned) and waits for its start-up line.
fn start(args: &[&str]) -> GatewayProcess {
    let mut all = vec!["--io", "epoll", "--pin", "false"];
    all.extend_from_slice(args);
    GatewayProcess::start(&all)
}

/// Runs `wsgate serve ARGS`, which must exit (not start serving) within `TIMEOUT`.
fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(["serve", "--io", "epoll", "--pin", "false"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wsgate runs");
    let pid = child.id().to_string();
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match done.recv_timeout(TIMEOUT) {
        Ok(output) => output.expect("wsgate's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("wsgate serve {args:?} started instead of exiting");
        }
    }
}

/// Issue 9, item 1: a second instance on a port in use silently shared it (SO_REUSEPORT
/// on every listener) and split the pub/sub traffic; it must fail, naming the address.
#[test]
fn second_instance_on_a_port_in_use_fails() {
    let first = start(&["--listen", "127.0.0.1:0", "--threads", "2"]);
    for threads in ["1", "2"] {
        let out = run(&["--listen", &first.addr, "--threads", threads]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("in use"), "{stderr}");
        assert!(stderr.contains(&first.addr), "names the address: {stderr}");
    }
    // The first instance is untouched: it still serves and drains.
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/echo", first.addr)).unwrap();
    ws.send(tungstenite::Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("still here"));
    drop(ws);
    first.stop();
}

/// Issue 9, item 1: sharing a port stays possible when asked for (a handover), and only then.
#[test]
fn share_port_lets_two_instances_listen_together() {
    let first = start(&["--listen", "127.0.0.1:0", "--threads", "1", "--share-port"]);
    let second = start(&["--listen", &first.addr, "--threads", "1", "--share-port"]);
    assert_eq!(second.addr, first.addr);
    let out = run(&["--listen", &first.addr, "--threads", "1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a third without --share-port is refused"
    );
    let echo = |addr: &str| {
        let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/echo")).unwrap();
        ws.send(tungstenite::Message::text("hi")).unwrap();
        assert_eq!(ws.read().unwrap(), tungstenite::Message::text("hi"));
    };
    echo(&first.addr);
    // The handover: the old instance drains and exits, the new one serves on.
    let addr = first.addr.clone();
    first.stop();
    for _ in 0..4 {
        echo(&addr);
    }
    second.stop();
}

/// Issue 9, item 6: `--threads 64` on 2 cores started 64 reactors without a word; more
/// reactors than available cores must be warned about, naming both numbers.
#[test]
fn more_reactors_than_cores_is_warned_about() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores + 1;
    if threads > 64 {
        eprintln!("skipping: {cores} cores leave no room above them under the 64-reactor cap");
        return;
    }
    let over = start(&["--listen", "127.0.0.1:0", "--threads", &threads.to_string()]);
    let warning = over
        .before
        .iter()
        .find(|l| l.contains("WARN") && l.contains("reactors"))
        .unwrap_or_else(|| panic!("no warning in {:?}", over.before));
    assert!(
        warning.contains(&format!("{threads} reactors but {cores} cores")),
        "{warning}"
    );
    // A warning, not a refusal: it serves.
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/echo", over.addr)).unwrap();
    ws.send(tungstenite::Message::text("ok")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("ok"));
    drop(ws);
    over.stop();
    let fits = start(&["--listen", "127.0.0.1:0", "--threads", &cores.to_string()]);
    assert!(
        !fits.before.iter().any(|l| l.contains("reactors but")),
        "no warning when they fit: {:?}",
        fits.before
    );
    fits.stop();
}

/// A log reader that goes away (stderr a closed pipe: `wsgate | head -1`, a dead log
/// shipper) must not cost the gateway its signals: tracing reported the failed write with
/// `eprintln!`, which panicked on the same broken pipe and ended the signal thread, so
/// SIGTERM was ignored until SIGKILL.
#[test]
fn sigterm_drains_after_the_log_reader_is_gone() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .args(["serve", "--io", "epoll", "--pin", "false", "--threads", "1"])
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wsgate runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no start-up line");
    }
    drop(stderr);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    match done.recv_timeout(TIMEOUT) {
        Ok(status) => assert!(status.unwrap().success()),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("SIGTERM ignored with stderr closed");
        }
    }
}

// ─── issue 9 items 2, 3 and 4: publish paths agree, bearer scheme, chunked bodies ──────────
mod issue9_publish_paths {
    use std::io::Write;
    use std::net::TcpStream;

    use serde_json::Value;
    use tungstenite::Message;

    use super::util::*;
    use crate::for_each_driver;

    /// `POST /publish/{topic}` on `stream` with `body` and extra header lines.
    fn post(stream: &mut TcpStream, topic: &str, headers: &str, body: &[u8]) -> Response {
        let head = format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(&[head.as_bytes(), body].concat()).unwrap();
        read_response(stream)
    }

    for_each_driver! {
        // Issue 9 item 2: a /ws publish of "\ud800" was delivered as "\u0000" (in longer
        // strings and object keys too) and "\udc00" was refused as bad_json, while HTTP
        // delivered both unchanged. Both paths now deliver the publisher's bytes as sent.
        fn ws_and_http_publish_deliver_data_bytes_unchanged(io: IoBackend) {
            let server = TestServer::start(io, |c| c.pubsub.client_publish = Some(vec!["*".into()]));
            let mut sub = connect(&server, "/ws?subscribe=h,w");
            let mut publisher = connect(&server, "/ws");
            let mut backend = tcp(&server);
            for value in [
                r#""\ud800""#,
                r#""\udc00""#,
                r#""a\ud800b \udc00c""#,
                r#"{"\ud800":"\udc00","k\ud800":1}"#,
                r#""\ud83d\ude00 \uD83D\uDE00""#,
                r#"{ "p" : [1, 2.50, -0.0e+00] }"#,
                "123456789012345678901234567890e-99999",
                "\"caf\u{e9} \\u00e9 \\/\"",
            ] {
                assert_eq!(post(&mut backend, "h", "", value.as_bytes()).status, 202, "{value}");
                let op = format!(r#"{{"op":"publish","topic":"w","id":1,"data": {value} }}"#);
                publisher.send(Message::text(op)).unwrap();
                assert_eq!(next_text(&mut publisher), r#"{"op":"ok","id":1}"#);
                let mut got = [next_text(&mut sub), next_text(&mut sub)];
                got.sort();
                assert_eq!(
                    got,
                    [
                        format!(r#"{{"topic":"h","data":{value}}}"#),
                        format!(r#"{{"topic":"w","data":{value}}}"#),
                    ],
                    "the exact bytes sent, on both paths"
                );
            }
            // What is not JSON is refused by both, with the same code.
            for bad in [r#""\x""#, r#""\u12""#, "\"a\u{1}b\"", "01", "[1,]", r#"{"a"}"#] {
                let r = post(&mut backend, "h", "", bad.as_bytes());
                assert_json_error(&r, 400, "bad_json");
                let op = format!(r#"{{"op":"publish","topic":"w","id":1,"data":{bad}}}"#);
                publisher.send(Message::text(op)).unwrap();
                let reply: Value = serde_json::from_str(&next_text(&mut publisher)).unwrap();
                assert_eq!(reply["code"], "bad_json", "{bad}");
            }
            // Nothing else reached the subscriber.
            assert_eq!(post(&mut backend, "h", "", b"\"end\"").status, 202);
            assert_eq!(next_text(&mut sub), r#"{"topic":"h","data":"end"}"#);
        }

        // Issue 9 item 3: `Authorization: bearer TOKEN` got 401; the scheme is
        // case-insensitive (RFC 9110 §11.1), and extra spaces before the token are tolerated.
        fn bearer_scheme_is_case_insensitive(io: IoBackend) {
            let server = TestServer::start(io, |c| c.http.publish_token = Some(Some("s3cret".into())));
            let mut sub = connect(&server, "/ws?subscribe=t");
            let mut backend = tcp(&server);
            let accepted = [
                "bearer s3cret",
                "BEARER s3cret",
                "bEaReR s3cret",
                "Bearer    s3cret",
                "Bearer \t s3cret",
            ];
            for (i, auth) in accepted.iter().enumerate() {
                let r = post(&mut backend, "t", &format!("Authorization: {auth}\r\n"), i.to_string().as_bytes());
                assert_eq!(r.status, 202, "{auth:?}");
                assert_eq!(next_text(&mut sub), format!(r#"{{"topic":"t","data":{i}}}"#));
            }
            for auth in ["Basic s3cret", "Bearers3cret", "Bearer", "bearer S3CRET", "Bearer s3cret x"] {
                let r = post(&mut backend, "t", &format!("Authorization: {auth}\r\n"), b"0");
                assert_json_error(&r, 401, "unauthorized");
                assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{auth:?}");
            }
        }

        // RFC 9110 §10.1.1: a client that sends `Expect: 100-continue` waits for 100 (or a
        // final status) before its body; curl waited a second for each publish. The head
        // alone gets 100; a body already there, or one over the limit, gets the final status.
        fn expect_100_continue_is_answered(io: IoBackend) {
            let server = TestServer::start(io, |c| c.limits.max_publish_bytes = Some(1024));
            let mut sub = connect(&server, "/ws?subscribe=t");
            let mut backend = tcp(&server);
            let head = |framing: &str| {
                format!("POST /publish/t HTTP/1.1\r\nHost: x\r\n{framing}\r\nExpect: 100-continue\r\n\r\n")
            };
            for (framing, body) in [
                ("Content-Length: 3", "\"a\""),
                ("Transfer-Encoding: chunked", "3\r\n\"b\"\r\n0\r\n\r\n"),
            ] {
                backend.write_all(head(framing).as_bytes()).unwrap();
                assert_eq!(read_head(&mut backend).status, 100, "{framing}");
                backend.write_all(body.as_bytes()).unwrap();
                assert_eq!(read_response(&mut backend).status, 202, "{framing}");
            }
            assert_eq!(next_text(&mut sub), r#"{"topic":"t","data":"a"}"#);
            assert_eq!(next_text(&mut sub), r#"{"topic":"t","data":"b"}"#);
            // Head and body in one write: no 100 needed, the 202 comes first.
            let whole = format!("{}\"c\"", head("Content-Length: 3"));
            backend.write_all(whole.as_bytes()).unwrap();
            assert_eq!(read_response(&mut backend).status, 202);
            assert_eq!(next_text(&mut sub), r#"{"topic":"t","data":"c"}"#);
            // Over the limit: 413 at once, no 100.
            let mut over = tcp(&server);
            over.write_all(head("Content-Length: 3000").as_bytes()).unwrap();
            assert_json_error(&read_response(&mut over), 413, "too_large");
        }

        // Issue 9 item 4: `Transfer-Encoding: chunked` on POST /publish got 501 as plain text.
        // Chunked bodies are accepted, split anywhere, pipelined, and bounded by
        // max_publish_bytes: 413 as soon as the chunk sizes pass it.
        fn chunked_publish_is_accepted_and_bounded(io: IoBackend) {
            let server = TestServer::start(io, |c| c.limits.max_publish_bytes = Some(1024));
            let mut sub = connect(&server, "/ws?subscribe=t");
            let head = "POST /publish/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
            let mut backend = tcp(&server);
            // Split inside the head, a chunk size, the data and the last chunk.
            for piece in [
                &head[..20],
                &head[20..],
                "1",
                "3\r\n{\"chunked\":",
                " [1, 2]",
                "}\r\n0\r",
                "\n\r\n",
            ] {
                backend.write_all(piece.as_bytes()).unwrap();
            }
            assert_eq!(read_response(&mut backend).status, 202);
            assert_eq!(next_text(&mut sub), r#"{"topic":"t","data":{"chunked": [1, 2]}}"#);
            // Extensions and trailers are ignored; the next request on the connection (here
            // pipelined in the same write) is framed right after the body.
            let two = format!(
                "{head}2;name=value\r\n\"a\r\n1\r\n\"\r\n0\r\nX-Trailer: 1\r\n\r\n\
                 POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n\"b\""
            );
            backend.write_all(two.as_bytes()).unwrap();
            assert_eq!(read_response(&mut backend).status, 202);
            assert_eq!(read_response(&mut backend).status, 202);
            assert_eq!(next_text(&mut sub), r#"{"topic":"t","data":"a"}"#);
            assert_eq!(next_text(&mut sub), r#"{"topic":"t","data":"b"}"#);
            // Exactly the limit passes.
            let exact = format!("\"{}\"", "x".repeat(1022));
            let body = format!("200\r\n{}\r\n200\r\n{}\r\n0\r\n\r\n", &exact[..512], &exact[512..]);
            backend.write_all(format!("{head}{body}").as_bytes()).unwrap();
            assert_eq!(read_response(&mut backend).status, 202);
            assert_eq!(next_text(&mut sub), format!(r#"{{"topic":"t","data":{exact}}}"#));
            // A value one byte over it, in a body that fits: 413 once read, and the
            // connection stays.
            let one_over = format!("\"{}\"", "x".repeat(1023));
            let body = format!("{:x}\r\n{one_over}\r\n0\r\n\r\n", one_over.len());
            backend.write_all(format!("{head}{body}").as_bytes()).unwrap();
            assert_json_error(&read_response(&mut backend), 413, "too_large");
            backend.write_all(format!("{head}1\r\n7\r\n0\r\n\r\n").as_bytes()).unwrap();
            assert_eq!(read_response(&mut backend).status, 202);
            assert_eq!(next_text(&mut sub), r#"{"topic":"t","data":7}"#);
            // A size over the limit and the whitespace a body may carry (1,024 bytes): 413
            // before any of its data is sent.
            let mut over = tcp(&server);
            over.write_all(format!("{head}801\r\n").as_bytes()).unwrap();
            let r = read_response(&mut over);
            assert_json_error(&r, 413, "too_large");
            assert_eq!(r.header("connection"), Some("close"));
            assert_closed(&mut over);
            // Many chunks whose running total passes it: 413 at the chunk that does.
            let mut over = tcp(&server);
            over.write_all(head.as_bytes()).unwrap();
            for _ in 0..8 {
                over.write_all(format!("100\r\n{}\r\n", "x".repeat(256)).as_bytes()).unwrap();
            }
            over.write_all(b"1\r\n").unwrap();
            assert_json_error(&read_response(&mut over), 413, "too_large");
            assert_closed(&mut over);
            // Malformed framing is 400, other codings 501, Content-Length with it 400.
            for (request, status, code) in [
                (format!("{head}zz\r\n"), 400, "bad_request"),
                (format!("{head}3\r\n\"a\"X\r\n"), 400, "bad_request"),
                (format!("{head}3\n\"a\"\r\n0\r\n\r\n"), 400, "bad_request"),
                (head.replace("chunked", "gzip, chunked"), 501, "not_implemented"),
                (head.replace("chunked", "gzip"), 400, "bad_request"),
                (head.replace("\r\n\r\n", "\r\nContent-Length: 3\r\n\r\n\"a\""), 400, "bad_request"),
                (head.replace("1.1", "1.0"), 400, "bad_request"),
            ] {
                let mut stream = tcp(&server);
                stream.write_all(request.as_bytes()).unwrap();
                assert_json_error(&read_response(&mut stream), status, code);
                assert_closed(&mut stream);
            }
            // None of the refused bodies was published.
            assert_eq!(post(&mut backend, "t", "", b"\"end\"").status, 202);
            assert_eq!(next_text(&mut sub), r#"{"topic":"t","data":"end"}"#);
        }

        // Issue 9 item 4: every HTTP error body has one format, JSON
        // `{"error":"<code>","message":"<reason>"}`, handshake refusals included.
        fn every_http_error_body_is_the_same_json(io: IoBackend) {
            let server = TestServer::start(io, |c| {
                c.http.publish_token = Some(Some("s3cret".into()));
                c.limits.max_publish_bytes = Some(16);
                c.limits.max_header_bytes = Some(1024);
            });
            let auth = "Authorization: Bearer s3cret\r\n";
            let upgrade = upgrade_request("/ws", "");
            let cases = [
                (upgrade.replace("Sec-WebSocket-Key", "X-Key"), 400, "bad_request"),
                (upgrade.replace("/ws", "/nope"), 404, "not_found"),
                (upgrade.replacen("GET", "POST", 1), 405, "method_not_allowed"),
                ("POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n".into(), 405, "method_not_allowed"),
                ("GET /publish/t HTTP/1.1\r\nHost: x\r\n\r\n".into(), 405, "method_not_allowed"),
                ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".into(), 426, "upgrade_required"),
                (upgrade.replace("Version: 13", "Version: 8"), 426, "upgrade_required"),
                (upgrade_request("/ws", &format!("X: {}\r\n", "a".repeat(2000))), 431, "header_too_large"),
                ("POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1".into(), 401, "unauthorized"),
                (format!("POST /publish/t HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1\r\n\r\n{{"), 400, "bad_json"),
                (format!("POST /publish/a%20b HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1\r\n\r\n1"), 400, "invalid_topic"),
                // Over the value limit plus the whitespace a body may carry: refused from the
                // head; a value over the limit inside a body that fits: refused once read.
                (format!("POST /publish/t HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1041\r\n\r\n"), 413, "too_large"),
                (format!("POST /publish/t HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 19\r\n\r\n\"{}\" ", "x".repeat(16)), 413, "too_large"),
                ("POST /publish/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n".into(), 501, "not_implemented"),
                (upgrade_request("/ws?subscribe=a%20b", ""), 400, "invalid_topic"),
            ];
            for (request, status, code) in cases {
                assert_json_error(&http(&server, &request), status, code);
            }
            // 503 over the connection limit.
            let full = TestServer::start(io, |c| c.limits.max_connections = Some(1));
            let _held = connect(&full, "/ws");
            let r = http(&full, &upgrade_request("/ws", ""));
            assert_json_error(&r, 503, "unavailable");
            assert_eq!(r.header("retry-after"), Some("1"));
        }
    }
}
// ─── end of issue 9 items 2, 3 and 4 ───────────────────────────────────────────────────────

// ─── issue 9 items 5 and 8: a half-closed publisher, stalled partial messages ──────────────
mod issue9_lifecycle {
    use std::io::{Read, Write};
    use std::net::Shutdown;

    use wsgate::metrics::ReactorMetrics;

    use super::util::*;
    use crate::for_each_driver;

    for_each_driver! {
        // Item 5: a publisher that publishes and then half-closes (FIN) still gets the copy
        // of every publish it is subscribed to, then the server closes.
        fn half_closed_publisher_gets_every_own_delivery(io: IoBackend) {
            let server = TestServer::start(io, |c| {
                c.pubsub.client_publish = Some(vec!["*".into()]);
            });
            let mut stream = raw_upgrade(&server, "/ws?subscribe=t");
            let mut wire = Vec::new();
            for i in 0..20 {
                let op = format!(r#"{{"op":"publish","topic":"t","data":{i}}}"#);
                wire.extend(client_frame(true, 0x1, op.as_bytes()));
            }
            stream.write_all(&wire).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            for i in 0..20 {
                let (_, opcode, payload) = read_frame(&mut stream);
                assert_eq!(opcode, 0x1);
                assert_eq!(payload, format!(r#"{{"topic":"t","data":{i}}}"#).into_bytes());
            }
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).expect("the server closes after the last one");
            assert!(rest.is_empty(), "nothing after the deliveries: {rest:?}");
        }

        // A client that pipelines requests and half-closes right behind them gets every
        // answer, in order, then the close: the FIN used to drop the requests still
        // waiting while the answers were over max_outbound_bytes (always on io_uring).
        fn pipelined_requests_then_fin_are_all_answered(io: IoBackend) {
            const N: usize = 2000;
            let server = TestServer::start(io, |c| c.limits.max_outbound_bytes = Some(4096));
            let mut stream = tcp(&server);
            let mut writer = stream.try_clone().unwrap();
            let sender = std::thread::spawn(move || {
                let requests = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(N);
                writer.write_all(requests.as_bytes()).unwrap();
                writer.shutdown(Shutdown::Write).unwrap();
            });
            let mut answers = Vec::new();
            stream.read_to_end(&mut answers).expect("the server closes after the last one");
            sender.join().unwrap();
            let text = String::from_utf8(answers).unwrap();
            let one = "HTTP/1.1 200 OK";
            assert_eq!(text.matches(one).count(), N, "every request answered");
            assert!(text.ends_with("\r\n\r\nok\n"), "{:.200}", &text[text.len() - 200..]);
        }

        // Item 8: many connections each stall in the middle of a large message. The ones
        // past the memory budget are closed with 1013 before the server stores their
        // payload; the others hold theirs; a well-behaved client keeps working.
        fn stalled_partial_messages_stay_within_the_budget(io: IoBackend) {
            const FRAME: usize = 200 * 1024;
            let server = TestServer::start(io, |c| {
                c.net.threads = Some(2);
                c.limits.max_buffered_bytes = Some(1 << 20);
                c.limits.max_message_size = Some(FRAME);
                c.limits.max_frame_size = Some(FRAME as u64);
            });
            let frame = client_frame(true, 0x2, &vec![7u8; FRAME]);
            let mut stalled: Vec<_> = (0..40)
                .map(|_| {
                    let mut s = raw_upgrade(&server, "/echo");
                    // The header and the first 16 KiB of the payload, then nothing.
                    s.write_all(&frame[..16 * 1024]).unwrap();
                    s
                })
                .collect();
            let metric = |f: fn(&ReactorMetrics) -> &std::sync::atomic::AtomicU64| -> u64 {
                let metrics = &server.server().shared().metrics;
                metrics.iter().map(|m| ReactorMetrics::get(f(m))).sum()
            };
            // 512 KiB per reactor holds two 200 KiB messages: at most 4 of 40 are kept.
            wait_until("the budget refuses the rest", || {
                metric(|m| &m.over_budget_closes) >= 36
            });
            assert!(metric(|m| &m.buffered_bytes) <= 1 << 20);
            let refused = stalled
                .iter_mut()
                .filter_map(|s| {
                    s.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
                    let mut byte = [0u8; 1];
                    // A kept one has nothing to read (timeout); a refused one has a close.
                    match s.peek(&mut byte) {
                        Ok(1) => Some(read_close_code(s)),
                        _ => None,
                    }
                })
                .collect::<Vec<_>>();
            assert!(refused.len() >= 36, "{} refused", refused.len());
            assert!(refused.iter().all(|&code| code == 1013), "{refused:?}");
            let mut good = connect(&server, "/echo");
            good.send(tungstenite::Message::Text("still here".into())).unwrap();
            assert_eq!(recv(&mut good), tungstenite::Message::Text("still here".into()));
        }
    }
}
// ─── end of issue 9 items 5 and 8 ───────────────────────────────────────────────────────────

// ─── adversarial session: what a production gateway must not get wrong ───────────────────
mod adversarial {
    use std::io::Write;
    use std::time::Duration;

    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::Message;

    use super::util::*;
    use crate::for_each_driver;

    for_each_driver! {
        // A `POST /publish` arriving while the server drains was answered 202 Accepted and
        // reached nobody: every subscriber had been sent close 1001. The README promises
        // 503 to a request arriving on an open connection then; a backend told so can
        // publish again on a node that serves (and does not take 202 for delivered).
        fn a_publish_while_draining_gets_503_not_a_202_that_reaches_nobody(io: IoBackend) {
            let server = TestServer::start(io, |c| {
                c.net.threads = Some(1);
                c.limits.close_timeout = Some(Duration::from_millis(100));
            });
            let mut sub = connect(&server, "/ws?subscribe=d");
            let mut backend = tcp(&server);
            let publish = b"POST /publish/d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1";
            backend.write_all(publish).unwrap();
            assert_eq!(read_response(&mut backend).status, 202);
            assert_eq!(next_text(&mut sub), r#"{"topic":"d","data":1}"#);
            // The next request's head, half of it: the connection is not idle, so the
            // drain answers it rather than closing it at once.
            backend.write_all(b"POST /publish/d HTTP/1.1\r\nHost: x\r\n").unwrap();
            // One reactor handles ready sockets in order: once the pong for a ping sent
            // after the half request is back, that half has been read.
            sub.send(Message::Ping(vec![1u8])).unwrap();
            assert_eq!(recv(&mut sub), Message::Pong(vec![1u8]));
            server.server().drain();
            match recv(&mut sub) {
                Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
                other => panic!("expected close 1001, got {other:?}"),
            }
            backend.write_all(b"Content-Length: 1\r\n\r\n2").unwrap();
            let r = read_response(&mut backend);
            assert_json_error(&r, 503, "unavailable");
            assert_eq!(r.header("retry-after"), Some("1"));
            assert_eq!(r.header("connection"), Some("close"));
            assert_closed(&mut backend);
        }
    }
}
// ─── end of the adversarial session ─────────────────────────────────────────────────────────
