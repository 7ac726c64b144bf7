//! AMQP queue triggers (RabbitMQ): the node consumes the queue (made
//! durable when absent), each node of a cluster a consumer of it, so the
//! broker hands each message to one node. A message becomes a call, and is
//! acknowledged only once that call is over: rejected without requeueing
//! when the call ends dead (so the queue's dead-letter exchange, if any,
//! gets it), and returned to the queue when it could not be queued or its
//! call is gone before it ended (another node took it over). A message
//! larger than the node's body limit is rejected without a call. A node
//! that goes away leaves its unacknowledged messages to the broker, which
//! delivers them again: delivery is at least once, and a message that
//! carries a `message-id` keeps its call id (`amqp-{queue}-{message id}`)
//! when it comes back to the same node. A broker that is down is retried
//! with backoff, and the trigger shows as disconnected meanwhile.

use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt as _;
use lapin::{
    Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        BasicRejectOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use wisp_core::{CallState, events::NAME_SEPARATOR};

use super::{
    record,
    triggers::{Event, Link, Source},
};
use crate::config::redacted;

/// Messages delivered and not yet acknowledged, per node and trigger.
const PREFETCH: u16 = 64;
/// How long a message that could not be queued waits before it goes back
/// to the queue, so a full queue is not a busy loop.
const REQUEUE_AFTER: Duration = Duration::from_secs(1);

/// Runs one AMQP trigger until it is aborted or the node is gone.
pub(super) async fn run(source: Source, queue: String, url: String) {
    source.reconnecting(|| session(&source, &queue, &url)).await;
}

/// Connects and consumes; returns `Ok` when the node is gone, and an error
/// when the broker fails.
async fn session(source: &Source, queue: &str, url: &str) -> Result<(), String> {
    let at = redacted(url);
    let failed = |what: &'static str| {
        let at = at.clone();
        move |error: lapin::Error| format!("AMQP broker at {at}: {what}: {error}")
    };
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(failed("connect"))?;
    let mut channel = connection
        .create_channel()
        .await
        .map_err(failed("open a channel"))?;
    // The queue as it is when there (whatever its arguments); else a durable one.
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_err()
    {
        // A failed passive declaration closes its channel.
        channel = connection
            .create_channel()
            .await
            .map_err(failed("open a channel"))?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.into(), durable, FieldTable::default())
            .await
            .map_err(failed("declare the queue"))?;
    }
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(failed("set the prefetch"))?;
    let Some(node) = source.node.upgrade() else {
        return Ok(());
    };
    let tag = format!(
        "wisp{NAME_SEPARATOR}{}{NAME_SEPARATOR}{}{NAME_SEPARATOR}{}",
        source.namespace, source.function, node.id
    );
    drop(node);
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(failed("consume"))?;
    if let Some(node) = source.node.upgrade() {
        source.set_link(&node, Link::Connected);
    }
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(failed("receive"))?;
        let Some(node) = source.node.upgrade() else {
            return Ok(());
        };
        if delivery.data.len() as u64 > node.config.max_body_size {
            tracing::error!(
                "{}.{}: a message of {queue} is {} bytes, over the node's body limit; rejected",
                source.function,
                source.namespace,
                delivery.data.len()
            );
            if let Err(error) = delivery.acker.reject(BasicRejectOptions::default()).await {
                tracing::warn!("a message of {queue} was not settled: {error}");
            }
            continue;
        }
        let properties = &delivery.properties;
        let event = Event {
            id: properties
                .message_id()
                .as_ref()
                .map(|id| format!("amqp-{queue}-{id}")),
            r#type: record::AMQP_MESSAGE,
            subject: queue.to_owned(),
            time: Utc::now(),
            content_type: properties.content_type().as_ref().map(ToString::to_string),
            payload: delivery.data,
            fired_at: None,
        };
        let acker = delivery.acker;
        let waiter = node.clone();
        let queue = queue.to_owned();
        source
            .queue_in_background(node, event, |queued| async move {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let settled = match queued {
                    Ok((key, _)) => match waiter.queue.outcome(&waiter.store, &key).await {
                        Some(CallState::Dead) => acker.reject(BasicRejectOptions::default()).await,
                        Some(_) => acker.ack(BasicAckOptions::default()).await,
                        // The node is stopping (then the broker has it back
                        // anyway), or the call is gone: it goes back.
                        None => acker.nack(requeue).await,
                    },
                    Err(error) => {
                        tracing::error!(
                            "a message of {queue} could not be queued; it goes back: {error}"
                        );
                        tokio::time::sleep(REQUEUE_AFTER).await;
                        acker.nack(requeue).await
                    }
                };
                if let Err(error) = settled {
                    tracing::warn!("a message of {queue} was not settled: {error}");
                }
            })
            .await;
    }
    Err(format!("AMQP broker at {at}: the consumer ended"))
}
