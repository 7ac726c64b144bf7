//! The call log: every call's record (a span of its trace, a reading of the
//! meter), the functions' log lines, and hourly usage totals, in a database of
//! their own (`telemetry.db`) so that logging never waits on the queue's
//! durable commits. Lines and records share one sequence of ids, and each
//! record reads back as wisp's own log line for its call, so a call costs one
//! row, not two.
//!
//! Records and lines are bounded per function: once a function has more than
//! its retention, its oldest are deleted. Usage totals are kept whole: they
//! are what a bill is made of. Times are milliseconds since the Unix epoch.
//!
//! A record is written on every call, so its row is kept lean: trace and
//! span ids are stored as bytes, and the function, call and trace lookups go
//! through integer keys (hashes of the names and the call id, the low half of
//! the trace id) whose index entries are a fraction of the size of the
//! strings they stand for. A call log
//! written by an earlier format is dropped when the node opens it (usage
//! totals are kept).

use std::{
    collections::HashMap,
    path::Path,
    sync::atomic::{AtomicI64, Ordering},
};

use rusqlite::{OptionalExtension as _, params};
use wisp_core::telemetry::{CallSource, LogStream, is_failure};

use crate::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS logs (
    id           INTEGER PRIMARY KEY,
    function_key INTEGER NOT NULL,
    time         INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    function  TEXT NOT NULL,
    call_id   TEXT,
    stream    TEXT NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs (function_key, id);
CREATE TABLE IF NOT EXISTS records (
    id             INTEGER PRIMARY KEY,
    function_key   INTEGER NOT NULL,
    call_key       INTEGER NOT NULL,
    call_id        TEXT NOT NULL,
    trace_key      INTEGER NOT NULL,
    trace_id       BLOB NOT NULL,
    span_id        BLOB NOT NULL,
    parent_span_id BLOB,
    namespace      TEXT NOT NULL,
    function       TEXT NOT NULL,
    source         TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_us    INTEGER NOT NULL,
    status         INTEGER NOT NULL,
    error          TEXT,
    memory_limit   INTEGER NOT NULL,
    memory_peak    INTEGER,
    cpu_us         INTEGER
);
CREATE INDEX IF NOT EXISTS records_by_function ON records (function_key, id);
CREATE INDEX IF NOT EXISTS records_by_call ON records (call_key);
CREATE INDEX IF NOT EXISTS records_by_trace ON records (trace_key);
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
const FORMAT: i64 = 2;

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
    /// The id the next line or record gets; changed only under the lock.
    next_id: AtomicI64,
}

impl Telemetry {
    /// Opens (creating when needed) `telemetry.db` under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let db = rusqlite::Connection::open(root.join("telemetry.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // A power cut may lose the last lines; a crash of the node loses none.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        // The indexes of a busy function's records stay in memory.
        db.pragma_update(None, "cache_size", -65_536)?;
        let format: i64 = db.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if format != FORMAT {
            db.execute_batch(&format!(
                "DROP TABLE IF EXISTS logs; DROP TABLE IF EXISTS records;
                 PRAGMA user_version = {FORMAT};"
            ))?;
        }
        db.execute_batch(SCHEMA)?;
        let last: i64 = db.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM logs), 0),
                        COALESCE((SELECT MAX(id) FROM records), 0))",
            [],
            |row| row.get(0),
        )?;
        Ok(Self {
            db: std::sync::Mutex::new(db),
            next_id: AtomicI64::new(last + 1),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores lines and records in one transaction (lines first), adds the
    /// records to the usage totals (one update per function and hour), and
    /// answers the first id: the lines and then the records have the ids
    /// that follow it, in order.
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
            let mut insert_record = tx.prepare_cached(
                "INSERT INTO records (id, function_key, call_key, call_id, trace_key, trace_id,
                     span_id, parent_span_id, namespace, function, source, started_at,
                     duration_us, status, error, memory_limit, memory_peak, cpu_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18)",
            )?;
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
            let mut totals: HashMap<(&str, &str, i64), UsageTotals> = HashMap::new();
            for record in records {
                insert_record.execute(params![
                    id,
                    function_key(&record.namespace, &record.function),
                    call_key(&record.call_id),
                    record.call_id,
                    trace_key(&record.trace_id),
                    record.trace_id,
                    record.span_id,
                    record.parent_span_id,
                    record.namespace,
                    record.function,
                    source_name(record.source),
                    record.started_at,
                    record.duration_us,
                    record.status,
                    record.error,
                    record.memory_limit as i64,
                    record.memory_peak.map(|peak| peak as i64),
                    record.cpu_us,
                ])?;
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

    /// Deletes a function's oldest lines and records beyond `keep` of each.
    pub fn prune(&self, namespace: &str, function: &str, keep: u32) -> Result<(), StoreError> {
        let db = self.db();
        for table in ["logs", "records"] {
            db.execute(
                &format!(
                    "DELETE FROM {table} WHERE function_key = ?1 AND namespace = ?2
                         AND function = ?3 AND id <= (
                             SELECT id FROM {table} WHERE function_key = ?1 AND namespace = ?2
                             AND function = ?3 ORDER BY id DESC LIMIT 1 OFFSET ?4)"
                ),
                params![function_key(namespace, function), namespace, function, keep],
            )?;
        }
        Ok(())
    }

    /// Log lines matching `filter`, oldest first: the functions' lines and
    /// wisp's line for each call.
    pub fn lines(&self, filter: &LogFilter) -> Result<Vec<StoredLine>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(&format!(
            "SELECT id, time, namespace, function, call_id, stream, message, {RECORD_COLUMNS} FROM (
                 SELECT id, time, namespace, function, call_id, stream, message,
                     NULL AS trace_id, NULL AS span_id, NULL AS parent_span_id, NULL AS source,
                     NULL AS started_at, NULL AS duration_us, NULL AS status, NULL AS error,
                     NULL AS memory_limit, NULL AS memory_peak, NULL AS cpu_us
                 FROM logs
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR function = ?2)
                   AND (?3 IS NULL OR call_id = ?3) AND (?4 IS NULL OR time >= ?4)
                   AND (?5 IS NULL OR id > ?5)
                 UNION ALL
                 SELECT id, started_at + duration_us / 1000, namespace, function, call_id, 'wisp',
                     NULL, trace_id, span_id, parent_span_id, source, started_at, duration_us,
                     status, error, memory_limit, memory_peak, cpu_us
                 FROM records
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR function = ?2)
                   AND (?3 IS NULL OR call_id = ?3)
                   AND (?4 IS NULL OR started_at + duration_us / 1000 >= ?4)
                   AND (?5 IS NULL OR id > ?5)
                 ORDER BY id DESC LIMIT ?6)
             ORDER BY id"
        ))?;
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
                let id = row.get(0)?;
                let stream: String = row.get(5)?;
                let message: Option<String> = row.get(6)?;
                Ok(match message {
                    Some(message) => StoredLine {
                        id,
                        line: NewLine {
                            time: row.get(1)?,
                            namespace: row.get(2)?,
                            function: row.get(3)?,
                            call_id: row.get(4)?,
                            stream: LogStream::parse(&stream).unwrap_or(LogStream::Wisp),
                            message,
                        },
                    },
                    None => record_line(id, &read_record_at(row, 7)?),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The latest record of a call.
    pub fn record(&self, call_id: &str) -> Result<Option<NewRecord>, StoreError> {
        let db = self.db();
        Ok(db
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE call_key = ?1 AND call_id = ?2
                 ORDER BY id DESC LIMIT 1"
            ))?
            .query_row(params![call_key(call_id), call_id], read_record)
            .optional()?)
    }

    /// Every record of a trace, in the order the calls started.
    pub fn trace(&self, trace_id: &[u8; 16]) -> Result<Vec<NewRecord>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE trace_key = ?1 AND trace_id = ?2
             ORDER BY started_at, id"
        ))?;
        let rows = statement.query_map(params![trace_key(trace_id), trace_id], read_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A function's latest records, newest first.
    pub fn recent(
        &self,
        namespace: &str,
        function: &str,
        limit: u32,
    ) -> Result<Vec<NewRecord>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records
             WHERE function_key = ?1 AND namespace = ?2 AND function = ?3
             ORDER BY id DESC LIMIT ?4"
        ))?;
        let rows = statement.query_map(
            params![function_key(namespace, function), namespace, function, limit],
            read_record,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
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
                params![function_key(namespace, function), namespace, function, call_id],
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

const RECORD_COLUMNS: &str = "call_id, trace_id, span_id, parent_span_id, namespace, function, \
     source, started_at, duration_us, status, error, memory_limit, memory_peak, cpu_us";

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

fn source_name(source: CallSource) -> &'static str {
    match source {
        CallSource::Http => "http",
        CallSource::Queue => "queue",
    }
}

fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<NewRecord> {
    read_record_at(row, 0)
}

/// Reads [`RECORD_COLUMNS`] starting at column `at`.
fn read_record_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<NewRecord> {
    let source: String = row.get(at + 6)?;
    Ok(NewRecord {
        call_id: row.get(at)?,
        trace_id: row.get(at + 1)?,
        span_id: row.get(at + 2)?,
        parent_span_id: row.get(at + 3)?,
        namespace: row.get(at + 4)?,
        function: row.get(at + 5)?,
        source: if source == "queue" {
            CallSource::Queue
        } else {
            CallSource::Http
        },
        started_at: row.get(at + 7)?,
        duration_us: row.get(at + 8)?,
        status: row.get(at + 9)?,
        error: row.get(at + 10)?,
        memory_limit: row.get::<_, i64>(at + 11)? as u64,
        memory_peak: row.get::<_, Option<i64>>(at + 12)?.map(|peak| peak as u64),
        cpu_us: row.get(at + 13)?,
    })
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
        let telemetry = Telemetry::open(dir.path()).unwrap();
        let lines: Vec<NewLine> = (0..10).map(|i| line("f", &format!("line {i}"))).collect();
        telemetry.write(&[], &lines).unwrap();
        telemetry.write(&[], &[line("g", "other")]).unwrap();
        telemetry.prune("default", "f", 3).unwrap();
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
        let telemetry = Telemetry::open(dir.path()).unwrap();
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
        assert_eq!(telemetry.record("c3").unwrap(), Some(child));
        assert_eq!(telemetry.record("c4").unwrap(), None);
        let calls: Vec<String> = telemetry
            .trace(&[7; 16])
            .unwrap()
            .into_iter()
            .map(|record| record.call_id)
            .collect();
        assert_eq!(calls, ["c1", "c3"]);
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
        let telemetry = Telemetry::open(dir.path()).unwrap();
        assert_eq!(telemetry.record("old").unwrap(), None);
        telemetry.write(&[record(200, 10)], &[]).unwrap();
        assert!(telemetry.record("c1").unwrap().is_some());
        assert_eq!(telemetry.usage(None, 0).unwrap()[0].invocations, 5);
        drop(telemetry);
        let reopened = Telemetry::open(dir.path()).unwrap();
        assert!(reopened.record("c1").unwrap().is_some(), "kept once upgraded");
    }

    #[test]
    fn usage_adds_up_gb_seconds_per_hour() {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = Telemetry::open(dir.path()).unwrap();
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
