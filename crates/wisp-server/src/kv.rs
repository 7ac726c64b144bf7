//! `/system/kv`: operators' and tenants' way into a namespace's key-value
//! stores, the ones its functions reach through `wasi:keyvalue`. The node's
//! admin token, or an admin or deploy token of the namespace, reads and
//! writes them; values go in and out as raw bytes. Functions reach the
//! stores they declare the same way in-process, at `/kv` of the node's
//! endpoint (processes) or `http://wisp.internal/kv` (wasm guests).

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequestParts, Request, State, rejection::BytesRejection},
    http::{StatusCode, header, request::Parts},
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

/// A function's request to its stores, in-process: the routes of
/// `/system/kv` (without `/system`), with the stores the function declares
/// for credentials.
pub(crate) async fn for_function(
    node: &Arc<Node>,
    namespace: &str,
    name: &str,
    mut request: Request,
) -> Response {
    let Some(function) = node.function(namespace, name) else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("function {name}.{namespace} is not deployed"),
        )
        .into_response();
    };
    request.extensions_mut().insert(Access::Function {
        namespace: namespace.to_owned(),
        stores: function.spec.key_value_stores.clone(),
    });
    let mut routes = system_routes().with_state(node.clone());
    match tower_service::Service::call(&mut routes, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Who reaches the stores.
#[derive(Clone)]
enum Access {
    /// A client: its token's principal.
    Client(Principal),
    /// A function of the node: the stores of its namespace it declares.
    Function {
        namespace: String,
        stores: Vec<String>,
    },
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if let Some(access) = parts.extensions.get::<Access>() {
            return Ok(access.clone());
        }
        parts
            .extensions
            .get::<Principal>()
            .map(|principal| Access::Client(principal.clone()))
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "no credentials"))
    }
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
    /// The namespace asked for (`default` when none, a function's own for
    /// a function), once the asker may use its stores and it exists.
    fn namespace(&self, node: &Node, access: &Access) -> Result<String, ApiError> {
        let namespace = match access {
            Access::Client(principal) => {
                let namespace = self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
                principal.allow(namespace, Action::ManageData)?;
                namespace
            }
            Access::Function { namespace, .. } => match self.namespace.as_deref() {
                Some(asked) if asked != namespace => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "a function of namespace {namespace} reaches the key-value stores \
                             of its own namespace only, not {asked}'s"
                        ),
                    ));
                }
                _ => namespace,
            },
        };
        if node.tenants.namespace(namespace).is_none() {
            return Err(crate::tenants::routes::unknown_namespace(namespace));
        }
        Ok(namespace.to_owned())
    }

    /// The bucket of `store`, which a function must have declared.
    fn bucket(&self, node: &Node, access: &Access, store: &str) -> Result<Bucket, ApiError> {
        let bucket = Bucket::new(&self.namespace(node, access)?, store)?;
        match access {
            Access::Function { stores, .. } if !stores.iter().any(|declared| declared == store) => {
                Err(KvError::NotDeclared(store.to_owned()).into())
            }
            _ => Ok(bucket),
        }
    }

    /// The bucket of `store` and the checked `key` in it.
    fn entry(
        &self,
        node: &Node,
        access: &Access,
        (store, key): &(String, String),
    ) -> Result<Bucket, ApiError> {
        let bucket = self.bucket(node, access, store)?;
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
    access: Access,
    Query(scope): Query<Scope>,
) -> Result<Json<Vec<String>>, ApiError> {
    let namespace = scope.namespace(&node, &access)?;
    let mut stores = node.key_value.stores(&namespace).await?;
    if let Access::Function {
        stores: declared, ..
    } = &access
    {
        stores.retain(|store| declared.contains(store));
    }
    Ok(Json(stores))
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
    access: Access,
    Path(store): Path<String>,
    Query(listing): Query<Listing>,
) -> Result<Json<Page>, ApiError> {
    let scope = Scope {
        namespace: listing.namespace,
    };
    let bucket = scope.bucket(&node, &access, &store)?;
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
    access: Access,
    Path(entry): Path<(String, String)>,
    Query(scope): Query<Scope>,
) -> Result<Response, ApiError> {
    let bucket = scope.entry(&node, &access, &entry)?;
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
    access: Access,
    Path(entry): Path<(String, String)>,
    Query(scope): Query<Scope>,
    value: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bucket = scope.entry(&node, &access, &entry)?;
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
    access: Access,
    Path(entry): Path<(String, String)>,
    Query(scope): Query<Scope>,
) -> Result<Response, ApiError> {
    let bucket = scope.entry(&node, &access, &entry)?;
    node.key_value.delete(&bucket, &entry.1).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
