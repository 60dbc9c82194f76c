//! Sans-I/O RFC 6455: handshake, frames, unmasking, UTF-8, close codes, and the one
//! outgoing path (`outgoing`: frames, prepared broadcasts, HTTP responses).
//!
//! Nothing here touches sockets, threads or clocks: callers pass bytes and `now` in, and
//! take events and bytes out. The gateway's reactor is the only caller; the
//! drivers never parse WebSocket. No `unsafe` outside `mask`'s SIMD kernels.

pub mod close;
mod connection;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod outgoing;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use connection::{Connection, Event, Limits};
pub use error::ProtocolError;
pub use frame::{FrameHeader, OpCode};
pub use outgoing::{OutQueue, Prepared};

#[cfg(test)]
mod tests;
