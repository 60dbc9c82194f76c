//! The HTTP side of connecting: every handshake error status, subprotocols, origins,
//! routing, limits on the request head, and the timeout for silent clients.

mod util;

use std::io::Write;
use std::time::Duration;

use util::*;

for_each_driver! {
    fn upgrade_answers_101_with_accept_key(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut stream = tcp(&server);
        stream.write_all(upgrade_request("/echo", "").as_bytes()).unwrap();
        let r = read_response(&mut stream);
        assert_eq!(r.status, 101);
        assert_eq!(r.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(r.header("sec-websocket-protocol"), None, "no subprotocol configured");
    }

    // RFC 9110 §9.3.2: a HEAD request gets the head a GET would get, Content-Length
    // included, and no content, so that a keep-alive connection stays in step.
    fn head_requests_get_the_head_alone(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut stream = tcp(&server);
        let head = |stream: &mut std::net::TcpStream, path: &str| {
            let request = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            read_head(stream)
        };
        for (path, status) in [("/healthz", 200), ("/nope", 404), ("/metrics", 200)] {
            let get = http(&server, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
            let r = head(&mut stream, path);
            assert_eq!((r.status, get.status), (status, status), "{path}");
            let len: usize = r.header("content-length").unwrap().parse().unwrap();
            if path == "/metrics" {
                // Counters move between the two requests; the text is kilobytes long.
                assert!(len > 1000, "{len}");
            } else {
                assert_eq!(len, get.body.len(), "{path}");
            }
        }
        // Nothing followed those heads: the next answer on the connection is its own.
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = read_response(&mut stream);
        assert_eq!((r.status, r.body_text().as_str()), (200, "ok\n"));
        // A WebSocket path: the 426 a GET without an upgrade gets (it was 405), the head,
        // then the close.
        let r = head(&mut stream, "/ws");
        assert_eq!((r.status, r.header("upgrade")), (426, Some("websocket")));
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut rest).unwrap();
        assert_eq!(String::from_utf8_lossy(&rest), "", "nothing after the head");
        // Refused for its announced body (413, before the body): the head alone too (its
        // JSON body was sent).
        let mut stream = tcp(&server);
        let request = "HEAD /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n";
        stream.write_all(request.as_bytes()).unwrap();
        assert_eq!(read_head(&mut stream).status, 413);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut rest).unwrap();
        assert_eq!(String::from_utf8_lossy(&rest), "", "nothing after the 413's head");
    }

    // The bytes after an upgrade's head are the client's first frames: a request that says
    // a body follows is refused, rather than its frames taken for that body (they were).
    fn an_upgrade_with_a_body_gets_400(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let upgrade = upgrade_request("/echo", "");
        for body in ["Content-Length: 5\r\n\r\nhello", "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"] {
            let request = upgrade.replacen("\r\n\r\n", &format!("\r\n{body}"), 1);
            let r = http(&server, &request);
            assert_eq!(r.status, 400, "{body:?}");
            assert!(r.body_text().contains("an upgrade request has no body"), "{}", r.body_text());
        }
        // An empty one is no body.
        let request = upgrade.replacen("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n", 1);
        assert_eq!(http(&server, &request).status, 101);
    }

    // RFC 9112 §3.2: an HTTP/1.1 request without Host is 400; an empty Host (a target
    // without an authority), or HTTP/1.0 without one, is served.
    fn http11_requests_need_a_host(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        for (request, status) in [
            ("GET /healthz HTTP/1.1\r\n\r\n", 400),
            ("POST /publish/t HTTP/1.1\r\nContent-Length: 1\r\n\r\n1", 400),
            ("GET /healthz HTTP/1.1\r\nHost:\r\n\r\n", 200),
            ("GET /healthz HTTP/1.0\r\n\r\n", 200),
        ] {
            let r = http(&server, request);
            assert_eq!(r.status, status, "{request:?}: {}", r.body_text());
            if status == 400 {
                assert!(r.body_text().contains("missing host header"), "{}", r.body_text());
            }
        }
    }

    fn request_split_into_single_bytes_still_upgrades(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut stream = tcp(&server);
        for b in upgrade_request("/echo", "").bytes() {
            stream.write_all(&[b]).unwrap();
        }
        assert_eq!(read_response(&mut stream).status, 101);
    }

    fn first_frame_sent_with_the_request_is_not_lost(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut stream = tcp(&server);
        let mut bytes = upgrade_request("/echo", "").into_bytes();
        bytes.extend(client_frame(true, 0x1, b"eager"));
        stream.write_all(&bytes).unwrap();
        assert_eq!(read_response(&mut stream).status, 101);
        assert_eq!(read_frame(&mut stream), (true, 0x1, b"eager".to_vec()));
    }

    fn malformed_requests_get_400_with_a_reason(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let cases = [
            ("missing key", "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"),
            ("short key", "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"),
            ("no host", "GET /echo HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
            ("no connection upgrade", "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
            ("http/1.0", "GET /echo HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
            ("garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03 not http at all\r\n\r\n"),
        ];
        for (what, request) in cases {
            let mut stream = tcp(&server);
            stream.write_all(request.as_bytes()).unwrap();
            let r = read_response(&mut stream);
            assert_eq!(r.status, 400, "{what}: {}", r.body_text());
            assert!(!r.body_text().trim().is_empty(), "{what}: a reason in the body");
            assert_eq!(r.header("connection"), Some("close"), "{what}");
            assert_closed(&mut stream);
        }
    }

    fn wrong_version_gets_426_with_supported_version(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let request = upgrade_request("/echo", "").replace("Version: 13", "Version: 8");
        let r = http(&server, &request);
        assert_eq!(r.status, 426);
        assert_eq!(r.header("sec-websocket-version"), Some("13"));
    }

    fn plain_get_on_websocket_path_gets_426(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let r = http(&server, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 426);
        assert_eq!(r.header("upgrade"), Some("websocket"));
    }

    fn post_upgrade_gets_405(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let r = http(&server, &upgrade_request("/echo", "").replacen("GET", "POST", 1));
        assert_eq!(r.status, 405);
    }

    fn unknown_path_gets_404(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        assert_eq!(http(&server, &upgrade_request("/nope", "")).status, 404);
        assert_eq!(http(&server, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").status, 404);
    }

    fn disabled_echo_is_404(io: IoBackend) {
        let server = TestServer::start(io, |c| c.http.echo = Some(false));
        assert_eq!(http(&server, &upgrade_request("/echo", "")).status, 404);
    }

    fn oversized_head_gets_431(io: IoBackend) {
        let server = TestServer::start(io, |c| c.limits.max_header_bytes = Some(1024));
        let big = format!("X-Filler: {}\r\n", "a".repeat(2000));
        let r = http(&server, &upgrade_request("/echo", &big));
        assert_eq!(r.status, 431);
        // An endless head that never completes is cut off at the limit too.
        let mut stream = tcp(&server);
        stream.write_all(b"GET /echo HTTP/1.1\r\nX-Long: ").unwrap();
        stream.write_all(&[b'a'; 2048]).unwrap();
        assert_eq!(read_response(&mut stream).status, 431);
    }

    fn origin_allowlist_gives_403(io: IoBackend) {
        let server = TestServer::start(io, |c| c.http.allowed_origins = Some(Some(vec!["https://app.example".into()])));
        let ok = http(&server, &upgrade_request("/echo", "Origin: https://app.example\r\n"));
        assert_eq!(ok.status, 101);
        let denied = http(&server, &upgrade_request("/echo", "Origin: https://evil.example\r\n"));
        assert_eq!(denied.status, 403);
        // A client that sends no Origin is not a browser: the allowlist does not apply.
        assert_eq!(http(&server, &upgrade_request("/echo", "")).status, 101, "no origin");
    }

    fn subprotocol_is_chosen_from_the_configured_list(io: IoBackend) {
        let server = TestServer::start(io, |c| c.http.subprotocols = Some(vec!["v2.wsgate".into(), "v1.wsgate".into()]));
        let r = http(&server, &upgrade_request("/echo", "Sec-WebSocket-Protocol: v1.wsgate, v2.wsgate\r\n"));
        assert_eq!(r.header("sec-websocket-protocol"), Some("v2.wsgate"), "server preference order");
        let r = http(&server, &upgrade_request("/echo", "Sec-WebSocket-Protocol: v1.wsgate\r\n"));
        assert_eq!(r.header("sec-websocket-protocol"), Some("v1.wsgate"));
        let r = http(&server, &upgrade_request("/echo", "Sec-WebSocket-Protocol: chat\r\n"));
        assert_eq!((r.status, r.header("sec-websocket-protocol")), (101, None));
        // And an independent client agrees.
        let ws = try_connect(&server, "/echo", |req| {
            req.headers_mut().insert("Sec-WebSocket-Protocol", "v1.wsgate".parse().unwrap());
        });
        assert!(ws.is_ok());
    }

    fn connections_over_the_limit_get_503(io: IoBackend) {
        let server = TestServer::start(io, |c| c.limits.max_connections = Some(2));
        let _a = connect(&server, "/echo");
        let _b = connect(&server, "/echo");
        let r = http(&server, &upgrade_request("/echo", ""));
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
    }

    fn silent_client_is_dropped_after_the_handshake_timeout(io: IoBackend) {
        let server = TestServer::start(io, |c| c.limits.handshake_timeout = Some(Duration::from_millis(200)));
        let mut silent = tcp(&server);
        let mut stalled = tcp(&server);
        stalled.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = std::time::Instant::now();
        assert_closed(&mut silent);
        assert_closed(&mut stalled);
        assert!(started.elapsed() >= std::time::Duration::from_millis(150), "not before the timeout");
    }

    fn healthz_and_keep_alive(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut stream = tcp(&server);
        for _ in 0..3 {
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let r = read_response(&mut stream);
            assert_eq!((r.status, r.body_text().as_str()), (200, "ok\n"));
        }
        // Pipelined requests are answered in order.
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut stream).status, 200);
        assert_eq!(read_response(&mut stream).status, 404);
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut stream).status, 200);
        assert_closed(&mut stream);
    }
}
