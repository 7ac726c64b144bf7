//! The queue's HTTP API: `POST /async-function/{name}[/rest]` accepts a
//! call (a private function's needs a token, as a sync call does);
//! `/system/calls` lists calls, shows one and retries a finished one, each
//! only in the namespaces the caller's token may see.

use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    extract::{Path, Query, Request, State},
    http::StatusCode,
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
use wisp_store::{CallFilter, CallRow, NewCall};

use super::{Queue, callback, millis, record, rfc3339};
use crate::{ApiError, auth, dispatch, dispatch::CallId, node::Node};

/// The most calls one list answers.
const MAX_LIST: u32 = 1000;

/// `/async-function/...`, served without a token like `/function/...`.
pub(crate) fn invoke_routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/async-function/{name}", post(enqueue))
        .route("/async-function/{name}/{*rest}", post(enqueue))
}

/// `/system/calls...`, behind a token.
pub(crate) fn system_routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/calls", get(list))
        .route("/calls/{id}", get(show))
        .route("/calls/{id}/retry", post(retry))
}

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
    let callback_url = request
        .headers()
        .get("x-callback-url")
        .map(|value| {
            let text = value
                .to_str()
                .map_err(|_| ApiError::bad_request("X-Callback-Url is not a URL"))?;
            callback::parse_url(text).map_err(ApiError::bad_request)?;
            Ok::<_, ApiError>(text.to_owned())
        })
        .transpose()?;
    let prefix_len = "/async-function/".len() + reference.len();
    let rest = request.uri().path().get(prefix_len..).unwrap_or_default();
    let path = if rest.is_empty() { "/" } else { rest }.to_owned();
    let (parts, body) = request.into_parts();
    let limit = dispatch::body_limit(&node, &function);
    let body = dispatch::read_body_checked(&parts.headers, body, limit).await?;
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
        namespace: function.spec.namespace.clone(),
        function: function.spec.name.clone(),
        source: "http".into(),
        event: event.encode(),
        callback_url,
        created_at: millis(now),
    };
    match Queue::enqueue(&node, call, None).await {
        Ok(true) => Ok(StatusCode::ACCEPTED.into_response()),
        Ok(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a call with id {id} already exists: send a new X-Call-Id"),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    namespace: Option<String>,
    function: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

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

async fn show(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<CallInfo>, ApiError> {
    let row = node.store.call(&id)?.ok_or_else(|| unknown(&id))?;
    principal.allow(&row.namespace, Action::Observe)?;
    Ok(Json(info(row)))
}

async fn retry(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = node.store.call(&id)?.ok_or_else(|| unknown(&id))?;
    principal.allow(&row.namespace, Action::Deploy)?;
    if Queue::requeue(&node, id.clone())
        .await
        .map_err(ApiError::internal)?
    {
        tracing::info!("call {id} queued again by hand");
        let row = node.store.call(&id)?.ok_or_else(|| unknown(&id))?;
        return Ok((StatusCode::ACCEPTED, Json(info(row))).into_response());
    }
    match node.store.call(&id)? {
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
