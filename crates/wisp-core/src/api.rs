//! The JSON shapes of the HTTP API. Function shapes follow OpenFaaS's
//! `FunctionDeployment` and `FunctionStatus`, with wisp's own fields added in
//! the same camelCase; each is the API twin of a `wisp.toml` key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    ByteSize, FunctionKind, HumanDuration,
    events::TriggerDeclaration,
    spec::{Network, Step},
};

/// A deploy or update request: `POST` / `PUT /system/functions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionDeployment {
    /// The function's name.
    pub service: String,
    /// Its namespace; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The artifact digest (`sha256:...`) from `PUT /system/artifacts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// How the artifact runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FunctionKind>,
    /// The command line of a process function (OpenFaaS's `fprocess`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// OpenFaaS's resource limits; `memory` here is the same as the top-level `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// A top-level route such as `/hello` or `/api/...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Bound on a whole invocation, such as `"10s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Bound on the function's memory, such as `"128MiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Bound on concurrent invocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Bound on a request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<ByteSize>,
    /// Outbound HTTP destinations a wasm function may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// What a process function may reach: `none` (the default) or `outbound`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// A wasm function's read-only files: the digest of a tar artifact the
    /// guest sees as its filesystem, at `/`. No filesystem when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<String>,
    /// A wasm function's fuel per call (about one unit per instruction);
    /// a call that burns it all is a 502. Unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// How long a request over `maxConcurrency` waits for a slot before its 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<HumanDuration>,
    /// `process-http`: replicas kept running when idle (0 scales to zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_scale: Option<u32>,
    /// `process-http`: the most replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_scale: Option<u32>,
    /// `process-http`: in-flight requests per replica the autoscaler aims for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_concurrency: Option<u32>,
    /// `process-http`: how long demand stays low before replicas are stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<HumanDuration>,
    /// `process-http`: when a replica is ready, `tcp` or a path to `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<String>,
    /// Retries of a failed async call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The delay before the first retry, doubled for each next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<HumanDuration>,
    /// Bound on one async invocation; `timeout` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_timeout: Option<HumanDuration>,
    /// Bound on this function's async calls running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_concurrency: Option<u32>,
    /// What invokes the function besides HTTP, such as `[{"cron": "*/5 * * * *"}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerDeclaration>,
    /// Whether invoking it needs a token of its namespace (or the node's); public when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
    /// Secrets of its namespace it is handed, by name (`wisp secret create`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Key-value stores of its namespace it may use, by name (`default`, as
    /// in Spin): through `wasi:keyvalue` from wasm, `$WISP_API_URL/kv/{store}/{key}`
    /// from a process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_value_stores: Vec<String>,
    /// Object buckets of its namespace it may use, by name, through
    /// `http://wisp.internal/s3/{bucket}/{key}` from wasm,
    /// `$WISP_API_URL/s3/{bucket}/{key}` from a process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<String>,
    /// A `pipeline`'s steps, in order: functions by `name` (of the
    /// pipeline's namespace) or `name.namespace`, `{"map": name}` or
    /// `{"tee": [names]}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

/// OpenFaaS's `limits` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory limit, such as `"128Mi"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
}

/// A deployed function: `GET /system/functions` and `/system/function/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The function's name again, as OpenFaaS's clients (`faas-cli list`) read it.
    #[serde(default)]
    pub name: String,
    /// The deployment with every default filled in.
    #[serde(flatten)]
    pub deployment: FunctionDeployment,
    /// Invocations since the node started.
    pub invocation_count: u64,
    /// Replicas running or starting; 1 for the per-request kinds, which need none.
    pub replicas: u64,
    /// Replicas ready to take requests; for the per-request kinds, 1 when loaded.
    pub available_replicas: u64,
    /// Requests that waited for a replica to start.
    #[serde(default)]
    pub cold_starts: u64,
    /// What each trigger is doing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trigger_status: Vec<crate::events::TriggerStatus>,
}

/// `POST /system/scale-function/{name}`, in OpenFaaS's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleRequest {
    /// The function; the path's name wins when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Its namespace; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The fixed replica count, or `null` to hand the function back to the autoscaler.
    pub replicas: Option<u32>,
}

/// `DELETE /system/functions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteFunction {
    /// The function to remove.
    pub function_name: String,
    /// Its namespace; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `PUT /system/artifacts` and `GET /system/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactInfo {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// Every error the API answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, in one sentence.
    pub error: String,
}

/// A live node, as `GET /system/nodes` lists it: in a cluster, from its
/// heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The node's id, unique in the cluster.
    pub id: String,
    /// The version of wisp it runs.
    pub version: String,
    /// Where it serves, as `http://host:port`.
    pub address: String,
    /// Invocations running on it.
    pub active: u64,
    /// Functions it serves.
    pub functions: u64,
    /// Its last heartbeat, in milliseconds since the Unix epoch.
    pub last_seen: u64,
}

/// `GET /system/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemInfo {
    /// Who serves the API, in OpenFaaS's shape.
    pub provider: ProviderInfo,
    /// wisp's version.
    pub version: VersionInfo,
    /// How many functions are deployed.
    pub function_count: u64,
    /// Invocations running now, across functions.
    pub active_invocations: u64,
    /// Invocations since the node started.
    pub invocation_count: u64,
    /// Precompiled components loaded from the disk cache.
    pub compile_cache_hits: u64,
    /// Components compiled because no precompiled copy was cached.
    pub compile_cache_misses: u64,
    /// The async queue's counters.
    #[serde(default)]
    pub queue: crate::events::QueueInfo,
}

/// OpenFaaS's `provider` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderInfo {
    /// Always `wisp`.
    pub provider: String,
    /// Where state lives: `embedded` (SQLite).
    pub orchestration: String,
}

/// OpenFaaS's `version` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    /// The release, from the crate version.
    pub release: String,
}
