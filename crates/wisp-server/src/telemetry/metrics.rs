//! Prometheus metrics, with OpenFaaS's names so existing dashboards and alerts
//! work (`gateway_function_invocation_total`, `gateway_functions_seconds`,
//! `gateway_service_count`, `gateway_function_invocation_started`) and wisp's
//! own (`wisp_*`). Per-call counts and histograms are updated on the
//! invocation path; everything the node already counts (instances, replicas,
//! cold starts, the queue, the compile cache) is read when scraped.
//!
//! `function_name` is `name.namespace`, as OpenFaaS labels it; `namespace`
//! is a label of its own too.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use wisp_core::FunctionSpec;

use crate::node::{Deployed, Node};

/// A function's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FunctionLabels {
    function_name: String,
    namespace: String,
}

impl FunctionLabels {
    pub(crate) fn of(spec: &FunctionSpec) -> Self {
        Self {
            function_name: format!("{}.{}", spec.name, spec.namespace),
            namespace: spec.namespace.clone(),
        }
    }
}

/// A function's labels with the status code of a call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    function_name: String,
    namespace: String,
    code: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The seconds buckets OpenFaaS's gateway uses (Prometheus's defaults).
const SECONDS_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

/// 1 MiB to 4 GiB, doubling.
fn memory_histogram() -> Histogram {
    Histogram::new(exponential_buckets((1u64 << 20) as f64, 2.0, 13))
}

/// The node's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    invocations: Family<CodeLabels, Counter>,
    seconds: Histograms<CodeLabels>,
    memory: Histograms<FunctionLabels>,
    rejected: Family<FunctionLabels, Counter>,
}

impl Metrics {
    /// The registry, with the node's own counters read from `node` when scraped.
    pub(crate) fn new(node: Weak<Node>) -> Self {
        let mut registry = Registry::default();
        let invocations = Family::<CodeLabels, Counter>::default();
        registry.register(
            "gateway_function_invocation",
            "Calls that ended, by function and status code",
            invocations.clone(),
        );
        let seconds: Histograms<CodeLabels> = Family::new_with_constructor(seconds_histogram);
        registry.register(
            "gateway_functions_seconds",
            "Call duration in seconds, by function and status code",
            seconds.clone(),
        );
        let memory: Histograms<FunctionLabels> = Family::new_with_constructor(memory_histogram);
        registry.register(
            "wisp_invocation_memory_bytes",
            "Peak memory of each call, where measured (wasm linear memory, process RSS)",
            memory.clone(),
        );
        let rejected = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "wisp_rejected",
            "Calls refused with 429 because the function or its namespace was at its limit",
            rejected.clone(),
        );
        registry.register_collector(Box::new(NodeCollector { node }));
        Self {
            registry,
            invocations,
            seconds,
            memory,
            rejected,
        }
    }

    /// Counts a call that ended with `status`.
    pub(crate) fn observe(
        &self,
        function: &Deployed,
        status: u16,
        elapsed: Duration,
        memory_peak: Option<u64>,
    ) {
        let labels = CodeLabels {
            function_name: function.labels.function_name.clone(),
            namespace: function.labels.namespace.clone(),
            code: status.to_string(),
        };
        self.invocations.get_or_create(&labels).inc();
        self.seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(peak) = memory_peak {
            self.memory
                .get_or_create(&function.labels)
                .observe(peak as f64);
        }
    }

    /// Counts a call refused with 429 before it started.
    pub(crate) fn rejected(&self, function: &Deployed) {
        self.rejected.get_or_create(&function.labels).inc();
        self.observe(function, 429, Duration::ZERO, None);
    }

    /// The exposition, in OpenMetrics text.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Reads what the node counts anyway, at scrape time.
#[derive(Debug)]
struct NodeCollector {
    node: Weak<Node>,
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.node.upgrade() else {
            return Ok(());
        };
        let functions: Vec<(Arc<Deployed>, wisp_core::Observed)> = node
            .deployed()
            .into_iter()
            .map(|function| {
                let observed = node.observed(&function.spec.namespace, &function.spec.name);
                (function, observed)
            })
            .collect();
        let mut per_function =
            |name: &str,
             help: &str,
             kind: MetricType,
             value: &dyn Fn(&Deployed, &wisp_core::Observed) -> u64| {
                let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
                for (function, observed) in &functions {
                    let mut series = metric.encode_family(&function.labels)?;
                    let value = value(function, observed);
                    match kind {
                        MetricType::Counter => ConstCounter::new(value).encode(series)?,
                        _ => series.encode_gauge(&(value as i64))?,
                    }
                }
                Ok::<_, std::fmt::Error>(())
            };
        // OpenFaaS exposes this counter without the `_total` suffix
        // OpenMetrics gives counters, so it is typed unknown to keep its name.
        per_function(
            "gateway_function_invocation_started",
            "Calls started, by function",
            MetricType::Unknown,
            &|function, _| function.invocations.load(Ordering::Relaxed),
        )?;
        per_function(
            "gateway_service_count",
            "Replicas of each function (1 for wasm and process functions, which start per call)",
            MetricType::Gauge,
            &|_, observed| observed.replicas,
        )?;
        per_function(
            "wisp_instances",
            "Instances in use: calls running now",
            MetricType::Gauge,
            &|function, _| function.active.load(Ordering::Relaxed),
        )?;
        per_function(
            "wisp_cold_starts",
            "Calls that waited for an instance to start (an HTTP app scaled from zero or up)",
            MetricType::Counter,
            &|_, observed| observed.cold_starts,
        )?;
        per_function(
            "wisp_warm_starts",
            "Calls that found an instance ready (wasm and process calls start in microseconds)",
            MetricType::Counter,
            &|function, observed| {
                function
                    .invocations
                    .load(Ordering::Relaxed)
                    .saturating_sub(observed.cold_starts)
            },
        )?;

        let stats = node.engine.cache_stats();
        let mut single = |name: &str, help: &str, kind: MetricType, value: u64| {
            let metric = encoder.encode_descriptor(name, help, None, kind)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value).encode(metric),
                _ => ConstGauge::new(value as i64).encode(metric),
            }
        };
        single(
            "wisp_compile_cache_hits",
            "Components loaded precompiled from the disk cache",
            MetricType::Counter,
            stats.hits.load(Ordering::Relaxed),
        )?;
        single(
            "wisp_compile_cache_misses",
            "Components compiled because no precompiled copy was cached",
            MetricType::Counter,
            stats.misses.load(Ordering::Relaxed),
        )?;
        single(
            "wisp_call_log_dropped",
            "Log lines and call records dropped because the call log's writer was behind",
            MetricType::Counter,
            node.telemetry.dropped.load(Ordering::Relaxed),
        )?;
        match node.queue.info(&node.store) {
            Ok(queue) => {
                for (name, help, kind, value) in [
                    (
                        "wisp_queue_depth",
                        "Async calls waiting for a worker or a retry",
                        MetricType::Gauge,
                        queue.depth,
                    ),
                    (
                        "wisp_queue_running",
                        "Async calls running now",
                        MetricType::Gauge,
                        queue.running,
                    ),
                    (
                        "wisp_queue_dead",
                        "Async calls in the dead-letter list",
                        MetricType::Gauge,
                        queue.dead,
                    ),
                    (
                        "wisp_queue_enqueued",
                        "Async calls accepted",
                        MetricType::Counter,
                        queue.enqueued,
                    ),
                    (
                        "wisp_queue_attempts",
                        "Async call attempts started",
                        MetricType::Counter,
                        queue.attempts,
                    ),
                    (
                        "wisp_queue_retries",
                        "Async call attempts that will be retried",
                        MetricType::Counter,
                        queue.retries,
                    ),
                    (
                        "wisp_queue_redelivered",
                        "Async calls run again after a restart",
                        MetricType::Counter,
                        queue.redelivered,
                    ),
                    (
                        "wisp_callbacks_delivered",
                        "Callbacks delivered",
                        MetricType::Counter,
                        queue.callbacks_delivered,
                    ),
                    (
                        "wisp_callbacks_failed",
                        "Callbacks given up on",
                        MetricType::Counter,
                        queue.callbacks_failed,
                    ),
                    (
                        "wisp_trigger_firings",
                        "Trigger firings",
                        MetricType::Counter,
                        queue.trigger_firings,
                    ),
                ] {
                    single(name, help, kind, value)?;
                }
            }
            Err(error) => tracing::warn!("metrics: queue figures: {error}"),
        }
        Ok(())
    }
}
