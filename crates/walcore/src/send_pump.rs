//! The send pump: store → socket for a sender that is behind, on a worker
//! thread.
//!
//! A node serving eight replicas at once framed and wrote every 128 KiB
//! message on its one JavaScript thread — a pread into a buffer and a write
//! out of it, both copies — and topped out below PostgreSQL, whose eight
//! walsenders use every core. While a sender has at least a few messages to
//! catch up, it lends the pump a duplicate of its socket: the pump writes each
//! XLogData header with MSG_MORE and its payload with `sendfile` straight from
//! the segment's page cache (no copy in user space, none on the JS thread),
//! without blocking, until the socket is full, the budget is spent, or it has
//! sent up to `end`. The caller keeps reading the client's replies on its own
//! socket meanwhile and holds back its own writes until the run returns.
//!
//! A socket can fill up in the middle of a message. The pump never leaves a
//! message half sent: it returns the rest of it in [`SendReport::tail`], which
//! the caller writes before anything else, through its event loop — which is
//! also how the caller learns, without a thread waiting, that the client has
//! read enough for the next run. When the socket fills up exactly between two
//! messages, the next whole message is the tail, so there is always a write
//! to wait on.
//!
//! Zero copy or not: `sendfile` saves the node a copy of every byte (8
//! clients: 0.24 instead of 0.33 node CPU s per GiB), but socket buffers
//! that point into the page cache cost every receiver more to read. On AMD
//! EPYC that showed only with one client (pg_receivewal 10% slower); on Intel
//! Xeon, whose cores share their last-level cache, data the sender has just
//! copied is still in it when the receiver copies it out, and page-cache
//! pages are not: eight discarding consumers spent 2.0–2.4 s of system time
//! per 8 GiB reading from the node against 1.2 from PostgreSQL, which
//! copies, and the node served 0.77× PostgreSQL's rate instead of 0.95×.
//! So the sender copies, as PostgreSQL does; `zero_copy` stays for
//! measuring the other way (both are tested byte for byte).
//!
//! Framing is the same as the caller's own (`xlogdata::frame`): a message
//! stops at the segment end, at `max_send`, and, when more is pending, at a
//! page boundary, so a client cannot tell which of the two sent it.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode};
use crate::lsn::Lsn;
use crate::store::Store;
use crate::sys;
use crate::xlogdata::{payload_len, pg_now, write_header, FrameRequest, HEADER_SIZE};

pub struct SendJob {
    /// The first byte to send; the client has everything before it.
    pub start: Lsn,
    /// Send nothing at or past this (commit_lsn, or flush_lsn for recovery).
    pub end: Lsn,
    /// walEnd of every message.
    pub wal_end: Lsn,
    /// Start no new message after this many bytes were sent.
    pub budget: usize,
    /// How long the run may wait, in all, for room in a full socket before
    /// it returns `Full` (zero: return at once).
    pub wait: Duration,
    /// Payload by `sendfile` from the page cache (else read and sent, like
    /// PostgreSQL's walsender): see "Zero copy or not" in the module doc.
    pub zero_copy: bool,
}

/// Why a run returned.
#[derive(Debug)]
pub enum SendEnd {
    /// Sent up to `end`, or spent the budget: nothing is pending in the pump.
    Done,
    /// The socket is full: write `tail`, then run again once it is written.
    Full,
    /// `stop` was set (between two messages).
    Stopped,
    /// Writing the socket failed (the client went away).
    Io(io::Error),
    /// Reading the store failed (e.g. the segment was removed).
    Store(Error),
}

#[derive(Debug)]
pub struct SendReport {
    /// End of the WAL handed to the socket, `tail` included.
    pub sent: Lsn,
    /// XLogData messages begun (those in `tail` included).
    pub messages: u64,
    /// The unsent rest of the last message; the caller writes it first.
    pub tail: Vec<u8>,
    pub end: SendEnd,
}

pub struct SendPump {
    sock: std::net::TcpStream,
    store: Arc<Store>,
    tli: u32,
    max_send: usize,
    /// Cleared on the first `Unsupported` from sendfile: read and send instead.
    sendfile: bool,
    scratch: Vec<u8>,
    /// Woken with a stop, so that a wait for room in the socket ends at once.
    wake: Arc<sys::Wake>,
}

impl SendPump {
    /// `fd` is the caller's socket, in non-blocking mode; the pump writes to a
    /// duplicate of it, closed when the pump is dropped.
    pub fn new(fd: i32, store: Arc<Store>, tli: u32, max_send: usize) -> crate::error::Result<SendPump> {
        use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd};
        if fd < 0 {
            return Err(crate::error::Error::new(crate::error::ErrorCode::InvalidArgument, format!("invalid socket descriptor {fd}")));
        }
        if tli == 0 {
            return Err(crate::error::Error::new(crate::error::ErrorCode::InvalidArgument, "timeline 0 is not valid"));
        }
        // SAFETY: the caller owns `fd` and keeps it open during this call.
        let dup = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| crate::error::Error::new(crate::error::ErrorCode::Io, format!("cannot duplicate socket descriptor {fd}: {e}")))?;
        // SAFETY: `dup` is a fresh descriptor we own; TcpStream takes it over.
        let sock = unsafe { std::net::TcpStream::from_raw_fd(dup.into_raw_fd()) };
        let wake = sys::Wake::new().map_err(|e| crate::error::Error::new(crate::error::ErrorCode::Io, format!("cannot make the pump's wake-up channel: {e}")))?;
        Ok(SendPump { sock, store, tli, max_send: max_send.max(1), sendfile: true, scratch: Vec::new(), wake: Arc::new(wake) })
    }

    /// What wakes this pump's waits: to be woken after its stop flag is set
    /// (`PumpHandle::with_wake`).
    pub fn waker(&self) -> Arc<sys::Wake> {
        self.wake.clone()
    }

    /// Sends from `job.start` until one of [`SendEnd`]; see the module doc.
    pub fn run(&mut self, job: &SendJob, stop: &AtomicBool) -> SendReport {
        let mut r = SendReport { sent: job.start, messages: 0, tail: Vec::new(), end: SendEnd::Done };
        let room = Room { until: Instant::now() + job.wait, stop, wake: self.wake.clone() };
        let seg = self.store.seg_size();
        let mut spent = 0usize;
        while r.sent < job.end {
            if stop.load(Ordering::Relaxed) {
                r.end = SendEnd::Stopped;
                return r;
            }
            if spent >= job.budget {
                return r;
            }
            let req = FrameRequest {
                tli: self.tli,
                start: r.sent,
                end: job.end,
                wal_end: job.wal_end,
                send_time: None,
                max_send: self.max_send,
            };
            let step = payload_len(&req, seg, HEADER_SIZE + self.max_send)
                .and_then(|n| Ok((n, self.store.prepare_read(self.tli, r.sent, job.end, true)?)));
            let (n, file) = match step {
                Ok(v) => v,
                Err(e) => {
                    r.end = SendEnd::Store(e);
                    return r;
                }
            };
            let off = r.sent.segment_offset(seg);
            let mut header = [0u8; HEADER_SIZE];
            write_header(&mut header, r.sent, job.wal_end, pg_now(), n);
            r.messages += 1;
            let sent = if job.zero_copy && self.sendfile {
                self.send_zero_copy(&header, &file, off, n, &mut r.tail)
            } else {
                self.send_copied(&header, &file, off, n, &mut r.tail, &room)
            };
            match sent {
                Ok(()) => {}
                Err(e) => {
                    r.tail.clear();
                    r.end = e;
                    return r;
                }
            }
            r.sent = Lsn(r.sent.0 + n as u64);
            spent += HEADER_SIZE + n;
            if !r.tail.is_empty() {
                r.end = SendEnd::Full;
                return r;
            }
        }
        r
    }

    /// Sends one message, header with MSG_MORE and payload by sendfile; what
    /// the socket would not take goes to `tail`.
    fn send_zero_copy(
        &mut self,
        header: &[u8],
        file: &File,
        off: u64,
        n: usize,
        tail: &mut Vec<u8>,
    ) -> Result<(), SendEnd> {
        let h = match sys::send_some(&self.sock, header, true) {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(SendEnd::Io(e)),
        };
        if h < header.len() {
            tail.extend_from_slice(&header[h..]);
            return self.read_tail(file, off, n, tail);
        }
        let mut done = 0usize;
        while done < n {
            let sent = if self.sendfile {
                match sys::send_file(&self.sock, file, off + done as u64, n - done) {
                    Ok(0) => return Err(self.short(off + done as u64)),
                    Ok(k) => Ok(k),
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        self.sendfile = false;
                        continue;
                    }
                    Err(e) => Err(e),
                }
            } else {
                self.scratch.resize(n - done, 0);
                let got = sys::read_full_at(file, &mut self.scratch, off + done as u64)
                    .map_err(|e| self.read_error(off, e))?;
                if got != n - done {
                    return Err(self.short(off + (done + got) as u64));
                }
                sys::send_some(&self.sock, &self.scratch, false)
            };
            match sent {
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(SendEnd::Io(e)),
            }
        }
        if done < n {
            return self.read_tail(file, off + done as u64, n - done, tail);
        }
        Ok(())
    }

    /// Sends one message read into memory, header and payload in one write.
    fn send_copied(
        &mut self,
        header: &[u8],
        file: &File,
        off: u64,
        n: usize,
        tail: &mut Vec<u8>,
        room: &Room,
    ) -> Result<(), SendEnd> {
        let total = HEADER_SIZE + n;
        self.scratch.resize(total, 0);
        self.scratch[..HEADER_SIZE].copy_from_slice(header);
        let got =
            sys::read_full_at(file, &mut self.scratch[HEADER_SIZE..], off).map_err(|e| self.read_error(off, e))?;
        if got != n {
            return Err(self.short(off + got as u64));
        }
        let mut done = 0usize;
        while done < total {
            match sys::send_some(&self.sock, &self.scratch[done..], false) {
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !room.wait(&self.sock) {
                        break;
                    }
                }
                Err(e) => return Err(SendEnd::Io(e)),
            }
        }
        tail.extend_from_slice(&self.scratch[done..]);
        Ok(())
    }

    fn read_tail(&self, file: &File, off: u64, len: usize, tail: &mut Vec<u8>) -> Result<(), SendEnd> {
        let at = tail.len();
        tail.resize(at + len, 0);
        let got = sys::read_full_at(file, &mut tail[at..], off).map_err(|e| self.read_error(off, e))?;
        if got != len {
            return Err(self.short(off + got as u64));
        }
        Ok(())
    }

    fn read_error(&self, off: u64, e: io::Error) -> SendEnd {
        SendEnd::Store(Error::new(
            ErrorCode::Io,
            format!("{}: cannot read WAL at segment offset {off:#X}: {e}", self.store.dir().display()),
        ))
    }

    /// A file we keep at full segment size ended early: damage, not EOF.
    fn short(&self, off: u64) -> SendEnd {
        SendEnd::Store(Error::new(
            ErrorCode::Corrupt,
            format!("{}: short read of WAL at segment offset {off:#X}", self.store.dir().display()),
        ))
    }
}

/// Waiting for room in a full socket, as PostgreSQL's walsender does in
/// `WaitLatchOrSocket`: this thread is the pump's own, so it may block. Going
/// back to the event loop for every full socket instead left the socket empty
/// for the round trip (the tail's write, its callback, the next run's start),
/// and the client woke more often to read less: 15,600 reads of 550 KiB for
/// eight consumers where PostgreSQL's took 11,000 of 780. The wait is bounded
/// (so that the caller's held-back writes, e.g. a keepalive reply, go out
/// in time) and ends at once on a stop (the pump's wake-up channel).
struct Room<'a> {
    until: Instant,
    stop: &'a AtomicBool,
    wake: Arc<sys::Wake>,
}

impl Room<'_> {
    /// Waits for room in `sock`; false, without waiting, once the time is up
    /// or `stop` was set. After true the caller tries to write again: there
    /// is room, or an error for the write to report, or it was woken or the
    /// time ran out and it comes back here.
    fn wait(&self, sock: &std::net::TcpStream) -> bool {
        let now = Instant::now();
        if now >= self.until || self.stop.load(Ordering::Relaxed) {
            return false;
        }
        // (a poll that fails says nothing about the socket: the write will)
        let _ = sys::wait_writable_or(sock, &self.wake, self.until - now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testwal::TempDir;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    const SEG: u64 = 1 << 20;

    /// A store holding segments 0..segs, flushed, with bytes that differ at
    /// every position (the pump neither reads nor checks WAL structure).
    fn store_with(dir: &TempDir, segs: u64) -> (Arc<Store>, Vec<u8>) {
        let wal: Vec<u8> = (0..segs * SEG).map(|i| (i ^ (i >> 8) ^ (i >> 16) ^ (i >> 24)) as u8).collect();
        let s = Store::open(dir.path(), SEG, 1).unwrap();
        s.append(Lsn(0), &wal).unwrap();
        s.flush().unwrap();
        (Arc::new(s), wal)
    }

    /// A job whose walEnd is its end, as for a client served up to commit_lsn.
    fn job(start: Lsn, end: Lsn, budget: usize, zero_copy: bool) -> SendJob {
        SendJob { start, end, wal_end: end, budget, zero_copy, wait: Duration::ZERO }
    }

    /// (the pump's side, non-blocking; the client's side, blocking)
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (s, c)
    }

    /// Reads XLogData messages until WAL up to `end` arrived; checks each
    /// header and returns the WAL bytes and the message sizes.
    fn read_stream(c: &mut TcpStream, start: Lsn, end: Lsn, wal_end: Lsn) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        let mut at = start;
        while at < end {
            let mut h = [0u8; HEADER_SIZE];
            c.read_exact(&mut h).unwrap();
            assert_eq!(h[0], b'd');
            assert_eq!(h[5], b'w');
            let len = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
            let n = len - 4 - 25;
            assert_eq!(u64::from_be_bytes(h[6..14].try_into().unwrap()), at.0, "messages are contiguous");
            assert_eq!(u64::from_be_bytes(h[14..22].try_into().unwrap()), wal_end.0);
            let mut p = vec![0u8; n];
            c.read_exact(&mut p).unwrap();
            out.extend_from_slice(&p);
            sizes.push(n);
            at = Lsn(at.0 + n as u64);
        }
        assert_eq!(at, end, "no message runs past end");
        (out, sizes)
    }

    /// Runs the pump to `end` the way a sender does: write the tail on the
    /// (blocking) socket, run again.
    fn pump_all(
        p: &mut SendPump,
        s: &TcpStream,
        start: Lsn,
        end: Lsn,
        wal_end: Lsn,
        budget: usize,
        zero_copy: bool,
    ) -> (u64, u64) {
        use std::io::Write;
        let stop = AtomicBool::new(false);
        let (mut runs, mut fulls) = (0u64, 0u64);
        let mut at = start;
        while at < end {
            let r = p.run(&SendJob { start: at, end, wal_end, budget, zero_copy, wait: Duration::ZERO }, &stop);
            runs += 1;
            match r.end {
                SendEnd::Done => assert!(r.tail.is_empty()),
                SendEnd::Full => {
                    fulls += 1;
                    assert!(!r.tail.is_empty());
                    s.set_nonblocking(false).unwrap();
                    (&*s).write_all(&r.tail).unwrap();
                    s.set_nonblocking(true).unwrap();
                }
                e => panic!("unexpected end {e:?}"),
            }
            assert!(r.sent > at);
            at = r.sent;
        }
        (runs, fulls)
    }

    #[test]
    fn sends_the_store_byte_for_byte_through_a_full_socket() {
        for zero_copy in [true, false] {
            byte_for_byte(zero_copy);
        }
    }

    fn byte_for_byte(zero_copy: bool) {
        let dir = TempDir::new(if zero_copy { "sendpump-bytes-zc" } else { "sendpump-bytes-copy" });
        let (store, wal) = store_with(&dir, 4);
        let (s, mut c) = pair();
        // A small send buffer makes the socket fill mid-message many times.
        let mut p = SendPump::new(s.as_raw_fd(), store, 1, 128 * 1024).unwrap();
        let start = Lsn(100); // not message-aligned
        let end = Lsn(4 * SEG - 7);
        let wal_end = Lsn(4 * SEG);
        let reader = std::thread::spawn(move || {
            // Read slowly at first so that the pump meets a full socket.
            std::thread::sleep(std::time::Duration::from_millis(50));
            read_stream(&mut c, start, end, wal_end)
        });
        let (_runs, fulls) = pump_all(&mut p, &s, start, end, wal_end, usize::MAX, zero_copy);
        let (got, sizes) = reader.join().unwrap();
        assert!(fulls > 0, "the socket never filled: the tail path was not exercised");
        assert_eq!(got, wal[100..(4 * SEG - 7) as usize], "the WAL arrives byte for byte");
        // Framing as xlogdata::frame: at most max_send, never across a segment end, page-cut while more is pending.
        let mut at = 100u64;
        for (i, n) in sizes.iter().enumerate() {
            assert!(*n <= 128 * 1024);
            assert_eq!(at / SEG, (at + *n as u64 - 1) / SEG, "message {i} crosses a segment end");
            at += *n as u64;
            if i + 1 < sizes.len() && at % SEG != 0 {
                assert_eq!(at % 8192, 0, "message {i} is not cut at a page boundary");
            }
        }
    }

    #[test]
    fn a_run_waits_for_room_on_its_own_thread_within_its_time() {
        let dir = TempDir::new("sendpump-wait");
        let (store, wal) = store_with(&dir, 4);
        let (s, mut c) = pair();
        let mut p = SendPump::new(s.as_raw_fd(), store, 1, 128 * 1024).unwrap();
        let end = Lsn(4 * SEG);
        let reader = std::thread::spawn(move || {
            // Slow enough that the socket fills several times.
            std::thread::sleep(Duration::from_millis(50));
            read_stream(&mut c, Lsn(0), end, end)
        });
        let go = AtomicBool::new(false);
        // Time enough: the whole range in one run, the socket's fills waited out here.
        let r = p.run(&SendJob { start: Lsn(0), end, wal_end: end, budget: usize::MAX, zero_copy: false, wait: Duration::from_secs(30) }, &go);
        assert!(matches!(r.end, SendEnd::Done), "{:?}", r.end);
        assert!(r.tail.is_empty());
        assert_eq!(r.sent, end);
        let (got, _) = reader.join().unwrap();
        assert_eq!(got, wal);

        // Nobody reads: the run gives up once its time is spent, and returns the tail.
        let (s, _c) = pair();
        let dir = TempDir::new("sendpump-wait-stuck");
        // (more than a paused client's socket absorbs: about 36 MiB where tcp_rmem reaches 32 MiB)
        let (store, _) = store_with(&dir, 64);
        let mut p = SendPump::new(s.as_raw_fd(), store, 1, 128 * 1024).unwrap();
        let t0 = Instant::now();
        let r = p.run(&SendJob { start: Lsn(0), end: Lsn(64 * SEG), wal_end: Lsn(64 * SEG), budget: usize::MAX, zero_copy: false, wait: Duration::from_millis(200) }, &go);
        assert!(matches!(r.end, SendEnd::Full), "{:?}", r.end);
        assert!(!r.tail.is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(200));

        // And a stop (the flag, then the pump's wake-up, as PumpHandle::request_stop does) ends a wait at once.
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let wake = p.waker();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            st.store(true, Ordering::Relaxed);
            wake.wake();
        });
        let r = p.run(&SendJob { start: r.sent, end: Lsn(64 * SEG), wal_end: Lsn(64 * SEG), budget: usize::MAX, zero_copy: false, wait: Duration::from_secs(600) }, &stop);
        stopper.join().unwrap();
        assert!(matches!(r.end, SendEnd::Full | SendEnd::Stopped), "{:?}", r.end);
    }

    #[test]
    fn the_budget_bounds_one_run() {
        let dir = TempDir::new("sendpump-budget");
        let (store, wal) = store_with(&dir, 2);
        let (s, mut c) = pair();
        let mut p = SendPump::new(s.as_raw_fd(), store, 1, 64 * 1024).unwrap();
        let end = Lsn(2 * SEG);
        let reader = std::thread::spawn(move || read_stream(&mut c, Lsn(0), end, end));
        let stop = AtomicBool::new(false);
        let r = p.run(&job(Lsn(0), end, 100 * 1024, true), &stop);
        // Two messages: the second begins before the budget is spent, none after.
        assert_eq!(r.messages, 2);
        let first = r.sent;
        if matches!(r.end, SendEnd::Full) {
            s.set_nonblocking(false).unwrap();
            std::io::Write::write_all(&mut &s, &r.tail).unwrap();
            s.set_nonblocking(true).unwrap();
        } else {
            assert!(matches!(r.end, SendEnd::Done));
        }
        assert_eq!(first, Lsn(128 * 1024));
        pump_all(&mut p, &s, first, end, end, 1 << 20, false);
        let (got, _) = reader.join().unwrap();
        assert_eq!(got, wal);
    }

    #[test]
    fn stop_and_errors_end_a_run_between_messages() {
        let dir = TempDir::new("sendpump-errors");
        let (store, _) = store_with(&dir, 3);
        let (s, c) = pair();
        let mut p = SendPump::new(s.as_raw_fd(), store.clone(), 1, 128 * 1024).unwrap();
        let stopped = AtomicBool::new(true);
        let r = p.run(&job(Lsn(0), Lsn(SEG), usize::MAX, true), &stopped);
        assert!(matches!(r.end, SendEnd::Stopped));
        assert_eq!((r.sent, r.messages), (Lsn(0), 0));

        // Past the flushed WAL: refused, nothing sent.
        let go = AtomicBool::new(false);
        let r = p.run(&job(Lsn(0), Lsn(3 * SEG + 1), usize::MAX, true), &go);
        match r.end {
            SendEnd::Store(e) => assert_eq!(e.code, ErrorCode::NotYetWritten),
            e => panic!("{e:?}"),
        }
        assert_eq!(r.sent, Lsn(0));

        // A removed segment: the sender's "requested WAL segment … has already been removed".
        store.remove_below(1).unwrap();
        let r = p.run(&job(Lsn(10), Lsn(SEG), usize::MAX, true), &go);
        match r.end {
            SendEnd::Store(e) => {
                assert_eq!(e.code, ErrorCode::Removed);
                assert!(e.message.contains("has already been removed"), "{}", e.message);
            }
            e => panic!("{e:?}"),
        }

        // The client went away: an I/O error, not a hang or a signal.
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut saw_io = false;
        for _ in 0..50 {
            let r = p.run(&job(Lsn(SEG), Lsn(3 * SEG), usize::MAX, true), &go);
            if let SendEnd::Io(_) = r.end {
                saw_io = true;
                break;
            }
        }
        assert!(saw_io, "writing to a closed connection must fail");
        let r = p.run(&job(Lsn(SEG), Lsn(3 * SEG), usize::MAX, false), &go);
        assert!(matches!(r.end, SendEnd::Io(_)), "copied sends fail the same way: {:?}", r.end);
    }
}
