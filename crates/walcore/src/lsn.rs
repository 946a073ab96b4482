//! LSNs, segment numbers and the names PostgreSQL gives to WAL files.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorCode, Result};

/// XLOG_BLCKSZ: every PostgreSQL build we serve uses 8 KiB WAL pages.
pub const WAL_PAGE_SIZE: u64 = 8192;
/// Records start on MAXALIGN boundaries (8 bytes on every 64-bit platform).
pub const MAXALIGN: u64 = 8;
pub const MIN_SEGMENT_SIZE: u64 = 1 << 20;
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// A position in the WAL: a byte offset into the stream's history.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn segment_number(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }
    pub fn page_offset(self) -> u64 {
        self.0 % WAL_PAGE_SIZE
    }
    pub fn segment_start(self, seg_size: u64) -> Lsn {
        Lsn(self.0 - self.0 % seg_size)
    }
    pub fn page_start(self) -> Lsn {
        Lsn(self.0 - self.0 % WAL_PAGE_SIZE)
    }
    pub fn is_page_start(self) -> bool {
        self.0.is_multiple_of(WAL_PAGE_SIZE)
    }
    pub fn maxalign(self) -> Lsn {
        Lsn(maxalign(self.0))
    }
    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }
}

pub fn maxalign(n: u64) -> u64 {
    (n + MAXALIGN - 1) & !(MAXALIGN - 1)
}

impl fmt::Display for Lsn {
    /// `%X/%X`, as PostgreSQL prints LSNs and as operators paste them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Lsn {
    type Err = Error;
    /// Accepts what PostgreSQL's pg_lsn input accepts: two hex numbers of up
    /// to 8 digits each, separated by a slash, either case.
    fn from_str(s: &str) -> Result<Lsn> {
        let bad = || Error::new(ErrorCode::InvalidArgument, format!("invalid LSN {s:?}: expected X/X in hexadecimal"));
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let part = |p: &str| -> Result<u64> {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u64::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn(part(hi)? << 32 | part(lo)?))
    }
}

/// Checks a segment size the way initdb does: a power of two from 1 MiB to 1 GiB.
pub fn check_segment_size(seg_size: u64) -> Result<()> {
    if !seg_size.is_power_of_two() || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&seg_size) {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("invalid WAL segment size {seg_size}: must be a power of two between 1 MiB and 1 GiB"),
        ));
    }
    Ok(())
}

fn segments_per_xlogid(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

/// `%08X%08X%08X`: timeline, then the segment number split the way
/// XLogFileName splits it (so the middle part is the high 32 bits of the LSN).
pub fn segment_file_name(tli: u32, segno: u64, seg_size: u64) -> String {
    let per = segments_per_xlogid(seg_size);
    format!("{:08X}{:08X}{:08X}", tli, segno / per, segno % per)
}

pub fn partial_file_name(tli: u32, segno: u64, seg_size: u64) -> String {
    format!("{}.partial", segment_file_name(tli, segno, seg_size))
}

pub fn history_file_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

/// What a name in a WAL directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileName {
    Segment { tli: u32, segno: u64, partial: bool },
    History { tli: u32 },
}

/// Recognises segment (`.partial` too) and history file names; anything else
/// (archive_status, `.backup`, temp files) is `None`.
pub fn parse_wal_file_name(name: &str, seg_size: u64) -> Option<WalFileName> {
    let hex = |s: &str| -> Option<u64> {
        if s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    if let Some(tli) = name.strip_suffix(".history") {
        if tli.len() == 8 {
            return Some(WalFileName::History { tli: hex(tli)? as u32 });
        }
        return None;
    }
    let (base, partial) = match name.strip_suffix(".partial") {
        Some(b) => (b, true),
        None => (name, false),
    };
    if base.len() != 24 {
        return None;
    }
    let tli = hex(&base[0..8])? as u32;
    let log = hex(&base[8..16])?;
    let seg = hex(&base[16..24])?;
    let per = segments_per_xlogid(seg_size);
    if seg >= per || tli == 0 {
        return None;
    }
    Some(WalFileName::Segment { tli, segno: log * per + seg, partial })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let l: Lsn = "0/91397A0".parse().unwrap();
        assert_eq!(l, Lsn(0x91397A0));
        assert_eq!(l.to_string(), "0/91397A0");
        assert_eq!(Lsn(0x1_0000_00AB).to_string(), "1/AB");
        assert_eq!("ff/ffffffff".parse::<Lsn>().unwrap(), Lsn(0xff_ffff_ffff));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap().0, u64::MAX);
        for bad in ["", "/", "0/", "/0", "0", "0/123456789", "g/0", "0/0/0", " 0/0", "-1/0"] {
            let e = bad.parse::<Lsn>().unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn segment_arithmetic() {
        let seg = 16 << 20;
        let l = Lsn(0x0913_979A);
        assert_eq!(l.segment_number(seg), 9);
        assert_eq!(l.segment_offset(seg), 0x13_979A);
        assert_eq!(l.segment_start(seg), Lsn(0x0900_0000));
        assert_eq!(l.page_start(), Lsn(0x0913_8000));
        assert_eq!(l.maxalign(), Lsn(0x0913_97A0));
        assert_eq!(Lsn(0x0913_97A0).maxalign(), Lsn(0x0913_97A0));
    }

    #[test]
    fn file_names_for_every_segment_size() {
        assert_eq!(segment_file_name(1, 9, 16 << 20), "000000010000000000000009");
        // 0/FF000000 and 1/0 around the xlogid boundary with 16 MiB segments.
        assert_eq!(segment_file_name(1, 0xFF, 16 << 20), "0000000100000000000000FF");
        assert_eq!(segment_file_name(1, 0x100, 16 << 20), "000000010000000100000000");
        assert_eq!(segment_file_name(2, 0x1234, 1 << 20), "000000020000000100000234");
        assert_eq!(segment_file_name(3, 5, 1 << 30), "000000030000000100000001");
        assert_eq!(partial_file_name(1, 3, 16 << 20), "000000010000000000000003.partial");
        assert_eq!(history_file_name(2), "00000002.history");
        assert_eq!(history_file_name(0x1A), "0000001A.history");
        let mut size = MIN_SEGMENT_SIZE;
        while size <= MAX_SEGMENT_SIZE {
            check_segment_size(size).unwrap();
            for segno in [0, 1, segments_per_xlogid(size) - 1, segments_per_xlogid(size), 123_456] {
                let name = segment_file_name(7, segno, size);
                assert_eq!(
                    parse_wal_file_name(&name, size),
                    Some(WalFileName::Segment { tli: 7, segno, partial: false })
                );
                assert_eq!(
                    parse_wal_file_name(&format!("{name}.partial"), size),
                    Some(WalFileName::Segment { tli: 7, segno, partial: true })
                );
                // The name encodes the segment's start LSN: log id = high 32 bits.
                let start = segno * size;
                assert_eq!(&name[8..16], format!("{:08X}", start >> 32));
            }
            size <<= 1;
        }
        for bad in [0, 1000, 512 << 10, 2 << 30, 3 << 20] {
            assert!(check_segment_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_wal_file_name("00000002.history", 16 << 20), Some(WalFileName::History { tli: 2 }));
        for junk in ["archive_status", "000000010000000000000009.backup", "00000001000000000000000g", "000000010000000000000100", "0000000100000000000000090"] {
            assert_eq!(parse_wal_file_name(junk, 16 << 20), None, "{junk}");
        }
    }
}
