//! The cases io_uring makes delicate: memory the kernel holds while a connection closes,
//! the server drains, or the receive-buffer ring runs dry. They run on epoll too, as the
//! control: both drivers must give the same answers.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use util::*;

const MIB: usize = 1 << 20;

/// An upgraded raw client with a tiny receive buffer, so the server's sends stall once
/// the socket buffers between them are full.
fn stalled_client(server: &TestServer) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(upgrade_request("/echo", "").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut stream).status, 101);
    stream
}

/// Sends `n` one-MiB messages for the server to echo into a queue the client doesn't read.
fn queue_echoes(stream: &mut TcpStream, n: usize) {
    let frame = client_frame(true, 0x2, &vec![0x5a; MIB]);
    for _ in 0..n {
        stream.write_all(&frame).unwrap();
    }
}

/// Reads until the server closes; returns the bytes that arrived.
fn read_to_close(stream: &mut TcpStream) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return total,
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

fn assert_echo_works(server: &TestServer) {
    let mut ws = connect(server, "/echo");
    ws.send(tungstenite::Message::text("still serving"))
        .unwrap();
    assert_eq!(recv(&mut ws), tungstenite::Message::text("still serving"));
}

for_each_driver! {
    fn close_while_a_send_is_in_flight(io: IoBackend) {
        let mut server = TestServer::start(io, |c| {
            c.net.threads = Some(1);
            c.limits.max_outbound_bytes = Some(64 * MIB);
            c.limits.close_timeout = Some(Duration::from_millis(100));
        });
        let mut stream = stalled_client(&server);
        // 16 MiB of echoes: far more than the socket buffers hold, so a send is stuck.
        queue_echoes(&mut stream, 16);
        // An unmasked frame is a protocol error: the server queues its close behind the
        // stuck echoes, and after the close timeout closes with the send still pending.
        stream.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
        // Gone from the server (for io_uring: after the cancelled send's completion).
        wait_until("the connection to close", || server.open_connections() == 0);
        let got = read_to_close(&mut stream);
        assert!(got < 16 * MIB, "the stuck send was cut short, not completed ({got} bytes)");
        assert_echo_works(&server);
        server.shutdown();
    }

    fn drain_while_a_send_is_in_flight(io: IoBackend) {
        let mut server = TestServer::start(io, |c| {
            c.net.threads = Some(1);
            c.limits.max_outbound_bytes = Some(64 * MIB);
            c.net.drain_grace = Some(Duration::from_millis(200));
        });
        let mut stream = stalled_client(&server);
        queue_echoes(&mut stream, 16);
        assert_echo_works(&server);
        let started = Instant::now();
        server.shutdown();
        assert!(started.elapsed() < Duration::from_secs(4), "the grace period ends the drain");
        let got = read_to_close(&mut stream);
        assert!(got < 16 * MIB, "the stuck send was cut short, not completed ({got} bytes)");
    }

    fn receive_buffer_exhaustion_loses_nothing(io: IoBackend) {
        // 8 receive buffers of 256 bytes for 64 connections sending at once.
        let server = TestServer::start(io, |c| {
            c.net.threads = Some(1);
            c.uring.bufs = Some(8);
            c.uring.buf_size = Some(256);
        });
        let mut clients: Vec<TcpStream> = (0..64).map(|_| raw_upgrade(&server, "/echo")).collect();
        let message = |i: usize, j: usize| -> Vec<u8> {
            (0..700 + i).map(|k| (i * 31 + j * 7 + k) as u8).collect()
        };
        for (i, stream) in clients.iter_mut().enumerate() {
            let mut burst = Vec::new();
            for j in 0..4 {
                burst.extend(client_frame(true, 0x2, &message(i, j)));
            }
            stream.write_all(&burst).unwrap();
        }
        for (i, stream) in clients.iter_mut().enumerate() {
            for j in 0..4 {
                assert_eq!(read_frame(stream), (true, 0x2, message(i, j)), "connection {i}, message {j}");
            }
        }
    }
}
