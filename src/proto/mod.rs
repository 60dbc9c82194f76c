//! Sans-I/O RFC 6455 server: handshake, frames, unmasking, UTF-8, close codes.
//!
//! Nothing here touches sockets, threads or clocks: callers pass bytes and time in and
//! take events and bytes out.

pub mod handshake;
pub mod mask;
