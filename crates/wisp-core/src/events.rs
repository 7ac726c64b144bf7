//! Events: the triggers a function declares ([`Trigger`], [`Schedule`]), the
//! states of an async call ([`CallState`]) and the API's view of one
//! ([`CallInfo`]).

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{HumanDuration, SpecError};

/// The most triggers one function declares: each broker trigger holds
/// connections to its broker, so a function cannot open thousands.
pub const MAX_TRIGGERS: usize = 16;

/// The shortest `@every` interval: shorter ones would flood the queue.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// A trigger as written in `wisp.toml` and the API: one key naming its
/// source, such as `{ cron = "*/5 * * * *" }`, `{ nats = "orders.created" }`,
/// `{ mqtt = "sensors/#" }`, `{ kv = "default", prefix = "users/" }`,
/// `{ bucket = "uploads", events = ["created"], prefix = "img/" }` or
/// `{ postgres = "postgres://app@db/shop", channel = "orders" }` or
/// `{ redis_stream = "orders" }` or `{ amqp = "orders" }`, with
/// that source's options beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerDeclaration {
    /// A cron schedule: five fields (an optional sixth, first, for seconds),
    /// a nickname such as `@hourly`, or `@every 30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A NATS subject (wildcards `*` and `>` allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<String>,
    /// NATS: a queue group, so each message goes to one subscriber of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    /// NATS: a JetStream stream to consume from (at-least-once, acked after the call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_stream: Option<String>,
    /// NATS: the durable consumer's name; `{namespace}_{function}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_consumer: Option<String>,
    /// An MQTT topic filter (wildcards `+` and `#` allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<String>,
    /// A key-value store of the function's namespace whose changes fire it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<String>,
    /// An object bucket of the function's namespace whose changes fire it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Bucket: which changes fire it, `created` and `deleted`; both when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Key-value and bucket: only keys that start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A PostgreSQL database whose notifications fire it:
    /// `postgres://[user[:password]@]host[:port]/database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
    /// PostgreSQL: the channel to `LISTEN` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A Redis stream, read in a consumer group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_stream: Option<String>,
    /// An AMQP (RabbitMQ) queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<String>,
}

/// A validated trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TriggerDeclaration", into = "TriggerDeclaration")]
pub enum Trigger {
    /// Fires on a schedule.
    Cron(Schedule),
    /// Each message on a NATS subject.
    Nats(NatsTrigger),
    /// Each message on an MQTT topic.
    Mqtt(String),
    /// Each change of a key-value store of the function's namespace.
    Kv(KvTrigger),
    /// Each object created or deleted in a bucket of the function's namespace.
    Bucket(BucketTrigger),
    /// Each notification on a PostgreSQL channel.
    Postgres(PostgresTrigger),
    /// Each entry of a Redis stream.
    RedisStream(String),
    /// Each message of an AMQP queue.
    Amqp(String),
}

/// A PostgreSQL trigger: a database reached over TCP, and a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTrigger {
    /// The database, as declared.
    pub url: String,
    /// Where it is, parsed from `url`.
    pub database: PostgresDatabase,
    /// The channel: a lowercase PostgreSQL identifier.
    pub channel: String,
}

/// A PostgreSQL database named by a `postgres://` URL: one host over TCP,
/// never a socket of the node's, and no parameters, so what the node
/// connects to is all in sight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresDatabase {
    /// The user; PostgreSQL's default (`postgres`) when absent.
    pub user: Option<String>,
    /// The password, if any.
    pub password: Option<String>,
    /// The host: a DNS name or an IP address.
    pub host: String,
    /// The port (5432 when absent).
    pub port: u16,
    /// The database.
    pub dbname: String,
}

impl PostgresDatabase {
    /// Where it is without its credentials: `host:port/database`.
    pub fn address(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }
}

impl FromStr for PostgresDatabase {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let form = "is not postgres://[user[:password]@]host[:port]/database (one host, over \
                    TCP, without parameters)";
        let invalid = || form.to_owned();
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(invalid)?;
        if rest.contains(['?', '#', ',']) || rest.contains(char::is_whitespace) {
            return Err(invalid());
        }
        let (authority, dbname) = rest.split_once('/').ok_or_else(invalid)?;
        let (credentials, address) = match authority.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, authority),
        };
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(String::from)
                .map_err(|_| format!("{form}: a part is not percent-encoded UTF-8"))
        };
        let (user, password) = match credentials {
            None => (None, None),
            Some(credentials) => match credentials.split_once(':') {
                Some((user, password)) => (Some(decode(user)?), Some(decode(password)?)),
                None => (Some(decode(credentials)?), None),
            },
        };
        let (host, port) = match address.strip_prefix('[') {
            // An IPv6 literal: `[::1]:5432`.
            Some(bracketed) => match bracketed.split_once(']').ok_or_else(invalid)? {
                (host, "") => (host, None),
                (host, after) => (host, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
            },
            None => match address.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            },
        };
        let port = match port {
            None => 5432,
            Some(port) => Some(port)
                .filter(|port| port.bytes().all(|byte| byte.is_ascii_digit()))
                .and_then(|port| port.parse().ok())
                .filter(|port| *port > 0)
                .ok_or_else(invalid)?,
        };
        // A DNS name or an IP address: never a path, which would be a socket on the node.
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-.:".contains(&byte));
        let dbname = decode(dbname)?;
        // Names end up in labels and logs: no control characters.
        let printable = |name: &str| !name.is_empty() && !name.contains(char::is_control);
        if !host_ok || !printable(&dbname) || user.as_deref().is_some_and(|user| !printable(user)) {
            return Err(invalid());
        }
        Ok(Self {
            user,
            password,
            host: host.to_ascii_lowercase(),
            port,
            dbname,
        })
    }
}

/// A channel: what `LISTEN` takes unquoted and does not fold, a lowercase
/// identifier of at most 63 bytes.
fn valid_channel(channel: &str) -> bool {
    channel.len() <= 63
        && channel.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && channel
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

/// A key-value trigger: a store, and the keys under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvTrigger {
    /// The store, in the function's namespace.
    pub store: String,
    /// Only keys that start with it; every key when empty.
    pub prefix: String,
}

impl KvTrigger {
    /// Whether a change of `key` in `store` fires it.
    pub fn matches(&self, store: &str, key: &str) -> bool {
        self.store == store && key.starts_with(&self.prefix)
    }
}

/// A bucket trigger: a bucket, the changes that fire it, and the keys
/// under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketTrigger {
    /// The bucket, in the function's namespace.
    pub bucket: String,
    /// Whether an object written (by a PUT or a completed multipart upload) fires it.
    pub created: bool,
    /// Whether an object removed fires it.
    pub deleted: bool,
    /// Only keys that start with it; every key when empty.
    pub prefix: String,
}

impl BucketTrigger {
    /// Whether a change of `key` in `bucket` fires it: `created` when the
    /// object was written, else removed.
    pub fn matches(&self, bucket: &str, key: &str, created: bool) -> bool {
        self.bucket == bucket
            && key.starts_with(&self.prefix)
            && if created { self.created } else { self.deleted }
    }
}

/// A NATS trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTrigger {
    /// The subject.
    pub subject: String,
    /// A queue group for core NATS.
    pub queue_group: Option<String>,
    /// A JetStream stream and durable consumer, for at-least-once delivery.
    pub jetstream: Option<(String, Option<String>)>,
}

impl Trigger {
    /// The trigger as someone who may not deploy the function sees it:
    /// without a database password.
    pub fn without_secrets(&self) -> Self {
        match self {
            Self::Postgres(postgres) if postgres.database.password.is_some() => {
                let database = &postgres.database;
                let user = database.user.as_deref().unwrap_or("postgres");
                let mut shown = postgres.clone();
                shown.url = format!(
                    "postgres://{}:***@{}",
                    percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC),
                    database.address()
                );
                shown.database.password = None;
                Self::Postgres(shown)
            }
            other => other.clone(),
        }
    }

    /// How `wisp describe` and errors name the trigger: `cron "*/5 * * * *"`.
    pub fn label(&self) -> String {
        match self {
            Self::Cron(schedule) => format!("cron \"{schedule}\""),
            Self::Nats(nats) => match &nats.jetstream {
                Some((stream, _)) => format!("nats \"{}\" (stream {stream})", nats.subject),
                None => format!("nats \"{}\"", nats.subject),
            },
            Self::Mqtt(topic) => format!("mqtt \"{topic}\""),
            Self::Kv(kv) if kv.prefix.is_empty() => format!("kv \"{}\"", kv.store),
            Self::Kv(kv) => format!("kv \"{}\" prefix \"{}\"", kv.store, kv.prefix),
            Self::Bucket(bucket) => {
                let mut label = format!("bucket \"{}\"", bucket.bucket);
                if !(bucket.created && bucket.deleted) {
                    label += if bucket.created {
                        " created"
                    } else {
                        " deleted"
                    };
                }
                if !bucket.prefix.is_empty() {
                    label += &format!(" prefix \"{}\"", bucket.prefix);
                }
                label
            }
            Self::RedisStream(stream) => format!("redis stream \"{stream}\""),
            Self::Amqp(queue) => format!("amqp \"{queue}\""),
            Self::Postgres(postgres) => format!(
                "postgres \"{}\" on {}",
                postgres.channel,
                postgres.database.address()
            ),
        }
    }
}

impl TryFrom<TriggerDeclaration> for Trigger {
    type Error = SpecError;

    fn try_from(declaration: TriggerDeclaration) -> Result<Self, SpecError> {
        let TriggerDeclaration {
            cron,
            nats,
            queue_group,
            nats_stream,
            nats_consumer,
            mqtt,
            kv,
            bucket,
            events,
            prefix,
            postgres,
            channel,
            redis_stream,
            amqp,
        } = declaration;
        let nats_options =
            queue_group.is_some() || nats_stream.is_some() || nats_consumer.is_some();
        if prefix.is_some() && kv.is_none() && bucket.is_none() {
            return Err(SpecError::Trigger(
                "`prefix` is for key-value and bucket triggers: `{ kv = \"store\", prefix = \"...\" }`"
                    .into(),
            ));
        }
        if events.is_some() && bucket.is_none() {
            return Err(SpecError::Trigger(
                "`events` is for bucket triggers: `{ bucket = \"uploads\", events = [\"created\"] }`"
                    .into(),
            ));
        }
        if channel.is_some() && postgres.is_none() {
            return Err(SpecError::Trigger(
                "`channel` is for PostgreSQL triggers: `{ postgres = \"postgres://...\", channel = \"...\" }`"
                    .into(),
            ));
        }
        let others =
            cron.is_some() || nats.is_some() || mqtt.is_some() || kv.is_some() || nats_options;
        if let Some(bucket) = bucket {
            if others || postgres.is_some() || redis_stream.is_some() || amqp.is_some() {
                return Err(SpecError::Trigger(ONE_SOURCE.into()));
            }
            if crate::name::validate_name(&bucket).is_err() {
                return Err(SpecError::Trigger(format!(
                    "trigger bucket \"{bucket}\": not a bucket's name (a DNS label)"
                )));
            }
            let prefix = prefix.unwrap_or_default();
            if prefix.len() > crate::kv::MAX_KEY_BYTES {
                return Err(SpecError::Trigger(format!(
                    "trigger bucket \"{bucket}\": a prefix is at most {} bytes",
                    crate::kv::MAX_KEY_BYTES
                )));
            }
            let events = events.unwrap_or_else(|| vec!["created".into(), "deleted".into()]);
            if events.is_empty() {
                return Err(SpecError::Trigger(format!(
                    "trigger bucket \"{bucket}\": `events` names at least one of `created` and `deleted`"
                )));
            }
            if let Some(other) = events.iter().find(|e| *e != "created" && *e != "deleted") {
                return Err(SpecError::Trigger(format!(
                    "trigger bucket \"{bucket}\": event `{other}` is not `created` or `deleted`"
                )));
            }
            return Ok(Self::Bucket(BucketTrigger {
                created: events.iter().any(|e| e == "created"),
                deleted: events.iter().any(|e| e == "deleted"),
                bucket,
                prefix,
            }));
        }
        if let Some(queue) = amqp {
            if others || postgres.is_some() || redis_stream.is_some() {
                return Err(SpecError::Trigger(ONE_SOURCE.into()));
            }
            if !valid_queue(&queue) {
                return Err(SpecError::Trigger(format!(
                    "trigger amqp \"{queue}\": a queue's name is 1 to 255 bytes without spaces or \
                     control characters, and not `amq.`, which the broker keeps for itself"
                )));
            }
            return Ok(Self::Amqp(queue));
        }
        if let Some(stream) = redis_stream {
            if others || postgres.is_some() {
                return Err(SpecError::Trigger(ONE_SOURCE.into()));
            }
            if !valid_stream(&stream) {
                return Err(SpecError::Trigger(format!(
                    "trigger redis stream \"{stream}\": a stream's key is 1 to {MAX_STREAM_BYTES} \
                     bytes without spaces or control characters"
                )));
            }
            return Ok(Self::RedisStream(stream));
        }
        if let Some(url) = postgres {
            if others {
                return Err(SpecError::Trigger(ONE_SOURCE.into()));
            }
            // The URL may hold a password: errors never repeat it.
            let database: PostgresDatabase = url
                .parse()
                .map_err(|why| SpecError::Trigger(format!("trigger postgres: the URL {why}")))?;
            let channel = channel.ok_or_else(|| {
                SpecError::Trigger(format!(
                    "trigger postgres on {}: name the `channel` to listen on",
                    database.address()
                ))
            })?;
            if !valid_channel(&channel) {
                return Err(SpecError::Trigger(format!(
                    "trigger postgres \"{channel}\": a channel is a lowercase identifier (`a-z`, \
                     `0-9` and `_`, not first a digit), at most 63 bytes"
                )));
            }
            return Ok(Self::Postgres(PostgresTrigger {
                url,
                database,
                channel,
            }));
        }
        match (cron, nats, mqtt, kv) {
            (None, None, None, Some(store)) if !nats_options => {
                if crate::name::validate_name(&store).is_err() {
                    return Err(SpecError::Trigger(format!(
                        "trigger kv \"{store}\": not a key-value store's name (a DNS label)"
                    )));
                }
                let prefix = prefix.unwrap_or_default();
                if prefix.len() > crate::kv::MAX_KEY_BYTES {
                    return Err(SpecError::Trigger(format!(
                        "trigger kv \"{store}\": a prefix is at most {} bytes",
                        crate::kv::MAX_KEY_BYTES
                    )));
                }
                Ok(Self::Kv(KvTrigger { store, prefix }))
            }
            (Some(schedule), None, None, None) if !nats_options => {
                Ok(Self::Cron(schedule.parse()?))
            }
            (None, Some(subject), None, None) => {
                let invalid =
                    |why: &str| SpecError::Trigger(format!("trigger nats \"{subject}\": {why}"));
                if !valid_subject(&subject) {
                    return Err(invalid(
                        "not a NATS subject (dot-separated tokens; `*` as a token, `>` as the last)",
                    ));
                }
                let name_ok = |name: &String| {
                    !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                for (key, value) in [
                    ("queue_group", &queue_group),
                    ("nats_stream", &nats_stream),
                    ("nats_consumer", &nats_consumer),
                ] {
                    if value.as_ref().is_some_and(|value| !name_ok(value)) {
                        return Err(invalid(&format!(
                            "`{key}` must be letters, digits, `-` and `_`"
                        )));
                    }
                }
                if nats_consumer.is_some() && nats_stream.is_none() {
                    return Err(invalid("`nats_consumer` needs `nats_stream`"));
                }
                if queue_group.is_some() && nats_stream.is_some() {
                    return Err(invalid(
                        "`queue_group` is for core NATS; a JetStream consumer is shared already",
                    ));
                }
                Ok(Self::Nats(NatsTrigger {
                    subject,
                    queue_group,
                    jetstream: nats_stream.map(|stream| (stream, nats_consumer)),
                }))
            }
            (None, None, Some(topic), None) if !nats_options => {
                if !valid_topic_filter(&topic) {
                    return Err(SpecError::Trigger(format!(
                        "trigger mqtt \"{topic}\": not an MQTT topic filter (`+` as a level, `#` as the last)"
                    )));
                }
                Ok(Self::Mqtt(topic))
            }
            (None, None, None, None) => Err(SpecError::Trigger(
                "a trigger needs a source: `cron`, `nats`, `mqtt`, `kv`, `postgres`, \
                 `redis_stream` or `amqp`"
                    .into(),
            )),
            _ => Err(SpecError::Trigger(ONE_SOURCE.into())),
        }
    }
}

/// Why a trigger that names two sources, or another's options, is refused.
const ONE_SOURCE: &str = "a trigger has one source (`cron`, `nats`, `mqtt`, `kv`, `postgres`, \
                          `redis_stream` or `amqp`), and NATS options only with `nats`";

/// The longest Redis stream key a trigger names.
const MAX_STREAM_BYTES: usize = 256;

/// An AMQP queue's name: at most 255 bytes, printable, without spaces, and
/// not one the broker keeps (`amq.`).
fn valid_queue(queue: &str) -> bool {
    !queue.is_empty()
        && queue.len() <= 255
        && !queue.starts_with("amq.")
        && !queue.contains(|c: char| c.is_whitespace() || c.is_control())
}

/// A Redis stream's key: printable, without spaces, and short.
fn valid_stream(stream: &str) -> bool {
    !stream.is_empty()
        && stream.len() <= MAX_STREAM_BYTES
        && !stream.contains(|c: char| c.is_whitespace() || c.is_control())
}

/// A NATS subject: dot-separated tokens, `*` a whole token, `>` the last one.
fn valid_subject(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    !subject.is_empty()
        && tokens.iter().enumerate().all(|(i, token)| {
            !token.is_empty()
                && !token.contains(|c: char| c.is_whitespace() || c.is_control())
                && (*token == "*" || !token.contains('*'))
                && (*token == ">" && i == last || !token.contains('>'))
        })
}

/// An MQTT topic filter: `+` a whole level, `#` the last level.
fn valid_topic_filter(topic: &str) -> bool {
    let levels: Vec<&str> = topic.split('/').collect();
    let last = levels.len() - 1;
    !topic.is_empty()
        && !topic.contains('\0')
        && levels.iter().enumerate().all(|(i, level)| {
            (*level == "+" || !level.contains('+'))
                && (*level == "#" && i == last || !level.contains('#'))
        })
}

/// What stands for the namespace in a [`TriggerScope`] pattern.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// Joins a namespace to the rest of a broker name it owns (a JetStream
/// consumer, a NATS queue group, an MQTT client id): `_`, which no namespace
/// or function name (a DNS label) can hold, so `a-b_c` and `a_b-c` can only
/// be namespace `a-b`'s and namespace `a`'s.
pub const NAME_SEPARATOR: char = '_';

/// Where a namespace's broker triggers may subscribe: NATS subjects under
/// one prefix and MQTT topics under another, each a pattern in which
/// [`NAMESPACE_PLACEHOLDER`] is one whole token (NATS) or level (MQTT). Since
/// a namespace holds no `.` or `/`, no namespace's prefix lies under
/// another's, and a wildcard is only ever matched after the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerScope {
    /// The NATS pattern, such as `{namespace}` or `tenants.{namespace}`.
    pub nats: String,
    /// The MQTT pattern, such as `{namespace}` or `tenants/{namespace}`.
    pub mqtt: String,
    /// The Redis pattern, such as `{namespace}` or `tenants:{namespace}`.
    pub redis: String,
    /// The AMQP pattern, such as `{namespace}` or `tenants.{namespace}`.
    pub amqp: String,
    /// The PostgreSQL servers a namespace's triggers may connect to, as
    /// `host:port`; none unless the operator lists them, since a URL a
    /// tenant writes has the node connect wherever it says.
    pub postgres_hosts: Vec<String>,
}

impl Default for TriggerScope {
    fn default() -> Self {
        Self {
            nats: NAMESPACE_PLACEHOLDER.to_owned(),
            mqtt: NAMESPACE_PLACEHOLDER.to_owned(),
            redis: NAMESPACE_PLACEHOLDER.to_owned(),
            amqp: NAMESPACE_PLACEHOLDER.to_owned(),
            postgres_hosts: Vec::new(),
        }
    }
}

/// A broker trigger a namespace may not declare: a 400 that says what it may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A NATS subject, MQTT topic, Redis stream or AMQP queue outside the namespace's prefix.
    #[error(
        "trigger {trigger}: namespace {namespace} may only subscribe to {what} under `{prefix}` \
         (such as `{prefix}orders` or `{prefix}{wildcard}`)"
    )]
    OutsidePrefix {
        /// The trigger's label.
        trigger: String,
        /// The namespace.
        namespace: String,
        /// `subjects`, `topics`, `streams` or `queues`.
        what: &'static str,
        /// The allowed prefix, separator included.
        prefix: String,
        /// The broker's multi-level wildcard.
        wildcard: &'static str,
    },
    /// A consumer or queue group named outside the namespace's own names.
    #[error(
        "trigger {trigger}: `{key}` \"{value}\" is not namespace {namespace}'s own: \
         names a namespace may use start with `{namespace}{NAME_SEPARATOR}`{default}"
    )]
    ForeignName {
        /// The trigger's label.
        trigger: String,
        /// `nats_consumer` or `queue_group`.
        key: &'static str,
        /// The name given.
        value: String,
        /// The namespace.
        namespace: String,
        /// What leaving the name out gives, if anything.
        default: String,
    },
    /// A database on a server the operator did not list.
    #[error(
        "trigger {trigger}: namespace {namespace} may only listen to PostgreSQL servers the node \
         lists in `wisp up --postgres-hosts`{listed}"
    )]
    UnlistedDatabase {
        /// The trigger's label.
        trigger: String,
        /// The namespace.
        namespace: String,
        /// `(now: ...)` or `(none yet)`.
        listed: String,
    },
}

impl TriggerScope {
    /// Checks both patterns; the error names the flag's value that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        // `part` is what the separator delimits, `name` what the broker calls a whole one.
        let check = |pattern: &str,
                     separator: char,
                     broker: &str,
                     (part, name): (&str, &str),
                     valid: fn(&str) -> bool| {
            let tokens = pattern.split(separator);
            let placeholders = tokens
                .filter(|token| *token == NAMESPACE_PLACEHOLDER)
                .count();
            let sample = pattern.replace(NAMESPACE_PLACEHOLDER, "ns");
            let literal = !sample.contains(['*', '>', '+', '#', '{', '}']);
            if placeholders != 1 || pattern.matches(NAMESPACE_PLACEHOLDER).count() != 1 {
                return Err(format!(
                    "the {broker} trigger prefix `{pattern}` must hold `{NAMESPACE_PLACEHOLDER}` \
                     once, as a whole {part}, so each namespace gets a prefix of its own"
                ));
            }
            if !literal || !valid(&sample) || sample.ends_with(separator) {
                return Err(format!(
                    "the {broker} trigger prefix `{pattern}` is not a plain {broker} {name} without wildcards"
                ));
            }
            Ok(())
        };
        check(&self.nats, '.', "NATS", ("token", "subject"), valid_subject)?;
        check(
            &self.mqtt,
            '/',
            "MQTT",
            ("level", "topic"),
            valid_topic_filter,
        )?;
        check(&self.redis, ':', "Redis", ("part", "key"), valid_stream)?;
        check(&self.amqp, '.', "AMQP", ("word", "queue name"), valid_queue)?;
        for host in &self.postgres_hosts {
            format!("postgres://{host}/database")
                .parse::<PostgresDatabase>()
                .map_err(|_| format!("the PostgreSQL server `{host}` is not host[:port]"))?;
        }
        Ok(())
    }

    /// The prefix of every Redis stream `namespace`'s functions may read, its last `:` included.
    pub fn redis_prefix(&self, namespace: &str) -> String {
        format!("{}:", self.redis.replace(NAMESPACE_PLACEHOLDER, namespace))
    }

    /// The prefix of every AMQP queue `namespace`'s functions may consume, its last `.` included.
    pub fn amqp_prefix(&self, namespace: &str) -> String {
        format!("{}.", self.amqp.replace(NAMESPACE_PLACEHOLDER, namespace))
    }

    /// Whether a namespace's trigger may connect to `database`'s server.
    fn lists(&self, database: &PostgresDatabase) -> bool {
        self.postgres_hosts.iter().any(|host| {
            format!("postgres://{host}/database")
                .parse::<PostgresDatabase>()
                .is_ok_and(|listed| listed.host == database.host && listed.port == database.port)
        })
    }

    /// The prefix of every subject `namespace`'s functions may subscribe to, its last `.` included.
    pub fn nats_prefix(&self, namespace: &str) -> String {
        format!("{}.", self.nats.replace(NAMESPACE_PLACEHOLDER, namespace))
    }

    /// The prefix of every topic `namespace`'s functions may subscribe to, its last `/` included.
    pub fn mqtt_prefix(&self, namespace: &str) -> String {
        format!("{}/", self.mqtt.replace(NAMESPACE_PLACEHOLDER, namespace))
    }

    /// Whether a function of `namespace` may declare `trigger`: its subject or
    /// topic lies under the namespace's prefix (so its wildcards come after
    /// it), and its consumer or queue group, if named, is the namespace's own.
    pub fn check(&self, namespace: &str, trigger: &Trigger) -> Result<(), ScopeError> {
        let outside = |what, prefix: String, wildcard| ScopeError::OutsidePrefix {
            trigger: trigger.label(),
            namespace: namespace.to_owned(),
            what,
            prefix,
            wildcard,
        };
        match trigger {
            // A key-value trigger watches its own namespace's stores only.
            Trigger::Cron(_) | Trigger::Kv(_) | Trigger::Bucket(_) => Ok(()),
            Trigger::Amqp(queue) => {
                let prefix = self.amqp_prefix(namespace);
                if queue.starts_with(&prefix) {
                    Ok(())
                } else {
                    Err(outside("queues", prefix, "events"))
                }
            }
            Trigger::RedisStream(stream) => {
                let prefix = self.redis_prefix(namespace);
                if stream.starts_with(&prefix) {
                    Ok(())
                } else {
                    Err(outside("streams", prefix, "events"))
                }
            }
            Trigger::Postgres(postgres) if self.lists(&postgres.database) => Ok(()),
            Trigger::Postgres(_) => Err(ScopeError::UnlistedDatabase {
                trigger: trigger.label(),
                namespace: namespace.to_owned(),
                listed: if self.postgres_hosts.is_empty() {
                    " (it lists none)".to_owned()
                } else {
                    format!(" ({})", self.postgres_hosts.join(", "))
                },
            }),
            Trigger::Mqtt(topic) => {
                let prefix = self.mqtt_prefix(namespace);
                if topic.starts_with(&prefix) {
                    Ok(())
                } else {
                    Err(outside("topics", prefix, "#"))
                }
            }
            Trigger::Nats(nats) => {
                let prefix = self.nats_prefix(namespace);
                if !nats.subject.starts_with(&prefix) {
                    return Err(outside("subjects", prefix, ">"));
                }
                let consumer = nats.jetstream.as_ref().and_then(|(_, c)| c.as_ref());
                for (key, value, default) in [
                    ("nats_consumer", consumer, true),
                    ("queue_group", nats.queue_group.as_ref(), false),
                ] {
                    if let Some(value) = value
                        && !owns_name(namespace, value)
                    {
                        return Err(ScopeError::ForeignName {
                            trigger: trigger.label(),
                            key,
                            value: value.clone(),
                            namespace: namespace.to_owned(),
                            default: if default {
                                format!(
                                    " (leave it out for the function's own, `{namespace}{NAME_SEPARATOR}FUNCTION`)"
                                )
                            } else {
                                String::new()
                            },
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

/// Whether a broker name (consumer, queue group) is `namespace`'s own:
/// `{namespace}_...`.
pub fn owns_name(namespace: &str, name: &str) -> bool {
    name.strip_prefix(namespace)
        .and_then(|rest| rest.strip_prefix(NAME_SEPARATOR))
        .is_some_and(|rest| !rest.is_empty())
}

/// The durable JetStream consumer of a function that names none:
/// `{namespace}_{function}`, the namespace's own and no one else's.
pub fn default_consumer(namespace: &str, function: &str) -> String {
    format!("{namespace}{NAME_SEPARATOR}{function}")
}

/// The MQTT client id of a function's `index`th trigger:
/// `wisp_{namespace}_{function}_{index}`, one per trigger and unambiguous.
pub fn mqtt_client_id(namespace: &str, function: &str, index: usize) -> String {
    format!("wisp{NAME_SEPARATOR}{namespace}{NAME_SEPARATOR}{function}{NAME_SEPARATOR}{index}")
}

impl From<Trigger> for TriggerDeclaration {
    fn from(trigger: Trigger) -> Self {
        match trigger {
            Trigger::Cron(schedule) => Self {
                cron: Some(schedule.to_string()),
                ..Self::default()
            },
            Trigger::Nats(nats) => {
                let (nats_stream, nats_consumer) = match nats.jetstream {
                    Some((stream, consumer)) => (Some(stream), consumer),
                    None => (None, None),
                };
                Self {
                    nats: Some(nats.subject),
                    queue_group: nats.queue_group,
                    nats_stream,
                    nats_consumer,
                    ..Self::default()
                }
            }
            Trigger::Mqtt(topic) => Self {
                mqtt: Some(topic),
                ..Self::default()
            },
            Trigger::Kv(kv) => Self {
                kv: Some(kv.store),
                prefix: (!kv.prefix.is_empty()).then_some(kv.prefix),
                ..Self::default()
            },
            Trigger::Bucket(bucket) => Self {
                events: (!(bucket.created && bucket.deleted))
                    .then(|| vec![if bucket.created { "created" } else { "deleted" }.to_owned()]),
                bucket: Some(bucket.bucket),
                prefix: (!bucket.prefix.is_empty()).then_some(bucket.prefix),
                ..Self::default()
            },
            Trigger::Amqp(queue) => Self {
                amqp: Some(queue),
                ..Self::default()
            },
            Trigger::RedisStream(stream) => Self {
                redis_stream: Some(stream),
                ..Self::default()
            },
            Trigger::Postgres(postgres) => Self {
                postgres: Some(postgres.url),
                channel: Some(postgres.channel),
                ..Self::default()
            },
        }
    }
}

/// When a cron trigger fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A cron expression, evaluated in UTC.
    Cron {
        /// As written.
        text: String,
        /// Parsed.
        cron: Box<croner::Cron>,
    },
    /// `@every 30s`: a fixed interval.
    Every(HumanDuration),
}

impl Schedule {
    /// The first firing strictly after `time`.
    pub fn next_after(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, .. } => cron.find_next_occurrence(&time, false).ok(),
            Self::Every(interval) => {
                // Firings are aligned to multiples of the interval since the
                // epoch, so a restart keeps the same beat.
                let step = interval.0.as_millis() as i64;
                let now = time.timestamp_millis();
                let next = (now.div_euclid(step) + 1) * step;
                DateTime::from_timestamp_millis(next)
            }
        }
    }
}

impl Schedule {
    /// The latest firing at or before `time`: the one a node that was down
    /// at that time has missed most recently.
    pub fn latest_at_or_before(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, .. } => cron.find_previous_occurrence(&time, true).ok(),
            Self::Every(interval) => {
                let step = interval.0.as_millis() as i64;
                DateTime::from_timestamp_millis(time.timestamp_millis().div_euclid(step) * step)
            }
        }
    }
}

impl FromStr for Schedule {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let invalid = |why: String| SpecError::Trigger(format!("trigger cron \"{text}\": {why}"));
        if let Some(interval) = text.trim().strip_prefix("@every") {
            let interval: HumanDuration = interval
                .trim()
                .parse()
                .map_err(|error| invalid(format!("{error}")))?;
            if interval.0 < MIN_EVERY {
                return Err(invalid(format!(
                    "the interval must be at least {}",
                    HumanDuration(MIN_EVERY)
                )));
            }
            return Ok(Self::Every(interval));
        }
        let cron: croner::Cron = text.parse().map_err(|error: croner::errors::CronError| {
            invalid(format!(
                "{error} (use five fields: minute hour day-of-month month day-of-week)"
            ))
        })?;
        Ok(Self::Cron {
            text: text.to_owned(),
            cron: Box::new(cron),
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cron { text, .. } => f.write_str(text),
            Self::Every(interval) => write!(f, "@every {interval}"),
        }
    }
}

/// Where an async call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Waiting for a worker, or for its next attempt.
    Queued,
    /// A worker runs it now.
    Running,
    /// The function answered 1xx to 3xx.
    Succeeded,
    /// The function answered 4xx: retrying would not help.
    Failed,
    /// Every attempt failed (5xx, timeout or crash): a dead letter.
    Dead,
}

impl CallState {
    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    /// Every state, in order of a call's life.
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Dead,
    ];

    /// Whether the call is over.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Dead)
    }
}

impl fmt::Display for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CallState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                format!("unknown call status `{text}` (queued, running, succeeded, failed, dead)")
            })
    }
}

/// An async call: `GET /system/calls/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallInfo {
    /// The call id, as answered in `X-Call-Id`.
    pub id: String,
    /// The function.
    pub function: String,
    /// Its namespace.
    pub namespace: String,
    /// Where the call is.
    pub status: CallState,
    /// Attempts started so far.
    pub attempts: u32,
    /// What fired it: `http`, or the trigger such as `cron "@every 1m"`.
    pub source: String,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When its latest attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// When its next attempt is due, while it waits for a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Why the latest attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The function's response to the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CallResult>,
    /// Where the result is POSTed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// `pending`, `delivered` or `failed`, when there is a callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_status: Option<String>,
}

/// A function's response to an async call, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallResult {
    /// The HTTP status.
    pub status: u16,
    /// Its headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Its body as text (lossy UTF-8), cut at the node's limit.
    pub body: String,
    /// Whether the body was cut.
    #[serde(default)]
    pub truncated: bool,
}

/// `GET /system/calls`: the newest calls first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallList {
    /// The calls.
    pub calls: Vec<CallInfo>,
}

/// What a function's trigger is doing, in its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// The trigger, such as `cron "@every 1m"`.
    pub trigger: String,
    /// `scheduled` for a cron trigger; `connected` or `disconnected` for a broker.
    pub state: String,
    /// Why a broker trigger is disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it last fired (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<String>,
    /// When it fires next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_firing_at: Option<String>,
}

/// The queue's counters, in `GET /system/info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfo {
    /// Calls waiting for a worker or for a retry.
    pub depth: u64,
    /// Calls running now.
    pub running: u64,
    /// Calls in the dead-letter list.
    pub dead: u64,
    /// Calls accepted since the node started.
    pub enqueued: u64,
    /// Attempts started since the node started.
    pub attempts: u64,
    /// Attempts that will be retried.
    pub retries: u64,
    /// Calls found running at start-up and run again (at-least-once).
    pub redelivered: u64,
    /// Callbacks delivered.
    pub callbacks_delivered: u64,
    /// Callbacks given up on.
    pub callbacks_failed: u64,
    /// Trigger firings since the node started.
    pub trigger_firings: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn cron_schedules_fire_on_their_fields() {
        let schedule: Schedule = "*/5 * * * *".parse().unwrap();
        assert_eq!(
            schedule.next_after(at("2026-01-01T10:02:30Z")),
            Some(at("2026-01-01T10:05:00Z"))
        );
        let daily: Schedule = "@daily".parse().unwrap();
        assert_eq!(
            daily.next_after(at("2026-01-01T10:02:30Z")),
            Some(at("2026-01-02T00:00:00Z"))
        );
        assert_eq!(
            schedule.latest_at_or_before(at("2026-01-01T10:02:30Z")),
            Some(at("2026-01-01T10:00:00Z"))
        );
    }

    #[test]
    fn every_keeps_a_beat_aligned_to_its_interval() {
        let schedule: Schedule = "@every 30s".parse().unwrap();
        assert_eq!(schedule.to_string(), "@every 30s");
        assert_eq!(
            schedule.next_after(at("2026-01-01T10:00:31Z")),
            Some(at("2026-01-01T10:01:00Z"))
        );
        assert_eq!(
            schedule.next_after(at("2026-01-01T10:01:00Z")),
            Some(at("2026-01-01T10:01:30Z"))
        );
        assert_eq!(
            schedule.latest_at_or_before(at("2026-01-01T10:01:10Z")),
            Some(at("2026-01-01T10:01:00Z"))
        );
    }

    #[test]
    fn bad_schedules_name_the_trigger() {
        for (text, expected) in [
            ("*/5 * * *", "trigger cron \"*/5 * * *\""),
            ("61 * * * *", "trigger cron \"61 * * * *\""),
            ("@every soon", "not a valid duration"),
            ("@every 10ms", "at least 1s"),
        ] {
            let error = text.parse::<Schedule>().unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "`{error}` should mention `{expected}`"
            );
        }
    }

    #[test]
    fn triggers_round_trip_as_declared() {
        let trigger: Trigger = serde_json::from_str(r#"{"cron": "@every 1m"}"#).unwrap();
        assert_eq!(trigger.label(), "cron \"@every 1m\"");
        assert_eq!(
            serde_json::to_string(&trigger).unwrap(),
            r#"{"cron":"@every 1m"}"#
        );
        assert!(serde_json::from_str::<Trigger>("{}").is_err());
        assert!(serde_json::from_str::<Trigger>(r#"{"kafka": "x"}"#).is_err());
        let nats: Trigger =
            serde_json::from_str(r#"{"nats": "orders.*", "nats_stream": "ORDERS"}"#).unwrap();
        assert_eq!(nats.label(), "nats \"orders.*\" (stream ORDERS)");
        let back: TriggerDeclaration = nats.into();
        assert_eq!(back.nats_stream.as_deref(), Some("ORDERS"));
    }

    #[test]
    fn a_namespace_subscribes_only_under_its_prefix_with_its_own_names() {
        let scope = TriggerScope::default();
        let trigger = |json: &str| serde_json::from_str::<Trigger>(json).unwrap();
        for good in [
            r#"{"nats": "team-a.orders"}"#,
            r#"{"nats": "team-a.>"}"#,
            r#"{"nats": "team-a.*.eu", "queue_group": "team-a_workers"}"#,
            r#"{"nats": "team-a.x", "nats_stream": "S", "nats_consumer": "team-a_x"}"#,
            r##"{"mqtt": "team-a/#"}"##,
            r#"{"mqtt": "team-a/+/temp"}"#,
            r#"{"cron": "@hourly"}"#,
            r#"{"redis_stream": "team-a:orders"}"#,
            r#"{"amqp": "team-a.orders"}"#,
        ] {
            assert_eq!(scope.check("team-a", &trigger(good)), Ok(()), "{good}");
        }
        for (bad, expected) in [
            (r#"{"nats": ">"}"#, "subjects under `team-a.`"),
            (r#"{"nats": "*.orders"}"#, "subjects under `team-a.`"),
            (r#"{"nats": "team-a"}"#, "subjects under `team-a.`"),
            (r#"{"nats": "team-ab.x"}"#, "subjects under `team-a.`"),
            (r#"{"nats": "team-b.>"}"#, "subjects under `team-a.`"),
            (r##"{"mqtt": "#"}"##, "topics under `team-a/`"),
            (r#"{"mqtt": "+/x"}"#, "topics under `team-a/`"),
            (r##"{"mqtt": "$SYS/#"}"##, "topics under `team-a/`"),
            (
                r#"{"redis_stream": "team-b:orders"}"#,
                "streams under `team-a:`",
            ),
            (r#"{"redis_stream": "team-a"}"#, "streams under `team-a:`"),
            (
                r#"{"redis_stream": "team-ab:x"}"#,
                "streams under `team-a:`",
            ),
            (r#"{"amqp": "orders"}"#, "queues under `team-a.`"),
            (r#"{"amqp": "team-b.orders"}"#, "queues under `team-a.`"),
            (
                r#"{"nats": "team-a.x", "queue_group": "workers"}"#,
                "`queue_group` \"workers\" is not namespace team-a's own",
            ),
            (
                r#"{"nats": "team-a.x", "nats_stream": "S", "nats_consumer": "team-b_x"}"#,
                "start with `team-a_`",
            ),
            (
                r#"{"nats": "team-a.x", "nats_stream": "S", "nats_consumer": "team-a_"}"#,
                "start with `team-a_`",
            ),
        ] {
            let error = scope
                .check("team-a", &trigger(bad))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected),
                "`{error}` should mention `{expected}`"
            );
        }
        let custom = TriggerScope {
            nats: "tenants.{namespace}".into(),
            mqtt: "tenants/{namespace}/in".into(),
            redis: "tenants:{namespace}".into(),
            amqp: "tenants.{namespace}".into(),
            postgres_hosts: vec!["db.internal".into(), "10.0.0.7:6432".into()],
        };
        assert_eq!(custom.validate(), Ok(()));
        assert_eq!(custom.redis_prefix("a"), "tenants:a:");
        assert_eq!(custom.nats_prefix("a"), "tenants.a.");
        assert_eq!(custom.mqtt_prefix("a"), "tenants/a/in/");
        for bad in [
            "tenants",
            "x{namespace}",
            "{namespace}.{namespace}",
            "a.>.{namespace}",
            "{namespace}.",
        ] {
            let scope = TriggerScope {
                nats: bad.into(),
                ..TriggerScope::default()
            };
            assert!(scope.validate().is_err(), "{bad}");
        }
        assert!(
            TriggerScope {
                mqtt: "#/{namespace}".into(),
                ..TriggerScope::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn postgres_triggers_name_one_tcp_host_and_never_show_the_password() {
        let parse = |json: &str| {
            serde_json::from_str::<TriggerDeclaration>(json)
                .map_err(|e| e.to_string())
                .and_then(|declaration| Trigger::try_from(declaration).map_err(|e| e.to_string()))
        };
        let trigger = parse(
            r#"{"postgres": "postgres://app:s%40cret@DB.internal/shop", "channel": "orders"}"#,
        )
        .unwrap();
        let Trigger::Postgres(postgres) = &trigger else {
            panic!("{trigger:?}")
        };
        assert_eq!(
            postgres.database,
            PostgresDatabase {
                user: Some("app".into()),
                password: Some("s@cret".into()),
                host: "db.internal".into(),
                port: 5432,
                dbname: "shop".into(),
            }
        );
        assert_eq!(
            trigger.label(),
            "postgres \"orders\" on db.internal:5432/shop"
        );
        let shown = serde_json::to_string(&trigger.without_secrets()).unwrap();
        assert!(
            shown.contains("postgres://app:***@db.internal:5432/shop"),
            "{shown}"
        );
        assert!(!shown.contains("cret"), "{shown}");
        let v6 = "postgresql://[::1]:6432/shop"
            .parse::<PostgresDatabase>()
            .unwrap();
        assert_eq!((v6.host.as_str(), v6.port, v6.user), ("::1", 6432, None));
        for (bad, expected) in [
            // A socket of the node's, by path or by parameter.
            (
                r#"{"postgres": "postgres://%2Fvar%2Frun%2Fpostgresql/shop", "channel": "a"}"#,
                "one host, over TCP",
            ),
            (
                r#"{"postgres": "postgres:///shop?host=/var/run/postgresql", "channel": "a"}"#,
                "one host, over TCP",
            ),
            (
                r#"{"postgres": "postgres://a:s3cret@h1,h2/shop", "channel": "a"}"#,
                "without parameters",
            ),
            (
                r#"{"postgres": "postgres://h/shop?sslmode=disable", "channel": "a"}"#,
                "without parameters",
            ),
            (
                r#"{"postgres": "postgres://h/", "channel": "a"}"#,
                "host[:port]/database",
            ),
            (
                r#"{"postgres": "mysql://h/shop", "channel": "a"}"#,
                "is not postgres://",
            ),
            (
                r#"{"postgres": "postgres://h:0/shop", "channel": "a"}"#,
                "is not postgres://",
            ),
            (
                r#"{"postgres": "postgres://h:+5432/shop", "channel": "a"}"#,
                "is not postgres://",
            ),
            (
                r#"{"postgres": "postgres://[::1]junk/shop", "channel": "a"}"#,
                "is not postgres://",
            ),
            (
                r#"{"postgres": "postgres://h/sh%0Aop", "channel": "a"}"#,
                "is not postgres://",
            ),
            (
                r#"{"postgres": "postgres://u:s3cret@h/shop"}"#,
                "name the `channel`",
            ),
            (
                r#"{"postgres": "postgres://h/shop", "channel": "Orders"}"#,
                "lowercase identifier",
            ),
            (
                r#"{"postgres": "postgres://h/shop", "channel": "a; drop"}"#,
                "lowercase identifier",
            ),
            (
                r#"{"postgres": "postgres://h/shop", "channel": "a", "cron": "@hourly"}"#,
                "one source",
            ),
            (
                r#"{"cron": "@hourly", "channel": "a"}"#,
                "`channel` is for PostgreSQL",
            ),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(
                error.contains(expected),
                "`{error}` should mention `{expected}`"
            );
            assert!(!error.contains("s3cret"), "{error}");
        }

        let scope = TriggerScope {
            postgres_hosts: vec!["db.internal".into(), "10.0.0.7:6432".into()],
            ..TriggerScope::default()
        };
        assert_eq!(scope.check("team-a", &trigger), Ok(()));
        for (url, listed) in [
            ("postgres://10.0.0.7:6432/x", true),
            ("postgres://10.0.0.7/x", false),
            ("postgres://127.0.0.1/x", false),
            ("postgres://db.internal.evil/x", false),
        ] {
            let trigger = parse(&format!(r#"{{"postgres": "{url}", "channel": "a"}}"#)).unwrap();
            assert_eq!(scope.check("team-a", &trigger).is_ok(), listed, "{url}");
        }
        let error = TriggerScope::default()
            .check("team-a", &trigger)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--postgres-hosts` (it lists none)"),
            "{error}"
        );
        let bad = TriggerScope {
            postgres_hosts: vec!["/var/run/postgresql".into()],
            ..TriggerScope::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn derived_broker_names_tell_namespaces_apart() {
        assert_ne!(default_consumer("a-b", "c"), default_consumer("a", "b-c"));
        assert_ne!(mqtt_client_id("a-b", "c", 0), mqtt_client_id("a", "b-c", 0));
        assert!(owns_name("a-b", &default_consumer("a-b", "c")));
        assert!(!owns_name("a", &default_consumer("a-b", "c")));
        assert!(!owns_name("a-b", &default_consumer("a", "b-c")));
    }

    #[test]
    fn broker_triggers_check_subjects_and_topics() {
        let parse = |json: &str| {
            serde_json::from_str::<TriggerDeclaration>(json)
                .map_err(|e| e.to_string())
                .and_then(|declaration| Trigger::try_from(declaration).map_err(|e| e.to_string()))
        };
        for good in [
            r#"{"nats": "orders.created"}"#,
            r#"{"nats": "orders.*.eu", "queue_group": "workers"}"#,
            r#"{"nats": "orders.>"}"#,
            r#"{"mqtt": "sensors/+/temp"}"#,
            r#"{"mqtt": "sensors/#"}"#,
            r#"{"redis_stream": "orders:eu"}"#,
            r#"{"amqp": "orders.eu"}"#,
        ] {
            assert!(parse(good).is_ok(), "{good}: {:?}", parse(good));
        }
        for (bad, expected) in [
            (r#"{"nats": "orders..x"}"#, "trigger nats \"orders..x\""),
            (r#"{"nats": "a.>.b"}"#, "not a NATS subject"),
            (r#"{"nats": "a b"}"#, "not a NATS subject"),
            (
                r#"{"nats": "a", "nats_consumer": "c"}"#,
                "needs `nats_stream`",
            ),
            (r#"{"mqtt": "a/#/b"}"#, "trigger mqtt \"a/#/b\""),
            (r#"{"mqtt": "a+/b"}"#, "not an MQTT topic filter"),
            (r#"{"cron": "@hourly", "mqtt": "a"}"#, "one source"),
            (r#"{"cron": "@hourly", "queue_group": "a"}"#, "one source"),
            (r#"{"redis_stream": "a b"}"#, "trigger redis stream \"a b\""),
            (r#"{"redis_stream": ""}"#, "1 to 256 bytes"),
            (r#"{"redis_stream": "a", "mqtt": "b"}"#, "one source"),
            (r#"{"amqp": "amq.direct"}"#, "trigger amqp \"amq.direct\""),
            (r#"{"amqp": "a", "redis_stream": "b"}"#, "one source"),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(
                error.contains(expected),
                "`{error}` should mention `{expected}`"
            );
        }
    }
}
