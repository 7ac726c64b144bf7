//! Events: the durable queue of async calls and the workers that run them,
//! with retries, dead letters and callbacks; and the triggers (cron, NATS,
//! MQTT, key-value changes) that feed it.
//!
//! Every call is committed to the store before it is acknowledged
//! ([`writer`]), so a crash loses nothing: at start-up, queued calls are
//! scheduled again and calls that were running are run again (at-least-once).
//! The scheduler keeps ids in memory, one FIFO per function, and starts
//! calls round-robin across functions, within the node's worker pool and each
//! function's `async_concurrency`. A call this node has just accepted also
//! keeps its event there (up to [`FRESH_MEMORY`]), so its first attempt
//! starts without reading it back, and its start is written only once the
//! attempt has run for [`START_AFTER`]: a quick call costs two writes, its
//! acceptance and its outcome. What each namespace may hold in the queue is
//! bounded by its [`backlog`] quota.

mod amqp;
mod backlog;
mod callback;
mod cron;
mod handoff;
pub(crate) mod kv;
mod mqtt;
mod nats;
pub(crate) mod objects;
mod postgres;
pub(crate) mod record;
mod redis;
pub(crate) mod routes;
pub(crate) mod triggers;
mod writer;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use http_body_util::BodyExt as _;
use wisp_core::{
    CallState,
    events::{CallResult, QueueInfo},
    telemetry::{CallSource, LogStream},
};
use wisp_runtime::{Executor, Invocation, InvokeError};
use wisp_store::{NewCall, PendingCall, StartedCall, Store};

use crate::{
    dispatch::{self, Active},
    node::{Node, Runner},
};
pub use writer::{Write, Writer, Written};

/// How much of a result body is kept with the call.
pub const RESULT_LIMIT: usize = 256 << 10;
/// How long succeeded and failed calls are kept; dead letters stay until retried.
const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How many bytes of the events of calls just accepted the scheduler keeps
/// in memory for their first attempt; beyond, an attempt reads its call.
const FRESH_MEMORY: usize = 64 << 20;
/// How long the first attempt of a call just accepted runs before its start
/// is written. A quicker one is recorded once, when it ends; one a stop
/// interrupts sooner runs again as if it had not started.
const START_AFTER: Duration = Duration::from_millis(200);

/// A function's key: `(namespace, name)`.
type Key = (String, String);

/// The milliseconds since the Unix epoch of a time.
pub(crate) fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

/// A time as the API and CloudEvents write it: RFC 3339 in UTC, to the millisecond.
pub(crate) fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Calls waiting in memory for one function.
#[derive(Default)]
struct Waiting {
    ids: VecDeque<Queued>,
    running: u32,
}

/// A call waiting in memory to run.
struct Queued {
    key: String,
    /// For a call this node has just accepted: what its first attempt
    /// needs, so it starts without reading the call back.
    fresh: Option<Fresh>,
}

/// What the first attempt of a call just accepted needs, counted against
/// [`FRESH_MEMORY`] until it is taken or dropped.
struct Fresh {
    started: StartedCall,
    size: usize,
    kept: Arc<AtomicUsize>,
    /// The node's namespace removals when the call was accepted.
    removals: u64,
}

impl Fresh {
    fn take(mut self) -> StartedCall {
        std::mem::take(&mut self.started)
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        self.kept.fetch_sub(self.size, Ordering::Relaxed);
    }
}

/// Which call runs next.
#[derive(Default)]
struct Scheduler {
    functions: HashMap<Key, Waiting>,
    /// Functions with waiting calls, in turn order; each appears once.
    turn: VecDeque<Key>,
    running: u32,
}

/// Counters since the node started.
#[derive(Default)]
pub(crate) struct Counters {
    pub enqueued: AtomicU64,
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub redelivered: AtomicU64,
    pub callbacks_delivered: AtomicU64,
    pub callbacks_failed: AtomicU64,
    pub trigger_firings: AtomicU64,
}

/// The async queue of a node.
pub struct Queue {
    writer: Writer,
    scheduler: Mutex<Scheduler>,
    workers: u32,
    pub(crate) counters: Counters,
    /// What each namespace has queued or running, against its queue quota.
    pub(crate) backlog: backlog::Backlog,
    /// The connections of broker triggers.
    pub(crate) links: triggers::Links,
    /// Who waits for a call to be over, by call id.
    waiters: Mutex<HashMap<String, Vec<tokio::sync::oneshot::Sender<CallState>>>>,
    /// In cluster mode, the entries of this node's unfinished calls.
    held: handoff::Held,
    /// The bytes of events the scheduler keeps, against [`FRESH_MEMORY`].
    fresh_bytes: Arc<AtomicUsize>,
    /// Namespaces removed since the node started.
    removals: AtomicU64,
}

/// How one attempt ended.
enum Attempt {
    /// Final: succeeded (1xx-3xx) or failed (4xx).
    Answered(CallState, CallResult, bytes::Bytes),
    /// The call cannot run at all (its function is gone, its record is corrupt): failed.
    Broken(String),
    /// Worth another attempt: 429, 5xx, timeout or crash.
    Failed {
        error: String,
        result: Option<CallResult>,
        status: u16,
        body: bytes::Bytes,
    },
}

impl Queue {
    /// A queue writing to `store` and running at most `workers` calls at once.
    pub fn new(store: Arc<Store>, workers: u32) -> std::io::Result<Self> {
        Ok(Self {
            writer: Writer::start(store)?,
            scheduler: Mutex::default(),
            workers,
            counters: Counters::default(),
            backlog: backlog::Backlog::default(),
            links: Mutex::default(),
            waiters: Mutex::default(),
            held: handoff::Held::default(),
            fresh_bytes: Arc::default(),
            removals: AtomicU64::new(0),
        })
    }

    /// Waits until the call with key `id` is over and answers its final
    /// state; `None` if the node stops first or the call is unknown.
    pub(crate) async fn outcome(&self, store: &Store, id: &str) -> Option<CallState> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters")
            .entry(id.to_owned())
            .or_default()
            .push(sender);
        match store.call(id) {
            Ok(Some(row)) if row.state.is_final() => {
                self.notify(id, row.state);
                Some(row.state)
            }
            Ok(Some(_)) => receiver.await.ok(),
            _ => {
                self.waiters.lock().expect("waiters").remove(id);
                None
            }
        }
    }

    /// Once a namespace is removed, with its calls: no call accepted before
    /// runs from memory any more (it might run on a function of a namespace
    /// made again by the same name); each reads its call, if it is still
    /// there. Whoever waits for the namespace's calls is let go, as they
    /// will never be over.
    pub(crate) fn forget_namespace(&self, namespace: &str) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        let prefixes = [
            format!("caller/{namespace}/"),
            format!("trigger/{namespace}/"),
        ];
        self.waiters
            .lock()
            .expect("waiters")
            .retain(|key, _| !prefixes.iter().any(|prefix| key.starts_with(prefix)));
    }

    fn notify(&self, id: &str, state: CallState) {
        let waiting = self.waiters.lock().expect("waiters").remove(id);
        for waiter in waiting.into_iter().flatten() {
            let _ = waiter.send(state);
        }
    }

    /// Commits a write.
    pub(crate) async fn write(&self, write: Write) -> Result<Written, String> {
        self.writer.write(write).await
    }

    /// At start-up: schedules every call still to run, re-sends pending
    /// callbacks, and starts pruning old calls.
    pub(crate) async fn recover(node: &Arc<Node>) {
        let recovered = {
            let store = node.store.clone();
            tokio::task::spawn_blocking(move || {
                Ok::<_, wisp_store::StoreError>((store.recover_calls()?, store.queue_backlog()?))
            })
            .await
        };
        let ((pending, interrupted), backlog) = match recovered {
            Ok(Ok(recovered)) => recovered,
            Ok(Err(error)) => {
                tracing::error!(
                    "the queue could not be read; queued calls wait until the next start: {error}"
                );
                return;
            }
            Err(error) => {
                tracing::error!("the queue could not be read: {error}");
                return;
            }
        };
        let queue = &node.queue;
        queue.backlog.load(backlog);
        let pending = handoff::reconcile(node, pending).await;
        // Read after reconciling, as a call the cluster saw finish has its
        // callback to send; and before any call runs, as one that finishes
        // sends its own.
        let store = node.store.clone();
        let callbacks = tokio::task::spawn_blocking(move || store.pending_callbacks())
            .await
            .map_err(|error| error.to_string())
            .and_then(|read| read.map_err(|error| error.to_string()));
        if node.cluster.is_some() {
            tokio::spawn(handoff::rescue(Arc::downgrade(node)));
        }
        // What the cluster saw finish before the stop does not run again.
        let redelivered = pending
            .iter()
            .filter(|call| interrupted.contains(&call.key))
            .count() as u64;
        queue
            .counters
            .redelivered
            .fetch_add(redelivered, Ordering::Relaxed);
        if !pending.is_empty() {
            tracing::info!(
                "{} queued calls to run, {redelivered} of them interrupted by the last stop",
                pending.len()
            );
        }
        let now = millis(Utc::now());
        for call in pending {
            let delay = Duration::from_millis(call.due_at.saturating_sub(now).max(0) as u64);
            Self::schedule(node, call, delay);
        }
        match callbacks {
            Ok(callbacks) => {
                for row in callbacks {
                    callback::resume(node, row);
                }
            }
            Err(error) => tracing::error!("pending callbacks could not be read: {error}"),
        }
        let node = Arc::downgrade(node);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                let Some(node) = node.upgrade() else { return };
                let before = millis(Utc::now()) - RETENTION.as_millis() as i64;
                if let Err(error) = node.queue.write(Write::Prune { before }).await {
                    tracing::warn!("could not prune old calls: {error}");
                }
            }
        });
    }

    /// Accepts a call: commits it (with the trigger firing it stands for,
    /// if any), then schedules it. `Ok(false)` if a call with its key exists.
    /// Both happen on a task of their own, so a caller that goes away
    /// mid-way cannot leave a committed call unscheduled.
    pub(crate) async fn enqueue(
        node: &Arc<Node>,
        call: NewCall,
        fired: Option<(String, i64)>,
    ) -> Result<bool, String> {
        let reservation = node
            .queue
            .backlog
            .reserve(&call.namespace, call.event.len() as u64, None)
            .expect("a reservation without a quota is always made");
        Self::enqueue_reserved(node, call, fired, reservation).await
    }

    /// [`Self::enqueue`] for a call already counted in its namespace's
    /// backlog: it stays counted only if it is committed as new.
    pub(crate) async fn enqueue_reserved(
        node: &Arc<Node>,
        call: NewCall,
        fired: Option<(String, i64)>,
        reservation: backlog::Reservation,
    ) -> Result<bool, String> {
        let pending = PendingCall {
            key: call.key(),
            namespace: call.namespace.clone(),
            function: call.function.clone(),
            due_at: call.created_at,
        };
        // What the cluster's entry of the call needs, in cluster mode.
        let shared = node.cluster.is_some().then(|| call.clone());
        let fresh = node.queue.keep_fresh(&call);
        let write = match fired {
            Some((trigger, fired_at)) => Write::Fire {
                call,
                trigger,
                fired_at,
            },
            None => Write::Enqueue(call),
        };
        let node = node.clone();
        let accepted = tokio::spawn(async move {
            let Written::Enqueued(new) = node.queue.write(write).await? else {
                unreachable!("an enqueue answers Enqueued")
            };
            if new {
                reservation.keep();
                node.queue.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                let held = match shared {
                    Some(call) => handoff::hold(&node, &call).await,
                    None => true,
                };
                if held {
                    node.queue.push(&node, pending, fresh);
                }
            }
            Ok(new)
        });
        accepted.await.map_err(|error| error.to_string())?
    }

    /// Queues the finished call with key `key` again with fresh attempts;
    /// `Ok(false)` if it is not finished or does not exist. Like
    /// [`Self::enqueue`], on a task of its own.
    pub(crate) async fn requeue(node: &Arc<Node>, key: String) -> Result<bool, String> {
        let node = node.clone();
        let requeued = tokio::spawn(async move {
            let write = Write::Requeue {
                key,
                now: millis(Utc::now()),
            };
            match node.queue.write(write).await? {
                Written::Requeued(Some(pending)) => {
                    // Queued again, it counts in its namespace's backlog again.
                    let size = node.store.event_size(&pending.key).ok().flatten();
                    node.queue
                        .backlog
                        .reserve(&pending.namespace, size.unwrap_or(0), None)
                        .expect("a reservation without a quota is always made")
                        .keep();
                    handoff::hold_stored(&node, &pending.key).await;
                    Self::schedule(&node, pending, Duration::ZERO);
                    Ok(true)
                }
                _ => Ok(false),
            }
        });
        requeued.await.map_err(|error| error.to_string())?
    }

    /// Holds a call until `delay` has passed, then lets it take its turn.
    pub(crate) fn schedule(node: &Arc<Node>, call: PendingCall, delay: Duration) {
        if delay.is_zero() {
            node.queue.push(node, call, None);
            return;
        }
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            node.queue.push(&node, call, None);
        });
    }

    /// What the first attempt of `call`, being accepted, needs; `None`
    /// when the scheduler already keeps [`FRESH_MEMORY`] of events.
    fn keep_fresh(&self, call: &NewCall) -> Option<Fresh> {
        let removals = self.removals.load(Ordering::SeqCst);
        let size = call.event.len();
        self.fresh_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
                (kept + size <= FRESH_MEMORY).then_some(kept + size)
            })
            .ok()?;
        Some(Fresh {
            started: StartedCall {
                id: call.id.clone(),
                created_at: call.created_at,
                event: call.event.clone(),
                attempts: 1,
                callback_url: call.callback_url.clone(),
            },
            size,
            kept: self.fresh_bytes.clone(),
            removals,
        })
    }

    fn push(&self, node: &Arc<Node>, call: PendingCall, fresh: Option<Fresh>) {
        {
            let mut scheduler = self.scheduler.lock().expect("scheduler");
            let key = (call.namespace, call.function);
            let waiting = scheduler.functions.entry(key.clone()).or_default();
            if waiting.ids.is_empty() {
                scheduler.turn.push_back(key.clone());
            }
            scheduler
                .functions
                .get_mut(&key)
                .expect("just inserted")
                .ids
                .push_back(Queued {
                    key: call.key,
                    fresh,
                });
        }
        self.pump(node);
    }

    /// Starts as many waiting calls as the worker pool and each function's
    /// `async_concurrency` allow, taking functions in turn.
    fn pump(&self, node: &Arc<Node>) {
        let mut starts = Vec::new();
        {
            let mut scheduler = self.scheduler.lock().expect("scheduler");
            let mut skipped = 0;
            while scheduler.running < self.workers && skipped < scheduler.turn.len() {
                let key = scheduler.turn.pop_front().expect("turn is not empty");
                let limit = node
                    .function(&key.0, &key.1)
                    .and_then(|function| function.spec.asynchronous.concurrency)
                    .unwrap_or(u32::MAX);
                let waiting = scheduler.functions.get_mut(&key).expect("a turn has calls");
                if waiting.running >= limit {
                    scheduler.turn.push_back(key);
                    skipped += 1;
                    continue;
                }
                let queued = waiting.ids.pop_front().expect("a turn has calls");
                waiting.running += 1;
                let more = !waiting.ids.is_empty();
                scheduler.running += 1;
                if more {
                    scheduler.turn.push_back(key.clone());
                }
                skipped = 0;
                starts.push((key, queued));
            }
        }
        for (key, queued) in starts {
            let node = node.clone();
            tokio::spawn(async move {
                Self::run(&node, &key, queued).await;
                {
                    let mut scheduler = node.queue.scheduler.lock().expect("scheduler");
                    scheduler.running -= 1;
                    if let Some(waiting) = scheduler.functions.get_mut(&key) {
                        waiting.running -= 1;
                        if waiting.running == 0 && waiting.ids.is_empty() {
                            scheduler.functions.remove(&key);
                        }
                    }
                }
                node.queue.pump(&node);
            });
        }
    }

    /// Runs one attempt of a call and records what came of it.
    async fn run(node: &Arc<Node>, key: &Key, queued: Queued) {
        let queue = &node.queue;
        let now = millis(Utc::now());
        let call_key = queued.key;
        if let Some(fresh) = queued.fresh
            && fresh.removals == queue.removals.load(Ordering::SeqCst)
        {
            let started = fresh.take();
            queue.counters.attempts.fetch_add(1, Ordering::Relaxed);
            let (attempt, unstarted) =
                Self::first_attempt(node, key, &call_key, &started, now).await;
            Self::settle(node, key, call_key, started, attempt, unstarted).await;
            return;
        }
        let started = match queue
            .write(Write::Start {
                key: call_key.clone(),
                created_at: None,
                now,
            })
            .await
        {
            Ok(Written::Started(Some(started))) => started,
            Ok(_) => return, // no longer queued: retried by hand or pruned
            Err(error) => {
                tracing::error!("call {call_key} could not start, trying again in 1s: {error}");
                let call = PendingCall {
                    key: call_key,
                    namespace: key.0.clone(),
                    function: key.1.clone(),
                    due_at: now,
                };
                Self::schedule(node, call, Duration::from_secs(1));
                return;
            }
        };
        queue.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let attempt = Self::attempt(node, key, &started.id, &started.event).await;
        Self::settle(node, key, call_key, started, attempt, None).await;
    }

    /// Runs the first attempt of a call this node has just accepted, begun
    /// at `now`, without writing its start unless it runs for
    /// [`START_AFTER`]. Answers how it ended and, if its start is still not
    /// written, when it began.
    async fn first_attempt(
        node: &Arc<Node>,
        key: &Key,
        call_key: &str,
        started: &StartedCall,
        now: i64,
    ) -> (Attempt, Option<i64>) {
        let attempt = Self::attempt(node, key, &started.id, &started.event);
        tokio::pin!(attempt);
        tokio::select! {
            biased;
            ended = &mut attempt => (ended, Some(now)),
            () = tokio::time::sleep(START_AFTER) => {
                let start = node.queue.write(Write::Start {
                    key: call_key.to_owned(),
                    created_at: Some(started.created_at),
                    now,
                });
                let (ended, written) = tokio::join!(attempt, start);
                let written = matches!(written, Ok(Written::Started(Some(_))));
                (ended, (!written).then_some(now))
            }
        }
    }

    /// Runs a started call's request on its function.
    async fn attempt(node: &Arc<Node>, key: &Key, id: &str, event: &[u8]) -> Attempt {
        match record::CloudEvent::decode(event) {
            Ok(event) => match node.function(&key.0, &key.1) {
                Some(function) => {
                    let request = event.request();
                    let invocation = Invocation {
                        call_id: id.to_owned(),
                        method: request.method,
                        path: request.path,
                        query: request.query,
                        headers: request.headers,
                        body: request.body.into(),
                        streamed: false,
                        depth: 0,
                        deadline: tokio::time::Instant::now()
                            + function.spec.asynchronous.timeout.0,
                        meter: Arc::default(),
                    };
                    let _active = Active::enter(&function, node);
                    let limit = dispatch::body_limit(node, &function) as usize;
                    let deadline = invocation.deadline;
                    let attempt = read_outcome(
                        dispatch::invoke(node, &function, invocation, CallSource::Queue).await,
                        limit,
                        deadline,
                    )
                    .await;
                    // A command's STDOUT is its response: no caller waits for
                    // an async one, so it goes to the log.
                    if let Attempt::Answered(_, _, body) = &attempt
                        && node.config.telemetry
                        && matches!(
                            function.runner,
                            Runner::Executor(Executor::WasmStdio(_) | Executor::Process(_))
                        )
                    {
                        let shown = &body[..body.len().min(wisp_runtime::wasm::MAX_STDERR)];
                        node.output(&function.spec)
                            .lines(Some(id), LogStream::Stdout, shown);
                    }
                    attempt
                }
                None => Attempt::Broken(format!("function {}.{} is not deployed", key.1, key.0)),
            },
            Err(error) => Attempt::Broken(format!(
                "the stored call is corrupt and cannot run: {error}"
            )),
        }
    }

    /// Records how an attempt ended: queued again after a backoff, or final
    /// (with its callback sent).
    async fn settle(
        node: &Arc<Node>,
        key: &Key,
        call_key: String,
        started: StartedCall,
        attempt: Attempt,
        unstarted: Option<i64>,
    ) {
        let queue = &node.queue;
        let now = millis(Utc::now());
        let (state, error, result, status, body) = match attempt {
            Attempt::Answered(state, result, body) => {
                (state, None, Some(result.clone()), result.status, body)
            }
            Attempt::Broken(error) => {
                let body = serde_json::json!({ "error": error }).to_string();
                (CallState::Failed, Some(error), None, 500, body.into())
            }
            Attempt::Failed {
                error,
                result,
                status,
                body,
            } => {
                let policy = node
                    .function(&key.0, &key.1)
                    .map(|function| function.spec.asynchronous.clone())
                    .unwrap_or_default();
                if started.attempts <= policy.retries {
                    let delay = policy.retry_delay(started.attempts, jitter());
                    let id = &started.id;
                    let retry = Write::Retry {
                        key: call_key.clone(),
                        created_at: Some(started.created_at),
                        due_at: now + delay.as_millis() as i64,
                        error: error.clone(),
                        result: result.as_ref().map(to_json),
                        unstarted,
                    };
                    match queue.write(retry).await {
                        Ok(Written::Recorded(false)) => gone(id),
                        Ok(_) => {
                            queue.counters.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(target: "wisp::call", call_id = %id, attempt = started.attempts, "retrying in {}ms: {error}", delay.as_millis());
                            let call = PendingCall {
                                key: call_key,
                                namespace: key.0.clone(),
                                function: key.1.clone(),
                                due_at: now,
                            };
                            Self::schedule(node, call, delay);
                        }
                        Err(store) => {
                            tracing::error!("call {id} could not be queued for a retry: {store}")
                        }
                    }
                    return;
                }
                (CallState::Dead, Some(error), result, status, body)
            }
        };
        let id = started.id;
        let outcome = handoff::Outcome {
            state,
            error: error.as_deref(),
            result: result.as_ref(),
            unstarted,
        };
        if !handoff::settle(node, &call_key, outcome).await {
            // Another node took the call over: its outcome is recorded there.
            handoff::forget(node, &call_key, &key.0).await;
            return;
        }
        let finish = Write::Finish {
            key: call_key.clone(),
            created_at: Some(started.created_at),
            state,
            now,
            error: error.clone(),
            result: result.as_ref().map(to_json),
            unstarted,
        };
        match queue.write(finish).await {
            Ok(Written::Recorded(false)) => {
                handoff::release(node, &call_key);
                return gone(&id);
            }
            Ok(_) => {}
            Err(store) => {
                tracing::error!("call {id} could not be recorded as {state}: {store}");
                return;
            }
        }
        handoff::release(node, &call_key);
        queue.backlog.release(&key.0, started.event.len() as u64);
        queue.notify(&call_key, state);
        if state == CallState::Dead {
            tracing::warn!(target: "wisp::call", call_id = %id, "dead after {} attempts: {}", started.attempts, error.unwrap_or_default());
        }
        if let Some(url) = started.callback_url {
            let headers = result.map(|result| result.headers).unwrap_or_default();
            let function = format!("{}.{}", key.1, key.0);
            callback::deliver(node, call_key, id, function, url, status, headers, body);
        }
    }

    /// The queue's counters and gauges, for `/system/info`.
    pub(crate) fn info(&self, store: &Store) -> Result<QueueInfo, wisp_store::StoreError> {
        let counts = store.queue_counts()?;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        Ok(QueueInfo {
            depth: counts.queued,
            running: counts.running,
            dead: counts.dead,
            enqueued: load(&counters.enqueued),
            attempts: load(&counters.attempts),
            retries: load(&counters.retries),
            redelivered: load(&counters.redelivered),
            callbacks_delivered: load(&counters.callbacks_delivered),
            callbacks_failed: load(&counters.callbacks_failed),
            trigger_firings: load(&counters.trigger_firings),
        })
    }
}

/// Says that the call with id `id` was removed while it ran (with its
/// namespace): its outcome is not recorded, nor sent to its callback.
fn gone(id: &str) {
    tracing::info!(target: "wisp::call", call_id = %id, "the call was removed while it ran: its outcome is not recorded");
}

fn to_json(result: &CallResult) -> String {
    serde_json::to_string(result).expect("a result serializes")
}

/// A random number in `0.0..1.0` for retry jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

/// Reads the outcome of one attempt, the response body up to `limit` and the deadline.
async fn read_outcome(
    outcome: Result<wisp_runtime::Response, InvokeError>,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Attempt {
    let response = match outcome {
        Ok(response) => response,
        Err(error) => {
            let status = dispatch::status_of(&error).as_u16();
            let body = serde_json::json!({ "error": error.to_string() }).to_string();
            return Attempt::Failed {
                error: error.to_string(),
                result: None,
                status,
                body: body.into(),
            };
        }
    };
    let (mut parts, body) = response.into_parts();
    let running = parts.extensions.remove::<wisp_runtime::GuestRunning>();
    let read = tokio::time::timeout_at(deadline, read_prefix(body, limit)).await;
    // A guest may go on running after its answer (and after its body is
    // dropped past `limit`): the attempt, and so its worker and its
    // `asyncConcurrency` share, lasts until the guest is done, which its
    // deadline bounds.
    if let Some(running) = running {
        let _ = tokio::time::timeout_at(deadline, running.finished()).await;
    }
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => {
            return Attempt::Failed {
                error: format!("the response body could not be read: {error}"),
                result: None,
                status: 502,
                body: bytes::Bytes::new(),
            };
        }
        Err(_) => {
            return Attempt::Failed {
                error: "the function timed out while writing its response".into(),
                result: None,
                status: 504,
                body: bytes::Bytes::new(),
            };
        }
    };
    let status = parts.status.as_u16();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    let kept = &body[..body.len().min(RESULT_LIMIT)];
    let result = CallResult {
        status,
        headers,
        body: String::from_utf8_lossy(kept).into_owned(),
        truncated: kept.len() < body.len(),
    };
    match status {
        429 | 500.. => Attempt::Failed {
            error: format!("the function answered {status}"),
            result: Some(result),
            status,
            body,
        },
        400..=499 => Attempt::Answered(CallState::Failed, result, body),
        _ => Attempt::Answered(CallState::Succeeded, result, body),
    }
}

/// Reads a response body up to `limit` bytes; the rest is dropped.
async fn read_prefix(
    mut body: wisp_runtime::ResponseBody,
    limit: usize,
) -> Result<bytes::Bytes, String> {
    let mut kept = bytes::BytesMut::new();
    while kept.len() < limit
        && let Some(frame) = body.frame().await
    {
        let frame = frame.map_err(|error| error.to_string())?;
        if let Ok(data) = frame.into_data() {
            let room = limit - kept.len();
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(kept.freeze())
}
