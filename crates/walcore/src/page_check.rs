//! The page-header check of WAL arriving over replication, before any of it
//! is written: the Rust twin of `ts/wal/page_check.ts`, which the JS paths
//! (ingest, the WalReceiver iterator) use. `__test__/receiver-faults.spec.ts`
//! sends the same bad pages to both and expects the same refusal.
//!
//! Every page header that starts inside a received message must be the page
//! it claims to be: the magic of the stream's PostgreSQL version, pageaddr
//! equal to its position, a long header exactly at segment starts naming our
//! system id and segment size, a timeline no later than the one streamed —
//! or, inside a segment, an all-zero page, which is how PostgreSQL 14+ pads a
//! segment after XLOG_SWITCH. A header split across two messages is checked
//! once its second part arrives. Records are not decoded: their CRCs are
//! checked by whoever replays them.

use crate::error::{Error, ErrorCode, Result};
use crate::lsn::{Lsn, WAL_PAGE_SIZE};
use crate::page::{magic_for_pg_version, LONG_HEADER_SIZE, SHORT_HEADER_SIZE, XLP_ALL_FLAGS, XLP_LONG_HEADER};

pub struct PageHeaderCheck {
    seg_size: u64,
    system_id: u64,
    magic: u16,
    tli: u32,
    /// A header cut by the end of the previous message: its position, bytes so far.
    partial: Option<(Lsn, [u8; LONG_HEADER_SIZE], usize)>,
}

impl PageHeaderCheck {
    pub fn new(seg_size: u64, system_id: u64, pg_version: u32, tli: u32) -> Result<PageHeaderCheck> {
        let magic = magic_for_pg_version(pg_version)
            .ok_or_else(|| Error::new(ErrorCode::UnsupportedVersion, format!("PostgreSQL {pg_version} WAL is not supported (15, 16 and 17 are)")))?;
        Ok(PageHeaderCheck { seg_size, system_id, magic, tli, partial: None })
    }

    fn header_size(&self, at: Lsn) -> usize {
        if at.segment_offset(self.seg_size) == 0 {
            LONG_HEADER_SIZE
        } else {
            SHORT_HEADER_SIZE
        }
    }

    /// Ok when `data` (WAL from `start`, contiguous with the previous call)
    /// is acceptable, else why not.
    pub fn check(&mut self, start: Lsn, data: &[u8]) -> Result<()> {
        let mut off = 0usize;
        if let Some((at, mut bytes, have)) = self.partial.take() {
            let size = self.header_size(at);
            let take = (size - have).min(data.len());
            bytes[have..have + take].copy_from_slice(&data[..take]);
            if have + take < size {
                self.partial = Some((at, bytes, have + take));
                return Ok(());
            }
            self.check_header(at, &bytes[..size])?;
            off = take;
        }
        let pos = start.0 + off as u64;
        let rem = pos % WAL_PAGE_SIZE;
        let mut next = if rem == 0 { off } else { off + (WAL_PAGE_SIZE - rem) as usize };
        while next < data.len() {
            let at = Lsn(start.0 + next as u64);
            let size = self.header_size(at);
            if next + size > data.len() {
                let mut bytes = [0u8; LONG_HEADER_SIZE];
                let have = data.len() - next;
                bytes[..have].copy_from_slice(&data[next..]);
                self.partial = Some((at, bytes, have));
                return Ok(());
            }
            self.check_header(at, &data[next..next + size])?;
            next += WAL_PAGE_SIZE as usize;
        }
        Ok(())
    }

    fn check_header(&self, at: Lsn, h: &[u8]) -> Result<()> {
        self.header_problem(at, h).map_err(|why| Error::new(ErrorCode::Corrupt, why))
    }

    /// Why the header `h` of the page at `at` is not acceptable, if it is not.
    fn header_problem(&self, at: Lsn, h: &[u8]) -> std::result::Result<(), String> {
        let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
        let seg_start = at.segment_offset(self.seg_size) == 0;
        let magic = u16_at(0);
        if magic != self.magic {
            if h.len() == SHORT_HEADER_SIZE && !seg_start && h.iter().all(|b| *b == 0) {
                return Ok(());
            }
            return Err(format!("WAL page at {at} has magic {magic:X}, expected {:X}", self.magic));
        }
        let info = u16_at(2);
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(format!("WAL page at {at} has invalid info bits {info:X}"));
        }
        let long = info & XLP_LONG_HEADER != 0;
        if long != seg_start {
            return Err(if seg_start {
                format!("WAL page at {at} starts a segment but has no long header")
            } else {
                format!("WAL page at {at} has an unexpected long header")
            });
        }
        let tli = u32_at(4);
        if tli == 0 || tli > self.tli {
            return Err(format!("WAL page at {at} claims timeline {tli}, streaming timeline {}", self.tli));
        }
        let pageaddr = Lsn(u64_at(8));
        if pageaddr != at {
            return Err(format!("WAL page at {at} has pageaddr {pageaddr}"));
        }
        if long {
            let sysid = u64_at(24);
            if sysid != self.system_id {
                return Err(format!(
                    "WAL page at {at} is from database system {sysid}, this stream's is {}",
                    self.system_id
                ));
            }
            let seg = u32_at(32) as u64;
            if seg != self.seg_size {
                return Err(format!("WAL page at {at} says segments are {seg} bytes, this stream's are {}", self.seg_size));
            }
            let blck = u32_at(36) as u64;
            if blck != WAL_PAGE_SIZE {
                return Err(format!("WAL page at {at} has block size {blck}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testwal::{WalBuilder, SYSID};

    const SEG: u64 = 1 << 20;

    fn wal() -> WalBuilder {
        let mut b = WalBuilder::new(SEG, Lsn(SEG));
        for i in 0..200 {
            b.record(10, 0, [10, 9000, 300, 70_000, 5][i % 5]);
        }
        b
    }

    /// Feeds `bytes` from `start` in messages of `chunk` bytes; the first error.
    fn feed(c: &mut PageHeaderCheck, start: Lsn, bytes: &[u8], chunk: usize) -> Result<()> {
        let mut off = 0;
        while off < bytes.len() {
            let n = chunk.min(bytes.len() - off);
            c.check(Lsn(start.0 + off as u64), &bytes[off..off + n])?;
            off += n;
        }
        Ok(())
    }

    #[test]
    fn real_wal_passes_in_any_message_size_even_with_headers_split() {
        let b = wal();
        for chunk in [1, 7, 23, 41, 8192, 8193, 65536, 1 << 20] {
            let mut c = PageHeaderCheck::new(SEG, SYSID, 15, 1).unwrap();
            feed(&mut c, b.start, &b.bytes, chunk).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        }
    }

    #[test]
    fn each_wrong_field_is_named() {
        let b = wal();
        let cases: [(usize, &[u8], &str); 6] = [
            (8192 + 8, &[0xEF, 0xBE], "pageaddr"),
            (8192 * 3, &[0x13, 0xD1], "magic D113, expected D110"),
            (8192 * 2 + 4, &[2, 0, 0, 0], "claims timeline 2"),
            (8192 + 2, &[0x02], "unexpected long header"),
            (24, &[1], "from database system"),
            (32, &[0, 0, 0x20], "segments are"),
        ];
        for (at, patch, want) in cases {
            let mut bytes = b.bytes.clone();
            bytes[at..at + patch.len()].copy_from_slice(patch);
            for chunk in [13, 8192, 1 << 20] {
                let mut c = PageHeaderCheck::new(SEG, SYSID, 15, 1).unwrap();
                let err = feed(&mut c, b.start, &bytes, chunk).expect_err(want);
                assert!(err.message.contains(want), "chunk {chunk}: {err} should say {want}");
            }
        }
    }

    #[test]
    fn zero_pages_after_a_switch_pass_but_not_at_a_segment_start() {
        let mut b = wal();
        b.switch();
        let mut bytes = b.bytes.clone();
        // The rest of the segment after the switch record: zero pages.
        let end = (b.wal_end().0 - b.start.0) as usize;
        let page_after = end.div_ceil(8192) * 8192;
        bytes.resize(end.div_ceil(SEG as usize) * SEG as usize, 0);
        bytes[page_after..].fill(0);
        let mut c = PageHeaderCheck::new(SEG, SYSID, 15, 1).unwrap();
        feed(&mut c, b.start, &bytes, 65536).unwrap();
        // A zero page where a segment starts is not a padded page.
        let mut c = PageHeaderCheck::new(SEG, SYSID, 15, 1).unwrap();
        let err = c.check(Lsn(2 * SEG), &[0u8; 8192]).unwrap_err();
        assert!(err.message.contains("magic 0"), "{err}");
    }

    #[test]
    fn unknown_version_is_refused() {
        assert!(PageHeaderCheck::new(SEG, SYSID, 14, 1).is_err());
    }
}
