//! What a run does, decided once before any thread starts: the target, which connections each
//! thread opens and in which role, what they send and at what rate. Shared read-only.

use std::net::{IpAddr, SocketAddr};

use wsgate_proto::OpCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo,
    Fanout,
    Connect,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Fanout => "fanout",
            Mode::Connect => "connect",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends stamped messages and times their echo.
    Echo,
    /// Receives deliveries, times them and tracks sequence numbers.
    Subscriber,
    /// Publishes stamped messages over a WebSocket (wsgate JSON op or raw frame).
    Publisher,
    /// Publishes stamped messages with `POST /publish/{topic}` over HTTP/1.1 keep-alive.
    HttpPublisher,
    /// Connects, holds, closes (connect mode).
    Churn,
}

#[derive(Clone, Copy, Debug)]
pub struct ConnSpec {
    pub role: Role,
    /// Publisher id for publishers; unused otherwise.
    pub id: u32,
    pub source: Option<IpAddr>,
    /// Index in `Plan::targets` of the node it connects to.
    pub target: u16,
}

#[derive(Debug)]
pub struct Plan {
    pub mode: Mode,
    pub url: String,
    /// Every `--url` given (several: wsgate nodes sharing topics); the first is `url`.
    /// Publishers connect to the first, subscribers round-robin to all.
    pub targets: Vec<(String, SocketAddr)>,
    /// Host header value.
    pub host: String,
    /// wss://: how to reach the server over TLS.
    pub tls: Option<crate::tls::TlsClient>,
    pub threads: usize,
    pub cpus: Vec<usize>,
    pub sources: Vec<IpAddr>,
    /// Connections per second over all threads; 0 = as fast as possible.
    pub connect_rate: f64,
    pub connect_timeout_ns: u64,
    /// Per thread, the connections it opens at start.
    pub conns: Vec<Vec<ConnSpec>>,
    /// Request path for each role.
    pub path: String,
    pub sub_path: String,
    /// Payload size in bytes (the stamp plus padding).
    pub size: usize,
    pub opcode: OpCode,
    /// Messages (or publishes, or new connections) per second over all threads; 0 = closed loop.
    pub rate: f64,
    pub pipeline: u32,
    /// Frame bytes around the payload (the JSON envelope of a wsgate publish).
    pub prefix: Vec<u8>,
    pub suffix: Vec<u8>,
    /// Request head of an HTTP publish, ending with the blank line.
    pub http_head: Vec<u8>,
    /// wsgate `subscribe` op to send after the handshake, if any.
    pub subscribe_msg: Option<Vec<u8>>,
    /// Offer permessage-deflate and inflate what arrives compressed.
    pub deflate: bool,
    /// `--inflate-once`: copies of a compressed message are inflated once per thread.
    pub inflate_once: bool,
    pub subscribers: usize,
    pub publishers: usize,
    pub hold_ns: u64,
    /// `Authorization` value sent on every WebSocket upgrade (`--token`).
    pub authorization: Option<String>,
    pub progress: bool,
    /// Workers hand over per-interval histograms (progress line, --hlog, the time plot).
    pub intervals: bool,
}

impl Plan {
    /// Publishers handled by thread `t` (their share of the total rate).
    pub fn senders_in(&self, t: usize) -> usize {
        self.conns[t]
            .iter()
            .filter(|c| matches!(c.role, Role::Echo | Role::Publisher | Role::HttpPublisher))
            .count()
    }

    pub fn total_senders(&self) -> usize {
        (0..self.threads).map(|t| self.senders_in(t)).sum()
    }

    pub fn total_conns(&self) -> usize {
        self.conns.iter().map(Vec::len).sum()
    }
}
