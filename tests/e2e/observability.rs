//! Metrics, the call log, traces across chains of functions, and usage.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use wisp_testing::{Node, script_archive, send};

use crate::{WISP, node_with_probe};

/// The samples of a scrape, by metric name and label set.
fn scrape(node: &Node) -> Vec<prometheus_parse::Sample> {
    let response = node.get("/metrics");
    assert_eq!(response.status, 200, "/metrics needs no token");
    assert!(
        response.body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let lines = response.body.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("the exposition parses")
        .samples
}

/// The value of the one sample of `metric` whose labels include `labels`.
fn value(samples: &[prometheus_parse::Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map(|sample| match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{metric} is not a single value: {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 1, "one sample of {metric} {labels:?}");
    found[0]
}

#[test]
fn metrics_parse_and_count_a_known_sequence_of_calls() {
    let node = node_with_probe(json!({}));
    for _ in 0..3 {
        assert_eq!(node.get("/function/probe").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(node.get("/function/probe/status?code=503").status, 503);
    }
    assert_eq!(node.get("/function/probe/trap").status, 502);
    assert_eq!(node.get("/function/probe/grow?mib=8").status, 200);

    let samples = scrape(&node);
    let probe = ("function_name", "probe.default");
    let count = |code| {
        value(
            &samples,
            "gateway_function_invocation_total",
            &[probe, ("code", code)],
        )
    };
    assert_eq!(count("200"), 4.0);
    assert_eq!(count("503"), 2.0);
    assert_eq!(count("502"), 1.0);
    assert_eq!(
        value(&samples, "gateway_function_invocation_started", &[probe]),
        7.0
    );
    assert_eq!(
        value(
            &samples,
            "gateway_functions_seconds_count",
            &[probe, ("code", "200")]
        ),
        4.0
    );
    let buckets = samples
        .iter()
        .find(|s| s.metric == "gateway_functions_seconds" && s.labels.get("code") == Some("503"))
        .expect("a histogram for 503");
    let prometheus_parse::Value::Histogram(buckets) = &buckets.value else {
        panic!("gateway_functions_seconds is a histogram");
    };
    assert_eq!(buckets.last().unwrap().count, 2.0, "+Inf holds every call");
    assert_eq!(value(&samples, "gateway_service_count", &[probe]), 1.0);
    assert_eq!(value(&samples, "wisp_instances", &[probe]), 0.0);
    assert_eq!(
        value(
            &samples,
            "wisp_warm_starts_total",
            &[probe, ("namespace", "default")]
        ),
        7.0
    );
    assert_eq!(value(&samples, "wisp_cold_starts_total", &[probe]), 0.0);
    assert_eq!(
        value(&samples, "wisp_invocation_memory_bytes_count", &[probe]),
        7.0,
        "every wasm call's memory is measured"
    );
    let memory = value(&samples, "wisp_invocation_memory_bytes_sum", &[probe]);
    assert!(
        memory >= 8.0 * 1024.0 * 1024.0,
        "the 8 MiB call counts: {memory}"
    );
    // Compiled once by Cranelift, in the background while Winch's code served.
    assert!(node.eventually(Duration::from_secs(60), || {
        value(&scrape(&node), "wisp_compile_cache_misses_total", &[]) == 1.0
    }));
    assert_eq!(value(&samples, "wisp_queue_depth", &[]), 0.0);
}

#[test]
fn rejected_calls_are_counted_as_429() {
    let node = node_with_probe(json!({ "maxConcurrency": 1, "queueTimeout": "0s" }));
    let slow = node.get_in_background("/function/probe/sleep?ms=1500");
    assert!(node.eventually(Duration::from_secs(5), || {
        value(
            &scrape(&node),
            "wisp_instances",
            &[("function_name", "probe.default")],
        ) == 1.0
    }));
    assert_eq!(node.get("/function/probe").status, 429);
    assert_eq!(slow.join().unwrap().status, 200);
    let samples = scrape(&node);
    let probe = ("function_name", "probe.default");
    assert_eq!(value(&samples, "wisp_rejected_total", &[probe]), 1.0);
    assert_eq!(
        value(
            &samples,
            "gateway_function_invocation_total",
            &[probe, ("code", "429")]
        ),
        1.0
    );
}

/// Log lines from `GET /system/logs` with `query`.
fn log_lines(node: &Node, query: &str) -> Vec<Value> {
    let response = send(node.admin("GET", &format!("/system/logs?{query}")), None);
    assert_eq!(response.status, 200, "{}", response.body);
    response
        .body
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

#[test]
fn logs_keep_each_calls_output_survive_a_restart_and_are_bounded() {
    let node = Node::start_args(WISP, &["--call-log-retention", "20"]);
    let script = "#!/bin/sh\nread body\necho \"working on $body\" >&2\necho \"done $body\"\n";
    let digest = node.upload(&script_archive("run.sh", script));
    node.deploy_ok(json!({ "service": "worker", "kind": "process", "image": digest, "envProcess": "./run.sh" }));

    let response = node.post("/function/worker", b"job-1\n");
    assert_eq!(response.status, 200);
    let call_id = response.header("x-call-id").unwrap().to_owned();
    // An async call's STDOUT has no caller to go to: it is logged.
    let queued = node.post("/async-function/worker", b"job-2\n");
    assert_eq!(queued.status, 202);
    let async_id = queued.header("x-call-id").unwrap().to_owned();
    assert!(node.eventually(Duration::from_secs(10), || {
        log_lines(&node, "name=worker")
            .iter()
            .any(|line| line["message"] == "done job-2")
    }));

    let lines = log_lines(&node, "name=worker");
    let of = |id: &str, stream: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|line| line["callId"] == id && line["stream"] == stream)
            .map(|line| line["message"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(of(&call_id, "stderr"), ["working on job-1"]);
    assert!(
        of(&call_id, "stdout").is_empty(),
        "a sync call's STDOUT is its response"
    );
    let wisp = of(&call_id, "wisp");
    assert_eq!(wisp.len(), 1);
    assert!(wisp[0].starts_with("200 in "), "{wisp:?}");
    assert!(
        wisp[0].contains("memory "),
        "a process's peak RSS is measured: {wisp:?}"
    );
    assert_eq!(of(&async_id, "stdout"), ["done job-2"]);
    assert_eq!(lines[0]["function"], "worker");
    assert_eq!(lines[0]["namespace"], "default");

    // The CLI prints the same lines, filtered by call.
    let output = node
        .cli(WISP)
        .args(["logs", "worker", "--call", &call_id])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains(&format!("{call_id} [stderr] working on job-1")),
        "{text}"
    );
    assert!(!text.contains("job-2"), "{text}");
    let since = node
        .cli(WISP)
        .args(["logs", "worker", "--since", "1h"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&since.stdout).contains("working on job-1"));
    let bad = node
        .cli(WISP)
        .args(["logs", "worker", "--since", "yesterday"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither a duration"));

    // Lines survive a restart.
    let data_dir = node.data_dir.clone();
    let (_, scratch) = node.stop();
    let node = Node::start_with(WISP, scratch, data_dir, &["--call-log-retention", "20"]);
    assert!(
        log_lines(&node, "name=worker")
            .iter()
            .any(|line| line["message"] == "working on job-1")
    );

    // And they are bounded: the oldest go first.
    for i in 0..40 {
        assert_eq!(
            node.post("/function/worker", format!("n{i}\n").as_bytes())
                .status,
            200
        );
    }
    assert!(node.eventually(Duration::from_secs(10), || {
        log_lines(&node, "name=worker&tail=1000")
            .iter()
            .any(|line| line["message"] == "working on n39")
    }));
    let kept = log_lines(&node, "name=worker&tail=1000");
    // The retention bounds output lines and calls (whose records are wisp's lines) apart.
    for stream in ["stderr", "wisp"] {
        let count = kept.iter().filter(|line| line["stream"] == stream).count();
        assert!(
            count <= 22,
            "at most the retention (and one prune step): {count} {stream}"
        );
    }
    assert!(
        !kept
            .iter()
            .any(|line| line["message"] == "working on job-1")
    );
}

#[test]
fn logs_can_be_followed_live() {
    let node = node_with_probe(json!({ "envVars": { "PROBE_UPSTREAM": "http://127.0.0.1:9/" } }));
    let mut follow = node
        .cli(WISP)
        .args(["logs", "probe", "-f", "--tail", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    // The follower subscribes once its request is in; keep calling until it shows.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline
        && !seen
            .iter()
            .any(|line: &String| line.contains("calling http://127.0.0.1:9/"))
    {
        // Denied outbound call: the guest logs and answers 502.
        node.get("/function/probe");
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.iter()
            .any(|line| line.contains("[stderr] calling http://127.0.0.1:9/")),
        "{seen:?}"
    );
}

#[test]
fn a_chain_of_functions_is_one_trace() {
    // The functions call each other through the node's own address, on
    // loopback: the operator opens it, as one chaining functions would.
    let node = Node::start_args(WISP, &["--allow-egress", "127.0.0.0/8"]);
    let probe = node.upload_file(wisp_testing::HTTP_PROBE);
    let gateway = node.url.clone();
    let port = gateway.rsplit(':').next().unwrap().to_owned();
    let allowed = json!([format!("http://127.0.0.1:{port}")]);
    node.deploy_ok(json!({
        "service": "a", "kind": "wasm-http", "image": probe, "allowedOutboundHosts": allowed,
        "envVars": { "PROBE_UPSTREAM": format!("{gateway}/function/b") }
    }));
    node.deploy_ok(json!({
        "service": "b", "kind": "wasm-http", "image": probe, "allowedOutboundHosts": allowed,
        "envVars": { "PROBE_UPSTREAM": format!("{gateway}/function/c") }
    }));
    let failing = "#!/bin/sh\necho 'bad data: field \"total\" is negative' >&2\nexit 1\n";
    let digest = node.upload(&script_archive("c.sh", failing));
    node.deploy_ok(
        json!({ "service": "c", "kind": "process", "image": digest, "envProcess": "./c.sh" }),
    );

    let response = node.get("/function/a");
    assert_eq!(response.status, 502, "{}", response.body);
    let call_id = response.header("x-call-id").unwrap().to_owned();

    let output = node.cli(WISP).args(["trace", &call_id]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("trace "), "{text}");
    assert!(lines[1].starts_with("a.default 502 "), "{text}");
    assert!(lines[1].contains(&call_id), "{text}");
    assert!(lines[2].starts_with("  b.default 502 "), "{text}");
    assert!(lines[3].starts_with("    c.default 502 "), "{text}");
    assert!(lines[3].contains("exited with status 1"), "{text}");
    assert!(
        lines[3].contains("bad data: field \"total\" is negative"),
        "C's error is shown: {text}"
    );

    // Any call of the trace finds the whole tree, linked span to span.
    let trace = send(
        node.admin("GET", &format!("/system/traces/{call_id}")),
        None,
    )
    .json();
    let calls = trace["calls"].as_array().unwrap();
    let by_function: HashMap<&str, &Value> = calls
        .iter()
        .map(|call| (call["function"].as_str().unwrap(), call))
        .collect();
    assert_eq!(by_function["b"]["parentSpanId"], by_function["a"]["spanId"]);
    assert_eq!(by_function["c"]["parentSpanId"], by_function["b"]["spanId"]);
    assert!(by_function["a"].get("parentSpanId").is_none());
    let c_id = by_function["c"]["callId"].as_str().unwrap();
    let from_c = send(node.admin("GET", &format!("/system/traces/{c_id}")), None).json();
    assert_eq!(from_c["traceId"], trace["traceId"]);

    let unknown = send(node.admin("GET", "/system/traces/no-such-call"), None);
    assert_eq!(unknown.status, 404);
    assert!(unknown.error().contains("no call no-such-call"));
}

#[test]
fn a_callers_traceparent_is_joined_and_passed_on() {
    let node = node_with_probe(json!({}));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = send(
        node.request("GET", "/function/probe")
            .set("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01")),
        None,
    );
    assert_eq!(response.status, 200);
    let call_id = response.header("x-call-id").unwrap().to_owned();
    let seen = response
        .body
        .lines()
        .find_map(|line| line.strip_prefix("header traceparent="))
        .expect("the function sees a traceparent")
        .to_owned();
    let trace = send(
        node.admin("GET", &format!("/system/traces/{call_id}")),
        None,
    )
    .json();
    assert_eq!(trace["traceId"], trace_id);
    let call = &trace["calls"][0];
    assert_eq!(call["parentSpanId"], "00f067aa0ba902b7");
    let span = call["spanId"].as_str().unwrap();
    assert_eq!(
        seen,
        format!("00-{trace_id}-{span}-01"),
        "the function's parent is its call"
    );

    // Without one (or with a malformed one), the gateway starts a trace.
    let fresh = send(
        node.request("GET", "/function/probe")
            .set("traceparent", "garbage"),
        None,
    );
    let id = fresh.header("x-call-id").unwrap();
    let trace = send(node.admin("GET", &format!("/system/traces/{id}")), None).json();
    assert_ne!(trace["traceId"], trace_id);
    assert!(trace["calls"][0].get("parentSpanId").is_none());
}

#[test]
fn usage_totals_gb_seconds_per_function() {
    let node = node_with_probe(json!({ "memory": "128Mi" }));
    for _ in 0..5 {
        assert_eq!(node.get("/function/probe/sleep?ms=100").status, 200);
    }
    let usage = || {
        let output = node
            .cli(WISP)
            .args(["usage", "--json", "--since", "1h"])
            .output()
            .unwrap();
        assert!(output.status.success());
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    assert!(node.eventually(Duration::from_secs(10), || usage()[0]["invocations"] == 5));
    let row = &usage()[0];
    assert_eq!(row["function"], "probe");
    assert_eq!(row["errors"], 0);
    let seconds = row["seconds"].as_f64().unwrap();
    assert!(seconds >= 0.5, "5 calls of 100 ms: {seconds}");
    let gb_seconds = row["gbSeconds"].as_f64().unwrap();
    assert!(
        (gb_seconds - seconds / 8.0).abs() < 1e-6,
        "128 MiB is 1/8 GB: {gb_seconds} vs {seconds}"
    );
    let table = node.cli(WISP).args(["usage"]).output().unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("GB-SECONDS"), "{text}");
    assert!(text.contains("probe.default"), "{text}");
    let other = node
        .cli(WISP)
        .args(["usage", "--json", "--namespace", "other"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&other.stdout).trim(), "[]");
}

/// A minimal OTLP/HTTP collector: answers 200 and hands each request's spans over.
fn collector() -> (String, std::sync::mpsc::Receiver<Vec<Span>>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                head.clear();
                if reader.read_line(&mut head).unwrap_or(0) == 0 || head == "\r\n" {
                    break;
                }
                if let Some((name, value)) = head.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let request = <ExportTraceServiceRequest as prost::Message>::decode(&body[..]).unwrap();
            let spans = request
                .resource_spans
                .into_iter()
                .flat_map(|resource| resource.scope_spans)
                .flat_map(|scope| scope.spans)
                .collect();
            let _ = sender.send(spans);
        }
    });
    (endpoint, received)
}

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value, trace::v1::Span,
};

#[test]
fn spans_are_exported_over_otlp() {
    let (endpoint, spans) = collector();
    let node = Node::start_args(WISP, &["--otlp-endpoint", &endpoint]);
    crate::deploy_probe(&node, json!({}));
    let response = send(
        node.request("GET", "/function/probe").set(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        None,
    );
    let call_id = response.header("x-call-id").unwrap().to_owned();
    assert_eq!(node.get("/function/probe/trap").status, 502);

    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(
            spans
                .recv_timeout(Duration::from_secs(10))
                .expect("spans arrive"),
        );
    }
    let attribute = |span: &Span, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    };
    let ok = seen
        .iter()
        .find(|span| {
            attribute(span, "faas.invocation_id")
                == Some(any_value::Value::StringValue(call_id.clone()))
        })
        .expect("the call's span");
    assert_eq!(ok.name, "probe.default");
    assert_eq!(hex(&ok.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&ok.parent_span_id), "00f067aa0ba902b7");
    assert!(ok.end_time_unix_nano > ok.start_time_unix_nano);
    assert_eq!(
        attribute(ok, "http.response.status_code"),
        Some(any_value::Value::IntValue(200))
    );
    let failed = seen
        .iter()
        .find(|span| span.trace_id != ok.trace_id)
        .unwrap();
    let status = failed.status.clone().unwrap();
    assert_eq!(status.code, 2, "an error span");
    assert!(
        status.message.contains("trapped") || status.message.contains("failed"),
        "{status:?}"
    );

    // A collector that is down costs spans, not calls.
    let refused = Node::start_args(WISP, &["--otlp-endpoint", "http://127.0.0.1:9"]);
    crate::deploy_probe(&refused, json!({}));
    assert_eq!(refused.get("/function/probe").status, 200);
    assert!(refused.eventually(Duration::from_secs(10), || {
        refused
            .log()
            .contains("OTLP export to http://127.0.0.1:9/v1/traces failed")
    }));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
