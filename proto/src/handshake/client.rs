//! The client side of the opening handshake (RFC 6455 §4.1), sans-I/O.
//!
//! Owns: rendering the upgrade request, parsing the server's response head out of the
//! caller's buffer (incrementally and bounded), and checking a `101` against the request.
//!
//! Must not: touch sockets, draw the nonce (the caller passes 16 random bytes to [`key`]),
//! follow redirects or authenticate. A response other than `101` is an error; its status and
//! header fields stay readable on the parsed [`Response`] for a caller that wants them.
//!
//! ```text
//! key(nonce) ─► Request::encode ─► bytes ··· bytes ─► Response::parse ─► check ─► Accepted
//!                                                    │ Ok(None): read more │
//!                                                    └─ HandshakeError ◄───┘
//! ```

use std::io::Write as _;

use base64::Engine as _;

use super::{accept_key, list, BASE64, MAX_HEADERS, VERSION};
use crate::deflate::{self, Agreed};

/// Longest response head accepted, in bytes; a longer one is [`HandshakeError::TooLarge`].
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// `Sec-WebSocket-Key` for a nonce of 16 bytes the caller drew at random (RFC 6455 §4.1
/// item 7): its base64, 24 characters.
pub fn key(nonce: [u8; 16]) -> String {
    BASE64.encode(nonce)
}

/// An opening handshake request (RFC 6455 §4.1). Every field is written as given, so none
/// may contain CR or LF (checked in debug builds).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `Host`: the host, and the port unless it is the scheme's default (item 4).
    pub host: &'a str,
    /// The request target: the resource name and query, such as `/ws?subscribe=a` (item 3).
    pub path: &'a str,
    /// `Sec-WebSocket-Key`, see [`key`].
    pub key: &'a str,
    /// Subprotocols offered, in preference order; none sends no `Sec-WebSocket-Protocol`.
    pub protocols: &'a [&'a str],
    /// Further fields, after the WebSocket ones: `Authorization`, `Origin`, ...
    pub headers: &'a [(&'a str, &'a str)],
}

impl Request<'_> {
    /// Appends the request head to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        const VEC_WRITE: &str = "writing to a Vec cannot fail";
        debug_assert!(
            [self.host, self.path, self.key]
                .into_iter()
                .chain(self.protocols.iter().copied())
                .chain(self.headers.iter().flat_map(|(n, v)| [*n, *v]))
                .all(|s| !s.contains(['\r', '\n'])),
            "header injection"
        );
        debug_assert!(self.path.starts_with('/'), "origin-form request target");
        write!(
            out,
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: {VERSION}\r\n",
            self.path, self.host, self.key
        )
        .expect(VEC_WRITE);
        if !self.protocols.is_empty() {
            write!(
                out,
                "Sec-WebSocket-Protocol: {}\r\n",
                self.protocols.join(", ")
            )
            .expect(VEC_WRITE);
        }
        for (name, value) in self.headers {
            write!(out, "{name}: {value}\r\n").expect(VEC_WRITE);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// One parsed HTTP/1.1 response head, owned: the caller's buffer is reused after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The reason phrase, `""` if there was none or it was not UTF-8.
    pub reason: String,
    /// `x` in `HTTP/1.x`.
    pub minor_version: u8,
    /// Every header field in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Bytes of the head including the final empty line; a body or the first frame starts
    /// here.
    pub head_len: usize,
}

impl Response {
    /// Parses one response head from the start of `buf`.
    ///
    /// - `Ok(None)`: the head is not complete yet; nothing is consumed, call again with more.
    /// - `Ok(Some(response))`: `response.head_len` bytes are the head; the rest is not looked
    ///   at.
    /// - `Err(e)`: the bytes are not a response head, or it is longer than
    ///   [`MAX_RESPONSE_HEAD`], or it has more than [`MAX_HEADERS`] fields.
    ///
    /// At most [`MAX_RESPONSE_HEAD`] bytes of `buf` are scanned.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, HandshakeError> {
        let window = &buf[..buf.len().min(MAX_RESPONSE_HEAD)];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(window) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
                return Err(HandshakeError::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HandshakeError::Malformed(malformed(e))),
        };
        let headers = parsed
            .headers
            .iter()
            .map(|h| match std::str::from_utf8(h.value) {
                Ok(value) => Ok((h.name.to_owned(), value.to_owned())),
                Err(_) => Err(HandshakeError::Malformed("header value is not utf-8")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Self {
            status: parsed.code.expect("httparse sets the code on Complete"),
            reason: parsed.reason.unwrap_or("").to_owned(),
            minor_version: parsed
                .version
                .expect("httparse sets the version on Complete"),
            headers,
            head_len,
        }))
    }

    /// The value of the first field called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    /// The values of every field called `name`, in order.
    fn values<'s, 'n>(&'s self, name: &'n str) -> impl Iterator<Item = &'s str> + use<'s, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Checks the response to a request that sent `key` and offered `protocols`, as RFC 6455
    /// §4.1 tells a client to, in this order ([`HandshakeError`] variants):
    ///
    /// | check | failure |
    /// |---|---|
    /// | status `101` | `Status` |
    /// | HTTP/1.1 or later | `Malformed` |
    /// | `Upgrade` lists `websocket` | `MissingUpgrade` |
    /// | `Connection` lists `upgrade` | `MissingConnectionUpgrade` |
    /// | one `Sec-WebSocket-Accept`: [`accept_key`] | `MissingAccept`, `Malformed`, `BadAccept` |
    /// | no `Sec-WebSocket-Extensions` element (none offered) | `UnexpectedExtension` |
    /// | at most one `Sec-WebSocket-Protocol`, an offered one | `Malformed`, `UnexpectedProtocol` |
    ///
    /// A server that selects no subprotocol is not an error here (RFC 6455 §4.2.2): the
    /// caller decides whether it can go on without one.
    pub fn check(&self, key: &str, protocols: &[&str]) -> Result<Accepted, HandshakeError> {
        self.check_offer(key, protocols, false)
    }

    /// [`Response::check`] for a request that also offered [`deflate::CLIENT_OFFER`] in
    /// `Sec-WebSocket-Extensions`: the server may accept it (checked by
    /// [`deflate::accept_response`], failing with `Extension`) or not.
    pub fn check_deflate(&self, key: &str, protocols: &[&str]) -> Result<Accepted, HandshakeError> {
        self.check_offer(key, protocols, true)
    }

    fn check_offer(
        &self,
        key: &str,
        protocols: &[&str],
        deflate_offered: bool,
    ) -> Result<Accepted, HandshakeError> {
        // Item 1: anything but 101 is plain HTTP (a redirect, 401, 426 ...).
        if self.status != 101 {
            return Err(HandshakeError::Status {
                status: self.status,
                reason: self.reason.clone(),
            });
        }
        // RFC 9110 §15.2.2: no 101 over HTTP/1.0.
        if self.minor_version < 1 {
            return Err(HandshakeError::Malformed(
                "switching protocols over http/1.0",
            ));
        }
        // Items 2 and 3: tokens compared ASCII case-insensitively.
        let lists = |name| self.values(name).flat_map(list);
        if !lists("upgrade").any(|t| t.eq_ignore_ascii_case("websocket")) {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !lists("connection").any(|t| t.eq_ignore_ascii_case("upgrade")) {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        // Item 4, and §11.3.3: the field MUST NOT appear more than once.
        let mut accepts = self.values("sec-websocket-accept");
        let accept = accepts.next().ok_or(HandshakeError::MissingAccept)?;
        if accepts.next().is_some() {
            return Err(HandshakeError::Malformed(
                "duplicate sec-websocket-accept header",
            ));
        }
        if accept.trim_matches([' ', '\t']) != accept_key(key.as_bytes()) {
            return Err(HandshakeError::BadAccept);
        }
        // Item 5: only an extension we offered may be in use.
        let extensions: Vec<&str> = lists("sec-websocket-extensions").collect();
        let deflate = match extensions.first() {
            None => None,
            Some(extension) if !deflate_offered => {
                return Err(HandshakeError::UnexpectedExtension((*extension).to_owned()))
            }
            Some(_) => deflate::accept_response(&extensions).map_err(HandshakeError::Extension)?,
        };
        // Item 6: the server selects at most one of the offered subprotocols.
        let mut selected = lists("sec-websocket-protocol");
        let protocol = selected.next();
        if selected.next().is_some() {
            return Err(HandshakeError::Malformed(
                "more than one subprotocol selected",
            ));
        }
        if let Some(p) = protocol {
            if !protocols.contains(&p) {
                return Err(HandshakeError::UnexpectedProtocol(p.to_owned()));
            }
        }
        Ok(Accepted {
            protocol: protocol.map(str::to_owned),
            deflate,
        })
    }
}

/// What the server agreed to in its `101`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The subprotocol it selected, one of those offered.
    pub protocol: Option<String>,
    /// permessage-deflate, if offered and accepted.
    pub deflate: Option<Agreed>,
}

/// A response that does not complete the handshake. Messages are lowercase, one line; a
/// value from the response appears only where it is the point (a status, a name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("response head over {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error("http status {status} {reason}, expected 101")]
    Status { status: u16, reason: String },
    #[error("upgrade header lacks websocket")]
    MissingUpgrade,
    #[error("connection header lacks upgrade token")]
    MissingConnectionUpgrade,
    #[error("missing sec-websocket-accept header")]
    MissingAccept,
    #[error("sec-websocket-accept does not match the key")]
    BadAccept,
    #[error("server selected extension {0:?}, which was not offered")]
    UnexpectedExtension(String),
    #[error("permessage-deflate response: {0}")]
    Extension(&'static str),
    #[error("server selected subprotocol {0:?}, which was not offered")]
    UnexpectedProtocol(String),
}

fn malformed(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Version => "invalid http version",
        httparse::Error::Status | httparse::Error::Token => "invalid status line",
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, validate_upgrade, UpgradePolicy};
    use super::*;

    /// RFC 6455 §1.3: the sample nonce and the accept key it gets.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// A valid 101 for `KEY` with `extra` header lines before the end of the head.
    fn response(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n{extra}\r\n"
        )
    }

    fn without(text: &str, name: &str) -> String {
        text.split_inclusive("\r\n")
            .filter(|line| !line.starts_with(&format!("{name}:")))
            .collect()
    }

    fn parse(text: &str) -> Response {
        Response::parse(text.as_bytes())
            .expect("valid head")
            .expect("complete head")
    }

    fn check(text: &str, protocols: &[&str]) -> Result<Accepted, HandshakeError> {
        parse(text).check(KEY, protocols)
    }

    // RFC 6455 §4.1: the request.

    #[test]
    fn key_is_base64_of_the_nonce() {
        assert_eq!(key(*b"the sample nonce"), KEY);
        assert_eq!(key([0; 16]), "AAAAAAAAAAAAAAAAAAAAAA==");
    }

    #[test]
    fn request_bytes() {
        let mut out = b"left alone".to_vec();
        Request {
            host: "server.example.com",
            path: "/chat",
            key: KEY,
            protocols: &[],
            headers: &[],
        }
        .encode(&mut out);
        assert_eq!(
            out,
            b"left aloneGET /chat HTTP/1.1\r\n\
              Host: server.example.com\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\
              \r\n"
        );
        let mut out = Vec::new();
        Request {
            host: "127.0.0.1:8080",
            path: "/ws?subscribe=a,b",
            key: KEY,
            protocols: &["chat", "superchat"],
            headers: &[("Authorization", "Bearer t0k3n"), ("Origin", "http://o")],
        }
        .encode(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "GET /ws?subscribe=a,b HTTP/1.1\r\n\
             Host: 127.0.0.1:8080\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat, superchat\r\n\
             Authorization: Bearer t0k3n\r\n\
             Origin: http://o\r\n\
             \r\n"
        );
    }

    /// The request passes our server's checks, and its 101 passes the client's.
    #[test]
    fn agrees_with_the_server_side() {
        let mut out = Vec::new();
        let offered = ["v1", "v2"];
        Request {
            host: "gw",
            path: "/echo?x",
            key: &key([7; 16]),
            protocols: &offered,
            headers: &[("Authorization", "Bearer t")],
        }
        .encode(&mut out);
        let req = parse_request(&out, 8192).unwrap().unwrap();
        assert_eq!(req.head_len, out.len());
        assert_eq!(req.authorization.as_deref(), Some("Bearer t"));
        let ours = ["v2".to_owned()];
        let policy = UpgradePolicy {
            subprotocols: &ours,
            allowed_origins: None,
            deflate: false,
        };
        let upgrade = validate_upgrade(&req, &policy).expect("valid upgrade");
        let response = upgrade.response();
        let parsed = Response::parse(&response).unwrap().unwrap();
        assert_eq!(parsed.head_len, response.len());
        assert_eq!(
            parsed.check(&key([7; 16]), &offered),
            Ok(Accepted {
                protocol: Some("v2".into()),
                deflate: None
            })
        );
    }

    /// RFC 7692: our offer passes our server, which answers with both contexts off; with
    /// deflate off on the server, no extension and no error.
    #[test]
    fn deflate_offer_agrees_with_the_server_side() {
        for (on, window) in [(true, None), (true, Some(10)), (false, None)] {
            let offer = match window {
                Some(bits) => format!("{}; server_max_window_bits={bits}", deflate::CLIENT_OFFER),
                None => deflate::CLIENT_OFFER.to_owned(),
            };
            let mut out = Vec::new();
            let k = key([9; 16]);
            Request {
                host: "gw",
                path: "/ws",
                key: &k,
                protocols: &[],
                headers: &[("Sec-WebSocket-Extensions", &offer)],
            }
            .encode(&mut out);
            let req = parse_request(&out, 8192).unwrap().unwrap();
            let policy = UpgradePolicy {
                deflate: on,
                ..UpgradePolicy::default()
            };
            let response = validate_upgrade(&req, &policy).unwrap().response();
            let text = String::from_utf8(response.clone()).unwrap();
            assert_eq!(text.contains("Sec-WebSocket-Extensions"), on, "{text}");
            let parsed = Response::parse(&response).unwrap().unwrap();
            let agreed = on.then_some(Agreed {
                server_max_window_bits: window,
            });
            assert_eq!(parsed.check_deflate(&k, &[]).map(|a| a.deflate), Ok(agreed));
            if on {
                // Without the offer, the extension is unexpected.
                assert!(matches!(
                    parsed.check(&k, &[]),
                    Err(HandshakeError::UnexpectedExtension(_))
                ));
            }
        }
        // A server that keeps its context is refused.
        let parsed = Response::parse(
            response("Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            parsed.check_deflate(KEY, &[]),
            Err(HandshakeError::Extension(
                "server keeps a compression context"
            ))
        );
    }

    // RFC 6455 §4.1: the response, read incrementally.

    #[test]
    fn valid_101_with_frames_after_it() {
        let head = response("");
        let bytes = [head.as_bytes(), &[0x81, 0x02, b'h', b'i']].concat();
        let parsed = Response::parse(&bytes).unwrap().unwrap();
        assert_eq!(parsed.head_len, head.len(), "the frame is not consumed");
        assert_eq!(
            (parsed.status, parsed.reason.as_str()),
            (101, "Switching Protocols")
        );
        assert_eq!(parsed.header("SEC-websocket-accept"), Some(ACCEPT));
        assert_eq!(
            parsed.check(KEY, &[]),
            Ok(Accepted {
                protocol: None,
                deflate: None
            })
        );
    }

    #[test]
    fn partial_response_needs_more_and_consumes_nothing() {
        let text = response("");
        for cut in 0..text.len() {
            assert_eq!(
                Response::parse(&text.as_bytes()[..cut]),
                Ok(None),
                "cut {cut}"
            );
        }
        assert!(Response::parse(text.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn tokens_are_case_insensitive_and_may_be_lists() {
        let text = response("")
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("Connection: Upgrade", "CONNECTION: keep-alive, UPGRADE");
        assert_eq!(
            check(&text, &[]),
            Ok(Accepted {
                protocol: None,
                deflate: None
            })
        );
        let padded = response("").replace(ACCEPT, &format!(" {ACCEPT}\t"));
        assert!(
            check(&padded, &[]).is_ok(),
            "optional whitespace around the accept key"
        );
    }

    #[test]
    fn subprotocol_must_be_one_offered() {
        let chosen = response("Sec-WebSocket-Protocol: chat\r\n");
        assert_eq!(
            check(&chosen, &["superchat", "chat"]),
            Ok(Accepted {
                protocol: Some("chat".into()),
                deflate: None
            })
        );
        assert_eq!(
            check(&chosen, &["superchat"]),
            Err(HandshakeError::UnexpectedProtocol("chat".into()))
        );
        assert_eq!(
            check(&chosen, &[]),
            Err(HandshakeError::UnexpectedProtocol("chat".into())),
            "none offered"
        );
        assert_eq!(
            check(&chosen.replace("chat", "Chat"), &["chat"]),
            Err(HandshakeError::UnexpectedProtocol("Chat".into())),
            "compared exactly"
        );
        // Offered but none selected: for the caller to judge.
        assert_eq!(
            check(&response(""), &["chat"]),
            Ok(Accepted {
                protocol: None,
                deflate: None
            })
        );
        let two = response("Sec-WebSocket-Protocol: chat, superchat\r\n");
        assert_eq!(
            check(&two, &["chat", "superchat"]),
            Err(HandshakeError::Malformed(
                "more than one subprotocol selected"
            ))
        );
    }

    #[test]
    fn non_101_status_is_an_error_with_the_response_readable() {
        let text = "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\
                    Content-Length: 3\r\n\r\nno\n";
        let parsed = parse(text);
        assert_eq!(parsed.header("sec-websocket-version"), Some("13"));
        assert_eq!(parsed.head_len, text.len() - 3);
        let err = parsed.check(KEY, &[]).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::Status {
                status: 426,
                reason: "Upgrade Required".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "http status 426 Upgrade Required, expected 101"
        );
        let ok = "HTTP/1.1 200 OK\r\n\r\n";
        assert!(matches!(
            check(ok, &[]),
            Err(HandshakeError::Status { status: 200, .. })
        ));
    }

    #[test]
    fn missing_or_wrong_headers() {
        use HandshakeError as E;
        let cases = [
            (without(&response(""), "Upgrade"), E::MissingUpgrade),
            (response("").replace("websocket", "h2c"), E::MissingUpgrade),
            (
                without(&response(""), "Connection"),
                E::MissingConnectionUpgrade,
            ),
            (
                response("").replace("Connection: Upgrade", "Connection: keep-alive"),
                E::MissingConnectionUpgrade,
            ),
            (
                without(&response(""), "Sec-WebSocket-Accept"),
                E::MissingAccept,
            ),
            (
                response("").replace(ACCEPT, "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                E::BadAccept,
            ),
            (response("").replace(ACCEPT, ""), E::BadAccept),
            (
                response(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
                E::Malformed("duplicate sec-websocket-accept header"),
            ),
            (
                response("Sec-WebSocket-Extensions: permessage-deflate; x=1\r\n"),
                E::UnexpectedExtension("permessage-deflate; x=1".into()),
            ),
            (
                response("").replace("HTTP/1.1", "HTTP/1.0"),
                E::Malformed("switching protocols over http/1.0"),
            ),
        ];
        for (text, err) in cases {
            assert_eq!(check(&text, &[]), Err(err), "{text}");
        }
        // The accept key of another nonce.
        assert_eq!(
            parse(&response("")).check("AAAAAAAAAAAAAAAAAAAAAA==", &[]),
            Err(E::BadAccept)
        );
    }

    #[test]
    fn malformed_and_oversized_heads() {
        use HandshakeError as E;
        let cases: [(&[u8], &str); 6] = [
            (b"HTTP/2 101 Switching\r\n\r\n", "invalid http version"),
            (b"HTTP/1.1 1O1 Switching\r\n\r\n", "invalid status line"),
            (b"GET / HTTP/1.1\r\n\r\n", "invalid http version"),
            (
                b"HTTP/1.1 101 OK\r\nBad Name: x\r\n\r\n",
                "invalid header name",
            ),
            (
                b"HTTP/1.1 101 OK\r\nX: a\x01b\r\n\r\n",
                "invalid header value",
            ),
            (
                b"HTTP/1.1 101 OK\r\nX: caf\xe9\r\n\r\n",
                "header value is not utf-8",
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(
                Response::parse(bytes),
                Err(E::Malformed(reason)),
                "{bytes:?}"
            );
        }
        let mut many = b"HTTP/1.1 101 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            Response::parse(&many),
            Err(E::Malformed("too many headers"))
        );
        // Incomplete within the bound is fine; past it, too large.
        let endless = [
            b"HTTP/1.1 101 OK\r\nX: ".as_slice(),
            &[b'a'; MAX_RESPONSE_HEAD],
        ]
        .concat();
        assert_eq!(Response::parse(&endless[..MAX_RESPONSE_HEAD]), Ok(None));
        assert_eq!(Response::parse(&endless), Err(E::TooLarge));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            buf in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            if let Ok(Some(response)) = Response::parse(&buf) {
                proptest::prop_assert!(response.head_len <= buf.len());
                let _ = response.check(KEY, &["chat"]);
            }
        }

        #[test]
        fn one_changed_byte_never_panics(at in 0..120usize, byte in proptest::num::u8::ANY) {
            let mut buf = response("Sec-WebSocket-Protocol: chat\r\n").into_bytes();
            let at = at % buf.len();
            buf[at] = byte;
            if let Ok(Some(response)) = Response::parse(&buf) {
                let _ = response.check(KEY, &["chat"]);
            }
        }
    }
}
