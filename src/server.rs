//! Starting the reactors: one SO_REUSEPORT listener and one pinned thread per reactor,
//! and the handle that drains and joins them.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::broadcast::Delivery;
use crate::config::Config;
use crate::driver::epoll::EpollDriver;
use crate::driver::uring::UringDriver;
use crate::driver::{self, Backend, Driver};
use crate::reactor::Reactor;
use crate::shared::Shared;

/// A running gateway.
pub struct Server {
    addr: SocketAddr,
    /// The TLS listener's address, when there is one.
    tls_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// The NATS bridge thread, when clustered.
    bridge: Option<JoinHandle<()>>,
    backend: &'static str,
}

impl Server {
    /// Binds the listeners and starts the reactors. With port 0 the first listener picks
    /// a port and the others share it.
    pub fn start(config: Config) -> io::Result<Self> {
        crate::transport::tls::install_default_provider();
        let backend = driver::select(config.net.io)?;
        let mut listeners = Vec::with_capacity(config.net.threads);
        let mut addr = config.net.listen;
        if !config.net.share_port {
            refuse_shared(addr)?;
        }
        let mut tls_addr = config.tls.addr;
        if let (Some(addr), false) = (tls_addr, config.net.share_port) {
            refuse_shared(addr)?;
        }
        for _ in 0..config.net.threads {
            let listener = bind_reuseport(addr, config.net.socket_send_buffer)?;
            addr = listener.local_addr()?;
            // Each reactor's listeners in `ListenerId` order: plain, then TLS.
            let mut own = vec![listener];
            if let Some(tls) = tls_addr {
                let listener = bind_reuseport(tls, config.net.socket_send_buffer)?;
                tls_addr = Some(listener.local_addr()?);
                own.push(listener);
            }
            listeners.push(own);
        }
        let cores = if config.net.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let threads = config.net.threads;
        let (shared, inboxes) = Shared::new(config, backend.name(), threads)?;
        let bridge = match &shared.cluster {
            Some(link) => Some(crate::cluster::spawn(shared.clone(), link.clone())?),
            None => None,
        };
        let mut threads = Vec::with_capacity(listeners.len());
        // Each driver is built on its reactor's thread (an io_uring ring with SINGLE_ISSUER
        // accepts submissions only from the thread that created it); `ready` reports it.
        let (ready_tx, ready) = mpsc::channel();
        for (index, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let shared = shared.clone();
            let ready_tx = ready_tx.clone();
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("wsgate-reactor-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(reactor = index, "could not pin to core {}", core.id);
                        }
                    }
                    let waker = shared.waker(index).clone();
                    match backend {
                        Backend::Epoll => run_reactor(index, shared, inbox, ready_tx, || {
                            EpollDriver::new(listener, waker)
                        }),
                        Backend::Uring => {
                            let opts = shared.config.uring.clone();
                            run_reactor(index, shared, inbox, ready_tx, || {
                                UringDriver::new(listener, waker, &opts)
                            })
                        }
                    }
                })?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut failed = None;
        for _ in 0..threads.len() {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(_) => break,
            }
        }
        let server = Self {
            addr,
            tls_addr,
            shared,
            threads,
            bridge,
            backend: backend.name(),
        };
        match failed {
            None => Ok(server),
            Some(e) => {
                let _ = server.shutdown();
                Err(e)
            }
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS listener's address (wss://), when configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The I/O backend the reactors run.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts the graceful drain (returns at once; `join` waits for it).
    pub fn drain(&self) {
        self.shared.drain();
    }

    /// Waits for every reactor to finish.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for thread in self.threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a reactor panicked")),
            }
        }
        if let (Some(link), Some(bridge)) = (&self.shared.cluster, self.bridge) {
            link.stop();
            let _ = bridge.join();
        }
        result
    }

    /// Drains and waits.
    pub fn shutdown(self) -> io::Result<()> {
        self.drain();
        self.join()
    }
}

/// Builds a reactor's driver, reports whether that worked, then runs the reactor.
fn run_reactor<D: Driver>(
    index: usize,
    shared: Arc<Shared>,
    inbox: crossbeam_channel::Receiver<Delivery>,
    ready: mpsc::Sender<io::Result<()>>,
    make: impl FnOnce() -> io::Result<D>,
) -> io::Result<()> {
    let driver = match make() {
        Ok(driver) => driver,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    Reactor::new(index, driver, shared, inbox).run()
}

/// Fails if another socket listens on `addr`: the reactors' SO_REUSEPORT listeners would
/// otherwise join a group that a second wsgate (of the same user) already holds, and the
/// two would split the traffic silently (issue 9, item 1). A probe bound without
/// SO_REUSEPORT conflicts with any listener on the address (one that binds between the
/// probe and our listeners is missed: strays start seconds apart, not microseconds). Port 0
/// always gets a fresh port.
fn refuse_shared(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Connections in TIME_WAIT left by an earlier run are no reason to refuse.
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "address {addr} is already in use (set share_port to listen beside another wsgate)"
            ),
        )),
        result => result,
    }
}

fn bind_reuseport(addr: SocketAddr, send_buffer: usize) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if send_buffer > 0 {
        // Accepted sockets inherit it.
        socket.set_send_buffer_size(send_buffer)?;
    }
    socket.set_reuse_address(true)?;
    // SO_REUSEPORT: each reactor has its own accept queue; the kernel spreads connections.
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
