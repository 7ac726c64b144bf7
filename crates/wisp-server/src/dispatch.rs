//! Dispatch: call ids, body limits, admission (concurrency limits), deadlines,
//! the one place an invocation's outcome becomes an HTTP status, and the one
//! place a call is traced, logged and counted.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt as _;
use wisp_core::telemetry::CallSource;
use wisp_runtime::{Invocation, InvokeError};

use crate::{
    ApiError,
    node::{Deployed, Node},
    telemetry::{FinishedCall, Span},
};

/// The header that carries a call's id, both ways.
pub const CALL_ID: &str = "x-call-id";

/// The id of the call a request belongs to.
#[derive(Debug, Clone)]
pub struct CallId(pub String);

/// Takes the caller's `X-Call-Id` when it is sane, or makes one, and sets it on the response.
pub async fn call_id(mut request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(CALL_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()));
    let id = given.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let value = HeaderValue::from_str(&id).expect("call ids are visible ASCII");
    request.extensions_mut().insert(CallId(id));
    let mut response = next.run(request).await;
    response.headers_mut().insert(CALL_ID, value);
    response
}

/// Counts a running invocation for as long as it lives, even if the client goes away.
pub(crate) struct Active<'a>(&'a Deployed, &'a Node);

impl<'a> Active<'a> {
    /// Counts one more invocation of `function` in flight.
    pub(crate) fn enter(function: &'a Deployed, node: &'a Node) -> Self {
        function.active.fetch_add(1, Ordering::Relaxed);
        node.active.fetch_add(1, Ordering::Relaxed);
        Self(function, node)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.1.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the function sees of a request.
pub struct Call {
    pub call_id: String,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Body,
}

/// Runs one call of `function` and answers with its response or the status its failure maps to.
pub async fn dispatch(node: &Node, function: Arc<Deployed>, call: Call) -> Response {
    let spec = &function.spec;
    let limit = body_limit(node, &function);
    if declared_length(&call.headers).is_some_and(|length| length > limit) {
        return too_large(limit).into_response();
    }

    let _active = Active::enter(&function, node);
    let queue_timeout = spec.queue_timeout.0;
    let rejected = |rejected: crate::admission::Rejected| {
        if node.config.telemetry {
            node.metrics.rejected(&function);
        }
        busy(rejected.message, rejected.retry_after)
    };
    let _slot = match function.limit.acquire(queue_timeout).await {
        Ok(slot) => slot,
        Err(error) => return rejected(error),
    };
    let namespace_limit = node.namespace_limit(&spec.namespace);
    let _namespace_slot = match &namespace_limit {
        Some(limit) => match limit.acquire(queue_timeout).await {
            Ok(slot) => Some(slot),
            Err(error) => return rejected(error),
        },
        None => None,
    };

    let body = match read_body(call.body, limit).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };

    let invocation = Invocation {
        call_id: call.call_id,
        method: call.method,
        path: call.path,
        query: call.query,
        headers: call.headers,
        body,
        deadline: tokio::time::Instant::now() + spec.timeout.0,
        meter: Arc::default(),
    };
    match invoke(node, &function, invocation, CallSource::Http).await {
        Ok(response) => response.map(Body::new),
        Err(error) => match error {
            InvokeError::Busy(message) => busy(message, Duration::from_secs(1)),
            InvokeError::Internal(detail) => {
                ApiError::internal(format!("function {}: {detail}", spec.name)).into_response()
            }
            error => ApiError::new(
                status_of(&error),
                format!("function {}: {error}", spec.name),
            )
            .into_response(),
        },
    }
}

/// Runs one admitted invocation, traced, logged and counted: the path sync
/// and async calls share.
pub(crate) async fn invoke(
    node: &Node,
    function: &Deployed,
    mut invocation: Invocation,
    source: CallSource,
) -> Result<wisp_runtime::Response, InvokeError> {
    function.invocations.fetch_add(1, Ordering::Relaxed);
    node.invocations.fetch_add(1, Ordering::Relaxed);
    if !node.config.telemetry {
        return function.executor.invoke(invocation).await;
    }
    let span = Span::enter(&mut invocation.headers, &invocation.call_id);
    let call_id = invocation.call_id.clone();
    let meter = invocation.meter.clone();
    let started_at = std::time::SystemTime::now();
    let started = std::time::Instant::now();
    let outcome = function.executor.invoke(invocation).await;
    let elapsed = started.elapsed();
    let (status, error) = match &outcome {
        Ok(response) => (response.status().as_u16(), None),
        Err(error) => (status_of(error).as_u16(), Some(error.to_string())),
    };
    node.metrics
        .observe(function, status, elapsed, meter.memory_peak());
    node.telemetry.finish(FinishedCall {
        namespace: &function.spec.namespace,
        function: &function.spec.name,
        call_id: &call_id,
        span,
        source,
        started_at,
        elapsed,
        status,
        error,
        memory_limit: function.spec.memory.0,
        meter: &meter,
    });
    outcome
}

/// The status an invocation failure answers with.
pub(crate) fn status_of(error: &InvokeError) -> StatusCode {
    match error {
        InvokeError::Failed(_) | InvokeError::OutOfMemory(_) | InvokeError::Exit(_) => {
            StatusCode::BAD_GATEWAY
        }
        InvokeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        InvokeError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        InvokeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The bound on a request body to `function`.
pub(crate) fn body_limit(node: &Node, function: &Deployed) -> u64 {
    function
        .spec
        .max_body_size
        .map_or(node.config.max_body_size, |size| size.0)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
}

/// Reads a whole request body, or answers 413 past `limit` (checked on the
/// declared length first, so an oversized upload is refused before it is read).
pub(crate) async fn read_body_checked(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<bytes::Bytes, ApiError> {
    if declared_length(headers).is_some_and(|length| length > limit) {
        return Err(too_large(limit));
    }
    read_body(body, limit).await
}

async fn read_body(body: Body, limit: u64) -> Result<bytes::Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit as usize)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Err(error) => Err(ApiError::bad_request(format!(
            "could not read the request body: {error}"
        ))),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than the limit of {}",
            wisp_core::ByteSize(limit)
        ),
    )
}

/// 429 with `Retry-After` in whole seconds.
fn busy(message: String, retry_after: Duration) -> Response {
    let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response();
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}
