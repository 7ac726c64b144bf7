//! The call log: every call's record (a span of its trace, a reading of the
//! meter), the functions' log lines, and hourly usage totals, in a database of
//! their own (`telemetry.db`) so that logging never waits on the queue's
//! durable commits. Lines and records share one sequence of ids, and each
//! record reads back as wisp's own log line for its call, so a call costs one
//! record, not a record and a line.
//!
//! A record is written on every call, so it is not a row of its own, nor an
//! entry in an index: each commit stores one function's records as packed
//! batches (protobuf) beside the keys of their calls and traces, 8 bytes a
//! call. A lookup by call or trace scans those keys and decodes the batches
//! that hold it: reads are rare next to writes. Only calls that belong to a
//! longer trace (a caller's `traceparent`, or a call id wisp did not make)
//! have a trace key: a trace that wisp starts takes its call's id as its trace
//! id ([`trace_of_call`]), so its first call is found by its call key.
//!
//! Records and lines are bounded per function: once a function has more than
//! its retention, its oldest lines, and its oldest batches of records whole,
//! are deleted. Usage totals are kept whole: they are what a bill is made of.
//! Times are milliseconds since the Unix epoch. A call log written in an
//! earlier format is dropped when the node opens it (usage totals are kept).

use std::{
    collections::HashMap,
    path::Path,
    sync::atomic::{AtomicI64, Ordering},
};

use prost::Message as _;
use rusqlite::{OptionalExtension as _, params};
use wisp_core::telemetry::{CallSource, LogStream, call_of_trace, is_failure, trace_of_call};

use crate::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS logs (
    id           INTEGER PRIMARY KEY,
    function_key INTEGER NOT NULL,
    time         INTEGER NOT NULL,
    namespace    TEXT NOT NULL,
    function     TEXT NOT NULL,
    call_id      TEXT,
    stream       TEXT NOT NULL,
    message      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs (function_key, id);
CREATE TABLE IF NOT EXISTS batches (
    id           INTEGER PRIMARY KEY,
    function_key INTEGER NOT NULL,
    namespace    TEXT NOT NULL,
    function     TEXT NOT NULL,
    count        INTEGER NOT NULL,
    last_id      INTEGER NOT NULL,
    last_time    INTEGER NOT NULL,
    calls        BLOB NOT NULL,
    traces       BLOB NOT NULL,
    records      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_function ON batches (function_key, id);
CREATE TABLE IF NOT EXISTS usage (
    namespace   TEXT NOT NULL,
    function    TEXT NOT NULL,
    hour        INTEGER NOT NULL,
    invocations INTEGER NOT NULL,
    errors      INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    gb_us       REAL NOT NULL,
    cpu_us      INTEGER NOT NULL,
    PRIMARY KEY (namespace, function, hour)
);
";

/// The call log's format, kept in `PRAGMA user_version`.
const FORMAT: i64 = 3;

const MILLIS_PER_HOUR: i64 = 3_600_000;
const BYTES_PER_GB: f64 = (1u64 << 30) as f64;

/// A log line to store.
#[derive(Debug, Clone)]
pub struct NewLine {
    /// When it was written, in milliseconds.
    pub time: i64,
    /// The function's namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// The call, if the line belongs to one.
    pub call_id: Option<String>,
    /// Where it came from.
    pub stream: LogStream,
    /// The line.
    pub message: String,
}

/// A stored log line with its id.
#[derive(Debug, Clone)]
pub struct StoredLine {
    /// Its id: later lines have larger ids.
    pub id: i64,
    /// The line.
    pub line: NewLine,
}

/// A call record to store; times in milliseconds and microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    /// The call id.
    pub call_id: String,
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The span id.
    pub span_id: [u8; 8],
    /// The parent span id.
    pub parent_span_id: Option<[u8; 8]>,
    /// The function's namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// How the call came in.
    pub source: CallSource,
    /// When it started, in milliseconds.
    pub started_at: i64,
    /// Wall time, in microseconds.
    pub duration_us: i64,
    /// The status it answered with.
    pub status: u16,
    /// Why it failed.
    pub error: Option<String>,
    /// The memory limit, in bytes.
    pub memory_limit: u64,
    /// Peak memory, in bytes, where measured.
    pub memory_peak: Option<u64>,
    /// CPU time, in microseconds, where measured.
    pub cpu_us: Option<i64>,
}

/// Which log lines to read.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this function.
    pub function: Option<String>,
    /// Only this call's lines.
    pub call_id: Option<String>,
    /// Only lines written at or after this time, in milliseconds.
    pub since: Option<i64>,
    /// Only lines with a larger id.
    pub after_id: Option<i64>,
    /// At most this many, the latest.
    pub tail: u32,
}

/// One function's usage totals, in stored units.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageTotals {
    /// The namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// Calls.
    pub invocations: u64,
    /// Failed calls.
    pub errors: u64,
    /// Wall time, in microseconds.
    pub duration_us: i64,
    /// GB-microseconds.
    pub gb_us: f64,
    /// CPU time, in microseconds.
    pub cpu_us: i64,
}

/// The call log's database.
pub struct Telemetry {
    db: std::sync::Mutex<rusqlite::Connection>,
    /// The lines and the records kept per function.
    retention: u32,
    /// The id the next line or record gets; changed only under the lock.
    next_id: AtomicI64,
}

impl Telemetry {
    /// Opens (creating when needed) `telemetry.db` under `root`, to keep
    /// `retention` lines and `retention` records per function.
    pub fn open(root: &Path, retention: u32) -> Result<Self, StoreError> {
        let path = root.join("telemetry.db");
        crate::private_database(&path)?;
        let db = rusqlite::Connection::open(&path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // A power cut may lose the last lines; a crash of the node loses none.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        // The indexes of a busy function's calls stay in memory.
        db.pragma_update(None, "cache_size", -65_536)?;
        let format: i64 = db.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if format != FORMAT {
            db.execute_batch(&format!(
                "DROP TABLE IF EXISTS logs; DROP TABLE IF EXISTS records;
                 DROP TABLE IF EXISTS batches; PRAGMA user_version = {FORMAT};"
            ))?;
        }
        db.execute_batch(SCHEMA)?;
        let last: i64 = db.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM logs), 0),
                        COALESCE((SELECT MAX(last_id) FROM batches), 0))",
            [],
            |row| row.get(0),
        )?;
        Ok(Self {
            db: std::sync::Mutex::new(db),
            retention,
            next_id: AtomicI64::new(last + 1),
        })
    }

    /// How many lines or records a function may write between two
    /// [prunes](Self::prune): a tenth of the retention. A batch holds at most
    /// this many records, so a function keeps fewer than `retention` plus
    /// two steps of them.
    pub fn prune_step(&self) -> u32 {
        (self.retention / 10).max(1)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores lines and records in one transaction (lines first, then each
    /// function's records as one batch), adds the records to the usage totals
    /// (one update per function and hour), and answers the first id: the
    /// lines and then the records have the ids that follow it, in order.
    pub fn write(&self, records: &[NewRecord], lines: &[NewLine]) -> Result<i64, StoreError> {
        let mut db = self.db();
        let first = self.next_id.load(Ordering::Relaxed);
        let tx = db.transaction()?;
        let mut id = first;
        {
            let mut insert_line = tx.prepare_cached(
                "INSERT INTO logs (id, function_key, time, namespace, function, call_id, stream,
                     message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for line in lines {
                insert_line.execute(params![
                    id,
                    function_key(&line.namespace, &line.function),
                    line.time,
                    line.namespace,
                    line.function,
                    line.call_id,
                    line.stream.as_str(),
                    line.message
                ])?;
                id += 1;
            }
            let mut batches: HashMap<(&str, &str), Vec<Packed>> = HashMap::new();
            let mut totals: HashMap<(&str, &str, i64), UsageTotals> = HashMap::new();
            for record in records {
                batches
                    .entry((&record.namespace, &record.function))
                    .or_default()
                    .push(Packed::of(id, record));
                id += 1;
                let hour = record.started_at.div_euclid(MILLIS_PER_HOUR) * MILLIS_PER_HOUR;
                let total = totals
                    .entry((&record.namespace, &record.function, hour))
                    .or_insert_with(|| UsageTotals {
                        namespace: record.namespace.clone(),
                        function: record.function.clone(),
                        invocations: 0,
                        errors: 0,
                        duration_us: 0,
                        gb_us: 0.0,
                        cpu_us: 0,
                    });
                total.invocations += 1;
                total.errors += u64::from(is_failure(record.status));
                total.duration_us += record.duration_us;
                total.gb_us +=
                    record.duration_us as f64 * record.memory_limit as f64 / BYTES_PER_GB;
                total.cpu_us += record.cpu_us.unwrap_or(0);
            }
            let mut insert_batch = tx.prepare_cached(
                "INSERT INTO batches (function_key, namespace, function, count, last_id,
                     last_time, calls, traces, records)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let step = self.prune_step() as usize;
            for ((namespace, function), mut rest) in batches {
                while !rest.is_empty() {
                    let more = rest.split_off(step.min(rest.len()));
                    let records = std::mem::replace(&mut rest, more);
                    let keys = |key: fn(&Packed) -> Option<i64>| -> Vec<u8> {
                        records
                            .iter()
                            .filter_map(key)
                            .flat_map(i64::to_le_bytes)
                            .collect()
                    };
                    insert_batch.execute(params![
                        function_key(namespace, function),
                        namespace,
                        function,
                        records.len() as i64,
                        records.last().map(|record| record.id),
                        records.iter().map(Packed::time).max(),
                        keys(|record| Some(call_key(&record.call_id))),
                        keys(Packed::trace_key),
                        PackedBatch { records }.encode_to_vec(),
                    ])?;
                }
            }
            let mut add_usage = tx.prepare_cached(
                "INSERT INTO usage (namespace, function, hour, invocations, errors, duration_us,
                     gb_us, cpu_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (namespace, function, hour) DO UPDATE SET
                     invocations = invocations + excluded.invocations,
                     errors = errors + excluded.errors,
                     duration_us = duration_us + excluded.duration_us,
                     gb_us = gb_us + excluded.gb_us,
                     cpu_us = cpu_us + excluded.cpu_us",
            )?;
            for ((_, _, hour), total) in totals {
                add_usage.execute(params![
                    total.namespace,
                    total.function,
                    hour,
                    total.invocations as i64,
                    total.errors as i64,
                    total.duration_us,
                    total.gb_us,
                    total.cpu_us,
                ])?;
            }
        }
        tx.commit()?;
        self.next_id.store(id, Ordering::Relaxed);
        Ok(first)
    }

    /// Deletes a function's oldest lines beyond the retention, and its
    /// oldest batches of records while the retention remains without them.
    pub fn prune(&self, namespace: &str, function: &str) -> Result<(), StoreError> {
        let keep = self.retention;
        let mut db = self.db();
        let key = function_key(namespace, function);
        let tx = db.transaction()?;
        tx.prepare_cached(
            "DELETE FROM logs WHERE function_key = ?1 AND namespace = ?2 AND function = ?3
                 AND id <= (SELECT id FROM logs WHERE function_key = ?1 AND namespace = ?2
                     AND function = ?3 ORDER BY id DESC LIMIT 1 OFFSET ?4)",
        )?
        .execute(params![key, namespace, function, keep])?;
        // A batch goes once the newer ones hold the retention without it.
        tx.prepare_cached(
            "DELETE FROM batches WHERE id IN (
                 SELECT id FROM (
                     SELECT id, SUM(count) OVER (
                         ORDER BY id DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                     ) AS newer
                     FROM batches WHERE function_key = ?1 AND namespace = ?2 AND function = ?3)
                 WHERE newer >= ?4)",
        )?
        .execute(params![key, namespace, function, keep])?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes everything a namespace left in the call log: its lines, its
    /// records and its usage totals, so a later namespace of the same name
    /// starts with none of them.
    pub fn forget_namespace(&self, namespace: &str) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        for table in ["logs", "batches", "usage"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE namespace = ?1"),
                params![namespace],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Log lines matching `filter`, oldest first: the functions' lines and
    /// wisp's line for each call.
    pub fn lines(&self, filter: &LogFilter) -> Result<Vec<StoredLine>, StoreError> {
        let db = self.db();
        let tail = filter.tail as usize;
        let mut lines = {
            let mut statement = db.prepare_cached(
                "SELECT id, time, namespace, function, call_id, stream, message FROM logs
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR function = ?2)
                   AND (?3 IS NULL OR call_id = ?3) AND (?4 IS NULL OR time >= ?4)
                   AND (?5 IS NULL OR id > ?5)
                 ORDER BY id DESC LIMIT ?6",
            )?;
            let rows = statement.query_map(
                params![
                    filter.namespace,
                    filter.function,
                    filter.call_id,
                    filter.since,
                    filter.after_id,
                    filter.tail
                ],
                |row| {
                    let stream: String = row.get(5)?;
                    Ok(StoredLine {
                        id: row.get(0)?,
                        line: NewLine {
                            time: row.get(1)?,
                            namespace: row.get(2)?,
                            function: row.get(3)?,
                            call_id: row.get(4)?,
                            stream: LogStream::parse(&stream).unwrap_or(LogStream::Wisp),
                            message: row.get(6)?,
                        },
                    })
                },
            )?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        // The latest records: batches newest first, until the next one can
        // hold none of the `tail` latest.
        let mut records: Vec<(i64, NewRecord)> = Vec::new();
        let mut statement = db.prepare_cached(
            "SELECT id, namespace, function, last_id, calls, records FROM batches
             WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR function = ?2)
               AND (?3 IS NULL OR last_time >= ?3) AND (?4 IS NULL OR last_id > ?4)
             ORDER BY last_id DESC",
        )?;
        let mut rows = statement.query(params![
            filter.namespace,
            filter.function,
            filter.since,
            filter.after_id,
        ])?;
        let call = filter.call_id.as_deref().map(call_key);
        while let Some(row) = rows.next()? {
            let last_id: i64 = row.get(3)?;
            if records.len() >= tail && records.iter().all(|(id, _)| *id > last_id) {
                break;
            }
            if let Some(call) = call
                && !holds(row, 4, call)?
            {
                continue;
            }
            records.extend(records_in(row, 5, |record| {
                filter
                    .call_id
                    .as_ref()
                    .is_none_or(|id| *id == record.call_id)
                    && filter.since.is_none_or(|since| record.time() >= since)
                    && filter.after_id.is_none_or(|after| record.id > after)
            })?);
            records.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
            records.truncate(tail);
        }
        lines.extend(records.iter().map(|(id, record)| record_line(*id, record)));
        lines.sort_unstable_by_key(|line| std::cmp::Reverse(line.id));
        lines.truncate(tail);
        lines.reverse();
        Ok(lines)
    }

    /// The latest record of a call that `keep` keeps: call ids are the
    /// callers' to choose, so several namespaces' calls may share one, and a
    /// lookup keeps only those the asker may see.
    pub fn record(
        &self,
        call_id: &str,
        keep: impl Fn(&NewRecord) -> bool,
    ) -> Result<Option<NewRecord>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT id, namespace, function, calls, records FROM batches ORDER BY id DESC",
        )?;
        let mut rows = statement.query([])?;
        let key = call_key(call_id);
        while let Some(row) = rows.next()? {
            if !holds(row, 3, key)? {
                continue;
            }
            if let Some((_, record)) = records_in(row, 4, |record| record.call_id == call_id)?
                .into_iter()
                .rev()
                .find(|(_, record)| keep(record))
            {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Every record of a trace, in the order the calls started.
    pub fn trace(&self, trace_id: &[u8; 16]) -> Result<Vec<NewRecord>, StoreError> {
        let db = self.db();
        // The calls that joined it, and the call that started it if wisp did.
        let mut statement = db.prepare_cached(
            "SELECT id, namespace, function, traces, calls, records FROM batches",
        )?;
        let mut rows = statement.query([])?;
        let (trace, first) = (trace_key(trace_id), call_key(&call_of_trace(trace_id)));
        let mut records = Vec::new();
        while let Some(row) = rows.next()? {
            if !holds(row, 3, trace)? && !holds(row, 4, first)? {
                continue;
            }
            records.extend(records_in(row, 5, |record| record.trace_id() == *trace_id)?);
        }
        records.sort_unstable_by_key(|(id, record)| (record.started_at, *id));
        Ok(records.into_iter().map(|(_, record)| record).collect())
    }

    /// A function's latest records, newest first.
    pub fn recent(
        &self,
        namespace: &str,
        function: &str,
        limit: u32,
    ) -> Result<Vec<NewRecord>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT id, records FROM batches
             WHERE function_key = ?1 AND namespace = ?2 AND function = ?3 ORDER BY id DESC",
        )?;
        let mut rows = statement.query(params![
            function_key(namespace, function),
            namespace,
            function
        ])?;
        let mut records = Vec::new();
        while records.len() < limit as usize
            && let Some(row) = rows.next()?
        {
            let batch = unpack_row(row, 0, 1)?;
            records.extend(
                batch
                    .records
                    .into_iter()
                    .rev()
                    .take(limit as usize - records.len())
                    .map(|record| record.unpack(namespace, function)),
            );
        }
        Ok(records)
    }

    /// The last STDERR line a call of a function wrote.
    pub fn last_stderr(
        &self,
        namespace: &str,
        function: &str,
        call_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let db = self.db();
        Ok(db
            .prepare_cached(
                "SELECT message FROM logs
                 WHERE function_key = ?1 AND namespace = ?2 AND function = ?3 AND call_id = ?4
                     AND stream = 'stderr'
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(
                params![
                    function_key(namespace, function),
                    namespace,
                    function,
                    call_id
                ],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Usage totals per function since the start of the hour holding `since`.
    pub fn usage(
        &self,
        namespace: Option<&str>,
        since: i64,
    ) -> Result<Vec<UsageTotals>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT namespace, function, SUM(invocations), SUM(errors), SUM(duration_us),
                    SUM(gb_us), SUM(cpu_us)
             FROM usage WHERE (?1 IS NULL OR namespace = ?1) AND hour >= ?2
             GROUP BY namespace, function ORDER BY namespace, function",
        )?;
        let rows = statement.query_map(
            params![
                namespace,
                since.div_euclid(MILLIS_PER_HOUR) * MILLIS_PER_HOUR
            ],
            |row| {
                Ok(UsageTotals {
                    namespace: row.get(0)?,
                    function: row.get(1)?,
                    invocations: row.get::<_, i64>(2)? as u64,
                    errors: row.get::<_, i64>(3)? as u64,
                    duration_us: row.get(4)?,
                    gb_us: row.get(5)?,
                    cpu_us: row.get(6)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A record as wisp's log line for its call: `200 in 1.52ms, memory 1088KiB, cpu 0.80ms`
/// and, for a failed call, its error.
pub fn record_line(id: i64, record: &NewRecord) -> StoredLine {
    let mut message = format!(
        "{} in {:.2}ms",
        record.status,
        record.duration_us as f64 / 1000.0
    );
    if let Some(peak) = record.memory_peak {
        message.push_str(&format!(", memory {}", wisp_core::ByteSize(peak)));
    }
    if let Some(cpu) = record.cpu_us {
        message.push_str(&format!(", cpu {:.2}ms", cpu as f64 / 1000.0));
    }
    if let Some(error) = &record.error {
        message.push_str(": ");
        message.push_str(error);
    }
    StoredLine {
        id,
        line: NewLine {
            time: record.started_at + record.duration_us / 1000,
            namespace: record.namespace.clone(),
            function: record.function.clone(),
            call_id: Some(record.call_id.clone()),
            stream: LogStream::Wisp,
            message,
        },
    }
}

/// The 64-bit FNV-1a hash of `bytes`: stable, so keys survive restarts.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> i64 {
    let hash = bytes.fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash as i64
}

/// The key a function's lines and records are found by.
fn function_key(namespace: &str, function: &str) -> i64 {
    // Names are DNS labels: a `/` cannot be part of either.
    fnv1a(namespace.bytes().chain([b'/']).chain(function.bytes()))
}

/// The key a call is looked up by.
fn call_key(call_id: &str) -> i64 {
    fnv1a(call_id.bytes())
}

/// The key a trace is looked up by: the low half of its id, the half that
/// is random however the trace was started.
fn trace_key(trace_id: &[u8; 16]) -> i64 {
    i64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"))
}

/// A record as a batch holds it: the batch holds its function.
#[derive(Clone, PartialEq, prost::Message)]
struct Packed {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(string, tag = "2")]
    call_id: String,
    #[prost(fixed64, tag = "3")]
    trace_high: u64,
    #[prost(fixed64, tag = "4")]
    trace_low: u64,
    #[prost(fixed64, tag = "5")]
    span_id: u64,
    #[prost(fixed64, optional, tag = "6")]
    parent_span_id: Option<u64>,
    #[prost(bool, tag = "7")]
    queued: bool,
    #[prost(int64, tag = "8")]
    started_at: i64,
    #[prost(int64, tag = "9")]
    duration_us: i64,
    #[prost(uint32, tag = "10")]
    status: u32,
    #[prost(string, optional, tag = "11")]
    error: Option<String>,
    #[prost(uint64, tag = "12")]
    memory_limit: u64,
    #[prost(uint64, optional, tag = "13")]
    memory_peak: Option<u64>,
    #[prost(int64, optional, tag = "14")]
    cpu_us: Option<i64>,
}

/// One function's records of one commit.
#[derive(Clone, PartialEq, prost::Message)]
struct PackedBatch {
    #[prost(message, repeated, tag = "1")]
    records: Vec<Packed>,
}

impl Packed {
    fn of(id: i64, record: &NewRecord) -> Self {
        let (high, low) = record.trace_id.split_at(8);
        Self {
            id,
            call_id: record.call_id.clone(),
            trace_high: u64::from_be_bytes(high.try_into().expect("8 bytes")),
            trace_low: u64::from_be_bytes(low.try_into().expect("8 bytes")),
            span_id: u64::from_be_bytes(record.span_id),
            parent_span_id: record.parent_span_id.map(u64::from_be_bytes),
            queued: record.source == CallSource::Queue,
            started_at: record.started_at,
            duration_us: record.duration_us,
            status: u32::from(record.status),
            error: record.error.clone(),
            memory_limit: record.memory_limit,
            memory_peak: record.memory_peak,
            cpu_us: record.cpu_us,
        }
    }

    fn unpack(self, namespace: &str, function: &str) -> NewRecord {
        NewRecord {
            trace_id: self.trace_id(),
            call_id: self.call_id,
            span_id: self.span_id.to_be_bytes(),
            parent_span_id: self.parent_span_id.map(u64::to_be_bytes),
            namespace: namespace.to_owned(),
            function: function.to_owned(),
            source: if self.queued {
                CallSource::Queue
            } else {
                CallSource::Http
            },
            started_at: self.started_at,
            duration_us: self.duration_us,
            status: self.status as u16,
            error: self.error,
            memory_limit: self.memory_limit,
            memory_peak: self.memory_peak,
            cpu_us: self.cpu_us,
        }
    }

    fn trace_id(&self) -> [u8; 16] {
        let mut trace = [0; 16];
        trace[..8].copy_from_slice(&self.trace_high.to_be_bytes());
        trace[8..].copy_from_slice(&self.trace_low.to_be_bytes());
        trace
    }

    /// When wisp's line for the call is dated: when the call ended.
    fn time(&self) -> i64 {
        self.started_at + self.duration_us / 1000
    }

    /// Its trace's key, if the trace index must find it: a call that joined a
    /// caller's trace, or whose trace is not its call id.
    fn trace_key(&self) -> Option<i64> {
        let trace = self.trace_id();
        (self.parent_span_id.is_some() || trace_of_call(&self.call_id) != Some(trace))
            .then(|| trace_key(&trace))
    }
}

/// Whether the keys at column `keys` of a batch's row hold `key`. A scan of
/// every batch's keys is what a lookup by call or trace costs: 8 bytes a
/// record, read instead of written into an index on every call.
fn holds(row: &rusqlite::Row<'_>, keys: usize, key: i64) -> rusqlite::Result<bool> {
    let key = key.to_le_bytes();
    let keys = row.get_ref(keys)?.as_blob()?;
    Ok(keys.chunks_exact(8).any(|stored| *stored == key))
}

/// The records `keep` keeps of the batch in `row`, with their ids: its id,
/// namespace and function are the row's first three columns, its records at
/// column `records`.
fn records_in(
    row: &rusqlite::Row<'_>,
    records: usize,
    keep: impl Fn(&Packed) -> bool,
) -> Result<Vec<(i64, NewRecord)>, StoreError> {
    let batch = unpack_row(row, 0, records)?;
    let (namespace, function): (String, String) = (row.get(1)?, row.get(2)?);
    Ok(batch
        .records
        .into_iter()
        .filter(|record| keep(record))
        .map(|record| (record.id, record.unpack(&namespace, &function)))
        .collect())
}

/// Decodes the batch in a row: its id and its records at those columns.
fn unpack_row(
    row: &rusqlite::Row<'_>,
    id: usize,
    records: usize,
) -> Result<PackedBatch, StoreError> {
    let records = row
        .get_ref(records)?
        .as_blob()
        .map_err(rusqlite::Error::from)?;
    unpack(row.get(id)?, records)
}

/// Decodes the records of batch `id`.
fn unpack(id: i64, blob: &[u8]) -> Result<PackedBatch, StoreError> {
    PackedBatch::decode(blob).map_err(|source| StoreError::CorruptBatch { id, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(function: &str, message: &str) -> NewLine {
        NewLine {
            time: 1_000,
            namespace: "default".into(),
            function: function.into(),
            call_id: Some("c1".into()),
            stream: LogStream::Stderr,
            message: message.into(),
        }
    }

    fn record(status: u16, started_at: i64) -> NewRecord {
        NewRecord {
            call_id: "c1".into(),
            trace_id: [7; 16],
            span_id: [1; 8],
            parent_span_id: None,
            namespace: "default".into(),
            function: "f".into(),
            source: CallSource::Http,
            started_at,
            duration_us: 2_000_000,
            status,
            error: None,
            memory_limit: 512 << 20,
            memory_peak: Some(1 << 20),
            cpu_us: None,
        }
    }

    #[test]
    fn lines_are_bounded_per_function() {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = Telemetry::open(dir.path(), 3).unwrap();
        let lines: Vec<NewLine> = (0..10).map(|i| line("f", &format!("line {i}"))).collect();
        telemetry.write(&[], &lines).unwrap();
        telemetry.write(&[], &[line("g", "other")]).unwrap();
        telemetry.prune("default", "f").unwrap();
        let kept = telemetry
            .lines(&LogFilter {
                function: Some("f".into()),
                tail: 100,
                ..LogFilter::default()
            })
            .unwrap();
        let messages: Vec<&str> = kept.iter().map(|l| l.line.message.as_str()).collect();
        assert_eq!(messages, ["line 7", "line 8", "line 9"]);
        let other = telemetry
            .lines(&LogFilter {
                function: Some("g".into()),
                tail: 100,
                ..LogFilter::default()
            })
            .unwrap();
        assert_eq!(other.len(), 1);
    }

    #[test]
    fn records_are_found_by_call_and_by_trace() {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = Telemetry::open(dir.path(), 1_000).unwrap();
        let other = NewRecord {
            call_id: "c2".into(),
            trace_id: [8; 16],
            ..record(200, 30)
        };
        let child = NewRecord {
            call_id: "c3".into(),
            span_id: [2; 8],
            parent_span_id: Some([1; 8]),
            ..record(502, 20)
        };
        telemetry
            .write(&[record(200, 10), other, child.clone()], &[])
            .unwrap();
        assert_eq!(telemetry.record("c3", |_| true).unwrap(), Some(child));
        assert_eq!(telemetry.record("c4", |_| true).unwrap(), None);
        let calls: Vec<String> = telemetry
            .trace(&[7; 16])
            .unwrap()
            .into_iter()
            .map(|record| record.call_id)
            .collect();
        assert_eq!(calls, ["c1", "c3"]);
    }

    #[test]
    fn a_trace_wisp_started_is_found_from_its_first_call() {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = Telemetry::open(dir.path(), 1_000).unwrap();
        let call_id = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736";
        let trace_id = trace_of_call(call_id).unwrap();
        let root = NewRecord {
            call_id: call_id.into(),
            trace_id,
            ..record(200, 10)
        };
        let child = NewRecord {
            call_id: "c9".into(),
            trace_id,
            span_id: [2; 8],
            parent_span_id: Some(root.span_id),
            function: "g".into(),
            ..record(200, 11)
        };
        telemetry.write(std::slice::from_ref(&root), &[]).unwrap();
        telemetry
            .write(&[child.clone(), record(200, 12)], &[])
            .unwrap();
        assert_eq!(telemetry.trace(&trace_id).unwrap(), [root, child]);
    }

    #[test]
    fn records_are_pruned_a_batch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        // A step of 2: batches of at most 2 records.
        let telemetry = Telemetry::open(dir.path(), 20).unwrap();
        for commit in 0..10 {
            let records: Vec<NewRecord> = (0..3)
                .map(|i| NewRecord {
                    call_id: format!("c{commit}-{i}"),
                    ..record(200, commit * 10 + i)
                })
                .collect();
            telemetry.write(&records, &[]).unwrap();
        }
        telemetry.prune("default", "f").unwrap();
        let kept = telemetry.recent("default", "f", 100).unwrap();
        assert!(
            (20..22).contains(&kept.len()),
            "the retention, and less than a step more: {}",
            kept.len()
        );
        assert_eq!(kept[0].call_id, "c9-2", "newest first");
        assert_eq!(telemetry.record("c0-0", |_| true).unwrap(), None, "pruned");
        assert!(telemetry.record("c9-0", |_| true).unwrap().is_some());
        let lines = telemetry
            .lines(&LogFilter {
                function: Some("f".into()),
                tail: 3,
                ..LogFilter::default()
            })
            .unwrap();
        let calls: Vec<_> = lines
            .iter()
            .map(|line| line.line.call_id.clone().unwrap())
            .collect();
        assert_eq!(calls, ["c9-0", "c9-1", "c9-2"], "the latest, oldest first");
    }

    #[test]
    fn a_call_log_of_an_earlier_format_is_replaced_and_usage_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = rusqlite::Connection::open(dir.path().join("telemetry.db")).unwrap();
        db.execute_batch(
            "CREATE TABLE records (id INTEGER PRIMARY KEY, call_id TEXT, trace_id TEXT);
             INSERT INTO records VALUES (1, 'old', 'abc');
             CREATE TABLE usage (namespace TEXT NOT NULL, function TEXT NOT NULL,
                 hour INTEGER NOT NULL, invocations INTEGER NOT NULL, errors INTEGER NOT NULL,
                 duration_us INTEGER NOT NULL, gb_us REAL NOT NULL, cpu_us INTEGER NOT NULL,
                 PRIMARY KEY (namespace, function, hour));
             INSERT INTO usage VALUES ('default', 'f', 0, 4, 0, 8, 1.0, 0);",
        )
        .unwrap();
        drop(db);
        let telemetry = Telemetry::open(dir.path(), 1_000).unwrap();
        assert_eq!(telemetry.record("old", |_| true).unwrap(), None);
        telemetry.write(&[record(200, 10)], &[]).unwrap();
        assert!(telemetry.record("c1", |_| true).unwrap().is_some());
        assert_eq!(telemetry.usage(None, 0).unwrap()[0].invocations, 5);
        drop(telemetry);
        let reopened = Telemetry::open(dir.path(), 1_000).unwrap();
        assert!(
            reopened.record("c1", |_| true).unwrap().is_some(),
            "kept once upgraded"
        );
    }

    #[test]
    fn usage_adds_up_gb_seconds_per_hour() {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = Telemetry::open(dir.path(), 1_000).unwrap();
        telemetry
            .write(
                &[
                    record(200, 10),
                    record(502, 20),
                    record(200, MILLIS_PER_HOUR + 5),
                ],
                &[],
            )
            .unwrap();
        let all = telemetry.usage(None, 0).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].invocations, 3);
        assert_eq!(all[0].errors, 1);
        // 3 calls of 2 s at 0.5 GB.
        assert!((all[0].gb_us / 1e6 - 3.0).abs() < 1e-9, "{:?}", all[0]);
        let later = telemetry.usage(Some("default"), MILLIS_PER_HOUR).unwrap();
        assert_eq!(later[0].invocations, 1);
        assert!(telemetry.usage(Some("other"), 0).unwrap().is_empty());
    }
}
