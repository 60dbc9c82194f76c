//! The only libc calls of the loadgen: clocks, a timerfd, CPU accounting, file-descriptor
//! limit and one socket option. Everything else goes through std, mio and socket2.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: see the caller's SAFETY comment; every argument is valid for the call.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids we pass always exist on Linux.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(r, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in ns: system-wide, so stamps from another local process compare.
#[inline]
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time (user + system) used by the calling thread, in ns.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time (user + system) used by the whole process, in ns (getrusage).
pub fn process_cpu_ns() -> u64 {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if syscall!(getrusage(libc::RUSAGE_SELF, &mut ru)).is_err() {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit.
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut rl))?;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: `rl` is a valid rlimit with cur <= max, which an unprivileged process may set.
        syscall!(setrlimit(libc::RLIMIT_NOFILE, &rl))?;
    }
    // rlim_t is u64 on Linux targets.
    #[allow(clippy::unnecessary_cast)]
    Ok(rl.rlim_cur as u64)
}

/// IP_BIND_ADDRESS_NO_PORT: a socket bound to a source address gets its port at `connect`,
/// so the 4-tuple, not the source address alone, must be unique (more than 28k connections
/// per source address when there are several destinations).
pub fn set_bind_address_no_port(sock: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is an open socket owned by the caller; the option value is a c_int that
    // lives across the call, and its size is passed.
    syscall!(setsockopt(
        sock.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        &one as *const libc::c_int as *const libc::c_void,
        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
    ))?;
    Ok(())
}

/// A timerfd on CLOCK_MONOTONIC (the clock of [`mono_ns`]): wakes `epoll` at a deadline to
/// within the timer slack (50 µs), where epoll's own timeout is whole milliseconds, which
/// mio rounds up, so that a send due in 0.2 ms left up to 1.1 ms late.
pub struct Timer(OwnedFd);

impl Timer {
    pub fn new() -> io::Result<Self> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        // SAFETY: plain syscall with constant, valid arguments.
        let fd = syscall!(timerfd_create(libc::CLOCK_MONOTONIC, flags))?;
        // SAFETY: `fd` was just returned by timerfd_create and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once at `deadline_ns` (CLOCK_MONOTONIC), replacing any earlier setting.
    pub fn arm_at(&self, deadline_ns: u64) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
                // A zero it_value would disarm it: a deadline at 0 ns is already past.
                tv_nsec: (deadline_ns % 1_000_000_000).max(1) as libc::c_long,
            },
        };
        // SAFETY: the fd is our open timerfd; `spec` is a valid itimerspec that lives across
        // the call; a null old-value pointer is allowed.
        syscall!(timerfd_settime(
            self.0.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME,
            &spec,
            std::ptr::null_mut(),
        ))?;
        Ok(())
    }

    /// Takes the expirations, so that the next one is a new readiness edge.
    pub fn clear(&self) {
        let mut expirations = 0u64;
        // SAFETY: the fd is our open timerfd; the buffer is 8 writable bytes, the size a
        // timerfd read needs. Nothing to read (EAGAIN) is fine.
        let _ = syscall!(read(
            self.0.as_raw_fd(),
            (&mut expirations as *mut u64).cast::<libc::c_void>(),
            8,
        ));
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_advance() {
        let a = mono_ns();
        let mut x = 0u64;
        for i in 0..100_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(mono_ns() >= a);
        assert!(thread_cpu_ns() > 0);
        assert!(process_cpu_ns() > 0);
    }

    #[test]
    fn the_timer_fires_at_its_deadline_and_not_before() {
        let timer = Timer::new().unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(4);
        let fd = timer.as_raw_fd();
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&fd),
                mio::Token(7),
                mio::Interest::READABLE,
            )
            .unwrap();
        for _ in 0..3 {
            let deadline = mono_ns() + 300_000;
            timer.arm_at(deadline).unwrap();
            loop {
                poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                if events.iter().any(|e| e.token() == mio::Token(7)) {
                    break;
                }
            }
            assert!(mono_ns() >= deadline, "fired early");
            timer.clear();
        }
        // Re-armed before it fires: only the new deadline counts.
        timer.arm_at(mono_ns() + 60_000_000_000).unwrap();
        timer.arm_at(mono_ns() + 1_000_000).unwrap();
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == mio::Token(7)));
    }
}
