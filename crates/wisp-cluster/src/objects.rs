//! Object buckets in a cluster: every namespace's objects in one JetStream
//! object store, `wisp_objects`, named `{namespace}/{bucket}/{key}`, with
//! their ETag and content type in the object's metadata; the buckets and
//! the multipart uploads in progress in the key-value bucket
//! `wisp_buckets`; an upload's parts as objects
//! `{namespace}/~parts/{upload}/{number}` (no bucket name starts with `~`)
//! until it is completed or aborted, counted in the namespace's quota. Every node reads what any node wrote.
//! A listing reads every object's info of the store, as the object store
//! lists nothing narrower: fine for thousands of objects, slow for millions.

use std::{collections::HashMap, path::Path};

use async_nats::jetstream::{kv, object_store};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use wisp_core::objects::{
    BucketInfo, Listing, ObjectError, ObjectFuture, ObjectInfo, ObjectPath, ObjectRead, Objects,
    Staged, check_bucket, check_completion, check_object_key, check_part_number, multipart_etag,
};

/// The metadata keys of an object's ETag and content type.
const ETAG: &str = "etag";
const CONTENT_TYPE: &str = "content-type";
/// Where a namespace's parts wait: no bucket name starts with `~`.
const PARTS: &str = "~parts";

/// The cluster's object buckets.
pub struct ClusterObjects {
    store: object_store::ObjectStore,
    /// Buckets (`b.{namespace}.{bucket}`) and uploads (`u.{id}`).
    index: kv::Store,
    /// Where staged parts are joined: the node's data directory.
    scratch: std::path::PathBuf,
}

/// An upload in progress, as the index keeps it.
#[derive(Serialize, Deserialize)]
struct Upload {
    namespace: String,
    bucket: String,
    key: String,
    content_type: Option<String>,
}

fn backend(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ObjectError + '_ {
    move |error| ObjectError::Backend(format!("{what}: {error}"))
}

fn bucket_key(namespace: &str, bucket: &str) -> String {
    format!("b.{namespace}.{bucket}")
}

fn object_name(at: &ObjectPath) -> String {
    format!("{}/{}/{}", at.namespace, at.bucket, at.key)
}

/// Where the parts of an upload to `namespace` wait.
fn parts_root(namespace: &str, upload: &str) -> String {
    format!("{namespace}/{PARTS}/{upload}/")
}

fn part_name(namespace: &str, upload: &str, number: u32) -> String {
    format!("{}{number:05}", parts_root(namespace, upload))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// What an object's info says of it, under `key`.
fn described(info: &object_store::ObjectInfo, key: String) -> ObjectInfo {
    ObjectInfo {
        key,
        size: info.size as u64,
        etag: info.metadata.get(ETAG).cloned().unwrap_or_default(),
        content_type: info.metadata.get(CONTENT_TYPE).cloned(),
        modified: info.modified.map_or(0, |at| at.unix_timestamp()),
    }
}

impl ClusterObjects {
    pub(crate) fn new(store: object_store::ObjectStore, index: kv::Store, scratch: &Path) -> Self {
        Self {
            store,
            index,
            scratch: scratch.to_owned(),
        }
    }

    /// Every live object's info whose name starts with `prefix`.
    async fn infos(&self, prefix: &str) -> Result<Vec<object_store::ObjectInfo>, ObjectError> {
        let list = backend("list the objects");
        self.store
            .list()
            .await
            .map_err(|error| list(&error))?
            .try_filter(|info| std::future::ready(!info.deleted && info.name.starts_with(prefix)))
            .try_collect()
            .await
            .map_err(|error| list(&error))
    }

    async fn exists(&self, namespace: &str, bucket: &str) -> Result<bool, ObjectError> {
        self.index
            .get(bucket_key(namespace, bucket))
            .await
            .map(|entry| entry.is_some())
            .map_err(|error| backend("read the buckets")(&error))
    }

    async fn ensure_bucket(&self, namespace: &str, bucket: &str) -> Result<bool, ObjectError> {
        match self
            .index
            .create(bucket_key(namespace, bucket), now().to_string().into())
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(backend("create the bucket")(&error)),
        }
    }

    /// Checks that `namespace`'s objects and parts, but those whose names
    /// `replaced` says go, take at most `max` with `size` more bytes.
    async fn check_quota(
        &self,
        namespace: &str,
        max: Option<u64>,
        size: u64,
        replaced: impl Fn(&str) -> bool,
    ) -> Result<(), ObjectError> {
        let Some(max) = max else {
            return Ok(());
        };
        let bytes = self
            .infos(&format!("{namespace}/"))
            .await?
            .iter()
            .filter(|info| !replaced(&info.name))
            .map(|info| info.size as u64)
            .sum::<u64>()
            + size;
        if bytes > max {
            return Err(ObjectError::Quota {
                namespace: namespace.to_owned(),
                bytes,
                max,
            });
        }
        Ok(())
    }

    /// Stores the bytes of `body` at `at`; the quota is checked first.
    async fn store_object(
        &self,
        at: &ObjectPath,
        body: &mut (impl tokio::io::AsyncRead + Unpin),
        etag: String,
        content_type: Option<String>,
    ) -> Result<ObjectInfo, ObjectError> {
        let name = object_name(at);
        self.ensure_bucket(&at.namespace, &at.bucket).await?;
        let mut metadata = HashMap::from([(ETAG.to_owned(), etag)]);
        if let Some(content_type) = content_type {
            metadata.insert(CONTENT_TYPE.to_owned(), content_type);
        }
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            metadata,
            ..Default::default()
        };
        let info = self
            .store
            .put(meta, body)
            .await
            .map_err(|error| backend("store the object")(&error))?;
        Ok(described(&info, at.key.clone()))
    }

    async fn upload(&self, id: &str, at: &ObjectPath) -> Result<Upload, ObjectError> {
        let entry = self
            .index
            .get(format!("u.{id}"))
            .await
            .map_err(|error| backend("read the uploads")(&error))?;
        entry
            .and_then(|bytes| serde_json::from_slice::<Upload>(&bytes).ok())
            .filter(|upload| {
                upload.namespace == at.namespace
                    && upload.bucket == at.bucket
                    && upload.key == at.key
            })
            .ok_or_else(|| ObjectError::NoSuchUpload(id.to_owned()))
    }

    /// Removes an upload's parts and its entry.
    async fn drop_upload(&self, namespace: &str, id: &str) -> Result<(), ObjectError> {
        for info in self.infos(&parts_root(namespace, id)).await? {
            self.remove(&info.name).await?;
        }
        self.index
            .purge(format!("u.{id}"))
            .await
            .map_err(|error| backend("remove the upload")(&error))
    }

    /// Deletes an object by name; `false` when there was none.
    async fn remove(&self, name: &str) -> Result<bool, ObjectError> {
        // A deleted object keeps its info, marked deleted.
        match self.store.info(name).await {
            Ok(info) if !info.deleted => {}
            Ok(_) => return Ok(false),
            Err(error) if error.kind() == object_store::InfoErrorKind::NotFound => {
                return Ok(false);
            }
            Err(error) => return Err(backend("read the object")(&error)),
        }
        match self.store.delete(name).await {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == object_store::DeleteErrorKind::NotFound => Ok(false),
            Err(error) => Err(backend("delete the object")(&error)),
        }
    }

    /// The ids of the uploads in progress to `namespace` (and `bucket`).
    async fn uploads_of(
        &self,
        namespace: &str,
        bucket: Option<&str>,
    ) -> Result<Vec<String>, ObjectError> {
        let read = backend("list the uploads");
        let keys: Vec<String> = match self.index.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(|error| read(&error))?,
            Err(error) => return Err(read(&error)),
        };
        let mut ids = Vec::new();
        for key in keys {
            let Some(id) = key.strip_prefix("u.") else {
                continue;
            };
            let Some(bytes) = self.index.get(&key).await.map_err(|error| read(&error))? else {
                continue;
            };
            if let Ok(upload) = serde_json::from_slice::<Upload>(&bytes)
                && upload.namespace == namespace
                && bucket.is_none_or(|bucket| upload.bucket == bucket)
            {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }
}

impl Objects for ClusterObjects {
    fn buckets<'a>(&'a self, namespace: &'a str) -> ObjectFuture<'a, Vec<BucketInfo>> {
        Box::pin(async move {
            let read = backend("list the buckets");
            let prefix = format!("b.{namespace}.");
            let keys: Vec<String> = match self.index.keys().await {
                Ok(keys) => keys.try_collect().await.map_err(|error| read(&error))?,
                Err(error) => return Err(read(&error)),
            };
            let mut buckets = Vec::new();
            for key in keys {
                let Some(name) = key.strip_prefix(&prefix) else {
                    continue;
                };
                let created_at = self
                    .index
                    .get(&key)
                    .await
                    .map_err(|error| read(&error))?
                    .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
                    .unwrap_or(0);
                buckets.push(BucketInfo {
                    name: name.to_owned(),
                    created_at,
                });
            }
            buckets.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(buckets)
        })
    }

    fn create_bucket<'a>(&'a self, namespace: &'a str, bucket: &'a str) -> ObjectFuture<'a, bool> {
        Box::pin(async move {
            check_bucket(bucket)?;
            self.ensure_bucket(namespace, bucket).await
        })
    }

    fn has_bucket<'a>(&'a self, namespace: &'a str, bucket: &'a str) -> ObjectFuture<'a, bool> {
        Box::pin(self.exists(namespace, bucket))
    }

    fn delete_bucket<'a>(&'a self, namespace: &'a str, bucket: &'a str) -> ObjectFuture<'a, ()> {
        Box::pin(async move {
            if !self.exists(namespace, bucket).await? {
                return Err(ObjectError::NoSuchBucket(bucket.to_owned()));
            }
            if !self
                .infos(&format!("{namespace}/{bucket}/"))
                .await?
                .is_empty()
            {
                return Err(ObjectError::NotEmpty(bucket.to_owned()));
            }
            for id in self.uploads_of(namespace, Some(bucket)).await? {
                self.drop_upload(namespace, &id).await?;
            }
            self.index
                .purge(bucket_key(namespace, bucket))
                .await
                .map_err(|error| backend("remove the bucket")(&error))
        })
    }

    fn put<'a>(
        &'a self,
        at: &'a ObjectPath,
        staged: Staged,
        content_type: Option<String>,
        max_bytes: Option<u64>,
    ) -> ObjectFuture<'a, ObjectInfo> {
        Box::pin(async move {
            check_bucket(&at.bucket)?;
            check_object_key(&at.key)?;
            let mut file = tokio::fs::File::open(&staged.path)
                .await
                .map_err(|error| backend("read the staged object")(&error))?;
            let etag = hex::encode(staged.md5);
            let name = object_name(at);
            self.check_quota(&at.namespace, max_bytes, staged.size, |other| other == name)
                .await?;
            self.store_object(at, &mut file, etag, content_type).await
        })
    }

    fn get<'a>(&'a self, at: &'a ObjectPath, offset: u64) -> ObjectFuture<'a, Option<ObjectRead>> {
        Box::pin(async move {
            let mut object = match self.store.get(object_name(at)).await {
                Ok(object) => object,
                Err(error) if error.kind() == object_store::GetErrorKind::NotFound => {
                    return Ok(None);
                }
                Err(error) => return Err(backend("read the object")(&error)),
            };
            let info = described(object.info(), at.key.clone());
            // The object store reads from the start: skip to the offset.
            let skipped = tokio::io::copy(&mut (&mut object).take(offset), &mut tokio::io::sink())
                .await
                .map_err(|error| backend("read the object")(&error))?;
            if skipped < offset.min(info.size) {
                return Err(ObjectError::Backend("the object ended early".to_owned()));
            }
            Ok(Some(ObjectRead {
                info,
                body: Box::pin(object),
            }))
        })
    }

    fn delete<'a>(&'a self, at: &'a ObjectPath) -> ObjectFuture<'a, bool> {
        Box::pin(async move { self.remove(&object_name(at)).await })
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
        Box::pin(async move {
            if !self.exists(namespace, bucket).await? {
                return Err(ObjectError::NoSuchBucket(bucket.to_owned()));
            }
            let root = format!("{namespace}/{bucket}/");
            let mut objects: Vec<ObjectInfo> = self
                .infos(&format!("{root}{prefix}"))
                .await?
                .iter()
                .map(|info| described(info, info.name[root.len()..].to_owned()))
                .filter(|object| object.key.as_str() > after)
                .collect();
            objects.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(Listing::page(objects, prefix, delimiter, max))
        })
    }

    fn create_upload<'a>(
        &'a self,
        at: &'a ObjectPath,
        content_type: Option<String>,
    ) -> ObjectFuture<'a, String> {
        Box::pin(async move {
            check_bucket(&at.bucket)?;
            check_object_key(&at.key)?;
            let mut id = [0; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                .map_err(|_| ObjectError::Backend("no randomness for an upload id".to_owned()))?;
            let id = hex::encode(id);
            let upload = Upload {
                namespace: at.namespace.clone(),
                bucket: at.bucket.clone(),
                key: at.key.clone(),
                content_type,
            };
            let value = serde_json::to_vec(&upload).expect("an upload serializes");
            self.index
                .put(format!("u.{id}"), value.into())
                .await
                .map_err(|error| backend("record the upload")(&error))?;
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
        Box::pin(async move {
            check_part_number(number)?;
            self.upload(upload, at).await?;
            let etag = hex::encode(staged.md5);
            let name = part_name(&at.namespace, upload, number);
            self.check_quota(&at.namespace, max_bytes, staged.size, |other| other == name)
                .await?;
            let mut file = tokio::fs::File::open(&staged.path)
                .await
                .map_err(|error| backend("read the staged part")(&error))?;
            let meta = object_store::ObjectMetadata {
                name,
                metadata: HashMap::from([(ETAG.to_owned(), etag.clone())]),
                ..Default::default()
            };
            self.store
                .put(meta, &mut file)
                .await
                .map_err(|error| backend("store the part")(&error))?;
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
        Box::pin(async move {
            let recorded = self.upload(upload, at).await?;
            let root = parts_root(&at.namespace, upload);
            let uploaded: Vec<(u32, u64, String)> = self
                .infos(&root)
                .await?
                .iter()
                .filter_map(|info| {
                    let number = info.name[root.len()..].parse().ok()?;
                    let etag = info.metadata.get(ETAG)?.clone();
                    Some((number, info.size as u64, etag))
                })
                .collect();
            check_completion(&parts, &uploaded)?;
            let size: u64 = parts
                .iter()
                .filter_map(|(number, _)| uploaded.iter().find(|(n, ..)| n == number))
                .map(|(_, size, _)| size)
                .sum();
            // The upload's parts go once the object is stored.
            let name = object_name(at);
            self.check_quota(&at.namespace, max_bytes, size, |other| {
                other == name || other.starts_with(&root)
            })
            .await?;
            // Joined into a staging file of the node's, then stored whole.
            let dir = self.scratch.join("objects").join("tmp");
            let staging = tempfile::NamedTempFile::new_in(&dir)
                .map_err(|error| backend("create a file to join the parts in")(&error))?;
            let (file, path) = staging.into_parts();
            let mut staging = (tokio::fs::File::from_std(file), path);
            for (number, _) in &parts {
                let mut part = self
                    .store
                    .get(part_name(&at.namespace, upload, *number))
                    .await
                    .map_err(|error| backend("read a part")(&error))?;
                tokio::io::copy(&mut part, &mut staging.0)
                    .await
                    .map_err(|error| backend("join the parts")(&error))?;
            }
            staging
                .0
                .sync_all()
                .await
                .map_err(|error| backend("join the parts")(&error))?;
            let etag = multipart_etag(parts.iter().map(|(_, etag)| etag.trim_matches('"')));
            let mut joined = tokio::fs::File::open(&staging.1)
                .await
                .map_err(|error| backend("read the joined parts")(&error))?;
            let info = self
                .store_object(at, &mut joined, etag, recorded.content_type)
                .await?;
            self.drop_upload(&at.namespace, upload).await?;
            Ok(info)
        })
    }

    fn abort_upload<'a>(&'a self, at: &'a ObjectPath, upload: &'a str) -> ObjectFuture<'a, ()> {
        Box::pin(async move {
            self.upload(upload, at).await?;
            self.drop_upload(&at.namespace, upload).await
        })
    }

    fn forget<'a>(&'a self, namespace: &'a str) -> ObjectFuture<'a, ()> {
        Box::pin(async move {
            for id in self.uploads_of(namespace, None).await? {
                self.drop_upload(namespace, &id).await?;
            }
            for info in self.infos(&format!("{namespace}/")).await? {
                self.remove(&info.name).await?;
            }
            for bucket in self.buckets(namespace).await? {
                self.index
                    .purge(bucket_key(namespace, &bucket.name))
                    .await
                    .map_err(|error| backend("remove the bucket")(&error))?;
            }
            Ok(())
        })
    }
}
