//! Close codes and close frame payloads (RFC 6455 §5.5.1, §7.4).

use std::fmt;

/// A close status code as sent on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: Self = Self(1000);
    pub const GOING_AWAY: Self = Self(1001);
    pub const PROTOCOL: Self = Self(1002);
    pub const UNSUPPORTED: Self = Self(1003);
    /// Never sent: stands for "the close frame had no status code" (§7.4.1).
    pub const NO_STATUS: Self = Self(1005);
    /// Never sent: stands for "the connection dropped without a close frame".
    pub const ABNORMAL: Self = Self(1006);
    pub const INVALID_DATA: Self = Self(1007);
    pub const POLICY: Self = Self(1008);
    pub const TOO_BIG: Self = Self(1009);
    pub const EXTENSION: Self = Self(1010);
    pub const INTERNAL: Self = Self(1011);
    pub const RESTART: Self = Self(1012);
    pub const TRY_AGAIN: Self = Self(1013);

    /// Whether a peer may send this code in a close frame (§7.4.1, §7.4.2 and the IANA
    /// registry): 1000–1003, 1007–1014, and 3000–4999 for libraries and applications.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A decoded close frame payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// `None` when the payload was empty (the peer sent no status code).
    pub code: Option<CloseCode>,
    pub reason: String,
}

/// Encodes a close payload: the code in network order, then the reason, cut to fit the
/// 125-byte control frame limit at a character boundary.
pub fn encode_payload(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.0.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}
