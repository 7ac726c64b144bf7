//! Object buckets on one node: each namespace's buckets, their objects'
//! metadata in `objects.db` (a database of its own, beside the registry),
//! and their bytes as files under `objects/`, named by random ids, never by
//! keys, so no key can name a path. An object is streamed into a staging
//! file, flushed, renamed under `objects/data/` and only then recorded: a
//! reader finds whole objects or none, and a crash leaves at worst a file
//! nobody lists, swept away at the next start. Multipart uploads keep their
//! parts under `objects/parts/` until they are completed or aborted.

use std::{
    collections::HashSet,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use md5::{Digest as _, Md5};
use rusqlite::{OptionalExtension as _, params};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use wisp_core::objects::{
    BucketInfo, Listing, ObjectError, ObjectFuture, ObjectInfo, ObjectPath, ObjectRead, Objects,
    PAST_PREFIX, Staged, check_bucket, check_completion, check_object_key, check_part_number,
    multipart_etag,
};

use crate::{StoreError, private_database, private_dir};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS buckets (
    namespace TEXT NOT NULL,
    bucket TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    namespace TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    content_type TEXT,
    modified INTEGER NOT NULL,
    PRIMARY KEY (namespace, bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    content_type TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    upload TEXT NOT NULL,
    number INTEGER NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY (upload, number)
) WITHOUT ROWID;
";

/// What the work behind an operation fails with: turned into an
/// [`ObjectError`] at the trait's edge.
enum Fail {
    Object(ObjectError),
    Db(rusqlite::Error),
    Store(StoreError),
}

impl From<ObjectError> for Fail {
    fn from(error: ObjectError) -> Self {
        Self::Object(error)
    }
}

impl From<rusqlite::Error> for Fail {
    fn from(error: rusqlite::Error) -> Self {
        Self::Db(error)
    }
}

impl From<StoreError> for Fail {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<Fail> for ObjectError {
    fn from(fail: Fail) -> Self {
        match fail {
            Fail::Object(error) => error,
            Fail::Db(error) => Self::Backend(error.to_string()),
            Fail::Store(error) => Self::Backend(error.to_string()),
        }
    }
}

/// The bytes a staging file gathers before it writes them.
const STAGING_BUFFER: usize = 1 << 20;

/// Bytes being written: a file under `objects/tmp`, removed unless it is
/// stored.
pub struct Staging {
    /// Buffered: each write to a `tokio::fs::File` is a trip to the
    /// blocking pool, too many for a body's small frames.
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: tempfile::TempPath,
    md5: Md5,
    size: u64,
}

impl Staging {
    /// Appends `bytes`.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(bytes)
            .await
            .map_err(StoreError::io("write", &self.path))?;
        self.md5.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// How many bytes were written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flushes the bytes to disk.
    pub async fn finish(mut self) -> Result<Staged, StoreError> {
        self.file
            .flush()
            .await
            .map_err(StoreError::io("write", &self.path))?;
        self.file
            .get_mut()
            .sync_all()
            .await
            .map_err(StoreError::io("sync", &self.path))?;
        Ok(Staged {
            path: self.path,
            md5: self.md5.finalize().into(),
            size: self.size,
        })
    }
}

/// Every namespace's buckets on one node.
pub struct ObjectStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `objects/` under the data directory.
    root: PathBuf,
    db: Mutex<rusqlite::Connection>,
}

impl ObjectStore {
    /// Opens (creating when needed) the buckets under `root`, and sweeps
    /// away what a crash left behind: staging files, and object and part
    /// files no row names.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let objects = root.join("objects");
        for dir in ["tmp", "data", "parts"] {
            private_dir(&objects.join(dir))?;
        }
        let path = root.join("objects.db");
        private_database(&path)?;
        let db = rusqlite::Connection::open(&path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        let inner = Inner {
            root: objects,
            db: Mutex::new(db),
        };
        Self::sweep_staging(root)?;
        inner.sweep()?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Removes the staging files under `root` (the data directory) a crash
    /// left behind: at start, before anything is staged.
    pub fn sweep_staging(root: &Path) -> Result<(), StoreError> {
        let dir = root.join("objects").join("tmp");
        private_dir(&dir)?;
        let entries = std::fs::read_dir(&dir).map_err(StoreError::io("read", &dir))?;
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(())
    }

    /// A new staging file for an object's or a part's bytes, in `tmp`
    /// under `root` (the data directory, swept at start by
    /// [`ObjectStore::sweep_staging`]), which both backends use.
    pub fn staging(root: &Path) -> Result<Staging, StoreError> {
        let dir = root.join("objects").join("tmp");
        let (file, path) = tempfile::NamedTempFile::new_in(&dir)
            .map_err(StoreError::io("create a file in", &dir))?
            .into_parts();
        Ok(Staging {
            file: tokio::io::BufWriter::with_capacity(
                STAGING_BUFFER,
                tokio::fs::File::from_std(file),
            ),
            path,
            md5: Md5::new(),
            size: 0,
        })
    }

    /// Runs `work` on the blocking pool.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, Fail> + Send + 'static,
    ) -> ObjectFuture<'static, T> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&inner).map_err(ObjectError::from))
                .await
                .map_err(|error| ObjectError::Backend(error.to_string()))?
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        // Each write is one statement or one transaction: a panic leaves none half done.
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sweep(&self) -> Result<(), StoreError> {
        let db = self.lock();
        let named = |sql: &str| -> Result<HashSet<String>, StoreError> {
            let mut statement = db.prepare(sql)?;
            let files = statement
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(files)
        };
        for (dir, kept) in [
            ("data", named("SELECT file FROM objects")?),
            ("parts", named("SELECT file FROM parts")?),
        ] {
            let dir = self.root.join(dir);
            let entries = std::fs::read_dir(&dir).map_err(StoreError::io("read", &dir))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !kept.contains(name.to_string_lossy().as_ref()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    fn remove_files(&self, dir: &str, files: impl IntoIterator<Item = String>) {
        for file in files {
            let _ = std::fs::remove_file(self.root.join(dir).join(file));
        }
    }

    /// Renames the file at `path` into the objects and records it at `at`,
    /// removing the file the key held before; the quota counts `freed`
    /// bytes (of parts about to go) as gone.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        at: &ObjectPath,
        path: tempfile::TempPath,
        size: u64,
        etag: String,
        content_type: Option<String>,
        max_bytes: Option<u64>,
        freed: u64,
    ) -> Result<ObjectInfo, Fail> {
        let mut db = self.lock();
        let old: Option<(String, u64)> = db
            .query_row(
                "SELECT file, size FROM objects WHERE namespace = ?1 AND bucket = ?2 AND key = ?3",
                params![at.namespace, at.bucket, at.key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some(max) = max_bytes {
            let bytes = namespace_bytes(&db, &at.namespace)?
                .saturating_sub(old.as_ref().map_or(0, |old| old.1) + freed)
                + size;
            if bytes > max {
                return Err(ObjectError::Quota {
                    namespace: at.namespace.clone(),
                    bytes,
                    max,
                }
                .into());
            }
        }
        let file = hex::encode(rand::random::<[u8; 16]>());
        let target = self.root.join("data").join(&file);
        path.persist(&target)
            .map_err(|error| StoreError::io("store", &target)(error.error))?;
        let info = ObjectInfo {
            key: at.key.clone(),
            size,
            etag,
            content_type,
            modified: now(),
        };
        let written = (|| {
            let tx = db.transaction()?;
            insert_bucket(&tx, &at.namespace, &at.bucket)?;
            tx.execute(
                "INSERT INTO objects (namespace, bucket, key, file, size, etag, content_type, modified)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT DO UPDATE SET file = excluded.file, size = excluded.size,
                 etag = excluded.etag, content_type = excluded.content_type, modified = excluded.modified",
                params![
                    at.namespace, at.bucket, at.key, file, size, info.etag, info.content_type,
                    info.modified
                ],
            )?;
            tx.commit()
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&target);
            return Err(error.into());
        }
        if let Some((old, _)) = old {
            self.remove_files("data", [old]);
        }
        Ok(info)
    }

    /// Copies part files into one staging file: its path, size and ETag.
    fn join(&self, files: &[(String, String)]) -> Result<(tempfile::TempPath, u64, String), Fail> {
        let dir = self.root.join("tmp");
        let mut joined = tempfile::NamedTempFile::new_in(&dir)
            .map_err(StoreError::io("create a file in", &dir))?;
        let mut size = 0;
        for (file, _) in files {
            let path = self.root.join("parts").join(file);
            let mut part = std::fs::File::open(&path).map_err(StoreError::io("open", &path))?;
            size += std::io::copy(&mut part, &mut joined)
                .map_err(StoreError::io("join", joined.path()))?;
        }
        joined
            .flush()
            .and_then(|()| joined.as_file().sync_all())
            .map_err(StoreError::io("sync", joined.path()))?;
        let etag = multipart_etag(files.iter().map(|(_, etag)| etag.as_str()));
        Ok((joined.into_temp_path(), size, etag))
    }

    /// Removes an upload's rows and files.
    fn drop_upload(&self, db: &mut rusqlite::Connection, upload: &str) -> Result<(), Fail> {
        let tx = db.transaction()?;
        let parts = files_of(&tx, "SELECT file FROM parts WHERE upload = ?1", [upload])?;
        tx.execute("DELETE FROM parts WHERE upload = ?1", [upload])?;
        tx.execute("DELETE FROM uploads WHERE id = ?1", [upload])?;
        tx.commit()?;
        self.remove_files("parts", parts);
        Ok(())
    }
}

impl Objects for ObjectStore {
    fn buckets<'a>(&'a self, namespace: &'a str) -> ObjectFuture<'a, Vec<BucketInfo>> {
        let namespace = namespace.to_owned();
        self.run(move |inner| {
            let db = inner.lock();
            let mut statement = db.prepare_cached(
                "SELECT bucket, created_at FROM buckets WHERE namespace = ?1 ORDER BY bucket",
            )?;
            let buckets = statement
                .query_map([namespace], |row| {
                    Ok(BucketInfo {
                        name: row.get(0)?,
                        created_at: row.get(1)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(buckets)
        })
    }

    fn create_bucket<'a>(&'a self, namespace: &'a str, bucket: &'a str) -> ObjectFuture<'a, bool> {
        let (namespace, bucket) = (namespace.to_owned(), bucket.to_owned());
        self.run(move |inner| {
            check_bucket(&bucket)?;
            Ok(insert_bucket(&inner.lock(), &namespace, &bucket)? > 0)
        })
    }

    fn has_bucket<'a>(&'a self, namespace: &'a str, bucket: &'a str) -> ObjectFuture<'a, bool> {
        let (namespace, bucket) = (namespace.to_owned(), bucket.to_owned());
        self.run(move |inner| has_bucket(&inner.lock(), &namespace, &bucket))
    }

    fn delete_bucket<'a>(&'a self, namespace: &'a str, bucket: &'a str) -> ObjectFuture<'a, ()> {
        let (namespace, bucket) = (namespace.to_owned(), bucket.to_owned());
        self.run(move |inner| {
            let mut db = inner.lock();
            if !has_bucket(&db, &namespace, &bucket)? {
                return Err(ObjectError::NoSuchBucket(bucket).into());
            }
            let holds: bool = db.query_row(
                "SELECT EXISTS (SELECT 1 FROM objects WHERE namespace = ?1 AND bucket = ?2)",
                params![namespace, bucket],
                |row| row.get(0),
            )?;
            if holds {
                return Err(ObjectError::NotEmpty(bucket).into());
            }
            let uploads = files_of(
                &db,
                "SELECT id FROM uploads WHERE namespace = ?1 AND bucket = ?2",
                params![namespace, bucket],
            )?;
            for upload in uploads {
                inner.drop_upload(&mut db, &upload)?;
            }
            db.execute(
                "DELETE FROM buckets WHERE namespace = ?1 AND bucket = ?2",
                params![namespace, bucket],
            )?;
            Ok(())
        })
    }

    fn put<'a>(
        &'a self,
        at: &'a ObjectPath,
        staged: Staged,
        content_type: Option<String>,
        max_bytes: Option<u64>,
    ) -> ObjectFuture<'a, ObjectInfo> {
        let at = at.clone();
        self.run(move |inner| {
            check_bucket(&at.bucket)?;
            check_object_key(&at.key)?;
            let etag = hex::encode(staged.md5);
            inner.commit(
                &at,
                staged.path,
                staged.size,
                etag,
                content_type,
                max_bytes,
                0,
            )
        })
    }

    fn get<'a>(&'a self, at: &'a ObjectPath, offset: u64) -> ObjectFuture<'a, Option<ObjectRead>> {
        let at = at.clone();
        Box::pin(async move {
            let found = self
                .run(move |inner| {
                    // Under the lock, so the file cannot be replaced between the two.
                    let db = inner.lock();
                    let Some((file, info)) = db
                        .query_row(
                            "SELECT file, size, etag, content_type, modified FROM objects
                             WHERE namespace = ?1 AND bucket = ?2 AND key = ?3",
                            params![at.namespace, at.bucket, at.key],
                            |row| {
                                Ok((
                                    row.get::<_, String>(0)?,
                                    ObjectInfo {
                                        key: at.key.clone(),
                                        size: row.get(1)?,
                                        etag: row.get(2)?,
                                        content_type: row.get(3)?,
                                        modified: row.get(4)?,
                                    },
                                ))
                            },
                        )
                        .optional()?
                    else {
                        return Ok(None);
                    };
                    let path = inner.root.join("data").join(file);
                    let file = std::fs::File::open(&path).map_err(StoreError::io("open", &path))?;
                    Ok(Some((info, file, path)))
                })
                .await?;
            let Some((info, file, path)) = found else {
                return Ok(None);
            };
            let mut file = tokio::fs::File::from_std(file);
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|error| {
                    ObjectError::from(Fail::Store(StoreError::io("seek", &path)(error)))
                })?;
            Ok(Some(ObjectRead {
                info,
                body: Box::pin(file),
            }))
        })
    }

    fn delete<'a>(&'a self, at: &'a ObjectPath) -> ObjectFuture<'a, bool> {
        let at = at.clone();
        self.run(move |inner| {
            let db = inner.lock();
            let file: Option<String> = db
                .query_row(
                    "DELETE FROM objects WHERE namespace = ?1 AND bucket = ?2 AND key = ?3
                     RETURNING file",
                    params![at.namespace, at.bucket, at.key],
                    |row| row.get(0),
                )
                .optional()?;
            let removed = file.is_some();
            inner.remove_files("data", file);
            Ok(removed)
        })
    }

    fn list<'a>(
        &'a self,
        namespace: &'a str,
        bucket: &'a str,
        prefix: &'a str,
        delimiter: Option<&'a str>,
        after: &'a str,
        max: usize,
    ) -> ObjectFuture<'a, Listing> {
        let (namespace, bucket, prefix, after) = (
            namespace.to_owned(),
            bucket.to_owned(),
            prefix.to_owned(),
            after.to_owned(),
        );
        let delimiter = delimiter.map(str::to_owned);
        self.run(move |inner| {
            let db = inner.lock();
            if !has_bucket(&db, &namespace, &bucket)? {
                return Err(ObjectError::NoSuchBucket(bucket).into());
            }
            let mut statement = db.prepare_cached(
                "SELECT key, size, etag, content_type, modified FROM objects
                 WHERE namespace = ?1 AND bucket = ?2 AND key > ?3 AND key >= ?4
                 ORDER BY key LIMIT ?5",
            )?;
            // At most one more entry than the page: a rolled-up prefix is
            // one entry, and the next query starts past all of its keys.
            let mut objects = Vec::new();
            let mut from = after;
            'pages: while objects.len() <= max {
                let rows = statement
                    .query_map(
                        params![
                            namespace,
                            bucket,
                            from,
                            prefix,
                            (max + 1 - objects.len()) as i64
                        ],
                        |row| {
                            Ok(ObjectInfo {
                                key: row.get(0)?,
                                size: row.get(1)?,
                                etag: row.get(2)?,
                                content_type: row.get(3)?,
                                modified: row.get(4)?,
                            })
                        },
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                if rows.is_empty() {
                    break;
                }
                for object in rows {
                    if !object.key.starts_with(&prefix) {
                        break 'pages;
                    }
                    let rolled = delimiter.as_deref().and_then(|delimiter| {
                        let at = object.key[prefix.len()..].find(delimiter)?;
                        Some(object.key[..prefix.len() + at + delimiter.len()].to_owned())
                    });
                    from = object.key.clone();
                    objects.push(object);
                    if let Some(common) = rolled {
                        from = format!("{common}{PAST_PREFIX}");
                        continue 'pages;
                    }
                }
            }
            Ok(Listing::page(objects, &prefix, delimiter.as_deref(), max))
        })
    }

    fn create_upload<'a>(
        &'a self,
        at: &'a ObjectPath,
        content_type: Option<String>,
    ) -> ObjectFuture<'a, String> {
        let at = at.clone();
        self.run(move |inner| {
            check_bucket(&at.bucket)?;
            check_object_key(&at.key)?;
            let id = hex::encode(rand::random::<[u8; 16]>());
            inner.lock().execute(
                "INSERT INTO uploads (id, namespace, bucket, key, content_type, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, at.namespace, at.bucket, at.key, content_type, now()],
            )?;
            Ok(id)
        })
    }

    fn put_part<'a>(
        &'a self,
        at: &'a ObjectPath,
        upload: &'a str,
        number: u32,
        staged: Staged,
        max_bytes: Option<u64>,
    ) -> ObjectFuture<'a, String> {
        let (at, upload) = (at.clone(), upload.to_owned());
        self.run(move |inner| {
            check_part_number(number)?;
            let etag = hex::encode(staged.md5);
            let db = inner.lock();
            upload_of(&db, &upload, &at)?;
            let file = hex::encode(rand::random::<[u8; 16]>());
            let target = inner.root.join("parts").join(&file);
            staged
                .path
                .persist(&target)
                .map_err(|error| StoreError::io("store", &target)(error.error))?;
            let old: Option<(String, u64)> = db
                .query_row(
                    "SELECT file, size FROM parts WHERE upload = ?1 AND number = ?2",
                    params![upload, number],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            if let Some(max) = max_bytes {
                let bytes = namespace_bytes(&db, &at.namespace)?
                    .saturating_sub(old.as_ref().map_or(0, |old| old.1))
                    + staged.size;
                if bytes > max {
                    return Err(ObjectError::Quota {
                        namespace: at.namespace.clone(),
                        bytes,
                        max,
                    }
                    .into());
                }
            }
            if let Err(error) = db.execute(
                "INSERT INTO parts (upload, number, file, size, etag) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO UPDATE SET file = excluded.file, size = excluded.size,
                 etag = excluded.etag",
                params![upload, number, file, staged.size, etag],
            ) {
                let _ = std::fs::remove_file(&target);
                return Err(error.into());
            }
            inner.remove_files("parts", old.map(|old| old.0));
            Ok(etag)
        })
    }

    fn complete_upload<'a>(
        &'a self,
        at: &'a ObjectPath,
        upload: &'a str,
        parts: Vec<(u32, String)>,
        max_bytes: Option<u64>,
    ) -> ObjectFuture<'a, ObjectInfo> {
        let (at, upload) = (at.clone(), upload.to_owned());
        self.run(move |inner| {
            let (content_type, files, freed) = {
                let db = inner.lock();
                let content_type = upload_of(&db, &upload, &at)?;
                let mut statement = db.prepare_cached(
                    "SELECT number, size, etag, file FROM parts WHERE upload = ?1 ORDER BY number",
                )?;
                let uploaded: Vec<(u32, u64, String, String)> = statement
                    .query_map([&upload], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })?
                    .collect::<Result<_, _>>()?;
                let sizes: Vec<(u32, u64, String)> = uploaded
                    .iter()
                    .map(|(number, size, etag, _)| (*number, *size, etag.clone()))
                    .collect();
                check_completion(&parts, &sizes)?;
                let files: Vec<(String, String)> = parts
                    .iter()
                    .filter_map(|(number, _)| {
                        uploaded
                            .iter()
                            .find(|(uploaded, ..)| uploaded == number)
                            .map(|(_, _, etag, file)| (file.clone(), etag.clone()))
                    })
                    .collect();
                let freed = uploaded.iter().map(|(_, size, ..)| size).sum::<u64>();
                (content_type, files, freed)
            };
            // Outside the lock: joining large parts takes a while.
            let (joined, size, etag) = inner.join(&files)?;
            let info = inner.commit(&at, joined, size, etag, content_type, max_bytes, freed)?;
            inner.drop_upload(&mut inner.lock(), &upload)?;
            Ok(info)
        })
    }

    fn abort_upload<'a>(&'a self, at: &'a ObjectPath, upload: &'a str) -> ObjectFuture<'a, ()> {
        let (at, upload) = (at.clone(), upload.to_owned());
        self.run(move |inner| {
            let mut db = inner.lock();
            upload_of(&db, &upload, &at)?;
            inner.drop_upload(&mut db, &upload)
        })
    }

    fn forget<'a>(&'a self, namespace: &'a str) -> ObjectFuture<'a, ()> {
        let namespace = namespace.to_owned();
        self.run(move |inner| {
            let mut db = inner.lock();
            let uploads = files_of(
                &db,
                "SELECT id FROM uploads WHERE namespace = ?1",
                [&namespace],
            )?;
            for upload in uploads {
                inner.drop_upload(&mut db, &upload)?;
            }
            let tx = db.transaction()?;
            let objects = files_of(
                &tx,
                "SELECT file FROM objects WHERE namespace = ?1",
                [&namespace],
            )?;
            for table in ["objects", "buckets"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE namespace = ?1"),
                    [&namespace],
                )?;
            }
            tx.commit()?;
            inner.remove_files("data", objects);
            Ok(())
        })
    }
}

fn insert_bucket(
    db: &rusqlite::Connection,
    namespace: &str,
    bucket: &str,
) -> rusqlite::Result<usize> {
    db.execute(
        "INSERT INTO buckets (namespace, bucket, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![namespace, bucket, now()],
    )
}

fn has_bucket(db: &rusqlite::Connection, namespace: &str, bucket: &str) -> Result<bool, Fail> {
    Ok(db.query_row(
        "SELECT EXISTS (SELECT 1 FROM buckets WHERE namespace = ?1 AND bucket = ?2)",
        params![namespace, bucket],
        |row| row.get(0),
    )?)
}

/// The bytes `namespace`'s objects and the parts of its uploads take.
fn namespace_bytes(db: &rusqlite::Connection, namespace: &str) -> Result<u64, Fail> {
    Ok(db.query_row(
        "SELECT (SELECT COALESCE(SUM(size), 0) FROM objects WHERE namespace = ?1)
              + (SELECT COALESCE(SUM(p.size), 0) FROM parts p JOIN uploads u ON p.upload = u.id
                 WHERE u.namespace = ?1)",
        [namespace],
        |row| row.get(0),
    )?)
}

/// The content type of upload `id`, if it is an upload to `at`.
fn upload_of(db: &rusqlite::Connection, id: &str, at: &ObjectPath) -> Result<Option<String>, Fail> {
    db.query_row(
        "SELECT content_type FROM uploads
         WHERE id = ?1 AND namespace = ?2 AND bucket = ?3 AND key = ?4",
        params![id, at.namespace, at.bucket, at.key],
        |row| row.get(0),
    )
    .optional()?
    .ok_or_else(|| ObjectError::NoSuchUpload(id.to_owned()).into())
}

/// The first column of the rows of `sql`.
fn files_of(
    db: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<String>, Fail> {
    let mut statement = db.prepare(sql)?;
    let files = statement
        .query_map(params, |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(files)
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}
