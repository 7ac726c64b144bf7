//! Reads that span a cluster. Each node keeps its own async calls and call
//! log, so in cluster mode `/system/calls`, `/system/logs`,
//! `/system/traces`, `/system/records` and `/system/usage` ask every other
//! live node the same request (on behalf of the same principal, over the
//! cluster's sealed questions) and merge the answers with the node's own:
//! any node answers what the whole cluster holds. A retry goes to the node
//! that holds the call. `follow` in `/system/logs` streams only the asked
//! node's new lines, after the whole cluster's stored ones.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    body::Body,
    extract::{OriginalUri, Query, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use wisp_core::{
    events::CallList,
    telemetry::{CallRecord, LogEntry, Trace, Usage},
    tenancy::Principal,
};

use crate::{ApiError, node::Node};

/// The largest answer one node reads from its own routes for another.
const MAX_ANSWER: usize = 64 << 20;

/// A request one node asks the others to answer from what they hold.
#[derive(Serialize, Deserialize)]
struct Question {
    principal: Principal,
    method: String,
    uri: String,
}

/// What a node answered: the status and body its own route gave.
#[derive(Serialize, Deserialize)]
struct Answer {
    status: u16,
    body: String,
}

/// Marks a request asked by another node: answered from this node alone.
#[derive(Clone)]
struct Asked;

/// How the answers to one route combine.
enum Merge {
    /// `GET /system/calls`: the newest calls of all, up to the limit.
    Calls,
    /// `GET /system/calls/{id}`: the one call of that id on any node.
    Call,
    /// `POST /system/calls/{id}/retry`: the node that holds the call retries it.
    Retry,
    /// `GET /system/logs`: the latest lines of all, in time order.
    Logs,
    /// `GET /system/traces/{id}`: the calls of the trace on every node.
    Trace,
    /// `GET /system/records`: the latest records of all.
    Records,
    /// `GET /system/usage`: each function's totals, summed.
    Usage,
}

impl Merge {
    fn of(method: &Method, path: &str) -> Option<Self> {
        let path = path.strip_prefix("/system/")?;
        let segments: Vec<&str> = path.split('/').collect();
        Some(match (method, segments.as_slice()) {
            (&Method::GET, ["calls"]) => Self::Calls,
            (&Method::GET, ["calls", _]) => Self::Call,
            (&Method::POST, ["calls", _, "retry"]) => Self::Retry,
            (&Method::GET, ["logs"]) => Self::Logs,
            (&Method::GET, ["traces", _]) => Self::Trace,
            (&Method::GET, ["records"]) => Self::Records,
            (&Method::GET, ["usage"]) => Self::Usage,
            _ => return None,
        })
    }
}

/// Answers a spanning route from the whole cluster, when the node is in
/// one: the node's own answer merged with the other live nodes'.
pub(crate) async fn span(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let asked = request.extensions().get::<Asked>().is_some();
    let principal = request.extensions().get::<Principal>().cloned();
    // Under `nest("/system", ...)` the request's own URI has lost the prefix.
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().clone(), |original| original.0.clone());
    let merge = Merge::of(request.method(), uri.path());
    let (Some(cluster), false, Some(principal), Some(merge)) =
        (node.cluster.clone(), asked, principal, merge)
    else {
        return next.run(request).await;
    };
    let mut question = Question {
        principal,
        method: request.method().to_string(),
        uri: uri.to_string(),
    };
    let query = uri.query().unwrap_or_default().to_owned();
    let ask = |question: Question| {
        let (node, cluster) = (node.clone(), cluster.clone());
        async move {
            let question = serde_json::to_vec(&question).expect("a question serializes");
            match cluster.ask(&node.id, &question).await {
                Ok(answers) => answers
                    .iter()
                    .filter_map(|answer| serde_json::from_slice::<Answer>(answer).ok())
                    .collect(),
                Err(error) => {
                    tracing::warn!("{error}");
                    Vec::new()
                }
            }
        }
    };
    if let Merge::Retry = merge {
        // Only where the call is: ask the others only when this node has none.
        let local = next.run(request).await;
        if !matches!(
            local.status(),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN
        ) {
            return local;
        }
        let local = Answer::read(local).await;
        return found(local, ask(question).await);
    }
    if let Merge::Logs = merge {
        // The others answer their stored lines; new ones stream from here only.
        question.uri = question.uri.replace("follow=true", "follow=false");
    }
    let (local, others) = tokio::join!(next.run(request), ask(question));
    // A bad request or a forbidden namespace is the same on every node;
    // only a single call or trace may be found elsewhere.
    if !local.status().is_success() && !matches!(merge, Merge::Call | Merge::Trace) {
        return local;
    }
    let follow = matches!(merge, Merge::Logs) && query.split('&').any(|p| p == "follow=true");
    if follow {
        return follow_logs(local, others, &query);
    }
    let local = Answer::read(local).await;
    match merge {
        Merge::Calls => {
            let limit = limit(&query, 100);
            merged_json(all(local, others), |lists: Vec<CallList>| {
                let mut calls: Vec<_> = lists.into_iter().flat_map(|list| list.calls).collect();
                calls.sort_by(|a, b| b.created_at.cmp(&a.created_at));
                calls.truncate(limit);
                CallList { calls }
            })
        }
        Merge::Call | Merge::Retry => found(local, others),
        Merge::Trace => {
            let (found_here, found_elsewhere) = (
                local.status == 200,
                others.iter().any(|answer| answer.status == 200),
            );
            if !found_here && !found_elsewhere {
                return found(local, others);
            }
            let parts = std::iter::once(local)
                .chain(others)
                .filter(|answer| answer.status == 200)
                .collect();
            merged_json(parts, |traces: Vec<Trace>| {
                let mut traces = traces.into_iter();
                let mut trace = traces.next().expect("a trace found");
                trace.calls.extend(traces.flat_map(|other| other.calls));
                trace
                    .calls
                    .sort_by(|a, b| a.record.started_at.cmp(&b.record.started_at));
                trace
            })
        }
        Merge::Records => {
            let limit = limit(&query, 100);
            merged_json(all(local, others), |lists: Vec<Vec<CallRecord>>| {
                let mut records: Vec<_> = lists.into_iter().flatten().collect();
                records.sort_by(|a, b| b.started_at.cmp(&a.started_at));
                records.truncate(limit);
                records
            })
        }
        Merge::Usage => merged_json(all(local, others), |lists: Vec<Vec<Usage>>| {
            let mut totals: HashMap<(String, String), Usage> = HashMap::new();
            for usage in lists.into_iter().flatten() {
                let key = (usage.namespace.clone(), usage.function.clone());
                match totals.get_mut(&key) {
                    Some(total) => {
                        total.invocations += usage.invocations;
                        total.errors += usage.errors;
                        total.seconds += usage.seconds;
                        total.gb_seconds += usage.gb_seconds;
                        total.cpu_seconds += usage.cpu_seconds;
                    }
                    None => {
                        totals.insert(key, usage);
                    }
                }
            }
            let mut totals: Vec<Usage> = totals.into_values().collect();
            totals.sort_by(|a, b| (&a.namespace, &a.function).cmp(&(&b.namespace, &b.function)));
            totals
        }),
        Merge::Logs => {
            let tail = limit(&query, 100);
            let body = merged_lines(&local, &others, tail);
            let mut response = body.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
    }
}

impl Answer {
    async fn read(response: Response) -> Self {
        let status = response.status().as_u16();
        match axum::body::to_bytes(response.into_body(), MAX_ANSWER).await {
            Ok(body) => Self {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
            Err(error) => Self::error(ApiError::internal(error)),
        }
    }

    fn error(error: ApiError) -> Self {
        let body = wisp_core::api::ErrorBody {
            error: error.message,
        };
        Self {
            status: error.status.as_u16(),
            body: serde_json::to_string(&body).expect("an error serializes"),
        }
    }

    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = (status, self.body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// `limit` (or `tail`) of a query, else `default`.
fn limit(query: &str, default: usize) -> usize {
    Query::<HashMap<String, String>>::try_from_uri(
        &format!("/?{query}").parse().expect("a query makes a URI"),
    )
    .ok()
    .and_then(|Query(params)| {
        params
            .get("limit")
            .or_else(|| params.get("tail"))
            .and_then(|limit| limit.parse::<i64>().ok())
    })
    // A negative one (faas-cli's `tail=-1`) is as many as there are.
    .map_or(default, |limit| {
        usize::try_from(limit).unwrap_or(usize::MAX)
    })
}

/// The answer of the one node that found what was asked for: a 409 when
/// several did, else this node's 403 or 404 when none did.
fn found(local: Answer, others: Vec<Answer>) -> Response {
    let mut hits: Vec<Answer> = Vec::new();
    let (mut forbidden, mut missing) = (None, None);
    for answer in std::iter::once(local).chain(others) {
        match answer.status {
            404 => missing = missing.or(Some(answer)),
            403 => forbidden = forbidden.or(Some(answer)),
            _ => hits.push(answer),
        }
    }
    match hits.len() {
        0 => forbidden
            .or(missing)
            .expect("this node's own answer")
            .into_response(),
        1 => hits.pop().expect("one").into_response(),
        n => ApiError::new(
            StatusCode::CONFLICT,
            format!("{n} nodes of the cluster hold a call of this id: name one with ?function=NAME.NAMESPACE"),
        )
        .into_response(),
    }
}

/// The successful answers (this node's first) merged by `merge`.
fn merged_json<T: DeserializeOwned + Serialize>(
    answers: Vec<Answer>,
    merge: impl FnOnce(Vec<T>) -> T,
) -> Response {
    let parts: Vec<T> = answers
        .into_iter()
        .filter(|answer| answer.status == 200)
        .filter_map(|answer| serde_json::from_str(&answer.body).ok())
        .collect();
    if parts.is_empty() {
        return ApiError::internal("this node's own answer did not parse").into_response();
    }
    Json(merge(parts)).into_response()
}

/// This node's answer, then the others'.
fn all(local: Answer, others: Vec<Answer>) -> Vec<Answer> {
    std::iter::once(local).chain(others).collect()
}

/// The latest `tail` log lines of all answers, oldest first.
fn merged_lines(local: &Answer, others: &[Answer], tail: usize) -> String {
    let mut lines: Vec<(LogEntry, &str)> = std::iter::once(local)
        .chain(others.iter().filter(|answer| answer.status == 200))
        .flat_map(|answer| answer.body.lines())
        .filter_map(|line| Some((serde_json::from_str::<LogEntry>(line).ok()?, line)))
        .collect();
    lines.sort_by(|(a, _), (b, _)| a.time.cmp(&b.time));
    let skip = lines.len().saturating_sub(tail);
    let mut text = String::new();
    for (_, line) in lines.into_iter().skip(skip) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A followed log: the whole cluster's stored lines, then this node's live
/// ones. This node's stored lines come first in its own body, so they are
/// left there and the others' go before them, merged among themselves.
fn follow_logs(local: Response, others: Vec<Answer>, query: &str) -> Response {
    let empty = Answer {
        status: 200,
        body: String::new(),
    };
    let theirs = merged_lines(&empty, &others, limit(query, 100));
    let (parts, body) = local.into_parts();
    let head =
        futures_util::stream::once(
            async move { Ok::<_, axum::Error>(axum::body::Bytes::from(theirs)) },
        );
    let stream = futures_util::StreamExt::chain(head, body.into_data_stream());
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Answers the other nodes' questions from this node's own routes until
/// the node is gone.
pub(crate) async fn answer(node: std::sync::Weak<Node>, cluster: Arc<wisp_cluster::Cluster>) {
    let Some(me) = node.upgrade().map(|node| node.id.clone()) else {
        return;
    };
    let questions = loop {
        match cluster.questions(&me).await {
            Ok(questions) => break questions,
            Err(error) => {
                tracing::warn!("{error}; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    futures_util::pin_mut!(questions);
    while let Some(question) = futures_util::StreamExt::next(&mut questions).await {
        let Some(node) = node.upgrade() else { return };
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let answer = answer_one(&node, &question.body).await;
            let mut bytes = serde_json::to_vec(&answer).expect("an answer serializes");
            if bytes.len() > cluster.max_answer() {
                let error = ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!(
                        "node {}'s answer of {} bytes is over the cluster's message size: ask for fewer",
                        node.id,
                        bytes.len()
                    ),
                );
                let answer = Answer::error(error);
                bytes = serde_json::to_vec(&answer).expect("an answer serializes");
            }
            if let Err(error) = cluster.answer(&question, &bytes).await {
                tracing::warn!("could not answer node {}: {error}", question.from);
            }
        });
    }
}

/// Runs one question through this node's own spanning routes.
async fn answer_one(node: &Arc<Node>, question: &[u8]) -> Answer {
    let Ok(question) = serde_json::from_slice::<Question>(question) else {
        return Answer::error(ApiError::bad_request("not a question"));
    };
    let request = axum::http::Request::builder()
        .method(question.method.as_str())
        .uri(question.uri.as_str())
        .extension(question.principal)
        .extension(Asked)
        .body(Body::empty());
    let request = match request {
        Ok(request) => request,
        Err(error) => return Answer::error(ApiError::bad_request(error.to_string())),
    };
    let router = axum::Router::new()
        .nest("/system", crate::spanning_routes(node))
        .with_state(node.clone());
    let service = hyper_util::service::TowerToHyperService::new(router);
    match hyper::service::Service::call(&service, request).await {
        Ok(response) => Answer::read(response).await,
        Err(infallible) => match infallible {},
    }
}
