//! The server-side connection state machine over a sequence of [`Op`]s: peer bytes split at
//! arbitrary points, time passing, server closes, sends and partial writes; with
//! permessage-deflate negotiated or not (the `deflate` and `connection` targets).
//!
//! With deflate, an [`Op::Frame`] whose head has RSV1 and RSV3 (0x50) set and FIN is a
//! compressed message made by an independent compressor (miniz_oxide, level from the key's
//! first byte) and sent with RSV1 alone: the model expects its original payload. Any other
//! RSV1 frame (arbitrary deflate data: garbage, bombs, unended blocks, RSV1 on a control
//! frame or a continuation) leaves the model, and only the invariants below are checked.
//! Echoes and sends are compressed (`send_compressible`) where that pays.
//!
//! Checked after every step:
//! - `handle_bytes` consumes all it is given, or stops right after a message;
//! - splitting a read changes nothing: a second connection fed each read whole produces the
//!   same events and the same bytes (the split one's partial writes are a prefix of them);
//! - while every byte so far came from well-formed frames in a valid order within the
//!   limits, the events are exactly the messages and close a model of the peer expects
//!   (none while the server is closing) and nothing fails;
//! - a closed connection reads, queues and schedules nothing;
//! - a due timer makes progress, an early one does nothing;
//! - what the connection holds of its memory budget is exactly what the budget lent it
//!   (nothing leaks or is given back twice), and never more than one message's limit;
//! - the bytes written are valid server frames: FIN, unmasked, no RSV but RSV1 on a data
//!   frame of a deflate connection (whose payload the independent decompressor inflates,
//!   to UTF-8 for text), control payloads of at most 125 bytes, at most one close frame
//!   (valid code, UTF-8 reason) and nothing after it; messages delivered are within the
//!   limit and text is UTF-8.

use std::io::IoSlice;
use std::time::{Duration, Instant};

use wsgate_proto::deflate::{self, Agreed, Deflater, Inflater};
use wsgate_proto::frame::{self, FrameHeader};
use wsgate_proto::{Budget, CloseCode, CloseFrame, Connection, Event, Limits, OpCode, OutQueue};

use crate::{Input, Op, Setup};

/// Codes the application closes with.
const SERVER_CODES: [CloseCode; 6] = [
    CloseCode::NORMAL,
    CloseCode::GOING_AWAY,
    CloseCode::POLICY,
    CloseCode::TOO_BIG,
    CloseCode::TRY_AGAIN,
    CloseCode(4000),
];

fn limits(s: Setup) -> Limits {
    Limits {
        max_frame_size: u64::from(s.max_frame),
        max_message_size: usize::from(s.max_message),
        close_timeout: Duration::from_millis(s.close_ms.into()),
        idle_timeout: (s.idle_ms > 0).then(|| Duration::from_millis(s.idle_ms.into())),
        pong_timeout: Duration::from_millis(s.pong_ms.into()),
    }
}

/// One connection and everything it wrote.
struct Side {
    conn: Connection,
    /// A budget of one message's limit: a connection alone never needs more.
    budget: Budget,
    out: OutQueue,
    sent: Vec<u8>,
    /// A reactor's: one of each, for all its connections.
    inflater: Inflater,
    deflater: Deflater,
}

impl Side {
    fn new(now: Instant, limits: &Limits, deflate: Option<Agreed>) -> Self {
        Self {
            conn: Connection::server(now).with_deflate(deflate),
            budget: Budget::new(limits.max_message_size as u64),
            out: OutQueue::default(),
            sent: Vec::new(),
            inflater: Inflater::default(),
            // A low minimum size, so that small echoes are compressed too.
            deflater: Deflater::new(1, 8),
        }
    }

    /// Queues a message as the applications do: compressed where negotiated and it pays.
    fn send(&mut self, opcode: OpCode, payload: &[u8]) -> bool {
        self.conn
            .send_compressible(opcode, payload, &mut self.deflater, &mut self.out)
    }

    /// Feeds `piece` as one read, as the reactor does: again after each message, answering
    /// it first (echo).
    fn feed(&mut self, now: Instant, limits: &Limits, piece: &[u8], events: &mut Vec<Event>) {
        let mut buf = piece.to_vec();
        let mut rest = &mut buf[..];
        while !rest.is_empty() {
            let before = events.len();
            let n = self.conn.handle_bytes(
                now,
                limits,
                &mut self.budget,
                &mut self.inflater,
                rest,
                &mut self.out,
                events,
            );
            assert_eq!(
                self.budget.used(),
                self.conn.reserved(),
                "budget accounting"
            );
            let message =
                matches!(events.last(), Some(Event::Message { .. })) && events.len() > before;
            assert!(n <= rest.len(), "consumed {n} of {}", rest.len());
            assert!(
                n == rest.len() || (n > 0 && message),
                "stopped at {n} of {} without a message",
                rest.len()
            );
            if message {
                let Some(Event::Message { opcode, data }) = events.last() else {
                    unreachable!()
                };
                let (opcode, data) = (*opcode, data.clone());
                let open = self.conn.is_open();
                assert_eq!(self.send(opcode, &data), open);
            }
            rest = &mut std::mem::take(&mut rest)[n..];
        }
    }

    /// Writes up to `n` queued bytes.
    fn write(&mut self, n: usize) {
        let mut iov = [IoSlice::new(&[]); 8];
        let count = self.out.fill_iovecs(&mut iov);
        let mut left = n;
        for slice in &iov[..count] {
            let take = slice.len().min(left);
            self.sent.extend_from_slice(&slice[..take]);
            left -= take;
        }
        let written = n - left;
        let queued = self.out.len_bytes();
        self.out.advance(written);
        assert_eq!(self.out.len_bytes(), queued - written);
        assert_eq!(self.out.is_empty(), self.out.len_bytes() == 0);
    }

    fn flush(&mut self) {
        while !self.out.is_empty() {
            self.write(usize::MAX);
        }
    }
}

/// What a well-behaved peer's bytes must produce.
#[derive(Default)]
struct Model {
    /// Every frame so far was well-formed, in order and within the limits.
    valid: bool,
    /// The peer's close frame has been sent: the server reads nothing after it.
    peer_closed: bool,
    message: Option<(OpCode, Vec<u8>)>,
    /// Events owed on the next read.
    expected: Vec<Event>,
}

impl Model {
    fn raw(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() && !self.peer_closed {
            self.valid = false;
        }
    }

    /// A frame of `wire_len` payload bytes on the wire carrying `payload` (the same bytes,
    /// or those a compressed frame inflates to, with `head`'s RSV bits cleared).
    fn frame(&mut self, limits: &Limits, head: u8, payload: &[u8], wire_len: usize) {
        if !self.valid || self.peer_closed {
            return;
        }
        self.valid = self.accept(limits, head, payload, wire_len);
    }

    fn accept(&mut self, limits: &Limits, head: u8, payload: &[u8], wire_len: usize) -> bool {
        let fin = head & 0x80 != 0;
        let opcode = match head & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            _ => return false,
        };
        if head & 0x70 != 0 {
            return false;
        }
        if opcode.is_control() {
            if !fin || payload.len() > 125 {
                return false;
            }
            if opcode == OpCode::Close {
                let frame = match payload {
                    [] => CloseFrame {
                        code: None,
                        reason: String::new(),
                    },
                    [hi, lo, reason @ ..] => {
                        let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
                        let Ok(reason) = std::str::from_utf8(reason) else {
                            return false;
                        };
                        if !code.is_sendable() {
                            return false;
                        }
                        CloseFrame {
                            code: Some(code),
                            reason: reason.to_owned(),
                        }
                    }
                    [_] => return false,
                };
                self.expected.push(Event::PeerClosed(frame));
                self.peer_closed = true;
            }
            return true;
        }
        if wire_len as u64 > limits.max_frame_size {
            return false;
        }
        let (kind, mut data) = match (opcode, self.message.take()) {
            (OpCode::Continuation, Some(message)) => message,
            (OpCode::Text | OpCode::Binary, None) => (opcode, Vec::new()),
            _ => return false,
        };
        if data.len() + payload.len() > limits.max_message_size {
            return false;
        }
        data.extend_from_slice(payload);
        if kind == OpCode::Text {
            // Text must be valid so far: a prefix of UTF-8, and all of it at the end.
            if let Err(e) = std::str::from_utf8(&data) {
                if fin || e.error_len().is_some() {
                    return false;
                }
            }
        }
        if fin {
            self.expected.push(Event::Message { opcode: kind, data });
        } else {
            self.message = Some((kind, data));
        }
        true
    }
}

/// Runs one session; `deflate`: the connection negotiated permessage-deflate.
pub fn run(input: Input, deflate: bool) {
    let limits = limits(input.setup);
    let mut now = Instant::now();
    let agreed = deflate.then_some(Agreed {
        server_max_window_bits: None,
    });
    // Fed in pieces, and the reference fed each read whole.
    let mut split = Side::new(now, &limits, agreed);
    let mut whole = Side::new(now, &limits, agreed);
    let mut model = Model {
        valid: true,
        ..Model::default()
    };
    let mut wire = Vec::new();

    for op in input.ops {
        let closed_before = whole.conn.is_closed();
        let queued_before = whole.sent.len() + whole.out.len_bytes();
        match op {
            Op::Raw(bytes) => {
                model.raw(&bytes);
                wire.extend_from_slice(&bytes);
            }
            Op::Frame { head, key, payload }
                if deflate && head & 0xf0 == 0xd0 && matches!(head & 0x0f, 1 | 2) =>
            {
                let compressed = oracle::compress(key[0] % 10, &payload);
                if compressed.len() > limits.max_message_size {
                    // Held compressed while it arrives, the message is over the limit
                    // already (1009): not modelled.
                    model.raw(&compressed);
                } else {
                    model.frame(&limits, head & !0x70, &payload, compressed.len());
                }
                wire.extend(frame::encode_client_raw(
                    true,
                    deflate::RSV1,
                    head & 0x0f,
                    key,
                    &compressed,
                ));
            }
            Op::Frame { head, key, payload } => {
                model.frame(&limits, head, &payload, payload.len());
                wire.extend(frame::encode_client_raw(
                    head & 0x80 != 0,
                    (head >> 4) & 0x7,
                    head & 0x0f,
                    key,
                    &payload,
                ));
            }
            Op::Read(cuts) => {
                let bytes = std::mem::take(&mut wire);
                let open_before = whole.conn.is_open();
                let mut split_events = Vec::new();
                let mut rest = &bytes[..];
                for cut in cuts.iter().map(|&c| usize::from(c)) {
                    let take = if cut == 0 {
                        rest.len()
                    } else {
                        cut.min(rest.len())
                    };
                    let (piece, tail) = rest.split_at(take);
                    if !piece.is_empty() {
                        split.feed(now, &limits, piece, &mut split_events);
                    }
                    rest = tail;
                }
                if !rest.is_empty() {
                    split.feed(now, &limits, rest, &mut split_events);
                }
                let mut events = Vec::new();
                if !bytes.is_empty() {
                    whole.feed(now, &limits, &bytes, &mut events);
                }
                assert_eq!(split_events, events, "split reads change the events");
                check_events(&limits, &events);
                let expected = std::mem::take(&mut model.expected);
                if closed_before {
                    assert!(events.is_empty(), "a closed connection reads nothing");
                } else if model.valid {
                    let expected: Vec<Event> = expected
                        .into_iter()
                        .filter(|e| open_before || !matches!(e, Event::Message { .. }))
                        .collect();
                    assert_eq!(events, expected, "a well-behaved peer's events");
                }
            }
            Op::AdvanceTime(ms) => {
                now += Duration::from_millis(ms.into());
                for side in [&mut split, &mut whole] {
                    if let Some(due) = side.conn.poll_timeout(&limits) {
                        if due <= now {
                            side.conn.handle_timeout(now, &limits, &mut side.out);
                            let next = side.conn.poll_timeout(&limits);
                            assert!(next.is_none_or(|t| t > now), "a due timer makes progress");
                        }
                    }
                }
            }
            Op::Timeout => {
                for side in [&mut split, &mut whole] {
                    let due = side.conn.poll_timeout(&limits);
                    let (queued, closed) = (side.out.len_bytes(), side.conn.is_closed());
                    side.conn.handle_timeout(now, &limits, &mut side.out);
                    if due.is_none_or(|t| t > now) {
                        assert_eq!(side.conn.poll_timeout(&limits), due, "early timeout");
                        assert_eq!(side.out.len_bytes(), queued, "early timeout queued");
                        assert_eq!(side.conn.is_closed(), closed);
                    }
                }
            }
            Op::Close { code, reason } => {
                let code = SERVER_CODES[usize::from(code) % SERVER_CODES.len()];
                let reason = String::from_utf8_lossy(&reason);
                for side in [&mut split, &mut whole] {
                    let open = side.conn.is_open();
                    let queued = side.out.len_bytes();
                    side.conn.close(now, &limits, code, &reason, &mut side.out);
                    assert!(!side.conn.is_open());
                    if open {
                        assert!(side.out.len_bytes() > queued, "close frame queued");
                        assert_eq!(
                            side.conn.poll_timeout(&limits),
                            Some(now + limits.close_timeout)
                        );
                    } else {
                        assert_eq!(side.out.len_bytes(), queued);
                    }
                }
            }
            Op::Send { text, payload } => {
                let (opcode, payload) = if text {
                    let text = String::from_utf8_lossy(&payload).into_owned();
                    (OpCode::Text, text.into_bytes())
                } else {
                    (OpCode::Binary, payload)
                };
                for side in [&mut split, &mut whole] {
                    let open = side.conn.is_open();
                    assert_eq!(side.send(opcode, &payload), open);
                }
            }
            Op::Write(n) => split.write(n.into()),
            Op::ReleaseIdle => {
                for side in [&mut split, &mut whole] {
                    side.conn.release_idle();
                    side.out.release_idle();
                }
            }
        }
        whole.flush();
        assert_eq!(split.conn.is_closed(), whole.conn.is_closed());
        assert_eq!(split.conn.is_open(), whole.conn.is_open());
        assert_eq!(
            split.conn.poll_timeout(&limits),
            whole.conn.poll_timeout(&limits)
        );
        assert!(
            whole.sent.starts_with(&split.sent),
            "partial writes are a prefix of the whole output"
        );
        if closed_before {
            assert_eq!(whole.sent.len(), queued_before, "queued after closed");
            assert_eq!(whole.conn.poll_timeout(&limits), None);
        }
    }
    split.flush();
    assert_eq!(split.sent, whole.sent, "split reads change the output");
    check_output(&whole.sent, deflate);
}

fn check_events(limits: &Limits, events: &[Event]) {
    for (i, event) in events.iter().enumerate() {
        match event {
            Event::Message { opcode, data } => {
                assert!(matches!(opcode, OpCode::Text | OpCode::Binary));
                assert!(data.len() <= limits.max_message_size);
                if *opcode == OpCode::Text {
                    assert!(std::str::from_utf8(data).is_ok(), "text is utf-8");
                }
            }
            Event::PeerClosed(_) | Event::Failed(_) => {
                assert_eq!(i, events.len() - 1, "nothing after the end: {events:?}");
            }
        }
    }
}

/// The server's whole output is valid frames, with nothing after a close frame.
fn check_output(mut bytes: &[u8], deflate: bool) {
    let mut closed = false;
    while !bytes.is_empty() {
        assert!(!closed, "bytes after the close frame");
        let (header, n) = FrameHeader::parse(bytes)
            .expect("valid server frame")
            .expect("complete server frame");
        let compressed = header.rsv == deflate::RSV1;
        assert!(
            header.fin
                && header.mask.is_none()
                && (header.rsv == 0 || compressed && deflate && !header.opcode.is_control()),
            "{header:?}"
        );
        let end = n + usize::try_from(header.len).expect("fits");
        let payload = &bytes[n..end];
        if compressed {
            let inflated = oracle::inflate(payload).expect("the server's deflate data inflates");
            assert!(
                inflated.len() > payload.len(),
                "compressed only when it pays"
            );
            if header.opcode == OpCode::Text {
                assert!(
                    std::str::from_utf8(&inflated).is_ok(),
                    "compressed text is utf-8"
                );
            }
        }
        if header.opcode.is_control() {
            assert!(payload.len() <= 125, "control payload {}", payload.len());
        }
        if header.opcode == OpCode::Close {
            closed = true;
            if let [hi, lo, reason @ ..] = payload {
                assert!(CloseCode(u16::from_be_bytes([*hi, *lo])).is_sendable());
                assert!(std::str::from_utf8(reason).is_ok());
            } else {
                assert!(payload.is_empty(), "close payload {payload:?}");
            }
        }
        bytes = &bytes[end..];
    }
}

/// An implementation of deflate independent of the one under test (miniz_oxide, where
/// wsgate-proto uses flate2 on zlib-rs), to make and check compressed messages.
mod oracle {
    use miniz_oxide::deflate::core::{
        compress as deflate, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush,
        TDEFLStatus,
    };

    /// `data` as raw deflate ending in a sync flush, the `00 00 ff ff` tail removed (RFC
    /// 7692 §7.2.1).
    pub fn compress(level: u8, data: &[u8]) -> Vec<u8> {
        let mut c = CompressorOxide::new(create_comp_flags_from_zip_params(level.into(), 0, 0));
        let mut out = vec![0; data.len() * 2 + 1024];
        let (status, read, written) = deflate(&mut c, data, &mut out, TDEFLFlush::Sync);
        assert_eq!(
            (status, read),
            (TDEFLStatus::Okay, data.len()),
            "room enough"
        );
        out.truncate(written);
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "a sync flush ends so");
        out.truncate(written - 4);
        out
    }

    /// A message's payload inflated (§7.2.2: the tail appended, then an empty final block,
    /// so the message must end on a block boundary).
    pub fn inflate(payload: &[u8]) -> Option<Vec<u8>> {
        let mut data = payload.to_vec();
        data.extend_from_slice(&[0, 0, 0xff, 0xff, 0x01, 0, 0, 0xff, 0xff]);
        miniz_oxide::inflate::decompress_to_vec(&data).ok()
    }
}
