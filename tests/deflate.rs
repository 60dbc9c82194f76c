//! permessage-deflate (RFC 7692) end to end, on both drivers: negotiation, compressed echo,
//! a broadcast compressed once, on its publisher's reactor, for mixed subscribers on
//! several reactors, and hostile compressed input. The
//! client is a raw stream: frames are built and read here, byte for byte, so that RSV1 and
//! what the server puts on the wire are checked, not hidden by a library. (Independent
//! clients, Python `websockets`, Node `ws` and Chromium, are in tests/interop/.)

mod util;

use std::io::Write;
use std::net::TcpStream;

use util::*;
use wsgate::metrics::ReactorMetrics;
use wsgate_proto::deflate::{self, Agreed, Deflater, Inflater};
use wsgate_proto::frame::encode_client_raw;

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// Reads one server frame as it is on the wire: (rsv, opcode, payload). Unmasked and final.
fn read_raw(stream: &mut TcpStream) -> (u8, u8, Vec<u8>) {
    let (header, payload) = read_wire_frame(stream);
    assert!(header.mask.is_none() && header.fin, "{header:?}");
    (header.rsv, header.opcode as u8, payload)
}

/// A data message's payload, inflated when RSV1 says it is compressed.
fn payload(frame: &(u8, u8, Vec<u8>)) -> Vec<u8> {
    match frame.0 {
        0 => frame.2.clone(),
        deflate::RSV1 => Inflater::default()
            .inflate(&frame.2, 1 << 24, None)
            .expect("valid compressed data"),
        rsv => panic!("rsv {rsv:#b}"),
    }
}

fn compressed(data: &[u8]) -> Vec<u8> {
    Deflater::new(6, 0)
        .compress(data)
        .expect("compressible")
        .to_vec()
}

/// Realistic JSON of about `n` bytes.
fn json(n: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() + 80 < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"symbol\":\"ETH-USD\",\"price\":{}.{},\"qty\":{}}},",
            3000 + i * 13 % 500,
            i % 10,
            i % 7 + 1
        ));
        i += 1;
    }
    s.push_str("{\"end\":true}]");
    s
}

/// Reads the close frame the server sends and returns (code, reason).
fn read_close(stream: &mut TcpStream) -> (u16, String) {
    loop {
        let (rsv, opcode, payload) = read_raw(stream);
        if opcode == 0x8 {
            assert_eq!(rsv, 0);
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
        }
    }
}

fn publish(server: &TestServer, topic: &str, body: &str) {
    let response = http(
        server,
        &format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(response.status, 202, "{}", response.body_text());
}

/// Connects on `path` (offering `offer`) until there is one connection on each of the
/// server's two reactors, told apart by which reactor counted the handshake; the others are
/// closed. Returns them in reactor order.
fn one_per_reactor(server: &TestServer, path: &str, offer: Option<&str>) -> Vec<TcpStream> {
    let metrics = &server.server().shared().metrics;
    let handshakes = || -> Vec<u64> {
        metrics
            .iter()
            .map(|m| ReactorMetrics::get(&m.handshakes_ok))
            .collect()
    };
    let mut slots: Vec<Option<TcpStream>> = vec![None, None];
    for _ in 0..64 {
        let before = handshakes();
        let (s, _) = upgrade_offering(server, path, offer);
        let after = handshakes();
        let reactor = (0..2)
            .find(|&r| after[r] > before[r])
            .expect("a reactor counted it");
        if slots[reactor].is_none() {
            slots[reactor] = Some(s);
        }
        if slots.iter().all(Option::is_some) {
            return slots.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("64 connections all landed on one reactor");
}

for_each_driver! {
    fn a_publish_is_compressed_once_by_the_reactor_it_was_published_on(io: IoBackend) {
        let server = TestServer::start(io, |c| c.pubsub.client_publish = Some(vec!["*".into()]));
        let shared = server.server().shared();
        let compressions = || -> Vec<u64> {
            shared
                .metrics
                .iter()
                .map(|m| ReactorMetrics::get(&m.deflate_compressions))
                .collect()
        };
        // Subscribers of "t" with and without deflate, and of "p" without, on both
        // reactors; a publisher (no subscriptions) on each.
        let mut zipped = one_per_reactor(&server, "/ws?subscribe=t", Some(deflate::CLIENT_OFFER));
        let mut plain = one_per_reactor(&server, "/ws?subscribe=t,p", None);
        let mut publishers = one_per_reactor(&server, "/ws", None);
        assert_eq!(shared.fanout.interest("t"), (0b11, 0b11));
        assert_eq!(shared.fanout.interest("p"), (0b11, 0));
        let data = json(1000);
        let delivery = |topic: &str| format!("{{\"topic\":\"{topic}\",\"data\":{data}}}");
        let publish_op = |topic: &str| {
            let op = format!("{{\"op\":\"publish\",\"topic\":\"{topic}\",\"data\":{data}}}");
            encode_client_raw(true, 0, 0x1, KEY, op.as_bytes())
        };
        let mut wire = Vec::new();
        for (from, expected) in [(0, [1, 0]), (1, [1, 1])] {
            publishers[from].write_all(&publish_op("t")).unwrap();
            // Every deflate subscriber, whichever reactor it is on, gets the same frame.
            for s in &mut zipped {
                let frame = read_raw(s);
                assert_eq!(frame.0, deflate::RSV1);
                assert_eq!(payload(&frame), delivery("t").as_bytes());
                wire.push(frame.2);
            }
            assert_eq!(wire[wire.len() - 1], wire[wire.len() - 2]);
            for s in &mut plain {
                assert_eq!(read_raw(s), (0, 0x1, delivery("t").into_bytes()));
            }
            // Counted before the deliveries left: once, by the publisher's reactor.
            assert_eq!(compressions(), expected, "published on reactor {from}");
        }
        // A topic without deflate subscribers is never compressed, nor is an HTTP publish
        // of it; an HTTP publish of "t" is compressed once, by the reactor it arrived on.
        publishers[0].write_all(&publish_op("p")).unwrap();
        publish(&server, "p", &data);
        for _ in 0..2 {
            for s in &mut plain {
                assert_eq!(read_raw(s), (0, 0x1, delivery("p").into_bytes()));
            }
        }
        assert_eq!(compressions(), [1, 1]);
        publish(&server, "t", &data);
        for s in &mut zipped {
            assert_eq!(read_raw(s).0, deflate::RSV1);
        }
        for s in &mut plain {
            assert_eq!(read_raw(s).0, 0);
        }
        assert_eq!(compressions().iter().sum::<u64>(), 3);
        // Once the deflate subscribers are gone, "t" goes plain and uncompressed.
        drop(zipped);
        wait_until("the deflate subscribers to leave", || shared.fanout.interest("t") == (0b11, 0));
        publishers[1].write_all(&publish_op("t")).unwrap();
        for s in &mut plain {
            assert_eq!(read_raw(s), (0, 0x1, delivery("t").into_bytes()));
        }
        assert_eq!(compressions().iter().sum::<u64>(), 3);
        let text = http(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body_text();
        assert!(text.contains("wsgate_deflate_compressions_total{reactor=\"1\"} "), "{text}");
    }

    fn negotiation_follows_the_offer_and_the_setting(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        // Chromium's offer; Python websockets' offer with a window; a bad offer, then a good one.
        let (_, chromium) = upgrade_offering(&server, "/echo", Some("permessage-deflate; client_max_window_bits"));
        assert_eq!(chromium, Some(Agreed { server_max_window_bits: None }));
        let (_, windowed) = upgrade_offering(
            &server,
            "/echo",
            Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits"),
        );
        assert_eq!(windowed, Some(Agreed { server_max_window_bits: Some(10) }));
        let (_, second) = upgrade_offering(
            &server,
            "/ws",
            Some("permessage-deflate; server_max_window_bits=7, permessage-deflate; server_no_context_takeover"),
        );
        assert_eq!(second, Some(Agreed { server_max_window_bits: None }));
        let (_, none) = upgrade_offering(&server, "/echo", Some("permessage-deflate; bogus"));
        assert_eq!(none, None);
        let (_, none) = upgrade_offering(&server, "/echo", None);
        assert_eq!(none, None);

        let off = TestServer::start(io, |c| c.deflate.enabled = Some(false));
        let (_, none) = upgrade_offering(&off, "/echo", Some(deflate::CLIENT_OFFER));
        assert_eq!(none, None);
    }

    fn echo_replies_compressed_above_the_minimum_size(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let (mut s, agreed) = upgrade_offering(&server, "/echo", Some(deflate::CLIENT_OFFER));
        assert!(agreed.is_some());
        let big = json(2000);
        // Compressed in, compressed out.
        s.write_all(&encode_client_raw(true, 0b100, 0x1, KEY, &compressed(big.as_bytes()))).unwrap();
        let reply = read_raw(&mut s);
        assert_eq!((reply.0, reply.1), (deflate::RSV1, 0x1));
        assert!(reply.2.len() < big.len() / 3, "{} bytes", reply.2.len());
        assert_eq!(payload(&reply), big.as_bytes());
        // Plain in, compressed out; a fragmented compressed message.
        s.write_all(&encode_client_raw(true, 0, 0x2, KEY, big.as_bytes())).unwrap();
        let reply = read_raw(&mut s);
        assert_eq!((reply.0, reply.1), (deflate::RSV1, 0x2));
        assert_eq!(payload(&reply), big.as_bytes());
        let body = compressed(big.as_bytes());
        let (a, b) = body.split_at(7);
        s.write_all(&encode_client_raw(false, 0b100, 0x1, KEY, a)).unwrap();
        s.write_all(&encode_client_raw(true, 0, 0x0, KEY, b)).unwrap();
        assert_eq!(payload(&read_raw(&mut s)), big.as_bytes());
        // Under the minimum size (128 bytes): plain, whichever way it came.
        s.write_all(&encode_client_raw(true, 0b100, 0x1, KEY, &compressed(&[b'x'; 100]))).unwrap();
        assert_eq!(read_raw(&mut s), (0, 0x1, vec![b'x'; 100]));
    }

    fn a_broadcast_reaches_mixed_subscribers_in_their_variant(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        // Two reactors: several of each kind, so that both hold some.
        let mut zipped: Vec<TcpStream> = (0..4)
            .map(|_| upgrade_offering(&server, "/ws?subscribe=t", Some(deflate::CLIENT_OFFER)).0)
            .collect();
        let mut plain: Vec<TcpStream> =
            (0..4).map(|_| upgrade_offering(&server, "/ws?subscribe=t", None).0).collect();
        let narrow_offer = "permessage-deflate; server_max_window_bits=9";
        let mut narrow: Vec<TcpStream> = (0..2)
            .map(|_| upgrade_offering(&server, "/ws?subscribe=t", Some(narrow_offer)).0)
            .collect();
        for size in [1000, 300, 50] {
            let data = json(size);
            let expected = format!("{{\"topic\":\"t\",\"data\":{data}}}");
            publish(&server, "t", &data);
            let mut wire = None;
            for s in &mut zipped {
                let frame = read_raw(s);
                assert_eq!(frame.1, 0x1);
                assert_eq!(payload(&frame), expected.as_bytes());
                // Under the minimum size plain; else compressed, the same bytes for everyone.
                assert_eq!(frame.0 == deflate::RSV1, expected.len() >= 128, "{size}");
                assert_eq!(*wire.get_or_insert(frame.2.clone()), frame.2);
            }
            for s in &mut plain {
                assert_eq!(read_raw(s), (0, 0x1, expected.clone().into_bytes()));
            }
            // A 512-byte window: compressed only when the message fits in it.
            for s in &mut narrow {
                let frame = read_raw(s);
                assert_eq!(payload(&frame), expected.as_bytes());
                let fits = expected.len() <= 512 && expected.len() >= 128;
                assert_eq!(frame.0 == deflate::RSV1, fits, "{size}");
            }
        }
    }

    fn control_json_is_read_from_the_inflated_message(io: IoBackend) {
        let server = TestServer::start(io, |c| c.pubsub.client_publish = Some(vec!["*".into()]));
        let (mut s, agreed) = upgrade_offering(&server, "/ws", Some(deflate::CLIENT_OFFER));
        assert!(agreed.is_some());
        let op = "{\"op\":\"subscribe\",\"topic\":\"news\",\"id\":\"sub-1\"}";
        s.write_all(&encode_client_raw(true, 0b100, 0x1, KEY, &compressed(op.as_bytes()))).unwrap();
        let ok = String::from_utf8(payload(&read_raw(&mut s))).unwrap();
        assert!(ok.contains("ok") && ok.contains("sub-1"), "{ok}");
        let data = json(600);
        let op = format!("{{\"op\":\"publish\",\"topic\":\"news\",\"data\":{data}}}");
        s.write_all(&encode_client_raw(true, 0b100, 0x1, KEY, &compressed(op.as_bytes()))).unwrap();
        let delivery = read_raw(&mut s);
        assert_eq!(delivery.0, deflate::RSV1);
        assert_eq!(
            String::from_utf8(payload(&delivery)).unwrap(),
            format!("{{\"topic\":\"news\",\"data\":{data}}}")
        );
    }

    fn hostile_compressed_input_closes_with_a_reason(io: IoBackend) {
        let server = TestServer::start(io, |c| c.limits.max_message_size = Some(1 << 20));
        let case = |frame: Vec<u8>, code: u16, reason: &str| {
            let (mut s, agreed) = upgrade_offering(&server, "/echo", Some(deflate::CLIENT_OFFER));
            assert!(agreed.is_some());
            s.write_all(&frame).unwrap();
            assert_eq!(read_close(&mut s), (code, reason.to_owned()));
            assert_closed(&mut s);
        };
        // A bomb: 16 MiB of zeros in ≈ 16 KiB, against a 1 MiB limit.
        let bomb = compressed(&vec![0; 16 << 20]);
        assert!(bomb.len() < 20_000);
        case(encode_client_raw(true, 0b100, 0x2, KEY, &bomb), 1009, "message over the limit");
        // A stored block that announces 1000 bytes and ends after 3.
        case(
            encode_client_raw(true, 0b100, 0x2, KEY, &[0x00, 0xe8, 0x03, 0x17, 0xfc, 1, 2, 3]),
            1007,
            "compressed message does not end its deflate block",
        );
        case(encode_client_raw(true, 0b100, 0x1, KEY, &[0xff; 16]), 1007, "invalid compressed data");
        case(encode_client_raw(true, 0b100, 0x9, KEY, b"hi"), 1002, "rsv1 on a control or continuation frame");
        // Invalid UTF-8 is found in the inflated text.
        case(
            encode_client_raw(true, 0b100, 0x1, KEY, &compressed(&[&b"{\"a\":\""[..], &[b'a'; 60], b"\xc3\x28\"}"].concat())),
            1007,
            "invalid utf-8 in text message",
        );
        // RSV1 without the extension.
        let (mut s, agreed) = upgrade_offering(&server, "/echo", None);
        assert_eq!(agreed, None);
        s.write_all(&encode_client_raw(true, 0b100, 0x1, KEY, &compressed("hello ".repeat(30).as_bytes()))).unwrap();
        assert_eq!(
            read_close(&mut s),
            (1002, "reserved bits set without a negotiated extension".to_owned())
        );
        // The server is fine afterwards.
        let (mut s, _) = upgrade_offering(&server, "/echo", Some(deflate::CLIENT_OFFER));
        s.write_all(&encode_client_raw(true, 0, 0x1, KEY, b"still here")).unwrap();
        assert_eq!(read_raw(&mut s), (0, 0x1, b"still here".to_vec()));
    }
}
