//! `/system/*`: deploy, update, list, describe, scale and remove functions,
//! upload artifacts, node info. Every route checks what the caller's token
//! may do in the namespace it touches (see [`crate::auth`]); deploys check
//! the namespace's quotas. Uploads are charged to the uploader's namespace
//! until a function uses them, and collected when nothing has used them for
//! the grace period ([`collect_artifacts`]).

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Extension, Json, Router,
    body::{Body, Bytes},
    extract::State,
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
    tenancy::{Action, Principal, QuotaExceeded, Quotas},
};
use wisp_runtime::{Executor, PrepareError};

use crate::{
    ApiError, cluster,
    error::{Path, Query},
    node::{Node, Runner},
};

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
        .route("/nodes", get(cluster::nodes))
}

/// Parses a JSON body, answering 400 with serde's message (which names the field) when it does not fit.
pub(crate) fn json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("invalid request body: {error}")))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct NamespaceQuery {
    /// The namespace; `default` when absent.
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

/// A function's status as `principal` may see it: its environment, command
/// and trigger passwords only for a token that may deploy in its namespace.
/// They often hold credentials, and an `invoke` token only needs to call the
/// function.
fn visible_to(principal: &Principal, mut status: FunctionStatus) -> FunctionStatus {
    let namespace = status
        .deployment
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    if principal.allow(namespace, Action::Deploy).is_err() {
        status.deployment.env_vars.clear();
        status.deployment.env_process = None;
        for declaration in &mut status.deployment.triggers {
            if let Ok(trigger) = wisp_core::Trigger::try_from(declaration.clone()) {
                *declaration = trigger.without_secrets().into();
            }
        }
    }
    status
}

#[utoipa::path(
    get,
    path = "/system/functions",
    tag = "functions",
    summary = "The deployed functions",
    params(NamespaceQuery),
    responses(
        (status = 200, body = [FunctionStatus])
    )
)]
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
            .map(|stored| visible_to(&principal, status_of(&node, &stored.spec)))
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/system/function/{name}",
    tag = "functions",
    summary = "One function",
    params(("name" = String, Path, description = "`name` or `name.namespace`"), NamespaceQuery),
    responses(
        (status = 200, body = FunctionStatus)
    )
)]
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
    Ok(Json(visible_to(&principal, status_of(&node, &stored.spec))))
}

#[utoipa::path(
    post,
    path = "/system/functions",
    tag = "functions",
    summary = "Deploy a function",
    request_body = FunctionDeployment,
    responses(
        (status = 202, description = "Deployed", body = FunctionStatus)
    )
)]
async fn create(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    deploy(node, &principal, json(&body)?, false)
        .await
        // 202, as OpenFaaS answers (and `faas-cli deploy` expects).
        .map(|status| (StatusCode::ACCEPTED, Json(status)).into_response())
}

#[utoipa::path(
    put,
    path = "/system/functions",
    tag = "functions",
    summary = "Update a function",
    request_body = FunctionDeployment,
    responses(
        (status = 200, description = "Updated", body = FunctionStatus)
    )
)]
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
    // A function may lower the node's body limit, never raise it: the node's
    // limit is what bounds the memory its buffered bodies take.
    if let Some(size) = spec.max_body_size
        && size.0 > node.config.max_body_size
    {
        return Err(ApiError::bad_request(format!(
            "maxBodySize {size} is over this node's limit of {} (wisp up --max-body-size)",
            wisp_core::ByteSize(node.config.max_body_size)
        )));
    }
    let adds = !replace || node.store.function(&spec.namespace, &spec.name)?.is_none();
    let _lease = cluster::deploy_lease(&node, adds || spec.route.is_some()).await?;
    let _guard = node.deploy_lock.lock().await;
    let namespace = node.tenants.namespace(&spec.namespace);
    if namespace.is_none() {
        principal.allow_node("create namespaces")?;
    }
    let stored = node.store.function(&spec.namespace, &spec.name)?;
    let exists = stored.is_some();
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
    check_route(&node, &spec)?;
    check_triggers(&node, principal, &spec, stored.as_ref().map(|s| &s.spec))?;
    if let Some(namespace) = &namespace {
        let usage = crate::tenants::usage_with(&node.store, &spec)?;
        if let Err(exceeded) = namespace.quotas.check(&spec.namespace, usage) {
            refuse_artifact(&node, principal, &spec)?;
            return Err(exceeded.into());
        }
    }
    let executor = match ready(&node, &spec).await {
        Ok(executor) => executor,
        Err(error) => {
            refuse_artifact(&node, principal, &spec)?;
            return Err(error);
        }
    };
    if namespace.is_none() {
        cluster::share_namespace(&node, &spec.namespace, &Quotas::default()).await?;
    }
    if let Err(conflict) = cluster::share_function(&node, &spec).await {
        refuse_artifact(&node, principal, &spec)?;
        return Err(conflict);
    }
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
    if let Some(old) = &stored {
        release_artifacts(&node, &old.spec)?;
    }
    tracing::info!("deployed {}.{} ({})", spec.name, spec.namespace, spec.kind);
    Ok(status_of(&node, &spec))
}

/// Refuses (409) a route that another function serves already: within a
/// namespace, the same route (a longer prefix there may refine a shorter
/// one, the namespace's own design); across namespaces, any route that
/// shares a request path with another namespace's ([`wisp_core::Route::overlaps`]), so
/// no tenant can take over or shadow part of another's paths, whichever
/// route the longest-match router would pick. Stored functions are checked,
/// loaded or not.
fn check_route(node: &Node, spec: &FunctionSpec) -> Result<(), ApiError> {
    let Some(route) = &spec.route else {
        return Ok(());
    };
    for stored in node.store.functions()? {
        let other = &stored.spec;
        let Some(existing) = &other.route else {
            continue;
        };
        if (other.namespace.as_str(), other.name.as_str())
            == (spec.namespace.as_str(), spec.name.as_str())
        {
            continue;
        }
        let message = if other.namespace == spec.namespace {
            (existing == route).then(|| {
                format!(
                    "route {route} is already served by {}.{}",
                    other.name, other.namespace
                )
            })
        } else {
            existing.overlaps(route).then(|| {
                format!(
                    "route {route} overlaps route {existing} of function {} in namespace {}: \
                     routes of different namespaces may not share a path",
                    other.name, other.namespace
                )
            })
        };
        if let Some(message) = message {
            return Err(ApiError::new(StatusCode::CONFLICT, message));
        }
    }
    Ok(())
}

/// Refuses (400) a namespace token's broker trigger outside its namespace's
/// subjects or topics, or naming a consumer or queue group that is not the
/// namespace's own ([`wisp_core::events::TriggerScope`]). The node's admin
/// token may subscribe anywhere, and a trigger it gave a function stays
/// when a namespace token updates the function with the trigger unchanged.
fn check_triggers(
    node: &Node,
    principal: &Principal,
    spec: &FunctionSpec,
    stored: Option<&FunctionSpec>,
) -> Result<(), ApiError> {
    if *principal == Principal::Node {
        return Ok(());
    }
    let granted = stored.map_or(&[][..], |stored| &stored.triggers[..]);
    for trigger in &spec.triggers {
        if granted.contains(trigger) {
            continue;
        }
        node.config
            .trigger_scope
            .check(&spec.namespace, trigger)
            .map_err(|error| ApiError::bad_request(error.to_string()))?;
    }
    Ok(())
}

/// Prepares (compiles) a function off the async threads and, for an app,
/// waits until its new replicas are ready: an app takes over only then, so
/// a redeploy fails no request and a broken app is refused (400).
pub(crate) async fn ready(node: &Arc<Node>, spec: &FunctionSpec) -> Result<Runner, ApiError> {
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
    if let Runner::Executor(Executor::App(app)) = &executor
        && let Err(error) = app.warm().await
    {
        return Err(ApiError::bad_request(format!(
            "function {}: {error}",
            spec.name
        )));
    }
    Ok(executor)
}

/// Forgets the deploying token's own uploads of a refused deploy's
/// artifacts, and removes those that no function uses and no one else
/// uploaded: a refused deploy never removes what another token uploaded.
fn refuse_artifact(
    node: &Node,
    principal: &Principal,
    spec: &FunctionSpec,
) -> Result<(), ApiError> {
    let (uploader, _) = uploader(principal);
    for digest in spec.artifacts() {
        match node.store.forget_upload(digest, uploader) {
            Ok(true) => node.engine.unload(digest),
            Ok(false) => {}
            Err(cleanup) => tracing::warn!("could not remove refused artifact {digest}: {cleanup}"),
        }
    }
    Ok(())
}

/// Starts the grace period of the artifacts `old` used that no function
/// uses any more, and unloads them: they are collected unless deployed again.
pub(crate) fn release_artifacts(node: &Node, old: &FunctionSpec) -> Result<(), ApiError> {
    for digest in old.artifacts() {
        if !node.store.artifact_in_use(digest)? {
            node.engine.unload(digest);
            node.store.release_artifact(digest)?;
        }
    }
    Ok(())
}

/// Who uploads, as uploads are recorded, and the namespace the upload is
/// charged to: a namespace token's own, `default` for the node's token.
fn uploader(principal: &Principal) -> (&str, &str) {
    match principal {
        Principal::Node => (wisp_store::NODE_UPLOADER, DEFAULT_NAMESPACE),
        Principal::Tenant { id, namespace, .. } => (id, namespace),
    }
}

/// Removes the artifacts nothing uses once their grace period is over,
/// checking a few times per grace period (at least every second, at most
/// every minute). Runs until the node stops.
pub(crate) async fn collect_artifacts(node: Arc<Node>) {
    let grace = node.config.artifact_grace_period;
    let every = (grace / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unused_in_cluster = std::collections::HashMap::new();
    loop {
        ticks.tick().await;
        // Deploys and uploads hold the lock, so no artifact goes while one
        // is being checked, prepared or stored.
        let _guard = node.deploy_lock.lock().await;
        cluster::collect_artifacts(&node, &mut unused_in_cluster).await;
        let cutoff = chrono::Utc::now().timestamp() - grace.as_secs() as i64;
        let store = node.store.clone();
        match tokio::task::spawn_blocking(move || store.collect_artifacts(cutoff)).await {
            Ok(Ok(collected)) => {
                for digest in collected {
                    node.engine.unload(&digest);
                    tracing::info!("collected artifact {digest}: nothing used it");
                }
            }
            Ok(Err(error)) => tracing::warn!("could not collect unused artifacts: {error}"),
            Err(error) => tracing::warn!("the artifact collector failed: {error}"),
        }
    }
}

/// Sets a fixed replica count for a `process-http` function (OpenFaaS's scale call).
#[utoipa::path(
    post,
    path = "/system/scale-function/{name}",
    tag = "functions",
    summary = "Set a function's replicas",
    params(("name" = String, Path, description = "`name` or `name.namespace`"), NamespaceQuery),
    request_body = ScaleRequest,
    responses(
        (status = 202, body = FunctionStatus)
    )
)]
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
    let Some(app) = function.app() else {
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

#[utoipa::path(
    delete,
    path = "/system/functions",
    tag = "functions",
    summary = "Remove a function",
    request_body = DeleteFunction,
    responses(
        (status = 200, description = "Removed")
    )
)]
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
    cluster::unshare(&node, cluster::function_key(&stored.spec)).await?;
    node.store.delete_function(namespace, name)?;
    node.uninstall(namespace, name);
    if let Err(error) = node.secret_files.remove(namespace, name) {
        tracing::warn!("could not remove the secret files of {name}.{namespace}: {error}");
    }
    release_artifacts(&node, &stored.spec)?;
    tracing::info!("removed {name}.{namespace}");
    // 200, as OpenFaaS answers (and `faas-cli remove` expects).
    Ok(StatusCode::OK.into_response())
}

/// Artifacts are shared by content, so any token that may deploy somewhere
/// may upload. The upload is charged to the uploader's namespace: the
/// artifacts it uploaded that none of its functions uses may together take
/// at most its `max_artifact_bytes`, or for a namespace token in a namespace
/// without that quota, the node's `--namespace-max-unused-upload-bytes`;
/// over it, nothing is stored (403). An upload that declares a length over
/// what is left is refused before it is read, and one that grows past it is
/// cut off there, its temporary file removed.
#[utoipa::path(
    put,
    path = "/system/artifacts",
    tag = "artifacts",
    summary = "Upload an artifact",
    request_body(content = crate::openapi::Binary, content_type = "application/octet-stream"),
    responses(
        (status = 200, body = ArtifactInfo)
    )
)]
async fn upload(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<ArtifactInfo>, ApiError> {
    principal.allow_somewhere(Action::Deploy)?;
    let limit = node.config.max_artifact_size;
    let (uploader, namespace) = uploader(&principal);
    let quota = match node
        .tenants
        .namespace(namespace)
        .and_then(|stored| stored.quotas.max_artifact_bytes)
    {
        Some(max) => Some((max.0, "max_artifact_bytes")),
        None if matches!(principal, Principal::Tenant { .. }) => Some((
            node.config.namespace_max_unused_upload_bytes,
            "--namespace-max-unused-upload-bytes",
        )),
        None => None,
    };
    let over = |unused: u64, (max, quota): (u64, &'static str)| QuotaExceeded::UnusedUploads {
        namespace: namespace.to_owned(),
        unused,
        max,
        quota,
    };
    // What may be written before the digest is known: what the quota has
    // left, plus the largest artifact the namespace holds, which it may
    // upload again at no cost. Checked exactly once the upload is read.
    let (held, room) = match quota {
        Some((max, _)) => {
            let held = node.store.unused_upload_bytes(namespace, "")?;
            let again = node.store.largest_namespace_artifact(namespace)?;
            (held, max.saturating_sub(held).saturating_add(again))
        }
        None => (0, u64::MAX),
    };
    if let Some(quota) = quota {
        let declared = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if let Some(declared) = declared
            && declared > room
        {
            return Err(over(held.saturating_add(declared), quota).into());
        }
    }
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
            let size = upload.size().saturating_add(data.len() as u64);
            if let Some(quota) = quota
                && size > room
            {
                // Dropping the upload removes its temporary file.
                return Err(over(held.saturating_add(size), quota).into());
            }
            upload.write(&data)?;
        }
    }
    if upload.size() == 0 {
        return Err(ApiError::bad_request(
            "the artifact is empty: send a component's, module's or archive's bytes as the body",
        ));
    }
    let digest = upload.digest();
    let _guard = node.deploy_lock.lock().await;
    if let Some(quota) = quota
        && !node.store.used_in_namespace(namespace, &digest)?
    {
        let unused = node.store.unused_upload_bytes(namespace, &digest)? + upload.size();
        if unused > quota.0 {
            return Err(over(unused, quota).into());
        }
    }
    let info = upload.commit(&node.store)?;
    node.store
        .record_upload(&info.digest, uploader, namespace)?;
    // Outside the lock: a large upload to the cluster holds no deploy up.
    // A deploy of the artifact shares it anyway, if this fails.
    drop(_guard);
    cluster::share_artifact(&node, &info.digest).await?;
    Ok(Json(info))
}

/// Every artifact for the node's token; for a namespace token, those its namespace's functions use.
#[utoipa::path(
    get,
    path = "/system/artifacts",
    tag = "artifacts",
    summary = "The uploaded artifacts",
    responses(
        (status = 200, body = [ArtifactInfo])
    )
)]
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
#[utoipa::path(
    get,
    path = "/system/artifacts/{digest}",
    tag = "artifacts",
    summary = "One artifact",
    params(("digest" = String, Path, description = "`sha256:<hex>`")),
    responses(
        (status = 200, body = ArtifactInfo)
    )
)]
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
#[utoipa::path(
    get,
    path = "/system/info",
    tag = "node",
    summary = "The node's provider, version and counters",
    responses(
        (status = 200, body = SystemInfo)
    )
)]
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
