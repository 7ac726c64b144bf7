//! Items 3 and 11: a guest allowed to call anywhere (`*://*:*`) still cannot
//! reach the node, its loopback or the cloud metadata address, whatever form
//! the address is written in; callbacks are held to the same policy; and a
//! flood of async calls stops at its namespace's queue quota.

use serde_json::json;
use wisp_testing::{Node, Response, send};

use crate::{WISP, deploy_probe};

/// The node's port.
fn port(node: &Node) -> String {
    node.url.rsplit(':').next().expect("a port").to_owned()
}

/// Deploys the http probe as `name` in namespace `attackers`, allowed every
/// host, calling `upstream` on every request.
fn reaching(node: &Node, name: &str, upstream: &str) {
    deploy_probe(
        node,
        json!({
            "service": name, "namespace": "attackers", "timeout": "5s",
            "allowedOutboundHosts": ["*://*:*"], "envVars": { "PROBE_UPSTREAM": upstream },
        }),
    );
}

/// The function's log lines, as `wisp logs` prints them.
fn logs(node: &Node, function: &str) -> String {
    let output = node.cli(WISP).args(["logs", function]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts the guest's call was refused as an undeclared host would be,
/// and that the refusal is in the function's log with the call id.
fn assert_denied(node: &Node, function: &str, response: &Response, target: &str) {
    assert_eq!(response.status, 502, "{target}: {}", response.body);
    assert!(
        response.body.contains("HttpRequestDenied"),
        "{target}: {}",
        response.body
    );
    let call_id = response.header("x-call-id").expect("X-Call-Id");
    let logs = logs(node, &format!("{function}.attackers"));
    assert!(
        logs.lines()
            .any(|line| line.contains(call_id) && line.contains("denied")),
        "{target}: the refusal is in the function's log: {logs}"
    );
}

/// The node answers its health check and a well-behaved function.
fn assert_still_serving(node: &Node) {
    assert_eq!(node.get("/healthz").status, 200);
    let echo = node.post("/function/probe", b"still here");
    assert_eq!(echo.status, 200, "{}", echo.body);
    assert!(echo.body.contains("body=still here"), "{}", echo.body);
}

#[test]
fn a_guest_allowed_everywhere_cannot_reach_the_node_loopback_or_metadata() {
    let node = Node::start(WISP);
    deploy_probe(&node, json!({}));
    let port = port(&node);
    let targets = [
        format!("http://127.0.0.1:{port}/system/functions"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{port}/system/functions"),
        format!("http://[::1]:{port}/system/functions"),
        format!("http://2130706433:{port}/system/functions"),
        format!("http://0x7f000001:{port}/system/functions"),
        format!("http://127.1:{port}/system/functions"),
        format!("http://localhost:{port}/system/functions"),
    ];
    for (n, target) in targets.iter().enumerate() {
        let name = format!("reach-{n}");
        reaching(&node, &name, target);
        let response = node.get(&format!("/function/{name}.attackers"));
        assert_denied(&node, &name, &response, target);
    }
    assert_still_serving(&node);
}

#[test]
fn an_operator_can_open_loopback_to_chain_functions_through_the_node() {
    let node = Node::start_args(WISP, &["--allow-egress", "127.0.0.0/8"]);
    deploy_probe(&node, json!({}));
    let port = port(&node);
    for (name, target) in [
        ("plain", format!("http://127.0.0.1:{port}/function/probe")),
        (
            "decimal",
            format!("http://2130706433:{port}/function/probe"),
        ),
        ("named", format!("http://localhost:{port}/function/probe")),
    ] {
        reaching(&node, name, &target);
        let response = node.get(&format!("/function/{name}.attackers"));
        assert_eq!(response.status, 200, "{target}: {}", response.body);
        assert!(
            response.body.contains("method=GET"),
            "{target}: {}",
            response.body
        );
    }
    // Only what was opened: the metadata address stays shut.
    reaching(
        &node,
        "metadata",
        "http://169.254.169.254/latest/meta-data/",
    );
    let response = node.get("/function/metadata.attackers");
    assert_denied(&node, "metadata", &response, "169.254.169.254");
    assert_still_serving(&node);
}

#[test]
fn callbacks_to_loopback_or_metadata_are_refused_at_enqueue() {
    let node = Node::start(WISP);
    deploy_probe(&node, json!({}));
    let port = port(&node);
    for (url, why) in [
        (
            format!("http://127.0.0.1:{port}/system/functions"),
            "loopback",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "link-local",
        ),
        (format!("http://[::ffff:127.0.0.1]:{port}/"), "loopback"),
        (format!("http://2130706433:{port}/"), "loopback"),
        (format!("http://localhost:{port}/"), "loopback"),
        ("http://10.1.2.3/".to_owned(), "private"),
    ] {
        let response = send(
            node.request("POST", "/async-function/probe")
                .set("X-Callback-Url", &url),
            Some(b"x"),
        );
        assert_eq!(response.status, 400, "{url}: {}", response.body);
        let error = response.error();
        assert!(
            error.contains("X-Callback-Url") && error.contains(why),
            "{url}: {error}"
        );
    }
    let calls = send(node.admin("GET", "/system/calls"), None).json();
    assert_eq!(calls["calls"], json!([]), "refused calls are not stored");
    assert_still_serving(&node);
}

#[test]
fn a_flood_of_async_calls_stops_at_the_namespace_queue_quota() {
    let node = Node::start_args(WISP, &["--namespace-max-queued-calls", "3"]);
    deploy_probe(&node, json!({}));
    // One slow call runs, the others wait behind it: all stay pending.
    deploy_probe(
        &node,
        json!({ "namespace": "flood", "asyncConcurrency": 1, "timeout": "60s" }),
    );
    let enqueue = |path: &str, body: &[u8]| node.post(&format!("/async-function/{path}"), body);
    for _ in 0..3 {
        let accepted = enqueue("probe.flood/sleep?ms=60000", b"");
        assert_eq!(accepted.status, 202, "{}", accepted.body);
    }
    let refused = enqueue("probe.flood/sleep?ms=60000", b"");
    assert_eq!(refused.status, 429, "{}", refused.body);
    let error = refused.error();
    assert!(
        error.contains("flood") && error.contains("max_queued_calls"),
        "{error}"
    );
    assert!(refused.header("retry-after").is_some());

    // A bystander namespace is not held back by the flood.
    let bystander = enqueue("probe", b"");
    assert_eq!(bystander.status, 202, "{}", bystander.body);

    // Bytes count too: a namespace's own quota overrides the node's.
    let created = send(
        node.admin("POST", "/system/namespaces"),
        Some(
            json!({ "name": "heavy", "quotas": { "maxQueuedBytes": "64KiB" } })
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    deploy_probe(&node, json!({ "namespace": "heavy" }));
    let big = enqueue("probe.heavy", &vec![b'x'; 100 << 10]);
    assert_eq!(big.status, 429, "{}", big.body);
    assert!(
        big.error().contains("heavy") && big.error().contains("max_queued_bytes"),
        "{}",
        big.error()
    );
    let small = enqueue("probe.heavy", b"small");
    assert_eq!(small.status, 202, "{}", small.body);

    // A restart does not reset the count: the backlog is read back from the queue.
    let data_dir = node.data_dir.clone();
    let scratch = node.kill();
    let node = Node::start_with(
        WISP,
        scratch,
        data_dir,
        &["--namespace-max-queued-calls", "3"],
    );
    let refused = node.post("/async-function/probe.flood/sleep?ms=60000", b"");
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(
        refused.error().contains("max_queued_calls"),
        "{}",
        refused.body
    );
}

#[test]
fn a_namespace_made_again_after_its_removal_inherits_no_queued_calls() {
    let node = Node::start_args(WISP, &["--namespace-max-queued-calls", "1"]);
    let create = || {
        let created = send(
            node.admin("POST", "/system/namespaces"),
            Some(json!({ "name": "reborn" }).to_string().as_bytes()),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        deploy_probe(
            &node,
            json!({ "namespace": "reborn", "asyncConcurrency": 1, "timeout": "60s" }),
        );
    };
    let enqueue = || node.post("/async-function/probe.reborn/sleep?ms=60000", b"");
    create();
    let accepted = enqueue();
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let full = enqueue();
    assert_eq!(full.status, 429, "{}", full.body);

    let removed = send(
        node.admin("DELETE", "/system/functions"),
        Some(
            json!({ "functionName": "probe", "namespace": "reborn" })
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    let removed = send(node.admin("DELETE", "/system/namespaces/reborn"), None);
    assert_eq!(removed.status, 204, "{}", removed.body);

    // Its calls went with it, and so do their counts: the new namespace of
    // the same name used to start with a full queue.
    create();
    let accepted = enqueue();
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let full = enqueue();
    assert_eq!(full.status, 429, "{}", full.body);
}
