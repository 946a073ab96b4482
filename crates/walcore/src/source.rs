//! Reading WAL by LSN from a directory of segment files.
//!
//! A stream directory (or a `pg_wal`, or an archive) may hold segments of
//! several timelines. To read timeline `tli` we take, for each segment number,
//! the file of the highest timeline not above `tli` — after a switch the new
//! timeline's file holds the old bytes up to the switch point, as PostgreSQL
//! writes it, so this is the history that `tli` sees.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, ErrorCode, Result};
use crate::lsn::{check_segment_size, parse_wal_file_name, Lsn, WalFileName};
use crate::sys;

/// Something the end-of-WAL scan can read from.
pub trait WalSource {
    fn segment_size(&self) -> u64;
    /// Reads bytes at `lsn` into `buf`, stopping at the end of the segment
    /// that holds `lsn`. Returns 0 when that segment is not there.
    fn read_at(&self, lsn: Lsn, buf: &mut [u8]) -> Result<usize>;
}

/// One segment file found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub tli: u32,
    pub segno: u64,
    pub partial: bool,
    pub path: PathBuf,
}

/// Lists the segment files of `dir` (segments and `.partial` ones; other
/// names are ignored), grouped by segment number then timeline.
pub fn list_segment_files(dir: &Path, seg_size: u64) -> Result<BTreeMap<u64, BTreeMap<u32, SegmentFile>>> {
    let mut out: BTreeMap<u64, BTreeMap<u32, SegmentFile>> = BTreeMap::new();
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("cannot list WAL directory", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("cannot list WAL directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(WalFileName::Segment { tli, segno, partial }) = parse_wal_file_name(name, seg_size) {
            let per_tli = out.entry(segno).or_default();
            // A complete segment wins over a leftover .partial of the same name.
            if let Some(existing) = per_tli.get(&tli) {
                if !existing.partial {
                    continue;
                }
            }
            per_tli.insert(tli, SegmentFile { tli, segno, partial, path: entry.path() });
        }
    }
    Ok(out)
}

/// Picks the file timeline `tli` reads for one segment number.
pub fn file_for_timeline(files: &BTreeMap<u32, SegmentFile>, tli: u32) -> Option<&SegmentFile> {
    files.range(..=tli).next_back().map(|(_, f)| f)
}

/// Read-only view of a WAL directory for one timeline.
pub struct DirSource {
    dir: PathBuf,
    seg_size: u64,
    tli: u32,
    files: BTreeMap<u64, BTreeMap<u32, SegmentFile>>,
    open: Mutex<Option<(u64, File)>>,
}

impl DirSource {
    pub fn open(dir: &Path, tli: u32, seg_size: u64) -> Result<DirSource> {
        check_segment_size(seg_size)?;
        let files = list_segment_files(dir, seg_size)?;
        Ok(DirSource { dir: dir.to_path_buf(), seg_size, tli, files, open: Mutex::new(None) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment numbers this timeline can read, in order.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentFile> {
        self.files.values().filter_map(|m| file_for_timeline(m, self.tli))
    }
}

impl WalSource for DirSource {
    fn segment_size(&self) -> u64 {
        self.seg_size
    }

    fn read_at(&self, lsn: Lsn, buf: &mut [u8]) -> Result<usize> {
        let segno = lsn.segment_number(self.seg_size);
        let off = lsn.segment_offset(self.seg_size);
        let want = buf.len().min((self.seg_size - off) as usize);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.as_ref().map(|(s, _)| *s) != Some(segno) {
            let Some(f) = self.files.get(&segno).and_then(|m| file_for_timeline(m, self.tli)) else {
                return Ok(0);
            };
            let file = File::open(&f.path).map_err(|e| Error::io("cannot open WAL segment", &f.path, e))?;
            *open = Some((segno, file));
        }
        let (_, file) = open.as_ref().unwrap();
        sys::read_full_at(file, &mut buf[..want], off).map_err(|e| {
            Error::new(ErrorCode::Io, format!("cannot read WAL at {lsn} in {}: {e}", self.dir.display()))
        })
    }
}
