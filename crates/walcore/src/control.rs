//! The control file: one small file per stream holding its durable state
//! (system id, timeline, flush and commit LSNs, slots …).
//!
//! The envelope is ours to guard: magic, format version, payload length,
//! payload, CRC-32C of everything before it. The payload is opaque here (the
//! TypeScript side owns its schema). A file that fails any check is refused
//! with an error saying what is wrong — never silently reset, because a reset
//! would forget a commit_lsn that consumers may already have acted on.
//! Writes are atomic: a temp file, fsync, rename over the old one, fsync of
//! the directory (as Neon's safekeeper and PostgreSQL's own pg_control do).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::crc32c;
use crate::error::{Error, ErrorCode, Result};
use crate::sys;

/// "WKCF" little-endian.
pub const MAGIC: u32 = 0x4643_4B57;
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 12;
/// Far above anything we store; a length beyond it means a damaged file.
pub const MAX_PAYLOAD: usize = 16 << 20;

pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + 4);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the envelope and returns the payload. `path` names the file in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let corrupt = |what: String| {
        Error::new(
            ErrorCode::Corrupt,
            format!("control file {} is corrupted ({what}); refusing to use it", path.display()),
        )
    };
    if bytes.len() < HEADER + 4 {
        return Err(corrupt(format!("only {} bytes", bytes.len())));
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    if u32_at(0) != MAGIC {
        return Err(Error::new(
            ErrorCode::Corrupt,
            format!("{} is not a walkeeper control file (magic {:08X})", path.display(), u32_at(0)),
        ));
    }
    let version = u32_at(4);
    if version != FORMAT_VERSION {
        return Err(Error::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "control file {} has format version {version}, this build reads version {FORMAT_VERSION}",
                path.display()
            ),
        ));
    }
    let len = u32_at(8) as usize;
    if len > MAX_PAYLOAD || bytes.len() != HEADER + len + 4 {
        return Err(corrupt(format!("payload length {len} does not match file size {}", bytes.len())));
    }
    let want = u32_at(HEADER + len);
    let got = crc32c::crc32c(&bytes[..HEADER + len]);
    if want != got {
        return Err(corrupt(format!("checksum {got:08X} does not match stored {want:08X}")));
    }
    Ok(bytes[HEADER..HEADER + len].to_vec())
}

/// Reads the control file; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read control file", path, e)),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Replaces the control file atomically and durably.
pub fn write(path: &Path, payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::new(ErrorCode::InvalidArgument, format!("control file payload of {} bytes is too large", payload.len())));
    }
    write_file_durable(path, &encode(payload))
}

/// Writes a small file (the control file, a timeline history file)
/// atomically and durably under its final name: a temp file, fsync, rename,
/// fsync of the directory. A crash leaves the old file or the new one.
pub fn write_file_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let res = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        sys::durable_rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testwal::TempDir;

    #[test]
    fn roundtrip_and_atomic_replace() {
        let d = TempDir::new("control");
        let p = d.path().join("walkeeper.control");
        assert_eq!(read(&p).unwrap(), None);
        write(&p, b"{\"flush_lsn\":\"0/3000000\"}").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"{\"flush_lsn\":\"0/3000000\"}");
        write(&p, b"second").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"second");
        assert!(!temp_path(&p).exists());
        // A leftover temp file from a crash mid-write does not matter.
        fs::write(temp_path(&p), b"half").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"second");
        write(&p, b"").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"");
    }

    #[test]
    fn refuses_damage_with_a_reason() {
        let d = TempDir::new("control-bad");
        let p = d.path().join("walkeeper.control");
        let good = encode(b"payload bytes");
        let check = |bytes: &[u8], code: ErrorCode, words: &str| {
            fs::write(&p, bytes).unwrap();
            let e = read(&p).unwrap_err();
            assert_eq!(e.code, code, "{e}");
            assert!(e.message.contains(words), "{e}");
            assert!(e.message.contains("walkeeper.control"), "{e}");
        };
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x10;
            fs::write(&p, &b).unwrap();
            assert!(read(&p).is_err(), "flip at byte {i} went unnoticed");
        }
        let mut b = good.clone();
        b[14] ^= 1;
        check(&b, ErrorCode::Corrupt, "checksum");
        check(&good[..good.len() - 1], ErrorCode::Corrupt, "length");
        check(&good[..5], ErrorCode::Corrupt, "only 5 bytes");
        check(b"", ErrorCode::Corrupt, "only 0 bytes");
        let mut b = good.clone();
        b[0..4].copy_from_slice(b"PGCT");
        check(&b, ErrorCode::Corrupt, "not a walkeeper control file");
        let mut b = good.clone();
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        check(&b, ErrorCode::UnsupportedVersion, "format version 2");
    }
}
