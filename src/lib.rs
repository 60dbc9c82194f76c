//! wsgate: a multi-threaded WebSocket (RFC 6455) fan-out gateway.

pub mod proto;
