//! Client side of RFC 6455: the opening handshake (request and `Sec-WebSocket-Accept` check),
//! masked frame encoding, and an incremental, zero-copy decoder for server frames.
//!
//! No sockets, no clock, no allocation on the decode path: the caller owns every buffer.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3: the GUID appended to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// How many payload bytes of a data frame the decoder wants contiguous before it hands the
/// frame out. Enough for an envelope plus a stamp; the rest of a long payload is skipped.
pub const PEEK: usize = 256;

/// Largest handshake response we accept, in bytes.
pub const MAX_RESPONSE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continue,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_u8(b: u8) -> Result<Self, ProtocolError> {
        Ok(match b {
            0x0 => OpCode::Continue,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpCode(other)),
        })
    }

    fn as_u8(self) -> u8 {
        match self {
            OpCode::Continue => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One variant per violation by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    ReservedBits,
    ReservedOpCode(u8),
    MaskedServerFrame,
    FragmentedControl,
    ControlTooLong,
    UnexpectedContinuation,
    ExpectedContinuation,
    LengthOverflow,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::ReservedBits => f.write_str("reserved bits set"),
            ProtocolError::ReservedOpCode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::MaskedServerFrame => f.write_str("masked frame from server"),
            ProtocolError::FragmentedControl => f.write_str("fragmented control frame"),
            ProtocolError::ControlTooLong => f.write_str("control frame longer than 125 bytes"),
            ProtocolError::UnexpectedContinuation => f.write_str("continuation without a message"),
            ProtocolError::ExpectedContinuation => {
                f.write_str("new message inside a fragmented one")
            }
            ProtocolError::LengthOverflow => f.write_str("64-bit length with the top bit set"),
        }
    }
}

impl std::error::Error for ProtocolError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub masked: bool,
    pub len: u64,
    /// Bytes of header, including the masking key if any.
    pub header_len: usize,
}

impl FrameHeader {
    /// Parses a header; `Ok(None)` means more bytes are needed and nothing was consumed.
    pub fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        // RFC 6455 §5.2: RSV1-3 MUST be 0 unless an extension was negotiated (we offer none).
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        let masked = b1 & 0x80 != 0;
        let (len, mut header_len) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
                // RFC 6455 §5.2: the most significant bit MUST be 0.
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if masked {
            header_len += 4;
            if buf.len() < header_len {
                return Ok(None);
            }
        }
        Ok(Some(FrameHeader {
            fin,
            opcode,
            masked,
            len,
            header_len,
        }))
    }
}

/// What one decoded frame means to the caller. Slices borrow the caller's read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The first frame of a data message. `head` is the frame's payload if it was all in the
    /// buffer, else at least its first [`PEEK`] bytes; the rest is skipped. `fin` says whether
    /// the message is complete with this frame.
    Data {
        opcode: OpCode,
        fin: bool,
        head: &'a [u8],
        len: u64,
    },
    /// A continuation frame; `fin` ends the message.
    Continuation {
        fin: bool,
        len: u64,
    },
    Ping(&'a [u8]),
    Pong,
    Close {
        code: Option<u16>,
        reason: &'a [u8],
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Not enough bytes for the next frame; nothing consumed. Keep them and read more.
    NeedMore,
    /// Bytes of a long payload were skipped.
    Skipped(usize),
    Frame {
        consumed: usize,
        event: Event<'a>,
    },
}

/// Incremental decoder of server frames. Feed it the unconsumed bytes; it never copies.
#[derive(Debug, Default)]
pub struct Decoder {
    skip: u64,
    in_message: bool,
}

impl Decoder {
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<Step<'a>, ProtocolError> {
        if self.skip > 0 {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = self.skip.min(buf.len() as u64);
            self.skip -= n;
            return Ok(Step::Skipped(n as usize));
        }
        let Some(h) = FrameHeader::parse(buf)? else {
            return Ok(Step::NeedMore);
        };
        // RFC 6455 §5.1: a server MUST NOT mask any frames that it sends to the client.
        if h.masked {
            return Err(ProtocolError::MaskedServerFrame);
        }
        let hl = h.header_len;
        let avail = buf.len() - hl;
        if h.opcode.is_control() {
            // RFC 6455 §5.5: control frames MUST NOT be fragmented, payload ≤ 125 bytes.
            if !h.fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if h.len > 125 {
                return Err(ProtocolError::ControlTooLong);
            }
            let len = h.len as usize;
            if avail < len {
                return Ok(Step::NeedMore);
            }
            let payload = &buf[hl..hl + len];
            let event = match h.opcode {
                OpCode::Ping => Event::Ping(payload),
                OpCode::Pong => Event::Pong,
                _ => {
                    let code = (len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    Event::Close {
                        code,
                        reason: payload.get(2..).unwrap_or(&[]),
                    }
                }
            };
            return Ok(Step::Frame {
                consumed: hl + len,
                event,
            });
        }
        // RFC 6455 §5.4: fragments of one message are not interleaved with other messages.
        match (h.opcode, self.in_message) {
            (OpCode::Continue, false) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, true) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            _ => {}
        }
        let want = h.len.min(PEEK as u64) as usize;
        if avail < want {
            return Ok(Step::NeedMore);
        }
        let take = h.len.min(avail as u64) as usize;
        self.skip = h.len - take as u64;
        self.in_message = !h.fin;
        let event = if h.opcode == OpCode::Continue {
            Event::Continuation {
                fin: h.fin,
                len: h.len,
            }
        } else {
            Event::Data {
                opcode: h.opcode,
                fin: h.fin,
                head: &buf[hl..hl + take],
                len: h.len,
            }
        };
        Ok(Step::Frame {
            consumed: hl + take,
            event,
        })
    }
}

/// XORs `buf` with the masking key (RFC 6455 §5.3), eight bytes at a time.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8-byte chunk")) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so its key phase is 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The reference implementation the fast one is tested against.
#[cfg(test)]
fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Appends a client frame header (always masked) for a payload of `len` bytes.
pub fn encode_header(out: &mut Vec<u8>, fin: bool, opcode: OpCode, len: usize, key: [u8; 4]) {
    out.push(if fin { 0x80 } else { 0 } | opcode.as_u8());
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
}

/// Appends a complete masked frame; `fill` writes the payload in place before it is masked.
pub fn encode_frame_with(
    out: &mut Vec<u8>,
    opcode: OpCode,
    len: usize,
    key: [u8; 4],
    fill: impl FnOnce(&mut [u8]),
) {
    encode_header(out, true, opcode, len, key);
    let start = out.len();
    out.resize(start + len, 0);
    fill(&mut out[start..]);
    apply_mask(&mut out[start..], key);
}

/// Appends a complete masked frame carrying `payload`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    encode_frame_with(out, opcode, payload.len(), key, |p| {
        p.copy_from_slice(payload)
    });
}

/// Appends a masked close frame with `code`.
pub fn encode_close(out: &mut Vec<u8>, code: u16, key: [u8; 4]) {
    encode_frame(out, OpCode::Close, &code.to_be_bytes(), key);
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (24 characters).
pub fn new_key(random: [u64; 2]) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&random[0].to_ne_bytes());
    raw[8..].copy_from_slice(&random[1].to_ne_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The opening handshake request (RFC 6455 §4.1).
pub fn handshake_request(out: &mut Vec<u8>, host: &str, path: &str, key: &str) {
    use std::io::Write as _;
    write!(
        out,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("writing to a Vec cannot fail");
}

#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    Status(u16),
    MissingUpgrade,
    BadAccept,
    TooLarge,
    Malformed,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Status(s) => write!(f, "http status {s}, expected 101"),
            HandshakeError::MissingUpgrade => f.write_str("missing upgrade headers"),
            HandshakeError::BadAccept => f.write_str("wrong sec-websocket-accept"),
            HandshakeError::TooLarge => f.write_str("handshake response too large"),
            HandshakeError::Malformed => f.write_str("malformed http response"),
        }
    }
}

/// Checks a handshake response. `Ok(Some(n))`: valid, `n` header bytes; frames may follow.
pub fn parse_response(buf: &[u8], accept: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE => {
            return Err(HandshakeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let (mut upgrade, mut connection, mut accepted) = (false, false, false);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = h.value.eq_ignore_ascii_case(b"websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection = h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accepted = h.value.trim_ascii() == accept.as_bytes();
            if !accepted {
                return Err(HandshakeError::BadAccept);
            }
        }
    }
    if !upgrade || !connection {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !accepted {
        return Err(HandshakeError::BadAccept);
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(mut buf: &[u8]) -> Vec<String> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        loop {
            match d.decode(buf).expect("valid") {
                Step::NeedMore => break,
                Step::Skipped(n) => {
                    out.push(format!("skip {n}"));
                    buf = &buf[n..];
                }
                Step::Frame { consumed, event } => {
                    out.push(format!("{event:?}"));
                    buf = &buf[consumed..];
                }
            }
        }
        out
    }

    // RFC 6455 §5.3: masking.
    #[test]
    fn mask_matches_scalar_for_all_lengths() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..=64 {
            for off in 0..=3 {
                let data: Vec<u8> = (0..len + off).map(|i| i as u8).collect();
                let (mut a, mut b) = (data.clone(), data.clone());
                apply_mask(&mut a[off..], key);
                apply_mask_scalar(&mut b[off..], key);
                assert_eq!(a, b, "len {len} off {off}");
            }
        }
    }

    #[test]
    fn mask_is_an_involution() {
        let key = [1, 2, 3, 4];
        let mut data = b"Hello, masked world!".to_vec();
        apply_mask(&mut data, key);
        assert_ne!(&data[..], b"Hello, masked world!");
        apply_mask(&mut data, key);
        assert_eq!(&data[..], b"Hello, masked world!");
    }

    // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
    #[test]
    fn encode_masked_hello_matches_rfc_example() {
        let mut out = Vec::new();
        encode_frame(&mut out, OpCode::Text, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn encode_uses_16_and_64_bit_lengths() {
        let mut out = Vec::new();
        encode_header(&mut out, true, OpCode::Binary, 256, [0; 4]);
        assert_eq!(out, [0x82, 0xFE, 0x01, 0x00, 0, 0, 0, 0]);
        out.clear();
        encode_header(&mut out, true, OpCode::Binary, 65536, [0; 4]);
        assert_eq!(out, [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    // RFC 6455 §5.7: unmasked "Hello" from a server.
    #[test]
    fn decode_unmasked_text() {
        let f = frames(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(
            f,
            [format!(
                "{:?}",
                Event::Data {
                    opcode: OpCode::Text,
                    fin: true,
                    head: b"Hello",
                    len: 5
                }
            )]
        );
    }

    #[test]
    fn decode_16_bit_length() {
        let mut buf = vec![0x82, 0x7E, 0x01, 0x00];
        buf.extend(std::iter::repeat_n(7u8, 256));
        let mut d = Decoder::default();
        match d.decode(&buf).unwrap() {
            Step::Frame { consumed, event } => {
                assert_eq!(consumed, 260);
                assert!(
                    matches!(event, Event::Data { len: 256, fin: true, head, .. } if head.len() == 256)
                );
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn decode_64_bit_length_peeks_and_skips() {
        let len = 70_000usize;
        let mut buf = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0x11, 0x70];
        buf.extend(std::iter::repeat_n(1u8, 1000));
        let mut d = Decoder::default();
        match d.decode(&buf).unwrap() {
            Step::Frame { consumed, event } => {
                assert_eq!(consumed, 1010);
                assert!(
                    matches!(event, Event::Data { len: 70_000, head, .. } if head.len() == 1000)
                );
            }
            s => panic!("{s:?}"),
        }
        // The rest arrives later and is skipped without being handed out.
        let rest = vec![1u8; len - 1000];
        assert_eq!(d.decode(&rest).unwrap(), Step::Skipped(len - 1000));
        assert_eq!(
            d.decode(&[0x8A, 0x00]).unwrap(),
            Step::Frame {
                consumed: 2,
                event: Event::Pong
            }
        );
    }

    #[test]
    fn decode_rejects_64_bit_length_with_top_bit() {
        let buf = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            Decoder::default().decode(&buf),
            Err(ProtocolError::LengthOverflow)
        );
    }

    #[test]
    fn decode_partial_input_consumes_nothing() {
        let full = [0x81u8, 0x05, b'H', b'e', b'l', b'l', b'o'];
        let mut d = Decoder::default();
        for cut in 0..full.len() {
            assert_eq!(d.decode(&full[..cut]).unwrap(), Step::NeedMore, "cut {cut}");
        }
        let long = [0x82u8, 0x7E, 0x01];
        assert_eq!(d.decode(&long).unwrap(), Step::NeedMore);
    }

    // RFC 6455 §5.4: fragmentation.
    #[test]
    fn decode_fragments() {
        let buf = [
            0x01, 0x03, b'H', b'e', b'l', 0x89, 0x00, 0x80, 0x02, b'l', b'o',
        ];
        let f = frames(&buf);
        assert_eq!(f.len(), 3);
        assert!(f[0].contains("fin: false"));
        assert_eq!(f[1], "Ping([])");
        assert_eq!(f[2], "Continuation { fin: true, len: 2 }");
    }

    #[test]
    fn decode_rejects_bad_fragment_order() {
        let mut d = Decoder::default();
        assert_eq!(
            d.decode(&[0x80, 0x00]),
            Err(ProtocolError::UnexpectedContinuation)
        );
        let mut d = Decoder::default();
        assert!(d.decode(&[0x01, 0x00]).is_ok());
        assert_eq!(
            d.decode(&[0x81, 0x00]),
            Err(ProtocolError::ExpectedContinuation)
        );
    }

    // RFC 6455 §5.5: control frames.
    #[test]
    fn decode_rejects_bad_control_frames() {
        let mut d = Decoder::default();
        assert_eq!(
            d.decode(&[0x09, 0x00]),
            Err(ProtocolError::FragmentedControl)
        );
        assert_eq!(
            d.decode(&[0x89, 0x7E, 0, 126]),
            Err(ProtocolError::ControlTooLong)
        );
        assert_eq!(d.decode(&[0xC1, 0x00]), Err(ProtocolError::ReservedBits));
        assert_eq!(
            d.decode(&[0x83, 0x00]),
            Err(ProtocolError::ReservedOpCode(3))
        );
        assert_eq!(
            d.decode(&[0x81, 0x80, 1, 2, 3, 4]),
            Err(ProtocolError::MaskedServerFrame)
        );
    }

    #[test]
    fn decode_close_with_code() {
        let f = frames(&[0x88, 0x04, 0x03, 0xE8, b'o', b'k']);
        assert_eq!(f, ["Close { code: Some(1000), reason: [111, 107] }"]);
    }

    // RFC 6455 §4: handshake.
    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn response_checks() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let acc = accept_key(key.as_bytes());
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {acc}\r\n\r\n\x01\x00"
        );
        let n = ok.len() - 2;
        assert_eq!(parse_response(ok.as_bytes(), &acc), Ok(Some(n)));
        assert_eq!(parse_response(&ok.as_bytes()[..20], &acc), Ok(None));
        let bad = ok.replace(&acc, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(
            parse_response(bad.as_bytes(), &acc),
            Err(HandshakeError::BadAccept)
        );
        let notfound = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(notfound.as_bytes(), &acc),
            Err(HandshakeError::Status(404))
        );
    }
}
