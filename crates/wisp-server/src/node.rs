//! The node's state: the store, the wasm engine, the async queue, the call
//! log and metrics, and the in-memory table of deployed functions that the
//! invocation path reads.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use wisp_core::{
    FunctionKind, FunctionSpec, Observed, Route, egress::EgressPolicy, kv::KeyValue,
    spec::DEFAULT_NAMESPACE, tenancy::secret_env_name,
};
use wisp_runtime::{
    Executor, Output, PrepareError,
    app::AppFunction,
    endpoint::NodeAccess,
    keyvalue::KeyValueAccess,
    process::{ProcessFunction, Program},
    sandbox::{Jail, Sandbox, SandboxError},
    wasm::{WasmConfig, WasmEngine, WasmLimits},
};
use wisp_store::{Store, StoreError};

use crate::{
    Config, ConfigError,
    admission::Limit,
    events,
    secrets::{self, SecretFiles},
    telemetry::{
        FunctionOutput, Telemetry,
        metrics::{FunctionLabels, Metrics},
        otlp,
    },
    tenants::Tenants,
};

/// Why a node cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin token file, or the node id file, cannot be read or written.
    #[error("{}: {source}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The wasm engine cannot start.
    #[error(transparent)]
    Engine(#[from] PrepareError),
    /// The queue's writer thread cannot start.
    #[error("start the queue writer: {0}")]
    Queue(std::io::Error),
    /// The call log's writer thread cannot start.
    #[error("start the call log writer: {0}")]
    CallLog(std::io::Error),
    /// Process functions cannot be sandboxed here.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// A deployed function, ready to serve.
pub struct Deployed {
    /// Its validated spec.
    pub spec: FunctionSpec,
    /// How it runs.
    pub runner: Runner,
    /// Invocations since the node started.
    pub invocations: AtomicU64,
    /// Invocations running now.
    pub active: AtomicU64,
    /// Its concurrency limit.
    pub limit: Limit,
    /// Its metric labels.
    pub(crate) labels: FunctionLabels,
}

/// What runs a deployed function's calls.
pub enum Runner {
    /// The runtime's executor of its kind.
    Executor(Executor),
    /// A pipeline: its steps are other functions ([`crate::pipeline`]).
    Pipeline,
}

impl Deployed {
    /// Its replicas, if it is an HTTP app.
    pub(crate) fn app(&self) -> Option<&AppFunction> {
        match &self.runner {
            Runner::Executor(Executor::App(app)) => Some(app),
            _ => None,
        }
    }
}

/// Functions by `(namespace, name)`, and those with a top-level route.
#[derive(Default)]
struct FunctionTable {
    by_name: HashMap<(String, String), Arc<Deployed>>,
    routed: Vec<(Route, Arc<Deployed>)>,
}

/// A running node.
pub struct Node {
    me: Weak<Node>,
    /// The node's id: random, made with its data directory, unique in a cluster.
    pub(crate) id: String,
    /// Where the node serves, `http://host:port`, once it listens, or the
    /// URL it advertises.
    pub(crate) address: std::sync::OnceLock<String>,
    /// The cluster whose registry this node caches, in cluster mode.
    pub(crate) cluster: Option<Arc<wisp_cluster::Cluster>>,
    /// The node's shares of its namespaces' quotas, in cluster mode.
    pub(crate) shares: Option<Arc<crate::shares::Shares>>,
    /// The generation of each namespace the node holds, in cluster mode.
    pub(crate) generations: crate::cluster::Generations,
    /// Whether changes of the cluster's registry wait to be applied here:
    /// the node's view is behind, and it collects no artifact meanwhile.
    pub(crate) registry_behind: std::sync::atomic::AtomicBool,
    pub(crate) config: Config,
    pub(crate) admin_token: String,
    pub(crate) store: Arc<Store>,
    /// Every namespace's key-value stores: in SQLite, or the cluster's.
    pub(crate) key_value: Arc<dyn KeyValue>,
    /// The namespaces' object buckets.
    pub(crate) objects: Arc<dyn wisp_core::objects::Objects>,
    pub(crate) queue: events::Queue,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) metrics: Metrics,
    /// The addresses functions and callbacks may not connect to.
    pub(crate) egress: Arc<EgressPolicy>,
    /// The running tasks of each function's triggers, once events have started.
    triggers: Mutex<HashMap<(String, String), Vec<tokio::task::AbortHandle>>>,
    events_started: AtomicBool,
    pub(crate) engine: WasmEngine,
    functions: RwLock<FunctionTable>,
    /// Deploys and removals run one at a time, so "validate, store, swap" is atomic.
    pub(crate) deploy_lock: tokio::sync::Mutex<()>,
    pub(crate) invocations: AtomicU64,
    pub(crate) active: AtomicU64,
    /// Namespaces, their quotas and limits, and namespace tokens.
    pub(crate) tenants: Tenants,
    empty_dir: PathBuf,
    /// Where process functions run; none when the node runs unsandboxed.
    sandbox: Option<Arc<Sandbox>>,
    /// The secret files of sandboxed process functions.
    pub(crate) secret_files: SecretFiles,
}

impl Node {
    /// Opens the data directory and loads every deployed function; blocking.
    /// A function that cannot be loaded is logged and left out, so one broken
    /// artifact cannot keep the node from serving the others.
    pub fn start(config: Config) -> Result<Arc<Self>, StartError> {
        Self::open(config, None)
    }

    /// Starts a node of a cluster: like [`Node::start`], with an empty
    /// registry that [`crate::join`] then fills from the cluster's.
    pub fn start_in_cluster(
        config: Config,
        cluster: Arc<wisp_cluster::Cluster>,
    ) -> Result<Arc<Self>, StartError> {
        Self::open(config, Some(cluster))
    }

    fn open(
        config: Config,
        cluster: Option<Arc<wisp_cluster::Cluster>>,
    ) -> Result<Arc<Self>, StartError> {
        config.validate()?;
        let store = Arc::new(Store::open(&config.data_dir)?);
        if cluster.is_some() {
            // What the node held is a cache, perhaps stale: the cluster's
            // snapshot fills it again.
            store.clear_registry()?;
        }
        let queue =
            events::Queue::new(store.clone(), config.async_workers).map_err(StartError::Queue)?;
        let exporter = match &config.otlp_endpoint {
            Some(endpoint) => {
                let url = otlp::traces_url(endpoint).map_err(ConfigError::OtlpEndpoint)?;
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    StartError::CallLog(std::io::Error::other("OTLP export needs a tokio runtime"))
                })?;
                Some(otlp::Exporter::start(url, &runtime))
            }
            None => None,
        };
        let telemetry = Arc::new(
            Telemetry::start(
                wisp_store::Telemetry::open(&config.data_dir, config.call_log_retention)?,
                exporter,
            )
            .map_err(StartError::CallLog)?,
        );
        let admin_token = match &config.admin_token {
            Some(token) => token.clone(),
            None => load_or_create(&config.data_dir.join("admin-token"), new_admin_token)?,
        };
        let egress = Arc::new(EgressPolicy::new(
            config.allow_egress.clone(),
            own_addresses(config.listen.ip(), config.ui_listen),
        ));
        let engine = WasmEngine::new(&WasmConfig {
            cache_dir: config.data_dir.join("cache"),
            max_instances: config.max_instances,
            max_memory: wisp_core::spec::MAX_MEMORY,
            egress: egress.clone(),
        })?;
        let empty_dir = config.data_dir.join("empty");
        std::fs::create_dir_all(&empty_dir).map_err(|source| StoreError::Io {
            action: "create directory",
            path: empty_dir.clone(),
            source,
        })?;
        let secrets_dir = config.data_dir.join("secrets");
        let secret_files =
            SecretFiles::open(&config.data_dir).map_err(|source| StoreError::Io {
                action: "create directory",
                path: secrets_dir,
                source,
            })?;
        let sandbox = config
            .sandbox
            .then(|| Sandbox::new(&config.allow_egress))
            .transpose()?;
        let tenants = Tenants::load(&store, config.namespace_max_concurrency)?;
        let key_value: Arc<dyn KeyValue> = match &cluster {
            Some(cluster) => cluster.key_value(),
            None => Arc::new(wisp_store::KvStore::open(
                &config.data_dir,
                config.kv_max_bytes,
            )?),
        };
        let objects: Arc<dyn wisp_core::objects::Objects> = match &cluster {
            Some(cluster) => {
                wisp_store::ObjectStore::sweep_staging(&config.data_dir)?;
                Arc::new(cluster.objects(&config.data_dir))
            }
            None => Arc::new(wisp_store::ObjectStore::open(&config.data_dir)?),
        };
        // The same after a restart, so a node that comes back knows which
        // async calls of the cluster's it held.
        let id = load_or_create(&config.data_dir.join("node-id"), wisp_cluster::node_id)?;
        let shares = cluster
            .as_ref()
            .map(|cluster| Arc::new(crate::shares::Shares::new(cluster.clone(), id.clone())));
        let node = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            id,
            address: std::sync::OnceLock::new(),
            generations: crate::cluster::Generations::open(&config.data_dir),
            registry_behind: std::sync::atomic::AtomicBool::new(false),
            shares,
            cluster,
            config,
            admin_token,
            store,
            key_value: Arc::new(events::kv::Watched::new(key_value, me.clone())),
            objects,
            queue,
            telemetry,
            metrics: Metrics::new(me.clone()),
            egress,
            triggers: Mutex::default(),
            events_started: AtomicBool::new(false),
            engine,
            functions: RwLock::default(),
            deploy_lock: tokio::sync::Mutex::new(()),
            invocations: AtomicU64::new(0),
            active: AtomicU64::new(0),
            tenants,
            empty_dir,
            sandbox,
            secret_files,
        });
        node.engine
            .serve_internal(Arc::new(crate::invoke::InternalCalls(Arc::downgrade(
                &node,
            ))));
        for stored in node.store.functions()? {
            let spec = stored.spec;
            match node.prepare(&spec) {
                Ok(executor) => node.install(spec, executor),
                Err(error) => tracing::error!(
                    "function {}.{} is not served: {error}",
                    spec.name,
                    spec.namespace
                ),
            }
        }
        Ok(node)
    }

    /// Sets the URL the node is listed with (`GET /system/nodes`) instead
    /// of the address it listens on; before it serves.
    pub fn advertise(&self, url: String) {
        let _ = self.address.set(url);
    }

    /// The admin token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Starts the async side: runs the calls left in the queue, re-sends
    /// pending callbacks, and starts every function's triggers.
    pub async fn start_events(self: &Arc<Self>) {
        self.events_started.store(true, Ordering::SeqCst);
        events::Queue::recover(self).await;
        for function in self.deployed() {
            self.restart_triggers(&function.spec);
        }
    }

    /// Stops a function's trigger tasks and, once events have started, starts its current ones.
    fn restart_triggers(&self, spec: &FunctionSpec) {
        let key = (spec.namespace.clone(), spec.name.clone());
        let started = match self.me.upgrade() {
            Some(node) if self.events_started.load(Ordering::SeqCst) => {
                events::triggers::start(&node, spec)
            }
            _ => Vec::new(),
        };
        let mut triggers = self.triggers.lock().expect("triggers");
        for old in triggers.remove(&key).into_iter().flatten() {
            old.abort();
        }
        if !started.is_empty() {
            triggers.insert(key, started);
        }
    }

    /// Turns a spec into something that runs: compiles or loads the
    /// component, or unpacks the process tree; reads its secrets. Blocking.
    pub(crate) fn prepare(&self, spec: &FunctionSpec) -> Result<Runner, PrepareError> {
        match spec.kind {
            FunctionKind::Pipeline => Ok(Runner::Pipeline),
            _ => self.executor(spec).map(Runner::Executor),
        }
    }

    /// Prepares the executor of a function that is not a pipeline.
    fn executor(&self, spec: &FunctionSpec) -> Result<Executor, PrepareError> {
        let store_error = |error: StoreError| match error {
            StoreError::UnknownArtifact(_) | StoreError::BadArchive { .. } => {
                PrepareError::InvalidArtifact(error.to_string())
            }
            other => PrepareError::Internal(other.to_string()),
        };
        let secret_values = self
            .store
            .secret_values(&spec.namespace, &spec.secrets)
            .map_err(store_error)?
            .map_err(|name| {
                PrepareError::InvalidArtifact(secrets::missing(&name, &spec.namespace))
            })?;
        let env: Vec<(String, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(
                spec.secrets
                    .iter()
                    .map(|name| secret_env_name(name))
                    .zip(secret_values.iter().cloned()),
            )
            .collect();
        if spec.kind.is_process() {
            // Files only in the sandbox: unsandboxed, there is nowhere private to put them.
            let secret_dir = match &self.sandbox {
                Some(_) if !spec.secrets.is_empty() => {
                    self.secret_files.write(spec, &secret_values).map(Some)
                }
                _ => self
                    .secret_files
                    .remove(&spec.namespace, &spec.name)
                    .map(|()| None),
            }
            .map_err(|error| {
                PrepareError::Internal(format!(
                    "write the secret files of {}.{}: {error}",
                    spec.name, spec.namespace
                ))
            })?;
            let dir = match &spec.artifact {
                Some(digest) => self.store.artifact_tree(digest).map_err(store_error)?,
                None => self.empty_dir.clone(),
            };
            let command = spec.command.as_deref().unwrap_or_default();
            let mut program = Program::new(dir, command, env)?;
            program.jail = self.sandbox.as_ref().map(|sandbox| Jail {
                sandbox: sandbox.clone(),
                memory: spec.memory.0,
                // Async calls may run longer than sync ones; the deadline is enforced anyway.
                cpu_time: spec
                    .scale
                    .is_none()
                    .then_some(spec.timeout.0.max(spec.asynchronous.timeout.0)),
                network: spec.network,
                serves: spec.scale.is_some(),
                secrets: secret_dir,
            });
            program.node = self
                .engine
                .internal()
                .filter(|_| {
                    NodeAccess::wanted(
                        &spec.key_value_stores,
                        &spec.buckets,
                        &spec.allowed_outbound_hosts,
                    )
                })
                .map(|internal| {
                    Arc::new(NodeAccess {
                        internal,
                        namespace: spec.namespace.clone(),
                        name: spec.name.clone(),
                        allowed: spec.allowed_outbound_hosts.clone(),
                    })
                });
            return Ok(match &spec.scale {
                Some(scale) => Executor::App(AppFunction::new(
                    spec.name.clone(),
                    program,
                    scale.clone(),
                    self.output(spec),
                )?),
                None => Executor::Process(ProcessFunction::new(program, self.output(spec))),
            });
        }
        let digest = spec.artifact.as_deref().unwrap_or_default();
        let path = self.store.artifact_path(digest).map_err(store_error)?;
        let component = self.engine.load(digest, &path, spec.fuel.is_some())?;
        let files = spec
            .files
            .as_deref()
            .map(|digest| self.store.artifact_tree(digest))
            .transpose()
            .map_err(store_error)?;
        let limits = WasmLimits {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            memory: spec.memory.0,
            env,
            files,
            fuel: spec.fuel,
            allowed_outbound_hosts: spec.allowed_outbound_hosts.clone(),
            key_value: (!spec.key_value_stores.is_empty()).then(|| KeyValueAccess {
                backend: self.key_value.clone(),
                namespace: spec.namespace.clone(),
                stores: spec.key_value_stores.clone(),
            }),
            output: self.output(spec),
        };
        Ok(match spec.kind {
            FunctionKind::WasmHttp => {
                Executor::WasmHttp(self.engine.http_function(&component, limits)?)
            }
            _ => Executor::WasmStdio(self.engine.stdio_function(&component, limits)?),
        })
    }

    /// Where a function's output lines go.
    pub(crate) fn output(&self, spec: &FunctionSpec) -> Output {
        Output(Arc::new(FunctionOutput {
            telemetry: self.telemetry.clone(),
            namespace: spec.namespace.clone(),
            function: spec.name.clone(),
        }))
    }

    /// Makes a prepared function visible to the invocation path.
    pub(crate) fn install(&self, spec: FunctionSpec, runner: Runner) {
        let key = (spec.namespace.clone(), spec.name.clone());
        let deployed = self.deployed_of(spec, runner);
        let mut table = self.functions.write().expect("function table");
        table.routed.retain(|(_, existing)| {
            (
                existing.spec.namespace.as_str(),
                existing.spec.name.as_str(),
            ) != (key.0.as_str(), key.1.as_str())
        });
        if let Some(route) = deployed.spec.route.clone() {
            table.routed.push((route, deployed.clone()));
        }
        let spec = deployed.spec.clone();
        table.by_name.insert(key, deployed);
        drop(table);
        self.restart_triggers(&spec);
    }

    /// A function ready to serve, with its counters and its concurrency limit.
    pub(crate) fn deployed_of(&self, spec: FunctionSpec, runner: Runner) -> Arc<Deployed> {
        let limit = Limit::new(
            format!("function {}", spec.name),
            spec.max_concurrency
                .unwrap_or(self.config.function_max_concurrency),
        );
        Arc::new(Deployed {
            labels: FunctionLabels::of(&spec),
            spec,
            runner,
            invocations: AtomicU64::new(0),
            active: AtomicU64::new(0),
            limit,
        })
    }

    /// Removes a function from the invocation path; running calls finish.
    pub(crate) fn uninstall(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut table = self.functions.write().expect("function table");
        if let Some(removed) = table.by_name.remove(&key) {
            table
                .routed
                .retain(|(_, existing)| !Arc::ptr_eq(existing, &removed));
        }
        drop(table);
        let stopped = self.triggers.lock().expect("triggers").remove(&key);
        for task in stopped.into_iter().flatten() {
            task.abort();
        }
    }

    /// A deployed function by name and namespace.
    pub(crate) fn function(&self, namespace: &str, name: &str) -> Option<Arc<Deployed>> {
        let table = self.functions.read().expect("function table");
        table
            .by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// A deployed function by `name` or `name.namespace`.
    pub(crate) fn function_by_reference(&self, reference: &str) -> Option<Arc<Deployed>> {
        let (name, namespace) = split_reference(reference);
        self.function(namespace, name)
    }

    /// Every deployed function.
    pub(crate) fn deployed(&self) -> Vec<Arc<Deployed>> {
        let table = self.functions.read().expect("function table");
        table.by_name.values().cloned().collect()
    }

    /// The function whose route serves `path`: the longest matching route wins.
    pub(crate) fn function_by_route(&self, path: &str) -> Option<Arc<Deployed>> {
        let table = self.functions.read().expect("function table");
        table
            .routed
            .iter()
            .filter(|(route, _)| route.matches(path))
            .max_by_key(|(route, _)| route.path.len())
            .map(|(_, deployed)| deployed.clone())
    }

    /// What the node observes of a function: counters and replicas; all zero when not loaded.
    pub(crate) fn observed(&self, namespace: &str, name: &str) -> Observed {
        let Some(function) = self.function(namespace, name) else {
            return Observed::default();
        };
        let invocations = function.invocations.load(Ordering::Relaxed);
        match function.app() {
            Some(app) => {
                let counts = app.counts();
                Observed {
                    invocations,
                    replicas: counts.replicas,
                    available_replicas: counts.ready,
                    cold_starts: counts.cold_starts,
                }
            }
            None => Observed {
                invocations,
                replicas: 1,
                available_replicas: 1,
                cold_starts: 0,
            },
        }
    }

    /// The concurrency limit shared by a namespace's functions: its quota,
    /// else the node's per-namespace limit, else none.
    pub(crate) fn namespace_limit(&self, namespace: &str) -> Option<Arc<Limit>> {
        self.tenants.limit(namespace)
    }

    /// Stops every function's replicas, once requests in flight are done.
    pub async fn drain(&self) {
        for function in self.deployed() {
            if let Some(app) = function.app() {
                app.drain().await;
            }
        }
    }
}

/// `name` or `name.namespace` as `(name, namespace)`.
pub(crate) fn split_reference(reference: &str) -> (&str, &str) {
    reference
        .split_once('.')
        .unwrap_or((reference, DEFAULT_NAMESPACE))
}

/// The addresses the node answers on, which its egress policy denies: every
/// interface's (a listener bound to one address is still reached through
/// the others' routes, and brokers or replicas may listen on all of them),
/// the listen address and the web UI's.
fn own_addresses(
    listen: std::net::IpAddr,
    ui_listen: Option<std::net::SocketAddr>,
) -> Vec<std::net::IpAddr> {
    let mut addresses = wisp_runtime::outbound::local_addresses();
    addresses.push(listen);
    addresses.extend(ui_listen.map(|ui| ui.ip()));
    addresses
}

/// How often the node's own addresses are read again, so interfaces that
/// come up after the start are denied too.
const OWN_ADDRESSES_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps the egress policy's list of the node's own addresses current.
/// Runs until the node stops.
pub(crate) async fn refresh_own_addresses(node: Arc<Node>) {
    let mut ticks = tokio::time::interval(OWN_ADDRESSES_REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (listen, ui_listen) = (node.config.listen.ip(), node.config.ui_listen);
        match tokio::task::spawn_blocking(move || own_addresses(listen, ui_listen)).await {
            Ok(addresses) => node.egress.set_node(addresses),
            Err(error) => tracing::warn!("could not read the node's addresses: {error}"),
        }
    }
}

/// Reads the token kept in the data directory, or creates one (mode 0600).
/// A fresh admin token: 24 random bytes, in hex.
pub fn new_admin_token() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

/// The text of the file at `path`, written first with `make` (readable by
/// its owner only) when it is missing or empty.
fn load_or_create(path: &Path, make: fn() -> String) -> Result<String, StartError> {
    let error = |source| StartError::Token {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => {
            // A token file copied in by hand may be readable by others.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(error)?;
            return Ok(token.trim().to_owned());
        }
        Ok(_) => {}
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => return Err(error(source)),
        Err(_) => {}
    }
    let token = make();
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    file.write_all(token.as_bytes()).map_err(error)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn a_node_on_loopback_still_counts_every_interface_and_the_ui_as_its_own() {
        let listen: IpAddr = "127.0.0.1".parse().unwrap();
        let ui = "127.0.0.3:8081".parse().unwrap();
        let own = own_addresses(listen, Some(ui));
        let interfaces = wisp_runtime::outbound::local_addresses();
        for address in &interfaces {
            assert!(own.contains(address), "{address} is missing from {own:?}");
        }
        assert!(own.contains(&listen) && own.contains(&ui.ip()), "{own:?}");
        // The machine's non-loopback addresses are what a guest could
        // otherwise reach the node's other listeners through.
        let outside: Vec<_> = interfaces.iter().filter(|a| !a.is_loopback()).collect();
        if outside.is_empty() {
            eprintln!("this machine has no interface address besides loopback");
        }
        let policy = EgressPolicy::new(Vec::new(), own);
        for address in outside {
            assert!(policy.check(*address).is_err(), "{address} is reachable");
        }
    }
}
