//! The server side of one WebSocket connection, after the handshake.
//!
//! Feed it every byte read with [`Connection::handle_bytes`] and call
//! [`Connection::handle_timeout`] at or after [`Connection::poll_timeout`]. After each call:
//! take the events it pushed (answering a message before feeding the bytes after it, so
//! replies keep their order with the pongs and close frames the core queues itself),
//! write out whatever it queued on the [`OutQueue`], and once
//! [`Connection::is_closed`] is true, flush the queue and close the TCP connection (the
//! server closes first, RFC 6455 §7.1.1). It owns no buffers of its own between calls
//! except a partial frame header, the message being assembled and a control payload.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use super::close::{self, CloseCode, CloseFrame};
use super::error::ProtocolError;
use super::frame::{self, FrameHeader, OpCode, MAX_HEADER_LEN};
use super::mask;
use super::utf8::Utf8Validator;

/// Limits and timers, shared by all connections of a reactor and passed in by reference.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest frame payload accepted; larger closes with 1009.
    pub max_frame_size: u64,
    /// Largest message (all fragments) accepted; larger closes with 1009.
    pub max_message_size: usize,
    /// How long to wait for the peer's close frame after sending ours.
    pub close_timeout: Duration,
    /// Silence after which the server pings; `None` never pings.
    pub idle_timeout: Option<Duration>,
    /// How long a ping may go unanswered (any received byte counts) before closing.
    pub pong_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            close_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(60)),
            pong_timeout: Duration::from_secs(20),
        }
    }
}

/// What the peer did.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete text (valid UTF-8) or binary message.
    Message { opcode: OpCode, data: Vec<u8> },
    /// The peer sent a close frame; the reply, if one is due, is queued.
    PeerClosed(CloseFrame),
    /// The peer broke the protocol; a close frame with `close_code()` is queued and the
    /// connection is closed.
    Failed(ProtocolError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// `timer` is when the peer last sent a byte.
    Open,
    /// Open, and a keepalive ping is out: `timer` is the pong deadline.
    AwaitingPong,
    /// We sent a close frame and wait for the peer's until `timer`.
    CloseSent,
    /// Nothing more is read or sent: flush and close the socket.
    Closed,
}

#[derive(Clone, Copy, Debug)]
enum Rx {
    /// Collecting a header that arrived split across reads.
    Header { buf: [u8; MAX_HEADER_LEN], len: u8 },
    /// Inside a payload: `remaining` bytes to go, unmasking at key byte `phase`.
    Payload {
        header: FrameHeader,
        remaining: u64,
        phase: u8,
    },
}

const RX_START: Rx = Rx::Header {
    buf: [0; MAX_HEADER_LEN],
    len: 0,
};

/// The per-connection protocol state machine (server role).
#[derive(Debug)]
pub struct Connection {
    state: State,
    rx: Rx,
    /// Data message being assembled; empty (no allocation) between messages.
    message: Vec<u8>,
    /// Opcode of the message in progress, `None` between messages.
    message_opcode: Option<OpCode>,
    utf8: Utf8Validator,
    /// Payload of the control frame in progress (at most 125 bytes).
    control: Vec<u8>,
    /// One instant whose meaning follows `state` (keeps an idle connection small).
    timer: Instant,
}

impl Connection {
    pub fn new(now: Instant) -> Self {
        Self {
            state: State::Open,
            rx: RX_START,
            message: Vec::new(),
            message_opcode: None,
            utf8: Utf8Validator::new(),
            control: Vec::new(),
            timer: now,
        }
    }

    /// Whether application messages may still be sent.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open | State::AwaitingPong)
    }

    /// Whether the connection is finished: flush `out`, then close the socket.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Handles bytes read from the socket, unmasking them in place. Pushes events to
    /// `events` and frames to `out`, and returns how many bytes it consumed: all of them
    /// (a partial header is kept inside), except that it returns right after a complete
    /// message, so that the caller can answer it before the rest is parsed.
    pub fn handle_bytes(
        &mut self,
        now: Instant,
        limits: &Limits,
        buf: &mut [u8],
        out: &mut OutQueue,
        events: &mut Vec<Event>,
    ) -> usize {
        if self.is_open() {
            // Any byte answers a keepalive ping.
            self.state = State::Open;
            self.timer = now;
        }
        let first_event = events.len();
        let mut pos = 0;
        while pos < buf.len() && self.state != State::Closed {
            let result = match self.rx {
                Rx::Header { .. } => match self.read_header(limits, buf, &mut pos) {
                    // An empty frame has no payload step: it ends right here.
                    Ok(Some(header)) if header.len == 0 => {
                        self.handle_frame_end(header, out, events)
                    }
                    Ok(_) => Ok(()),
                    Err(err) => Err(err),
                },
                Rx::Payload {
                    header,
                    remaining,
                    phase,
                } => {
                    let take = remaining.min((buf.len() - pos) as u64) as usize;
                    let chunk = &mut buf[pos..pos + take];
                    let key = header
                        .mask
                        .expect("unmasked frames are rejected at the header");
                    let phase = mask::unmask(chunk, key, usize::from(phase)) as u8;
                    pos += take;
                    let remaining = remaining - take as u64;
                    self.rx = Rx::Payload {
                        header,
                        remaining,
                        phase,
                    };
                    self.handle_payload(header, chunk).and_then(|()| {
                        if remaining == 0 {
                            self.rx = RX_START;
                            self.handle_frame_end(header, out, events)
                        } else {
                            Ok(())
                        }
                    })
                }
            };
            match result {
                Err(err) => self.fail(err, out, events),
                Ok(())
                    if events.len() > first_event
                        && matches!(events.last(), Some(Event::Message { .. })) =>
                {
                    return pos;
                }
                Ok(()) => {}
            }
        }
        buf.len()
    }

    /// Parses a header at `buf[*pos..]`, continuing a saved partial header if there is one.
    /// Returns the header once complete and checked; payload reading starts after it.
    fn read_header(
        &mut self,
        limits: &Limits,
        buf: &[u8],
        pos: &mut usize,
    ) -> Result<Option<FrameHeader>, ProtocolError> {
        let Rx::Header {
            buf: mut saved,
            len,
        } = self.rx
        else {
            unreachable!("called in header state")
        };
        let len = usize::from(len);
        let parsed = if len == 0 {
            FrameHeader::parse(&buf[*pos..])?
        } else {
            let add = (MAX_HEADER_LEN - len).min(buf.len() - *pos);
            saved[len..len + add].copy_from_slice(&buf[*pos..*pos + add]);
            FrameHeader::parse(&saved[..len + add])?.map(|(h, n)| (h, n - len))
        };
        let Some((header, consumed)) = parsed else {
            // Not enough bytes yet: keep them (fewer than MAX_HEADER_LEN in total).
            let rest = &buf[*pos..];
            saved[len..len + rest.len()].copy_from_slice(rest);
            self.rx = Rx::Header {
                buf: saved,
                len: (len + rest.len()) as u8,
            };
            *pos = buf.len();
            return Ok(None);
        };
        *pos += consumed;
        self.rx = RX_START;
        self.check_header(limits, &header)?;
        if header.len > 0 {
            self.rx = Rx::Payload {
                header,
                remaining: header.len,
                phase: 0,
            };
        }
        Ok(Some(header))
    }

    fn check_header(&mut self, limits: &Limits, header: &FrameHeader) -> Result<(), ProtocolError> {
        // RFC 6455 §5.2: RSV bits MUST be 0 unless an extension defines them.
        if header.rsv != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        // RFC 6455 §5.1: a server MUST close on an unmasked client frame.
        if header.mask.is_none() {
            return Err(ProtocolError::UnmaskedFrame);
        }
        if header.opcode.is_control() {
            // RFC 6455 §5.5: control frames MUST NOT be fragmented and carry ≤ 125 bytes.
            if !header.fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if header.len > 125 {
                return Err(ProtocolError::ControlTooLong);
            }
            return Ok(());
        }
        if header.len > limits.max_frame_size {
            return Err(ProtocolError::FrameTooLarge(header.len));
        }
        match (header.opcode, self.message_opcode) {
            // RFC 6455 §5.4: continuation only inside a fragmented message, and no new
            // data message until the current one is finished.
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (OpCode::Text | OpCode::Binary, None) => self.message_opcode = Some(header.opcode),
            _ => {}
        }
        if self.message.len() as u64 + header.len > limits.max_message_size as u64 {
            return Err(ProtocolError::MessageTooLarge);
        }
        Ok(())
    }

    fn handle_payload(&mut self, header: FrameHeader, chunk: &[u8]) -> Result<(), ProtocolError> {
        if header.opcode.is_control() {
            self.control.extend_from_slice(chunk);
            return Ok(());
        }
        if !self.is_open() {
            // RFC 6455 §5.5.1: after sending a close frame, data may be discarded.
            return Ok(());
        }
        if self.message_opcode == Some(OpCode::Text) {
            // RFC 6455 §8.1: fail as soon as invalid UTF-8 is seen, not at the end.
            self.utf8
                .feed(chunk)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        self.message.extend_from_slice(chunk);
        Ok(())
    }

    fn handle_frame_end(
        &mut self,
        header: FrameHeader,
        out: &mut OutQueue,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        match header.opcode {
            OpCode::Ping => {
                if self.is_open() {
                    // RFC 6455 §5.5.2: answer with a pong carrying the same payload.
                    out.push(frame::encode(OpCode::Pong, &self.control));
                }
            }
            OpCode::Pong => {}
            OpCode::Close => {
                let frame = parse_close(&self.control);
                self.control.clear();
                let frame = frame?;
                if self.is_open() {
                    // RFC 6455 §5.5.1: reply with a close frame, echoing the status code.
                    let payload = frame
                        .code
                        .map(|c| close::encode_payload(c, ""))
                        .unwrap_or_default();
                    out.push(frame::encode(OpCode::Close, &payload));
                }
                self.state = State::Closed;
                events.push(Event::PeerClosed(frame));
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if header.fin {
                    let opcode = self.message_opcode.take().expect("checked at the header");
                    let data = std::mem::take(&mut self.message);
                    if opcode == OpCode::Text {
                        self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                    if self.is_open() {
                        events.push(Event::Message { opcode, data });
                    }
                }
            }
        }
        self.control.clear();
        Ok(())
    }

    /// RFC 6455 §7.1.7: fail the connection with the violation's close code.
    fn fail(&mut self, err: ProtocolError, out: &mut OutQueue, events: &mut Vec<Event>) {
        if self.is_open() {
            let payload = close::encode_payload(err.close_code(), &err.to_string());
            out.push(frame::encode(OpCode::Close, &payload));
        }
        self.state = State::Closed;
        self.message = Vec::new();
        self.control = Vec::new();
        events.push(Event::Failed(err));
    }

    /// Starts the close handshake from our side (drain, limits, policy).
    pub fn close(
        &mut self,
        now: Instant,
        limits: &Limits,
        code: CloseCode,
        reason: &str,
        out: &mut OutQueue,
    ) {
        if self.is_open() {
            out.push(frame::encode(
                OpCode::Close,
                &close::encode_payload(code, reason),
            ));
            self.state = State::CloseSent;
            self.timer = now + limits.close_timeout;
            // RFC 6455 §5.5.1: the rest of a message in progress is discarded, unchecked.
            self.message = Vec::new();
            self.utf8 = Utf8Validator::new();
        }
    }

    /// Queues a data message as one frame; false when the connection is no longer open.
    pub fn send_message(&mut self, opcode: OpCode, payload: &[u8], out: &mut OutQueue) -> bool {
        self.send_frame(frame::encode(opcode, payload), out)
    }

    /// Queues a pre-encoded server frame (a broadcast); false when no longer open.
    pub fn send_frame(&mut self, frame: Bytes, out: &mut OutQueue) -> bool {
        if self.is_open() {
            out.push(frame);
            true
        } else {
            false
        }
    }

    /// Gives back the memory of the last control frame's payload (idle connections keep
    /// nothing but their state).
    pub fn release_idle(&mut self) {
        if self.control.is_empty() && self.control.capacity() > 0 {
            self.control = Vec::new();
        }
    }

    /// The next instant at which `handle_timeout` has something to do.
    pub fn poll_timeout(&self, limits: &Limits) -> Option<Instant> {
        match self.state {
            State::Open => limits.idle_timeout.map(|idle| self.timer + idle),
            State::AwaitingPong | State::CloseSent => Some(self.timer),
            State::Closed => None,
        }
    }

    /// Pings after silence, closes on a missing pong or close reply.
    pub fn handle_timeout(&mut self, now: Instant, limits: &Limits, out: &mut OutQueue) {
        match self.state {
            State::Open => {
                if limits
                    .idle_timeout
                    .is_some_and(|idle| now >= self.timer + idle)
                {
                    out.push(frame::encode(OpCode::Ping, b""));
                    self.state = State::AwaitingPong;
                    self.timer = now + limits.pong_timeout;
                }
            }
            State::AwaitingPong if now >= self.timer => {
                let payload = close::encode_payload(CloseCode::POLICY, "ping timeout");
                out.push(frame::encode(OpCode::Close, &payload));
                self.state = State::Closed;
            }
            State::CloseSent if now >= self.timer => self.state = State::Closed,
            State::AwaitingPong | State::CloseSent | State::Closed => {}
        }
    }
}

/// RFC 6455 §5.5.1, §7.4: an empty payload, or a valid code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<CloseFrame, ProtocolError> {
    match payload {
        [] => Ok(CloseFrame {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(ProtocolError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_sendable() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(CloseFrame {
                code: Some(code),
                reason: reason.to_owned(),
            })
        }
    }
}

/// Frames waiting to be written, oldest first. Frames are shared (`Bytes`): a broadcast
/// sits in many queues at once without a copy. The oldest frame is held inline, so a queue
/// of one frame (a handshake response, a low-rate subscriber's delivery) allocates nothing.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// INVARIANT: `None` only when `rest` is empty.
    first: Option<Bytes>,
    rest: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        if self.first.is_none() {
            debug_assert!(self.rest.is_empty());
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    /// Bytes queued and not yet written.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The queued frames, oldest first (io_uring keeps clones alive while it sends them).
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.first.iter().chain(self.rest.iter())
    }

    /// Fills `iov` with the oldest frames; returns how many slices were filled.
    pub fn fill_iovecs<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, frame) in iov.iter_mut().zip(self.frames()) {
            *slot = IoSlice::new(frame);
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.bytes);
        self.bytes -= n;
        while n > 0 {
            let front = self.first.as_mut().expect("advanced past the queued bytes");
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.first = self.rest.pop_front();
        }
        if self.rest.is_empty() && self.rest.capacity() > 16 {
            // A burst grew the queue; give the memory back once it drained.
            self.rest = VecDeque::new();
        }
    }

    /// Gives the queue's memory back when it is empty (an idle connection keeps none).
    pub fn release_idle(&mut self) {
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
    }

    /// Forgets everything queued (the socket is gone).
    pub fn clear(&mut self) {
        self.first = None;
        self.rest = VecDeque::new();
        self.bytes = 0;
    }
}
