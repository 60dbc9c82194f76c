//! The HTTP publish body: `Transfer-Encoding: chunked` decoding (`wsgate_proto::http1`),
//! fed whole and split at arbitrary points.
//!
//! Checked: no panic; splitting the input changes nothing (same body, same bytes consumed,
//! same error); the body never passes the limit; what a complete decode consumed ends the
//! chunked body (the rest belongs to the next request).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_proto::http1::ChunkedDecoder;

/// The limit (2 bytes), the number of cuts (1 byte) and the cuts (2 bytes each), then the
/// bytes to decode.
struct Input {
    max: u16,
    cuts: Vec<u16>,
    bytes: Vec<u8>,
}

impl Input {
    fn parse(data: &[u8]) -> Option<Self> {
        let (&[m0, m1, n], rest) = data.split_first_chunk::<3>()?;
        let n = usize::from(n % 16);
        let cuts = rest.get(..2 * n)?;
        Some(Self {
            max: u16::from_le_bytes([m0, m1]),
            cuts: cuts
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
            bytes: rest[2 * n..].to_vec(),
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let max = usize::from(input.max);
    let mut whole = ChunkedDecoder::new(max);
    let mut body = Vec::new();
    let expected = whole.decode(&input.bytes, &mut body);
    assert!(body.len() <= max, "{} over {max}", body.len());
    if let Ok(Some(n)) = expected {
        assert!(n <= input.bytes.len());
    }

    // The same bytes in pieces: each piece is what one read would bring.
    let mut split = ChunkedDecoder::new(max);
    let mut pieces = Vec::new();
    let mut at = 0;
    let mut result = Ok(None);
    let mut cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c)).collect();
    cuts.sort_unstable();
    cuts.push(input.bytes.len());
    for cut in cuts {
        let cut = cut.min(input.bytes.len());
        if cut < at {
            continue;
        }
        result = split.decode(&input.bytes[at..cut], &mut pieces);
        match result {
            Ok(None) => at = cut,
            Ok(Some(n)) => {
                result = Ok(Some(at + n));
                break;
            }
            Err(_) => break,
        }
    }
    assert_eq!(result, expected, "splitting changed the outcome");
    if expected.is_ok() {
        assert_eq!(pieces, body, "splitting changed the body");
    }
});
