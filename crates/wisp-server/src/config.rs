//! The node's configuration: one typed struct, validated before any port is bound.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The default address: loopback only, like `wasmtime serve` and `spin up`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The web UI's default address: beside the API's, on a port of its own, so
/// that functions' pages (served on the API's port) are another origin.
pub const DEFAULT_UI_LISTEN: &str = "127.0.0.1:8081";
/// The default bound on a request body (a function may set a lower one).
pub const DEFAULT_MAX_BODY: u64 = 32 << 20;
/// How long reading an invocation's request body may take, by default: a
/// full 32 MiB body at about 1 MiB/s. A slower body holds a concurrency
/// slot and its buffer for no more than this.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The default bound on an uploaded artifact.
pub const DEFAULT_MAX_ARTIFACT: u64 = 512 << 20;
/// The default number of WebAssembly instances that may exist at once.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;
/// Async calls that run at once across the node, by default.
pub const DEFAULT_ASYNC_WORKERS: u32 = 32;
/// The NATS server that `nats` triggers subscribe to, by default.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// The MQTT broker that `mqtt` triggers subscribe to, by default.
pub const DEFAULT_MQTT_URL: &str = "mqtt://127.0.0.1:1883";
/// The Redis server that `redis_stream` triggers read from, by default.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The AMQP broker that `amqp` triggers consume from, by default: a local
/// RabbitMQ's default user and virtual host.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Log lines (and, apart, call records) kept per function, by default.
pub const DEFAULT_CALL_LOG_RETENTION: u32 = 10_000;
/// How long a stopping node lets requests in flight finish, by default.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// How long an artifact that no function uses is kept after it was uploaded
/// (or its last function went), by default: long enough for any deploy to
/// follow its upload.
pub const DEFAULT_ARTIFACT_GRACE_PERIOD: Duration = Duration::from_secs(3600);
/// Async calls one namespace may have queued or running, by default.
pub const DEFAULT_NAMESPACE_MAX_QUEUED_CALLS: u32 = 10_000;
/// Bytes of async calls (requests as stored) one namespace may have queued or running, by default.
pub const DEFAULT_NAMESPACE_MAX_QUEUED_BYTES: u64 = 1 << 30;
/// Bytes of uploaded artifacts that none of its functions uses one
/// namespace's tokens may hold, by default.
pub const DEFAULT_NAMESPACE_MAX_UNUSED_UPLOAD_BYTES: u64 = 1 << 30;
/// Bytes every namespace's key-value stores hold together at most, by default.
pub const DEFAULT_KV_MAX_BYTES: u64 = 1 << 30;

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where the web UI listens (another port: another origin than the
    /// functions' pages); `None` serves no UI.
    pub ui_listen: Option<SocketAddr>,
    /// Where state lives.
    pub data_dir: PathBuf,
    /// The admin token; generated and kept in the data directory when absent.
    pub admin_token: Option<String>,
    /// Bound on a request body, unless a function sets a lower one (it may not set a higher one).
    pub max_body_size: u64,
    /// How long reading an invocation's request body may take, from its
    /// first byte to its last; a slower client gets 408.
    pub body_read_timeout: Duration,
    /// Bound on an uploaded artifact.
    pub max_artifact_size: u64,
    /// WebAssembly instances that may exist at once.
    pub max_instances: u32,
    /// Concurrent invocations of one function that sets no `max_concurrency`:
    /// by default half the instance pool, so one function's spike leaves
    /// room for the others.
    pub function_max_concurrency: u32,
    /// Concurrent invocations across one namespace's functions, if bounded.
    pub namespace_max_concurrency: Option<u32>,
    /// How long a stopping node lets requests in flight finish.
    pub grace_period: Duration,
    /// Async calls (and triggered events) that run at once across the node.
    pub async_workers: u32,
    /// The NATS server of `nats` triggers; connected only when a function declares one.
    pub nats_url: String,
    /// The MQTT broker of `mqtt` triggers (`mqtt://host:port`); connected only when a function declares one.
    pub mqtt_url: String,
    /// The Redis server of `redis_stream` triggers; connected only when a function declares one.
    pub redis_url: String,
    /// The AMQP broker of `amqp` triggers; connected only when a function declares one.
    pub amqp_url: String,
    /// Where namespaces' broker triggers may subscribe (`{namespace}.` for
    /// NATS, `{namespace}/` for MQTT by default). Only the node's admin token
    /// may deploy a trigger outside its namespace's prefix.
    pub trigger_scope: wisp_core::events::TriggerScope,
    /// Log lines, and call records, kept per function; the oldest go first.
    pub call_log_retention: u32,
    /// Whether calls are traced, logged and counted in metrics (on unless turned off).
    pub telemetry: bool,
    /// An OTLP/HTTP collector (`http://host:4318`) that spans are exported to.
    pub otlp_endpoint: Option<String>,
    /// Whether process functions run in the sandbox (on unless turned off).
    pub sandbox: bool,
    /// How long a client may take to send a request's head.
    pub header_read_timeout: Duration,
    /// How long an artifact no function uses is kept after its upload (or
    /// after its last function went) before it is collected.
    pub artifact_grace_period: Duration,
    /// A token that may read `/metrics` (and nothing else). When set,
    /// `/metrics` needs it or the admin token; when not, it is open.
    pub metrics_token: Option<String>,
    /// Address ranges functions and callbacks may reach although the node's
    /// egress policy denies them (loopback, private, link-local...).
    pub allow_egress: Vec<wisp_core::egress::Cidr>,
    /// Async calls a namespace may have queued or running, unless its quota says otherwise.
    pub namespace_max_queued_calls: u32,
    /// Bytes of async calls a namespace may have queued or running, unless its quota says otherwise.
    pub namespace_max_queued_bytes: u64,
    /// Bytes of uploaded artifacts none of its functions uses a namespace's
    /// tokens may hold, unless its `max_artifact_bytes` says otherwise.
    pub namespace_max_unused_upload_bytes: u64,
    /// Bytes every namespace's key-value stores hold together at most (on
    /// this node, or in the cluster's bucket).
    pub kv_max_bytes: u64,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The admin token is too short to be a secret.
    #[error("the admin token must be at least 16 characters")]
    WeakToken,
    /// The web UI would share the API's address, and so its origin.
    #[error(
        "the web UI must listen on another address than the API ({0}): functions' pages \
         must not share its origin"
    )]
    SharedUiAddress(SocketAddr),
    /// The metrics token is too short to be a secret, or is the admin token.
    #[error("the metrics token must be at least 16 characters and differ from the admin token")]
    WeakMetricsToken,
    /// A limit is zero.
    #[error("{0} must be more than zero")]
    Zero(&'static str),
    /// A broker URL does not parse.
    #[error("{0}")]
    BrokerUrl(String),
    /// The OTLP endpoint is not an http:// URL.
    #[error("{0}")]
    OtlpEndpoint(String),
    /// A trigger prefix pattern cannot confine namespaces.
    #[error("{0}")]
    TriggerPrefix(String),
}

impl Config {
    /// A configuration with defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("the default address parses"),
            ui_listen: Some(
                DEFAULT_UI_LISTEN
                    .parse()
                    .expect("the default address parses"),
            ),
            data_dir,
            admin_token: None,
            max_body_size: DEFAULT_MAX_BODY,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_artifact_size: DEFAULT_MAX_ARTIFACT,
            max_instances: DEFAULT_MAX_INSTANCES,
            function_max_concurrency: DEFAULT_MAX_INSTANCES / 2,
            namespace_max_concurrency: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            async_workers: DEFAULT_ASYNC_WORKERS,
            nats_url: DEFAULT_NATS_URL.to_owned(),
            mqtt_url: DEFAULT_MQTT_URL.to_owned(),
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            amqp_url: DEFAULT_AMQP_URL.to_owned(),
            trigger_scope: wisp_core::events::TriggerScope::default(),
            call_log_retention: DEFAULT_CALL_LOG_RETENTION,
            telemetry: true,
            otlp_endpoint: None,
            sandbox: true,
            header_read_timeout: crate::DEFAULT_HEADER_READ_TIMEOUT,
            artifact_grace_period: DEFAULT_ARTIFACT_GRACE_PERIOD,
            metrics_token: None,
            allow_egress: Vec::new(),
            namespace_max_queued_calls: DEFAULT_NAMESPACE_MAX_QUEUED_CALLS,
            namespace_max_queued_bytes: DEFAULT_NAMESPACE_MAX_QUEUED_BYTES,
            namespace_max_unused_upload_bytes: DEFAULT_NAMESPACE_MAX_UNUSED_UPLOAD_BYTES,
            kv_max_bytes: DEFAULT_KV_MAX_BYTES,
        }
    }

    /// Checks the configuration before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self
            .admin_token
            .as_ref()
            .is_some_and(|token| token.len() < 16)
        {
            return Err(ConfigError::WeakToken);
        }
        if let Some(token) = &self.metrics_token
            && (token.len() < 16 || self.admin_token.as_ref() == Some(token))
        {
            return Err(ConfigError::WeakMetricsToken);
        }
        if self.ui_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(ConfigError::SharedUiAddress(self.listen));
        }
        if self.artifact_grace_period.is_zero() {
            return Err(ConfigError::Zero("the artifact grace period"));
        }
        if self.body_read_timeout.is_zero() {
            return Err(ConfigError::Zero("the body read timeout"));
        }
        for (value, name) in [
            (self.max_body_size, "the body size limit"),
            (self.max_artifact_size, "the artifact size limit"),
            (u64::from(self.max_instances), "the instance limit"),
            (
                u64::from(self.function_max_concurrency),
                "the per-function concurrency limit",
            ),
            (
                u64::from(self.namespace_max_concurrency.unwrap_or(1)),
                "the per-namespace concurrency limit",
            ),
            (u64::from(self.async_workers), "the number of async workers"),
            (
                u64::from(self.call_log_retention),
                "the call log's retention",
            ),
            (
                u64::from(self.namespace_max_queued_calls),
                "the per-namespace queued call limit",
            ),
            (
                self.namespace_max_queued_bytes,
                "the per-namespace queued bytes limit",
            ),
            (
                self.namespace_max_unused_upload_bytes,
                "the per-namespace unused upload limit",
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        mqtt_address(&self.mqtt_url).map_err(ConfigError::BrokerUrl)?;
        redis::Client::open(self.redis_url.as_str()).map_err(|error| {
            ConfigError::BrokerUrl(format!(
                "the Redis URL `{}`: {error}",
                redacted(&self.redis_url)
            ))
        })?;
        self.amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|error| ConfigError::BrokerUrl(format!("the AMQP URL: {error}")))?;
        self.trigger_scope
            .validate()
            .map_err(ConfigError::TriggerPrefix)?;
        if let Some(endpoint) = &self.otlp_endpoint {
            crate::telemetry::otlp::traces_url(endpoint).map_err(ConfigError::OtlpEndpoint)?;
        }
        Ok(())
    }
}

/// The host and port of an `mqtt://host[:port]` URL (port 1883 when absent).
pub(crate) fn mqtt_address(url: &str) -> Result<(String, u16), String> {
    let invalid = || format!("the MQTT URL `{url}` is not mqtt://host[:port]");
    let uri: axum::http::Uri = url.parse().map_err(|_| invalid())?;
    if uri.scheme_str() != Some("mqtt") {
        return Err(invalid());
    }
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or_else(invalid)?;
    Ok((host.to_owned(), uri.port_u16().unwrap_or(1883)))
}

/// A broker's URL as statuses and logs show it: `scheme://host:port`,
/// without the credentials and options an operator may have put in it.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "the broker".to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}
