//! Thin wrappers over the few libc calls std and socket2 do not cover: eventfd wakers,
//! a timerfd, the open-files limit and CPU clocks (every call goes through `syscall!`), and a cache
//! prefetch hint. The unsafe surface is here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Calls a libc function and turns `-1` into the thread's `errno`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: each call site passes valid arguments for `$fn`, checked where it is used.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// An eventfd used as a cross-thread wake-up: a reactor polls (or reads, under io_uring)
/// its fd, and any thread may `wake` it.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<Self> {
        let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
        // SAFETY: `eventfd` just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Adds one to the counter, making the fd readable. Never blocks: a saturated counter
    /// (EAGAIN) is already readable.
    pub fn wake(&self) {
        let one: u64 = 1;
        let ptr = std::ptr::addr_of!(one).cast();
        let _ = syscall!(write(self.fd.as_raw_fd(), ptr, 8));
    }

    /// Resets the counter to zero.
    pub fn drain(&self) {
        let mut count: u64 = 0;
        let ptr = std::ptr::addr_of_mut!(count).cast();
        let _ = syscall!(read(self.fd.as_raw_fd(), ptr, 8));
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A timerfd on CLOCK_MONOTONIC that the epoll driver polls beside its sockets: epoll's
/// own timeout is whole milliseconds (mio rounds it up), this one fires to within the
/// timer slack.
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    pub fn new() -> io::Result<Self> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        let fd = syscall!(timerfd_create(libc::CLOCK_MONOTONIC, flags))?;
        // SAFETY: `timerfd_create` just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Fires once `after` from now (replacing any earlier setting); zero disarms it.
    pub fn set(&self, after: std::time::Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        let old = std::ptr::null_mut();
        syscall!(timerfd_settime(self.fd.as_raw_fd(), 0, &spec, old))?;
        Ok(())
    }

    /// Takes the expirations, so that the next one is a new readiness edge.
    pub fn clear(&self) {
        let mut expirations: u64 = 0;
        let ptr = std::ptr::addr_of_mut!(expirations).cast();
        let _ = syscall!(read(self.fd.as_raw_fd(), ptr, 8));
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Clears `O_NONBLOCK` on a descriptor (io_uring's eventfd read must wait in the kernel).
pub fn set_blocking(fd: RawFd) -> io::Result<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFL))?;
    syscall!(fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK))?;
    Ok(())
}

/// The machine's memory in bytes (`MemTotal` in /proc/meminfo).
pub fn memory_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    }
    Ok(lim.rlim_cur)
}

/// CPU time this process has used, in nanoseconds (user + system).
/// Gives the allocator's free pages back to the kernel (glibc `malloc_trim`). After a burst,
/// e.g. a storm of TLS handshakes whose short-lived buffers sat between long-lived session
/// state, freed memory would otherwise stay resident; the drivers call it once idle.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer; it only walks the allocator's own free lists,
    // under the allocator's locks, so any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match syscall!(clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts)) {
        Ok(_) => ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        Err(_) => 0,
    }
}

/// CPU time the calling thread has used (user + system, including the kernel's work in its
/// syscalls), in nanoseconds; 0 if the clock is unavailable.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match syscall!(clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts)) {
        Ok(_) => ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_is_only_a_hint() {
        // Within the value only, whatever its size; the values are unchanged.
        let small = 7u8;
        let large = [3u64; 300];
        let empty = ();
        prefetch(&small);
        prefetch(&large);
        prefetch(&empty);
        assert_eq!(small, 7);
        assert!(large.iter().all(|&x| x == 3));
    }

    #[test]
    fn eventfd_wakes_and_drains() {
        let efd = EventFd::new().expect("eventfd");
        efd.wake();
        efd.wake();
        let mut count = 0u64;
        let n = syscall!(read(
            efd.as_raw_fd(),
            std::ptr::addr_of_mut!(count).cast(),
            8
        ))
        .expect("readable");
        assert_eq!((n, count), (8, 2));
        efd.wake();
        efd.drain();
        let err = syscall!(read(
            efd.as_raw_fd(),
            std::ptr::addr_of_mut!(count).cast(),
            8
        ))
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn nofile_limit_is_raised_to_hard_limit() {
        let soft = raise_nofile_limit().expect("rlimit");
        assert!(soft >= 1024);
    }
}

/// The heap bytes each thread holds, counted by a global allocator in the library's own
/// tests (`reactor::tests` measures a connection's memory with it: the reactor there runs
/// on the test's thread). Forwards every call to the system allocator unchanged.
#[cfg(test)]
pub(crate) mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    struct Counting;

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    fn add(n: isize) {
        // No allocation and no destructor: usable at any point of a thread's life.
        let _ = LIVE.try_with(|live| live.set(live.get() + n));
    }

    // SAFETY: every method forwards to `System` with the caller's arguments, whose contract
    // is the same; the counting touches no memory the allocator hands out.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is System's.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as for `alloc`.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator, hence from `System`, with `layout`.
            unsafe { System.dealloc(ptr, layout) };
            add(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                add(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    /// Heap bytes allocated by this thread and not yet freed (since it started).
    pub fn live() -> isize {
        LIVE.with(Cell::get)
    }
}

/// Asks the CPU to start loading `value`'s memory into the cache: a hint, nothing is read.
/// At 1,000 TLS subscribers a session is cold when its send comes; the flush loop asks for
/// the next ones while the kernel takes this one's send.
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = (value as *const T).cast::<i8>();
        for offset in (0..std::mem::size_of::<T>()).step_by(64) {
            // SAFETY: SSE is part of x86_64's baseline, so the instruction exists; a
            // prefetch reads nothing and cannot fault, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
}
