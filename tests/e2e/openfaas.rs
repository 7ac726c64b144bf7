//! OpenFaaS's client against wisp: each request as `faas-cli` sends it
//! (basic authentication from `faas-cli login`, PUT before POST on deploy,
//! OpenFaaS's bodies), answered with the statuses and fields it reads.

use serde_json::{Value, json};
use wisp_testing::{Node, Response, send};

use crate::WISP;

/// A request with the basic authentication `faas-cli login -p <token>` keeps.
fn faas(node: &Node, password: &str, method: &str, path: &str, body: Option<Value>) -> Response {
    let credentials = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("admin:{password}"),
    );
    let request = node
        .request(method, path)
        .set("Authorization", &format!("Basic {credentials}"))
        .set("User-Agent", "faas-cli/0.17.0");
    let body = body.map(|body| body.to_string());
    send(request, body.as_deref().map(str::as_bytes))
}

#[test]
fn faas_cli_requests_get_the_answers_faas_cli_expects() {
    let node = Node::start(WISP);
    let token = node.token.clone();

    // login checks the credentials against the function list.
    assert_eq!(
        faas(&node, &token, "GET", "/system/functions", None).status,
        200
    );
    assert_eq!(
        faas(&node, "wrong", "GET", "/system/functions", None).status,
        401
    );
    // A browser keeps basic credentials and sends them from any page of the
    // node's origin, a function's too: from a browser, only a bearer token counts.
    let credentials = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("admin:{token}"),
    );
    let from_a_page = send(
        node.request("GET", "/system/secrets")
            .set("Authorization", &format!("Basic {credentials}"))
            .set("Sec-Fetch-Mode", "cors"),
        None,
    );
    assert_eq!(from_a_page.status, 401, "{}", from_a_page.body);

    // deploy: PUT first, POST once that is a 404; no kind, a command: a process.
    let image = node.upload(&wisp_testing::script_archive(
        "handler.sh",
        "#!/bin/sh\necho \"handled $(cat)\" >&2\necho \"hello $(cat /dev/null)$1\"\n",
    ));
    let deployment = json!({
        "service": "hello", "namespace": "default", "image": image,
        "envProcess": "./handler.sh", "envVars": {}, "labels": {}, "annotations": {},
    });
    let put = faas(
        &node,
        &token,
        "PUT",
        "/system/functions",
        Some(deployment.clone()),
    );
    assert_eq!(put.status, 404, "{}", put.body);
    let post = faas(
        &node,
        &token,
        "POST",
        "/system/functions",
        Some(deployment.clone()),
    );
    assert_eq!(post.status, 202, "{}", post.body);
    let update = faas(&node, &token, "PUT", "/system/functions", Some(deployment));
    assert_eq!(update.status, 200, "{}", update.body);

    // list and describe read `name`.
    let listed = faas(
        &node,
        &token,
        "GET",
        "/system/functions?namespace=default",
        None,
    )
    .json();
    assert_eq!(listed[0]["name"], "hello", "{listed}");
    assert_eq!(listed[0]["invocationCount"], 0);
    let described = faas(
        &node,
        &token,
        "GET",
        "/system/function/hello?namespace=default&usage=1",
        None,
    );
    assert_eq!(described.status, 200, "{}", described.body);
    assert_eq!(described.json()["name"], "hello");
    assert!(described.json()["availableReplicas"].as_u64().unwrap() > 0);

    // invoke, synchronous and async, by name.namespace.
    let invoked = node.post("/function/hello.default", b"world");
    assert_eq!(invoked.status, 200, "{}", invoked.body);
    assert_eq!(node.post("/async-function/hello.default", b"").status, 202);

    // logs: every kept line (`tail=-1`), in OpenFaaS's shape.
    let logs = faas(
        &node,
        &token,
        "GET",
        "/system/logs?name=hello&namespace=default&follow=false&tail=-1",
        None,
    );
    assert_eq!(logs.status, 200, "{}", logs.body);
    let line: Value = logs
        .body
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|line| line["text"] == "handled world")
        .unwrap_or_else(|| panic!("the function's line in {}", logs.body));
    assert_eq!(line["name"], "hello");
    assert_eq!(line["namespace"], "default");
    assert!(line["instance"].as_str().is_some_and(|i| !i.is_empty()));
    assert!(chrono::DateTime::parse_from_rfc3339(line["timestamp"].as_str().unwrap()).is_ok());

    // secrets: a value from a file comes as base64 in rawValue.
    let created = faas(
        &node,
        &token,
        "POST",
        "/system/secrets",
        Some(json!({ "name": "api-key", "namespace": "default", "rawValue": "czNjcjN0" })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let listed = faas(
        &node,
        &token,
        "GET",
        "/system/secrets?namespace=default",
        None,
    )
    .json();
    assert_eq!(listed[0]["name"], "api-key", "{listed}");
    let updated = faas(
        &node,
        &token,
        "PUT",
        "/system/secrets",
        Some(json!({ "name": "api-key", "namespace": "default", "value": "n3w" })),
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    let bad = faas(
        &node,
        &token,
        "POST",
        "/system/secrets",
        Some(json!({ "name": "other", "rawValue": "not base64!" })),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let removed = faas(
        &node,
        &token,
        "DELETE",
        "/system/secrets",
        Some(json!({ "name": "api-key", "namespace": "default" })),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    let gone = faas(
        &node,
        &token,
        "DELETE",
        "/system/secrets",
        Some(json!({ "name": "api-key", "namespace": "default" })),
    );
    assert_eq!(gone.status, 404, "{}", gone.body);

    // namespaces: the names.
    let namespaces = faas(&node, &token, "GET", "/system/namespaces", None);
    assert_eq!(namespaces.status, 200, "{}", namespaces.body);
    assert_eq!(namespaces.json(), json!(["default"]));

    // remove: 200, then 404.
    let body = json!({ "functionName": "hello", "namespace": "default" });
    let removed = faas(
        &node,
        &token,
        "DELETE",
        "/system/functions",
        Some(body.clone()),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    let again = faas(&node, &token, "DELETE", "/system/functions", Some(body));
    assert_eq!(again.status, 404, "{}", again.body);
}

#[test]
fn a_function_sees_basic_credentials_that_are_not_a_wisp_token() {
    let node = crate::node_with_probe(json!({}));
    let theirs = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "user:their-own")
    );
    let seen = send(
        node.request("GET", "/function/probe")
            .set("Authorization", &theirs),
        None,
    );
    assert!(
        seen.body
            .contains(&format!("header authorization={theirs}")),
        "{}",
        seen.body
    );
    // A wisp token sent as basic authentication is taken off, as a bearer token is.
    let ours = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("admin:{}", node.token)
        )
    );
    let hidden = send(
        node.request("GET", "/function/probe")
            .set("Authorization", &ours),
        None,
    );
    assert!(
        !hidden.body.contains("header authorization="),
        "{}",
        hidden.body
    );
}
