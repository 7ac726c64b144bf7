//! Cluster mode: a node started with `--cluster` keeps its registry (the
//! store's functions, namespaces, tokens and secrets, and the in-memory
//! tables over them) as a cache of the cluster's ([`wisp_cluster`]).
//!
//! Every change made through this node is written to the cluster first,
//! compare-and-set, and then here as on a single node; every change, this
//! node's own included, comes back through the watch and is applied if the
//! cache does not already hold it, so a change made on any node reaches
//! every node. At start the cache is emptied and filled from a snapshot, so
//! a node that was down misses nothing. Artifacts are uploaded to the
//! cluster beside the local copy and fetched, checked against their digest,
//! by the first node that needs one.
//!
//! Each namespace has a generation in the cluster, random, made with the
//! namespace: its functions, tokens and secrets carry it (a secret's is
//! sealed into it), and a node accepts them only for the generation of the
//! namespace it holds. So a token or secret written to a namespace while
//! another node removed it never works in a namespace made again under the
//! same name; and a node that finds a namespace's generation changed (it
//! was removed and made again while the node was down or behind) first
//! forgets everything of the old one, its calls and logs included. A change
//! that cannot be applied is tried again every few seconds; until then the
//! node's own writes of its key are refused (409), never based on a value
//! it has not seen.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use wisp_cluster::{Change, Cluster, ClusterError, Key, Member};
use wisp_core::{FunctionSpec, spec::DEFAULT_NAMESPACE, tenancy::Quotas};
use wisp_store::{NamespaceRemoval, SecretWrite, StoredToken};

use crate::{ApiError, node::Node};

/// How often changes that could not be applied are tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How often the watch is checked against the registry's latest revision.
const STALL_CHECK: Duration = Duration::from_secs(3);
/// The generation of `default`, which is never removed nor shared.
const DEFAULT_GENERATION: &str = "default";

impl From<ClusterError> for ApiError {
    fn from(error: ClusterError) -> Self {
        match error {
            ClusterError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, error.to_string()),
            ClusterError::Busy(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// A namespace as the cluster keeps it.
#[derive(Serialize, Deserialize)]
struct SharedNamespace {
    generation: String,
    quotas: Quotas,
}

/// A value of a namespace's, with the generation of the namespace it was written to.
#[derive(Serialize, Deserialize)]
struct Scoped<T> {
    generation: String,
    value: T,
}

/// A token as the cluster keeps it: its hash, never the token.
#[derive(Serialize, Deserialize)]
struct SharedToken {
    namespace: String,
    role: wisp_core::tenancy::Role,
    name: Option<String>,
    hash: String,
    created_at: i64,
}

/// The generation of each namespace this node holds, kept in the data
/// directory too: a node that starts again tells by them which namespaces
/// were removed (or removed and made again) while it was down.
pub(crate) struct Generations {
    current: Mutex<HashMap<String, String>>,
    /// What the file said at start.
    previous: HashMap<String, String>,
    file: PathBuf,
}

impl Generations {
    pub(crate) fn open(data_dir: &std::path::Path) -> Self {
        let file = data_dir.join("cluster-generations.json");
        let previous = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            current: Mutex::default(),
            previous,
            file,
        }
    }

    /// A namespace's generation; `None` for one this node does not hold.
    pub(crate) fn get(&self, namespace: &str) -> Option<String> {
        if namespace == DEFAULT_NAMESPACE {
            return Some(DEFAULT_GENERATION.to_owned());
        }
        self.current
            .lock()
            .expect("generations")
            .get(namespace)
            .cloned()
    }

    fn set(&self, namespace: &str, generation: Option<String>) {
        let mut current = self.current.lock().expect("generations");
        match generation {
            Some(generation) => current.insert(namespace.to_owned(), generation),
            None => current.remove(namespace),
        };
        let written = serde_json::to_vec(&*current).expect("generations serialize");
        drop(current);
        let temporary = self.file.with_extension("tmp");
        if let Err(error) = std::fs::write(&temporary, written)
            .and_then(|()| std::fs::rename(&temporary, &self.file))
        {
            tracing::warn!("could not keep the namespaces' generations: {error}");
        }
    }
}

/// Writes a change to the cluster, when the node is in one; a key another
/// node changed since this one last saw it is a 409.
async fn share(node: &Node, key: Key, value: Bytes) -> Result<(), ApiError> {
    match &node.cluster {
        Some(cluster) => Ok(cluster.put(&key, value).await?),
        None => Ok(()),
    }
}

/// Deletes a key from the cluster, when the node is in one.
pub(crate) async fn unshare(node: &Node, key: Key) -> Result<(), ApiError> {
    match &node.cluster {
        Some(cluster) => Ok(cluster.delete(&key).await?),
        None => Ok(()),
    }
}

pub(crate) fn function_key(spec: &FunctionSpec) -> Key {
    Key::Function {
        namespace: spec.namespace.clone(),
        name: spec.name.clone(),
    }
}

fn scoped<T: Serialize>(node: &Node, namespace: &str, value: T) -> Bytes {
    let generation = node.generations.get(namespace).unwrap_or_default();
    serde_json::to_vec(&Scoped { generation, value })
        .expect("a value serializes")
        .into()
}

/// Makes a namespace in the cluster, of a new generation, when the node is
/// in one: before the node makes it in its own store.
pub(crate) async fn share_namespace(
    node: &Node,
    name: &str,
    quotas: &Quotas,
) -> Result<(), ApiError> {
    let Some(cluster) = &node.cluster else {
        return Ok(());
    };
    let generation = hex::encode(rand::random::<[u8; 12]>());
    let value = SharedNamespace {
        generation: generation.clone(),
        quotas: *quotas,
    };
    let value = serde_json::to_vec(&value).expect("a namespace serializes");
    cluster
        .put(&Key::Namespace(name.to_owned()), value.into())
        .await?;
    node.generations.set(name, Some(generation));
    Ok(())
}

/// How long a node waits for its cache to hold every change made before it
/// took the deploy lease.
const CATCH_UP: Duration = Duration::from_secs(5);

/// The cluster's deploy lease, given back when dropped.
pub(crate) struct DeployLease(Option<(Arc<Cluster>, wisp_cluster::Lease)>);

impl Drop for DeployLease {
    fn drop(&mut self) {
        if let Some((cluster, lease)) = self.0.take() {
            tokio::spawn(async move {
                if let Err(error) = cluster.release(lease).await {
                    tracing::warn!("{error}");
                }
            });
        }
    }
}

/// In cluster mode, for a deploy that could clash with another node's (one
/// that adds a function, against its namespace's `max_functions`, or that
/// has a route, against every namespace's routes): takes the cluster's
/// deploy lease, so such deploys happen one at a time across the cluster,
/// and returns once this node's cache holds every change made before, so
/// its checks see them all. Quotas and routes so hold cluster-wide.
pub(crate) async fn deploy_lease(node: &Node, clashes: bool) -> Result<DeployLease, ApiError> {
    let Some(cluster) = node.cluster.clone().filter(|_| clashes) else {
        return Ok(DeployLease(None));
    };
    let lease = cluster.lease("deploy", &node.id).await?;
    let revision = lease.revision;
    let held = DeployLease(Some((cluster.clone(), lease)));
    if !cluster.caught_up(revision, CATCH_UP).await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is behind the cluster's registry: try again",
        ));
    }
    Ok(held)
}

/// Deploys a function to the cluster, its artifacts first, when the node is in one.
pub(crate) async fn share_function(node: &Node, spec: &FunctionSpec) -> Result<(), ApiError> {
    if node.cluster.is_none() {
        return Ok(());
    }
    for digest in spec.artifacts() {
        share_artifact(node, digest).await?;
    }
    share(
        node,
        function_key(spec),
        scoped(node, &spec.namespace, spec),
    )
    .await?;
    // Another node may have collected an artifact, unused until now, in
    // between: store it again.
    for digest in spec.artifacts() {
        share_artifact(node, digest).await?;
    }
    Ok(())
}

/// Grants a token in the cluster, when the node is in one.
pub(crate) async fn share_token(node: &Node, token: &StoredToken) -> Result<(), ApiError> {
    let value = SharedToken {
        namespace: token.namespace.clone(),
        role: token.role,
        name: token.name.clone(),
        hash: hex::encode(token.hash),
        created_at: token.created_at,
    };
    let value = scoped(node, &token.namespace, value);
    share(node, Key::Token(token.id.clone()), value).await
}

/// Sets a secret in the cluster, sealed for its namespace's generation,
/// when the node is in one.
pub(crate) async fn share_secret(
    node: &Node,
    namespace: &str,
    name: &str,
    value: &str,
) -> Result<(), ApiError> {
    let Some(cluster) = &node.cluster else {
        return Ok(());
    };
    let key = Key::Secret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let generation = node.generations.get(namespace).unwrap_or_default();
    let value = hex::encode(cluster.seal(&key, &generation, value));
    let value = serde_json::to_vec(&Scoped { generation, value }).expect("a secret serializes");
    cluster.put(&key, value.into()).await?;
    Ok(())
}

/// Uploads a committed artifact to the cluster, unless it is there, when
/// the node is in one.
pub(crate) async fn share_artifact(node: &Node, digest: &str) -> Result<(), ApiError> {
    if let Some(cluster) = &node.cluster {
        let path = node.store.artifact_path(digest)?;
        cluster.upload(digest, &path).await?;
    }
    Ok(())
}

/// Deletes from the cluster's object store the artifacts no function of
/// the registry has used for the artifact grace period, as this node has
/// seen it: `unused` keeps when each was first seen unused. Every node
/// collects; a deploy that uses an artifact again within the grace period
/// keeps it.
pub(crate) async fn collect_artifacts(node: &Node, unused: &mut HashMap<String, Instant>) {
    let Some(cluster) = &node.cluster else {
        return;
    };
    // A node that could not apply a change may not know every function:
    // what it takes for unused may be another node's.
    if node.registry_behind.load(Ordering::Relaxed) {
        return;
    }
    let used: std::collections::HashSet<String> = match node.store.functions() {
        Ok(functions) => functions
            .iter()
            .flat_map(|stored| stored.spec.artifacts())
            .map(str::to_owned)
            .collect(),
        Err(error) => {
            tracing::warn!("could not list the functions to collect artifacts: {error}");
            return;
        }
    };
    let stored = match cluster.artifacts().await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!("{error}");
            return;
        }
    };
    // One another node collected while this one deployed it again (it had
    // not yet seen the deploy) is stored again from this node's copy.
    for digest in used.iter().filter(|digest| !stored.contains_key(*digest)) {
        if let Ok(path) = node.store.artifact_path(digest)
            && path.is_file()
        {
            match cluster.upload(digest, &path).await {
                Ok(()) => tracing::info!("stored artifact {digest} in the cluster again"),
                Err(error) => tracing::warn!("{error}"),
            }
        }
    }
    unused.retain(|digest, _| stored.contains_key(digest) && !used.contains(digest));
    let grace = node.config.artifact_grace_period;
    for (digest, age) in stored
        .into_iter()
        .filter(|(digest, _)| !used.contains(digest))
    {
        // Unused for the grace period as this node saw it, and not stored
        // again within it by a deploy this node has not seen yet.
        let since = *unused.entry(digest.clone()).or_insert_with(Instant::now);
        if since.elapsed() < grace || age < grace {
            continue;
        }
        match cluster.delete_artifact(&digest).await {
            Ok(()) => {
                unused.remove(&digest);
                tracing::info!("collected artifact {digest} from the cluster: nothing used it");
            }
            Err(error) => tracing::warn!("{error}"),
        }
    }
}

/// Forgets a namespace's generation once it is removed.
pub(crate) fn forget_generation(node: &Node, namespace: &str) {
    if node.cluster.is_some() {
        node.generations.set(namespace, None);
    }
}

/// Fills the node's cache from the cluster, then follows the cluster's
/// changes and heartbeats until the node stops. Returns once the cache is
/// filled, so the node serves only when it knows every function.
pub async fn join(node: &Arc<Node>) -> Result<(), ClusterError> {
    let Some(cluster) = node.cluster.clone() else {
        return Ok(());
    };
    let (mut changes, last) = cluster.snapshot().await?;
    // Namespaces first, functions last: a function needs its namespace and secrets.
    changes.sort_by_key(|change| match change.key {
        Key::Namespace(_) => 0,
        Key::Token(_) => 1,
        Key::Secret { .. } => 2,
        Key::Function { .. } => 3,
    });
    // What the node kept of namespaces gone since, or gone and made again,
    // goes before anything of the cluster's is applied.
    let generations: HashMap<&str, String> = changes
        .iter()
        .filter_map(|change| match (&change.key, &change.value) {
            (Key::Namespace(name), Some(value)) => {
                let shared: SharedNamespace = serde_json::from_slice(value).ok()?;
                Some((name.as_str(), shared.generation))
            }
            _ => None,
        })
        .collect();
    for (name, generation) in &node.generations.previous {
        if generations.get(name.as_str()) != Some(generation)
            && let Err(error) = forget_namespace_data(node, name)
        {
            tracing::error!(
                "could not forget what namespace {name} held: {}",
                error.message
            );
        }
    }
    let mut failed = HashMap::new();
    for change in changes {
        apply(node, &cluster, change, &mut failed).await;
    }
    cluster.processed(last);
    if let Some(shares) = node.shares.clone() {
        // Listed first, so the shares it writes are not dropped as a stranger's.
        if let Err(error) = cluster.heartbeat(&me(node)).await {
            tracing::warn!("{error}");
        }
        if let Err(error) = shares.start(crate::shares::queued(node)).await {
            tracing::warn!("could not give back the quota shares held before: {error}");
        }
        let node = Arc::downgrade(node);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(crate::shares::SETTLE);
            loop {
                ticks.tick().await;
                let Some(node) = node.upgrade() else { return };
                shares.settle(|| crate::shares::queued(&node)).await;
            }
        });
    }
    tokio::spawn(follow(Arc::downgrade(node), cluster.clone(), last, failed));
    tokio::spawn(crate::reads::answer(Arc::downgrade(node), cluster.clone()));
    let member = Arc::downgrade(node);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(wisp_cluster::HEARTBEAT);
        loop {
            ticks.tick().await;
            let Some(node) = member.upgrade() else { return };
            if let Err(error) = cluster.heartbeat(&me(&node)).await {
                tracing::warn!("{error}");
            }
        }
    });
    Ok(())
}

/// Applies the registry's changes after revision `last` as they come, and
/// tries the `failed` ones again every [`RETRY`]. A watch that ends or
/// cannot start, or that stalls (behind the registry's latest revision for
/// two checks in a row without a change: its NATS server went away, say),
/// is started again from the last change seen. Runs until the node is gone.
async fn follow(
    node: std::sync::Weak<Node>,
    cluster: Arc<Cluster>,
    mut last: u64,
    mut failed: HashMap<Key, Change>,
) {
    let mut retries = tokio::time::interval(RETRY);
    let mut checks = tokio::time::interval(STALL_CHECK);
    loop {
        match cluster.follow(last).await {
            Ok(changes) => {
                futures_util::pin_mut!(changes);
                let mut behind = None;
                loop {
                    let change = tokio::select! {
                        change = changes.next() => change,
                        _ = checks.tick() => {
                            // Entries not the cache's are processed as read,
                            // and the latest may be one.
                            last = last.max(cluster.last_processed());
                            let latest = cluster.last_revision().await.unwrap_or(last);
                            if latest <= last {
                                behind = None;
                            } else if behind == Some(last) {
                                tracing::warn!(
                                    "the watch of the cluster's registry stalled at revision {last} of {latest}; following again"
                                );
                                break;
                            } else {
                                behind = Some(last);
                            }
                            continue;
                        }
                        _ = retries.tick(), if !failed.is_empty() => {
                            let Some(node) = node.upgrade() else { return };
                            let again: Vec<Change> = std::mem::take(&mut failed).into_values().collect();
                            node.registry_behind.store(true, Ordering::Relaxed);
                            for change in again {
                                apply(&node, &cluster, change, &mut failed).await;
                            }
                            continue;
                        }
                    };
                    let Some(change) = change else { break };
                    let Some(node) = node.upgrade() else { return };
                    match change {
                        Ok(change) => {
                            last = last.max(change.revision());
                            apply(&node, &cluster, change, &mut failed).await;
                        }
                        Err(error) => tracing::warn!("{error}"),
                    }
                }
                tracing::warn!("the watch of the cluster's registry ended; following again");
            }
            Err(error) => tracing::warn!("{error}; trying again"),
        }
        if node.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Applies one change to the node's cache, unless it holds it already. A
/// change that cannot be applied is logged and kept in `failed`, to be tried
/// again; the cache keeps what it had, and the key's revision is not noted,
/// so the node's own writes of it are refused until it is applied.
async fn apply(
    node: &Arc<Node>,
    cluster: &Cluster,
    change: Change,
    failed: &mut HashMap<Key, Change>,
) {
    let _guard = node.deploy_lock.lock().await;
    // The node may have written the key while this change waited for the
    // lock (a namespace made again just after its removal): then the change
    // is past, and applying it would undo the node's write.
    if cluster.superseded(&change) {
        failed.remove(&change.key);
        cluster.processed(change.revision());
        return;
    }
    failed.remove(&change.key);
    match apply_locked(node, cluster, &change).await {
        Ok(()) => cluster.applied(&change),
        Err(error) => {
            cluster.processed(change.revision());
            tracing::error!(
                "could not apply the cluster's change to {}: {}; trying again in {}s",
                change.key,
                error.message,
                RETRY.as_secs()
            );
            failed.insert(change.key.clone(), change);
        }
    }
    node.registry_behind
        .store(!failed.is_empty(), Ordering::Relaxed);
}

/// Reads a value of a namespace's, if it was written to the generation of
/// the namespace this node holds; `None` (and a line in the log) for one
/// written to a namespace since removed.
fn scoped_value<T: for<'de> Deserialize<'de>>(
    node: &Node,
    key: &Key,
    namespace: &str,
    bytes: &[u8],
) -> Result<Option<(String, T)>, ApiError> {
    let scoped: Scoped<T> = serde_json::from_slice(bytes)
        .map_err(|error| ApiError::internal(format!("{key}: {error}")))?;
    if node.generations.get(namespace).as_deref() != Some(scoped.generation.as_str()) {
        tracing::info!("ignored {key}: it was written to a namespace {namespace} since removed");
        return Ok(None);
    }
    Ok(Some((scoped.generation, scoped.value)))
}

/// Forgets a namespace's async calls, uploads, logs, traces and usage.
fn forget_namespace_data(node: &Node, namespace: &str) -> Result<(), ApiError> {
    node.telemetry.flush();
    node.telemetry.log().forget_namespace(namespace)?;
    node.store.forget_namespace_calls(namespace)?;
    node.queue.backlog.forget(namespace);
    node.queue.forget_namespace(namespace);
    Ok(())
}

/// Removes a namespace and everything of it from this node, as its removal did on another.
fn remove_namespace_here(node: &Node, name: &str) -> Result<(), ApiError> {
    for stored in node.store.functions()? {
        if stored.spec.namespace == name {
            remove_function_here(node, &stored.spec)?;
        }
    }
    forget_namespace_data(node, name)?;
    if node.tenants.remove_namespace(&node.store, name)? == NamespaceRemoval::Removed {
        tracing::info!("removed namespace {name}, as the cluster did");
    }
    node.generations.set(name, None);
    Ok(())
}

fn remove_function_here(node: &Node, spec: &FunctionSpec) -> Result<(), ApiError> {
    let (namespace, name) = (&spec.namespace, &spec.name);
    node.store.delete_function(namespace, name)?;
    node.uninstall(namespace, name);
    if let Err(error) = node.secret_files.remove(namespace, name) {
        tracing::warn!("could not remove the secret files of {name}.{namespace}: {error}");
    }
    crate::admin::release_artifacts(node, spec)?;
    tracing::info!("removed {name}.{namespace}, as the cluster did");
    Ok(())
}

async fn apply_locked(
    node: &Arc<Node>,
    cluster: &Cluster,
    change: &Change,
) -> Result<(), ApiError> {
    let key = &change.key;
    match (key, change.value.as_deref()) {
        (Key::Namespace(name), Some(value)) => {
            let shared: SharedNamespace = serde_json::from_slice(value)
                .map_err(|error| ApiError::internal(format!("{key}: {error}")))?;
            let held = node.generations.get(name);
            if held.as_deref() == Some(shared.generation.as_str()) {
                return Ok(());
            }
            if node.tenants.namespace(name).is_some() {
                // Removed and made again while this node was behind.
                remove_namespace_here(node, name)?;
            }
            // Calls, logs and uploads the node kept of this very generation
            // (from before a restart, which cleared the registry) stay.
            if node.generations.previous.get(name) != Some(&shared.generation) {
                forget_namespace_data(node, name)?;
            }
            node.tenants
                .create_namespace(&node.store, name, &shared.quotas)?;
            node.generations.set(name, Some(shared.generation));
            tracing::info!("created namespace {name}, as the cluster did");
        }
        (Key::Namespace(name), None) => {
            if node.tenants.namespace(name).is_some() {
                remove_namespace_here(node, name)?;
            }
        }
        (Key::Token(id), Some(value)) => {
            let Ok(probe) = serde_json::from_slice::<Scoped<SharedToken>>(value) else {
                return Err(ApiError::internal(format!("{key}: not a token")));
            };
            let namespace = probe.value.namespace;
            let Some((_, shared)) = scoped_value::<SharedToken>(node, key, &namespace, value)?
            else {
                return Ok(());
            };
            if node.tenants.token(id).is_none() {
                let hash = hex::decode(&shared.hash)
                    .ok()
                    .and_then(|hash| hash.try_into().ok())
                    .ok_or_else(|| ApiError::internal(format!("{key}: a malformed hash")))?;
                node.tenants.add_token(
                    &node.store,
                    StoredToken {
                        id: id.clone(),
                        namespace: shared.namespace,
                        role: shared.role,
                        name: shared.name,
                        hash,
                        created_at: shared.created_at,
                    },
                )?;
            }
        }
        (Key::Token(id), None) => {
            node.tenants.revoke_token(&node.store, id)?;
        }
        (Key::Secret { namespace, name }, Some(value)) => {
            let Some((generation, sealed)) = scoped_value::<String>(node, key, namespace, value)?
            else {
                return Ok(());
            };
            let sealed = hex::decode(sealed)
                .map_err(|_| ApiError::internal(format!("{key}: not a sealed value")))?;
            let value = cluster.open(key, &generation, &sealed)?;
            let current = node
                .store
                .secret_values(namespace, std::slice::from_ref(name))?
                .ok();
            match current {
                Some(values) if values.first() == Some(&value) => {}
                Some(_) => {
                    node.store.put_secret(namespace, name, &value, true)?;
                    crate::secrets::reload(node, namespace, name).await?;
                }
                None => {
                    if node.store.put_secret(namespace, name, &value, false)?
                        != SecretWrite::Created
                    {
                        return Err(ApiError::internal(format!("{key} was not created")));
                    }
                }
            }
        }
        (Key::Secret { namespace, name }, None) => {
            node.store.delete_secret(namespace, name)?;
        }
        (Key::Function { namespace, name }, Some(value)) => {
            let Some((_, spec)) = scoped_value::<FunctionSpec>(node, key, namespace, value)? else {
                return Ok(());
            };
            if (&spec.namespace, &spec.name) != (namespace, name) {
                return Err(ApiError::internal(format!(
                    "{key} holds another function's spec"
                )));
            }
            let stored = node.store.function(namespace, name)?;
            if stored.as_ref().is_some_and(|stored| stored.spec == spec) {
                return Ok(());
            }
            fetch_artifacts(node, cluster, &spec).await?;
            let executor = crate::admin::ready(node, &spec).await?;
            node.store.put_function(&spec)?;
            node.install(spec, executor);
            if let Some(old) = stored {
                crate::admin::release_artifacts(node, &old.spec)?;
            }
            tracing::info!("deployed {name}.{namespace}, as the cluster did");
        }
        (Key::Function { namespace, name }, None) => {
            if let Some(stored) = node.store.function(namespace, name)? {
                remove_function_here(node, &stored.spec)?;
            }
        }
    }
    Ok(())
}

/// Fetches the artifacts of `spec` this node does not have yet.
async fn fetch_artifacts(
    node: &Node,
    cluster: &Cluster,
    spec: &FunctionSpec,
) -> Result<(), ApiError> {
    for digest in spec.artifacts() {
        if node.store.artifact(digest)?.is_some() {
            continue;
        }
        let mut upload = node.store.begin_artifact()?;
        let mut failed = None;
        let found = cluster
            .download(digest, |chunk| {
                upload.write(chunk).map_err(|error| {
                    let message = error.to_string();
                    failed = Some(error);
                    std::io::Error::other(message)
                })
            })
            .await;
        if let Some(error) = failed {
            return Err(error.into());
        }
        let found = found?;
        if !found {
            return Err(ApiError::internal(format!(
                "artifact {digest} of {}.{} is not in the cluster",
                spec.name, spec.namespace
            )));
        }
        if upload.digest() != *digest {
            return Err(ClusterError::Corrupt(digest.to_owned()).into());
        }
        upload.commit(&node.store)?;
    }
    Ok(())
}

/// This node, as its heartbeat describes it.
fn me(node: &Node) -> Member {
    Member {
        id: node.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        address: node.address.get().cloned().unwrap_or_default(),
        active: node.active.load(Ordering::Relaxed),
        functions: node.deployed().len() as u64,
        last_seen: wisp_cluster::now_millis(),
    }
}

/// Takes this node off the list of members, when it is in a cluster.
pub(crate) async fn leave(node: &Node) {
    if let Some(cluster) = &node.cluster
        && let Err(error) = cluster.leave(&node.id).await
    {
        tracing::warn!("{error}");
    }
}

/// `GET /system/nodes`: the live nodes, the cluster's members or this node
/// alone; for the node's admin token.
#[utoipa::path(
    get,
    path = "/system/nodes",
    tag = "node",
    summary = "The live nodes",
    responses(
        (status = 200, body = [wisp_core::api::NodeInfo])
    )
)]
pub(crate) async fn nodes(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    axum::Extension(principal): axum::Extension<wisp_core::tenancy::Principal>,
) -> Result<axum::Json<Vec<Member>>, ApiError> {
    principal.allow_node("list the nodes")?;
    Ok(axum::Json(match &node.cluster {
        Some(cluster) => cluster.members().await?,
        None => vec![me(&node)],
    }))
}
