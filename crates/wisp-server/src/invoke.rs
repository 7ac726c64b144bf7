//! Invocation routes: `/function/{name}[/rest]`, `X-Function` on `/`, the
//! functions' own top-level routes, and `/pipe/{a,b,c}[/rest]`, an ad-hoc
//! pipeline of deployed functions. Every route checks a private function's
//! token in one place, [`run`]; an ad-hoc pipeline checks each step's.

use std::sync::Arc;

use axum::{
    Extension, Router,
    extract::{Path, Request, State},
    response::{IntoResponse as _, Response},
    routing::any,
};

use wisp_core::{FunctionKind, FunctionSpec};

use crate::{
    ApiError, auth,
    dispatch::{Call, CallId, dispatch},
    node::{Deployed, Node, Runner},
};

/// The invocation routes; anything else falls through to function routes.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/function/{name}", any(by_name))
        // A slash after the name is the function's root, as in OpenFaaS.
        .route("/function/{name}/", any(by_name))
        .route("/function/{name}/{*rest}", any(by_name))
        .route("/pipe/{steps}", any(pipe))
        .route("/pipe/{steps}/", any(pipe))
        .route("/pipe/{steps}/{*rest}", any(pipe))
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
    let path = path_after(request.uri().path(), "/function/");
    run(&node, function, call_id, path, request).await
}

/// The path a function sees: what follows `{prefix}{name}` in the raw
/// request path, still percent-encoded as the client sent it (`/` when
/// nothing does). The name is the raw segment, not its decoded form: a
/// client may encode it (`%70robe` for `probe`), and the router routes by
/// the decoded name, decoded once.
pub(crate) fn path_after(raw: &str, prefix: &str) -> String {
    let after_prefix = raw.strip_prefix(prefix).unwrap_or_default();
    match after_prefix.find('/') {
        Some(slash) => after_prefix[slash..].to_owned(),
        None => "/".to_owned(),
    }
}

/// An ad-hoc pipeline: `/pipe/fetch,resize,store.media[/rest]` runs the
/// deployed functions named as a pipeline would. It belongs to the first
/// step's namespace, its deadline is the longest of its steps', and the
/// caller needs a token for each private step, as for calling it alone.
async fn pipe(
    State(node): State<Arc<Node>>,
    Extension(CallId(call_id)): Extension<CallId>,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
) -> Response {
    let steps: Vec<String> = params[0].1.split(',').map(str::to_owned).collect();
    let namespace = steps[0]
        .split_once('.')
        .map_or(wisp_core::spec::DEFAULT_NAMESPACE, |(_, namespace)| {
            namespace
        })
        .to_owned();
    let (mut parts, body) = request.into_parts();
    let mut timeout = None;
    for step in &steps {
        let (name, step_namespace) = step.split_once('.').unwrap_or((step, &namespace));
        let Some(function) = node.function(step_namespace, name) else {
            return unknown(step);
        };
        // Each step's check on its own copy: a checked token is taken off the headers.
        if let Err(error) = auth::allow_invoke(&node, &function.spec, &mut parts.headers.clone()) {
            return error.into_response();
        }
        timeout = timeout.max(Some(function.spec.timeout));
    }
    parts.headers.remove(axum::http::header::AUTHORIZATION);
    let deployment = wisp_core::api::FunctionDeployment {
        service: "pipe".to_owned(),
        namespace: Some(namespace),
        kind: Some(FunctionKind::Pipeline),
        steps,
        timeout,
        ..Default::default()
    };
    let spec = match FunctionSpec::from_deployment(deployment) {
        Ok(spec) => spec,
        Err(error) => return ApiError::bad_request(error.to_string()).into_response(),
    };
    let pipeline = node.deployed_of(spec, Runner::Pipeline);
    let call = Call {
        call_id,
        method: parts.method,
        path: path_after(parts.uri.path(), "/pipe/"),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    dispatch(&node, pipeline, call).await
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
    node: &Arc<Node>,
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

#[cfg(test)]
mod tests {
    use super::path_after;

    #[test]
    fn the_path_follows_the_raw_name_segment() {
        for (raw, seen) in [
            ("/function/probe", "/"),
            ("/function/probe/", "/"),
            ("/function/probe/x/y", "/x/y"),
            ("/function/%70robe/x/y", "/x/y"),
            ("/function/%70rob%65.default/a%20b", "/a%20b"),
        ] {
            assert_eq!(path_after(raw, "/function/"), seen, "{raw}");
        }
    }
}
