//! Key-value stores on one node: every namespace's stores in `kv.db`, a
//! database of its own beside the registry, so guests' reads and writes
//! never wait behind a deploy or the queue. Each operation runs on tokio's
//! blocking pool, so a slow one (a deep page, a namespace's removal) holds
//! no thread that serves requests; the database has a size bound, past which
//! writes fail and removals still work.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use rusqlite::{OptionalExtension as _, params};
use wisp_core::kv::{
    Bucket, KeyValue, KvError, KvFuture, PAGE_KEYS, Page, collect_keys, incremented, paged,
};

use crate::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL,
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (namespace, store, key)
) WITHOUT ROWID;
";

const UPSERT: &str = "INSERT INTO kv (namespace, store, key, value) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT DO UPDATE SET value = excluded.value";
const SELECT: &str = "SELECT value FROM kv WHERE namespace = ?1 AND store = ?2 AND key = ?3";

/// The node's key-value stores, in SQLite.
pub struct KvStore {
    db: Arc<Mutex<rusqlite::Connection>>,
    max_bytes: u64,
}

impl KvStore {
    /// Opens (creating when needed) `kv.db` under `root`, holding at most
    /// about `max_bytes`.
    pub fn open(root: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        let path = root.join("kv.db");
        crate::private_database(&path)?;
        let db = rusqlite::Connection::open(&path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // A crash of the node loses no write; a power cut may lose the last.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        let page_size: u64 = db.pragma_query_value(None, "page_size", |row| row.get(0))?;
        // SQLite answers SQLITE_FULL to a write past this many pages.
        db.pragma_update(None, "max_page_count", (max_bytes / page_size).max(1))?;
        db.execute_batch(SCHEMA)?;
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
            max_bytes,
        })
    }

    /// Runs `work` on the blocking pool with the connection.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut rusqlite::Connection) -> Result<T, KvError> + Send + 'static,
    ) -> KvFuture<'static, T> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // Each write is one statement or one transaction: a panic leaves none half done.
                let mut db = db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                work(&mut db)
            })
            .await
            .map_err(|error| KvError::Backend(error.to_string()))?
        })
    }

    /// What a failed statement means to the caller.
    fn failed(&self) -> impl Fn(rusqlite::Error) -> KvError + Send + 'static {
        let max_bytes = self.max_bytes;
        move |error| match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => KvError::Full(max_bytes),
            _ => KvError::Backend(error.to_string()),
        }
    }
}

impl KeyValue for KvStore {
    fn get<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        let (bucket, key, failed) = (bucket.clone(), key.to_owned(), self.failed());
        self.run(move |db| {
            db.query_row(
                SELECT,
                params![bucket.namespace, bucket.store, key],
                |row| row.get(0),
            )
            .optional()
            .map_err(failed)
        })
    }

    fn set<'a>(&'a self, bucket: &'a Bucket, key: &'a str, value: Vec<u8>) -> KvFuture<'a, ()> {
        let (bucket, key, failed) = (bucket.clone(), key.to_owned(), self.failed());
        self.run(move |db| {
            db.execute(UPSERT, params![bucket.namespace, bucket.store, key, value])
                .map(drop)
                .map_err(failed)
        })
    }

    fn delete<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, ()> {
        let (bucket, key, failed) = (bucket.clone(), key.to_owned(), self.failed());
        self.run(move |db| {
            db.execute(
                "DELETE FROM kv WHERE namespace = ?1 AND store = ?2 AND key = ?3",
                params![bucket.namespace, bucket.store, key],
            )
            .map(drop)
            .map_err(failed)
        })
    }

    fn list<'a>(&'a self, bucket: &'a Bucket, cursor: u64) -> KvFuture<'a, Page> {
        let (bucket, failed) = (bucket.clone(), self.failed());
        self.run(move |db| {
            // One more than a page tells whether another follows.
            let keys = (|| {
                let mut statement = db.prepare_cached(
                    "SELECT key FROM kv WHERE namespace = ?1 AND store = ?2
                     ORDER BY key LIMIT ?3 OFFSET ?4",
                )?;
                statement
                    .query_map(
                        params![
                            bucket.namespace,
                            bucket.store,
                            PAGE_KEYS as i64 + 1,
                            i64::try_from(cursor).unwrap_or(i64::MAX)
                        ],
                        |row| row.get(0),
                    )?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })()
            .map_err(failed)?;
            Ok(paged(keys, cursor as usize))
        })
    }

    fn all_keys<'a>(&'a self, bucket: &'a Bucket, max_bytes: usize) -> KvFuture<'a, Vec<String>> {
        let (bucket, failed) = (bucket.clone(), self.failed());
        self.run(move |db| {
            let mut statement = db
                .prepare_cached(
                    "SELECT key FROM kv WHERE namespace = ?1 AND store = ?2 ORDER BY key",
                )
                .map_err(&failed)?;
            let keys = statement
                .query_map(params![bucket.namespace, bucket.store], |row| row.get(0))
                .map_err(&failed)?;
            collect_keys(keys.map(|key| key.map_err(&failed)), max_bytes)
        })
    }

    fn increment<'a>(&'a self, bucket: &'a Bucket, key: &'a str, delta: u64) -> KvFuture<'a, u64> {
        let (bucket, key, failed) = (bucket.clone(), key.to_owned(), self.failed());
        self.run(move |db| {
            let transaction = db
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(&failed)?;
            let current: Option<Vec<u8>> = transaction
                .query_row(
                    SELECT,
                    params![bucket.namespace, bucket.store, key],
                    |row| row.get(0),
                )
                .optional()
                .map_err(&failed)?;
            let sum = incremented(&key, current.as_deref(), delta)?;
            transaction
                .execute(
                    UPSERT,
                    params![
                        bucket.namespace,
                        bucket.store,
                        key,
                        sum.to_string().into_bytes()
                    ],
                )
                .map_err(&failed)?;
            transaction.commit().map_err(&failed)?;
            Ok(sum)
        })
    }

    fn forget<'a>(&'a self, namespace: &'a str) -> KvFuture<'a, ()> {
        let (namespace, failed) = (namespace.to_owned(), self.failed());
        self.run(move |db| {
            db.execute("DELETE FROM kv WHERE namespace = ?1", [namespace])
                .map(drop)
                .map_err(failed)
        })
    }

    fn stores<'a>(&'a self, namespace: &'a str) -> KvFuture<'a, Vec<String>> {
        let (namespace, failed) = (namespace.to_owned(), self.failed());
        self.run(move |db| {
            (|| {
                let mut statement = db.prepare_cached(
                    "SELECT DISTINCT store FROM kv WHERE namespace = ?1 ORDER BY store",
                )?;
                statement
                    .query_map([namespace], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })()
            .map_err(failed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_are_kept_apart_by_namespace_and_name_and_pages_cover_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(dir.path(), 1 << 30).unwrap();
        let a = Bucket::new("team-a", "default").unwrap();
        let b = Bucket::new("team-b", "default").unwrap();
        let other = Bucket::new("team-a", "other").unwrap();
        kv.set(&a, "k", b"a".to_vec()).await.unwrap();
        kv.set(&b, "k", b"b".to_vec()).await.unwrap();
        assert_eq!(kv.get(&a, "k").await.unwrap(), Some(b"a".to_vec()));
        assert_eq!(kv.get(&b, "k").await.unwrap(), Some(b"b".to_vec()));
        assert_eq!(kv.get(&other, "k").await.unwrap(), None);
        assert_eq!(kv.increment(&other, "n", 2).await.unwrap(), 2);
        assert_eq!(kv.increment(&other, "n", 3).await.unwrap(), 5);
        assert_eq!(
            kv.increment(&a, "k", 1).await,
            Err(KvError::NotANumber("k".into()))
        );
        assert_eq!(kv.stores("team-a").await.unwrap(), ["default", "other"]);

        for i in 0..PAGE_KEYS + 5 {
            kv.set(&a, &format!("key{i:05}"), Vec::new()).await.unwrap();
        }
        // In byte order: "k" before "key00000".
        let first = kv.list(&a, 0).await.unwrap();
        assert_eq!((first.keys.len(), first.keys[0].as_str()), (PAGE_KEYS, "k"));
        let second = kv.list(&a, first.cursor.unwrap()).await.unwrap();
        assert_eq!((second.keys.len(), second.cursor), (6, None));
        assert_eq!(second.keys.last().unwrap(), "key01004");
        let all = kv.all_keys(&a, 1 << 20).await.unwrap();
        assert_eq!(all, [first.keys, second.keys].concat());
        // 1,006 keys of 8 bytes or fewer, each counted with its `String`.
        assert_eq!(
            kv.all_keys(&a, 1006 * 24).await,
            Err(KvError::KeysTooLarge(1006 * 24))
        );

        kv.forget("team-a").await.unwrap();
        assert_eq!(kv.stores("team-a").await.unwrap(), Vec::<String>::new());
        assert_eq!(kv.get(&b, "k").await.unwrap(), Some(b"b".to_vec()));
        kv.delete(&b, "k").await.unwrap();
        assert_eq!(kv.get(&b, "k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_full_database_refuses_writes_and_still_removes() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(dir.path(), 1 << 20).unwrap();
        let bucket = Bucket::new("team-a", "default").unwrap();
        let value = vec![7u8; 100 << 10];
        let mut written = 0;
        let refused = loop {
            match kv.set(&bucket, &format!("k{written}"), value.clone()).await {
                Ok(()) => written += 1,
                Err(error) => break error,
            }
            assert!(written < 20, "1 MiB holds fewer than 20 values of 100 KiB");
        };
        assert_eq!(refused, KvError::Full(1 << 20));
        assert!(written >= 5, "{written} values fit");
        kv.delete(&bucket, "k0").await.unwrap();
        kv.set(&bucket, "k0", b"small".to_vec()).await.unwrap();
        assert_eq!(
            kv.get(&bucket, "k0").await.unwrap(),
            Some(b"small".to_vec())
        );
    }
}
