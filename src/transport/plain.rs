//! TCP as is: bytes pass both ways untouched and the transport holds nothing, so an idle
//! plain connection keeps no buffer.

use wsgate_proto::OutQueue;

/// The plain transport's operations (it has no state).
pub(super) struct Plain;

impl Plain {
    pub fn sent(plain: &mut OutQueue, n: usize) {
        plain.advance(n.min(plain.len_bytes()));
    }
}
