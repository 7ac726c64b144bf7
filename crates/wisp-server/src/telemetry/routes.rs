//! The observability API: `GET /metrics` (no token, as Prometheus scrapes
//! it, unless the node has a metrics token), and behind the token
//! `GET /system/logs` (newline-delimited JSON, optionally followed live),
//! `GET /system/traces/{call_id}`,
//! `GET /system/records` (a function's latest calls) and `GET /system/usage`.
//! A namespace token reads only its own namespace's lines, calls and usage.

use std::{convert::Infallible, sync::Arc};

use axum::{
    Extension, Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
    routing::get,
};
use serde::Deserialize;
use wisp_core::{
    HumanDuration,
    telemetry::{CallRecord, LogEntry, Trace, TracedCall, Usage, is_failure},
    tenancy::{Action, Principal},
};
use wisp_store::{LogFilter, NewRecord, StoreError};

use super::{entry, rfc3339_millis};
use crate::{
    ApiError,
    error::{Path, Query},
    node::{Node, split_reference},
};

/// The most lines one read answers; `follow` goes on from there.
const MAX_TAIL: u32 = 10_000;
/// Lines answered when `tail` is not given.
const DEFAULT_TAIL: u32 = 100;
/// The most records one `GET /system/records` answers.
const MAX_RECORDS: u32 = 1000;

/// `/metrics`, served without a token unless the node has a metrics token.
pub(crate) fn public_routes() -> Router<Arc<Node>> {
    Router::new().route("/metrics", get(metrics))
}

/// `/system/logs`, `/system/traces`, `/system/records`, `/system/usage`.
pub(crate) fn system_routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/logs", get(logs))
        .route("/traces/{call_id}", get(trace))
        .route("/records", get(records))
        .route("/usage", get(usage))
}

#[utoipa::path(
    get,
    path = "/metrics",
    security((), ("token" = [])),
    tag = "node",
    summary = "Prometheus metrics",
    responses(
        (status = 200, body = String, content_type = "application/openmetrics-text")
    )
)]
async fn metrics(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    crate::auth::allow_metrics(&node, &headers)?;
    let text = node.metrics.encode().map_err(ApiError::internal)?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// Runs a read of the call log off the async threads, once every call that
/// ended before it is committed.
async fn read<T: Send + 'static>(
    node: &Arc<Node>,
    read: impl FnOnce(&wisp_store::Telemetry) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        node.telemetry.flush();
        read(node.telemetry.log())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::from)
}

/// A time given as a duration ago (`10m`) or as RFC 3339, in milliseconds.
fn parse_since(since: &str) -> Result<i64, ApiError> {
    if let Ok(ago) = since.parse::<HumanDuration>() {
        return Ok(chrono::Utc::now().timestamp_millis() - ago.0.as_millis() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(since)
        .map(|time| time.timestamp_millis())
        .map_err(|_| {
            ApiError::bad_request(format!(
                "since `{since}` is neither a duration such as 10m nor an RFC 3339 time"
            ))
        })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LogQuery {
    /// `name` or `name.namespace`.
    name: Option<String>,
    /// Only this namespace's lines.
    namespace: Option<String>,
    /// Only this call's lines.
    call: Option<String>,
    /// Only lines this recent: a duration such as `10m`, or an RFC 3339 time.
    since: Option<String>,
    /// The latest lines to answer; a negative one (faas-cli's `-1`) is as many as may be.
    tail: Option<i64>,
    /// Keep streaming new lines as they are written.
    #[serde(default)]
    follow: bool,
}

#[utoipa::path(
    get,
    path = "/system/logs",
    tag = "telemetry",
    summary = "Functions' log lines, oldest first",
    params(LogQuery),
    responses(
        (status = 200, description = "One JSON log line per line", body = String, content_type = "application/x-ndjson")
    )
)]
async fn logs(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let (function, namespace) = match &query.name {
        Some(reference) => {
            let (name, namespace) = split_reference(reference);
            (
                Some(name.to_owned()),
                Some(
                    query
                        .namespace
                        .clone()
                        .unwrap_or_else(|| namespace.to_owned()),
                ),
            )
        }
        None => (None, query.namespace.clone()),
    };
    let namespace = principal
        .scope(namespace.as_deref(), Action::Observe)?
        .into_namespace();
    let filter = LogFilter {
        namespace,
        function,
        call_id: query.call.clone(),
        since: query.since.as_deref().map(parse_since).transpose()?,
        after_id: None,
        tail: match query.tail {
            None => DEFAULT_TAIL,
            Some(tail) => u32::try_from(tail).unwrap_or(MAX_TAIL).min(MAX_TAIL),
        },
    };
    // Subscribe before reading, so no line falls between the two.
    let live = query.follow.then(|| node.telemetry.follow());
    let read_filter = filter.clone();
    let stored = read(&node, move |log| log.lines(&read_filter)).await?;
    let last_id = stored.last().map_or(0, |line| line.id);
    let mut text = String::new();
    for line in stored {
        push_json(&mut text, &entry(line), &node.id);
    }
    let head = futures_util::stream::once(async move { Ok::<_, Infallible>(Bytes::from(text)) });
    let mut response = match live {
        None => Body::from_stream(head).into_response(),
        Some(live) => {
            let instance = node.id.clone();
            let follow = futures_util::stream::unfold(live, move |(mut live, mut stopping)| {
                let (filter, instance) = (filter.clone(), instance.clone());
                async move {
                    loop {
                        let line = tokio::select! {
                            line = live.recv() => line,
                            _ = stopping.wait_for(|stopping| *stopping) => return None,
                        };
                        match line {
                            Ok(line) if line.id > last_id && matches(&filter, &line) => {
                                let mut text = String::new();
                                push_json(&mut text, &line, &instance);
                                return Some((Ok(Bytes::from(text)), (live, stopping)));
                            }
                            Ok(_) => {}
                            // A slow reader misses lines rather than slowing the node.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            Body::from_stream(futures_util::StreamExt::chain(head, follow)).into_response()
        }
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// A log line as `/system/logs` writes it: wisp's fields, and OpenFaaS's
/// (`name`, `instance`, `timestamp`, `text`) for `faas-cli logs`.
#[derive(serde::Serialize)]
struct WireLine<'a> {
    #[serde(flatten)]
    line: &'a LogEntry,
    name: &'a str,
    instance: &'a str,
    timestamp: &'a str,
    text: &'a str,
}

fn push_json(text: &mut String, line: &LogEntry, instance: &str) {
    let wire = WireLine {
        line,
        name: &line.function,
        instance,
        timestamp: &line.time,
        text: &line.message,
    };
    if let Ok(json) = serde_json::to_string(&wire) {
        text.push_str(&json);
        text.push('\n');
    }
}

fn matches(filter: &LogFilter, line: &LogEntry) -> bool {
    filter
        .namespace
        .as_ref()
        .is_none_or(|ns| *ns == line.namespace)
        && filter.function.as_ref().is_none_or(|f| *f == line.function)
        && filter
            .call_id
            .as_ref()
            .is_none_or(|id| Some(id) == line.call_id.as_ref())
}

/// A stored record as the API serves it.
fn call_record(record: NewRecord) -> CallRecord {
    CallRecord {
        call_id: record.call_id,
        trace_id: hex::encode(record.trace_id),
        span_id: hex::encode(record.span_id),
        parent_span_id: record.parent_span_id.map(hex::encode),
        namespace: record.namespace,
        function: record.function,
        source: record.source,
        started_at: rfc3339_millis(record.started_at),
        duration_ms: record.duration_us as f64 / 1000.0,
        status: record.status,
        error: record.error,
        memory_limit: record.memory_limit,
        memory_peak: record.memory_peak,
        cpu_ms: record.cpu_us.map(|us| us as f64 / 1000.0),
    }
}

/// The trace a call belongs to; a namespace token asks only about its
/// namespace's calls and sees only those of the trace.
#[utoipa::path(
    get,
    path = "/system/traces/{call_id}",
    tag = "telemetry",
    summary = "The whole trace of a call",
    params(("call_id" = String, Path)),
    responses(
        (status = 200, body = Trace)
    )
)]
async fn trace(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(call_id): Path<String>,
) -> Result<Json<Trace>, ApiError> {
    let wanted = call_id.clone();
    let found = read(&node, move |log| {
        // Call ids are the callers' to choose: another namespace's call with
        // the same id must not hide (or stand in for) the asker's own.
        let visible =
            |record: &NewRecord| principal.allow(&record.namespace, Action::Observe).is_ok();
        let Some(record) = log.record(&wanted, visible)? else {
            // Only calls the asker may not see are left: 403, as before.
            return Ok(log
                .record(&wanted, |_| true)?
                .and_then(|hidden| principal.allow(&hidden.namespace, Action::Observe).err())
                .map(Err));
        };
        let mut calls = Vec::new();
        for record in log.trace(&record.trace_id)? {
            if principal.allow(&record.namespace, Action::Observe).is_err() {
                continue;
            }
            let last_stderr = if is_failure(record.status) {
                log.last_stderr(&record.namespace, &record.function, &record.call_id)?
            } else {
                None
            };
            calls.push(TracedCall {
                record: call_record(record),
                last_stderr,
            });
        }
        Ok(Some(Ok(Trace {
            trace_id: hex::encode(record.trace_id),
            calls,
        })))
    })
    .await?;
    let trace = found.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no call {call_id} in the call log (it may have been pruned)"),
        )
    })??;
    Ok(Json(trace))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RecordQuery {
    /// The function: `name` or `name.namespace`.
    name: String,
    /// The most records answered (100 when absent, at most 1,000).
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/system/records",
    tag = "telemetry",
    summary = "A function's latest calls",
    params(RecordQuery),
    responses(
        (status = 200, body = [CallRecord])
    )
)]
async fn records(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<RecordQuery>,
) -> Result<Json<Vec<CallRecord>>, ApiError> {
    let (name, namespace) = split_reference(&query.name);
    principal.allow(namespace, Action::Observe)?;
    let (name, namespace) = (name.to_owned(), namespace.to_owned());
    let limit = query.limit.unwrap_or(100).min(MAX_RECORDS);
    let records = read(&node, move |log| log.recent(&namespace, &name, limit)).await?;
    Ok(Json(records.into_iter().map(call_record).collect()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// Only this namespace's functions.
    namespace: Option<String>,
    /// Only calls this recent: a duration such as `24h`, or an RFC 3339 time.
    since: Option<String>,
}

#[utoipa::path(
    get,
    path = "/system/usage",
    tag = "telemetry",
    summary = "Each function's totals",
    params(UsageQuery),
    responses(
        (status = 200, body = [Usage])
    )
)]
async fn usage(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Vec<Usage>>, ApiError> {
    let since = query.since.as_deref().map(parse_since).transpose()?;
    let namespace = principal
        .scope(query.namespace.as_deref(), Action::Observe)?
        .into_namespace();
    let totals = read(&node, move |log| {
        log.usage(namespace.as_deref(), since.unwrap_or(0))
    })
    .await?;
    Ok(Json(
        totals
            .into_iter()
            .map(|total| Usage {
                namespace: total.namespace,
                function: total.function,
                invocations: total.invocations,
                errors: total.errors,
                seconds: total.duration_us as f64 / 1e6,
                gb_seconds: total.gb_us / 1e6,
                cpu_seconds: total.cpu_us as f64 / 1e6,
            })
            .collect(),
    ))
}
