//! The one place where everything the server sends is built: WebSocket frames (data,
//! control, close), prepared broadcast messages, and HTTP/1.1 responses; and the queue
//! they wait in until the driver writes them.
//!
//! A broadcast is a [`Prepared`] message: its frame is encoded once and shared (`Bytes`)
//! by every subscriber's queue on every reactor. Its compressed variant (permessage-deflate)
//! is made once, where the message is published, before it leaves for other reactors
//! ([`Prepared::deflate`]), so it carries both variants; a receiving reactor only asks it
//! for the frame a given connection should get ([`Prepared::frame_for`]).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::io::Write as _;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::deflate::{Agreed, Deflater};
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};

/// Length of an unmasked (server) frame header for a payload of `len` bytes.
pub fn server_header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// The header length of a complete unmasked frame (its second byte says it).
fn server_header_len_of(frame: &[u8]) -> usize {
    match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// A complete, final, unmasked server frame.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    frame_from_parts(opcode, &[payload])
}

/// A complete, final, unmasked server frame whose payload is `parts` concatenated, built
/// in one allocation.
pub fn frame_from_parts(opcode: OpCode, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        len: len as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    let mut out = BytesMut::with_capacity(n + len);
    out.put_slice(&head[..n]);
    for part in parts {
        out.put_slice(part);
    }
    out.freeze()
}

/// A message encoded once for many receivers (a broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The complete uncompressed frame.
    plain: Bytes,
    /// The complete compressed frame (RSV1), when the publisher made one: some subscriber
    /// negotiated permessage-deflate, the message is over the minimum size and it shrinks.
    deflated: Option<Bytes>,
}

impl Prepared {
    /// A text message whose payload is `parts` concatenated.
    pub fn text(parts: &[&[u8]]) -> Self {
        Self {
            plain: frame_from_parts(OpCode::Text, parts),
            deflated: None,
        }
    }

    /// The uncompressed frame.
    pub fn frame(&self) -> &Bytes {
        &self.plain
    }

    /// The compressed frame, if [`Prepared::deflate`] made one.
    pub fn deflated(&self) -> Option<&Bytes> {
        self.deflated.as_ref()
    }

    /// Adds the compressed variant, made with `deflater` (at most once). Returns whether the
    /// compressor ran: not for a message under the deflater's minimum size; it does run for
    /// one that then does not shrink, which keeps no variant.
    pub fn deflate(&mut self, deflater: &mut Deflater) -> bool {
        let payload = &self.plain[server_header_len_of(&self.plain)..];
        if self.deflated.is_some() || payload.len() < deflater.min_size() {
            return false;
        }
        let opcode = if self.plain[0] & 0x0f == OpCode::Binary as u8 {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        self.deflated = deflater.server_frame(opcode, payload);
        true
    }

    /// The frame for a receiver that negotiated `deflate` (or not): the compressed one when
    /// the message has one and the receiver's window admits it (a client that asked for a
    /// window under 32 KiB gets it only for a message no longer than its window); the plain
    /// one otherwise, which is always valid (RFC 7692 §6: RSV1 unset, not compressed).
    pub fn frame_for(&self, deflate: Option<Agreed>) -> &Bytes {
        match (&self.deflated, deflate) {
            (Some(deflated), Some(agreed))
                if agreed.fits(self.plain.len() - server_header_len_of(&self.plain)) =>
            {
                deflated
            }
            _ => &self.plain,
        }
    }

    /// Wire bytes of the frame a receiver gets.
    pub fn len(&self) -> usize {
        self.plain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plain.is_empty()
    }

    /// A copy in memory of the caller's own (one per receiving reactor), both variants, so
    /// that the many reference counts its subscribers take never bounce between cores.
    pub fn localize(&self) -> Self {
        Self {
            plain: Bytes::copy_from_slice(&self.plain),
            deflated: self.deflated.as_deref().map(Bytes::copy_from_slice),
        }
    }
}

/// A plain HTTP/1.1 response for the side endpoints (`/healthz`, `/metrics`, `/publish`).
///
/// Header order: `Content-Type`, `Content-Length`, `Connection`, then `extra_headers`.
/// `Connection` is `keep-alive` or `close` and always sent, so HTTP/1.0 clients persist too.
/// 1xx, 204 and 304 get no `Content-Length` and must have an empty body (RFC 9110 §8.6).
/// The body is always written: for `HEAD`, answer with an empty body.
/// Header names and values come from our code and must not contain CR or LF.
pub fn http_response(
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    http_head(
        &mut out,
        status,
        content_type,
        extra_headers,
        body.len(),
        keep_alive,
    );
    out.extend_from_slice(body);
    out
}

/// Writes a response head (see [`http_response`] for the header order).
pub(crate) fn http_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    content_length: usize,
    keep_alive: bool,
) {
    const VEC_WRITE: &str = "writing to a Vec cannot fail";
    debug_assert!(
        extra_headers
            .iter()
            .all(|(n, v)| !(n.contains(['\r', '\n']) || v.contains(['\r', '\n']))),
        "header injection"
    );
    write!(
        out,
        "HTTP/1.1 {status} {}\r\n",
        crate::handshake::status_text(status)
    )
    .expect(VEC_WRITE);
    write!(out, "Content-Type: {content_type}\r\n").expect(VEC_WRITE);
    // RFC 9110 §8.6: no Content-Length on 1xx and 204; on 304 it would describe another body.
    if matches!(status, 100..=199 | 204 | 304) {
        debug_assert_eq!(content_length, 0, "status {status} has no body");
    } else {
        write!(out, "Content-Length: {content_length}\r\n").expect(VEC_WRITE);
    }
    // RFC 9110 §7.8: an Upgrade field (a 426's) goes with the `upgrade` connection option.
    let upgrade = extra_headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("upgrade"));
    write!(
        out,
        "Connection: {}{}\r\n",
        if upgrade { "upgrade, " } else { "" },
        if keep_alive { "keep-alive" } else { "close" }
    )
    .expect(VEC_WRITE);
    for (name, value) in extra_headers {
        write!(out, "{name}: {value}\r\n").expect(VEC_WRITE);
    }
    out.extend_from_slice(b"\r\n");
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
