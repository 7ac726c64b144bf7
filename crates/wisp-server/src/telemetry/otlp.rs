//! OTLP export: with `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`),
//! every call record becomes a span, POSTed in batches as OTLP/HTTP protobuf
//! to `{endpoint}/v1/traces`, so Jaeger, Tempo or any OpenTelemetry collector
//! shows wisp's calls in the traces they belong to. Export is best effort: a
//! collector that is down costs dropped spans and a log line, never a call.

use std::time::Duration;

use axum::http::{self, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};
use prost::Message as _;
use tokio::sync::mpsc;
use wisp_core::telemetry::{CallSource, is_failure};
use wisp_store::NewRecord;

/// Spans waiting to be exported before new ones are dropped.
const BACKLOG: usize = 16_384;
/// The most spans sent in one request.
const MAX_BATCH: usize = 512;
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks an OTLP endpoint: an `http://host[:port]` base URL.
pub(crate) fn traces_url(endpoint: &str) -> Result<Uri, String> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("the OTLP endpoint `{endpoint}` is not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "the OTLP endpoint `{endpoint}` must be an http://host:port URL (OTLP/HTTP; TLS is not supported yet)"
        ));
    }
    Ok(uri)
}

/// Where the call log's writer hands records to be exported.
pub(crate) struct Exporter(mpsc::Sender<NewRecord>);

impl Exporter {
    /// Starts the export task on the current runtime.
    pub(crate) fn start(url: Uri, runtime: &tokio::runtime::Handle) -> Self {
        let (sender, receiver) = mpsc::channel(BACKLOG);
        runtime.spawn(export(url, receiver));
        Self(sender)
    }

    /// Queues a record; dropped when the exporter is behind.
    pub(crate) fn send(&self, record: NewRecord) {
        let _ = self.0.try_send(record);
    }
}

async fn export(url: Uri, mut receiver: mpsc::Receiver<NewRecord>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut failing = false;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let body = request(&batch).encode_to_vec();
        let spans = batch.len();
        batch.clear();
        let post = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let outcome = match tokio::time::timeout(EXPORT_TIMEOUT, client.request(post)).await {
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!("answered {}", response.status())),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer in 10s".to_owned()),
        };
        // Log changes of state, not every failed batch.
        match outcome {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("OTLP export to {url} works again");
            }
            Err(why) if !failing => {
                failing = true;
                tracing::warn!("OTLP export to {url} failed ({why}); {spans} spans dropped");
            }
            _ => {}
        }
    }
}

/// One export request: wisp as the resource, each record a server span.
fn request(records: &[NewRecord]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "wisp")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "wisp".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                spans: records.iter().map(span).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn span(record: &NewRecord) -> Span {
    let start = record.started_at as u64 * 1_000_000;
    let mut attributes = vec![
        text("faas.name", &record.function),
        text("faas.invocation_id", &record.call_id),
        text(
            "faas.trigger",
            match record.source {
                CallSource::Http => "http",
                CallSource::Queue => "other",
            },
        ),
        text("wisp.namespace", &record.namespace),
        integer("http.response.status_code", i64::from(record.status)),
        integer("faas.max_memory", record.memory_limit as i64),
    ];
    if let Some(peak) = record.memory_peak {
        attributes.push(integer("wisp.memory_peak", peak as i64));
    }
    Span {
        trace_id: record.trace_id.to_vec(),
        span_id: record.span_id.to_vec(),
        parent_span_id: record
            .parent_span_id
            .map(|id| id.to_vec())
            .unwrap_or_default(),
        name: format!("{}.{}", record.function, record.namespace),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + record.duration_us as u64 * 1000,
        attributes,
        status: Some(Status {
            message: record.error.clone().unwrap_or_default(),
            code: if is_failure(record.status) {
                StatusCode::Error
            } else {
                StatusCode::Ok
            } as i32,
        }),
        ..Span::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn integer(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}
