//! NATS triggers. On core NATS each message on the subject (optionally in a
//! queue group) becomes a call, at most once, as core NATS delivers. With
//! `nats_stream`, a durable JetStream pull consumer delivers at least once:
//! a message becomes a call whose id is its stream sequence (so a redelivery
//! finds the same call), and it is acknowledged only once that call is over;
//! a call that ends in the dead-letter list terminates the message.
//!
//! A server that is down is retried with backoff, and the trigger shows as
//! disconnected meanwhile; once connected, the client reconnects on its own.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use chrono::Utc;
use futures_util::StreamExt as _;
use wisp_core::{
    CallState,
    events::{NatsTrigger, default_consumer},
};

use super::{
    record,
    triggers::{Event, Link, Source},
};
use crate::{config::redacted, node::Node};

/// How often a message whose call is still running is marked in progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Runs one NATS trigger until it is aborted or the node is gone.
pub(super) async fn run(source: Source, trigger: NatsTrigger, url: String) {
    source
        .reconnecting(|| session(&source, &trigger, &url))
        .await;
}

/// Connects and subscribes; returns only when the subscription fails.
async fn session(source: &Source, trigger: &NatsTrigger, url: &str) -> Result<(), String> {
    let links = source.clone();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let links = links.clone();
            async move {
                let Some(node) = links.node.upgrade() else {
                    return;
                };
                match event {
                    async_nats::Event::Connected => links.set_link(&node, Link::Connected),
                    async_nats::Event::Disconnected => links.set_link(
                        &node,
                        Link::Disconnected("the NATS server went away; reconnecting".into()),
                    ),
                    _ => {}
                }
            }
        })
        .connect(url)
        .await
        .map_err(|error| format!("cannot connect to NATS at {}: {error}", redacted(url)))?;
    match &trigger.jetstream {
        None => core(source, client, trigger).await,
        Some((stream, consumer)) => {
            let consumer = consumer
                .clone()
                .unwrap_or_else(|| default_consumer(&source.namespace, &source.function));
            consume(source, client, &trigger.subject, stream, &consumer).await
        }
    }
}

fn event(id: Option<String>, message: &async_nats::Message) -> Event {
    let content_type = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Content-Type"))
        .map(|value| value.to_string());
    Event {
        id,
        r#type: record::NATS_MESSAGE,
        subject: message.subject.to_string(),
        time: Utc::now(),
        payload: message.payload.to_vec(),
        content_type,
        fired_at: None,
    }
}

/// Core NATS: each message becomes a call.
async fn core(
    source: &Source,
    client: async_nats::Client,
    trigger: &NatsTrigger,
) -> Result<(), String> {
    let subject = trigger.subject.clone();
    // In a cluster every node subscribes: in one queue group, so a message
    // is delivered to one of them.
    let in_cluster = source
        .node
        .upgrade()
        .is_some_and(|node| node.cluster.is_some());
    let group = trigger.queue_group.clone().or_else(|| {
        in_cluster.then(|| wisp_core::events::default_consumer(&source.namespace, &source.function))
    });
    let mut subscriber = match group {
        Some(group) => client.queue_subscribe(subject, group).await,
        None => client.subscribe(subject).await,
    }
    .map_err(|error| format!("cannot subscribe: {error}"))?;
    if let Some(node) = source.node.upgrade() {
        source.set_link(&node, Link::Connected);
    }
    while let Some(message) = subscriber.next().await {
        let Some(node) = source.node.upgrade() else {
            return Ok(());
        };
        let label = format!("{}.{}", source.function, source.namespace);
        let subject = message.subject.clone();
        source
            .queue_in_background(node, event(None, &message), |queued| async move {
                if let Err(error) = queued {
                    tracing::error!("{label}: a message on {subject} was dropped: {error}");
                }
            })
            .await;
    }
    Err("the subscription ended".into())
}

/// JetStream: a durable pull consumer, each message acknowledged once its call is over.
async fn consume(
    source: &Source,
    client: async_nats::Client,
    subject: &str,
    stream: &str,
    consumer: &str,
) -> Result<(), String> {
    let context = jetstream::new(client);
    let stream_handle = context
        .get_stream(stream)
        .await
        .map_err(|error| format!("JetStream stream {stream}: {error}"))?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream_handle
        .get_or_create_consumer(
            consumer,
            pull::Config {
                durable_name: Some(consumer.to_owned()),
                filter_subject: subject.to_owned(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(|error| format!("JetStream consumer {consumer} on {stream}: {error}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| format!("JetStream consumer: {error}"))?;
    if let Some(node) = source.node.upgrade() {
        source.set_link(&node, Link::Connected);
    }
    while let Some(message) = messages.next().await {
        let message = message.map_err(|error| format!("JetStream: {error}"))?;
        let Some(node) = source.node.upgrade() else {
            return Ok(());
        };
        let id = match message.info() {
            Ok(info) => format!("nats-{}-{}", info.stream, info.stream_sequence),
            Err(error) => {
                tracing::warn!("a JetStream message without its metadata: {error}");
                continue;
            }
        };
        let event = event(Some(id.clone()), &message.message);
        let waiter = node.clone();
        source
            .queue_in_background(node, event, |queued| async move {
                match queued {
                    Ok((key, _)) => acknowledge(waiter, message, key).await,
                    Err(error) => {
                        tracing::error!(
                            "{id} could not be queued; JetStream will deliver it again: {error}"
                        );
                        let _ = message
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                    }
                }
            })
            .await;
    }
    Err("the JetStream consumer ended".into())
}

/// Acknowledges a message once its call (with key `key`) is over, keeping
/// it in progress meanwhile.
async fn acknowledge(node: Arc<Node>, message: jetstream::Message, key: String) {
    let outcome = node.queue.outcome(&node.store, &key);
    tokio::pin!(outcome);
    let state = loop {
        tokio::select! {
            state = &mut outcome => break state,
            () = tokio::time::sleep(PROGRESS_EVERY) => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    };
    let kind = match state {
        Some(CallState::Dead) => AckKind::Term,
        Some(_) => AckKind::Ack,
        // The node is stopping: JetStream delivers the message again later.
        None => return,
    };
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!("{key}: the acknowledgement was not sent: {error}");
    }
}
