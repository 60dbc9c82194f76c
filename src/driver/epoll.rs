//! The epoll driver, on mio: readiness turned into the completion shape of `Driver`.
//!
//! Sockets are registered edge-triggered for reads and writes once, at attach. The
//! reactor reads after `Readable` until a short read or `WouldBlock` (a short read means
//! the receive queue was empty; new data raises a new edge), and `Writable` only follows
//! a write that did not finish, so a steady connection costs no `epoll_ctl` calls.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener as StdListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{Completion, ConnId, Driver, SendStatus};
use crate::buf::{BufId, BufPool};
use crate::sys::EventFd;
use wsgate_proto::OutQueue;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Most slices in one `writev` (Linux IOV_MAX is 1024; more frames wait a turn).
pub const MAX_IOV: usize = 64;

/// Size of a lent read buffer.
pub const READ_BUF: usize = 64 * 1024;

pub struct EpollDriver {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    waker: Arc<EventFd>,
    pool: BufPool,
}

impl EpollDriver {
    pub fn new(listener: StdListener, waker: Arc<EventFd>) -> io::Result<Self> {
        let poll = Poll::new()?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&waker.as_raw_fd()), WAKER, Interest::READABLE)?;
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            listener: Some(listener),
            waker,
            pool: BufPool::new(READ_BUF),
        })
    }

    fn accept_all(&mut self, out: &mut Vec<Completion<TcpStream>>) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((io, peer)) => out.push(Completion::Accepted { io, peer }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Per-connection failures (ECONNABORTED) and fd exhaustion (EMFILE) must
                // not stop the loop; EMFILE would spin, so stop for this turn.
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionAborted
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }
}

impl Driver for EpollDriver {
    type Io = TcpStream;

    fn name(&self) -> &'static str {
        "epoll"
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion<TcpStream>>,
    ) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut accept = false;
        for event in &self.events {
            match event.token() {
                LISTENER => accept = true,
                WAKER => {
                    self.waker.drain();
                    out.push(Completion::Woken);
                }
                Token(key) => {
                    let conn = ConnId(key as u32);
                    let closed = event.is_read_closed() || event.is_error();
                    if event.is_readable() || closed {
                        out.push(Completion::Readable { conn, closed });
                    }
                    if event.is_writable() {
                        out.push(Completion::Writable(conn));
                    }
                }
            }
        }
        if accept {
            self.accept_all(out);
        }
        Ok(())
    }

    fn attach(&mut self, conn: ConnId, io: &mut TcpStream) -> io::Result<()> {
        io.set_nodelay(true)?;
        self.poll.registry().register(
            io,
            Token(conn.index()),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn recv(&mut self, io: &mut TcpStream) -> io::Result<Option<(BufId, usize)>> {
        let id = self.pool.lend();
        loop {
            match io.read(self.pool.get(id)) {
                Ok(0) => {
                    self.pool.give_back(id);
                    return Ok(None);
                }
                Ok(n) => return Ok(Some((id, n))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pool.give_back(id);
                    return Err(e);
                }
            }
        }
    }

    fn buf(&mut self, buf: BufId) -> &mut [u8] {
        self.pool.get(buf)
    }

    fn release(&mut self, buf: BufId) {
        self.pool.give_back(buf);
    }

    fn send(
        &mut self,
        _conn: ConnId,
        io: &mut TcpStream,
        out: &OutQueue,
    ) -> io::Result<SendStatus> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = out.fill_iovecs(&mut iov);
        loop {
            match io.write_vectored(&iov[..n]) {
                Ok(written) => return Ok(SendStatus::Wrote(written)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(SendStatus::Wrote(0)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn set_receiving(&mut self, _conn: ConnId, _io: &mut TcpStream, _on: bool) {}

    fn shutdown_write(&mut self, io: &mut TcpStream) {
        let _ = io.shutdown(Shutdown::Write);
    }

    fn close(&mut self, _conn: ConnId, io: &mut TcpStream) -> bool {
        // Dropping the stream closes the fd, which leaves the epoll set; deregister first
        // anyway so a descriptor duplicated elsewhere cannot deliver events for a stale id.
        let _ = self.poll.registry().deregister(io);
        true
    }

    fn stop_accepting(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }
}
