//! Section `limits`: bounds on what a peer can make the server hold or wait for, and the
//! WebSocket limits derived from them for each kind of connection.

use std::time::Duration;

use super::setting::{positive, section, within, Finish};
use super::ConfigError;

section! {
    /// Bounds on what a peer can make the server hold or wait for.
    pub struct Limits (prefix "") {
        /// Open connections in total before new ones get 503; 0 means the open-files limit
        /// (raised to its hard limit at start) less 64 for listeners and files.
        max_connections: usize = "0";
        /// Time a client has to send a complete request head; also the keep-alive idle time
        /// of plain HTTP connections.
        #[arg(value_name = "DURATION")]
        handshake_timeout: Duration = "10s", check positive;
        /// Silence after which the server pings a WebSocket; "0s" disables pings.
        #[arg(value_name = "DURATION")]
        idle_timeout: Duration = "60s";
        /// Time a ping may go unanswered before the connection is closed.
        #[arg(value_name = "DURATION")]
        pong_timeout: Duration = "20s", check positive;
        /// Time to wait for the peer's close frame or FIN after ours.
        #[arg(value_name = "DURATION")]
        close_timeout: Duration = "5s", check positive;
        /// Largest frame payload accepted on /echo, in bytes; larger closes with 1009.
        #[arg(value_name = "BYTES")]
        max_frame_size: u64 = "1048576", check positive;
        /// Largest message accepted on /echo, in bytes; held in memory while it arrives.
        #[arg(value_name = "BYTES")]
        max_message_size: usize = "1048576", check within(1, u32::MAX as usize);
        /// Memory for partial WebSocket messages, all connections together, in bytes (shared
        /// evenly by the reactors); a frame that would pass it closes its connection with
        /// 1013. 0 means one eighth of the machine's memory.
        #[arg(value_name = "BYTES")]
        max_buffered_bytes: u64 = "0";
        /// Largest HTTP request head, in bytes; larger gets 431.
        #[arg(value_name = "BYTES")]
        max_header_bytes: usize = "8192", check within(256, 1 << 20);
        /// Outbound bytes queued per connection before backpressure (echo stops reading) or
        /// the slow-consumer policy (fan-out) applies; a connection with nothing queued
        /// takes one delivery of any size.
        #[arg(value_name = "BYTES")]
        max_outbound_bytes: usize = "1048576", check positive;
        /// Topics one /ws connection may subscribe to.
        max_subscriptions: usize = "64", check positive;
        /// Longest topic name, in bytes.
        #[arg(value_name = "BYTES")]
        max_topic_len: usize = "128", check within(1, 1024);
        /// Largest published value (the JSON `data` of a /ws publish, or the body of a
        /// `POST /publish` without the whitespace around it), in bytes.
        #[arg(value_name = "BYTES")]
        max_publish_bytes: usize = "65536", check within(1, u32::MAX as usize);
    }
    derived {
        /// Frame and message limits and WebSocket timers of /echo connections.
        echo: wsgate_proto::Limits,
        /// The same for /ws connections: messages no larger than a control message needs.
        pubsub: wsgate_proto::Limits,
    }
}

/// What a control message or a `POST /publish` body may carry beyond its value (and, on
/// `/ws`, its topic): keys, an id, whitespace.
pub const ENVELOPE: usize = 1024;

impl Limits {
    /// The largest `POST /publish` body: a value of `max_publish_bytes` with whitespace
    /// around it (the value is then checked alone, as on `/ws`).
    pub fn max_publish_body(&self) -> usize {
        self.max_publish_bytes + ENVELOPE
    }
}

impl Finish for Limits {
    fn finish(mut self) -> Result<Self, ConfigError> {
        if self.max_connections == 0 {
            self.max_connections = crate::sys::raise_nofile_limit()
                .map_or(1024, |n| n as usize)
                .saturating_sub(64)
                .max(1);
        }
        if self.max_buffered_bytes == 0 {
            self.max_buffered_bytes = crate::sys::memory_total().map_or(1 << 30, |total| total / 8);
        }
        self.echo = wsgate_proto::Limits {
            max_frame_size: self.max_frame_size,
            max_message_size: self.max_message_size,
            close_timeout: self.close_timeout,
            idle_timeout: Some(self.idle_timeout).filter(|t| !t.is_zero()),
            pong_timeout: self.pong_timeout,
        };
        // A control message carries the payload plus the envelope around it: the keys,
        // the topic (up to 6 bytes a character, `\u0061` for `a`), an id, whitespace.
        // The /echo limits (max_message_size, max_frame_size) are /echo's alone: a
        // publish over /ws and over HTTP must be refused at the same size.
        let control_max = self.max_publish_bytes + 6 * self.max_topic_len + ENVELOPE;
        self.pubsub = wsgate_proto::Limits {
            max_frame_size: control_max as u64,
            max_message_size: control_max,
            ..self.echo.clone()
        };
        Ok(self)
    }
}
