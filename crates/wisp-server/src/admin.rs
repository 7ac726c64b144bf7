//! `/system/*`: deploy, update, list, describe, scale and remove functions,
//! upload artifacts, node info. Every route checks what the caller's token
//! may do in the namespace it touches (see [`crate::auth`]); deploys check
//! the namespace's quotas.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Extension, Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, put},
};
use http_body_util::BodyExt as _;
use serde::{Deserialize, de::DeserializeOwned};
use wisp_core::{
    FunctionSpec,
    api::{
        ArtifactInfo, DeleteFunction, FunctionDeployment, FunctionStatus, ProviderInfo,
        ScaleRequest, SystemInfo, VersionInfo,
    },
    spec::{DEFAULT_NAMESPACE, MAX_SCALE},
    tenancy::{Action, Principal, Quotas},
};
use wisp_runtime::{Executor, PrepareError};

use crate::{ApiError, node::Node};

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/functions",
            get(list).post(create).put(update).delete(remove),
        )
        .route("/function/{name}", get(describe))
        .route("/scale-function/{name}", axum::routing::post(scale))
        .route("/artifacts", put(upload).get(artifacts))
        .route("/artifacts/{digest}", get(artifact))
        .route("/info", get(info))
}

/// Parses a JSON body, answering 400 with serde's message (which names the field) when it does not fit.
pub(crate) fn json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("invalid request body: {error}")))
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

impl NamespaceQuery {
    fn get(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

fn status_of(node: &Node, spec: &FunctionSpec) -> FunctionStatus {
    let mut status = spec.status(node.observed(&spec.namespace, &spec.name));
    status.trigger_status = crate::events::triggers::status(node, spec);
    status
}

async fn list(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<FunctionStatus>>, ApiError> {
    let scope = principal.scope(query.namespace.as_deref(), Action::Read)?;
    let functions = node.store.functions()?;
    Ok(Json(
        functions
            .iter()
            .filter(|stored| scope.includes(&stored.spec.namespace))
            .map(|stored| status_of(&node, &stored.spec))
            .collect(),
    ))
}

async fn describe(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<FunctionStatus>, ApiError> {
    let (name, namespace) = name.split_once('.').unwrap_or((&name, query.get()));
    principal.allow(namespace, Action::Read)?;
    let stored = node.store.function(namespace, name)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "function {name} is not deployed in namespace {namespace}"
        ))
    })?;
    Ok(Json(status_of(&node, &stored.spec)))
}

async fn create(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    deploy(node, &principal, json(&body)?, false)
        .await
        .map(|status| (StatusCode::CREATED, Json(status)).into_response())
}

async fn update(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    deploy(node, &principal, json(&body)?, true)
        .await
        .map(|status| (StatusCode::OK, Json(status)).into_response())
}

/// Validates, checks quotas, prepares (compiles), stores, then swaps the
/// function in. Any failure before the store write leaves everything as it
/// was. The node's admin token may deploy into a namespace that does not
/// exist yet: the namespace is created, without quotas, with the function.
async fn deploy(
    node: Arc<Node>,
    principal: &Principal,
    deployment: FunctionDeployment,
    replace: bool,
) -> Result<FunctionStatus, ApiError> {
    principal.allow(
        deployment.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        Action::Deploy,
    )?;
    let spec = FunctionSpec::from_deployment(deployment)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let _guard = node.deploy_lock.lock().await;
    let namespace = node.tenants.namespace(&spec.namespace);
    if namespace.is_none() {
        principal.allow_node("create namespaces")?;
    }
    let exists = node.store.function(&spec.namespace, &spec.name)?.is_some();
    match (exists, replace) {
        (true, false) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "function {} already exists in namespace {}: update it with PUT",
                    spec.name, spec.namespace
                ),
            ));
        }
        (false, true) => {
            return Err(ApiError::not_found(format!(
                "function {} is not deployed in namespace {}: create it with POST",
                spec.name, spec.namespace
            )));
        }
        _ => {}
    }
    if let Some(route) = &spec.route
        && let Some(owner) = node.route_owner(route, (&spec.namespace, &spec.name))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("route {route} is already served by {owner}"),
        ));
    }
    if let Some(namespace) = &namespace {
        let usage = crate::tenants::usage_with(&node.store, &spec)?;
        if let Err(exceeded) = namespace.quotas.check(&spec.namespace, usage) {
            refuse_artifact(&node, &spec)?;
            return Err(exceeded.into());
        }
    }
    let executor = match ready(&node, &spec).await {
        Ok(executor) => executor,
        Err(error) => {
            refuse_artifact(&node, &spec)?;
            return Err(error);
        }
    };
    if namespace.is_none() {
        node.tenants
            .create_namespace(&node.store, &spec.namespace, &Quotas::default())?;
        tracing::info!(
            "created namespace {} with its first function",
            spec.namespace
        );
    }
    node.store.put_function(&spec)?;
    node.install(spec.clone(), executor);
    tracing::info!("deployed {}.{} ({})", spec.name, spec.namespace, spec.kind);
    Ok(status_of(&node, &spec))
}

/// Prepares (compiles) a function off the async threads and, for an app,
/// waits until its new replicas are ready: an app takes over only then, so
/// a redeploy fails no request and a broken app is refused (400).
pub(crate) async fn ready(node: &Arc<Node>, spec: &FunctionSpec) -> Result<Executor, ApiError> {
    let prepared = {
        let (node, spec) = (node.clone(), spec.clone());
        tokio::task::spawn_blocking(move || node.prepare(&spec))
            .await
            .map_err(ApiError::internal)?
    };
    let executor = prepared.map_err(|error| match error {
        PrepareError::InvalidArtifact(message) => {
            ApiError::bad_request(format!("function {}: {message}", spec.name))
        }
        PrepareError::Internal(message) => ApiError::internal(message),
    })?;
    if let Executor::App(app) = &executor
        && let Err(error) = app.warm().await
    {
        return Err(ApiError::bad_request(format!(
            "function {}: {error}",
            spec.name
        )));
    }
    Ok(executor)
}

/// Removes the artifacts of a refused deploy, unless another function uses them.
fn refuse_artifact(node: &Node, spec: &FunctionSpec) -> Result<(), ApiError> {
    for digest in spec.artifacts() {
        if !node.store.artifact_in_use(digest)? {
            node.engine.unload(digest);
            if let Err(cleanup) = node.store.delete_artifact(digest) {
                tracing::warn!("could not remove refused artifact {digest}: {cleanup}");
            }
        }
    }
    Ok(())
}

/// Sets a fixed replica count for a `process-http` function (OpenFaaS's scale call).
async fn scale(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ScaleRequest = json(&body)?;
    let namespace = request.namespace.as_deref().unwrap_or(query.get());
    let (name, namespace) = name.split_once('.').unwrap_or((&name, namespace));
    principal.allow(namespace, Action::Deploy)?;
    let function = node.function(namespace, name).ok_or_else(|| {
        ApiError::not_found(format!(
            "function {name} is not deployed in namespace {namespace}"
        ))
    })?;
    let Executor::App(app) = &function.executor else {
        return Err(ApiError::bad_request(format!(
            "function {name} is a {} function: it gets a fresh instance per request and has no replicas to scale",
            function.spec.kind
        )));
    };
    if request
        .replicas
        .is_some_and(|replicas| replicas > MAX_SCALE)
    {
        return Err(ApiError::bad_request(format!(
            "replicas must be at most {MAX_SCALE}"
        )));
    }
    app.set_replicas(request.replicas);
    match request.replicas {
        Some(replicas) => tracing::info!("scaled {name}.{namespace} to {replicas} replicas"),
        None => tracing::info!("{name}.{namespace} is autoscaled again"),
    }
    Ok((StatusCode::ACCEPTED, Json(status_of(&node, &function.spec))).into_response())
}

async fn remove(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: DeleteFunction = json(&body)?;
    let namespace = request.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    principal.allow(namespace, Action::Deploy)?;
    let name = &request.function_name;
    let _guard = node.deploy_lock.lock().await;
    let Some(stored) = node.store.function(namespace, name)? else {
        return Err(ApiError::not_found(format!(
            "function {name} is not deployed in namespace {namespace}"
        )));
    };
    node.store.delete_function(namespace, name)?;
    node.uninstall(namespace, name);
    if let Err(error) = node.secret_files.remove(namespace, name) {
        tracing::warn!("could not remove the secret files of {name}.{namespace}: {error}");
    }
    if let Some(digest) = &stored.spec.artifact
        && !node.store.artifact_in_use(digest)?
    {
        node.engine.unload(digest);
    }
    tracing::info!("removed {name}.{namespace}");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Artifacts are shared by content, so any token that may deploy somewhere may upload.
async fn upload(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Json<ArtifactInfo>, ApiError> {
    principal.allow_somewhere(Action::Deploy)?;
    let limit = node.config.max_artifact_size;
    let mut upload = node.store.begin_artifact()?;
    let mut body = http_body_util::Limited::new(body, limit as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the artifact is larger than the limit of {}",
                        wisp_core::ByteSize(limit)
                    ),
                )
            } else {
                ApiError::bad_request(format!("could not read the artifact: {error}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            upload.write(&data)?;
        }
    }
    Ok(Json(upload.commit(&node.store)?))
}

/// Every artifact for the node's token; for a namespace token, those its namespace's functions use.
async fn artifacts(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<ArtifactInfo>>, ApiError> {
    let mut artifacts = node.store.artifacts()?;
    if let Some(namespace) = principal.scope(None, Action::Deploy)?.namespace() {
        let used = node.store.namespace_contents(namespace, None)?.artifacts;
        artifacts.retain(|artifact| used.contains_key(&artifact.digest));
    }
    Ok(Json(artifacts))
}

/// Whether an artifact is stored, so a client can skip uploading it again.
async fn artifact(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Path(digest): Path<String>,
) -> Result<Json<ArtifactInfo>, ApiError> {
    principal.allow_somewhere(Action::Deploy)?;
    node.store
        .artifact(&digest)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no artifact {digest}")))
}

/// The node's figures; any valid token may read them, and a namespace
/// token's function count covers its namespace only.
async fn info(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<SystemInfo>, ApiError> {
    let scope = principal.scope(None, Action::Read)?;
    let function_count = node
        .store
        .functions()?
        .iter()
        .filter(|stored| scope.includes(&stored.spec.namespace))
        .count();
    let stats = node.engine.cache_stats();
    Ok(Json(SystemInfo {
        provider: ProviderInfo {
            provider: "wisp".into(),
            orchestration: "embedded".into(),
        },
        version: VersionInfo {
            release: env!("CARGO_PKG_VERSION").into(),
        },
        function_count: function_count as u64,
        active_invocations: node.active.load(Ordering::Relaxed),
        invocation_count: node.invocations.load(Ordering::Relaxed),
        compile_cache_hits: stats.hits.load(Ordering::Relaxed),
        compile_cache_misses: stats.misses.load(Ordering::Relaxed),
        queue: node.queue.info(&node.store)?,
    }))
}
