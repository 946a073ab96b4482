//! Finding the end of valid WAL.
//!
//! After a crash the last segment may end in anything: zeros, half a record,
//! garbage, or stale bytes of a recycled segment. PostgreSQL's xlogreader (and
//! pg_waldump, and Neon's `find_end_of_wal`) answer "where does valid WAL end"
//! by decoding forward from a known record start and stopping at the first
//! thing that is not a valid record. We do the same: every page header is
//! checked (magic, info bits, long header at a segment start, pageaddr,
//! timeline, continuation flag and length) and every record (length, prev
//! link, resource manager, CRC). The pageaddr and prev-link checks are what
//! reject the stale but internally valid data of a recycled segment.

use crate::crc32c;
use crate::error::Result;
use crate::lsn::{maxalign, Lsn, WAL_PAGE_SIZE};
use crate::page::{pg_version_for_magic, PageHeader};
use crate::record::{RecordHeader, RECORD_HEADER_SIZE};
use crate::source::WalSource;

/// How to read `ScanOptions::start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// `start` is where a record begins (a checkpoint's redo point, an end of
    /// WAL found earlier). A page-start LSN means "the record right after this
    /// page's header".
    Record,
    /// `start` is any position; begin at the first record that starts on its
    /// page or later, found from the page headers' continuation lengths (as
    /// pg_waldump's XLogFindNextRecord does).
    Search,
}

#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub start: Lsn,
    pub kind: StartKind,
    /// The expected xl_prev of the first record, when known.
    pub prev: Option<Lsn>,
    /// Refuse pages of another database system.
    pub system_id: Option<u64>,
    /// Refuse pages of another PostgreSQL major version (its xlp_magic).
    pub magic: Option<u16>,
}

impl ScanOptions {
    pub fn from_record(start: Lsn) -> ScanOptions {
        ScanOptions { start, kind: StartKind::Record, prev: None, system_id: None, magic: None }
    }
    pub fn search(start: Lsn) -> ScanOptions {
        ScanOptions { start, kind: StartKind::Search, prev: None, system_id: None, magic: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// End of the last valid record, MAXALIGNed as PostgreSQL reports flush
    /// positions (after an XLOG_SWITCH: the start of the next segment). When no
    /// record was valid, the position where the first one was expected.
    pub end: Lsn,
    /// Where the first decoded record starts (after a Search, the record found).
    pub first_record: Option<Lsn>,
    /// Where the last valid record starts.
    pub last_record: Option<Lsn>,
    pub records: u64,
    /// Why decoding stopped, worded like pg_waldump's messages.
    pub stop_reason: String,
    /// Where decoding stopped (the record or page that was not valid).
    pub stop_lsn: Lsn,
    /// Learned from the pages read.
    pub pg_version: Option<u32>,
    pub magic: Option<u16>,
    pub system_id: Option<u64>,
    /// Timeline of the last page read.
    pub tli: Option<u32>,
}

/// A window of WAL bytes, read in large aligned blocks.
struct Pages<'a, S: WalSource + ?Sized> {
    src: &'a S,
    seg_size: u64,
    buf: Vec<u8>,
    start: u64,
    len: usize,
}

const WINDOW: usize = 256 * 1024;

impl<'a, S: WalSource + ?Sized> Pages<'a, S> {
    fn new(src: &'a S) -> Self {
        let seg_size = src.segment_size();
        Pages { src, seg_size, buf: vec![0; WINDOW], start: u64::MAX, len: 0 }
    }

    /// The whole 8 KiB page at `page`, or None if it is not (entirely) there.
    fn page(&mut self, page: Lsn) -> Result<Option<&[u8]>> {
        let p = page.0;
        if !(self.start != u64::MAX && p >= self.start && p + WAL_PAGE_SIZE <= self.start + self.len as u64) {
            let win = (WINDOW as u64).min(self.seg_size);
            let start = p - p % win;
            self.len = self.src.read_at(Lsn(start), &mut self.buf[..win as usize])?;
            self.start = start;
            if p + WAL_PAGE_SIZE > start + self.len as u64 {
                return Ok(None);
            }
        }
        let off = (p - self.start) as usize;
        Ok(Some(&self.buf[off..off + WAL_PAGE_SIZE as usize]))
    }
}

struct Scanner<'a, S: WalSource + ?Sized> {
    pages: Pages<'a, S>,
    seg_size: u64,
    magic: Option<u16>,
    system_id: Option<u64>,
    tli: Option<u32>,
    /// The page currently loaded and validated, and its header.
    cur_page: Option<(Lsn, PageHeader)>,
}

/// Why the scan stopped: a message and the LSN it is about.
struct Stop(String, Lsn);

impl<'a, S: WalSource + ?Sized> Scanner<'a, S> {
    /// Loads and validates the page starting at `page`.
    fn load_page(&mut self, page: Lsn) -> Result<std::result::Result<PageHeader, Stop>> {
        if let Some((p, h)) = self.cur_page {
            if p == page {
                return Ok(Ok(h));
            }
        }
        let Some(bytes) = self.pages.page(page)? else {
            return Ok(Err(Stop(format!("no WAL page at {page} (end of the available files)"), page)));
        };
        let Some(h) = PageHeader::decode(bytes) else {
            return Ok(Err(Stop(format!("cannot decode page header at {page}"), page)));
        };
        if let Err(e) = h.validate(page, self.seg_size, self.magic, self.system_id) {
            return Ok(Err(Stop(e.message, page)));
        }
        if let Some(t) = self.tli {
            if h.tli < t {
                return Ok(Err(Stop(
                    format!("out-of-sequence timeline ID {} (after {t}) in WAL page at {page}", h.tli),
                    page,
                )));
            }
        }
        self.magic = Some(h.magic);
        self.tli = Some(h.tli);
        if let Some(l) = h.long {
            self.system_id = Some(l.system_id);
        }
        self.cur_page = Some((page, h));
        Ok(Ok(h))
    }

    fn page_bytes(&mut self, page: Lsn) -> Result<&[u8]> {
        // Only called for a page that load_page just accepted (so it is in the window).
        Ok(self.pages.page(page)?.expect("validated page is in the window"))
    }

    /// Finds the first record that starts on `page` or a later page.
    fn find_first_record(&mut self, mut page: Lsn) -> Result<std::result::Result<Lsn, Stop>> {
        loop {
            let h = match self.load_page(page)? {
                Ok(h) => h,
                Err(s) => return Ok(Err(s)),
            };
            let hdr = h.size() as u64;
            if !h.is_contrecord() {
                return Ok(Ok(Lsn(page.0 + hdr)));
            }
            if (h.rem_len as u64) < WAL_PAGE_SIZE - hdr {
                return Ok(Ok(Lsn(page.0 + hdr + maxalign(h.rem_len as u64))));
            }
            page = Lsn(page.0 + WAL_PAGE_SIZE);
        }
    }
}

/// Decodes records forward from `opts.start` and returns where valid WAL ends.
pub fn find_end_of_wal<S: WalSource + ?Sized>(src: &S, opts: &ScanOptions) -> Result<ScanResult> {
    let seg_size = src.segment_size();
    let mut sc = Scanner {
        pages: Pages::new(src),
        seg_size,
        magic: opts.magic,
        system_id: opts.system_id,
        tli: None,
        cur_page: None,
    };
    let mut result = ScanResult {
        end: opts.start,
        first_record: None,
        last_record: None,
        records: 0,
        stop_reason: String::new(),
        stop_lsn: opts.start,
        pg_version: None,
        magic: None,
        system_id: None,
        tli: None,
    };
    let finish = |mut r: ScanResult, sc: &Scanner<S>, stop: Stop| -> ScanResult {
        r.stop_reason = stop.0;
        r.stop_lsn = stop.1;
        r.magic = sc.magic;
        r.pg_version = sc.magic.and_then(pg_version_for_magic);
        r.system_id = sc.system_id;
        r.tli = sc.tli;
        r
    };

    let mut pos = match opts.kind {
        StartKind::Record => opts.start,
        StartKind::Search => match sc.find_first_record(opts.start.page_start())? {
            Ok(p) => {
                result.end = p;
                p
            }
            Err(stop) => return Ok(finish(result, &sc, stop)),
        },
    };
    let mut prev = opts.prev;
    let mut header = [0u8; RECORD_HEADER_SIZE];

    loop {
        // `pos` is where a record should start.
        if pos.is_page_start() {
            let h = match sc.load_page(pos)? {
                Ok(h) => h,
                Err(stop) => return Ok(finish(result, &sc, stop)),
            };
            if h.is_contrecord() || h.rem_len != 0 {
                return Ok(finish(
                    result,
                    &sc,
                    Stop(format!("unexpected continuation data in WAL page at {pos}, where a record should start"), pos),
                ));
            }
            pos = Lsn(pos.0 + h.size() as u64);
        } else if let Err(stop) = sc.load_page(pos.page_start())? {
            return Ok(finish(result, &sc, stop));
        }
        let rec_start = pos;

        // Gather the record page by page: its header (which may itself be
        // split across pages) into `header`, its data straight into the CRC.
        let page = rec_start.page_start();
        let mut off = rec_start.page_offset() as usize;
        let bytes = sc.page_bytes(page)?;
        let tot_len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as u64;
        if tot_len < RECORD_HEADER_SIZE as u64 {
            return Ok(finish(
                result,
                &sc,
                Stop(format!("invalid record length at {rec_start}: wanted 24, got {tot_len}"), rec_start),
            ));
        }
        let mut got = 0u64;
        let mut crc = crc32c::INIT;
        let mut cur_page = page;
        let mut end;
        loop {
            let bytes = sc.page_bytes(cur_page)?;
            let take = ((WAL_PAGE_SIZE as usize - off) as u64).min(tot_len - got) as usize;
            let chunk = &bytes[off..off + take];
            // Split the chunk into header part and data part.
            let hdr_need = (RECORD_HEADER_SIZE as u64).saturating_sub(got) as usize;
            let h = hdr_need.min(take);
            if h > 0 {
                header[got as usize..got as usize + h].copy_from_slice(&chunk[..h]);
            }
            crc = crc32c::update(crc, &chunk[h..]);
            got += take as u64;
            end = Lsn(cur_page.0 + (off + take) as u64);
            if got == tot_len {
                break;
            }
            // Continue on the next page, which must say it continues this record.
            cur_page = Lsn(cur_page.0 + WAL_PAGE_SIZE);
            let ph = match sc.load_page(cur_page)? {
                Ok(h) => h,
                Err(stop) => {
                    return Ok(finish(
                        result,
                        &sc,
                        Stop(format!("record at {rec_start} is incomplete: {}", stop.0), rec_start),
                    ))
                }
            };
            if !ph.is_contrecord() {
                return Ok(finish(
                    result,
                    &sc,
                    Stop(format!("there is no contrecord flag at {cur_page} (record at {rec_start})"), rec_start),
                ));
            }
            if ph.rem_len as u64 != tot_len - got {
                return Ok(finish(
                    result,
                    &sc,
                    Stop(
                        format!(
                            "invalid contrecord length {} (expected {}) at {cur_page} (record at {rec_start})",
                            ph.rem_len,
                            tot_len - got
                        ),
                        rec_start,
                    ),
                ));
            }
            off = ph.size();
        }

        let rh = RecordHeader::decode(&header);
        let stop_here = |msg: String| Stop(msg, rec_start);
        if !rh.rmid_is_valid() {
            return Ok(finish(result, &sc, stop_here(format!("invalid resource manager ID {} at {rec_start}", rh.rmid))));
        }
        if let Some(p) = prev {
            if rh.prev != p {
                return Ok(finish(
                    result,
                    &sc,
                    stop_here(format!("record with incorrect prev-link {} at {rec_start} (expected {p})", rh.prev)),
                ));
            }
        }
        let crc = crc32c::finish(crc32c::update(crc, &header[..20]));
        if crc != rh.crc {
            return Ok(finish(
                result,
                &sc,
                stop_here(format!("incorrect resource manager data checksum in record at {rec_start}")),
            ));
        }

        result.records += 1;
        result.first_record.get_or_insert(rec_start);
        result.last_record = Some(rec_start);
        prev = Some(rec_start);
        pos = end.maxalign();
        result.end = pos;

        if rh.is_switch() {
            // The rest of the segment belongs to the switch. PostgreSQL 14+
            // writes it as all-zero pages (even the headers are zeroed, for
            // compressibility); older servers left header-only pages. Count
            // it as WAL only when those pages are really there, so that a
            // switch segment cut short is completed by streaming.
            let seg_end = Lsn(end.segment_start(seg_size).0 + seg_size);
            let mut p = Lsn(pos.page_start().0 + if pos.is_page_start() { 0 } else { WAL_PAGE_SIZE });
            while p < seg_end {
                let zero = match sc.pages.page(p)? {
                    None => {
                        return Ok(finish(
                            result,
                            &sc,
                            Stop(format!("segment ends early after XLOG_SWITCH at {rec_start}: no page at {p}"), p),
                        ))
                    }
                    Some(bytes) => bytes.iter().all(|&b| b == 0),
                };
                if !zero {
                    match sc.load_page(p)? {
                        Ok(h) if !h.is_contrecord() => {}
                        Ok(_) => {
                            return Ok(finish(result, &sc, Stop(format!("unexpected continuation page {p} after XLOG_SWITCH"), p)))
                        }
                        Err(stop) => {
                            return Ok(finish(result, &sc, Stop(format!("after XLOG_SWITCH at {rec_start}: {}", stop.0), p)))
                        }
                    }
                }
                p = Lsn(p.0 + WAL_PAGE_SIZE);
            }
            pos = seg_end;
            result.end = seg_end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::DirSource;
    use crate::testwal::{TempDir, WalBuilder, SYSID};

    const SEG: u64 = 1 << 20;

    /// Records of many sizes: tiny, page-spanning, segment-spanning.
    fn sample(b: &mut WalBuilder) {
        for i in 0..400usize {
            let len = match i % 9 {
                0 => 0,
                1 => 3,
                2 => 8190,
                3 => 8192 * 3 + 17,
                4 => 100,
                5 => 8192 - 24 - 24, // lands close to a page end
                6 => 1 << 20,        // longer than a segment
                _ => (i * 37) % 2000,
            };
            b.record(10, 0x10, len);
        }
    }

    fn scan_dir(dir: &std::path::Path, opts: ScanOptions) -> ScanResult {
        let src = DirSource::open(dir, 1, SEG).unwrap();
        find_end_of_wal(&src, &opts).unwrap()
    }

    #[test]
    fn finds_the_end_of_clean_wal() {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        sample(&mut b);
        let d = TempDir::new("scan-clean");
        b.write_dir(d.path(), true);
        let first = b.records[0].0;
        let r = scan_dir(d.path(), ScanOptions::from_record(first));
        assert_eq!(r.records, 400);
        assert_eq!(r.end, b.wal_end());
        assert_eq!(r.last_record, Some(b.records.last().unwrap().0));
        assert_eq!(r.pg_version, Some(15));
        assert_eq!(r.system_id, Some(SYSID));
        assert!(r.stop_reason.contains("invalid record length"), "{}", r.stop_reason);
        // Starting at the segment start (a page start) means the first record after its header.
        let r2 = scan_dir(d.path(), ScanOptions::from_record(Lsn(SEG)));
        assert_eq!(r2.end, b.wal_end());
        assert_eq!(r2.first_record, Some(first));
        // Starting from the middle of the WAL with a known record.
        let mid = b.records[200];
        let r3 = scan_dir(d.path(), ScanOptions { prev: Some(b.records[199].0), ..ScanOptions::from_record(mid.0) });
        assert_eq!(r3.records, 200);
        assert_eq!(r3.end, b.wal_end());
    }

    #[test]
    fn search_mode_finds_the_first_record_of_a_page() {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        sample(&mut b);
        let d = TempDir::new("scan-search");
        b.write_dir(d.path(), true);
        // From any position: the first record starting on that page or later.
        for probe in [SEG + 5, SEG + 8192 * 7 + 100, 2 * SEG + 3, b.records[300].0 .0 + 1] {
            let r = scan_dir(d.path(), ScanOptions::search(Lsn(probe)));
            let page = Lsn(probe).page_start();
            let want = b.records.iter().find(|(s, _)| *s >= page).unwrap().0;
            assert_eq!(r.first_record, Some(want), "probe {:X}", probe);
            assert_eq!(r.end, b.wal_end());
        }
    }

    #[test]
    fn follows_xlog_switch() {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        b.record(10, 0, 500);
        b.switch();
        assert_eq!(b.insert, Lsn(2 * SEG + 40));
        b.record(10, 0, 500);
        b.record(10, 0, 500);
        b.switch();
        let d = TempDir::new("scan-switch");
        b.write_dir(d.path(), false);
        let r = scan_dir(d.path(), ScanOptions::from_record(b.records[0].0));
        assert_eq!(r.records, 5);
        assert_eq!(r.end, Lsn(3 * SEG), "a switch ends its segment");
        // A switch segment cut short (its zero pages missing) ends at the switch record.
        let seg = b.segment(2);
        let sw = b.records[4];
        let cut = (sw.0 .0 - 2 * SEG) as usize + 8192 * 2;
        std::fs::write(d.path().join(crate::lsn::segment_file_name(1, 2, SEG)), &seg[..cut]).unwrap();
        let r = scan_dir(d.path(), ScanOptions::from_record(b.records[0].0));
        assert_eq!(r.records, 5);
        assert_eq!(r.end, Lsn(maxalign(sw.0 .0 + 24)));
        assert!(r.stop_reason.contains("segment ends early"), "{}", r.stop_reason);
        // Header-only padding pages (PostgreSQL before 14) are accepted too.
        let mut seg = b.segment(2);
        let mut hdr = [0u8; 24];
        hdr[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        hdr[4..8].copy_from_slice(&1u32.to_le_bytes());
        let first_pad = (sw.0 .0 - 2 * SEG) as usize / 8192 * 8192 + 8192;
        for page in (first_pad..SEG as usize).step_by(8192) {
            hdr[8..16].copy_from_slice(&(2 * SEG + page as u64).to_le_bytes());
            seg[page..page + 24].copy_from_slice(&hdr);
        }
        std::fs::write(d.path().join(crate::lsn::segment_file_name(1, 2, SEG)), &seg).unwrap();
        let r = scan_dir(d.path(), ScanOptions::from_record(b.records[0].0));
        assert_eq!((r.records, r.end), (5, Lsn(3 * SEG)));
        // A non-zero page that is not a valid header is not padding.
        seg[first_pad + 8192 + 100] = 1;
        seg[first_pad + 8192..first_pad + 8192 + 2].copy_from_slice(&[0, 0]);
        std::fs::write(d.path().join(crate::lsn::segment_file_name(1, 2, SEG)), &seg).unwrap();
        let r = scan_dir(d.path(), ScanOptions::from_record(b.records[0].0));
        assert_eq!(r.end, Lsn(maxalign(sw.0 .0 + 24)));
    }

    fn write_segments(dir: &std::path::Path, first_segno: u64, bytes: &[u8]) {
        let mut w = bytes.to_vec();
        w.resize(w.len().div_ceil(SEG as usize) * SEG as usize, 0);
        for (i, chunk) in w.chunks(SEG as usize).enumerate() {
            std::fs::write(dir.join(crate::lsn::segment_file_name(1, first_segno + i as u64, SEG)), chunk).unwrap();
        }
    }

    /// The torn tails a crash leaves; each must end the WAL at the right record.
    #[test]
    fn torn_tails() {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        sample(&mut b);
        let n = b.records.len();
        let (last_start, last_end) = b.records[n - 1];
        let (_, before_last_end) = b.records[n - 2];
        let first = b.records[0].0;
        let off = |l: Lsn| (l.0 - SEG) as usize;
        let last_len = {
            let s = off(last_start);
            u32::from_le_bytes(b.bytes[s..s + 4].try_into().unwrap()) as usize
        };
        type Corrupt = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Corrupt, Lsn)> = vec![
            ("zeros over the last record", Box::new(move |w| w[off(last_start)..].fill(0)), before_last_end),
            (
                "garbage after the end",
                Box::new(move |w| {
                    let e = off(last_end);
                    w.resize(e + 3 * 8192, 0);
                    for (i, x) in w[e..].iter_mut().enumerate() {
                        *x = (i as u8).wrapping_mul(151).wrapping_add(7);
                    }
                }),
                last_end,
            ),
            (
                "half of the last record",
                Box::new(move |w| {
                    // What a crash between two writes leaves: the record's
                    // first half, then pages never written.
                    let half = off(last_start) + last_len / 2;
                    let page_end = (half as u64 + SEG).next_multiple_of(8192) - SEG;
                    w[half..page_end as usize].fill(0);
                    w.truncate(page_end as usize);
                }),
                before_last_end,
            ),
            ("a flipped CRC byte", Box::new(move |w| w[off(last_start) + 21] ^= 0x40), before_last_end),
            ("a flipped data byte", Box::new(move |w| w[off(last_start) + 24 + last_len / 3] ^= 0x01), before_last_end),
            (
                "a broken prev-link",
                Box::new(move |w| w[off(last_start) + 9] ^= 0x01),
                before_last_end,
            ),
        ];
        for (name, corrupt, want) in cases {
            let d = TempDir::new("scan-torn");
            let mut w = b.bytes.clone();
            corrupt(&mut w);
            write_segments(d.path(), 1, &w);
            let r = scan_dir(d.path(), ScanOptions::from_record(first));
            assert_eq!(r.end, want, "{name}: {}", r.stop_reason);
        }
    }

    /// PostgreSQL recycles old segment files by renaming them to future
    /// names, so after the end of WAL a segment may hold old, internally valid
    /// pages. Only the pageaddr (and prev-link) checks tell them apart.
    #[test]
    fn stale_recycled_pages() {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        // Fill segments 1..=3, then end exactly at a page boundary in segment 4.
        while b.insert < Lsn(4 * SEG + 5 * 8192 - 3000) {
            b.record(10, 0, 200);
        }
        let room = (8192 - b.insert.page_offset()) as usize;
        b.record(10, 0, room - 24);
        assert!(b.insert.0 % 8192 == 24, "ends at a page boundary: {}", b.insert);
        let end = b.wal_end();
        assert!(end.is_page_start());
        let d = TempDir::new("scan-stale");
        let mut w = b.bytes.clone();
        w.truncate(off(end));
        // The rest of segment 4 comes from old segment 2: valid pages with old addresses.
        let old = b.segment(2);
        let seg4_off = off(Lsn(4 * SEG));
        let from = off(end) - seg4_off;
        w.extend_from_slice(&old[from..]);
        write_segments(d.path(), 1, &w);
        let r = scan_dir(d.path(), ScanOptions::from_record(b.records[0].0));
        assert_eq!(r.end, end, "{}", r.stop_reason);
        assert!(r.stop_reason.contains("unexpected pageaddr"), "{}", r.stop_reason);

        fn off(l: Lsn) -> usize {
            (l.0 - SEG) as usize
        }
    }

    #[test]
    fn refuses_other_systems_and_versions() {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        sample(&mut b);
        let d = TempDir::new("scan-sysid");
        b.write_dir(d.path(), true);
        let mut o = ScanOptions::from_record(Lsn(SEG));
        o.system_id = Some(42);
        let r = scan_dir(d.path(), o);
        assert_eq!(r.records, 0);
        assert!(r.stop_reason.contains("different database system"), "{}", r.stop_reason);
        let mut o = ScanOptions::from_record(Lsn(SEG));
        o.magic = Some(0xD116);
        let r = scan_dir(d.path(), o);
        assert_eq!(r.records, 0);
        assert!(r.stop_reason.contains("magic"), "{}", r.stop_reason);
        // PG 17 WAL is recognised as such.
        let mut b17 = WalBuilder::with_magic(SEG, Lsn(SEG), 0xD116);
        b17.record(10, 0, 100);
        let d17 = TempDir::new("scan-v17");
        b17.write_dir(d17.path(), true);
        let r = scan_dir(d17.path(), ScanOptions::from_record(Lsn(SEG)));
        assert_eq!((r.records, r.pg_version), (1, Some(17)));
    }
}
