//! The durable queue of async calls and the state of cron triggers.
//!
//! A call is one row: its event (a CloudEvent in protobuf, opaque here), its
//! state and attempts, and the latest result. Writes go through a
//! [`QueueBatch`], so a writer can commit many of them in one transaction.
//! Times are milliseconds since the Unix epoch.
//!
//! A call has two names: its `id`, the one users see (`X-Call-Id`, `ce-id`,
//! `/system/calls/{id}`), and its `key`, the one it is unique under. The key
//! puts the id in the space of whoever chose it ([`CallOrigin`]): a caller's
//! id is unique within its function's namespace, a trigger's within its
//! function. So no caller can take an id another namespace uses, or one a
//! JetStream message will get, and have that call dropped as a duplicate.

use std::collections::HashSet;

use rusqlite::{OptionalExtension as _, params};
use wisp_core::CallState;

use crate::{Store, StoreError};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    key            TEXT PRIMARY KEY,
    id             TEXT NOT NULL,
    namespace      TEXT NOT NULL,
    function       TEXT NOT NULL,
    state          TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    source         TEXT NOT NULL,
    event          BLOB NOT NULL,
    callback_url   TEXT,
    callback_state TEXT,
    created_at     INTEGER NOT NULL,
    due_at         INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER,
    error          TEXT,
    result         TEXT
);
CREATE INDEX IF NOT EXISTS calls_by_state ON calls (state, due_at);
CREATE INDEX IF NOT EXISTS calls_by_function ON calls (namespace, function, created_at);
CREATE TABLE IF NOT EXISTS trigger_firings (
    namespace  TEXT NOT NULL,
    function   TEXT NOT NULL,
    trigger    TEXT NOT NULL,
    fired_at   INTEGER NOT NULL,
    PRIMARY KEY (namespace, function, trigger)
);
";

/// Who chose a call's id, and so the space it must be unique in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOrigin {
    /// A caller of `/async-function/` (its `X-Call-Id`, or a fresh one):
    /// unique within the function's namespace.
    Caller,
    /// A trigger (a JetStream message's `nats-{stream}-{sequence}`, or a
    /// fresh one): unique within the function, out of callers' reach.
    Trigger,
}

/// The key a call is unique under: `caller/{namespace}/{id}` or
/// `trigger/{namespace}/{function}/{id}`. Names are DNS labels, so a `/`
/// ends each, and the two spaces never meet.
pub fn call_key(origin: CallOrigin, namespace: &str, function: &str, id: &str) -> String {
    match origin {
        CallOrigin::Caller => format!("caller/{namespace}/{id}"),
        CallOrigin::Trigger => format!("trigger/{namespace}/{function}/{id}"),
    }
}

/// Gives the calls of a database from before keys their key, and indexes ids.
pub(crate) fn migrate(db: &rusqlite::Connection) -> Result<(), StoreError> {
    let keyed: bool = db.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('calls') WHERE name = 'key')",
        [],
        |row| row.get(0),
    )?;
    if !keyed {
        db.execute_batch(
            "BEGIN;
             ALTER TABLE calls RENAME COLUMN id TO key;
             ALTER TABLE calls ADD COLUMN id TEXT NOT NULL DEFAULT '';
             UPDATE calls SET id = key, key = CASE WHEN source = 'http'
                 THEN 'caller/' || namespace || '/' || key
                 ELSE 'trigger/' || namespace || '/' || function || '/' || key END;
             COMMIT;",
        )?;
    }
    db.execute_batch("CREATE INDEX IF NOT EXISTS calls_by_id ON calls (id);")?;
    Ok(())
}

/// A call to accept.
#[derive(Debug, Clone)]
pub struct NewCall {
    /// Its id, as users see it.
    pub id: String,
    /// Who chose the id.
    pub origin: CallOrigin,
    /// The function's namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// What fired it: `http` or a trigger's label.
    pub source: String,
    /// The encoded event.
    pub event: Vec<u8>,
    /// Where to POST the result.
    pub callback_url: Option<String>,
    /// When it was accepted.
    pub created_at: i64,
}

impl NewCall {
    /// The key it is unique under.
    pub fn key(&self) -> String {
        call_key(self.origin, &self.namespace, &self.function, &self.id)
    }
}

/// The call an attempt belongs to: its key and, when known, when it was
/// accepted. What an attempt of a call since removed writes then never
/// lands on a call accepted later under the same key (a namespace made
/// again by the same name, a caller choosing the same id).
#[derive(Debug, Clone, Copy)]
pub struct Attempted<'a> {
    /// The call's key.
    pub key: &'a str,
    /// When it was accepted; `None` for whichever call has the key.
    pub created_at: Option<i64>,
}

/// A call a worker has just taken.
#[derive(Debug, Clone, Default)]
pub struct StartedCall {
    /// Its id, as users see it.
    pub id: String,
    /// When it was accepted.
    pub created_at: i64,
    /// The encoded event.
    pub event: Vec<u8>,
    /// Attempts including this one.
    pub attempts: u32,
    /// Where to POST the result.
    pub callback_url: Option<String>,
}

/// A call that waits to run: what the scheduler needs to hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCall {
    /// Its key.
    pub key: String,
    /// The function's namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// When it may run.
    pub due_at: i64,
}

/// A call as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    /// Its key.
    pub key: String,
    /// Its id, as users see it.
    pub id: String,
    /// The function's namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// Where it is.
    pub state: CallState,
    /// Attempts started.
    pub attempts: u32,
    /// What fired it.
    pub source: String,
    /// When it was accepted.
    pub created_at: i64,
    /// When it may run next.
    pub due_at: i64,
    /// When its latest attempt started.
    pub started_at: Option<i64>,
    /// When it reached its final state.
    pub finished_at: Option<i64>,
    /// Why its latest attempt failed.
    pub error: Option<String>,
    /// Its latest result, as JSON.
    pub result: Option<String>,
    /// Where to POST the result.
    pub callback_url: Option<String>,
    /// `pending`, `delivered` or `failed`.
    pub callback_state: Option<String>,
}

/// Which calls to list.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this function.
    pub function: Option<String>,
    /// Only calls in this state.
    pub state: Option<CallState>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Calls by state, for the queue's gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting to run.
    pub queued: u64,
    /// Running.
    pub running: u64,
    /// Dead letters.
    pub dead: u64,
}

const CALL_COLUMNS: &str = "key, id, namespace, function, state, attempts, source, created_at, due_at, \
     started_at, finished_at, error, result, callback_url, callback_state";

fn call_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CallRow> {
    let state: String = row.get(4)?;
    Ok(CallRow {
        key: row.get(0)?,
        id: row.get(1)?,
        namespace: row.get(2)?,
        function: row.get(3)?,
        state: state.parse().map_err(|error: String| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, error.into())
        })?,
        attempts: row.get(5)?,
        source: row.get(6)?,
        created_at: row.get(7)?,
        due_at: row.get(8)?,
        started_at: row.get(9)?,
        finished_at: row.get(10)?,
        error: row.get(11)?,
        result: row.get(12)?,
        callback_url: row.get(13)?,
        callback_state: row.get(14)?,
    })
}

fn pending_call(row: &rusqlite::Row<'_>) -> rusqlite::Result<PendingCall> {
    Ok(PendingCall {
        key: row.get(0)?,
        namespace: row.get(1)?,
        function: row.get(2)?,
        due_at: row.get(3)?,
    })
}

/// Queue writes inside one transaction.
pub struct QueueBatch<'a>(&'a rusqlite::Transaction<'a>);

impl QueueBatch<'_> {
    /// Stores a new call as queued; `false` if a call with its key exists.
    pub fn enqueue(&self, call: &NewCall) -> Result<bool, StoreError> {
        let inserted = self.0.prepare_cached(
            "INSERT OR IGNORE INTO calls (key, id, namespace, function, state, source, event, callback_url, callback_state, created_at, due_at)
             VALUES (?8, ?1, ?2, ?3, 'queued', ?4, ?5, ?6, NULL, ?7, ?7)",
        )?
        .execute(params![
            call.id,
            call.namespace,
            call.function,
            call.source,
            call.event,
            call.callback_url,
            call.created_at,
            call.key()
        ])?;
        Ok(inserted == 1)
    }

    /// Marks a queued call running and counts the attempt; `None` if it is not queued.
    pub fn start(&self, call: Attempted<'_>, now: i64) -> Result<Option<StartedCall>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "UPDATE calls SET state = 'running', attempts = attempts + 1, started_at = ?2
                 WHERE key = ?1 AND state = 'queued' AND (?3 IS NULL OR created_at = ?3)
                 RETURNING id, created_at, event, attempts, callback_url",
            )?
            .query_row(params![call.key, now, call.created_at], |row| {
                Ok(StartedCall {
                    id: row.get(0)?,
                    created_at: row.get(1)?,
                    event: row.get(2)?,
                    attempts: row.get(3)?,
                    callback_url: row.get(4)?,
                })
            })
            .optional()?)
    }

    /// Records a call's final state and its latest result. `unstarted`
    /// is when the attempt began if its [`start`](Self::start) was not
    /// written: the attempt is counted here. `false` if the call is gone.
    pub fn finish(
        &self,
        call: Attempted<'_>,
        state: CallState,
        now: i64,
        error: Option<&str>,
        result: Option<&str>,
        unstarted: Option<i64>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "UPDATE calls SET state = ?2, finished_at = ?3, error = ?4, result = ?5,
                     callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END,
                     attempts = attempts + (?6 IS NOT NULL), started_at = coalesce(?6, started_at)
                 WHERE key = ?1 AND (?7 IS NULL OR created_at = ?7)",
            )?
            .execute(params![
                call.key,
                state.as_str(),
                now,
                error,
                result,
                unstarted,
                call.created_at
            ])?
            == 1)
    }

    /// Puts a failed attempt's call back in the queue, due at `due_at`;
    /// `unstarted` as in [`finish`](Self::finish). `false` if the call is gone.
    pub fn retry(
        &self,
        call: Attempted<'_>,
        due_at: i64,
        error: &str,
        result: Option<&str>,
        unstarted: Option<i64>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "UPDATE calls SET state = 'queued', due_at = ?2, error = ?3, result = ?4,
                     attempts = attempts + (?5 IS NOT NULL), started_at = coalesce(?5, started_at)
                 WHERE key = ?1 AND (?6 IS NULL OR created_at = ?6)",
            )?
            .execute(params![
                call.key,
                due_at,
                error,
                result,
                unstarted,
                call.created_at
            ])?
            == 1)
    }

    /// Queues a finished call again with fresh attempts; `None` if it is not
    /// finished (or does not exist).
    pub fn requeue(&self, key: &str, now: i64) -> Result<Option<PendingCall>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "UPDATE calls SET state = 'queued', attempts = 0, due_at = ?2, finished_at = NULL,
                     callback_state = NULL
                 WHERE key = ?1 AND state IN ('succeeded', 'failed', 'dead')
                 RETURNING key, namespace, function, due_at",
            )?
            .query_row(params![key, now], pending_call)
            .optional()?)
    }

    /// Records how a call's callback went: `delivered` or `failed`.
    pub fn set_callback_state(&self, key: &str, state: &str) -> Result<(), StoreError> {
        self.0
            .prepare_cached("UPDATE calls SET callback_state = ?2 WHERE key = ?1")?
            .execute(params![key, state])?;
        Ok(())
    }

    /// Records that a function's trigger fired for the time `fired_at`.
    pub fn set_fired(
        &self,
        namespace: &str,
        function: &str,
        trigger: &str,
        fired_at: i64,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT INTO trigger_firings (namespace, function, trigger, fired_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (namespace, function, trigger) DO UPDATE SET fired_at = excluded.fired_at",
            )?
            .execute(params![namespace, function, trigger, fired_at])?;
        Ok(())
    }

    /// Forgets a call that has not finished: another node of the cluster
    /// took it over. `false` if it finished or does not exist.
    pub fn forget(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self
            .0
            .prepare_cached("DELETE FROM calls WHERE key = ?1 AND state IN ('queued', 'running')")?
            .execute(params![key])?
            == 1)
    }

    /// Forgets calls that succeeded or failed before `before`; dead letters stay.
    pub fn prune(&self, before: i64) -> Result<usize, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "DELETE FROM calls WHERE state IN ('succeeded', 'failed') AND finished_at < ?1
                 AND (callback_state IS NULL OR callback_state != 'pending')",
            )?
            .execute(params![before])?)
    }
}

impl Store {
    /// Runs `write` in one transaction and commits it. An operation that
    /// fails inside does not undo the others; a failed commit undoes all.
    pub fn batch<R>(&self, write: impl FnOnce(&QueueBatch<'_>) -> R) -> Result<R, StoreError> {
        let mut db = self.db();
        let transaction = db.transaction()?;
        let result = write(&QueueBatch(&transaction));
        transaction.commit()?;
        Ok(result)
    }

    /// At start-up: every call still to run, oldest first. Calls that were
    /// running when the node stopped are queued again (at-least-once); the
    /// second value holds their keys.
    pub fn recover_calls(&self) -> Result<(Vec<PendingCall>, HashSet<String>), StoreError> {
        let mut db = self.db();
        let transaction = db.transaction()?;
        let interrupted = transaction
            .prepare("SELECT key FROM calls WHERE state = 'running'")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        transaction.execute(
            "UPDATE calls SET state = 'queued', due_at = started_at WHERE state = 'running'",
            [],
        )?;
        transaction.commit()?;
        let mut statement = db.prepare(
            "SELECT key, namespace, function, due_at FROM calls WHERE state = 'queued' ORDER BY due_at",
        )?;
        let pending = statement
            .query_map([], pending_call)?
            .collect::<Result<_, _>>()?;
        Ok((pending, interrupted))
    }

    /// Finished calls whose callback has not been delivered yet.
    pub fn pending_callbacks(&self) -> Result<Vec<CallRow>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare(&format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE callback_state = 'pending' ORDER BY finished_at"
        ))?;
        let rows = statement
            .query_map([], call_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The call with this key, if it exists.
    pub fn call(&self, key: &str) -> Result<Option<CallRow>, StoreError> {
        Ok(self
            .db()
            .query_row(
                &format!("SELECT {CALL_COLUMNS} FROM calls WHERE key = ?1"),
                params![key],
                call_row,
            )
            .optional()?)
    }

    /// The call with this key as it was accepted, if it has not finished:
    /// what another node needs to take it over.
    pub fn unfinished_call(&self, key: &str) -> Result<Option<NewCall>, StoreError> {
        Ok(self
            .db()
            .query_row(
                "SELECT id, namespace, function, source, event, callback_url, created_at
                 FROM calls WHERE key = ?1 AND state IN ('queued', 'running')",
                params![key],
                |row| {
                    Ok(NewCall {
                        id: row.get(0)?,
                        origin: if key.starts_with("trigger/") {
                            CallOrigin::Trigger
                        } else {
                            CallOrigin::Caller
                        },
                        namespace: row.get(1)?,
                        function: row.get(2)?,
                        source: row.get(3)?,
                        event: row.get(4)?,
                        callback_url: row.get(5)?,
                        created_at: row.get(6)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every call users know by this id (in several namespaces or
    /// functions, it may name several), newest first.
    pub fn calls_with_id(&self, id: &str) -> Result<Vec<CallRow>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(&format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE id = ?1 ORDER BY created_at DESC, key"
        ))?;
        let rows = statement
            .query_map(params![id], call_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Calls matching `filter`, newest first.
    pub fn calls(&self, filter: &CallFilter) -> Result<Vec<CallRow>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare(&format!(
            "SELECT {CALL_COLUMNS} FROM calls
             WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR function = ?2) AND (?3 IS NULL OR state = ?3)
             ORDER BY created_at DESC, key LIMIT ?4"
        ))?;
        let rows = statement
            .query_map(
                params![
                    filter.namespace,
                    filter.function,
                    filter.state.map(CallState::as_str),
                    filter.limit
                ],
                call_row,
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// How many calls wait, run, and are dead.
    pub fn queue_counts(&self) -> Result<QueueCounts, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT state, count(*) FROM calls WHERE state IN ('queued', 'running', 'dead') GROUP BY state",
        )?;
        let mut counts = QueueCounts::default();
        for row in statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get(1)?)))? {
            let (state, count) = row?;
            match state.as_str() {
                "queued" => counts.queued = count,
                "running" => counts.running = count,
                _ => counts.dead = count,
            }
        }
        Ok(counts)
    }

    /// When a function's trigger last fired, if it ever did.
    pub fn fired_at(
        &self,
        namespace: &str,
        function: &str,
        trigger: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .db()
            .query_row(
                "SELECT fired_at FROM trigger_firings WHERE namespace = ?1 AND function = ?2 AND trigger = ?3",
                params![namespace, function, trigger],
                |row| row.get(0),
            )
            .optional()?)
    }
}

/// The queue's backlog per namespace, which its quota bounds.
impl Store {
    /// Calls queued or running, per namespace: `(namespace, calls, bytes of their events)`.
    pub fn queue_backlog(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT namespace, count(*), coalesce(sum(length(event)), 0) FROM calls
             WHERE state IN ('queued', 'running') GROUP BY namespace",
        )?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The size of a call's stored event, if the call exists.
    pub fn event_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .db()
            .query_row(
                "SELECT length(event) FROM calls WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, created_at: i64) -> NewCall {
        NewCall {
            id: id.into(),
            origin: CallOrigin::Caller,
            namespace: "default".into(),
            function: "f".into(),
            source: "http".into(),
            event: vec![1, 2, 3],
            callback_url: Some("http://127.0.0.1:9/cb".into()),
            created_at,
        }
    }

    fn key(id: &str) -> String {
        call_key(CallOrigin::Caller, "default", "f", id)
    }

    fn any(key: &str) -> Attempted<'_> {
        Attempted {
            key,
            created_at: None,
        }
    }

    #[test]
    fn a_call_goes_from_queued_to_running_to_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let inserted = store
            .batch(|batch| {
                [
                    batch.enqueue(&call("a", 1)).unwrap(),
                    batch.enqueue(&call("a", 2)).unwrap(),
                ]
            })
            .unwrap();
        assert_eq!(inserted, [true, false]);
        let started = store
            .batch(|b| b.start(any(&key("a")), 5).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((started.event, started.attempts), (vec![1, 2, 3], 1));
        assert!(
            store
                .batch(|b| b.start(any(&key("a")), 6).unwrap())
                .unwrap()
                .is_none()
        );
        store
            .batch(|b| b.retry(any(&key("a")), 100, "502", None, None).unwrap())
            .unwrap();
        assert_eq!(
            store
                .batch(|b| b.start(any(&key("a")), 100).unwrap())
                .unwrap()
                .unwrap()
                .attempts,
            2
        );
        store
            .batch(|b| {
                b.finish(
                    any(&key("a")),
                    CallState::Dead,
                    200,
                    Some("boom"),
                    None,
                    None,
                )
                .unwrap()
            })
            .unwrap();
        let row = store.call(&key("a")).unwrap().unwrap();
        assert_eq!((row.state, row.attempts), (CallState::Dead, 2));
        assert_eq!(row.callback_state.as_deref(), Some("pending"));
        assert_eq!(store.pending_callbacks().unwrap().len(), 1);
        assert_eq!(store.queue_counts().unwrap().dead, 1);
        let requeued = store.batch(|b| b.requeue(&key("a"), 300).unwrap()).unwrap();
        assert_eq!(requeued.map(|p| p.due_at), Some(300));
        assert_eq!(store.call(&key("a")).unwrap().unwrap().attempts, 0);
    }

    #[test]
    fn an_attempt_whose_start_was_not_written_is_counted_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .batch(|b| {
                b.enqueue(&call("a", 1)).unwrap();
                b.retry(any(&key("a")), 50, "502", None, Some(5)).unwrap();
            })
            .unwrap();
        let row = store.call(&key("a")).unwrap().unwrap();
        assert_eq!(
            (row.state, row.attempts, row.started_at),
            (CallState::Queued, 1, Some(5))
        );
        store
            .batch(|b| {
                b.finish(
                    any(&key("a")),
                    CallState::Succeeded,
                    70,
                    None,
                    None,
                    Some(60),
                )
                .unwrap()
            })
            .unwrap();
        let row = store.call(&key("a")).unwrap().unwrap();
        assert_eq!(
            (row.state, row.attempts, row.started_at, row.finished_at),
            (CallState::Succeeded, 2, Some(60), Some(70))
        );
    }

    #[test]
    fn an_attempt_of_a_call_since_removed_writes_nothing_on_a_later_call_of_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.batch(|b| b.enqueue(&call("a", 1)).unwrap()).unwrap();
        // The call accepted at 1 was removed (with its namespace); the
        // same key was accepted again at 2.
        store.batch(|b| b.forget(&key("a")).unwrap()).unwrap();
        store.batch(|b| b.enqueue(&call("a", 2)).unwrap()).unwrap();
        let old = Attempted {
            key: &key("a"),
            created_at: Some(1),
        };
        store
            .batch(|b| {
                assert!(b.start(old, 5).unwrap().is_none());
                assert!(!b.retry(old, 9, "502", Some("{}"), Some(5)).unwrap());
                assert!(
                    !b.finish(old, CallState::Succeeded, 9, None, Some("{}"), Some(5))
                        .unwrap()
                );
            })
            .unwrap();
        let row = store.call(&key("a")).unwrap().unwrap();
        assert_eq!(
            (row.state, row.attempts, row.result, row.created_at),
            (CallState::Queued, 0, None, 2)
        );
        let new = Attempted {
            created_at: Some(2),
            ..old
        };
        let started = store.batch(|b| b.start(new, 5).unwrap()).unwrap();
        assert_eq!(started.map(|started| started.created_at), Some(2));
    }

    #[test]
    fn an_unfinished_call_is_read_as_accepted_and_forgotten_when_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fired = NewCall {
            origin: CallOrigin::Trigger,
            ..call("t", 1)
        };
        store
            .batch(|b| {
                b.enqueue(&call("a", 1)).unwrap();
                b.enqueue(&fired).unwrap();
                b.enqueue(&call("done", 2)).unwrap();
                b.finish(any(&key("done")), CallState::Succeeded, 3, None, None, None)
                    .unwrap();
            })
            .unwrap();
        let read = store.unfinished_call(&fired.key()).unwrap().unwrap();
        assert_eq!(read.key(), fired.key());
        assert_eq!((read.event, read.created_at), (vec![1, 2, 3], 1));
        assert!(store.unfinished_call(&key("done")).unwrap().is_none());

        let forgotten = store
            .batch(|b| {
                [
                    b.forget(&key("a")).unwrap(),
                    b.forget(&key("done")).unwrap(),
                ]
            })
            .unwrap();
        assert_eq!(forgotten, [true, false], "a finished call stays");
        assert!(store.call(&key("a")).unwrap().is_none());
        assert!(store.call(&key("done")).unwrap().is_some());
    }

    #[test]
    fn running_calls_are_queued_again_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .batch(|b| {
                    for (id, at) in [("a", 1), ("b", 2), ("c", 3)] {
                        b.enqueue(&call(id, at)).unwrap();
                    }
                    b.start(any(&key("b")), 10).unwrap();
                    b.start(any(&key("c")), 11).unwrap();
                    b.finish(any(&key("c")), CallState::Succeeded, 12, None, None, None)
                        .unwrap();
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let (pending, interrupted) = store.recover_calls().unwrap();
        let keys: Vec<_> = pending.iter().map(|p| p.key.clone()).collect();
        assert_eq!(keys, vec![key("a"), key("b")]);
        assert_eq!(interrupted, HashSet::from([key("b")]));
        let dead = store
            .calls(&CallFilter {
                state: Some(CallState::Succeeded),
                limit: 10,
                ..CallFilter::default()
            })
            .unwrap();
        assert_eq!(dead.len(), 1);
    }

    #[test]
    fn ids_are_unique_only_in_the_space_of_whoever_chose_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut mine = call("nats-S-1", 1);
        let mut other_namespace = call("nats-S-1", 2);
        other_namespace.namespace = "team-b".into();
        let mut message = call("nats-S-1", 3);
        message.origin = CallOrigin::Trigger;
        let mut same_message_other_function = message.clone();
        same_message_other_function.function = "g".into();
        let inserted = store
            .batch(|b| {
                [
                    &mine,
                    &other_namespace,
                    &message,
                    &same_message_other_function,
                    &message,
                ]
                .map(|call| b.enqueue(call).unwrap())
            })
            .unwrap();
        assert_eq!(inserted, [true, true, true, true, false]);
        let found = store.calls_with_id("nats-S-1").unwrap();
        assert_eq!(found.len(), 4);
        assert!(found.iter().all(|row| row.id == "nats-S-1"));
        mine.id = "other".into();
        assert!(store.batch(|b| b.enqueue(&mine).unwrap()).unwrap());
    }

    #[test]
    fn calls_stored_before_keys_get_theirs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = rusqlite::Connection::open(dir.path().join("wisp.db")).unwrap();
            db.execute_batch(
                "CREATE TABLE calls (
                    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, function TEXT NOT NULL,
                    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, source TEXT NOT NULL,
                    event BLOB NOT NULL, callback_url TEXT, callback_state TEXT,
                    created_at INTEGER NOT NULL, due_at INTEGER NOT NULL, started_at INTEGER,
                    finished_at INTEGER, error TEXT, result TEXT);
                 INSERT INTO calls (id, namespace, function, state, source, event, created_at, due_at)
                 VALUES ('a', 'default', 'f', 'queued', 'http', x'01', 1, 1),
                        ('nats-S-1', 'default', 'f', 'queued', 'nats \"x\"', x'01', 2, 2);",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let (pending, _) = store.recover_calls().unwrap();
        let keys: Vec<_> = pending.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, [key("a").as_str(), "trigger/default/f/nats-S-1"]);
        assert_eq!(store.calls_with_id("a").unwrap()[0].key, key("a"));
        drop(store);
        Store::open(dir.path()).expect("opens again");
    }
}
