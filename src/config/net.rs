//! Section `net`: where wsgate listens, how many reactors run and how, and shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use super::setting::{enum_value, positive, section, within, Finish};
use super::ConfigError;

/// Most reactors a gateway runs: each has one bit of a `u64` in the fan-out's interest
/// table (`broadcast`). Defined here so that the config depends on nothing above it.
pub const MAX_REACTORS: usize = 64;

/// Which I/O backend the reactors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoBackend {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    Epoll,
    Uring,
}

enum_value!(IoBackend);

section! {
    /// Where to listen, the reactors, and shutdown.
    pub struct Net (prefix "") {
        /// Address to listen on.
        #[arg(value_name = "ADDR:PORT", env = "WSGATE_LISTEN")]
        listen: SocketAddr = "127.0.0.1:8080";
        /// Share the address with another wsgate already listening on it, the kernel
        /// spreading connections between them (a zero-downtime handover); without it, an
        /// address in use is an error.
        share_port: bool = "false";
        /// Reactor threads, one per core; 0 means one per core available to the process.
        threads: usize = "0", check within(0, MAX_REACTORS);
        /// Pin each reactor to its own core.
        pin: bool = "true";
        /// I/O backend: auto, epoll or uring.
        #[arg(env = "WSGATE_IO")]
        io: IoBackend = "auto";
        /// SO_SNDBUF for client sockets, in bytes; 0 keeps the kernel's autotuning. Smaller
        /// bounds kernel memory per connection and finds slow consumers sooner.
        #[arg(value_name = "BYTES")]
        socket_send_buffer: usize = "0";
        /// Time connections get to close on SIGTERM/SIGINT before exit.
        #[arg(value_name = "DURATION")]
        drain_grace: Duration = "10s", check positive;
    }
}

impl Finish for Net {
    fn finish(mut self) -> Result<Self, ConfigError> {
        if self.threads == 0 {
            self.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        Ok(self)
    }
}
