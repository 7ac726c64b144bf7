//! A function as wisp runs it: [`FunctionSpec`], validated from the API's
//! [`FunctionDeployment`] with defaults filled in. The registry stores specs;
//! the API shows them as [`FunctionStatus`].

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    ByteSize, HumanDuration, NameError,
    api::{FunctionDeployment, FunctionStatus, Limits},
    events::Trigger,
    validate_name,
};

/// The namespace a function lives in when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";
/// How long an invocation may take when the function does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The memory a function may use when it does not say.
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// The most memory a function may ask for.
pub const MAX_MEMORY: u64 = 4 << 30;
/// The longest timeout a function may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The most replicas a `process-http` function may ask for.
pub const MAX_SCALE: u32 = 100;
/// Replicas kept warm when a `process-http` function does not say.
pub const DEFAULT_MIN_SCALE: u32 = 1;
/// The replica ceiling when a `process-http` function does not say.
pub const DEFAULT_MAX_SCALE: u32 = 10;
/// In-flight requests per replica the autoscaler aims for when the function does not say.
pub const DEFAULT_TARGET_CONCURRENCY: u32 = 10;
/// How long a replica stays idle before it is stopped, when the function does not say.
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);
/// The longest a request may wait for a concurrency slot.
pub const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Retries of a failed async call when the function does not say, as Lambda does.
pub const DEFAULT_RETRIES: u32 = 2;
/// The most retries a function may ask for.
pub const MAX_RETRIES: u32 = 50;
/// The first retry's delay when the function does not say; each retry doubles it.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// The longest delay between two attempts, however many failed.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5 * 60);
/// The longest an async invocation may take.
pub const MAX_ASYNC_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Paths that belong to the gateway and cannot be a function's route.
pub const RESERVED_PATHS: &[&str] = &[
    "/system",
    "/function",
    "/async-function",
    "/pipe",
    "/healthz",
    "/metrics",
    "/ui",
    "/s3",
];

/// How a function's artifact is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionKind {
    /// A component exporting `wasi:http/incoming-handler`: a fresh instance per request.
    WasmHttp,
    /// A component exporting `wasi:cli/run`: body on STDIN, response on STDOUT.
    WasmStdio,
    /// Any executable, one process per request, with the STDIN/STDOUT contract.
    Process,
    /// An executable that serves HTTP on `$PORT`: long-running replicas, scaled with demand.
    ProcessHttp,
    /// Other functions run as one, each step's output streaming into the next's input.
    Pipeline,
}

impl FunctionKind {
    /// The name used in `wisp.toml` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WasmHttp => "wasm-http",
            Self::WasmStdio => "wasm-stdio",
            Self::Process => "process",
            Self::ProcessHttp => "process-http",
            Self::Pipeline => "pipeline",
        }
    }

    /// Whether the artifact is a WebAssembly component.
    pub fn is_wasm(self) -> bool {
        matches!(self, Self::WasmHttp | Self::WasmStdio)
    }

    /// Whether the function runs a command line from `envProcess`.
    pub fn is_process(self) -> bool {
        matches!(self, Self::Process | Self::ProcessHttp)
    }
}

impl fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A top-level route: an exact path, or a prefix when written `/path/...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The path without the `/...` suffix.
    pub path: String,
    /// Whether every path under `path` matches too.
    pub prefix: bool,
}

impl Route {
    /// Whether a request path is served by this route.
    pub fn matches(&self, path: &str) -> bool {
        if self.prefix {
            let base = self.path.trim_end_matches('/');
            path == base
                || path
                    .strip_prefix(base)
                    .is_some_and(|rest| rest.starts_with('/'))
        } else {
            path == self.path
        }
    }

    /// Whether some request path is served by both routes, as
    /// [`Self::matches`] decides: the same exact path, an exact path under a
    /// prefix, or one prefix under the other. (Every route matches its own
    /// `path`, so a path both match exists exactly when one route matches
    /// the other's `path`.)
    pub fn overlaps(&self, other: &Route) -> bool {
        self.matches(&other.path) || other.matches(&self.path)
    }
}

impl FromStr for Route {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let invalid = |why: &str| SpecError::Route(format!("route `{text}` {why}"));
        if !text.starts_with('/') {
            return Err(invalid("must start with `/`"));
        }
        let (path, prefix) = match text.strip_suffix("/...") {
            Some(base) => (if base.is_empty() { "/" } else { base }, true),
            None => (text, false),
        };
        if path.contains("...") || path.contains("//") || path.contains(['?', '#', ' ']) {
            return Err(invalid("is not a plain path (use `/path` or `/path/...`)"));
        }
        let reserved = RESERVED_PATHS.iter().find(|reserved| {
            path == **reserved
                || path
                    .strip_prefix(**reserved)
                    .is_some_and(|r| r.starts_with('/'))
                || (prefix && path == "/")
        });
        if let Some(reserved) = reserved {
            return Err(invalid(&format!(
                "overlaps `{reserved}`, which wisp serves itself"
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            prefix,
        })
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.prefix, self.path.as_str()) {
            (true, "/") => f.write_str("/..."),
            (true, path) => write!(f, "{path}/..."),
            (false, path) => f.write_str(path),
        }
    }
}

impl Serialize for Route {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a deployment is refused before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The function or namespace name is not a DNS label.
    #[error(transparent)]
    Name(#[from] NameError),
    /// `kind` is missing.
    #[error(
        "`kind` is required: one of wasm-http, wasm-stdio, process, process-http (only a \
         deployment with `envProcess` may leave it out, for `process`)"
    )]
    MissingKind,
    /// A wasm function has no `image`.
    #[error("a {0} function needs `image`: the artifact digest from PUT /system/artifacts")]
    MissingArtifact(FunctionKind),
    /// `image` is not a `sha256:` digest.
    #[error("`image` must be an artifact digest `sha256:<64 hex digits>`, not `{0}`")]
    BadDigest(String),
    /// A process function has no command.
    #[error("a {0} function needs `envProcess` (`command` in wisp.toml)")]
    MissingCommand(FunctionKind),
    /// Scale settings on a function that has no replicas.
    #[error(
        "`{setting}` is for process-http functions; a {kind} function gets a fresh instance per request and has no replicas"
    )]
    NotScalable {
        /// The setting given.
        setting: &'static str,
        /// The function's kind.
        kind: FunctionKind,
    },
    /// The readiness probe is neither `tcp` nor a path.
    #[error("readiness `{0}` must be `tcp` or an HTTP path such as `/_/ready`")]
    Readiness(String),
    /// The route is malformed or reserved.
    #[error("{0}")]
    Route(String),
    /// A limit is out of range.
    #[error("{0}")]
    Limit(String),
    /// An environment variable name is not usable.
    #[error("environment variable name `{0}` is not valid")]
    EnvName(String),
    /// An environment variable's value holds a NUL byte, which no
    /// environment can carry.
    #[error("the value of environment variable `{0}` holds a NUL byte")]
    EnvValue(String),
    /// Variables (from `env` or a secret's name) that would change how the
    /// dynamic loader or the C library behave.
    #[error(
        "environment variable(s) {} change how programs are loaded or how the C library \
         behaves, and are refused: {LOADER_VARIABLES_DOC}", .0.join(", ")
    )]
    LoaderVariables(Vec<String>),
    /// A trigger does not parse.
    #[error("{0}")]
    Trigger(String),
    /// A secret's name is not a DNS label, is given twice, or its
    /// variable is also set in `env`.
    #[error("secret `{0}`: {1}")]
    Secret(String, String),
    /// A key-value store's name is not a DNS label, or is given twice.
    #[error("key-value store `{0}`: {1}")]
    KeyValueStore(String, String),
    /// A bucket's name is not a DNS label, or is given twice.
    #[error("bucket `{0}`: {1}")]
    Bucket(String, String),
    /// `network` on a wasm function.
    #[error(
        "`network` is for process functions; a {0} function reaches only its allowed_outbound_hosts"
    )]
    Network(FunctionKind),
    /// `files` on a process function.
    #[error(
        "`files` is for wasm functions; a {0} function sees its own artifact's files (read-only)"
    )]
    Files(FunctionKind),
    /// A pipeline's steps are missing or wrong, or given to another kind.
    #[error("{0}")]
    Pipeline(String),
    /// `fuel` on a process function, or none at all.
    #[error("`fuel` is for wasm functions, at least 1; a {0} function is bounded by its timeout")]
    Fuel(FunctionKind),
}

/// What [`is_loader_variable`] refuses, as error messages say it.
pub const LOADER_VARIABLES_DOC: &str = "LD_*, MALLOC_*, GCONV_PATH, GETCONF_DIR, GLIBC_TUNABLES, \
     HOSTALIASES, LOCALDOMAIN, LOCPATH, NIS_PATH, NLSPATH, RESOLV_HOST_CONF and RES_OPTIONS";

/// Whether an environment variable changes how the dynamic loader or the C
/// library behave (the variables glibc drops for setuid programs, but for
/// `TMPDIR` and `TZDIR`). A function may not set one: should any program
/// outside its sandbox ever see it, it would run the function's code there.
/// Compared without regard to case, as no one needs `ld_preload` either.
pub fn is_loader_variable(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    name.starts_with("LD_")
        || name.starts_with("MALLOC_")
        || matches!(
            name.as_str(),
            "GCONV_PATH"
                | "GETCONF_DIR"
                | "GLIBC_TUNABLES"
                | "HOSTALIASES"
                | "LOCALDOMAIN"
                | "LOCPATH"
                | "NIS_PATH"
                | "NLSPATH"
                | "RESOLV_HOST_CONF"
                | "RES_OPTIONS"
        )
}

/// Checks a secret's name where it is created: a DNS label whose variable
/// is not a loader variable.
pub fn validate_secret_name(secret: &str) -> Result<(), String> {
    validate_name(secret).map_err(|error| error.to_string())?;
    let variable = crate::tenancy::secret_env_name(secret);
    if is_loader_variable(&variable) {
        return Err(SpecError::LoaderVariables(vec![variable]).to_string());
    }
    Ok(())
}

/// Checks the secrets a function names: DNS labels, each once, and none
/// whose environment variable `env` sets as well.
fn validate_secrets(secrets: &[String], env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    let mut seen = std::collections::BTreeSet::new();
    for secret in secrets {
        let refuse = |why: String| Err(SpecError::Secret(secret.clone(), why));
        if let Err(error) = validate_secret_name(secret) {
            return refuse(error);
        }
        if !seen.insert(secret) {
            return refuse("named twice".into());
        }
        let variable = crate::tenancy::secret_env_name(secret);
        if env.contains_key(&variable) {
            return refuse(format!(
                "`env` sets {variable} as well, the variable the secret is handed over as"
            ));
        }
    }
    Ok(())
}

/// Checks the stores or buckets a function declares: DNS labels, each
/// once, or `refuse(name, why)`.
fn validate_declared(
    names: &[String],
    refuse: fn(String, String) -> SpecError,
) -> Result<(), SpecError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        let why = if validate_name(name).is_err() {
            "not a DNS label".to_owned()
        } else if !seen.insert(name) {
            "named twice".to_owned()
        } else {
            continue;
        };
        return Err(refuse(name.clone(), why));
    }
    Ok(())
}

/// What a process function may reach on the network.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// Nothing: its own loopback only.
    #[default]
    None,
    /// Outbound connections through the host's network; it cannot listen.
    Outbound,
}

/// The most steps a pipeline may have.
pub const MAX_STEPS: usize = 32;

/// The most functions a `tee` step sends its input to.
pub const MAX_TEE: usize = 8;
/// The most calls a `map` step runs at once.
pub const MAX_PARALLELISM: u32 = 64;
/// How many calls a `map` step runs at once unless it says.
pub const DEFAULT_PARALLELISM: u32 = 4;

/// One step of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    untagged,
    expecting = "a function as `name` or `name.namespace`, `{ map = \"name\" }` or `{ tee = [\"a\", \"b\"] }`"
)]
pub enum Step {
    /// A function: its output streams into the next step.
    Function(String),
    /// A function run on each item of the input.
    Map(MapStep),
    /// Several functions given the same input.
    Tee(TeeStep),
}

/// A `map` step: the input split into items, the function called on each,
/// `parallelism` at a time, and the outputs joined in the input's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapStep {
    /// The function.
    pub map: String,
    /// Calls at once; [`DEFAULT_PARALLELISM`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// How the input is split.
    #[serde(default)]
    pub split: Split,
}

/// How a `map` step splits its input, and joins its outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Each line is an item; each output is a line of the result.
    #[default]
    Lines,
    /// The input is a JSON array, each element an item; the result is the
    /// array of the outputs (each as JSON when it is JSON, else a string).
    Json,
}

/// A `tee` step: the same input to each function at once; the outputs
/// concatenated in order, or a JSON object by function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeeStep {
    /// The functions.
    pub tee: Vec<String>,
    /// How the outputs are joined.
    #[serde(default)]
    pub join: Join,
}

/// How a `tee` step joins its outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// One after the other, in the order listed.
    #[default]
    Concat,
    /// `{"name": output, ...}`, each output as JSON when it is JSON, else a string.
    Json,
}

impl Step {
    /// The functions the step calls.
    pub fn functions(&self) -> &[String] {
        match self {
            Self::Function(function) => std::slice::from_ref(function),
            Self::Map(map) => std::slice::from_ref(&map.map),
            Self::Tee(tee) => &tee.tee,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Function(function) => f.write_str(function),
            Self::Map(map) => write!(f, "map {}", map.map),
            Self::Tee(tee) => write!(f, "tee {}", tee.tee.join("+")),
        }
    }
}

impl From<&str> for Step {
    fn from(function: &str) -> Self {
        Self::Function(function.to_owned())
    }
}

/// Checks a pipeline's steps, and that no other kind has any.
fn validate_steps(
    kind: FunctionKind,
    steps: &[Step],
    env: &BTreeMap<String, String>,
    secrets: &[String],
    key_value_stores: &[String],
    buckets: &[String],
) -> Result<(), SpecError> {
    let refuse = |message: String| Err(SpecError::Pipeline(message));
    if kind != FunctionKind::Pipeline {
        return match steps.is_empty() {
            true => Ok(()),
            false => refuse(format!("`steps` is for pipelines, not a {kind} function")),
        };
    }
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return refuse(format!(
            "a pipeline needs 1 to {MAX_STEPS} `steps`, not {}",
            steps.len()
        ));
    }
    for step in steps {
        for function in step.functions() {
            let (name, namespace) = function
                .split_once('.')
                .unwrap_or((function, DEFAULT_NAMESPACE));
            if validate_name(name).is_err() || validate_name(namespace).is_err() {
                return refuse(format!(
                    "step `{function}` is not a function's `name` or `name.namespace`"
                ));
            }
        }
        match step {
            Step::Map(map)
                if map
                    .parallelism
                    .is_some_and(|n| n == 0 || n > MAX_PARALLELISM) =>
            {
                return refuse(format!(
                    "step `{step}`: parallelism is 1 to {MAX_PARALLELISM}"
                ));
            }
            Step::Tee(tee) if tee.tee.len() < 2 || tee.tee.len() > MAX_TEE => {
                return refuse(format!(
                    "step `{step}`: a tee sends its input to 2 to {MAX_TEE} functions"
                ));
            }
            _ => {}
        }
    }
    if !env.is_empty() || !secrets.is_empty() || !key_value_stores.is_empty() || !buckets.is_empty()
    {
        return refuse(
            "a pipeline has no environment, secrets, key-value stores or buckets of its own: \
             give them to its steps"
                .into(),
        );
    }
    Ok(())
}

/// A validated function with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    /// The function's name, a DNS label.
    pub name: String,
    /// Its namespace, a DNS label.
    pub namespace: String,
    /// How it runs.
    pub kind: FunctionKind,
    /// The artifact digest, `sha256:...`; absent for a process run from the host's `PATH`.
    pub artifact: Option<String>,
    /// The command line of a process function, split on whitespace.
    pub command: Option<String>,
    /// A top-level route.
    pub route: Option<Route>,
    /// Bound on a whole invocation.
    pub timeout: HumanDuration,
    /// Bound on the function's memory.
    pub memory: ByteSize,
    /// Bound on concurrent invocations; over it, 429.
    pub max_concurrency: Option<u32>,
    /// Bound on a request body; defaults to the node's.
    pub max_body_size: Option<ByteSize>,
    /// Environment variables the function sees.
    pub env: BTreeMap<String, String>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    pub annotations: BTreeMap<String, String>,
    /// Outbound HTTP destinations a wasm function may call (`scheme://host[:port]`, `*` wildcards).
    pub allowed_outbound_hosts: Vec<String>,
    /// What a process function may reach on the network.
    #[serde(default)]
    pub network: Network,
    /// The tar artifact a wasm function sees, read-only, as its filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<String>,
    /// The fuel a wasm function's call may burn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// How long a request over `max_concurrency` may wait for a slot before its 429.
    #[serde(default)]
    pub queue_timeout: HumanDuration,
    /// How a `process-http` function's replicas are scaled; absent for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
    /// How async calls run and are retried.
    #[serde(default)]
    pub asynchronous: AsyncPolicy,
    /// What invokes the function besides HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// Whether invoking it needs a token of its namespace (or the node's).
    #[serde(default)]
    pub private: bool,
    /// Secrets of its namespace it is handed, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Key-value stores of its namespace it may use, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_value_stores: Vec<String>,
    /// Object buckets of its namespace it may use, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<String>,
    /// A pipeline's steps, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

/// How a function's async calls (and triggered events) run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncPolicy {
    /// Attempts after the first, for 5xx answers, timeouts and crashes.
    pub retries: u32,
    /// The delay before the first retry; each retry doubles it, with jitter,
    /// up to [`MAX_RETRY_DELAY`].
    pub retry_backoff: HumanDuration,
    /// Bound on one async invocation (the sync `timeout` applies otherwise).
    pub timeout: HumanDuration,
    /// Bound on this function's async calls running at once; the node's
    /// worker pool bounds them when absent.
    pub concurrency: Option<u32>,
}

impl Default for AsyncPolicy {
    fn default() -> Self {
        Self {
            retries: DEFAULT_RETRIES,
            retry_backoff: HumanDuration(DEFAULT_RETRY_BACKOFF),
            timeout: HumanDuration(DEFAULT_TIMEOUT),
            concurrency: None,
        }
    }
}

impl AsyncPolicy {
    /// The delay before attempt `attempt + 1`, given the failed `attempt`
    /// (1-based) and `jitter` in `0.0..1.0`: doubling from `retry_backoff`,
    /// bounded, with the upper half jittered so retries of a burst spread out.
    pub fn retry_delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doubled = self
            .retry_backoff
            .0
            .saturating_mul(1 << attempt.saturating_sub(1).min(20));
        let bounded = doubled.min(MAX_RETRY_DELAY);
        bounded.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// How a `process-http` function's replicas follow demand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scale {
    /// Replicas kept running even when idle; 0 lets the function scale to zero.
    pub min: u32,
    /// The most replicas.
    pub max: u32,
    /// In-flight requests per replica the autoscaler aims for.
    pub target_concurrency: u32,
    /// How long demand must stay low before replicas are stopped.
    pub scale_down_delay: HumanDuration,
    /// When a new replica counts as ready.
    pub readiness: Readiness,
}

/// When a new `process-http` replica may take requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Readiness {
    /// Once `$PORT` accepts a TCP connection.
    #[default]
    Tcp,
    /// Once `GET` of this path answers 2xx.
    Http(String),
}

impl FromStr for Readiness {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        match text {
            "tcp" => Ok(Self::Tcp),
            path if path.starts_with('/') && !path.contains(char::is_whitespace) => {
                Ok(Self::Http(path.to_owned()))
            }
            other => Err(SpecError::Readiness(other.to_owned())),
        }
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Http(path) => f.write_str(path),
        }
    }
}

impl Serialize for Readiness {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Readiness {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What the node knows of a deployed function right now, for its [`FunctionStatus`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Invocations since the node started.
    pub invocations: u64,
    /// Replicas running or starting (1 for a loaded per-request function).
    pub replicas: u64,
    /// Replicas ready to take requests (1 for a loaded per-request function).
    pub available_replicas: u64,
    /// Requests that had to wait for a replica to start.
    pub cold_starts: u64,
}

impl FunctionSpec {
    /// Validates a deployment request and fills in defaults.
    pub fn from_deployment(deployment: FunctionDeployment) -> Result<Self, SpecError> {
        let FunctionDeployment {
            service,
            namespace,
            image,
            kind,
            env_process,
            env_vars,
            labels,
            annotations,
            limits,
            route,
            timeout,
            memory,
            max_concurrency,
            max_body_size,
            allowed_outbound_hosts,
            network,
            files,
            fuel,
            queue_timeout,
            min_scale,
            max_scale,
            target_concurrency,
            scale_down_delay,
            readiness,
            retries,
            retry_backoff,
            async_timeout,
            async_concurrency,
            triggers,
            private,
            secrets,
            key_value_stores,
            buckets,
            steps,
        } = deployment;
        validate_name(&service)?;
        let namespace = namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        validate_name(&namespace)?;
        // Without a kind, a command is OpenFaaS's classic watchdog: a process.
        let has_command = env_process.as_deref().is_some_and(|c| !c.trim().is_empty());
        let kind = kind
            .or(has_command.then_some(FunctionKind::Process))
            .ok_or(SpecError::MissingKind)?;
        let artifact = image.filter(|image| !image.is_empty());
        validate_steps(
            kind,
            &steps,
            &env_vars,
            &secrets,
            &key_value_stores,
            &buckets,
        )?;
        if artifact.is_some() && kind == FunctionKind::Pipeline {
            return Err(SpecError::Pipeline(
                "a pipeline has no `image`: its steps are functions of their own".into(),
            ));
        }
        if artifact.is_none() && kind.is_wasm() {
            return Err(SpecError::MissingArtifact(kind));
        }
        let files = files.filter(|files| !files.is_empty());
        if files.is_some() && !kind.is_wasm() {
            return Err(SpecError::Files(kind));
        }
        if fuel.is_some_and(|fuel| fuel == 0 || !kind.is_wasm()) {
            return Err(SpecError::Fuel(kind));
        }
        for digest in artifact.iter().chain(&files) {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SpecError::BadDigest(digest.clone()));
            }
        }
        let command = env_process.filter(|command| !command.trim().is_empty());
        if kind.is_process() && command.is_none() {
            return Err(SpecError::MissingCommand(kind));
        }
        let route = route.map(|route| route.parse()).transpose()?;
        let network = network.unwrap_or_default();
        if network != Network::None && !kind.is_process() {
            return Err(SpecError::Network(kind));
        }
        let timeout = timeout.unwrap_or(HumanDuration(DEFAULT_TIMEOUT));
        if timeout.0.is_zero() || timeout.0 > MAX_TIMEOUT {
            return Err(SpecError::Limit(format!(
                "timeout {timeout} is out of range (more than 0, at most {})",
                HumanDuration(MAX_TIMEOUT)
            )));
        }
        let memory = memory
            .or(limits.and_then(|limits| limits.memory))
            .unwrap_or(ByteSize(DEFAULT_MEMORY));
        if memory.0 < 1 << 20 || memory.0 > MAX_MEMORY {
            return Err(SpecError::Limit(format!(
                "memory {memory} is out of range (1MiB to {})",
                ByteSize(MAX_MEMORY)
            )));
        }
        if max_concurrency == Some(0) {
            return Err(SpecError::Limit("maxConcurrency must be at least 1".into()));
        }
        let queue_timeout = queue_timeout.unwrap_or_default();
        if queue_timeout.0 > MAX_QUEUE_TIMEOUT {
            return Err(SpecError::Limit(format!(
                "queueTimeout {queue_timeout} is out of range (at most {})",
                HumanDuration(MAX_QUEUE_TIMEOUT)
            )));
        }
        let scale = if kind == FunctionKind::ProcessHttp {
            let min = min_scale.unwrap_or(DEFAULT_MIN_SCALE);
            let max = max_scale.unwrap_or(DEFAULT_MAX_SCALE.max(min));
            if max == 0 || max > MAX_SCALE || min > max {
                return Err(SpecError::Limit(format!(
                    "scale {min}..{max} is out of range (minScale at most maxScale, maxScale 1 to {MAX_SCALE})"
                )));
            }
            let target_concurrency = target_concurrency.unwrap_or(DEFAULT_TARGET_CONCURRENCY);
            if target_concurrency == 0 {
                return Err(SpecError::Limit(
                    "targetConcurrency must be at least 1".into(),
                ));
            }
            Some(Scale {
                min,
                max,
                target_concurrency,
                scale_down_delay: scale_down_delay
                    .unwrap_or(HumanDuration(DEFAULT_SCALE_DOWN_DELAY)),
                readiness: readiness
                    .map(|readiness| readiness.parse())
                    .transpose()?
                    .unwrap_or_default(),
            })
        } else {
            let given = [
                ("minScale", min_scale.is_some()),
                ("maxScale", max_scale.is_some()),
                ("targetConcurrency", target_concurrency.is_some()),
                ("scaleDownDelay", scale_down_delay.is_some()),
                ("readiness", readiness.is_some()),
            ];
            if let Some((setting, _)) = given.into_iter().find(|(_, given)| *given) {
                return Err(SpecError::NotScalable { setting, kind });
            }
            None
        };
        let asynchronous = AsyncPolicy {
            retries: retries.unwrap_or(DEFAULT_RETRIES),
            retry_backoff: retry_backoff.unwrap_or(HumanDuration(DEFAULT_RETRY_BACKOFF)),
            timeout: async_timeout.unwrap_or(timeout),
            concurrency: async_concurrency,
        };
        if asynchronous.retries > MAX_RETRIES {
            return Err(SpecError::Limit(format!(
                "retries {} is out of range (at most {MAX_RETRIES})",
                asynchronous.retries
            )));
        }
        if asynchronous.retry_backoff.0.is_zero() || asynchronous.retry_backoff.0 > MAX_RETRY_DELAY
        {
            return Err(SpecError::Limit(format!(
                "retryBackoff {} is out of range (more than 0, at most {})",
                asynchronous.retry_backoff,
                HumanDuration(MAX_RETRY_DELAY)
            )));
        }
        if asynchronous.timeout.0.is_zero() || asynchronous.timeout.0 > MAX_ASYNC_TIMEOUT {
            return Err(SpecError::Limit(format!(
                "asyncTimeout {} is out of range (more than 0, at most {})",
                asynchronous.timeout,
                HumanDuration(MAX_ASYNC_TIMEOUT)
            )));
        }
        if async_concurrency == Some(0) {
            return Err(SpecError::Limit(
                "asyncConcurrency must be at least 1".into(),
            ));
        }
        if triggers.len() > crate::events::MAX_TRIGGERS {
            return Err(SpecError::Trigger(format!(
                "a function has at most {} triggers; this one declares {}",
                crate::events::MAX_TRIGGERS,
                triggers.len()
            )));
        }
        let triggers = triggers
            .into_iter()
            .map(Trigger::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(bad) = env_vars
            .keys()
            .find(|key| key.is_empty() || key.contains(['=', '\0']))
        {
            return Err(SpecError::EnvName(bad.clone()));
        }
        if let Some((name, _)) = env_vars.iter().find(|(_, value)| value.contains('\0')) {
            return Err(SpecError::EnvValue(name.clone()));
        }
        let loader: Vec<String> = env_vars
            .keys()
            .filter(|key| is_loader_variable(key))
            .cloned()
            .collect();
        if !loader.is_empty() {
            return Err(SpecError::LoaderVariables(loader));
        }
        validate_secrets(&secrets, &env_vars)?;
        validate_declared(&key_value_stores, SpecError::KeyValueStore)?;
        validate_declared(&buckets, SpecError::Bucket)?;
        Ok(Self {
            name: service,
            namespace,
            kind,
            artifact,
            command,
            route,
            timeout,
            memory,
            max_concurrency,
            max_body_size,
            env: env_vars,
            labels,
            annotations,
            allowed_outbound_hosts,
            network,
            files,
            fuel,
            queue_timeout,
            scale,
            asynchronous,
            triggers,
            private: private.unwrap_or(false),
            secrets,
            key_value_stores,
            buckets,
            steps,
        })
    }

    /// The artifacts it uses: its code and, for wasm, its files.
    pub fn artifacts(&self) -> impl Iterator<Item = &str> {
        self.artifact.iter().chain(&self.files).map(String::as_str)
    }

    /// The spec as the API shows it, with the counters the node keeps.
    pub fn status(&self, observed: Observed) -> FunctionStatus {
        let scale = self.scale.as_ref();
        FunctionStatus {
            name: self.name.clone(),
            deployment: FunctionDeployment {
                service: self.name.clone(),
                namespace: Some(self.namespace.clone()),
                image: self.artifact.clone(),
                kind: Some(self.kind),
                env_process: self.command.clone(),
                env_vars: self.env.clone(),
                labels: self.labels.clone(),
                annotations: self.annotations.clone(),
                limits: Some(Limits {
                    memory: Some(self.memory),
                }),
                route: self.route.as_ref().map(Route::to_string),
                timeout: Some(self.timeout),
                memory: Some(self.memory),
                max_concurrency: self.max_concurrency,
                max_body_size: self.max_body_size,
                allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
                network: Some(self.network),
                files: self.files.clone(),
                fuel: self.fuel,
                queue_timeout: Some(self.queue_timeout),
                min_scale: scale.map(|scale| scale.min),
                max_scale: scale.map(|scale| scale.max),
                target_concurrency: scale.map(|scale| scale.target_concurrency),
                scale_down_delay: scale.map(|scale| scale.scale_down_delay),
                readiness: scale.map(|scale| scale.readiness.to_string()),
                retries: Some(self.asynchronous.retries),
                retry_backoff: Some(self.asynchronous.retry_backoff),
                async_timeout: Some(self.asynchronous.timeout),
                async_concurrency: self.asynchronous.concurrency,
                triggers: self.triggers.iter().cloned().map(Into::into).collect(),
                private: Some(self.private),
                secrets: self.secrets.clone(),
                key_value_stores: self.key_value_stores.clone(),
                buckets: self.buckets.clone(),
                steps: self.steps.clone(),
            },
            invocation_count: observed.invocations,
            replicas: observed.replicas,
            available_replicas: observed.available_replicas,
            cold_starts: observed.cold_starts,
            trigger_status: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_with_a_command_and_no_kind_is_a_process_as_in_openfaas() {
        let spec = FunctionSpec::from_deployment(FunctionDeployment {
            kind: None,
            image: None,
            ..deployment(FunctionKind::Process)
        })
        .unwrap();
        assert_eq!(spec.kind, FunctionKind::Process);
    }

    fn deployment(kind: FunctionKind) -> FunctionDeployment {
        FunctionDeployment {
            service: "hello".into(),
            image: Some(format!("sha256:{}", "ab".repeat(32))),
            kind: Some(kind),
            env_process: Some("./handler.sh".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let spec = FunctionSpec::from_deployment(deployment(FunctionKind::WasmHttp)).unwrap();
        assert_eq!(spec.namespace, "default");
        assert_eq!(spec.timeout.0, DEFAULT_TIMEOUT);
        assert_eq!(spec.memory.0, DEFAULT_MEMORY);
        assert_eq!(spec.scale, None);
        let app = FunctionSpec::from_deployment(FunctionDeployment {
            min_scale: Some(0),
            readiness: Some("/_/ready".into()),
            ..deployment(FunctionKind::ProcessHttp)
        })
        .unwrap();
        let scale = app.scale.unwrap();
        assert_eq!((scale.min, scale.max), (0, DEFAULT_MAX_SCALE));
        assert_eq!(scale.readiness, Readiness::Http("/_/ready".into()));
    }

    #[test]
    fn bad_deployments_say_why() {
        let cases: Vec<(FunctionDeployment, &str)> = vec![
            (
                FunctionDeployment {
                    service: "../x".into(),
                    ..deployment(FunctionKind::WasmHttp)
                },
                "not a DNS label",
            ),
            (
                FunctionDeployment {
                    secrets: vec!["db-password".into(), "db-password".into()],
                    ..deployment(FunctionKind::WasmHttp)
                },
                "secret `db-password`: named twice",
            ),
            (
                FunctionDeployment {
                    key_value_stores: vec!["default".into(), "default".into()],
                    ..deployment(FunctionKind::WasmHttp)
                },
                "key-value store `default`: named twice",
            ),
            (
                FunctionDeployment {
                    key_value_stores: vec!["Users".into()],
                    ..deployment(FunctionKind::WasmStdio)
                },
                "key-value store `Users`: not a DNS label",
            ),
            (
                FunctionDeployment {
                    buckets: vec!["uploads".into(), "uploads".into()],
                    ..deployment(FunctionKind::WasmHttp)
                },
                "bucket `uploads`: named twice",
            ),
            (
                FunctionDeployment {
                    buckets: vec!["Up".into()],
                    ..deployment(FunctionKind::ProcessHttp)
                },
                "bucket `Up`: not a DNS label",
            ),
            (
                FunctionDeployment {
                    secrets: vec!["DB".into()],
                    ..deployment(FunctionKind::WasmHttp)
                },
                "secret `DB`",
            ),
            (
                FunctionDeployment {
                    secrets: vec!["db-password".into()],
                    env_vars: [("DB_PASSWORD".into(), "x".into())].into(),
                    ..deployment(FunctionKind::Process)
                },
                "`env` sets DB_PASSWORD",
            ),
            (
                FunctionDeployment {
                    env_vars: [
                        ("LD_PRELOAD".into(), "/function/evil.so".into()),
                        ("GCONV_PATH".into(), "/function".into()),
                        ("Malloc_Check_".into(), "3".into()),
                        ("LDAP_HOST".into(), "fine".into()),
                    ]
                    .into(),
                    ..deployment(FunctionKind::Process)
                },
                "environment variable(s) GCONV_PATH, LD_PRELOAD, Malloc_Check_ change how",
            ),
            (
                FunctionDeployment {
                    env_vars: [("A".into(), "x\0LD_PRELOAD=/function/evil.so".into())].into(),
                    ..deployment(FunctionKind::Process)
                },
                "the value of environment variable `A` holds a NUL byte",
            ),
            (
                FunctionDeployment {
                    secrets: vec!["ld-library-path".into()],
                    ..deployment(FunctionKind::Process)
                },
                "secret `ld-library-path`: environment variable(s) LD_LIBRARY_PATH change",
            ),
            (
                FunctionDeployment {
                    kind: None,
                    env_process: None,
                    ..deployment(FunctionKind::WasmHttp)
                },
                "`kind` is required",
            ),
            (
                FunctionDeployment {
                    image: None,
                    ..deployment(FunctionKind::WasmStdio)
                },
                "needs `image`",
            ),
            (
                FunctionDeployment {
                    image: Some("latest".into()),
                    ..deployment(FunctionKind::WasmHttp)
                },
                "sha256",
            ),
            (
                FunctionDeployment {
                    files: Some("static".into()),
                    ..deployment(FunctionKind::WasmHttp)
                },
                "sha256",
            ),
            (
                FunctionDeployment {
                    files: Some(format!("sha256:{}", "cd".repeat(32))),
                    ..deployment(FunctionKind::Process)
                },
                "`files` is for wasm functions",
            ),
            (
                FunctionDeployment {
                    fuel: Some(1_000_000),
                    ..deployment(FunctionKind::ProcessHttp)
                },
                "`fuel` is for wasm functions",
            ),
            (
                FunctionDeployment {
                    fuel: Some(0),
                    ..deployment(FunctionKind::WasmStdio)
                },
                "at least 1",
            ),
            (
                FunctionDeployment {
                    env_process: None,
                    ..deployment(FunctionKind::Process)
                },
                "envProcess",
            ),
            (
                FunctionDeployment {
                    min_scale: Some(2),
                    ..deployment(FunctionKind::WasmHttp)
                },
                "`minScale` is for process-http",
            ),
            (
                FunctionDeployment {
                    min_scale: Some(3),
                    max_scale: Some(2),
                    ..deployment(FunctionKind::ProcessHttp)
                },
                "scale 3..2",
            ),
            (
                FunctionDeployment {
                    readiness: Some("ready".into()),
                    ..deployment(FunctionKind::ProcessHttp)
                },
                "readiness `ready`",
            ),
            (
                FunctionDeployment {
                    route: Some("/system/x".into()),
                    ..deployment(FunctionKind::WasmHttp)
                },
                "overlaps `/system`",
            ),
            (
                FunctionDeployment {
                    timeout: Some(HumanDuration(Duration::ZERO)),
                    ..deployment(FunctionKind::WasmHttp)
                },
                "timeout",
            ),
            (
                FunctionDeployment {
                    memory: Some(ByteSize(1 << 40)),
                    ..deployment(FunctionKind::WasmHttp)
                },
                "memory",
            ),
            (
                FunctionDeployment {
                    retries: Some(MAX_RETRIES + 1),
                    ..deployment(FunctionKind::WasmHttp)
                },
                "retries",
            ),
            (
                FunctionDeployment {
                    async_concurrency: Some(0),
                    ..deployment(FunctionKind::WasmHttp)
                },
                "asyncConcurrency",
            ),
            (
                FunctionDeployment {
                    triggers: vec![crate::events::TriggerDeclaration {
                        cron: Some("every day".into()),
                        ..Default::default()
                    }],
                    ..deployment(FunctionKind::WasmHttp)
                },
                "trigger cron \"every day\"",
            ),
        ];
        for (deployment, expected) in cases {
            let error = FunctionSpec::from_deployment(deployment)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected),
                "`{error}` should mention `{expected}`"
            );
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_bounded_jitter() {
        let policy = AsyncPolicy::default();
        assert_eq!(policy.retry_delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(policy.retry_delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(policy.retry_delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(policy.retry_delay(40, 1.0), MAX_RETRY_DELAY);
        let spec = FunctionSpec::from_deployment(FunctionDeployment {
            timeout: Some(HumanDuration(Duration::from_secs(3))),
            ..deployment(FunctionKind::WasmHttp)
        })
        .unwrap();
        assert_eq!(spec.asynchronous.timeout.0, Duration::from_secs(3));
    }

    #[test]
    fn routes_match_exactly_or_by_prefix() {
        let exact: Route = "/hello".parse().unwrap();
        assert!(exact.matches("/hello"));
        assert!(!exact.matches("/hello/x"));
        let prefix: Route = "/api/users/...".parse().unwrap();
        assert_eq!(prefix.to_string(), "/api/users/...");
        assert!(prefix.matches("/api/users"));
        assert!(prefix.matches("/api/users/42"));
        assert!(!prefix.matches("/api/usersx"));
        for bad in ["hello", "/healthz", "/system/...", "/...", "/a?b", "/a//b"] {
            assert!(bad.parse::<Route>().is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_overlap_when_one_path_is_served_by_both() {
        let route = |text: &str| text.parse::<Route>().unwrap();
        for (a, b) in [
            ("/api/login", "/api/login"),
            ("/api/...", "/api/login"),
            ("/api/...", "/api"),
            ("/api/...", "/api/v1/..."),
            ("/api/...", "/api/..."),
            // `/api/login/...` serves `/api/login` itself.
            ("/api/login", "/api/login/..."),
        ] {
            assert!(route(a).overlaps(&route(b)), "{a} {b}");
            assert!(route(b).overlaps(&route(a)), "{b} {a}");
        }
        for (a, b) in [
            ("/api/login", "/api/logout"),
            ("/api/...", "/apix"),
            ("/api/...", "/apix/..."),
            ("/api/v1/...", "/api"),
        ] {
            let (a, b) = (route(a), route(b));
            assert!(!a.overlaps(&b), "{a} {b}");
            assert!(!b.overlaps(&a), "{b} {a}");
        }
    }
}
