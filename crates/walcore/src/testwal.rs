//! A small XLogInsert for unit tests: lays records out in pages exactly as
//! PostgreSQL does (MAXALIGNed starts, short and long page headers,
//! continuation flags and lengths, XLOG_SWITCH padding), so the scan, the
//! store and the framing can be tested without a server. Tests against real
//! server WAL live in `__test__/`.

use crate::lsn::{maxalign, Lsn, WAL_PAGE_SIZE};
use crate::page::{LONG_HEADER_SIZE, SHORT_HEADER_SIZE, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER};
use crate::record::{record_crc, RECORD_HEADER_SIZE, RM_XLOG_ID, XLOG_SWITCH};

pub const SYSID: u64 = 7_712_172_635_900_483_688;

pub struct WalBuilder {
    pub seg_size: u64,
    pub tli: u32,
    pub magic: u16,
    pub system_id: u64,
    /// LSN of bytes[0] (a segment start).
    pub start: Lsn,
    pub bytes: Vec<u8>,
    /// Where the next record goes.
    pub insert: Lsn,
    pub prev: Lsn,
    /// Start and MAXALIGNed end of every record written.
    pub records: Vec<(Lsn, Lsn)>,
}

impl WalBuilder {
    pub fn new(seg_size: u64, start: Lsn) -> WalBuilder {
        WalBuilder::with_magic(seg_size, start, 0xD110)
    }

    pub fn with_magic(seg_size: u64, start: Lsn, magic: u16) -> WalBuilder {
        assert_eq!(start.segment_offset(seg_size), 0);
        let mut b = WalBuilder {
            seg_size,
            tli: 1,
            magic,
            system_id: SYSID,
            start,
            bytes: Vec::new(),
            insert: start,
            prev: Lsn(0),
            records: Vec::new(),
        };
        b.insert = b.write_page_header(start, 0);
        b
    }

    pub fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.bytes.len() as u64)
    }

    fn put(&mut self, at: Lsn, data: &[u8]) {
        let off = (at.0 - self.start.0) as usize;
        if self.bytes.len() < off + data.len() {
            self.bytes.resize(off + data.len(), 0);
        }
        self.bytes[off..off + data.len()].copy_from_slice(data);
    }

    /// Writes the header of the page at `page`; returns where data may start.
    fn write_page_header(&mut self, page: Lsn, rem_len: u32) -> Lsn {
        let long = page.segment_offset(self.seg_size) == 0;
        let mut h = vec![0u8; if long { LONG_HEADER_SIZE } else { SHORT_HEADER_SIZE }];
        let mut info = 0u16;
        if long {
            info |= XLP_LONG_HEADER;
        }
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        h[0..2].copy_from_slice(&self.magic.to_le_bytes());
        h[2..4].copy_from_slice(&info.to_le_bytes());
        h[4..8].copy_from_slice(&self.tli.to_le_bytes());
        h[8..16].copy_from_slice(&page.0.to_le_bytes());
        h[16..20].copy_from_slice(&rem_len.to_le_bytes());
        if long {
            h[24..32].copy_from_slice(&self.system_id.to_le_bytes());
            h[32..36].copy_from_slice(&(self.seg_size as u32).to_le_bytes());
            h[36..40].copy_from_slice(&(WAL_PAGE_SIZE as u32).to_le_bytes());
        }
        self.put(page, &h);
        // Make sure the page exists in full (zeros after what is written).
        let page_end = Lsn(page.0 + WAL_PAGE_SIZE);
        if self.end() < page_end {
            self.bytes.resize((page_end.0 - self.start.0) as usize, 0);
        }
        Lsn(page.0 + h.len() as u64)
    }

    /// Builds a record with `data_len` bytes of pseudo-random payload.
    pub fn record(&mut self, rmid: u8, info: u8, data_len: usize) -> Lsn {
        let mut data = vec![0u8; data_len];
        let mut x = self.insert.0 ^ 0x9E37_79B9_7F4A_7C15;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        self.record_with(rmid, info, &data)
    }

    pub fn record_with(&mut self, rmid: u8, info: u8, data: &[u8]) -> Lsn {
        let mut r = vec![0u8; RECORD_HEADER_SIZE];
        r[0..4].copy_from_slice(&((RECORD_HEADER_SIZE + data.len()) as u32).to_le_bytes());
        r[4..8].copy_from_slice(&1234u32.to_le_bytes());
        r[8..16].copy_from_slice(&self.prev.0.to_le_bytes());
        r[16] = info;
        r[17] = rmid;
        r.extend_from_slice(data);
        let crc = record_crc(&r);
        r[20..24].copy_from_slice(&crc.to_le_bytes());

        let start = self.insert;
        let mut pos = start;
        let mut rest = &r[..];
        loop {
            let room = (WAL_PAGE_SIZE - pos.page_offset()) as usize;
            let n = room.min(rest.len());
            self.put(pos, &rest[..n]);
            rest = &rest[n..];
            pos = Lsn(pos.0 + n as u64);
            if rest.is_empty() {
                break;
            }
            pos = self.write_page_header(pos, rest.len() as u32);
        }
        self.prev = start;
        let mut next = Lsn(maxalign(pos.0));
        let mut end = next;
        if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
            // The rest of the segment: all-zero pages, as PostgreSQL 14+
            // writes them (the page headers are zeroed too).
            let seg_end = Lsn(start.segment_start(self.seg_size).0 + self.seg_size);
            if self.end() < seg_end {
                self.bytes.resize((seg_end.0 - self.start.0) as usize, 0);
            }
            next = seg_end;
            end = seg_end;
        }
        if next.is_page_start() {
            next = self.write_page_header(next, 0);
        }
        let _ = WAL_PAGE_SIZE;
        self.insert = next;
        self.records.push((start, end));
        start
    }

    pub fn switch(&mut self) -> Lsn {
        self.record_with(RM_XLOG_ID, XLOG_SWITCH, &[])
    }

    /// The MAXALIGNed end PostgreSQL would report after the last record.
    pub fn wal_end(&self) -> Lsn {
        self.records.last().map(|r| r.1).unwrap_or(self.insert)
    }

    /// The bytes of segment `segno` as a full, zero-padded segment file.
    pub fn segment(&self, segno: u64) -> Vec<u8> {
        let seg_start = segno * self.seg_size;
        let from = (seg_start - self.start.0) as usize;
        let to = (from + self.seg_size as usize).min(self.bytes.len());
        let mut v = self.bytes[from.min(self.bytes.len())..to].to_vec();
        v.resize(self.seg_size as usize, 0);
        v
    }

    /// Writes every segment touched so far into `dir` under PostgreSQL names
    /// (the last one as `.partial` when `partial_last`).
    pub fn write_dir(&self, dir: &std::path::Path, partial_last: bool) {
        let first = self.start.segment_number(self.seg_size);
        let last = Lsn(self.start.0 + self.bytes.len() as u64 - 1).segment_number(self.seg_size);
        for segno in first..=last {
            let mut name = crate::lsn::segment_file_name(self.tli, segno, self.seg_size);
            if partial_last && segno == last {
                name.push_str(".partial");
            }
            std::fs::write(dir.join(name), self.segment(segno)).unwrap();
        }
    }
}

/// A fresh temp directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "walcore-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
