//! Secrets: `/system/secrets` (an admin or deploy token of a namespace, or
//! the node's admin token, manages the namespace's secrets), and the files
//! sandboxed process functions read them from.
//!
//! A value is written to the store, handed to the functions that declare
//! the secret, and never answered, logged or put in an error message: only
//! names and creation times leave the node. Values are kept as they are in
//! the data directory, which is the trust boundary (as for Kubernetes
//! secrets without a KMS). Replacing a value reloads the functions that use
//! it; removing a secret that a function declares is refused.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

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
    FunctionSpec,
    spec::{DEFAULT_NAMESPACE, validate_secret_name},
    tenancy::{Action, NewSecret, Principal, SecretInfo, validate_secret_value},
};
use wisp_store::{SecretWrite, StoredSecret};

use wisp_cluster::Key;

use crate::{
    ApiError,
    admin::ready,
    cluster,
    error::{Path as UrlPath, Query},
    node::Node,
    telemetry::rfc3339_millis,
};

/// The per-function directories of secret files under `data/secrets`,
/// which only the node's user may enter.
pub(crate) struct SecretFiles {
    root: PathBuf,
}

impl SecretFiles {
    /// Creates `data/secrets` (mode 0700) if needed, and makes sure of its mode.
    pub(crate) fn open(data_dir: &Path) -> std::io::Result<Self> {
        let root = data_dir.join("secrets");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { root })
    }

    fn dir(&self, namespace: &str, function: &str) -> PathBuf {
        self.root.join(namespace).join(function)
    }

    /// Writes the files of `spec`'s secrets (`values` in the order of
    /// `spec.secrets`), each replaced at once, readable by any uid (the
    /// sandbox's), and removes those of secrets it no longer declares.
    /// Returns the directory, for the sandbox to mount.
    pub(crate) fn write(&self, spec: &FunctionSpec, values: &[String]) -> std::io::Result<PathBuf> {
        let dir = self.dir(&spec.namespace, &spec.name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if !spec.secrets.iter().any(|name| entry.file_name() == **name) {
                std::fs::remove_file(entry.path())?;
            }
        }
        for (name, value) in spec.secrets.iter().zip(values) {
            // Names are DNS labels, so `.name` cannot be one of them.
            let temporary = dir.join(format!(".{name}"));
            remove_if_present(&temporary)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(value.as_bytes())?;
            file.set_permissions(std::fs::Permissions::from_mode(0o444))?;
            std::fs::rename(&temporary, dir.join(name))?;
        }
        Ok(dir)
    }

    /// Removes a function's secret files, if it has any.
    pub(crate) fn remove(&self, namespace: &str, function: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.dir(namespace, function)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// The 400 of a deploy that names a secret its namespace does not hold.
pub(crate) fn missing(secret: &str, namespace: &str) -> String {
    format!(
        "secret {secret} does not exist in namespace {namespace}: create it with `wisp secret create {secret} --namespace {namespace}`"
    )
}

pub(crate) fn system_routes() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/secrets",
            get(list).post(create).put(replace).delete(remove_named),
        )
        .route("/secrets/{name}", delete(remove))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct NamespaceQuery {
    /// The namespace; `default` when absent.
    namespace: Option<String>,
}

fn info(secret: StoredSecret) -> SecretInfo {
    SecretInfo {
        name: secret.name,
        namespace: secret.namespace,
        created_at: rfc3339_millis(secret.created_at.saturating_mul(1000)),
    }
}

#[utoipa::path(
    get,
    path = "/system/secrets",
    tag = "secrets",
    summary = "Secrets' names, never their values",
    params(NamespaceQuery),
    responses(
        (status = 200, body = [SecretInfo])
    )
)]
async fn list(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    let scope = principal.scope(query.namespace.as_deref(), Action::ManageSecrets)?;
    let secrets = node.store.secrets(scope.namespace())?;
    Ok(Json(secrets.into_iter().map(info).collect()))
}

#[utoipa::path(
    post,
    path = "/system/secrets",
    tag = "secrets",
    summary = "Create a secret",
    request_body = NewSecret,
    responses(
        (status = 201, description = "Created")
    )
)]
async fn create(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    write(node, &principal, &body, false).await
}

#[utoipa::path(
    put,
    path = "/system/secrets",
    tag = "secrets",
    summary = "Replace a secret's value",
    request_body = NewSecret,
    responses(
        (status = 200, description = "Replaced")
    )
)]
async fn replace(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    write(node, &principal, &body, true).await
}

/// Parses a secret's body without serde's message, which may quote the value.
fn parse(body: &Bytes) -> Result<NewSecret, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(format!(
            "invalid request body (line {}, column {}): expected {{\"name\", \"namespace\", \"value\"}} with string values",
            error.line(),
            error.column()
        ))
    })
}

/// Creates a secret, or replaces its value and reloads the functions that use it.
async fn write(
    node: Arc<Node>,
    principal: &Principal,
    body: &Bytes,
    replace: bool,
) -> Result<Response, ApiError> {
    let NewSecret {
        name,
        namespace,
        mut value,
        raw_value,
    } = parse(body)?;
    if let (true, Some(raw)) = (value.is_empty(), raw_value) {
        value = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, raw)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| ApiError::bad_request("rawValue must be base64 of UTF-8 text"))?;
    }
    let namespace = namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    principal.allow(&namespace, Action::ManageSecrets)?;
    validate_secret_name(&name).map_err(ApiError::bad_request)?;
    validate_secret_value(&value).map_err(ApiError::bad_request)?;
    let _guard = node.deploy_lock.lock().await;
    if node.tenants.namespace(&namespace).is_none() {
        return Err(crate::tenants::routes::unknown_namespace(&namespace));
    }
    let exists = node
        .store
        .secret_values(&namespace, std::slice::from_ref(&name))?
        .is_ok();
    // Only a write that will happen goes to the cluster; the rest is refused below.
    if exists == replace {
        cluster::share_secret(&node, &namespace, &name, &value).await?;
    }
    let status = match node.store.put_secret(&namespace, &name, &value, replace)? {
        SecretWrite::Created => {
            tracing::info!("created secret {name} in namespace {namespace}");
            StatusCode::CREATED
        }
        SecretWrite::Replaced => {
            tracing::info!("replaced the value of secret {name} in namespace {namespace}");
            reload(&node, &namespace, &name).await?;
            StatusCode::OK
        }
        SecretWrite::Exists => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "secret {name} already exists in namespace {namespace}: replace it with PUT (`wisp secret create --replace`)"
                ),
            ));
        }
        SecretWrite::Unknown => {
            return Err(ApiError::not_found(format!(
                "secret {name} does not exist in namespace {namespace}: create it with POST"
            )));
        }
    };
    let stored = node
        .store
        .secrets(Some(&namespace))?
        .into_iter()
        .find(|secret| secret.name == name)
        .ok_or_else(|| ApiError::internal(format!("secret {name} vanished")))?;
    Ok((status, Json(info(stored))).into_response())
}

/// Prepares again, and swaps in, every function that uses the secret, so
/// its new value takes effect; one that cannot be prepared keeps running
/// with the old value, and a warning says so.
pub(crate) async fn reload(
    node: &Arc<Node>,
    namespace: &str,
    secret: &str,
) -> Result<(), ApiError> {
    for name in node.store.secret_users(namespace, secret)? {
        let Some(stored) = node.store.function(namespace, &name)? else {
            continue;
        };
        match ready(node, &stored.spec).await {
            Ok(executor) => {
                node.install(stored.spec, executor);
                tracing::info!("reloaded {name}.{namespace} with the new value of secret {secret}");
            }
            Err(error) => tracing::warn!(
                "{name}.{namespace} keeps the old value of secret {secret}: {}",
                error.message
            ),
        }
    }
    Ok(())
}

/// `DELETE /system/secrets/{name}[?namespace=N]`: 204.
#[utoipa::path(
    delete,
    path = "/system/secrets/{name}",
    tag = "secrets",
    summary = "Remove a secret",
    params(("name" = String, Path), NamespaceQuery),
    responses(
        (status = 204, description = "Removed")
    )
)]
async fn remove(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Response, ApiError> {
    let namespace = query.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    remove_secret(&node, &principal, namespace, name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of OpenFaaS's `DELETE /system/secrets`.
#[derive(Deserialize, utoipa::ToSchema)]
struct SecretName {
    name: String,
    namespace: Option<String>,
}

/// `DELETE /system/secrets` with `{"name", "namespace"}`, as OpenFaaS's
/// clients send it: 200, which `faas-cli secret remove` expects.
#[utoipa::path(
    delete,
    path = "/system/secrets",
    tag = "secrets",
    summary = "Remove a secret, as OpenFaaS does",
    request_body = SecretName,
    responses(
        (status = 200, description = "Removed")
    )
)]
async fn remove_named(
    State(node): State<Arc<Node>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: SecretName = crate::admin::json(&body)?;
    let namespace = request.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    remove_secret(&node, &principal, namespace, request.name).await?;
    Ok(StatusCode::OK.into_response())
}

/// Removes a secret no function uses: 409 naming those that do.
async fn remove_secret(
    node: &Arc<Node>,
    principal: &Principal,
    namespace: &str,
    name: String,
) -> Result<(), ApiError> {
    principal.allow(namespace, Action::ManageSecrets)?;
    let _guard = node.deploy_lock.lock().await;
    let users = node.store.secret_users(namespace, &name)?;
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "secret {name} is used by function(s) {} in namespace {namespace}: take it out of their `secrets` first",
                users.join(", ")
            ),
        ));
    }
    if node
        .store
        .secret_values(namespace, std::slice::from_ref(&name))?
        .is_ok()
    {
        cluster::unshare(
            node,
            Key::Secret {
                namespace: namespace.to_owned(),
                name: name.clone(),
            },
        )
        .await?;
    }
    if !node.store.delete_secret(namespace, &name)? {
        return Err(ApiError::not_found(format!(
            "secret {name} does not exist in namespace {namespace}"
        )));
    }
    tracing::info!("removed secret {name} from namespace {namespace}");
    Ok(())
}
