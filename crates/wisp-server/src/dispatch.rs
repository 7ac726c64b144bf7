//! Dispatch: call ids, body limits, admission (concurrency limits), deadlines,
//! the one place an invocation's outcome becomes an HTTP status, and the one
//! place a call is traced, logged and counted.

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
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
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use wisp_core::FunctionKind;
use wisp_core::telemetry::CallSource;
use wisp_runtime::{GuestRunning, Input, Invocation, InvokeError};

use crate::{
    ApiError,
    node::{Deployed, Node, Runner},
    pipeline,
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
    let id = given.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let value = HeaderValue::from_str(&id).expect("call ids are visible ASCII");
    request.extensions_mut().insert(CallId(id));
    let mut response = next.run(request).await;
    response.headers_mut().insert(CALL_ID, value);
    response
}

/// Counts a running invocation for as long as it lives, even if the client goes away.
pub(crate) struct Active(Arc<Deployed>, Arc<Node>);

impl Active {
    /// Counts one more invocation of `function` in flight.
    pub(crate) fn enter(function: &Arc<Deployed>, node: &Arc<Node>) -> Self {
        function.active.fetch_add(1, Ordering::Relaxed);
        node.active.fetch_add(1, Ordering::Relaxed);
        Self(function.clone(), node.clone())
    }
}

impl Drop for Active {
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
    /// How many in-process calls led to this one; 0 from outside.
    pub depth: u32,
}

/// What an admitted call holds: its place in the active count and its
/// function's and namespace's slots. It lives until the call is over (see
/// [`Held`]), not just until the response head is out.
pub(crate) struct Admission {
    _function_slot: OwnedSemaphorePermit,
    _namespace_slot: Option<OwnedSemaphorePermit>,
    _cluster_slot: Option<crate::shares::Slot>,
    _active: Active,
}

/// A response body that holds its call's [`Admission`] until the call is
/// over: the body sent or dropped and, if the guest that answered may still
/// run ([`GuestRunning`]), the guest done too. A guest streaming its body, or
/// working after it, still counts against every limit. The body ends only
/// once its guest is done, so a client that has read a whole response and
/// calls again finds the slot free.
struct Held {
    body: wisp_runtime::ResponseBody,
    admission: Option<Admission>,
    running: Option<GuestRunning>,
    /// The wait for the guest, once the body itself has ended.
    finishing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// `response` with its body holding `admission` until the call is over.
pub(crate) fn hold(mut response: wisp_runtime::Response, admission: Admission) -> Response {
    let running = response.extensions_mut().remove::<GuestRunning>();
    response.map(|body| {
        Body::new(Held {
            body,
            admission: Some(admission),
            running,
            finishing: None,
        })
    })
}

impl Held {
    /// Whether a guest may still be running.
    fn guest_running(&self) -> bool {
        self.finishing.is_some()
            || self
                .running
                .as_ref()
                .is_some_and(|guest| !guest.is_finished())
    }
}

impl HttpBody for Held {
    type Data = bytes::Bytes;
    type Error = wisp_runtime::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.finishing.is_none() {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(None) => {
                    let running = self.running.take();
                    self.finishing = running.map(|guest| Box::pin(guest.finished()) as _);
                }
                polled => return polled,
            }
        }
        if let Some(finishing) = &mut self.finishing {
            std::task::ready!(finishing.as_mut().poll(cx));
            self.finishing = None;
        }
        // Released before the end is written, so it is free once the client sees it.
        self.admission = None;
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream() && !self.guest_running()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        // Dropped before its end (the client went away, or hyper stopped at
        // the declared length): hold the slots until the guest is done.
        let finishing = self.finishing.take().or_else(|| {
            let running = self.running.take().filter(|guest| !guest.is_finished());
            running.map(|guest| Box::pin(guest.finished()) as _)
        });
        if let Some(finishing) = finishing
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The guest's deadline bounds this wait.
            runtime.spawn(async move {
                finishing.await;
                drop(admission);
            });
        }
    }
}

/// Runs one call of `function` and answers with its response or the status
/// its failure maps to. The call keeps its slots until its response body is
/// done (see [`Held`]).
pub async fn dispatch(node: &Arc<Node>, function: Arc<Deployed>, call: Call) -> Response {
    let spec = &function.spec;
    let limit = body_limit(node, &function);
    if declared_length(&call.headers).is_some_and(|length| length > limit) {
        return too_large(limit).into_response();
    }

    // The body is read before any slot is taken: a client that trickles it
    // (or stops sending) holds only its connection and its buffer, bounded
    // by the body limit and `--body-read-timeout`, never the function's or
    // the namespace's capacity. A pipeline streams it instead, through its
    // steps as they read it, under the same two bounds ([`crate::pipeline`]).
    let body = if spec.kind == FunctionKind::Pipeline {
        Input::Streamed(call.body.map_err(Into::into).boxed_unsync())
    } else {
        match read_body(call.body, limit, node.config.body_read_timeout).await {
            Ok(body) => Input::Whole(body),
            Err(error) => return error.into_response(),
        }
    };

    let admission = match admit(node, &function).await {
        Ok(admission) => admission,
        Err(rejected) => return busy(rejected.message, rejected.retry_after),
    };

    let invocation = Invocation {
        call_id: call.call_id,
        method: call.method,
        path: call.path,
        query: call.query,
        headers: call.headers,
        body,
        streamed: false,
        depth: call.depth,
        deadline: tokio::time::Instant::now() + spec.timeout.0,
        meter: Arc::default(),
    };
    match invoke(node, &function, invocation, CallSource::Http).await {
        Ok(response) => hold(response, admission),
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

/// Takes a slot of `function` and of its namespace, waiting up to its
/// `queue_timeout` for them; a rejection is counted.
pub(crate) async fn admit(
    node: &Arc<Node>,
    function: &Arc<Deployed>,
) -> Result<Admission, crate::admission::Rejected> {
    let active = Active::enter(function, node);
    let queue_timeout = function.spec.queue_timeout.0;
    let rejected = |rejected| {
        if node.config.telemetry {
            node.metrics.rejected(function);
        }
        rejected
    };
    let function_slot = function
        .limit
        .acquire(queue_timeout)
        .await
        .map_err(rejected)?;
    // A pipeline's steps take their namespace's slots: were it to take one
    // too, a pipeline of k steps would wait on itself under a quota of k.
    let namespace_limit = match function.spec.kind {
        FunctionKind::Pipeline => None,
        _ => node.namespace_limit(&function.spec.namespace),
    };
    let namespace_slot = match namespace_limit {
        Some(limit) => Some(limit.acquire(queue_timeout).await.map_err(rejected)?),
        None => None,
    };
    // In a cluster, a namespace's own concurrency quota holds across it.
    let cluster_slot = match (&node.shares, function.spec.kind) {
        (_, FunctionKind::Pipeline) | (None, _) => None,
        (Some(shares), _) => match node
            .tenants
            .namespace(&function.spec.namespace)
            .and_then(|namespace| namespace.quotas.max_concurrency)
        {
            Some(max) => Some(
                shares
                    .slot(&function.spec.namespace, max, queue_timeout)
                    .await
                    .map_err(rejected)?,
            ),
            None => None,
        },
    };
    Ok(Admission {
        _function_slot: function_slot,
        _namespace_slot: namespace_slot,
        _cluster_slot: cluster_slot,
        _active: active,
    })
}

/// Runs one admitted invocation, traced, logged and counted: the path sync
/// and async calls share, and a pipeline's steps too.
pub(crate) async fn invoke(
    node: &Arc<Node>,
    function: &Arc<Deployed>,
    mut invocation: Invocation,
    source: CallSource,
) -> Result<wisp_runtime::Response, InvokeError> {
    function.invocations.fetch_add(1, Ordering::Relaxed);
    node.invocations.fetch_add(1, Ordering::Relaxed);
    if !node.config.telemetry {
        return run(node, function, invocation, source).await;
    }
    let record = Record {
        span: Span::enter(&mut invocation.headers, &invocation.call_id),
        node: node.clone(),
        function: function.clone(),
        call_id: invocation.call_id.clone(),
        meter: invocation.meter.clone(),
        source,
        started_at: std::time::SystemTime::now(),
        started: std::time::Instant::now(),
    };
    let streamed = invocation.streamed;
    match run(node, function, invocation, source).await {
        // A step of a pipeline: how it went is known once its output has ended.
        Ok(response) if streamed && response.status().is_success() => Ok(response.map(|body| {
            Recorded {
                body,
                record: Some(record),
            }
            .boxed_unsync()
        })),
        outcome => {
            match &outcome {
                Ok(response) => record.finish(response.status().as_u16(), None),
                Err(error) => record.finish(status_of(error).as_u16(), Some(error.to_string())),
            }
            outcome
        }
    }
}

/// What a call's record needs until the call is over.
struct Record {
    node: Arc<Node>,
    function: Arc<Deployed>,
    call_id: String,
    span: Span,
    meter: Arc<wisp_runtime::Meter>,
    source: CallSource,
    started_at: std::time::SystemTime,
    started: std::time::Instant,
}

impl Record {
    /// Counts, logs and traces the call.
    fn finish(self, status: u16, error: Option<String>) {
        let elapsed = self.started.elapsed();
        let function = &self.function;
        self.node
            .metrics
            .observe(function, status, elapsed, self.meter.memory_peak());
        self.node.telemetry.finish(FinishedCall {
            namespace: &function.spec.namespace,
            function: &function.spec.name,
            call_id: &self.call_id,
            span: self.span,
            source: self.source,
            started_at: self.started_at,
            elapsed,
            status,
            error,
            memory_limit: function.spec.memory.0,
            meter: &self.meter,
        });
    }
}

/// A streamed response body whose call is recorded when it ends: its status
/// is the error's that ended it, if one did. A body dropped before its end
/// (nobody read on) is recorded with its head's status.
struct Recorded {
    body: wisp_runtime::ResponseBody,
    record: Option<Record>,
}

impl HttpBody for Recorded {
    type Data = bytes::Bytes;
    type Error = wisp_runtime::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(record) = self.record.take() {
                    record.finish(StatusCode::OK.as_u16(), None);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(record) = self.record.take() {
                    let (status, message) = status_of_body_error(error.as_ref());
                    record.finish(status.as_u16(), Some(message));
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish(StatusCode::OK.as_u16(), None);
        }
    }
}

/// The status and message of an error that ended a response body: the
/// runtime's [`InvokeError`], however wrapped on the way, else 502.
pub(crate) fn status_of_body_error(
    error: &(dyn std::error::Error + 'static),
) -> (StatusCode, String) {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(error) = error.downcast_ref::<InvokeError>() {
            return (status_of(error), error.to_string());
        }
        cause = error.source();
    }
    (StatusCode::BAD_GATEWAY, error.to_string())
}

/// Runs an invocation on the function's runner.
///
/// Its future is named (boxed, `Send`), not opaque: a pipeline's steps are
/// invoked through here again, and a recursive opaque future cannot be
/// proven `Send`.
fn run<'a>(
    node: &'a Arc<Node>,
    function: &'a Deployed,
    invocation: Invocation,
    source: CallSource,
) -> Pin<Box<dyn Future<Output = Result<wisp_runtime::Response, InvokeError>> + Send + 'a>> {
    match &function.runner {
        Runner::Executor(executor) => Box::pin(executor.invoke(invocation)),
        Runner::Pipeline => Box::pin(pipeline::run(node, function, invocation, source)),
    }
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

/// The bound on a request body to `function`: its own, but never more than
/// the node's (a function stored before the node's limit was lowered gets the node's).
pub(crate) fn body_limit(node: &Node, function: &Deployed) -> u64 {
    function
        .spec
        .max_body_size
        .map_or(node.config.max_body_size, |size| size.0)
        .min(node.config.max_body_size)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
}

/// Reads a whole request body, or answers 413 past `limit` (checked on the
/// declared length first, so an oversized upload is refused before it is
/// read) or 408 when it takes longer than `timeout`.
pub(crate) async fn read_body_checked(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    timeout: Duration,
) -> Result<bytes::Bytes, ApiError> {
    if declared_length(headers).is_some_and(|length| length > limit) {
        return Err(too_large(limit));
    }
    read_body(body, limit, timeout).await
}

/// Reads a whole request body of at most `limit` bytes within `timeout`:
/// a client that trickles its body, or stops sending it, is answered 408
/// (and its connection closed) instead of holding a slot and a buffer.
async fn read_body(body: Body, limit: u64, timeout: Duration) -> Result<bytes::Bytes, ApiError> {
    let read = http_body_util::Limited::new(body, limit as usize).collect();
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(error)) => Err(ApiError::bad_request(format!(
            "could not read the request body: {error}"
        ))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body was not received within {}",
                wisp_core::HumanDuration(timeout)
            ),
        )),
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
