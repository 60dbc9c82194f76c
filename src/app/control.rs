//! The `/ws` client protocol: JSON control messages in, replies out.
//!
//! ```text
//! → {"op":"subscribe","topic":"prices","id":1}      ← {"op":"ok","id":1}
//! → {"op":"unsubscribe","topic":"prices"}          ← {"op":"ok"}
//! → {"op":"publish","topic":"prices","data":{...}}  (where config allows client publish)
//! ← {"op":"error","id":1,"code":"bad_request","message":"..."}
//! ```
//!
//! Messages are parsed with simd-json in place, in the buffer the payload was unmasked
//! into. `id` may be a number or a string and is echoed back as given.

use simd_json::prelude::*;
use simd_json::{BorrowedValue, Buffers};

/// A valid control message.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Subscribe(String),
    Unsubscribe(String),
    /// `data` is the JSON text of the payload, re-encoded compactly.
    Publish {
        topic: String,
        data: String,
    },
}

/// A parsed control message.
#[derive(Debug, PartialEq, Eq)]
pub struct Control {
    pub op: Op,
    /// The request's `id` as JSON text, to echo in the reply.
    pub id: Option<String>,
}

/// A refused control message: answered with an `error` reply, the connection stays open.
#[derive(Debug, PartialEq, Eq)]
pub struct ControlError {
    pub id: Option<String>,
    pub code: &'static str,
    pub message: &'static str,
}

impl ControlError {
    pub fn new(id: Option<String>, code: &'static str, message: &'static str) -> Self {
        Self { id, code, message }
    }
}

/// Parses a control message from `text`, which it may rewrite (simd-json parses in place).
pub fn parse(text: &mut [u8], buffers: &mut Buffers) -> Result<Control, ControlError> {
    let bad = |id: Option<String>, message| ControlError::new(id, "bad_request", message);
    let value = simd_json::to_borrowed_value_with_buffers(text, buffers)
        .map_err(|_| ControlError::new(None, "bad_json", "message is not valid json"))?;
    let Some(object) = value.as_object() else {
        return Err(bad(None, "message must be a json object"));
    };
    let id = match object.get("id") {
        None => None,
        Some(v @ (BorrowedValue::String(_) | BorrowedValue::Static(_)))
            if v.is_str() || v.is_number() =>
        {
            Some(v.encode())
        }
        Some(_) => return Err(bad(None, "id must be a number or a string")),
    };
    let Some(op) = object.get("op") else {
        return Err(bad(id, "missing field op"));
    };
    let Some(op) = op.as_str() else {
        return Err(bad(id, "op must be a string"));
    };
    let topic = || -> Result<String, ControlError> {
        match object.get("topic") {
            None => Err(bad(id.clone(), "missing field topic")),
            Some(t) => t
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(id.clone(), "topic must be a string")),
        }
    };
    let op = match op {
        "subscribe" => Op::Subscribe(topic()?),
        "unsubscribe" => Op::Unsubscribe(topic()?),
        "publish" => {
            let topic = topic()?;
            let Some(data) = object.get("data") else {
                return Err(bad(id, "missing field data"));
            };
            Op::Publish {
                topic,
                data: data.encode(),
            }
        }
        _ => {
            return Err(ControlError::new(
                id,
                "unknown_op",
                "op must be subscribe, unsubscribe or publish",
            ))
        }
    };
    Ok(Control { op, id })
}

/// `{"op":"ok"}`, with the request's id when it had one.
pub fn ok(id: Option<&str>) -> Vec<u8> {
    let text = match id {
        Some(id) => format!("{{\"op\":\"ok\",\"id\":{id}}}"),
        None => "{\"op\":\"ok\"}".to_owned(),
    };
    text.into_bytes()
}

/// `{"op":"error",...}` for a refused message. Codes and messages are our own ASCII
/// literals, so nothing needs escaping.
pub fn error(err: &ControlError) -> Vec<u8> {
    let id = err
        .id
        .as_deref()
        .map(|id| format!(",\"id\":{id}"))
        .unwrap_or_default();
    let text = format!(
        "{{\"op\":\"error\"{id},\"code\":\"{}\",\"message\":\"{}\"}}",
        err.code, err.message
    );
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Control, ControlError> {
        parse(&mut text.as_bytes().to_vec(), &mut Buffers::default())
    }

    #[test]
    fn ops() {
        let c = parse_str(r#"{"op":"subscribe","topic":"prices","id":1}"#).unwrap();
        assert_eq!(
            c,
            Control {
                op: Op::Subscribe("prices".into()),
                id: Some("1".into())
            }
        );
        let c = parse_str(r#"{"op":"unsubscribe","topic":"prices","id":"a\"b"}"#).unwrap();
        assert_eq!(c.op, Op::Unsubscribe("prices".into()));
        assert_eq!(
            c.id.as_deref(),
            Some(r#""a\"b""#),
            "string ids are re-encoded as json"
        );
        let c = parse_str(r#"{"op":"publish","topic":"t","data":{"p": [1, 2.5, "x"]}}"#).unwrap();
        assert_eq!(
            c.op,
            Op::Publish {
                topic: "t".into(),
                data: r#"{"p":[1,2.5,"x"]}"#.into()
            }
        );
    }

    #[test]
    fn errors() {
        let code = |text: &str| parse_str(text).unwrap_err().code;
        assert_eq!(code("{nope"), "bad_json");
        assert_eq!(code(""), "bad_json");
        assert_eq!(code("[1,2]"), "bad_request");
        assert_eq!(code(r#"{"topic":"t"}"#), "bad_request");
        assert_eq!(code(r#"{"op":7}"#), "bad_request");
        assert_eq!(code(r#"{"op":"subscribe"}"#), "bad_request");
        assert_eq!(code(r#"{"op":"subscribe","topic":5}"#), "bad_request");
        assert_eq!(code(r#"{"op":"publish","topic":"t"}"#), "bad_request");
        assert_eq!(code(r#"{"op":"dance","topic":"t"}"#), "unknown_op");
        assert_eq!(
            code(r#"{"op":"subscribe","topic":"t","id":{"x":1}}"#),
            "bad_request"
        );
        let err = parse_str(r#"{"op":"dance","id":9}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("9"), "the id is kept for the reply");
    }

    #[test]
    fn replies() {
        assert_eq!(&ok(Some("1"))[..], br#"{"op":"ok","id":1}"#);
        assert_eq!(&ok(None)[..], br#"{"op":"ok"}"#);
        let err = ControlError::new(
            Some("\"x\"".into()),
            "forbidden",
            "publishing to this topic is not allowed",
        );
        assert_eq!(
            &error(&err)[..],
            br#"{"op":"error","id":"x","code":"forbidden","message":"publishing to this topic is not allowed"}"#
        );
    }
}
