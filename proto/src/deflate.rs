//! permessage-deflate (RFC 7692) without context takeover, for both roles: negotiating it
//! in the opening handshake, and the compressor and decompressor a whole reactor shares.
//!
//! Owns: parsing offers and responses (`Sec-WebSocket-Extensions` elements, §7), what was
//! agreed for a connection ([`Agreed`]: a few bytes), inflating a received message with a
//! bound on its output ([`Inflater`]) and deflating an outgoing one ([`Deflater`]).
//!
//! Why no context takeover, ever: the server answers `server_no_context_takeover` and
//! `client_no_context_takeover` to every offer it accepts (§7.1.1.1 and §7.1.1.2 let it), so
//! each message is compressed on its own. A broadcast is then compressed once and the same
//! frame is valid for every subscriber that negotiated the extension, and a connection keeps
//! no compression state at all (zlib's would be ≈ 300 KB each): one [`Deflater`] and one
//! [`Inflater`] per reactor, reset per message.
//!
//! ```text
//!  offers ─► negotiate ─► Agreed ─► Agreed::response  (server)
//!  CLIENT_OFFER ··· response elements ─► accept_response ─► Agreed  (client)
//!  RSV1 message ─► Inflater::inflate (bounded, UTF-8 checked) ─► Event::Message
//!  payload ─► Deflater::server_frame ─► RSV1 frame without 00 00 ff ff
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::ProtocolError;
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::utf8::Utf8Validator;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";

/// What a client of this crate offers: no context on either side, so that it too can share
/// one decompressor between many connections.
pub const CLIENT_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// RSV1 in [`FrameHeader::rsv`]: set on the first frame of a compressed message (§6).
pub const RSV1: u8 = 0b100;

/// The empty stored block's tail a sender removes and a receiver appends (§7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An empty final stored block, fed after the tail: the decompressor reaches the end of
/// the stream only if the message ended on a block boundary, as §7.2.1 requires.
const END: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];

/// What was agreed for one connection. Both ends compress without context takeover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// `server_max_window_bits` as the client asked (8..=15); `None`: 15, and nothing to say
    /// in the response.
    pub server_max_window_bits: Option<u8>,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of a server's response.
    pub fn response(&self) -> String {
        let mut value = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if let Some(bits) = self.server_max_window_bits {
            value.push_str("; server_max_window_bits=");
            value.push_str(&bits.to_string());
        }
        value
    }

    /// Whether a frame compressed with the full 32 KiB window is valid for this connection:
    /// it is when the window the client allows covers the whole message, since no match can
    /// then reach further back than the message is long.
    pub fn fits(&self, payload_len: usize) -> bool {
        match self.server_max_window_bits {
            None | Some(15) => true,
            Some(bits) => payload_len <= 1 << bits,
        }
    }
}

/// The server's choice among `offers`, the `Sec-WebSocket-Extensions` elements of a request
/// in order (§7.1): the first permessage-deflate offer with valid parameters. An offer with
/// an unknown or repeated parameter, a missing or bad value, is declined and the next one
/// tried (§7.1.1, §7.1.2); `None` when none is acceptable.
pub fn negotiate<S: AsRef<str>>(offers: &[S]) -> Option<Agreed> {
    offers.iter().find_map(|offer| offer_params(offer.as_ref()))
}

fn offer_params(element: &str) -> Option<Agreed> {
    let params = element_params(element)?;
    let mut seen = Seen::default();
    let mut agreed = Agreed {
        server_max_window_bits: None,
    };
    for (name, value) in params {
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => seen.once(0)?,
            "client_no_context_takeover" if value.is_none() => seen.once(1)?,
            "server_max_window_bits" => {
                seen.once(2)?;
                agreed.server_max_window_bits = Some(window_bits(value.as_deref()?)?);
            }
            // §7.1.2.2: the client may send it without a value (it supports the parameter).
            "client_max_window_bits" => {
                seen.once(3)?;
                if let Some(v) = value {
                    window_bits(&v)?;
                }
            }
            _ => return None,
        }
    }
    Some(agreed)
}

/// A client's check of the server's `Sec-WebSocket-Extensions` elements after offering
/// [`CLIENT_OFFER`]: none means the extension is off; otherwise exactly one
/// permessage-deflate element whose parameters answer the offer (§7.1), including
/// `server_no_context_takeover`, which the offer asked for.
pub fn accept_response<S: AsRef<str>>(elements: &[S]) -> Result<Option<Agreed>, &'static str> {
    let element = match elements {
        [] => return Ok(None),
        [one] => one.as_ref(),
        _ => return Err("more than one extension in use"),
    };
    let params = element_params(element).ok_or("not a valid permessage-deflate response")?;
    let mut seen = Seen::default();
    let mut agreed = Agreed {
        server_max_window_bits: None,
    };
    for (name, value) in params {
        let once = |seen: &mut Seen, i| seen.once(i).ok_or("repeated extension parameter");
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => once(&mut seen, 0)?,
            "client_no_context_takeover" if value.is_none() => once(&mut seen, 1)?,
            "server_max_window_bits" => {
                once(&mut seen, 2)?;
                let bits = value.as_deref().and_then(window_bits);
                agreed.server_max_window_bits =
                    Some(bits.ok_or("bad server_max_window_bits value")?);
            }
            _ => return Err("unexpected permessage-deflate parameter"),
        }
    }
    if !seen.0[0] {
        return Err("server keeps a compression context");
    }
    Ok(Some(agreed))
}

/// Which of the four parameters an element named already.
#[derive(Default)]
struct Seen([bool; 4]);

impl Seen {
    fn once(&mut self, i: usize) -> Option<()> {
        (!std::mem::replace(&mut self.0[i], true)).then_some(())
    }
}

/// §7.1.2: a decimal integer from 8 to 15 without leading zeros.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

/// The parameters of a permessage-deflate element (`name; param; param=value`), values
/// unquoted (RFC 6455 §9.1: a value may be a token or a quoted string). `None` for another
/// extension or a malformed element.
fn element_params(element: &str) -> Option<Vec<(&str, Option<String>)>> {
    let mut parts = split_params(element);
    let name = parts.next()?;
    if !name.eq_ignore_ascii_case(NAME) {
        return None;
    }
    parts
        .map(|param| {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (trim(n), Some(value(trim(v))?)),
                None => (param, None),
            };
            is_token(name).then_some((name, value))
        })
        .collect()
}

/// A parameter value: a token, or a quoted string whose content (unescaped) is a token.
fn value(raw: &str) -> Option<String> {
    let unquoted = match raw.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    '"' => return None,
                    c => out.push(c),
                }
            }
            out
        }
        None => raw.to_owned(),
    };
    is_token(&unquoted).then_some(unquoted)
}

/// The `;`-separated parts of an element, trimmed; a `;` inside a quoted string does not
/// split. An empty part (`a;;b`) is kept, and fails as a parameter name.
fn split_params(element: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(element);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in s.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b';' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(trim(&s[..i]));
                }
                _ => {}
            }
        }
        rest = None;
        Some(trim(s))
    })
}

fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// RFC 9110 §5.6.2 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The decompressor of a group of connections (a reactor, a load generator's thread):
/// each message is inflated on its own, at the end of the message, so one is enough for
/// any number of connections. Its memory (≈ 40 KB) is allocated at the first use.
#[derive(Default)]
pub struct Inflater {
    inner: Option<Box<Decompress>>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("allocated", &self.inner.is_some())
            .finish()
    }
}

impl Inflater {
    /// Inflates one message's payload (`data`, without the tail). Output is bounded: past
    /// `max` bytes it fails with [`ProtocolError::MessageTooLarge`] having held at most
    /// `max + 1` bytes. With `utf8`, the output is validated as it is produced and fails at
    /// the first bad sequence. Corrupt data is [`ProtocolError::BadCompressedData`], data
    /// that stops inside a deflate block [`ProtocolError::UnendedCompressedData`].
    pub fn inflate(
        &mut self,
        data: &[u8],
        max: usize,
        mut utf8: Option<&mut Utf8Validator>,
    ) -> Result<Vec<u8>, ProtocolError> {
        if data.is_empty() {
            // An empty message from a compressor that had nothing to flush (zlib emits
            // nothing for a second sync flush): the tail alone is no deflate block.
            return Ok(Vec::new());
        }
        let d = self
            .inner
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        d.reset(false);
        let mut out = Vec::new();
        let mut checked = 0;
        for piece in [data, &TAIL[..], &END[..]] {
            let mut rest = piece;
            loop {
                if out.len() == out.capacity() {
                    // Grow geometrically, never past `max + 1`: one byte over is enough to know.
                    let room = (max + 1).saturating_sub(out.len());
                    if room == 0 {
                        return Err(ProtocolError::MessageTooLarge);
                    }
                    out.reserve_exact(out.capacity().max(4096).min(room));
                }
                let (before_in, before_out) = (d.total_in(), out.len());
                let status = d
                    .decompress_vec(rest, &mut out, FlushDecompress::Sync)
                    .map_err(|_| ProtocolError::BadCompressedData)?;
                rest = &rest[(d.total_in() - before_in) as usize..];
                if out.len() > max {
                    return Err(ProtocolError::MessageTooLarge);
                }
                if let Some(v) = utf8.as_deref_mut() {
                    v.feed(&out[checked..])
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                    checked = out.len();
                }
                if status == Status::StreamEnd {
                    // A final block (§7.2.3.3 allows BFINAL): what follows is ignored.
                    return Ok(out);
                }
                let progressed = d.total_in() > before_in || out.len() > before_out;
                if rest.is_empty() && out.len() < out.capacity() {
                    break;
                }
                if !progressed && out.len() < out.capacity() {
                    return Err(ProtocolError::BadCompressedData);
                }
            }
        }
        Err(ProtocolError::UnendedCompressedData)
    }
}

/// The compressor of a reactor: every message on its own (no context takeover), so one
/// serves all connections, and a compressed broadcast suits every subscriber.
pub struct Deflater {
    level: u32,
    min_size: usize,
    inner: Option<Box<Compress>>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("level", &self.level)
            .field("min_size", &self.min_size)
            .finish()
    }
}

impl Deflater {
    /// `level` 0..=9 (zlib's); messages under `min_size` bytes are never compressed. Its
    /// memory (≈ 270 KB at the default window) is allocated at the first use.
    pub fn new(level: u32, min_size: usize) -> Self {
        Self {
            level: level.min(9),
            min_size,
            inner: None,
            buf: Vec::new(),
        }
    }

    pub fn min_size(&self) -> usize {
        self.min_size
    }

    /// A complete, final, unmasked frame carrying `payload` compressed, with RSV1 set and
    /// without the `00 00 ff ff` tail (§7.2.1). `None` when the payload is under the
    /// minimum size or compression would not make it smaller: send it plain.
    pub fn server_frame(&mut self, opcode: OpCode, payload: &[u8]) -> Option<Bytes> {
        if payload.len() < self.min_size {
            return None;
        }
        let compressed = self.compress(payload)?;
        let header = FrameHeader {
            fin: true,
            rsv: RSV1,
            opcode,
            mask: None,
            len: compressed.len() as u64,
        };
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut head);
        let mut frame = BytesMut::with_capacity(n + compressed.len());
        frame.put_slice(&head[..n]);
        frame.put_slice(compressed);
        Some(frame.freeze())
    }

    /// `payload` as a raw deflate stream ending in a sync flush, the tail removed; `None`
    /// when that is not shorter than `payload`.
    pub fn compress(&mut self, payload: &[u8]) -> Option<&[u8]> {
        let level = self.level;
        let c = self
            .inner
            .get_or_insert_with(|| Box::new(Compress::new(Compression::new(level), false)));
        c.reset();
        self.buf.clear();
        self.buf.reserve(payload.len() + 64);
        let mut rest = payload;
        loop {
            let before = c.total_in();
            // Raw deflate on a sized buffer cannot fail.
            c.compress_vec(rest, &mut self.buf, FlushCompress::Sync)
                .ok()?;
            rest = &rest[(c.total_in() - before) as usize..];
            // The flush is complete once a call leaves output space unused.
            if rest.is_empty() && self.buf.len() < self.buf.capacity() {
                break;
            }
            self.buf.reserve(self.buf.capacity().max(64));
        }
        let body = self.buf.strip_suffix(&TAIL)?;
        (body.len() < payload.len()).then_some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(bits: Option<u8>) -> Option<Agreed> {
        Some(Agreed {
            server_max_window_bits: bits,
        })
    }

    #[test]
    fn accepts_the_offers_browsers_and_libraries_send() {
        // Chromium, Firefox, Safari.
        assert_eq!(
            negotiate(&["permessage-deflate; client_max_window_bits"]),
            agreed(None)
        );
        assert_eq!(negotiate(&["permessage-deflate"]), agreed(None));
        // Python websockets.
        assert_eq!(
            negotiate(&[
                "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
            ]),
            agreed(Some(12))
        );
        // Autobahn 13.7: several offers; quoted values; case of the names.
        assert_eq!(
            negotiate(&[
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=\"9\"",
                "permessage-deflate",
            ]),
            agreed(Some(9))
        );
        assert_eq!(
            negotiate(&["Permessage-Deflate; Server_No_Context_Takeover"]),
            agreed(None)
        );
        assert_eq!(negotiate(&[CLIENT_OFFER]), agreed(None));
    }

    #[test]
    fn declines_a_bad_offer_and_takes_the_next() {
        let bad = [
            "permessage-deflate; x=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=\"\"",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"x\"",
            "permessage-deflate;; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=\"10",
            "x-webkit-deflate-frame",
            "permessage-deflate-x",
        ];
        for offer in bad {
            assert_eq!(negotiate(&[offer]), None, "{offer}");
            assert_eq!(
                negotiate(&[offer, "permessage-deflate; server_max_window_bits=10"]),
                agreed(Some(10)),
                "{offer}"
            );
        }
        assert_eq!(negotiate::<&str>(&[]), None);
    }

    #[test]
    fn the_response_always_drops_both_contexts() {
        assert_eq!(
            agreed(None).unwrap().response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(
            agreed(Some(9)).unwrap().response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=9"
        );
        // What we answer, a client of this crate accepts.
        for bits in [None, Some(8), Some(15)] {
            let response = agreed(bits).unwrap().response();
            assert_eq!(accept_response(&[response]), Ok(agreed(bits)));
        }
    }

    #[test]
    fn a_client_refuses_a_response_it_cannot_use() {
        assert_eq!(accept_response::<&str>(&[]), Ok(None));
        for bad in [
            &["permessage-deflate"][..],
            &["permessage-deflate; client_no_context_takeover"],
            &["permessage-deflate; server_no_context_takeover; client_max_window_bits=9"],
            &["permessage-deflate; server_no_context_takeover; server_max_window_bits"],
            &["permessage-deflate; server_no_context_takeover; server_no_context_takeover"],
            &["permessage-deflate; server_no_context_takeover; y"],
            &["x-foo"],
            &[
                "permessage-deflate; server_no_context_takeover",
                "permessage-deflate; server_no_context_takeover",
            ],
        ] {
            assert!(accept_response(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn window_bits_fit() {
        let a = agreed(Some(9)).unwrap();
        assert!(a.fits(512));
        assert!(!a.fits(513));
        assert!(agreed(Some(15)).unwrap().fits(1 << 20));
        assert!(agreed(None).unwrap().fits(1 << 20));
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        let mut i = 0;
        while s.len() < n {
            s.push_str(&format!(
                "{{\"id\":{i},\"symbol\":\"BTC-USD\",\"price\":{}.{:02},\"side\":\"buy\"}},",
                40_000 + i * 7 % 1000,
                i % 100
            ));
            i += 1;
        }
        s.truncate(n - 1);
        s.push(']');
        s.into_bytes()
    }

    #[test]
    fn round_trip_through_one_inflater_and_one_deflater() {
        let mut deflater = Deflater::new(6, 64);
        let mut inflater = Inflater::default();
        for n in [64, 256, 1024, 16384, 200_000] {
            let payload = json(n);
            let frame = deflater.server_frame(OpCode::Text, &payload).unwrap();
            let (header, at) = FrameHeader::parse(&frame).unwrap().unwrap();
            assert_eq!(header.rsv, RSV1);
            assert!(header.fin);
            let body = &frame[at..];
            assert!(!body.ends_with(&TAIL));
            let bound = if n >= 1024 { n / 2 } else { n };
            assert!(body.len() < bound, "{n}: {}", body.len());
            let mut v = Utf8Validator::new();
            assert_eq!(inflater.inflate(body, n, Some(&mut v)).unwrap(), payload);
            assert_eq!(v.finish(), Ok(()));
            // One byte less of room: too large, whatever the size.
            assert_eq!(
                inflater.inflate(body, n - 1, None),
                Err(ProtocolError::MessageTooLarge)
            );
        }
        // Under the minimum, or incompressible: plain.
        assert_eq!(deflater.server_frame(OpCode::Text, &json(63)), None);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert_eq!(deflater.server_frame(OpCode::Binary, &noise), None);
    }

    /// An empty payload is an empty message (a compressor with nothing to flush sends
    /// one), as is the one-byte empty stored block; neither is bad data.
    #[test]
    fn an_empty_payload_is_an_empty_message() {
        let mut inflater = Inflater::default();
        for payload in [&b""[..], &[0x00], &[0x02, 0x00]] {
            let mut v = Utf8Validator::new();
            assert_eq!(
                inflater.inflate(payload, 0, Some(&mut v)),
                Ok(Vec::new()),
                "{payload:?}"
            );
            assert_eq!(v.finish(), Ok(()));
        }
    }

    #[test]
    fn hostile_compressed_data_fails_cleanly() {
        let mut inflater = Inflater::default();
        // A bomb: 4 MiB of zeros compresses to ≈ 4 KB; the limit stops it at 1 MiB.
        let zeros = vec![0u8; 4 << 20];
        let mut deflater = Deflater::new(9, 0);
        let bomb = deflater.compress(&zeros).unwrap().to_vec();
        assert_eq!(
            inflater.inflate(&bomb, 1 << 20, None),
            Err(ProtocolError::MessageTooLarge)
        );
        // Garbage: BTYPE=11 is reserved.
        assert_eq!(
            inflater.inflate(&[0xff, 0xff, 0xff], 1024, None),
            Err(ProtocolError::BadCompressedData)
        );
        // A stored block announcing 100 bytes that never come.
        assert_eq!(
            inflater.inflate(&[0x00, 100, 0, !100, 0xff, b'a'], 1024, None),
            Err(ProtocolError::UnendedCompressedData)
        );
        // Invalid UTF-8 inside, caught on the inflated bytes.
        let bad = deflater
            .compress(
                &[b'a'; 100]
                    .iter()
                    .chain(&[0xc3, 0x28])
                    .copied()
                    .collect::<Vec<_>>(),
            )
            .unwrap()
            .to_vec();
        assert_eq!(
            inflater.inflate(&bad, 1024, Some(&mut Utf8Validator::new())),
            Err(ProtocolError::InvalidUtf8)
        );
        // The inflater is fine afterwards.
        let ok = deflater.compress(&json(1000)).unwrap().to_vec();
        assert_eq!(inflater.inflate(&ok, 1000, None).unwrap(), json(1000));
        // A message ending in a final block (§7.2.3.3) is complete too.
        assert_eq!(inflater.inflate(&[0x03, 0x00], 10, None).unwrap(), b"");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn inflate_inverts_deflate(payload in proptest::collection::vec(any::<u8>(), 0..4000), level in 0u32..10) {
            let mut deflater = Deflater::new(level, 0);
            let mut inflater = Inflater::default();
            if let Some(body) = deflater.compress(&payload) {
                let body = body.to_vec();
                prop_assert_eq!(inflater.inflate(&body, payload.len(), None).unwrap(), payload);
            }
        }

        #[test]
        fn inflate_never_panics_nor_passes_the_limit(data in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..4096) {
            let mut inflater = Inflater::default();
            if let Ok(out) = inflater.inflate(&data, max, None) {
                prop_assert!(out.len() <= max);
            }
        }

        #[test]
        fn negotiation_never_panics(offer in "[a-z_=;\" ,0-9\\\\-]{0,80}") {
            let _ = negotiate(&[offer.as_str()]);
            let _ = accept_response(&[offer.as_str()]);
        }

        #[test]
        fn valid_window_bits_are_honoured(bits in 8u8..=15, quoted in any::<bool>()) {
            let value = if quoted { format!("\"{bits}\"") } else { bits.to_string() };
            let offer = format!("permessage-deflate; client_max_window_bits; server_max_window_bits={value}");
            prop_assert_eq!(negotiate(&[offer]), Some(Agreed { server_max_window_bits: Some(bits) }));
        }
    }
}
