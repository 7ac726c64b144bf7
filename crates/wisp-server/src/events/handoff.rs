//! Cluster mode: a lost node's async calls are taken over by the others.
//!
//! Each node keeps and runs the calls queued through it (its own store,
//! one commit for a burst of them), and holds an entry of each unfinished
//! call in the cluster's `wisp_calls` bucket, under its own id, sealed with
//! the cluster key: the call as accepted, so another node can run it. Every
//! [`RESCUE`] each node looks for entries of nodes that stopped
//! heartbeating, and takes each over: it claims the entry (compare and
//! set, so one node wins), holds an entry of its own, commits the call to
//! its store and runs it, and marks the lost node's entry moved.
//!
//! An outcome is recorded once. Before its node records a call's outcome,
//! it marks the call's entry done, compare and set: if another node took
//! the call over meanwhile (this one was taken for lost), the mark fails and
//! this node forgets the call instead of recording it. A node that comes
//! back (its id is kept in its data directory) first settles what it held
//! with the cluster: calls taken over are forgotten, calls marked done are
//! recorded, the rest run again (at-least-once, as on a single node).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use wisp_cluster::{Cluster, ClusterError};
use wisp_core::{CallState, events::CallResult};
use wisp_store::{CallOrigin, NewCall, PendingCall};

use super::{Queue, Write, Written};
use crate::node::Node;

/// How often a node looks for the calls of lost nodes.
const RESCUE: Duration = Duration::from_secs(2);
/// How long a node waits before asking NATS again when it cannot record an outcome.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

/// What a node knows of the entries it holds.
#[derive(Default)]
pub(crate) struct Held {
    /// The revision of each entry this node holds, by call key.
    revisions: Mutex<HashMap<String, u64>>,
    /// Unfinished calls whose entry could not be written yet.
    unwritten: Mutex<HashSet<String>>,
}

/// A call's entry.
#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum Entry {
    /// Held by its node; `claimer` is taking it over.
    Held { call: Call, claimer: Option<String> },
    /// Its outcome is recorded by its node, which deletes the entry once
    /// its own store has it. The entry keeps the outcome whole, so a node
    /// stopped before its store had it records it from here at start-up.
    Done {
        outcome: CallState,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        result: Option<CallResult>,
        /// When the attempt began, if its start was not written.
        #[serde(default)]
        unstarted: Option<i64>,
    },
    /// Taken over by node `to`.
    Moved { to: String },
}

/// A call as accepted, in an entry.
#[derive(Clone, Serialize, Deserialize)]
struct Call {
    id: String,
    trigger: bool,
    namespace: String,
    function: String,
    source: String,
    /// The event, base64.
    event: String,
    callback_url: Option<String>,
    created_at: i64,
    /// The generation of its namespace: a call of a namespace since
    /// removed (and perhaps made again) is not run.
    generation: Option<String>,
}

impl Call {
    fn new(node: &Node, call: &NewCall) -> Self {
        Self {
            id: call.id.clone(),
            trigger: call.origin == CallOrigin::Trigger,
            namespace: call.namespace.clone(),
            function: call.function.clone(),
            source: call.source.clone(),
            event: base64::engine::general_purpose::STANDARD.encode(&call.event),
            callback_url: call.callback_url.clone(),
            created_at: call.created_at,
            generation: node.generations.get(&call.namespace),
        }
    }

    /// Whether its namespace is still the one it was accepted in; `None`
    /// while this node does not hold the namespace (it may be behind).
    fn current(&self, node: &Node) -> Option<bool> {
        let now = node.generations.get(&self.namespace)?;
        Some(self.generation.as_ref() == Some(&now))
    }

    /// The call as accepted; `None` if its event is corrupt.
    fn accepted(self) -> Option<NewCall> {
        Some(NewCall {
            id: self.id,
            origin: if self.trigger {
                CallOrigin::Trigger
            } else {
                CallOrigin::Caller
            },
            namespace: self.namespace,
            function: self.function,
            source: self.source,
            event: base64::engine::general_purpose::STANDARD
                .decode(self.event)
                .ok()?,
            callback_url: self.callback_url,
            created_at: self.created_at,
        })
    }
}

impl Entry {
    fn held(node: &Node, call: &NewCall) -> Vec<u8> {
        let entry = Self::Held {
            call: Call::new(node, call),
            claimer: None,
        };
        serde_json::to_vec(&entry).expect("an entry serializes")
    }

    /// A `Done` entry of this outcome, no larger than `limit`: a result
    /// too large for one message keeps its status and headers, and its
    /// body is marked cut; if that is still too large, only the state, the
    /// start and the error's first KiB are kept.
    fn done(outcome: &Outcome<'_>, limit: usize) -> Vec<u8> {
        let mut entry = Self::Done {
            outcome: outcome.state,
            error: outcome.error.map(str::to_owned),
            result: outcome.result.cloned(),
            unstarted: outcome.unstarted,
        };
        let value = entry.to_vec();
        if value.len() <= limit {
            return value;
        }
        if let Self::Done {
            result: Some(result),
            ..
        } = &mut entry
        {
            result.body.clear();
            result.truncated = true;
        }
        let value = entry.to_vec();
        if value.len() <= limit {
            return value;
        }
        let error = outcome.error.map(|error| {
            let mut cut = error.len().min(1024);
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error[..cut].to_owned()
        });
        Self::Done {
            outcome: outcome.state,
            error,
            result: None,
            unstarted: outcome.unstarted,
        }
        .to_vec()
    }

    fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an entry serializes")
    }
}

/// The name of a call's entry: a digest of its key, which holds whatever
/// id a caller chose.
fn entry_name(key: &str) -> String {
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16])
}

/// Reads and opens an entry; `None` if there is none or it is not one of wisp's.
async fn read(
    cluster: &Cluster,
    node: &str,
    name: &str,
) -> Result<Option<(Entry, u64)>, ClusterError> {
    let Some(entry) = cluster.call_entry(node, name).await? else {
        return Ok(None);
    };
    match serde_json::from_slice(&entry.value) {
        Ok(value) => Ok(Some((value, entry.revision))),
        Err(error) => {
            tracing::warn!("the cluster's entry of call {node}.{name} is not one: {error}");
            Ok(None)
        }
    }
}

/// Creates this node's entry `name` of a call it holds, and answers its
/// revision; `None` if another node has taken the call over (or is). An
/// entry of this node's own (its create answered late) is kept; one marked
/// done (the same call, finished and queued again) is replaced.
async fn create(
    cluster: &Cluster,
    me: &str,
    name: &str,
    value: &[u8],
) -> Result<Option<u64>, ClusterError> {
    for _ in 0..3 {
        if let Some(revision) = cluster.create_call(me, name, value).await? {
            return Ok(Some(revision));
        }
        match read(cluster, me, name).await? {
            // Deleted in between.
            None => continue,
            Some((Entry::Held { claimer: None, .. }, revision)) => return Ok(Some(revision)),
            Some((Entry::Done { .. }, revision)) => {
                match cluster.update_call(me, name, value, revision).await {
                    Err(ClusterError::Conflict(_)) => continue,
                    written => return written.map(Some),
                }
            }
            Some((
                Entry::Held {
                    claimer: Some(_), ..
                }
                | Entry::Moved { .. },
                _,
            )) => {
                return Ok(None);
            }
        }
    }
    Err(ClusterError::Conflict(format!("call {me}.{name}")))
}

/// After `call` is committed here: holds its entry in the cluster. An
/// entry that cannot be written is tried again every [`RESCUE`]. `false`
/// if another node has taken the call over, and this one forgot it.
pub(crate) async fn hold(node: &Node, call: &NewCall) -> bool {
    let Some(cluster) = &node.cluster else {
        return true;
    };
    let key = call.key();
    let held = &node.queue.held;
    let entry = Entry::held(node, call);
    if entry.len() > cluster.max_sealed() {
        tracing::info!(
            "call {} is larger than a NATS message: only this node keeps it",
            call.id
        );
        return true;
    }
    match create(cluster, &node.id, &entry_name(&key), &entry).await {
        Ok(Some(revision)) => {
            held.revisions.lock().expect("held").insert(key, revision);
        }
        Ok(None) => {
            forget(node, &key, &call.namespace).await;
            return false;
        }
        Err(error) => {
            tracing::warn!(
                "call {} is kept by this node only until the cluster takes it: {error}",
                call.id
            );
            held.unwritten.lock().expect("held").insert(key);
        }
    }
    true
}

/// After the call with key `key` is queued again here: holds its entry.
pub(crate) async fn hold_stored(node: &Arc<Node>, key: &str) {
    if node.cluster.is_none() {
        return;
    }
    match node.store.unfinished_call(key) {
        Ok(Some(call)) => {
            hold(node, &call).await;
        }
        Ok(None) => return,
        Err(error) => return tracing::warn!("call {key} cannot be read: {error}"),
    }
    // Finished meanwhile (its outcome recorded before the entry was
    // written): the entry goes, as its outcome's would have.
    if matches!(node.store.unfinished_call(key), Ok(None)) {
        release(node, key);
    }
}

/// A call's final outcome, as its node records it.
pub(crate) struct Outcome<'a> {
    pub state: CallState,
    pub error: Option<&'a str>,
    pub result: Option<&'a CallResult>,
    /// When the last attempt began, if its start was not written.
    pub unstarted: Option<i64>,
}

/// Before this node records the outcome of the call with key `key`: marks
/// its entry done, with the outcome. `false` if another node took the call
/// over, which then records its outcome instead; until NATS answers, this
/// waits.
pub(crate) async fn settle(node: &Node, key: &str, outcome: Outcome<'_>) -> bool {
    let Some(cluster) = &node.cluster else {
        return true;
    };
    let held = &node.queue.held;
    let unwritten = held.unwritten.lock().expect("held").remove(key);
    let mut revision = held.revisions.lock().expect("held").get(key).copied();
    if revision.is_none() && !unwritten {
        // Too large for the cluster: no other node can have it.
        return true;
    }
    let name = entry_name(key);
    let done = Entry::done(&outcome, cluster.max_sealed());
    let mut warned = false;
    loop {
        let marked = match revision {
            Some(expected) => cluster.update_call(&node.id, &name, &done, expected).await,
            // Written or not, as the cluster says.
            None => Err(ClusterError::Conflict(key.to_owned())),
        };
        let error = match marked {
            Ok(marked) => {
                held.revisions
                    .lock()
                    .expect("held")
                    .insert(key.to_owned(), marked);
                return true;
            }
            // Taken over, or marked already (an answer lost on the way): the entry says.
            Err(ClusterError::Conflict(_)) => match read(cluster, &node.id, &name).await {
                Ok(None) => return true,
                Ok(Some((Entry::Done { .. }, marked))) => {
                    held.revisions
                        .lock()
                        .expect("held")
                        .insert(key.to_owned(), marked);
                    return true;
                }
                Ok(Some((Entry::Held { claimer: None, .. }, current))) => {
                    revision = Some(current);
                    continue;
                }
                Ok(Some((
                    Entry::Held {
                        claimer: Some(_), ..
                    }
                    | Entry::Moved { .. },
                    _,
                ))) => {
                    held.revisions.lock().expect("held").remove(key);
                    return false;
                }
                Err(error) => {
                    revision = None;
                    error
                }
            },
            Err(error) => error,
        };
        if !warned {
            tracing::warn!(
                "the outcome of call {key} waits for the cluster, which may have given it to another node: {error}"
            );
            warned = true;
        }
        tokio::time::sleep(SETTLE_RETRY).await;
    }
}

/// Once this node recorded the outcome of the call with key `key`: deletes its entry.
pub(crate) fn release(node: &Arc<Node>, key: &str) {
    let Some(cluster) = node.cluster.clone() else {
        return;
    };
    let Some(revision) = node.queue.held.revisions.lock().expect("held").remove(key) else {
        return;
    };
    let (me, name) = (node.id.clone(), entry_name(key));
    tokio::spawn(async move {
        if let Err(error) = cluster.delete_call(&me, &name, revision).await {
            tracing::warn!("{error}");
        }
    });
}

/// Forgets a call another node took over: its row, its place in its
/// namespace's backlog, whoever waits for it.
pub(crate) async fn forget(node: &Node, key: &str, namespace: &str) {
    let size = node.store.event_size(key).ok().flatten().unwrap_or(0);
    match node
        .queue
        .write(Write::Forget {
            key: key.to_owned(),
        })
        .await
    {
        Ok(Written::Forgotten(false)) => {}
        Ok(_) => {
            node.queue.backlog.release(namespace, size);
            node.queue.waiters.lock().expect("waiters").remove(key);
            tracing::info!("call {key} was taken over by another node of the cluster");
        }
        Err(error) => tracing::error!("call {key} could not be forgotten: {error}"),
    }
}

/// At start-up, before this node runs the calls it kept (`pending`):
/// settles them with the cluster, and answers those to run. Calls another
/// node took over are forgotten, those marked done are recorded done, and
/// calls whose entry only the cluster has (the node stopped before its own
/// store had them) are taken from there.
pub(crate) async fn reconcile(node: &Arc<Node>, pending: Vec<PendingCall>) -> Vec<PendingCall> {
    let Some(cluster) = node.cluster.clone() else {
        return pending;
    };
    let listed = match cluster.call_entries().await {
        Ok(listed) => listed,
        Err(error) => {
            tracing::error!(
                "the cluster's async calls cannot be read; keeping this node's: {error}"
            );
            node.queue
                .held
                .unwritten
                .lock()
                .expect("held")
                .extend(pending.iter().map(|call| call.key.clone()));
            return pending;
        }
    };
    // Unknown, every claimer counts as live: a call it claimed is left to
    // it, and taken back by [`rescue`] if it turns out lost.
    let live: Option<HashSet<String>> = cluster
        .members()
        .await
        .ok()
        .map(|members| members.into_iter().map(|member| member.id).collect());
    let mut kept: HashMap<String, PendingCall> = pending
        .into_iter()
        .map(|call| (entry_name(&call.key), call))
        .collect();
    let mut run = Vec::new();
    for name in listed
        .into_iter()
        .filter_map(|(holder, name)| (holder == node.id).then_some(name))
    {
        let (entry, revision) = match read(&cluster, &node.id, &name).await {
            Ok(Some(read)) => read,
            Ok(None) => continue,
            Err(error) => {
                tracing::error!("{error}");
                continue;
            }
        };
        let local = kept.remove(&name);
        match entry {
            Entry::Held { call, claimer } => {
                let mine = match claimer {
                    None => Some(revision),
                    Some(claimer) if live.as_ref().is_none_or(|live| live.contains(&claimer)) => {
                        None
                    }
                    // Its claimer was lost too: this node keeps it.
                    Some(_) => {
                        let unclaimed = Entry::Held {
                            call: call.clone(),
                            claimer: None,
                        };
                        cluster
                            .update_call(&node.id, &name, &unclaimed.to_vec(), revision)
                            .await
                            .ok()
                    }
                };
                match (mine, local) {
                    (Some(revision), local) => {
                        take(node, &cluster, (&name, revision), call, local, &mut run).await
                    }
                    (None, Some(local)) => forget(node, &local.key, &local.namespace).await,
                    (None, None) => {}
                }
            }
            Entry::Done {
                outcome,
                error,
                result,
                unstarted,
            } => {
                if let Some(call) = local {
                    // This node's own row of the call the entry is of.
                    let finish = Write::Finish {
                        key: call.key.clone(),
                        created_at: None,
                        state: outcome,
                        now: super::millis(chrono::Utc::now()),
                        error,
                        result: result.as_ref().map(super::to_json),
                        unstarted,
                    };
                    if let Err(error) = node.queue.write(finish).await {
                        tracing::error!("call {} could not be recorded: {error}", call.key);
                        continue;
                    }
                    node.queue.backlog.release(
                        &call.namespace,
                        node.store.event_size(&call.key).ok().flatten().unwrap_or(0),
                    );
                }
                let _ = cluster.delete_call(&node.id, &name, revision).await;
            }
            Entry::Moved { .. } => {
                if let Some(call) = local {
                    forget(node, &call.key, &call.namespace).await;
                }
                let _ = cluster.delete_call(&node.id, &name, revision).await;
            }
        }
    }
    // Calls the cluster has no entry of: written before the node stopped.
    for call in kept.into_values() {
        hold_stored(node, &call.key).await;
        run.push(call);
    }
    run.sort_by_key(|call| call.due_at);
    run
}

/// Runs a call held in the cluster under this node's entry `name` at
/// `revision`: the local copy if there is one, else the entry's, committed
/// here first. An entry of a call this node finished goes.
async fn take(
    node: &Arc<Node>,
    cluster: &Cluster,
    (name, revision): (&str, u64),
    call: Call,
    local: Option<PendingCall>,
    run: &mut Vec<PendingCall>,
) {
    let held = &node.queue.held;
    let committed = match local {
        Some(local) => Some(local),
        // Of a namespace since removed, or corrupt: not run.
        None => match (call.current(node), call.accepted()) {
            (Some(true), Some(call)) => commit(node, call).await,
            _ => None,
        },
    };
    match committed {
        Some(call) => {
            held.revisions
                .lock()
                .expect("held")
                .insert(call.key.clone(), revision);
            run.push(call);
        }
        None => {
            if let Err(error) = cluster.delete_call(&node.id, name, revision).await {
                tracing::warn!("{error}");
            }
        }
    }
}

/// Commits a call taken from the cluster to this node's store and counts
/// it in its namespace's backlog; `None` if this node has a call of its key
/// already, or cannot commit it.
async fn commit(node: &Node, call: NewCall) -> Option<PendingCall> {
    let pending = PendingCall {
        key: call.key(),
        namespace: call.namespace.clone(),
        function: call.function.clone(),
        due_at: call.created_at,
    };
    let size = call.event.len() as u64;
    match node.queue.write(Write::Enqueue(call)).await {
        Ok(Written::Enqueued(true)) => {
            node.queue
                .backlog
                .reserve(&pending.namespace, size, None)
                .expect("a reservation without a quota is always made")
                .keep();
            Some(pending)
        }
        Ok(_) => None,
        Err(error) => {
            tracing::error!("call {} could not be taken over: {error}", pending.key);
            None
        }
    }
}

/// Every [`RESCUE`], until the node is gone: takes over the calls of nodes
/// that stopped heartbeating, writes the entries that could not be written,
/// takes back this node's calls whose claimer was lost, and deletes this
/// node's entries other nodes moved.
pub(crate) async fn rescue(node: std::sync::Weak<Node>) {
    let mut every = tokio::time::interval(RESCUE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Entries of lost nodes that are done or moved, for their node to
    // clear when it comes back: read once, not on every look.
    let mut settled = HashSet::new();
    loop {
        every.tick().await;
        let Some(node) = node.upgrade() else { return };
        let Some(cluster) = node.cluster.clone() else {
            return;
        };
        if let Err(error) = rescue_once(&node, &cluster, &mut settled).await {
            tracing::warn!("looking for the async calls of lost nodes: {error}");
        }
    }
}

async fn rescue_once(
    node: &Arc<Node>,
    cluster: &Cluster,
    settled: &mut HashSet<(String, String)>,
) -> Result<(), ClusterError> {
    let unwritten: Vec<String> = node
        .queue
        .held
        .unwritten
        .lock()
        .expect("held")
        .drain()
        .collect();
    for key in unwritten {
        hold_stored(node, &key).await;
    }
    let live: HashSet<String> = cluster
        .members()
        .await?
        .into_iter()
        .map(|member| member.id)
        .collect();
    // A node that does not see itself listed may be the one the others
    // take calls from: it takes none.
    if !live.contains(&node.id) {
        return Ok(());
    }
    let mine: HashSet<String> = node
        .queue
        .held
        .revisions
        .lock()
        .expect("held")
        .keys()
        .map(|key| entry_name(key))
        .collect();
    let listed = cluster.call_entries().await?;
    settled.retain(|entry| listed.contains(entry));
    for (holder, name) in listed {
        if holder == node.id {
            if !mine.contains(&name) {
                take_back(node, cluster, &name, &live).await?;
            }
        } else if !live.contains(&holder)
            && !settled.contains(&(holder.clone(), name.clone()))
            && !take_over(node, cluster, &holder, &name, &live).await?
        {
            settled.insert((holder, name));
        }
    }
    Ok(())
}

/// An entry of this node's it does not know of: one other nodes moved
/// goes; one whose claimer was lost before it took the call is taken back.
async fn take_back(
    node: &Arc<Node>,
    cluster: &Cluster,
    name: &str,
    live: &HashSet<String>,
) -> Result<(), ClusterError> {
    match read(cluster, &node.id, name).await? {
        Some((Entry::Moved { .. }, revision)) => {
            cluster.delete_call(&node.id, name, revision).await
        }
        Some((
            Entry::Held {
                call,
                claimer: Some(claimer),
            },
            revision,
        )) if !live.contains(&claimer) => {
            if cluster.call_entry(&claimer, name).await?.is_some() {
                // The claimer held it before it was lost: taken over from there.
                let moved = Entry::Moved { to: claimer }.to_vec();
                cluster
                    .update_call(&node.id, name, &moved, revision)
                    .await?;
                return Ok(());
            }
            let unclaimed = Entry::Held {
                call,
                claimer: None,
            };
            let revision = cluster
                .update_call(&node.id, name, &unclaimed.to_vec(), revision)
                .await?;
            let Entry::Held { call, .. } = unclaimed else {
                unreachable!("built as held")
            };
            let mut run = Vec::new();
            take(node, cluster, (name, revision), call, None, &mut run).await;
            for pending in run {
                Queue::schedule(node, pending, Duration::ZERO);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Takes over call `name` of lost node `lost`, unless another live node
/// is; `false` when the entry is done or moved (its node's to clear).
async fn take_over(
    node: &Arc<Node>,
    cluster: &Cluster,
    lost: &str,
    name: &str,
    live: &HashSet<String>,
) -> Result<bool, ClusterError> {
    let (call, claimer, revision) = match read(cluster, lost, name).await? {
        Some((Entry::Held { call, claimer }, revision)) => (call, claimer, revision),
        Some(_) => return Ok(false),
        None => return Ok(true),
    };
    if let Some(claimer) = &claimer {
        if live.contains(claimer) && *claimer != node.id {
            return Ok(true);
        }
        // A lost claimer that held the call already: its entry is taken over on its own.
        if *claimer != node.id && cluster.call_entry(claimer, name).await?.is_some() {
            let moved = Entry::Moved {
                to: claimer.clone(),
            }
            .to_vec();
            let _ = cluster.update_call(lost, name, &moved, revision).await;
            return Ok(false);
        }
    }
    let accepted = match (call.current(node), call.clone().accepted()) {
        // This node does not hold its namespace yet: later.
        (None, _) => return Ok(true),
        (Some(true), Some(accepted)) => accepted,
        _ => {
            tracing::warn!(
                "call {lost}.{name} of the cluster is corrupt or of a namespace since removed: not run"
            );
            cluster.delete_call(lost, name, revision).await?;
            return Ok(true);
        }
    };
    let claimed = Entry::Held {
        call,
        claimer: Some(node.id.clone()),
    };
    let revision = match cluster
        .update_call(lost, name, &claimed.to_vec(), revision)
        .await
    {
        Ok(revision) => revision,
        Err(ClusterError::Conflict(_)) => return Ok(true),
        Err(error) => return Err(error),
    };
    if let Err(error) = hold_taken(node, cluster, lost, name, accepted).await {
        // Left claimed, the call would wait for this node: unclaimed, it is
        // taken over again on the next look.
        let Entry::Held { call, .. } = claimed else {
            unreachable!("built as held")
        };
        let unclaimed = Entry::Held {
            call,
            claimer: None,
        };
        let _ = cluster
            .update_call(lost, name, &unclaimed.to_vec(), revision)
            .await;
        return Err(error);
    }
    let moved = Entry::Moved {
        to: node.id.clone(),
    };
    let _ = cluster
        .update_call(lost, name, &moved.to_vec(), revision)
        .await;
    Ok(false)
}

/// Holds a call claimed from lost node `lost` here: its entry under this
/// node, its row in this node's store, its turn in the queue.
async fn hold_taken(
    node: &Arc<Node>,
    cluster: &Cluster,
    lost: &str,
    name: &str,
    accepted: NewCall,
) -> Result<(), ClusterError> {
    let key = accepted.key();
    // A call of that key here already (one id queued through two nodes)
    // is the same call, as on a single node: the lost node's copy goes.
    if node.store.call(&key).ok().flatten().is_some() {
        return Ok(());
    }
    let Some(mine) = create(cluster, &node.id, name, &Entry::held(node, &accepted)).await? else {
        return Ok(());
    };
    let id = accepted.id.clone();
    match commit(node, accepted).await {
        Some(pending) => {
            node.queue
                .held
                .revisions
                .lock()
                .expect("held")
                .insert(key, mine);
            node.queue
                .counters
                .redelivered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(target: "wisp::call", call_id = %id, "taken over from lost node {lost}");
            Queue::schedule(node, pending, Duration::ZERO);
            Ok(())
        }
        None => cluster.delete_call(&node.id, name, mine).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(body: &str) -> CallResult {
        CallResult {
            status: 200,
            headers: [("content-type".to_owned(), "image/png".to_owned())].into(),
            body: body.to_owned(),
            truncated: false,
        }
    }

    type Done = (CallState, Option<String>, Option<CallResult>, Option<i64>);

    fn done(value: &[u8]) -> Done {
        match serde_json::from_slice(value).expect("an entry") {
            Entry::Done {
                outcome,
                error,
                result,
                unstarted,
            } => (outcome, error, result, unstarted),
            _ => panic!("not a done entry"),
        }
    }

    fn outcome<'a>(
        state: CallState,
        error: Option<&'a str>,
        result: Option<&'a CallResult>,
    ) -> Outcome<'a> {
        Outcome {
            state,
            error,
            result,
            unstarted: Some(7),
        }
    }

    #[test]
    fn a_done_entry_keeps_the_whole_outcome() {
        let thumbnail = result("thumbnail");
        let value = Entry::done(
            &outcome(CallState::Succeeded, None, Some(&thumbnail)),
            1 << 20,
        );
        assert_eq!(
            done(&value),
            (CallState::Succeeded, None, Some(thumbnail), Some(7))
        );
        let value = Entry::done(&outcome(CallState::Dead, Some("timed out"), None), 1 << 20);
        assert_eq!(
            done(&value),
            (CallState::Dead, Some("timed out".to_owned()), None, Some(7))
        );
    }

    #[test]
    fn a_result_too_large_for_a_message_keeps_its_status_and_headers_and_is_marked_cut() {
        let body = result(&"\u{1}".repeat(4096));
        let value = Entry::done(&outcome(CallState::Succeeded, None, Some(&body)), 1024);
        assert!(value.len() <= 1024);
        let (outcome, _, kept, _) = done(&value);
        assert_eq!(outcome, CallState::Succeeded);
        let kept = kept.expect("a result");
        assert_eq!(
            (kept.status, kept.body.as_str(), kept.truncated),
            (200, "", true)
        );
        assert_eq!(kept.headers, result("").headers);
    }

    #[test]
    fn an_outcome_too_large_even_without_its_body_keeps_its_state_and_the_start_of_its_error() {
        let many = result("");
        let many = CallResult {
            headers: (0..100)
                .map(|n| (format!("x-{n}"), "v".repeat(100)))
                .collect(),
            ..many
        };
        let error = "é".repeat(2000);
        let value = Entry::done(&outcome(CallState::Dead, Some(&error), Some(&many)), 4096);
        assert!(value.len() <= 4096, "{}", value.len());
        let (state, kept, result, unstarted) = done(&value);
        assert_eq!((state, result, unstarted), (CallState::Dead, None, Some(7)));
        assert!(error.starts_with(&kept.expect("an error")));
    }

    #[test]
    fn an_entry_from_a_node_of_an_earlier_version_is_read() {
        let read = done(br#"{"state":"done","outcome":"failed"}"#);
        assert_eq!(read, (CallState::Failed, None, None, None));
    }
}
