//! The wisp node: one typed [`Config`], the state it serves from
//! ([`node::Node`]), the HTTP [`router`] for invocation and administration,
//! [`dispatch`], the one place an invocation's outcome becomes a status, and
//! [`events`], the durable queue of async calls and the triggers feeding it,
//! [`telemetry`]: metrics, the call log, traces and usage; and the web UI.
//!
//! The invocation path reads only memory: deployed functions live in an
//! in-memory table that every deploy writes through to the store first.

mod admin;
mod admission;
mod config;
mod dispatch;
mod error;
mod events;
mod invoke;
mod node;
mod telemetry;
mod ui;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{Router, middleware, routing::get};

pub use config::{
    Config, ConfigError, DEFAULT_ASYNC_WORKERS, DEFAULT_CALL_LOG_RETENTION, DEFAULT_GRACE_PERIOD,
    DEFAULT_LISTEN, DEFAULT_MAX_INSTANCES, DEFAULT_MQTT_URL, DEFAULT_NATS_URL,
};
pub use error::ApiError;
pub use node::{Node, StartError};

/// The node's HTTP API: invocation routes, `/system/*` behind the admin token, `/healthz`.
pub fn router(node: Arc<Node>) -> Router {
    let system = admin::routes()
        .merge(events::routes::system_routes())
        .merge(telemetry::routes::system_routes())
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            admin::require_admin,
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

/// Serves `router` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (up to the grace period) and stops every
/// replica.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // A streamed response is a head and body chunks written separately;
    // without TCP_NODELAY, Nagle's algorithm and delayed ACKs add 40 ms to each.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {error}");
        }
    });
    node.start_events().await;
    let grace = node.config.grace_period;
    let app = router(node.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping.send(());
    });
    tokio::select! {
        served = server => served?,
        () = async {
            let _ = stopped.await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(
            "the grace period of {}s is over; stopping with requests still in flight",
            grace.as_secs()
        ),
    }
    node.drain().await;
    Ok(())
}
