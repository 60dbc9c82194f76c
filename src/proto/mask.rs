//! In-place unmasking of client payloads (RFC 6455 §5.3).
