//! The `/ws` control-message parser (`wsgate::app::control::parse`) and the JSON validation
//! both publish paths share (`wsgate::app::json::document`).
//!
//! Checked: no panic on any bytes; an accepted message has an `id` that is a JSON number or
//! string; a publish's `data` is valid JSON and a slice of the message, byte for byte, so
//! nothing the publisher sent is changed; the same bytes published over HTTP would deliver
//! the same `data`; every reply the gateway would send (`ok` or `error`) is a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::app::control::{self, Op};
use wsgate::app::json;

fuzz_target!(|data: &[u8]| {
    let document = json::document(data);
    match control::parse(data) {
        Ok(message) => {
            assert!(document.is_ok(), "an accepted message is valid JSON");
            if let Some(id) = &message.id {
                assert!(valid(id.as_bytes()), "id is json: {id}");
                let first = id.as_bytes()[0];
                assert!(
                    first == b'"' || first == b'-' || first.is_ascii_digit(),
                    "{id}"
                );
            }
            if let Op::Publish { data: value, .. } = &message.op {
                let start = value.as_ptr() as usize - data.as_ptr() as usize;
                assert_eq!(
                    &data[start..start + value.len()],
                    *value,
                    "a slice of the input"
                );
                assert_eq!(
                    json::document(value),
                    Ok(*value),
                    "HTTP would deliver the same"
                );
            }
            check_reply(&control::ok(message.id.as_deref()));
        }
        Err(err) => check_reply(&control::error(&err)),
    }
});

/// serde_json as the oracle for the grammar. `IgnoredAny` checks escapes without decoding
/// them, so a lone surrogate (`"\ud800"`), which the grammar allows and the gateway passes
/// through unchanged, is valid here too.
fn valid(text: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
}

fn check_reply(text: &[u8]) {
    assert!(
        valid(text),
        "reply is json: {}",
        String::from_utf8_lossy(text)
    );
    assert_eq!(text.first(), Some(&b'{'), "reply is an object");
}
