//! Cron triggers: a task per trigger that sleeps until the next firing, then
//! puts a CloudEvent (`dev.wisp.cron.tick`, with the firing time as `time`)
//! on the queue, so a tick gets the queue's retries. Each firing is recorded
//! with its call in one transaction; at start-up a trigger that missed
//! firings while the node was down fires once, for the latest one. In a
//! cluster every node runs every cron trigger, and a firing goes ahead
//! only on the node that claims its tick in the cluster first.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use wisp_core::Schedule;

use super::{
    millis, record,
    triggers::{Event, Source},
};
use crate::node::Node;

/// Runs one cron trigger until it is aborted or the node is gone.
pub(super) async fn run(source: Source, schedule: Schedule) {
    let mut after = Utc::now();
    {
        let Some(node) = source.node.upgrade() else {
            return;
        };
        match node
            .store
            .fired_at(&source.namespace, &source.function, &source.label)
        {
            Ok(Some(last)) => {
                let missed = schedule.latest_at_or_before(after);
                if let Some(missed) = missed.filter(|missed| millis(*missed) > last) {
                    tracing::info!(
                        "{}.{}: {} missed its firing at {missed} while the node was down; firing once now",
                        source.function,
                        source.namespace,
                        source.label
                    );
                    fire(&source, &schedule, &node, missed).await;
                }
            }
            Ok(None) => {}
            Err(error) => tracing::error!(
                "{}.{}: could not read when {} last fired: {error}",
                source.function,
                source.namespace,
                source.label
            ),
        }
    }
    while let Some(next) = schedule.next_after(after) {
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        let Some(node) = source.node.upgrade() else {
            return;
        };
        fire(&source, &schedule, &node, next).await;
        after = next.max(Utc::now());
    }
}

async fn fire(source: &Source, schedule: &Schedule, node: &Arc<Node>, time: DateTime<Utc>) {
    // In a cluster, every node runs the trigger and the one that claims the tick fires it.
    if let Some(cluster) = &node.cluster {
        let trigger = format!(
            "{}\n{}\n{}",
            source.namespace, source.function, source.label
        );
        match cluster.claim_tick(&trigger, millis(time)).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::error!(
                    "{}.{}: {} did not fire at {time}: {error}",
                    source.function,
                    source.namespace,
                    source.label
                );
                return;
            }
        }
    }
    let event = Event {
        id: None,
        r#type: record::CRON_TICK,
        subject: schedule.to_string(),
        time,
        payload: Vec::new(),
        content_type: None,
        fired_at: Some(millis(time)),
    };
    if let Err(error) = source.queue(node, event).await {
        tracing::error!(
            "{}.{}: {} could not queue its event for {time}: {error}",
            source.function,
            source.namespace,
            source.label
        );
    }
}
