//! MQTT triggers: each message on the topic filter becomes a call. The
//! subscription is QoS 1 in a persistent session, and a message is
//! acknowledged only once its call is committed to the queue, so a message
//! is not lost when the node stops between the two. A broker that is down is
//! retried with backoff, and the trigger shows as disconnected meanwhile.

use std::time::Duration;

use chrono::Utc;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};

use super::{
    record,
    triggers::{Event, FIRST_BACKOFF, Link, MAX_BACKOFF, Source},
};
use crate::config::{mqtt_address, redacted};

/// Runs one MQTT trigger until it is aborted or the node is gone. `index`
/// tells a function's triggers apart in their client ids.
pub(super) async fn run(source: Source, topic: String, url: String, index: usize) {
    let (host, port) = match mqtt_address(&url) {
        Ok(address) => address,
        Err(error) => {
            if let Some(node) = source.node.upgrade() {
                source.set_link(&node, Link::Disconnected(error));
            }
            return;
        }
    };
    let mut client_id =
        wisp_core::events::mqtt_client_id(&source.namespace, &source.function, index);
    // In a cluster every node subscribes: each with a client id of its own
    // (one id would have the broker drop one node for the other), sharing
    // the subscription, so a message is delivered to one of them.
    let mut topic = topic;
    if let Some(node) = source.node.upgrade()
        && node.cluster.is_some()
    {
        topic = format!("$share/{client_id}/{topic}");
        client_id = format!(
            "{client_id}{}{}",
            wisp_core::events::NAME_SEPARATOR,
            node.id
        );
    }
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(Duration::from_secs(10))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(32 << 20, 32 << 20);
    let (client, mut events) = AsyncClient::new(options, 64);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let event = events.poll().await;
        let Some(node) = source.node.upgrade() else {
            return;
        };
        match event {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff = FIRST_BACKOFF;
                match client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                    Ok(()) => source.set_link(&node, Link::Connected),
                    Err(error) => source.set_link(
                        &node,
                        Link::Disconnected(format!("cannot subscribe: {error}")),
                    ),
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                let event = Event {
                    id: None,
                    r#type: record::MQTT_MESSAGE,
                    subject: publish.topic.clone(),
                    time: Utc::now(),
                    payload: publish.payload.to_vec(),
                    content_type: None,
                    fired_at: None,
                };
                let client = client.clone();
                source
                    .queue_in_background(node, event, |queued| async move {
                        match queued {
                            Ok(_) => {
                                if let Err(error) = client.try_ack(&publish) {
                                    tracing::warn!("an MQTT acknowledgement was not sent: {error}");
                                }
                            }
                            // Not acknowledged: the broker delivers it again.
                            Err(error) => tracing::error!(
                                "a message on {} could not be queued: {error}",
                                publish.topic
                            ),
                        }
                    })
                    .await;
            }
            Ok(_) => {}
            Err(error) => {
                source.set_link(
                    &node,
                    Link::Disconnected(format!("MQTT broker at {}: {error}", redacted(&url))),
                );
                drop(node);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
