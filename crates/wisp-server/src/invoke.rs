//! Invocation routes: `/function/{name}[/rest]`, `X-Function` on `/`, and
//! the functions' own top-level routes. Every route checks a private
//! function's token in one place, [`run`].

use std::sync::Arc;

use axum::{
    Extension, Router,
    extract::{Path, Request, State},
    response::{IntoResponse as _, Response},
    routing::any,
};

use crate::{
    ApiError, auth,
    dispatch::{Call, CallId, dispatch},
    node::{Deployed, Node},
};

/// The invocation routes; anything else falls through to function routes.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/function/{name}", any(by_name))
        .route("/function/{name}/{*rest}", any(by_name))
        .fallback(by_route)
}

async fn by_name(
    State(node): State<Arc<Node>>,
    Extension(CallId(call_id)): Extension<CallId>,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
) -> Response {
    let reference = &params[0].1;
    let Some(function) = node.function_by_reference(reference) else {
        return unknown(reference);
    };
    // The function sees the raw path after `/function/{name}`, still percent-encoded.
    let prefix_len = "/function/".len() + reference.len();
    let rest = request.uri().path().get(prefix_len..).unwrap_or_default();
    let path = if rest.is_empty() {
        "/".to_owned()
    } else {
        rest.to_owned()
    };
    run(&node, function, call_id, path, request).await
}

async fn by_route(
    State(node): State<Arc<Node>>,
    Extension(CallId(call_id)): Extension<CallId>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/"
        && let Some(reference) = request
            .headers()
            .get("x-function")
            .and_then(|v| v.to_str().ok())
    {
        return match node.function_by_reference(reference) {
            Some(function) => run(&node, function, call_id, path, request).await,
            None => unknown(reference),
        };
    }
    match node.function_by_route(&path) {
        Some(function) => run(&node, function, call_id, path, request).await,
        None => ApiError::not_found(format!("no function serves {path}")).into_response(),
    }
}

async fn run(
    node: &Node,
    function: Arc<Deployed>,
    call_id: String,
    path: String,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Err(error) = auth::allow_invoke(node, &function.spec, &mut parts.headers) {
        return error.into_response();
    }
    let call = Call {
        call_id,
        method: parts.method,
        path,
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    dispatch(node, function, call).await
}

fn unknown(reference: &str) -> Response {
    ApiError::not_found(format!("function {reference} is not deployed")).into_response()
}
