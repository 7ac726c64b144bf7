//! The three function kinds, end to end, and the ways to reach a function.

use serde_json::json;
use wisp_testing::{Node, send};

use crate::{WISP, node_with_probe};

#[test]
fn wasm_http_sees_method_path_query_headers_and_body() {
    let node = node_with_probe(json!({}));
    let request = node
        .request("PUT", "/function/probe/items/42?full=true&x=%20y")
        .set("X-Greeting", "hi");
    let response = send(request, Some(b"payload"));
    assert_eq!(response.status, 200, "{}", response.body);
    for expected in [
        "method=PUT\n",
        "path=/items/42\n",
        "query=full=true&x=%20y\n",
        "header x-greeting=hi\n",
        "body=payload\n",
    ] {
        assert!(
            response.body.contains(expected),
            "`{expected}` in {}",
            response.body
        );
    }
    let root = node.get("/function/probe");
    assert!(root.body.contains("path=/\n"), "{}", root.body);
    // A slash after the name is the root too, as OpenFaaS and browsers have it.
    for path in ["/function/probe/", "/function/probe.default/"] {
        let slashed = node.get(path);
        assert_eq!(slashed.status, 200, "{path}: {}", slashed.body);
        assert!(
            slashed.body.contains("path=/\n"),
            "{path}: {}",
            slashed.body
        );
    }
    let queued = node.post("/async-function/probe/", b"");
    assert_eq!(queued.status, 202, "{}", queued.body);
}

#[test]
fn call_ids_are_made_or_kept_on_every_response() {
    let node = node_with_probe(json!({}));
    let made = node.get("/function/probe");
    let id = made.header("x-call-id").expect("a call id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let kept = send(
        node.request("GET", "/function/probe")
            .set("X-Call-Id", "my-call-1"),
        None,
    );
    assert_eq!(kept.header("x-call-id"), Some("my-call-1"));
    let missing = node.get("/function/nope");
    assert_eq!(missing.status, 404);
    assert!(
        missing.header("x-call-id").is_some(),
        "errors carry a call id too"
    );
    assert!(node.get("/healthz").header("x-call-id").is_some());
}

#[test]
fn functions_are_reached_by_name_namespace_header_and_route() {
    let node = node_with_probe(json!({ "route": "/api/..." }));
    assert_eq!(node.get("/function/probe.default/x").status, 200);
    let by_header = send(node.request("GET", "/").set("X-Function", "probe"), None);
    assert!(by_header.body.contains("path=/\n"), "{}", by_header.body);
    let by_route = node.get("/api/users/7?q=1");
    assert_eq!(by_route.status, 200);
    assert!(
        by_route.body.contains("path=/api/users/7\n"),
        "the route's function sees the whole path: {}",
        by_route.body
    );
    assert_eq!(node.get("/apix").status, 404);
    assert_eq!(
        send(node.request("GET", "/").set("X-Function", "nope"), None).status,
        404
    );
}

#[test]
fn wasm_stdio_gets_the_body_on_stdin_and_watchdog_variables() {
    let node = Node::start(WISP);
    let digest = node.upload_file(wisp_testing::STDIO_PROBE);
    node.deploy_ok(json!({ "service": "stdio", "kind": "wasm-stdio", "image": digest, "envVars": { "GREETING": "hi" } }));
    let echo = node.post("/function/stdio", b"hello there");
    assert_eq!((echo.status, echo.body.as_str()), (200, "hello there"));
    let request = node
        .request("POST", "/function/stdio/a/b?c=d")
        .set("Content-Type", "text/plain")
        .set("X-Call-Id", "call-7");
    let env = send(request, Some(b"env")).body;
    for expected in [
        "GREETING=hi",
        "Http_Method=POST",
        "Http_Path=/a/b",
        "Http_Query=c=d",
        "Http_Content_Type=text/plain",
        "Http_X_Call_Id=call-7",
    ] {
        assert!(
            env.lines().any(|line| line == expected),
            "`{expected}` in {env}"
        );
    }
    assert!(
        !env.contains("WISP_"),
        "the node's environment does not leak: {env}"
    );
}

#[test]
fn process_functions_run_a_script_from_their_artifact_tree() {
    let node = Node::start(WISP);
    let script = "#!/bin/sh\necho \"$Http_Method $Http_Path $Http_Query $GREETING\"\ncat\n";
    let digest = node.upload(&wisp_testing::script_archive("handler.sh", script));
    node.deploy_ok(json!({ "service": "script", "kind": "process", "image": digest, "envProcess": "./handler.sh", "envVars": { "GREETING": "hi" } }));
    let response = node.post("/function/script/p?q=1", b"body text");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, "POST /p q=1 hi\nbody text");
}

#[test]
fn process_functions_can_run_a_command_from_path() {
    let node = Node::start(WISP);
    node.deploy_ok(json!({ "service": "cat", "kind": "process", "envProcess": "cat" }));
    let response = node.post("/function/cat", b"meow");
    assert_eq!((response.status, response.body.as_str()), (200, "meow"));
}

#[test]
fn functions_are_listed_described_updated_and_removed() {
    let node =
        node_with_probe(json!({ "timeout": "3s", "memory": "64MiB", "labels": { "team": "a" } }));
    node.get("/function/probe");
    let list = send(node.admin("GET", "/system/functions"), None);
    assert_eq!(list.status, 200);
    let functions = list.json();
    let probe = &functions[0];
    assert_eq!(probe["service"], "probe");
    assert_eq!(probe["namespace"], "default");
    assert_eq!(probe["kind"], "wasm-http");
    assert_eq!(probe["timeout"], "3s");
    assert_eq!(probe["memory"], "64MiB");
    assert_eq!(probe["labels"]["team"], "a");
    assert_eq!(probe["invocationCount"], 1);
    assert_eq!(probe["availableReplicas"], 1);
    assert!(probe["image"].as_str().unwrap().starts_with("sha256:"));

    let mut update = probe.clone();
    update["timeout"] = json!("4s");
    for counter in [
        "name",
        "invocationCount",
        "replicas",
        "availableReplicas",
        "coldStarts",
        "limits",
    ] {
        update.as_object_mut().unwrap().remove(counter);
    }
    let updated = send(
        node.admin("PUT", "/system/functions"),
        Some(update.to_string().as_bytes()),
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    let described = send(node.admin("GET", "/system/function/probe"), None).json();
    assert_eq!(described["timeout"], "4s");

    let removed = send(
        node.admin("DELETE", "/system/functions"),
        Some(br#"{"functionName":"probe"}"#),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(node.get("/function/probe").status, 404);
    assert_eq!(
        send(node.admin("GET", "/system/function/probe"), None).status,
        404
    );
    let again = send(
        node.admin("DELETE", "/system/functions"),
        Some(br#"{"functionName":"probe"}"#),
    );
    assert_eq!(again.status, 404);
}

#[test]
fn artifacts_are_content_addressed() {
    let node = Node::start(WISP);
    let first = node.upload(b"some bytes");
    let second = node.upload(b"some bytes");
    assert_eq!(first, second);
    let listed = send(node.admin("GET", "/system/artifacts"), None).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["size"], 10);
    assert_eq!(
        send(
            node.admin("GET", &format!("/system/artifacts/{first}")),
            None
        )
        .status,
        200
    );
    let info = send(node.admin("GET", "/system/info"), None).json();
    assert_eq!(info["provider"]["provider"], "wisp");
}
