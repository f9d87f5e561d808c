//! The error type of the state stores, [`StateError`]. Each variant's message describes its own
//! level only; underlying causes are reachable through `source()`.

use std::path::PathBuf;

/// Everything that can go wrong in a state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `incr` on a value that is not a base-10 64-bit integer, or that would overflow.
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// A list operation on a string key, or a string operation on a list key.
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    /// A Redis command failed: the server could not be reached or answered with an error.
    #[error("Redis command failed")]
    Redis(#[source] redis::RedisError),
    /// RocksDB reported an error.
    #[error("RocksDB operation failed")]
    Rocks(#[from] rocksdb::Error),
    /// The database on disk was written in a format this build does not read.
    #[error(
        "state store at {} has on-disk format version {found}, but this build reads version \
         {expected}; migrate or move the folder away",
        .path.display()
    )]
    FormatVersion {
        /// The version recorded in the database.
        found: u32,
        /// The version this build reads and writes.
        expected: u32,
        /// The database folder.
        path: PathBuf,
    },
    /// A file-system operation failed.
    #[error("I/O error at {}", .path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored bytes could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// An earlier write's log record could not be written (a full disk, say): the write may be
    /// in memory without being on disk, so the store reads and writes nothing more.
    #[error("the state store stopped after its write-ahead log could not be written ({0}); restart once the cause is fixed")]
    Stopped(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(StateError::NotAnInteger.to_string(), "value is not an integer or out of range");
        assert!(StateError::WrongType.to_string().starts_with("WRONGTYPE"));
        let e = StateError::FormatVersion { found: 7, expected: 1, path: PathBuf::from("/x/state") };
        let msg = e.to_string();
        assert!(msg.contains("/x/state") && msg.contains("version 7") && msg.contains("version 1"));
    }

    #[test]
    fn io_display_stays_at_its_level() {
        let source = std::io::Error::other("disk on fire");
        let e = StateError::Io { path: PathBuf::from("/x"), source };
        assert!(!e.to_string().contains("disk on fire"));
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("disk on fire"));
    }
}
