//! Frame headers (RFC 6455 §5.2) over arbitrary bytes.
//!
//! Checked: no panic; an accepted header is at most 14 bytes, parses the same alone and
//! from every longer buffer, needs all of its bytes (every shorter prefix is incomplete),
//! and re-encodes to a header that parses back to it: to the same bytes when the peer used
//! the shortest length encoding, as RFC 6455 §5.2 requires of senders. An error is decided
//! by the bytes seen, so more bytes give the same error; "incomplete" is only ever shorter
//! than the longest header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_proto::frame::{FrameHeader, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let parsed = FrameHeader::parse(data);
    let mut longer = data.to_vec();
    longer.extend_from_slice(&[0xff; MAX_HEADER_LEN]);
    match parsed {
        Ok(None) => assert!(data.len() < MAX_HEADER_LEN),
        Err(e) => assert_eq!(FrameHeader::parse(&longer), Err(e)),
        Ok(Some((header, n))) => {
            assert!((2..=MAX_HEADER_LEN).contains(&n) && n <= data.len());
            assert!(header.rsv <= 0x7);
            assert!(header.len >> 63 == 0, "RFC 6455 §5.2: the top bit is 0");
            assert_eq!(FrameHeader::parse(&data[..n]), Ok(Some((header, n))));
            assert_eq!(FrameHeader::parse(&longer), Ok(Some((header, n))));
            for cut in 0..n {
                assert_eq!(FrameHeader::parse(&data[..cut]), Ok(None), "cut at {cut}");
            }
            let mut out = [0u8; MAX_HEADER_LEN];
            let m = header.encode(&mut out);
            assert_eq!(FrameHeader::parse(&out[..m]), Ok(Some((header, m))));
            let shortest = match data[1] & 0x7f {
                126 => header.len >= 126,
                127 => header.len > 0xffff,
                _ => true,
            };
            if shortest {
                assert_eq!(&out[..m], &data[..n], "re-encodes to the same bytes");
            } else {
                assert!(m < n);
            }
        }
    }
});
