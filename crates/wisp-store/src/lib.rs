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
//!
//! The data directory is private to the node's user (`0700`, databases
//! `0600`): it holds secrets and every tenant's code and logs. Sandboxed
//! processes never need to walk it: the sandbox, set up as root or as the
//! node's user, binds a function's tree to `/function` for them.

mod artifacts;
mod kv;
mod objects;
mod queue;
mod registry;
mod telemetry;
mod uploads;

use std::path::{Path, PathBuf};

pub use artifacts::ArtifactUpload;
pub use kv::KvStore;
pub use objects::{ObjectStore, Staging};
pub use queue::{
    Attempted, CallFilter, CallOrigin, CallRow, NewCall, PendingCall, QueueBatch, QueueCounts,
    StartedCall, call_key,
};
pub use registry::{
    NamespaceContents, NamespaceRemoval, SecretWrite, StoredFunction, StoredNamespace,
    StoredSecret, StoredToken,
};
pub use telemetry::{
    LogFilter, NewLine, NewRecord, StoredLine, Telemetry, UsageTotals, record_line,
};
pub use uploads::NODE_UPLOADER;

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
            private_dir(&dir)?;
        }
        let path = root.join("wisp.db");
        private_database(&path)?;
        let db = rusqlite::Connection::open(&path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(registry::SCHEMA)?;
        db.execute_batch(queue::SCHEMA)?;
        queue::migrate(&db)?;
        db.execute_batch(uploads::SCHEMA)?;
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

/// Creates a directory (and its parents) readable by the node's user only,
/// and makes an existing one so: data directories made by an older wisp were
/// readable by everyone.
fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(StoreError::io("create directory", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(StoreError::io("restrict", dir))
}

/// Makes a SQLite database and its journal files readable by the node's
/// user only, creating the database file (empty, as SQLite accepts it) when
/// it is new. SQLite gives the `-wal` and `-shm` files it creates the
/// database file's mode.
pub(crate) fn private_database(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(StoreError::io("create", path))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io("restrict", &file)(error));
            }
            _ => {}
        }
    }
    Ok(())
}
