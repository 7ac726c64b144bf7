//! `/system/kv`: operators' and tenants' way into a namespace's key-value
//! stores, the ones its functions reach through `wasi:keyvalue`. The node's
//! admin token, or an admin or deploy token of the namespace, reads and
//! writes them; values go in and out as raw bytes.

use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{StatusCode, header},
    response::{IntoResponse as _, Response},
    routing::get,
};
use serde::Deserialize;
use wisp_core::{
    kv::{Bucket, KvError, MAX_VALUE_BYTES, Page, check_key, check_value},
    spec::DEFAULT_NAMESPACE,
    tenancy::{Action, Principal},
};

use crate::{
    ApiError,
    error::{Path, Query},
    node::Node,
};

pub(crate) fn system_routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/kv", get(stores))
        .route("/kv/{store}", get(keys))
        .route(
            "/kv/{store}/{*key}",
            get(read)
                .put(write)
                .delete(remove)
                .layer(DefaultBodyLimit::max(MAX_VALUE_BYTES)),
        )
}

impl From<KvError> for ApiError {
    fn from(error: KvError) -> Self {
        let status = match &error {
            KvError::NotDeclared(_) => StatusCode::FORBIDDEN,
            KvError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            KvError::NotANumber(_) | KvError::Overflow(_) => StatusCode::CONFLICT,
            KvError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            KvError::TooManyToList(_) | KvError::KeysTooLarge(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            KvError::Backend(detail) => {
                tracing::warn!("key-value store: {detail}");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the key-value stores cannot be reached; see the node's log",
                );
            }
            KvError::BadStore(_) | KvError::BadKey => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, error.to_string())
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Scope {
    /// The namespace; `default` when absent.
    namespace: Option<String>,
}

/// A page of a store's keys.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Listing {
    /// The namespace; `default` when absent.
    namespace: Option<String>,
    /// Where the page starts: the `cursor` of the page before.
    #[serde(default)]
    cursor: u64,
}

impl Scope {
    /// The namespace asked for (`default` when none), once the principal
    /// may use its stores and it exists.
    fn namespace(&self, node: &Node, principal: &Principal) -> Result<String, ApiError> {
        let namespace = self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        principal.allow(namespace, Action::ManageData)?;
        if node.tenants.namespace(namespace).is_none() {
            return Err(crate::tenants::routes::unknown_namespace(namespace));
        }
        Ok(namespace.to_owned())
    }

    fn bucket(&self, node: &Node, principal: &Principal, store: &str) -> Result<Bucket, ApiError> {
        Ok(Bucket::new(&self.namespace(node, principal)?, store)?)
    }

    /// The bucket of `store` and the checked `key` in it.
    fn entry(
        &self,
        node: &Node,
        principal: &Principal,
        (store, key): &(String, String),
    ) -> Result<Bucket, ApiError> {
        let bucket = self.bucket(node, principal, store)?;
        check_key(key)?;
        Ok(bucket)
    }
}

#[utoipa::path(
    get,
    path = "/system/kv",
    tag = "kv",
    summary = "A namespace's key-value stores",
    params(Scope),
    responses(
        (status = 200, body = [String])
    )
)]
async fn stores(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Query(scope): Query<Scope>,
) -> Result<Json<Vec<String>>, ApiError> {
    let namespace = scope.namespace(&node, &principal)?;
    Ok(Json(node.key_value.stores(&namespace).await?))
}

#[utoipa::path(
    get,
    path = "/system/kv/{store}",
    tag = "kv",
    summary = "A page of a store's keys",
    params(("store" = String, Path), Listing),
    responses(
        (status = 200, body = Page)
    )
)]
async fn keys(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(store): Path<String>,
    Query(listing): Query<Listing>,
) -> Result<Json<Page>, ApiError> {
    let scope = Scope {
        namespace: listing.namespace,
    };
    let bucket = scope.bucket(&node, &principal, &store)?;
    Ok(Json(node.key_value.list(&bucket, listing.cursor).await?))
}

#[utoipa::path(
    get,
    path = "/system/kv/{store}/{key}",
    tag = "kv",
    summary = "A key's value",
    params(("store" = String, Path), ("key" = String, Path), Scope),
    responses(
        (status = 200, body = crate::openapi::Binary, content_type = "application/octet-stream")
    )
)]
async fn read(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(entry): Path<(String, String)>,
    Query(scope): Query<Scope>,
) -> Result<Response, ApiError> {
    let bucket = scope.entry(&node, &principal, &entry)?;
    let (store, key) = entry;
    match node.key_value.get(&bucket, &key).await? {
        Some(value) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
        }
        None => Err(ApiError::not_found(format!(
            "key `{key}` is not in key-value store {store} of namespace {}",
            bucket.namespace
        ))),
    }
}

#[utoipa::path(
    put,
    path = "/system/kv/{store}/{key}",
    tag = "kv",
    summary = "Set a key",
    params(("store" = String, Path), ("key" = String, Path), Scope),
    request_body(content = crate::openapi::Binary, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Set")
    )
)]
async fn write(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(entry): Path<(String, String)>,
    Query(scope): Query<Scope>,
    value: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bucket = scope.entry(&node, &principal, &entry)?;
    let value = value.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a value of a key-value store holds at most {MAX_VALUE_BYTES} bytes"),
        ),
        status => ApiError::new(status, rejection.body_text()),
    })?;
    check_value(&value)?;
    node.key_value
        .set(&bucket, &entry.1, value.to_vec())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    delete,
    path = "/system/kv/{store}/{key}",
    tag = "kv",
    summary = "Delete a key",
    params(("store" = String, Path), ("key" = String, Path), Scope),
    responses(
        (status = 204, description = "Deleted, or was absent")
    )
)]
async fn remove(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(entry): Path<(String, String)>,
    Query(scope): Query<Scope>,
) -> Result<Response, ApiError> {
    let bucket = scope.entry(&node, &principal, &entry)?;
    node.key_value.delete(&bucket, &entry.1).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
