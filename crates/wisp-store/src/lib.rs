//! wisp's embedded state: the function registry and the durable queue of
//! async calls in SQLite, and a content-addressed artifact directory beside
//! them, all under one data directory; and the call log (records, log lines,
//! usage) in a database of its own beside them.
//!
//! Writes are atomic: an artifact is written to a temporary file and renamed
//! into place under its digest, and a process artifact's tree is unpacked into
//! a temporary directory and renamed, so a crash never leaves half an artifact
//! where a reader could find it. The invocation path never touches SQLite:
//! the server keeps its routing table in memory and writes through.

mod artifacts;
mod queue;
mod registry;
mod telemetry;

use std::path::{Path, PathBuf};

pub use artifacts::ArtifactUpload;
pub use queue::{CallFilter, CallRow, NewCall, PendingCall, QueueBatch, QueueCounts, StartedCall};
pub use registry::{
    NamespaceContents, NamespaceRemoval, SecretWrite, StoredFunction, StoredNamespace,
    StoredSecret, StoredToken,
};
pub use telemetry::{
    LogFilter, NewLine, NewRecord, StoredLine, Telemetry, UsageTotals, record_line,
};

/// A failure of the store. Every variant names what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite database failed.
    #[error("state database: {0}")]
    Database(#[from] rusqlite::Error),
    /// A file or directory under the data directory could not be used.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A stored function's JSON does not parse (written by a newer wisp?).
    #[error("stored function {name}: {source}")]
    Corrupt {
        /// The function.
        name: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// A batch of the call log does not decode.
    #[error("call log batch {id}: {source}")]
    CorruptBatch {
        /// The batch.
        id: i64,
        /// Why it does not decode.
        source: prost::DecodeError,
    },
    /// No artifact has that digest.
    #[error("no artifact {0}: upload it with PUT /system/artifacts")]
    UnknownArtifact(String),
    /// A process artifact is not a tar archive that unpacks safely.
    #[error("artifact {digest} is not a usable tar archive: {reason}")]
    BadArchive {
        /// The artifact.
        digest: String,
        /// What was wrong.
        reason: String,
    },
}

impl StoreError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// The node's state under one data directory.
pub struct Store {
    root: PathBuf,
    db: std::sync::Mutex<rusqlite::Connection>,
}

impl Store {
    /// Opens (creating when needed) the state under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for dir in [
            root.to_owned(),
            root.join("artifacts"),
            root.join("trees"),
            root.join("tmp"),
        ] {
            std::fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
        }
        let db = rusqlite::Connection::open(root.join("wisp.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(registry::SCHEMA)?;
        db.execute_batch(queue::SCHEMA)?;
        Ok(Self {
            root: root.to_owned(),
            db: std::sync::Mutex::new(db),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent: each
        // write is one statement or one transaction.
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
