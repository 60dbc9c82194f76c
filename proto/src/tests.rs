//! Connection tests: bytes in, events and bytes out, grouped by RFC 6455 section.

use std::time::{Duration, Instant};

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame.
fn client_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame::encode_masked(fin, rsv, opcode, KEY, payload)
}

struct Peer {
    conn: Connection,
    limits: Limits,
    out: OutQueue,
    now: Instant,
}

impl Peer {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            conn: Connection::new(now),
            limits: Limits::default(),
            out: OutQueue::default(),
            now,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut buf = bytes.to_vec();
        let mut rest = &mut buf[..];
        while !rest.is_empty() {
            let before = events.len();
            let n =
                self.conn
                    .handle_bytes(self.now, &self.limits, rest, &mut self.out, &mut events);
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

    fn assert_fails(&mut self, bytes: &[u8], code: CloseCode) {
        let events = self.feed(bytes);
        assert!(
            matches!(events.last(), Some(Event::Failed(e)) if e.close_code() == code),
            "{events:?}"
        );
        let sent = self.sent();
        assert_eq!(
            &sent[..4],
            &[0x88, sent[1], (code.0 >> 8) as u8, code.0 as u8],
            "close frame {sent:x?}"
        );
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

// RFC 6455 §5.1: clients MUST mask.
#[test]
fn unmasked_client_frame_fails() {
    Peer::new().assert_fails(&[0x81, 0x02, b'h', b'i'], CloseCode::PROTOCOL);
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
    let n = p
        .conn
        .handle_bytes(p.now, &p.limits, &mut buf, &mut p.out, &mut events);
    assert_eq!(n, 11, "stops after the message");
    assert_eq!(events, vec![message(OpCode::Text, b"first")]);
    assert!(p.out.is_empty(), "the failure is not seen yet");
    assert!(p.conn.send_message(OpCode::Text, b"first", &mut p.out));
    events.clear();
    p.conn
        .handle_bytes(p.now, &p.limits, &mut buf[n..], &mut p.out, &mut events);
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
        frames in proptest::collection::vec((proptest::bool::ANY, 0u8..16, proptest::collection::vec(proptest::num::u8::ANY, 0..300)), 0..8),
        garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        cuts in proptest::collection::vec(1usize..64, 0..16),
    ) {
        let mut wire: Vec<u8> = frames.iter().flat_map(|(fin, op, payload)| client_frame(*fin, 0, *op, payload)).collect();
        wire.extend(&garbage);
        let mut p = Peer::new();
        p.limits.max_message_size = 1000;
        let mut rest = &wire[..];
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let (piece, tail) = rest.split_at((*cut).min(rest.len()));
            p.feed(piece);
            rest = tail;
        }
        let sent = p.sent();
        let opcodes = server_opcodes(&sent);
        if p.conn.is_closed() {
            proptest::prop_assert_eq!(opcodes.last(), Some(&OpCode::Close), "closed with a close frame last");
            proptest::prop_assert!(p.feed(&client_frame(true, 0, 0x1, b"after")).is_empty());
        } else {
            proptest::prop_assert!(opcodes.iter().all(|&op| op == OpCode::Pong), "only pongs while open");
        }
    }
}

/// The opcodes of a run of complete server frames.
fn server_opcodes(mut bytes: &[u8]) -> Vec<OpCode> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (header, n) = FrameHeader::parse(bytes)
            .expect("valid server frame")
            .expect("complete");
        assert!(header.mask.is_none() && header.fin);
        out.push(header.opcode);
        bytes = &bytes[n + header.len as usize..];
    }
    out
}
