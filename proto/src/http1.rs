//! HTTP/1.1 message bodies (RFC 9112 §7): the chunked transfer coding, decoded incrementally.
//!
//! Owns: turning a chunked body into its payload, bounded by the caller's limit, from input
//! that may arrive a byte at a time. Chunk extensions and trailer fields are checked for
//! framing as they stream past and then ignored (RFC 9112 §7.1.1, §7.1.2).
//!
//! Must not: touch sockets or clocks, or hold anything but the payload: no line is buffered,
//! so a peer's chunk-size lines, extensions and trailers cost no memory, only their bounded
//! length in bytes read.
//!
//! ```text
//! bytes ─► ChunkedDecoder::decode ─► payload appended to the caller's Vec
//!               │ Ok(None): all consumed, send more    Ok(Some(n)): the body ended n bytes in
//!               └── HttpError: 400 malformed, 413 over the limit, 431 trailers too large
//! ```

use crate::handshake::HttpError;

/// Longest chunk-size line we read through, extensions included; longer is `400`.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Most trailer-section bytes we read through; more is `431`.
pub const MAX_TRAILERS: usize = 8192;

/// Decodes one chunked body (RFC 9112 §7.1):
///
/// ```text
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// last-chunk   = 1*("0") [ chunk-ext ] CRLF
/// ```
///
/// Lines end in CRLF exactly: a bare LF is `400`, so no two parsers can disagree about
/// where this body ends and the next request starts.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Size of the chunk whose size line is being read, then its bytes still to come.
    remaining: usize,
    /// Payload bytes so far.
    total: usize,
    /// The caller's limit on the payload.
    max: usize,
    /// Bytes of the current chunk-size line, or of the trailer section.
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` once one was read.
    Size {
        digits: bool,
    },
    /// Whitespace after the size: only `;` may follow (`BWS` in chunk-ext).
    SizeSpace,
    /// A chunk extension, up to CR.
    Extension,
    /// CR ended the size line; LF next.
    SizeLf,
    /// `remaining` bytes of chunk data.
    Data,
    /// CRLF after chunk data.
    DataCr,
    DataLf,
    /// The start of a trailer line: CR here ends the body.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// CR ended a trailer line; `last` when the line was empty.
    TrailerLf {
        last: bool,
    },
    Done,
}

impl ChunkedDecoder {
    /// A decoder for a body of at most `max` payload bytes.
    pub fn new(max: usize) -> Self {
        Self {
            state: State::Size { digits: false },
            remaining: 0,
            total: 0,
            max,
            line: 0,
        }
    }

    /// Decodes `input`, appending chunk data to `body`.
    ///
    /// - `Ok(None)`: all of `input` was consumed and the body is not complete; call again
    ///   with the next bytes.
    /// - `Ok(Some(n))`: the body ended after `n` bytes of `input`; the rest is not looked at
    ///   (a pipelined request). Calling again returns `Ok(Some(0))`.
    /// - `Err(e)`: send `e.response()` and close. A chunk size that would take the payload
    ///   over `max` is `413` as soon as its digits say so, before any of its data is read.
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<Option<usize>, HttpError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let n = self.remaining.min(input.len() - i);
                body.extend_from_slice(&input[i..i + n]);
                self.remaining -= n;
                self.total += n;
                i += n;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            if self.state == State::Done {
                return Ok(Some(i));
            }
            let b = input[i];
            i += 1;
            self.state = self.step(b)?;
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok((self.state == State::Done).then_some(i))
    }

    /// One byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<State, HttpError> {
        const BAD_SIZE: HttpError = HttpError::bad("invalid chunk size");
        const BAD_EXTENSION: HttpError = HttpError::bad("invalid chunk extension");
        const BAD_LINE_END: HttpError = HttpError::bad("invalid line ending in chunked body");
        const TOO_LONG: HttpError = HttpError::bad("chunk size line too long");
        const TRAILERS: HttpError = HttpError::new(431, "trailer section too large");
        let size_line = matches!(
            self.state,
            State::Size { .. } | State::SizeSpace | State::Extension | State::SizeLf
        );
        let trailers = matches!(
            self.state,
            State::TrailerStart | State::Trailer | State::TrailerLf { .. }
        );
        self.line += 1;
        if size_line && self.line > MAX_CHUNK_LINE {
            return Err(TOO_LONG);
        }
        if trailers && self.line > MAX_TRAILERS {
            return Err(TRAILERS);
        }
        Ok(match self.state {
            State::Size { digits } => match (hex_digit(b), b) {
                (Some(d), _) => {
                    // RFC 9112 §7.1: guard against overflow; and past the limit is 413 now,
                    // leading zeros and all, without waiting for the data.
                    self.remaining = self
                        .remaining
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(d))
                        .filter(|&s| s <= self.max - self.total)
                        .ok_or(HttpError::BODY_TOO_LARGE)?;
                    State::Size { digits: true }
                }
                _ if !digits => return Err(BAD_SIZE),
                (None, b'\r') => State::SizeLf,
                (None, b'\n') => return Err(BAD_LINE_END),
                (None, b';') => State::Extension,
                (None, b' ' | b'\t') => State::SizeSpace,
                (None, _) => return Err(BAD_SIZE),
            },
            State::SizeSpace => match b {
                b' ' | b'\t' => State::SizeSpace,
                b';' => State::Extension,
                _ => return Err(BAD_SIZE),
            },
            // Names, values, quoted strings: ignored, but no control bytes (a bare LF above
            // all) inside the line.
            State::Extension => match b {
                b'\r' => State::SizeLf,
                b'\t' => State::Extension,
                0..=0x1f | 0x7f => return Err(BAD_EXTENSION),
                _ => State::Extension,
            },
            State::SizeLf if b != b'\n' => return Err(BAD_LINE_END),
            State::SizeLf if self.remaining == 0 => {
                self.line = 0;
                State::TrailerStart
            }
            State::SizeLf => State::Data,
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataCr => return Err(HttpError::bad("chunk data longer than its size")),
            State::DataLf if b == b'\n' => {
                self.line = 0;
                State::Size { digits: false }
            }
            State::DataLf => return Err(BAD_LINE_END),
            State::TrailerStart if b == b'\r' => State::TrailerLf { last: true },
            State::TrailerStart | State::Trailer => match b {
                b'\r' => State::TrailerLf { last: false },
                b'\t' => State::Trailer,
                0..=0x1f | 0x7f => return Err(HttpError::bad("invalid trailer field")),
                _ => State::Trailer,
            },
            State::TrailerLf { .. } if b != b'\n' => return Err(BAD_LINE_END),
            State::TrailerLf { last: true } => State::Done,
            State::TrailerLf { last: false } => State::TrailerStart,
            State::Data | State::Done => unreachable!("handled by decode"),
        })
    }
}

fn hex_digit(b: u8) -> Option<usize> {
    match b {
        b'0'..=b'9' => Some(usize::from(b - b'0')),
        b'a'..=b'f' => Some(usize::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(usize::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` in one call: the body and the bytes consumed, or the error.
    fn decode(input: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
        let mut body = Vec::new();
        let end = ChunkedDecoder::new(max).decode(input, &mut body)?;
        Ok(end.map(|n| (body, n)))
    }

    /// Decodes `input` fed in pieces cut at `cuts`.
    fn decode_split(
        input: &[u8],
        cuts: &[usize],
        max: usize,
    ) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
        let mut decoder = ChunkedDecoder::new(max);
        let mut body = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().copied().chain([input.len()]) {
            let cut = cut.clamp(at, input.len());
            if let Some(n) = decoder.decode(&input[at..cut], &mut body)? {
                return Ok(Some((body, at + n)));
            }
            at = cut;
        }
        Ok(None)
    }

    #[track_caller]
    fn assert_fails(input: &[u8], status: u16, reason: &str) {
        let err = decode(input, 1024).expect_err("must be refused");
        assert_eq!(
            (err.status, err.reason),
            (status, reason),
            "{}",
            input.escape_ascii()
        );
    }

    /// Encodes `body` as chunks of the given sizes, with an extension on every other chunk
    /// and the given trailer lines.
    fn encode(body: &[u8], sizes: &[usize], trailers: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut sizes = sizes.iter().cycle();
        let mut odd = false;
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&rest.len())).clamp(1, rest.len());
            let ext = if odd { ";name=\"v;1\"" } else { "" };
            odd = !odd;
            out.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\n");
        for t in trailers {
            out.extend_from_slice(format!("{t}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    // RFC 9112 §7.1: chunks, the last chunk, and where the body ends

    #[test]
    fn rfc_shaped_body() {
        let input = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
        let (body, n) = decode(input, 1024).unwrap().unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(n, input.len());
    }

    #[test]
    fn empty_body_and_leading_zeros() {
        assert_eq!(decode(b"0\r\n\r\n", 0), Ok(Some((Vec::new(), 5))));
        assert_eq!(decode(b"000\r\n\r\n", 0), Ok(Some((Vec::new(), 7))));
        let (body, _) = decode(b"0003\r\nabc\r\n0\r\n\r\n", 3).unwrap().unwrap();
        assert_eq!(body, b"abc");
    }

    #[test]
    fn bytes_after_the_body_are_not_consumed() {
        let input = b"1\r\na\r\n0\r\n\r\nPOST /next HTTP/1.1\r\n";
        let (body, n) = decode(input, 1024).unwrap().unwrap();
        assert_eq!(
            (body.as_slice(), &input[n..]),
            (&b"a"[..], &b"POST /next HTTP/1.1\r\n"[..])
        );
        // Once done, it stays done and takes nothing more.
        let mut decoder = ChunkedDecoder::new(8);
        let mut body = Vec::new();
        assert_eq!(decoder.decode(b"0\r\n\r\n", &mut body), Ok(Some(5)));
        assert_eq!(decoder.decode(b"more", &mut body), Ok(Some(0)));
    }

    #[test]
    fn every_split_decodes_alike() {
        let input = encode(
            b"hello, chunked world",
            &[3, 1, 7],
            &["X-Sum: 1", "X-Two:  a b"],
        );
        let whole = decode(&input, 1024).unwrap().unwrap();
        assert_eq!(whole, (b"hello, chunked world".to_vec(), input.len()));
        for cut in 0..=input.len() {
            assert_eq!(
                decode_split(&input, &[cut], 1024).unwrap().unwrap(),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<usize> = (0..input.len()).collect();
        assert_eq!(decode_split(&input, &bytes, 1024).unwrap().unwrap(), whole);
        // Any strict prefix is incomplete, never an error.
        for end in 0..input.len() {
            assert_eq!(decode(&input[..end], 1024), Ok(None), "prefix of {end}");
        }
    }

    // RFC 9112 §7.1.1, §7.1.2: extensions and trailers are ignored

    #[test]
    fn extensions_and_trailers_are_ignored() {
        let input =
            b"3;a=1;b=\"x;y\" ; c\r\nabc\r\n2 ;d\r\nde\r\n0;last\r\nX-T: 1\r\nY:\t2\r\n\r\n";
        let (body, n) = decode(input, 1024).unwrap().unwrap();
        assert_eq!((body.as_slice(), n), (&b"abcde"[..], input.len()));
    }

    // RFC 9112 §7.1: malformed framing is 400

    #[test]
    fn malformed_sizes_are_400() {
        for input in [
            &b"\r\n"[..],
            b";ext\r\n",
            b" 5\r\n",
            b"-1\r\n",
            b"0x5\r\n",
            b"+5\r\n",
            b"5 \r\n",
            b"5 x\r\n",
            b"g\r\n",
            b"5\n",
        ] {
            let reason = if input == b"5\n" {
                "invalid line ending in chunked body"
            } else {
                "invalid chunk size"
            };
            assert_fails(input, 400, reason);
        }
    }

    #[test]
    fn malformed_framing_is_400() {
        assert_fails(b"3\r\nabcd\r\n", 400, "chunk data longer than its size");
        assert_fails(b"3\r\nabc\n", 400, "chunk data longer than its size");
        assert_fails(b"3\r\nabc\r\r", 400, "invalid line ending in chunked body");
        assert_fails(b"3\rabc", 400, "invalid line ending in chunked body");
        assert_fails(b"3;a\nb\r\n", 400, "invalid chunk extension");
        assert_fails(b"3;a\x00\r\n", 400, "invalid chunk extension");
        assert_fails(b"0\r\nX: 1\n\r\n", 400, "invalid trailer field");
        assert_fails(b"0\r\nX: 1\r\r", 400, "invalid line ending in chunked body");
        assert_fails(b"0\r\n\rx", 400, "invalid line ending in chunked body");
        let long = [b"1;".as_slice(), &[b'x'; MAX_CHUNK_LINE]].concat();
        assert_fails(&long, 400, "chunk size line too long");
        let long = [b"0\r\n".as_slice(), &[b'x'; MAX_TRAILERS + 1]].concat();
        assert_fails(&long, 431, "trailer section too large");
    }

    // The limit: 413 as soon as the sizes pass it

    #[test]
    fn sizes_over_the_limit_are_413_before_the_data() {
        let too_large = (413, "request body over the limit");
        let err = |input: &[u8], max| decode(input, max).unwrap_err();
        let e = err(b"5\r\n", 4);
        assert_eq!((e.status, e.reason), too_large);
        // The digits alone say so: no CRLF, no data needed.
        let e = err(b"10", 15);
        assert_eq!((e.status, e.reason), too_large);
        // Across chunks: the running total counts.
        let e = err(b"3\r\nabc\r\n2\r\n", 4);
        assert_eq!((e.status, e.reason), too_large);
        // Sizes that overflow any integer are over any limit.
        let e = err(b"fffffffffffffffffffffffff\r\n", usize::MAX);
        assert_eq!((e.status, e.reason), too_large);
        // Exactly the limit is fine.
        assert!(decode(b"3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n", 4)
            .unwrap()
            .is_some());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            input in proptest::collection::vec(any::<u8>(), 0..256),
            max in 0usize..64,
            cut in 0usize..256,
        ) {
            if let Ok(Some((body, n))) = decode_split(&input, &[cut], max) {
                prop_assert!(body.len() <= max);
                prop_assert!(n <= input.len());
            }
        }

        #[test]
        fn encoded_bodies_decode_whatever_the_split(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            sizes in proptest::collection::vec(1usize..40, 1..5),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let input = encode(&body, &sizes, &["X-Check: 1"]);
            let decoded = decode_split(&input, &cuts, body.len()).unwrap().unwrap();
            prop_assert_eq!(decoded, (body.clone(), input.len()));
            if !body.is_empty() {
                let err = decode_split(&input, &cuts, body.len() - 1).unwrap_err();
                prop_assert_eq!(err.status, 413);
            }
        }
    }
}
