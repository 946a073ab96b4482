//! CRC-32C (Castagnoli), the checksum of WAL records and of our control file.
//!
//! PostgreSQL uses the SSE 4.2 `crc32` instruction when the CPU has it and a
//! slicing-by-8 table otherwise; we do the same (plus the ARMv8 CRC
//! instructions), choosing once at first use.

use std::sync::OnceLock;

/// Reflected polynomial 0x1EDC6F41.
const POLY: u32 = 0x82F6_3B78;

/// The running-state form PostgreSQL uses: `INIT_CRC32C`, `COMP_CRC32C` over
/// any number of pieces, then `FIN_CRC32C`.
pub const INIT: u32 = 0xFFFF_FFFF;

pub fn finish(crc: u32) -> u32 {
    crc ^ 0xFFFF_FFFF
}

/// One-shot CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    finish(update(INIT, data))
}

/// Feed `data` into a running (un-finished) CRC.
pub fn update(crc: u32, data: &[u8]) -> u32 {
    (implementation())(crc, data)
}

type Impl = fn(u32, &[u8]) -> u32;

fn implementation() -> Impl {
    static CHOSEN: OnceLock<Impl> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("sse4.2") {
                return update_sse42;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("crc") {
                return update_armv8;
            }
        }
        update_table
    })
}

/// Which implementation this CPU gets; for logs and benchmarks.
pub fn implementation_name() -> &'static str {
    let f = implementation() as usize;
    #[cfg(target_arch = "x86_64")]
    if f == update_sse42 as Impl as usize {
        return "sse4.2";
    }
    #[cfg(target_arch = "aarch64")]
    if f == update_armv8 as Impl as usize {
        return "armv8-crc";
    }
    let _ = f;
    "table"
}

fn tables() -> &'static [[u32; 256]; 8] {
    static TABLES: OnceLock<Box<[[u32; 256]; 8]>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Box::new([[0u32; 256]; 8]);
        for i in 0..256u32 {
            let mut c = i;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            }
            t[0][i as usize] = c;
        }
        for i in 0..256 {
            for k in 1..8 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            }
        }
        t
    })
}

/// Slicing-by-8, for CPUs without a CRC instruction.
pub fn update_table(mut crc: u32, data: &[u8]) -> u32 {
    let t = tables();
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ b as u32) & 0xff) as usize];
    }
    crc
}

#[cfg(target_arch = "x86_64")]
fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    // SAFETY: only chosen after is_x86_feature_detected!("sse4.2").
    unsafe { update_sse42_inner(crc, data) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42_inner(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut c = crc as u64;
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        c = _mm_crc32_u64(c, u64::from_le_bytes(w.try_into().unwrap()));
    }
    let mut c = c as u32;
    for &b in chunks.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    c
}

#[cfg(target_arch = "aarch64")]
fn update_armv8(crc: u32, data: &[u8]) -> u32 {
    // SAFETY: only chosen after is_aarch64_feature_detected!("crc").
    unsafe { update_armv8_inner(crc, data) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "crc")]
unsafe fn update_armv8_inner(crc: u32, data: &[u8]) -> u32 {
    use std::arch::aarch64::{__crc32cb, __crc32cd};
    let mut c = crc;
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        c = __crc32cd(c, u64::from_le_bytes(w.try_into().unwrap()));
    }
    for &b in chunks.remainder() {
        c = __crc32cb(c, b);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers: the CRC catalogue's check value and the iSCSI vectors
    /// of RFC 3720 appendix B.4.
    fn vectors() -> Vec<(Vec<u8>, u32)> {
        let mut v = vec![
            (b"123456789".to_vec(), 0xE306_9283),
            (vec![0u8; 32], 0x8A91_36AA),
            (vec![0xffu8; 32], 0x62A8_AB43),
            ((0u8..32).collect(), 0x46DD_794E),
            ((0u8..32).rev().collect(), 0x113F_DB5C),
            (Vec::new(), 0),
            (b"a".to_vec(), 0xC1D0_4330),
        ];
        // An iSCSI SCSI Read (10) command PDU, also from RFC 3720.
        let mut pdu = vec![0u8; 48];
        pdu[0] = 0x01;
        pdu[1] = 0xc0;
        pdu[16..20].copy_from_slice(&[0x14, 0, 0, 0]);
        pdu[20..24].copy_from_slice(&[0, 0, 0x04, 0]);
        pdu[27] = 0x14;
        pdu[31] = 0x18;
        pdu[32..40].copy_from_slice(&[0x28, 0, 0, 0, 0, 0, 0, 0]);
        pdu[40] = 0x02;
        v.push((pdu, 0xD9963A56));
        v
    }

    #[test]
    fn known_vectors_every_implementation() {
        for (data, want) in vectors() {
            assert_eq!(crc32c(&data), want, "dispatch ({})", implementation_name());
            assert_eq!(finish(update_table(INIT, &data)), want, "table");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("sse4.2") {
                assert_eq!(finish(update_sse42(INIT, &data)), want, "sse4.2");
            }
        }
    }

    #[test]
    fn pieces_equal_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let whole = crc32c(&data);
        for split in [0, 1, 7, 8, 9, 4095, 9999, 10_000] {
            let c = update(update(INIT, &data[..split]), &data[split..]);
            assert_eq!(finish(c), whole, "split at {split}");
            assert_eq!(finish(update_table(update_table(INIT, &data[..split]), &data[split..])), whole);
        }
    }

    #[test]
    fn reports_an_implementation() {
        let name = implementation_name();
        assert!(["sse4.2", "armv8-crc", "table"].contains(&name));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sse4.2") {
            assert_eq!(name, "sse4.2");
        }
    }
}
