//! Regression tests: one per fixed bug, each linked to the issue item it fixes.

mod util;

use util::*;

// ─── issue 9 items 2, 3 and 4: publish paths agree, bearer scheme, chunked bodies ──────────
mod issue9_publish_paths {
    use serde_json::Value;

    use super::*;

    /// Asserts the one error format: `application/json`, `{"error":code,"message":reason}`.
    #[track_caller]
    fn assert_json_error(r: &Response, status: u16, code: &str) {
        assert_eq!(r.status, status, "{}", r.body_text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&r.body).expect("a json body");
        let fields = body.as_object().expect("an object");
        assert_eq!(fields.len(), 2, "{body}");
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }

    for_each_driver! {
        // Issue 9 item 4: every HTTP error body has one format, JSON
        // `{"error":"<code>","message":"<reason>"}`, handshake refusals included.
        fn every_http_error_body_is_the_same_json(io: IoBackend) {
            let server = TestServer::start(io, |c| {
                c.publish_token = Some("s3cret".into());
                c.max_publish_bytes = Some(16);
                c.max_header_bytes = Some(1024);
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
                (format!("POST /publish/t HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 17\r\n\r\n"), 413, "too_large"),
                ("POST /publish/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n".into(), 501, "not_implemented"),
                (upgrade_request("/ws?subscribe=a%20b", ""), 400, "invalid_topic"),
            ];
            for (request, status, code) in cases {
                assert_json_error(&http(&server, &request), status, code);
            }
            // 503 over the connection limit.
            let full = TestServer::start(io, |c| c.max_connections = Some(1));
            let _held = connect(&full, "/ws");
            let r = http(&full, &upgrade_request("/ws", ""));
            assert_json_error(&r, 503, "unavailable");
            assert_eq!(r.header("retry-after"), Some("1"));
        }
    }
}
// ─── end of issue 9 items 2, 3 and 4 ───────────────────────────────────────────────────────
