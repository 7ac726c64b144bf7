//! The web UI: three static files embedded in the binary (no CDN, no build
//! step), which log in with a token and use the node's own API.
//!
//! The UI keeps its token in the browser's storage, which belongs to an
//! origin (scheme, host and port). Functions' pages are served by the node
//! too, and a page on the UI's origin could read that storage, or register a
//! service worker that sees every request the UI makes. So the UI has a
//! listener of its own (`wisp up --ui-listen`, [`crate::ui_router`]): a
//! function's page, on the node's address, is another origin and reads
//! nothing of the UI's. On the UI's listener, function answers are sandboxed
//! ([`sandbox`]), and the UI's own pages may not be framed.

use std::sync::Arc;

use axum::{
    Router,
    extract::Request,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{ApiError, node::Node};

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// What the UI's own files may do: load only themselves and talk only to
/// their own origin (inline styles aside: the trace view indents with them),
/// and never be framed, so no page can overlay them or script them.
const UI_POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

/// `/ui/` and its assets on the UI's listener, served without a token (the
/// page asks for one).
pub(crate) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/ui",
            get(|| async { (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/ui/")]) }),
        )
        .route("/ui/", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/ui/app.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, UI_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// `/ui` and everything under it on the node's own listener: a permanent
/// redirect to the same path on the UI's listener (`ui_port`, on the host
/// the browser asked for), or a 404 when the node serves no UI.
pub(crate) fn redirect(ui_port: Option<u16>) -> Router<Arc<Node>> {
    let handler = move |headers: HeaderMap, uri: Uri| async move {
        let Some(port) = ui_port else {
            return ApiError::not_found(
                "this node serves no web UI: start it without --no-ui to get one",
            )
            .into_response();
        };
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse::<axum::http::uri::Authority>().ok())
            .map_or_else(|| "127.0.0.1".to_owned(), |host| host.host().to_owned());
        let location = format!("http://{host}:{port}{}", uri.path());
        match HeaderValue::try_from(location) {
            Ok(location) => (
                StatusCode::PERMANENT_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response(),
            Err(_) => ApiError::bad_request("the Host header is not usable").into_response(),
        }
    };
    Router::new()
        .route("/ui", get(handler))
        .route("/ui/", get(handler))
        .route("/ui/{*rest}", get(handler))
}

/// Sandboxes every answer on the UI's listener but the UI's own files: a
/// function's page opened there gets an opaque origin and runs no script,
/// so it cannot reach the UI's storage. `fetch` from the UI reads such an
/// answer as usual.
pub(crate) async fn sandbox(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
