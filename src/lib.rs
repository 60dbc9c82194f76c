//! wsgate: a multi-threaded WebSocket (RFC 6455) fan-out gateway.
//!
//! ```text
//!  clients ──TCP──▶ SO_REUSEPORT listener (one per reactor; the kernel spreads accepts)
//!                        │
//!                        ▼
//!   driver (epoll via mio | io_uring)   the only code touching fds: accept, recv into a
//!                        │               lent buffer, vectored send, close, wake
//!                        ▼
//!   reactor (one pinned thread per core) Slab<Conn>: HTTP request → WebSocket; timers;
//!                        │               corked flush of every queued frame per turn
//!          ┌─────────────┴──────────────┐
//!          ▼                            ▼
//!   proto (sans-I/O RFC 6455)     http (side endpoints)
//!   handshake, frames, SIMD unmask,
//!   UTF-8, close codes
//! ```

pub mod app;
pub mod auth;
pub mod broadcast;
pub mod buf;
pub mod config;
pub mod driver;
pub mod limits;
pub mod metrics;
pub mod reactor;
pub mod server;
pub mod shared;
#[allow(unsafe_code)]
pub mod sys;
pub mod transport;
