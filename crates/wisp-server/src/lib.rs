//! The wisp node: one typed [`Config`], the state it serves from
//! ([`node::Node`]), the HTTP [`router`] for invocation and administration,
//! [`dispatch`], the one place an invocation's outcome becomes a status, and
//! [`events`], the durable queue of async calls and the triggers feeding it,
//! [`telemetry`]: metrics, the call log, traces and usage; [`tenants`]:
//! namespaces, their quotas and tokens, checked by [`auth`]; [`secrets`]
//! handed to the functions that declare them; and the web UI, on a listener
//! of its own ([`ui_router`]) so functions' pages cannot read its token.
//!
//! The invocation path reads only memory: deployed functions and tenants'
//! tokens live in in-memory tables that every change writes through to the
//! store first.

mod admin;
mod admission;
mod auth;
mod buckets;
mod cluster;
mod config;
mod connection;
mod dispatch;
mod error;
mod events;
mod invoke;
mod kv;
mod node;
mod openapi;
mod pipeline;
mod reads;
mod secrets;
mod shares;
mod telemetry;
mod tenants;
mod ui;

use std::{future::Future, sync::Arc};

use axum::{Router, middleware, routing::get};

pub use cluster::join;
pub use config::{
    Config, ConfigError, DEFAULT_AMQP_URL, DEFAULT_ARTIFACT_GRACE_PERIOD, DEFAULT_ASYNC_WORKERS,
    DEFAULT_CALL_LOG_RETENTION, DEFAULT_GRACE_PERIOD, DEFAULT_LISTEN, DEFAULT_MAX_INSTANCES,
    DEFAULT_MQTT_URL, DEFAULT_NAMESPACE_MAX_QUEUED_BYTES, DEFAULT_NAMESPACE_MAX_QUEUED_CALLS,
    DEFAULT_NAMESPACE_MAX_UNUSED_UPLOAD_BYTES, DEFAULT_NATS_URL, DEFAULT_REDIS_URL,
    DEFAULT_UI_LISTEN,
};
pub use error::ApiError;
pub use node::{Node, StartError, new_admin_token};

/// The node's HTTP API: invocation routes, `/system/*` behind a token
/// (each route checks what the token may do), `/healthz`, `/metrics`; and
/// `/ui/`, which sends the browser on to the web UI's own listener on
/// `ui_port` (a 404 when the node serves no UI).
pub fn router(node: Arc<Node>, ui_port: Option<u16>) -> Router {
    routes(&node)
        .merge(ui::redirect(ui_port))
        .layer(middleware::from_fn(dispatch::call_id))
        .layer(middleware::from_fn(connection::close_if_body_unread))
        .with_state(node)
}

/// The web UI's listener: the UI's files, and the same API and invocation
/// routes as the node's (the UI calls them on its own origin). A function's
/// page must never run on this origin, where the UI keeps its token: every
/// answer but the UI's own files carries `Content-Security-Policy: sandbox`,
/// which gives a page an origin of its own and runs none of its scripts.
pub fn ui_router(node: Arc<Node>) -> Router {
    routes(&node)
        .layer(middleware::from_fn(ui::sandbox))
        .merge(ui::routes())
        .layer(middleware::from_fn(dispatch::call_id))
        .layer(middleware::from_fn(connection::close_if_body_unread))
        .with_state(node)
}

/// Every route but the UI's, for both listeners.
fn routes(node: &Arc<Node>) -> Router<Arc<Node>> {
    let system = admin::routes()
        .merge(spanning_routes(node))
        .merge(tenants::routes::system_routes())
        .merge(secrets::system_routes())
        .merge(kv::system_routes())
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            auth::authenticate,
        ));
    Router::new()
        .nest("/system", system)
        .route("/healthz", get(healthz))
        .route("/system/openapi.json", get(openapi::document))
        .merge(telemetry::routes::public_routes())
        .merge(buckets::routes())
        .merge(events::routes::invoke_routes())
        .merge(invoke::routes())
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "node",
    summary = "Whether the node serves",
    security(()),
    responses((status = 200, body = Health))
)]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// The `/system` routes that answer from the whole cluster in cluster mode
/// (the async calls and the call log, which each node keeps for itself).
fn spanning_routes(node: &Arc<Node>) -> Router<Arc<Node>> {
    events::routes::system_routes()
        .merge(telemetry::routes::system_routes())
        .route_layer(middleware::from_fn_with_state(node.clone(), reads::span))
}

/// How many scheduler ticks a worker runs before it looks at timers and
/// sockets again. Tokio's default (61) assumes short polls; a guest yields only
/// every epoch tick, so with the default a core full of looping guests would
/// delay timeouts and new connections by hundreds of milliseconds.
const EVENT_INTERVAL: u32 = 4;

/// The async runtime a node runs on, tuned so busy guests cannot starve timers and I/O.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build()
}

/// How long a client may take to send a request's head (line and headers);
/// a slower one (slowloris) is disconnected. Also the longest a kept-alive
/// connection may sit idle.
pub const DEFAULT_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The largest request head accepted; a larger one is answered 431.
pub const MAX_HEAD_SIZE: usize = 64 << 10;

/// Serves [`router`] on `listener`, and [`ui_router`] on `ui` when given,
/// until `shutdown` completes, then lets in-flight requests finish (up to
/// the grace period) and stops every replica. Meanwhile, artifacts nothing
/// uses are collected once their grace period is over, and the node's own
/// addresses (which its egress policy denies) are read again every 30 s.
/// Connections are
/// HTTP/1.1 with bounded heads: a client gets
/// [`Config::header_read_timeout`] to send each request's head, and heads
/// over [`MAX_HEAD_SIZE`] (or over hyper's 100 headers) are refused, so slow
/// or huge requests cannot pin the gateway.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    ui: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    // Unless the node advertises a URL of its own.
    let _ = node
        .address
        .set(format!("http://{}", listener.local_addr()?));
    node.start_events().await;
    let collector = tokio::spawn(admin::collect_artifacts(node.clone()));
    let own_addresses = tokio::spawn(node::refresh_own_addresses(node.clone()));
    let grace = node.config.grace_period;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(node.config.header_read_timeout)
        .max_header_size(MAX_HEAD_SIZE);
    let ui_port = ui
        .as_ref()
        .map(|ui| ui.local_addr().map(|address| address.port()))
        .transpose()?;
    let service = hyper_util::service::TowerToHyperService::new(router(node.clone(), ui_port));
    let ui_service = hyper_util::service::TowerToHyperService::new(ui_router(node.clone()));
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (accepted, service) = tokio::select! {
            accepted = listener.accept() => (accepted, &service),
            accepted = accept(ui.as_ref()) => (accepted, &ui_service),
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, say: wait a little rather than spin.
                tracing::warn!("accept: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A streamed response is a head and body chunks written separately;
        // without TCP_NODELAY, Nagle's algorithm and delayed ACKs add 40 ms to each.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {error}");
        }
        let connection =
            connections.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("connection: {error}");
            }
        });
    }
    drop((listener, ui));
    node.telemetry.stop_following();
    collector.abort();
    own_addresses.abort();
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!(
            "the grace period of {}s is over; stopping with requests still in flight",
            grace.as_secs()
        ),
    }
    node.drain().await;
    cluster::leave(&node).await;
    Ok(())
}

/// The next connection on `listener`; never, when there is none.
async fn accept(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}
