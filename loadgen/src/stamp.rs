//! The payload stamp: send time, publisher id and sequence number in fixed-width ASCII, so a
//! payload is a valid JSON string without escaping and a receiver finds it with one `memchr`
//! and decodes it at fixed offsets (no JSON parsing on the hot path).
//!
//! Layout (33 bytes), then padding up to the payload size with market-data-like text (JSON
//! with single quotes, so the payload stays a JSON string without escaping), so that
//! compressed runs (`--deflate`) see what real JSON compresses to, not a run of one byte:
//!
//! ```text
//! ~ tttttttttttttttt pppppppp ssssssss
//! │ └ send time, ns of CLOCK_MONOTONIC, 16 lowercase hex digits
//! │                  └ publisher id, 8 hex digits
//! │                           └ per-publisher sequence number, 8 hex digits (wraps)
//! └ marker
//! ```
//! CLOCK_MONOTONIC is system-wide on Linux, so a stamp written by another local process
//! (the blast server) is comparable with our clock.

pub const MARKER: u8 = b'~';
pub const STAMP_LEN: usize = 33;
/// The padding: ticks with varying prices, sizes and times, about as compressible as JSON
/// market data (deflate shrinks 1 KiB of it to about a third).
fn pad() -> &'static [u8] {
    static PAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PAD.get_or_init(|| {
        const SYMBOLS: [&str; 6] = [
            "BTC-USD", "ETH-USD", "SOL-USD", "ETH-BTC", "DOGE-USD", "XRP-EUR",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = String::new();
        while out.len() < 1 << 17 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push_str(&format!(
                ",{{'s':'{}','p':{}.{:02},'q':{},'t':{}}}",
                SYMBOLS[(x % 6) as usize],
                20_000 + x % 50_000,
                (x >> 20) % 100,
                (x >> 30) % 1000,
                1_764_000_000_000u64 + (x >> 40) % 100_000
            ));
        }
        out.into_bytes()
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub ts: u64,
    pub publisher: u32,
    pub seq: u32,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], v: u64) {
    let n = out.len();
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (4 * (n - 1 - i))) & 0xF) as usize];
    }
}

/// Writes the stamp at the start of `payload` and pads the rest. `payload.len() >= STAMP_LEN`.
pub fn write(payload: &mut [u8], s: Stamp) {
    debug_assert!(payload.len() >= STAMP_LEN);
    payload[0] = MARKER;
    put_hex(&mut payload[1..17], s.ts);
    put_hex(&mut payload[17..25], u64::from(s.publisher));
    put_hex(&mut payload[25..33], u64::from(s.seq));
    for chunk in payload[STAMP_LEN..].chunks_mut(pad().len()) {
        chunk.copy_from_slice(&pad()[..chunk.len()]);
    }
}

/// Rewrites only the sequence number of a stamp that starts at `stamp[0]`.
pub fn put_seq(stamp: &mut [u8], seq: u32) {
    put_hex(&mut stamp[25..33], u64::from(seq));
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `x` (all bytes < 0x80) that lies in `lo..=hi`.
#[inline]
fn in_range(x: u64, lo: u8, hi: u8) -> u64 {
    let ge_lo = x.wrapping_add(ONES * u64::from(0x80 - lo));
    let gt_hi = x.wrapping_add(ONES * u64::from(0x7F - hi));
    ge_lo & !gt_hi & HIGH
}

/// Decodes 8 lowercase hex digits with SWAR; `None` if any is not one.
#[inline]
pub fn hex8(b: &[u8]) -> Option<u32> {
    let x = u64::from_le_bytes(b[..8].try_into().ok()?);
    if x & HIGH != 0 || (in_range(x, b'0', b'9') | in_range(x, b'a', b'f')) != HIGH {
        return None;
    }
    // '0'..'9' = 0x30..0x39, 'a'..'f' = 0x61..0x66: the low nibble, plus 9 for letters.
    let x = (x & 0x0F0F_0F0F_0F0F_0F0F) + 9 * ((x >> 6) & ONES);
    // Byte 0 (lowest) is the most significant digit: fold pairs, then quads, then halves.
    let x = ((x & 0x000F_000F_000F_000F) << 4) | ((x >> 8) & 0x000F_000F_000F_000F);
    let x = ((x & 0x0000_00FF_0000_00FF) << 8) | ((x >> 16) & 0x0000_00FF_0000_00FF);
    let x = ((x & 0xFFFF) << 16) | ((x >> 32) & 0xFFFF);
    Some(x as u32)
}

/// Decodes a stamp that starts exactly at `b[0]`.
#[inline]
pub fn decode(b: &[u8]) -> Option<Stamp> {
    if b.len() < STAMP_LEN || b[0] != MARKER {
        return None;
    }
    let hi = hex8(&b[1..9])?;
    let lo = hex8(&b[9..17])?;
    Some(Stamp {
        ts: (u64::from(hi) << 32) | u64::from(lo),
        publisher: hex8(&b[17..25])?,
        seq: hex8(&b[25..33])?,
    })
}

/// Finds and decodes the first stamp in a message (e.g. inside a JSON envelope).
#[inline]
pub fn find(msg: &[u8]) -> Option<Stamp> {
    let at = memchr::memchr(MARKER, msg)?;
    decode(&msg[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let s = Stamp {
            ts: 0x0123_4567_89ab_cdef,
            publisher: 0xdead_beef,
            seq: 42,
        };
        let mut p = [0u8; 64];
        write(&mut p, s);
        assert_eq!(&p[..STAMP_LEN], b"~0123456789abcdefdeadbeef0000002a");
        assert!(p[STAMP_LEN..]
            .iter()
            .all(|&b| b != b'"' && b != b'\\' && b.is_ascii()));
        assert_eq!(decode(&p), Some(s));
        let env = [br#"{"topic":"bench","data":""#.as_slice(), &p, b"\"}"].concat();
        assert_eq!(find(&env), Some(s));
    }

    #[test]
    fn hex8_all_digits_and_rejects() {
        for v in [
            0u32,
            1,
            9,
            10,
            15,
            0x1000_0000,
            0xffff_ffff,
            0x0a0b_0c0d,
            0x9999_9999,
        ] {
            let s = format!("{v:08x}");
            assert_eq!(hex8(s.as_bytes()), Some(v), "{s}");
        }
        for bad in [
            "0000000g", "A0000000", "0000/000", "0000:000", "`0000000", "0000 000",
        ] {
            assert_eq!(hex8(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            hex8(&[0xB0, b'0', b'0', b'0', b'0', b'0', b'0', b'0']),
            None
        );
    }

    #[test]
    fn truncated_or_missing_stamp() {
        let mut p = [0u8; 40];
        write(
            &mut p,
            Stamp {
                ts: 1,
                publisher: 2,
                seq: 3,
            },
        );
        assert_eq!(decode(&p[..STAMP_LEN - 1]), None);
        assert_eq!(find(b"no marker here"), None);
        assert_eq!(find(b"~nothex"), None);
    }
}
