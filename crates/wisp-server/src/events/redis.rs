//! Redis stream triggers: the function's consumer group
//! (`{namespace}_{function}`, made at the stream's end when absent) reads
//! the stream, each node a consumer of it named by its id, so in a cluster
//! each entry goes to one node. An entry becomes a call whose id is
//! `redis-{stream}-{entry id}` (a redelivery finds the same call), carrying
//! the entry's fields as a JSON object, and is acknowledged (`XACK`) only
//! once that call is over. Until then it stays pending: a node that
//! restarts reads its own pending entries first, and entries a lost node
//! left pending for [`CLAIM_IDLE`] are claimed by another. A server that is
//! down is retried with backoff, and the trigger shows as disconnected
//! meanwhile.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use redis::{
    AsyncConnectionConfig, RedisResult, Value,
    aio::MultiplexedConnection,
    streams::{StreamAutoClaimReply, StreamId, StreamReadReply},
};
use wisp_core::events::default_consumer;

use super::{
    record,
    triggers::{Event, FIRST_BACKOFF, Link, MAX_BACKOFF, Source, redacted},
};
use crate::node::Node;

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

/// Runs one Redis stream trigger until it is aborted or the node is gone.
pub(super) async fn run(source: Source, stream: String, url: String) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if source.node.upgrade().is_none() {
            return;
        }
        let error = match session(&source, &stream, &url).await {
            Ok(()) => return,
            Err(error) => error,
        };
        let Some(node) = source.node.upgrade() else {
            return;
        };
        source.set_link(&node, Link::Disconnected(error));
        drop(node);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's worth of reading: returns `Ok` when the node is gone,
/// and an error when Redis fails.
async fn session(source: &Source, stream: &str, url: &str) -> Result<(), String> {
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
    };
    // This consumer's own pending entries first (left by a restart), a
    // batch at a time, then new ones (`>`).
    let mut from = "0".to_owned();
    let mut claimed_at = tokio::time::Instant::now();
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
                .arg("0-0")
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut reader)
                .await
                .map_err(failed("claim idle entries"))?;
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
}

impl Reading<'_> {
    /// Queues an entry's call; the entry is acknowledged once the call is
    /// over. Returns whether the node is still there.
    async fn take(&self, entry: StreamId) -> bool {
        let Some(node) = self.source.node.upgrade() else {
            return false;
        };
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
        let pending = Pending {
            writer: self.writer.clone(),
            stream: self.stream.to_owned(),
            group: self.group.to_owned(),
            consumer: self.consumer.to_owned(),
            entry: entry.id,
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

/// An entry whose call is queued.
struct Pending {
    writer: MultiplexedConnection,
    stream: String,
    group: String,
    consumer: String,
    entry: String,
}

impl Pending {
    /// Acknowledges the entry once its call (with key `key`) is over,
    /// keeping it this consumer's meanwhile, so no other claims it.
    async fn acknowledge_when_over(mut self, node: Arc<Node>, key: String) {
        let outcome = node.queue.outcome(&node.store, &key);
        tokio::pin!(outcome);
        let state = loop {
            tokio::select! {
                state = &mut outcome => break state,
                () = tokio::time::sleep(CLAIM_EVERY) => {
                    // Claiming it again resets how long it has been idle.
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
        };
        // The node is stopping: the entry stays pending, read again at start.
        if state.is_none() {
            return;
        }
        let acknowledged: RedisResult<u64> = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.entry)
            .query_async(&mut self.writer)
            .await;
        if let Err(error) = acknowledged {
            tracing::warn!("{key}: the acknowledgement was not sent: {error}");
        }
    }
}
