//! The few operating-system calls std does not offer, declared by hand
//! (no libc crate here). Each has a portable fallback.

use std::fs::File;
use std::io;
use std::path::Path;

/// ENOSPC is 28 on Linux and macOS.
pub const ENOSPC: i32 = 28;

/// Positional read (pread) that never moves a shared cursor, so that several
/// threads may read one file at once.
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        file.seek_read(buf, offset)
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match read_at(file, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            let n = file.seek_write(&buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
            }
            done += n;
        }
        Ok(())
    }
}

/// Outcome of a read that must not wait for the disk.
pub enum NoWait {
    /// The bytes were in the page cache: this many were read.
    Read(usize),
    /// Reading would have blocked (or the platform cannot tell): do it on a
    /// worker thread instead.
    WouldBlock,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod linux {
    use std::ffi::c_int;
    #[repr(C)]
    pub struct IoVec {
        pub base: *mut u8,
        pub len: usize,
    }
    pub const RWF_NOWAIT: c_int = 0x8;
    pub const EAGAIN: i32 = 11;
    pub const EOPNOTSUPP: i32 = 95;
    pub const ENOSYS: i32 = 38;
    extern "C" {
        pub fn preadv2(fd: c_int, iov: *const IoVec, iovcnt: c_int, offset: i64, flags: c_int) -> isize;
        pub fn posix_fallocate(fd: c_int, offset: i64, len: i64) -> c_int;
    }
}

/// pread with RWF_NOWAIT (Linux ≥ 4.14): succeeds only with data already in
/// the page cache. This lets the sender serve hot WAL — nearly always what a
/// caught-up replica asks for — on the JavaScript thread without a thread-pool
/// round trip, and fall back to async work when the disk would be touched.
pub fn read_at_nowait(file: &File, buf: &mut [u8], offset: u64) -> io::Result<NoWait> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::{AtomicBool, Ordering};
        static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
        if UNSUPPORTED.load(Ordering::Relaxed) {
            return Ok(NoWait::WouldBlock);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let iov = linux::IoVec { base: buf[done..].as_mut_ptr(), len: buf.len() - done };
            // SAFETY: iov points into `buf`, which outlives the call.
            let n = unsafe { linux::preadv2(file.as_raw_fd(), &iov, 1, (offset + done as u64) as i64, linux::RWF_NOWAIT) };
            if n > 0 {
                done += n as usize;
                continue;
            }
            if n == 0 {
                return Ok(NoWait::Read(done));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(linux::EAGAIN) => return Ok(NoWait::WouldBlock),
                Some(linux::EOPNOTSUPP) | Some(linux::ENOSYS) => {
                    UNSUPPORTED.store(true, Ordering::Relaxed);
                    return Ok(NoWait::WouldBlock);
                }
                _ if err.kind() == io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        }
        Ok(NoWait::Read(done))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (file, buf, offset);
        Ok(NoWait::WouldBlock)
    }
}

/// Gives a new segment file its full size with blocks reserved, so that later
/// writes into it cannot fail for lack of space and reads of the unwritten
/// part return zeros. Falls back to a (sparse) set_len.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe { linux::posix_fallocate(file.as_raw_fd(), 0, len as i64) };
        if rc == 0 {
            return Ok(());
        }
        if rc == ENOSPC {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // EOPNOTSUPP / EINVAL on filesystems without fallocate: fall through.
    }
    file.set_len(len)
}

/// fsync a directory so that a create, rename or unlink in it survives a
/// crash. Windows has no directory fsync (NTFS journals metadata).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// rename + fsync of the file's directory: the new name is durable when this
/// returns. The file's own data must have been synced by the caller.
pub fn durable_rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Waits until `sock` is readable (or hung up) or `timeout` has passed.
#[cfg(unix)]
pub fn wait_readable(sock: &std::net::TcpStream, timeout: std::time::Duration) -> io::Result<()> {
    poll_two(std::os::fd::AsRawFd::as_raw_fd(sock), false, None, timeout).map(|_| ())
}

/// Waits until `sock` is readable (or hung up), `wake` was woken, or
/// `timeout` has passed. True when `wake` was (it is drained).
#[cfg(unix)]
pub fn wait_readable_or(sock: &std::net::TcpStream, wake: &Wake, timeout: std::time::Duration) -> io::Result<bool> {
    wait_or(sock, false, wake, timeout)
}

/// Waits until `sock` has room for writing (or failed), `wake` was woken,
/// or `timeout` has passed. True when `wake` was (it is drained).
#[cfg(unix)]
pub fn wait_writable_or(sock: &std::net::TcpStream, wake: &Wake, timeout: std::time::Duration) -> io::Result<bool> {
    wait_or(sock, true, wake, timeout)
}

#[cfg(unix)]
fn wait_or(sock: &std::net::TcpStream, write: bool, wake: &Wake, timeout: std::time::Duration) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let woken = poll_two(sock.as_raw_fd(), write, Some(wake.rx.as_raw_fd()), timeout)?;
    if woken {
        wake.drain();
    }
    Ok(woken)
}

/// poll(2) on `fd` (for reading, or writing) and, if given, `other` (for
/// reading). Returns whether `other` is readable.
#[cfg(unix)]
fn poll_two(fd: std::ffi::c_int, write: bool, other: Option<std::ffi::c_int>, timeout: std::time::Duration) -> io::Result<bool> {
    use std::ffi::{c_int, c_short};
    #[repr(C)]
    struct PollFd {
        fd: c_int,
        events: c_short,
        revents: c_short,
    }
    #[cfg(target_os = "linux")]
    type NFds = std::ffi::c_ulong;
    #[cfg(not(target_os = "linux"))]
    type NFds = std::ffi::c_uint;
    extern "C" {
        fn poll(fds: *mut PollFd, nfds: NFds, timeout: c_int) -> c_int;
    }
    const POLLIN: c_short = 1;
    const POLLOUT: c_short = 4;
    let mut p = [
        PollFd { fd, events: if write { POLLOUT } else { POLLIN }, revents: 0 },
        PollFd { fd: other.unwrap_or(-1), events: POLLIN, revents: 0 },
    ];
    let n: NFds = if other.is_some() { 2 } else { 1 };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as c_int;
    // SAFETY: `n` valid pollfds for the duration of the call.
    let rc = unsafe { poll(p.as_mut_ptr(), n, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        return Ok(false);
    }
    Ok(other.is_some() && p[1].revents != 0)
}

/// Wakes a thread waiting in [`wait_readable_or`] from another thread (a
/// stop request, a message to send): so that a pump can wait for its socket
/// for as long as nothing happens, instead of waking every few milliseconds
/// to look at a flag — which, times a thousand idle streams, was a node's
/// whole idle CPU.
#[cfg(unix)]
pub struct Wake {
    tx: std::os::unix::net::UnixStream,
    rx: std::os::unix::net::UnixStream,
}

#[cfg(unix)]
impl Wake {
    pub fn new() -> io::Result<Wake> {
        let (tx, rx) = std::os::unix::net::UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Wake { tx, rx })
    }

    /// Makes the waiting thread (or its next wait) return at once.
    pub fn wake(&self) {
        use std::io::Write;
        // (a full buffer means a wake-up is pending already)
        let _ = (&self.tx).write(&[1]);
    }

    fn drain(&self) {
        use std::io::Read;
        let mut b = [0u8; 64];
        while matches!((&self.rx).read(&mut b), Ok(n) if n > 0) {}
    }
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod linux_net {
    use std::ffi::c_int;
    pub const MSG_NOSIGNAL: c_int = 0x4000;
    pub const MSG_MORE: c_int = 0x8000;
    extern "C" {
        pub fn send(fd: c_int, buf: *const u8, len: usize, flags: c_int) -> isize;
        pub fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut i64, count: usize) -> isize;
    }
}

/// One non-blocking `send` on a socket in non-blocking mode. `more`: more
/// bytes follow at once (MSG_MORE), so that a message header and the
/// `send_file` of its payload leave in one segment even with TCP_NODELAY.
/// Never raises SIGPIPE.
#[cfg(unix)]
pub fn send_some(sock: &std::net::TcpStream, buf: &[u8], more: bool) -> io::Result<usize> {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        use std::os::fd::AsRawFd;
        let flags = linux_net::MSG_NOSIGNAL | if more { linux_net::MSG_MORE } else { 0 };
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes during the call.
            let n = unsafe { linux_net::send(sock.as_raw_fd(), buf.as_ptr(), buf.len(), flags) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    {
        use std::io::Write;
        let _ = more;
        let mut s = sock;
        s.write(buf)
    }
}

/// Sends up to `count` bytes of `file` from `offset` to `sock` without
/// copying them through user memory (Linux `sendfile`). Ok(0) means the file
/// ends before `offset`. Err(Unsupported) where the kernel or platform cannot
/// (the caller then reads and sends).
#[cfg(unix)]
pub fn send_file(
    sock: &std::net::TcpStream,
    file: &File,
    offset: u64,
    count: usize,
) -> io::Result<usize> {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        use std::os::fd::AsRawFd;
        const EINVAL: i32 = 22;
        const ENOSYS: i32 = 38;
        const EOPNOTSUPP: i32 = 95;
        let mut off = offset as i64;
        loop {
            // SAFETY: plain syscall on descriptors the caller keeps open; `off` outlives it.
            let n =
                unsafe { linux_net::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                _ if e.kind() == io::ErrorKind::Interrupted => continue,
                Some(EINVAL) | Some(ENOSYS) | Some(EOPNOTSUPP) => {
                    return Err(io::ErrorKind::Unsupported.into())
                }
                _ => return Err(e),
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    {
        let _ = (sock, file, offset, count);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The first `len` bytes of a file, readable in place: mapped read-only
/// where the platform can (the page cache's own pages, no copy), read into
/// memory otherwise. The caller must know that the file keeps at least
/// `len` bytes while the mapping lives (a mapped page past a truncation
/// raises SIGBUS): WAL segments at or below commit_lsn are never shortened
/// — truncation writes zeros past its point and unlinks later segments,
/// neither of which touches a mapping.
pub struct FileBytes {
    #[cfg(unix)]
    map: Option<(*mut u8, usize)>,
    owned: Vec<u8>,
}

// SAFETY: the mapping is read-only and owned by this value alone.
unsafe impl Send for FileBytes {}

#[cfg(unix)]
mod unix_mmap {
    use std::ffi::{c_int, c_void};
    pub const PROT_READ: c_int = 1;
    pub const MAP_PRIVATE: c_int = 2;
    /// Linux: fault every page in at once (one call instead of a fault per page).
    #[cfg(target_os = "linux")]
    pub const MAP_POPULATE: c_int = 0x8000;
    #[cfg(not(target_os = "linux"))]
    pub const MAP_POPULATE: c_int = 0;
    extern "C" {
        pub fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: i64) -> *mut c_void;
        pub fn munmap(addr: *mut c_void, len: usize) -> c_int;
    }
}

impl FileBytes {
    pub fn open(file: &File, len: usize) -> io::Result<FileBytes> {
        #[cfg(unix)]
        if len > 0 {
            use std::os::fd::AsRawFd;
            // SAFETY: a fresh read-only private mapping of an fd we hold; checked against MAP_FAILED.
            let p = unsafe { unix_mmap::mmap(std::ptr::null_mut(), len, unix_mmap::PROT_READ, unix_mmap::MAP_PRIVATE | unix_mmap::MAP_POPULATE, file.as_raw_fd(), 0) };
            if p as isize != -1 {
                return Ok(FileBytes { map: Some((p.cast(), len)), owned: Vec::new() });
            }
        }
        let mut owned = vec![0u8; len];
        let n = read_full_at(file, &mut owned, 0)?;
        if n < len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("file holds {n} bytes, {len} expected")));
        }
        Ok(FileBytes {
            #[cfg(unix)]
            map: None,
            owned,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        #[cfg(unix)]
        if let Some((p, len)) = self.map {
            // SAFETY: mapped for `len` bytes until Drop.
            return unsafe { std::slice::from_raw_parts(p, len) };
        }
        &self.owned
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some((p, len)) = self.map.take() {
            // SAFETY: unmapping what open() mapped, once.
            unsafe { unix_mmap::munmap(p.cast(), len) };
        }
    }
}
