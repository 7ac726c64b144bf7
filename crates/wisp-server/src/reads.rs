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

/// The largest answer a node reads from its own routes for itself.
const MAX_ANSWER: usize = 64 << 20;
/// How many questions of the other nodes a node answers at once; more wait.
const ANSWERING: usize = 8;

/// A request one node asks the others to answer from what they hold.
#[derive(Serialize, Deserialize)]
struct Question {
    principal: Principal,
    method: String,
    uri: String,
    /// Only this node answers it; the others say 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
}

/// What a node answered: the status and body its own route gave.
#[derive(Serialize, Deserialize)]
struct Answer {
    status: u16,
    body: String,
    /// The node that answered.
    #[serde(default)]
    node: String,
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
    if node.cluster.is_none() {
        return next.run(request).await;
    }
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
    let query = uri.query().unwrap_or_default().to_owned();
    let follow = matches!(merge, Merge::Logs) && param(&query, "follow").as_deref() == Some("true");
    // The others answer their stored lines; new ones stream from here only.
    let asked_uri = match uri.query() {
        Some(query) if follow => format!("{}?{}", uri.path(), without(query, "follow")),
        _ => uri.to_string(),
    };
    let question = Question {
        principal,
        method: request.method().to_string(),
        uri: asked_uri,
        to: None,
    };
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
        // Only where the call is: when this node has none, the one node
        // that has it (found as `GET /system/calls/{id}` finds it) retries.
        let local = next.run(request).await;
        if !matches!(
            local.status(),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN
        ) {
            return local;
        }
        let local = Answer::read(local, MAX_ANSWER).await;
        let lookup = Question {
            method: Method::GET.to_string(),
            uri: format!(
                "{}{}",
                uri.path().strip_suffix("/retry").unwrap_or(uri.path()),
                uri.query()
                    .map(|query| format!("?{query}"))
                    .unwrap_or_default()
            ),
            principal: question.principal.clone(),
            to: None,
        };
        let holders: Vec<Answer> = ask(lookup)
            .await
            .into_iter()
            .filter(|answer| answer.status == 200)
            .collect();
        let [holder] = holders.as_slice() else {
            return found(local, holders);
        };
        let retry = Question {
            to: Some(holder.node.clone()),
            ..question
        };
        let answers = ask(retry).await;
        return found(local, answers);
    }
    let (local, others) = tokio::join!(next.run(request), ask(question));
    // A bad request or a forbidden namespace is the same on every node;
    // only a single call or trace may be found elsewhere.
    if !local.status().is_success() && !matches!(merge, Merge::Call | Merge::Trace) {
        return local;
    }
    if follow {
        return follow_logs(local, others, &query);
    }
    let local = Answer::read(local, MAX_ANSWER).await;
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
    /// A response's status and body, or a 507 when the body is over `limit`.
    async fn read(response: Response, limit: usize) -> Self {
        let status = response.status().as_u16();
        match axum::body::to_bytes(response.into_body(), limit).await {
            Ok(body) => Self {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
                node: String::new(),
            },
            Err(_) => Self::error(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "an answer is over the {limit} bytes a node may send another: ask for fewer"
                ),
            )),
        }
    }

    fn error(error: ApiError) -> Self {
        let body = wisp_core::api::ErrorBody {
            error: error.message,
        };
        Self {
            status: error.status.as_u16(),
            body: serde_json::to_string(&body).expect("an error serializes"),
            node: String::new(),
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

/// A query's parameters, decoded as the routes decode them.
fn params(query: &str) -> HashMap<String, String> {
    format!("/?{query}")
        .parse()
        .ok()
        .and_then(|uri| Query::<HashMap<String, String>>::try_from_uri(&uri).ok())
        .map(|Query(params)| params)
        .unwrap_or_default()
}

/// One parameter of a query, decoded.
fn param(query: &str, name: &str) -> Option<String> {
    params(query).remove(name)
}

/// A query without the parameter `name`, however it was encoded.
fn without(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| !params(pair).contains_key(name))
        .collect::<Vec<_>>()
        .join("&")
}

/// `limit` (or `tail`) of a query, else `default`.
fn limit(query: &str, default: usize) -> usize {
    param(query, "limit")
        .or_else(|| param(query, "tail"))
        .and_then(|limit| limit.parse::<i64>().ok())
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
    let mut failed = None;
    for answer in std::iter::once(local).chain(others) {
        match answer.status {
            404 => missing = missing.or(Some(answer)),
            403 => forbidden = forbidden.or(Some(answer)),
            200..300 | 409 => hits.push(answer),
            _ => failed = failed.or(Some(answer)),
        }
    }
    match hits.len() {
        0 => failed
            .or(forbidden)
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
        node: String::new(),
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
    let answering = Arc::new(tokio::sync::Semaphore::new(ANSWERING));
    while let Some(question) = futures_util::StreamExt::next(&mut questions).await {
        let Some(node) = node.upgrade() else { return };
        let Ok(permit) = answering.clone().acquire_owned().await else {
            return;
        };
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let limit = cluster.max_sealed().saturating_sub(ANSWER_OVERHEAD);
            // An answer later than the asker waits for is of no use.
            let answered = tokio::time::timeout(
                wisp_cluster::ASK_TIMEOUT,
                answer_one(&node, &question.body, limit),
            )
            .await;
            drop(permit);
            let Ok(mut answer) = answered else {
                tracing::warn!(
                    "a question of node {} took too long to answer",
                    question.from
                );
                return;
            };
            answer.node.clone_from(&node.id);
            let bytes = serde_json::to_vec(&answer).expect("an answer serializes");
            if let Err(error) = cluster.answer(&node.id, &question, &bytes).await {
                tracing::warn!("could not answer node {}: {error}", question.from);
            }
        });
    }
}

/// Room for an answer's status, node id and JSON escapes around its body.
const ANSWER_OVERHEAD: usize = 4 << 10;

/// Runs one question through this node's own spanning routes, reading at
/// most `limit` bytes of the answer.
async fn answer_one(node: &Arc<Node>, question: &[u8], limit: usize) -> Answer {
    let Ok(question) = serde_json::from_slice::<Question>(question) else {
        return Answer::error(ApiError::bad_request("not a question"));
    };
    if question.to.as_ref().is_some_and(|to| *to != node.id) {
        return Answer::error(ApiError::not_found("asked of another node"));
    }
    // Only the node asked follows a log: a stream never ends.
    let query = question.uri.split_once('?').map_or("", |(_, query)| query);
    if param(query, "follow").is_some_and(|follow| follow != "false") {
        return Answer::error(ApiError::bad_request("only the node asked follows a log"));
    }
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
        Ok(response) => Answer::read(response, limit).await,
        Err(infallible) => match infallible {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_found_and_dropped_however_they_are_encoded() {
        for query in [
            "name=x&follow=true",
            "name=x&fo%6Clow=true",
            "%66ollow=true&name=x",
        ] {
            assert_eq!(param(query, "follow").as_deref(), Some("true"), "{query}");
            assert_eq!(without(query, "follow"), "name=x", "{query}");
        }
        assert_eq!(limit("tail=-1", 100), usize::MAX);
        assert_eq!(limit("limit=%35", 100), 5);
        assert_eq!(limit("", 100), 100);
    }
}
