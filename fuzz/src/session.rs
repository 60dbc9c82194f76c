//! The server-side connection state machine over a sequence of [`Op`]s: peer bytes split at
//! arbitrary points, time passing, server closes, sends and partial writes.
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
//! - the bytes written are valid server frames: FIN, unmasked, no RSV, control payloads of
//!   at most 125 bytes, at most one close frame (valid code, UTF-8 reason) and nothing after
//!   it; messages delivered are within the limit and text is UTF-8.
#![no_main]

use std::io::IoSlice;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wsgate_fuzz::{Input, Op, Setup};
use wsgate_proto::frame::{self, FrameHeader};
use wsgate_proto::{Budget, CloseCode, CloseFrame, Connection, Event, Limits, OpCode, OutQueue};

fuzz_target!(|input: Input| run(input));

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
}

impl Side {
    fn new(now: Instant, limits: &Limits) -> Self {
        Self {
            conn: Connection::server(now),
            budget: Budget::new(limits.max_message_size as u64),
            out: OutQueue::default(),
            sent: Vec::new(),
        }
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
                &mut wsgate_proto::deflate::Inflater::default(),
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
                let open = self.conn.is_open();
                assert_eq!(self.conn.send_message(*opcode, data, &mut self.out), open);
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

    fn frame(&mut self, limits: &Limits, head: u8, payload: &[u8]) {
        if !self.valid || self.peer_closed {
            return;
        }
        self.valid = self.accept(limits, head, payload);
    }

    fn accept(&mut self, limits: &Limits, head: u8, payload: &[u8]) -> bool {
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
        if payload.len() as u64 > limits.max_frame_size {
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

fn run(input: Input) {
    let limits = limits(input.setup);
    let mut now = Instant::now();
    // Fed in pieces, and the reference fed each read whole.
    let mut split = Side::new(now, &limits);
    let mut whole = Side::new(now, &limits);
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
            Op::Frame { head, key, payload } => {
                model.frame(&limits, head, &payload);
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
                    assert_eq!(
                        side.conn.send_message(opcode, &payload, &mut side.out),
                        open
                    );
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
    check_output(&whole.sent);
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
fn check_output(mut bytes: &[u8]) {
    let mut closed = false;
    while !bytes.is_empty() {
        assert!(!closed, "bytes after the close frame");
        let (header, n) = FrameHeader::parse(bytes)
            .expect("valid server frame")
            .expect("complete server frame");
        assert!(
            header.fin && header.rsv == 0 && header.mask.is_none(),
            "{header:?}"
        );
        let end = n + usize::try_from(header.len).expect("fits");
        let payload = &bytes[n..end];
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
