//! The `/ws` client protocol: JSON control messages in, replies out.
//!
//! ```text
//! → {"op":"subscribe","topic":"prices","id":1}      ← {"op":"ok","id":1}
//! → {"op":"unsubscribe","topic":"prices"}          ← {"op":"ok"}
//! → {"op":"publish","topic":"prices","data":{...}}  (where config allows client publish)
//! → {"op":"refresh","token":"<JWT>","id":2}         ← {"op":"ok","id":2}
//! ← {"op":"error","id":1,"code":"bad_request","message":"..."}
//! ```
//!
//! Messages are validated with [`super::json`], which finds where each field lies without
//! decoding or rewriting the text: `data` is delivered as the publisher's exact bytes, and
//! `id` is echoed back exactly as given (a number or a string).

use std::borrow::Cow;
use std::ops::Range;

use super::json;

/// A valid control message, borrowing from the text it was parsed from.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'t> {
    Subscribe(Cow<'t, str>),
    Unsubscribe(Cow<'t, str>),
    Publish {
        topic: Cow<'t, str>,
        /// The JSON text of `data` exactly as sent: validated, never re-encoded.
        data: &'t [u8],
    },
    /// Replaces the connection's token (JWT) before it expires.
    Refresh(Cow<'t, str>),
}

/// A parsed control message.
#[derive(Debug, PartialEq, Eq)]
pub struct Control<'t> {
    pub op: Op<'t>,
    /// The request's `id` as JSON text, to echo in the reply.
    pub id: Option<String>,
}

/// Why a control message was refused: the `code` of the `error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON (RFC 8259).
    BadJson,
    /// JSON, but not a control message: not an object, a field missing, mistyped or
    /// repeated, or a binary frame.
    BadRequest,
    /// `op` is none of ours.
    UnknownOp,
    /// A topic `broadcast::check_topic` refuses.
    InvalidTopic,
    /// Over `max_subscriptions`.
    TooManySubscriptions,
    /// Publishing to the topic is not allowed (`client_publish`).
    Forbidden,
    /// `data` over `max_publish_bytes`.
    TooLarge,
    /// Over a rate limit (messages, bytes or subscription ops per second).
    RateLimited,
    /// A `refresh` token that is not valid, or names another subject.
    Unauthorized,
}

impl ErrorCode {
    /// The code on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadRequest => "bad_request",
            Self::UnknownOp => "unknown_op",
            Self::InvalidTopic => "invalid_topic",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::Forbidden => "forbidden",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
        }
    }
}

/// A refused control message: answered with an `error` reply, the connection stays open.
#[derive(Debug, PartialEq, Eq)]
pub struct ControlError {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: &'static str,
}

impl ControlError {
    pub fn new(id: Option<String>, code: ErrorCode, message: &'static str) -> Self {
        Self { id, code, message }
    }
}

/// The fields we read, as spans of the text; a repeated one is refused.
#[derive(Default)]
struct Fields {
    op: Option<Range<usize>>,
    topic: Option<Range<usize>>,
    id: Option<Range<usize>>,
    data: Option<Range<usize>>,
    token: Option<Range<usize>>,
    repeated: Option<&'static str>,
    /// `id` is among the repeated fields (not necessarily the first).
    id_repeated: bool,
}

/// Parses a control message. The whole text is validated as JSON before any field is
/// looked at, so a message is either `bad_json` or judged on its fields.
pub fn parse(text: &[u8]) -> Result<Control<'_>, ControlError> {
    const BAD_JSON: ControlError = ControlError {
        id: None,
        code: ErrorCode::BadJson,
        message: "message is not valid json",
    };
    let bad = |id: Option<String>, message| ControlError::new(id, ErrorCode::BadRequest, message);
    let start = json::skip_ws(text, 0);
    if text.get(start) != Some(&b'{') {
        return Err(match json::document(text) {
            Ok(_) => bad(None, "message must be a json object"),
            Err(json::Invalid) => BAD_JSON,
        });
    }
    let mut fields = Fields::default();
    let end = json::object(text, start, |name, value| {
        let (slot, repeated) = match &*json::decode_string(name) {
            "op" => (&mut fields.op, "duplicate field op"),
            "topic" => (&mut fields.topic, "duplicate field topic"),
            "id" => (&mut fields.id, "duplicate field id"),
            "data" => (&mut fields.data, "duplicate field data"),
            "token" => (&mut fields.token, "duplicate field token"),
            _ => return,
        };
        if slot.replace(value).is_some() {
            fields.repeated.get_or_insert(repeated);
            fields.id_repeated |= repeated == "duplicate field id";
        }
    })
    .map_err(|_| BAD_JSON)?;
    if json::skip_ws(text, end) != text.len() {
        return Err(BAD_JSON);
    }
    let id = match fields.id.map(|span| &text[span]) {
        None => None,
        Some(raw @ [b'"' | b'-' | b'0'..=b'9', ..]) => {
            Some(String::from_utf8_lossy(raw).into_owned())
        }
        Some(_) => return Err(bad(None, "id must be a number or a string")),
    };
    if let Some(message) = fields.repeated {
        // Which of two ids to echo is as ambiguous as the rest.
        let id = id.filter(|_| !fields.id_repeated);
        return Err(bad(id, message));
    }
    let string = |span: Range<usize>| {
        let raw = &text[span];
        (raw.first() == Some(&b'"')).then(|| json::decode_string(raw))
    };
    let Some(op) = fields.op else {
        return Err(bad(id, "missing field op"));
    };
    let Some(op) = string(op) else {
        return Err(bad(id, "op must be a string"));
    };
    let topic = || match fields.topic.clone() {
        None => Err(bad(id.clone(), "missing field topic")),
        Some(span) => string(span).ok_or_else(|| bad(id.clone(), "topic must be a string")),
    };
    let op = match &*op {
        "subscribe" => Op::Subscribe(topic()?),
        "unsubscribe" => Op::Unsubscribe(topic()?),
        "publish" => {
            let topic = topic()?;
            let Some(data) = fields.data else {
                return Err(bad(id, "missing field data"));
            };
            Op::Publish {
                topic,
                data: &text[data],
            }
        }
        "refresh" => match fields.token {
            None => return Err(bad(id, "missing field token")),
            Some(span) => match string(span) {
                Some(token) => Op::Refresh(token),
                None => return Err(bad(id, "token must be a string")),
            },
        },
        _ => {
            return Err(ControlError::new(
                id,
                ErrorCode::UnknownOp,
                "op must be subscribe, unsubscribe, publish or refresh",
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
        err.code.as_str(),
        err.message
    );
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Control<'_>, ControlError> {
        parse(text.as_bytes())
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
        assert_eq!(c.id.as_deref(), Some(r#""a\"b""#), "ids are echoed as sent");
        let c = parse_str(r#"{"op":"refresh","token":"a.b.c","id":2}"#).unwrap();
        assert_eq!(c.op, Op::Refresh("a.b.c".into()));
        let c = parse_str(r#"{"op":"subscribe","topic":"t","id":1.50e0}"#).unwrap();
        assert_eq!(c.id.as_deref(), Some("1.50e0"));
        // Escaped names and values mean what they decode to.
        let c = parse_str(r#"{"\u006fp":"sub\u0073cribe","topic":"a\/b"}"#).unwrap();
        assert_eq!(c.op, Op::Subscribe("a/b".into()));
        // Unknown fields are ignored.
        let c = parse_str(r#"{"op":"subscribe","topic":"t","x":[{"op":1}]}"#).unwrap();
        assert_eq!(c.op, Op::Subscribe("t".into()));
    }

    #[test]
    fn publish_data_is_the_exact_bytes_sent() {
        let data = |text: &str| match parse_str(text).unwrap().op {
            Op::Publish { data, .. } => String::from_utf8(data.to_vec()).unwrap(),
            op => panic!("not a publish: {op:?}"),
        };
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        let cases = [
            r#"{"p": [1, 2.50, "x"]}"#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""a\ud800b""#,
            r#"{"\ud800":1}"#,
            r#""\ud83d\ude00 \u00e9 \n \/""#,
            "\"caf\u{e9} \u{1f600}\"",
            "123456789012345678901234567890.000e-00",
            "-0",
            &deep,
            "null",
            "{ }",
        ];
        for value in cases {
            for (before, after) in [("", ""), (" \n\t", "\r\n ")] {
                let text =
                    format!(r#"{{"op":"publish","topic":"t","data":{before}{value}{after}}}"#);
                assert_eq!(data(&text), value, "{text}");
            }
        }
        // Anywhere among the fields.
        let text = r#" { "data" : {"a":1} , "topic":"t", "op":"publish" } "#;
        assert_eq!(data(text), r#"{"a":1}"#);
    }

    #[test]
    fn errors() {
        let code = |text: &str| parse_str(text).unwrap_err().code;
        assert_eq!(code("{nope"), ErrorCode::BadJson);
        assert_eq!(code(""), ErrorCode::BadJson);
        assert_eq!(code("[1"), ErrorCode::BadJson);
        assert_eq!(
            code(r#"{"op":"subscribe","topic":"t"} x"#),
            ErrorCode::BadJson
        );
        assert_eq!(
            code(r#"{"op":"publish","topic":"t","data":"\x"}"#),
            ErrorCode::BadJson
        );
        assert_eq!(
            code(r#"{"op":"publish","topic":"t","data":01}"#),
            ErrorCode::BadJson
        );
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(" 7 "), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"topic":"t"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":7}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"subscribe"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"op":"subscribe","topic":5}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"publish","topic":"t"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"op":"dance","topic":"t"}"#), ErrorCode::UnknownOp);
        assert_eq!(code(r#"{"op":"refresh"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"refresh","token":1}"#), ErrorCode::BadRequest);
        let err = parse_str(r#"{"op":"refresh","token":"a","token":"b"}"#).unwrap_err();
        assert_eq!(err.message, "duplicate field token");
        assert_eq!(code(r#"{"op":"\ud800","topic":"t"}"#), ErrorCode::UnknownOp);
        for id in [r#"{"x":1}"#, "[1]", "true", "null"] {
            let text = format!(r#"{{"op":"subscribe","topic":"t","id":{id}}}"#);
            assert_eq!(code(&text), ErrorCode::BadRequest, "{text}");
        }
        let err = parse_str(r#"{"op":"dance","id":9}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("9"), "the id is kept for the reply");
    }

    #[test]
    fn repeated_fields_are_refused() {
        let err = parse_str(r#"{"op":"subscribe","topic":"a","topic":"b","id":4}"#).unwrap_err();
        assert_eq!(
            err,
            ControlError::new(
                Some("4".into()),
                ErrorCode::BadRequest,
                "duplicate field topic"
            )
        );
        let err = parse_str(r#"{"op":"publish","topic":"t","data":1,"d\u0061ta":2}"#).unwrap_err();
        assert_eq!(err.message, "duplicate field data");
        let err = parse_str(r#"{"op":"subscribe","topic":"t","id":1,"id":2}"#).unwrap_err();
        assert_eq!((err.id, err.message), (None, "duplicate field id"));
        // Another field repeated first: the ids are still two, and neither is echoed.
        let err = parse_str(r#"{"id":1,"op":"subscribe","op":"subscribe","id":2,"topic":"t"}"#)
            .unwrap_err();
        assert_eq!((err.id, err.message), (None, "duplicate field op"));
    }

    #[test]
    fn codes_on_the_wire() {
        let codes = [
            (ErrorCode::BadJson, "bad_json"),
            (ErrorCode::BadRequest, "bad_request"),
            (ErrorCode::UnknownOp, "unknown_op"),
            (ErrorCode::InvalidTopic, "invalid_topic"),
            (ErrorCode::TooManySubscriptions, "too_many_subscriptions"),
            (ErrorCode::Forbidden, "forbidden"),
            (ErrorCode::TooLarge, "too_large"),
            (ErrorCode::RateLimited, "rate_limited"),
            (ErrorCode::Unauthorized, "unauthorized"),
        ];
        for (code, wire) in codes {
            assert_eq!(code.as_str(), wire);
        }
    }

    #[test]
    fn replies() {
        assert_eq!(&ok(Some("1"))[..], br#"{"op":"ok","id":1}"#);
        assert_eq!(&ok(None)[..], br#"{"op":"ok"}"#);
        let err = ControlError::new(
            Some("\"x\"".into()),
            ErrorCode::Forbidden,
            "publishing to this topic is not allowed",
        );
        assert_eq!(
            &error(&err)[..],
            br#"{"op":"error","id":"x","code":"forbidden","message":"publishing to this topic is not allowed"}"#
        );
    }
}
