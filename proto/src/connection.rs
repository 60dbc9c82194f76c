//! One WebSocket connection after the handshake, in either role ([`Role`]).
//!
//! Feed it every byte read with [`Connection::handle_bytes`] and call
//! [`Connection::handle_timeout`] at or after [`Connection::poll_timeout`]. After each call:
//! take the events it pushed (answering a message before feeding the bytes after it, so
//! replies keep their order with the pongs and close frames the core queues itself),
//! write out whatever it queued on the [`OutQueue`], and once
//! [`Connection::is_closed`] is true, flush the queue and close the TCP connection (RFC 6455
//! §7.1.1: the server closes first; a client should give the server a moment to do so). It
//! owns no buffers of its own between calls except a partial frame header, the message being
//! assembled and a control payload.
//!
//! The roles differ only on the wire: a server requires masked frames and sends unmasked
//! ones; a client requires unmasked frames and masks what it sends with keys its caller draws.

use std::time::{Duration, Instant};

use super::close::{self, CloseCode, CloseFrame};
use super::deflate::{self, Agreed, Deflater, Inflater};
use super::error::ProtocolError;
use super::frame::{self, FrameHeader, OpCode, Role, MAX_HEADER_LEN};
use super::mask;
use super::outgoing::{self, OutQueue, Prepared};
use super::utf8::Utf8Validator;
use bytes::Bytes;

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

/// Memory for partial messages that a group of connections (a reactor) shares: each data
/// frame's declared length is taken from it when the frame's header arrives, before a byte
/// of its payload is stored, and given back when the message is complete or the
/// connection fails. A frame that does not fit fails its connection with 1013, so a crowd
/// of peers each holding a large partial message cannot take the server's memory.
#[derive(Clone, Debug)]
pub struct Budget {
    used: u64,
    limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Self { used: 0, limit }
    }

    /// Bytes currently taken.
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn take(&mut self, n: u64) -> bool {
        match self.used.checked_add(n) {
            Some(used) if used <= self.limit => {
                self.used = used;
                true
            }
            _ => false,
        }
    }

    /// Gives back what a connection held ([`Connection::reserved`]) when it is dropped.
    pub fn give(&mut self, n: u64) {
        debug_assert!(n <= self.used, "gave back more than was taken");
        self.used = self.used.saturating_sub(n);
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
    /// Inside a payload: `header.len` counts the bytes still to come (not the frame's
    /// length, which keeps `Rx` small), unmasked from key byte `phase` if masked.
    Payload { header: FrameHeader, phase: u8 },
}

const RX_START: Rx = Rx::Header {
    buf: [0; MAX_HEADER_LEN],
    len: 0,
};

/// Our end of the connection, and for a client where its masking keys come from.
#[derive(Clone, Copy, Debug)]
enum Side {
    Server,
    /// RFC 6455 §5.3: every frame we send is masked with a fresh key from `mask_key`.
    Client {
        mask_key: fn() -> [u8; 4],
    },
}

/// The per-connection protocol state machine, for either role.
#[derive(Debug)]
pub struct Connection {
    side: Side,
    state: State,
    rx: Rx,
    /// Data message being assembled; empty (no allocation) between messages.
    message: Vec<u8>,
    /// Opcode of the message in progress, `None` between messages.
    message_opcode: Option<OpCode>,
    /// The message in progress is compressed (RSV1 on its first frame): `message` holds
    /// deflate data, inflated and validated when it is complete.
    compressed: bool,
    /// permessage-deflate, if negotiated (2 bytes).
    deflate: Option<Agreed>,
    utf8: Utf8Validator,
    /// Payload of the control frame in progress (at most 125 bytes).
    control: ControlPayload,
    /// Bytes taken from the caller's [`Budget`] for the message in progress.
    reserved: u32,
    /// One instant whose meaning follows `state` (keeps an idle connection small).
    timer: Instant,
}

impl Connection {
    /// A server's connection: it requires masked frames and sends unmasked ones.
    pub fn server(now: Instant) -> Self {
        Self::new(Side::Server, now)
    }

    /// A client's connection: it requires unmasked frames and masks every frame it sends
    /// (pongs, pings, close frames, messages) with a key from `mask_key`, which must return a
    /// fresh, unpredictable key on each call (RFC 6455 §10.3); this crate has no RNG.
    pub fn client(now: Instant, mask_key: fn() -> [u8; 4]) -> Self {
        Self::new(Side::Client { mask_key }, now)
    }

    fn new(side: Side, now: Instant) -> Self {
        Self {
            side,
            state: State::Open,
            rx: RX_START,
            message: Vec::new(),
            message_opcode: None,
            compressed: false,
            deflate: None,
            utf8: Utf8Validator::new(),
            control: ControlPayload::default(),
            reserved: 0,
            timer: now,
        }
    }

    /// With permessage-deflate as negotiated in the handshake: compressed messages are
    /// accepted (and inflated with the caller's [`Inflater`]), and
    /// [`Connection::send_compressible`] and [`Connection::send_prepared`] compress.
    pub fn with_deflate(mut self, agreed: Option<Agreed>) -> Self {
        self.deflate = agreed;
        self
    }

    /// permessage-deflate, if negotiated.
    pub fn deflate(&self) -> Option<Agreed> {
        self.deflate
    }

    pub fn role(&self) -> Role {
        match self.side {
            Side::Server => Role::Server,
            Side::Client { .. } => Role::Client,
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

    /// Handles bytes read from the socket, unmasking them in place if masked. Pushes events to
    /// `events` and frames to `out`, and returns how many bytes it consumed: all of them
    /// (a partial header is kept inside), except that it returns right after a complete
    /// message, so that the caller can answer it before the rest is parsed. A compressed
    /// message is inflated with `inflater`, which any number of connections may share.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_bytes(
        &mut self,
        now: Instant,
        limits: &Limits,
        budget: &mut Budget,
        inflater: &mut Inflater,
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
                Rx::Header { .. } => match self.read_header(limits, budget, buf, &mut pos) {
                    // An empty frame has no payload step: it ends right here.
                    Ok(Some(header)) if header.len == 0 => {
                        self.handle_frame_end(header, limits, budget, inflater, out, events)
                    }
                    Ok(_) => Ok(()),
                    Err(err) => Err(err),
                },
                Rx::Payload { mut header, phase } => {
                    let take = header.len.min((buf.len() - pos) as u64) as usize;
                    let chunk = &mut buf[pos..pos + take];
                    // The header check let only the role's masking through.
                    let phase = match header.mask {
                        Some(key) => mask::unmask(chunk, key, usize::from(phase)) as u8,
                        None => phase,
                    };
                    pos += take;
                    header.len -= take as u64;
                    self.rx = Rx::Payload { header, phase };
                    self.handle_payload(header, chunk).and_then(|()| {
                        if header.len == 0 {
                            self.rx = RX_START;
                            self.handle_frame_end(header, limits, budget, inflater, out, events)
                        } else {
                            Ok(())
                        }
                    })
                }
            };
            match result {
                Err(err) => self.fail(err, budget, out, events),
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
        budget: &mut Budget,
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
        self.check_header(limits, budget, &header)?;
        if header.len > 0 {
            self.rx = Rx::Payload { header, phase: 0 };
        }
        Ok(Some(header))
    }

    fn check_header(
        &mut self,
        limits: &Limits,
        budget: &mut Budget,
        header: &FrameHeader,
    ) -> Result<(), ProtocolError> {
        // RFC 7692 §6: with the extension, RSV1 marks the first frame of a compressed
        // message, and nothing else.
        let mut header = *header;
        if header.rsv & deflate::RSV1 != 0 && self.deflate.is_some() {
            if !matches!(header.opcode, OpCode::Text | OpCode::Binary) {
                return Err(ProtocolError::MisplacedRsv1);
            }
            header.rsv &= !deflate::RSV1;
            self.compressed = true;
        } else if matches!(header.opcode, OpCode::Text | OpCode::Binary) {
            self.compressed = false;
        }
        // RSV bits, masking for our role, control frame rules.
        header.check(self.role())?;
        if header.opcode.is_control() {
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
        // Taken before any of the payload is stored; after a close it is discarded instead.
        if self.is_open() && header.len > 0 {
            let reserved = u64::from(self.reserved) + header.len;
            let reserved = u32::try_from(reserved).map_err(|_| ProtocolError::MessageTooLarge)?;
            if !budget.take(header.len) {
                return Err(ProtocolError::OverBudget);
            }
            self.reserved = reserved;
        }
        Ok(())
    }

    fn handle_payload(&mut self, header: FrameHeader, chunk: &[u8]) -> Result<(), ProtocolError> {
        if header.opcode.is_control() {
            self.control.extend(chunk);
            return Ok(());
        }
        if !self.is_open() {
            // RFC 6455 §5.5.1: after sending a close frame, data may be discarded.
            return Ok(());
        }
        if self.message_opcode == Some(OpCode::Text) && !self.compressed {
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
        limits: &Limits,
        budget: &mut Budget,
        inflater: &mut Inflater,
        out: &mut OutQueue,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        match header.opcode {
            OpCode::Ping => {
                if self.is_open() {
                    // RFC 6455 §5.5.2: answer with a pong carrying the same payload.
                    out.push(self.encode(OpCode::Pong, self.control.as_slice()));
                }
            }
            OpCode::Pong => {}
            OpCode::Close => {
                let frame = parse_close(self.control.as_slice());
                self.control.clear();
                let frame = frame?;
                if self.is_open() {
                    // RFC 6455 §5.5.1: reply with a close frame, echoing the status code.
                    let payload = frame
                        .code
                        .map(|c| close::encode_payload(c, ""))
                        .unwrap_or_default();
                    out.push(self.encode(OpCode::Close, &payload));
                }
                self.state = State::Closed;
                events.push(Event::PeerClosed(frame));
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if header.fin {
                    let opcode = self.message_opcode.take().expect("checked at the header");
                    let mut data = std::mem::take(&mut self.message);
                    budget.give(u64::from(std::mem::take(&mut self.reserved)));
                    if std::mem::take(&mut self.compressed) && self.is_open() {
                        // RFC 7692 §7.2.2; the limit applies to the inflated size.
                        let utf8 = (opcode == OpCode::Text).then_some(&mut self.utf8);
                        data = inflater.inflate(&data, limits.max_message_size, utf8)?;
                    }
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
    fn fail(
        &mut self,
        err: ProtocolError,
        budget: &mut Budget,
        out: &mut OutQueue,
        events: &mut Vec<Event>,
    ) {
        budget.give(u64::from(std::mem::take(&mut self.reserved)));
        if self.is_open() {
            let payload = close::encode_payload(err.close_code(), &err.to_string());
            out.push(self.encode(OpCode::Close, &payload));
        }
        self.state = State::Closed;
        self.message = Vec::new();
        self.control.release();
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
            out.push(self.encode(OpCode::Close, &close::encode_payload(code, reason)));
            self.state = State::CloseSent;
            self.timer = now + limits.close_timeout;
            // RFC 6455 §5.5.1: the rest of a message in progress is discarded, unchecked.
            self.message = Vec::new();
            self.utf8 = Utf8Validator::new();
            self.compressed = false;
        }
    }

    /// Queues a data message as one frame; false when the connection is no longer open.
    pub fn send_message(&mut self, opcode: OpCode, payload: &[u8], out: &mut OutQueue) -> bool {
        if self.is_open() {
            out.push(self.encode(opcode, payload));
            true
        } else {
            false
        }
    }

    /// Queues a data message as one frame, compressed with `deflater` if this connection
    /// negotiated permessage-deflate and that pays (see [`Deflater::server_frame`]); false
    /// when the connection is no longer open. A client sends it plain.
    pub fn send_compressible(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        deflater: &mut Deflater,
        out: &mut OutQueue,
    ) -> bool {
        let frame = match (self.side, self.deflate) {
            (Side::Server, Some(agreed)) if agreed.fits(payload.len()) => {
                deflater.server_frame(opcode, payload)
            }
            _ => None,
        };
        match frame {
            Some(frame) if self.is_open() => {
                out.push(frame);
                true
            }
            _ => self.send_message(opcode, payload, out),
        }
    }

    /// Queues a prepared message (a server's broadcast) in the variant this connection
    /// takes ([`Prepared::frame_for`]): compressed if it negotiated permessage-deflate and
    /// the publisher compressed the message, plain otherwise; false when no longer open.
    pub fn send_prepared(&mut self, message: &Prepared, out: &mut OutQueue) -> bool {
        debug_assert!(
            matches!(self.side, Side::Server),
            "broadcasts are server frames"
        );
        if self.is_open() {
            out.push(message.frame_for(self.deflate).clone());
            true
        } else {
            false
        }
    }

    /// What this connection holds of its caller's [`Budget`]: give it back when dropping
    /// the connection.
    pub fn reserved(&self) -> u64 {
        u64::from(self.reserved)
    }

    /// Gives back the memory of the last control frame's payload (idle connections keep
    /// nothing but their state).
    pub fn release_idle(&mut self) {
        if self.control.as_slice().is_empty() {
            self.control.release();
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
                    out.push(self.encode(OpCode::Ping, b""));
                    self.state = State::AwaitingPong;
                    self.timer = now + limits.pong_timeout;
                }
            }
            State::AwaitingPong if now >= self.timer => {
                let payload = close::encode_payload(CloseCode::POLICY, "ping timeout");
                out.push(self.encode(OpCode::Close, &payload));
                self.state = State::Closed;
            }
            State::CloseSent if now >= self.timer => self.state = State::Closed,
            State::AwaitingPong | State::CloseSent | State::Closed => {}
        }
    }

    /// A complete frame as our role sends it: unmasked from a server, masked from a client.
    fn encode(&self, opcode: OpCode, payload: &[u8]) -> Bytes {
        match self.side {
            Side::Server => outgoing::frame(opcode, payload),
            Side::Client { mask_key } => frame::encode_client(opcode, mask_key(), payload),
        }
    }
}

/// The payload of a control frame (RFC 6455 §5.5: at most 125 bytes, checked at the
/// header), boxed when the first control frame arrives and dropped when idle: an idle
/// connection pays 8 bytes for it, not a `Vec`'s 24.
#[derive(Debug, Default)]
struct ControlPayload(Option<Box<(u8, [u8; 125])>>);

impl ControlPayload {
    fn extend(&mut self, chunk: &[u8]) {
        let (len, buf) = &mut **self.0.get_or_insert_with(|| Box::new((0, [0; 125])));
        let at = usize::from(*len);
        // The header check bounds a control payload to 125 bytes; never write past it.
        let n = chunk.len().min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&chunk[..n]);
        *len += n as u8;
    }

    fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Some(payload) => &payload.1[..usize::from(payload.0)],
            None => &[],
        }
    }

    /// Empties it, keeping the allocation for the next control frame.
    fn clear(&mut self) {
        if let Some(payload) = &mut self.0 {
            payload.0 = 0;
        }
    }

    /// Empties it and gives the memory back.
    fn release(&mut self) {
        self.0 = None;
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
