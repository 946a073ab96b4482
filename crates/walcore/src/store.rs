//! The segment store of one stream directory.
//!
//! Files are named and laid out exactly as PostgreSQL's: a segment being
//! written is `<name>.partial`, pre-allocated to the full segment size (so it
//! reads as zeros past the write position and later writes cannot run out of
//! space), and renamed to `<name>` once complete and fsynced. Writes are
//! strictly sequential: an append must continue exactly at the write position
//! (a gap or a rewrite is an error) unless `truncate` moved that position
//! first. Nothing is ever reported flushed that has not been fdatasync'ed,
//! and renames are made durable with an fsync of the directory.
//!
//! Concurrency: appends and flushes come from one writer at a time (the
//! stream's ingest); reads come from any number of threads at once. Only
//! short bookkeeping happens under the lock; file I/O, and above all fsync,
//! happens outside it, so a sender never waits behind a flush.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::control;
use crate::error::{Error, ErrorCode, Result};
use crate::lsn::{check_segment_size, history_file_name, partial_file_name, segment_file_name, Lsn};
use crate::source::{list_segment_files, WalSource};
use crate::sys;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub tli: u32,
    pub segno: u64,
    pub partial: bool,
    pub name: String,
    pub start: Lsn,
}

#[derive(Debug)]
struct Seg {
    partial: bool,
}

struct Inner {
    /// The timeline appends go to.
    tli: u32,
    files: BTreeMap<u64, BTreeMap<u32, Seg>>,
    /// Where the next append must start; None until positioned.
    write_lsn: Option<Lsn>,
    flush_lsn: Lsn,
    appending: bool,
    /// The segment being written, open read-write.
    current: Option<(u64, Arc<File>)>,
    /// Files with writes not yet fsynced.
    dirty: Vec<Arc<File>>,
    /// Complete segments still named `.partial` (renamed at the next flush).
    complete: Vec<u64>,
    dir_dirty: bool,
    /// Read-only handles, most recently used last.
    readers: Vec<((u32, u64), Arc<File>)>,
    /// Set when an fsync failed: the kernel may have dropped the dirty pages,
    /// so nothing written since the last good flush can be trusted.
    poisoned: Option<String>,
}

pub struct Store {
    dir: PathBuf,
    seg_size: u64,
    inner: Mutex<Inner>,
    /// Serialises flush and truncate (each runs mostly outside `inner`).
    flushing: Mutex<()>,
}

const READ_HANDLES: usize = 16;

impl Store {
    /// Opens (creating if needed) the stream directory. The write position is
    /// unknown until `truncate` sets it — normally to the end of valid WAL
    /// found by the scan — except in a directory without segments, where the
    /// first append (at a segment start) sets it.
    pub fn open(dir: &Path, seg_size: u64, tli: u32) -> Result<Store> {
        check_segment_size(seg_size)?;
        if tli == 0 {
            return Err(Error::new(ErrorCode::InvalidArgument, "timeline 0 is not valid"));
        }
        fs::create_dir_all(dir).map_err(|e| Error::io("cannot create stream directory", dir, e))?;
        // Temp files of an interrupted segment creation or file write.
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_str().is_some_and(|n| n.ends_with(".tmp")) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let listed = list_segment_files(dir, seg_size)?;
        let mut files: BTreeMap<u64, BTreeMap<u32, Seg>> = BTreeMap::new();
        for (segno, per) in listed {
            for (t, f) in per {
                let len = fs::metadata(&f.path).map_err(|e| Error::io("cannot stat", &f.path, e))?.len();
                if len != seg_size {
                    return Err(Error::new(
                        ErrorCode::Corrupt,
                        format!(
                            "WAL segment {} has {len} bytes, expected the segment size {seg_size}",
                            f.path.display()
                        ),
                    ));
                }
                files.entry(segno).or_default().insert(t, Seg { partial: f.partial });
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            seg_size,
            inner: Mutex::new(Inner {
                tli,
                files,
                write_lsn: None,
                flush_lsn: Lsn(0),
                appending: false,
                current: None,
                dirty: Vec::new(),
                complete: Vec::new(),
                dir_dirty: false,
                readers: Vec::new(),
                poisoned: None,
            }),
            flushing: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, code: ErrorCode, msg: impl std::fmt::Display) -> Error {
        Error::new(code, format!("{}: {msg}", self.dir.display()))
    }

    fn path_of(&self, tli: u32, segno: u64, partial: bool) -> PathBuf {
        self.dir.join(if partial {
            partial_file_name(tli, segno, self.seg_size)
        } else {
            segment_file_name(tli, segno, self.seg_size)
        })
    }

    pub fn timeline(&self) -> u32 {
        self.lock().tli
    }
    pub fn write_lsn(&self) -> Option<Lsn> {
        self.lock().write_lsn
    }
    pub fn flush_lsn(&self) -> Lsn {
        self.lock().flush_lsn
    }

    /// Start of the oldest segment timeline `tli` can read, if any.
    pub fn oldest_lsn(&self, tli: u32) -> Option<Lsn> {
        let g = self.lock();
        g.files
            .iter()
            .find(|(_, per)| per.range(..=tli).next().is_some())
            .map(|(segno, _)| Lsn(segno * self.seg_size))
    }

    /// Later appends go to timeline `tli` (≥ the current one). The first
    /// append into a segment that only an older timeline has creates the new
    /// timeline's file with the older file's bytes up to that point, as
    /// PostgreSQL does at a timeline switch.
    pub fn set_timeline(&self, tli: u32) -> Result<()> {
        let mut g = self.lock();
        if tli < g.tli {
            return Err(self.err(ErrorCode::InvalidArgument, format!("cannot go back from timeline {} to {tli}", g.tli)));
        }
        if g.appending {
            return Err(self.err(ErrorCode::InvalidArgument, "cannot switch timeline during an append"));
        }
        if tli != g.tli {
            g.tli = tli;
            g.current = None;
        }
        Ok(())
    }

    pub fn list(&self) -> Vec<SegmentInfo> {
        let g = self.lock();
        let mut out = Vec::new();
        for (segno, per) in &g.files {
            for (tli, s) in per {
                let name = if s.partial {
                    partial_file_name(*tli, *segno, self.seg_size)
                } else {
                    segment_file_name(*tli, *segno, self.seg_size)
                };
                out.push(SegmentInfo { tli: *tli, segno: *segno, partial: s.partial, name, start: Lsn(segno * self.seg_size) });
            }
        }
        out
    }

    /// Appends `data` at exactly `lsn`.
    pub fn append(&self, lsn: Lsn, data: &[u8]) -> Result<()> {
        let end = lsn
            .checked_add(data.len() as u64)
            .ok_or_else(|| self.err(ErrorCode::InvalidArgument, format!("append at {lsn} overflows")))?;
        let (tli, mut current) = {
            let mut g = self.lock();
            if let Some(p) = &g.poisoned {
                return Err(self.err(ErrorCode::Io, format!("append at {lsn} refused: {p}")));
            }
            if g.appending {
                return Err(self.err(ErrorCode::InvalidArgument, format!("append at {lsn} while another append is running")));
            }
            match g.write_lsn {
                Some(w) if w == lsn => {}
                Some(w) if lsn > w => {
                    return Err(self.err(ErrorCode::Gap, format!("append at {lsn} would leave a gap: write position is {w}")))
                }
                Some(w) => {
                    return Err(self.err(
                        ErrorCode::Rewrite,
                        format!("append at {lsn} would rewrite WAL: write position is {w} (truncate first)"),
                    ))
                }
                None if g.files.is_empty() => {
                    if lsn.segment_offset(self.seg_size) != 0 {
                        return Err(self.err(
                            ErrorCode::InvalidArgument,
                            format!("the first append to an empty stream must start a segment, not {lsn}"),
                        ));
                    }
                }
                None => {
                    return Err(self.err(
                        ErrorCode::NotPositioned,
                        format!("append at {lsn}: write position unknown (find the end of WAL and truncate there first)"),
                    ))
                }
            }
            if data.is_empty() {
                g.write_lsn = Some(lsn);
                return Ok(());
            }
            g.appending = true;
            (g.tli, g.current.clone())
        };

        let mut created: Vec<u64> = Vec::new();
        let mut touched: Vec<Arc<File>> = Vec::new();
        let mut completed: Vec<u64> = Vec::new();
        let result = (|| -> Result<()> {
            let mut pos = lsn;
            let mut rest = data;
            while !rest.is_empty() {
                let segno = pos.segment_number(self.seg_size);
                let off = pos.segment_offset(self.seg_size);
                let n = rest.len().min((self.seg_size - off) as usize);
                let file = match &current {
                    Some((s, f)) if *s == segno => f.clone(),
                    _ => {
                        let (f, new) = self.open_for_write(tli, segno, off)?;
                        if new {
                            created.push(segno);
                        }
                        current = Some((segno, f.clone()));
                        f
                    }
                };
                sys::write_all_at(&file, &rest[..n], off).map_err(|e| {
                    Error::io(format_args!("cannot write WAL at {pos} to"), &self.path_of(tli, segno, true), e)
                })?;
                if !touched.iter().any(|t| Arc::ptr_eq(t, &file)) {
                    touched.push(file);
                }
                if off + n as u64 == self.seg_size {
                    completed.push(segno);
                }
                pos = Lsn(pos.0 + n as u64);
                rest = &rest[n..];
            }
            Ok(())
        })();

        let mut g = self.lock();
        g.appending = false;
        for segno in &created {
            g.files.entry(*segno).or_default().insert(tli, Seg { partial: true });
            g.dir_dirty = true;
        }
        for f in touched {
            if !g.dirty.iter().any(|d| Arc::ptr_eq(d, &f)) {
                g.dirty.push(f);
            }
        }
        result?;
        g.complete.extend(completed);
        g.current = current;
        g.write_lsn = Some(end);
        Ok(())
    }

    /// Opens segment `segno` of `tli` for writing at `off`, creating it when
    /// missing. Returns the file and whether it was created.
    fn open_for_write(&self, tli: u32, segno: u64, off: u64) -> Result<(Arc<File>, bool)> {
        let (existing, older) = {
            let g = self.lock();
            let per = g.files.get(&segno);
            let existing = per.and_then(|m| m.get(&tli)).map(|s| s.partial);
            let older = per.and_then(|m| m.range(..tli).next_back()).map(|(t, s)| (*t, s.partial));
            (existing, older)
        };
        if let Some(partial) = existing {
            let path = self.path_of(tli, segno, partial);
            let f = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| Error::io("cannot open", &path, e))?;
            return Ok((Arc::new(f), false));
        }
        if off != 0 && older.is_none() {
            return Err(self.err(
                ErrorCode::Corrupt,
                format!("segment {} is missing but the write position is inside it", segment_file_name(tli, segno, self.seg_size)),
            ));
        }
        let final_path = self.path_of(tli, segno, true);
        let tmp = self.dir.join(format!("{}.tmp", partial_file_name(tli, segno, self.seg_size)));
        let res = (|| -> std::io::Result<File> {
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
            sys::preallocate(&f, self.seg_size)?;
            if let Some((otli, opartial)) = older.filter(|_| off > 0) {
                // Timeline switch inside this segment: the new file starts with
                // the old timeline's bytes up to the switch point.
                let src = File::open(self.path_of(otli, segno, opartial))?;
                let mut buf = vec![0u8; 256 * 1024];
                let mut copied = 0u64;
                while copied < off {
                    let n = buf.len().min((off - copied) as usize);
                    let got = sys::read_full_at(&src, &mut buf[..n], copied)?;
                    if got != n {
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "older timeline segment is short"));
                    }
                    sys::write_all_at(&f, &buf[..n], copied)?;
                    copied += n as u64;
                }
            }
            fs::rename(&tmp, &final_path)?;
            Ok(f)
        })();
        match res {
            Ok(f) => Ok((Arc::new(f), true)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(Error::io("cannot create WAL segment", &final_path, e))
            }
        }
    }

    /// Makes everything appended so far durable and returns the new flush
    /// position. Complete segments get their final names here, with one
    /// directory fsync for all renames and creations.
    pub fn flush(&self) -> Result<Lsn> {
        let _f = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let (target, dirty, complete, dir_dirty, tli) = {
            let mut g = self.lock();
            if let Some(p) = &g.poisoned {
                return Err(self.err(ErrorCode::Io, format!("flush refused: {p}")));
            }
            let Some(target) = g.write_lsn else {
                return Ok(g.flush_lsn);
            };
            let dirty = std::mem::take(&mut g.dirty);
            let complete = std::mem::take(&mut g.complete);
            let dir_dirty = std::mem::replace(&mut g.dir_dirty, false);
            (target, dirty, complete, dir_dirty, g.tli)
        };
        let res = (|| -> Result<bool> {
            for f in &dirty {
                f.sync_data().map_err(|e| Error::io(format_args!("fsync failed (flush to {target}) in"), &self.dir, e))?;
            }
            let mut renamed = false;
            for segno in &complete {
                let from = self.path_of(tli, *segno, true);
                let to = self.path_of(tli, *segno, false);
                fs::rename(&from, &to).map_err(|e| Error::io("cannot rename complete segment", &from, e))?;
                renamed = true;
            }
            if dir_dirty || renamed {
                sys::sync_dir(&self.dir).map_err(|e| Error::io("cannot fsync directory", &self.dir, e))?;
            }
            Ok(renamed)
        })();
        let mut g = self.lock();
        match res {
            Ok(_) => {
                for segno in &complete {
                    if let Some(s) = g.files.get_mut(segno).and_then(|m| m.get_mut(&tli)) {
                        s.partial = false;
                    }
                }
                if target > g.flush_lsn {
                    g.flush_lsn = target;
                }
                Ok(g.flush_lsn)
            }
            Err(e) => {
                g.poisoned = Some(format!("an earlier flush failed ({}); reopen the stream", e.message));
                Err(e)
            }
        }
    }

    /// Moves the write (and flush) position to `lsn`, throwing away every
    /// byte at or after it: the rest of its segment is zeroed, later segments
    /// are deleted. Used after the end-of-WAL scan, and when a timeline
    /// switch shows that local WAL diverged.
    pub fn truncate(&self, lsn: Lsn) -> Result<()> {
        // Make earlier appends durable first: truncate promises that
        // everything before `lsn` is on disk when it returns.
        if self.lock().write_lsn.is_some() {
            self.flush()?;
        }
        let _f = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let (tli, files) = {
            let g = self.lock();
            if g.appending {
                return Err(self.err(ErrorCode::InvalidArgument, format!("truncate to {lsn} during an append")));
            }
            let files: Vec<(u64, u32, bool)> = g
                .files
                .iter()
                .flat_map(|(segno, per)| per.iter().map(move |(t, s)| (*segno, *t, s.partial)))
                .collect();
            (g.tli, files)
        };
        let segno = lsn.segment_number(self.seg_size);
        let off = lsn.segment_offset(self.seg_size);
        let mut deleted = Vec::new();
        let mut now_partial = None;
        let res = (|| -> Result<()> {
            for &(s, t, partial) in &files {
                // Older timelines' files of this segment are history (the part
                // before a switch point, or a receiver's old `.partial`): kept.
                if s > segno || (s == segno && (t > tli || (off == 0 && t == tli))) {
                    let p = self.path_of(t, s, partial);
                    fs::remove_file(&p).map_err(|e| Error::io("cannot remove", &p, e))?;
                    deleted.push((s, t));
                }
            }
            if off > 0 {
                let have = files.iter().find(|(s, t, _)| *s == segno && *t == tli);
                let have_older = files.iter().any(|(s, t, _)| *s == segno && *t < tli);
                match have {
                    Some(&(_, _, partial)) => {
                        let mut path = self.path_of(tli, segno, partial);
                        let f = OpenOptions::new().write(true).open(&path).map_err(|e| Error::io("cannot open", &path, e))?;
                        let zeros = vec![0u8; 256 * 1024];
                        let mut at = off;
                        while at < self.seg_size {
                            let n = zeros.len().min((self.seg_size - at) as usize);
                            sys::write_all_at(&f, &zeros[..n], at).map_err(|e| Error::io("cannot zero", &path, e))?;
                            at += n as u64;
                        }
                        f.sync_data().map_err(|e| Error::io("fsync failed for", &path, e))?;
                        if !partial {
                            let to = self.path_of(tli, segno, true);
                            fs::rename(&path, &to).map_err(|e| Error::io("cannot rename", &path, e))?;
                            path = to;
                            now_partial = Some(segno);
                        }
                        let _ = path;
                    }
                    None if have_older => {}
                    None => {
                        return Err(self.err(
                            ErrorCode::InvalidArgument,
                            format!("cannot truncate to {lsn}: segment {} is not here", segment_file_name(tli, segno, self.seg_size)),
                        ))
                    }
                }
            }
            sys::sync_dir(&self.dir).map_err(|e| Error::io("cannot fsync directory", &self.dir, e))
        })();
        let mut g = self.lock();
        for (s, t) in &deleted {
            if let Some(m) = g.files.get_mut(s) {
                m.remove(t);
                if m.is_empty() {
                    g.files.remove(s);
                }
            }
        }
        g.readers.retain(|((t, s), _)| !deleted.contains(&(*s, *t)));
        if let Some(s) = now_partial {
            if let Some(seg) = g.files.get_mut(&s).and_then(|m| m.get_mut(&tli)) {
                seg.partial = true;
            }
        }
        g.current = None;
        g.complete.clear();
        g.dirty.clear();
        res?;
        g.write_lsn = Some(lsn);
        g.flush_lsn = lsn;
        g.poisoned = None;
        Ok(())
    }

    /// Deletes every segment (of any timeline) numbered below `segno`, never
    /// the one being written. Returns the names removed.
    pub fn remove_below(&self, segno: u64) -> Result<Vec<String>> {
        let victims: Vec<(u64, u32, bool)> = {
            let g = self.lock();
            let writing = g.write_lsn.map(|w| w.segment_number(self.seg_size));
            let limit = writing.map_or(segno, |w| segno.min(w));
            g.files
                .range(..limit)
                .flat_map(|(s, per)| per.iter().map(move |(t, x)| (*s, *t, x.partial)))
                .collect()
        };
        let mut removed = Vec::new();
        let mut result = Ok(());
        for (s, t, partial) in victims {
            let p = self.path_of(t, s, partial);
            if let Err(e) = fs::remove_file(&p) {
                result = Err(Error::io("cannot remove old segment", &p, e));
                break;
            }
            removed.push((s, t, p.file_name().unwrap().to_string_lossy().into_owned()));
        }
        {
            let mut g = self.lock();
            for (s, t, _) in &removed {
                if let Some(m) = g.files.get_mut(s) {
                    m.remove(t);
                    if m.is_empty() {
                        g.files.remove(s);
                    }
                }
            }
            g.readers.retain(|((t, s), _)| !removed.iter().any(|(rs, rt, _)| rs == s && rt == t));
        }
        if !removed.is_empty() {
            sys::sync_dir(&self.dir).map_err(|e| Error::io("cannot fsync directory", &self.dir, e))?;
        }
        result?;
        Ok(removed.into_iter().map(|(_, _, n)| n).collect())
    }

    /// A read handle for the file timeline `tli` reads at `segno`.
    fn reader(&self, tli: u32, segno: u64, lsn: Lsn) -> Result<Arc<File>> {
        let (key, partial) = {
            let mut g = self.lock();
            let Some(per) = g.files.get(&segno) else {
                let oldest = g.files.keys().next().copied();
                return Err(match oldest {
                    Some(o) if segno < o => self.err(
                        ErrorCode::Removed,
                        format!(
                            "requested WAL segment {} has already been removed",
                            segment_file_name(tli, segno, self.seg_size)
                        ),
                    ),
                    _ => self.err(ErrorCode::NotYetWritten, format!("no WAL segment holds {lsn}")),
                });
            };
            let Some((&t, s)) = per.range(..=tli).next_back() else {
                return Err(self.err(ErrorCode::NotYetWritten, format!("no WAL segment of timeline {tli} holds {lsn}")));
            };
            let key = (t, segno);
            if let Some(i) = g.readers.iter().position(|(k, _)| *k == key) {
                let e = g.readers.remove(i);
                let f = e.1.clone();
                g.readers.push(e);
                return Ok(f);
            }
            (key, s.partial)
        };
        let path = self.path_of(key.0, key.1, partial);
        let f = match File::open(&path) {
            Ok(f) => f,
            // Renamed to its final name by a flush since we looked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && partial => {
                let p2 = self.path_of(key.0, key.1, false);
                File::open(&p2).map_err(|e| Error::io("cannot open", &p2, e))?
            }
            Err(e) => return Err(Error::io("cannot open", &path, e)),
        };
        let f = Arc::new(f);
        let mut g = self.lock();
        if g.readers.len() >= READ_HANDLES {
            g.readers.remove(0);
        }
        g.readers.push((key, f.clone()));
        Ok(f)
    }

    /// Checks that [start, end) is readable: written (flushed, if
    /// `flushed_only`) and still kept. Returns the handle for `start`'s segment.
    pub(crate) fn prepare_read(&self, tli: u32, start: Lsn, end: Lsn, flushed_only: bool) -> Result<Arc<File>> {
        let limit = {
            let g = self.lock();
            if flushed_only {
                Some(g.flush_lsn)
            } else {
                g.write_lsn
            }
        };
        match limit {
            Some(l) if end <= l => {}
            Some(l) => {
                return Err(self.err(
                    ErrorCode::NotYetWritten,
                    format!(
                        "cannot read WAL up to {end}: {} only reaches {l}",
                        if flushed_only { "the flushed WAL" } else { "the written WAL" }
                    ),
                ))
            }
            None => {
                return Err(self.err(ErrorCode::NotPositioned, format!("cannot read at {start}: write position unknown")))
            }
        }
        self.reader(tli, start.segment_number(self.seg_size), start)
    }

    /// Reads WAL of timeline `tli` at `lsn` into `buf`, crossing segment
    /// boundaries, up to the write position. Returns the bytes read.
    pub fn read(&self, tli: u32, lsn: Lsn, buf: &mut [u8]) -> Result<usize> {
        let limit = self.lock().write_lsn.unwrap_or(Lsn(0));
        if lsn > limit {
            return Err(self.err(ErrorCode::NotYetWritten, format!("cannot read at {lsn}: written WAL ends at {limit}")));
        }
        let total = buf.len().min((limit.0 - lsn.0) as usize);
        let mut done = 0;
        while done < total {
            let pos = Lsn(lsn.0 + done as u64);
            let off = pos.segment_offset(self.seg_size);
            let n = (total - done).min((self.seg_size - off) as usize);
            let f = self.reader(tli, pos.segment_number(self.seg_size), pos)?;
            let got = sys::read_full_at(&f, &mut buf[done..done + n], off)
                .map_err(|e| self.err(ErrorCode::Io, format!("cannot read WAL at {pos}: {e}")))?;
            if got != n {
                return Err(self.err(ErrorCode::Corrupt, format!("segment holding {pos} is shorter than the segment size")));
            }
            done += n;
        }
        Ok(done)
    }

    /// Writes a timeline history file (`%08X.history`) durably.
    pub fn put_history(&self, tli: u32, content: &[u8]) -> Result<()> {
        control::write_file_durable(&self.dir.join(history_file_name(tli)), content)
    }

    pub fn get_history(&self, tli: u32) -> Result<Option<Vec<u8>>> {
        let p = self.dir.join(history_file_name(tli));
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &p, e)),
        }
    }

    /// A `WalSource` view of timeline `tli`, for the end-of-WAL scan.
    pub fn source(&self, tli: u32) -> StoreSource<'_> {
        StoreSource { store: self, tli }
    }
}

/// Reads a store's files without the write-position bound (the scan must look
/// past it: that is where a torn tail is).
pub struct StoreSource<'a> {
    store: &'a Store,
    tli: u32,
}

impl WalSource for StoreSource<'_> {
    fn segment_size(&self) -> u64 {
        self.store.seg_size
    }
    fn read_at(&self, lsn: Lsn, buf: &mut [u8]) -> Result<usize> {
        let seg = self.store.seg_size;
        let segno = lsn.segment_number(seg);
        let f = match self.store.reader(self.tli, segno, lsn) {
            Ok(f) => f,
            Err(e) if matches!(e.code, ErrorCode::NotYetWritten | ErrorCode::Removed) => return Ok(0),
            Err(e) => return Err(e),
        };
        let off = lsn.segment_offset(seg);
        let n = buf.len().min((seg - off) as usize);
        sys::read_full_at(&f, &mut buf[..n], off)
            .map_err(|e| self.store.err(ErrorCode::Io, format!("cannot read WAL at {lsn}: {e}")))
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Store>();
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{find_end_of_wal, ScanOptions};
    use crate::testwal::{TempDir, WalBuilder};

    const SEG: u64 = 1 << 20;

    fn wal(records: usize) -> WalBuilder {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        for i in 0..records {
            b.record(10, 0, [10, 9000, 300, 70_000, 5][i % 5]);
        }
        b
    }

    /// Appends the builder's bytes up to `upto` in awkward piece sizes.
    fn feed(s: &Store, b: &WalBuilder, from: Lsn, upto: Lsn) {
        let sizes = [1usize, 7, 8191, 8193, 100_003, 24, 3, 65_536, 1 << 20, 13];
        let mut pos = from;
        let mut i = 0;
        while pos < upto {
            let n = sizes[i % sizes.len()].min((upto.0 - pos.0) as usize);
            let o = (pos.0 - b.start.0) as usize;
            s.append(pos, &b.bytes[o..o + n]).unwrap();
            pos = Lsn(pos.0 + n as u64);
            i += 1;
        }
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn odd_pieces_make_identical_segments() {
        let b = wal(200);
        let d = TempDir::new("store-append");
        let s = Store::open(d.path(), SEG, 1).unwrap();
        let end = b.wal_end();
        feed(&s, &b, Lsn(SEG), end);
        assert_eq!(s.write_lsn(), Some(end));
        assert_eq!(s.flush_lsn(), Lsn(0), "nothing is flushed before flush()");
        let last = end.segment_number(SEG);
        // Complete segments are still .partial until the flush makes them durable.
        assert!(names(d.path()).iter().all(|n| n.ends_with(".partial")));
        assert_eq!(s.flush().unwrap(), end);
        assert_eq!(s.flush_lsn(), end);
        for segno in 1..=last {
            let partial = segno == last;
            let name = if partial { partial_file_name(1, segno, SEG) } else { segment_file_name(1, segno, SEG) };
            let got = fs::read(d.path().join(&name)).unwrap();
            assert_eq!(got.len() as u64, SEG, "{name} is pre-allocated to full size");
            let want = b.segment(segno);
            if partial {
                let upto = end.segment_offset(SEG) as usize;
                assert_eq!(&got[..upto], &want[..upto], "{name}");
                assert!(got[upto..].iter().all(|&x| x == 0), "{name} is zero after the write position");
            } else {
                assert!(got == want, "{name} differs");
            }
        }
        // Reads cross segment boundaries and stop at the write position.
        let mut buf = vec![0u8; 3 * SEG as usize];
        let at = Lsn(SEG + SEG / 2);
        let n = s.read(1, at, &mut buf).unwrap();
        assert_eq!(n as u64, (end.0 - at.0).min(3 * SEG));
        assert!(buf[..n] == b.bytes[(at.0 - SEG) as usize..(at.0 - SEG) as usize + n]);
        // The scan over the store agrees with the builder.
        let r = find_end_of_wal(&s.source(1), &ScanOptions::from_record(Lsn(SEG))).unwrap();
        assert_eq!(r.end, end);
    }

    #[test]
    fn gaps_rewrites_and_positioning_are_errors() {
        let b = wal(20);
        let d = TempDir::new("store-errors");
        let s = Store::open(d.path(), SEG, 1).unwrap();
        let e = s.append(Lsn(SEG + 40), &b.bytes[40..50]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("must start a segment"), "{e}");
        s.append(Lsn(SEG), &b.bytes[..1000]).unwrap();
        let e = s.append(Lsn(SEG + 1001), &b.bytes[1001..1100]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Gap);
        assert!(e.message.contains("append at 0/1003E9") && e.message.contains("write position is 0/1003E8"), "{e}");
        assert!(e.message.contains(d.path().to_str().unwrap()), "names the directory: {e}");
        let e = s.append(Lsn(SEG + 999), &b.bytes[999..1100]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Rewrite);
        s.append(Lsn(SEG + 1000), &b.bytes[1000..5000]).unwrap();
        s.flush().unwrap();
        drop(s);
        // After reopening, the position is unknown until the scan's end is applied.
        let s = Store::open(d.path(), SEG, 1).unwrap();
        let e = s.append(Lsn(SEG + 5000), &b.bytes[5000..6000]).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotPositioned);
        let mut buf = [0u8; 10];
        assert_eq!(s.read(1, Lsn(SEG), &mut buf).unwrap_err().code, ErrorCode::NotYetWritten);
        s.truncate(Lsn(SEG + 5000)).unwrap();
        s.append(Lsn(SEG + 5000), &b.bytes[5000..6000]).unwrap();
        // A segment file of the wrong size is refused when opening.
        fs::write(d.path().join(segment_file_name(1, 9, SEG)), b"short").unwrap();
        let e = Store::open(d.path(), SEG, 1).err().unwrap();
        assert_eq!(e.code, ErrorCode::Corrupt);
        assert!(e.message.contains("000000010000000000000009"), "{e}");
    }

    #[test]
    fn truncate_zeroes_the_tail_and_drops_later_segments() {
        let b = wal(300);
        let d = TempDir::new("store-truncate");
        let s = Store::open(d.path(), SEG, 1).unwrap();
        let end = b.wal_end();
        assert!(end.segment_number(SEG) >= 4, "test wants several segments, end {end}");
        feed(&s, &b, Lsn(SEG), end);
        s.flush().unwrap();
        // Cut in the middle of segment 2 (complete, so renamed back to .partial).
        let cut = b.records.iter().map(|r| r.0).find(|l| l.segment_number(SEG) == 2 && l.segment_offset(SEG) > 1000).unwrap();
        s.truncate(cut).unwrap();
        assert_eq!((s.write_lsn(), s.flush_lsn()), (Some(cut), cut));
        assert_eq!(names(d.path()), vec![segment_file_name(1, 1, SEG), partial_file_name(1, 2, SEG)]);
        let seg2 = fs::read(d.path().join(partial_file_name(1, 2, SEG))).unwrap();
        let o = cut.segment_offset(SEG) as usize;
        assert!(seg2[o..].iter().all(|&x| x == 0));
        assert!(seg2[..o] == b.segment(2)[..o]);
        let r = find_end_of_wal(&s.source(1), &ScanOptions::from_record(b.records[0].0)).unwrap();
        assert_eq!(r.end, cut);
        // Re-appending the same WAL gives the same files again.
        feed(&s, &b, cut, end);
        s.flush().unwrap();
        for segno in 1..end.segment_number(SEG) {
            assert!(fs::read(d.path().join(segment_file_name(1, segno, SEG))).unwrap() == b.segment(segno));
        }
        // Truncating at a segment boundary removes that segment entirely.
        s.truncate(Lsn(3 * SEG)).unwrap();
        assert_eq!(names(d.path()), vec![segment_file_name(1, 1, SEG), segment_file_name(1, 2, SEG)]);
        feed(&s, &b, Lsn(3 * SEG), end);
        assert_eq!(s.flush().unwrap(), end);
    }

    #[test]
    fn remove_below_and_removed_reads() {
        let b = wal(300);
        let d = TempDir::new("store-remove");
        let s = Store::open(d.path(), SEG, 1).unwrap();
        let end = b.wal_end();
        feed(&s, &b, Lsn(SEG), end);
        s.flush().unwrap();
        let removed = s.remove_below(3).unwrap();
        assert_eq!(removed, vec![segment_file_name(1, 1, SEG), segment_file_name(1, 2, SEG)]);
        assert_eq!(s.oldest_lsn(1), Some(Lsn(3 * SEG)));
        let mut buf = [0u8; 100];
        let e = s.read(1, Lsn(SEG + 100), &mut buf).unwrap_err();
        assert_eq!(e.code, ErrorCode::Removed);
        assert!(e.message.contains("requested WAL segment 000000010000000000000001 has already been removed"), "{e}");
        // Never the segment being written.
        let w = end.segment_number(SEG);
        s.remove_below(w + 10).unwrap();
        assert_eq!(s.list().iter().map(|i| i.segno).collect::<Vec<_>>(), vec![w]);
        assert_eq!(s.list()[0].name, partial_file_name(1, w, SEG));
        feed(&s, &b, end, end);
    }

    #[test]
    fn timeline_switch_copies_the_old_prefix() {
        let b = wal(100);
        let d = TempDir::new("store-tli");
        let s = Store::open(d.path(), SEG, 1).unwrap();
        let end = b.wal_end();
        feed(&s, &b, Lsn(SEG), end);
        s.flush().unwrap();
        // Switch at a record inside the last segment.
        let switch = b.records[b.records.len() - 3].1;
        s.truncate(switch).unwrap();
        s.set_timeline(2).unwrap();
        let payload = vec![0xAB; 5000];
        s.append(switch, &payload).unwrap();
        s.flush().unwrap();
        s.put_history(2, b"1\t0/1234\tno recovery target specified\n").unwrap();
        let segno = switch.segment_number(SEG);
        let new = fs::read(d.path().join(partial_file_name(2, segno, SEG))).unwrap();
        let old = fs::read(d.path().join(partial_file_name(1, segno, SEG))).unwrap();
        let o = switch.segment_offset(SEG) as usize;
        assert!(new[..o] == old[..o], "the new timeline's file starts with the old bytes");
        assert!(new[o..o + 5000] == payload[..]);
        // Timeline 1 still reads its own history; timeline 2 reads the new bytes.
        let mut a = vec![0u8; 5000];
        let n = s.read(2, switch, &mut a).unwrap();
        assert_eq!(n, 5000);
        assert!(a == payload);
        let mut h = [0u8; 16];
        s.read(1, Lsn(SEG), &mut h).unwrap();
        assert!(h[..] == b.bytes[..16]);
        assert_eq!(s.get_history(2).unwrap().unwrap(), b"1\t0/1234\tno recovery target specified\n");
        assert_eq!(s.get_history(3).unwrap(), None);
        assert!(s.set_timeline(1).is_err());
    }

    #[test]
    fn reads_run_while_appending_and_flushing() {
        let b = wal(400);
        let d = TempDir::new("store-concurrent");
        let s = Arc::new(Store::open(d.path(), SEG, 1).unwrap());
        let end = b.wal_end();
        let bytes = Arc::new(b.bytes.clone());
        let reader = {
            let s = s.clone();
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 70_000];
                let mut checked = 0u64;
                while s.flush_lsn() < end {
                    let f = s.flush_lsn();
                    if f <= Lsn(SEG) {
                        continue;
                    }
                    let at = Lsn(SEG + (f.0 - SEG) / 2);
                    let n = s.read(1, at, &mut buf).unwrap();
                    let o = (at.0 - SEG) as usize;
                    assert!(buf[..n] == bytes[o..o + n]);
                    checked += n as u64;
                }
                checked
            })
        };
        let mut pos = Lsn(SEG);
        while pos < end {
            let n = 50_000.min(end.0 - pos.0) as usize;
            let o = (pos.0 - SEG) as usize;
            s.append(pos, &bytes[o..o + n]).unwrap();
            pos = Lsn(pos.0 + n as u64);
            s.flush().unwrap();
        }
        assert!(reader.join().unwrap() > 0);
    }
}
