//! Sans-I/O RFC 6455, server side: handshake, HTTP/1.1 chunked bodies, frames, unmasking,
//! UTF-8, close codes.
//!
//! Nothing here touches sockets, threads or clocks: callers pass bytes and `now` in, and
//! take events and bytes out. The gateway's reactor is the only caller; the
//! drivers never parse WebSocket. No `unsafe` outside `mask`'s SIMD kernels.

pub mod close;
mod connection;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod http1;
pub mod mask;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use connection::{Connection, Event, Limits, OutQueue};
pub use error::ProtocolError;
pub use frame::{FrameHeader, OpCode};

#[cfg(test)]
mod tests;
