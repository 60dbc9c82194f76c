//! permessage-deflate (RFC 7692) as servers other than wsgate may send it: small raw servers
//! that negotiate the extension and write exactly the frames a case needs.

mod util;

use std::io::Write;

use tungstenite::handshake::server::{Request, Response};
use util::*;
use wsgate_proto::deflate::{Deflater, CLIENT_OFFER};

/// Accepts the upgrade with permessage-deflate agreed (no context takeover either way, as
/// the loadgen offers), then answers the connection's `n`th data message (from 0) with what
/// `reply` makes of `n` and its payload compressed: the bytes to write, one `write` each.
// tungstenite's handshake callback returns its large error response by value.
#[allow(clippy::result_large_err)]
fn deflate_server(reply: fn(usize, &[u8]) -> Vec<Vec<u8>>) -> String {
    let port = listen(move |s| {
        let Ok(mut ws) = tungstenite::accept_hdr(s, |req: &Request, mut resp: Response| {
            let offered = req.headers().get("sec-websocket-extensions");
            assert_eq!(offered.unwrap(), CLIENT_OFFER);
            resp.headers_mut()
                .insert("sec-websocket-extensions", CLIENT_OFFER.parse().unwrap());
            Ok(resp)
        }) else {
            return;
        };
        let mut deflater = Deflater::new(6, 0);
        let mut n = 0;
        while let Ok(m) = ws.read() {
            if !(m.is_text() || m.is_binary()) {
                continue;
            }
            let compressed = deflater
                .compress(&m.into_data())
                .expect("the stamp's padding compresses")
                .to_vec();
            for bytes in reply(n, &compressed) {
                if ws.get_mut().write_all(&bytes).is_err() {
                    return;
                }
            }
            n += 1;
        }
    });
    format!("ws://127.0.0.1:{port}/echo")
}

/// `data` in three nearly equal parts.
fn thirds(data: &[u8]) -> [&[u8]; 3] {
    let n = data.len() / 3;
    [&data[..n], &data[n..2 * n], &data[2 * n..]]
}

/// RFC 7692 §6.1: a compressed message may be fragmented, RSV1 on its first frame only, and
/// inflates whole once its last frame is in. Every echo comes back compressed in three
/// frames (a ping between two of them), and as two (a binary message): each is counted,
/// its stamp read and its latency taken, without an error (it was a protocol error).
#[test]
fn a_fragmented_compressed_message_is_inflated_whole() {
    let three = deflate_server(|_, c| {
        let [a, b, c] = thirds(c);
        vec![
            frame(0x41, a),
            frame(0x89, b"between"),
            frame(0x00, b),
            frame(0x80, c),
        ]
    });
    let two = deflate_server(|_, c| {
        let (a, b) = c.split_at(c.len() / 2);
        vec![[frame(0x42, a), frame(0x80, b)].concat()]
    });
    for (url, binary) in [(three, &[][..]), (two, &["--binary"][..])] {
        let mut a = SHORT.to_vec();
        a.extend(["--deflate", "--size", "1024", "--connections", "2"]);
        a.extend(binary);
        let v = loadgen_ok("echo", &url, &a);
        // Each message inflated to all of its 1,024 bytes, not to its first frame's part.
        assert_every_echo_whole(&v, 1024);
        let messages = v["messages_in"].as_u64().unwrap();
        assert!(
            v["wire_bytes_in"].as_u64().unwrap() < messages * 1024,
            "compressed on the wire: {v}"
        );
    }
}

/// RFC 7692 §6.1: RSV1 on a continuation frame is still a protocol error. The first two
/// echoes come in two frames as they should, the third with RSV1 on its continuation too.
#[test]
fn rsv1_on_a_continuation_is_a_protocol_error() {
    let url = deflate_server(|n, c| {
        let (a, b) = c.split_at(c.len() / 2);
        let rsv1 = if n == 2 { 0x40 } else { 0x00 };
        vec![frame(0x41, a), frame(0x80 | rsv1, b)]
    });
    // No warm-up: every echo is the window's.
    let mut a = IN_WINDOW.to_vec();
    a.extend(["--deflate", "--size", "1024", "--connections", "1"]);
    let (out, v) = loadgen("echo", &url, &a);
    let v = v.expect("the summary is written");
    assert!(out.status.success(), "{v}");
    assert_eq!(v["sent"], 3, "{v}");
    assert_eq!(v["received"], 2, "{v}");
    assert_eq!(v["latency_us"]["count"], 2, "{v}");
    let e = &v["errors"];
    assert_eq!(e["protocol"], 1, "{v}");
    // The connection is gone with the third echo's answer.
    assert_eq!(e["timeout"], 1, "{v}");
}
