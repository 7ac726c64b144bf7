//! Key-value stores: each namespace has any number, named by DNS labels
//! (`default` as in Spin), holding byte values under string keys. A function
//! reaches the stores it declares; operators reach all of a namespace's.
//!
//! [`KeyValue`] is what a backend provides (SQLite on one node, JetStream in
//! a cluster); the bounds and checks here are the same for every backend,
//! so a value one node takes another takes too.

use std::{future::Future, pin::Pin};

use serde::{Deserialize, Serialize};

use crate::name::validate_name;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value, in bytes: under NATS's default message size, so a
/// cluster stores what one node does.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// Keys one page of a listing holds at most.
pub const PAGE_KEYS: usize = 1000;

/// Why a key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The store name is not a DNS label.
    #[error("key-value store `{0}`: not a DNS label")]
    BadStore(String),
    /// The function did not declare the store.
    #[error("key-value store `{0}` is not one of the function's: declare it in `key_value_stores`")]
    NotDeclared(String),
    /// The key is empty, too long, not UTF-8, or `.` or `..`.
    #[error("a key is 1 to {MAX_KEY_BYTES} bytes of UTF-8, and not `.` or `..`")]
    BadKey,
    /// The value is larger than [`MAX_VALUE_BYTES`].
    #[error("value of {0} bytes is larger than the {MAX_VALUE_BYTES} a key-value store holds")]
    TooLarge(usize),
    /// `increment` found a value that is not a decimal number.
    #[error("key `{0}` does not hold a decimal number to increment")]
    NotANumber(String),
    /// `increment` would pass `u64::MAX`.
    #[error("incrementing key `{0}` would overflow")]
    Overflow(String),
    /// The store holds more keys than a listing reads.
    #[error("the store holds more than {0} keys, more than a listing reads in a cluster")]
    TooManyToList(u64),
    /// The store's keys take more bytes than one listing of them all holds.
    #[error("the store's keys take more than {0} bytes: list them a page at a time")]
    KeysTooLarge(usize),
    /// The node's stores hold as many bytes as they may.
    #[error(
        "the key-value stores are full: they hold at most {0} bytes (`wisp up --kv-max-bytes`); \
         remove keys first"
    )]
    Full(u64),
    /// The backend failed: the detail is for the node's log, not for tenants.
    #[error("key-value store: {0}")]
    Backend(String),
}

/// A namespace's store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// The namespace it belongs to.
    pub namespace: String,
    /// Its name in the namespace.
    pub store: String,
}

impl Bucket {
    /// The store `store` of `namespace`, if its name is a DNS label.
    pub fn new(namespace: &str, store: &str) -> Result<Self, KvError> {
        validate_name(store).map_err(|_| KvError::BadStore(store.to_owned()))?;
        Ok(Self {
            namespace: namespace.to_owned(),
            store: store.to_owned(),
        })
    }
}

/// One page of a store's keys, in byte order: what `list-keys` and
/// `GET /system/kv/{store}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page {
    /// The keys.
    pub keys: Vec<String>,
    /// Where the next page starts (`?cursor=`); absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
}

/// What a backend operation returns.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// A key-value backend: every namespace's stores. Keys and values reach it
/// checked ([`check_key`], [`check_value`]).
pub trait KeyValue: Send + Sync {
    /// The value under `key`, if any.
    fn get<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;
    /// Sets `key` to `value`.
    fn set<'a>(&'a self, bucket: &'a Bucket, key: &'a str, value: Vec<u8>) -> KvFuture<'a, ()>;
    /// Removes `key`; nothing happens when it is absent.
    fn delete<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, ()>;
    /// The keys from position `cursor` on, at most [`PAGE_KEYS`] of them.
    fn list<'a>(&'a self, bucket: &'a Bucket, cursor: u64) -> KvFuture<'a, Page>;
    /// Every key, in byte order, in one pass; [`KvError::KeysTooLarge`] once
    /// their [`listed_bytes`] pass `max_bytes`.
    fn all_keys<'a>(&'a self, bucket: &'a Bucket, max_bytes: usize) -> KvFuture<'a, Vec<String>>;
    /// Adds `delta` to the decimal number under `key` (0 when absent), at
    /// once, and returns the sum.
    fn increment<'a>(&'a self, bucket: &'a Bucket, key: &'a str, delta: u64) -> KvFuture<'a, u64>;
    /// The stores of `namespace` that hold a key, by name.
    fn stores<'a>(&'a self, namespace: &'a str) -> KvFuture<'a, Vec<String>>;
    /// Removes every store of `namespace`, as its removal does.
    fn forget<'a>(&'a self, namespace: &'a str) -> KvFuture<'a, ()>;
}

/// Checks a key: 1 to [`MAX_KEY_BYTES`] bytes, and not `.` or `..`, which a
/// URL path cannot hold as they are.
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key == "." || key == ".." {
        return Err(KvError::BadKey);
    }
    Ok(())
}

/// Checks a value's size.
pub fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::TooLarge(value.len()));
    }
    Ok(())
}

/// What holding `key` in a listing costs the host: its bytes and its
/// `String`, so millions of one-byte keys count for what they take.
pub fn listed_bytes(key: &str) -> usize {
    key.len() + std::mem::size_of::<String>()
}

/// Collects `keys` until their [`listed_bytes`] pass `max_bytes`.
pub fn collect_keys(
    keys: impl IntoIterator<Item = Result<String, KvError>>,
    max_bytes: usize,
) -> Result<Vec<String>, KvError> {
    let mut bytes = 0;
    let mut collected = Vec::new();
    for key in keys {
        let key = key?;
        bytes += listed_bytes(&key);
        if bytes > max_bytes {
            return Err(KvError::KeysTooLarge(max_bytes));
        }
        collected.push(key);
    }
    Ok(collected)
}

/// A page of `keys` read from position `cursor`, up to one more than a
/// page: the extra one only says that another page follows.
pub fn paged(mut keys: Vec<String>, cursor: usize) -> Page {
    let more = keys.len() > PAGE_KEYS;
    keys.truncate(PAGE_KEYS);
    Page {
        cursor: more.then(|| (cursor + PAGE_KEYS) as u64),
        keys,
    }
}

/// `current` (the decimal number a key holds, or absent) plus `delta`.
pub fn incremented(key: &str, current: Option<&[u8]>, delta: u64) -> Result<u64, KvError> {
    let current = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| KvError::NotANumber(key.to_owned()))?,
    };
    current
        .checked_add(delta)
        .ok_or_else(|| KvError::Overflow(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_dns_labels_and_keys_and_values_are_bounded() {
        assert!(Bucket::new("team-a", "default").is_ok());
        for store in ["", "Default", "a/b", "../x"] {
            assert_eq!(
                Bucket::new("team-a", store),
                Err(KvError::BadStore(store.into()))
            );
        }
        assert!(check_key("users/42").is_ok());
        for key in ["", ".", ".."] {
            assert_eq!(check_key(key), Err(KvError::BadKey));
        }
        assert!(check_key("...").is_ok());
        assert_eq!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(KvError::BadKey)
        );
        assert!(check_value(&vec![0; MAX_VALUE_BYTES]).is_ok());
        assert_eq!(
            check_value(&vec![0; MAX_VALUE_BYTES + 1]),
            Err(KvError::TooLarge(MAX_VALUE_BYTES + 1))
        );
    }

    #[test]
    fn increments_add_to_decimal_numbers_only() {
        assert_eq!(incremented("n", None, 5), Ok(5));
        assert_eq!(incremented("n", Some(b"41"), 1), Ok(42));
        assert_eq!(
            incremented("n", Some(b"forty"), 1),
            Err(KvError::NotANumber("n".into()))
        );
        assert_eq!(
            incremented("n", Some(u64::MAX.to_string().as_bytes()), 1),
            Err(KvError::Overflow("n".into()))
        );
    }
}
