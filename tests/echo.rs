//! /echo over real sockets: messages of every kind and size, ping/pong, backpressure.

mod util;

use std::io::Write;
use std::time::Duration;

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;
use util::*;

for_each_driver! {
    fn echoes_text_and_binary(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut ws = connect(&server, "/echo");
        ws.send(Message::text("héllo wörld")).unwrap();
        assert_eq!(recv(&mut ws), Message::text("héllo wörld"));
        ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
        assert_eq!(recv(&mut ws), Message::binary(vec![0u8, 1, 2, 255]));
        ws.send(Message::text("")).unwrap();
        assert_eq!(recv(&mut ws), Message::text(""));
    }

    fn echoes_one_mebibyte_messages(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut ws = connect(&server, "/echo");
        let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).unwrap();
        assert_eq!(recv(&mut ws), Message::binary(big));
        let text = "ü".repeat(1 << 19);
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(recv(&mut ws), Message::text(text));
    }

    fn reassembles_fragmented_messages(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut ws = connect(&server, "/echo");
        ws.write(Message::Frame(Frame::message(b"frag".to_vec(), OpCode::Data(Data::Text), false))).unwrap();
        ws.write(Message::Ping("mid".into())).unwrap();
        ws.write(Message::Frame(Frame::message(b"men".to_vec(), OpCode::Data(Data::Continue), false))).unwrap();
        ws.write(Message::Frame(Frame::message(b"ted".to_vec(), OpCode::Data(Data::Continue), true))).unwrap();
        ws.flush().unwrap();
        assert_eq!(recv(&mut ws), Message::Pong("mid".into()), "pong answered mid-message");
        assert_eq!(recv(&mut ws), Message::text("fragmented"));
    }

    fn many_messages_in_order(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut ws = connect(&server, "/echo");
        for i in 0..1000 {
            ws.write(Message::text(format!("message {i}"))).unwrap();
        }
        ws.flush().unwrap();
        for i in 0..1000 {
            assert_eq!(recv(&mut ws), Message::text(format!("message {i}")));
        }
    }

    fn ping_gets_pong_with_payload(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let mut ws = connect(&server, "/echo");
        ws.send(Message::Ping(vec![1u8, 2, 3])).unwrap();
        assert_eq!(recv(&mut ws), Message::Pong(vec![1u8, 2, 3]));
    }

    fn idle_connection_is_pinged_and_closed_without_pong(io: IoBackend) {
        let server = TestServer::start(io, |c| {
            c.limits.idle_timeout = Some(Duration::from_millis(100));
            c.limits.pong_timeout = Some(Duration::from_millis(100));
        });
        let mut stream = raw_upgrade(&server, "/echo");
        assert_eq!(read_frame(&mut stream), (true, 0x9, vec![]), "a ping after silence");
        // Not answering: the server gives up.
        assert_eq!(read_close_code(&mut stream), 1008);
        assert_closed(&mut stream);
    }

    fn answered_pings_keep_the_connection(io: IoBackend) {
        let server = TestServer::start(io, |c| {
            c.limits.idle_timeout = Some(Duration::from_millis(50));
            c.limits.pong_timeout = Some(Duration::from_millis(200));
        });
        let mut stream = raw_upgrade(&server, "/echo");
        for _ in 0..3 {
            let (_, opcode, payload) = read_frame(&mut stream);
            assert_eq!(opcode, 0x9);
            stream.write_all(&client_frame(true, 0xa, &payload)).unwrap();
        }
        stream.write_all(&client_frame(true, 0x1, b"still here")).unwrap();
        loop {
            let (_, opcode, payload) = read_frame(&mut stream);
            if opcode == 0x1 {
                assert_eq!(payload, b"still here");
                break;
            }
            assert_eq!(opcode, 0x9, "only pings before the echo");
        }
    }

    fn client_that_does_not_read_is_backpressured_not_dropped(io: IoBackend) {
        let server = TestServer::start(io, |c| c.limits.max_outbound_bytes = Some(64 * 1024));
        let mut ws = connect(&server, "/echo");
        // 8 MiB of echoes queue up while the client only writes: the server stops
        // reading instead of buffering without bound, and catches up once read.
        let writer = ws.get_ref().try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let mut writer = writer;
            let frame = client_frame(true, 0x2, &[7u8; 8192]);
            for _ in 0..1024 {
                writer.write_all(&frame).unwrap();
            }
        });
        for _ in 0..1024 {
            assert_eq!(recv(&mut ws), Message::binary(vec![7u8; 8192]));
        }
        sender.join().unwrap();
    }
}
