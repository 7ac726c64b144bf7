//! `wisp up`: start a node with embedded state.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::Args;
use wisp_server::Config;

/// Start a node: serve functions and the admin API.
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
    /// Bound on a request body, unless a function sets its own.
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
    /// How long a client may take to send a request's head before it is disconnected.
    #[arg(long, default_value = "10s")]
    header_read_timeout: wisp_core::HumanDuration,
    /// How long a stop (SIGTERM) lets requests in flight finish.
    #[arg(long, default_value = "30s")]
    grace_period: wisp_core::HumanDuration,
    /// Print the URL and token as one JSON object.
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
        config.call_log_retention = self.call_log_retention;
        config.telemetry = !self.no_telemetry;
        config.sandbox = !self.no_sandbox;
        config.header_read_timeout = self.header_read_timeout.0;
        config.otlp_endpoint = self.otlp_endpoint;
        config.validate()?;

        let runtime = wisp_server::runtime().context("start the async runtime")?;
        runtime.block_on(async move {
            let data_dir = config.data_dir.clone();
            let listen = config.listen;
            let node = tokio::task::spawn_blocking(move || wisp_server::Node::start(config))
                .await?
                .with_context(|| format!("start the node in {}", data_dir.display()))?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            let address = listener.local_addr()?;
            let url = format!("http://{address}");
            if self.json {
                println!(
                    "{}",
                    serde_json::json!({ "url": url, "token": node.admin_token() })
                );
            } else {
                println!("listening on {url}");
                println!("admin token: {}", node.admin_token());
            }
            wisp_server::serve(node, listener, shutdown_signal())
                .await
                .context("serve")
        })
    }
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
