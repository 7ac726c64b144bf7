//! A namespace's quotas held across a cluster: its `max_concurrency`,
//! `max_queued_calls` and `max_queued_bytes` bound what the whole cluster
//! runs or queues of it, not what each node does.
//!
//! Each node holds a share of each such quota in the cluster
//! ([`wisp_cluster::Cluster::set_share`]) and admits within its share
//! without asking anyone. Past it, the node grows its share, compare and
//! set, and turns the call away when the live nodes' shares leave no room.
//! Every [`SETTLE`] a node gives back what it held beyond the most it used
//! since the last time: a steady load asks the cluster nothing, and what a
//! node stopped using is free for the others within a second. The node's own limits
//! (`--namespace-max-concurrency` and the queue's defaults) stay per node.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use wisp_cluster::{Cluster, ClusterError};

use axum::http::StatusCode;

use crate::{admission::Rejected, error::ApiError, node::Node};

/// How often a node sets its shares to what it used.
pub(crate) const SETTLE: Duration = Duration::from_millis(500);
/// How often a request over its namespace's share looks again for room
/// while it may wait.
const RECHECK: Duration = Duration::from_millis(25);
/// How long a node waits for the cluster to grow a share: past it, the
/// cluster is taken as unreachable.
const WRITE_WAIT: Duration = Duration::from_secs(1);
/// How often a node says at most that it cannot ask the cluster.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The quota key of a namespace's `max_concurrency`.
fn concurrency(namespace: &str) -> String {
    format!("{namespace}.concurrency")
}

/// The quota keys of a namespace's `max_queued_calls` and `max_queued_bytes`.
fn queued_keys(namespace: &str) -> [String; 2] {
    [
        format!("{namespace}.queued-calls"),
        format!("{namespace}.queued-bytes"),
    ]
}

/// What this node holds of one quota.
#[derive(Debug, Default, Clone, Copy)]
struct Quota {
    /// What the node may admit: its share as last granted.
    held: u64,
    /// The most the bucket may hold for the node: `held`, or more while a
    /// write is under way or after one that failed.
    written: u64,
    /// Invocations admitted under a concurrency quota.
    admitted: u64,
    /// The most admitted at once since the shares were last settled.
    peak: u64,
}

impl Quota {
    /// Admits one invocation within the share and `max`.
    fn admit(&mut self, max: u64) -> bool {
        if self.admitted < self.held.min(max) {
            self.count();
            true
        } else {
            false
        }
    }

    fn count(&mut self) {
        self.admitted += 1;
        self.peak = self.peak.max(self.admitted);
    }
}

/// This node's shares of the cluster-wide quotas.
pub(crate) struct Shares {
    cluster: Arc<Cluster>,
    me: String,
    quotas: Mutex<HashMap<String, Quota>>,
    /// Writes of this node's shares, one at a time, so two requests never
    /// grow one share past each other.
    writing: tokio::sync::Mutex<()>,
    /// When the node last said it could not ask the cluster.
    warned: Mutex<Option<std::time::Instant>>,
}

impl Shares {
    pub(crate) fn new(cluster: Arc<Cluster>, me: String) -> Self {
        Self {
            cluster,
            me,
            quotas: Mutex::default(),
            writing: tokio::sync::Mutex::default(),
            warned: Mutex::default(),
        }
    }

    fn with<R>(&self, quota: &str, change: impl FnOnce(&mut Quota) -> R) -> R {
        change(
            self.quotas
                .lock()
                .expect("shares")
                .entry(quota.to_owned())
                .or_default(),
        )
    }

    /// Grows this node's share of `quota` to `want` within `max`, waiting
    /// at most [`WRITE_WAIT`] for the cluster: whether it was granted.
    async fn grow(&self, quota: &str, want: u64, max: u64) -> Result<bool, ClusterError> {
        if want > max {
            return Ok(false);
        }
        // Whatever becomes of the write, the bucket may hold this much of
        // the node's until settled.
        self.with(quota, |held| held.written = held.written.max(want));
        let write = self.cluster.set_share(quota, &self.me, want, Some(max));
        match tokio::time::timeout(WRITE_WAIT, write).await {
            Ok(Ok(granted)) => Ok(granted),
            // Others kept changing the entry: as good as no room.
            Ok(Err(ClusterError::Conflict(_))) => Ok(false),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ClusterError::JetStream {
                action: format!("write the quota share {quota}"),
                reason: format!("no answer within {}ms", WRITE_WAIT.as_millis()),
            }),
        }
    }

    /// Waits for this node's turn to write its shares, up to [`WRITE_WAIT`].
    async fn turn(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, ClusterError> {
        tokio::time::timeout(WRITE_WAIT, self.writing.lock())
            .await
            .map_err(|_| ClusterError::Busy("writing this node's quota shares".into()))
    }

    /// Says, at most once per [`WARN_EVERY`], that a quota is counted on this node only.
    fn warn(&self, error: &ClusterError) {
        let mut warned = self.warned.lock().expect("shares");
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *warned = Some(std::time::Instant::now());
            tracing::warn!("a namespace's quota is counted on this node only: {error}");
        }
    }

    /// Whether this node's share of `quota` covers `used`, grown within
    /// `max` if it did not.
    pub(crate) async fn cover(
        &self,
        quota: &str,
        used: u64,
        max: u64,
    ) -> Result<bool, ClusterError> {
        let covered = |held: &mut Quota| used <= held.held.min(max);
        if self.with(quota, covered) {
            return Ok(true);
        }
        let _turn = self.turn().await?;
        if self.with(quota, covered) {
            return Ok(true);
        }
        let granted = self.grow(quota, used, max).await?;
        if granted {
            self.with(quota, |held| held.held = used);
        }
        Ok(granted)
    }

    /// A slot of `namespace`'s concurrency quota of `max` across the
    /// cluster, waiting up to `queue_timeout` for one. When the cluster
    /// cannot be asked, the node's own count of the quota (its caller's
    /// limit) is all that holds, and the call runs.
    pub(crate) async fn slot(
        self: &Arc<Self>,
        namespace: &str,
        max: u32,
        queue_timeout: Duration,
    ) -> Result<Slot, Rejected> {
        let quota = concurrency(namespace);
        let max = u64::from(max);
        let deadline = tokio::time::Instant::now() + queue_timeout;
        let slot = |shares: &Arc<Self>, quota: String| Slot {
            shares: shares.clone(),
            quota,
        };
        loop {
            if self.with(&quota, |held| held.admit(max)) {
                return Ok(slot(self, quota));
            }
            let grown = match self.turn().await {
                Ok(_turn) if self.with(&quota, |held| held.admit(max)) => Ok(true),
                Ok(_turn) => {
                    let want = self.with(&quota, |held| held.admitted + 1);
                    let granted = self.grow(&quota, want, max).await;
                    if let Ok(true) = granted {
                        self.with(&quota, |held| {
                            held.held = want;
                            held.count();
                        });
                    }
                    granted
                }
                Err(error) => Err(error),
            };
            match grown {
                Ok(true) => return Ok(slot(self, quota)),
                Ok(false) => {}
                Err(error) => {
                    self.warn(&error);
                    self.with(&quota, Quota::count);
                    return Ok(slot(self, quota));
                }
            }
            if tokio::time::Instant::now() + RECHECK > deadline {
                return Err(Rejected {
                    message: format!(
                        "namespace {namespace} (quota max_concurrency) is at its limit of {max} \
                         concurrent invocations across the cluster"
                    ),
                    retry_after: queue_timeout.max(Duration::from_secs(1)),
                });
            }
            tokio::time::sleep(RECHECK).await;
        }
    }

    /// Lowers each share to what was used since the last time (the peak of
    /// each concurrency quota, and what `queued` answers, the node's queued
    /// calls and bytes by quota key, for the rest), then writes every share
    /// the node holds: one another node dropped (it took this node for
    /// lost) is so written again. A share grows only through
    /// [`Shares::cover`] and [`Shares::slot`], within its quota.
    pub(crate) async fn settle(&self, queued: impl FnOnce() -> HashMap<String, u64>) {
        let Ok(_turn) = self.turn().await else { return };
        let writes: Vec<(String, u64)> = {
            let mut quotas = self.quotas.lock().expect("shares");
            // Read under the lock an admission takes: nothing is admitted
            // within a share between this count and the share's lowering.
            let queued = queued();
            for (quota, held) in quotas.iter_mut() {
                let used = held.peak.max(queued.get(quota).copied().unwrap_or(0));
                held.held = held.held.min(used);
                held.peak = held.admitted;
            }
            quotas.retain(|_, held| held.held > 0 || held.written > 0 || held.admitted > 0);
            quotas
                .iter()
                .map(|(quota, held)| (quota.clone(), held.held))
                .collect()
        };
        for (quota, share) in writes {
            let write = self.cluster.set_share(&quota, &self.me, share, None);
            match tokio::time::timeout(WRITE_WAIT, write).await {
                Ok(Ok(_)) => self.with(&quota, |held| held.written = share),
                Ok(Err(error)) => self.warn(&error),
                Err(_) => {
                    self.warn(&ClusterError::Busy(format!(
                        "writing the quota share {quota}"
                    )));
                }
            }
        }
    }

    /// Gives back what this node held before it started, and holds what
    /// it has queued since (`queued`, by quota key), within the quotas or not.
    pub(crate) async fn start(&self, queued: HashMap<String, u64>) -> Result<(), ClusterError> {
        let _turn = self.turn().await?;
        self.cluster.clear_shares(&self.me).await?;
        for (quota, used) in queued {
            if used > 0 {
                self.cluster.set_share(&quota, &self.me, used, None).await?;
                self.with(&quota, |held| {
                    held.held = used;
                    held.written = used;
                });
            }
        }
        Ok(())
    }
}

/// What this node holds of each namespace's queue quotas held across the
/// cluster (those the namespace sets itself), by quota key.
pub(crate) fn queued(node: &Node) -> HashMap<String, u64> {
    let mut queued = HashMap::new();
    for (namespace, calls, bytes) in node.queue.backlog.held() {
        let Some(stored) = node.tenants.namespace(&namespace) else {
            continue;
        };
        let [calls_key, bytes_key] = queued_keys(&namespace);
        if stored.quotas.max_queued_calls.is_some() {
            queued.insert(calls_key, calls);
        }
        if stored.quotas.max_queued_bytes.is_some() {
            queued.insert(bytes_key, bytes);
        }
    }
    queued
}

/// Checks what `namespace` holds in this node's queue, a call just counted
/// in, against the queue quotas it sets itself, across the cluster: `Err`
/// with the answer to give (429, or 503 when the cluster cannot be asked)
/// when the call is not to be queued.
pub(crate) async fn cover_queued(node: &Node, namespace: &str) -> Result<(), ApiError> {
    let Some(shares) = &node.shares else {
        return Ok(());
    };
    let Some(stored) = node.tenants.namespace(namespace) else {
        return Ok(());
    };
    let (calls, bytes) = node
        .queue
        .backlog
        .held()
        .into_iter()
        .find(|(held, ..)| held == namespace)
        .map_or((0, 0), |(_, calls, bytes)| (calls, bytes));
    let [calls_key, bytes_key] = queued_keys(namespace);
    let quotas = stored.quotas;
    let checks = [
        (
            calls_key,
            calls,
            quotas.max_queued_calls.map(u64::from),
            "max_queued_calls",
        ),
        (
            bytes_key,
            bytes,
            quotas.max_queued_bytes.map(|max| max.0),
            "max_queued_bytes",
        ),
    ];
    for (quota, used, max, name) in checks {
        let Some(max) = max else { continue };
        match shares.cover(&quota, used, max).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "namespace {namespace}'s async calls queued or running across the cluster \
                         are at its quota ({name}): try again once some have run"
                    ),
                ));
            }
            Err(error) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the queue cannot check namespace {namespace}'s quota right now: {error}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A running invocation counted in its namespace's concurrency quota until dropped.
pub(crate) struct Slot {
    shares: Arc<Shares>,
    quota: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shares.with(&self.quota, |held| {
            held.admitted = held.admitted.saturating_sub(1)
        });
    }
}
