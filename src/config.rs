//! Settings: `RawConfig` (CLI flags and an optional TOML file, every field optional) is
//! validated into `Config`. Precedence: built-in defaults < TOML file < flags/environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::driver::uring::UringOptions;
use wsgate_proto::Limits;

/// What a slow consumer (outbound queue over `max_outbound_bytes`) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Close with 1008 "slow consumer" (abort if even that cannot be queued).
    Close,
    /// Skip deliveries while over the cap.
    Drop,
}

/// Which I/O backend the reactors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    Epoll,
    Uring,
}

/// Every setting, as given; `None` takes the default.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// TOML file with any of these settings (flags override it).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT", env = "WSGATE_LISTEN")]
    pub listen: Option<String>,
    /// Reactor threads, one per core; 0 means every core [default: 0].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pin each reactor to its own core [default: true].
    #[arg(long, value_name = "BOOL")]
    pub pin: Option<bool>,
    /// I/O backend: auto, epoll or uring [default: auto].
    #[arg(long, value_enum, env = "WSGATE_IO")]
    pub io: Option<IoBackend>,
    /// io_uring submission queue entries per reactor [default: 1024].
    #[arg(long, hide = true)]
    pub uring_entries: Option<u32>,
    /// io_uring receive buffers per reactor, a power of two up to 32768 [default: 512].
    #[arg(long, hide = true)]
    pub uring_bufs: Option<u16>,
    /// Bytes per io_uring receive buffer [default: 16384].
    #[arg(long, hide = true)]
    pub uring_buf_size: Option<u32>,
    /// Open connections in total before new ones get 503; 0 means the open-files limit
    /// (raised to its hard limit at start) less 64 for listeners and files [default: 0].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Time a client has to send a complete request head; also the keep-alive idle time
    /// of plain HTTP connections [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// Silence after which the server pings a WebSocket; "0s" disables pings [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Time a ping may go unanswered before the connection is closed [default: 20s].
    #[arg(long, value_name = "DURATION")]
    pub pong_timeout: Option<String>,
    /// Time to wait for the peer's close frame or FIN after ours [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub close_timeout: Option<String>,
    /// Time connections get to close on SIGTERM/SIGINT before exit [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub drain_grace: Option<String>,
    /// Largest frame payload accepted, in bytes; larger closes with 1009 [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_frame_size: Option<u64>,
    /// Largest message accepted, in bytes; held in memory while it arrives [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,
    /// Largest HTTP request head, in bytes; larger gets 431 [default: 8192].
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Outbound bytes queued per connection before backpressure (echo stops reading) or
    /// the slow-consumer policy (fan-out) applies [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_outbound_bytes: Option<usize>,
    /// Slow-consumer policy: close or drop [default: close].
    #[arg(long, value_enum)]
    pub slow_consumer: Option<SlowConsumerPolicy>,
    /// Serve the /echo endpoint [default: true].
    #[arg(long, value_name = "BOOL")]
    pub echo: Option<bool>,
    /// Subprotocols the server speaks, in preference order (comma-separated) [default: none].
    #[arg(long, value_delimiter = ',')]
    pub subprotocols: Option<Vec<String>>,
    /// Origins allowed to connect (comma-separated, e.g. `https://app.example`); empty
    /// allows any [default: any].
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Bearer token required by POST /publish; empty means no token [default: none].
    #[arg(long, env = "WSGATE_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,
    /// Topics /ws clients may publish to (comma-separated; `prefix*` matches a prefix,
    /// `*` everything) [default: none: only backends publish, over HTTP].
    #[arg(long, value_delimiter = ',')]
    pub client_publish: Option<Vec<String>>,
    /// Topics one /ws connection may subscribe to [default: 64].
    #[arg(long)]
    pub max_subscriptions: Option<usize>,
    /// Longest topic name, in bytes [default: 128].
    #[arg(long, value_name = "BYTES")]
    pub max_topic_len: Option<usize>,
    /// Largest published payload (HTTP body or /ws control message), in bytes
    /// [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_publish_bytes: Option<usize>,
    /// Deliveries queued between two reactors before further ones are dropped (counted)
    /// [default: 65536].
    #[arg(long)]
    pub inbox_capacity: Option<usize>,
    /// How long fan-out deliveries may wait so that several leave in one write: trades that
    /// much added latency for far fewer syscalls at high rates; replies and echo are never
    /// delayed [default: 0ms].
    #[arg(long, value_name = "DURATION")]
    pub write_delay: Option<String>,
    /// SO_SNDBUF for client sockets, in bytes; 0 keeps the kernel's autotuning. Smaller
    /// bounds kernel memory per connection and finds slow consumers sooner [default: 0].
    #[arg(long, value_name = "BYTES")]
    pub socket_send_buffer: Option<usize>,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub threads: usize,
    pub pin: bool,
    pub io: IoBackend,
    /// Ring and receive-buffer sizes of the io_uring driver: `bufs × buf_size` bytes
    /// per reactor (8 MiB by default), shared by all of its connections.
    pub uring: UringOptions,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub drain_grace: Duration,
    pub max_header_bytes: usize,
    pub max_outbound_bytes: usize,
    pub slow_consumer: SlowConsumerPolicy,
    pub echo: bool,
    pub subprotocols: Vec<String>,
    /// `None`: any origin.
    pub allowed_origins: Option<Vec<String>>,
    pub publish_token: Option<String>,
    pub client_publish: Vec<String>,
    pub max_subscriptions: usize,
    pub max_topic_len: usize,
    pub max_publish_bytes: usize,
    pub inbox_capacity: usize,
    pub socket_send_buffer: usize,
    pub write_delay: Duration,
    /// Limits for /ws connections: messages no larger than a publish needs.
    pub pubsub_limits: Limits,
    /// Frame and message limits and WebSocket timers.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        RawConfig::default()
            .validate()
            .expect("the defaults are valid")
    }
}

/// A setting with an unusable value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for `{name}`: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

impl RawConfig {
    /// Reads the TOML file named by `config`, if any, and lays these settings over it.
    pub fn load(self) -> Result<Config, ConfigError> {
        let Some(path) = self.config.clone() else {
            return self.validate();
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file: RawConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path,
            source: Box::new(source),
        })?;
        self.over(file).validate()
    }

    /// `self`'s settings where given, `base`'s otherwise.
    fn over(self, base: RawConfig) -> RawConfig {
        macro_rules! pick {
            ($($field:ident),*) => { RawConfig { $($field: self.$field.or(base.$field)),* } };
        }
        pick!(
            config,
            listen,
            threads,
            pin,
            io,
            uring_entries,
            uring_bufs,
            uring_buf_size,
            max_connections,
            handshake_timeout,
            idle_timeout,
            pong_timeout,
            close_timeout,
            drain_grace,
            max_frame_size,
            max_message_size,
            max_header_bytes,
            max_outbound_bytes,
            slow_consumer,
            echo,
            subprotocols,
            allowed_origins,
            publish_token,
            client_publish,
            max_subscriptions,
            max_topic_len,
            max_publish_bytes,
            inbox_capacity,
            socket_send_buffer,
            write_delay
        )
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen = self.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen
            .parse()
            .map_err(|_| invalid("listen", format!("{listen:?} is not an ADDR:PORT")))?;
        let threads = match self.threads.unwrap_or(0) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let positive = |name: &'static str, value: usize| {
            if value == 0 {
                Err(invalid(name, "must be greater than 0"))
            } else {
                Ok(value)
            }
        };
        let handshake_timeout = nonzero(
            "handshake_timeout",
            self.handshake_timeout.as_deref(),
            "10s",
        )?;
        let idle_timeout = duration(
            "idle_timeout",
            self.idle_timeout.as_deref().unwrap_or("60s"),
        )?;
        let limits = Limits {
            max_frame_size: positive(
                "max_frame_size",
                self.max_frame_size.unwrap_or(16 << 20) as usize,
            )? as u64,
            max_message_size: positive(
                "max_message_size",
                self.max_message_size.unwrap_or(16 << 20),
            )?,
            close_timeout: nonzero("close_timeout", self.close_timeout.as_deref(), "5s")?,
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
            pong_timeout: nonzero("pong_timeout", self.pong_timeout.as_deref(), "20s")?,
        };
        let max_header_bytes = self.max_header_bytes.unwrap_or(8192);
        if !(256..=1 << 20).contains(&max_header_bytes) {
            return Err(invalid(
                "max_header_bytes",
                "must be between 256 and 1048576",
            ));
        }
        for p in self.subprotocols.iter().flatten() {
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
            {
                return Err(invalid(
                    "subprotocols",
                    format!("{p:?} is not an HTTP token"),
                ));
            }
        }
        let allowed_origins = self.allowed_origins.filter(|o| !o.is_empty());
        let max_publish_bytes = positive(
            "max_publish_bytes",
            self.max_publish_bytes.unwrap_or(64 * 1024),
        )?;
        let max_topic_len = self.max_topic_len.unwrap_or(128);
        if !(1..=1024).contains(&max_topic_len) {
            return Err(invalid("max_topic_len", "must be between 1 and 1024"));
        }
        // A control message carries the payload plus the envelope around it.
        let control_max = (max_publish_bytes + max_topic_len + 256).min(limits.max_message_size);
        let pubsub_limits = Limits {
            max_frame_size: control_max as u64,
            max_message_size: control_max,
            ..limits.clone()
        };
        let threads_ok = threads <= crate::broadcast::MAX_REACTORS;
        if !threads_ok {
            return Err(invalid(
                "threads",
                format!("at most {}", crate::broadcast::MAX_REACTORS),
            ));
        }
        let defaults = UringOptions::default();
        let uring = UringOptions {
            entries: self.uring_entries.unwrap_or(defaults.entries),
            bufs: self.uring_bufs.unwrap_or(defaults.bufs),
            buf_size: self.uring_buf_size.unwrap_or(defaults.buf_size),
        };
        if !(8..=32768).contains(&uring.entries) {
            return Err(invalid("uring_entries", "must be between 8 and 32768"));
        }
        if !uring.bufs.is_power_of_two() || uring.bufs > 32768 {
            return Err(invalid("uring_bufs", "must be a power of two up to 32768"));
        }
        if !(64..=1 << 20).contains(&uring.buf_size) {
            return Err(invalid("uring_buf_size", "must be between 64 and 1048576"));
        }
        Ok(Config {
            listen,
            threads,
            pin: self.pin.unwrap_or(true),
            io: self.io.unwrap_or(IoBackend::Auto),
            uring,
            max_connections: match self.max_connections.unwrap_or(0) {
                0 => crate::sys::raise_nofile_limit()
                    .map_or(1024, |n| n as usize)
                    .saturating_sub(64)
                    .max(1),
                n => n,
            },
            handshake_timeout,
            drain_grace: duration("drain_grace", self.drain_grace.as_deref().unwrap_or("10s"))?,
            max_header_bytes,
            max_outbound_bytes: positive(
                "max_outbound_bytes",
                self.max_outbound_bytes.unwrap_or(1 << 20),
            )?,
            slow_consumer: self.slow_consumer.unwrap_or(SlowConsumerPolicy::Close),
            echo: self.echo.unwrap_or(true),
            subprotocols: self.subprotocols.unwrap_or_default(),
            allowed_origins,
            publish_token: self.publish_token.filter(|t| !t.is_empty()),
            client_publish: self.client_publish.unwrap_or_default(),
            max_subscriptions: positive("max_subscriptions", self.max_subscriptions.unwrap_or(64))?,
            max_topic_len,
            max_publish_bytes,
            inbox_capacity: positive("inbox_capacity", self.inbox_capacity.unwrap_or(65536))?,
            socket_send_buffer: self.socket_send_buffer.unwrap_or(0),
            write_delay: duration("write_delay", self.write_delay.as_deref().unwrap_or("0ms"))?,
            pubsub_limits,
            limits,
        })
    }
}

fn nonzero(
    name: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let d = duration(name, value.unwrap_or(default))?;
    if d.is_zero() {
        return Err(invalid(name, "must be greater than 0"));
    }
    Ok(d)
}

/// Parses "250ms", "10s", "5m", "1h" (a number and a unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs <= 1e9).then(|| Duration::from_secs_f64(secs))
}

fn duration(name: &'static str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).ok_or_else(|| {
        invalid(
            name,
            format!("{text:?} is not a duration like 500ms, 10s or 5m"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.threads >= 1 && c.pin && c.echo);
        assert_eq!(c.limits.max_message_size, 16 << 20);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.allowed_origins, None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10 parsecs"), None);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let bad = |raw: RawConfig| raw.validate().unwrap_err().to_string();
        assert!(bad(RawConfig {
            listen: Some("nowhere".into()),
            ..Default::default()
        })
        .contains("`listen`"));
        assert!(bad(RawConfig {
            handshake_timeout: Some("0s".into()),
            ..Default::default()
        })
        .contains("`handshake_timeout`"));
        assert!(bad(RawConfig {
            max_frame_size: Some(0),
            ..Default::default()
        })
        .contains("`max_frame_size`"));
        assert!(bad(RawConfig {
            subprotocols: Some(vec!["a b".into()]),
            ..Default::default()
        })
        .contains("`subprotocols`"));
    }

    #[test]
    fn flags_override_the_file() {
        let file: RawConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\nthreads = 3\nidle_timeout = \"0s\"")
                .unwrap();
        let cli = RawConfig {
            threads: Some(1),
            ..Default::default()
        };
        let c = cli.over(file).validate().unwrap();
        assert_eq!(
            (c.listen.port(), c.threads, c.limits.idle_timeout),
            (9000, 1, None)
        );
        assert!(
            toml::from_str::<RawConfig>("nonsense = 1").is_err(),
            "unknown keys are rejected"
        );
    }
}
