//! XLogData framing: one complete CopyData message per call, ready for
//! `socket.write`.
//!
//! ```text
//! 'd' int32 len | 'w' int64 dataStart int64 walEnd int64 sendTime | WAL bytes
//! ```
//!
//! The WAL bytes are read from the segment file straight into the caller's
//! buffer after the 30-byte header, so serving a replica costs one pread and
//! no copy. Like PostgreSQL's walsender (and Neon's), a message carries at
//! most `max_send` bytes and, when more WAL is pending, is cut at a page
//! boundary; like Neon's, it also stops at a segment end so that it is one
//! read of one file. Clients do not depend on either rule
//! (replication-protocol.md §5), but page-aligned messages keep a standby's
//! partial-page reads rare.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorCode, Result};
use crate::lsn::{Lsn, WAL_PAGE_SIZE};
use crate::store::Store;
use crate::sys::{self, NoWait};

/// 'd' + int32 length + the XLogData payload header.
pub const HEADER_SIZE: usize = 1 + 4 + XLOGDATA_PAYLOAD_HEADER;
/// PostgreSQL's MAX_SEND_SIZE (16 × XLOG_BLCKSZ), also Neon's.
pub const DEFAULT_MAX_SEND: usize = 128 * 1024;

/// The replication messages' byte layouts, in one place (inside CopyData,
/// after its 'd' and length): what the pumps read and write without
/// JavaScript.
///
/// XLogData `'w'`: tag, dataStart, walEnd, sendTime — then the WAL bytes.
pub const XLOGDATA_PAYLOAD_HEADER: usize = 1 + 8 + 8 + 8;
/// Primary keepalive `'k'`: tag, walEnd, sendTime, replyRequested.
pub const KEEPALIVE_PAYLOAD: usize = 1 + 8 + 8 + 1;
/// Standby status update `'r'` as a whole CopyData message: 'd', length,
/// tag, written, flushed, applied, sendTime, replyRequested.
pub const STATUS_UPDATE_LEN: usize = 1 + 4 + 1 + 8 + 8 + 8 + 8 + 1;

/// A standby status update ('r'), a whole CopyData message. The reply flag
/// is never set: a node answering its upstream has nothing to wait for.
pub fn status_update(written: Lsn, flushed: Lsn, applied: Lsn, send_time: i64) -> [u8; STATUS_UPDATE_LEN] {
    let mut m = [0u8; STATUS_UPDATE_LEN];
    m[0] = b'd';
    m[1..5].copy_from_slice(&((STATUS_UPDATE_LEN - 1) as u32).to_be_bytes());
    m[5] = b'r';
    m[6..14].copy_from_slice(&written.0.to_be_bytes());
    m[14..22].copy_from_slice(&flushed.0.to_be_bytes());
    m[22..30].copy_from_slice(&applied.0.to_be_bytes());
    m[30..38].copy_from_slice(&send_time.to_be_bytes());
    m
}

/// Microseconds since 2000-01-01 00:00:00 UTC, the protocol's timestamp.
pub fn pg_now() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    d.as_micros() as i64 - 946_684_800_000_000
}

#[derive(Debug, Clone, Copy)]
pub struct FrameRequest {
    pub tli: u32,
    /// First byte to send.
    pub start: Lsn,
    /// Send nothing at or past this (the commit or flush LSN the client may see).
    pub end: Lsn,
    /// The walEnd field: the server's current end of WAL for this client.
    pub wal_end: Lsn,
    /// sendTime; None means now.
    pub send_time: Option<i64>,
    pub max_send: usize,
}

/// How many WAL bytes the message for `req` carries, given a buffer of `cap` bytes.
pub fn payload_len(req: &FrameRequest, seg_size: u64, cap: usize) -> Result<usize> {
    if req.end <= req.start {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("nothing to send: start {} is not below end {}", req.start, req.end),
        ));
    }
    if cap <= HEADER_SIZE {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("buffer of {cap} bytes cannot hold an XLogData message"),
        ));
    }
    let pending = req.end.0 - req.start.0;
    let seg_left = seg_size - req.start.segment_offset(seg_size);
    let limit = (req.max_send.max(1) as u64).min((cap - HEADER_SIZE) as u64).min(seg_left);
    if pending <= limit {
        return Ok(pending as usize);
    }
    // More is pending than fits: end at a page boundary if that leaves anything.
    let cut = Lsn(req.start.0 + limit).page_start();
    if cut > req.start {
        Ok((cut.0 - req.start.0) as usize)
    } else {
        Ok(limit as usize)
    }
}

pub fn write_header(out: &mut [u8], start: Lsn, wal_end: Lsn, send_time: i64, n: usize) {
    out[0] = b'd';
    out[1..5].copy_from_slice(&((4 + 1 + 24 + n) as u32).to_be_bytes());
    out[5] = b'w';
    out[6..14].copy_from_slice(&start.0.to_be_bytes());
    out[14..22].copy_from_slice(&wal_end.0.to_be_bytes());
    out[22..30].copy_from_slice(&send_time.to_be_bytes());
}

/// Fills `out` with one XLogData message; returns the bytes used. `nowait`:
/// only if the WAL is in the page cache (Ok(None) when the disk would be
/// needed; retry with `nowait = false` off the event loop).
pub fn frame(store: &Store, req: &FrameRequest, out: &mut [u8], nowait: bool) -> Result<Option<usize>> {
    let seg = store.seg_size();
    let n = payload_len(req, seg, out.len())?;
    // The whole requested range must be flushed, not just this message's part:
    // an `end` past the flush position is a caller bug we refuse loudly.
    let file = store.prepare_read(req.tli, req.start, req.end, true)?;
    let off = req.start.segment_offset(seg);
    let dst = &mut out[HEADER_SIZE..HEADER_SIZE + n];
    let got = if nowait {
        match sys::read_at_nowait(&file, dst, off) {
            Ok(NoWait::Read(g)) => g,
            Ok(NoWait::WouldBlock) => return Ok(None),
            Err(e) => return Err(read_err(store, req.start, e)),
        }
    } else {
        sys::read_full_at(&file, dst, off).map_err(|e| read_err(store, req.start, e))?
    };
    if got != n {
        // A short read of a file we keep at full size is damage, not EOF.
        return Err(Error::new(
            ErrorCode::Corrupt,
            format!("{}: short read of WAL at {}: {got} of {n} bytes", store.dir().display(), req.start),
        ));
    }
    write_header(out, req.start, req.wal_end, req.send_time.unwrap_or_else(pg_now), n);
    Ok(Some(HEADER_SIZE + n))
}

fn read_err(store: &Store, at: Lsn, e: std::io::Error) -> Error {
    Error::new(ErrorCode::Io, format!("{}: cannot read WAL at {at}: {e}", store.dir().display()))
}

const _: () = assert!(WAL_PAGE_SIZE as usize * 16 == DEFAULT_MAX_SEND);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testwal::{TempDir, WalBuilder};

    const SEG: u64 = 1 << 20;

    fn req(start: u64, end: u64) -> FrameRequest {
        FrameRequest {
            tli: 1,
            start: Lsn(start),
            end: Lsn(end),
            wal_end: Lsn(end),
            send_time: Some(0x0102_0304_0506_0708),
            max_send: DEFAULT_MAX_SEND,
        }
    }

    #[test]
    fn payload_rules() {
        let s = SEG + 100;
        // Everything pending fits: send it all, however unaligned.
        assert_eq!(payload_len(&req(s, s + 1000), SEG, 1 << 20).unwrap(), 1000);
        // More pending than max_send: cut at a page boundary.
        let n = payload_len(&req(s, s + 10 * DEFAULT_MAX_SEND as u64), SEG, 1 << 20).unwrap();
        assert_eq!(n as u64, (s + DEFAULT_MAX_SEND as u64) / 8192 * 8192 - s);
        // Page-aligned start: exactly max_send.
        assert_eq!(payload_len(&req(SEG, SEG + (1 << 20)), SEG, 1 << 20).unwrap(), DEFAULT_MAX_SEND);
        // Never past a segment end.
        let near = 2 * SEG - 3000;
        assert_eq!(payload_len(&req(near, near + 100_000), SEG, 1 << 20).unwrap(), 3000);
        // The buffer bounds it too (then page-cut).
        assert_eq!(payload_len(&req(SEG, SEG + 100_000), SEG, HEADER_SIZE + 10_000).unwrap(), 8192);
        // A tiny max_send smaller than what is left of the page: no page cut possible.
        let mut r = req(SEG + 8000, SEG + 9000);
        r.max_send = 100;
        assert_eq!(payload_len(&r, SEG, 1 << 20).unwrap(), 100);
        assert_eq!(payload_len(&req(s, s), SEG, 1 << 20).unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(payload_len(&req(s, s + 1), SEG, HEADER_SIZE).unwrap_err().code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn frames_exact_bytes() {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        for i in 0..100 {
            b.record(10, 0, (i * 997) % 20_000);
        }
        let d = TempDir::new("xlogdata");
        let s = Store::open(d.path(), SEG, 1).unwrap();
        let end = b.wal_end();
        s.append(Lsn(SEG), &b.bytes[..(end.0 - SEG) as usize]).unwrap();
        let start = SEG + 12_345;
        let mut out = vec![0xEEu8; HEADER_SIZE + DEFAULT_MAX_SEND + 7];
        // Not flushed yet: refused, nothing unflushed is ever served.
        let e = frame(&s, &req(start, end.0), &mut out, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotYetWritten);
        s.flush().unwrap();
        let mut r = req(start, end.0);
        r.wal_end = Lsn(0xAABB_CCDD_0011_2233);
        let used = frame(&s, &r, &mut out, false).unwrap().unwrap();
        let n = used - HEADER_SIZE;
        assert_eq!(n as u64, (start + DEFAULT_MAX_SEND as u64) / 8192 * 8192 - start);
        let mut want = vec![b'd'];
        want.extend_from_slice(&((n + 29) as u32).to_be_bytes());
        want.push(b'w');
        want.extend_from_slice(&start.to_be_bytes());
        want.extend_from_slice(&0xAABB_CCDD_0011_2233u64.to_be_bytes());
        want.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(&out[..HEADER_SIZE], &want[..]);
        let o = (start - SEG) as usize;
        assert!(out[HEADER_SIZE..used] == b.bytes[o..o + n]);
        assert!(out[used..].iter().all(|&x| x == 0xEE), "nothing written past the message");
        // The page cache holds what we just wrote, so the no-wait path serves it on Linux.
        let nowait = frame(&s, &r, &mut out, true).unwrap();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert_eq!(nowait, Some(used));
        let _ = nowait;
        // sendTime defaults to now.
        r.send_time = None;
        frame(&s, &r, &mut out, false).unwrap();
        let t = i64::from_be_bytes(out[22..30].try_into().unwrap());
        assert!((t - pg_now()).abs() < 5_000_000, "sendTime {t} is about now");
        // Streaming the whole range message by message reproduces the WAL.
        let mut pos = SEG;
        let mut got = Vec::new();
        while pos < end.0 {
            let used = frame(&s, &req(pos, end.0), &mut out, false).unwrap().unwrap();
            got.extend_from_slice(&out[HEADER_SIZE..used]);
            pos += (used - HEADER_SIZE) as u64;
        }
        assert!(got == b.bytes[..(end.0 - SEG) as usize]);
        // Past the flushed end: refused.
        assert_eq!(frame(&s, &req(SEG, end.0 + 1), &mut out, false).unwrap_err().code, ErrorCode::NotYetWritten);
    }

    #[test]
    fn status_update_exact_bytes() {
        let m = status_update(Lsn(0x0102_0304_0506_0708), Lsn(0x10), Lsn(0x0F), 0x7FFF_0000_0000_0001);
        let mut want = vec![b'd', 0, 0, 0, 38, b'r'];
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x10]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x0F]);
        want.extend_from_slice(&[0x7F, 0xFF, 0, 0, 0, 0, 0, 1]);
        want.push(0);
        assert_eq!(m.to_vec(), want);
        assert_eq!(HEADER_SIZE, 30);
        assert_eq!(KEEPALIVE_PAYLOAD, 18);
    }
}
