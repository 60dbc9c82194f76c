//! Section `uring`: sizes of the io_uring driver's ring and provided receive buffers
//! (hidden from `--help`: the defaults suit all but benchmarks).

use super::setting::{power_of_two_up_to, section, within, Finish};

section! {
    /// Sizes of a reactor's ring and receive buffers: `bufs × buf_size` bytes per reactor
    /// (8 MiB by default), shared by all of its connections.
    pub struct Uring (prefix "uring_") {
        /// io_uring submission queue entries per reactor (the completion queue gets four
        /// times as many).
        #[arg(hide = true)]
        entries: u32 = "1024", check within(8, 32768);
        /// io_uring receive buffers per reactor, a power of two up to 32768.
        #[arg(hide = true)]
        bufs: u16 = "512", check power_of_two_up_to(32768);
        /// Bytes per io_uring receive buffer.
        #[arg(hide = true, value_name = "BYTES")]
        buf_size: u32 = "16384", check within(64, 1 << 20);
    }
}

impl Finish for Uring {}
