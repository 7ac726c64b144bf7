//! The queue's writer: one thread that owns every write to the queue and
//! commits whatever arrived while it was busy in one transaction (group
//! commit). A 202 is answered only once its call is committed, and a burst of
//! enqueues costs one commit, not one each.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use wisp_core::CallState;
use wisp_store::{Attempted, NewCall, PendingCall, QueueBatch, StartedCall, Store, StoreError};

/// The most writes committed together.
const MAX_BATCH: usize = 1024;

/// One write to the queue.
pub enum Write {
    /// Accept a call.
    Enqueue(NewCall),
    /// Accept a trigger's call and record that the trigger fired, atomically.
    Fire {
        /// The call.
        call: NewCall,
        /// The trigger's label.
        trigger: String,
        /// The firing time, in milliseconds.
        fired_at: i64,
    },
    /// Take a queued call for an attempt.
    Start {
        /// The call's key.
        key: String,
        /// When the call was accepted, if the attempt is of a known one.
        created_at: Option<i64>,
        /// Now.
        now: i64,
    },
    /// Record a final state.
    Finish {
        /// The call's key.
        key: String,
        /// When the call was accepted, if known.
        created_at: Option<i64>,
        /// Succeeded, failed or dead.
        state: CallState,
        /// Now.
        now: i64,
        /// Why the last attempt failed.
        error: Option<String>,
        /// The last result as JSON.
        result: Option<String>,
        /// When the last attempt began, if its start was not written.
        unstarted: Option<i64>,
    },
    /// Queue a failed attempt's call again.
    Retry {
        /// The call's key.
        key: String,
        /// When the call was accepted.
        created_at: Option<i64>,
        /// When the next attempt is due.
        due_at: i64,
        /// Why this attempt failed.
        error: String,
        /// This attempt's result as JSON.
        result: Option<String>,
        /// When this attempt began, if its start was not written.
        unstarted: Option<i64>,
    },
    /// Queue a finished call again.
    Requeue {
        /// The call's key.
        key: String,
        /// Now.
        now: i64,
    },
    /// Record how a callback went.
    Callback {
        /// The call's key.
        key: String,
        /// `delivered` or `failed`.
        state: &'static str,
    },
    /// Forget a call another node took over.
    Forget {
        /// The call's key.
        key: String,
    },
    /// Forget finished calls older than this.
    Prune {
        /// The cut-off.
        before: i64,
    },
}

/// What a write answers.
pub enum Written {
    /// `Enqueue` and `Fire`: whether the call was new.
    Enqueued(bool),
    /// `Start`: the call, if it was queued.
    Started(Option<StartedCall>),
    /// `Requeue`: the call, if it was finished.
    Requeued(Option<PendingCall>),
    /// `Forget`: whether the call was there, unfinished.
    Forgotten(bool),
    /// `Finish` and `Retry`: whether the call was there.
    Recorded(bool),
    /// Anything else.
    Done,
}

impl Write {
    fn apply(&self, batch: &QueueBatch<'_>) -> Result<Written, StoreError> {
        Ok(match self {
            Self::Enqueue(call) => Written::Enqueued(batch.enqueue(call)?),
            Self::Fire {
                call,
                trigger,
                fired_at,
            } => {
                let new = batch.enqueue(call)?;
                batch.set_fired(&call.namespace, &call.function, trigger, *fired_at)?;
                Written::Enqueued(new)
            }
            Self::Start {
                key,
                created_at,
                now,
            } => Written::Started(batch.start(attempted(key, *created_at), *now)?),
            Self::Finish {
                key,
                created_at,
                state,
                now,
                error,
                result,
                unstarted,
            } => Written::Recorded(batch.finish(
                attempted(key, *created_at),
                *state,
                *now,
                error.as_deref(),
                result.as_deref(),
                *unstarted,
            )?),
            Self::Retry {
                key,
                created_at,
                due_at,
                error,
                result,
                unstarted,
            } => Written::Recorded(batch.retry(
                attempted(key, *created_at),
                *due_at,
                error,
                result.as_deref(),
                *unstarted,
            )?),
            Self::Requeue { key, now } => Written::Requeued(batch.requeue(key, *now)?),
            Self::Callback { key, state } => {
                batch.set_callback_state(key, state)?;
                Written::Done
            }
            Self::Forget { key } => Written::Forgotten(batch.forget(key)?),
            Self::Prune { before } => {
                batch.prune(*before)?;
                Written::Done
            }
        })
    }
}

fn attempted(key: &str, created_at: Option<i64>) -> Attempted<'_> {
    Attempted { key, created_at }
}

type Reply = oneshot::Sender<Result<Written, String>>;

/// The handle to the writer thread.
pub struct Writer {
    sender: mpsc::UnboundedSender<(Write, Reply)>,
}

impl Writer {
    /// Starts the writer thread on `store`.
    pub fn start(store: Arc<Store>) -> std::io::Result<Self> {
        let (sender, mut receiver) = mpsc::unbounded_channel::<(Write, Reply)>();
        std::thread::Builder::new()
            .name("wisp-queue-writer".into())
            .spawn(move || {
                while let Some(first) = receiver.blocking_recv() {
                    let mut writes = vec![first];
                    while writes.len() < MAX_BATCH
                        && let Ok(next) = receiver.try_recv()
                    {
                        writes.push(next);
                    }
                    let applied = store.batch(|batch| {
                        writes
                            .iter()
                            .map(|(write, _)| write.apply(batch).map_err(|e| e.to_string()))
                            .collect::<Vec<_>>()
                    });
                    match applied {
                        Ok(results) => {
                            for ((_, reply), result) in writes.into_iter().zip(results) {
                                let _ = reply.send(result);
                            }
                        }
                        Err(error) => {
                            tracing::error!("the queue could not commit: {error}");
                            let message = error.to_string();
                            for (_, reply) in writes {
                                let _ = reply.send(Err(message.clone()));
                            }
                        }
                    }
                }
            })?;
        Ok(Self { sender })
    }

    /// Commits one write and answers what it did; the error is the store's message.
    pub async fn write(&self, write: Write) -> Result<Written, String> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((write, reply))
            .map_err(|_| "the queue writer has stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the queue writer has stopped".to_owned())?
    }
}
