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
    let Ok(mut raw) = toml::from_str::<RawConfig>(text) else {
        return;
    };
    if raw.max_connections.is_none_or(|n| n == 0) {
        raw.max_connections = Some(1);
    }
    if let Ok(config) = raw.validate() {
        assert!(config.limits.max_frame_size > 0 && config.limits.max_message_size > 0);
        assert!(config.pubsub_limits.max_message_size <= config.limits.max_message_size);
        assert!((256..=1 << 20).contains(&config.max_header_bytes));
        assert!(config.threads >= 1);
    }
});
