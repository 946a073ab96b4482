//! The receive pump: socket → checks → store, on a worker thread.
//!
//! `walkeeper receive` spent its CPU in JavaScript — one callback per
//! socket read, XLogData decoding, a page-header check per 8 KiB, a
//! thread-pool hop per append — and lost to pg_receivewal, which does none of
//! that on its way from `recv` to `write`. Once the replication connection is
//! in COPY (the handshake, authentication and TLS stay in TypeScript), the
//! caller pauses its socket and lends the pump a duplicate of its descriptor.
//! The pump reads large chunks, checks each XLogData (contiguous, within the
//! walEnd it announces, page headers — see `page_check`), appends it to the
//! store, and fsyncs when a segment completes, when the stream pauses, and at
//! least every second (after every message with `synchronous`). It only
//! reads: the caller keeps writing status updates on its own socket.
//!
//! [`ReceivePump::run`] returns to the caller at every event it must act on —
//! a flush to report, a keepalive asking for a reply, the end of the stream,
//! `max` elapsed — with the progress so far. It stops, leaving the message
//! and everything after it unread in [`Report::leftover`], at the first
//! message it does not handle (CopyDone, ErrorResponse, …): the caller's
//! protocol code takes over from there.
//!
//! Node ingest runs the same pump with [`Answer`]: it then also writes the
//! standby status updates itself, right after each fsync, and fsyncs as soon
//! as the socket has nothing more to read. A primary counting the node in
//! synchronous_standby_names waits for that 'r' on every commit, and
//! PostgreSQL's own walreceiver sends it from the process that fsynced;
//! going through JavaScript and the thread pool cost ~0.5 ms per commit.
//! The caller then writes nothing on the socket itself: what it has to say
//! (hot standby feedback) goes through [`ReceivePump::outbox`].

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lsn::Lsn;
use crate::store::Store;
use crate::page_check::PageHeaderCheck;
use crate::Error;

use crate::xlogdata::{status_update, KEEPALIVE_PAYLOAD as KEEPALIVE_LEN, XLOGDATA_PAYLOAD_HEADER as XLOG_DATA_HEADER};
/// Reads go into a buffer this large (a 128 KiB XLogData fits many times over).
const BUF: usize = 4 << 20;
/// No message a node or PostgreSQL sends is larger.
const MAX_MESSAGE: usize = 64 << 20;
/// fsync once the stream has paused this long.
const IDLE_FLUSH: Duration = Duration::from_millis(10);
/// ... and at least this often while it flows.
const MAX_UNFLUSHED: Duration = Duration::from_secs(1);

pub struct PumpConfig {
    /// The first byte expected (START_REPLICATION's position).
    pub start: Lsn,
    pub tli: u32,
    pub system_id: u64,
    pub pg_version: u32,
    /// Stop once WAL past this LSN was received.
    pub end_lsn: Option<Lsn>,
    /// fsync after every message (pg_receivewal --synchronous).
    pub synchronous: bool,
    /// Who sends the stream, for errors ("the node", "the upstream").
    pub peer: &'static str,
    /// Set: the pump answers the sender itself (node ingest).
    pub answer: Option<Answer>,
}

/// How a pump that answers for itself does it.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// Send a status update at least this often (wal_receiver_status_interval).
    pub status_interval: Duration,
    /// fsync once this much was appended unflushed, even while data keeps coming.
    pub flush_bytes: u64,
}

/// Why a pump stopped for good.
#[derive(Debug)]
pub enum End {
    /// A message the pump does not handle is first in `leftover`.
    Other,
    /// The peer closed the connection.
    Eof,
    /// Reading the socket failed.
    Io(io::Error),
    /// The node sent WAL that cannot be right; nothing of the message was written.
    Bad(String),
    /// Writing or fsyncing the store failed.
    Store(Error),
    /// WAL past `end_lsn` was received (and flushed).
    EndPos,
    /// The caller asked it to stop (see [`ReceivePump::finish`]).
    Stopped,
}

#[derive(Debug, Default)]
pub struct Report {
    /// End of the WAL received and appended.
    pub received: Lsn,
    /// End of the WAL fsynced.
    pub flushed: Lsn,
    /// The walEnd of the latest XLogData or keepalive.
    pub wal_end: Lsn,
    /// XLogData messages in this run.
    pub messages: u64,
    /// Keepalives in this run.
    pub keepalives: u64,
    /// A keepalive asked for a status update now (never with `answer`: the pump replied).
    pub reply_requested: bool,
    /// Duration of each fsync in this run.
    pub fsyncs: Vec<Duration>,
    /// With `answer`: for each status update acknowledging a new flush, the
    /// time since the upstream sent the oldest XLogData it acknowledges (its
    /// sendTime, on the upstream's clock): the primary's wait for this node.
    pub acks: Vec<Duration>,
    pub end: Option<End>,
    /// With `end`: the bytes read and not consumed (the unhandled message first).
    pub leftover: Vec<u8>,
}

pub struct ReceivePump {
    sock: std::net::TcpStream,
    store: Arc<Store>,
    check: PageHeaderCheck,
    cfg: PumpConfig,
    buf: Vec<u8>,
    head: usize,
    tail: usize,
    expected: Lsn,
    flushed: Lsn,
    wal_end: Lsn,
    unflushed: bool,
    last_flush: Instant,
    last_data: Instant,
    ended: bool,
    /// Appended since the last fsync (for `Answer::flush_bytes`).
    unflushed_bytes: u64,
    /// With `answer`: a keepalive asked for a reply.
    reply_due: bool,
    last_status: Instant,
    /// Bytes to write to the socket, in order (status updates, the outbox).
    out: Vec<u8>,
    fsyncs: Vec<Duration>,
    acks: Vec<Duration>,
    /// The sendTime of the first XLogData not yet acknowledged.
    unacked_since: Option<i64>,
    /// Whole protocol messages the caller wants sent (with `answer`).
    pub outbox: Arc<Mutex<Vec<u8>>>,
    /// Woken by whoever sets the stop flag or fills the outbox: the pump
    /// waits on its socket and this, not on a timer.
    wake: Arc<crate::sys::Wake>,
}

impl ReceivePump {
    /// `fd` is the caller's socket, in non-blocking mode; the pump reads a
    /// duplicate of it (closed when the pump is dropped), so the caller
    /// closing its own never leaves the pump reading a reused descriptor.
    /// `pending` are bytes the caller already read past CopyBothResponse.
    pub fn new(fd: i32, pending: &[u8], store: Arc<Store>, cfg: PumpConfig) -> crate::error::Result<ReceivePump> {
        use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd};
        if fd < 0 {
            return Err(crate::error::Error::new(crate::error::ErrorCode::InvalidArgument, format!("invalid socket descriptor {fd}")));
        }
        // SAFETY: the caller owns `fd` and keeps it open during this call.
        let dup = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| crate::error::Error::new(crate::error::ErrorCode::Io, format!("cannot duplicate socket descriptor {fd}: {e}")))?;
        // SAFETY: `dup` is a fresh descriptor we own; TcpStream takes it over.
        let sock = unsafe { std::net::TcpStream::from_raw_fd(dup.into_raw_fd()) };
        let check = PageHeaderCheck::new(store.seg_size(), cfg.system_id, cfg.pg_version, cfg.tli)?;
        let mut buf = vec![0u8; BUF.max(pending.len() * 2)];
        buf[..pending.len()].copy_from_slice(pending);
        let now = Instant::now();
        Ok(ReceivePump {
            sock,
            check,
            expected: cfg.start,
            // An answering pump reports its start as flushed before any WAL
            // arrives: the WAL before it is held (or was never asked for).
            flushed: if cfg.answer.is_some() { store.flush_lsn().max(cfg.start) } else { store.flush_lsn() },
            store,
            cfg,
            buf,
            head: 0,
            tail: pending.len(),
            wal_end: Lsn(0),
            unflushed: false,
            last_flush: now,
            last_data: now,
            ended: false,
            unflushed_bytes: 0,
            reply_due: false,
            last_status: now,
            out: Vec::new(),
            fsyncs: Vec::new(),
            acks: Vec::new(),
            unacked_since: None,
            outbox: Arc::new(Mutex::new(Vec::new())),
            wake: Arc::new(crate::sys::Wake::new().map_err(|e| crate::error::Error::new(crate::error::ErrorCode::Io, format!("cannot make the pump's wake-up channel: {e}")))?),
        })
    }

    /// What wakes this pump's waits: to be woken after the stop flag is set
    /// or the outbox filled (see [`ReceiveThread::request_stop`]).
    pub fn waker(&self) -> Arc<crate::sys::Wake> {
        self.wake.clone()
    }

    fn report(&self) -> Report {
        Report { received: self.expected, flushed: self.flushed, wal_end: self.wal_end, ..Default::default() }
    }

    fn flush(&mut self) -> Result<(), Error> {
        let t = Instant::now();
        self.flushed = self.store.flush()?;
        self.fsyncs.push(t.elapsed());
        self.unflushed = false;
        self.unflushed_bytes = 0;
        self.last_flush = Instant::now();
        if self.cfg.answer.is_some() {
            self.queue_status();
            if let Some(sent) = self.unacked_since.take() {
                // (a clock behind the upstream's makes it negative: counted as no wait)
                self.acks.push(Duration::from_micros((crate::xlogdata::pg_now() - sent).max(0) as u64));
            }
        }
        Ok(())
    }

    /// A standby status update ('r'): written = received, flush = apply =
    /// fsynced — what a walkeeper node applies is what it holds.
    fn queue_status(&mut self) {
        self.out.extend_from_slice(&status_update(self.expected, self.flushed, self.flushed, crate::xlogdata::pg_now()));
        self.reply_due = false;
        self.last_status = Instant::now();
    }

    /// Writes what is queued for the socket, as far as it takes it now.
    fn write_out(&mut self) -> io::Result<()> {
        if let Ok(mut o) = self.outbox.try_lock() {
            if !o.is_empty() {
                self.out.append(&mut o);
            }
        }
        while !self.out.is_empty() {
            match crate::sys::send_some(&self.sock, &self.out, false) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes everything queued, waiting for the socket up to a second.
    fn drain_out(&mut self) -> io::Result<()> {
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            self.write_out()?;
            if self.out.is_empty() {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the sender does not read its status updates"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ends a pump the caller stops: what was appended is fsynced (and
    /// acknowledged), queued status updates go out as far as the socket
    /// takes them now. The report's end is `Stopped`.
    pub fn finish(&mut self) -> Report {
        let mut r = self.report();
        let mut end = End::Stopped;
        if !self.ended {
            if self.unflushed {
                if let Err(e) = self.flush() {
                    end = End::Store(e);
                }
            }
            let _ = self.drain_out();
            self.ended = true;
        }
        r.received = self.expected;
        r.flushed = self.flushed;
        r.fsyncs = std::mem::take(&mut self.fsyncs);
        r.acks = std::mem::take(&mut self.acks);
        r.leftover = self.buf[self.head..self.tail].to_vec();
        r.end = Some(end);
        r
    }

    /// Works until an event the caller must act on, `stop` is set, or `max`
    /// has elapsed. After a report with `end`, further calls return at once.
    pub fn run(&mut self, max: Duration, stop: &AtomicBool) -> Report {
        let deadline = Instant::now() + max;
        let mut r = self.report();
        if self.ended {
            r.end = Some(End::Other);
            return r;
        }
        let end = loop {
            let mut flush_now = false;
            if let Err(e) = self.consume(&mut r, &mut flush_now) {
                break Some(e);
            }
            if let Some(a) = self.cfg.answer {
                if self.reply_due || self.last_status.elapsed() >= a.status_interval {
                    self.queue_status();
                }
                if let Err(e) = self.write_out() {
                    break Some(End::Io(e));
                }
            }
            if flush_now || (self.unflushed && self.last_flush.elapsed() >= MAX_UNFLUSHED) {
                if let Err(e) = self.flush() {
                    break Some(End::Store(e));
                }
                if let Some(endpos) = self.cfg.end_lsn {
                    if self.expected > endpos {
                        break Some(End::EndPos);
                    }
                }
                if let Err(e) = self.write_out() {
                    break Some(End::Io(e));
                }
                // The caller reports the flush to the node now.
                break None;
            }
            if r.reply_requested || stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break None;
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => break Some(End::Eof),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing arrived for IDLE_FLUSH (with `answer`: nothing
                    // more is readable): make what we have durable.
                    if self.unflushed {
                        if let Err(e) = self.flush() {
                            break Some(End::Store(e));
                        }
                        if let Err(e) = self.write_out() {
                            break Some(End::Io(e));
                        }
                        break None;
                    }
                }
                Err(e) => break Some(End::Io(e)),
            }
        };
        if let Some(e) = end {
            // Whatever was appended is made durable before the caller hears of the end.
            let e = match (&e, self.unflushed) {
                (End::Store(_), _) | (_, false) => e,
                (_, true) => match self.flush() {
                    Ok(()) => e,
                    Err(fe) => End::Store(fe),
                },
            };
            // Status updates still queued go before the caller writes again:
            // a message cut short would run into the caller's next one.
            let e = match self.drain_out() {
                Err(io) if matches!(e, End::Other) => End::Io(io),
                _ => e,
            };
            self.ended = true;
            r.leftover = self.buf[self.head..self.tail].to_vec();
            r.end = Some(e);
        }
        r.received = self.expected;
        r.flushed = self.flushed;
        r.wal_end = self.wal_end;
        r.fsyncs = std::mem::take(&mut self.fsyncs);
        r.acks = std::mem::take(&mut self.acks);
        r
    }

    /// Handles every complete message in the buffer.
    fn consume(&mut self, r: &mut Report, flush_now: &mut bool) -> Result<(), End> {
        loop {
            let avail = self.tail - self.head;
            if avail < 5 {
                return Ok(());
            }
            let b = &self.buf[self.head..self.tail];
            let code = b[0];
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            if len < 4 || len > MAX_MESSAGE {
                return Err(End::Bad(format!("malformed message from {}: message length {len}", self.cfg.peer)));
            }
            let total = 1 + len;
            if avail < total {
                if total > self.buf.len() {
                    self.buf.resize(total, 0);
                }
                return Ok(());
            }
            match code {
                b'd' => {}
                // NoticeResponse / ParameterStatus mid-stream: informational.
                b'N' | b'S' => {
                    self.head += total;
                    continue;
                }
                _ => return Err(End::Other),
            }
            let payload_at = self.head + 5;
            let payload_end = self.head + total;
            let tag = if len > 4 { self.buf[payload_at] } else { 0 };
            match tag {
                b'w' => {
                    let p = &self.buf[payload_at..payload_end];
                    if p.len() < XLOG_DATA_HEADER {
                        return Err(End::Bad(format!(
                            "malformed message from {}: XLogData shorter than its header",
                            self.cfg.peer
                        )));
                    }
                    let start = Lsn(u64::from_be_bytes(p[1..9].try_into().unwrap()));
                    let wal_end = Lsn(u64::from_be_bytes(p[9..17].try_into().unwrap()));
                    let data = &p[XLOG_DATA_HEADER..];
                    if start != self.expected {
                        return Err(End::Bad(format!(
                            "{} sent WAL at {start}, expected {} (not contiguous)",
                            self.cfg.peer, self.expected
                        )));
                    }
                    let end = Lsn(start.0 + data.len() as u64);
                    if end > wal_end {
                        return Err(End::Bad(format!(
                            "{} sent WAL up to {end} beyond the end it announces, {wal_end}",
                            self.cfg.peer
                        )));
                    }
                    let peer = self.cfg.peer;
                    self.check.check(start, data).map_err(|why| End::Bad(format!("{peer} sent invalid WAL: {}", why.message)))?;
                    self.store.append(start, data).map_err(End::Store)?;
                    let seg = self.store.seg_size();
                    self.unflushed_bytes += data.len() as u64;
                    if self.cfg.synchronous
                        || self.cfg.answer.is_some_and(|a| self.unflushed_bytes >= a.flush_bytes)
                        || (end.0 - 1) / seg != start.0 / seg
                        || end.segment_offset(seg) == 0
                        || self.cfg.end_lsn.is_some_and(|e| end > e)
                    {
                        *flush_now = true;
                    }
                    if self.unacked_since.is_none() {
                        self.unacked_since = Some(i64::from_be_bytes(p[17..25].try_into().unwrap()));
                    }
                    self.expected = end;
                    self.wal_end = wal_end;
                    self.unflushed = true;
                    r.messages += 1;
                    self.head += total;
                    if *flush_now {
                        return Ok(());
                    }
                }
                b'k' => {
                    let p = &self.buf[payload_at..payload_end];
                    if p.len() != KEEPALIVE_LEN {
                        return Err(End::Bad(format!(
                            "malformed message from {}: keepalive of {} bytes",
                            self.cfg.peer,
                            p.len()
                        )));
                    }
                    self.wal_end = Lsn(u64::from_be_bytes(p[1..9].try_into().unwrap()));
                    r.keepalives += 1;
                    self.head += total;
                    if p[17] != 0 {
                        // The sender's wal_sender_timeout is running out: answer
                        // now, not at the next flush.
                        if self.cfg.answer.is_some() {
                            self.reply_due = true;
                            continue;
                        }
                        r.reply_requested = true;
                        return Ok(());
                    }
                }
                t => {
                    return Err(End::Bad(format!(
                        "malformed message from {}: CopyData of unknown type {:?}",
                        self.cfg.peer, t as char
                    )))
                }
            }
        }
    }

    /// Reads more into the buffer, waiting up to the next flush/stop check.
    /// Ok(false): end of stream. WouldBlock: idle long enough to flush.
    fn fill(&mut self, deadline: Instant) -> io::Result<bool> {
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        } else if self.buf.len() - self.tail < self.buf.len() / 4 {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        loop {
            match self.sock.read(&mut self.buf[self.tail..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.tail += n;
                    self.last_data = Instant::now();
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    let mut wait = deadline.saturating_duration_since(now);
                    if self.unflushed {
                        let idle = now.duration_since(self.last_data);
                        if idle >= IDLE_FLUSH || self.cfg.answer.is_some() {
                            return Err(e);
                        }
                        wait = wait.min(IDLE_FLUSH - idle);
                    }
                    if wait.is_zero() {
                        return Ok(true);
                    }
                    if let Some(a) = self.cfg.answer {
                        // Our own status update is due then.
                        wait = wait.min(a.status_interval.saturating_sub(self.last_status.elapsed()).max(Duration::from_millis(1)));
                    }
                    crate::sys::wait_readable_or(&self.sock, &self.wake, wait)?;
                    // Readable, woken (stop, outbox) or the wait is over: the caller's loop looks at everything again.
                    return Ok(true);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A pump on a thread of its own, for a stream that never stops flowing
/// (node ingest): a run on the thread pool per flush would hold a pool
/// thread for good and put a round trip through it between the flush and
/// the next read. The thread runs the pump until it ends or is stopped, and
/// calls `notify` after each run that moved something — at most one call
/// outstanding: the caller's [`ReceiveThread::take`] collects everything since.
pub struct ReceiveThread {
    stop: AtomicBool,
    /// Whole protocol messages for the pump to send (see [`ReceivePump::outbox`]).
    outbox: Arc<Mutex<Vec<u8>>>,
    wake: Arc<crate::sys::Wake>,
    state: Mutex<Report>,
    notified: AtomicBool,
}

impl ReceiveThread {
    /// Asks the pump to fsync, acknowledge and end; it does at once, even
    /// while it waits for its socket.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.wake();
    }

    /// Queues whole protocol messages for the pump to write, now.
    pub fn send(&self, messages: &[u8]) {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(messages);
        self.wake.wake();
    }

    /// Progress since the last call (fsync times, counters), the latest
    /// positions, and the end once, with its leftover.
    pub fn take(&self) -> Report {
        self.notified.store(false, Ordering::SeqCst);
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Report {
            received: g.received,
            flushed: g.flushed,
            wal_end: g.wal_end,
            messages: std::mem::take(&mut g.messages),
            keepalives: std::mem::take(&mut g.keepalives),
            reply_requested: false,
            fsyncs: std::mem::take(&mut g.fsyncs),
            acks: std::mem::take(&mut g.acks),
            end: g.end.take(),
            leftover: std::mem::take(&mut g.leftover),
        }
    }

    /// The shared state for running `pump` with [`ReceiveThread::start`].
    pub fn new(pump: &ReceivePump) -> Arc<ReceiveThread> {
        Arc::new(ReceiveThread {
            stop: AtomicBool::new(false),
            outbox: pump.outbox.clone(),
            wake: pump.waker(),
            state: Mutex::new(Report { received: pump.expected, flushed: pump.flushed, ..Default::default() }),
            notified: AtomicBool::new(false),
        })
    }

    /// Runs `pump` on a new thread (see [`ReceiveThread`]); the pump, and its socket
    /// duplicate, are dropped when it ends, after the last `notify`.
    pub fn start(self: &Arc<ReceiveThread>, mut pump: ReceivePump, notify: impl Fn() + Send + 'static) -> io::Result<()> {
        let l = self.clone();
        std::thread::Builder::new().name("walkeeper-pump".into()).spawn(move || loop {
            // (a stop or a message to send wakes the pump: the bound only sets how often an idle one reports)
            let mut r = pump.run(Duration::from_secs(10), &l.stop);
            if r.end.is_none() && l.stop.load(Ordering::Relaxed) {
                let mut f = pump.finish();
                f.messages = r.messages;
                f.keepalives = r.keepalives;
                f.fsyncs.splice(0..0, r.fsyncs);
                f.acks.splice(0..0, r.acks);
                f.wal_end = r.wal_end;
                r = f;
            }
            let ended = r.end.is_some();
            let moved = {
                let mut g = l.state.lock().unwrap_or_else(|p| p.into_inner());
                let moved = ended || r.received != g.received || r.flushed != g.flushed || !r.fsyncs.is_empty();
                g.received = r.received;
                g.flushed = r.flushed;
                g.wal_end = r.wal_end;
                g.messages += r.messages;
                g.keepalives += r.keepalives;
                g.fsyncs.append(&mut r.fsyncs);
                g.acks.append(&mut r.acks);
                if ended {
                    g.end = r.end.take();
                    g.leftover = std::mem::take(&mut r.leftover);
                }
                moved
            };
            if moved && !l.notified.swap(true, Ordering::SeqCst) {
                notify();
            }
            if ended {
                drop(pump);
                return;
            }
        })?;
        Ok(())
    }
}

/// A pump (this one or `send_pump::SendPump`) shared between the JS thread
/// (stop, close) and the worker running it.
pub struct PumpHandle<P> {
    /// None once closed (its socket duplicate with it).
    pub pump: std::sync::Mutex<Option<P>>,
    stop: AtomicBool,
    /// Woken with a stop (a receive pump waits on its socket and this).
    wake: Option<Arc<crate::sys::Wake>>,
}

impl<P> PumpHandle<P> {
    pub fn new(p: P) -> PumpHandle<P> {
        PumpHandle { pump: std::sync::Mutex::new(Some(p)), stop: AtomicBool::new(false), wake: None }
    }

    /// For a pump that waits on `wake` as well as its socket.
    pub fn with_wake(p: P, wake: Arc<crate::sys::Wake>) -> PumpHandle<P> {
        PumpHandle { pump: std::sync::Mutex::new(Some(p)), stop: AtomicBool::new(false), wake: Some(wake) }
    }

    /// Makes a running run return (between two messages, or from a wait).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = &self.wake {
            w.wake();
        }
    }

    /// Runs `f` on the pump with the stop flag; Err names why it cannot:
    /// "already running" (one run at a time) or "closed".
    pub fn run<T>(&self, f: impl FnOnce(&mut P, &AtomicBool) -> T) -> std::result::Result<T, &'static str> {
        let mut g = self.pump.try_lock().map_err(|_| "already running")?;
        let p = g.as_mut().ok_or("closed")?;
        Ok(f(p, &self.stop))
    }

    /// Closes the pump (and its socket duplicate) unless a run holds it; then
    /// only asks that run to stop, and returns false.
    pub fn close(&self) -> bool {
        match self.pump.try_lock() {
            Ok(mut g) => {
                g.take();
                true
            }
            Err(_) => {
                self.request_stop();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testwal::{TempDir, WalBuilder, SYSID};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    const SEG: u64 = 1 << 20;

    fn xlogdata(start: Lsn, wal_end: Lsn, data: &[u8]) -> Vec<u8> {
        xlogdata_sent(start, wal_end, data, 0)
    }

    /// An XLogData whose sendTime is `sent` (PostgreSQL's µs since 2000).
    fn xlogdata_sent(start: Lsn, wal_end: Lsn, data: &[u8], sent: i64) -> Vec<u8> {
        let mut m = vec![b'd'];
        m.extend_from_slice(&((4 + XLOG_DATA_HEADER + data.len()) as u32).to_be_bytes());
        m.push(b'w');
        m.extend_from_slice(&start.0.to_be_bytes());
        m.extend_from_slice(&wal_end.0.to_be_bytes());
        m.extend_from_slice(&sent.to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    fn keepalive(wal_end: Lsn, reply: bool) -> Vec<u8> {
        let mut m = vec![b'd', 0, 0, 0, 22, b'k'];
        m.extend_from_slice(&wal_end.0.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        m.push(reply as u8);
        m
    }

    /// A pump reading one end of a loopback connection; the other end to write to.
    fn setup(tag: &str, end_lsn: Option<Lsn>) -> (TempDir, Arc<Store>, ReceivePump, TcpStream, WalBuilder) {
        setup_with(tag, end_lsn, None)
    }

    fn setup_with(
        tag: &str,
        end_lsn: Option<Lsn>,
        answer: Option<Answer>,
    ) -> (TempDir, Arc<Store>, ReceivePump, TcpStream, WalBuilder) {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        for i in 0..120 {
            b.record(10, 0, [10, 9000, 300, 70_000, 5][i % 5]);
        }
        let dir = TempDir::new(tag);
        let store = Arc::new(Store::open(dir.path(), SEG, 1).unwrap());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (reader, _) = l.accept().unwrap();
        reader.set_nonblocking(true).unwrap();
        let cfg = PumpConfig {
            start: b.start,
            tli: 1,
            system_id: SYSID,
            pg_version: 15,
            end_lsn,
            synchronous: false,
            peer: "the node",
            answer,
        };
        let pump = ReceivePump::new(reader.as_raw_fd(), b"", store.clone(), cfg).unwrap();
        // The pump reads its own duplicate: closing ours must not matter.
        drop(reader);
        (dir, store, pump, writer, b)
    }

    /// Runs the pump until it ends (or `max_runs`), collecting the reports.
    fn run_to_end(p: &mut ReceivePump, max_runs: usize) -> Vec<Report> {
        let stop = AtomicBool::new(false);
        let mut out = Vec::new();
        for _ in 0..max_runs {
            let r = p.run(Duration::from_millis(200), &stop);
            let end = r.end.is_some();
            out.push(r);
            if end {
                break;
            }
        }
        out
    }

    fn stored(store: &Store, from: Lsn, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        let got = store.read(1, from, &mut buf).unwrap();
        buf.truncate(got);
        buf
    }

    #[test]
    fn writes_valid_wal_reports_flushes_and_replies_and_stops_at_copydone() {
        let (_d, store, mut p, mut w, b) = setup("pump-ok", None);
        let mut msgs = Vec::new();
        for (i, c) in b.bytes.chunks(8192 * 3 + 17).enumerate() {
            let start = Lsn(b.start.0 + (i * (8192 * 3 + 17)) as u64);
            msgs.extend(xlogdata(start, b.end(), c));
        }
        msgs.extend(keepalive(b.end(), true));
        msgs.extend([b'c', 0, 0, 0, 4, b'C', 0, 0, 0, 5, 0]);
        w.write_all(&msgs).unwrap();
        let reports = run_to_end(&mut p, 1000);
        let last = reports.last().unwrap();
        assert!(matches!(last.end, Some(End::Other)), "{:?}", last.end);
        assert_eq!(&last.leftover, &[b'c', 0, 0, 0, 4, b'C', 0, 0, 0, 5, 0]);
        assert_eq!(last.received, b.end());
        assert_eq!(last.flushed, b.end(), "everything appended is fsynced before the end is reported");
        assert!(reports.iter().any(|r| r.reply_requested), "the keepalive's reply request is reported");
        assert!(reports.iter().any(|r| r.end.is_none() && r.flushed > b.start), "flushes are reported as they happen");
        assert_eq!(stored(&store, b.start, b.bytes.len()), b.bytes);
    }

    #[test]
    fn a_gap_ends_the_pump_with_nothing_of_it_written() {
        let (_d, store, mut p, mut w, b) = setup("pump-gap", None);
        let half = 8192 * 5;
        w.write_all(&xlogdata(b.start, b.end(), &b.bytes[..half])).unwrap();
        w.write_all(&xlogdata(Lsn(b.start.0 + half as u64 + 8192), b.end(), &b.bytes[half + 8192..half * 2])).unwrap();
        let last = run_to_end(&mut p, 100).pop().unwrap();
        match &last.end {
            Some(End::Bad(m)) => assert!(m.contains("not contiguous"), "{m}"),
            e => panic!("{e:?}"),
        }
        assert_eq!(last.received, Lsn(b.start.0 + half as u64));
        assert_eq!(store.write_lsn(), Some(Lsn(b.start.0 + half as u64)));
    }

    #[test]
    fn wal_beyond_the_announced_end_and_bad_pages_are_refused() {
        let (_d, store, mut p, mut w, b) = setup("pump-beyond", None);
        w.write_all(&xlogdata(b.start, Lsn(b.start.0 + 100), &b.bytes[..8192])).unwrap();
        let last = run_to_end(&mut p, 100).pop().unwrap();
        assert!(matches!(&last.end, Some(End::Bad(m)) if m.contains("beyond the end it announces")), "{:?}", last.end);
        assert_eq!(store.write_lsn(), None);

        let (_d, store, mut p, mut w, b) = setup("pump-page", None);
        let mut bad = b.bytes[..8192 * 2].to_vec();
        bad[8192 + 8] ^= 0xFF;
        w.write_all(&xlogdata(b.start, b.end(), &bad)).unwrap();
        let last = run_to_end(&mut p, 100).pop().unwrap();
        assert!(matches!(&last.end, Some(End::Bad(m)) if m.contains("pageaddr")), "{:?}", last.end);
        assert_eq!(store.write_lsn(), None);
    }

    #[test]
    fn malformed_messages_are_refused() {
        for (msg, want) in [
            (vec![b'd', 0, 0, 0, 9, b'w', 1, 2, 3, 4], "shorter than its header"),
            (vec![b'd', 0, 0, 0, 6, b'k', 1], "keepalive of 2 bytes"),
            (vec![b'd', 0, 0, 0, 5, b'x'], "unknown type"),
            (vec![b'd', 0, 0, 0, 2], "message length 2"),
        ] {
            let (_d, _s, mut p, mut w, _b) = setup("pump-malformed", None);
            w.write_all(&msg).unwrap();
            let last = run_to_end(&mut p, 100).pop().unwrap();
            assert!(matches!(&last.end, Some(End::Bad(m)) if m.contains(want)), "{want}: {:?}", last.end);
        }
    }

    #[test]
    fn endpos_and_eof_end_with_everything_flushed() {
        let (_d, _s, mut p, mut w, b) = setup("pump-endpos", Some(Lsn(SEG + 20_000)));
        for (i, c) in b.bytes.chunks(8192).enumerate() {
            w.write_all(&xlogdata(Lsn(b.start.0 + (i * 8192) as u64), b.end(), c)).unwrap();
        }
        let last = run_to_end(&mut p, 100).pop().unwrap();
        assert!(matches!(last.end, Some(End::EndPos)), "{:?}", last.end);
        assert_eq!(last.received, Lsn(SEG + 3 * 8192), "stops after the message that passes the end position");
        assert_eq!(last.flushed, last.received);

        let (_d, _s, mut p, mut w, b) = setup("pump-eof", None);
        w.write_all(&xlogdata(b.start, b.end(), &b.bytes[..8192])).unwrap();
        drop(w);
        let last = run_to_end(&mut p, 100).pop().unwrap();
        assert!(matches!(last.end, Some(End::Eof)), "{:?}", last.end);
        assert_eq!(last.flushed, Lsn(b.start.0 + 8192));
    }

    #[test]
    fn stop_returns_a_waiting_run_promptly() {
        let (_d, _s, mut p, _w, _b) = setup("pump-stop", None);
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        let r = p.run(Duration::from_secs(10), &stop);
        assert!(r.end.is_none());
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    /// Reads the standby status updates ('r') the pump wrote, as (write, flush, apply), until `until` says stop.
    fn read_statuses(w: &mut TcpStream, until: impl Fn(&[(u64, u64, u64)]) -> bool) -> Vec<(u64, u64, u64)> {
        use std::io::Read;
        w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while !until(&got) {
            let mut chunk = [0u8; 4096];
            let n = w.read(&mut chunk).expect("a status update within 5 s");
            assert!(n > 0, "the pump closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 5 {
                let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
                if buf.len() < 1 + len {
                    break;
                }
                let m: Vec<u8> = buf.drain(..1 + len).collect();
                if m[0] == b'd' && m[5] == b'r' {
                    assert_eq!(m.len(), 39);
                    let at = |i: usize| u64::from_be_bytes(m[i..i + 8].try_into().unwrap());
                    got.push((at(6), at(14), at(22)));
                } else {
                    got.push((u64::MAX, m[0] as u64, m[5] as u64));
                }
            }
        }
        got
    }

    /// Waits for notifications and takes reports until `pred` holds (5 s at most).
    fn take_until(live: &ReceiveThread, rx: &std::sync::mpsc::Receiver<()>, mut pred: impl FnMut(&Report) -> bool) -> Report {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let _ = rx.recv_timeout(Duration::from_millis(100));
            let r = live.take();
            if pred(&r) || Instant::now() > deadline {
                return r;
            }
        }
    }

    const ANSWER: Answer = Answer { status_interval: Duration::from_secs(10), flush_bytes: 2 << 20 };

    #[test]
    fn answering_it_fsyncs_when_drained_and_acknowledges_each_flush_itself() {
        let (_d, store, p, mut w, b) = setup_with("pump-answer", None, Some(ANSWER));
        let (tx, rx) = std::sync::mpsc::channel();
        let live = ReceiveThread::new(&p);
        live.start(p, move || tx.send(()).unwrap()).unwrap();
        // One "commit" at a time, as a primary waiting on a synchronous standby sends them,
        // each sent (by its sendTime) an hour ago: the acknowledgements' waits count from there.
        const HOUR: i64 = 3_600_000_000;
        let mut at = 0usize;
        for size in [100usize, 8192, 300, 20_000] {
            let start = Lsn(b.start.0 + at as u64);
            w.write_all(&xlogdata_sent(start, b.end(), &b.bytes[at..at + size], crate::xlogdata::pg_now() - HOUR)).unwrap();
            at += size;
            let end = b.start.0 + at as u64;
            let st = read_statuses(&mut w, |g| g.iter().any(|s| s.1 >= end));
            assert_eq!(
                *st.last().unwrap(),
                (end, end, end),
                "write = flush = apply = what arrived, without being asked"
            );
            assert_eq!(store.flush_lsn(), Lsn(end));
        }
        // (the 'r' leaves before the thread records the flush: wait for it)
        let (mut fsyncs, mut acks) = (Vec::new(), Vec::new());
        let r = take_until(&live, &rx, |r| {
            fsyncs.extend(r.fsyncs.iter().copied());
            acks.extend(r.acks.iter().copied());
            r.flushed == Lsn(b.start.0 + at as u64)
        });
        assert_eq!(r.flushed, Lsn(b.start.0 + at as u64));
        assert!(!fsyncs.is_empty() && fsyncs.len() <= 4, "{fsyncs:?}");
        // One wait per acknowledged flush, from its message's sendTime.
        assert_eq!(acks.len(), fsyncs.len(), "{acks:?}");
        assert!(acks.iter().all(|a| a.as_secs() >= 3600 && a.as_secs() < 3660), "{acks:?}");
        // A keepalive asking for a reply gets one at once, with nothing new to flush.
        w.write_all(&keepalive(b.end(), true)).unwrap();
        let end = b.start.0 + at as u64;
        assert_eq!(read_statuses(&mut w, |g| !g.is_empty()), vec![(end, end, end)]);
        // The caller's messages go out through the outbox, in order, whole.
        live.send(&[b'd', 0, 0, 0, 5, b'h']);
        assert_eq!(read_statuses(&mut w, |g| !g.is_empty()), vec![(u64::MAX, b'd' as u64, b'h' as u64)]);
        // Stopping: the end arrives once, Stopped, with the positions.
        live.request_stop();
        let r = take_until(&live, &rx, |r| r.end.is_some());
        assert!(matches!(r.end, Some(End::Stopped)), "{:?}", r.end);
        assert_eq!(r.flushed, Lsn(end));
        assert!(live.take().end.is_none(), "the end is reported once");
    }

    #[test]
    fn answering_it_sends_a_status_update_every_interval_and_bounds_unflushed_bytes() {
        let a = Answer { status_interval: Duration::from_millis(100), flush_bytes: 64 * 1024 };
        let (_d, _s, mut p, mut w, b) = setup_with("pump-interval", None, Some(a));
        let stop = AtomicBool::new(false);
        let t = std::thread::spawn(move || {
            for _ in 0..40 {
                p.run(Duration::from_millis(20), &stop);
            }
            p
        });
        let st = read_statuses(&mut w, |g| g.len() >= 2);
        assert_eq!(st[0], (b.start.0, b.start.0, b.start.0), "an idle stream still says where it is");
        let mut p = t.join().unwrap();
        // A burst larger than flush_bytes, all readable at once: flushed within it, not only at its end.
        let mut msgs = Vec::new();
        for (i, c) in b.bytes[..256 * 1024].chunks(8192).enumerate() {
            msgs.extend(xlogdata(Lsn(b.start.0 + (i * 8192) as u64), b.end(), c));
        }
        w.write_all(&msgs).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let r = p.run(Duration::from_millis(500), &AtomicBool::new(false));
        assert!(r.flushed.0 >= b.start.0 + 64 * 1024 && r.flushed.0 < b.start.0 + 256 * 1024, "{} flushed", r.flushed);
    }
}
