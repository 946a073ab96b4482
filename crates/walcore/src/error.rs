//! One error type for the crate. Every error says what it was doing, where
//! (directory or file) and at which LSN, because the operator reading the
//! message has no other context: it is what ends up in the daemon's log line
//! and, through the N-API layer, in a JavaScript exception.

use std::fmt;
use std::io;
use std::path::Path;

/// A stable, machine-readable kind, so that callers (and the TypeScript side,
/// which sees it as `err.code`) can map errors to protocol answers, e.g. a
/// removed segment to SQLSTATE 58P01.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Bad argument or an LSN that makes no sense for the operation.
    InvalidArgument,
    /// An append that does not continue exactly at the write position.
    Gap,
    /// An append below the write position (data already written).
    Rewrite,
    /// The store does not know where to write (the end of WAL must be found and
    /// `truncate` called first).
    NotPositioned,
    /// Requested WAL is older than what the store keeps.
    Removed,
    /// Requested WAL is not written (or not flushed) yet.
    NotYetWritten,
    /// A file exists but its bytes are not what they must be.
    Corrupt,
    /// An on-disk format this build does not know.
    UnsupportedVersion,
    /// The operating system said no.
    Io,
    /// The disk is full.
    NoSpace,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "WALCORE_INVALID_ARGUMENT",
            ErrorCode::Gap => "WALCORE_GAP",
            ErrorCode::Rewrite => "WALCORE_REWRITE",
            ErrorCode::NotPositioned => "WALCORE_NOT_POSITIONED",
            ErrorCode::Removed => "WALCORE_REMOVED",
            ErrorCode::NotYetWritten => "WALCORE_NOT_YET_WRITTEN",
            ErrorCode::Corrupt => "WALCORE_CORRUPT",
            ErrorCode::UnsupportedVersion => "WALCORE_UNSUPPORTED_VERSION",
            ErrorCode::Io => "WALCORE_IO",
            ErrorCode::NoSpace => "WALCORE_NO_SPACE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error { code, message: message.into() }
    }

    /// An I/O error on `path` while doing `what`. ENOSPC gets its own code
    /// because the daemon reacts to it (stops acknowledging, retries later).
    pub fn io(what: impl fmt::Display, path: &Path, err: io::Error) -> Error {
        let code = if err.raw_os_error() == Some(sys::ENOSPC) || err.kind() == io::ErrorKind::StorageFull {
            ErrorCode::NoSpace
        } else {
            ErrorCode::Io
        };
        Error::new(code, format!("{what} {}: {err}", path.display()))
    }

    /// Prefix the message with more context (usually the stream directory).
    pub fn context(mut self, ctx: impl fmt::Display) -> Error {
        self.message = format!("{ctx}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

use crate::sys;
