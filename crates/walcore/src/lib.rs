//! walcore: PostgreSQL write-ahead log files, byte for byte.
//!
//! Everything here works on WAL bytes and files and nothing else: LSN
//! arithmetic and file names, page and record headers, CRC-32C, the scan for
//! the end of valid WAL, the segment store of one stream directory, the
//! control file, and XLogData framing for the replication protocol. Sockets,
//! time and policy live in TypeScript — except the two pumps, which use a
//! replication socket lent to them once the stream is in COPY: the receive
//! pump (`pump`) reads WAL into a store, the send pump (`send_pump`) writes a
//! lagging replica's WAL from one;
//! this crate has no dependencies so that it builds where the crate registry
//! cannot be reached.

pub mod control;
pub mod crc32c;
pub mod error;
pub mod lsn;
pub mod page;
pub mod page_check;
#[cfg(unix)]
pub mod receive_pump;
pub mod record;
pub mod scan;
#[cfg(unix)]
pub mod segment_file;
pub mod send_pump;
pub mod source;
pub mod store;
pub mod sys;
pub mod xlogdata;
pub mod zstd;
#[cfg(test)]
pub mod testwal;

pub use error::{Error, ErrorCode, Result};
pub use lsn::Lsn;
