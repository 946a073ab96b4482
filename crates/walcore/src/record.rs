//! WAL record headers (XLogRecord) and the record CRC.

use crate::crc32c;
use crate::lsn::Lsn;

pub const RECORD_HEADER_SIZE: usize = 24;

/// RM_XLOG_ID and its XLOG_SWITCH info: the record after which the rest of the
/// segment holds no records.
pub const RM_XLOG_ID: u8 = 0;
pub const XLOG_SWITCH: u8 = 0x40;
const XLR_RMGR_INFO_MASK: u8 = 0xF0;
/// RM_MAX_BUILTIN_ID in 15, 16 and 17 (RM_LOGICALMSG_ID).
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// Custom resource managers (PG 15+) use ids 128..=255.
pub const RM_MIN_CUSTOM_ID: u8 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl RecordHeader {
    pub fn decode(b: &[u8; RECORD_HEADER_SIZE]) -> RecordHeader {
        RecordHeader {
            tot_len: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            xid: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            prev: Lsn(u64::from_le_bytes(b[8..16].try_into().unwrap())),
            info: b[16],
            rmid: b[17],
            crc: u32::from_le_bytes(b[20..24].try_into().unwrap()),
        }
    }

    pub fn rmid_is_valid(&self) -> bool {
        self.rmid <= RM_MAX_BUILTIN_ID || self.rmid >= RM_MIN_CUSTOM_ID
    }

    pub fn is_switch(&self) -> bool {
        self.rmid == RM_XLOG_ID && self.info & XLR_RMGR_INFO_MASK == XLOG_SWITCH
    }
}

/// The CRC PostgreSQL stores in xl_crc: the record's data first, then the
/// header up to (not including) xl_crc. `record` is the whole record,
/// `tot_len` bytes.
pub fn record_crc(record: &[u8]) -> u32 {
    let c = crc32c::update(crc32c::INIT, &record[RECORD_HEADER_SIZE..]);
    crc32c::finish(crc32c::update(c, &record[..20]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a record the way XLogInsert does, so tests elsewhere can make WAL.
    pub fn make_record(prev: Lsn, rmid: u8, info: u8, data: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER_SIZE];
        r[0..4].copy_from_slice(&((RECORD_HEADER_SIZE + data.len()) as u32).to_le_bytes());
        r[4..8].copy_from_slice(&7u32.to_le_bytes());
        r[8..16].copy_from_slice(&prev.0.to_le_bytes());
        r[16] = info;
        r[17] = rmid;
        r.extend_from_slice(data);
        let crc = record_crc(&r);
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        r
    }

    #[test]
    fn header_roundtrip_and_crc() {
        let r = make_record(Lsn(0x100_0028), RM_XLOG_ID, XLOG_SWITCH, &[]);
        let h = RecordHeader::decode(r[..24].try_into().unwrap());
        assert_eq!(h.tot_len, 24);
        assert_eq!(h.prev, Lsn(0x100_0028));
        assert!(h.is_switch());
        assert!(h.rmid_is_valid());
        assert_eq!(record_crc(&r), h.crc);
        let mut bad = r.clone();
        bad[23] ^= 1;
        assert_ne!(record_crc(&bad), RecordHeader::decode(bad[..24].try_into().unwrap()).crc);
        let h2 = RecordHeader { rmid: 22, ..h };
        assert!(!h2.rmid_is_valid());
        assert!(RecordHeader { rmid: 130, ..h }.rmid_is_valid());
        assert!(!RecordHeader { info: 0x00, ..h }.is_switch());
    }
}
