//! Cron triggers: one task per trigger that sleeps until the next firing,
//! then puts a CloudEvent (`dev.wisp.cron.tick`, with the firing time as
//! `time`) on the queue, so a tick gets the queue's retries. Each firing is
//! recorded with its call in one transaction; at start-up a trigger that
//! missed firings while the node was down fires once, for the latest one.

use std::sync::{Arc, Weak};

use chrono::{DateTime, SecondsFormat, Utc};
use wisp_core::{FunctionSpec, Schedule, Trigger, events::TriggerStatus};
use wisp_store::{NewCall, Store};

use super::{Queue, millis, record};
use crate::node::Node;

/// Starts the tasks of a function's triggers; aborting the handles stops them.
pub(crate) fn start(node: &Arc<Node>, spec: &FunctionSpec) -> Vec<tokio::task::AbortHandle> {
    spec.triggers
        .iter()
        .map(|trigger| match trigger {
            Trigger::Cron(schedule) => {
                let task = Tick {
                    node: Arc::downgrade(node),
                    namespace: spec.namespace.clone(),
                    function: spec.name.clone(),
                    label: trigger.label(),
                    schedule: schedule.clone(),
                };
                tokio::spawn(task.run()).abort_handle()
            }
        })
        .collect()
}

/// What each of a function's triggers is doing, for its status.
pub(crate) fn status(store: &Store, spec: &FunctionSpec) -> Vec<TriggerStatus> {
    let now = Utc::now();
    let format = |time: DateTime<Utc>| time.to_rfc3339_opts(SecondsFormat::Millis, true);
    spec.triggers
        .iter()
        .map(|trigger| match trigger {
            Trigger::Cron(schedule) => TriggerStatus {
                trigger: trigger.label(),
                state: "scheduled".into(),
                last_fired_at: store
                    .fired_at(&spec.namespace, &spec.name, &trigger.label())
                    .ok()
                    .flatten()
                    .and_then(DateTime::from_timestamp_millis)
                    .map(format),
                next_firing_at: schedule.next_after(now).map(format),
            },
        })
        .collect()
}

/// One cron trigger of one function.
struct Tick {
    node: Weak<Node>,
    namespace: String,
    function: String,
    label: String,
    schedule: Schedule,
}

impl Tick {
    async fn run(self) {
        let mut after = Utc::now();
        {
            let Some(node) = self.node.upgrade() else {
                return;
            };
            let last = node
                .store
                .fired_at(&self.namespace, &self.function, &self.label);
            match last {
                Ok(Some(last)) => {
                    let missed = self.schedule.latest_at_or_before(after);
                    if let Some(missed) = missed.filter(|missed| millis(*missed) > last) {
                        tracing::info!(
                            "{}.{}: {} missed its firing at {missed} while the node was down; firing once now",
                            self.function,
                            self.namespace,
                            self.label
                        );
                        self.fire(&node, missed).await;
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::error!(
                    "{}.{}: could not read when {} last fired: {error}",
                    self.function,
                    self.namespace,
                    self.label
                ),
            }
        }
        while let Some(next) = self.schedule.next_after(after) {
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            let Some(node) = self.node.upgrade() else {
                return;
            };
            self.fire(&node, next).await;
            after = next.max(Utc::now());
        }
    }

    async fn fire(&self, node: &Arc<Node>, time: DateTime<Utc>) {
        let id = uuid::Uuid::new_v4().to_string();
        let event = record::CloudEvent::trigger(
            id.clone(),
            format!("/triggers/{}/{}", self.namespace, self.function),
            record::CRON_TICK,
            self.schedule.to_string(),
            time,
        );
        let call = NewCall {
            id,
            namespace: self.namespace.clone(),
            function: self.function.clone(),
            source: self.label.clone(),
            event: event.encode(),
            callback_url: None,
            created_at: millis(Utc::now()),
        };
        let fired = Some((self.label.clone(), millis(time)));
        match Queue::enqueue(node, call, fired).await {
            Ok(_) => {
                node.queue
                    .counters
                    .trigger_firings
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(error) => tracing::error!(
                "{}.{}: {} could not queue its event for {time}: {error}",
                self.function,
                self.namespace,
                self.label
            ),
        }
    }
}
