//! A cluster's shared state on NATS JetStream, for nodes started with
//! `wisp up --cluster`: the registry (functions, namespaces, tokens,
//! secrets) in a key-value bucket every node follows, artifacts in an
//! object store by digest, and the live members in a bucket whose entries
//! expire when a node stops heartbeating.
//!
//! The registry is the cluster's source of truth; each node keeps a cache
//! of it (its own SQLite, its in-memory tables) that it rebuilds from a
//! [`Cluster::snapshot`] at start and keeps current by [`Cluster::follow`].
//! Writes compare and set: a write names the revision of the key its node
//! last saw, so of two nodes changing one key at once, one gets
//! [`ClusterError::Conflict`] and nothing is mixed.
//!
//! Secrets are sealed (ChaCha20-Poly1305, with the key's name and its
//! namespace's generation as associated data) with a key the operator gives
//! every node, so reading the bucket with the NATS account's credentials
//! does not reveal them. Cron ticks are claimed in a bucket of their own,
//! so each fires on one node.
//!
//! What each node keeps to itself (its async calls, its call log) is read
//! across the cluster by asking: [`Cluster::ask`] sends a question to every
//! other live node and gathers their answers, both sealed with the same key,
//! so the NATS account's credentials alone can neither ask nor read.
//!
//! Namespaces' key-value stores live in a bucket of their own ([`ClusterKv`]),
//! and the shares each node holds of a cluster-wide quota in another
//! ([`Cluster::set_share`]).

mod keyvalue;
mod objects;
mod shares;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
pub use keyvalue::ClusterKv;
pub use objects::ClusterObjects;
use ring::aead;
pub use wisp_core::api::NodeInfo as Member;

/// The bucket of the registry.
const REGISTRY: &str = "wisp_registry";
/// The bucket of live members.
const MEMBERS: &str = "wisp_members";
/// The bucket of claimed cron ticks.
const TICKS: &str = "wisp_ticks";
/// How long a claimed tick is remembered: longer than any node is down and
/// then catches up on it.
const TICK_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The object store of artifacts.
const ARTIFACTS: &str = "wisp_artifacts";
/// The bucket of unfinished async calls, each under the node that holds it.
const CALLS: &str = "wisp_calls";
/// The bucket of every namespace's key-value stores.
const KEY_VALUE: &str = "wisp_kv";
/// The bucket of the nodes' shares of cluster-wide quotas.
const QUOTAS: &str = "wisp_quotas";
/// The object store of every namespace's objects.
const OBJECTS: &str = "wisp_objects";
/// The bucket of every namespace's buckets and uploads in progress.
const OBJECT_INDEX: &str = "wisp_buckets";
/// The registry key of the sealed admin token.
const ADMIN_TOKEN: &str = "node.admin-token";
/// How long a lease is held at most: one older was left by a node that
/// stopped, and is taken from it.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// How long a node waits for a lease another holds.
const LEASE_WAIT: Duration = Duration::from_secs(5);
/// How long a node waits for the cluster's JetStream to be ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a node heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long after its last heartbeat a node is no longer listed.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a node uses a list of the members before it lists them again.
const MEMBERS_FRESH: Duration = Duration::from_millis(500);
/// The subject nodes ask each other questions on.
const QUESTIONS: &str = "wisp.questions";
/// How long a node waits for the others' answers.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How old a question may be when it is answered: an older one is a replay.
const QUESTION_TTL: Duration = Duration::from_secs(30);
/// Sealing adds a nonce and a tag to every message.
const SEAL_OVERHEAD: usize = aead::NONCE_LEN + 16;

/// Why the cluster's state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server of the list answers.
    #[error("connect to the cluster at {urls}: {reason}")]
    Connect {
        /// The servers tried.
        urls: String,
        /// Why.
        reason: String,
    },
    /// Another node changed the key since this node last saw it.
    #[error("{0} was changed on another node at the same time: try again")]
    Conflict(String),
    /// JetStream refused or failed an operation.
    #[error("cluster state, {action}: {reason}")]
    JetStream {
        /// What was being done.
        action: String,
        /// Why it failed.
        reason: String,
    },
    /// The sealing key is missing or malformed.
    #[error("cluster key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A sealed value does not open with this node's key.
    #[error("{0} does not open with this node's cluster key: is it the same on every node?")]
    Unseal(String),
    /// Another node held a lease for longer than a node waits.
    #[error("another node is {0}: try again")]
    Busy(String),
    /// An answer does not fit in one of the cluster's NATS messages.
    #[error("an answer of {0} bytes is over the cluster's message size")]
    TooLarge(usize),
    /// An artifact fetched from the cluster is not what its digest says.
    #[error("artifact {0} fetched from the cluster does not match its digest")]
    Corrupt(String),
    /// A local file could not be used.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// Why.
        source: std::io::Error,
    },
}

fn jetstream_error(
    action: impl Into<String>,
) -> impl FnOnce(&dyn std::fmt::Display) -> ClusterError {
    let action = action.into();
    move |reason| ClusterError::JetStream {
        action,
        reason: reason.to_string(),
    }
}

/// What a registry entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A function's spec, as JSON.
    Function {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A namespace with its quotas, as JSON.
    Namespace(String),
    /// A namespace token (its hash, never the token), as JSON, by id.
    Token(String),
    /// A secret's sealed value.
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl Key {
    /// The bucket key: names are DNS labels and ids hex, so dots separate them unambiguously.
    fn subject(&self) -> String {
        match self {
            Self::Function { namespace, name } => format!("function.{namespace}.{name}"),
            Self::Namespace(name) => format!("namespace.{name}"),
            Self::Token(id) => format!("token.{id}"),
            Self::Secret { namespace, name } => format!("secret.{namespace}.{name}"),
        }
    }

    fn parse(subject: &str) -> Option<Self> {
        let mut parts = subject.split('.');
        let key = match (parts.next()?, parts.next()?, parts.next()) {
            ("function", namespace, Some(name)) => Self::Function {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            ("namespace", name, None) => Self::Namespace(name.to_owned()),
            ("token", id, None) => Self::Token(id.to_owned()),
            ("secret", namespace, Some(name)) => Self::Secret {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            _ => return None,
        };
        parts.next().is_none().then_some(key)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Function { namespace, name } => write!(f, "function {name}.{namespace}"),
            Self::Namespace(name) => write!(f, "namespace {name}"),
            Self::Token(id) => write!(f, "token {id}"),
            Self::Secret { namespace, name } => write!(f, "secret {name} of namespace {namespace}"),
        }
    }
}

/// What a node last saw of a registry key: the revision it was at, and
/// whether it held a value then or was deleted.
#[derive(Debug, Clone, Copy)]
struct Seen {
    revision: u64,
    present: bool,
}

/// A registry entry as it is now: its value, or `None` once deleted.
#[derive(Debug, Clone)]
pub struct Change {
    /// What changed.
    pub key: Key,
    /// The new value; `None` when the key was deleted.
    pub value: Option<Bytes>,
    /// The registry's revision of the change.
    revision: u64,
}

impl Change {
    /// The registry's revision of this change: where to follow on from.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// The key secrets are sealed with, the same on every node of a cluster.
#[derive(Clone)]
pub struct SealingKey(Arc<aead::LessSafeKey>);

impl SealingKey {
    /// Reads a key file: 64 hex digits (`openssl rand -hex 32`), surrounding space ignored.
    pub fn from_file(path: &Path) -> Result<Self, ClusterError> {
        let error = |reason: String| ClusterError::Key {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| error(source.to_string()))?;
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|bytes| bytes.len() == 32)
            .ok_or_else(|| {
                error("must hold 64 hex digits, made with `openssl rand -hex 32`".to_owned())
            })?;
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &bytes)
            .map_err(|_| error("not a ChaCha20-Poly1305 key".to_owned()))?;
        Ok(Self(Arc::new(aead::LessSafeKey::new(key))))
    }

    /// A fresh nonce, then the ciphertext and its tag; `label` is bound to it.
    fn seal(&self, label: &str, plaintext: &[u8]) -> Bytes {
        let nonce: [u8; aead::NONCE_LEN] = random_bytes();
        let mut sealed = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(label.as_bytes()),
                &mut sealed,
            )
            .expect("a value far below ChaCha20-Poly1305's limit");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        out.into()
    }

    fn open(&self, label: &str, sealed: &[u8]) -> Result<Vec<u8>, ClusterError> {
        let unseal = || ClusterError::Unseal(label.to_owned());
        if sealed.len() < aead::NONCE_LEN {
            return Err(unseal());
        }
        let (nonce, ciphertext) = sealed.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| unseal())?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = self
            .0
            .open_in_place(nonce, aead::Aad::from(label.as_bytes()), &mut buffer)
            .map_err(|_| unseal())?;
        Ok(plaintext.to_vec())
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source");
    bytes
}

/// An unfinished async call's entry in the cluster: the node holding the
/// call keeps it under its own id and the call's name, so a node that
/// stops heartbeating leaves its calls for the others to take over.
#[derive(Debug)]
pub struct CallEntry {
    /// What the holder wrote, opened.
    pub value: Vec<u8>,
    /// Its revision, which an update must name.
    pub revision: u64,
}

/// A lease of the cluster's, held by this node until given back.
#[derive(Debug)]
pub struct Lease {
    key: String,
    /// The registry's revision of taking it.
    pub revision: u64,
}

/// The buckets of a cluster.
struct Buckets {
    registry: kv::Store,
    members: kv::Store,
    ticks: kv::Store,
    calls: kv::Store,
    artifacts: object_store::ObjectStore,
    key_value: kv::Store,
    quotas: kv::Store,
    objects: object_store::ObjectStore,
    object_index: kv::Store,
}

/// How a node joins a cluster.
pub struct Config {
    /// NATS servers, comma-separated (`nats://host:4222,nats://...`).
    pub urls: String,
    /// Copies JetStream keeps of each bucket: 3 on a cluster of three servers.
    pub replicas: usize,
    /// The key secrets are sealed with.
    pub key: SealingKey,
    /// Bytes the key-value stores' bucket holds at most.
    pub key_value_max_bytes: u64,
}

/// A node's handle on the cluster's state.
pub struct Cluster {
    context: jetstream::Context,
    registry: kv::Store,
    members: kv::Store,
    ticks: kv::Store,
    calls: kv::Store,
    artifacts: object_store::ObjectStore,
    key_value: Arc<ClusterKv>,
    quotas: kv::Store,
    objects: object_store::ObjectStore,
    object_index: kv::Store,
    key: SealingKey,
    /// What this node last saw of each registry key: what its next write
    /// expects, and which changes of the key are older than what it holds.
    revisions: Mutex<HashMap<String, Seen>>,
    /// Every registry revision up to this one is applied to the node's
    /// cache (or was not for it): what [`Cluster::caught_up`] waits for.
    processed: std::sync::atomic::AtomicU64,
    /// The members as last listed, and when: listing makes a JetStream
    /// consumer, too many for a read of each request.
    listed: tokio::sync::Mutex<Option<(tokio::time::Instant, Vec<Member>)>>,
}

impl Cluster {
    /// Connects, and creates the buckets the first node of a cluster finds
    /// missing; waits up to [`START_TIMEOUT`] for JetStream to be ready.
    pub async fn connect(config: Config) -> Result<Self, ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(config.urls.split(',').map(str::trim).collect::<Vec<_>>())
            .await
            .map_err(|error| ClusterError::Connect {
                urls: config.urls.clone(),
                reason: error.to_string(),
            })?;
        let context = jetstream::new(client);
        // A cluster of NATS servers starting with the node elects its
        // JetStream leader first; until then buckets cannot be made.
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match Self::buckets(&context, config.replicas, config.key_value_max_bytes).await {
                Ok(Buckets {
                    registry,
                    members,
                    ticks,
                    calls,
                    artifacts,
                    key_value,
                    quotas,
                    objects,
                    object_index,
                }) => {
                    return Ok(Self {
                        context,
                        registry,
                        members,
                        ticks,
                        calls,
                        artifacts,
                        key_value: Arc::new(ClusterKv::new(key_value, config.key_value_max_bytes)),
                        quotas,
                        objects,
                        object_index,
                        key: config.key,
                        revisions: Mutex::default(),
                        processed: std::sync::atomic::AtomicU64::new(0),
                        listed: tokio::sync::Mutex::default(),
                    });
                }
                Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
                Err(error) => {
                    tracing::debug!("{error}; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Opens the buckets, creating those the first node of a cluster finds missing.
    async fn buckets(
        context: &jetstream::Context,
        replicas: usize,
        key_value_max_bytes: u64,
    ) -> Result<Buckets, ClusterError> {
        let registry = key_value(
            context,
            kv::Config {
                bucket: REGISTRY.to_owned(),
                description: "wisp: functions, namespaces, tokens and sealed secrets".to_owned(),
                history: 1,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let members = key_value(
            context,
            kv::Config {
                bucket: MEMBERS.to_owned(),
                description: "wisp: the live nodes, by their heartbeats".to_owned(),
                history: 1,
                max_age: MEMBER_TIMEOUT * 2,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            },
        )
        .await?;
        let artifacts = match context.get_object_store(ARTIFACTS).await {
            Ok(store) => store,
            Err(_) => context
                .create_object_store(object_store::Config {
                    bucket: ARTIFACTS.to_owned(),
                    description: Some("wisp: artifacts by their SHA-256 digest".to_owned()),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|error| jetstream_error("create the artifact store")(&error))?,
        };
        let ticks = key_value(
            context,
            kv::Config {
                bucket: TICKS.to_owned(),
                description: "wisp: cron ticks, each claimed by the one node that fires it"
                    .to_owned(),
                history: 1,
                max_age: TICK_MEMORY,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let calls = key_value(
            context,
            kv::Config {
                bucket: CALLS.to_owned(),
                description: "wisp: unfinished async calls, sealed, by the node holding each"
                    .to_owned(),
                history: 1,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let quotas = key_value(
            context,
            kv::Config {
                bucket: QUOTAS.to_owned(),
                description: "wisp: each node's share of the cluster-wide quotas".to_owned(),
                history: 1,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let object_index = key_value(
            context,
            kv::Config {
                bucket: OBJECT_INDEX.to_owned(),
                description: "wisp: every namespace's object buckets and uploads in progress"
                    .to_owned(),
                history: 1,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let mut key_value = key_value(
            context,
            kv::Config {
                bucket: KEY_VALUE.to_owned(),
                description: "wisp: every namespace's key-value stores".to_owned(),
                history: 1,
                max_bytes: i64::try_from(key_value_max_bytes).unwrap_or(i64::MAX),
                max_value_size: (wisp_core::kv::MAX_VALUE_BYTES + wisp_core::kv::MAX_KEY_BYTES)
                    as i32,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        bound(context, &mut key_value.stream, key_value_max_bytes).await?;
        let objects = match context.get_object_store(OBJECTS).await {
            Ok(store) => store,
            Err(_) => context
                .create_object_store(object_store::Config {
                    bucket: OBJECTS.to_owned(),
                    description: Some("wisp: every namespace's objects".to_owned()),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|error| jetstream_error("create the object store")(&error))?,
        };
        Ok(Buckets {
            registry,
            members,
            ticks,
            calls,
            artifacts,
            key_value,
            quotas,
            objects,
            object_index,
        })
    }

    /// The cluster's admin token: made with `generate` by the first node to
    /// ask, kept sealed, and the same on every node after.
    pub async fn admin_token(
        &self,
        generate: impl FnOnce() -> String,
    ) -> Result<String, ClusterError> {
        let fresh = generate();
        let read = || async {
            let entry = self
                .registry
                .entry(ADMIN_TOKEN)
                .await
                .map_err(|error| jetstream_error("read the admin token")(&error))?;
            entry
                .filter(|entry| entry.operation == kv::Operation::Put)
                .map(|entry| self.key.open(ADMIN_TOKEN, &entry.value))
                .transpose()
        };
        if let Some(token) = read().await? {
            return String::from_utf8(token).map_err(|_| ClusterError::Unseal(ADMIN_TOKEN.into()));
        }
        match self
            .registry
            .create(ADMIN_TOKEN, self.key.seal(ADMIN_TOKEN, fresh.as_bytes()))
            .await
        {
            Ok(_) => Ok(fresh),
            // Another node made it first: use that one.
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => read()
                .await?
                .ok_or_else(|| ClusterError::Unseal(ADMIN_TOKEN.into()))
                .and_then(|token| {
                    String::from_utf8(token).map_err(|_| ClusterError::Unseal(ADMIN_TOKEN.into()))
                }),
            Err(error) => Err(jetstream_error("store the admin token")(&error)),
        }
    }

    /// Every registry entry now, and the revision to follow from.
    pub async fn snapshot(&self) -> Result<(Vec<Change>, u64), ClusterError> {
        let last = self.last_revision().await?;
        let mut keys: Vec<String> = self
            .registry
            .keys()
            .await
            .map_err(|error| jetstream_error("list the registry")(&error))?
            .try_collect()
            .await
            .map_err(|error| jetstream_error("list the registry")(&error))?;
        keys.sort();
        let mut changes = Vec::new();
        for subject in keys {
            let Some(key) = Key::parse(&subject) else {
                continue;
            };
            let entry = self
                .registry
                .entry(subject.as_str())
                .await
                .map_err(|error| jetstream_error(format!("read {key}"))(&error))?;
            if let Some(change) = entry.and_then(|entry| self.observe(entry)) {
                changes.push(change);
            }
        }
        Ok((changes, last))
    }

    /// The registry's latest revision: a node whose watch has seen less
    /// for a while has a watch that stalled.
    pub async fn last_revision(&self) -> Result<u64, ClusterError> {
        // Asked afresh: the bucket's own status is what it was when opened.
        let mut stream = self
            .context
            .get_stream(format!("KV_{REGISTRY}"))
            .await
            .map_err(|error| jetstream_error("read the registry's state")(&error))?;
        let info = stream
            .info()
            .await
            .map_err(|error| jetstream_error("read the registry's state")(&error))?;
        Ok(info.state.last_sequence)
    }

    /// Every change to the registry after revision `after`, as it happens.
    pub async fn follow(
        &self,
        after: u64,
    ) -> Result<impl Stream<Item = Result<Change, ClusterError>> + '_, ClusterError> {
        let watch = self
            .registry
            .watch_all_from_revision(after + 1)
            .await
            .map_err(|error| jetstream_error("follow the registry")(&error))?;
        Ok(watch.filter_map(move |entry| async move {
            match entry {
                Ok(entry) => {
                    let revision = entry.revision;
                    let change = self
                        .observe(entry)
                        .filter(|change| !self.superseded(change));
                    if change.is_none() {
                        // Not the cache's (a lease, the admin token), or
                        // older than what the node holds: processed as read.
                        self.processed(revision);
                    }
                    change.map(Ok)
                }
                Err(error) => Some(Err(jetstream_error("follow the registry")(&error))),
            }
        }))
    }

    /// Turns an entry into a change, if it is one.
    fn observe(&self, entry: kv::Entry) -> Option<Change> {
        let key = Key::parse(&entry.key)?;
        let value = (entry.operation == kv::Operation::Put).then_some(entry.value);
        Some(Change {
            key,
            value,
            revision: entry.revision,
        })
    }

    /// Notes that the node's cache holds `change`: the node's next write of
    /// its key expects it. Noted only once applied, so a write never
    /// replaces a value its node has not seen and checked against.
    pub fn applied(&self, change: &Change) {
        self.saw(
            change.key.subject(),
            change.revision,
            change.value.is_some(),
        );
        self.processed(change.revision);
    }

    /// Notes that the node's cache is done with every revision up to
    /// `revision`, applied or put aside.
    pub fn processed(&self, revision: u64) {
        self.processed
            .fetch_max(revision, std::sync::atomic::Ordering::SeqCst);
    }

    /// The revision the node's cache is done with, and so with every one before it.
    pub fn last_processed(&self) -> u64 {
        self.processed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the node's cache is done with revision `revision` (and
    /// so every one before it), up to `within`; whether it is.
    pub async fn caught_up(&self, revision: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.last_processed() < revision {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Takes the cluster's lease `name` for `holder`, waiting up to
    /// [`LEASE_WAIT`] while another holds it; one held longer than
    /// [`LEASE_TTL`] is taken over. Give it back with [`Cluster::release`].
    pub async fn lease(&self, name: &str, holder: &str) -> Result<Lease, ClusterError> {
        let key = format!("lease.{name}");
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        loop {
            let value: Bytes = serde_json::to_vec(&(holder, now_millis()))
                .expect("a lease serializes")
                .into();
            // Not taken: another node holds it, or took it first from
            // where the last one gave it back.
            if let Ok(revision) = self.registry.create(key.as_str(), value.clone()).await {
                return Ok(Lease { key, revision });
            }
            if let Ok(Some(entry)) = self.registry.entry(key.as_str()).await
                && entry.operation == kv::Operation::Put
                && serde_json::from_slice::<(String, u64)>(&entry.value).is_ok_and(|(_, at)| {
                    now_millis().saturating_sub(at) > LEASE_TTL.as_millis() as u64
                })
                && let Ok(revision) = self
                    .registry
                    .update(key.as_str(), value, entry.revision)
                    .await
            {
                tracing::warn!("took over {key}, left by a node that stopped");
                return Ok(Lease { key, revision });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Busy(format!("holding {key}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Gives a lease back.
    pub async fn release(&self, lease: Lease) -> Result<(), ClusterError> {
        self.registry
            .delete_expect_revision(lease.key.as_str(), Some(lease.revision))
            .await
            .map_err(|error| jetstream_error(format!("give back {}", lease.key))(&error))
    }

    /// The revision a write of `subject` expects: `None` when this node saw
    /// it absent (never written, or deleted), to be created anew.
    fn revision(&self, subject: &str) -> Option<u64> {
        self.revisions
            .lock()
            .expect("revisions")
            .get(subject)
            .filter(|seen| seen.present)
            .map(|seen| seen.revision)
    }

    fn saw(&self, subject: String, revision: u64, present: bool) {
        let mut revisions = self.revisions.lock().expect("revisions");
        let seen = revisions
            .entry(subject)
            .or_insert(Seen { revision, present });
        if revision >= seen.revision {
            *seen = Seen { revision, present };
        }
    }

    /// Whether the node holds something newer of the change's key than the
    /// change: its own write or deletion since, which the change, read late
    /// from the watch, must not undo. [`Cluster::follow`] leaves out what is
    /// superseded when it reads it; a change waiting to be applied while the
    /// node writes is asked again once the node's writes are done.
    pub fn superseded(&self, change: &Change) -> bool {
        self.revisions
            .lock()
            .expect("revisions")
            .get(&change.key.subject())
            .is_some_and(|seen| {
                change.revision < seen.revision
                    || (!seen.present && change.revision == seen.revision)
            })
    }

    /// Writes a value, if the key is as this node last saw it (absent, or
    /// at the revision it saw): otherwise [`ClusterError::Conflict`].
    pub async fn put(&self, key: &Key, value: Bytes) -> Result<(), ClusterError> {
        let subject = key.subject();
        let written = match self.revision(&subject) {
            None => match self.registry.create(&subject, value).await {
                Ok(revision) => revision,
                // Lost a race to create it: the key is there now.
                Err(_) if self.exists(&subject).await => {
                    return Err(ClusterError::Conflict(key.to_string()));
                }
                Err(error) => return Err(jetstream_error(format!("write {key}"))(&error)),
            },
            Some(revision) => self
                .registry
                .update(&subject, value, revision)
                .await
                .map_err(|error| match error.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => {
                        ClusterError::Conflict(key.to_string())
                    }
                    _ => jetstream_error(format!("write {key}"))(&error),
                })?,
        };
        self.saw(subject, written, true);
        Ok(())
    }

    async fn exists(&self, subject: &str) -> bool {
        matches!(
            self.registry.entry(subject).await,
            Ok(Some(entry)) if entry.operation == kv::Operation::Put
        )
    }

    /// Deletes a key, if it is as this node last saw it.
    pub async fn delete(&self, key: &Key) -> Result<(), ClusterError> {
        let subject = key.subject();
        let expected = self.revision(&subject);
        self.registry
            .delete_expect_revision(&subject, expected)
            .await
            .map_err(|error| match error.kind() {
                kv::DeleteErrorKind::WrongLastRevision => ClusterError::Conflict(key.to_string()),
                _ => jetstream_error(format!("delete {key}"))(&error),
            })?;
        // Made again before the deletion comes back, the key is created
        // anew, over the deletion, unless another node made it first; the
        // values up to the one deleted are past, should they come back late.
        self.revisions.lock().expect("revisions").insert(
            subject,
            Seen {
                revision: expected.unwrap_or_default(),
                present: false,
            },
        );
        Ok(())
    }

    /// Seals a secret's value for its key.
    /// `generation` names the life of its namespace the secret belongs to:
    /// bound to the sealed value, it opens for that life only.
    pub fn seal(&self, key: &Key, generation: &str, value: &str) -> Bytes {
        self.key
            .seal(&format!("{}@{generation}", key.subject()), value.as_bytes())
    }

    /// Opens a secret's value sealed for `generation` of its namespace.
    pub fn open(&self, key: &Key, generation: &str, sealed: &[u8]) -> Result<String, ClusterError> {
        let label = format!("{}@{generation}", key.subject());
        String::from_utf8(self.key.open(&label, sealed)?).map_err(|_| ClusterError::Unseal(label))
    }

    /// The cluster's object buckets; `scratch` is the node's data
    /// directory, where parts are joined.
    pub fn objects(&self, scratch: &Path) -> ClusterObjects {
        ClusterObjects::new(self.objects.clone(), self.object_index.clone(), scratch)
    }

    /// The cluster's key-value stores.
    pub fn key_value(&self) -> Arc<ClusterKv> {
        self.key_value.clone()
    }

    /// Stores the artifact at `path` under its digest, unless it is there already.
    pub async fn upload(&self, digest: &str, path: &Path) -> Result<(), ClusterError> {
        // A deleted object keeps its info, marked deleted: that one is stored again.
        if self
            .artifacts
            .info(digest)
            .await
            .is_ok_and(|info| !info.deleted)
        {
            return Ok(());
        }
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ClusterError::Io {
                action: format!("read {}", path.display()),
                source,
            })?;
        self.artifacts
            .put(digest, &mut file)
            .await
            .map_err(|error| jetstream_error(format!("store artifact {digest}"))(&error))?;
        Ok(())
    }

    /// The digests of the artifacts in the cluster's store, each with the
    /// time since it was last stored.
    pub async fn artifacts(&self) -> Result<HashMap<String, Duration>, ClusterError> {
        let list = |error: &dyn std::fmt::Display| jetstream_error("list the artifacts")(error);
        let objects = self.artifacts.list().await.map_err(|error| list(&error))?;
        objects
            .map_ok(|info| {
                let age = info.modified.map_or(0, |stored| {
                    (async_nats::datetime::now() - stored).whole_milliseconds()
                });
                (
                    info.name,
                    Duration::from_millis(u64::try_from(age).unwrap_or(0)),
                )
            })
            .try_collect()
            .await
            .map_err(|error| list(&error))
    }

    /// Deletes an artifact from the cluster's store; one already gone is no error.
    pub async fn delete_artifact(&self, digest: &str) -> Result<(), ClusterError> {
        match self.artifacts.delete(digest).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(error) => Err(jetstream_error(format!("delete artifact {digest}"))(&error)),
        }
    }

    /// Fetches an artifact, handing its bytes to `write` chunk by chunk;
    /// `false` if the cluster does not have it.
    pub async fn download(
        &self,
        digest: &str,
        mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<bool, ClusterError> {
        use tokio::io::AsyncReadExt as _;
        let mut object = match self.artifacts.get(digest).await {
            Ok(object) => object,
            Err(error) if error.kind() == object_store::GetErrorKind::NotFound => {
                return Ok(false);
            }
            Err(error) => return Err(jetstream_error(format!("fetch artifact {digest}"))(&error)),
        };
        let mut buffer = vec![0; 128 << 10];
        loop {
            let read = object
                .read(&mut buffer)
                .await
                .map_err(|source| ClusterError::Io {
                    action: format!("fetch artifact {digest}"),
                    source,
                })?;
            if read == 0 {
                return Ok(true);
            }
            write(&buffer[..read]).map_err(|source| ClusterError::Io {
                action: format!("keep artifact {digest}"),
                source,
            })?;
        }
    }

    /// Claims one firing of a cron trigger for this node: `true` for the
    /// one node of the cluster that claims it first, `false` for the rest.
    /// `trigger` is anything naming the trigger (its function and label).
    pub async fn claim_tick(&self, trigger: &str, at_millis: i64) -> Result<bool, ClusterError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, trigger.as_bytes());
        let key = format!("{}.{at_millis}", hex::encode(&digest.as_ref()[..12]));
        match self.ticks.create(key.as_str(), Bytes::new()).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(jetstream_error(format!(
                "claim the tick {trigger} at {at_millis}"
            ))(&error)),
        }
    }

    /// The entries of unfinished async calls, as the node holding each
    /// and the call's name there ([`CallEntry`]).
    pub async fn call_entries(&self) -> Result<Vec<(String, String)>, ClusterError> {
        let keys: Vec<String> = match self.calls.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|error| jetstream_error("list the unfinished calls")(&error))?,
            Err(error) => return Err(jetstream_error("list the unfinished calls")(&error)),
        };
        Ok(keys
            .into_iter()
            .filter_map(|key| {
                let (node, call) = key.split_once('.')?;
                Some((node.to_owned(), call.to_owned()))
            })
            .collect())
    }

    /// The entry of call `call` under node `node`, opened; `None` when there is none.
    pub async fn call_entry(
        &self,
        node: &str,
        call: &str,
    ) -> Result<Option<CallEntry>, ClusterError> {
        let key = format!("{node}.{call}");
        let entry = self
            .calls
            .entry(key.as_str())
            .await
            .map_err(|error| jetstream_error(format!("read call {key}"))(&error))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(Some(CallEntry {
                value: self.key.open(&call_label(&key), &entry.value)?,
                revision: entry.revision,
            })),
            _ => Ok(None),
        }
    }

    /// Creates the entry of call `call` under node `node`, sealed, and
    /// answers its revision; `None` if it exists.
    pub async fn create_call(
        &self,
        node: &str,
        call: &str,
        value: &[u8],
    ) -> Result<Option<u64>, ClusterError> {
        let key = format!("{node}.{call}");
        let sealed = self.key.seal(&call_label(&key), value);
        match self.calls.create(key.as_str(), sealed).await {
            Ok(revision) => Ok(Some(revision)),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(error) => Err(jetstream_error(format!("write call {key}"))(&error)),
        }
    }

    /// Replaces the entry of call `call` under node `node` if it is still at
    /// `revision` (else [`ClusterError::Conflict`]) and answers its new revision.
    pub async fn update_call(
        &self,
        node: &str,
        call: &str,
        value: &[u8],
        revision: u64,
    ) -> Result<u64, ClusterError> {
        let key = format!("{node}.{call}");
        let sealed = self.key.seal(&call_label(&key), value);
        self.calls
            .update(key.as_str(), sealed, revision)
            .await
            .map_err(|error| match error.kind() {
                kv::UpdateErrorKind::WrongLastRevision => {
                    ClusterError::Conflict(format!("call {key}"))
                }
                _ => jetstream_error(format!("write call {key}"))(&error),
            })
    }

    /// Deletes the entry of call `call` under node `node` if it is still at
    /// `revision`. The entry's messages go, and no marker stays behind: a
    /// bucket of calls keeps nothing of each call it ever held.
    pub async fn delete_call(
        &self,
        node: &str,
        call: &str,
        revision: u64,
    ) -> Result<(), ClusterError> {
        let key = format!("{node}.{call}");
        // Of the key's messages, those up to `revision`: none if it changed since.
        self.calls
            .stream
            .purge()
            .filter(format!("{}{key}", self.calls.prefix))
            .sequence(revision + 1)
            .await
            .map(drop)
            .map_err(|error| jetstream_error(format!("delete call {key}"))(&error))
    }

    /// Says this node is alive, with what it is doing.
    pub async fn heartbeat(&self, member: &Member) -> Result<(), ClusterError> {
        let value = serde_json::to_vec(member).expect("a member serializes");
        self.members
            .put(member.id.as_str(), value.into())
            .await
            .map_err(|error| jetstream_error("heartbeat")(&error))?;
        Ok(())
    }

    /// Says this node is leaving, so it is not listed until it times out.
    pub async fn leave(&self, id: &str) -> Result<(), ClusterError> {
        self.members
            .delete(id)
            .await
            .map_err(|error| jetstream_error("leave the cluster")(&error))
    }

    /// The nodes that heartbeated within [`MEMBER_TIMEOUT`], by id, as
    /// listed at most [`MEMBERS_FRESH`] ago.
    pub async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        let mut listed = self.listed.lock().await;
        if let Some((at, members)) = &*listed
            && at.elapsed() < MEMBERS_FRESH
        {
            return Ok(members.clone());
        }
        let members = self.list_members().await?;
        *listed = Some((tokio::time::Instant::now(), members.clone()));
        Ok(members)
    }

    async fn list_members(&self) -> Result<Vec<Member>, ClusterError> {
        let keys: Vec<String> = match self.members.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|error| jetstream_error("list the members")(&error))?,
            Err(error) => return Err(jetstream_error("list the members")(&error)),
        };
        let now = now_millis();
        let mut members = Vec::new();
        for key in keys {
            let value = self
                .members
                .get(key.as_str())
                .await
                .map_err(|error| jetstream_error("read a member")(&error))?;
            if let Some(member) =
                value.and_then(|value| serde_json::from_slice::<Member>(&value).ok())
                && now.saturating_sub(member.last_seen) <= MEMBER_TIMEOUT.as_millis() as u64
            {
                members.push(member);
            }
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    /// Asks every other live member `question` and gathers their answers:
    /// returns once each answered, or after [`ASK_TIMEOUT`] with those that did.
    pub async fn ask(&self, me: &str, question: &[u8]) -> Result<Vec<Vec<u8>>, ClusterError> {
        let others = self
            .members()
            .await?
            .iter()
            .filter(|member| member.id != me)
            .count();
        if others == 0 {
            return Ok(Vec::new());
        }
        let nats_error = |error: &dyn std::fmt::Display| ClusterError::JetStream {
            action: "ask the other nodes".to_owned(),
            reason: error.to_string(),
        };
        let client = self.context.client();
        let inbox = client.new_inbox();
        let mut answers = client
            .subscribe(inbox.clone())
            .await
            .map_err(|error| nats_error(&error))?;
        let (headers, sealed) = Question::seal(&self.key, me, now_millis(), &inbox, question);
        client
            .publish_with_reply_and_headers(QUESTIONS, inbox.clone(), headers, sealed)
            .await
            .map_err(|error| nats_error(&error))?;
        // One answer per node: a copy of one replayed into the inbox is dropped.
        let mut gathered: HashMap<String, Vec<u8>> = HashMap::with_capacity(others);
        let deadline = tokio::time::sleep(ASK_TIMEOUT);
        tokio::pin!(deadline);
        while gathered.len() < others {
            tokio::select! {
                answer = answers.next() => match answer {
                    Some(answer) => {
                        let Some(node) = answer
                            .headers
                            .as_ref()
                            .and_then(|headers| headers.get("Wisp-From"))
                            .map(|node| node.as_str().to_owned())
                        else {
                            continue;
                        };
                        match self.key.open(&answer_label(&inbox, &node), &answer.payload) {
                            Ok(opened) => {
                                gathered.entry(node).or_insert(opened);
                            }
                            Err(error) => tracing::warn!("{error}"),
                        }
                    }
                    None => break,
                },
                () = &mut deadline => {
                    tracing::warn!(
                        "{} of the {others} other nodes answered within {}s",
                        gathered.len(),
                        ASK_TIMEOUT.as_secs()
                    );
                    break;
                }
            }
        }
        Ok(gathered.into_values().collect())
    }

    /// The questions the other nodes ask this one, each opened and checked
    /// (sealed with the cluster's key, for its reply subject, recent, and
    /// not seen before); the others are dropped.
    pub async fn questions(
        &self,
        me: &str,
    ) -> Result<impl Stream<Item = Question> + use<>, ClusterError> {
        let subscriber = self
            .context
            .client()
            .subscribe(QUESTIONS)
            .await
            .map_err(|error| ClusterError::JetStream {
                action: "follow the other nodes' questions".to_owned(),
                reason: error.to_string(),
            })?;
        let (me, key) = (me.to_owned(), self.key.clone());
        // The reply subjects of the questions answered within the TTL: a
        // question replayed as it was is answered once.
        let mut seen: HashMap<String, u64> = HashMap::new();
        let memory = 2 * QUESTION_TTL.as_millis() as u64;
        Ok(subscriber.filter_map(move |message| {
            let question = Question::open(&key, &me, message).filter(|question| {
                let now = now_millis();
                seen.retain(|_, at| now.abs_diff(*at) <= memory);
                seen.insert(question.reply.clone(), now).is_none()
            });
            std::future::ready(question)
        }))
    }

    /// Answers a question, sealed for the node that asked it and naming this one.
    pub async fn answer(
        &self,
        me: &str,
        question: &Question,
        answer: &[u8],
    ) -> Result<(), ClusterError> {
        let client = self.context.client();
        let sealed = self.key.seal(&answer_label(&question.reply, me), answer);
        let limit = client.server_info().max_payload;
        if sealed.len() > limit {
            return Err(ClusterError::TooLarge(answer.len()));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Wisp-From", me);
        client
            .publish_with_headers(question.reply.clone(), headers, sealed)
            .await
            .map_err(|error| ClusterError::JetStream {
                action: "answer another node".to_owned(),
                reason: error.to_string(),
            })
    }

    /// The largest value that fits in one of the cluster's messages once
    /// sealed: an answer, or a call's entry.
    pub fn max_sealed(&self) -> usize {
        self.context
            .client()
            .server_info()
            .max_payload
            .saturating_sub(SEAL_OVERHEAD)
    }
}

/// A question another node asked this one.
#[derive(Debug)]
pub struct Question {
    /// The asking node's id.
    pub from: String,
    /// What it asks.
    pub body: Vec<u8>,
    reply: String,
}

impl Question {
    /// A question's headers (who asks, and when) and its body, sealed with
    /// those and the subject its answers go to.
    fn seal(
        key: &SealingKey,
        from: &str,
        sent_at: u64,
        reply: &str,
        question: &[u8],
    ) -> (async_nats::HeaderMap, Bytes) {
        let sent_at = sent_at.to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Wisp-From", from);
        headers.insert("Wisp-Sent-At", sent_at.as_str());
        let sealed = key.seal(&question_label(from, &sent_at, reply), question);
        (headers, sealed)
    }

    fn open(key: &SealingKey, me: &str, message: async_nats::Message) -> Option<Self> {
        let headers = message.headers.as_ref()?;
        let from = headers.get("Wisp-From")?.as_str().to_owned();
        let sent_at = headers.get("Wisp-Sent-At")?.as_str().to_owned();
        if from == me {
            return None;
        }
        let age = now_millis().abs_diff(sent_at.parse().ok()?);
        if age > QUESTION_TTL.as_millis() as u64 {
            tracing::warn!("ignored a question from node {from} sent {age} ms ago");
            return None;
        }
        let reply = message.reply?.to_string();
        let body = match key.open(&question_label(&from, &sent_at, &reply), &message.payload) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!("ignored a question: {error}");
                return None;
            }
        };
        Some(Self { from, body, reply })
    }
}

/// What a call's entry is sealed with: its key, so it opens there only.
fn call_label(key: &str) -> String {
    format!("call {key}")
}

/// What a question is sealed with: who asked, when, and where its answers
/// go, so it cannot be replayed to another inbox.
fn question_label(from: &str, sent_at: &str, reply: &str) -> String {
    format!("question from {from} at {sent_at} for {reply}")
}

/// What an answer is sealed with: the question's own reply subject, so it
/// answers that question only, and the node that answers.
fn answer_label(reply: &str, node: &str) -> String {
    format!("answer to {reply} from {node}")
}

/// Opens a key-value bucket, creating it when it is missing.
async fn key_value(
    context: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = context.get_key_value(config.bucket.as_str()).await {
        return Ok(store);
    }
    let bucket = config.bucket.clone();
    match context.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another node made it in between, or it cannot be made.
        Err(error) => context
            .get_key_value(bucket.as_str())
            .await
            .map_err(|_| jetstream_error(format!("create bucket {bucket}"))(&error)),
    }
}

/// Sets the bytes a bucket's stream holds at most to `max_bytes`, when it
/// was made with another bound.
async fn bound(
    context: &jetstream::Context,
    stream: &mut jetstream::stream::Stream,
    max_bytes: u64,
) -> Result<(), ClusterError> {
    let wanted = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    let info = stream
        .info()
        .await
        .map_err(|error| jetstream_error("read the key-value bucket")(&error))?;
    if info.config.max_bytes != wanted {
        let config = jetstream::stream::Config {
            max_bytes: wanted,
            ..info.config.clone()
        };
        context
            .update_stream(config)
            .await
            .map_err(|error| jetstream_error("bound the key-value bucket")(&error))?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A new node id: random, so two data directories never clash.
pub fn node_id() -> String {
    hex::encode(random_bytes::<6>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    pub(crate) fn key(byte: u8) -> SealingKey {
        SealingKey::from_file(key_file(&hex::encode([byte; 32])).path()).unwrap()
    }

    /// A node's handle on a cluster of one NATS server, with key 1.
    pub(crate) async fn connected(nats: &wisp_testing::NatsCluster) -> Cluster {
        Cluster::connect(Config {
            urls: nats.urls_from(0),
            replicas: 1,
            key: key(1),
            key_value_max_bytes: 1 << 20,
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_change_read_late_never_undoes_a_newer_write_of_the_node() {
        let nats = wisp_testing::NatsCluster::start(1);
        let cluster = connected(&nats).await;
        let changes = cluster
            .follow(cluster.last_revision().await.unwrap())
            .await
            .unwrap();
        futures_util::pin_mut!(changes);
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(5), changes.next())
                .await
                .expect("a change in time")
                .expect("a change")
                .unwrap()
        };
        // Made, removed and made again before the watch is read: what it
        // gives first is the last value, not the value or removal before it.
        let namespace = Key::Namespace("team-a".into());
        cluster.put(&namespace, "one".into()).await.unwrap();
        cluster.delete(&namespace).await.unwrap();
        cluster.put(&namespace, "two".into()).await.unwrap();
        let change = next().await;
        assert_eq!(
            (&change.key, change.value.as_deref()),
            (&namespace, Some(&b"two"[..]))
        );
        cluster.delete(&namespace).await.unwrap();
        let change = next().await;
        assert_eq!((&change.key, change.value.as_deref()), (&namespace, None));
        // Read before the node makes it again, and applied after: by then
        // the removal is past.
        assert!(!cluster.superseded(&change));
        cluster.put(&namespace, "three".into()).await.unwrap();
        assert!(
            cluster.superseded(&change),
            "the removal is older than the node's write"
        );
    }

    #[test]
    fn keys_round_trip_and_refuse_other_shapes() {
        for key in [
            Key::Function {
                namespace: "team-a".into(),
                name: "echo".into(),
            },
            Key::Namespace("team-a".into()),
            Key::Token("0123abcd".into()),
            Key::Secret {
                namespace: "team-a".into(),
                name: "db-password".into(),
            },
        ] {
            assert_eq!(Key::parse(&key.subject()), Some(key));
        }
        for other in [
            ADMIN_TOKEN,
            "function.a",
            "function.a.b.c",
            "token",
            "other.x",
        ] {
            assert_eq!(Key::parse(other), None, "{other}");
        }
    }

    #[test]
    fn sealed_values_open_only_under_their_own_name_and_key() {
        let sealing = key(7);
        let sealed = sealing.seal("secret.a.b", b"hunter2");
        assert!(!sealed.windows(7).any(|window| window == b"hunter2"));
        assert_eq!(sealing.open("secret.a.b", &sealed).unwrap(), b"hunter2");
        // Moved to another secret's name, it does not open.
        assert!(matches!(
            sealing.open("secret.a.c", &sealed),
            Err(ClusterError::Unseal(_))
        ));
        // Nor with another key.
        assert!(key(8).open("secret.a.b", &sealed).is_err());
        // Two seals of one value differ: a fresh nonce each.
        assert_ne!(sealing.seal("secret.a.b", b"hunter2"), sealed);
    }

    #[test]
    fn questions_open_only_sealed_with_the_key_as_sent_and_recent() {
        let message = |key: &SealingKey, from: &str, sent_at: u64, from_header: &str| {
            let (mut headers, payload) =
                Question::seal(key, from, sent_at, "_INBOX.asker", b"GET /system/logs");
            headers.insert("Wisp-From", from_header);
            async_nats::Message {
                subject: QUESTIONS.into(),
                reply: Some("_INBOX.asker".into()),
                payload,
                headers: Some(headers),
                status: None,
                description: None,
                length: 0,
            }
        };
        let (cluster_key, now) = (key(7), now_millis());
        let opened = Question::open(&cluster_key, "me", message(&cluster_key, "a", now, "a"))
            .expect("a question of the cluster's");
        assert_eq!(
            (opened.from.as_str(), opened.body.as_slice()),
            ("a", &b"GET /system/logs"[..])
        );
        let mut elsewhere = message(&cluster_key, "a", now, "a");
        elsewhere.reply = Some("_INBOX.eavesdropper".into());
        for (why, question) in [
            ("sent on to another inbox", elsewhere),
            ("sealed with another key", message(&key(8), "a", now, "a")),
            (
                "replayed later",
                message(&cluster_key, "a", now - 60_000, "a"),
            ),
            (
                "passed off as another node's",
                message(&cluster_key, "a", now, "b"),
            ),
            ("this node's own", message(&cluster_key, "me", now, "me")),
        ] {
            assert!(
                Question::open(&cluster_key, "me", question).is_none(),
                "{why}"
            );
        }
        // An answer opens only for the question it answers, as the node that sealed it.
        let answer = cluster_key.seal(&answer_label("_INBOX.asker", "b"), b"{}");
        assert!(
            cluster_key
                .open(&answer_label("_INBOX.asker", "b"), &answer)
                .is_ok()
        );
        assert!(
            cluster_key
                .open(&answer_label("_INBOX.other", "b"), &answer)
                .is_err()
        );
        assert!(
            cluster_key
                .open(&answer_label("_INBOX.asker", "c"), &answer)
                .is_err()
        );
    }

    #[test]
    fn malformed_key_files_say_what_they_need() {
        let file = key_file("not hex");
        let error = SealingKey::from_file(file.path())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("64 hex digits"), "{error}");
    }
}
