//! HTTP/1.1 Upgrade handshake (RFC 6455 §4.2).
