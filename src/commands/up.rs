//! `wisp up`: start a node with embedded state.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::Args;
use wisp_server::Config;

/// Start a node: serve functions and the admin API.
///
/// Example: wisp up --listen 0.0.0.0:8080 --data-dir /var/lib/wisp
#[derive(Args)]
pub struct Up {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "WISP_LISTEN", default_value = wisp_server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where state lives [default: $XDG_DATA_HOME/wisp or ~/.local/share/wisp].
    #[arg(long, env = "WISP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The admin token [default: generated on first start, kept in the data directory].
    #[arg(long, env = "WISP_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Bound on a request body; a function may set a lower one, not a higher one.
    #[arg(long, default_value = "32MiB")]
    max_body_size: wisp_core::ByteSize,
    /// WebAssembly instances that may exist at once, across functions.
    #[arg(long, default_value_t = wisp_server::DEFAULT_MAX_INSTANCES)]
    max_instances: u32,
    /// Concurrent invocations of a function that sets no max_concurrency [default: half of --max-instances].
    #[arg(long)]
    function_max_concurrency: Option<u32>,
    /// Concurrent invocations across one namespace's functions [default: unbounded].
    #[arg(long)]
    namespace_max_concurrency: Option<u32>,
    /// Async calls and triggered events that run at once, across functions.
    #[arg(long, default_value_t = wisp_server::DEFAULT_ASYNC_WORKERS)]
    async_workers: u32,
    /// The NATS server of `nats` triggers.
    #[arg(long, env = "WISP_NATS_URL", default_value = wisp_server::DEFAULT_NATS_URL)]
    nats_url: String,
    /// The MQTT broker of `mqtt` triggers, as mqtt://host:port.
    #[arg(long, env = "WISP_MQTT_URL", default_value = wisp_server::DEFAULT_MQTT_URL)]
    mqtt_url: String,
    /// The subjects a namespace's NATS triggers may subscribe under: `{namespace}`
    /// stands for its name, as one whole token (the node's admin token may subscribe anywhere).
    #[arg(long, env = "WISP_NATS_PREFIX", default_value = wisp_core::events::NAMESPACE_PLACEHOLDER)]
    nats_prefix: String,
    /// The topics a namespace's MQTT triggers may subscribe under: `{namespace}`
    /// stands for its name, as one whole level (the node's admin token may subscribe anywhere).
    #[arg(long, env = "WISP_MQTT_PREFIX", default_value = wisp_core::events::NAMESPACE_PLACEHOLDER)]
    mqtt_prefix: String,
    /// The Redis server of `redis_stream` triggers.
    #[arg(long, env = "WISP_REDIS_URL", default_value = wisp_server::DEFAULT_REDIS_URL)]
    redis_url: String,
    /// The streams a namespace's Redis triggers may read under: `{namespace}`
    /// stands for its name, as one whole `:`-separated part (the node's admin token may read any).
    #[arg(long, env = "WISP_REDIS_PREFIX", default_value = wisp_core::events::NAMESPACE_PLACEHOLDER)]
    redis_prefix: String,
    /// The AMQP broker (RabbitMQ) of `amqp` triggers.
    #[arg(long, env = "WISP_AMQP_URL", default_value = wisp_server::DEFAULT_AMQP_URL)]
    amqp_url: String,
    /// The queues a namespace's AMQP triggers may consume under: `{namespace}`
    /// stands for its name, as one whole `.`-separated word (the node's admin token may consume any).
    #[arg(long, env = "WISP_AMQP_PREFIX", default_value = wisp_core::events::NAMESPACE_PLACEHOLDER)]
    amqp_prefix: String,
    /// The PostgreSQL servers namespaces' `postgres` triggers may connect to,
    /// as host[:port] (the node's admin token may name any).
    #[arg(
        long,
        env = "WISP_POSTGRES_HOSTS",
        value_delimiter = ',',
        value_name = "HOST[:PORT]"
    )]
    postgres_hosts: Vec<String>,
    /// Log lines, and call records, kept per function (the oldest go first).
    #[arg(long, default_value_t = wisp_server::DEFAULT_CALL_LOG_RETENTION)]
    call_log_retention: u32,
    /// Export call spans over OTLP/HTTP to this collector (http://host:4318).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Turn off tracing, the call log and per-call metrics (for the last few percent of throughput).
    #[arg(long)]
    no_telemetry: bool,
    /// Run process functions without the sandbox (for machines without bubblewrap or user namespaces).
    #[arg(long)]
    no_sandbox: bool,
    /// Let functions and callbacks reach an address range the node denies by
    /// default (loopback, private, link-local, the node itself), as
    /// 127.0.0.0/8 or fd00::/8; repeatable, or comma-separated in the variable.
    #[arg(
        long,
        env = "WISP_ALLOW_EGRESS",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    allow_egress: Vec<wisp_core::egress::Cidr>,
    /// Async calls a namespace may have queued or running, unless its quota says otherwise.
    #[arg(long, default_value_t = wisp_server::DEFAULT_NAMESPACE_MAX_QUEUED_CALLS)]
    namespace_max_queued_calls: u32,
    /// Bytes of async calls a namespace may have queued or running, unless its quota says otherwise.
    #[arg(long, default_value = "1GiB")]
    namespace_max_queued_bytes: wisp_core::ByteSize,
    /// Bytes of uploaded artifacts that none of its functions uses yet a
    /// namespace's tokens may hold, unless its quota (maxArtifactBytes)
    /// says otherwise; the node's admin token is not held to it.
    #[arg(long, default_value = "1GiB")]
    namespace_max_unused_upload_bytes: wisp_core::ByteSize,
    /// Bytes every namespace's key-value stores hold together at most: on
    /// this node, or in a cluster's JetStream bucket. Writes past it fail
    /// (507); removals still work.
    #[arg(long, default_value = "1GiB")]
    kv_max_bytes: wisp_core::ByteSize,
    /// How long a client may take to send a request's head before it is disconnected.
    #[arg(long, default_value = "10s")]
    header_read_timeout: wisp_core::HumanDuration,
    /// How long a client may take to send an invocation's request body (408 after that).
    #[arg(long, default_value = "30s")]
    body_read_timeout: wisp_core::HumanDuration,
    /// How long a stop (SIGTERM) lets requests in flight finish.
    #[arg(long, default_value = "30s")]
    grace_period: wisp_core::HumanDuration,
    /// Where the web UI listens: another port than --listen, so functions'
    /// pages cannot read the UI's token [default: --listen's host, its port + 1
    /// (127.0.0.1:8081), or a free port when --listen's is 0].
    #[arg(long, env = "WISP_UI_LISTEN", conflicts_with = "no_ui")]
    ui_listen: Option<SocketAddr>,
    /// Serve no web UI.
    #[arg(long)]
    no_ui: bool,
    /// A token that reads /metrics (and nothing else); once set, /metrics
    /// needs it or the admin token [default: /metrics needs no token].
    #[arg(long, env = "WISP_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// How long an uploaded artifact that no function uses (or one whose last
    /// function went) is kept before it is collected.
    #[arg(long, default_value = "1h")]
    artifact_grace_period: wisp_core::HumanDuration,
    /// Join a cluster: keep functions, namespaces, tokens, secrets and
    /// artifacts in NATS JetStream at these servers (comma-separated
    /// nats://host:port), shared with every node started with the same list.
    #[arg(
        long,
        env = "WISP_CLUSTER",
        value_name = "URLS",
        requires = "cluster_key_file"
    )]
    cluster: Option<String>,
    /// The key that seals secrets in the cluster: a file of 64 hex digits
    /// (`openssl rand -hex 32`), the same on every node.
    #[arg(long, env = "WISP_CLUSTER_KEY_FILE", value_name = "FILE")]
    cluster_key_file: Option<PathBuf>,
    /// The URL other nodes and `wisp nodes` know this node by [default: the
    /// address it listens on, which says little when that is 0.0.0.0].
    #[arg(long, env = "WISP_ADVERTISE_URL", value_name = "URL")]
    advertise_url: Option<String>,
    /// Copies JetStream keeps of the cluster's state: 3 on a cluster of three NATS servers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    cluster_replicas: u8,
    /// Print the URL, the token and the UI's URL as one JSON object.
    #[arg(long)]
    json: bool,
}

impl Up {
    pub fn execute(self) -> anyhow::Result<()> {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("WISP_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        let mut config = Config::new(self.data_dir.unwrap_or_else(super::default_data_dir));
        config.listen = self.listen;
        config.ui_listen = match (self.no_ui, self.ui_listen) {
            (true, _) => None,
            (false, Some(address)) => Some(address),
            (false, None) => Some(beside(self.listen)),
        };
        config.metrics_token = self.metrics_token;
        config.artifact_grace_period = self.artifact_grace_period.0;
        config.admin_token = self.admin_token;
        config.max_body_size = self.max_body_size.0;
        config.max_instances = self.max_instances;
        config.function_max_concurrency = self
            .function_max_concurrency
            .unwrap_or(self.max_instances / 2)
            .max(1);
        config.namespace_max_concurrency = self.namespace_max_concurrency;
        config.grace_period = self.grace_period.0;
        config.async_workers = self.async_workers;
        config.nats_url = self.nats_url;
        config.mqtt_url = self.mqtt_url;
        config.redis_url = self.redis_url;
        config.amqp_url = self.amqp_url;
        config.trigger_scope = wisp_core::events::TriggerScope {
            nats: self.nats_prefix,
            mqtt: self.mqtt_prefix,
            redis: self.redis_prefix,
            amqp: self.amqp_prefix,
            postgres_hosts: self.postgres_hosts,
        };
        config.call_log_retention = self.call_log_retention;
        config.telemetry = !self.no_telemetry;
        config.sandbox = !self.no_sandbox;
        config.header_read_timeout = self.header_read_timeout.0;
        config.body_read_timeout = self.body_read_timeout.0;
        config.otlp_endpoint = self.otlp_endpoint;
        config.allow_egress = self.allow_egress;
        config.namespace_max_queued_calls = self.namespace_max_queued_calls;
        config.namespace_max_queued_bytes = self.namespace_max_queued_bytes.0;
        config.namespace_max_unused_upload_bytes = self.namespace_max_unused_upload_bytes.0;
        config.kv_max_bytes = self.kv_max_bytes.0;
        config.validate()?;

        let runtime = wisp_server::runtime().context("start the async runtime")?;
        runtime.block_on(async move {
            let mut config = config;
            let data_dir = config.data_dir.clone();
            let (listen, ui_listen) = (config.listen, config.ui_listen);
            let cluster = match (&self.cluster, &self.cluster_key_file) {
                (Some(urls), Some(key_file)) => {
                    let cluster = wisp_cluster::Cluster::connect(wisp_cluster::Config {
                        urls: urls.clone(),
                        replicas: self.cluster_replicas.into(),
                        key: wisp_cluster::SealingKey::from_file(key_file)?,
                        key_value_max_bytes: self.kv_max_bytes.0,
                    })
                    .await?;
                    if config.admin_token.is_none() {
                        config.admin_token =
                            Some(cluster.admin_token(wisp_server::new_admin_token).await?);
                    }
                    Some(std::sync::Arc::new(cluster))
                }
                _ => None,
            };
            let node = tokio::task::spawn_blocking(move || match cluster {
                Some(cluster) => wisp_server::Node::start_in_cluster(config, cluster),
                None => wisp_server::Node::start(config),
            })
            .await?
            .with_context(|| format!("start the node in {}", data_dir.display()))?;
            if let Some(url) = self.advertise_url.clone() {
                node.advertise(url);
            }
            wisp_server::join(&node)
                .await
                .context("load the cluster's functions")?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            let address = listener.local_addr()?;
            let url = format!("http://{address}");
            let ui = match ui_listen {
                Some(ui_listen) => Some(
                    tokio::net::TcpListener::bind(ui_listen)
                        .await
                        .with_context(|| {
                            format!(
                                "listen on {ui_listen} for the web UI \
                                 (choose another address with --ui-listen, or --no-ui)"
                            )
                        })?,
                ),
                None => None,
            };
            let ui_url = ui
                .as_ref()
                .map(|ui| {
                    ui.local_addr()
                        .map(|address| format!("http://{address}/ui/"))
                })
                .transpose()?;
            if self.json {
                println!(
                    "{}",
                    serde_json::json!({ "url": url, "token": node.admin_token(), "ui": ui_url })
                );
            } else {
                // Before the lines scripts wait for, so they have read it too.
                if let Some(ui_url) = &ui_url {
                    println!("web UI on {ui_url}");
                }
                println!("listening on {url}");
                println!("admin token: {}", node.admin_token());
            }
            wisp_server::serve(node, listener, ui, shutdown_signal())
                .await
                .context("serve")
        })
    }
}

/// The web UI's default address: `listen`'s host with the next port, or a
/// free port when `listen` asks for one.
fn beside(listen: SocketAddr) -> SocketAddr {
    let port = match listen.port() {
        0 => 0,
        port => port.wrapping_add(1),
    };
    SocketAddr::new(listen.ip(), port)
}

/// Completes on SIGINT or SIGTERM; a second signal during the drain exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight (signal again to stop now)");
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        std::process::exit(130);
    });
}
