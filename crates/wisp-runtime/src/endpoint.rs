//! The node, as processes reach it: each `process` call and `process-http`
//! replica of a function that declares key-value stores or buckets, or
//! allows `http://*.wisp.internal` (or one function there) in its
//! `allowed_outbound_hosts`, is told `$WISP_API_URL` and `$WISP_API_TOKEN`,
//! a listener of the node's own and a token made for that process alone.
//! What the process sends there is what a wasm guest reaches under
//! `http://*.wisp.internal` ([`Internal`]), as the same function:
//!
//! - `$WISP_API_URL/function/{name}[.{namespace}]/...` calls a function
//!   in-process, if `http://{name}[.{namespace}].wisp.internal` is allowed;
//! - `$WISP_API_URL/kv/{store}/{key}` and `$WISP_API_URL/s3/{bucket}/{key}`
//!   reach the key-value stores and buckets its function declares.
//!
//! The listener is on the sandbox's own loopback when the node is root (it
//! binds it inside the sandbox's network namespace before the function
//! runs, see [`crate::sandbox`]), so nothing else reaches it; on the host's
//! loopback when the process shares the host's network (a node that is not
//! root, or runs unsandboxed), where the token is what keeps others out.
//! Either way it lives exactly as long as the process, and holds at most
//! [`MAX_CONNECTIONS`] connections of it at once.

use std::{convert::Infallible, sync::Arc};

use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::{
    Response,
    outbound::{Caller, INTERNAL_DOMAIN, Internal, host_matches},
};

/// The most connections one process may hold open to the endpoint at once:
/// further ones wait to be accepted.
const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send a request's head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The largest request head the endpoint reads.
const MAX_HEAD_SIZE: usize = 64 << 10;

/// The variable that tells a process where the node is.
pub const URL_VARIABLE: &str = "WISP_API_URL";
/// The variable that holds the process's token for it.
pub const TOKEN_VARIABLE: &str = "WISP_API_TOKEN";

/// What a function's processes reach through the node's endpoint: the
/// node's in-process calls, as that function.
pub struct NodeAccess {
    /// Where the requests go.
    pub internal: Arc<dyn Internal>,
    /// The function's namespace.
    pub namespace: String,
    /// The function's name.
    pub name: String,
    /// Its `allowed_outbound_hosts`: the functions it may call.
    pub allowed: Vec<String>,
}

impl NodeAccess {
    /// Whether a function reaches anything through the endpoint: it declares
    /// stores or buckets, or allows a host under [`INTERNAL_DOMAIN`]. Others
    /// get none, and their calls do not pay for one.
    pub fn wanted(stores: &[String], buckets: &[String], allowed: &[String]) -> bool {
        !stores.is_empty()
            || !buckets.is_empty()
            || allowed.iter().any(|entry| {
                let host = entry.split_once("://").map_or("", |(_, rest)| rest);
                let host = host.trim_end_matches('/');
                let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
                host == "*" || host.to_ascii_lowercase().ends_with(INTERNAL_DOMAIN)
            })
    }

    /// Whether the function may call the one `reference` names.
    fn may_call(&self, reference: &str) -> bool {
        let host = format!("{reference}{INTERNAL_DOMAIN}");
        self.allowed
            .iter()
            .any(|allowed| host_matches(allowed, "http", &host, 80))
    }
}

impl std::fmt::Debug for NodeAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAccess")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// A fresh token for one process.
pub(crate) fn token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The variables that tell a process the endpoint at `127.0.0.1:{port}`.
pub(crate) fn env(port: u16, token: &str) -> [(String, String); 2] {
    [
        (URL_VARIABLE.to_owned(), format!("http://127.0.0.1:{port}")),
        (TOKEN_VARIABLE.to_owned(), token.to_owned()),
    ]
}

/// The endpoint, served until this is dropped, with every connection to it.
#[derive(Debug)]
pub struct Serving(tokio::task::AbortHandle);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the endpoint on `listener` for a process of `access`'s function,
/// called `depth` in-process calls deep, which shows `token`.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    token: String,
    access: Arc<NodeAccess>,
    depth: u32,
) -> std::io::Result<Serving> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let shared = Arc::new((token, access, depth));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD_SIZE);
    let task = tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!("the node's endpoint for {}: accept: {error}", shared.1.name);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            while connections.try_join_next().is_some() {}
            let shared = shared.clone();
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move {
                    let (token, access, depth) = &*shared;
                    Ok::<_, Infallible>(answer(request, token, access, *depth).await)
                }
            });
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            connections.spawn(async move {
                let _slot = slot;
                connection.await
            });
        }
    });
    Ok(Serving(task.abort_handle()))
}

/// Answers one request: a 401 without the token, else the node's answer to
/// the same request from the function in-process.
async fn answer(
    mut request: http::Request<Incoming>,
    token: &str,
    access: &NodeAccess,
    depth: u32,
) -> Response {
    let shown = request
        .headers_mut()
        .remove(http::header::AUTHORIZATION)
        .and_then(|value| {
            let value = value.to_str().ok()?;
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    if !shown.is_some_and(|shown| same(shown.as_bytes(), token.as_bytes())) {
        return refusal(
            http::StatusCode::UNAUTHORIZED,
            "requests to the node carry `Authorization: Bearer $WISP_API_TOKEN`",
        );
    }
    let (reference, uri) = match route(request.uri()) {
        Some(routed) => routed,
        None => {
            return refusal(
                http::StatusCode::NOT_FOUND,
                "the node answers /function/{name}[.{namespace}]/..., /kv/... and /s3/... here",
            );
        }
    };
    if !reference.is_empty() && !access.may_call(&reference) {
        return refusal(
            http::StatusCode::FORBIDDEN,
            "the function may call only the functions its allowed_outbound_hosts allows \
             (http://*.wisp.internal, or http://{name}[.{namespace}].wisp.internal)",
        );
    }
    *request.uri_mut() = uri;
    let caller = Caller {
        namespace: access.namespace.clone(),
        name: access.name.clone(),
        depth: depth + 1,
    };
    let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
    access.internal.call(caller, reference, request).await
}

/// The function a path names (empty for the node's own services) and the
/// path it is sent on with: `/function/{reference}/rest` becomes `/rest`.
fn route(uri: &http::Uri) -> Option<(String, http::Uri)> {
    let path = uri.path();
    let Some(rest) = path.strip_prefix("/function/") else {
        return Some((String::new(), uri.clone()));
    };
    let (reference, rest) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let labels = reference.split('.').count();
    if reference.is_empty() || labels > 2 {
        return None;
    }
    let uri = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    Some((reference.to_ascii_lowercase(), uri.parse().ok()?))
}

/// Whether two tokens are equal, in a time that does not tell where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON error answer; `message` holds nothing JSON would escape.
fn refusal(status: http::StatusCode, message: &str) -> Response {
    let body = format!("{{\"error\":\"{message}\"}}");
    let mut response = http::Response::new(
        http_body_util::Full::new(bytes::Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::{NodeAccess, route, same};

    #[test]
    fn paths_name_a_function_or_the_nodes_services() {
        for (path, reference, sent) in [
            ("/function/hello", "hello", "/"),
            ("/function/hello/a/b?x=1", "hello", "/a/b?x=1"),
            ("/function/Hello.team-b/", "hello.team-b", "/"),
            ("/kv/default/k", "", "/kv/default/k"),
            ("/s3/uploads/a.png?uploads", "", "/s3/uploads/a.png?uploads"),
        ] {
            let (named, uri) = route(&path.parse().unwrap()).expect(path);
            assert_eq!(
                (named.as_str(), uri.to_string().as_str()),
                (reference, sent)
            );
        }
        for path in ["/function/", "/function//x", "/function/a.b.c/x"] {
            assert!(route(&path.parse().unwrap()).is_none(), "{path}");
        }
    }

    #[test]
    fn only_functions_that_reach_something_get_an_endpoint() {
        let none: &[String] = &[];
        let hosts = |hosts: &[&str]| {
            hosts
                .iter()
                .map(|host| host.to_string())
                .collect::<Vec<_>>()
        };
        assert!(!NodeAccess::wanted(none, none, none));
        assert!(!NodeAccess::wanted(
            none,
            none,
            &hosts(&["https://api.example.com"])
        ));
        assert!(NodeAccess::wanted(&hosts(&["default"]), none, none));
        assert!(NodeAccess::wanted(none, &hosts(&["uploads"]), none));
        for allowed in [
            "http://*.wisp.internal",
            "http://users.wisp.internal",
            "http://users.team-b.wisp.internal:80/",
            "*://*:*",
        ] {
            assert!(
                NodeAccess::wanted(none, none, &hosts(&[allowed])),
                "{allowed}"
            );
        }
    }

    #[test]
    fn tokens_match_only_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
