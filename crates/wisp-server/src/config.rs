//! The node's configuration: one typed struct, validated before any port is bound.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The default address: loopback only, like `wasmtime serve` and `spin up`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default bound on a request body (a function may set its own).
pub const DEFAULT_MAX_BODY: u64 = 32 << 20;
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
/// Log lines (and, apart, call records) kept per function, by default.
pub const DEFAULT_CALL_LOG_RETENTION: u32 = 10_000;
/// How long a stopping node lets requests in flight finish, by default.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where state lives.
    pub data_dir: PathBuf,
    /// The admin token; generated and kept in the data directory when absent.
    pub admin_token: Option<String>,
    /// Bound on a request body, unless a function sets its own.
    pub max_body_size: u64,
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
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The admin token is too short to be a secret.
    #[error("the admin token must be at least 16 characters")]
    WeakToken,
    /// A limit is zero.
    #[error("{0} must be more than zero")]
    Zero(&'static str),
    /// A broker URL does not parse.
    #[error("{0}")]
    BrokerUrl(String),
    /// The OTLP endpoint is not an http:// URL.
    #[error("{0}")]
    OtlpEndpoint(String),
}

impl Config {
    /// A configuration with defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("the default address parses"),
            data_dir,
            admin_token: None,
            max_body_size: DEFAULT_MAX_BODY,
            max_artifact_size: DEFAULT_MAX_ARTIFACT,
            max_instances: DEFAULT_MAX_INSTANCES,
            function_max_concurrency: DEFAULT_MAX_INSTANCES / 2,
            namespace_max_concurrency: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            async_workers: DEFAULT_ASYNC_WORKERS,
            nats_url: DEFAULT_NATS_URL.to_owned(),
            mqtt_url: DEFAULT_MQTT_URL.to_owned(),
            call_log_retention: DEFAULT_CALL_LOG_RETENTION,
            telemetry: true,
            otlp_endpoint: None,
            sandbox: true,
            header_read_timeout: crate::DEFAULT_HEADER_READ_TIMEOUT,
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
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        mqtt_address(&self.mqtt_url).map_err(ConfigError::BrokerUrl)?;
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
