//! Bucket triggers: once an object is stored (by a PUT or a completed
//! multipart upload) or removed, a CloudEvent goes on the queue for each
//! function of the namespace whose `{ bucket = "...", events = [...],
//! prefix = "..." }` trigger matches. The event carries what the object is
//! (bucket, key, size, ETag, content type) as JSON, not its bytes: the
//! function reads those from the bucket. The event is queued before the
//! request is answered, so a client that got its 200 knows the event is
//! durable; a crash between the write and the queue loses the event, not
//! the object.

use std::sync::Arc;

use chrono::Utc;
use wisp_core::{
    Trigger,
    objects::{ObjectInfo, ObjectPath},
};

use super::triggers::{Event, Source};
use crate::node::Node;

/// The CloudEvents type of an object stored.
const CREATED: &str = "dev.wisp.object.created";
/// The CloudEvents type of an object removed.
const DELETED: &str = "dev.wisp.object.deleted";

/// Queues the events of a change of the object at `at`: `stored` is the
/// object written, or `None` when it was removed.
pub(crate) async fn changed(node: &Arc<Node>, at: &ObjectPath, stored: Option<&ObjectInfo>) {
    let ObjectPath {
        namespace,
        bucket,
        key,
    } = at;
    let created = stored.is_some();
    let sources: Vec<Source> = node
        .deployed()
        .iter()
        .map(|function| &function.spec)
        .filter(|spec| spec.namespace == *namespace)
        .flat_map(|spec| {
            spec.triggers
                .iter()
                .filter(|trigger| {
                    matches!(trigger, Trigger::Bucket(watch) if watch.matches(bucket, key, created))
                })
                .map(|trigger| Source::new(node, spec, trigger.label()))
        })
        .collect();
    if sources.is_empty() {
        return;
    }
    let mut data = serde_json::json!({ "bucket": bucket, "key": key });
    if let Some(info) = stored {
        data["size"] = info.size.into();
        data["etag"] = info.etag.clone().into();
        data["contentType"] = info.content_type.clone().into();
    }
    let payload = data.to_string().into_bytes();
    for source in sources {
        let event = Event {
            id: None,
            r#type: if created { CREATED } else { DELETED },
            subject: key.to_owned(),
            time: Utc::now(),
            payload: payload.clone(),
            content_type: Some("application/json".to_owned()),
            fired_at: None,
        };
        if let Err(error) = source.queue(node, event).await {
            tracing::warn!(
                "{}.{}: the event of object `{key}` in bucket {bucket} is lost: {error}",
                source.function,
                source.namespace,
            );
        }
    }
}
