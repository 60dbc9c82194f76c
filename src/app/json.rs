//! JSON (RFC 8259) validation that says where a value lies in its text, so a publisher's
//! `data` is delivered exactly as sent, byte for byte, on every path (`/ws` and HTTP).
//!
//! Owns: the grammar (whitespace, literals, numbers of any size, strings and their escapes,
//! arrays and objects at any depth), UTF-8 inside strings, walking the members of an object,
//! and decoding short strings (member names, ops, topics) for comparison.
//!
//! Must not: rewrite its input, recurse, allocate (nesting deeper than 128 levels spills one
//! bit per level to the heap), or judge what a value means. A `\u` escape is checked for four
//! hex digits and kept as written, so a lone surrogate (`"\ud800"`), which RFC 8259's grammar
//! allows (§7; §8.2 leaves its meaning to the receiver), passes through unchanged.

use std::borrow::Cow;
use std::ops::Range;

use smallvec::SmallVec;

/// Text that is not JSON. Callers answer with one fixed message, so no position is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// The one value a JSON text holds, without the whitespace around it (RFC 8259 §2).
pub fn document(text: &[u8]) -> Result<&[u8], Invalid> {
    let start = skip_ws(text, 0);
    let end = value_end(text, start)?;
    if skip_ws(text, end) != text.len() {
        return Err(Invalid);
    }
    Ok(&text[start..end])
}

/// The index of the first byte at or after `at` that is not JSON whitespace.
pub fn skip_ws(text: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = text.get(at) {
        at += 1;
    }
    at
}

/// Validates the value that starts at `text[at]` and returns the index just past it.
pub fn value_end(text: &[u8], mut at: usize) -> Result<usize, Invalid> {
    let mut open = Nesting::default();
    loop {
        // A value starts at `at`.
        match text.get(at) {
            Some(b'{') => {
                at = skip_ws(text, at + 1);
                if text.get(at) == Some(&b'}') {
                    at += 1;
                } else {
                    open.push(Container::Object);
                    at = skip_ws(text, member_name_end(text, at)?);
                    continue;
                }
            }
            Some(b'[') => {
                at = skip_ws(text, at + 1);
                if text.get(at) == Some(&b']') {
                    at += 1;
                } else {
                    open.push(Container::Array);
                    continue;
                }
            }
            Some(b'"') => at = string_end(text, at)?,
            Some(b'-' | b'0'..=b'9') => at = number_end(text, at)?,
            Some(b't') => at = literal_end(text, at, b"true")?,
            Some(b'f') => at = literal_end(text, at, b"false")?,
            Some(b'n') => at = literal_end(text, at, b"null")?,
            _ => return Err(Invalid),
        }
        // A value ended at `at`: close what it completes, or move to the next element.
        loop {
            let Some(container) = open.top() else {
                return Ok(at);
            };
            at = skip_ws(text, at);
            match (text.get(at), container) {
                (Some(b','), Container::Array) => {
                    at = skip_ws(text, at + 1);
                    break;
                }
                (Some(b','), Container::Object) => {
                    at = skip_ws(text, member_name_end(text, skip_ws(text, at + 1))?);
                    break;
                }
                (Some(b']'), Container::Array) | (Some(b'}'), Container::Object) => {
                    open.pop();
                    at += 1;
                }
                _ => return Err(Invalid),
            }
        }
    }
}

/// Walks the object that starts at `text[at]` (`{`), validating it whole, and calls `member`
/// with each name as written (quotes included) and the span of its value, in order. Returns
/// the index just past the closing brace.
pub fn object(
    text: &[u8],
    at: usize,
    mut member: impl FnMut(&[u8], Range<usize>),
) -> Result<usize, Invalid> {
    if text.get(at) != Some(&b'{') {
        return Err(Invalid);
    }
    let mut at = skip_ws(text, at + 1);
    if text.get(at) == Some(&b'}') {
        return Ok(at + 1);
    }
    loop {
        let name_end = string_end(text, at)?;
        let name = &text[at..name_end];
        at = skip_ws(text, name_end);
        if text.get(at) != Some(&b':') {
            return Err(Invalid);
        }
        let start = skip_ws(text, at + 1);
        let end = value_end(text, start)?;
        member(name, start..end);
        at = skip_ws(text, end);
        match text.get(at) {
            Some(b',') => at = skip_ws(text, at + 1),
            Some(b'}') => return Ok(at + 1),
            _ => return Err(Invalid),
        }
    }
}

/// Validates the string that starts at `text[at]` (`"`) and returns the index just past its
/// closing quote: escapes are one of RFC 8259 §7's, control characters are escaped, and the
/// rest is UTF-8.
pub fn string_end(text: &[u8], at: usize) -> Result<usize, Invalid> {
    if text.get(at) != Some(&b'"') {
        return Err(Invalid);
    }
    let mut i = at + 1;
    loop {
        match *text.get(i).ok_or(Invalid)? {
            b'"' => return Ok(i + 1),
            b'\\' => {
                i += match text.get(i + 1).ok_or(Invalid)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' => {
                        let hex = text.get(i + 2..i + 6).ok_or(Invalid)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(Invalid);
                        }
                        6
                    }
                    _ => return Err(Invalid),
                }
            }
            0..=0x1f => return Err(Invalid),
            0x20..=0x7f => i += 1,
            _ => {
                // A multi-byte character never contains an ASCII byte, so the run of
                // non-ASCII bytes from here is valid exactly when it is UTF-8 on its own.
                let run = text[i..]
                    .iter()
                    .position(u8::is_ascii)
                    .unwrap_or(text.len() - i);
                std::str::from_utf8(&text[i..i + run]).map_err(|_| Invalid)?;
                i += run;
            }
        }
    }
}

/// The contents of a string that passed [`string_end`] (`raw` includes the quotes), with
/// escapes decoded. A lone surrogate, which no Rust string can hold, becomes U+FFFD: use this
/// to compare names and check ops and topics, never for data that is delivered.
pub fn decode_string(raw: &[u8]) -> Cow<'_, str> {
    let inner = &raw[1..raw.len() - 1];
    if !inner.contains(&b'\\') {
        return String::from_utf8_lossy(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] != b'\\' {
            let run = inner[i..]
                .iter()
                .position(|&b| b == b'\\')
                .unwrap_or(inner.len() - i);
            out.push_str(&String::from_utf8_lossy(&inner[i..i + run]));
            i += run;
            continue;
        }
        let (c, len) = match inner[i + 1] {
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => {
                let unit = hex4(&inner[i + 2..]);
                let low = inner
                    .get(i + 6..i + 8)
                    .filter(|esc| *esc == b"\\u")
                    .map(|_| hex4(&inner[i + 8..]));
                match (unit, low) {
                    (0xd800..=0xdbff, Some(low @ 0xdc00..=0xdfff)) => {
                        let c = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                        (char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER), 12)
                    }
                    _ => (
                        char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER),
                        6,
                    ),
                }
            }
            // `"`, `\` and `/` stand for themselves.
            other => (char::from(other), 2),
        };
        out.push(c);
        i += len;
    }
    Cow::Owned(out)
}

/// Four hex digits that [`string_end`] checked.
fn hex4(digits: &[u8]) -> u32 {
    digits[..4].iter().fold(0, |n, &d| {
        n * 16 + char::from(d).to_digit(16).expect("checked hex digit")
    })
}

/// A member name and the `:` after it; returns the index past the colon.
fn member_name_end(text: &[u8], at: usize) -> Result<usize, Invalid> {
    let at = skip_ws(text, string_end(text, at)?);
    if text.get(at) != Some(&b':') {
        return Err(Invalid);
    }
    Ok(skip_ws(text, at + 1))
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, of any length (RFC 8259 §6).
fn number_end(text: &[u8], mut at: usize) -> Result<usize, Invalid> {
    let digits = |at: usize| {
        let n = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            Err(Invalid)
        } else {
            Ok(at + n)
        }
    };
    if text.get(at) == Some(&b'-') {
        at += 1;
    }
    at = match text.get(at) {
        Some(b'0') => at + 1,
        _ => digits(at)?,
    };
    if text.get(at) == Some(&b'.') {
        at = digits(at + 1)?;
    }
    if let Some(b'e' | b'E') = text.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = text.get(at) {
            at += 1;
        }
        at = digits(at)?;
    }
    Ok(at)
}

fn literal_end(text: &[u8], at: usize, literal: &[u8]) -> Result<usize, Invalid> {
    let end = at + literal.len();
    if text.get(at..end) != Some(literal) {
        return Err(Invalid);
    }
    Ok(end)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Array,
    Object,
}

/// The containers open around the current value, one bit each (set: object).
#[derive(Default)]
struct Nesting {
    depth: usize,
    bits: SmallVec<[u64; 2]>,
}

impl Nesting {
    fn push(&mut self, c: Container) {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        if word == self.bits.len() {
            self.bits.push(0);
        }
        let mask = 1u64 << bit;
        match c {
            Container::Object => self.bits[word] |= mask,
            Container::Array => self.bits[word] &= !mask,
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth -= 1;
    }

    fn top(&self) -> Option<Container> {
        let top = self.depth.checked_sub(1)?;
        let set = self.bits[top / 64] & (1u64 << (top % 64)) != 0;
        Some(if set {
            Container::Object
        } else {
            Container::Array
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid(text: &str) -> bool {
        document(text.as_bytes()).is_ok()
    }

    /// serde_json as the oracle for the grammar: `IgnoredAny` skips values without decoding
    /// strings, so it too leaves `\u` escapes (lone surrogates included) unjudged.
    fn serde_valid(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    #[test]
    fn values_and_their_spans() {
        let cases = [
            ("0", "0"),
            (" -0.0e+0 ", "-0.0e+0"),
            ("\t\r\n true \n", "true"),
            ("false", "false"),
            ("null", "null"),
            (r#""""#, r#""""#),
            (
                r#" "a\"b\\c\/\b\f\n\r\t\u00e9" "#,
                r#""a\"b\\c\/\b\f\n\r\t\u00e9""#,
            ),
            ("[]", "[]"),
            ("{}", "{}"),
            ("[ 1 , [ ] , { } ]", "[ 1 , [ ] , { } ]"),
            (
                r#"{ "a" : { "b" : [ null ] } , "c":1 }"#,
                r#"{ "a" : { "b" : [ null ] } , "c":1 }"#,
            ),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("1E400", "1E400"),
            ("-1.5e-7", "-1.5e-7"),
            ("\"caf\u{e9} \u{1f600}\"", "\"caf\u{e9} \u{1f600}\""),
        ];
        for (text, span) in cases {
            let got = document(text.as_bytes()).unwrap_or_else(|_| panic!("{text:?} is json"));
            assert_eq!(got, span.as_bytes(), "{text:?}");
        }
    }

    #[test]
    fn surrogate_escapes_are_kept_as_written() {
        for text in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""a\ud800b""#,
            r#""\udbff\udfff""#,
            r#""\ud83d\ude00""#,
            r#""\ude00\ud83d""#,
            r#"{"\ud800":1}"#,
            r#"["\uDFFF", "\uD800\u0041"]"#,
        ] {
            assert_eq!(document(text.as_bytes()), Ok(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn invalid_texts() {
        for text in [
            "",
            " ",
            "nul",
            "nulll",
            "True",
            "01",
            "-",
            "-a",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "0x1",
            "1 2",
            "NaN",
            "Infinity",
            "\"",
            "\"abc",
            r#""\x""#,
            r#""\u12""#,
            r#""\u12zz""#,
            r#""\U0041""#,
            "\"a\u{1}b\"",
            "\"tab\there\"",
            "'single'",
            "[",
            "[1,",
            "[1,]",
            "[,1]",
            "[1 2]",
            "]",
            "{",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{1:1}"#,
            r#"{"a":1]"#,
            r#"[1}"#,
            "[1]]",
            "\u{feff}1",
            "1\u{0}",
        ] {
            assert!(!valid(text), "{text:?} is not json");
            assert!(!serde_valid(text), "oracle agrees on {text:?}");
        }
    }

    #[test]
    fn strings_must_be_utf8() {
        for bytes in [
            &b"\"\xff\""[..],
            b"\"\xc3\"",
            b"\"\xc3(\"",
            b"\"\xed\xa0\x80\"", // U+D800 encoded directly: not UTF-8
            b"\"\xf0\x9f\x98\"",
            b"\xc3\xa9",
        ] {
            assert_eq!(document(bytes), Err(Invalid), "{}", bytes.escape_ascii());
        }
        assert!(document("\"\u{7ff}\u{ffff}\u{10ffff}\"".as_bytes()).is_ok());
    }

    #[test]
    fn deep_nesting_neither_recurses_nor_fails() {
        for depth in [1, 63, 64, 65, 128, 129, 100_000] {
            let text = format!("{}{}", "[{\"a\":".repeat(depth), "}]".repeat(depth));
            assert!(!valid(&text), "no value inside at depth {depth}");
            let text = format!("{}0{}", "[{\"a\":".repeat(depth), "}]".repeat(depth));
            assert!(valid(&text), "depth {depth}");
            let wrong = format!("{}0{}", "[{\"a\":".repeat(depth), "]}".repeat(depth));
            assert!(!valid(&wrong), "mismatched at depth {depth}");
        }
    }

    #[test]
    fn object_members_in_order() {
        let text = br#" { "op" : "publish" , "d\u0061ta":[1, {"x":2}], "op":3 } "#;
        let mut seen = Vec::new();
        let end = object(text, 1, |name, value| {
            seen.push((decode_string(name).into_owned(), &text[value]));
        })
        .unwrap();
        assert_eq!(&text[end..], b" ");
        assert_eq!(
            seen,
            [
                ("op".to_owned(), &br#""publish""#[..]),
                ("data".to_owned(), &br#"[1, {"x":2}]"#[..]),
                ("op".to_owned(), &b"3"[..]),
            ]
        );
        assert_eq!(object(b"{}", 0, |_, _| panic!("no members")), Ok(2));
        for bad in [
            &b"[]"[..],
            b"{",
            br#"{"a":1"#,
            br#"{"a":1,}"#,
            br#"{"a":x}"#,
        ] {
            assert_eq!(
                object(bad, 0, |_, _| {}),
                Err(Invalid),
                "{}",
                bad.escape_ascii()
            );
        }
    }

    #[test]
    fn decoding_names() {
        let decode = |raw: &str| decode_string(raw.as_bytes()).into_owned();
        assert_eq!(decode(r#""op""#), "op");
        assert!(matches!(decode_string(br#""op""#), Cow::Borrowed(_)));
        assert_eq!(decode(r#""\u006fp""#), "op");
        assert_eq!(
            decode(r#""a\"b\\c\/d\b\f\n\r\t""#),
            "a\"b\\c/d\u{8}\u{c}\n\r\t"
        );
        assert_eq!(decode(r#""\ud83d\ude00!""#), "\u{1f600}!");
        assert_eq!(decode(r#""\ud800x""#), "\u{fffd}x");
        assert_eq!(decode(r#""\ud800\u0041""#), "\u{fffd}A");
        assert_eq!(decode(r#""\udc00\ud800""#), "\u{fffd}\u{fffd}");
        assert_eq!(decode("\"caf\u{e9}\\n\""), "caf\u{e9}\n");
    }

    /// JSON-ish text: the grammar's own bytes, so random strings hit its edges often.
    fn jsonish() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("{"),
                Just("}"),
                Just("["),
                Just("]"),
                Just(","),
                Just(":"),
                Just("\""),
                Just("\\"),
                Just("u"),
                Just("d800"),
                Just("0"),
                Just("1"),
                Just("-"),
                Just("."),
                Just("e"),
                Just("+"),
                Just("true"),
                Just("null"),
                Just(" "),
                Just("\n"),
                Just("a"),
                Just("\u{e9}"),
                Just("\u{1}"),
                Just("\"a\":"),
            ],
            0..24,
        )
        .prop_map(|parts| parts.concat())
    }

    /// Valid JSON with whitespace, big numbers and escapes, from serde_json's printer.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn agrees_with_serde_json_on_jsonish_text(text in jsonish()) {
            prop_assert_eq!(valid(&text), serde_valid(&text), "{:?}", text);
        }

        #[test]
        fn agrees_with_serde_json_on_any_text(text in any::<String>()) {
            prop_assert_eq!(valid(&text), serde_valid(&text), "{:?}", text);
        }

        #[test]
        fn printed_values_are_valid_whole(value in json_value(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let padded = format!(" \n{text}\t ");
            prop_assert_eq!(document(padded.as_bytes()), Ok(text.as_bytes()));
            // Any strict prefix is incomplete, so invalid; never a panic.
            for end in (0..text.len()).filter(|&e| text.is_char_boundary(e)) {
                let prefix = &text[..end];
                prop_assert_eq!(valid(prefix), serde_valid(prefix), "{:?}", prefix);
            }
        }
    }
}
