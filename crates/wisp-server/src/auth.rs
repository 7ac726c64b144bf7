//! Authentication and authorization. One layer in front of `/system/*`
//! resolves the bearer token to a [`Principal`] (the node's admin token, or
//! a namespace token with its role) and answers 401 without one; each route
//! then asks the principal about the namespace and the action it touches,
//! and answers 403 when the answer is no. Invoking a private function checks
//! the same way, reading only memory.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use wisp_core::{
    FunctionSpec,
    tenancy::{Action, Principal},
};

use crate::{ApiError, node::Node};

/// Lets a request through with a valid token, its [`Principal`] in the extensions.
pub(crate) async fn authenticate(
    State(node): State<Arc<Node>>,
    mut request: Request,
    next: Next,
) -> Response {
    match principal(&node, request.headers()) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// The principal of a request's bearer token: 401 when there is none or it is unknown.
fn principal(node: &Node, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized("this route needs a token: send `Authorization: Bearer <token>`")
    })?;
    resolve(node, &token).ok_or_else(|| ApiError::unauthorized("the token is not valid"))
}

/// The token a request carries: `Authorization: Bearer <token>`, or basic
/// authentication with the token as the password and any user name (what
/// `faas-cli login -u admin -p <token>` sends), except from a browser.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.to_owned());
    }
    // Not from a browser, which keeps basic credentials and sends them by
    // itself, from any page of the node's origin (a function's included).
    if headers.contains_key("sec-fetch-mode") || headers.contains_key(header::ORIGIN) {
        return None;
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim()).ok()?;
    let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_owned())
}

/// The principal of a request's token, if it carries a known one.
pub(crate) fn token_principal(node: &Node, headers: &HeaderMap) -> Option<Principal> {
    resolve(node, &bearer(headers)?)
}

fn resolve(node: &Node, token: &str) -> Option<Principal> {
    if constant_time_eq(token.as_bytes(), node.admin_token.as_bytes()) {
        return Some(Principal::Node);
    }
    node.tenants.principal(token)
}

/// Lets a scrape of `/metrics` through: anyone when the node has no
/// metrics token (`wisp up --metrics-token`), else that token or the node's
/// admin token. Metrics name every tenant's functions, so a namespace
/// token is refused (403) and no token, or an unknown one, is a 401.
pub(crate) fn allow_metrics(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(metrics_token) = &node.config.metrics_token else {
        return Ok(());
    };
    let token = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized(
            "/metrics needs the metrics token: send `Authorization: Bearer <token>`",
        )
    })?;
    if constant_time_eq(token.as_bytes(), metrics_token.as_bytes()) {
        return Ok(());
    }
    match resolve(node, &token) {
        Some(Principal::Node) => Ok(()),
        Some(Principal::Tenant { .. }) => Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "metrics cover every namespace: only the metrics token or the node's admin token reads them",
        )),
        None => Err(ApiError::unauthorized("the token is not valid")),
    }
}

/// Compares secrets without leaking where they differ through timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lets a call of `spec` through: any caller for a public function; for a
/// private one, a token that may invoke in its namespace. A wisp token is
/// removed from the headers the function sees, so a function never learns
/// its callers' tokens; any other `Authorization` reaches it unchanged.
pub(crate) fn allow_invoke(
    node: &Node,
    spec: &FunctionSpec,
    headers: &mut HeaderMap,
) -> Result<(), ApiError> {
    let sent = bearer(headers).is_some();
    let principal = bearer(headers).and_then(|token| resolve(node, &token));
    if principal.is_some() {
        headers.remove(header::AUTHORIZATION);
    }
    if !spec.private {
        return Ok(());
    }
    match (sent, principal) {
        (_, Some(principal)) => Ok(principal.allow(&spec.namespace, Action::Invoke)?),
        (true, None) => Err(ApiError::unauthorized("the token is not valid")),
        (false, None) => Err(ApiError::unauthorized(format!(
            "function {}.{} is private: send `Authorization: Bearer <token>` with a token of namespace {}",
            spec.name, spec.namespace, spec.namespace
        ))),
    }
}
