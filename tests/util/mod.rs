//! Shared test helpers: a gateway on 127.0.0.1:0, clients, and HTTP over raw TCP.
//!
//! Two kinds of client: tungstenite, independent of the gateway's code, for the checks that
//! must stay independent; and raw streams that send crafted bytes, which read the server's
//! answers with wsgate-proto's client side (its response parser and frame header checks).
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]
// tungstenite::Error is large; these helpers return it as tungstenite does.
#![allow(clippy::result_large_err)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};
use wsgate::config::{IoBackend, RawConfig};
use wsgate::server::Server;
use wsgate_proto::frame::MAX_HEADER_LEN;
use wsgate_proto::handshake::client;
use wsgate_proto::{FrameHeader, Role};

mod process;
#[allow(unused_imports)] // only the tests that run the binary use it
pub use process::GatewayProcess;

/// Every blocking read in the tests gives up after this: a hang is a failure, not a stall.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Generates one test per driver: `epoll::NAME` and (where io_uring runs) `uring::NAME`.
#[macro_export]
macro_rules! for_each_driver {
    ($(fn $name:ident($io:ident: IoBackend) $body:block)*) => {
        mod epoll {
            #[allow(unused_imports)]
            use super::*;
            $(#[test] fn $name() { let $io = wsgate::config::IoBackend::Epoll; $body })*
        }
        mod uring {
            #[allow(unused_imports)]
            use super::*;
            $(#[test] fn $name() {
                if let Err(why) = wsgate::driver::uring::available() {
                    eprintln!("skipping {}: io_uring unavailable: {why}", stringify!($name));
                    return;
                }
                let $io = wsgate::config::IoBackend::Uring;
                $body
            })*
        }
    };
}

/// Waits until `cond` holds, checking every millisecond; panics after `TIMEOUT`. For
/// state only the server sees (a connection gone from its slab), not as a delay.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A gateway for one test, drained on drop.
pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn start(io: IoBackend, tweak: impl FnOnce(&mut RawConfig)) -> Self {
        let mut raw = RawConfig {
            net: wsgate::config::net::Raw {
                listen: Some(([127, 0, 0, 1], 0).into()),
                threads: Some(2),
                pin: Some(false),
                io: Some(io),
                ..Default::default()
            },
            ..Default::default()
        };
        tweak(&mut raw);
        let server =
            Server::start(raw.validate().expect("valid test config")).expect("server starts");
        let addr = server.local_addr();
        Self {
            server: Some(server),
            addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Connections open across the reactors (any phase, including closed ones whose
    /// driver operations are still in flight).
    pub fn open_connections(&self) -> u64 {
        let metrics = &self.server().shared().metrics;
        metrics
            .iter()
            .map(|m| wsgate::metrics::ReactorMetrics::get(&m.connections))
            .sum()
    }

    /// Drains and waits for every reactor to exit.
    pub fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().expect("reactors exit cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown();
        }
    }
}

pub type Client = WebSocket<TcpStream>;

/// A tungstenite client with read/write timeouts.
pub fn connect(server: &TestServer, path: &str) -> Client {
    try_connect(server, path, |_| {}).expect("handshake succeeds")
}

// tungstenite's error is large; tests only match on it.
#[allow(clippy::result_large_err)]
pub fn try_connect(
    server: &TestServer,
    path: &str,
    tweak: impl FnOnce(&mut tungstenite::handshake::client::Request),
) -> Result<Client, tungstenite::Error> {
    let stream = tcp(server);
    let mut request = server.url(path).into_client_request().expect("request");
    tweak(&mut request);
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            panic!("blocking handshake interrupted")
        }
    }
}

/// A raw TCP connection with timeouts.
pub fn tcp(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads the next message, skipping nothing: pings and pongs are returned too.
pub fn recv(ws: &mut Client) -> Message {
    ws.read().expect("a message before the timeout")
}

/// The next text message, as sent (pings and pongs skipped).
pub fn next_text(ws: &mut Client) -> String {
    loop {
        match recv(ws) {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The next text message as JSON (pings and pongs are skipped).
pub fn next_json(ws: &mut Client) -> serde_json::Value {
    loop {
        match recv(ws) {
            Message::Text(text) => return serde_json::from_str(&text).expect("valid json"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Sends `value` as a text message.
pub fn send_json(ws: &mut Client, value: serde_json::Value) {
    ws.send(Message::text(value.to_string())).unwrap();
}

/// An HTTP response read from a raw stream.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: client::Response,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response head, byte by byte so that nothing after it is taken from the stream.
pub fn read_head(stream: &mut TcpStream) -> client::Response {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream
            .read(&mut byte)
            .expect("response head before the timeout");
        assert!(
            n == 1,
            "connection closed before a full response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
        // A head ends with an empty line: only a line feed can complete it.
        if byte[0] == b'\n' {
            if let Some(head) = client::Response::parse(&buf).expect("valid response head") {
                assert_eq!(head.head_len, buf.len());
                return head;
            }
        }
    }
}

/// Asserts the one error format: `application/json`, `{"error":code,"message":reason}`.
#[track_caller]
pub fn assert_json_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body_text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("a json body");
    let fields = body.as_object().expect("an object");
    assert_eq!(fields.len(), 2, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Reads one response (head, then Content-Length bytes of body).
pub fn read_response(stream: &mut TcpStream) -> Response {
    let head = read_head(stream);
    let len = head
        .header("content-length")
        .map_or(0, |v| v.parse().expect("numeric content-length"));
    let mut body = vec![0; len];
    stream.read_exact(&mut body).expect("body");
    Response {
        status: head.status,
        head,
        body,
    }
}

/// Sends `request` on a new connection and reads the response.
pub fn http(server: &TestServer, request: &str) -> Response {
    let mut stream = tcp(server);
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut stream)
}

/// Asserts the peer closes the TCP connection (EOF or reset) before the timeout.
pub fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

/// A valid upgrade request for `path` with extra header lines.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    wsgate_proto::frame::encode_client_raw(fin, 0, opcode, [0xa1, 0xb2, 0xc3, 0xd4], payload)
}

/// Reads one server frame from a raw stream, checked as a client must (unmasked, no RSV bits,
/// control frames whole and short): (fin, opcode, payload).
pub fn read_frame(stream: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let (header, payload) = read_wire_frame(stream);
    header
        .check(Role::Client)
        .expect("a frame a server may send");
    (header.fin, header.opcode as u8, payload)
}

/// Reads one server frame from a raw stream as it is on the wire, unchecked: its header
/// and payload (for tests that look at RSV bits themselves).
pub fn read_wire_frame(stream: &mut TcpStream) -> (FrameHeader, Vec<u8>) {
    let mut head = [0u8; MAX_HEADER_LEN];
    let mut len = 0;
    let header = loop {
        stream
            .read_exact(&mut head[len..len + 1])
            .expect("frame header");
        len += 1;
        if let Some((header, _)) = FrameHeader::parse(&head[..len]).expect("valid header") {
            break header;
        }
    };
    let mut payload = vec![0; header.len as usize];
    stream.read_exact(&mut payload).expect("frame payload");
    (header, payload)
}

/// Upgrades a raw stream on `path` and checks the 101 as a client must.
pub fn raw_upgrade(server: &TestServer, path: &str) -> TcpStream {
    upgrade_offering(server, path, None).0
}

/// Upgrades a raw stream on `path` offering `offer` in `Sec-WebSocket-Extensions` (none: no
/// such header); returns the stream and the permessage-deflate terms the server agreed to,
/// checked as a client must.
pub fn upgrade_offering(
    server: &TestServer,
    path: &str,
    offer: Option<&str>,
) -> (TcpStream, Option<wsgate_proto::deflate::Agreed>) {
    let mut stream = tcp(server);
    let key = client::key(*b"raw upgrade test");
    let headers: Vec<(&str, &str)> = offer
        .map(|o| ("Sec-WebSocket-Extensions", o))
        .into_iter()
        .collect();
    let mut request = Vec::new();
    client::Request {
        host: &server.addr.to_string(),
        path,
        key: &key,
        protocols: &[],
        headers: &headers,
    }
    .encode(&mut request);
    stream.write_all(&request).unwrap();
    let accepted = read_head(&mut stream)
        .check_deflate(&key, &[])
        .expect("a valid 101");
    (stream, accepted.deflate)
}

/// Reads a close frame from a raw stream and returns its code.
pub fn read_close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let (_, opcode, payload) = read_frame(stream);
        if opcode == 0x8 {
            assert!(payload.len() >= 2, "close frame with a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}
