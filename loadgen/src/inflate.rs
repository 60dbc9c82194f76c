//! The loadgen's permessage-deflate inflater: libdeflate, whole messages, into a buffer
//! kept between messages.
//!
//! A gateway cannot inflate this way: it does not know a message's size before inflating
//! it, and must stop a decompression bomb at its limit while inflating (wsgate-proto's
//! streaming `Inflater`). A load generator that inflates every delivery of a broadcast
//! can, and libdeflate takes less than half of zlib-rs' time for it (benches/deflate.rs,
//! docs/deflate.md): that is what keeps one loadgen thread ahead of hundreds of thousands
//! of compressed deliveries a second.

use libdeflater::{DecompressionError, Decompressor};

/// What the sender removed from the end of the message (RFC 7692 §7.2.1: the empty
/// stored block of its sync flush), then an empty final block: libdeflate inflates whole
/// streams, which end with one.
const TAIL: [u8; 6] = [0x00, 0x00, 0xff, 0xff, 0x03, 0x00];

pub struct Inflater {
    d: Decompressor,
    input: Vec<u8>,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Self {
            d: Decompressor::new(),
            input: Vec::new(),
            out: vec![0; 64 << 10],
        }
    }
}

impl Inflater {
    /// One message's payload (`data`, without the tail), inflated; at most `max` bytes.
    pub fn inflate(&mut self, data: &[u8], max: usize) -> Result<Vec<u8>, &'static str> {
        self.input.clear();
        self.input.extend_from_slice(data);
        self.input.extend_from_slice(&TAIL);
        loop {
            match self.d.deflate_decompress(&self.input, &mut self.out) {
                Ok(n) => return Ok(self.out[..n].to_vec()),
                Err(DecompressionError::InsufficientSpace) if self.out.len() < max => {
                    let len = (self.out.len() * 2).min(max);
                    self.out.resize(len, 0);
                }
                Err(DecompressionError::InsufficientSpace) => {
                    return Err("message over the size limit")
                }
                Err(DecompressionError::BadData) => return Err("bad deflate data"),
            }
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

    #[test]
    fn inflates_what_the_gateway_compresses_and_grows_past_the_buffer() {
        let mut i = Inflater::default();
        for data in [
            b"{\"topic\":\"t\",\"data\":\"hello hello hello hello\"}".to_vec(),
            (0..200_000u32)
                .flat_map(|n| (n % 251).to_le_bytes())
                .collect(),
        ] {
            assert_eq!(i.inflate(&compressed(&data), 64 << 20), Ok(data));
        }
    }

    #[test]
    fn a_final_block_from_the_sender_is_accepted() {
        // RFC 7692 §7.2.3.3: a sender may end a message with BFINAL; what we append after
        // it is then ignored. An empty final block is the whole of such a message.
        assert_eq!(
            Inflater::default().inflate(&[0x03, 0x00], 1 << 10),
            Ok(Vec::new())
        );
    }

    #[test]
    fn garbage_and_oversize_fail_with_a_reason() {
        let mut i = Inflater::default();
        assert_eq!(i.inflate(&[0xff; 32], 1 << 20), Err("bad deflate data"));
        let big = compressed(&vec![b'a'; 100_000]);
        assert_eq!(i.inflate(&big, 1 << 16), Err("message over the size limit"));
        let after = b"and after that, the next message inflates: after after after".to_vec();
        assert_eq!(i.inflate(&compressed(&after), 1 << 16), Ok(after));
    }
}
