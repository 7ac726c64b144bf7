//! PostgreSQL triggers: the node `LISTEN`s on the channel, and each
//! notification (`NOTIFY channel, 'payload'` or `pg_notify`, typically from
//! a table's trigger function) becomes a call carrying it. PostgreSQL keeps
//! no notification for a listener that is not connected, so delivery is at
//! most once: what is sent while the connection is down (the node stopped,
//! the database restarting) is not seen. A lost connection is made again
//! with backoff, and the trigger shows as disconnected meanwhile.
//!
//! In a cluster one live node listens, so a notification is one call: the
//! one whose id ranks highest for the trigger, asked again every few
//! seconds; the others stand by.

use std::time::Duration;

use chrono::Utc;
use sha2::{Digest as _, Sha256};
use tokio_postgres::{AsyncMessage, NoTls};
use wisp_core::events::PostgresTrigger;

use super::{
    record,
    triggers::{Event, Link, Source},
};
use crate::node::Node;

/// How often a node asks whether it is still the one of its cluster to listen.
const STANDBY_CHECK: Duration = Duration::from_secs(2);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Notifications read ahead of the queue: the rest wait in the socket.
const READ_AHEAD: usize = 64;

/// Runs one PostgreSQL trigger until it is aborted or the node is gone.
pub(super) async fn run(source: Source, trigger: PostgresTrigger) {
    source
        .reconnecting(|| async {
            loop {
                let Some(node) = source.node.upgrade() else {
                    return Ok(());
                };
                if listens_here(&node, &source).await {
                    drop(node);
                    // `Ok` when handed to another node of the cluster.
                    session(&source, &trigger).await?;
                } else {
                    source.set_link(&node, Link::Standby);
                    drop(node);
                    tokio::time::sleep(STANDBY_CHECK).await;
                }
            }
        })
        .await;
}

/// Whether this node is the one to listen: always on a lone node; in a
/// cluster, the live member whose id ranks highest for this trigger
/// (rendezvous hashing over SHA-256, which every version of wisp computes
/// alike, so triggers spread over the nodes and only a lost node's move).
/// Should the members not be known, a node that listens keeps listening.
async fn listens_here(node: &Node, source: &Source) -> bool {
    let Some(cluster) = &node.cluster else {
        return true;
    };
    let rank = |id: &str| {
        let mut hasher = Sha256::new();
        for part in [&source.namespace, &source.function, &source.label, id] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.finalize()
    };
    match cluster.members().await {
        Ok(members) => members
            .iter()
            .max_by_key(|member| (rank(&member.id), member.id.clone()))
            .is_none_or(|chosen| chosen.id == node.id),
        Err(_) => matches!(source.link(node), Some(Link::Connected)),
    }
}

/// Connects, listens and queues each notification; returns `Ok` when
/// another node of the cluster is to listen instead, and an error when the
/// connection fails.
async fn session(source: &Source, trigger: &PostgresTrigger) -> Result<(), String> {
    let database = &trigger.database;
    let at = database.address();
    let mut config = tokio_postgres::Config::new();
    config
        .host(&database.host)
        .port(database.port)
        .dbname(&database.dbname)
        .user(database.user.as_deref().unwrap_or("postgres"))
        .application_name(format!("wisp {}.{}", source.function, source.namespace))
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives_idle(Duration::from_secs(30));
    if let Some(password) = &database.password {
        config.password(password);
    }
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .map_err(|error| format!("PostgreSQL at {at}: {error}"))?;
    // The connection is driven on a task of its own, which hands the
    // notifications over; it ends with the session.
    let (notifications, mut received) = tokio::sync::mpsc::channel(READ_AHEAD);
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    if notifications.send(Ok(notification)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    let _ = notifications.send(Err(error.to_string())).await;
                    return;
                }
                None => {
                    let _ = notifications
                        .send(Err("the server closed the connection".into()))
                        .await;
                    return;
                }
            }
        }
    });
    let _stop_driver = AbortOnDrop(driver.abort_handle());
    // The channel is a lowercase identifier: quoted or not, the same name.
    client
        .batch_execute(&format!("LISTEN \"{}\"", trigger.channel))
        .await
        .map_err(|error| format!("PostgreSQL at {at}: LISTEN {}: {error}", trigger.channel))?;
    if let Some(node) = source.node.upgrade() {
        source.set_link(&node, Link::Connected);
    }
    let mut check = tokio::time::interval(STANDBY_CHECK);
    check.tick().await;
    loop {
        let notification = tokio::select! {
            notification = received.recv() => notification,
            _ = check.tick() => {
                let Some(node) = source.node.upgrade() else {
                    return Ok(());
                };
                if !listens_here(&node, source).await {
                    return Ok(());
                }
                continue;
            }
        };
        let notification = match notification {
            Some(Ok(notification)) => notification,
            Some(Err(error)) => return Err(format!("PostgreSQL at {at}: {error}")),
            None => return Err(format!("PostgreSQL at {at}: the connection ended")),
        };
        let Some(node) = source.node.upgrade() else {
            return Ok(());
        };
        let payload = notification.payload().as_bytes().to_vec();
        let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok() {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        let event = Event {
            id: None,
            r#type: record::POSTGRES_NOTIFICATION,
            subject: notification.channel().to_owned(),
            time: Utc::now(),
            payload,
            content_type: Some(content_type.to_owned()),
            fired_at: None,
        };
        // Committed alongside the next ones, as broker messages are: the
        // calls run concurrently anyway, so their order is not kept.
        let label = format!("{}.{}", source.function, source.namespace);
        let channel = trigger.channel.clone();
        source
            .queue_in_background(node, event, |queued| async move {
                if let Err(error) = queued {
                    tracing::error!(
                        "{label}: a notification on {channel} could not be queued: {error}"
                    );
                }
            })
            .await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
