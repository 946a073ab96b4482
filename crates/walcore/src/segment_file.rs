//! A WAL segment read back from an archive — for `walkeeper fetch` (a
//! restore_command) and for clients served from object storage — written to
//! a file and checked in the same pass: zstd output (or the bytes a node
//! served) is checked page by page as it streams through a small buffer
//! into the file, so a 16 MiB segment is never a JavaScript buffer and is
//! read from memory once.
//!
//! The first page's long header says whose WAL it is: its system id and
//! PostgreSQL version must be the expected ones when the caller knows them,
//! its segment size gives the segment number of the name, and every page
//! header after it must be the page at its position (see page_check.rs).
//! What is written is exactly one segment: shorter is refused unless the
//! caller asks for zero padding (a `.partial`, PostgreSQL's convention),
//! longer is refused. On any error the file is removed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, ErrorCode, Result};
use crate::lsn::Lsn;
use crate::page::{pg_version_for_magic, LONG_HEADER_SIZE};
use crate::page_check::PageHeaderCheck;

/// Whose WAL a segment is, from its first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentIdentity {
    pub system_id: u64,
    pub pg_version: u32,
    pub seg_size: u64,
}

/// A segment file name (XLogFileName): the timeline, and the two halves of the segment number.
#[derive(Debug, Clone, Copy)]
pub struct SegmentName {
    pub tli: u32,
    pub hi: u32,
    pub lo: u32,
}

/// What the caller insists on (None: whatever the first page says).
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect {
    pub system_id: Option<u64>,
    pub pg_version: Option<u32>,
}

pub struct WriteOptions {
    /// The input is zstd (one or more frames), else the segment's bytes.
    pub compressed: bool,
    /// Zero-fill a short segment to its full size instead of refusing it.
    pub pad: bool,
    /// fsync the file before returning.
    pub sync: bool,
}

const ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
/// The largest segment PostgreSQL allows (initdb --wal-segsize=1024).
const MAX_SEG_SIZE: u64 = 1 << 30;

fn corrupt(msg: String) -> Error {
    Error::new(ErrorCode::Corrupt, msg)
}

struct Writer<'a> {
    file: File,
    path: &'a Path,
    name: SegmentName,
    expect: Expect,
    /// The first bytes, until a long header's worth has arrived.
    head: Vec<u8>,
    id: Option<(SegmentIdentity, PageHeaderCheck, Lsn)>,
    written: u64,
}

impl Writer<'_> {
    fn identify(&self, h: &[u8]) -> Result<(SegmentIdentity, PageHeaderCheck, Lsn)> {
        let magic = u16::from_le_bytes([h[0], h[1]]);
        let pg_version = pg_version_for_magic(magic).ok_or_else(|| corrupt(format!("first page has magic {magic:X}, not a PostgreSQL 15–17 WAL page")))?;
        let system_id = u64::from_le_bytes(h[24..32].try_into().unwrap());
        let seg_size = u32::from_le_bytes(h[32..36].try_into().unwrap()) as u64;
        if !seg_size.is_power_of_two() || !((1 << 20)..=MAX_SEG_SIZE).contains(&seg_size) {
            return Err(corrupt(format!("long header gives segment size {seg_size}")));
        }
        if let Some(want) = self.expect.system_id {
            if want != system_id {
                return Err(corrupt(format!("is from database system {system_id}, this server's is {want}")));
            }
        }
        if let Some(want) = self.expect.pg_version {
            if want != pg_version {
                return Err(corrupt(format!("is PostgreSQL {pg_version} WAL, this server is PostgreSQL {want}")));
            }
        }
        let per_id = (1u64 << 32) / seg_size;
        if self.name.lo as u64 >= per_id {
            return Err(corrupt(format!("not a segment name for {seg_size}-byte segments")));
        }
        let start = Lsn((self.name.hi as u64 * per_id + self.name.lo as u64) * seg_size);
        let check = PageHeaderCheck::new(seg_size, system_id, pg_version, self.name.tli).map_err(|e| corrupt(e.to_string()))?;
        Ok((SegmentIdentity { system_id, pg_version, seg_size }, check, start))
    }

    fn feed(&mut self, data: &[u8]) -> Result<()> {
        if self.id.is_some() {
            return self.feed_checked(data);
        }
        // (the first piece only: copied once, until a long header's worth has arrived)
        self.head.extend_from_slice(data);
        if self.head.len() < LONG_HEADER_SIZE {
            return Ok(());
        }
        let head = std::mem::take(&mut self.head);
        self.id = Some(self.identify(&head[..LONG_HEADER_SIZE])?);
        self.feed_checked(&head)
    }

    fn feed_checked(&mut self, data: &[u8]) -> Result<()> {
        let (id, check, start) = self.id.as_mut().expect("identified");
        if self.written + data.len() as u64 > id.seg_size {
            return Err(corrupt(format!("holds more than one {}-byte segment", id.seg_size)));
        }
        check.check(Lsn(start.0 + self.written), data).map_err(|e| corrupt(e.to_string()))?;
        self.file.write_all(data).map_err(|e| Error::new(ErrorCode::Io, format!("cannot write {}: {e}", self.path.display())))?;
        self.written += data.len() as u64;
        Ok(())
    }
}

/// Writes the segment `name` from `src` to a new file at `path` (which must
/// not exist), checking it as it goes (see the top of this file).
pub fn write_segment(src: &[u8], name: SegmentName, expect: Expect, path: &Path, opts: &WriteOptions) -> Result<SegmentIdentity> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::new(ErrorCode::Io, format!("cannot create {}: {e}", path.display())))?;
    let mut w = Writer { file, path, name, expect, head: Vec::new(), id: None, written: 0 };
    let r = (|| {
        if opts.compressed {
            crate::zstd::decompress_each(src, MAX_SEG_SIZE as usize, 256 * 1024, |chunk| w.feed(chunk))?;
        } else {
            for chunk in src.chunks(256 * 1024) {
                w.feed(chunk)?;
            }
        }
        let Some(id) = w.id.as_ref().map(|(i, _, _)| *i) else {
            return Err(corrupt(format!("{} bytes, not a WAL segment", w.head.len())));
        };
        if w.written < id.seg_size {
            if !opts.pad {
                return Err(corrupt(format!("{} bytes, not {}", w.written, id.seg_size)));
            }
            while w.written < id.seg_size {
                let n = (id.seg_size - w.written).min(ZEROS.len() as u64) as usize;
                w.file.write_all(&ZEROS[..n]).map_err(|e| Error::new(ErrorCode::Io, format!("cannot write {}: {e}", path.display())))?;
                w.written += n as u64;
            }
        }
        if opts.sync {
            w.file.sync_all().map_err(|e| Error::new(ErrorCode::Io, format!("cannot fsync {}: {e}", path.display())))?;
        }
        Ok(id)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testwal::{WalBuilder, SYSID};

    /// Segment 3 of 1 MiB segments, full of records.
    fn seg3() -> Vec<u8> {
        let mut b = WalBuilder::new(1 << 20, Lsn(3 << 20));
        while b.end().0 < (3 << 20) + 1_000_000 {
            b.record(0, 0, 3000);
        }
        b.segment(3)
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("walcore-segfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    #[test]
    fn writes_a_checked_segment_compressed_or_plain_and_pads_only_when_asked() {
        let seg = seg3();
        let name = SegmentName { tli: 1, hi: 0, lo: 3 };
        let z = crate::zstd::compress(&seg, 3).unwrap();
        let opts = WriteOptions { compressed: true, pad: false, sync: true };
        let p = tmp("z");
        let id = write_segment(&z, name, Expect { system_id: Some(SYSID), pg_version: Some(15) }, &p, &opts).unwrap();
        assert_eq!(id, SegmentIdentity { system_id: SYSID, pg_version: 15, seg_size: 1 << 20 });
        assert_eq!(std::fs::read(&p).unwrap(), seg);
        std::fs::remove_file(&p).unwrap();
        // Plain, cut after 100 000 bytes: refused, or zero-padded when asked.
        let cut = &seg[..100_000];
        let plain = WriteOptions { compressed: false, pad: false, sync: false };
        assert!(write_segment(cut, name, Expect::default(), &p, &plain).unwrap_err().to_string().contains("100000 bytes, not 1048576"));
        assert!(!p.exists(), "nothing left behind");
        write_segment(cut, name, Expect::default(), &p, &WriteOptions { pad: true, ..plain }).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert_eq!(&got[..100_000], cut);
        assert!(got[100_000..].iter().all(|&b| b == 0));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn refuses_another_system_another_position_and_damage() {
        let seg = seg3();
        let plain = WriteOptions { compressed: false, pad: false, sync: false };
        let p = tmp("bad");
        let e = write_segment(&seg, SegmentName { tli: 1, hi: 0, lo: 3 }, Expect { system_id: Some(99), pg_version: None }, &p, &plain).unwrap_err();
        assert!(e.to_string().contains(&format!("is from database system {SYSID}, this server's is 99")), "{e}");
        let e = write_segment(&seg, SegmentName { tli: 1, hi: 0, lo: 4 }, Expect::default(), &p, &plain).unwrap_err();
        assert!(e.to_string().contains("pageaddr"), "{e}");
        let mut bad = seg.clone();
        bad[8192 * 5 + 8] ^= 0x20;
        let e = write_segment(&bad, SegmentName { tli: 1, hi: 0, lo: 3 }, Expect::default(), &p, &plain).unwrap_err();
        assert!(e.to_string().contains("WAL page at 0/") && e.to_string().contains("pageaddr"), "{e}");
        assert!(!p.exists());
        let z = crate::zstd::compress(&seg, 3).unwrap();
        let e = write_segment(&z[..z.len() / 2], SegmentName { tli: 1, hi: 0, lo: 3 }, Expect::default(), &p, &WriteOptions { compressed: true, ..plain }).unwrap_err();
        assert_eq!(e.code, ErrorCode::Corrupt, "{e}");
        assert!(!p.exists());
    }
}
