//! The loadgen's permessage-deflate inflater: libdeflate, whole messages, into a buffer
//! kept between messages.
//!
//! A gateway cannot inflate this way: it does not know a message's size before inflating
//! it, and must stop a decompression bomb at its limit while inflating (wsgate-proto's
//! streaming `Inflater`). A load generator that inflates every delivery of a broadcast
//! can, and libdeflate takes less than half of zlib-rs' time for it (benches/deflate.rs,
//! docs/deflate.md): that is what keeps one loadgen thread ahead of hundreds of thousands
//! of compressed deliveries a second.
//!
//! Past that (1,000 subscribers × 1,000 publishes/s of 1 KiB), `--inflate-once` keeps what
//! each distinct compressed message inflated to: wsgate compresses a broadcast once, so its
//! other copies arrive as the same bytes and are recognised by a hash and a compare. Sound
//! because the loadgen's offer asks for no context takeover either way: every message
//! inflates alone, so equal input means equal output.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use libdeflater::{DecompressionError, Decompressor};
use rustc_hash::FxHasher;

/// What the sender removed from the end of the message (RFC 7692 §7.2.1: the empty
/// stored block of its sync flush), then an empty final block: libdeflate inflates whole
/// streams, which end with one.
const TAIL: [u8; 6] = [0x00, 0x00, 0xff, 0xff, 0x03, 0x00];

/// Distinct messages remembered by `--inflate-once` before it starts again: a few hundred
/// milliseconds of publishes at 1,000/s, more than are in flight to the subscribers at once.
const MEMO: usize = 256;

type Memo = HashMap<Box<[u8]>, Box<[u8]>, BuildHasherDefault<FxHasher>>;

pub struct Inflater {
    d: Decompressor,
    input: Vec<u8>,
    out: Vec<u8>,
    /// `--inflate-once`: compressed message → what it inflated to.
    memo: Option<Memo>,
}

impl Inflater {
    pub fn new(once: bool) -> Self {
        Self {
            d: Decompressor::new(),
            input: Vec::new(),
            out: vec![0; 64 << 10],
            memo: once.then(Memo::default),
        }
    }

    /// One message's payload (`data`, without the tail), inflated; at most `max` bytes.
    pub fn inflate(&mut self, data: &[u8], max: usize) -> Result<&[u8], &'static str> {
        let Some(memo) = &mut self.memo else {
            let n = inflate_into(&mut self.d, &mut self.input, &mut self.out, data, max)?;
            return Ok(&self.out[..n]);
        };
        if !memo.contains_key(data) {
            let n = inflate_into(&mut self.d, &mut self.input, &mut self.out, data, max)?;
            if memo.len() == MEMO {
                memo.clear();
            }
            memo.insert(data.into(), self.out[..n].into());
        }
        Ok(&memo[data])
    }
}

/// Inflates `data` and the tail into `out`, grown up to `max`; the inflated length.
fn inflate_into(
    d: &mut Decompressor,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
    data: &[u8],
    max: usize,
) -> Result<usize, &'static str> {
    input.clear();
    input.extend_from_slice(data);
    input.extend_from_slice(&TAIL);
    loop {
        match d.deflate_decompress(input, out) {
            Ok(n) => return Ok(n),
            Err(DecompressionError::InsufficientSpace) if out.len() < max => {
                let len = (out.len() * 2).min(max);
                out.resize(len, 0);
            }
            Err(DecompressionError::InsufficientSpace) => {
                return Err("message over the size limit")
            }
            Err(DecompressionError::BadData) => return Err("bad deflate data"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsgate_proto::deflate::Deflater;

    fn compressed(data: &[u8]) -> Vec<u8> {
        Deflater::new(1, 0).compress(data).unwrap().to_vec()
    }

    /// Every test holds with and without `--inflate-once`.
    fn both() -> [Inflater; 2] {
        [Inflater::new(false), Inflater::new(true)]
    }

    #[test]
    fn inflates_what_the_gateway_compresses_and_grows_past_the_buffer() {
        for mut i in both() {
            for data in [
                b"{\"topic\":\"t\",\"data\":\"hello hello hello hello\"}".to_vec(),
                (0..200_000u32)
                    .flat_map(|n| (n % 251).to_le_bytes())
                    .collect(),
            ] {
                assert_eq!(i.inflate(&compressed(&data), 64 << 20), Ok(&data[..]));
            }
        }
    }

    #[test]
    fn a_final_block_from_the_sender_is_accepted() {
        // RFC 7692 §7.2.3.3: a sender may end a message with BFINAL; what we append after
        // it is then ignored. An empty final block is the whole of such a message.
        for mut i in both() {
            assert_eq!(i.inflate(&[0x03, 0x00], 1 << 10), Ok(&[][..]));
        }
    }

    #[test]
    fn garbage_and_oversize_fail_with_a_reason() {
        for mut i in both() {
            // Twice: a failure is not remembered as a message.
            for _ in 0..2 {
                assert_eq!(i.inflate(&[0xff; 32], 1 << 20), Err("bad deflate data"));
                let big = compressed(&vec![b'a'; 100_000]);
                assert_eq!(i.inflate(&big, 1 << 16), Err("message over the size limit"));
            }
            let after = b"and after that, the next message inflates: after after after".to_vec();
            assert_eq!(i.inflate(&compressed(&after), 1 << 16), Ok(&after[..]));
        }
    }

    #[test]
    fn inflate_once_gives_each_copy_its_own_message_past_the_memo_size() {
        // Copies of many distinct messages, interleaved as a broadcast's reach the
        // subscribers, over several refills of the memo.
        let msgs: Vec<Vec<u8>> = (0..3 * MEMO + 7)
            .map(|n| {
                format!("{{\"seq\":{n},\"data\":\"{}\"}}", "ab".repeat(40 + n % 97)).into_bytes()
            })
            .collect();
        let wire: Vec<Vec<u8>> = msgs.iter().map(|m| compressed(m)).collect();
        let mut i = Inflater::new(true);
        for (n, m) in msgs.iter().enumerate() {
            for back in [0, 1, 5, 40] {
                let k = n.saturating_sub(back);
                assert_eq!(i.inflate(&wire[k], 1 << 16), Ok(&msgs[k][..]));
            }
            assert_eq!(i.inflate(&wire[n], 1 << 16), Ok(&m[..]));
        }
    }
}
