//! `/system/*`: deploy, update, list, describe, scale and remove functions,
//! upload artifacts, node info. Every route needs the admin token.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
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

/// Lets a request through only with `Authorization: Bearer <admin token>`.
pub async fn require_admin(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), node.admin_token.as_bytes()) => {
            next.run(request).await
        }
        presented => {
            let message = if presented.is_some() {
                "the token is not valid"
            } else {
                "this route needs a token: send `Authorization: Bearer <token>`"
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a JSON body, answering 400 with serde's message (which names the field) when it does not fit.
fn json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
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
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<FunctionStatus>>, ApiError> {
    let functions = node.store.functions()?;
    Ok(Json(
        functions
            .iter()
            .filter(|stored| query.namespace.is_none() || stored.spec.namespace == query.get())
            .map(|stored| status_of(&node, &stored.spec))
            .collect(),
    ))
}

async fn describe(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<FunctionStatus>, ApiError> {
    let (name, namespace) = name.split_once('.').unwrap_or((&name, query.get()));
    let stored = node.store.function(namespace, name)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "function {name} is not deployed in namespace {namespace}"
        ))
    })?;
    Ok(Json(status_of(&node, &stored.spec)))
}

async fn create(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, ApiError> {
    deploy(node, json(&body)?, false)
        .await
        .map(|status| (StatusCode::CREATED, Json(status)).into_response())
}

async fn update(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, ApiError> {
    deploy(node, json(&body)?, true)
        .await
        .map(|status| (StatusCode::OK, Json(status)).into_response())
}

/// Validates, prepares (compiles), stores, then swaps the function in.
/// Any failure before the store write leaves everything as it was.
async fn deploy(
    node: Arc<Node>,
    deployment: FunctionDeployment,
    replace: bool,
) -> Result<FunctionStatus, ApiError> {
    let spec = FunctionSpec::from_deployment(deployment)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let _guard = node.deploy_lock.lock().await;
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
    let prepared = {
        let (node, spec) = (node.clone(), spec.clone());
        tokio::task::spawn_blocking(move || node.prepare(&spec))
            .await
            .map_err(ApiError::internal)?
    };
    let executor = match prepared {
        Ok(executor) => executor,
        Err(error) => {
            refuse_artifact(&node, &spec)?;
            return Err(match error {
                PrepareError::InvalidArtifact(message) => {
                    ApiError::bad_request(format!("function {}: {message}", spec.name))
                }
                PrepareError::Internal(message) => ApiError::internal(message),
            });
        }
    };
    // An app takes over only once its new replicas are ready, so a redeploy
    // fails no request and a broken app is refused here.
    if let Executor::App(app) = &executor
        && let Err(error) = app.warm().await
    {
        drop(executor);
        refuse_artifact(&node, &spec)?;
        return Err(ApiError::bad_request(format!(
            "function {}: {error}",
            spec.name
        )));
    }
    node.store.put_function(&spec)?;
    node.install(spec.clone(), executor);
    tracing::info!("deployed {}.{} ({})", spec.name, spec.namespace, spec.kind);
    Ok(status_of(&node, &spec))
}

/// Removes the artifact of a refused deploy, unless another function uses it.
fn refuse_artifact(node: &Node, spec: &FunctionSpec) -> Result<(), ApiError> {
    if let Some(digest) = &spec.artifact
        && !node.store.artifact_in_use(digest)?
    {
        node.engine.unload(digest);
        if let Err(cleanup) = node.store.delete_artifact(digest) {
            tracing::warn!("could not remove refused artifact {digest}: {cleanup}");
        }
    }
    Ok(())
}

/// Sets a fixed replica count for a `process-http` function (OpenFaaS's scale call).
async fn scale(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ScaleRequest = json(&body)?;
    let namespace = request.namespace.as_deref().unwrap_or(query.get());
    let (name, namespace) = name.split_once('.').unwrap_or((&name, namespace));
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

async fn remove(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, ApiError> {
    let request: DeleteFunction = json(&body)?;
    let namespace = request.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let name = &request.function_name;
    let _guard = node.deploy_lock.lock().await;
    let Some(stored) = node.store.function(namespace, name)? else {
        return Err(ApiError::not_found(format!(
            "function {name} is not deployed in namespace {namespace}"
        )));
    };
    node.store.delete_function(namespace, name)?;
    node.uninstall(namespace, name);
    if let Some(digest) = &stored.spec.artifact
        && !node.store.artifact_in_use(digest)?
    {
        node.engine.unload(digest);
    }
    tracing::info!("removed {name}.{namespace}");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn upload(State(node): State<Arc<Node>>, body: Body) -> Result<Json<ArtifactInfo>, ApiError> {
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

async fn artifacts(State(node): State<Arc<Node>>) -> Result<Json<Vec<ArtifactInfo>>, ApiError> {
    Ok(Json(node.store.artifacts()?))
}

async fn artifact(
    State(node): State<Arc<Node>>,
    Path(digest): Path<String>,
) -> Result<Json<ArtifactInfo>, ApiError> {
    node.store
        .artifact(&digest)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no artifact {digest}")))
}

async fn info(State(node): State<Arc<Node>>) -> Result<Json<SystemInfo>, ApiError> {
    let stats = node.engine.cache_stats();
    Ok(Json(SystemInfo {
        provider: ProviderInfo {
            provider: "wisp".into(),
            orchestration: "embedded".into(),
        },
        version: VersionInfo {
            release: env!("CARGO_PKG_VERSION").into(),
        },
        function_count: node.store.functions()?.len() as u64,
        active_invocations: node.active.load(Ordering::Relaxed),
        invocation_count: node.invocations.load(Ordering::Relaxed),
        compile_cache_hits: stats.hits.load(Ordering::Relaxed),
        compile_cache_misses: stats.misses.load(Ordering::Relaxed),
        queue: node.queue.info(&node.store)?,
    }))
}
