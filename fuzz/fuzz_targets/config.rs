//! The config file path: TOML text into `RawConfig`, validated into `Config`, and the
//! duration syntax.
//!
//! Checked: no panic on any text; a valid config keeps its bounds. `max_connections` 0 (or
//! absent) means "the open-files limit" and raises this process's limit, so it is replaced
//! by 1 here: the fuzzer must not change its own process.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::config::{parse_duration, RawConfig};

fuzz_target!(|text: &str| {
    if let Some(d) = parse_duration(text) {
        assert!(d.as_secs_f64() <= 1e9);
    }
    let Ok(mut raw) = RawConfig::parse_toml(text) else {
        return;
    };
    if raw.limits.max_connections.is_none_or(|n| n == 0) {
        raw.limits.max_connections = Some(1);
    }
    if let Ok(config) = raw.validate() {
        let limits = &config.limits;
        assert!(limits.echo.max_frame_size > 0 && limits.echo.max_message_size > 0);
        // /ws control messages: the publish limit plus the envelope, whatever /echo's are.
        let control =
            limits.max_publish_bytes + 6 * limits.max_topic_len + wsgate::config::limits::ENVELOPE;
        assert_eq!(limits.pubsub.max_message_size, control);
        assert_eq!(limits.pubsub.max_frame_size, control as u64);
        assert!((256..=1 << 20).contains(&limits.max_header_bytes));
        assert!(limits.max_buffered_bytes > 0);
        assert!(config.net.threads >= 1);
    }
});
