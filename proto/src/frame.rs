//! Frame headers: decoding client frames and encoding server frames (RFC 6455 §5.2).

use super::error::ProtocolError;

/// Frame opcodes (RFC 6455 §5.2, §11.8). Reserved opcodes are rejected when the header is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xa,
}

impl OpCode {
    fn from_u8(op: u8) -> Result<Self, ProtocolError> {
        Ok(match op {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xa => Self::Pong,
            // RFC 6455 §5.2: 0x3–0x7 and 0xB–0xF are reserved.
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Control frames have the high bit of the opcode set (§5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// The fixed part of a frame, before the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 in the low three bits.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

/// The longest header: 2 bytes, 8 bytes of extended length, 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

impl FrameHeader {
    /// Parses a header from the start of `buf`. `Ok(None)` means more bytes are needed and
    /// nothing was consumed; otherwise returns the header and its length in bytes.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtocolError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let len = u64::from_be_bytes(b.try_into().expect("slice of 8"));
                    // RFC 6455 §5.2: the most significant bit MUST be 0.
                    if len >> 63 != 0 {
                        return Err(ProtocolError::InvalidLength);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        let mask = if masked {
            let Some(key) = buf.get(at..at + 4) else {
                return Ok(None);
            };
            at += 4;
            Some(key.try_into().expect("slice of 4"))
        } else {
            None
        };
        let header = Self {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode,
            mask,
            len,
        };
        Ok(Some((header, at)))
    }

    /// Writes the header into `out` and returns its length.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut at = match self.len {
            0..=125 => {
                out[1] = mask_bit | self.len as u8;
                2
            }
            126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(self.len as u16).to_be_bytes());
                4
            }
            _ => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&self.len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[at..at + 4].copy_from_slice(&key);
            at += 4;
        }
        at
    }
}

/// A complete masked frame as a client sends it, for tests and benches. `opcode` is raw
/// (reserved values included) so that bad frames can be built too.
#[doc(hidden)]
pub fn encode_masked(fin: bool, rsv: u8, opcode: u8, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        fin,
        rsv,
        opcode: OpCode::Binary,
        mask: Some(key),
        len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    head[0] = (head[0] & 0xf0) | (opcode & 0x0f);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    // Masking and unmasking are the same XOR.
    super::mask::unmask(&mut out[start..], key, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> (FrameHeader, usize) {
        FrameHeader::parse(bytes).expect("valid").expect("complete")
    }

    // RFC 6455 §5.7: the examples.
    #[test]
    fn rfc_examples() {
        let (h, n) = parse_all(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        assert_eq!(
            (h.fin, h.opcode, h.mask, h.len, n),
            (true, OpCode::Text, None, 5, 2)
        );
        let (h, n) = parse_all(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f]);
        assert_eq!((h.mask, h.len, n), (Some([0x37, 0xfa, 0x21, 0x3d]), 5, 6));
        let (h, _) = parse_all(&[0x01, 0x03]);
        assert_eq!((h.fin, h.opcode), (false, OpCode::Text));
        let (h, _) = parse_all(&[0x80, 0x02]);
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));
        let (h, n) = parse_all(&[0x82, 0x7e, 0x01, 0x00]);
        assert_eq!((h.opcode, h.len, n), (OpCode::Binary, 256, 4));
        let (h, n) = parse_all(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!((h.len, n), (65536, 10));
    }

    // RFC 6455 §5.2: "not enough bytes yet" consumes nothing.
    #[test]
    fn partial_headers_need_more() {
        let full = [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(FrameHeader::parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_all(&full).1, 14);
    }

    #[test]
    fn reserved_opcodes_and_huge_lengths_fail() {
        for op in [0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                FrameHeader::parse(&[0x80 | op, 0x80]),
                Err(ProtocolError::ReservedOpcode(op))
            );
        }
        let bytes = [0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            FrameHeader::parse(&bytes),
            Err(ProtocolError::InvalidLength)
        );
    }

    #[test]
    fn encode_then_parse_round_trips() {
        for len in [0u64, 1, 125, 126, 127, 0xffff, 0x1_0000, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = FrameHeader {
                    fin: len % 2 == 0,
                    rsv: 0b101,
                    opcode: OpCode::Binary,
                    mask,
                    len,
                };
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = h.encode(&mut out);
                assert_eq!(parse_all(&out[..n]), (h, n));
                if mask.is_none() && len <= usize::MAX as u64 {
                    assert_eq!(n, crate::outgoing::server_header_len(len as usize));
                }
            }
        }
    }

    #[test]
    fn encode_server_frame() {
        assert_eq!(
            &crate::outgoing::frame(OpCode::Text, b"Hello")[..],
            &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']
        );
        let big = crate::outgoing::frame(OpCode::Binary, &[7u8; 300]);
        assert_eq!(&big[..4], &[0x82, 0x7e, 0x01, 0x2c]);
        assert_eq!(big.len(), 304);
    }
}
