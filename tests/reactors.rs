//! Several reactors: connections spread over them, and the graceful drain.

mod util;

use std::io::Write;
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;
use util::*;
use wsgate::metrics::ReactorMetrics;

for_each_driver! {
    fn connections_land_on_several_reactors(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        let clients: Vec<Client> = (0..64).map(|_| connect(&server, "/echo")).collect();
        let per_reactor: Vec<u64> = server
            .server()
            .shared()
            .metrics
            .iter()
            .map(|m| ReactorMetrics::get(&m.handshakes_ok))
            .collect();
        assert_eq!(per_reactor.iter().sum::<u64>(), 64);
        assert!(per_reactor.iter().filter(|&&n| n > 0).count() >= 2, "all on one reactor: {per_reactor:?}");
        drop(clients);
    }

    fn drain_closes_with_1001_and_exits(io: IoBackend) {
        let mut server = TestServer::start(io, |_| {});
        let mut clients: Vec<Client> = (0..8).map(|_| connect(&server, "/echo")).collect();
        server.server().drain();
        for ws in &mut clients {
            match recv(ws) {
                Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
                other => panic!("expected close 1001, got {other:?}"),
            }
            // tungstenite replies to the close; the server then closes the socket.
            assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)));
        }
        // Closing our ends lets the server finish without waiting out the close timeout.
        drop(clients);
        let started = std::time::Instant::now();
        server.shutdown();
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "exits once everyone left");
        assert!(std::net::TcpStream::connect(server.addr).is_err(), "no longer accepting");
    }

    fn drain_gives_up_on_clients_that_never_answer(io: IoBackend) {
        let mut server = TestServer::start(io, |c| {
            c.limits.close_timeout = Some(Duration::from_millis(100));
            c.net.drain_grace = Some(Duration::from_secs(5));
        });
        let mut silent = raw_upgrade(&server, "/echo");
        server.server().drain();
        assert_eq!(read_close_code(&mut silent), 1001);
        let started = std::time::Instant::now();
        server.shutdown();
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "close timeout, not the grace, ends it");
    }

    fn requests_during_drain_get_503(io: IoBackend) {
        let mut server = TestServer::start(io, |c| {
            c.net.threads = Some(1);
            c.limits.close_timeout = Some(Duration::from_millis(100));
        });
        let mut ws = connect(&server, "/echo");
        let mut http = tcp(&server);
        // A full request first: the connection is accepted and registered.
        http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut http).status, 200);
        http.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        // One reactor handles ready sockets in order: once the pong for a ping sent after
        // the half request is back, that half has been read.
        ws.send(Message::Ping(vec![1u8])).unwrap();
        assert_eq!(recv(&mut ws), Message::Pong(vec![1u8]));
        server.server().drain();
        // The close frame proves the (only) reactor is draining.
        assert!(matches!(recv(&mut ws), Message::Close(_)));
        http.write_all(b"Host: x\r\n\r\n").unwrap();
        let r = read_response(&mut http);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("connection"), Some("close"));
        drop(ws);
        server.shutdown();
    }
}
