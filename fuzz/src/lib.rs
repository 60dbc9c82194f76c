//! What the fuzz targets share: the input of the `connection` and `deflate` targets, a
//! sequence of [`Op`]s, its byte format, and the session they run ([`session`]); and the
//! `tls_records` target's run ([`tls`]).
//!
//! The format is written by hand rather than derived so that [`Input::encode`] can turn
//! meaningful sessions (a masked message, fragments, a close handshake) into seed files
//! (`cargo run --example seeds`, which checks that each decodes back), and so that a new
//! version of the `arbitrary` crate cannot silently turn the committed corpus into noise.
//! Every byte string decodes to some input: lengths are clamped to what is left and a
//! missing byte reads as 0.

pub mod session;
pub mod tls;

use arbitrary::{Arbitrary, Result, Unstructured};

/// Limits and timers of the connection under test, kept small so the fuzzer reaches the
/// 1009 (too big) paths and the timers within a few operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// `max_frame_size`, at least 1.
    pub max_frame: u16,
    /// `max_message_size`, at least 1.
    pub max_message: u16,
    /// `idle_timeout` in ms; 0 never pings.
    pub idle_ms: u8,
    /// `pong_timeout` in ms, at least 1.
    pub pong_ms: u8,
    /// `close_timeout` in ms, at least 1.
    pub close_ms: u8,
}

/// One step of a session, seen from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Raw bytes from the peer, appended to what the next [`Op::Read`] delivers.
    Raw(Vec<u8>),
    /// A masked client frame, appended to what the next [`Op::Read`] delivers. `head` is the
    /// first header byte: FIN (0x80), RSV1..3 (0x70) and the raw opcode (0x0f, reserved
    /// ones included).
    Frame {
        head: u8,
        key: [u8; 4],
        payload: Vec<u8>,
    },
    /// The socket delivers everything appended since the last read, in pieces of these
    /// sizes (0 means "the rest").
    Read(Vec<u8>),
    /// Time passes; the timer fires if it is due.
    AdvanceTime(u16),
    /// `handle_timeout` whether or not it is due (early calls must do nothing).
    Timeout,
    /// The server closes (drain, policy) with one of a few codes and this reason.
    Close { code: u8, reason: Vec<u8> },
    /// The application sends a text (valid UTF-8, lossily converted) or binary message.
    Send { text: bool, payload: Vec<u8> },
    /// The socket accepts this many bytes of the queued frames.
    Write(u16),
    /// The reactor returns idle memory.
    ReleaseIdle,
}

/// A whole fuzz input: the setup, then operations until the data runs out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub setup: Setup,
    pub ops: Vec<Op>,
}

const TAGS: u8 = 9;

fn byte(u: &mut Unstructured<'_>) -> Result<u8> {
    u8::arbitrary(u)
}

fn u16_le(u: &mut Unstructured<'_>) -> Result<u16> {
    Ok(u16::from_le_bytes([byte(u)?, byte(u)?]))
}

/// A length-prefixed (u16, little-endian) byte string, clamped to the data left.
fn blob(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let len = usize::from(u16_le(u)?).min(u.len());
    Ok(u.bytes(len)?.to_vec())
}

fn put_blob(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("seed blobs are under 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

impl<'a> Arbitrary<'a> for Setup {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            max_frame: u16_le(u)?.max(1),
            max_message: u16_le(u)?.max(1),
            idle_ms: byte(u)?,
            pong_ms: byte(u)?.max(1),
            close_ms: byte(u)?.max(1),
        })
    }
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match byte(u)? % TAGS {
            0 => Op::Raw(blob(u)?),
            1 => Op::Frame {
                head: byte(u)?,
                key: [byte(u)?, byte(u)?, byte(u)?, byte(u)?],
                payload: blob(u)?,
            },
            2 => Op::Read(blob(u)?),
            3 => Op::AdvanceTime(u16_le(u)?),
            4 => Op::Timeout,
            5 => Op::Close {
                code: byte(u)?,
                reason: blob(u)?,
            },
            6 => Op::Send {
                text: byte(u)? & 1 == 1,
                payload: blob(u)?,
            },
            7 => Op::Write(u16_le(u)?),
            _ => Op::ReleaseIdle,
        })
    }
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let setup = Setup::arbitrary(u)?;
        let mut ops = Vec::new();
        while !u.is_empty() {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Self { setup, ops })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> Result<Self> {
        Self::arbitrary(&mut u)
    }
}

impl Input {
    /// The bytes that decode to this input (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let s = &self.setup;
        let mut out = Vec::new();
        out.extend_from_slice(&s.max_frame.to_le_bytes());
        out.extend_from_slice(&s.max_message.to_le_bytes());
        out.extend_from_slice(&[s.idle_ms, s.pong_ms, s.close_ms]);
        for op in &self.ops {
            match op {
                Op::Raw(bytes) => {
                    out.push(0);
                    put_blob(&mut out, bytes);
                }
                Op::Frame { head, key, payload } => {
                    out.push(1);
                    out.push(*head);
                    out.extend_from_slice(key);
                    put_blob(&mut out, payload);
                }
                Op::Read(cuts) => {
                    out.push(2);
                    put_blob(&mut out, cuts);
                }
                Op::AdvanceTime(ms) => {
                    out.push(3);
                    out.extend_from_slice(&ms.to_le_bytes());
                }
                Op::Timeout => out.push(4),
                Op::Close { code, reason } => {
                    out.push(5);
                    out.push(*code);
                    put_blob(&mut out, reason);
                }
                Op::Send { text, payload } => {
                    out.extend_from_slice(&[6, u8::from(*text)]);
                    put_blob(&mut out, payload);
                }
                Op::Write(n) => {
                    out.push(7);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Op::ReleaseIdle => out.push(8),
            }
        }
        out
    }

    /// Decodes `data` as the fuzz target does.
    pub fn decode(data: &[u8]) -> Result<Self> {
        Self::arbitrary_take_rest(Unstructured::new(data))
    }
}
