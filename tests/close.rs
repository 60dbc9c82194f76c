//! Every way a WebSocket connection ends, and the close code it ends with.

mod util;

use std::io::Write;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;
use util::*;

fn assert_fails_with(server: &TestServer, bytes: &[u8], code: u16) {
    let mut stream = raw_upgrade(server, "/echo");
    stream.write_all(bytes).unwrap();
    assert_eq!(read_close_code(&mut stream), code);
    assert_closed(&mut stream);
}

for_each_driver! {
    fn client_close_is_echoed_and_server_closes_tcp(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut ws = connect(&server, "/echo");
        ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).unwrap();
        match recv(&mut ws) {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected the close reply, got {other:?}"),
        }
        assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)));
    }

    fn raw_close_handshake(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut stream = raw_upgrade(&server, "/echo");
        stream.write_all(&client_frame(true, 0x8, &[0x0f, 0xa0, b'x'])).unwrap();
        assert_eq!(read_frame(&mut stream), (true, 0x8, vec![0x0f, 0xa0]), "code 4000 echoed");
        assert_closed(&mut stream);
    }

    fn protocol_violations_close_with_1002(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        assert_fails_with(&server, &[0x81, 0x02, b'h', b'i'], 1002); // unmasked
        assert_fails_with(&server, &client_frame(true, 0x3, b""), 1002); // reserved opcode
        let mut rsv = client_frame(true, 0x1, b"x");
        rsv[0] |= 0x40;
        assert_fails_with(&server, &rsv, 1002);
        assert_fails_with(&server, &client_frame(false, 0x9, b""), 1002); // fragmented ping
        assert_fails_with(&server, &client_frame(true, 0x0, b"x"), 1002); // stray continuation
        assert_fails_with(&server, &client_frame(true, 0x8, &[0x03, 0xed]), 1002); // code 1005
        assert_fails_with(&server, &client_frame(true, 0x8, &[0x03]), 1002);
    }

    fn invalid_utf8_closes_with_1007(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        assert_fails_with(&server, &client_frame(true, 0x1, b"bad \xff"), 1007);
        assert_fails_with(&server, &client_frame(true, 0x8, &[0x03, 0xe8, 0xc0, 0xaf]), 1007);
    }

    fn invalid_utf8_fails_before_the_message_ends(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut stream = raw_upgrade(&server, "/echo");
        // The message never finishes; the bad fragment alone must fail it.
        stream.write_all(&client_frame(false, 0x1, b"ok so far \xf4\x90")).unwrap();
        assert_eq!(read_close_code(&mut stream), 1007);
    }

    fn oversized_frames_and_messages_close_with_1009(io: IoBackend) {
        let server = TestServer::start(io, |c| {
            c.limits.max_frame_size = Some(1000);
            c.limits.max_message_size = Some(1500);
        });
        // Rejected at the header, before the payload is sent.
        assert_fails_with(&server, &client_frame(true, 0x2, &[0; 1001])[..8], 1009);
        let mut two = client_frame(false, 0x2, &[0; 1000]);
        two.extend(client_frame(true, 0x0, &[0; 501]));
        assert_fails_with(&server, &two, 1009);
    }

    fn garbage_after_the_handshake_is_a_protocol_error(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut stream = raw_upgrade(&server, "/echo");
        stream.write_all(&garbage).unwrap();
        let code = read_close_code(&mut stream);
        assert!(code == 1002 || code == 1009, "got {code}");
        // The server is still fine for everyone else.
        let mut ws = connect(&server, "/echo");
        ws.send(Message::text("alive")).unwrap();
        assert_eq!(recv(&mut ws), Message::text("alive"));
    }

    fn abrupt_disconnects_are_cleaned_up(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        for _ in 0..50 {
            let mut stream = raw_upgrade(&server, "/echo");
            stream.write_all(&client_frame(false, 0x1, b"half a mess")).unwrap();
            drop(stream);
        }
        // Every reactor must come back to zero connections.
        let shared = server.server().shared().clone();
        let open = || shared.metrics.iter().map(|m| wsgate::metrics::ReactorMetrics::get(&m.connections)).sum::<u64>();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while open() != 0 {
            assert!(std::time::Instant::now() < deadline, "{} connections still open", open());
            std::thread::yield_now();
        }
    }
}
