//! Incremental UTF-8 validation across frame and buffer boundaries.
//!
//! A text message arrives in pieces (fragments, and reads that split frames). The
//! validator fails at the first byte that cannot start or continue a valid sequence, not
//! at the end of the message (RFC 6455 §8.1: fail the connection "as soon as" invalid data
//! is seen), and carries an incomplete trailing sequence (at most 3 bytes) to the next piece.

/// Carries the incomplete sequence at the end of the last piece.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    partial: [u8; 4],
    len: u8,
}

/// The bytes seen so far cannot be part of valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece.
    pub fn feed(&mut self, mut piece: &[u8]) -> Result<(), InvalidUtf8> {
        if self.len > 0 {
            let have = usize::from(self.len);
            let need = sequence_len(self.partial[0]).ok_or(InvalidUtf8)?;
            let take = (need - have).min(piece.len());
            self.partial[have..have + take].copy_from_slice(&piece[..take]);
            let filled = have + take;
            match std::str::from_utf8(&self.partial[..filled]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix: the piece ended inside the sequence.
                    self.len = filled as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
            piece = &piece[take..];
        }
        match simdutf8::compat::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                // A valid prefix of a sequence that the next piece completes.
                let tail = &piece[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Ends the message: an unfinished sequence is invalid.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.len == 0;
        self.len = 0;
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

/// Length of the sequence a lead byte starts, for leads that can start one.
fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate_split(bytes: &[u8], at: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &cut in at {
            v.feed(&bytes[start..cut])?;
            start = cut;
        }
        v.feed(&bytes[start..])?;
        v.finish()
    }

    #[test]
    fn valid_text_split_at_every_point() {
        let text = "κόσμε ascii 𝄞 €".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert_eq!(validate_split(text, &[i, j]), Ok(()), "cuts {i},{j}");
            }
        }
    }

    #[test]
    fn invalid_bytes_fail_in_the_piece_that_holds_them() {
        // U+110000 is beyond the last code point: F4 90 is already invalid.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"ok \xf4"), Ok(()));
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
        // Overlong encoding and a surrogate fail at once, before the message ends.
        assert_eq!(Utf8Validator::new().feed(b"\xc0\xaf"), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(b"\xed\xa0\x80"), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xed"), Ok(()));
        assert_eq!(v.feed(b"\xa0"), Err(InvalidUtf8));
    }

    #[test]
    fn unfinished_sequence_fails_at_the_end() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"abc\xe2\x82"), Ok(()));
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    #[test]
    fn agrees_with_std_on_every_split_of_random_bytes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            let mut bytes = [0u8; 12];
            for b in &mut bytes {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Bias towards multi-byte leads and continuations.
                *b = [0x41, 0x80, 0xbf, 0xc3, 0xe2, 0xed, 0xf0, 0xf4, 0xa0, 0x90]
                    [(seed % 10) as usize];
            }
            let expected = std::str::from_utf8(&bytes).is_ok();
            for cut in 0..=bytes.len() {
                assert_eq!(
                    validate_split(&bytes, &[cut]).is_ok(),
                    expected,
                    "{bytes:x?} cut {cut}"
                );
            }
        }
    }
}
