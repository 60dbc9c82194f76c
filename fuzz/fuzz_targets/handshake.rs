//! HTTP/1.1 request heads and WebSocket upgrade validation.
//!
//! Input: one byte of policy flags (1: subprotocols, 2: allowed origins, 4:
//! permessage-deflate, 0xf8: where to cut a prefix), a little-endian u16
//! `max_header_bytes`, then the bytes the client sent. Checked: no panic; the head is
//! bounded by the limit and the buffer; a parsed head parses the same alone and with
//! anything after it; every shorter prefix of a complete or incomplete head is incomplete;
//! errors render as well-formed 4xx/5xx responses; an accepted upgrade names a valid key,
//! a subprotocol the client offered and the server allows, and an allowed origin (when
//! the client sent one); it
//! agrees to permessage-deflate only when the server allows it and a
//! `Sec-WebSocket-Extensions` offer was valid (the first valid one), and its response
//! header is one a client accepts as the same agreement (RFC 7692 §7.1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_proto::deflate;
use wsgate_proto::handshake::{self, parse_request, validate_upgrade, UpgradePolicy};

fuzz_target!(|data: &[u8]| {
    let [flags, lo, hi, buf @ ..] = data else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([*lo, *hi]));
    let subprotocols = ["chat".to_owned(), "superchat".to_owned()];
    let origins = ["http://example.com".to_owned()];
    let policy = UpgradePolicy {
        subprotocols: if flags & 1 != 0 { &subprotocols } else { &[] },
        allowed_origins: (flags & 2 != 0).then_some(&origins[..]),
        deflate: flags & 4 != 0,
    };

    let parsed = parse_request(buf, max);
    match &parsed {
        Ok(None) => {
            assert!(buf.len() <= max, "an incomplete head past the limit is 431");
        }
        Ok(Some(req)) => {
            assert!(req.head_len <= buf.len() && req.head_len <= max);
            let head = &buf[..req.head_len];
            assert_eq!(parse_request(head, max).as_ref(), Ok(&Some(req.clone())));
            let mut longer = head.to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(parse_request(&longer, max).as_ref(), Ok(&Some(req.clone())));
            check_upgrade(req, &policy);
        }
        Err(e) => {
            assert!((400..=599).contains(&e.status), "{e:?}");
            let response = e.response();
            let text = std::str::from_utf8(&response).expect("ascii response");
            assert!(text.starts_with(&format!("HTTP/1.1 {} ", e.status)));
            assert!(text.contains("\r\nConnection: close\r\n"));
            assert!(text.contains("\r\nContent-Type: application/json\r\n"));
            let body = format!("{{\"error\":\"{}\",\"message\":\"{}\"}}", e.code, e.reason);
            assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
        }
    }
    // "Not enough bytes yet" consumes nothing and is all a prefix can be.
    if let Ok(maybe) = &parsed {
        let end = maybe.as_ref().map_or(buf.len(), |req| req.head_len);
        let cut = usize::from(*flags >> 3) * end / 32;
        if cut < end {
            assert_eq!(parse_request(&buf[..cut], max), Ok(None), "prefix of {cut}");
        }
    }
});

fn check_upgrade(req: &handshake::Request, policy: &UpgradePolicy<'_>) {
    let Ok(upgrade) = validate_upgrade(req, policy) else {
        return;
    };
    let up = req
        .upgrade
        .as_ref()
        .expect("an upgrade has upgrade headers");
    let key = up.key.as_deref().expect("an upgrade has a key");
    assert_eq!(upgrade.accept, handshake::accept_key(key.as_bytes()));
    assert_eq!(upgrade.accept.len(), 28);
    if let Some(protocol) = &upgrade.protocol {
        assert!(up.protocols.contains(protocol));
        assert!(policy.subprotocols.contains(protocol));
    }
    // A client without Origin is not a browser, and the allowlist is not applied to it.
    if let (Some(origins), Some(origin)) = (policy.allowed_origins, up.origin.as_deref()) {
        assert!(origins.iter().any(|o| o.eq_ignore_ascii_case(origin)));
    }
    match upgrade.deflate {
        Some(agreed) => {
            assert!(policy.deflate, "deflate agreed though not allowed");
            assert_eq!(deflate::negotiate(&up.extensions), Some(agreed));
            // What the server answers, a client (of this crate) accepts as the same terms.
            let answer = agreed.response();
            assert_eq!(deflate::accept_response(&[&answer]), Ok(Some(agreed)));
            assert!(agreed
                .server_max_window_bits
                .is_none_or(|b| (8..=15).contains(&b)));
        }
        None => assert!(!policy.deflate || deflate::negotiate(&up.extensions).is_none()),
    }
    let response = upgrade.response();
    assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    if let Some(agreed) = upgrade.deflate {
        let line = format!("\r\nSec-WebSocket-Extensions: {}\r\n", agreed.response());
        assert!(response.windows(line.len()).any(|w| w == line.as_bytes()));
    }
    assert!(response.ends_with(b"\r\n\r\n"));
    // Nothing the client sent reaches the response except the subprotocol it offered,
    // which was an HTTP token list element: no CR or LF.
    let body = &response[..response.len() - 4];
    assert_eq!(
        body.windows(2).filter(|w| w == b"\r\n").count(),
        3 + usize::from(upgrade.protocol.is_some()) + usize::from(upgrade.deflate.is_some())
    );
}
