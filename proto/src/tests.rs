//! Connection tests: bytes in, events and bytes out, grouped by RFC 6455 section. Most run
//! the server role (`Peer::new`); the client role's differences are under §5.1 and §5.3.

use std::time::{Duration, Instant};

use super::*;

/// The key of the client frames fed to a server.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The key a client-role `Connection` masks its frames with.
const CLIENT_KEY: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

/// A masked client frame.
fn client_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame::encode_client_raw(fin, rsv, opcode, KEY, payload)
}

/// An unmasked server frame.
fn server_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = crate::outgoing::frame(OpCode::Binary, payload).to_vec();
    out[0] = (u8::from(fin) << 7) | (rsv << 4) | opcode;
    out
}

/// `payload` XORed with `CLIENT_KEY`: what a client-role connection puts on the wire.
fn masked(payload: &[u8]) -> Vec<u8> {
    let mut out = payload.to_vec();
    mask::unmask_scalar(&mut out, CLIENT_KEY, 0);
    out
}

struct Peer {
    conn: Connection,
    limits: Limits,
    budget: Budget,
    inflater: deflate::Inflater,
    out: OutQueue,
    now: Instant,
}

impl Peer {
    /// A server-role connection.
    fn new() -> Self {
        Self::with(Connection::server)
    }

    /// A client-role connection masking with `CLIENT_KEY`.
    fn client() -> Self {
        Self::with(|now| Connection::client(now, || CLIENT_KEY))
    }

    fn with(conn: impl FnOnce(Instant) -> Connection) -> Self {
        let now = Instant::now();
        Self {
            conn: conn(now),
            limits: Limits::default(),
            budget: Budget::new(u64::MAX),
            inflater: deflate::Inflater::default(),
            out: OutQueue::default(),
            now,
        }
    }

    /// A frame as our peer sends it: masked toward a server, unmasked toward a client.
    fn peer_frame(&self, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        match self.conn.role() {
            Role::Server => client_frame(fin, 0, opcode, payload),
            Role::Client => server_frame(fin, 0, opcode, payload),
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut buf = bytes.to_vec();
        let mut rest = &mut buf[..];
        while !rest.is_empty() {
            let before = events.len();
            let n = self.conn.handle_bytes(
                self.now,
                &self.limits,
                &mut self.budget,
                &mut self.inflater,
                rest,
                &mut self.out,
                &mut events,
            );
            let message =
                events.len() > before && matches!(events.last(), Some(Event::Message { .. }));
            assert!(
                n == rest.len() || (n > 0 && message),
                "consumes all, or stops after a message"
            );
            rest = &mut std::mem::take(&mut rest)[n..];
        }
        events
    }

    /// Feeds one byte at a time: every split point must give the same result.
    fn feed_bytewise(&mut self, bytes: &[u8]) -> Vec<Event> {
        bytes.iter().flat_map(|b| self.feed(&[*b])).collect()
    }

    /// Everything queued for the socket, as one byte string.
    fn sent(&mut self) -> Vec<u8> {
        let mut iov = [std::io::IoSlice::new(&[]); 64];
        let n = self.out.fill_iovecs(&mut iov);
        let bytes: Vec<u8> = iov[..n].iter().flat_map(|s| s.to_vec()).collect();
        self.out.advance(bytes.len());
        bytes
    }

    /// The frames queued for the socket, unmasked, checking that each is masked as our role
    /// must: (opcode, payload).
    fn sent_frames(&mut self) -> Vec<(OpCode, Vec<u8>)> {
        let sent = self.sent();
        let mut rest = &sent[..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let (header, n) = FrameHeader::parse(rest)
                .expect("valid frame")
                .expect("complete");
            assert!(header.fin, "we send whole frames");
            assert_eq!(header.mask.is_some(), self.conn.role() == Role::Client);
            let end = n + header.len as usize;
            let mut payload = rest[n..end].to_vec();
            if let Some(key) = header.mask {
                mask::unmask_scalar(&mut payload, key, 0);
            }
            frames.push((header.opcode, payload));
            rest = &rest[end..];
        }
        frames
    }

    fn assert_fails(&mut self, bytes: &[u8], code: CloseCode) {
        let events = self.feed(bytes);
        assert!(
            matches!(events.last(), Some(Event::Failed(e)) if e.close_code() == code),
            "{events:?}"
        );
        let sent = self.sent_frames();
        let [(OpCode::Close, payload)] = &sent[..] else {
            panic!("one close frame: {sent:x?}")
        };
        assert_eq!(&payload[..2], &code.0.to_be_bytes(), "close code");
        assert!(self.conn.is_closed());
    }
}

fn message(opcode: OpCode, data: &[u8]) -> Event {
    Event::Message {
        opcode,
        data: data.to_vec(),
    }
}

// RFC 6455 §5.2, §5.6: data frames.

#[test]
fn text_and_binary_messages() {
    let mut p = Peer::new();
    assert_eq!(
        p.feed(&client_frame(true, 0, 0x1, b"Hello")),
        vec![message(OpCode::Text, b"Hello")]
    );
    assert_eq!(
        p.feed(&client_frame(true, 0, 0x2, &[0, 255])),
        vec![message(OpCode::Binary, &[0, 255])]
    );
    assert_eq!(
        p.feed(&client_frame(true, 0, 0x1, b"")),
        vec![message(OpCode::Text, b"")]
    );
    assert!(p.out.is_empty());
}

#[test]
fn frames_split_at_every_byte_and_batched() {
    let big = vec![b'x'; 70_000];
    let mut wire = client_frame(true, 0, 0x1, b"one");
    wire.extend(client_frame(true, 0, 0x2, &big));
    wire.extend(client_frame(true, 0, 0x1, b""));
    let expected = vec![
        message(OpCode::Text, b"one"),
        message(OpCode::Binary, &big),
        message(OpCode::Text, b""),
    ];
    assert_eq!(Peer::new().feed(&wire), expected);
    assert_eq!(Peer::new().feed_bytewise(&wire), expected);
}

#[test]
fn reserved_bits_without_extension_fail() {
    Peer::new().assert_fails(&client_frame(true, 0b100, 0x1, b"x"), CloseCode::PROTOCOL);
    Peer::new().assert_fails(&client_frame(true, 0b001, 0x9, b""), CloseCode::PROTOCOL);
}

#[test]
fn reserved_opcodes_fail() {
    for op in [0x3, 0x7, 0xb, 0xf] {
        Peer::new().assert_fails(&client_frame(true, 0, op, b""), CloseCode::PROTOCOL);
    }
}

// RFC 6455 §5.1: clients MUST mask, servers MUST NOT; each end fails the other's mistake.

#[test]
fn unmasked_client_frame_fails() {
    Peer::new().assert_fails(&[0x81, 0x02, b'h', b'i'], CloseCode::PROTOCOL);
}

#[test]
fn client_reads_unmasked_server_frames() {
    let mut p = Peer::client();
    // RFC 6455 §5.7: a single-frame unmasked text message, and a fragmented one.
    assert_eq!(
        p.feed(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]),
        vec![message(OpCode::Text, b"Hello")]
    );
    assert_eq!(
        p.feed_bytewise(&[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]),
        vec![message(OpCode::Text, b"Hello")]
    );
    let big = vec![7u8; 300];
    assert_eq!(
        p.feed(&server_frame(true, 0, 0x2, &big)),
        vec![message(OpCode::Binary, &big)]
    );
    assert!(p.out.is_empty());
}

#[test]
fn client_fails_masked_server_frame_with_a_masked_1002() {
    let mut p = Peer::client();
    // RFC 6455 §5.7: "Hello" masked, as only a client may send it.
    let events = p.feed(&[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ]);
    assert_eq!(events, vec![Event::Failed(ProtocolError::MaskedFrame)]);
    let payload = [&[0x03, 0xea][..], b"masked server frame"].concat();
    let expected = [
        &[0x88, 0x80 | payload.len() as u8][..],
        &CLIENT_KEY,
        &masked(&payload),
    ]
    .concat();
    assert_eq!(p.sent(), expected);
    assert!(p.conn.is_closed());
}

#[test]
fn client_applies_the_other_frame_rules_too() {
    for (wire, code) in [
        (server_frame(true, 0b100, 0x1, b"x"), CloseCode::PROTOCOL),
        (server_frame(true, 0, 0x3, b""), CloseCode::PROTOCOL),
        (server_frame(false, 0, 0x9, b""), CloseCode::PROTOCOL),
        (server_frame(true, 0, 0xa, &[0; 126]), CloseCode::PROTOCOL),
        (server_frame(true, 0, 0x0, b"x"), CloseCode::PROTOCOL),
        (
            server_frame(true, 0, 0x8, &[0x03, 0xed]),
            CloseCode::PROTOCOL,
        ),
        (server_frame(true, 0, 0x1, b"\xff"), CloseCode::INVALID_DATA),
    ] {
        Peer::client().assert_fails(&wire, code);
    }
    let mut p = Peer::client();
    p.limits.max_message_size = 100;
    p.assert_fails(&server_frame(true, 0, 0x2, &[0; 101]), CloseCode::TOO_BIG);
}

// RFC 6455 §5.3: a client masks every frame it sends, with a fresh key each time.

#[test]
fn client_masks_its_pong() {
    let mut p = Peer::client();
    assert!(p.feed(&[0x89, 0x03, 0x01, 0x02, 0x03]).is_empty());
    assert_eq!(
        p.sent(),
        [0x8a, 0x83, 0xa1, 0xb2, 0xc3, 0xd4, 0xa0, 0xb0, 0xc0],
        "pong, masked with the client's key"
    );
}

#[test]
fn client_masks_its_close_reply() {
    let mut p = Peer::client();
    let events = p.feed(&[0x88, 0x02, 0x03, 0xe8]);
    assert_eq!(
        events,
        vec![Event::PeerClosed(CloseFrame {
            code: Some(CloseCode::NORMAL),
            reason: String::new()
        })]
    );
    assert_eq!(p.sent(), [0x88, 0x82, 0xa1, 0xb2, 0xc3, 0xd4, 0xa2, 0x5a]);
    assert!(p.conn.is_closed());
}

#[test]
fn client_masks_messages_pings_and_its_own_close() {
    let mut p = Peer::client();
    assert!(p.conn.send_message(OpCode::Text, b"Hello", &mut p.out));
    assert_eq!(
        p.sent(),
        [&[0x81, 0x85][..], &CLIENT_KEY, &masked(b"Hello")].concat()
    );
    let at = p.conn.poll_timeout(&p.limits).expect("idle timer");
    p.conn.handle_timeout(at, &p.limits, &mut p.out);
    assert_eq!(
        p.sent(),
        [0x89, 0x80, 0xa1, 0xb2, 0xc3, 0xd4],
        "keepalive ping"
    );
    p.conn
        .close(at, &p.limits, CloseCode::GOING_AWAY, "bye", &mut p.out);
    assert_eq!(
        p.sent_frames(),
        vec![(OpCode::Close, vec![0x03, 0xe9, b'b', b'y', b'e'])]
    );
}

#[test]
fn client_draws_a_fresh_key_for_each_frame() {
    thread_local! {
        static DRAWN: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
    }
    fn counting_key() -> [u8; 4] {
        let n = DRAWN.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        [n; 4]
    }
    let mut p = Peer::with(|now| Connection::client(now, counting_key));
    p.feed(&[0x89, 0x00, 0x89, 0x00]);
    assert_eq!(
        p.sent(),
        [0x8a, 0x80, 1, 1, 1, 1, 0x8a, 0x80, 2, 2, 2, 2],
        "one key per pong"
    );
}

#[test]
fn huge_64_bit_length_fails() {
    let mut wire = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1];
    wire.extend_from_slice(&KEY);
    Peer::new().assert_fails(&wire, CloseCode::PROTOCOL);
}

// RFC 6455 §10.4: limits on frame and message size.
#[test]
fn frame_and_message_limits_close_with_1009() {
    let mut p = Peer::new();
    p.limits.max_frame_size = 100;
    p.assert_fails(
        &client_frame(true, 0, 0x2, &[0; 101])[..8],
        CloseCode::TOO_BIG,
    );

    let mut p = Peer::new();
    p.limits.max_message_size = 100;
    assert!(p.feed(&client_frame(false, 0, 0x2, &[0; 60])).is_empty());
    p.assert_fails(&client_frame(true, 0, 0x0, &[0; 41]), CloseCode::TOO_BIG);

    let mut p = Peer::new();
    p.limits.max_message_size = 100;
    assert_eq!(
        p.feed(&client_frame(true, 0, 0x2, &[1; 100])).len(),
        1,
        "the limit is inclusive"
    );
}

// RFC 6455 §5.4: fragmentation.

#[test]
fn fragments_with_interleaved_control_frames() {
    let mut p = Peer::new();
    assert!(p.feed(&client_frame(false, 0, 0x1, b"fra")).is_empty());
    assert!(p.feed(&client_frame(true, 0, 0x9, b"ping!")).is_empty());
    assert_eq!(
        p.sent(),
        [&[0x8a, 5][..], b"ping!"].concat(),
        "pong in the middle of a message"
    );
    assert!(p.feed(&client_frame(false, 0, 0x0, b"gme")).is_empty());
    assert_eq!(
        p.feed(&client_frame(true, 0, 0x0, b"nted")),
        vec![message(OpCode::Text, b"fragmented")]
    );
}

#[test]
fn continuation_without_start_fails() {
    Peer::new().assert_fails(&client_frame(true, 0, 0x0, b"x"), CloseCode::PROTOCOL);
}

#[test]
fn new_message_inside_fragmented_message_fails() {
    let mut p = Peer::new();
    p.feed(&client_frame(false, 0, 0x2, b"a"));
    p.assert_fails(&client_frame(true, 0, 0x1, b"b"), CloseCode::PROTOCOL);
}

#[test]
fn returns_after_each_message_so_replies_keep_their_order() {
    let mut p = Peer::new();
    let mut wire = client_frame(true, 0, 0x1, b"first");
    wire.extend(client_frame(true, 0, 0x5, b""));
    let mut buf = wire.clone();
    let mut events = Vec::new();
    let n = p.conn.handle_bytes(
        p.now,
        &p.limits,
        &mut p.budget,
        &mut p.inflater,
        &mut buf,
        &mut p.out,
        &mut events,
    );
    assert_eq!(n, 11, "stops after the message");
    assert_eq!(events, vec![message(OpCode::Text, b"first")]);
    assert!(p.out.is_empty(), "the failure is not seen yet");
    assert!(p.conn.send_message(OpCode::Text, b"first", &mut p.out));
    events.clear();
    p.conn.handle_bytes(
        p.now,
        &p.limits,
        &mut p.budget,
        &mut p.inflater,
        &mut buf[n..],
        &mut p.out,
        &mut events,
    );
    assert!(matches!(
        events[..],
        [Event::Failed(ProtocolError::ReservedOpcode(5))]
    ));
    let sent = p.sent();
    assert_eq!(
        &sent[..7],
        &[0x81, 5, b'f', b'i', b'r', b's', b't'],
        "echo before the close"
    );
    assert_eq!(sent[7], 0x88);
}

// RFC 6455 §5.5: control frames.

#[test]
fn fragmented_or_long_control_frames_fail() {
    Peer::new().assert_fails(&client_frame(false, 0, 0x9, b""), CloseCode::PROTOCOL);
    Peer::new().assert_fails(&client_frame(true, 0, 0x9, &[0; 126]), CloseCode::PROTOCOL);
}

#[test]
fn ping_gets_pong_with_same_payload_and_pong_is_ignored() {
    let mut p = Peer::new();
    assert!(p.feed(&client_frame(true, 0, 0x9, &[1, 2, 3])).is_empty());
    assert_eq!(p.sent(), vec![0x8a, 3, 1, 2, 3]);
    assert!(p
        .feed(&client_frame(true, 0, 0xa, b"unsolicited"))
        .is_empty());
    assert!(p.out.is_empty());
    assert!(p
        .feed_bytewise(&client_frame(true, 0, 0x9, &[9; 125]))
        .is_empty());
    assert_eq!(p.sent().len(), 2 + 125);
}

// RFC 6455 §8.1: UTF-8 in text messages.

#[test]
fn invalid_utf8_fails_at_first_bad_fragment() {
    let mut p = Peer::new();
    p.feed(&client_frame(false, 0, 0x1, "κόσμε".as_bytes()));
    // The message is not finished, yet the bad fragment fails the connection.
    p.assert_fails(
        &client_frame(
            false,
            0,
            0x0,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80",
        ),
        CloseCode::INVALID_DATA,
    );
}

#[test]
fn invalid_utf8_fails_before_the_frame_ends() {
    let mut p = Peer::new();
    let wire = client_frame(true, 0, 0x1, b"abc\xff and much more text to follow");
    assert!(p
        .feed(&wire[..10])
        .iter()
        .any(|e| matches!(e, Event::Failed(ProtocolError::InvalidUtf8))));
}

#[test]
fn utf8_sequence_split_across_fragments_is_valid() {
    let mut p = Peer::new();
    let euro = "€".as_bytes();
    p.feed(&client_frame(false, 0, 0x1, &euro[..1]));
    p.feed(&client_frame(false, 0, 0x0, &euro[1..2]));
    assert_eq!(
        p.feed(&client_frame(true, 0, 0x0, &euro[2..])),
        vec![message(OpCode::Text, euro)]
    );
}

#[test]
fn truncated_utf8_at_message_end_fails() {
    Peer::new().assert_fails(
        &client_frame(true, 0, 0x1, b"\xe2\x82"),
        CloseCode::INVALID_DATA,
    );
}

#[test]
fn binary_is_not_validated() {
    assert_eq!(
        Peer::new().feed(&client_frame(true, 0, 0x2, b"\xff")),
        vec![message(OpCode::Binary, b"\xff")]
    );
}

// RFC 6455 §5.5.1, §7: closing.

#[test]
fn peer_close_is_echoed_and_closes() {
    let mut p = Peer::new();
    let events = p.feed(&client_frame(true, 0, 0x8, &[0x03, 0xe8, b'b', b'y', b'e']));
    assert_eq!(
        events,
        vec![Event::PeerClosed(CloseFrame {
            code: Some(CloseCode::NORMAL),
            reason: "bye".into()
        })]
    );
    assert_eq!(p.sent(), vec![0x88, 2, 0x03, 0xe8]);
    assert!(p.conn.is_closed());
    assert!(
        p.feed(&client_frame(true, 0, 0x1, b"late")).is_empty(),
        "nothing is read after the close"
    );
}

#[test]
fn empty_close_gets_empty_close() {
    let mut p = Peer::new();
    p.feed(&client_frame(true, 0, 0x8, b""));
    assert_eq!(p.sent(), vec![0x88, 0]);
    assert!(p.conn.is_closed());
}

#[test]
fn invalid_close_payloads_fail() {
    Peer::new().assert_fails(&client_frame(true, 0, 0x8, &[0x03]), CloseCode::PROTOCOL);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        Peer::new().assert_fails(
            &client_frame(true, 0, 0x8, &code.to_be_bytes()),
            CloseCode::PROTOCOL,
        );
    }
    Peer::new().assert_fails(
        &client_frame(true, 0, 0x8, &[0x03, 0xe8, 0xff]),
        CloseCode::INVALID_DATA,
    );
}

#[test]
fn valid_close_codes_are_accepted() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut p = Peer::new();
        p.feed(&client_frame(true, 0, 0x8, &code.to_be_bytes()));
        assert_eq!(p.sent(), [&[0x88, 2][..], &code.to_be_bytes()].concat());
    }
}

#[test]
fn server_close_waits_for_reply_then_times_out() {
    let mut p = Peer::new();
    p.conn.close(
        p.now,
        &p.limits,
        CloseCode::GOING_AWAY,
        "draining",
        &mut p.out,
    );
    assert_eq!(
        p.sent(),
        [&[0x88, 10, 0x03, 0xe9][..], b"draining"].concat()
    );
    assert!(!p.conn.is_open() && !p.conn.is_closed());
    assert!(
        !p.conn.send_message(OpCode::Text, b"no", &mut p.out),
        "no data after our close"
    );
    assert!(p.feed(&client_frame(true, 0, 0x1, b"discarded")).is_empty());
    let deadline = p.conn.poll_timeout(&p.limits).expect("close timer");
    assert_eq!(deadline, p.now + p.limits.close_timeout);
    p.conn
        .handle_timeout(deadline - Duration::from_millis(1), &p.limits, &mut p.out);
    assert!(!p.conn.is_closed());
    p.conn.handle_timeout(deadline, &p.limits, &mut p.out);
    assert!(p.conn.is_closed());
    assert!(
        p.out.is_empty(),
        "no reply is sent to a peer that never answered"
    );
}

#[test]
fn server_close_completed_by_peer_reply() {
    let mut p = Peer::new();
    p.conn
        .close(p.now, &p.limits, CloseCode::NORMAL, "", &mut p.out);
    p.sent();
    let events = p.feed(&client_frame(true, 0, 0x8, &[0x03, 0xe8]));
    assert!(matches!(events[..], [Event::PeerClosed(_)]));
    assert!(p.conn.is_closed());
    assert!(p.out.is_empty(), "the reply to our close is not answered");
}

// Found by fuzz/connection: the UTF-8 state of a text message cut short by our close
// outlived it, so the peer finishing that message correctly failed the connection (1007)
// instead of the close handshake completing.
#[test]
fn server_close_forgets_a_text_message_in_progress() {
    let mut p = Peer::new();
    let e_acute = "\u{e9}".as_bytes();
    assert!(p
        .feed(&client_frame(false, 0, 0x1, &e_acute[..1]))
        .is_empty());
    p.conn
        .close(p.now, &p.limits, CloseCode::GOING_AWAY, "", &mut p.out);
    p.sent();
    assert!(p
        .feed(&client_frame(true, 0, 0x0, &e_acute[1..]))
        .is_empty());
    let events = p.feed(&client_frame(true, 0, 0x8, &[0x03, 0xe9]));
    assert_eq!(
        events,
        [Event::PeerClosed(CloseFrame {
            code: Some(CloseCode::GOING_AWAY),
            reason: String::new()
        })]
    );
    assert!(p.conn.is_closed());
    assert!(p.out.is_empty());
}

// RFC 6455 §5.5.2: keepalive pings from the server.

#[test]
fn idle_connection_is_pinged_then_closed_without_pong() {
    let mut p = Peer::new();
    let idle = p.limits.idle_timeout.expect("default pings");
    let at = p.conn.poll_timeout(&p.limits).expect("idle timer");
    assert_eq!(at, p.now + idle);
    p.conn.handle_timeout(at, &p.limits, &mut p.out);
    assert_eq!(p.sent(), vec![0x89, 0]);
    let deadline = p.conn.poll_timeout(&p.limits).expect("pong deadline");
    assert_eq!(deadline, at + p.limits.pong_timeout);
    p.conn.handle_timeout(deadline, &p.limits, &mut p.out);
    assert!(p.conn.is_closed());
    assert_eq!(&p.sent()[..4], &[0x88, 14, 0x03, 0xf0]);
}

#[test]
fn any_traffic_answers_the_ping() {
    let mut p = Peer::new();
    let at = p.conn.poll_timeout(&p.limits).expect("idle timer");
    p.conn.handle_timeout(at, &p.limits, &mut p.out);
    p.now = at + Duration::from_secs(1);
    p.feed(&client_frame(true, 0, 0xa, b""));
    assert_eq!(
        p.conn.poll_timeout(&p.limits),
        Some(p.now + p.limits.idle_timeout.unwrap())
    );
}

// Memory: the role and a client's key source cost a server connection nothing, the budget
// reservation (issue 9 item 8) 8 bytes, won back by boxing the control payload (16).
#[test]
#[cfg(target_pointer_width = "64")]
fn connection_stays_small() {
    assert!(std::mem::size_of::<Connection>() <= 96);
}

// Output queue bookkeeping.

#[test]
fn out_queue_advances_across_frames() {
    let mut q = OutQueue::default();
    q.push(bytes::Bytes::from_static(b"abc"));
    q.push(bytes::Bytes::from_static(b"defg"));
    assert_eq!(q.len_bytes(), 7);
    q.advance(4);
    assert_eq!(q.len_bytes(), 3);
    let mut iov = [std::io::IoSlice::new(&[]); 4];
    assert_eq!(q.fill_iovecs(&mut iov), 1);
    assert_eq!(&*iov[0], b"efg");
    q.advance(3);
    assert!(q.is_empty());
}

// No input panics: arbitrary bytes, split anywhere, end either open or closed with a close
// frame queued, and a closed connection reads nothing more.
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 512 }))]

    #[test]
    fn arbitrary_bytes_never_panic(
        client in proptest::bool::ANY,
        frames in proptest::collection::vec((proptest::bool::ANY, 0u8..16, proptest::collection::vec(proptest::num::u8::ANY, 0..300)), 0..8),
        garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        cuts in proptest::collection::vec(1usize..64, 0..16),
    ) {
        // Frames as the peer of our role sends them, then anything.
        let mut p = if client { Peer::client() } else { Peer::new() };
        let mut wire: Vec<u8> = frames.iter().flat_map(|(fin, op, payload)| p.peer_frame(*fin, *op, payload)).collect();
        wire.extend(&garbage);
        p.limits.max_message_size = 1000;
        let mut rest = &wire[..];
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let (piece, tail) = rest.split_at((*cut).min(rest.len()));
            p.feed(piece);
            rest = tail;
        }
        // Masked as our role must, whole frames only.
        let opcodes: Vec<OpCode> = p.sent_frames().into_iter().map(|(op, _)| op).collect();
        if p.conn.is_closed() {
            proptest::prop_assert_eq!(opcodes.last(), Some(&OpCode::Close), "closed with a close frame last");
            proptest::prop_assert!(p.feed(&p.peer_frame(true, 0x1, b"after")).is_empty());
        } else {
            proptest::prop_assert!(opcodes.iter().all(|&op| op == OpCode::Pong), "only pongs while open");
        }
    }
}

// ── Memory budget for partial messages (issue 9 item 8) ─────────────────────────────────

#[test]
fn budget_is_taken_at_the_header_and_given_back_with_the_message() {
    let mut p = Peer::new();
    p.budget = Budget::new(100);
    // A 60-byte frame of an unfinished message: taken before its payload arrives.
    let first = client_frame(false, 0, 0x2, &[7; 60]);
    assert!(
        p.feed(&first[..6]).is_empty(),
        "2 bytes of header and the mask key"
    );
    assert_eq!(p.budget.used(), 60, "taken when the header is complete");
    assert_eq!(p.conn.reserved(), 60);
    assert!(p.feed(&first[6..]).is_empty());
    let events = p.feed(&client_frame(true, 0, 0x0, &[8; 30]));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(p.budget.used(), 0, "given back with the message");
    assert_eq!(p.conn.reserved(), 0);
}

#[test]
fn frame_over_the_budget_fails_with_1013_before_storing_anything() {
    let mut p = Peer::new();
    p.budget = Budget::new(100);
    p.feed(&client_frame(false, 0, 0x2, &[1; 60]));
    // The next frame's header says 50 more: 110 > 100.
    let events = p.feed(&client_frame(true, 0, 0x0, &[2; 50])[..6]);
    assert!(matches!(
        events[..],
        [Event::Failed(ProtocolError::OverBudget)]
    ));
    assert_eq!(
        p.budget.used(),
        0,
        "the failed connection gave back what it held"
    );
    let sent = p.sent();
    assert_eq!(&sent[..4], &[0x88, sent[1], 0x03, 0xf5], "close 1013");
}

#[test]
fn budget_is_shared_and_a_dropped_connection_gives_back_its_part() {
    let mut budget = Budget::new(1000);
    let mut a = Peer::new();
    let mut b = Peer::new();
    let feed = |p: &mut Peer, bytes: &[u8], budget: &mut Budget| {
        let mut buf = bytes.to_vec();
        let mut events = Vec::new();
        p.conn.handle_bytes(
            p.now,
            &p.limits,
            budget,
            &mut p.inflater,
            &mut buf,
            &mut p.out,
            &mut events,
        );
        events
    };
    assert!(feed(&mut a, &client_frame(false, 0, 0x2, &[0; 600]), &mut budget).is_empty());
    let events = feed(&mut b, &client_frame(false, 0, 0x2, &[0; 600]), &mut budget);
    assert!(matches!(
        events[..],
        [Event::Failed(ProtocolError::OverBudget)]
    ));
    assert_eq!(budget.used(), 600);
    // `a` goes away mid-message: its owner gives its part back.
    budget.give(a.conn.reserved());
    assert_eq!(budget.used(), 0);
    let mut c = Peer::new();
    assert!(feed(&mut c, &client_frame(false, 0, 0x2, &[0; 600]), &mut budget).is_empty());
}

#[test]
fn data_after_our_close_is_not_charged() {
    let mut p = Peer::new();
    p.budget = Budget::new(100);
    p.conn
        .close(p.now, &p.limits, CloseCode::GOING_AWAY, "bye", &mut p.out);
    p.feed(&client_frame(true, 0, 0x2, &[0; 90]));
    p.feed(&client_frame(true, 0, 0x2, &[0; 90]));
    assert_eq!(p.budget.used(), 0);
}

// RFC 7692: permessage-deflate on a connection.

fn deflating() -> Peer {
    Peer::with(|now| {
        Connection::server(now).with_deflate(deflate::negotiate(&["permessage-deflate"]))
    })
}

fn compressed(payload: &[u8]) -> Vec<u8> {
    deflate::Deflater::new(6, 0)
        .compress(payload)
        .expect("compressible")
        .to_vec()
}

#[test]
fn compressed_messages_whole_fragmented_and_split_at_every_byte() {
    let text = "{\"topic\":\"a\",\"data\":\"é".repeat(40) + "\"}";
    let body = compressed(text.as_bytes());
    let mut wire = client_frame(true, 0b100, 0x1, &body);
    // RSV1 on the first frame only; the continuation carries the rest of the stream.
    let (a, b) = body.split_at(body.len() / 2);
    wire.extend(client_frame(false, 0b100, 0x2, a));
    wire.extend(client_frame(true, 0, 0x0, b));
    // Uncompressed messages still work beside compressed ones.
    wire.extend(client_frame(true, 0, 0x1, b"plain"));
    let expected = vec![
        message(OpCode::Text, text.as_bytes()),
        message(OpCode::Binary, text.as_bytes()),
        message(OpCode::Text, b"plain"),
    ];
    assert_eq!(deflating().feed(&wire), expected);
    assert_eq!(deflating().feed_bytewise(&wire), expected);
}

#[test]
fn rsv1_where_it_does_not_belong_fails_with_1002() {
    let body = compressed(&[b'a'; 100]);
    // Without the extension.
    Peer::new().assert_fails(&client_frame(true, 0b100, 0x1, &body), CloseCode::PROTOCOL);
    // On control frames and continuations.
    deflating().assert_fails(&client_frame(true, 0b100, 0x9, b""), CloseCode::PROTOCOL);
    deflating().assert_fails(&client_frame(true, 0b100, 0x8, b""), CloseCode::PROTOCOL);
    let mut p = deflating();
    assert!(p.feed(&client_frame(false, 0, 0x1, b"a")).is_empty());
    p.assert_fails(&client_frame(true, 0b100, 0x0, b"b"), CloseCode::PROTOCOL);
    // RSV2 and RSV3 stay reserved.
    deflating().assert_fails(&client_frame(true, 0b110, 0x1, &body), CloseCode::PROTOCOL);
}

#[test]
fn hostile_compressed_messages_fail_with_a_reason() {
    // A bomb: 4 MiB of zeros in ≈ 4 KiB; the limit holds for the inflated size.
    let mut p = deflating();
    p.limits.max_message_size = 64 << 10;
    p.assert_fails(
        &client_frame(true, 0b100, 0x2, &compressed(&vec![0; 4 << 20])),
        CloseCode::TOO_BIG,
    );
    // Garbage, a block that never ends, bad UTF-8 inside.
    deflating().assert_fails(
        &client_frame(true, 0b100, 0x2, &[0xff; 8]),
        CloseCode::INVALID_DATA,
    );
    deflating().assert_fails(
        &client_frame(true, 0b100, 0x2, &[0x00, 100, 0, !100, 0xff, b'a']),
        CloseCode::INVALID_DATA,
    );
    let mut bad = vec![b'a'; 100];
    bad.extend([0xc3, 0x28]);
    deflating().assert_fails(
        &client_frame(true, 0b100, 0x1, &compressed(&bad)),
        CloseCode::INVALID_DATA,
    );
    // The reason says what was wrong.
    let mut p = deflating();
    p.feed(&client_frame(true, 0b100, 0x2, &[0xff; 8]));
    let sent = p.sent();
    assert!(
        String::from_utf8_lossy(&sent).contains("invalid compressed data"),
        "{sent:x?}"
    );
}

/// Frames a server sends to a connection: (rsv, opcode, payload as sent).
fn raw_frames(sent: &[u8]) -> Vec<(u8, OpCode, Vec<u8>)> {
    let mut rest = sent;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (h, n) = FrameHeader::parse(rest).unwrap().unwrap();
        let end = n + h.len as usize;
        frames.push((h.rsv, h.opcode, rest[n..end].to_vec()));
        rest = &rest[end..];
    }
    frames
}

#[test]
fn replies_and_broadcasts_go_compressed_only_where_negotiated() {
    let mut deflater = deflate::Deflater::new(6, 64);
    let mut inflater = deflate::Inflater::default();
    let big = "{\"price\":42000.5,\"side\":\"buy\"}".repeat(20);
    let small = b"{\"ok\":true}";
    let mut plain = Peer::new();
    let mut zipped = deflating();
    let mut narrow = Peer::with(|now| {
        Connection::server(now).with_deflate(deflate::negotiate(&[
            "permessage-deflate; server_max_window_bits=9",
        ]))
    });
    for p in [&mut plain, &mut zipped, &mut narrow] {
        assert!(p
            .conn
            .send_compressible(OpCode::Text, big.as_bytes(), &mut deflater, &mut p.out));
        assert!(p
            .conn
            .send_compressible(OpCode::Text, small, &mut deflater, &mut p.out));
    }
    let mut prepared = Prepared::text(&[big.as_bytes()]);
    // Not compressed by its publisher (no subscriber had negotiated it): plain for all.
    assert!(zipped.conn.send_prepared(&prepared, &mut zipped.out));
    assert!(prepared.deflate(&mut deflater), "the compressor ran");
    assert!(!prepared.deflate(&mut deflater), "once");
    let other_reactor = prepared.localize();
    assert_eq!(other_reactor, prepared, "both variants travel");
    assert!(plain.conn.send_prepared(&prepared, &mut plain.out));
    assert!(zipped.conn.send_prepared(&other_reactor, &mut zipped.out));
    assert!(narrow.conn.send_prepared(&prepared, &mut narrow.out));
    let mut tiny = Prepared::text(&[small]);
    assert!(
        !tiny.deflate(&mut deflater),
        "under the minimum size: not even tried"
    );
    assert_eq!(tiny.deflated(), None);

    let plain = raw_frames(&plain.sent());
    assert!(plain.iter().all(|(rsv, _, _)| *rsv == 0));
    assert_eq!(plain[0].2, big.as_bytes());
    assert_eq!(plain[2].2, big.as_bytes());

    let zipped = raw_frames(&zipped.sent());
    assert_eq!(
        zipped.iter().map(|f| f.0).collect::<Vec<_>>(),
        [0b100, 0, 0, 0b100]
    );
    assert_eq!(zipped[2].2, big.as_bytes());
    for at in [0, 3] {
        assert!(zipped[at].2.len() < big.len() / 4);
        assert_eq!(
            inflater.inflate(&zipped[at].2, 1 << 20, None).unwrap(),
            big.as_bytes()
        );
    }
    assert_eq!(zipped[1].2, small, "under the minimum size: plain");

    // A window of 512 bytes is smaller than the 600-byte message: plain.
    let narrow = raw_frames(&narrow.sent());
    assert!(narrow.iter().all(|(rsv, _, _)| *rsv == 0), "{narrow:?}");
}
