//! The queue's HTTP API: `POST /async-function/{name}[/rest]` accepts a
//! call (a private function's needs a token, as a sync call does) within its
//! namespace's queue quota, with a callback the egress policy allows;
//! `/system/calls` lists calls, shows one and retries a finished one, each
//! only in the namespaces the caller's token may see.

use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use wisp_core::{
    CallState,
    events::{CallInfo, CallList},
    tenancy::{Action, Principal},
};
use wisp_store::{CallFilter, CallOrigin, CallRow, NewCall};

use super::{Queue, backlog::QueueQuota, callback, millis, record, rfc3339};
use crate::{
    ApiError, auth, dispatch,
    dispatch::CallId,
    error::{Path, Query},
    node::Node,
};

/// The most calls one list answers.
const MAX_LIST: u32 = 1000;

/// `/async-function/...`, served without a token like `/function/...`.
pub(crate) fn invoke_routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/async-function/{name}", post(enqueue))
        .route("/async-function/{name}/", post(enqueue))
        .route("/async-function/{name}/{*rest}", post(enqueue))
}

/// `/system/calls...`, behind a token.
pub(crate) fn system_routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/calls", get(list))
        .route("/calls/{id}", get(show))
        .route("/calls/{id}/retry", post(retry))
}

#[utoipa::path(
    post,
    path = "/async-function/{name}",
    tag = "invocation",
    security((), ("token" = [])),
    summary = "Queue a call",
    params(("name" = String, Path, description = "`name` or `name.namespace`"), ("X-Callback-Url" = Option<String>, Header, description = "Where the result is POSTed"), ("X-Call-Id" = Option<String>, Header, description = "The call's id; a fresh one when absent")),
    request_body(content = crate::openapi::Anything, content_type = "*/*"),
    responses(
        (status = 202, description = "Queued", headers(("X-Call-Id" = String, description = "The call's id")))
    )
)]
async fn enqueue(
    State(node): State<Arc<Node>>,
    Extension(CallId(id)): Extension<CallId>,
    Path(params): Path<Vec<(String, String)>>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let reference = &params[0].1;
    let function = node
        .function_by_reference(reference)
        .ok_or_else(|| ApiError::not_found(format!("function {reference} is not deployed")))?;
    auth::allow_invoke(&node, &function.spec, request.headers_mut())?;
    let callback_url = match request.headers().get("x-callback-url") {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::bad_request("X-Callback-Url is not a URL"))?;
            let url = callback::parse_url(text).map_err(ApiError::bad_request)?;
            callback::check_destination(&node.egress, text, &url)
                .await
                .map_err(ApiError::bad_request)?;
            Some(text.to_owned())
        }
        None => None,
    };
    let path = crate::invoke::path_after(request.uri().path(), "/async-function/");
    let (parts, body) = request.into_parts();
    let limit = dispatch::body_limit(&node, &function);
    let body =
        dispatch::read_body_checked(&parts.headers, body, limit, node.config.body_read_timeout)
            .await?;
    let now = Utc::now();
    let event = record::CloudEvent::http_request(
        id.clone(),
        format!("/async-function/{reference}"),
        now,
        record::Request {
            method: parts.method,
            path,
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
        },
    );
    let call = NewCall {
        id: id.clone(),
        origin: CallOrigin::Caller,
        namespace: function.spec.namespace.clone(),
        function: function.spec.name.clone(),
        source: "http".into(),
        event: event.encode(),
        callback_url,
        created_at: millis(now),
    };
    let reserved = node
        .queue
        .backlog
        .reserve(
            &call.namespace,
            call.event.len() as u64,
            Some(queue_quota(&node, &call.namespace)),
        )
        .map_err(|exceeded| ApiError::new(StatusCode::TOO_MANY_REQUESTS, exceeded.to_string()));
    let reservation = match reserved {
        Ok(reservation) => match crate::shares::cover_queued(&node, &call.namespace).await {
            Ok(()) => reservation,
            Err(error) => return Ok(refused(error)),
        },
        Err(error) => return Ok(refused(error)),
    };
    match Queue::enqueue_reserved(&node, call, None, reservation).await {
        Ok(true) => Ok(StatusCode::ACCEPTED.into_response()),
        Ok(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "a call with id {id} already exists in namespace {}: send a new X-Call-Id",
                function.spec.namespace
            ),
        )),
        Err(error) => {
            tracing::error!("call {id} could not be queued: {error}");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the queue cannot store the call right now: {error}"),
            ))
        }
    }
}

/// The `Retry-After` of an enqueue over its namespace's queue quota, in
/// seconds: queued calls take a while to drain, so sooner is rarely useful.
const QUEUE_RETRY_AFTER: u64 = 5;

/// An enqueue turned away, with a `Retry-After` when it is over a quota.
fn refused(error: ApiError) -> Response {
    let over_quota = error.status == StatusCode::TOO_MANY_REQUESTS;
    let mut response = error.into_response();
    if over_quota {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(QUEUE_RETRY_AFTER));
    }
    response
}

/// A namespace's queue quota: its own, else the node's per-namespace default.
fn queue_quota(node: &Node, namespace: &str) -> QueueQuota {
    let quotas = node
        .tenants
        .namespace(namespace)
        .map(|stored| stored.quotas)
        .unwrap_or_default();
    QueueQuota {
        calls: u64::from(
            quotas
                .max_queued_calls
                .unwrap_or(node.config.namespace_max_queued_calls),
        ),
        bytes: quotas
            .max_queued_bytes
            .map_or(node.config.namespace_max_queued_bytes, |bytes| bytes.0),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this namespace's calls.
    namespace: Option<String>,
    /// Only this function's calls: `name` or `name.namespace`.
    function: Option<String>,
    /// Only calls in this state.
    #[param(value_type = Option<wisp_core::events::CallState>)]
    status: Option<String>,
    /// The most calls answered (100 when absent, at most 1,000).
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/system/calls",
    tag = "calls",
    summary = "Async calls, newest first",
    params(ListQuery),
    responses(
        (status = 200, body = CallList)
    )
)]
async fn list(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> Result<Json<CallList>, ApiError> {
    let (function, namespace) = match query.function {
        Some(reference) => match reference.split_once('.') {
            Some((name, namespace)) => (Some(name.to_owned()), Some(namespace.to_owned())),
            None => (Some(reference), query.namespace),
        },
        None => (None, query.namespace),
    };
    let namespace = principal
        .scope(namespace.as_deref(), Action::Observe)?
        .into_namespace();
    let filter = CallFilter {
        namespace,
        function,
        state: query
            .status
            .map(|status| status.parse::<CallState>())
            .transpose()
            .map_err(ApiError::bad_request)?,
        limit: query.limit.unwrap_or(100).min(MAX_LIST),
    };
    let store = node.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.calls(&filter))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(CallList {
        calls: rows.into_iter().map(info).collect(),
    }))
}

/// Narrows a lookup by id: `function` (`name` or `name.namespace`) and `namespace`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WhichCall {
    /// The call's namespace.
    namespace: Option<String>,
    /// The call's function: `name` or `name.namespace`.
    function: Option<String>,
}

/// The one call `id` names among those the caller may see with `action`.
/// Ids are unique only per namespace (and a trigger's per function), so a
/// namespace token only ever finds its namespace's call, never one another
/// namespace gave the same id; a call it may not see is a 403 only when it
/// has none of its own by that id. Several visible calls (for the node's
/// token, in several namespaces) are a 409 that names them, to be narrowed
/// with `?function=name.namespace`.
fn find_call(
    node: &Node,
    principal: &Principal,
    id: &str,
    which: &WhichCall,
    action: Action,
) -> Result<CallRow, ApiError> {
    let (function, namespace) = match which.function.as_deref() {
        Some(reference) => match reference.split_once('.') {
            Some((name, namespace)) => (Some(name), Some(namespace)),
            None => (Some(reference), which.namespace.as_deref()),
        },
        None => (None, which.namespace.as_deref()),
    };
    let rows: Vec<CallRow> = node
        .store
        .calls_with_id(id)?
        .into_iter()
        .filter(|row| namespace.is_none_or(|namespace| row.namespace == namespace))
        .filter(|row| function.is_none_or(|function| row.function == function))
        .collect();
    let mut forbidden = None;
    let mut visible = Vec::new();
    for row in rows {
        match principal.allow(&row.namespace, action) {
            Ok(()) => visible.push(row),
            Err(error) => forbidden = forbidden.or(Some(error)),
        }
    }
    match visible.len() {
        0 => Err(forbidden.map_or_else(|| unknown(id), ApiError::from)),
        1 => Ok(visible.pop().expect("one")),
        _ => {
            let names: Vec<String> = visible
                .iter()
                .map(|row| format!("{}.{}", row.function, row.namespace))
                .collect();
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "{} calls have id {id}, of {}: name one with ?function=NAME.NAMESPACE",
                    names.len(),
                    names.join(", ")
                ),
            ))
        }
    }
}

#[utoipa::path(
    get,
    path = "/system/calls/{id}",
    tag = "calls",
    summary = "One async call",
    params(("id" = String, Path), WhichCall),
    responses(
        (status = 200, body = CallInfo)
    )
)]
async fn show(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(which): Query<WhichCall>,
) -> Result<Json<CallInfo>, ApiError> {
    let row = find_call(&node, &principal, &id, &which, Action::Observe)?;
    Ok(Json(info(row)))
}

#[utoipa::path(
    post,
    path = "/system/calls/{id}/retry",
    tag = "calls",
    summary = "Queue a finished call again",
    params(("id" = String, Path), WhichCall),
    responses(
        (status = 202, body = CallInfo)
    )
)]
async fn retry(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(which): Query<WhichCall>,
) -> Result<Response, ApiError> {
    let key = find_call(&node, &principal, &id, &which, Action::Deploy)?.key;
    if Queue::requeue(&node, key.clone())
        .await
        .map_err(ApiError::internal)?
    {
        tracing::info!("call {id} queued again by hand");
        let row = node.store.call(&key)?.ok_or_else(|| unknown(&id))?;
        return Ok((StatusCode::ACCEPTED, Json(info(row))).into_response());
    }
    match node.store.call(&key)? {
        Some(row) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "call {id} is {}: only a finished call can be retried",
                row.state
            ),
        )),
        None => Err(unknown(&id)),
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("no call {id}"))
}

fn time(millis: i64) -> String {
    rfc3339(DateTime::<Utc>::from_timestamp_millis(millis).unwrap_or_default())
}

/// A stored call as the API shows it.
fn info(row: CallRow) -> CallInfo {
    let waiting_for_retry = row.state == CallState::Queued && row.attempts > 0;
    CallInfo {
        id: row.id,
        function: row.function,
        namespace: row.namespace,
        status: row.state,
        attempts: row.attempts,
        source: row.source,
        created_at: time(row.created_at),
        started_at: row.started_at.map(time),
        finished_at: row.finished_at.map(time),
        next_attempt_at: waiting_for_retry.then(|| time(row.due_at)),
        error: row.error,
        result: row
            .result
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok()),
        callback_url: row.callback_url,
        callback_status: row.callback_state,
    }
}
