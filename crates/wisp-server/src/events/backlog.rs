//! The queue's quota per namespace: how many async calls, and how many bytes
//! of them (their stored requests), a namespace may have queued or running.
//!
//! Counted in memory and kept exact by the queue's transitions: a call
//! counts from the moment its enqueue is admitted (before it is committed,
//! so two enqueues at once cannot both take the last place) until it reaches
//! a final state; a call retried by hand counts again. At start-up the counts
//! are read from the store. Triggers' events count too, but only callers are
//! refused: a tick or a broker message is not something to turn away.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use wisp_core::ByteSize;

/// What a namespace holds in the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    calls: u64,
    bytes: u64,
}

/// The bounds on a namespace's backlog.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueQuota {
    /// Calls queued or running.
    pub calls: u64,
    /// Bytes of their stored requests.
    pub bytes: u64,
}

/// An enqueue that would take a namespace over its queue quota: a 429.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueueQuotaExceeded {
    /// One call too many.
    #[error(
        "namespace {namespace} has {max} async calls queued or running, its quota (max_queued_calls): \
         try again once some have run"
    )]
    Calls {
        /// The namespace.
        namespace: String,
        /// Its quota.
        max: u64,
    },
    /// Too many bytes.
    #[error(
        "namespace {namespace}'s queued async calls would take {}, over its quota of {} (max_queued_bytes): \
         try again once some have run",
        ByteSize(*used), ByteSize(*max)
    )]
    Bytes {
        /// The namespace.
        namespace: String,
        /// What its calls would take with this one.
        used: u64,
        /// Its quota.
        max: u64,
    },
}

/// Every namespace's backlog.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backlog(Arc<Mutex<HashMap<String, Usage>>>);

impl Backlog {
    fn usage(&self) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
        self.0.lock().expect("backlog")
    }

    /// Replaces the counts with the store's, at start-up.
    pub(crate) fn load(&self, rows: impl IntoIterator<Item = (String, u64, u64)>) {
        let mut usage = self.usage();
        usage.clear();
        for (namespace, calls, bytes) in rows {
            usage.insert(namespace, Usage { calls, bytes });
        }
    }

    /// Counts a call of `bytes` in `namespace` if `quota` (when given)
    /// leaves room for it; released when the reservation is dropped unkept.
    pub(crate) fn reserve(
        &self,
        namespace: &str,
        bytes: u64,
        quota: Option<QueueQuota>,
    ) -> Result<Reservation, QueueQuotaExceeded> {
        let mut usage = self.usage();
        let held = usage.entry(namespace.to_owned()).or_default();
        if let Some(quota) = quota {
            if held.calls >= quota.calls {
                return Err(QueueQuotaExceeded::Calls {
                    namespace: namespace.to_owned(),
                    max: quota.calls,
                });
            }
            let used = held.bytes.saturating_add(bytes);
            if used > quota.bytes {
                return Err(QueueQuotaExceeded::Bytes {
                    namespace: namespace.to_owned(),
                    used,
                    max: quota.bytes,
                });
            }
        }
        held.calls += 1;
        held.bytes = held.bytes.saturating_add(bytes);
        Ok(Reservation {
            backlog: self.clone(),
            namespace: namespace.to_owned(),
            bytes,
            kept: false,
        })
    }

    /// What each namespace holds: its calls and their bytes.
    pub(crate) fn held(&self) -> Vec<(String, u64, u64)> {
        self.usage()
            .iter()
            .map(|(namespace, usage)| (namespace.clone(), usage.calls, usage.bytes))
            .collect()
    }

    /// Forgets a removed namespace's counts: its calls were deleted with it.
    pub(crate) fn forget(&self, namespace: &str) {
        self.usage().remove(namespace);
    }

    /// Uncounts a call that reached a final state.
    pub(crate) fn release(&self, namespace: &str, bytes: u64) {
        let mut usage = self.usage();
        if let Some(held) = usage.get_mut(namespace) {
            held.calls = held.calls.saturating_sub(1);
            held.bytes = held.bytes.saturating_sub(bytes);
            if held.calls == 0 {
                usage.remove(namespace);
            }
        }
    }
}

/// A call counted in its namespace's backlog: uncounted on drop, unless kept
/// (the call was committed; its final state uncounts it).
#[derive(Debug)]
pub(crate) struct Reservation {
    backlog: Backlog,
    namespace: String,
    bytes: u64,
    kept: bool,
}

impl Reservation {
    /// The call was committed: it stays counted until it is over.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            self.backlog.release(&self.namespace, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_stops_at_its_quota_and_others_go_on() {
        let backlog = Backlog::default();
        let quota = Some(QueueQuota {
            calls: 2,
            bytes: 100,
        });
        backlog.reserve("a", 10, quota).unwrap().keep();
        let dropped = backlog.reserve("a", 10, quota).unwrap();
        drop(dropped);
        backlog.reserve("a", 10, quota).unwrap().keep();
        assert!(matches!(
            backlog.reserve("a", 10, quota),
            Err(QueueQuotaExceeded::Calls { max: 2, .. })
        ));
        assert!(matches!(
            backlog.reserve("b", 101, quota),
            Err(QueueQuotaExceeded::Bytes { used: 101, .. })
        ));
        backlog.reserve("b", 100, quota).unwrap().keep();
        backlog.release("a", 10);
        backlog.reserve("a", 10, quota).unwrap().keep();
        // Triggers' events are counted without a bound.
        backlog.reserve("a", 10, None).unwrap().keep();
        let message = backlog.reserve("a", 1, quota).unwrap_err().to_string();
        assert!(message.contains("(max_queued_calls)"), "{message}");
    }

    #[test]
    fn a_removed_namespace_leaves_no_counts_to_its_successor() {
        let backlog = Backlog::default();
        let quota = Some(QueueQuota {
            calls: 1,
            bytes: 100,
        });
        backlog.reserve("gone", 10, quota).unwrap().keep();
        backlog.reserve("kept", 10, quota).unwrap().keep();
        backlog.forget("gone");
        backlog.reserve("gone", 10, quota).unwrap().keep();
        assert!(backlog.reserve("kept", 10, quota).is_err());
    }
}
