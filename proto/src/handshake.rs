//! HTTP/1.1 request heads and the server side of the WebSocket opening handshake (RFC 6455
//! §4.2), sans-I/O; the client side is in [`client`].
//!
//! Owns: parsing one request head out of the caller's buffer (incrementally and bounded),
//! checking a WebSocket upgrade against RFC 6455 §4.2.1 and the server's [`UpgradePolicy`],
//! and rendering the `101`, error and plain responses as bytes.
//!
//! Must not: touch sockets or clocks, read request bodies, route paths, or keep state
//! between calls. The reactor feeds bytes in, writes the bytes that come back, and decides
//! what to do with the connection afterwards (every [`HttpError`] response says
//! `Connection: close`).
//!
//! ```text
//! bytes ─► parse_request ─► Request ─► validate_upgrade ─► Upgrade ─► response() ─► 101
//!              │ Ok(None): read more            │
//!              └── HttpError ◄──────────────────┘ ─► HttpError::response() ─► 4xx/5xx
//! ```

use std::io::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use crate::deflate::{self, Agreed};

pub mod client;

/// Most header fields one request (or, for a client, response) head may carry; one more is
/// `431`.
pub const MAX_HEADERS: usize = 64;

/// The GUID appended to `Sec-WebSocket-Key` before hashing (RFC 6455 §1.3).
pub const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only `Sec-WebSocket-Version` we speak (RFC 6455 §4.1, §4.4).
pub const VERSION: &str = "13";

/// Request method. Methods are case-sensitive (RFC 9110 §9.1), so `get` is [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Head,
    Put,
    Delete,
    Options,
    /// Any other token (`PATCH`, `CONNECT`, `get`, ...).
    Other,
}

impl Method {
    fn parse(token: &str) -> Self {
        match token {
            "GET" => Self::Get,
            "POST" => Self::Post,
            "HEAD" => Self::Head,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "OPTIONS" => Self::Options,
            _ => Self::Other,
        }
    }
}

/// One parsed HTTP/1.1 request head.
///
/// Owned: the caller's buffer is reused after parsing. Only the fields the gateway uses are
/// kept; other header fields are checked (valid UTF-8) and dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The resource name without the query. For an absolute-form target
    /// (`GET http://host/ws HTTP/1.1`, RFC 9112 §3.2.2) this is the part after the authority
    /// (`/` if there is none); `*` for `OPTIONS *`; the authority for `CONNECT`.
    pub path: String,
    /// Text after the first `?`, not percent-decoded; `Some("")` for a bare `?`.
    pub query: Option<String>,
    /// `x` in `HTTP/1.x`; httparse accepts only 0 and 1.
    pub minor_version: u8,
    /// The `Host` header as sent (may be empty, RFC 9112 §3.2). Not required here, so side
    /// endpoints decide; [`validate_upgrade`] requires it. Two `Host` fields are `400`.
    pub host: Option<String>,
    /// `Content-Length`; repeated fields or list elements must agree (RFC 9110 §8.6).
    /// `None` when the body is chunked.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding: chunked`: the body follows in chunks, to be read with
    /// [`crate::http1::ChunkedDecoder`]. Only `chunked` alone parses (RFC 9112 §6.1, §6.3):
    /// with `Content-Length` too it is `400` (a smuggling signal), on HTTP/1.0 `400`, with
    /// `chunked` not last (or twice) `400`, with another coding before it `501`.
    pub chunked: bool,
    /// `Authorization`, verbatim. Two fields are `400`: ambiguous credentials are refused.
    pub authorization: Option<String>,
    /// `Expect: 100-continue` on HTTP/1.1 (RFC 9110 §10.1.1; HTTP/1.0 ignores it): the
    /// client waits for `100 Continue` (or a final status) before sending the body.
    pub expect_continue: bool,
    /// Whether the connection persists after the response (RFC 9112 §9.3): HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`. `close` wins.
    pub keep_alive: bool,
    /// `Some` when an `Upgrade` field lists the `websocket` token (RFC 6455 §4.2.1 item 3).
    pub upgrade: Option<UpgradeHeaders>,
    /// Bytes of the head including the final empty line; the body or first frame starts here.
    pub head_len: usize,
}

/// The WebSocket fields of a request that asked for `Upgrade: websocket`, not yet validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeHeaders {
    /// `Connection` lists the `upgrade` token (RFC 6455 §4.2.1 item 4).
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Key`; a second field is `400` at parse time (RFC 6455 §11.3.1).
    pub key: Option<String>,
    /// `Sec-WebSocket-Version`; a second field is `400` at parse time (RFC 6455 §11.3.5).
    pub version: Option<String>,
    /// Every `Sec-WebSocket-Protocol` element, over all fields, in order (RFC 6455 §11.3.4).
    pub protocols: Vec<String>,
    /// `Origin` (RFC 6454 §7); a second field is `400` at parse time.
    pub origin: Option<String>,
    /// Every `Sec-WebSocket-Extensions` element with its parameters (`permessage-deflate;
    /// client_max_window_bits`), over all fields, in order. Commas inside quoted parameter
    /// values do not split. [`crate::deflate::negotiate`] picks from them.
    pub extensions: Vec<String>,
}

/// Parses one request head from the start of `buf`.
///
/// - `Ok(None)`: the head is not complete yet; nothing is consumed, call again with more.
/// - `Ok(Some(req))`: `req.head_len` bytes are the head; anything after is not looked at.
/// - `Err(e)`: send `e.response()` and close. A head longer than `max_header_bytes`
///   (complete, or still incomplete past that many bytes) or with more than [`MAX_HEADERS`]
///   fields is `431`; a transfer coding other than `chunked` is `501`; anything malformed
///   is `400`, including header values that are not UTF-8.
///
/// At most `max_header_bytes` of `buf` are scanned, so an attacker's megabyte costs nothing.
pub fn parse_request(buf: &[u8], max_header_bytes: usize) -> Result<Option<Request>, HttpError> {
    // A head that has not ended within the bound is too large whatever follows, so httparse
    // never sees past it: a partial parse of a full window is 431.
    let window = &buf[..buf.len().min(max_header_bytes)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_header_bytes => {
            return Err(HttpError::HEAD_TOO_LARGE)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::from_httparse(e)),
    };

    let raw_method = parsed.method.expect("httparse sets the method on Complete");
    let target = parsed.path.expect("httparse sets the target on Complete");
    let minor_version = parsed
        .version
        .expect("httparse sets the version on Complete");
    let method = Method::parse(raw_method);
    let (path, query) = split_target(method, raw_method, target)?;

    // httparse admits obs-text (0x80..=0xFF) in header values; we take UTF-8 only. The
    // request line and names are ASCII, so one pass over the head checks every value.
    let head = std::str::from_utf8(&window[..head_len])
        .map_err(|_| HttpError::bad("header value is not utf-8"))?;
    let mut fields = Fields::default();
    for header in parsed.headers.iter() {
        fields.add(header.name, sub_str(head, header.value)?)?;
    }

    let chunked = fields.transfer_encoding.is_some();
    if let Some(te) = &fields.transfer_encoding {
        te.check(minor_version, fields.content_length.is_some())?;
    }
    // RFC 9112 §9.3: `close` ends any connection; HTTP/1.0 persists only on request.
    let keep_alive = !fields.close && (minor_version >= 1 || fields.keep_alive);
    let upgrade = fields.upgrade_websocket.then(|| UpgradeHeaders {
        connection_upgrade: fields.connection_upgrade,
        key: fields.key.map(str::to_owned),
        version: fields.version.map(str::to_owned),
        protocols: fields.protocols,
        origin: fields.origin.map(str::to_owned),
        extensions: fields.extensions,
    });

    Ok(Some(Request {
        method,
        path: path.to_owned(),
        query: query.map(str::to_owned),
        minor_version,
        host: fields.host.map(str::to_owned),
        content_length: fields.content_length,
        chunked,
        authorization: fields.authorization.map(str::to_owned),
        expect_continue: fields.expect_continue && minor_version >= 1,
        keep_alive,
        upgrade,
        head_len,
    }))
}

/// What the server accepts in an upgrade.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpgradePolicy<'a> {
    /// Subprotocols in server preference order; the first one the client offered wins.
    pub subprotocols: &'a [String],
    /// `None`: any `Origin` (or none). `Some(list)`: `Origin` must equal one entry, compared
    /// ASCII-case-insensitively as the whole `scheme://host[:port]` (RFC 6454 §6.1).
    pub allowed_origins: Option<&'a [String]>,
    /// Whether to accept a permessage-deflate offer (RFC 7692).
    pub deflate: bool,
}

/// A validated upgrade: what the `101` response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept`, see [`accept_key`].
    pub accept: String,
    /// The selected subprotocol, spelled as configured (and as offered: matching is exact).
    pub protocol: Option<String>,
    /// permessage-deflate, when allowed and a valid offer was made.
    pub deflate: Option<Agreed>,
}

impl Upgrade {
    /// The `101 Switching Protocols` response bytes (RFC 6455 §4.2.2 item 5), with
    /// `Sec-WebSocket-Extensions` when permessage-deflate was agreed.
    pub fn response(&self) -> Vec<u8> {
        const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
            Upgrade: websocket\r\n\
            Connection: Upgrade\r\n\
            Sec-WebSocket-Accept: ";
        const PROTOCOL: &[u8] = b"\r\nSec-WebSocket-Protocol: ";
        let protocol_len = self
            .protocol
            .as_ref()
            .map_or(0, |p| PROTOCOL.len() + p.len());
        let mut out = Vec::with_capacity(HEAD.len() + self.accept.len() + protocol_len + 4);
        out.extend_from_slice(HEAD);
        out.extend_from_slice(self.accept.as_bytes());
        if let Some(protocol) = &self.protocol {
            out.extend_from_slice(PROTOCOL);
            out.extend_from_slice(protocol.as_bytes());
        }
        if let Some(agreed) = &self.deflate {
            out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
            out.extend_from_slice(agreed.response().as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        out
    }
}

/// Checks a parsed request against RFC 6455 §4.2.1 and `policy`, in this order:
///
/// | check | failure |
/// |---|---|
/// | method `GET` | `405`, `Allow: GET` |
/// | HTTP/1.1 or later | `400` |
/// | `Host` present and non-empty | `400` |
/// | `Upgrade` lists `websocket` | `426`, `Upgrade: websocket` |
/// | `Connection` lists `upgrade` | `400` |
/// | `Sec-WebSocket-Version` is exactly `13` | `426`, `Sec-WebSocket-Version: 13` |
/// | `Sec-WebSocket-Key` present, base64 of exactly 16 bytes | `400` |
/// | `Origin` in `policy.allowed_origins`, when set and sent (browsers always send it) | `403` |
///
/// The subprotocol is the first of `policy.subprotocols` that the client offered, compared
/// exactly (browsers fail the connection unless the reply is byte-equal to an offer); no
/// match means no `Sec-WebSocket-Protocol` header, which is not an error (RFC 6455 §4.2.2).
pub fn validate_upgrade(req: &Request, policy: &UpgradePolicy<'_>) -> Result<Upgrade, HttpError> {
    // A HEAD gets the head a GET without an upgrade would get (RFC 9110 §9.3.2): it
    // cannot upgrade, and is told what would.
    if req.method == Method::Head {
        return Err(HttpError::UPGRADE_REQUIRED);
    }
    // RFC 6455 §4.2.1 item 1: an HTTP/1.1 or higher GET request.
    if req.method != Method::Get {
        return Err(HttpError::METHOD_NOT_ALLOWED);
    }
    // A GET has no content of defined meaning (RFC 9110 §9.3.1), and the bytes after an
    // upgrade's head are the client's first frames: taken as a body, they were lost.
    if req.chunked || req.content_length.is_some_and(|n| n > 0) {
        return Err(HttpError::bad("an upgrade request has no body"));
    }
    if req.minor_version < 1 {
        return Err(HttpError::bad("websocket requires http/1.1"));
    }
    // RFC 6455 §4.2.1 item 2: a Host header field.
    if req.host.as_deref().is_none_or(str::is_empty) {
        return Err(HttpError::bad("missing host header"));
    }
    // RFC 6455 §4.2.1 item 3. 426 rather than 400 so a plain GET (or an h2c upgrade) to a
    // WebSocket path learns what to ask for (RFC 9110 §15.5.22).
    let Some(up) = &req.upgrade else {
        return Err(HttpError::UPGRADE_REQUIRED);
    };
    // RFC 6455 §4.2.1 item 4.
    if !up.connection_upgrade {
        return Err(HttpError::bad("connection header lacks upgrade token"));
    }
    // RFC 6455 §4.2.1 item 6 and §4.4: name the version we do speak. Checked before the key
    // so a client of another version learns that first.
    if up.version.as_deref() != Some(VERSION) {
        return Err(HttpError::VERSION_REQUIRED);
    }
    // RFC 6455 §4.2.1 item 5: base64 of a 16-byte nonce.
    let Some(key) = up.key.as_deref() else {
        return Err(HttpError::bad("missing sec-websocket-key header"));
    };
    if !valid_key(key) {
        return Err(HttpError::bad("invalid sec-websocket-key"));
    }
    // RFC 6455 §4.2.1 item 7 and §10.2: the Origin check is the server's defence against
    // other sites' pages in a browser, and browsers always send Origin. A client without
    // one is not a browser (a backend, a native app), which could send any Origin it liked:
    // refusing it would protect nothing and lock out honest clients (it was refused).
    if let (Some(allowed), Some(origin)) = (policy.allowed_origins, up.origin.as_deref()) {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            return Err(HttpError::forbidden("origin not allowed"));
        }
    }
    // RFC 6455 §4.2.2 item 5 /subprotocol/: server preference order.
    let protocol = policy
        .subprotocols
        .iter()
        .find(|ours| up.protocols.iter().any(|theirs| theirs == *ours))
        .cloned();
    // RFC 7692 §5, §7.1: the first acceptable permessage-deflate offer.
    let deflate = policy
        .deflate
        .then(|| deflate::negotiate(&up.extensions))
        .flatten();
    Ok(Upgrade {
        accept: accept_key(key.as_bytes()),
        protocol,
        deflate,
    })
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §1.3, §4.2.2 item 5.4):
/// `base64(SHA-1(key ++ GUID))`. `key` is the header value as sent, not decoded.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    BASE64.encode(sha1.finalize())
}

/// A request the gateway refuses, with the HTTP status to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct HttpError {
    pub status: u16,
    /// Short snake_case code for the body's `error` field; by default the status's
    /// ([`error_code`]), so clients can branch on it without parsing `reason`.
    pub code: &'static str,
    /// Lowercase, one line; the body's `message`. Never echoes peer bytes.
    pub reason: &'static str,
    /// A header the status requires: `Allow` on 405, `Upgrade` or `Sec-WebSocket-Version`
    /// on 426, `WWW-Authenticate` on 401, `Retry-After` on 503.
    pub extra_header: Option<(&'static str, &'static str)>,
}

impl HttpError {
    /// `413`: a request body over the configured limit (`Content-Length` or chunked).
    pub const BODY_TOO_LARGE: Self = Self::new(413, "request body over the limit");
    const HEAD_TOO_LARGE: Self = Self::new(431, "request header too large");
    const TOO_MANY_HEADERS: Self = Self::new(431, "too many headers");
    const METHOD_NOT_ALLOWED: Self =
        Self::new(405, "method not allowed").with_header("Allow", "GET");
    const UPGRADE_REQUIRED: Self =
        Self::new(426, "websocket upgrade required").with_header("Upgrade", "websocket");
    const VERSION_REQUIRED: Self = Self::new(426, "unsupported websocket version")
        .with_header("Sec-WebSocket-Version", VERSION);

    /// An error with the status's code and no extra header.
    pub const fn new(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            code: error_code(status),
            reason,
            extra_header: None,
        }
    }

    /// The same error with a more specific code (`bad_json` rather than `bad_request`).
    pub const fn with_code(self, code: &'static str) -> Self {
        Self { code, ..self }
    }

    /// The same error with a header the status requires.
    pub const fn with_header(self, name: &'static str, value: &'static str) -> Self {
        Self {
            extra_header: Some((name, value)),
            ..self
        }
    }

    pub(crate) const fn bad(reason: &'static str) -> Self {
        Self::new(400, reason)
    }

    const fn forbidden(reason: &'static str) -> Self {
        Self::new(403, reason)
    }

    fn from_httparse(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => Self::TOO_MANY_HEADERS,
            httparse::Error::HeaderName => Self::bad("invalid header name"),
            httparse::Error::HeaderValue => Self::bad("invalid header value"),
            httparse::Error::NewLine => Self::bad("invalid line ending"),
            httparse::Error::Version => Self::bad("invalid http version"),
            // Token covers the method and the request target; Status is response-only.
            httparse::Error::Token | httparse::Error::Status => Self::bad("invalid request line"),
        }
    }

    /// The complete error response with `Connection: close` (after a refused head the rest
    /// of the stream cannot be trusted); see [`HttpError::response_keep_alive`].
    pub fn response(&self) -> Vec<u8> {
        self.response_keep_alive(false)
    }

    /// The error response every 4xx and 5xx of the gateway uses: `application/json` body
    /// `{"error":"<code>","message":"<reason>"}`, the extra header, and `Connection` as
    /// asked (a refused publish leaves its connection usable).
    pub fn response_keep_alive(&self, keep_alive: bool) -> Vec<u8> {
        let mut body = Vec::with_capacity(32 + self.code.len() + self.reason.len());
        body.extend_from_slice(b"{\"error\":");
        push_json_string(&mut body, self.code);
        body.extend_from_slice(b",\"message\":");
        push_json_string(&mut body, self.reason);
        body.push(b'}');
        crate::outgoing::http_response(
            self.status,
            "application/json",
            self.extra_header.as_slice(),
            &body,
            keep_alive,
        )
    }
}

/// The default [`HttpError::code`] for `status`: its reason phrase in snake_case, shortened.
pub const fn error_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "too_large",
        426 => "upgrade_required",
        429 => "rate_limited",
        431 => "header_too_large",
        501 => "not_implemented",
        503 => "unavailable",
        500..=599 => "server_error",
        _ => "error",
    }
}

/// `s` as a JSON string. Codes and reasons are our own literals, but escaping keeps a future
/// quote in one from breaking every client's parser.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0..=0x1f => write!(out, "\\u{b:04x}").expect("writing to a Vec cannot fail"),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// The canonical reason phrase for `status` (RFC 9110 §15), or `""` for one we never send
/// (an empty reason phrase is valid, RFC 9112 §4).
pub fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The header fields we keep, borrowed from the caller's buffer until the head is accepted.
#[derive(Default)]
struct Fields<'b> {
    host: Option<&'b str>,
    content_length: Option<usize>,
    transfer_encoding: Option<TransferCodings>,
    authorization: Option<&'b str>,
    expect_continue: bool,
    close: bool,
    keep_alive: bool,
    connection_upgrade: bool,
    upgrade_websocket: bool,
    key: Option<&'b str>,
    version: Option<&'b str>,
    origin: Option<&'b str>,
    protocols: Vec<String>,
    extensions: Vec<String>,
}

impl<'b> Fields<'b> {
    fn add(&mut self, name: &str, value: &'b str) -> Result<(), HttpError> {
        let is = |lower: &str| name.eq_ignore_ascii_case(lower);
        // Dispatch on length first: most fields (User-Agent, Cookie, ...) fail one compare.
        match name.len() {
            4 if is("host") => set_once(&mut self.host, value, "duplicate host header")?,
            6 if is("origin") => set_once(&mut self.origin, value, "duplicate origin header")?,
            6 if is("expect") => {
                self.expect_continue |= list(value).any(|t| t.eq_ignore_ascii_case("100-continue"));
            }
            7 if is("upgrade") => {
                // RFC 9110 §7.8: protocol names; `websocket/13` is some other protocol.
                self.upgrade_websocket |= list(value).any(|t| t.eq_ignore_ascii_case("websocket"));
            }
            10 if is("connection") => {
                for token in list(value) {
                    if token.eq_ignore_ascii_case("close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        self.keep_alive = true;
                    } else if token.eq_ignore_ascii_case("upgrade") {
                        self.connection_upgrade = true;
                    }
                }
            }
            13 if is("authorization") => set_once(
                &mut self.authorization,
                value,
                "duplicate authorization header",
            )?,
            14 if is("content-length") => {
                let n = content_length(value)?;
                if self.content_length.is_some_and(|prev| prev != n) {
                    return Err(HttpError::bad("conflicting content-length"));
                }
                self.content_length = Some(n);
            }
            17 if is("transfer-encoding") => {
                // RFC 9110 §5.3: repeated fields are one list, in order.
                let te = self.transfer_encoding.get_or_insert_with(Default::default);
                for coding in list(value) {
                    te.add(coding);
                }
            }
            // RFC 6455 §11.3.1: MUST NOT appear more than once in a request.
            17 if is("sec-websocket-key") => {
                set_once(&mut self.key, value, "duplicate sec-websocket-key header")?;
            }
            // RFC 6455 §11.3.5: MUST NOT appear more than once in a request.
            21 if is("sec-websocket-version") => {
                set_once(
                    &mut self.version,
                    value,
                    "duplicate sec-websocket-version header",
                )?;
            }
            // RFC 6455 §11.3.4: MAY appear multiple times in a request.
            22 if is("sec-websocket-protocol") => {
                self.protocols.extend(list(value).map(str::to_owned));
            }
            // RFC 6455 §11.3.2: MAY appear multiple times in a request.
            24 if is("sec-websocket-extensions") => {
                self.extensions.extend(list(value).map(str::to_owned));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The codings of `Transfer-Encoding`, in order, reduced to what decides the answer.
#[derive(Default)]
struct TransferCodings {
    /// `chunked` is the last coding so far.
    chunked_last: bool,
    /// `chunked` appeared before the last coding, or twice.
    chunked_early: bool,
    /// A coding other than `chunked` appeared.
    other: bool,
}

impl TransferCodings {
    fn add(&mut self, coding: &str) {
        // Parameters (`gzip;q=1`) make it some coding other than chunked all the same.
        let chunked = coding.eq_ignore_ascii_case("chunked");
        self.chunked_early |= self.chunked_last;
        self.chunked_last = chunked;
        self.other |= !chunked;
    }

    /// RFC 9112 §6.1 and §6.3: which framings we can read.
    fn check(&self, minor_version: u8, content_length: bool) -> Result<(), HttpError> {
        if content_length {
            // §6.3: the sender may be smuggling one request inside another.
            return Err(HttpError::bad("content-length with transfer-encoding"));
        }
        if minor_version == 0 {
            // §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            return Err(HttpError::bad("transfer-encoding in http/1.0"));
        }
        if !self.chunked_last || self.chunked_early {
            // §6.3 item 4 (MUST 400), and §7: chunked is applied once, last.
            return Err(HttpError::bad("chunked is not the final transfer coding"));
        }
        if self.other {
            // §6.1: a coding we do not understand (gzip before chunked, say).
            return Err(HttpError::new(501, "transfer coding not supported"));
        }
        Ok(())
    }
}

/// `bytes`, a slice of `head`'s memory, as a `&str` without checking it again. UTF-8 never
/// puts an ASCII byte inside a character, so a value bounded by ASCII (`:`, SP, CR) of a valid
/// head is valid and its ends are char boundaries. Should `bytes` lie elsewhere, it is checked.
fn sub_str<'b>(head: &'b str, bytes: &'b [u8]) -> Result<&'b str, HttpError> {
    let start = (bytes.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
    match head.get(start..start.wrapping_add(bytes.len())) {
        Some(s) if s.as_ptr() == bytes.as_ptr() => Ok(s),
        _ => std::str::from_utf8(bytes).map_err(|_| HttpError::bad("header value is not utf-8")),
    }
}

fn set_once<'b>(
    slot: &mut Option<&'b str>,
    value: &'b str,
    duplicate: &'static str,
) -> Result<(), HttpError> {
    if slot.replace(value).is_some() {
        return Err(HttpError::bad(duplicate));
    }
    Ok(())
}

/// `Content-Length = 1*DIGIT`, or a list of equal ones (RFC 9110 §8.6).
fn content_length(value: &str) -> Result<usize, HttpError> {
    const INVALID: HttpError = HttpError::bad("invalid content-length");
    let mut length = None;
    for element in value.split(',') {
        let element = trim_ows(element);
        // `usize::from_str` alone would take `+5`.
        if element.is_empty() || !element.bytes().all(|b| b.is_ascii_digit()) {
            return Err(INVALID);
        }
        let n: usize = element.parse().map_err(|_| INVALID)?;
        if length.is_some_and(|prev| prev != n) {
            return Err(HttpError::bad("conflicting content-length"));
        }
        length = Some(n);
    }
    length.ok_or(INVALID)
}

/// Splits a request target into resource name and query (RFC 9112 §3.2).
fn split_target<'t>(
    method: Method,
    raw_method: &str,
    target: &'t str,
) -> Result<(&'t str, Option<&'t str>), HttpError> {
    let (target, query) = match target.split_once('?') {
        Some((target, query)) => (target, Some(query)),
        None => (target, None),
    };
    // origin-form, the common case.
    if target.starts_with('/') {
        return Ok((target, query));
    }
    // absolute-form; RFC 6455 §4.2.1 item 1 allows it for the resource name.
    let after_scheme = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"));
    if let Some(rest) = after_scheme {
        let path = rest.find('/').map_or("/", |i| &rest[i..]);
        return Ok((path, query));
    }
    match (method, raw_method) {
        (Method::Options, _) if target == "*" && query.is_none() => Ok((target, None)),
        (Method::Other, "CONNECT") if query.is_none() => Ok((target, None)),
        _ => Err(HttpError::bad("invalid request target")),
    }
}

fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// The non-empty elements of a `#rule` list (RFC 9110 §5.6.1), trimmed of whitespace.
/// A comma inside a quoted string does not split (extension parameters may be quoted).
fn list(value: &str) -> List<'_> {
    List { rest: value }
}

struct List<'a> {
    rest: &'a str,
}

impl<'a> Iterator for List<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while !self.rest.is_empty() {
            let bytes = self.rest.as_bytes();
            let mut end = bytes
                .iter()
                .position(|&b| b == b',' || b == b'"')
                .unwrap_or(bytes.len());
            if bytes.get(end) == Some(&b'"') {
                end = unquoted_comma(bytes, end);
            }
            let element = trim_ows(&self.rest[..end]);
            // `end` is a ',' (one byte) or the end of the string.
            self.rest = self.rest.get(end + 1..).unwrap_or("");
            if !element.is_empty() {
                return Some(element);
            }
        }
        None
    }
}

/// The first ',' at or after `from` outside a quoted string (RFC 9110 §5.6.4), or the end.
fn unquoted_comma(bytes: &[u8], from: usize) -> usize {
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate().skip(from) {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return i,
            _ => {}
        }
    }
    bytes.len()
}

/// RFC 6455 §4.1: base64 of 16 bytes is exactly 24 characters with `==`; the standard
/// engine also rejects non-canonical trailing bits.
fn valid_key(key: &str) -> bool {
    // 18 = the engine's decoded-length estimate for 24 characters.
    let mut nonce = [0u8; 18];
    key.len() == 24 && BASE64.decode_slice(key, &mut nonce) == Ok(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8 * 1024;

    /// RFC 6455 §1.2 / §4.2.1 sample opening handshake, plus a Version header.
    const SAMPLE: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\
        \r\n";

    /// A minimal valid upgrade request to `/ws` plus `extra` header lines (each ending in
    /// CRLF); a default field is dropped when `extra` sets the same name.
    fn upgrade_request(extra: &str) -> Vec<u8> {
        let defaults = [
            ("Host", "Host: gw.example\r\n"),
            ("Upgrade", "Upgrade: websocket\r\n"),
            ("Connection", "Connection: Upgrade\r\n"),
            (
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            ),
            ("Sec-WebSocket-Version", "Sec-WebSocket-Version: 13\r\n"),
        ];
        let mut req = String::from("GET /ws HTTP/1.1\r\n");
        for (name, line) in defaults {
            if !extra.lines().any(|l| l.starts_with(&format!("{name}:"))) {
                req.push_str(line);
            }
        }
        req.push_str(extra);
        req.push_str("\r\n");
        req.into_bytes()
    }

    /// Drops every header line starting with `name:` from a request.
    fn without(req: &[u8], name: &str) -> Vec<u8> {
        let text = std::str::from_utf8(req).unwrap();
        let prefix = format!("{name}:");
        text.split_inclusive("\r\n")
            .filter(|l| !l.starts_with(&prefix))
            .collect::<String>()
            .into_bytes()
    }

    fn parse(buf: &[u8]) -> Request {
        parse_request(buf, MAX)
            .expect("parses")
            .expect("complete head")
    }

    fn validate(buf: &[u8]) -> Result<Upgrade, HttpError> {
        validate_upgrade(&parse(buf), &UpgradePolicy::default())
    }

    #[track_caller]
    fn assert_parse_fails(buf: &[u8], status: u16, reason: &str) {
        let err = parse_request(buf, MAX).expect_err("must be refused");
        assert_eq!((err.status, err.reason), (status, reason), "{err}");
        assert_eq!(err.extra_header, None);
    }

    #[track_caller]
    fn assert_upgrade_fails(
        buf: &[u8],
        policy: &UpgradePolicy<'_>,
        status: u16,
        reason: &str,
        extra: Option<(&str, &str)>,
    ) {
        let err = validate_upgrade(&parse(buf), policy).expect_err("must be refused");
        assert_eq!((err.status, err.reason), (status, reason), "{err}");
        assert_eq!(err.extra_header, extra);
        let response = String::from_utf8(err.response()).unwrap();
        if let Some((name, value)) = extra {
            assert!(
                response.contains(&format!("\r\n{name}: {value}\r\n")),
                "{response}"
            );
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    // RFC 6455 §1.3: Sec-WebSocket-Accept

    #[test]
    fn accept_key_matches_rfc_sample() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    // RFC 9112 §2.2: message parsing, incremental and bounded

    #[test]
    fn every_split_is_incomplete_until_the_last_byte() {
        for cut in 0..SAMPLE.len() {
            assert_eq!(parse_request(&SAMPLE[..cut], MAX), Ok(None), "cut at {cut}");
        }
        let req = parse(SAMPLE);
        assert_eq!(req.head_len, SAMPLE.len());
    }

    #[test]
    fn bytes_after_the_head_are_not_counted() {
        // A masked text frame "Hi" right behind the head.
        let mut buf = SAMPLE.to_vec();
        buf.extend_from_slice(&[0x81, 0x82, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x93]);
        let req = parse(&buf);
        assert_eq!(req.head_len, SAMPLE.len());
        // And a partial first frame does not make the head partial.
        assert_eq!(parse(&buf[..SAMPLE.len() + 1]).head_len, SAMPLE.len());
    }

    #[test]
    fn sample_request_fields() {
        let req = parse(SAMPLE);
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.path, "/chat");
        assert_eq!(req.query, None);
        assert_eq!(req.minor_version, 1);
        assert_eq!(req.host.as_deref(), Some("server.example.com"));
        assert_eq!(req.content_length, None);
        assert_eq!(req.authorization, None);
        assert!(req.keep_alive);
        let up = req.upgrade.expect("websocket upgrade");
        assert!(up.connection_upgrade);
        assert_eq!(up.key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(up.version.as_deref(), Some("13"));
        assert_eq!(up.protocols, strings(&["chat", "superchat"]));
        assert_eq!(up.origin.as_deref(), Some("http://example.com"));
        assert!(up.extensions.is_empty());
    }

    #[test]
    fn plain_request_fields() {
        let buf = b"POST /publish/prices?x=1&y=%20 HTTP/1.1\r\n\
              hOsT: gw\r\n\
              content-length: 5\r\n\
              Authorization: Bearer s3cret\r\n\
              \r\nhello";
        let req = parse(buf);
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.path, "/publish/prices");
        assert_eq!(req.query.as_deref(), Some("x=1&y=%20"));
        assert_eq!(req.host.as_deref(), Some("gw"));
        assert_eq!(req.content_length, Some(5));
        assert_eq!(req.authorization.as_deref(), Some("Bearer s3cret"));
        assert!(req.keep_alive);
        assert_eq!(req.upgrade, None);
        assert_eq!(req.head_len, buf.len() - b"hello".len());
    }

    #[test]
    fn methods() {
        for (text, method) in [
            ("GET", Method::Get),
            ("POST", Method::Post),
            ("HEAD", Method::Head),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("PATCH", Method::Other),
            ("get", Method::Other),
        ] {
            let req = parse(format!("{text} / HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
            assert_eq!(req.method, method, "{text}");
        }
    }

    // RFC 9112 §3.2: request target

    #[test]
    fn request_target_forms() {
        let cases: [(&[u8], &str, Option<&str>); 6] = [
            (b"GET /ws? HTTP/1.1\r\n\r\n", "/ws", Some("")),
            (b"GET /a?b?c HTTP/1.1\r\n\r\n", "/a", Some("b?c")),
            (
                b"GET http://gw:80/ws?t=a HTTP/1.1\r\n\r\n",
                "/ws",
                Some("t=a"),
            ),
            (b"GET HTTPS://gw HTTP/1.1\r\n\r\n", "/", None),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", "*", None),
            (b"CONNECT gw:443 HTTP/1.1\r\n\r\n", "gw:443", None),
        ];
        for (buf, path, query) in cases {
            let req = parse(buf);
            assert_eq!((req.path.as_str(), req.query.as_deref()), (path, query));
        }
    }

    // RFC 9112 §9.3: persistence

    #[test]
    fn keep_alive_defaults_and_tokens() {
        let cases: [(&[u8], bool); 6] = [
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                b"GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nconnection: foo\r\nConnection: ,keep-alive\r\n\r\n",
                true,
            ),
        ];
        for (buf, keep_alive) in cases {
            assert_eq!(parse(buf).keep_alive, keep_alive, "{}", buf.escape_ascii());
        }
    }

    // RFC 9110 §5.6.1, §7.6.1, §7.8: token lists in Connection and Upgrade

    #[test]
    fn connection_and_upgrade_tokens() {
        let upgraded = |extra: &str| parse(&upgrade_request(extra)).upgrade;
        // Chrome and Firefox spellings.
        let up = upgraded("Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n").unwrap();
        assert!(up.connection_upgrade);
        assert!(upgraded("Connection: UPGRADE\r\nUpgrade: h2c,\twebsocket \r\n").is_some());
        assert!(
            upgraded("Connection: ,, upgrade ,\r\n")
                .unwrap()
                .connection_upgrade
        );
        // Split over two Connection fields.
        let up = upgraded("Connection: keep-alive\r\nConnection: upgrade\r\n").unwrap();
        assert!(up.connection_upgrade);
        // Tokens, not substrings.
        assert!(
            !upgraded("Connection: upgrade-insecure\r\n")
                .unwrap()
                .connection_upgrade
        );
        assert!(
            !upgraded("Connection: keep-alive upgrade\r\n")
                .unwrap()
                .connection_upgrade
        );
        assert_eq!(upgraded("Upgrade: websocket2\r\n"), None);
        assert_eq!(upgraded("Upgrade: websocket/13\r\n"), None);
        assert_eq!(upgraded("Upgrade: h2c\r\n"), None);
        assert_eq!(parse(&without(SAMPLE, "Upgrade")).upgrade, None);
        // Upgrade token with Connection missing: headers still collected.
        let up = parse(&without(SAMPLE, "Connection")).upgrade.unwrap();
        assert!(!up.connection_upgrade);
    }

    // RFC 6455 §11.3.2, §11.3.4: lists that may span several fields

    #[test]
    fn protocols_and_extensions_collect_every_field() {
        let req = parse(&upgrade_request(
            "Sec-WebSocket-Protocol: a, b\r\n\
             Sec-WebSocket-Protocol: c\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, \
             x-foo; p=\"1,2\"\r\n\
             Sec-WebSocket-Extensions: x-bar; q=\"a\\\",b\", , x-baz\r\n",
        ));
        let up = req.upgrade.unwrap();
        assert_eq!(up.protocols, strings(&["a", "b", "c"]));
        assert_eq!(
            up.extensions,
            strings(&[
                "permessage-deflate; client_max_window_bits",
                "x-foo; p=\"1,2\"",
                "x-bar; q=\"a\\\",b\"",
                "x-baz"
            ])
        );
    }

    // RFC 6455 §4.2.1 and §4.2.2: the opening handshake

    #[test]
    fn sample_handshake_is_accepted() {
        let upgrade = validate(SAMPLE).expect("valid upgrade");
        assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(upgrade.protocol, None);
    }

    #[test]
    fn switching_protocols_response_bytes() {
        let upgrade = validate(SAMPLE).unwrap();
        assert_eq!(
            upgrade.response(),
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              \r\n"
        );
        let upgrade = Upgrade {
            protocol: Some("chat".into()),
            ..upgrade
        };
        assert_eq!(
            upgrade.response(),
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              Sec-WebSocket-Protocol: chat\r\n\
              \r\n"
        );
    }

    /// RFC 7692 §5, §7.1: every offer over every field is considered, in order; a bad one is
    /// declined and the next taken; nothing is negotiated unless the policy allows it.
    #[test]
    fn permessage_deflate_takes_the_first_valid_offer() {
        let text = std::str::from_utf8(SAMPLE).unwrap().replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: x-foo; a=\"b,c\", \
             permessage-deflate; server_max_window_bits=20\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=\"11\"; \
             client_max_window_bits, permessage-deflate\r\n\r\n",
        );
        let req = parse(text.as_bytes());
        let on = UpgradePolicy {
            deflate: true,
            ..UpgradePolicy::default()
        };
        let upgrade = validate_upgrade(&req, &on).unwrap();
        assert_eq!(
            upgrade.deflate,
            Some(Agreed {
                server_max_window_bits: Some(11)
            })
        );
        let response = String::from_utf8(upgrade.response()).unwrap();
        assert!(
            response.ends_with(
                "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover; server_max_window_bits=11\r\n\r\n"
            ),
            "{response}"
        );
        assert_eq!(validate(text.as_bytes()).unwrap().deflate, None);
        // Chromium's offer.
        let chromium = std::str::from_utf8(SAMPLE).unwrap().replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
        );
        let upgrade = validate_upgrade(&parse(chromium.as_bytes()), &on).unwrap();
        assert_eq!(
            upgrade.deflate,
            Some(Agreed {
                server_max_window_bits: None
            })
        );
    }

    #[test]
    fn subprotocol_follows_server_preference() {
        let req = parse(SAMPLE); // offers "chat, superchat"
        let select = |ours: &[&str]| {
            let ours = strings(ours);
            let policy = UpgradePolicy {
                subprotocols: &ours,
                allowed_origins: None,
                deflate: false,
            };
            validate_upgrade(&req, &policy).unwrap().protocol
        };
        assert_eq!(select(&["superchat", "chat"]).as_deref(), Some("superchat"));
        assert_eq!(select(&["chat", "superchat"]).as_deref(), Some("chat"));
        assert_eq!(select(&["mqtt", "superchat"]).as_deref(), Some("superchat"));
        // No match is no header, not an error; names are compared exactly.
        assert_eq!(select(&["mqtt"]), None);
        assert_eq!(select(&["Chat"]), None);
        assert_eq!(select(&[]), None);
        // The client offering nothing.
        let ours = strings(&["chat"]);
        let policy = UpgradePolicy {
            subprotocols: &ours,
            allowed_origins: None,
            deflate: false,
        };
        let req = parse(&without(SAMPLE, "Sec-WebSocket-Protocol"));
        let upgrade = validate_upgrade(&req, &policy).unwrap();
        assert_eq!(upgrade.protocol, None);
        let text = String::from_utf8(upgrade.response()).unwrap();
        assert!(!text.contains("Sec-WebSocket-Protocol"), "{text}");
    }

    #[test]
    fn origin_allowlist() {
        let allowed = strings(&["https://app.example.com", "http://localhost:3000"]);
        let policy = UpgradePolicy {
            subprotocols: &[],
            allowed_origins: Some(&allowed),
            deflate: false,
        };
        for origin in [
            "https://app.example.com",
            "HTTPS://App.Example.COM",
            "http://localhost:3000",
        ] {
            let req = parse(&upgrade_request(&format!("Origin: {origin}\r\n")));
            assert!(validate_upgrade(&req, &policy).is_ok(), "{origin}");
        }
        // A client that sends none (not a browser) passes the allowlist too.
        assert!(validate_upgrade(&parse(&upgrade_request("")), &policy).is_ok());
        // Without an allowlist any origin, or none, passes.
        assert!(validate(&upgrade_request("Origin: https://evil.example\r\n")).is_ok());
        assert!(validate(&upgrade_request("")).is_ok());
    }

    // Error statuses. RFC 6455 §4.2.1: 400 for each malformed handshake reason.

    #[test]
    fn upgrade_400_reasons() {
        let policy = UpgradePolicy::default();
        let cases: [(Vec<u8>, &str); 10] = [
            (
                b"GET /ws HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\n\r\n".to_vec(),
                "websocket requires http/1.1",
            ),
            (without(SAMPLE, "Host"), "missing host header"),
            (upgrade_request("Host:\r\n"), "missing host header"),
            (
                without(SAMPLE, "Connection"),
                "connection header lacks upgrade token",
            ),
            (
                upgrade_request("Connection: keep-alive\r\n"),
                "connection header lacks upgrade token",
            ),
            (
                without(SAMPLE, "Sec-WebSocket-Key"),
                "missing sec-websocket-key header",
            ),
            // 15 bytes, 17 bytes, not base64, non-canonical trailing bits.
            (
                upgrade_request("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n"),
                "invalid sec-websocket-key",
            ),
            (
                upgrade_request("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n"),
                "invalid sec-websocket-key",
            ),
            (
                upgrade_request("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ!=\r\n"),
                "invalid sec-websocket-key",
            ),
            (
                upgrade_request("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\n"),
                "invalid sec-websocket-key",
            ),
        ];
        for (buf, reason) in cases {
            assert_upgrade_fails(&buf, &policy, 400, reason, None);
        }
        assert!(valid_key("AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(!valid_key(""));
    }

    #[test]
    fn values_outside_the_head_are_checked() {
        let head = "GET / HTTP/1.1\r\nX: caf\u{e9}\r\n\r\n";
        let at = head.find("caf").unwrap();
        let value = &head.as_bytes()[at..at + "caf\u{e9}".len()];
        assert_eq!(sub_str(head, value), Ok("caf\u{e9}"));
        assert_eq!(sub_str(head, b"elsewhere"), Ok("elsewhere"));
        assert_eq!(
            sub_str(head, b"caf\xe9").unwrap_err().reason,
            "header value is not utf-8"
        );
    }

    // RFC 9112, RFC 9110 §8.6, RFC 6455 §11.3: 400 for each malformed head reason

    #[test]
    fn parse_400_reasons() {
        let cases: [(&[u8], &str); 16] = [
            (b"GET  / HTTP/1.1\r\n\r\n", "invalid request line"),
            (b"G@T / HTTP/1.1\r\n\r\n", "invalid request line"),
            (b"GET / HTTP/2.0\r\n\r\n", "invalid http version"),
            (b"GET ws HTTP/1.1\r\n\r\n", "invalid request target"),
            (b"GET * HTTP/1.1\r\n\r\n", "invalid request target"),
            (
                b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                "invalid header name",
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
                "invalid header value",
            ),
            (b"GET / HTTP/1.1\rX: a\r\n\r\n", "invalid line ending"),
            (
                b"GET / HTTP/1.1\r\nX: caf\xe9\r\n\r\n",
                "header value is not utf-8",
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                "invalid content-length",
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                "invalid content-length",
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                "conflicting content-length",
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                "content-length with transfer-encoding",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "duplicate host header",
            ),
            (
                b"GET / HTTP/1.1\r\nAuthorization: a\r\nAuthorization: a\r\n\r\n",
                "duplicate authorization header",
            ),
            (
                b"GET / HTTP/1.1\r\nOrigin: http://a\r\nOrigin: http://a\r\n\r\n",
                "duplicate origin header",
            ),
        ];
        for (buf, reason) in cases {
            assert_parse_fails(buf, 400, reason);
        }
        // Content-Length lists and repeats that agree are one length.
        let req = parse(b"POST / HTTP/1.1\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(req.content_length, Some(7));
        assert_parse_fails(
            b"POST / HTTP/1.1\r\nContent-Length: 7, 8\r\n\r\n",
            400,
            "conflicting content-length",
        );
        assert_parse_fails(
            b"POST / HTTP/1.1\r\nContent-Length: 7,\r\n\r\n",
            400,
            "invalid content-length",
        );
    }

    #[test]
    fn duplicate_websocket_fields_are_400() {
        // RFC 6455 §11.3.1
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let twice = upgrade_request(&format!("{key}{key}"));
        assert_parse_fails(&twice, 400, "duplicate sec-websocket-key header");
        // RFC 6455 §11.3.5
        let twice = upgrade_request("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13\r\n");
        assert_parse_fails(&twice, 400, "duplicate sec-websocket-version header");
    }

    // RFC 9110 §15.5.6: 405

    #[test]
    fn non_get_is_405_with_allow() {
        let policy = UpgradePolicy::default();
        for method in ["POST", "PUT", "get"] {
            let mut buf = upgrade_request("");
            buf.splice(..3, method.bytes());
            let allow = Some(("Allow", "GET"));
            assert_upgrade_fails(&buf, &policy, 405, "method not allowed", allow);
        }
    }

    // RFC 9110 §9.3.2: a HEAD gets what a GET would without the upgrade, 426.
    #[test]
    fn head_is_426_as_a_get_without_upgrade_is() {
        let mut buf = upgrade_request("");
        buf.splice(..3, "HEAD".bytes());
        let policy = UpgradePolicy::default();
        let upgrade = Some(("Upgrade", "websocket"));
        assert_upgrade_fails(&buf, &policy, 426, "websocket upgrade required", upgrade);
    }

    #[test]
    fn an_upgrade_with_a_body_is_400() {
        let policy = UpgradePolicy::default();
        for body in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"] {
            let buf = upgrade_request(body);
            assert_upgrade_fails(&buf, &policy, 400, "an upgrade request has no body", None);
        }
        let buf = upgrade_request("Content-Length: 0\r\n");
        assert!(
            validate_upgrade(&parse(&buf), &policy).is_ok(),
            "an empty body is none"
        );
    }

    // RFC 6455 §10.2: 403

    #[test]
    fn origin_outside_allowlist_is_403() {
        let allowed = strings(&["https://app.example.com"]);
        let policy = UpgradePolicy {
            subprotocols: &[],
            allowed_origins: Some(&allowed),
            deflate: false,
        };
        for origin in [
            "https://app.example.com:443",
            "http://app.example.com",
            "null",
        ] {
            let buf = upgrade_request(&format!("Origin: {origin}\r\n"));
            assert_upgrade_fails(&buf, &policy, 403, "origin not allowed", None);
        }
        // An empty allowlist refuses every browser.
        let policy = UpgradePolicy {
            subprotocols: &[],
            allowed_origins: Some(&[]),
            deflate: false,
        };
        let buf = upgrade_request("Origin: https://app.example.com\r\n");
        assert_upgrade_fails(&buf, &policy, 403, "origin not allowed", None);
    }

    // RFC 9110 §15.5.22 and RFC 6455 §4.4: 426 both kinds

    #[test]
    fn missing_upgrade_is_426_with_upgrade_header() {
        let policy = UpgradePolicy::default();
        let upgrade = Some(("Upgrade", "websocket"));
        let plain = b"GET /ws HTTP/1.1\r\nHost: gw\r\n\r\n";
        assert_upgrade_fails(plain, &policy, 426, "websocket upgrade required", upgrade);
        let h2c = upgrade_request("Upgrade: h2c\r\n");
        assert_upgrade_fails(&h2c, &policy, 426, "websocket upgrade required", upgrade);
        // RFC 9110 §7.8: Upgrade is sent with the `upgrade` connection option.
        let response = String::from_utf8(HttpError::UPGRADE_REQUIRED.response()).unwrap();
        assert!(
            response.contains("\r\nConnection: upgrade, close\r\n"),
            "{response}"
        );
    }

    #[test]
    fn wrong_version_is_426_with_version_header() {
        let policy = UpgradePolicy::default();
        let version = Some(("Sec-WebSocket-Version", "13"));
        let reason = "unsupported websocket version";
        for v in ["8", "13, 8", "130", "", " 13x"] {
            let buf = upgrade_request(&format!("Sec-WebSocket-Version: {v}\r\n"));
            assert_upgrade_fails(&buf, &policy, 426, reason, version);
        }
        let buf = without(SAMPLE, "Sec-WebSocket-Version");
        assert_upgrade_fails(&buf, &policy, 426, reason, version);
        // Version is checked before the key.
        let buf = without(
            &without(SAMPLE, "Sec-WebSocket-Version"),
            "Sec-WebSocket-Key",
        );
        assert_upgrade_fails(&buf, &policy, 426, reason, version);
    }

    // RFC 6585 §5: 431 both ways

    #[test]
    fn oversized_head_is_431() {
        let too_large = (431, "request header too large");
        let len = SAMPLE.len();
        // Complete but longer than the bound, with or without bytes after it.
        let err = parse_request(SAMPLE, len - 1).unwrap_err();
        assert_eq!((err.status, err.reason), too_large);
        // Still incomplete and already longer than the bound.
        let err = parse_request(&SAMPLE[..len - 1], len - 2).unwrap_err();
        assert_eq!((err.status, err.reason), too_large);
        let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 10_000]].concat();
        let err = parse_request(&endless, MAX).unwrap_err();
        assert_eq!((err.status, err.reason), too_large);
        // Exactly at the bound is fine; incomplete within it is Ok(None).
        assert_eq!(parse_request(SAMPLE, len).unwrap().unwrap().head_len, len);
        assert_eq!(parse_request(&SAMPLE[..len - 1], len - 1), Ok(None));
        assert_eq!(parse_request(b"", 0), Ok(None));
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let at_limit = [buf.as_slice(), b"\r\n"].concat();
        assert!(parse_request(&at_limit, MAX).unwrap().is_some());
        buf.extend_from_slice(b"X-last: v\r\n\r\n");
        let err = parse_request(&buf, MAX).unwrap_err();
        assert_eq!((err.status, err.reason), (431, "too many headers"));
    }

    // RFC 9112 §6.1, §6.3: transfer codings

    #[test]
    fn chunked_alone_parses() {
        for te in ["chunked", "Chunked", "CHUNKED", " chunked ", ",chunked,"] {
            let buf = format!("POST /publish/t HTTP/1.1\r\nTransfer-Encoding:{te}\r\n\r\n");
            let req = parse(buf.as_bytes());
            assert!(req.chunked, "{te}");
            assert_eq!(req.content_length, None);
        }
        assert!(!parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\n").chunked);
    }

    #[test]
    fn other_transfer_codings_are_refused() {
        let post = |fields: &str| format!("POST /publish/t HTTP/1.1\r\n{fields}\r\n");
        let not_final = "chunked is not the final transfer coding";
        let cases: [(&str, u16, &str); 9] = [
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                501,
                "transfer coding not supported",
            ),
            // Split over two fields: one list (RFC 9110 §5.3).
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                501,
                "transfer coding not supported",
            ),
            ("Transfer-Encoding: gzip\r\n", 400, not_final),
            ("Transfer-Encoding: chunked, gzip\r\n", 400, not_final),
            ("Transfer-Encoding: chunked, chunked\r\n", 400, not_final),
            ("Transfer-Encoding: chunked;q=1\r\n", 400, not_final),
            ("Transfer-Encoding:\r\n", 400, not_final),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                400,
                "content-length with transfer-encoding",
            ),
            (
                "Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
                400,
                "content-length with transfer-encoding",
            ),
        ];
        for (fields, status, reason) in cases {
            assert_parse_fails(post(fields).as_bytes(), status, reason);
        }
        let old = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_parse_fails(old, 400, "transfer-encoding in http/1.0");
    }

    // Response bytes

    #[test]
    fn error_response_bytes() {
        let body = br#"{"error":"upgrade_required","message":"unsupported websocket version"}"#;
        let head = format!(
            "HTTP/1.1 426 Upgrade Required\r\n\
             Content-Type: application/json\r\n\
             Content-Length: {}\r\n\
             Connection: close\r\n\
             Sec-WebSocket-Version: 13\r\n\
             \r\n",
            body.len()
        );
        assert_eq!(
            HttpError::VERSION_REQUIRED.response(),
            [head.as_bytes(), body].concat()
        );
        let body = br#"{"error":"bad_json","message":"body is not valid json"}"#;
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\n\
             Content-Type: application/json\r\n\
             Content-Length: {}\r\n\
             Connection: keep-alive\r\n\
             \r\n",
            body.len()
        );
        let err = HttpError::bad("body is not valid json").with_code("bad_json");
        assert_eq!(
            err.response_keep_alive(true),
            [head.as_bytes(), body].concat()
        );
        assert_eq!(
            HttpError::HEAD_TOO_LARGE.to_string(),
            "431 request header too large"
        );
    }

    #[test]
    fn error_codes_and_escaping() {
        for (status, code) in [
            (400, "bad_request"),
            (401, "unauthorized"),
            (403, "forbidden"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (413, "too_large"),
            (426, "upgrade_required"),
            (429, "rate_limited"),
            (431, "header_too_large"),
            (501, "not_implemented"),
            (503, "unavailable"),
            (502, "server_error"),
            (418, "error"),
        ] {
            assert_eq!(HttpError::new(status, "x").code, code, "{status}");
        }
        let mut out = Vec::new();
        push_json_string(&mut out, "a\"b\\c\n");
        assert_eq!(out, br#""a\"b\\c\u000a""#);
    }

    #[test]
    fn plain_response_bytes() {
        assert_eq!(
            crate::outgoing::http_response(200, "text/plain", &[], b"ok\n", true),
            b"HTTP/1.1 200 OK\r\n\
              Content-Type: text/plain\r\n\
              Content-Length: 3\r\n\
              Connection: keep-alive\r\n\
              \r\n\
              ok\n"
        );
        assert_eq!(
            crate::outgoing::http_response(
                401,
                "text/plain",
                &[("WWW-Authenticate", "Bearer")],
                b"",
                false
            ),
            b"HTTP/1.1 401 Unauthorized\r\n\
              Content-Type: text/plain\r\n\
              Content-Length: 0\r\n\
              Connection: close\r\n\
              WWW-Authenticate: Bearer\r\n\
              \r\n"
        );
        assert_eq!(
            crate::outgoing::http_response(204, "text/plain", &[], b"", true),
            b"HTTP/1.1 204 No Content\r\n\
              Content-Type: text/plain\r\n\
              Connection: keep-alive\r\n\
              \r\n"
        );
        assert_eq!(status_text(431), "Request Header Fields Too Large");
        assert_eq!(status_text(599), "");
    }

    // Robustness: no peer bytes panic; the bound holds.

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            buf in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            max in 0usize..600,
        ) {
            if let Ok(Some(req)) = parse_request(&buf, max) {
                proptest::prop_assert!(req.head_len <= buf.len().min(max));
                let _ = validate_upgrade(&req, &UpgradePolicy::default());
            }
        }

        #[test]
        fn one_changed_byte_never_panics(at in 0..SAMPLE.len(), byte in proptest::num::u8::ANY) {
            let mut buf = SAMPLE.to_vec();
            buf[at] = byte;
            if let Ok(Some(req)) = parse_request(&buf, MAX) {
                let _ = validate_upgrade(&req, &UpgradePolicy::default());
            }
        }
    }
}
