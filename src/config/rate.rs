//! Section `rate`: how fast one client may go: messages, bytes and subscription ops per /ws
//! connection, connections per client IP, HTTP publishes per token. Every limit is off
//! (0) by default, so the quick start and the benchmarks run unthrottled; the README
//! suggests values for an edge deployment.

use super::setting::{section, within, Finish};
use super::ConfigError;
use crate::limits::{Rate, MAX_AHEAD_US};

section! {
    /// Rate and connection limits per client (all off by default).
    pub struct RateLimits (prefix "") {
        /// Messages per second one /ws connection may send (a token bucket); over it, a
        /// message is refused with a `rate_limited` error. 0: unlimited.
        message_rate: u32 = "0";
        /// Messages one /ws connection may send at once above `message_rate`; 0: one
        /// second's worth.
        message_burst: u32 = "0";
        /// Message bytes per second one /ws connection may send, in bursts of one second's
        /// worth (a larger message passes only when the bucket is full). 0: unlimited.
        #[arg(value_name = "BYTES")]
        byte_rate: u64 = "0";
        /// Messages refused in a row with `rate_limited` before the connection is closed
        /// with 1008 "rate limit exceeded".
        max_rate_limited: u32 = "10", check within(1, 255);
        /// `subscribe` and `unsubscribe` ops per second per /ws connection, in bursts of
        /// one second's worth; over it, the op gets `rate_limited`. 0: unlimited.
        subscribe_rate: u32 = "0";
        /// Open connections per client IP (IPv6: per `ipv6_prefix`); more get 429. 0:
        /// unlimited.
        max_connections_per_ip: u32 = "0";
        /// New connections per second per client IP (IPv6: per `ipv6_prefix`), in bursts of
        /// one second's worth; more get 429 with `Retry-After`. 0: unlimited.
        connection_rate_per_ip: u32 = "0";
        /// IPv6 clients are counted per network of this prefix length (a /64 is usually
        /// one subscriber).
        ipv6_prefix: u32 = "64", check within(1, 64);
        /// HTTP publishes per second per bearer token (the static token or a JWT), in
        /// bursts of one second's worth; more get 429 with `Retry-After`. 0: unlimited.
        publish_rate_per_token: u32 = "0";
    }
    derived {
        /// Messages per /ws connection.
        messages: Option<Rate>,
        /// Message bytes per /ws connection.
        bytes: Option<Rate>,
        /// Subscription ops per /ws connection.
        subscribe_ops: Option<Rate>,
        /// New connections per client IP.
        connects: Option<Rate>,
        /// HTTP publishes per token.
        publishes: Option<Rate>,
    }
}

impl Finish for RateLimits {
    fn finish(mut self) -> Result<Self, ConfigError> {
        let burst = if self.message_burst == 0 {
            self.message_rate
        } else {
            self.message_burst
        };
        self.messages = Rate::new(self.message_rate.into(), burst.into());
        if self
            .messages
            .is_some_and(|r| r.window_us() > MAX_AHEAD_US / 2)
        {
            return Err(ConfigError::invalid(
                "message_burst",
                "must be at most 500 seconds of message_rate",
            ));
        }
        self.bytes = Rate::new(self.byte_rate, self.byte_rate);
        self.subscribe_ops = Rate::new(self.subscribe_rate.into(), self.subscribe_rate.into());
        self.connects = Rate::new(
            self.connection_rate_per_ip.into(),
            self.connection_rate_per_ip.into(),
        );
        self.publishes = Rate::new(
            self.publish_rate_per_token.into(),
            self.publish_rate_per_token.into(),
        );
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, RawConfig};
    use crate::limits::Rate;

    #[test]
    fn every_limit_is_off_by_default() {
        let rate = Config::default().rate;
        assert_eq!(
            (
                rate.messages,
                rate.bytes,
                rate.subscribe_ops,
                rate.connects,
                rate.publishes
            ),
            (None, None, None, None, None)
        );
        assert_eq!((rate.max_connections_per_ip, rate.ipv6_prefix), (0, 64));
        assert_eq!(rate.max_rate_limited, 10);
    }

    #[test]
    fn bursts_default_to_one_second() {
        let raw = RawConfig::parse_toml("message_rate = 100\nbyte_rate = 5000\nsubscribe_rate = 4")
            .unwrap();
        let rate = raw.validate().unwrap().rate;
        assert_eq!(rate.messages, Rate::new(100, 100));
        assert_eq!(rate.bytes, Rate::new(5000, 5000));
        assert_eq!(rate.subscribe_ops, Rate::new(4, 4));
        let raw = RawConfig::parse_toml("message_rate = 100\nmessage_burst = 7").unwrap();
        assert_eq!(raw.validate().unwrap().rate.messages, Rate::new(100, 7));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let bad = |text: &str| {
            let err = RawConfig::parse_toml(text)
                .and_then(|r| r.validate())
                .unwrap_err();
            err.to_string()
        };
        assert!(bad("ipv6_prefix = 65").contains("`ipv6_prefix`"));
        assert!(bad("ipv6_prefix = 0").contains("`ipv6_prefix`"));
        assert!(bad("max_rate_limited = 0").contains("`max_rate_limited`"));
        assert!(bad("message_rate = 1\nmessage_burst = 1000").contains("`message_burst`"));
        assert!(bad("message_rate = -1").contains("`message_rate`"));
    }
}
