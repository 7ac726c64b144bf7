//! Callbacks: once an async call is over, its result is POSTed to the
//! caller's `X-Callback-Url` with `X-Call-Id`, `X-Function-Name` and
//! `X-Function-Status`. A callback that fails (no answer, or not 2xx) is
//! retried with backoff; one still pending when the node stops is sent again
//! at start-up.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::http::{self, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use wisp_core::events::CallResult;
use wisp_store::CallRow;

use super::{Write, jitter};
use crate::node::Node;

/// Attempts at delivering one callback.
const ATTEMPTS: u32 = 5;
/// The delay before the second attempt; doubled for each next one.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client callbacks are sent with.
pub(super) struct Client(HttpClient<HttpConnector, Full<Bytes>>);

impl Client {
    pub(super) fn new() -> Self {
        Self(HttpClient::builder(TokioExecutor::new()).build_http())
    }
}

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

/// Sends a finished call's result to its callback URL, in the background.
pub(super) fn deliver(
    node: &Arc<Node>,
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
        if let Err(error) = node
            .queue
            .write(Write::Callback {
                id: id.clone(),
                state,
            })
            .await
        {
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
    deliver(node, row.id, function, url, status, headers, body);
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
    let mut delay = FIRST_DELAY;
    for attempt in 1..=ATTEMPTS {
        let mut request = http::Request::post(url)
            .header("x-call-id", id)
            .header("x-function-name", function)
            .header("x-function-status", status);
        if let Some(content_type) = headers.get("content-type") {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        let error = match request.body(Full::new(body.clone())) {
            Ok(request) => {
                match tokio::time::timeout(ATTEMPT_TIMEOUT, node.queue.callbacks.0.request(request))
                    .await
                {
                    Ok(Ok(response)) if response.status().is_success() => return true,
                    Ok(Ok(response)) => format!("it answered {}", response.status().as_u16()),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
                }
            }
            Err(error) => {
                tracing::warn!("call {id}: callback URL {url} is unusable: {error}");
                return false;
            }
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
