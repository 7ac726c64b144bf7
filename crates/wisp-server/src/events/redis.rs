//! Redis stream triggers: the function's consumer group
//! (`{namespace}_{function}`, made at the stream's end when absent) reads
//! the stream, each node a consumer of it named by its id, so in a cluster
//! each entry goes to one node. An entry becomes a call whose id is
//! `redis-{stream}-{entry id}` (a redelivery finds the same call), carrying
//! the entry's fields as a JSON object, and is acknowledged (`XACK`) only
//! once that call is over. Until then it stays pending: a node that
//! restarts reads its own pending entries first, and entries a lost node
//! left pending for [`CLAIM_IDLE`] are claimed by another. At most
//! [`WINDOW`] entries of a trigger wait for their calls at once: the stream
//! is read no faster than its calls end. An entry larger than the node's
//! body limit, or trimmed from the stream while pending, is acknowledged
//! without a call (and logged). A server that is down is retried with
//! backoff, and the trigger shows as disconnected meanwhile.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use redis::{
    AsyncConnectionConfig, RedisResult, Value,
    aio::MultiplexedConnection,
    streams::{StreamAutoClaimReply, StreamId, StreamReadReply},
};
use wisp_core::events::default_consumer;

use super::{
    record,
    triggers::{Event, Link, Source},
};
use crate::{config::redacted, node::Node};

/// Entries read at once.
const BATCH: usize = 64;
/// How long a read waits for entries, so the node also claims in between.
const BLOCK: Duration = Duration::from_secs(2);
/// How long an entry stays pending, unclaimed, before another consumer
/// takes it: running calls keep theirs fresh well within it.
const CLAIM_IDLE: Duration = Duration::from_secs(60);
/// How often a node looks for entries to claim, and marks its own running
/// ones as still being worked on.
const CLAIM_EVERY: Duration = Duration::from_secs(10);
/// Entries of one trigger whose calls are queued or running at once.
const WINDOW: usize = 256;

/// The entries of one trigger this node has taken and not yet acknowledged.
struct Taken {
    /// One per entry; reading waits for one.
    permits: Arc<tokio::sync::Semaphore>,
    /// Their ids, so an entry read again (after a reconnection, or claimed
    /// back) is not taken twice.
    ids: Mutex<HashSet<String>>,
}

/// Runs one Redis stream trigger until it is aborted or the node is gone.
pub(super) async fn run(source: Source, stream: String, url: String) {
    let taken = Arc::new(Taken {
        permits: Arc::new(tokio::sync::Semaphore::new(WINDOW)),
        ids: Mutex::default(),
    });
    source
        .reconnecting(|| session(&source, &stream, &url, &taken))
        .await;
}

/// One connection's worth of reading: returns `Ok` when the node is gone,
/// and an error when Redis fails.
async fn session(
    source: &Source,
    stream: &str,
    url: &str,
    taken: &Arc<Taken>,
) -> Result<(), String> {
    let at = redacted(url);
    let failed = |what: &str| {
        let (what, at) = (what.to_owned(), at.clone());
        move |error: redis::RedisError| format!("Redis at {at}: {what}: {error}")
    };
    let client = redis::Client::open(url).map_err(failed("the URL"))?;
    // Reads block for a while: no response timeout, which would cut them off.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(None);
    let mut reader = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(failed("connect"))?;
    // A second connection for acknowledgements, which a blocked read would hold up.
    let writer = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(failed("connect"))?;
    let group = default_consumer(&source.namespace, &source.function);
    let consumer = match source.node.upgrade() {
        Some(node) => node.id.clone(),
        None => return Ok(()),
    };
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(&group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut reader)
        .await;
    if let Err(error) = created
        && error.code() != Some("BUSYGROUP")
    {
        return Err(failed("create the consumer group")(error));
    }
    if let Some(node) = source.node.upgrade() {
        source.set_link(&node, Link::Connected);
    }
    let reading = Reading {
        source,
        stream,
        group: &group,
        consumer: &consumer,
        writer,
        taken,
    };
    // This consumer's own pending entries first (left by a restart), a
    // batch at a time, then new ones (`>`).
    let mut from = "0".to_owned();
    let mut claimed_at = tokio::time::Instant::now();
    // Where the last claim stopped: each claim goes on from there, so every
    // pending entry is looked at in turn.
    let mut claim_from = "0-0".to_owned();
    loop {
        // Not raced against the read: a read cut off would leave the entries
        // it was handed pending, unseen, until claimed.
        if claimed_at.elapsed() >= CLAIM_EVERY {
            claimed_at = tokio::time::Instant::now();
            let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(&group)
                .arg(&consumer)
                .arg(CLAIM_IDLE.as_millis() as u64)
                .arg(&claim_from)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut reader)
                .await
                .map_err(failed("claim idle entries"))?;
            claim_from = claimed.next_stream_id;
            for entry in claimed.claimed {
                if !reading.take(entry).await {
                    return Ok(());
                }
            }
        }
        let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg(&consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(stream)
            .arg(&from)
            .query_async(&mut reader)
            .await
            .map_err(failed("read"))?;
        let entries: Vec<StreamId> = read
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default();
        if from != ">" {
            from = match entries.last() {
                Some(last) if entries.len() == BATCH => last.id.clone(),
                _ => ">".to_owned(),
            };
        }
        for entry in entries {
            if !reading.take(entry).await {
                return Ok(());
            }
        }
    }
}

/// What taking an entry needs.
struct Reading<'a> {
    source: &'a Source,
    stream: &'a str,
    group: &'a str,
    consumer: &'a str,
    writer: MultiplexedConnection,
    taken: &'a Arc<Taken>,
}

impl Reading<'_> {
    /// Queues an entry's call; the entry is acknowledged once the call is
    /// over. Waits while [`WINDOW`] entries are. Returns whether the node is
    /// still there.
    async fn take(&self, entry: StreamId) -> bool {
        if !self
            .taken
            .ids
            .lock()
            .expect("taken")
            .insert(entry.id.clone())
        {
            return true;
        }
        let permit = self
            .taken
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let Some(node) = self.source.node.upgrade() else {
            return false;
        };
        let mut pending = Pending {
            writer: self.writer.clone(),
            stream: self.stream.to_owned(),
            group: self.group.to_owned(),
            consumer: self.consumer.to_owned(),
            entry: entry.id.clone(),
            taken: self.taken.clone(),
            _permit: permit,
        };
        let size: usize = entry
            .map
            .iter()
            .map(|(field, value)| field.len() + value_bytes(value))
            .sum();
        // Entries have at least one field: none means it was trimmed while pending.
        if entry.map.is_empty() || size as u64 > node.config.max_body_size {
            tracing::error!(
                "{}.{}: entry {} of {} is {}; acknowledged without a call",
                self.source.function,
                self.source.namespace,
                entry.id,
                self.stream,
                if entry.map.is_empty() {
                    "gone from the stream".to_owned()
                } else {
                    format!("{size} bytes, over the node's body limit")
                }
            );
            pending.acknowledge().await;
            return true;
        }
        let mut fields = serde_json::Map::new();
        for (field, value) in entry.map {
            let text = match value {
                Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Value::SimpleString(text) => text,
                other => format!("{other:?}"),
            };
            fields.insert(field, serde_json::Value::String(text));
        }
        let call = format!("redis-{}-{}", self.stream, entry.id);
        let event = Event {
            id: Some(call.clone()),
            r#type: record::REDIS_STREAM_ENTRY,
            subject: self.stream.to_owned(),
            time: Utc::now(),
            payload: serde_json::Value::Object(fields).to_string().into_bytes(),
            content_type: Some("application/json".into()),
            fired_at: None,
        };
        let waiter = node.clone();
        self.source
            .queue_in_background(node, event, |queued| async move {
                match queued {
                    Ok((key, _)) => pending.acknowledge_when_over(waiter, key).await,
                    // Not acknowledged: it stays pending, and is read again.
                    Err(error) => {
                        tracing::error!("{call} could not be queued; it stays pending: {error}")
                    }
                }
            })
            .await;
        true
    }
}

/// The bytes of a field's value.
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::BulkString(bytes) => bytes.len(),
        Value::SimpleString(text) => text.len(),
        _ => 0,
    }
}

/// An entry taken by this node.
struct Pending {
    writer: MultiplexedConnection,
    stream: String,
    group: String,
    consumer: String,
    entry: String,
    taken: Arc<Taken>,
    /// Held until the entry is let go of.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.taken.ids.lock().expect("taken").remove(&self.entry);
    }
}

impl Pending {
    /// Acknowledges the entry once its call (with key `key`) is over,
    /// keeping it fresh meanwhile, so no other node claims it.
    async fn acknowledge_when_over(mut self, node: Arc<Node>, key: String) {
        let outcome = node.queue.outcome(&node.store, &key);
        tokio::pin!(outcome);
        let state = loop {
            tokio::select! {
                state = &mut outcome => break state,
                () = tokio::time::sleep(CLAIM_EVERY) => self.keep_fresh().await,
            }
        };
        // The node is stopping, or the call is gone (its namespace removed,
        // another node took it over): the entry stays pending, to be claimed.
        if state.is_some() {
            self.acknowledge().await;
        }
    }

    /// Claims the entry again, which resets how long it has been idle; only
    /// while it is still this consumer's, so as not to take back one another
    /// node claimed.
    async fn keep_fresh(&mut self) {
        let owned: RedisResult<Vec<Value>> = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.entry)
            .arg(&self.entry)
            .arg(1)
            .arg(&self.consumer)
            .query_async(&mut self.writer)
            .await;
        if owned.is_ok_and(|entries| !entries.is_empty()) {
            let _: RedisResult<Value> = redis::cmd("XCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&self.entry)
                .arg("JUSTID")
                .query_async(&mut self.writer)
                .await;
        }
    }

    /// Acknowledges the entry: the group is done with it.
    async fn acknowledge(&mut self) {
        let acknowledged: RedisResult<u64> = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.entry)
            .query_async(&mut self.writer)
            .await;
        if let Err(error) = acknowledged {
            tracing::warn!(
                "entry {} of {}: the acknowledgement was not sent: {error}",
                self.entry,
                self.stream
            );
        }
    }
}
