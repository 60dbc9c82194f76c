//! Sans-I/O RFC 6455 for both roles ([`Role::Client`], [`Role::Server`]): the opening
//! handshake, HTTP/1.1 request bodies (`http1`: chunked), frames, (un)masking, UTF-8, close codes and the per-connection state machine;
//! and the server's one outgoing path (`outgoing`: frames, prepared broadcasts, HTTP
//! responses, the queue they wait in).
//!
//! Nothing here touches sockets, threads, clocks or random numbers: callers pass bytes and
//! `now` in (and, as a client, masking keys), and take events and bytes out. The gateway,
//! its load generator and its tests are the callers; the gateway's drivers never parse
//! WebSocket. No `unsafe` outside `mask`'s SIMD kernels.
//!
//! ```text
//!  server: bytes ─► handshake::parse_request ─► validate_upgrade ─► 101 bytes
//!  client: handshake::client::Request ─► bytes ··· bytes ─► Response::parse ─► check
//!
//!  bytes ─► Connection::handle_bytes ─► frame::FrameHeader::parse + check(role)
//!                 │                      mask::unmask ─► utf8 ─► Event::Message ...
//!                 └─► OutQueue ◄─ pongs, close frames (masked by a client)
//! ```

pub mod close;
mod connection;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod http1;
pub mod mask;
pub mod outgoing;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use connection::{Budget, Connection, Event, Limits};
pub use error::ProtocolError;
pub use frame::{FrameHeader, OpCode, Role};
pub use outgoing::{OutQueue, Prepared};

#[cfg(test)]
mod tests;
