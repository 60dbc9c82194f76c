//! The `/ws` control-message parser (`wsgate::control::parse`), simd-json in place.
//!
//! Checked: no panic on any bytes; an accepted message has a string topic and an `id`
//! that is a JSON number or string; a publish's `data` is valid JSON; every reply the
//! gateway would send (`ok` or `error`) is one text frame holding a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simd_json::Buffers;
use wsgate::control::{self, Op};
use wsgate_proto::frame::FrameHeader;
use wsgate_proto::OpCode;

fuzz_target!(|data: &[u8]| {
    let mut text = data.to_vec();
    let mut buffers = Buffers::default();
    match control::parse(&mut text, &mut buffers) {
        Ok(message) => {
            if let Some(id) = &message.id {
                let id: serde_json::Value = serde_json::from_str(id).expect("id is json");
                assert!(id.is_number() || id.is_string(), "{id}");
            }
            if let Op::Publish { data, .. } = &message.op {
                serde_json::from_str::<serde_json::Value>(data).expect("data is json");
            }
            check_reply(&control::ok(message.id.as_deref()));
        }
        Err(err) => check_reply(&control::error(&err)),
    }
});

fn check_reply(frame: &[u8]) {
    let (header, n) = FrameHeader::parse(frame)
        .expect("valid frame")
        .expect("complete frame");
    assert!(header.fin && header.mask.is_none() && header.opcode == OpCode::Text);
    assert_eq!(frame.len() - n, header.len as usize);
    let reply: serde_json::Value = serde_json::from_slice(&frame[n..]).expect("reply is json");
    assert!(reply.is_object(), "{reply}");
}
