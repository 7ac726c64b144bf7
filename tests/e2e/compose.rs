//! Composition: pipelines, functions of mixed kinds run as one, each step's
//! output streaming into the next step's input (the first failing step ends
//! the call, and its status and name are the answer); and calls between
//! functions in-process, through `http://{name}.wisp.internal`.

use std::io::Read as _;

use serde_json::json;
use wisp_testing::{Node, send};

use crate::WISP;

/// A node with `cat` and `wc -c` as processes and the http probe as `copy`,
/// which streams its request body back on `/copy`.
fn node_with_steps(args: &[&str]) -> Node {
    let node = Node::start_args(WISP, args);
    node.deploy_ok(json!({ "service": "cat", "kind": "process", "envProcess": "cat" }));
    node.deploy_ok(json!({ "service": "count", "kind": "process", "envProcess": "wc -c" }));
    let probe = node.upload_file(wisp_testing::HTTP_PROBE);
    node.deploy_ok(json!({ "service": "copy", "kind": "wasm-http", "image": probe }));
    node
}

/// A process function running `script` as `./run.sh`.
fn deploy_script(node: &Node, name: &str, script: &str, timeout: &str) {
    let image = node.upload(&wisp_testing::script_archive("run.sh", script));
    node.deploy_ok(json!({
        "service": name, "kind": "process", "image": image, "envProcess": "./run.sh",
        "timeout": timeout,
    }));
}

#[test]
fn a_mixed_pipeline_streams_100_mb_through_with_the_nodes_memory_bounded() {
    let node = node_with_steps(&["--max-body-size", "512MiB"]);
    node.deploy_ok(json!({
        "service": "mixed", "kind": "pipeline", "steps": ["cat", "copy", "count"],
        "timeout": "120s",
    }));
    // A small call first, so what the node holds at rest is counted before.
    let small = node.post("/function/mixed/copy", b"hello\n");
    assert_eq!((small.status, small.body.trim()), (200, "6"), "{small:?}");
    let before = node.peak_rss();

    const SIZE: u64 = 100 << 20;
    let body = std::io::repeat(b'x').take(SIZE);
    let response = node.request("POST", "/function/mixed/copy").send(body);
    let response = match response {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("the pipeline call failed: {error}"),
    };
    assert_eq!(response.status(), 200);
    let counted = response.into_string().expect("a text body");
    assert_eq!(counted.trim(), SIZE.to_string());

    let grown = node.peak_rss().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "100 MiB went through three steps, yet the node's peak RSS grew by {} MiB",
        grown >> 20
    );
}

#[test]
fn the_first_failing_step_ends_the_pipeline_with_its_status_and_name() {
    let node = node_with_steps(&[]);
    deploy_script(
        &node,
        "failing",
        "#!/bin/sh\ncat >/dev/null\necho failing on purpose >&2\nexit 3\n",
        "10s",
    );
    node.deploy_ok(
        json!({ "service": "broken", "kind": "pipeline", "steps": ["cat", "failing", "cat"] }),
    );
    let response = node.post("/function/broken", b"some input\n");
    assert_eq!(response.status, 502, "{response:?}");
    let error = response.error();
    assert!(
        error.contains("step 2 (failing)") && error.contains("status 3"),
        "{error}"
    );

    // A step's own error status is the pipeline's, the step named.
    node.deploy_ok(json!({ "service": "teapot", "kind": "pipeline", "steps": ["cat", "copy"] }));
    let response = node.post("/function/teapot/status?code=418", b"x");
    assert_eq!(response.status, 418, "{response:?}");
    assert!(response.error().contains("step 2 (copy)"), "{response:?}");
    // A step that fails before reading its input leaves the client's body
    // unread: the connection is closed after the answer, and says so.
    node.deploy_ok(json!({ "service": "early", "kind": "pipeline", "steps": ["copy", "cat"] }));
    let response = node.post("/function/early/status?code=418", &vec![b'x'; 1 << 20]);
    assert_eq!(response.status, 418, "{response:?}");
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");

    // A step that is not deployed is named too; it is checked at call time.
    node.deploy_ok(json!({ "service": "dangling", "kind": "pipeline", "steps": ["cat", "gone"] }));
    let response = node.post("/function/dangling", b"x");
    assert_eq!(response.status, 502, "{response:?}");
    assert!(
        response.error().contains("step 2 (gone)") && response.error().contains("not deployed"),
        "{response:?}"
    );
}

#[test]
fn a_step_past_its_timeout_is_a_504_that_names_it() {
    let node = node_with_steps(&[]);
    deploy_script(&node, "sleeper", "#!/bin/sh\nsleep 30\n", "1s");
    node.deploy_ok(json!({
        "service": "slow", "kind": "pipeline", "steps": ["cat", "sleeper", "count"],
        "timeout": "20s",
    }));
    let response = node.post("/function/slow", b"input\n");
    assert_eq!(response.status, 504, "{response:?}");
    assert!(
        response.error().contains("step 2 (sleeper)") && response.error().contains("timed out"),
        "{response:?}"
    );
    // The node serves on.
    let response = node.post("/function/cat", b"still here");
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "still here")
    );
}

#[test]
fn a_private_function_of_another_namespace_is_not_a_step() {
    let node = node_with_steps(&[]);
    node.deploy_ok(json!({
        "service": "secret", "namespace": "other", "kind": "process", "envProcess": "cat",
        "private": true,
    }));
    node.deploy_ok(json!({
        "service": "public", "namespace": "other", "kind": "process", "envProcess": "cat",
    }));
    node.deploy_ok(
        json!({ "service": "borrow", "kind": "pipeline", "steps": ["cat", "secret.other"] }),
    );
    let response = node.post("/function/borrow", b"x");
    assert_eq!(response.status, 403, "{response:?}");
    assert!(response.error().contains("private"), "{response:?}");

    node.deploy_ok(
        json!({ "service": "share", "kind": "pipeline", "steps": ["cat", "public.other"] }),
    );
    let response = node.post("/function/share", b"shared");
    assert_eq!((response.status, response.body.as_str()), (200, "shared"));
}

#[test]
fn a_pipeline_without_steps_or_with_an_image_is_refused() {
    let node = Node::start(WISP);
    for (deployment, expected) in [
        (
            json!({ "service": "p", "kind": "pipeline" }),
            "1 to 32 `steps`",
        ),
        (
            json!({ "service": "p", "kind": "pipeline", "steps": ["Not A Name"] }),
            "step `Not A Name`",
        ),
        (
            json!({ "service": "p", "kind": "process", "envProcess": "cat", "steps": ["a"] }),
            "`steps` is for pipelines",
        ),
        (
            json!({ "service": "p", "kind": "pipeline", "steps": ["a"], "envVars": { "A": "1" } }),
            "no environment",
        ),
        (
            json!({ "service": "p", "kind": "process", "envProcess": "cat", "route": "/pipe/x" }),
            "overlaps `/pipe`",
        ),
    ] {
        let response = node.deploy(deployment);
        assert_eq!(response.status, 400, "{response:?}");
        assert!(response.error().contains(expected), "{response:?}");
    }
}

#[test]
fn a_pipeline_declared_in_wisp_toml_deploys_runs_async_and_wisp_pipe_runs_one_ad_hoc() {
    let node = Node::start(WISP);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("wisp.toml");
    std::fs::write(
        &manifest,
        r#"
[[function]]
name = "upper"
kind = "process"
command = "tr a-z A-Z"

[[function]]
name = "count"
kind = "process"
command = "wc -c"

[[pipeline]]
name = "shout"
steps = ["upper", "count"]
route = "/shout"
"#,
    )
    .unwrap();
    let mut deploy = node.cli(WISP);
    deploy.args(["deploy", "-f"]).arg(&manifest);
    let output = deploy.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(listed.contains("deployed shout (pipeline)"), "{listed}");

    let response = node.post("/shout", b"twelve bytes");
    assert_eq!((response.status, response.body.trim()), (200, "12"));

    // Async: the queue runs it like any function, and keeps its result.
    let queued = send(node.request("POST", "/async-function/shout"), Some(b"four"));
    assert_eq!(queued.status, 202, "{queued:?}");
    let id = queued.header("x-call-id").unwrap().to_owned();
    let mut last = serde_json::Value::Null;
    assert!(
        node.eventually(std::time::Duration::from_secs(10), || {
            last = send(node.admin("GET", &format!("/system/calls/{id}")), None).json();
            last["status"] == "succeeded"
        }),
        "{last}"
    );
    assert_eq!(
        last["result"]["body"].as_str().map(str::trim),
        Some("4"),
        "{last}"
    );

    // Ad hoc, through the CLI: STDIN in, STDOUT out.
    let mut pipe = node.cli(WISP);
    pipe.args(["pipe", "upper", "upper"]);
    let output = run_with_stdin(pipe, b"quiet please");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "QUIET PLEASE");

    let mut pipe = node.cli(WISP);
    pipe.args(["pipe", "upper", "missing"]);
    let output = run_with_stdin(pipe, b"x");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");
}

fn run_with_stdin(mut command: std::process::Command, stdin: &[u8]) -> std::process::Output {
    use std::{io::Write as _, process::Stdio};
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wisp");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_function_calls_another_in_process_and_a_loop_ends_in_508() {
    // No egress opened: nothing of this goes through the network.
    let node = Node::start(WISP);
    let probe = node.upload_file(wisp_testing::HTTP_PROBE);
    let internal = json!(["http://*.wisp.internal"]);
    let caller = |name: &str, upstream: &str, allowed: &serde_json::Value| {
        node.deploy_ok(json!({
            "service": name, "kind": "wasm-http", "image": probe,
            "allowedOutboundHosts": allowed, "envVars": { "PROBE_UPSTREAM": upstream },
        }));
    };
    // A private function of the caller's own namespace is reachable.
    node.deploy_ok(
        json!({ "service": "inner", "kind": "wasm-http", "image": probe, "private": true }),
    );
    caller(
        "outer",
        "http://inner.wisp.internal/asked?by=outer",
        &internal,
    );
    let response = node.get("/function/outer");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response.body.contains("path=/asked") && response.body.contains("query=by=outer"),
        "{response:?}"
    );
    // Its call joined the caller's trace.
    assert!(
        response.body.contains("header traceparent=00-"),
        "{response:?}"
    );

    // Only with the allowlist entry, as for any host.
    caller("undeclared", "http://inner.wisp.internal/", &json!([]));
    let response = node.get("/function/undeclared");
    assert_eq!(response.status, 502, "{response:?}");
    assert!(response.body.contains("HttpRequestDenied"), "{response:?}");

    // Another namespace's private function needs its token, as from outside;
    // its public ones do not.
    for (service, private) in [("hidden", true), ("shown", false)] {
        node.deploy_ok(json!({
            "service": service, "namespace": "other", "kind": "wasm-http", "image": probe,
            "private": private,
        }));
    }
    caller("peek", "http://hidden.other.wisp.internal/", &internal);
    let response = node.get("/function/peek");
    assert_eq!(response.status, 401, "{response:?}");
    assert!(response.body.contains("private"), "{response:?}");
    caller("look", "http://shown.other.wisp.internal/", &internal);
    assert_eq!(node.get("/function/look").status, 200);

    // A function that calls itself ends at the depth limit.
    caller("again", "http://again.wisp.internal/", &internal);
    let response = node.get("/function/again");
    assert_eq!(response.status, 508, "{response:?}");
    assert!(response.body.contains("a loop"), "{response:?}");
    // And the node serves on.
    assert_eq!(
        node.get("/function/inner").status,
        401,
        "private from outside"
    );
    assert_eq!(node.get("/function/look").status, 200);
}

#[test]
fn a_pipeline_is_one_trace_with_a_span_per_step() {
    let node = node_with_steps(&[]);
    node.deploy_ok(
        json!({ "service": "mixed", "kind": "pipeline", "steps": ["cat", "copy", "count"] }),
    );
    let response = node.post("/function/mixed/copy", b"traced\n");
    assert_eq!((response.status, response.body.trim()), (200, "7"));
    let call_id = response.header("x-call-id").unwrap().to_owned();

    let mut text = String::new();
    let complete = node.eventually(std::time::Duration::from_secs(10), || {
        let output = node.cli(WISP).args(["trace", &call_id]).output().unwrap();
        text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines().count() == 5
    });
    assert!(complete, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("mixed.default 200 "), "{text}");
    assert!(lines[1].contains(&call_id), "{text}");
    for (line, step) in lines[2..].iter().zip(["cat", "copy", "count"]) {
        assert!(
            line.starts_with(&format!("  {step}.default 200 ")),
            "{text}"
        );
    }

    // A step that fails after its output began is recorded as it ended.
    deploy_script(
        &node,
        "failing",
        "#!/bin/sh\ncat\necho giving up >&2\nexit 3\n",
        "10s",
    );
    node.deploy_ok(
        json!({ "service": "broken", "kind": "pipeline", "steps": ["cat", "failing", "cat"] }),
    );
    let response = node.post("/function/broken", b"some input\n");
    assert_eq!(response.status, 502, "{response:?}");
    let call_id = response.header("x-call-id").unwrap().to_owned();
    let complete = node.eventually(std::time::Duration::from_secs(10), || {
        let output = node.cli(WISP).args(["trace", &call_id]).output().unwrap();
        text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines().count() >= 5
    });
    assert!(complete, "{text}");
    assert!(text.contains("broken.default 502 "), "{text}");
    let failing = text
        .lines()
        .find(|line| line.contains("failing.default"))
        .unwrap();
    assert!(
        failing.starts_with("  failing.default 502 ") && failing.contains("exited with status 3"),
        "{text}"
    );
}

/// The most `wisp_instances` of `function` seen in `/metrics` until `done`.
fn most_instances(node: &Node, function: &str, done: &std::sync::atomic::AtomicBool) -> u64 {
    let label = format!("function_name=\"{function}.default\"");
    let mut most = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let metrics = node.get("/metrics").body;
        let now = metrics
            .lines()
            .filter(|line| line.starts_with("wisp_instances{") && line.contains(&label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
        most = most.max(now);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    most
}

#[test]
fn map_runs_each_line_with_the_declared_parallelism_in_order_and_tee_returns_each_output() {
    let node = node_with_steps(&[]);
    deploy_script(&node, "slow-echo", "#!/bin/sh\nsleep 0.01\ncat\n", "10s");
    node.deploy_ok(json!({
        "service": "each", "kind": "pipeline", "timeout": "120s",
        "steps": ["cat", { "map": "slow-echo", "parallelism": 4 }],
    }));
    let input: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (response, most) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| most_instances(&node, "slow-echo", &done));
        let response = node.post("/function/each", input.as_bytes());
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (response, watcher.join().unwrap())
    });
    assert_eq!(response.status, 200, "{}", response.error());
    assert_eq!(response.body, input, "every line, in order");
    assert_eq!(most, 4, "the declared parallelism, no more");

    // JSON arrays: each element an item, the outputs an array again.
    node.deploy_ok(json!({
        "service": "elements", "kind": "pipeline",
        "steps": [{ "map": "cat", "split": "json" }],
    }));
    let response = node.post("/function/elements", br#"[1, "two", {"x": 3}]"#);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!([1, "two", { "x": 3 }]));

    // A failing item ends the step, and is named.
    deploy_script(&node, "picky", "#!/bin/sh\ngrep -qv bad || exit 4\n", "10s");
    node.deploy_ok(json!({
        "service": "picking", "kind": "pipeline", "steps": [{ "map": "picky" }],
    }));
    let response = node.post("/function/picking", b"good\ngood\nbad\ngood\n");
    assert_eq!(response.status, 502, "{response:?}");
    let error = response.error();
    assert!(
        error.contains("step 1 (map picky)") && error.contains("item 3"),
        "{error}"
    );

    // Tee: the same input to each, joined in order or by name.
    deploy_script(&node, "upper", "#!/bin/sh\ntr a-z A-Z\n", "10s");
    node.deploy_ok(json!({
        "service": "both", "kind": "pipeline",
        "steps": [{ "tee": ["upper", "count"], "join": "json" }],
    }));
    let response = node.post("/function/both", b"hello");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!({ "upper": "HELLO", "count": 5 }));
    node.deploy_ok(json!({
        "service": "concat", "kind": "pipeline",
        "steps": [{ "tee": ["upper", "cat"] }, "count"],
    }));
    let response = node.post("/function/concat", b"hello");
    assert_eq!((response.status, response.body.trim()), (200, "10"));
}

#[test]
fn a_pipelines_body_has_a_functions_bounds_and_a_client_gone_stops_its_steps() {
    let node = node_with_steps(&["--max-body-size", "1MiB"]);
    node.deploy_ok(json!({ "service": "counted", "kind": "pipeline", "steps": ["cat", "count"] }));
    // Chunked, so only the stream itself can tell it is too large.
    let body = std::io::repeat(b'x').take(2 << 20);
    let response = match node.request("POST", "/function/counted").send(body) {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(response.status(), 413);
    let error = response.into_string().unwrap();
    assert!(error.contains("the request body failed"), "{error}");

    // A step that works without writing, and a client that gives up on it.
    deploy_script(
        &node,
        "brooding",
        "#!/bin/sh\ncat >/dev/null\nsleep 37\n",
        "60s",
    );
    node.deploy_ok(json!({
        "service": "brood", "kind": "pipeline", "steps": ["cat", "brooding"], "timeout": "60s",
    }));
    let running = || {
        let listed = std::process::Command::new("pgrep")
            .args(["-f", "sleep 37"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&listed.stdout).lines().count()
    };
    let gave_up = node
        .request("POST", "/function/brood")
        .timeout(std::time::Duration::from_millis(1500))
        .send_bytes(b"x");
    assert!(gave_up.is_err(), "the client gives up first");
    assert!(
        node.eventually(std::time::Duration::from_secs(5), || running() == 0),
        "the steps of a call nobody waits for are stopped"
    );
}
