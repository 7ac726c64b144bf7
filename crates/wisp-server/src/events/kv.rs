//! Key-value triggers: [`Watched`] stands between the node and its
//! key-value backend and, once a set, an increment or a delete succeeds,
//! puts a CloudEvent on the queue for each function of the namespace whose
//! `{ kv = "store", prefix = "..." }` trigger matches the key. The node that
//! makes the change queues its events, so in a cluster each change fires
//! once. A change whose event cannot be queued (the namespace's queue quota)
//! is kept, and the event is logged as lost.

use std::sync::{Arc, Weak};

use chrono::Utc;
use wisp_core::{
    Trigger,
    kv::{Bucket, KeyValue, KvFuture, Page},
};

use super::triggers::{Event, Source};
use crate::node::Node;

/// The CloudEvents type of a key set (or incremented).
const SET: &str = "dev.wisp.kv.set";
/// The CloudEvents type of a key removed.
const DELETE: &str = "dev.wisp.kv.delete";

/// A key-value backend whose changes fire the namespace's triggers.
pub(crate) struct Watched {
    backend: Arc<dyn KeyValue>,
    node: Weak<Node>,
}

impl Watched {
    pub(crate) fn new(backend: Arc<dyn KeyValue>, node: Weak<Node>) -> Self {
        Self { backend, node }
    }

    /// The functions a change of `key` in `bucket` fires, with their
    /// triggers' sources: looked up before the write, so a write that fires
    /// nothing keeps no copy of its value.
    fn watchers(&self, bucket: &Bucket, key: &str) -> Vec<Source> {
        let Some(node) = self.node.upgrade() else {
            return Vec::new();
        };
        node.deployed()
            .iter()
            .map(|function| &function.spec)
            .filter(|spec| spec.namespace == bucket.namespace)
            .flat_map(|spec| {
                spec.triggers
                    .iter()
                    .filter(|trigger| matches!(trigger, Trigger::Kv(kv) if kv.matches(&bucket.store, key)))
                    .map(|trigger| Source::new(&node, spec, trigger.label()))
            })
            .collect()
    }

    /// Queues the event of a change of `key` to each of `watchers`.
    async fn changed(
        &self,
        watchers: Vec<Source>,
        bucket: &Bucket,
        key: &str,
        r#type: &'static str,
        value: &[u8],
    ) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        for source in watchers {
            let event = Event {
                id: None,
                r#type,
                subject: key.to_owned(),
                time: Utc::now(),
                payload: value.to_vec(),
                content_type: (!value.is_empty()).then(|| "application/octet-stream".to_owned()),
                fired_at: None,
            };
            if let Err(error) = source.queue(&node, event).await {
                tracing::warn!(
                    "{}.{}: the event of key `{key}` in store {} is lost: {error}",
                    source.function,
                    source.namespace,
                    bucket.store
                );
            }
        }
    }
}

impl KeyValue for Watched {
    fn get<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        self.backend.get(bucket, key)
    }

    fn set<'a>(&'a self, bucket: &'a Bucket, key: &'a str, value: Vec<u8>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let watchers = self.watchers(bucket, key);
            if watchers.is_empty() {
                return self.backend.set(bucket, key, value).await;
            }
            self.backend.set(bucket, key, value.clone()).await?;
            self.changed(watchers, bucket, key, SET, &value).await;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let watchers = self.watchers(bucket, key);
            self.backend.delete(bucket, key).await?;
            self.changed(watchers, bucket, key, DELETE, &[]).await;
            Ok(())
        })
    }

    fn list<'a>(&'a self, bucket: &'a Bucket, cursor: u64) -> KvFuture<'a, Page> {
        self.backend.list(bucket, cursor)
    }

    fn all_keys<'a>(&'a self, bucket: &'a Bucket, max_bytes: usize) -> KvFuture<'a, Vec<String>> {
        self.backend.all_keys(bucket, max_bytes)
    }

    fn increment<'a>(&'a self, bucket: &'a Bucket, key: &'a str, delta: u64) -> KvFuture<'a, u64> {
        Box::pin(async move {
            let watchers = self.watchers(bucket, key);
            let sum = self.backend.increment(bucket, key, delta).await?;
            self.changed(watchers, bucket, key, SET, sum.to_string().as_bytes())
                .await;
            Ok(sum)
        })
    }

    fn stores<'a>(&'a self, namespace: &'a str) -> KvFuture<'a, Vec<String>> {
        self.backend.stores(namespace)
    }

    fn forget<'a>(&'a self, namespace: &'a str) -> KvFuture<'a, ()> {
        self.backend.forget(namespace)
    }
}
