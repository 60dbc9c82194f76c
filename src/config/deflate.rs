//! Section `deflate`: permessage-deflate (RFC 7692): whether the server accepts it, how
//! hard it compresses, and the size under which messages go plain. Defaults are justified
//! by the measurements in docs/deflate.md.

use super::setting::{section, within, Finish};

section! {
    /// permessage-deflate: on or off, compression level, minimum size.
    pub struct Deflate (prefix "deflate_") {
        /// Accept permessage-deflate offers (RFC 7692). Each message is compressed once,
        /// whatever the number of subscribers, and connections keep no compression state.
        enabled: bool = "true";
        /// zlib compression level, 1 (fastest) to 9 (smallest).
        level: u32 = "1", check within(1, 9);
        /// Messages shorter than this go uncompressed (small JSON does not shrink).
        #[arg(value_name = "BYTES")]
        min_size: usize = "128";
    }
}

impl Finish for Deflate {}
