//! A function as wisp runs it: [`FunctionSpec`], validated from the API's
//! [`FunctionDeployment`] with defaults filled in. The registry stores specs;
//! the API shows them as [`FunctionStatus`].

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    ByteSize, HumanDuration, NameError,
    api::{FunctionDeployment, FunctionStatus, Limits},
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
/// Paths that belong to the gateway and cannot be a function's route.
pub const RESERVED_PATHS: &[&str] = &[
    "/system",
    "/function",
    "/async-function",
    "/healthz",
    "/metrics",
    "/ui",
];

/// How a function's artifact is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionKind {
    /// A component exporting `wasi:http/incoming-handler`: a fresh instance per request.
    WasmHttp,
    /// A component exporting `wasi:cli/run`: body on STDIN, response on STDOUT.
    WasmStdio,
    /// Any executable, one process per request, with the STDIN/STDOUT contract.
    Process,
}

impl FunctionKind {
    /// The name used in `wisp.toml` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WasmHttp => "wasm-http",
            Self::WasmStdio => "wasm-stdio",
            Self::Process => "process",
        }
    }

    /// Whether the artifact is a WebAssembly component.
    pub fn is_wasm(self) -> bool {
        matches!(self, Self::WasmHttp | Self::WasmStdio)
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
    #[error("`kind` is required: one of wasm-http, wasm-stdio, process")]
    MissingKind,
    /// A wasm function has no `image`.
    #[error("a {0} function needs `image`: the artifact digest from PUT /system/artifacts")]
    MissingArtifact(FunctionKind),
    /// `image` is not a `sha256:` digest.
    #[error("`image` must be an artifact digest `sha256:<64 hex digits>`, not `{0}`")]
    BadDigest(String),
    /// A process function has no command.
    #[error("a process function needs `envProcess` (`command` in wisp.toml)")]
    MissingCommand,
    /// The route is malformed or reserved.
    #[error("{0}")]
    Route(String),
    /// A limit is out of range.
    #[error("{0}")]
    Limit(String),
    /// An environment variable name is not usable.
    #[error("environment variable name `{0}` is not valid")]
    EnvName(String),
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
        } = deployment;
        validate_name(&service)?;
        let namespace = namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        validate_name(&namespace)?;
        let kind = kind.ok_or(SpecError::MissingKind)?;
        let artifact = image.filter(|image| !image.is_empty());
        if let Some(digest) = &artifact {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SpecError::BadDigest(digest.clone()));
            }
        } else if kind.is_wasm() {
            return Err(SpecError::MissingArtifact(kind));
        }
        let command = env_process.filter(|command| !command.trim().is_empty());
        if kind == FunctionKind::Process && command.is_none() {
            return Err(SpecError::MissingCommand);
        }
        let route = route.map(|route| route.parse()).transpose()?;
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
        if let Some(bad) = env_vars
            .keys()
            .find(|key| key.is_empty() || key.contains(['=', '\0']))
        {
            return Err(SpecError::EnvName(bad.clone()));
        }
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
        })
    }

    /// The spec as the API shows it, with the counters the node keeps.
    pub fn status(&self, invocation_count: u64, available: bool) -> FunctionStatus {
        FunctionStatus {
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
            },
            invocation_count,
            replicas: 1,
            available_replicas: u64::from(available),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    kind: None,
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
                    env_process: None,
                    ..deployment(FunctionKind::Process)
                },
                "envProcess",
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
}
