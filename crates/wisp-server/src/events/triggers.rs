//! Triggers: the tasks that turn a function's declared event sources (cron,
//! NATS, MQTT, AMQP, Redis streams, PostgreSQL) into CloudEvents on the queue, and what each is doing, for
//! `wisp describe`. Adding a source means a task here and a variant of
//! [`Trigger`]; the queue and the workers stay as they are. Key-value
//! triggers need no task: the node's writes fire them ([`super::kv`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use chrono::{DateTime, Utc};
use wisp_core::{FunctionSpec, Trigger, events::TriggerStatus};
use wisp_store::{CallOrigin, NewCall};

use super::{Queue, amqp, cron, millis, mqtt, nats, postgres, record, redis, rfc3339};
use crate::node::Node;

/// Events of one trigger being committed at once: enough to keep the queue's
/// writer batching, few enough to bound the memory of a flood.
const IN_FLIGHT: usize = 256;
/// The first wait before a broker trigger tries to connect again.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two attempts to connect to a broker.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A function's trigger: where its events come from and where they go.
#[derive(Clone)]
pub(super) struct Source {
    pub node: Weak<Node>,
    pub namespace: String,
    pub function: String,
    /// How the trigger is named in calls and `wisp describe`.
    pub label: String,
    /// Bounds this trigger's events being committed at once.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// One event from a trigger.
pub(super) struct Event {
    /// The call id; a fresh one when absent.
    pub id: Option<String>,
    /// The CloudEvents type.
    pub r#type: &'static str,
    /// The CloudEvents subject: the schedule, subject or topic.
    pub subject: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The payload.
    pub payload: Vec<u8>,
    /// The payload's content type.
    pub content_type: Option<String>,
    /// For a cron tick, the firing it stands for, recorded with the call.
    pub fired_at: Option<i64>,
}

impl Source {
    /// The source of `spec`'s trigger named `label`.
    pub fn new(node: &Arc<Node>, spec: &FunctionSpec, label: String) -> Self {
        Self {
            node: Arc::downgrade(node),
            namespace: spec.namespace.clone(),
            function: spec.name.clone(),
            label,
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
        }
    }

    /// Puts an event on the queue; the call's key (its id in the triggers'
    /// own space, which no caller can write to) and whether the call is new.
    pub async fn queue(&self, node: &Arc<Node>, event: Event) -> Result<(String, bool), String> {
        let id = event.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let record = record::CloudEvent::trigger(
            id.clone(),
            format!("/triggers/{}/{}", self.namespace, self.function),
            event.r#type,
            event.subject,
            event.time,
            event.payload,
            event.content_type,
        );
        let call = NewCall {
            id,
            origin: CallOrigin::Trigger,
            namespace: self.namespace.clone(),
            function: self.function.clone(),
            source: self.label.clone(),
            event: record.encode(),
            callback_url: None,
            created_at: millis(Utc::now()),
        };
        let fired = event.fired_at.map(|at| (self.label.clone(), at));
        let key = call.key();
        let new = Queue::enqueue(node, call, fired).await?;
        node.queue
            .counters
            .trigger_firings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((key, new))
    }

    /// Queues an event on a task of its own, so a broker's messages are
    /// committed concurrently (and batched by the writer) while the next ones
    /// arrive; `done` gets the outcome. Waits while [`IN_FLIGHT`] are committing.
    pub async fn queue_in_background<F, Done>(&self, node: Arc<Node>, event: Event, done: F)
    where
        F: FnOnce(Result<(String, bool), String>) -> Done + Send + 'static,
        Done: Future<Output = ()> + Send + 'static,
    {
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let source = self.clone();
        tokio::spawn(async move {
            let queued = source.queue(&node, event).await;
            drop(permit);
            done(queued).await;
        });
    }

    /// Records whether a broker trigger is connected, and why not.
    pub fn set_link(&self, node: &Node, link: Link) {
        let key = (
            self.namespace.clone(),
            self.function.clone(),
            self.label.clone(),
        );
        if let Link::Disconnected(error) = &link {
            tracing::warn!(
                "{}.{}: {} is disconnected: {error}",
                self.function,
                self.namespace,
                self.label
            );
        }
        node.queue.links.lock().expect("links").insert(key, link);
    }

    /// Runs a broker trigger's `session` (connect, subscribe, take
    /// events) again each time it fails, until it returns `Ok` or the node is
    /// gone. Each failure is shown as the trigger's link; the wait before the
    /// next attempt starts at [`FIRST_BACKOFF`] after a connection that had
    /// worked, and doubles up to [`MAX_BACKOFF`] while none does.
    pub async fn reconnecting<Session, Connected>(&self, mut session: Session)
    where
        Session: FnMut() -> Connected,
        Connected: Future<Output = Result<(), String>>,
    {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.node.upgrade().is_none() {
                return;
            }
            let error = match session().await {
                Ok(()) => return,
                Err(error) => error,
            };
            let Some(node) = self.node.upgrade() else {
                return;
            };
            let wait = if matches!(self.link(&node), Some(Link::Connected)) {
                FIRST_BACKOFF
            } else {
                backoff
            };
            backoff = (wait * 2).min(MAX_BACKOFF);
            self.set_link(&node, Link::Disconnected(error));
            drop(node);
            tokio::time::sleep(wait).await;
        }
    }

    /// What [`Source::set_link`] last recorded.
    pub fn link(&self, node: &Node) -> Option<Link> {
        let key = (
            self.namespace.clone(),
            self.function.clone(),
            self.label.clone(),
        );
        node.queue.links.lock().expect("links").get(&key).cloned()
    }
}

/// A broker trigger's connection.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    /// Connecting for the first time.
    Connecting,
    /// Subscribed and receiving.
    Connected,
    /// Not connected, and the last error; reconnecting with backoff.
    Disconnected(String),
    /// Not connected because another node of the cluster is.
    Standby,
}

/// The connections of broker triggers, by `(namespace, function, label)`.
pub(crate) type Links = Mutex<HashMap<(String, String, String), Link>>;

/// Starts the tasks of a function's triggers; aborting the handles stops them.
pub(crate) fn start(node: &Arc<Node>, spec: &FunctionSpec) -> Vec<tokio::task::AbortHandle> {
    spec.triggers
        .iter()
        .enumerate()
        .filter_map(|(index, trigger)| {
            let source = Source::new(node, spec, trigger.label());
            let task = match trigger {
                Trigger::Cron(schedule) => tokio::spawn(cron::run(source, schedule.clone())),
                Trigger::Nats(trigger) => {
                    source.set_link(node, Link::Connecting);
                    let url = node.config.nats_url.clone();
                    tokio::spawn(nats::run(source, trigger.clone(), url))
                }
                Trigger::Mqtt(topic) => {
                    source.set_link(node, Link::Connecting);
                    let url = node.config.mqtt_url.clone();
                    tokio::spawn(mqtt::run(source, topic.clone(), url, index))
                }
                Trigger::Amqp(queue) => {
                    source.set_link(node, Link::Connecting);
                    let url = node.config.amqp_url.clone();
                    tokio::spawn(amqp::run(source, queue.clone(), url))
                }
                Trigger::RedisStream(stream) => {
                    source.set_link(node, Link::Connecting);
                    let url = node.config.redis_url.clone();
                    tokio::spawn(redis::run(source, stream.clone(), url))
                }
                Trigger::Postgres(trigger) => {
                    source.set_link(node, Link::Connecting);
                    tokio::spawn(postgres::run(source, trigger.clone()))
                }
                Trigger::Kv(_) | Trigger::Bucket(_) => return None,
            };
            Some(task.abort_handle())
        })
        .collect()
}

/// What each of a function's triggers is doing, for its status.
pub(crate) fn status(node: &Node, spec: &FunctionSpec) -> Vec<TriggerStatus> {
    let now = Utc::now();
    let links = node.queue.links.lock().expect("links");
    spec.triggers
        .iter()
        .map(|trigger| {
            let label = trigger.label();
            match trigger {
                Trigger::Cron(schedule) => TriggerStatus {
                    state: "scheduled".into(),
                    error: None,
                    last_fired_at: node
                        .store
                        .fired_at(&spec.namespace, &spec.name, &label)
                        .ok()
                        .flatten()
                        .and_then(DateTime::from_timestamp_millis)
                        .map(rfc3339),
                    next_firing_at: schedule.next_after(now).map(rfc3339),
                    trigger: label,
                },
                Trigger::Nats(_)
                | Trigger::Mqtt(_)
                | Trigger::RedisStream(_)
                | Trigger::Amqp(_)
                | Trigger::Postgres(_) => {
                    let key = (spec.namespace.clone(), spec.name.clone(), label.clone());
                    let (state, error) = match links.get(&key) {
                        Some(Link::Connected) => ("connected", None),
                        Some(Link::Connecting) => ("connecting", None),
                        Some(Link::Standby) => ("standby", None),
                        Some(Link::Disconnected(error)) => ("disconnected", Some(error.clone())),
                        None => ("disconnected", Some("not started".to_owned())),
                    };
                    TriggerStatus {
                        trigger: label,
                        state: state.into(),
                        error,
                        last_fired_at: None,
                        next_firing_at: None,
                    }
                }
                Trigger::Kv(_) | Trigger::Bucket(_) => TriggerStatus {
                    trigger: label,
                    state: "watching".into(),
                    error: None,
                    last_fired_at: None,
                    next_firing_at: None,
                },
            }
        })
        .collect()
}
