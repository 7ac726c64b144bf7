//! Callbacks: once an async call is over, its result is POSTed to the
//! caller's `X-Callback-Url` with `X-Call-Id`, `X-Function-Name` and
//! `X-Function-Status`. A callback that fails (no answer, or not 2xx) is
//! retried with backoff; one still pending when the node stops is sent again
//! at start-up.
//!
//! A callback is a request the node makes on a caller's say-so, so it is
//! held to the node's egress policy like a function's own requests: a URL
//! naming a denied address (loopback, metadata, private...) is refused at
//! enqueue, and every attempt connects only to an address checked after
//! resolution, so a name that resolves elsewhere later is caught then.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::http::{self, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use wisp_core::{egress::EgressPolicy, events::CallResult};
use wisp_runtime::outbound::{self, ConnectError};
use wisp_store::CallRow;

use super::{Write, jitter};
use crate::node::Node;

/// Attempts at delivering one callback.
const ATTEMPTS: u32 = 5;
/// The delay before the second attempt; doubled for each next one.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the check at enqueue may spend resolving a callback's host.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks an `X-Callback-Url`: an absolute `http://` URL.
pub(crate) fn parse_url(text: &str) -> Result<Uri, String> {
    let invalid = |why: &str| format!("X-Callback-Url `{text}` {why}");
    let uri: Uri = text.parse().map_err(|_| invalid("is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                "uses https, which callbacks do not support yet: use http://",
            ));
        }
        _ => return Err(invalid("must be an absolute http:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    Ok(uri)
}

/// Refuses a callback URL whose host is, or resolves only to, an address the
/// node's egress policy denies. A name that does not resolve now is let
/// through: it is checked again, after resolution, when the callback is sent.
pub(crate) async fn check_destination(
    policy: &EgressPolicy,
    text: &str,
    uri: &Uri,
) -> Result<(), String> {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    let checked = tokio::time::timeout(
        RESOLVE_TIMEOUT,
        outbound::allowed_addresses(policy, host, port),
    )
    .await;
    match checked {
        Ok(Err(ConnectError::Denied(denied))) => {
            Err(format!("X-Callback-Url `{text}` is refused: {denied}"))
        }
        _ => Ok(()),
    }
}

/// Why one attempt at a callback failed.
enum Failure {
    /// The egress policy refuses the destination: trying again will not help.
    Denied(String),
    /// Worth another attempt.
    Failed(String),
}

/// POSTs one attempt over a connection to an address the policy allows.
async fn post(
    policy: &EgressPolicy,
    uri: &Uri,
    request: http::request::Builder,
    body: Bytes,
) -> Result<http::StatusCode, Failure> {
    let failed = |error: &dyn std::fmt::Display| Failure::Failed(error.to_string());
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    let stream = outbound::connect(policy, host, port, ATTEMPT_TIMEOUT)
        .await
        .map_err(|error| match error {
            ConnectError::Denied(denied) => Failure::Denied(denied.to_string()),
            other => failed(&other),
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|error| failed(&error))?;
    tokio::spawn(connection);
    // The request line carries the path; the authority goes in `Host`.
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let authority = uri.authority().map_or(host, |authority| authority.as_str());
    let request = request
        .uri(path)
        .header(http::header::HOST, authority)
        .body(Full::new(body))
        .map_err(|error| failed(&error))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| failed(&error))?;
    Ok(response.status())
}

/// Sends a finished call's result to its callback URL, in the background:
/// `id` as users know it, `key` as the queue does.
#[expect(clippy::too_many_arguments, reason = "one call site each, all named")]
pub(super) fn deliver(
    node: &Arc<Node>,
    key: String,
    id: String,
    function: String,
    url: String,
    status: u16,
    headers: BTreeMap<String, String>,
    body: Bytes,
) {
    let node = node.clone();
    tokio::spawn(async move {
        let delivered = send(&node, &id, &function, &url, status, &headers, body).await;
        let counters = &node.queue.counters;
        let counter = if delivered {
            &counters.callbacks_delivered
        } else {
            &counters.callbacks_failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = if delivered { "delivered" } else { "failed" };
        if let Err(error) = node.queue.write(Write::Callback { key, state }).await {
            tracing::error!("call {id}: the callback's outcome could not be recorded: {error}");
        }
    });
}

/// Sends again a callback that was pending when the node stopped, with the stored result.
pub(super) fn resume(node: &Arc<Node>, row: CallRow) {
    let Some(url) = row.callback_url else { return };
    let result: Option<CallResult> = row
        .result
        .as_deref()
        .and_then(|json| serde_json::from_str(json).ok());
    let (status, headers, body) = match result {
        Some(result) => (result.status, result.headers, Bytes::from(result.body)),
        None => (
            502,
            BTreeMap::new(),
            Bytes::from(serde_json::json!({ "error": row.error }).to_string()),
        ),
    };
    let function = format!("{}.{}", row.function, row.namespace);
    deliver(node, row.key, row.id, function, url, status, headers, body);
}

/// Tries up to [`ATTEMPTS`] times; whether a 2xx came back.
async fn send(
    node: &Node,
    id: &str,
    function: &str,
    url: &str,
    status: u16,
    headers: &BTreeMap<String, String>,
    body: Bytes,
) -> bool {
    let uri: Uri = match url.parse() {
        Ok(uri) => uri,
        Err(error) => {
            tracing::warn!("call {id}: callback URL {url} is unusable: {error}");
            return false;
        }
    };
    let mut delay = FIRST_DELAY;
    for attempt in 1..=ATTEMPTS {
        let mut request = http::Request::post("/")
            .header("x-call-id", id)
            .header("x-function-name", function)
            .header("x-function-status", status);
        if let Some(content_type) = headers.get("content-type") {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        let sent = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            post(&node.egress, &uri, request, body.clone()),
        )
        .await;
        let error = match sent {
            Ok(Ok(status)) if status.is_success() => return true,
            Ok(Ok(status)) => format!("it answered {}", status.as_u16()),
            Ok(Err(Failure::Failed(error))) => error,
            Ok(Err(Failure::Denied(why))) => {
                tracing::warn!("call {id}: the callback to {url} is refused: {why}");
                return false;
            }
            Err(_) => format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
        };
        tracing::info!("call {id}: callback {attempt} of {ATTEMPTS} to {url} failed: {error}");
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay.mul_f64(0.5 + jitter() / 2.0)).await;
            delay *= 2;
        }
    }
    tracing::warn!("call {id}: gave up on the callback to {url}");
    false
}
