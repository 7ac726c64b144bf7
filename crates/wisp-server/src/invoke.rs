//! Invocation routes: `/function/{name}[/rest]`, `X-Function` on `/`, the
//! functions' own top-level routes, and `/pipe/{a,b,c}[/rest]`, an ad-hoc
//! pipeline of deployed functions. Every route checks a private function's
//! token in one place, [`run`]; an ad-hoc pipeline checks each step's.

use std::sync::Arc;

use axum::{
    Extension, Router,
    extract::{Request, State},
    response::{IntoResponse as _, Response},
    routing::any,
};

use axum::http::StatusCode;
use http_body_util::BodyExt as _;
use wisp_core::{FunctionKind, FunctionSpec, spec::Step};

use crate::{
    ApiError, auth,
    dispatch::{Call, CallId, dispatch},
    error::Path,
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

#[utoipa::path(
    method(get, post, put, patch, delete, head, options, trace),
    path = "/function/{name}",
    tag = "invocation",
    security((), ("token" = [])),
    summary = "Call a function",
    params(("name" = String, Path, description = "`name` or `name.namespace`")),
    request_body(content = crate::openapi::Anything, content_type = "*/*"),
    responses(
        (status = 200, description = "The function's answer, whatever its status")
    )
)]
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
#[utoipa::path(
    method(get, post, put, patch, delete, head, options, trace),
    path = "/pipe/{steps}",
    tag = "invocation",
    security((), ("token" = [])),
    summary = "Run functions as an ad-hoc pipeline",
    params(("steps" = String, Path, description = "Comma-separated functions")),
    request_body(content = crate::openapi::Anything, content_type = "*/*"),
    responses(
        (status = 200, description = "The last step's answer")
    )
)]
async fn pipe(
    State(node): State<Arc<Node>>,
    Extension(CallId(call_id)): Extension<CallId>,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
) -> Response {
    let steps: Vec<String> = params[0].1.split(',').map(str::to_owned).collect();
    if steps.len() > wisp_core::spec::MAX_STEPS {
        return ApiError::bad_request(format!(
            "a pipeline has at most {} steps",
            wisp_core::spec::MAX_STEPS
        ))
        .into_response();
    }
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
        steps: steps.into_iter().map(Step::Function).collect(),
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
        depth: 0,
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
        depth: 0,
    };
    dispatch(node, function, call).await
}

/// How deep a chain of in-process calls may go before it is a loop (508).
pub const MAX_CALL_DEPTH: u32 = 10;

/// Calls from functions to `http://{name}[.{namespace}].wisp.internal`,
/// in-process: the callee's privacy, limits and statuses apply as to a call
/// from outside. A function of the caller's namespace may call a private
/// one; another namespace's private function needs its token, as from
/// outside. A chain deeper than [`MAX_CALL_DEPTH`] is a 508.
pub(crate) struct InternalCalls(pub(crate) std::sync::Weak<Node>);

impl wisp_runtime::outbound::Internal for InternalCalls {
    fn call(
        &self,
        caller: wisp_runtime::outbound::Caller,
        reference: String,
        request: axum::http::Request<wisp_runtime::ResponseBody>,
    ) -> std::pin::Pin<Box<dyn Future<Output = wisp_runtime::Response> + Send>> {
        let node = self.0.upgrade();
        Box::pin(async move {
            let response = match node {
                Some(node) => call_internal(&node, caller, &reference, request).await,
                None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping")
                    .into_response(),
            };
            response.map(|body| body.map_err(Into::into).boxed_unsync())
        })
    }
}

async fn call_internal(
    node: &Arc<Node>,
    caller: wisp_runtime::outbound::Caller,
    reference: &str,
    request: axum::http::Request<wisp_runtime::ResponseBody>,
) -> Response {
    if reference.is_empty() {
        let request = request.map(axum::body::Body::new);
        let (namespace, name) = (&caller.namespace, &caller.name);
        let path = request.uri().path();
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let (buckets, stores) = (under("/s3"), under("/kv"));
        return if buckets {
            crate::buckets::for_function(node, namespace, name, request).await
        } else if stores {
            crate::kv::for_function(node, namespace, name, request).await
        } else {
            ApiError::not_found(
                "the node serves its functions' key-value stores under /kv/ and buckets under /s3/",
            )
            .into_response()
        };
    }
    if caller.depth > MAX_CALL_DEPTH {
        return ApiError::new(
            StatusCode::LOOP_DETECTED,
            format!(
                "function {}.{} called {reference} {} calls deep: more than {MAX_CALL_DEPTH}, a loop",
                caller.name, caller.namespace, caller.depth
            ),
        )
        .into_response();
    }
    let (name, namespace) = reference
        .split_once('.')
        .unwrap_or((reference, caller.namespace.as_str()));
    let Some(function) = node.function(namespace, name) else {
        return unknown(reference);
    };
    let (mut parts, body) = request.into_parts();
    if function.spec.namespace != caller.namespace
        && let Err(error) = auth::allow_invoke(node, &function.spec, &mut parts.headers)
    {
        return error.into_response();
    }
    let call_id = uuid::Uuid::now_v7().to_string();
    let value = axum::http::HeaderValue::from_str(&call_id).expect("a uuid is a header value");
    let call = Call {
        call_id,
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: axum::body::Body::new(body),
        depth: caller.depth,
    };
    let mut response = dispatch(node, function, call).await;
    response
        .headers_mut()
        .insert(crate::dispatch::CALL_ID, value);
    response
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
