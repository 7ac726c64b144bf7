//! The call log: every call's record (a span of its trace, a reading of the
//! meter), the functions' log lines, and hourly usage totals, in a database of
//! their own (`telemetry.db`) so that logging never waits on the queue's
//! durable commits.
//!
//! Records and lines are bounded per function: once a function has more than
//! its retention, its oldest are deleted. Usage totals are kept whole: they
//! are what a bill is made of. Times are milliseconds since the Unix epoch.

use std::path::Path;

use rusqlite::{OptionalExtension as _, params};
use wisp_core::telemetry::{CallSource, LogStream};

use crate::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS logs (
    id        INTEGER PRIMARY KEY,
    time      INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    function  TEXT NOT NULL,
    call_id   TEXT,
    stream    TEXT NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs (namespace, function, id);
CREATE INDEX IF NOT EXISTS logs_by_call ON logs (call_id);
CREATE TABLE IF NOT EXISTS records (
    id             INTEGER PRIMARY KEY,
    call_id        TEXT NOT NULL,
    trace_id       TEXT NOT NULL,
    span_id        TEXT NOT NULL,
    parent_span_id TEXT,
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
CREATE INDEX IF NOT EXISTS records_by_function ON records (namespace, function, id);
CREATE INDEX IF NOT EXISTS records_by_call ON records (call_id);
CREATE INDEX IF NOT EXISTS records_by_trace ON records (trace_id);
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
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The call id.
    pub call_id: String,
    /// The trace id (hex).
    pub trace_id: String,
    /// The span id (hex).
    pub span_id: String,
    /// The parent span id (hex).
    pub parent_span_id: Option<String>,
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
}

impl Telemetry {
    /// Opens (creating when needed) `telemetry.db` under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let db = rusqlite::Connection::open(root.join("telemetry.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // A power cut may lose the last lines; a crash of the node loses none.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        Ok(Self {
            db: std::sync::Mutex::new(db),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores records and lines in one transaction, adds the records to the
    /// usage totals, and answers the lines' ids in order.
    pub fn write(&self, records: &[NewRecord], lines: &[NewLine]) -> Result<Vec<i64>, StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut ids = Vec::with_capacity(lines.len());
        {
            let mut insert_line = tx.prepare_cached(
                "INSERT INTO logs (time, namespace, function, call_id, stream, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for line in lines {
                insert_line.execute(params![
                    line.time,
                    line.namespace,
                    line.function,
                    line.call_id,
                    line.stream.as_str(),
                    line.message
                ])?;
                ids.push(tx.last_insert_rowid());
            }
            let mut insert_record = tx.prepare_cached(
                "INSERT INTO records (call_id, trace_id, span_id, parent_span_id, namespace,
                     function, source, started_at, duration_us, status, error, memory_limit,
                     memory_peak, cpu_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            let mut add_usage = tx.prepare_cached(
                "INSERT INTO usage (namespace, function, hour, invocations, errors, duration_us,
                     gb_us, cpu_us)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7)
                 ON CONFLICT (namespace, function, hour) DO UPDATE SET
                     invocations = invocations + 1,
                     errors = errors + excluded.errors,
                     duration_us = duration_us + excluded.duration_us,
                     gb_us = gb_us + excluded.gb_us,
                     cpu_us = cpu_us + excluded.cpu_us",
            )?;
            for record in records {
                insert_record.execute(params![
                    record.call_id,
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
                let failed = record.status >= 500 || record.status == 429;
                add_usage.execute(params![
                    record.namespace,
                    record.function,
                    record.started_at.div_euclid(MILLIS_PER_HOUR) * MILLIS_PER_HOUR,
                    i64::from(failed),
                    record.duration_us,
                    record.duration_us as f64 * record.memory_limit as f64 / BYTES_PER_GB,
                    record.cpu_us.unwrap_or(0),
                ])?;
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Deletes a function's oldest lines and records beyond `keep` of each.
    pub fn prune(&self, namespace: &str, function: &str, keep: u32) -> Result<(), StoreError> {
        let db = self.db();
        for table in ["logs", "records"] {
            db.execute(
                &format!(
                    "DELETE FROM {table} WHERE namespace = ?1 AND function = ?2 AND id <= (
                         SELECT id FROM {table} WHERE namespace = ?1 AND function = ?2
                         ORDER BY id DESC LIMIT 1 OFFSET ?3)"
                ),
                params![namespace, function, keep],
            )?;
        }
        Ok(())
    }

    /// Log lines matching `filter`, oldest first.
    pub fn lines(&self, filter: &LogFilter) -> Result<Vec<StoredLine>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT id, time, namespace, function, call_id, stream, message FROM (
                 SELECT * FROM logs
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR function = ?2)
                   AND (?3 IS NULL OR call_id = ?3) AND (?4 IS NULL OR time >= ?4)
                   AND (?5 IS NULL OR id > ?5)
                 ORDER BY id DESC LIMIT ?6)
             ORDER BY id",
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
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The latest record of a call.
    pub fn record(&self, call_id: &str) -> Result<Option<NewRecord>, StoreError> {
        let db = self.db();
        Ok(db
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE call_id = ?1 ORDER BY id DESC LIMIT 1"
            ))?
            .query_row([call_id], read_record)
            .optional()?)
    }

    /// Every record of a trace, in the order the calls started.
    pub fn trace(&self, trace_id: &str) -> Result<Vec<NewRecord>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE trace_id = ?1 ORDER BY started_at, id"
        ))?;
        let rows = statement.query_map([trace_id], read_record)?;
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
            "SELECT {RECORD_COLUMNS} FROM records WHERE namespace = ?1 AND function = ?2
             ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = statement.query_map(params![namespace, function, limit], read_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last STDERR line a call wrote.
    pub fn last_stderr(&self, call_id: &str) -> Result<Option<String>, StoreError> {
        let db = self.db();
        Ok(db
            .prepare_cached(
                "SELECT message FROM logs WHERE call_id = ?1 AND stream = 'stderr'
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row([call_id], |row| row.get(0))
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

fn source_name(source: CallSource) -> &'static str {
    match source {
        CallSource::Http => "http",
        CallSource::Queue => "queue",
    }
}

fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<NewRecord> {
    let source: String = row.get(6)?;
    Ok(NewRecord {
        call_id: row.get(0)?,
        trace_id: row.get(1)?,
        span_id: row.get(2)?,
        parent_span_id: row.get(3)?,
        namespace: row.get(4)?,
        function: row.get(5)?,
        source: if source == "queue" {
            CallSource::Queue
        } else {
            CallSource::Http
        },
        started_at: row.get(7)?,
        duration_us: row.get(8)?,
        status: row.get(9)?,
        error: row.get(10)?,
        memory_limit: row.get::<_, i64>(11)? as u64,
        memory_peak: row.get::<_, Option<i64>>(12)?.map(|peak| peak as u64),
        cpu_us: row.get(13)?,
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
            trace_id: "t".into(),
            span_id: "s".into(),
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
