//! WAL page headers (XLogPageHeaderData / XLogLongPageHeaderData).
//!
//! All WAL data is little-endian on every platform PostgreSQL ships for
//! (x86-64, arm64); we read it as such rather than in host order.

use crate::lsn::{Lsn, WAL_PAGE_SIZE};

pub const SHORT_HEADER_SIZE: usize = 24;
pub const LONG_HEADER_SIZE: usize = 40;

pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// xlp_magic of the PostgreSQL major versions whose WAL we serve. The magic
/// changes whenever the WAL format does, so it tells the major version; a
/// standby refuses WAL whose magic differs from its own.
pub const MAGICS: [(u16, u32); 3] = [(0xD110, 15), (0xD113, 16), (0xD116, 17)];

pub fn pg_version_for_magic(magic: u16) -> Option<u32> {
    MAGICS.iter().find(|(m, _)| *m == magic).map(|(_, v)| *v)
}

pub fn magic_for_pg_version(version: u32) -> Option<u16> {
    MAGICS.iter().find(|(_, v)| *v == version).map(|(m, _)| *m)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: u32,
    pub pageaddr: Lsn,
    pub rem_len: u32,
    /// Present when XLP_LONG_HEADER is set (the first page of a segment).
    pub long: Option<LongHeader>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    pub system_id: u64,
    pub seg_size: u32,
    pub block_size: u32,
}

impl PageHeader {
    /// Decodes the header at the start of `page` (which must hold at least
    /// the short header, and the long one when its flag is set).
    pub fn decode(page: &[u8]) -> Option<PageHeader> {
        if page.len() < SHORT_HEADER_SIZE {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes([page[o], page[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(page[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(page[o..o + 8].try_into().unwrap());
        let info = u16_at(2);
        let long = if info & XLP_LONG_HEADER != 0 {
            if page.len() < LONG_HEADER_SIZE {
                return None;
            }
            Some(LongHeader { system_id: u64_at(24), seg_size: u32_at(32), block_size: u32_at(36) })
        } else {
            None
        };
        Some(PageHeader { magic: u16_at(0), info, tli: u32_at(4), pageaddr: Lsn(u64_at(8)), rem_len: u32_at(16), long })
    }

    pub fn size(&self) -> usize {
        if self.long.is_some() {
            LONG_HEADER_SIZE
        } else {
            SHORT_HEADER_SIZE
        }
    }

    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// The checks of xlogreader's XLogReaderValidatePageHeader, for the page
    /// expected at `expected`. `magic`/`system_id` are what earlier pages of
    /// the same WAL said (None: take whatever this page says).
    pub fn validate(
        &self,
        expected: Lsn,
        seg_size: u64,
        magic: Option<u16>,
        system_id: Option<u64>,
    ) -> crate::error::Result<()> {
        self.problem(expected, seg_size, magic, system_id).map_err(|why| crate::error::Error::new(crate::error::ErrorCode::Corrupt, why))
    }

    /// Why this page is not the one expected at `expected`, if it is not.
    fn problem(&self, expected: Lsn, seg_size: u64, magic: Option<u16>, system_id: Option<u64>) -> Result<(), String> {
        if pg_version_for_magic(self.magic).is_none() {
            return Err(format!("invalid magic number {:04X} in WAL page at {expected}", self.magic));
        }
        if let Some(m) = magic {
            if m != self.magic {
                return Err(format!(
                    "WAL page at {expected} has magic {:04X}, earlier pages have {m:04X}",
                    self.magic
                ));
            }
        }
        if self.info & !XLP_ALL_FLAGS != 0 {
            return Err(format!("invalid info bits {:04X} in WAL page at {expected}", self.info));
        }
        let at_segment_start = expected.segment_offset(seg_size) == 0;
        match (&self.long, at_segment_start) {
            (None, true) => return Err(format!("WAL page at {expected} starts a segment but has no long header")),
            (Some(_), false) => return Err(format!("unexpected long header in WAL page at {expected}")),
            (Some(l), true) => {
                if let Some(sid) = system_id {
                    if l.system_id != sid {
                        return Err(format!(
                            "WAL page at {expected} is from a different database system: system identifier {}, expected {sid}",
                            l.system_id
                        ));
                    }
                }
                if l.seg_size as u64 != seg_size {
                    return Err(format!(
                        "WAL page at {expected} has segment size {}, expected {seg_size}",
                        l.seg_size
                    ));
                }
                if l.block_size as u64 != WAL_PAGE_SIZE {
                    return Err(format!("WAL page at {expected} has block size {}, expected 8192", l.block_size));
                }
            }
            (None, false) => {}
        }
        if self.pageaddr != expected {
            return Err(format!("unexpected pageaddr {} in WAL page at {expected}", self.pageaddr));
        }
        if self.tli == 0 {
            return Err(format!("invalid timeline 0 in WAL page at {expected}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first page bytes of a real PG 15 segment, from replication-protocol.md §6.2.
    const REAL_FIRST_PAGE: [u8; 40] = [
        0x10, 0xd1, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x68, 0x18, 0x56, 0xc9, 0x26, 0x24, 0x07, 0x6b, //
        0x00, 0x00, 0x00, 0x01, 0x00, 0x20, 0x00, 0x00,
    ];

    #[test]
    fn decodes_a_real_long_header() {
        let h = PageHeader::decode(&REAL_FIRST_PAGE).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(pg_version_for_magic(h.magic), Some(15));
        assert_eq!(h.info, 0x6);
        assert_eq!(h.tli, 1);
        assert_eq!(h.pageaddr, Lsn(0x0900_0000));
        assert_eq!(h.rem_len, 0);
        assert_eq!(
            h.long,
            Some(LongHeader { system_id: 7_712_172_635_900_483_688, seg_size: 16 << 20, block_size: 8192 })
        );
        assert_eq!(h.size(), LONG_HEADER_SIZE);
        assert!(!h.is_contrecord());
        h.validate(Lsn(0x0900_0000), 16 << 20, Some(0xD110), Some(7_712_172_635_900_483_688)).unwrap();
    }

    #[test]
    fn short_header_and_continuation() {
        let mut p = [0u8; 24];
        p[0..2].copy_from_slice(&0xD113u16.to_le_bytes());
        p[2..4].copy_from_slice(&0x5u16.to_le_bytes());
        p[4..8].copy_from_slice(&2u32.to_le_bytes());
        p[8..16].copy_from_slice(&0x0900_2000u64.to_le_bytes());
        p[16..20].copy_from_slice(&35u32.to_le_bytes());
        let h = PageHeader::decode(&p).unwrap();
        assert_eq!(pg_version_for_magic(h.magic), Some(16));
        assert!(h.is_contrecord());
        assert_eq!(h.rem_len, 35);
        assert_eq!(h.size(), SHORT_HEADER_SIZE);
        h.validate(Lsn(0x0900_2000), 16 << 20, None, None).unwrap();
    }

    #[test]
    fn validation_failures() {
        let good = PageHeader::decode(&REAL_FIRST_PAGE).unwrap();
        let seg = 16 << 20;
        let e = |h: PageHeader, at: u64, m: Option<u16>, s: Option<u64>| h.validate(Lsn(at), seg, m, s).unwrap_err().message;
        assert!(e(PageHeader { magic: 0xD10D, ..good }, 0x900_0000, None, None).contains("invalid magic"));
        assert!(e(good, 0x900_0000, Some(0xD116), None).contains("earlier pages"));
        assert!(e(PageHeader { info: 0x16, ..good }, 0x900_0000, None, None).contains("info bits"));
        assert!(e(good, 0xA00_0000, None, None).contains("unexpected pageaddr"));
        assert!(e(good, 0x900_0000, None, Some(1)).contains("different database system"));
        assert!(e(good, 0x900_2000, None, None).contains("unexpected long header"));
        let short = PageHeader { info: 0, long: None, ..good };
        assert!(e(short, 0x900_0000, None, None).contains("no long header"));
        assert!(good.validate(Lsn(0x900_0000), 1 << 20, None, None).unwrap_err().message.contains("segment size"));
        assert_eq!(PageHeader::decode(&REAL_FIRST_PAGE[..30]), None);
        assert_eq!(magic_for_pg_version(17), Some(0xD116));
        assert_eq!(magic_for_pg_version(14), None);
    }
}
