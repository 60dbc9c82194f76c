//! The loadgen's reading policy for server frames, on top of wsgate-proto's header parser and
//! checks (client role): skip-and-peek. A data frame is handed out as soon as its first
//! [`PEEK`] payload bytes are in the buffer (the stamp is among them); the rest of a long
//! payload is skipped, never copied or assembled. A compressed message's frames are the
//! exception: each is handed out whole, since only the whole message inflates. Framing rules
//! across frames (continuations) are checked here; each header is checked by
//! `FrameHeader::check`.
//!
//! No sockets, no clock, no allocation: slices borrow the caller's read buffer.

use wsgate_proto::deflate::RSV1;
use wsgate_proto::{FrameHeader, OpCode, ProtocolError, Role};

/// How many payload bytes of a data frame the decoder wants contiguous before it hands the
/// frame out. Enough for an envelope plus a stamp; the rest of a long payload is skipped.
pub const PEEK: usize = 256;

/// The largest compressed message taken, over all its frames, and the most it may inflate
/// to: compressed frames are held whole in memory, so a bogus length must not grow the read
/// buffer without end.
pub const MAX_COMPRESSED: usize = 64 << 20;

/// What one decoded frame means to the caller. Slices borrow the caller's read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The first frame of a data message. `head` is the frame's payload if it was all in the
    /// buffer, else at least its first [`PEEK`] bytes; the rest is skipped. `fin` says whether
    /// the message is complete with this frame. `compressed` (permessage-deflate): `head`
    /// is the whole payload, to inflate.
    Data {
        opcode: OpCode,
        fin: bool,
        compressed: bool,
        head: &'a [u8],
        len: u64,
    },
    /// A continuation frame; `fin` ends the message. `compressed`: the message's first frame
    /// had RSV1 (RFC 7692 §6.1: its continuations do not), and `head` is the whole payload,
    /// to append to the message's before inflating it; else `head` is what was in the buffer
    /// of the frame's payload.
    Continuation {
        fin: bool,
        compressed: bool,
        head: &'a [u8],
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
    /// The message in progress is compressed: its continuations are taken whole too.
    in_compressed: bool,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    pub deflate: bool,
}

impl Decoder {
    /// Inside a frame's payload that `decode` is skipping: the frame has not ended.
    pub fn in_payload(&self) -> bool {
        self.skip > 0
    }

    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<Step<'a>, ProtocolError> {
        if self.skip > 0 {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = self.skip.min(buf.len() as u64);
            self.skip -= n;
            return Ok(Step::Skipped(n as usize));
        }
        let Some((h, hl)) = FrameHeader::parse(buf)? else {
            return Ok(Step::NeedMore);
        };
        // RFC 7692 §6: RSV1 on the first frame of a compressed message, and on no other
        // (§6.1: not on its continuations, nor on a control frame). wsgate sends a
        // compressed message as one frame, other servers may fragment it: every frame of
        // it is taken whole (never skipped), for the message to be inflated once complete.
        let mut h = h;
        let compressed = self.deflate && h.rsv & RSV1 != 0;
        if compressed {
            if !matches!(h.opcode, OpCode::Text | OpCode::Binary) {
                return Err(ProtocolError::MisplacedRsv1);
            }
            h.rsv &= !RSV1;
        }
        // RSV bits, masking (RFC 6455 §5.1: a server MUST NOT mask), control frame rules.
        h.check(Role::Client)?;
        let avail = buf.len() - hl;
        if h.opcode.is_control() {
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
            (OpCode::Continuation, false) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, true) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            _ => {}
        }
        let whole = compressed || (h.opcode == OpCode::Continuation && self.in_compressed);
        if whole && h.len > MAX_COMPRESSED as u64 {
            return Err(ProtocolError::FrameTooLarge(h.len));
        }
        let want = if whole {
            h.len as usize
        } else {
            h.len.min(PEEK as u64) as usize
        };
        if avail < want {
            return Ok(Step::NeedMore);
        }
        let take = h.len.min(avail as u64) as usize;
        self.skip = h.len - take as u64;
        self.in_message = !h.fin;
        if h.opcode != OpCode::Continuation {
            self.in_compressed = compressed;
        }
        let event = if h.opcode == OpCode::Continuation {
            Event::Continuation {
                fin: h.fin,
                compressed: self.in_compressed,
                head: &buf[hl..hl + take],
                len: h.len,
            }
        } else {
            Event::Data {
                opcode: h.opcode,
                fin: h.fin,
                compressed,
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

    // RFC 6455 §5.7: unmasked "Hello" from a server.
    /// RFC 7692: with deflate negotiated, an RSV1 data frame is handed out whole (to
    /// inflate), even past `PEEK`; RSV1 elsewhere, or without deflate, is a protocol error.
    #[test]
    fn compressed_frames_are_taken_whole() {
        let payload = vec![7u8; 300];
        let mut frame = vec![0xc1, 126, 0x01, 0x2c];
        frame.extend(&payload);
        let mut d = Decoder {
            deflate: true,
            ..Decoder::default()
        };
        assert_eq!(d.decode(&frame[..200]), Ok(Step::NeedMore));
        assert_eq!(
            d.decode(&frame),
            Ok(Step::Frame {
                consumed: frame.len(),
                event: Event::Data {
                    opcode: OpCode::Text,
                    fin: true,
                    compressed: true,
                    head: &payload,
                    len: 300
                }
            })
        );
        assert_eq!(
            Decoder::default().decode(&frame),
            Err(ProtocolError::ReservedBits)
        );
        assert_eq!(d.decode(&[0xc9, 0x00]), Err(ProtocolError::MisplacedRsv1));
    }

    #[test]
    fn decode_unmasked_text() {
        let f = frames(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(
            f,
            [format!(
                "{:?}",
                Event::Data {
                    compressed: false,
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
            Err(ProtocolError::InvalidLength)
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
        assert_eq!(
            f[2],
            "Continuation { fin: true, compressed: false, head: [108, 111], len: 2 }"
        );
    }

    /// RFC 7692 §6.1: a compressed message may be fragmented, RSV1 on its first frame only.
    /// Every frame of it is handed out whole, past `PEEK`, with a control frame between
    /// them; the next message is plain again.
    #[test]
    fn a_fragmented_compressed_message_is_taken_whole() {
        let (a, b) = (vec![1u8; 300], vec![2u8; 400]);
        let mut buf = vec![0x42, 126, 0x01, 0x2c];
        buf.extend(&a);
        buf.extend([0x89, 0x00, 0x80, 126, 0x01, 0x90]);
        buf.extend(&b);
        let mut d = Decoder {
            deflate: true,
            ..Decoder::default()
        };
        assert_eq!(d.decode(&buf[..200]), Ok(Step::NeedMore));
        assert_eq!(
            d.decode(&buf),
            Ok(Step::Frame {
                consumed: 304,
                event: Event::Data {
                    opcode: OpCode::Binary,
                    fin: false,
                    compressed: true,
                    head: &a,
                    len: 300
                }
            })
        );
        assert_eq!(
            d.decode(&buf[304..]),
            Ok(Step::Frame {
                consumed: 2,
                event: Event::Ping(&[])
            })
        );
        assert_eq!(d.decode(&buf[306..506]), Ok(Step::NeedMore));
        assert_eq!(
            d.decode(&buf[306..]),
            Ok(Step::Frame {
                consumed: 404,
                event: Event::Continuation {
                    fin: true,
                    compressed: true,
                    head: &b,
                    len: 400
                }
            })
        );
        // The next message, plain and fragmented: peeked and skipped as before.
        let mut plain = vec![0x02, 126, 0x01, 0x2c];
        plain.extend(&a);
        plain.extend([0x80, 126, 0x01, 0x90]);
        plain.extend(&b[..PEEK]);
        assert!(matches!(
            d.decode(&plain),
            Ok(Step::Frame {
                consumed: 304,
                event: Event::Data {
                    compressed: false,
                    ..
                }
            })
        ));
        assert_eq!(
            d.decode(&plain[304..]),
            Ok(Step::Frame {
                consumed: 4 + PEEK,
                event: Event::Continuation {
                    fin: true,
                    compressed: false,
                    head: &b[..PEEK],
                    len: 400
                }
            })
        );
        assert_eq!(d.decode(&b[PEEK..]), Ok(Step::Skipped(400 - PEEK)));
    }

    /// RFC 7692 §6.1: RSV1 on a continuation frame is a protocol error, in a compressed
    /// message or a plain one.
    #[test]
    fn rsv1_on_a_continuation_is_an_error() {
        for first in [0x41u8, 0x01] {
            let mut d = Decoder {
                deflate: true,
                ..Decoder::default()
            };
            assert!(matches!(
                d.decode(&[first, 0x01, 0x00]),
                Ok(Step::Frame { .. })
            ));
            assert_eq!(
                d.decode(&[0xc0, 0x01, 0x00]),
                Err(ProtocolError::MisplacedRsv1),
                "first byte {first:#x}"
            );
        }
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
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            d.decode(&[0x81, 0x80, 1, 2, 3, 4]),
            Err(ProtocolError::MaskedFrame)
        );
    }

    #[test]
    fn decode_close_with_code() {
        let f = frames(&[0x88, 0x04, 0x03, 0xE8, b'o', b'k']);
        assert_eq!(f, ["Close { code: Some(1000), reason: [111, 107] }"]);
    }
}
