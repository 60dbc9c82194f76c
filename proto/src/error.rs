//! Protocol violations and the close code each one maps to.

use super::close::CloseCode;

/// A violation of RFC 6455 by the peer, client or server. Each variant is one rule;
/// `close_code` maps it to the status sent in the closing frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// RFC 7692 §6: RSV1 belongs on the first frame of a data message only.
    #[error("rsv1 on a control or continuation frame")]
    MisplacedRsv1,
    #[error("invalid compressed data")]
    BadCompressedData,
    /// RFC 7692 §7.2.1: a compressed message ends on a deflate block boundary.
    #[error("compressed message does not end its deflate block")]
    UnendedCompressedData,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("unmasked client frame")]
    UnmaskedFrame,
    #[error("masked server frame")]
    MaskedFrame,
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    #[error("64-bit payload length with the most significant bit set")]
    InvalidLength,
    #[error("frame of {0} bytes over the limit")]
    FrameTooLarge(u64),
    #[error("message over the limit")]
    MessageTooLarge,
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("invalid utf-8 in text message")]
    InvalidUtf8,
    #[error("close frame with a one-byte payload")]
    CloseTooShort,
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    #[error("invalid utf-8 in close reason")]
    InvalidCloseReason,
    /// Not the peer's fault alone: the memory for partial messages that this connection
    /// shares with others ([`crate::Budget`]) would be exceeded.
    #[error("server busy: no memory for this message now")]
    OverBudget,
}

impl ProtocolError {
    /// The status code to close with (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::InvalidUtf8
            | Self::InvalidCloseReason
            | Self::BadCompressedData
            | Self::UnendedCompressedData => CloseCode::INVALID_DATA,
            Self::FrameTooLarge(_) | Self::MessageTooLarge => CloseCode::TOO_BIG,
            Self::OverBudget => CloseCode::TRY_AGAIN,
            _ => CloseCode::PROTOCOL,
        }
    }
}
