//! An in-memory driver for deterministic reactor tests: no sockets, no clock, no threads.
//!
//! The test holds a [`Net`] handle to the same state the driver reads. It connects peers,
//! feeds them bytes, half-closes them, reads what the server wrote, and limits how many
//! bytes a peer's "socket" takes (its window) to model a slow reader. Completions come out
//! in the order the test caused them, the way the real drivers report them.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use wsgate_proto::OutQueue;

use super::{Completion, ConnId, Driver, ListenerId};
use crate::buf::{BufId, BufPool};

/// What the test sees of the network, shared with the driver.
#[derive(Clone, Default)]
pub struct Net(Rc<RefCell<State>>);

#[derive(Default)]
struct State {
    next_id: u32,
    pending: VecDeque<Event>,
    peers: HashMap<ConnId, Peer>,
    accepting: bool,
}

enum Event {
    Accepted(ConnId),
    Bytes(ConnId, Vec<u8>),
    Eof(ConnId),
    Sent(ConnId, usize),
    Released(ConnId),
    Woken,
}

#[derive(Default)]
struct Peer {
    /// Bytes the server wrote that the test has not read yet.
    wire: Vec<u8>,
    /// How many more bytes the socket takes before a send stalls.
    window: usize,
    /// A send that did not fit: bytes still to go, and the total to report.
    stalled: Option<(Vec<u8>, usize)>,
    receiving: bool,
    /// Bytes the test sent while the server was not receiving.
    held: VecDeque<Vec<u8>>,
    held_eof: bool,
    fin: bool,
    closed: bool,
    sends: usize,
}

impl Net {
    /// A new peer connects; returns its id.
    pub fn connect(&self) -> ConnId {
        let mut s = self.0.borrow_mut();
        assert!(s.accepting, "not accepting");
        let id = ConnId(s.next_id);
        s.next_id += 1;
        s.peers.insert(
            id,
            Peer {
                window: usize::MAX,
                receiving: true,
                ..Peer::default()
            },
        );
        s.pending.push_back(Event::Accepted(id));
        id
    }

    /// The peer sends `bytes`.
    pub fn send(&self, id: ConnId, bytes: &[u8]) {
        let mut s = self.0.borrow_mut();
        let peer = s.peers.get_mut(&id).expect("a connected peer");
        if peer.receiving {
            s.pending.push_back(Event::Bytes(id, bytes.to_vec()));
        } else {
            peer.held.push_back(bytes.to_vec());
        }
    }

    /// The peer half-closes (FIN).
    pub fn shutdown(&self, id: ConnId) {
        let mut s = self.0.borrow_mut();
        let peer = s.peers.get_mut(&id).expect("a connected peer");
        if peer.receiving {
            s.pending.push_back(Event::Eof(id));
        } else {
            peer.held_eof = true;
        }
    }

    /// Takes what the server wrote to the peer so far, freeing that much window.
    pub fn read(&self, id: ConnId) -> Vec<u8> {
        let mut s = self.0.borrow_mut();
        let peer = s.peers.get_mut(&id).expect("a connected peer");
        let bytes = std::mem::take(&mut peer.wire);
        peer.window = peer.window.saturating_add(bytes.len());
        let done = peer.stalled.take().and_then(|(rest, total)| {
            let n = rest.len().min(peer.window);
            peer.wire.extend_from_slice(&rest[..n]);
            peer.window -= n;
            if n == rest.len() {
                Some(total)
            } else {
                peer.stalled = Some((rest[n..].to_vec(), total));
                None
            }
        });
        if let Some(total) = done {
            s.pending.push_back(Event::Sent(id, total));
        }
        bytes
    }

    /// Limits how many bytes the peer's socket takes from now on.
    pub fn set_window(&self, id: ConnId, window: usize) {
        self.0.borrow_mut().peers.get_mut(&id).expect("peer").window = window;
    }

    /// Whether the server sent FIN to the peer.
    pub fn fin(&self, id: ConnId) -> bool {
        self.0.borrow().peers[&id].fin
    }

    /// Whether the server closed the connection (and the driver released it).
    pub fn closed(&self, id: ConnId) -> bool {
        self.0.borrow().peers[&id].closed
    }

    /// Whether the server is reading from the peer (false: backpressure).
    pub fn receiving(&self, id: ConnId) -> bool {
        self.0.borrow().peers[&id].receiving
    }

    /// How many sends the server made to the peer (one per flush with output).
    pub fn sends(&self, id: ConnId) -> usize {
        self.0.borrow().peers[&id].sends
    }

    /// Another thread woke the reactor.
    pub fn wake(&self) {
        self.0.borrow_mut().pending.push_back(Event::Woken);
    }

    pub fn accepting(&self) -> bool {
        self.0.borrow().accepting
    }
}

/// The driver half: what the reactor owns.
pub struct MemoryDriver {
    net: Net,
    pool: BufPool,
}

impl MemoryDriver {
    pub fn new() -> (Self, Net) {
        let net = Net::default();
        net.0.borrow_mut().accepting = true;
        let driver = Self {
            net: net.clone(),
            pool: BufPool::new(64 * 1024),
        };
        (driver, net)
    }
}

impl Driver for MemoryDriver {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn wait(&mut self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn next(&mut self) -> Option<Completion> {
        loop {
            let event = self.net.0.borrow_mut().pending.pop_front()?;
            let s = self.net.0.borrow();
            let live = |id: &ConnId| s.peers.get(id).is_some_and(|p| !p.closed);
            let completion = match event {
                Event::Accepted(conn) => Completion::Accepted {
                    conn,
                    peer: SocketAddr::from(([127, 0, 0, 1], 40000 + conn.0 as u16)),
                    listener: ListenerId(0),
                },
                Event::Bytes(conn, bytes) if live(&conn) => {
                    drop(s);
                    let buf = self.pool.lend();
                    let len = bytes.len();
                    assert!(len <= 64 * 1024, "feed at most 64 KiB at once");
                    self.pool.get(buf)[..len].copy_from_slice(&bytes);
                    return Some(Completion::Received { conn, buf, len });
                }
                Event::Eof(conn) if live(&conn) => Completion::Eof(conn),
                Event::Sent(conn, bytes) if live(&conn) => Completion::Sent { conn, bytes },
                Event::Released(conn) => Completion::Released(conn),
                Event::Woken => Completion::Woken,
                Event::Bytes(..) | Event::Eof(_) | Event::Sent(..) => continue,
            };
            return Some(completion);
        }
    }

    fn buf(&mut self, buf: BufId) -> &mut [u8] {
        self.pool.get(buf)
    }

    fn release(&mut self, buf: BufId) {
        self.pool.give_back(buf);
    }

    fn send(&mut self, conn: ConnId, out: &OutQueue) {
        let mut s = self.net.0.borrow_mut();
        let peer = s.peers.get_mut(&conn).expect("send on a known connection");
        assert!(peer.stalled.is_none(), "one send in flight per connection");
        assert!(!peer.closed && !peer.fin, "send after close or FIN");
        peer.sends += 1;
        let bytes: Vec<u8> = out.frames().flat_map(|f| f.iter().copied()).collect();
        let n = bytes.len().min(peer.window);
        peer.wire.extend_from_slice(&bytes[..n]);
        peer.window -= n;
        if n == bytes.len() {
            s.pending.push_back(Event::Sent(conn, n));
        } else {
            peer.stalled = Some((bytes[n..].to_vec(), bytes.len()));
        }
    }

    fn set_receiving(&mut self, conn: ConnId, on: bool) {
        let mut s = self.net.0.borrow_mut();
        let peer = s.peers.get_mut(&conn).expect("a known connection");
        peer.receiving = on;
        if on {
            let held: Vec<_> = peer.held.drain(..).collect();
            let eof = std::mem::take(&mut peer.held_eof);
            for bytes in held {
                s.pending.push_back(Event::Bytes(conn, bytes));
            }
            if eof {
                s.pending.push_back(Event::Eof(conn));
            }
        }
    }

    fn shutdown_write(&mut self, conn: ConnId) {
        self.net
            .0
            .borrow_mut()
            .peers
            .get_mut(&conn)
            .expect("known")
            .fin = true;
    }

    fn close(&mut self, conn: ConnId) {
        let mut s = self.net.0.borrow_mut();
        let peer = s.peers.get_mut(&conn).expect("a known connection");
        assert!(!peer.closed, "closed twice");
        peer.closed = true;
        peer.stalled = None;
        s.pending.push_back(Event::Released(conn));
    }

    fn stop_accepting(&mut self) {
        self.net.0.borrow_mut().accepting = false;
    }

    fn release_idle_memory(&mut self, _now: Instant) {}
}
