//! In-place unmasking of client payloads (RFC 6455 §5.3). Placeholder scalar version.

/// XORs `buf` with `key` starting at key byte `phase % 4`; returns the next phase.
pub fn unmask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase + i) % 4];
    }
    (phase + buf.len()) % 4
}
