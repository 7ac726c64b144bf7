//! The wisp node: one typed [`Config`], the state it serves from
//! ([`node::Node`]), the HTTP [`router`] for invocation and administration,
//! [`dispatch`], the one place an invocation's outcome becomes a status, and
//! [`events`], the durable queue of async calls and the triggers feeding it,
//! [`telemetry`]: metrics, the call log, traces and usage; [`tenants`]:
//! namespaces, their quotas and tokens, checked by [`auth`]; [`secrets`]
//! handed to the functions that declare them; and the web UI.
//!
//! The invocation path reads only memory: deployed functions and tenants'
//! tokens live in in-memory tables that every change writes through to the
//! store first.

mod admin;
mod admission;
mod auth;
mod config;
mod connection;
mod dispatch;
mod error;
mod events;
mod invoke;
mod node;
mod secrets;
mod telemetry;
mod tenants;
mod ui;

use std::{future::Future, sync::Arc};

use axum::{Router, middleware, routing::get};

pub use config::{
    Config, ConfigError, DEFAULT_ASYNC_WORKERS, DEFAULT_CALL_LOG_RETENTION, DEFAULT_GRACE_PERIOD,
    DEFAULT_LISTEN, DEFAULT_MAX_INSTANCES, DEFAULT_MQTT_URL, DEFAULT_NATS_URL,
};
pub use error::ApiError;
pub use node::{Node, StartError};

/// The node's HTTP API: invocation routes, `/system/*` behind a token
/// (each route checks what the token may do), `/healthz`.
pub fn router(node: Arc<Node>) -> Router {
    let system = admin::routes()
        .merge(events::routes::system_routes())
        .merge(telemetry::routes::system_routes())
        .merge(tenants::routes::system_routes())
        .merge(secrets::system_routes())
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            auth::authenticate,
        ));
    Router::new()
        .nest("/system", system)
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .merge(telemetry::routes::public_routes())
        .merge(ui::routes())
        .merge(events::routes::invoke_routes())
        .merge(invoke::routes())
        .layer(middleware::from_fn(dispatch::call_id))
        .layer(middleware::from_fn(connection::close_if_body_unread))
        .with_state(node)
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

/// Serves `router` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (up to the grace period) and stops every
/// replica. Connections are HTTP/1.1 with bounded heads: a client gets
/// [`Config::header_read_timeout`] to send each request's head, and heads
/// over [`MAX_HEAD_SIZE`] (or over hyper's 100 headers) are refused, so slow
/// or huge requests cannot pin the gateway.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    node.start_events().await;
    let grace = node.config.grace_period;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(node.config.header_read_timeout)
        .max_header_size(MAX_HEAD_SIZE);
    let service = hyper_util::service::TowerToHyperService::new(router(node.clone()));
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!("accept: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
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
    drop(listener);
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!(
            "the grace period of {}s is over; stopping with requests still in flight",
            grace.as_secs()
        ),
    }
    node.drain().await;
    Ok(())
}
