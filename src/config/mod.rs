//! Settings: what the command line, the environment and an optional TOML file say, checked
//! and completed with defaults into one `Config` (shared by the reactors in an `Arc`, read
//! only). Precedence: built-in defaults < TOML file < flags and environment
//! (`WSGATE_LISTEN`, `WSGATE_IO`, `WSGATE_PUBLISH_TOKEN`).
//!
//! `Config` has one section per concern; each lives in its own file, where every setting is
//! declared once, with its type, default, help text and check, by `setting::section!`:
//!
//! ```text
//!     /// Largest HTTP request head, in bytes; larger gets 431.
//!     #[arg(value_name = "BYTES")]
//!     max_header_bytes: usize = "8192", check within(256, 1 << 20);
//! ```
//!
//! From that line come the field of the resolved section (`config.limits.max_header_bytes`),
//! the flag `--max-header-bytes` with its help and `[default: 8192]`, the TOML key
//! `max_header_bytes` (or `max-header-bytes`), precedence, and an error naming the key when
//! the value is bad. The section's file adds only what no single line can say: checks
//! across settings and values derived from them (`Finish`). Adding a section is one file
//! and one line in the `sections!` list below.
//!
//! Why a declarative macro rather than clap and serde derives on each section: derives
//! would put every default in two places (clap's `default_value` for `--help` and
//! `value_source`, serde's `default` for the file), serde's `deny_unknown_fields` does not
//! work with `flatten` (so unknown keys could not be refused once settings are split in
//! sections), and flag, key and help text would drift apart as they do today. The macro
//! owns none of the parsing: values are parsed at the edge by one `setting::Value` impl per
//! type (durations, addresses, lists, enums), the same for a flag, an environment variable,
//! a TOML value and a default.

use std::path::PathBuf;

pub mod auth;
pub mod cluster;
pub mod deflate;
pub mod http;
pub mod limits;
pub mod net;
pub mod pubsub;
pub mod rate;
pub mod setting;
pub mod tls;
pub mod uring;

pub use net::IoBackend;
pub use pubsub::SlowConsumerPolicy;
pub use setting::parse_duration;

/// Lists the sections once: each `name: Type` is module `name` with `name::Type` (resolved)
/// and `name::Raw` (as given). Generates `RawConfig` and `Config`.
macro_rules! sections {
    ($( $(#[doc = $doc:literal])+ $name:ident: $Section:ident, )*) => {
        /// Every setting as given on the command line (and environment) or in the TOML file.
        #[derive(Clone, Debug, Default, clap::Args)]
        pub struct RawConfig {
            /// TOML file with any of these settings (flags override it).
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                #[command(flatten)]
                pub $name: $name::Raw,
            )*
        }

        /// Checked settings with every default filled in.
        #[derive(Clone, Debug)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $name: $name::$Section, )*
        }

        impl RawConfig {
            /// `self`'s settings where given, `base`'s otherwise.
            fn over(self, base: RawConfig) -> RawConfig {
                RawConfig {
                    config: self.config.or(base.config),
                    $( $name: self.$name.over(base.$name), )*
                }
            }

            /// Reads the settings of a TOML file's table, refusing keys no section has.
            fn from_toml(mut table: toml::Table) -> Result<RawConfig, ConfigError> {
                let raw = RawConfig {
                    config: None,
                    $( $name: $name::Raw::from_toml(&mut table)?, )*
                };
                match table.keys().next() {
                    Some(key) => Err(ConfigError::Unknown(key.clone())),
                    None => Ok(raw),
                }
            }

            /// Fills in the defaults and checks every setting (ignores `config`: see `load`).
            pub fn validate(self) -> Result<Config, ConfigError> {
                Ok(Config { $( $name: self.$name.resolve()?, )* })
            }
        }
    };
}

sections! {
    /// Where to listen, the reactors, and shutdown.
    net: Net,
    /// Sizes of the io_uring driver's ring and receive buffers.
    uring: Uring,
    /// Bounds on what a peer can make the server hold or wait for.
    limits: Limits,
    /// The HTTP request phase: endpoints, upgrade policy, publish token.
    http: Http,
    /// Fan-out: who may publish from /ws, slow consumers, delivery between reactors.
    pubsub: PubSub,
    /// JWT on /ws: keys, issuer, audience, and whether a token is required.
    auth: Auth,
    /// Several nodes sharing topics through NATS.
    cluster: Cluster,
    /// Rate and connection limits per client (all off by default).
    rate: RateLimits,
    /// permessage-deflate: on or off, compression level, minimum size.
    deflate: Deflate,
    /// wss://: the TLS listener, its certificates, the lowest version.
    tls: Tls,
}

impl Default for Config {
    /// The built-in defaults.
    fn default() -> Self {
        RawConfig::default()
            .validate()
            .expect("the defaults are valid")
    }
}

/// A setting with an unusable value, or a config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for `{name}`: {reason}")]
    Invalid { name: String, reason: String },
    #[error("unknown setting `{0}`")]
    Unknown(String),
    #[error("`{0}` is given twice (with `_` and with `-`)")]
    Twice(String),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Toml(Box<toml::de::Error>),
    #[error("config file {path}: {source}")]
    File {
        path: PathBuf,
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    pub(crate) fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

impl RawConfig {
    /// Reads the TOML file named by `config`, if any, lays these settings over it, and
    /// validates the result.
    pub fn load(self) -> Result<Config, ConfigError> {
        let Some(path) = self.config.clone() else {
            return self.validate();
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file = Self::parse_toml(&text).map_err(|e| ConfigError::File {
            path,
            source: Box::new(e),
        })?;
        self.over(file).validate()
    }

    /// Reads settings from TOML text; a key may be spelled with `_` or `-`.
    pub fn parse_toml(text: &str) -> Result<RawConfig, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e| ConfigError::Toml(Box::new(e)))?;
        let mut keys = toml::Table::new();
        for (key, value) in table {
            let underscored = key.replace('-', "_");
            if keys.insert(underscored.clone(), value).is_some() {
                return Err(ConfigError::Twice(underscored));
            }
        }
        Self::from_toml(keys)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        raw: RawConfig,
    }

    fn flags(args: &[&str]) -> Result<RawConfig, clap::Error> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("wsgate").chain(args.iter().copied()))?;
        Cli::from_arg_matches(&matches).map(|cli| cli.raw)
    }

    fn toml(text: &str) -> Result<Config, ConfigError> {
        RawConfig::parse_toml(text)?.validate()
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::default();
        assert_eq!(c.net.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.net.threads >= 1 && c.net.pin && c.http.echo && !c.net.share_port);
        assert_eq!(c.limits.echo.max_message_size, 1 << 20);
        assert!(c.limits.max_buffered_bytes > 0, "sized from the machine");
        assert_eq!(c.limits.echo.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.limits.pubsub.max_message_size, 64 * 1024 + 6 * 128 + 1024);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(
            (c.uring.entries, c.uring.bufs, c.uring.buf_size),
            (1024, 512, 16384)
        );
        assert_eq!(c.http.allowed_origins, None);
        assert_eq!(c.http.publish_token, None);
        assert_eq!(c.pubsub.slow_consumer, SlowConsumerPolicy::Close);
        assert_eq!(c.pubsub.max_batch_delay, Duration::from_millis(14));
        assert!(
            !c.auth.auth_required && c.auth.verifier.is_none(),
            "no auth"
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let bad = |text: &str| toml(text).unwrap_err().to_string();
        assert!(bad("listen = \"nowhere\"").contains("`listen`"));
        assert!(bad("handshake_timeout = \"0s\"").contains("`handshake_timeout`"));
        assert!(bad("handshake_timeout = \"soon\"").contains("`handshake_timeout`"));
        assert!(bad("max_frame_size = 0").contains("`max_frame_size`"));
        assert!(bad("subprotocols = [\"a b\"]").contains("`subprotocols`"));
        assert!(bad("max_topic_len = 2000").contains("`max_topic_len`"));
        assert!(bad("max_header_bytes = 10").contains("`max_header_bytes`"));
        assert!(bad("threads = 65").contains("`threads`"));
        assert!(bad("threads = \"many\"").contains("`threads`"));
        assert!(bad("uring_bufs = 100").contains("`uring_bufs`"));
        assert!(bad("uring_entries = 4").contains("`uring_entries`"));
        assert!(bad("uring_buf_size = 1").contains("`uring_buf_size`"));
        assert!(bad("slow_consumer = \"explode\"").contains("`slow_consumer`"));
        assert!(bad("io = \"kqueue\"").contains("`io`"));
        // Values that made arithmetic wrap or an allocation fail at start (a huge publish
        // limit wrapped the body's end past usize and panicked a reactor).
        let huge = "= 9223372036854775807";
        assert!(bad(&format!("max_publish_bytes {huge}")).contains("`max_publish_bytes`"));
        assert!(bad(&format!("inbox_capacity {huge}")).contains("`inbox_capacity`"));
        // Values that were accepted and could never match anything.
        for origins in [
            "[\"not a url\"]",
            "[\"https://app.example/\"]",
            "[\"app.example\"]",
        ] {
            let err = bad(&format!("allowed_origins = {origins}"));
            assert!(
                err.contains("`allowed_origins`") && err.contains("not an origin"),
                "{err}"
            );
        }
        for patterns in ["[\"bad topic!\"]", "[\"a*b\"]", "[\"**\"]"] {
            let err = bad(&format!("client_publish = {patterns}"));
            assert!(err.contains("`client_publish`"), "{patterns}: {err}");
        }
        // A duration needs its unit, except zero.
        let err = bad("max_batch_delay = 20");
        assert!(
            err.contains("`max_batch_delay`") && err.contains("\"20ms\""),
            "{err}"
        );
    }

    #[test]
    fn good_patterns_origins_and_a_bare_zero_duration() {
        let c = toml(
            "allowed_origins = [\"https://app.example\", \"http://localhost:3000\", \"null\"]\n\
             client_publish = [\"*\", \"chat.*\", \"room/1\"]\nmax_batch_delay = 0",
        )
        .unwrap();
        assert_eq!(c.pubsub.max_batch_delay, Duration::ZERO);
        assert_eq!(c.pubsub.client_publish, ["*", "chat.*", "room/1"]);
    }

    #[test]
    fn unknown_and_doubled_keys_are_refused() {
        let bad = |text: &str| toml(text).unwrap_err().to_string();
        assert_eq!(bad("nonsense = 1"), "unknown setting `nonsense`");
        assert_eq!(
            bad("[net]\nlisten = \"127.0.0.1:1\""),
            "unknown setting `net`"
        );
        assert_eq!(
            bad("entries = 64"),
            "unknown setting `entries`",
            "the prefix is part of the key"
        );
        assert!(bad("max_outbound_bytes = 1\nmax-outbound-bytes = 2").contains("twice"));
        assert!(bad("threads = ").contains("TOML parse error"));
    }

    #[test]
    fn keys_take_underscores_or_dashes() {
        let c = toml("max-outbound-bytes = 4096\nuring-buf-size = 4096\nslow_consumer = \"drop\"")
            .unwrap();
        assert_eq!(c.limits.max_outbound_bytes, 4096);
        assert_eq!(c.uring.buf_size, 4096);
        assert_eq!(c.pubsub.slow_consumer, SlowConsumerPolicy::Drop);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file = RawConfig::parse_toml(
            "listen = \"127.0.0.1:9000\"\nthreads = 3\nidle_timeout = \"0s\"\nmax_topic_len = 64",
        )
        .unwrap();
        let cli = flags(&["--threads", "1", "--share-port", "--pin", "false"]).unwrap();
        let c = cli.over(file).validate().unwrap();
        assert_eq!(c.net.listen.port(), 9000, "from the file");
        assert_eq!(c.net.threads, 1, "the flag wins");
        assert!(c.net.share_port && !c.net.pin);
        assert_eq!(c.limits.echo.idle_timeout, None, "0s disables pings");
        assert_eq!(c.limits.max_topic_len, 64);
        assert_eq!(c.limits.max_subscriptions, 64, "the default");
        assert_eq!(c.limits.pubsub.max_message_size, 64 * 1024 + 6 * 64 + 1024);
        // /echo's message limit is its own: /ws control messages keep theirs.
        let cli = flags(&["--max-message-size", "1000", "--max-frame-size", "500"]).unwrap();
        let c = cli.over(RawConfig::default()).validate().unwrap();
        assert_eq!(c.limits.echo.max_message_size, 1000);
        assert_eq!(c.limits.pubsub.max_message_size, 64 * 1024 + 6 * 128 + 1024);
        assert_eq!(c.limits.pubsub.max_frame_size, 64 * 1024 + 6 * 128 + 1024);
    }

    #[test]
    fn flags_parse_like_the_file() {
        let c = flags(&[
            "--listen=[::1]:80",
            "--io",
            "epoll",
            "--uring-bufs",
            "64",
            "--subprotocols",
            "a,b",
            "--subprotocols",
            "c",
            "--allowed-origins",
            "",
            "--publish-token",
            "",
            "--max-batch-delay",
            "2ms",
            "--echo",
            "false",
        ])
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.net.listen, "[::1]:80".parse().unwrap());
        assert_eq!(c.net.io, IoBackend::Epoll);
        assert_eq!(c.uring.bufs, 64);
        assert_eq!(c.http.subprotocols, ["a", "b", "c"]);
        assert_eq!(
            c.http.allowed_origins, None,
            "an empty list allows any origin"
        );
        assert_eq!(c.http.publish_token, None, "an empty token is none");
        assert_eq!(c.pubsub.max_batch_delay, Duration::from_millis(2));
        assert!(!c.http.echo);
        for bad in [
            &["--threads", "x"][..],
            &["--max-batch-delay", "soon"],
            &["--io", "kqueue"],
            &["--pin", "maybe"],
            &["--threads", "1", "--threads", "2"],
        ] {
            assert!(flags(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cluster_settings() {
        let c = Config::default();
        assert!(!c.cluster.enabled(), "off by default");
        assert_eq!(c.cluster.subject_prefix, "wsgate");
        let c = toml(
            "cluster_urls = [\"nats://127.0.0.1:4222\", \"tls://n2:4443\"]\n\
             cluster_subject_prefix = \"org.gw\"\ncluster_user = \"u\"\n\
             cluster_password = \"p\"\ncluster_confirm_timeout = \"500ms\"",
        )
        .unwrap();
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.urls.len(), 2);
        assert_eq!(c.cluster.confirm_timeout, Duration::from_millis(500));
        let bad = |text: &str| toml(text).unwrap_err().to_string();
        assert!(bad("cluster_subject_prefix = \"a.*\"").contains("`cluster_subject_prefix`"));
        assert!(bad("cluster_subject_prefix = \"a..b\"").contains("`cluster_subject_prefix`"));
        assert!(bad("cluster_urls = [\"nats://\"]").contains("`cluster_urls`"));
        assert!(bad("cluster_token = \"t\"\ncluster_creds_file = \"f\"").contains("one of"));
        assert!(bad("cluster_user = \"u\"").contains("go together"));
        assert!(bad("cluster_tls_key_file = \"k\"").contains("go together"));
        assert!(bad("cluster_confirm_timeout = \"0s\"").contains("`cluster_confirm_timeout`"));
        // Files that cannot be read stop the start, named (they were found missing only
        // when the NATS client started, and the node ran alone).
        for key in ["cluster_creds_file", "cluster_tls_ca_file"] {
            let err = bad(&format!(
                "cluster_urls = [\"nats://127.0.0.1:4222\"]\n{key} = \"/nonexistent/wsgate.creds\""
            ));
            assert!(
                err.contains(&format!("`{key}`")) && err.contains("/nonexistent"),
                "{err}"
            );
            // With clustering off, a shared config may name them.
            toml(&format!("{key} = \"/nonexistent/wsgate.creds\"")).unwrap();
        }
        let c = flags(&[
            "--cluster-urls",
            "nats://a:1,nats://b:2",
            "--cluster-required",
        ])
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.cluster.urls, ["nats://a:1", "nats://b:2"]);
        assert!(c.cluster.required);
    }

    #[test]
    fn help_states_each_default() {
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("--max-outbound-bytes <BYTES>"), "{help}");
        assert!(help.contains("[default: 1048576]"), "{help}");
        assert!(help.contains("--share-port [<BOOL>]"), "{help}");
        assert!(
            help.contains("[possible values: auto, epoll, uring]"),
            "{help}"
        );
        assert!(!help.contains("--uring-bufs"), "io_uring sizes are hidden");
    }
}
