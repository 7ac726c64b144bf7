//! Observability: what the node records about each call and serves back.
//! A call joins the caller's W3C trace or starts one ([`Span`]); when it ends,
//! its record (span, status, duration, memory, CPU; read back as wisp's own
//! log line for the call) is queued, with the function's output lines, to one
//! writer thread that
//! commits them in batches to the call log and then shows each line to live
//! followers (and, when configured, hands the records to the [`otlp`]
//! exporter). The invocation path never waits on the disk: when the writer
//! falls behind, lines are dropped and counted. Prometheus metrics are in
//! [`metrics`], the routes in [`routes`].

pub(crate) mod metrics;
pub(crate) mod otlp;
pub(crate) mod routes;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime},
};

use axum::http::{HeaderMap, HeaderValue};
use wisp_core::telemetry::{CallSource, LogEntry, LogStream, TraceParent, trace_of_call};
use wisp_runtime::{Meter, OutputSink};
use wisp_store::{NewLine, NewRecord, StoredLine, Telemetry as CallLog, record_line};

use crate::events::rfc3339;

/// Entries waiting for the writer before new ones are dropped.
const BACKLOG: usize = 65_536;
/// The most entries committed together.
const MAX_BATCH: usize = BACKLOG;
/// How long the writer gathers entries before it commits them. One commit
/// per interval, not one per call, writes each touched index page once per
/// interval instead of once per call: that keeps the call log's cost off the
/// invocation path, at the price of a followed line arriving up to this late.
/// Readers of the API ask for a commit first ([`Telemetry::flush`]), so they
/// always see every call that ended before they asked.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Live followers that fall this far behind miss lines (and are told so).
const LIVE_BUFFER: usize = 4096;

/// The W3C Trace Context header.
pub(crate) const TRACEPARENT: &str = "traceparent";

enum Entry {
    Line(NewLine),
    Record(NewRecord),
    /// Commit now, then say so.
    Flush(mpsc::Sender<()>),
}

/// The node's call log: records, log lines and their live followers.
pub(crate) struct Telemetry {
    log: Arc<CallLog>,
    sender: mpsc::SyncSender<Entry>,
    live: tokio::sync::broadcast::Sender<Arc<LogEntry>>,
    /// Set when the node stops: followers end, so they do not hold its
    /// graceful stop for the whole grace period.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Entries dropped because the writer was behind.
    pub(crate) dropped: Arc<AtomicU64>,
    /// Set (and the writer unparked) when a reader wants a commit now.
    flush_wanted: Arc<AtomicBool>,
    writer: std::thread::Thread,
}

impl Telemetry {
    /// Starts the writer thread over `log`, exporting records to `exporter`.
    pub(crate) fn start(log: CallLog, exporter: Option<otlp::Exporter>) -> std::io::Result<Self> {
        let log = Arc::new(log);
        let (sender, receiver) = mpsc::sync_channel(BACKLOG);
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let flush_wanted = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            flush_wanted: flush_wanted.clone(),
            log: log.clone(),
            live: live.clone(),
            since_pruned: HashMap::new(),
            exporter,
        };
        let writer = std::thread::Builder::new()
            .name("wisp-call-log".into())
            .spawn(move || writer.run(&receiver))?
            .thread()
            .clone();
        Ok(Self {
            flush_wanted,
            writer,
            log,
            sender,
            live,
            stopping: tokio::sync::watch::Sender::new(false),
            dropped,
        })
    }

    /// The call log, for reads.
    pub(crate) fn log(&self) -> &Arc<CallLog> {
        &self.log
    }

    /// Follows lines as they are committed, until the node stops.
    pub(crate) fn follow(
        &self,
    ) -> (
        tokio::sync::broadcast::Receiver<Arc<LogEntry>>,
        tokio::sync::watch::Receiver<bool>,
    ) {
        (self.live.subscribe(), self.stopping.subscribe())
    }

    /// Ends every follower: the node is stopping.
    pub(crate) fn stop_following(&self) {
        self.stopping.send_replace(true);
    }

    /// Waits until everything queued so far is committed. Blocking.
    pub(crate) fn flush(&self) {
        let (done, committed) = mpsc::channel();
        if self.sender.send(Entry::Flush(done)).is_ok() {
            self.flush_wanted.store(true, Ordering::SeqCst);
            self.writer.unpark();
            let _ = committed.recv();
        }
    }

    fn send(&self, entry: Entry) {
        if self.sender.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues one line of a function's output.
    pub(crate) fn line(
        &self,
        namespace: &str,
        function: &str,
        call_id: Option<&str>,
        stream: LogStream,
        message: &str,
    ) {
        self.send(Entry::Line(NewLine {
            time: now_millis(),
            namespace: namespace.to_owned(),
            function: function.to_owned(),
            call_id: call_id.map(str::to_owned),
            stream,
            message: message.to_owned(),
        }));
    }

    /// Queues a finished call's record (which is also wisp's line for it).
    pub(crate) fn finish(&self, call: FinishedCall<'_>) {
        let memory_peak = call.meter.memory_peak();
        let cpu = call.meter.cpu_time();
        self.send(Entry::Record(NewRecord {
            call_id: call.call_id.to_owned(),
            trace_id: call.span.trace_id,
            span_id: call.span.span_id,
            parent_span_id: call.span.parent_id,
            namespace: call.namespace.to_owned(),
            function: call.function.to_owned(),
            source: call.source,
            started_at: millis_of(call.started_at),
            duration_us: call.elapsed.as_micros() as i64,
            status: call.status,
            error: call.error,
            memory_limit: call.memory_limit,
            memory_peak,
            cpu_us: cpu.map(|cpu| cpu.as_micros() as i64),
        }));
    }
}

/// A call that has ended, as [`Telemetry::finish`] records it.
pub(crate) struct FinishedCall<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) function: &'a str,
    pub(crate) call_id: &'a str,
    pub(crate) span: Span,
    pub(crate) source: CallSource,
    pub(crate) started_at: SystemTime,
    pub(crate) elapsed: Duration,
    pub(crate) status: u16,
    pub(crate) error: Option<String>,
    pub(crate) memory_limit: u64,
    pub(crate) meter: &'a Meter,
}

/// A call's place in its trace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
}

impl Span {
    /// Joins the trace of the request's `traceparent`, or starts a new one
    /// (named after the call, when wisp made its id), and rewrites the header
    /// so the function sees this call as its parent.
    pub(crate) fn enter(headers: &mut HeaderMap, call_id: &str) -> Self {
        let caller = headers
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(TraceParent::parse);
        let random: [u8; 24] = rand::random();
        let mut span_id: [u8; 8] = random[16..].try_into().expect("8 bytes");
        span_id[0] |= 1; // never all zero
        let (trace_id, parent_id, flags) = match caller {
            Some(caller) => (caller.trace_id, Some(caller.parent_id), caller.flags),
            None => {
                let trace_id = trace_of_call(call_id).unwrap_or_else(|| {
                    let mut trace_id: [u8; 16] = random[..16].try_into().expect("16 bytes");
                    trace_id[0] |= 1;
                    trace_id
                });
                (trace_id, None, 1)
            }
        };
        let own = TraceParent {
            trace_id,
            parent_id: span_id,
            flags,
        };
        if let Ok(value) = HeaderValue::from_bytes(&own.header()) {
            headers.insert(TRACEPARENT, value);
        }
        Self {
            trace_id,
            span_id,
            parent_id,
        }
    }
}

/// A function's output, queued to the call log under its name.
pub(crate) struct FunctionOutput {
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) namespace: String,
    pub(crate) function: String,
}

impl OutputSink for FunctionOutput {
    fn line(&self, call_id: Option<&str>, stream: LogStream, line: &str) {
        // The node's own log shows it too, as `spin up` shows a guest's output.
        tracing::info!(
            target: "wisp::function",
            function = %self.function,
            namespace = %self.namespace,
            call_id = call_id.unwrap_or("-"),
            "{}: {line}",
            stream.as_str()
        );
        self.telemetry
            .line(&self.namespace, &self.function, call_id, stream, line);
    }
}

/// The thread that owns every write to the call log.
struct Writer {
    log: Arc<CallLog>,
    flush_wanted: Arc<AtomicBool>,
    live: tokio::sync::broadcast::Sender<Arc<LogEntry>>,
    /// Entries written per function since it was last pruned.
    since_pruned: HashMap<(String, String), u32>,
    exporter: Option<otlp::Exporter>,
}

impl Writer {
    fn run(mut self, receiver: &mpsc::Receiver<Entry>) {
        // Blocks on the channel only when idle: while gathering it sleeps, so
        // the invocation path's sends wake no one.
        while let Ok(first) = receiver.recv() {
            let deadline = std::time::Instant::now() + COMMIT_INTERVAL;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if self.flush_wanted.swap(false, Ordering::SeqCst) || left.is_zero() {
                    break;
                }
                std::thread::park_timeout(left);
            }
            let mut lines = Vec::new();
            let mut records = Vec::new();
            let mut flushed = Vec::new();
            for entry in std::iter::once(first).chain(receiver.try_iter().take(MAX_BATCH - 1)) {
                match entry {
                    Entry::Line(line) => lines.push(line),
                    Entry::Record(record) => records.push(record),
                    Entry::Flush(done) => flushed.push(done),
                }
            }
            match self.log.write(&records, &lines) {
                Ok(first) => {
                    let followed = self.live.receiver_count() > 0;
                    let mut id = first;
                    for line in lines {
                        self.count(&line.namespace, &line.function);
                        if followed {
                            let _ = self.live.send(Arc::new(entry(StoredLine { id, line })));
                        }
                        id += 1;
                    }
                    for record in records {
                        self.count(&record.namespace, &record.function);
                        if followed {
                            let _ = self.live.send(Arc::new(entry(record_line(id, &record))));
                        }
                        if let Some(exporter) = &self.exporter {
                            exporter.send(record);
                        }
                        id += 1;
                    }
                }
                Err(error) => tracing::error!("call log: {error}"),
            }
            for done in flushed {
                let _ = done.send(());
            }
        }
    }

    /// Prunes a function once it has written a prune step again.
    fn count(&mut self, namespace: &str, function: &str) {
        let key = (namespace.to_owned(), function.to_owned());
        let written = self.since_pruned.entry(key).or_default();
        *written += 1;
        if *written >= self.log.prune_step() {
            *written = 0;
            if let Err(error) = self.log.prune(namespace, function) {
                tracing::error!("call log: prune {function}.{namespace}: {error}");
            }
        }
    }
}

/// A stored line as the API serves it.
pub(crate) fn entry(stored: StoredLine) -> LogEntry {
    let line = stored.line;
    LogEntry {
        id: stored.id,
        time: rfc3339_millis(line.time),
        namespace: line.namespace,
        function: line.function,
        call_id: line.call_id,
        stream: line.stream,
        message: line.message,
    }
}

/// Milliseconds since the Unix epoch as RFC 3339.
pub(crate) fn rfc3339_millis(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(rfc3339)
        .unwrap_or_default()
}

fn millis_of(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

fn now_millis() -> i64 {
    millis_of(SystemTime::now())
}
