//! Our TLS 1.3 record layer after a real handshake: records sealed with the client's keys
//! (any content type, content, padding, a flipped byte), raw bytes, splits, server sends
//! and closes. See `wsgate_fuzz::tls`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wsgate_fuzz::tls::run(data));
