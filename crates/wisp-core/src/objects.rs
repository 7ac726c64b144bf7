//! Object buckets: what a namespace's buckets hold, the [`Objects`] trait
//! both backends implement (files and SQLite on one node, JetStream's
//! object store in a cluster), and the checks of names and keys.

use std::{future::Future, pin::Pin};

use crate::name::validate_name;

/// The longest key, in bytes, as in S3.
pub const MAX_OBJECT_KEY_BYTES: usize = 1024;
/// The smallest part of a multipart upload but the last, as in S3.
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// The most parts an upload has, as in S3.
pub const MAX_PARTS: u32 = 10_000;

/// What an object operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The bucket name is not a DNS label.
    #[error("bucket `{0}`: a bucket name is a DNS label (1 to 63 of a-z, 0-9 and -)")]
    BadBucket(String),
    /// The key is empty or too long.
    #[error("an object key is 1 to {MAX_OBJECT_KEY_BYTES} bytes of UTF-8")]
    BadKey,
    /// The bucket does not exist.
    #[error("no bucket `{0}`")]
    NoSuchBucket(String),
    /// The bucket still holds objects.
    #[error("bucket `{0}` is not empty: remove its objects first")]
    NotEmpty(String),
    /// No such multipart upload.
    #[error("no multipart upload `{0}`: it was completed, aborted, or never started")]
    NoSuchUpload(String),
    /// A completion names a part that was not uploaded, or with another ETag.
    #[error("part {0} was not uploaded with that ETag")]
    BadPart(u32),
    /// A completion's parts are not in ascending order.
    #[error("the parts of a completion are listed in ascending order, each once")]
    PartOrder,
    /// A part number outside 1 to [`MAX_PARTS`].
    #[error("a part number is 1 to {MAX_PARTS}")]
    BadPartNumber,
    /// A part but the last is smaller than [`MIN_PART_BYTES`].
    #[error("part {0} is smaller than the 5 MiB every part but the last holds")]
    PartTooSmall(u32),
    /// The namespace's objects would pass its quota.
    #[error(
        "namespace {namespace}'s objects would take {bytes} bytes, past its quota (max_object_bytes) of {max}"
    )]
    Quota {
        /// The namespace.
        namespace: String,
        /// What they would take.
        bytes: u64,
        /// The quota.
        max: u64,
    },
    /// The backend failed: the detail is for the node's log, not for tenants.
    #[error("object buckets: {0}")]
    Backend(String),
}

/// Checks a bucket name.
pub fn check_bucket(bucket: &str) -> Result<(), ObjectError> {
    validate_name(bucket).map_err(|_| ObjectError::BadBucket(bucket.to_owned()))
}

/// Checks an object key.
pub fn check_object_key(key: &str) -> Result<(), ObjectError> {
    if key.is_empty() || key.len() > MAX_OBJECT_KEY_BYTES {
        return Err(ObjectError::BadKey);
    }
    Ok(())
}

/// Checks a part number.
pub fn check_part_number(number: u32) -> Result<(), ObjectError> {
    if !(1..=MAX_PARTS).contains(&number) {
        return Err(ObjectError::BadPartNumber);
    }
    Ok(())
}

/// Checks the parts a completion names (number and ETag) against those
/// uploaded (number, size, ETag), both ascending.
pub fn check_completion(
    asked: &[(u32, String)],
    uploaded: &[(u32, u64, String)],
) -> Result<(), ObjectError> {
    if asked.is_empty() || asked.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
        return Err(ObjectError::PartOrder);
    }
    for (index, (number, etag)) in asked.iter().enumerate() {
        let (_, size, stored) = uploaded
            .iter()
            .find(|(uploaded, _, _)| uploaded == number)
            .ok_or(ObjectError::BadPart(*number))?;
        if stored != etag.trim_matches('"') {
            return Err(ObjectError::BadPart(*number));
        }
        if index + 1 < asked.len() && *size < MIN_PART_BYTES {
            return Err(ObjectError::PartTooSmall(*number));
        }
    }
    Ok(())
}

/// The ETag of an object joined from parts whose ETags (hex MD5s) are
/// `etags`: the MD5 of their MD5s, `-` and their count, as S3 makes it.
pub fn multipart_etag<'a>(etags: impl ExactSizeIterator<Item = &'a str>) -> String {
    use md5::Digest as _;
    let count = etags.len();
    let mut md5s = md5::Md5::new();
    for etag in etags {
        md5s.update(hex::decode(etag).unwrap_or_default());
    }
    format!("{}-{count}", hex::encode(md5s.finalize()))
}

/// An object as listed and described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, unquoted: the MD5 of its bytes in hex, or for a multipart
    /// upload the MD5 of its parts' MD5s followed by `-` and their count.
    pub etag: String,
    /// The `Content-Type` it was stored with.
    pub content_type: Option<String>,
    /// When it was written, in seconds since the Unix epoch.
    pub modified: i64,
}

/// One page of a listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The objects, in key order.
    pub objects: Vec<ObjectInfo>,
    /// With a delimiter: the distinct prefixes up to it, rolled up.
    pub prefixes: Vec<String>,
    /// Where the next page starts after (the page's last key, or past its
    /// last rolled-up prefix); absent on the last page.
    pub next: Option<String>,
}

/// What sorts after every key that starts with a rolled-up prefix.
pub const PAST_PREFIX: char = '\u{10FFFF}';

impl Listing {
    /// The page of `objects` (in key order, each starting with `prefix`,
    /// read only as far as the page needs) as S3 lists it: at most `max`
    /// entries; with a `delimiter`, the keys that hold it past the prefix
    /// are rolled up into one prefix each.
    pub fn page(
        objects: impl IntoIterator<Item = ObjectInfo>,
        prefix: &str,
        delimiter: Option<&str>,
        max: usize,
    ) -> Self {
        let mut listing = Self::default();
        let mut count = 0;
        for object in objects {
            let rolled = delimiter.and_then(|delimiter| {
                object.key[prefix.len()..]
                    .find(delimiter)
                    .map(|at| object.key[..prefix.len() + at + delimiter.len()].to_owned())
            });
            if let Some(common) = &rolled
                && listing.prefixes.last() == Some(common)
            {
                continue;
            }
            if count == max {
                listing.next = Some(match (listing.prefixes.last(), listing.objects.last()) {
                    (Some(common), Some(last)) if common.as_str() > last.key.as_str() => {
                        format!("{common}{PAST_PREFIX}")
                    }
                    (Some(common), None) => format!("{common}{PAST_PREFIX}"),
                    (_, Some(last)) => last.key.clone(),
                    (None, None) => String::new(),
                });
                break;
            }
            count += 1;
            match rolled {
                Some(common) => listing.prefixes.push(common),
                None => listing.objects.push(object),
            }
        }
        listing
    }
}

/// A bucket as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    /// Its name.
    pub name: String,
    /// When it was created, in seconds since the Unix epoch.
    pub created_at: i64,
}

/// Bytes received whole into a file of the node's, ready to be stored.
pub struct Staged {
    /// The file; removed when dropped unless it was stored.
    pub path: tempfile::TempPath,
    /// The MD5 of its bytes.
    pub md5: [u8; 16],
    /// Its size.
    pub size: u64,
}

/// An object's bytes, as a backend reads them.
pub type ObjectBody = Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// An object read: what it is, and its bytes from the offset asked.
pub struct ObjectRead {
    /// What it is.
    pub info: ObjectInfo,
    /// Its bytes, from the offset asked on.
    pub body: ObjectBody,
}

/// What a backend operation returns.
pub type ObjectFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ObjectError>> + Send + 'a>>;

/// Where an object is: a namespace, a bucket and a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPath {
    /// The namespace.
    pub namespace: String,
    /// The bucket, a DNS label.
    pub bucket: String,
    /// The key.
    pub key: String,
}

/// An object backend: every namespace's buckets.
pub trait Objects: Send + Sync {
    /// The buckets of `namespace`, by name.
    fn buckets<'a>(&'a self, namespace: &'a str) -> ObjectFuture<'a, Vec<BucketInfo>>;
    /// Creates a bucket; `false` when it exists.
    fn create_bucket<'a>(&'a self, namespace: &'a str, bucket: &'a str) -> ObjectFuture<'a, bool>;
    /// Whether a bucket exists.
    fn has_bucket<'a>(&'a self, namespace: &'a str, bucket: &'a str) -> ObjectFuture<'a, bool>;
    /// Removes an empty bucket and the uploads it has in progress.
    fn delete_bucket<'a>(&'a self, namespace: &'a str, bucket: &'a str) -> ObjectFuture<'a, ()>;
    /// Stores `staged` at `at` (creating its bucket), in place of what the
    /// key held, as long as the namespace's objects (and the parts of its
    /// uploads in progress) then take at most `max_bytes`.
    fn put<'a>(
        &'a self,
        at: &'a ObjectPath,
        staged: Staged,
        content_type: Option<String>,
        max_bytes: Option<u64>,
    ) -> ObjectFuture<'a, ObjectInfo>;
    /// The object at `at`, its bytes from `offset` on, if it exists.
    fn get<'a>(&'a self, at: &'a ObjectPath, offset: u64) -> ObjectFuture<'a, Option<ObjectRead>>;
    /// Removes an object; `false` when there was none.
    fn delete<'a>(&'a self, at: &'a ObjectPath) -> ObjectFuture<'a, bool>;
    /// Up to `max` (at least 1) objects of `bucket` whose keys start with
    /// `prefix`, after `after`, as [`Listing::page`] pages them.
    fn list<'a>(
        &'a self,
        namespace: &'a str,
        bucket: &'a str,
        prefix: &'a str,
        delimiter: Option<&'a str>,
        after: &'a str,
        max: usize,
    ) -> ObjectFuture<'a, Listing>;
    /// Starts a multipart upload to `at`; its id.
    fn create_upload<'a>(
        &'a self,
        at: &'a ObjectPath,
        content_type: Option<String>,
    ) -> ObjectFuture<'a, String>;
    /// Stores part `number` of upload `upload` to `at`, as long as the
    /// namespace's objects and parts then take at most `max_bytes`; its ETag.
    fn put_part<'a>(
        &'a self,
        at: &'a ObjectPath,
        upload: &'a str,
        number: u32,
        staged: Staged,
        max_bytes: Option<u64>,
    ) -> ObjectFuture<'a, String>;
    /// Joins an upload's `parts` (number and ETag, ascending) into the
    /// object, as [`Objects::put`] stores one.
    fn complete_upload<'a>(
        &'a self,
        at: &'a ObjectPath,
        upload: &'a str,
        parts: Vec<(u32, String)>,
        max_bytes: Option<u64>,
    ) -> ObjectFuture<'a, ObjectInfo>;
    /// Abandons an upload and its parts.
    fn abort_upload<'a>(&'a self, at: &'a ObjectPath, upload: &'a str) -> ObjectFuture<'a, ()>;
    /// Removes every bucket of `namespace`, as its removal does.
    fn forget<'a>(&'a self, namespace: &'a str) -> ObjectFuture<'a, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.to_owned(),
            size: 1,
            etag: String::new(),
            content_type: None,
            modified: 0,
        }
    }

    fn keys(listing: &Listing) -> Vec<&str> {
        listing.objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn pages_roll_up_prefixes_and_say_where_the_next_starts() {
        let all = ["a.txt", "cats/1", "cats/2", "dogs/1", "z.txt"].map(object);
        let page = Listing::page(all.clone(), "", Some("/"), 10);
        assert_eq!(keys(&page), ["a.txt", "z.txt"]);
        assert_eq!(page.prefixes, ["cats/", "dogs/"]);
        assert_eq!(page.next, None);
        let page = Listing::page(all.clone(), "", Some("/"), 2);
        assert_eq!(
            (keys(&page), page.prefixes.clone()),
            (vec!["a.txt"], vec!["cats/".to_owned()])
        );
        assert_eq!(page.next, Some(format!("cats/{PAST_PREFIX}")));
        let page = Listing::page(all.clone(), "", None, 3);
        assert_eq!(keys(&page), ["a.txt", "cats/1", "cats/2"]);
        assert_eq!(page.next.as_deref(), Some("cats/2"));
    }

    #[test]
    fn a_completion_names_uploaded_parts_in_order_each_but_the_last_5_mib() {
        let big = MIN_PART_BYTES;
        let uploaded = [(1, big, "a".to_owned()), (2, 10, "b".to_owned())];
        assert!(check_completion(&[(1, "\"a\"".into()), (2, "b".into())], &uploaded).is_ok());
        assert!(matches!(
            check_completion(&[(2, "b".into()), (1, "a".into())], &uploaded),
            Err(ObjectError::PartOrder)
        ));
        assert!(matches!(
            check_completion(&[(1, "x".into())], &uploaded),
            Err(ObjectError::BadPart(1))
        ));
        let small = [(1, 10, "a".to_owned()), (2, 10, "b".to_owned())];
        assert!(matches!(
            check_completion(&[(1, "a".into()), (2, "b".into())], &small),
            Err(ObjectError::PartTooSmall(1))
        ));
        // md5("a") and md5("b"), as S3 joins them.
        assert_eq!(
            multipart_etag(
                [
                    "0cc175b9c0f1b6a831c399e269772661",
                    "92eb5ffee6ae2fec3ad71c777531578f"
                ]
                .into_iter()
            ),
            "96e024ba2074fe77e8e965ba43a704be-2"
        );
    }
}
