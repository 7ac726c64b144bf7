//! `wisp.toml`: the functions of a project, how to build them and how to run
//! them. Unknown keys are errors that name the key and its line. Spin's
//! `spin.toml` ([`spin`]) and OpenFaaS's `stack.yml` ([`stack`]) are read
//! as the same functions.

pub mod spin;
pub mod stack;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::{
    ByteSize, FunctionKind, HumanDuration,
    api::FunctionDeployment,
    events::TriggerDeclaration,
    spec::{Network, Step},
    validate_name,
};

/// A parsed `wisp.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The `[[function]]` tables, then the `[[pipeline]]` tables as functions
    /// of kind `pipeline`.
    pub function: Vec<FunctionManifest>,
}

/// The tables of a `wisp.toml` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tables {
    #[serde(default)]
    function: Vec<FunctionManifest>,
    #[serde(default)]
    pipeline: Vec<PipelineManifest>,
}

/// One `[[pipeline]]` table: functions run as one, each step's output
/// streaming into the next step's input. What it does not have (an
/// artifact, an environment) belongs to its steps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineManifest {
    #[serde(deserialize_with = "dns_label")]
    name: String,
    #[serde(default, deserialize_with = "optional_dns_label")]
    namespace: Option<String>,
    steps: Vec<Step>,
    route: Option<String>,
    timeout: Option<HumanDuration>,
    max_concurrency: Option<u32>,
    max_body_size: Option<ByteSize>,
    queue_timeout: Option<HumanDuration>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    retries: Option<u32>,
    retry_backoff: Option<HumanDuration>,
    async_timeout: Option<HumanDuration>,
    async_concurrency: Option<u32>,
    #[serde(default)]
    triggers: Vec<TriggerDeclaration>,
    private: Option<bool>,
}

impl From<PipelineManifest> for FunctionManifest {
    fn from(pipeline: PipelineManifest) -> Self {
        Self {
            namespace: pipeline.namespace,
            steps: pipeline.steps,
            route: pipeline.route,
            timeout: pipeline.timeout,
            max_concurrency: pipeline.max_concurrency,
            max_body_size: pipeline.max_body_size,
            queue_timeout: pipeline.queue_timeout,
            labels: pipeline.labels,
            annotations: pipeline.annotations,
            retries: pipeline.retries,
            retry_backoff: pipeline.retry_backoff,
            async_timeout: pipeline.async_timeout,
            async_concurrency: pipeline.async_concurrency,
            triggers: pipeline.triggers,
            private: pipeline.private,
            ..Self::new(pipeline.name, FunctionKind::Pipeline)
        }
    }
}

/// One `[[function]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionManifest {
    /// A DNS label.
    #[serde(deserialize_with = "dns_label")]
    pub name: String,
    /// Its namespace; `default` when absent.
    #[serde(default, deserialize_with = "optional_dns_label")]
    pub namespace: Option<String>,
    /// How the artifact runs.
    pub kind: FunctionKind,
    /// A shell command that builds the artifact, run in the manifest's directory.
    pub build: Option<String>,
    /// The artifact: a `.wasm` file, or for a process a directory (uploaded as a tar archive).
    pub artifact: Option<String>,
    /// A process function's command line, run in its artifact directory.
    pub command: Option<String>,
    /// A top-level route.
    pub route: Option<String>,
    /// Bound on a whole invocation.
    pub timeout: Option<HumanDuration>,
    /// Bound on memory.
    pub memory: Option<ByteSize>,
    /// Bound on concurrent invocations.
    pub max_concurrency: Option<u32>,
    /// Bound on a request body.
    pub max_body_size: Option<ByteSize>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Outbound HTTP destinations a wasm function may call.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// What a process function may reach: `none` (the default) or `outbound`.
    pub network: Option<Network>,
    /// A wasm function's read-only files: a directory, uploaded as a tar
    /// archive, that the guest sees at `/`.
    pub files: Option<String>,
    /// A wasm function's fuel per call.
    pub fuel: Option<u64>,
    /// How long a request over `max_concurrency` waits for a slot.
    pub queue_timeout: Option<HumanDuration>,
    /// `process-http`: replicas kept running when idle.
    pub min_scale: Option<u32>,
    /// `process-http`: the most replicas.
    pub max_scale: Option<u32>,
    /// `process-http`: in-flight requests per replica the autoscaler aims for.
    pub target_concurrency: Option<u32>,
    /// `process-http`: how long demand stays low before replicas are stopped.
    pub scale_down_delay: Option<HumanDuration>,
    /// `process-http`: `tcp` or a path to `GET` before a replica takes requests.
    pub readiness: Option<String>,
    /// Retries of a failed async call.
    pub retries: Option<u32>,
    /// The delay before the first retry, doubled for each next one.
    pub retry_backoff: Option<HumanDuration>,
    /// Bound on one async invocation.
    pub async_timeout: Option<HumanDuration>,
    /// Bound on this function's async calls running at once.
    pub async_concurrency: Option<u32>,
    /// What invokes the function besides HTTP.
    #[serde(default)]
    pub triggers: Vec<TriggerDeclaration>,
    /// Whether invoking it needs a token; public when absent.
    pub private: Option<bool>,
    /// Secrets of its namespace it is handed, by name.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Key-value stores of its namespace it may use, by name.
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    /// Object buckets of its namespace it may use, by name.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// What `wisp dev` watches to build and deploy the function again:
    /// globs relative to the manifest's directory.
    #[serde(default)]
    pub watch: Vec<String>,
    /// A `pipeline`'s steps, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// A manifest that does not parse, with the line it went wrong on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ManifestError {
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// What was wrong.
    pub message: String,
}

impl ManifestError {
    /// An error about the key at `path` (`component.hello.files`).
    pub(crate) fn key(path: impl std::fmt::Display, why: impl std::fmt::Display) -> Self {
        Self {
            line: None,
            message: format!("{path}: {why}"),
        }
    }

    /// A TOML error, with the line it points at.
    pub(crate) fn toml(text: &str, error: &toml::de::Error) -> Self {
        Self {
            line: error
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1),
            message: error.message().trim().replace("field", "key"),
        }
    }
}

/// A path an imported manifest names: relative to the manifest's
/// directory and inside it, since what it names is uploaded.
pub(crate) fn inside(key: &str, path: &str) -> Result<String, ManifestError> {
    let relative = std::path::Path::new(path);
    if relative.is_absolute()
        || relative
            .components()
            .any(|part| matches!(part, std::path::Component::ParentDir))
    {
        return Err(ManifestError::key(
            key,
            format!("`{path}` is outside the manifest's directory: wisp uploads what it names"),
        ));
    }
    Ok(path.to_owned())
}

/// What a project's manifest file is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `wisp.toml`.
    Wisp,
    /// Spin's `spin.toml`, manifest version 2.
    Spin,
    /// OpenFaaS's `stack.yml`.
    Stack,
}

impl Format {
    /// The format of a manifest file, by its name and its text: a `.yml` or
    /// `.yaml` file is a stack file, a TOML file with a
    /// `spin_manifest_version` is Spin's.
    pub fn of(file_name: &str, text: &str) -> Self {
        if file_name.ends_with(".yml") || file_name.ends_with(".yaml") {
            Self::Stack
        } else if text
            .lines()
            .any(|line| line.trim_start().starts_with("spin_manifest_version"))
        {
            Self::Spin
        } else {
            Self::Wisp
        }
    }
}

/// A manifest read from another format, and what of it wisp does not use
/// (said to the user, never dropped silently).
#[derive(Debug)]
pub struct Imported {
    /// The functions.
    pub manifest: Manifest,
    /// Keys read but not needed, with why.
    pub notes: Vec<String>,
}

impl Manifest {
    /// Parses a manifest in `format`; `variable` answers what a Spin
    /// manifest's required variables are set to (`SPIN_VARIABLE_NAME`).
    pub fn parse_as(
        format: Format,
        text: &str,
        variable: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Imported, ManifestError> {
        let imported = match format {
            Format::Wisp => Imported {
                manifest: Self::parse(text)?,
                notes: Vec::new(),
            },
            Format::Spin => spin::parse(text, variable)?,
            Format::Stack => stack::parse(text)?,
        };
        Ok(imported)
    }

    /// Parses the text of a `wisp.toml`.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let tables: Tables =
            toml::from_str(text).map_err(|error| ManifestError::toml(text, &error))?;
        let manifest = Self {
            function: (tables.function.into_iter())
                .chain(tables.pipeline.into_iter().map(Into::into))
                .collect(),
        };
        let mut seen = std::collections::BTreeSet::new();
        for function in &manifest.function {
            let key = (function.namespace.clone(), function.name.clone());
            if !seen.insert(key) {
                return Err(ManifestError {
                    line: None,
                    message: format!("function `{}` is declared twice", function.name),
                });
            }
        }
        Ok(manifest)
    }
}

impl FunctionManifest {
    /// A function of `kind` named `name`, with nothing else set.
    pub fn new(name: String, kind: FunctionKind) -> Self {
        Self {
            name,
            namespace: None,
            kind,
            build: None,
            artifact: None,
            command: None,
            route: None,
            timeout: None,
            memory: None,
            max_concurrency: None,
            max_body_size: None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            allowed_outbound_hosts: Vec::new(),
            network: None,
            files: None,
            fuel: None,
            queue_timeout: None,
            min_scale: None,
            max_scale: None,
            target_concurrency: None,
            scale_down_delay: None,
            readiness: None,
            retries: None,
            retry_backoff: None,
            async_timeout: None,
            async_concurrency: None,
            triggers: Vec::new(),
            private: None,
            secrets: Vec::new(),
            key_value_stores: Vec::new(),
            buckets: Vec::new(),
            watch: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// The API deployment for this function, given the digests of its
    /// uploaded artifact and files.
    pub fn deployment(&self, image: Option<String>, files: Option<String>) -> FunctionDeployment {
        FunctionDeployment {
            service: self.name.clone(),
            namespace: self.namespace.clone(),
            image,
            kind: Some(self.kind),
            env_process: self.command.clone(),
            env_vars: self.env.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            limits: None,
            route: self.route.clone(),
            timeout: self.timeout,
            memory: self.memory,
            max_concurrency: self.max_concurrency,
            max_body_size: self.max_body_size,
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            network: self.network,
            files,
            fuel: self.fuel,
            queue_timeout: self.queue_timeout,
            min_scale: self.min_scale,
            max_scale: self.max_scale,
            target_concurrency: self.target_concurrency,
            scale_down_delay: self.scale_down_delay,
            readiness: self.readiness.clone(),
            retries: self.retries,
            retry_backoff: self.retry_backoff,
            async_timeout: self.async_timeout,
            async_concurrency: self.async_concurrency,
            triggers: self.triggers.clone(),
            private: self.private,
            secrets: self.secrets.clone(),
            key_value_stores: self.key_value_stores.clone(),
            buckets: self.buckets.clone(),
            steps: self.steps.clone(),
        }
    }
}

fn dns_label<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    validate_name(&name).map_err(serde::de::Error::custom)?;
    Ok(name)
}

fn optional_dns_label<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    dns_label(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_function() {
        let manifest = Manifest::parse(
            r#"
[[function]]
name = "hello"
kind = "wasm-http"
build = "cargo build --release --target wasm32-wasip2"
artifact = "target/wasm32-wasip2/release/hello.wasm"
route = "/hello"
timeout = "10s"
memory = "128MiB"
max_concurrency = 100
env = { GREETING = "hi" }
allowed_outbound_hosts = ["https://api.example.com"]
retries = 5
async_concurrency = 2
triggers = [{ cron = "*/5 * * * *" }]
"#,
        )
        .unwrap();
        let function = &manifest.function[0];
        assert_eq!(function.kind, FunctionKind::WasmHttp);
        assert_eq!(function.memory, Some(ByteSize(128 << 20)));
        let deployment = function.deployment(Some("sha256:00".into()), None);
        assert_eq!(deployment.env_vars["GREETING"], "hi");
        assert_eq!(deployment.max_concurrency, Some(100));
        assert_eq!(deployment.retries, Some(5));
        assert_eq!(deployment.triggers[0].cron.as_deref(), Some("*/5 * * * *"));
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let error = Manifest::parse(
            "[[function]]\nname = \"hello\"\nkind = \"wasm-http\"\ntimout = \"10s\"\n",
        )
        .unwrap_err();
        assert_eq!(error.line, Some(4));
        assert!(
            error
                .to_string()
                .starts_with("line 4: unknown key `timout`"),
            "{error}"
        );
    }

    #[test]
    fn pipelines_are_functions_of_kind_pipeline_with_their_steps() {
        let manifest = Manifest::parse(
            r#"
[[function]]
name = "fetch"
kind = "process"
command = "cat"

[[pipeline]]
name = "thumbs"
steps = ["fetch", { map = "resize.media", parallelism = 8 }, { tee = ["a", "b"], join = "json" }]
route = "/thumbs"
"#,
        )
        .unwrap();
        let pipeline = &manifest.function[1];
        assert_eq!(pipeline.kind, FunctionKind::Pipeline);
        let deployment = pipeline.deployment(None, None);
        let spec = crate::FunctionSpec::from_deployment(deployment).unwrap();
        let steps: Vec<String> = spec.steps.iter().map(ToString::to_string).collect();
        assert_eq!(steps, ["fetch", "map resize.media", "tee a+b"]);
        assert_eq!(spec.route.unwrap().to_string(), "/thumbs");

        for (text, expected) in [
            (
                "[[pipeline]]\nname = \"p\"\nsteps = [\"a\"]\ncommand = \"cat\"\n",
                "line 4: unknown key `command`",
            ),
            (
                "[[pipeline]]\nname = \"p\"\nsteps = [{ map = \"a\", paralel = 2 }]\n",
                "line 3: a function as `name` or `name.namespace`",
            ),
        ] {
            let error = Manifest::parse(text).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error}");
        }
    }

    #[test]
    fn bad_values_name_the_line() {
        for (text, line, expected) in [
            (
                "[[function]]\nname = \"../x\"\nkind = \"process\"\n",
                2,
                "not a DNS label",
            ),
            (
                "[[function]]\nname = \"a\"\nkind = \"wasm\"\n",
                3,
                "unknown variant `wasm`",
            ),
            (
                "[[function]]\nname = \"a\"\nkind = \"process\"\ntimeout = \"soon\"\n",
                4,
                "not a valid duration",
            ),
            (
                "[[function]]\nname = \"a\"\nkind = \"process\"\nmemory = \"lots\"\n",
                4,
                "not a valid size",
            ),
        ] {
            let error = Manifest::parse(text).unwrap_err();
            assert_eq!(error.line, Some(line), "{error}");
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn a_function_declared_twice_is_refused() {
        let text = "[[function]]\nname = \"a\"\nkind = \"process\"\n[[function]]\nname = \"a\"\nkind = \"process\"\n";
        assert!(
            Manifest::parse(text)
                .unwrap_err()
                .to_string()
                .contains("declared twice")
        );
    }
}
