//! `/system/namespaces` (the node's admin token creates and removes them;
//! a namespace token sees its own) and `/system/tokens` (an admin of a
//! namespace, or the node's admin, manages the namespace's tokens).

use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse as _, Response},
    routing::{delete, get},
};
use serde::Deserialize;
use wisp_core::{
    spec::DEFAULT_NAMESPACE,
    tenancy::{
        Action, CreatedToken, NamespaceInfo, NewNamespace, NewToken, Principal, TokenInfo,
        validate_token_label,
    },
    validate_name,
};
use wisp_store::{NamespaceRemoval, Store, StoredNamespace, StoredToken};

use wisp_cluster::Key;

use super::Tenants;
use crate::{
    ApiError,
    admin::json,
    cluster,
    error::{Path, Query},
    node::Node,
    telemetry::rfc3339_millis,
};

pub(crate) fn system_routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/namespaces", get(namespaces).post(create_namespace))
        .route("/namespaces/{name}", delete(remove_namespace))
        .route("/tokens", get(tokens).post(create_token))
        .route("/tokens/{id}", delete(revoke_token))
}

fn time(seconds: i64) -> String {
    rfc3339_millis(seconds.saturating_mul(1000))
}

fn namespace_info(store: &Store, stored: StoredNamespace) -> Result<NamespaceInfo, ApiError> {
    let usage = store.namespace_contents(&stored.name, None)?.usage();
    Ok(NamespaceInfo {
        name: stored.name,
        quotas: stored.quotas,
        functions: usage.functions,
        artifact_bytes: usage.artifact_bytes,
        created_at: time(stored.created_at),
    })
}

fn token_info(token: StoredToken) -> TokenInfo {
    TokenInfo {
        id: token.id,
        namespace: token.namespace,
        role: token.role,
        name: token.name,
        created_at: time(token.created_at),
    }
}

/// `GET /system/namespaces`: names, as OpenFaaS (`faas-cli namespaces`)
/// lists them; `?detail=true` for each one's quotas and usage.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct NamespacesQuery {
    /// Each namespace's quotas and usage rather than its name alone.
    #[serde(default)]
    detail: bool,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Namespaces {
    Names(Vec<String>),
    Detailed(Vec<NamespaceInfo>),
}

#[utoipa::path(
    get,
    path = "/system/namespaces",
    tag = "tenants",
    summary = "The namespaces the token may see",
    params(NamespacesQuery),
    responses(
        (status = 200, body = Namespaces)
    )
)]
async fn namespaces(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<NamespacesQuery>,
) -> Result<Json<Namespaces>, ApiError> {
    let scope = principal.scope(None, Action::Read)?;
    let visible = node
        .tenants
        .namespaces()
        .into_iter()
        .filter(|namespace| scope.includes(&namespace.name));
    if !query.detail {
        return Ok(Json(Namespaces::Names(
            visible.map(|namespace| namespace.name).collect(),
        )));
    }
    visible
        .map(|namespace| namespace_info(&node.store, namespace))
        .collect::<Result<_, _>>()
        .map(|detailed| Json(Namespaces::Detailed(detailed)))
}

#[utoipa::path(
    post,
    path = "/system/namespaces",
    tag = "tenants",
    summary = "Create a namespace",
    request_body = NewNamespace,
    responses(
        (status = 201, body = NamespaceInfo)
    )
)]
async fn create_namespace(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.allow_node("create namespaces")?;
    let request: NewNamespace = json(&body)?;
    validate_name(&request.name).map_err(|error| ApiError::bad_request(error.to_string()))?;
    request.quotas.validate().map_err(ApiError::bad_request)?;
    let _guard = node.deploy_lock.lock().await;
    if node.tenants.namespace(&request.name).is_none() {
        cluster::share_namespace(&node, &request.name, &request.quotas).await?;
        // A new namespace: whatever a namespace of that name left in the
        // key-value stores (a write racing its removal) is not its own.
        node.key_value.forget(&request.name).await?;
        forget_objects(&node, &request.name).await?;
    }
    let created = node
        .tenants
        .create_namespace(&node.store, &request.name, &request.quotas)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("namespace {} already exists", request.name),
            )
        })?;
    tracing::info!("created namespace {}", request.name);
    let info = namespace_info(&node.store, created)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[utoipa::path(
    delete,
    path = "/system/namespaces/{name}",
    tag = "tenants",
    summary = "Remove a namespace and all it holds",
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Removed")
    )
)]
async fn remove_namespace(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    principal.allow_node("remove namespaces")?;
    if name == DEFAULT_NAMESPACE {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "namespace default always exists and cannot be removed",
        ));
    }
    let _guard = node.deploy_lock.lock().await;
    // Deploys wait on the lock, so what is checked here holds until the
    // removal: the namespace exists and holds no function.
    if node.tenants.namespace(&name).is_none() {
        return Err(unknown_namespace(&name));
    }
    let functions = node.store.namespace_contents(&name, None)?.functions;
    if functions > 0 {
        return Err(in_use(&name, functions));
    }
    // Its call log goes first, so a later namespace of the same name reads
    // none of its lines, records or usage: if this fails, the namespace is
    // still there and its removal can be tried again.
    let forgotten = {
        let (node, name) = (node.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            node.telemetry.flush();
            node.telemetry.log().forget_namespace(&name)
        })
        .await
        .map_err(ApiError::internal)?
    };
    forgotten?;
    // So do its key-value stores, which every node shares in a cluster.
    node.key_value.forget(&name).await?;
    forget_objects(&node, &name).await?;
    // Its tokens and secrets go with it, on every node.
    for token in node.store.tokens()? {
        if token.namespace == name {
            cluster::unshare(&node, Key::Token(token.id)).await?;
        }
    }
    for secret in node.store.secrets(Some(&name))? {
        cluster::unshare(
            &node,
            Key::Secret {
                namespace: name.clone(),
                name: secret.name,
            },
        )
        .await?;
    }
    cluster::unshare(&node, Key::Namespace(name.clone())).await?;
    match node.tenants.remove_namespace(&node.store, &name)? {
        NamespaceRemoval::Removed => {
            // Its async calls went with it: so do their counts against its
            // queue quota, or a namespace of the same name would inherit them.
            node.queue.backlog.forget(&name);
            node.queue.forget_namespace(&name);
            cluster::forget_generation(&node, &name);
            tracing::info!("removed namespace {name}");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        NamespaceRemoval::Unknown => Err(unknown_namespace(&name)),
        NamespaceRemoval::InUse(functions) => Err(in_use(&name, functions)),
    }
}

fn in_use(name: &str, functions: u32) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("namespace {name} still holds {functions} function(s): remove them first"),
    )
}

/// Removes a namespace's buckets and objects.
async fn forget_objects(node: &Node, namespace: &str) -> Result<(), ApiError> {
    node.objects
        .forget(namespace)
        .await
        .map_err(ApiError::internal)
}

pub(crate) fn unknown_namespace(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "namespace {name} does not exist: create it with `wisp ns create {name}`"
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TokenQuery {
    /// Only this namespace's tokens.
    namespace: Option<String>,
}

#[utoipa::path(
    get,
    path = "/system/tokens",
    tag = "tenants",
    summary = "Tokens, never their secrets",
    params(TokenQuery),
    responses(
        (status = 200, body = [TokenInfo])
    )
)]
async fn tokens(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<TokenQuery>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let scope = principal.scope(query.namespace.as_deref(), Action::ManageTokens)?;
    Ok(Json(
        node.store
            .tokens()?
            .into_iter()
            .filter(|token| scope.includes(&token.namespace))
            .map(token_info)
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/system/tokens",
    tag = "tenants",
    summary = "Create a token",
    request_body = NewToken,
    responses(
        (status = 201, body = CreatedToken)
    )
)]
async fn create_token(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: NewToken = json(&body)?;
    principal.allow(&request.namespace, Action::ManageTokens)?;
    if let Some(label) = &request.name {
        validate_token_label(label).map_err(ApiError::bad_request)?;
    }
    let _guard = node.deploy_lock.lock().await;
    if node.tenants.namespace(&request.namespace).is_none() {
        return Err(unknown_namespace(&request.namespace));
    }
    let (token, stored) = Tenants::new_token(&request.namespace, request.role, request.name);
    cluster::share_token(&node, &stored).await?;
    node.tenants.add_token(&node.store, stored.clone())?;
    tracing::info!(
        "created token {} ({}) for namespace {}",
        stored.id,
        stored.role,
        stored.namespace
    );
    let created = CreatedToken {
        token,
        info: token_info(stored),
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(
    delete,
    path = "/system/tokens/{id}",
    tag = "tenants",
    summary = "Revoke a token",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Revoked")
    )
)]
async fn revoke_token(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::not_found(format!("no token {id}"));
    let Some(Principal::Tenant { namespace, .. }) = node.tenants.token(&id) else {
        return Err(unknown());
    };
    principal.allow(&namespace, Action::ManageTokens)?;
    let _guard = node.deploy_lock.lock().await;
    cluster::unshare(&node, Key::Token(id.clone())).await?;
    if !node.tenants.revoke_token(&node.store, &id)? {
        return Err(unknown());
    }
    tracing::info!("revoked token {id} of namespace {namespace}");
    Ok(StatusCode::NO_CONTENT.into_response())
}
