//! RocksDB's status codes, read from its errors, and what each means for the core.
//!
//! The `rocksdb` crate hands errors over as the rendered `Status`: `"<code>: <subcode>: <state>"`
//! where `<code>` and `<subcode>` come from two fixed tables of RocksDB (`util/status.cc`).
//! [`Status::of`] reads the code (through [`rocksdb::Error::kind`]) and the subcode from those
//! fixed positions; nothing here looks for words in the free-text `<state>`.

use std::path::Path;

use rocksdb::ErrorKind;

use crate::error::Error;

/// The subcodes the core acts on (RocksDB's `Status::SubCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubCode {
    /// None, or one the core does not act on.
    Other,
    /// `kNoSpace`: the file system is full.
    NoSpace,
    /// `kSpaceLimit`: the configured space limit is reached.
    SpaceLimit,
}

/// The code and subcode of a RocksDB error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Status {
    pub kind: ErrorKind,
    pub sub: SubCode,
}

/// RocksDB's rendering of each code (`Status::ToString`), for the kinds the crate knows.
fn code_text(kind: &ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::NotFound => "NotFound",
        ErrorKind::Corruption => "Corruption",
        ErrorKind::NotSupported => "Not implemented",
        ErrorKind::InvalidArgument => "Invalid argument",
        ErrorKind::IOError => "IO error",
        ErrorKind::MergeInProgress => "Merge in progress",
        ErrorKind::Incomplete => "Result incomplete",
        ErrorKind::ShutdownInProgress => "Shutdown in progress",
        ErrorKind::TimedOut => "Operation timed out",
        ErrorKind::Aborted => "Operation aborted",
        ErrorKind::Busy => "Resource busy",
        ErrorKind::Expired => "Operation expired",
        ErrorKind::TryAgain => "Operation failed. Try again.",
        ErrorKind::CompactionTooLarge => "Compaction too large",
        ErrorKind::ColumnFamilyDropped => "Column family dropped",
        ErrorKind::Unknown => return None,
    })
}

impl Status {
    /// The status of `e`.
    pub(crate) fn of(e: &rocksdb::Error) -> Status {
        let kind = e.kind();
        let text: &str = e.as_ref();
        let rest = code_text(&kind).and_then(|code| text.strip_prefix(code)).and_then(|r| r.strip_prefix(": ")).unwrap_or("");
        // The subcode's fixed text comes right after the code, before any state.
        let sub = if rest.starts_with("No space left on device") {
            SubCode::NoSpace
        } else if rest.starts_with("Space limit reached") {
            SubCode::SpaceLimit
        } else {
            SubCode::Other
        };
        Status { kind, sub }
    }

    /// The file system (or the configured limit) is full.
    pub(crate) fn is_no_space(&self) -> bool {
        self.kind == ErrorKind::IOError && matches!(self.sub, SubCode::NoSpace | SubCode::SpaceLimit)
    }
}

/// A failed read or open: full disk, corruption (naming `what`, an entity id or a file), or a
/// plain storage error. Nothing was written.
pub(crate) fn read_error(e: rocksdb::Error, what: &str, sequence_number: u64) -> Error {
    let status = Status::of(&e);
    if status.kind == ErrorKind::Corruption {
        Error::Corrupt { persistence_id: what.into(), sequence_number, detail: e.to_string().into() }
    } else if status.is_no_space() {
        Error::StorageFull(e.to_string().into())
    } else {
        Error::Storage(e.to_string().into())
    }
}

/// A failed write of a batch. A full disk refused the batch before any byte of it was durable
/// (RocksDB refuses writes until space is back, then resumes by itself). Any other failure
/// (a failed sync above all) may have left the batch in the write-ahead log: its outcome is
/// unknown, and RocksDB keeps the database read-only until it is reopened.
pub(crate) fn write_error(e: rocksdb::Error, path: &Path) -> Error {
    let status = Status::of(&e);
    if status.is_no_space() {
        Error::StorageFull(format!("{e} (writes resume by themselves once space is freed)").into())
    } else {
        Error::OutcomeUnknown(
            format!(
                "the RocksDB write failed after it may have reached the write-ahead log ({e}); \
                 the store at {} refuses writes until it is closed and reopened, \
                 then read the entity's state before retrying",
                path.display()
            )
            .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_code_and_subcode_not_the_state() {
        // Built through a real database: an open of a missing directory without create_if_missing.
        let dir = std::env::temp_dir().join(format!("ego-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let Err(err) = rocksdb::DB::open(&rocksdb::Options::default(), &dir) else { panic!("a missing directory is refused") };
        let status = Status::of(&err);
        assert_eq!(status.kind, ErrorKind::InvalidArgument, "{err}");
        assert!(!status.is_no_space());
    }
}
