//! Key-value stores in a cluster: every namespace's stores in one JetStream
//! key-value bucket, so each node reads what any other wrote. A key is
//! `{namespace}.{store}.{key}`, the user's key escaped into the characters
//! NATS allows in one token (letters, digits, `-`, `_`, `/`; any other byte
//! as `=XX`), so a listing of one store is a subject filter.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{consumer, kv};
use futures_util::StreamExt as _;
use wisp_core::kv::{
    Bucket, KeyValue, KvError, KvFuture, PAGE_KEYS, Page, collect_keys, incremented, paged,
};

/// How long a listing may take before it is given up.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys a listing reads at most: each page reads the whole store.
const MAX_LISTED: u64 = 100_000;
/// Attempts of an increment that lost a race to another writer.
const INCREMENT_ATTEMPTS: u32 = 30;

/// The cluster's key-value stores.
pub struct ClusterKv {
    bucket: kv::Store,
    /// Bytes the bucket holds at most.
    max_bytes: u64,
    /// The node's increments in flight, by subject: one at a time per key,
    /// so they never race each other's compare-and-set, only other nodes'.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ClusterKv {
    pub(crate) fn new(bucket: kv::Store, max_bytes: u64) -> Self {
        Self {
            bucket,
            max_bytes,
            turns: Mutex::default(),
        }
    }

    /// Runs `work` once no other of the node's increments of `subject` runs.
    async fn in_turn<T>(&self, subject: &str, work: impl Future<Output = T>) -> T {
        let turn = self
            .turns
            .lock()
            .expect("turns")
            .entry(subject.to_owned())
            .or_default()
            .clone();
        let done = {
            let _held = turn.lock().await;
            work.await
        };
        let mut turns = self.turns.lock().expect("turns");
        // Held by the map and here alone: nobody waits for this key.
        if Arc::strong_count(&turn) == 2 {
            turns.remove(subject);
        }
        done
    }

    /// What a failed write means to the caller: a full bucket, or a failure.
    fn failed(&self, error: impl std::fmt::Display) -> KvError {
        let text = error.to_string();
        if text.contains("maximum bytes exceeded") || text.contains("insufficient resources") {
            KvError::Full(self.max_bytes)
        } else {
            KvError::Backend(text)
        }
    }

    /// A store's keys, in byte order.
    async fn sorted_keys(&self, bucket: &Bucket) -> Result<Vec<String>, KvError> {
        let mut keys: Vec<String> = self
            .keys(format!("{}.{}.>", bucket.namespace, bucket.store))
            .await?
            .into_iter()
            .map(|(_, key)| key)
            .collect();
        keys.sort_unstable();
        Ok(keys)
    }

    /// The `(store, key)` of every key under `filter` (a subject within the
    /// bucket, starting with a namespace), unescaped.
    async fn keys(&self, filter: String) -> Result<Vec<(String, String)>, KvError> {
        let consumer = self
            .bucket
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}{filter}", self.bucket.prefix),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        let mut keys = Vec::new();
        let pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return Ok(keys);
        }
        if pending > MAX_LISTED {
            return Err(KvError::TooManyToList(MAX_LISTED));
        }
        let name = consumer.cached_info().name.clone();
        let mut messages = consumer.messages().await.map_err(backend)?;
        let read = async {
            while let Some(message) = messages.next().await {
                let message = message.map_err(backend)?;
                let pending = message.info().map_err(backend)?.pending;
                let removed = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("KV-Operation"))
                    .is_some_and(|operation| operation.as_str() != "PUT");
                let parts = message
                    .subject
                    .as_str()
                    .strip_prefix(self.bucket.prefix.as_str())
                    .map(|key| key.splitn(3, '.').collect::<Vec<_>>());
                if let (false, Some([_, store, escaped])) = (removed, parts.as_deref())
                    && let Some(key) = unescape(escaped)
                {
                    keys.push(((*store).to_owned(), key));
                }
                if pending == 0 {
                    break;
                }
            }
            Ok::<_, KvError>(())
        };
        let read = tokio::time::timeout(LIST_TIMEOUT, read).await;
        drop(messages);
        // Gone at once rather than when the server finds it idle; should
        // this fail, the server still removes it then.
        let _ = self.bucket.stream.delete_consumer(&name).await;
        read.map_err(|_| KvError::Backend("listing the keys took too long".into()))??;
        Ok(keys)
    }
}

/// The bucket key of `key` in `bucket`.
fn subject(bucket: &Bucket, key: &str) -> String {
    format!("{}.{}.{}", bucket.namespace, bucket.store, escape(key))
}

/// Escapes a key into one NATS token.
fn escape(key: &str) -> String {
    let mut escaped = String::with_capacity(key.len());
    for byte in key.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'/' => {
                escaped.push(byte as char);
            }
            _ => escaped.push_str(&format!("={byte:02X}")),
        }
    }
    escaped
}

/// The key [`escape`] made `escaped` of; `None` for what it never makes.
fn unescape(escaped: &str) -> Option<String> {
    let key = unescape_any(escaped)?;
    (escape(&key) == escaped).then_some(key)
}

/// `escaped` with each `=XX` read as a byte.
fn unescape_any(escaped: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let [first, tail @ ..] = rest {
        if *first == b'=' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(*first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

fn backend(error: impl std::fmt::Display) -> KvError {
    KvError::Backend(error.to_string())
}

impl ClusterKv {
    /// Adds `delta` to `key` (at `subject`) by compare-and-set.
    async fn increment_now(&self, subject: &str, key: &str, delta: u64) -> Result<u64, KvError> {
        // Compare-and-set on the key's revision, again while another
        // writer gets in between, after a pause that grows and is
        // jittered so racing writers spread out.
        for attempt in 0..INCREMENT_ATTEMPTS {
            if attempt > 0 {
                let [jitter] = crate::random_bytes::<1>();
                let pause = u32::from(jitter) % (attempt.min(10) * 2 + 1);
                tokio::time::sleep(Duration::from_millis(pause.into())).await;
            }
            let entry = self.bucket.entry(subject).await.map_err(backend)?;
            let current = entry
                .as_ref()
                .filter(|entry| entry.operation == kv::Operation::Put);
            let sum = incremented(key, current.map(|entry| &entry.value[..]), delta)?;
            let value = sum.to_string().into_bytes().into();
            let written = match &entry {
                Some(entry) => self
                    .bucket
                    .update(subject, value, entry.revision)
                    .await
                    .map(drop)
                    .map_err(|error| {
                        (error.kind() != kv::UpdateErrorKind::WrongLastRevision)
                            .then(|| self.failed(error))
                    }),
                None => self
                    .bucket
                    .create(subject, value)
                    .await
                    .map(drop)
                    .map_err(|error| {
                        (error.kind() != kv::CreateErrorKind::AlreadyExists)
                            .then(|| self.failed(error))
                    }),
            };
            match written {
                Ok(()) => return Ok(sum),
                Err(Some(error)) => return Err(error),
                Err(None) => continue,
            }
        }
        Err(KvError::Backend(format!(
            "key `{key}` changed under {INCREMENT_ATTEMPTS} increments in a row"
        )))
    }
}

impl KeyValue for ClusterKv {
    fn get<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let value = self
                .bucket
                .get(subject(bucket, key))
                .await
                .map_err(backend)?;
            Ok(value.map(|value| value.to_vec()))
        })
    }

    fn set<'a>(&'a self, bucket: &'a Bucket, key: &'a str, value: Vec<u8>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            self.bucket
                .put(subject(bucket, key), value.into())
                .await
                .map_err(|error| self.failed(error))?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, ()> {
        Box::pin(async move {
            self.bucket
                .purge(subject(bucket, key))
                .await
                .map_err(backend)
        })
    }

    fn list<'a>(&'a self, bucket: &'a Bucket, cursor: u64) -> KvFuture<'a, Page> {
        Box::pin(async move {
            let mut keys = self.sorted_keys(bucket).await?;
            let start = usize::try_from(cursor)
                .unwrap_or(usize::MAX)
                .min(keys.len());
            let page: Vec<String> = keys.drain(start..).take(PAGE_KEYS + 1).collect();
            Ok(paged(page, start))
        })
    }

    fn all_keys<'a>(&'a self, bucket: &'a Bucket, max_bytes: usize) -> KvFuture<'a, Vec<String>> {
        Box::pin(async move {
            let keys = self.sorted_keys(bucket).await?;
            collect_keys(keys.into_iter().map(Ok), max_bytes)
        })
    }

    fn increment<'a>(&'a self, bucket: &'a Bucket, key: &'a str, delta: u64) -> KvFuture<'a, u64> {
        let subject = subject(bucket, key);
        Box::pin(async move {
            self.in_turn(&subject, self.increment_now(&subject, key, delta))
                .await
        })
    }

    fn forget<'a>(&'a self, namespace: &'a str) -> KvFuture<'a, ()> {
        Box::pin(async move {
            self.bucket
                .stream
                .purge()
                .filter(format!("{}{namespace}.>", self.bucket.prefix))
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn stores<'a>(&'a self, namespace: &'a str) -> KvFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut stores: Vec<String> = self
                .keys(format!("{namespace}.>"))
                .await?
                .into_iter()
                .map(|(store, _)| store)
                .collect();
            stores.sort_unstable();
            stores.dedup();
            Ok(stores)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_keys_are_one_token_and_come_back_whole() {
        for key in ["users/42", "a.b c", "é=%", "-_/"] {
            let escaped = escape(key);
            assert!(
                escaped
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-_/=".contains(&byte)),
                "{escaped}"
            );
            assert_eq!(unescape(&escaped).as_deref(), Some(key));
        }
        assert_eq!(escape("a.b"), "a=2Eb");
        // Only what escape makes comes back: one key, one subject.
        for made_elsewhere in ["=4", "a=2eb", "=+E", "a=41"] {
            assert_eq!(unescape(made_elsewhere), None, "{made_elsewhere}");
        }
    }
}
