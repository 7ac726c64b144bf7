//! Queue records: each call is stored as a CloudEvent 1.0 in the protobuf
//! format (`io.cloudevents.v1.CloudEvent`), so any tool with the spec's
//! schema can read the queue. An async HTTP call is an event of type
//! [`HTTP_REQUEST`] whose data is the body and whose `wisp*` extension
//! attributes hold the method, path, query and headers; a triggered event is
//! handed to its function in HTTP binary content mode (`ce-*` headers).

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use prost::Message as _;

/// The type of an event that is an HTTP request accepted by `/async-function/`.
pub const HTTP_REQUEST: &str = "dev.wisp.http.request";
/// The type of a cron trigger's tick.
pub const CRON_TICK: &str = "dev.wisp.cron.tick";
/// The type of a message from a NATS subject.
pub const NATS_MESSAGE: &str = "dev.wisp.nats.message";
/// The type of a message from an MQTT topic.
pub const MQTT_MESSAGE: &str = "dev.wisp.mqtt.message";
/// The type of a message from an AMQP queue.
pub const AMQP_MESSAGE: &str = "dev.wisp.amqp.message";
/// The type of an entry of a Redis stream.
pub const REDIS_STREAM_ENTRY: &str = "dev.wisp.redis.stream.entry";
/// The type of a notification on a PostgreSQL channel.
pub const POSTGRES_NOTIFICATION: &str = "dev.wisp.postgres.notification";

/// `io.cloudevents.v1.CloudEvent`, field for field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloudEvent {
    /// `id`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// `source`, a URI reference.
    #[prost(string, tag = "2")]
    pub source: String,
    /// `specversion`: always `1.0`.
    #[prost(string, tag = "3")]
    pub spec_version: String,
    /// `type`.
    #[prost(string, tag = "4")]
    pub r#type: String,
    /// Optional and extension attributes.
    #[prost(map = "string, message", tag = "5")]
    pub attributes: HashMap<String, AttributeValue>,
    /// The payload.
    #[prost(oneof = "Data", tags = "6, 7")]
    pub data: Option<Data>,
}

/// `CloudEvent.data`; the schema's third variant (`proto_data`) is never written.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Data {
    /// Binary data.
    #[prost(bytes = "vec", tag = "6")]
    BinaryData(Vec<u8>),
    /// Text data.
    #[prost(string, tag = "7")]
    TextData(String),
}

/// `CloudEvent.CloudEventAttributeValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeValue {
    /// The typed value.
    #[prost(oneof = "Attribute", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub attr: Option<Attribute>,
}

/// The attribute types of CloudEvents.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Attribute {
    /// `ce_boolean`.
    #[prost(bool, tag = "1")]
    Boolean(bool),
    /// `ce_integer`.
    #[prost(int32, tag = "2")]
    Integer(i32),
    /// `ce_string`.
    #[prost(string, tag = "3")]
    String(String),
    /// `ce_bytes`.
    #[prost(bytes = "vec", tag = "4")]
    Bytes(Vec<u8>),
    /// `ce_uri`.
    #[prost(string, tag = "5")]
    Uri(String),
    /// `ce_uri_ref`.
    #[prost(string, tag = "6")]
    UriRef(String),
    /// `ce_timestamp`.
    #[prost(message, tag = "7")]
    Timestamp(Timestamp),
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The request a function will see for an event.
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, starting with `/`.
    pub path: String,
    /// The query, without `?`.
    pub query: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// Headers that describe one connection or one encoding of the body, not the request.
const NOT_STORED: [HeaderName; 4] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn string(value: impl Into<String>) -> AttributeValue {
    AttributeValue {
        attr: Some(Attribute::String(value.into())),
    }
}

fn attribute<'a>(event: &'a CloudEvent, name: &str) -> Option<&'a str> {
    match event.attributes.get(name)?.attr.as_ref()? {
        Attribute::String(value) | Attribute::Uri(value) | Attribute::UriRef(value) => Some(value),
        _ => None,
    }
}

impl CloudEvent {
    fn new(id: String, source: String, r#type: &str, time: DateTime<Utc>) -> Self {
        let mut attributes = HashMap::new();
        attributes.insert(
            "time".to_owned(),
            AttributeValue {
                attr: Some(Attribute::Timestamp(Timestamp {
                    seconds: time.timestamp(),
                    nanos: time.timestamp_subsec_nanos() as i32,
                })),
            },
        );
        Self {
            id,
            source,
            spec_version: "1.0".to_owned(),
            r#type: r#type.to_owned(),
            attributes,
            data: None,
        }
    }

    /// An HTTP request accepted for later.
    pub fn http_request(id: String, source: String, time: DateTime<Utc>, request: Request) -> Self {
        let mut event = Self::new(id, source, HTTP_REQUEST, time);
        let headers: Vec<(&str, String)> = request
            .headers
            .iter()
            .filter(|(name, _)| !NOT_STORED.contains(name))
            .map(|(name, value)| {
                (
                    name.as_str(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        if let Some(content_type) = request.headers.get(header::CONTENT_TYPE)
            && let Ok(content_type) = content_type.to_str()
        {
            event
                .attributes
                .insert("datacontenttype".into(), string(content_type));
        }
        for (name, value) in [
            ("wispmethod", Some(request.method.to_string())),
            ("wisppath", Some(request.path)),
            ("wispquery", request.query),
            (
                "wispheaders",
                Some(serde_json::to_string(&headers).expect("strings serialize")),
            ),
        ] {
            if let Some(value) = value {
                event.attributes.insert(name.into(), string(value));
            }
        }
        event.data = Some(Data::BinaryData(request.body.to_vec()));
        event
    }

    /// A trigger's event: a cron tick (no payload) or a broker's message.
    pub fn trigger(
        id: String,
        source: String,
        r#type: &str,
        subject: String,
        time: DateTime<Utc>,
        payload: Vec<u8>,
        content_type: Option<String>,
    ) -> Self {
        let mut event = Self::new(id, source, r#type, time);
        event.attributes.insert("subject".into(), string(subject));
        if let Some(content_type) = content_type {
            event
                .attributes
                .insert("datacontenttype".into(), string(content_type));
        }
        if !payload.is_empty() {
            event.data = Some(Data::BinaryData(payload));
        }
        event
    }

    /// The protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes a stored record.
    pub fn decode(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        <Self as prost::Message>::decode(bytes)
    }

    /// The event's `time`.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        match self.attributes.get("time")?.attr.as_ref()? {
            Attribute::Timestamp(time) => {
                DateTime::from_timestamp(time.seconds, time.nanos.max(0) as u32)
            }
            _ => None,
        }
    }

    /// The request its function sees: the stored request for an HTTP call;
    /// for any other event, a `POST /` in HTTP binary content mode.
    pub fn request(mut self) -> Request {
        let body = match self.data.take() {
            Some(Data::BinaryData(bytes)) => Bytes::from(bytes),
            Some(Data::TextData(text)) => Bytes::from(text),
            None => Bytes::new(),
        };
        let mut headers = HeaderMap::new();
        if self.r#type == HTTP_REQUEST {
            let stored: Vec<(String, String)> = attribute(&self, "wispheaders")
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_default();
            for (name, value) in stored {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.append(name, value);
                }
            }
            return Request {
                method: attribute(&self, "wispmethod")
                    .and_then(|method| method.parse().ok())
                    .unwrap_or(Method::POST),
                path: attribute(&self, "wisppath").unwrap_or("/").to_owned(),
                query: attribute(&self, "wispquery").map(str::to_owned),
                headers,
                body,
            };
        }
        let time = self.time().map(super::rfc3339);
        for (name, value) in [
            ("ce-specversion", Some(self.spec_version.as_str())),
            ("ce-id", Some(self.id.as_str())),
            ("ce-source", Some(self.source.as_str())),
            ("ce-type", Some(self.r#type.as_str())),
            ("ce-time", time.as_deref()),
            ("ce-subject", attribute(&self, "subject")),
            ("content-type", attribute(&self, "datacontenttype")),
        ] {
            if let Some(value) = value.and_then(|value| HeaderValue::from_str(value).ok()) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        Request {
            method: Method::POST,
            path: "/".to_owned(),
            query: None,
            headers,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_request_survives_the_record() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().unwrap());
        headers.append("x-tag", "a".parse().unwrap());
        headers.append("x-tag", "b".parse().unwrap());
        headers.insert("content-length", "5".parse().unwrap());
        let time = "2026-01-01T10:00:00.250Z".parse().unwrap();
        let event = CloudEvent::http_request(
            "call-1".into(),
            "/async-function/echo".into(),
            time,
            Request {
                method: Method::PUT,
                path: "/items/1".into(),
                query: Some("full=true".into()),
                headers,
                body: Bytes::from_static(b"hello"),
            },
        );
        let decoded = CloudEvent::decode(&event.encode()).unwrap();
        assert_eq!(decoded, event);
        assert_eq!(decoded.time(), Some(time));
        assert_eq!(attribute(&decoded, "datacontenttype"), Some("text/plain"));
        let request = decoded.request();
        assert_eq!(
            (request.method, request.path.as_str()),
            (Method::PUT, "/items/1")
        );
        assert_eq!(request.query.as_deref(), Some("full=true"));
        assert_eq!(request.body, "hello");
        let tags: Vec<_> = request.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
        assert!(request.headers.get("content-length").is_none());
    }

    #[test]
    fn a_trigger_event_is_handed_over_in_binary_mode() {
        let time = "2026-01-01T10:05:00Z".parse().unwrap();
        let event = CloudEvent::trigger(
            "e-1".into(),
            "/triggers/default/report".into(),
            CRON_TICK,
            "*/5 * * * *".into(),
            time,
            b"{}".to_vec(),
            Some("application/json".into()),
        );
        let request = CloudEvent::decode(&event.encode()).unwrap().request();
        assert_eq!((request.method, request.path.as_str()), (Method::POST, "/"));
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-type", CRON_TICK),
            ("ce-source", "/triggers/default/report"),
            ("ce-time", "2026-01-01T10:05:00.000Z"),
            ("ce-subject", "*/5 * * * *"),
            ("content-type", "application/json"),
        ] {
            assert_eq!(request.headers[name], value, "{name}");
        }
        assert_eq!(request.body, "{}");
    }
}
