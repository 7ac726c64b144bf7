//! Tenants: namespaces, tokens with roles, private functions and quotas,
//! against the real node. The matrix tries every route with every kind of
//! token; every refused write is checked to have left functions, tokens and
//! namespaces as they were.

use std::time::Duration;

use serde_json::{Value, json};
use wisp_testing::{Node, Response, send};

use crate::{WISP, merge};

/// Sends a request with `token` (none when `None`) and `body`.
fn call(
    node: &Node,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Response {
    let mut request = node.request(method, path);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let body = body.map(Value::to_string);
    send(request, body.as_deref().map(str::as_bytes))
}

/// Creates a namespace with the admin token.
pub(crate) fn create_namespace(node: &Node, body: Value) {
    let response = call(
        node,
        Some(&node.token),
        "POST",
        "/system/namespaces",
        Some(&body),
    );
    assert_eq!(response.status, 201, "create namespace: {}", response.body);
}

/// Creates a token with `by` and returns `(id, token)`.
pub(crate) fn create_token(node: &Node, by: &str, namespace: &str, role: &str) -> (String, String) {
    let body =
        json!({ "namespace": namespace, "role": role, "name": format!("{role}-{namespace}") });
    let response = call(node, Some(by), "POST", "/system/tokens", Some(&body));
    assert_eq!(response.status, 201, "create token: {}", response.body);
    let created = response.json();
    (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

/// Deploys the http probe as `name` in `namespace`, with `extra` fields, using the admin token.
fn deploy_probe(node: &Node, name: &str, namespace: &str, extra: Value) -> Value {
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    let mut deployment =
        json!({ "service": name, "namespace": namespace, "kind": "wasm-http", "image": digest });
    merge(&mut deployment, extra);
    node.deploy_ok(deployment.clone());
    deployment
}

/// What the node holds, as the admin token sees it: functions (without
/// their counters), tokens, namespaces and the stores of each that hold keys.
fn snapshot(node: &Node) -> Value {
    let get = |path: &str| {
        let response = call(node, Some(&node.token), "GET", path, None);
        assert_eq!(response.status, 200, "{path}: {}", response.body);
        response.json()
    };
    let mut functions = get("/system/functions");
    for function in functions.as_array_mut().unwrap() {
        let function = function.as_object_mut().unwrap();
        for counter in [
            "invocationCount",
            "replicas",
            "availableReplicas",
            "coldStarts",
        ] {
            function.remove(counter);
        }
    }
    let stores: Vec<Value> = get("/system/namespaces")
        .as_array()
        .unwrap()
        .iter()
        .map(|name| get(&format!("/system/kv?namespace={}", name.as_str().unwrap())))
        .collect();
    json!({
        "functions": functions,
        "tokens": get("/system/tokens"),
        "namespaces": get("/system/namespaces?detail=true"),
        "key-value stores": stores,
    })
}

/// Any status but 401 and 403: the request got past authorization.
const PASSES: u16 = 0;

#[test]
fn every_route_checks_role_and_namespace() {
    let node = Node::start(WISP);
    let admin = node.token.clone();
    create_namespace(&node, json!({ "name": "team-a" }));
    create_namespace(&node, json!({ "name": "team-b" }));
    let probe = deploy_probe(
        &node,
        "probe",
        "team-a",
        json!({ "private": true, "route": "/team-a" }),
    );
    deploy_probe(&node, "probe", "team-b", json!({ "private": true }));
    let (_, a_admin) = create_token(&node, &admin, "team-a", "admin");
    let (_, a_deploy) = create_token(&node, &a_admin, "team-a", "deploy");
    let (_, a_invoke) = create_token(&node, &a_admin, "team-a", "invoke");
    let (_, b_admin) = create_token(&node, &admin, "team-b", "admin");

    // A team-a call in the call log, and one in the queue.
    let sync_call = call(&node, Some(&admin), "GET", "/function/probe.team-a", None);
    assert_eq!(sync_call.status, 200, "{}", sync_call.body);
    let sync_id = sync_call.header("x-call-id").unwrap().to_owned();
    let async_call = call(
        &node,
        Some(&admin),
        "POST",
        "/async-function/probe.team-a",
        None,
    );
    assert_eq!(async_call.status, 202, "{}", async_call.body);
    let async_id = async_call.header("x-call-id").unwrap().to_owned();
    let probe_bytes = std::fs::read(wisp_testing::HTTP_PROBE).unwrap();

    let before = snapshot(&node);
    let tokens = [&admin, &a_admin, &a_deploy, &a_invoke, &b_admin];
    let (ok, no) = (PASSES, 403);
    // Every route touches team-a; the columns are the node's admin token, then
    // team-a's admin, deploy and invoke tokens, then team-b's admin token.
    // Writes that pass are chosen to change nothing (409, 404, 400 after the check).
    let update = probe.clone();
    let remove_missing = json!({ "functionName": "nope", "namespace": "team-a" });
    let scale = json!({ "replicas": 1 });
    let bad_label = json!({ "namespace": "team-a", "role": "invoke", "name": "" });
    let existing = json!({ "name": "team-a" });
    #[rustfmt::skip]
    let routes: Vec<(&str, String, Option<&Value>, [u16; 5])> = vec![
        ("GET", "/system/functions?namespace=team-a".into(), None, [200, 200, 200, 200, no]),
        ("GET", "/system/function/probe.team-a".into(), None, [200, 200, 200, 200, no]),
        ("POST", "/system/functions".into(), Some(&probe), [409, 409, 409, no, no]),
        ("PUT", "/system/functions".into(), Some(&update), [200, 200, 200, no, no]),
        ("DELETE", "/system/functions".into(), Some(&remove_missing), [404, 404, 404, no, no]),
        ("POST", "/system/scale-function/probe.team-a".into(), Some(&scale), [400, 400, 400, no, no]),
        ("GET", "/system/artifacts".into(), None, [200, 200, 200, no, 200]),
        ("GET", "/system/info".into(), None, [200, 200, 200, 200, 200]),
        ("GET", "/system/logs?name=probe.team-a".into(), None, [200, 200, 200, no, no]),
        ("GET", "/system/records?name=probe.team-a".into(), None, [200, 200, 200, no, no]),
        ("GET", "/system/usage?namespace=team-a".into(), None, [200, 200, 200, no, no]),
        ("GET", "/system/calls?namespace=team-a".into(), None, [200, 200, 200, no, no]),
        ("GET", format!("/system/calls/{async_id}"), None, [200, 200, 200, no, no]),
        ("POST", format!("/system/calls/{async_id}/retry"), None, [ok, ok, ok, no, no]),
        ("GET", format!("/system/traces/{sync_id}"), None, [200, 200, 200, no, no]),
        ("GET", "/system/namespaces".into(), None, [200, 200, 200, 200, 200]),
        ("POST", "/system/namespaces".into(), Some(&existing), [409, no, no, no, no]),
        ("DELETE", "/system/namespaces/team-a".into(), None, [409, no, no, no, no]),
        ("GET", "/system/tokens?namespace=team-a".into(), None, [200, 200, no, no, no]),
        ("POST", "/system/tokens".into(), Some(&bad_label), [400, 400, no, no, no]),
        ("GET", "/system/kv?namespace=team-a".into(), None, [200, 200, 200, no, no]),
        ("GET", "/system/kv/default?namespace=team-a".into(), None, [200, 200, 200, no, no]),
        ("GET", "/system/kv/default/k?namespace=team-a".into(), None, [404, 404, 404, no, no]),
        ("PUT", "/system/kv/Bad/k?namespace=team-a".into(), Some(&existing), [400, 400, 400, no, no]),
        ("DELETE", "/system/kv/default/k?namespace=team-a".into(), None, [204, 204, 204, no, no]),
        ("GET", "/function/probe.team-a".into(), None, [200, 200, 200, 200, no]),
        ("GET", "/team-a".into(), None, [200, 200, 200, 200, no]),
        ("POST", "/async-function/probe.team-a".into(), None, [202, 202, 202, 202, no]),
    ];
    for (method, path, body, expected) in &routes {
        for (token, expected) in tokens.iter().zip(expected) {
            let response = call(&node, Some(token), method, path, *body);
            let who = if *token == &admin {
                "node admin".to_owned()
            } else {
                token[..12].to_owned()
            };
            if *expected == PASSES {
                assert!(
                    ![401, 403].contains(&response.status),
                    "{method} {path} as {who}: {} {}",
                    response.status,
                    response.body
                );
            } else {
                assert_eq!(
                    response.status, *expected,
                    "{method} {path} as {who}: {}",
                    response.body
                );
            }
            if response.status == 403 {
                assert!(response.error().contains("token"), "{}", response.error());
            }
        }
        for token in [None, Some("wisp_not-a-token")] {
            let response = call(&node, token, method, path, *body);
            assert_eq!(
                response.status, 401,
                "{method} {path} with {token:?}: {}",
                response.body
            );
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        }
    }
    assert_eq!(
        snapshot(&node),
        before,
        "no refused request changed anything"
    );

    // Uploads are shared by content: any token that may deploy somewhere may upload.
    for (token, expected) in [(&a_deploy, 200), (&b_admin, 200), (&a_invoke, 403)] {
        let response = send(
            node.request("PUT", "/system/artifacts")
                .set("Authorization", &format!("Bearer {token}")),
            Some(&probe_bytes),
        );
        assert_eq!(response.status, expected, "{}", response.body);
    }
    // A namespace token lists only what its namespace uses.
    let listed = call(&node, Some(&b_admin), "GET", "/system/functions", None).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["namespace"], "team-b");
    // Names, as faas-cli lists them; with their quotas and usage on request.
    let listed = call(&node, Some(&a_invoke), "GET", "/system/namespaces", None).json();
    assert_eq!(listed, json!(["team-a"]));
    let path = "/system/namespaces?detail=true";
    let listed = call(&node, Some(&a_invoke), "GET", path, None).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "team-a");
    let calls = call(&node, Some(&b_admin), "GET", "/system/calls", None).json();
    assert_eq!(
        calls["calls"],
        json!([]),
        "team-b sees none of team-a's calls"
    );
    let info = call(&node, Some(&b_admin), "GET", "/system/info", None).json();
    assert_eq!(info["functionCount"], 1);

    // Cross-namespace writes, each refused with 403 and nothing changed.
    let mut changed = probe.clone();
    changed["namespace"] = json!("team-b");
    changed["envVars"] = json!({ "TAKEN": "over" });
    let mut new_function = changed.clone();
    new_function["service"] = json!("intruder");
    let (b_invoke_id, _) = create_token(&node, &b_admin, "team-b", "invoke");
    let before = snapshot(&node);
    #[rustfmt::skip]
    let writes: [(&str, String, Option<Value>); 9] = [
        ("POST", "/system/functions".into(), Some(new_function)),
        ("PUT", "/system/functions".into(), Some(changed)),
        ("DELETE", "/system/functions".into(), Some(json!({ "functionName": "probe", "namespace": "team-b" }))),
        ("POST", "/system/scale-function/probe.team-b".into(), Some(json!({ "replicas": 0 }))),
        ("POST", "/system/tokens".into(), Some(json!({ "namespace": "team-b", "role": "admin" }))),
        ("DELETE", format!("/system/tokens/{b_invoke_id}"), None),
        ("DELETE", "/system/namespaces/team-b".into(), None),
        ("POST", "/system/namespaces".into(), Some(json!({ "name": "team-c" }))),
        ("PUT", "/system/kv/default/k?namespace=team-b".into(), Some(json!("taken"))),
    ];
    for (method, path, body) in &writes {
        for token in [&a_admin, &a_deploy] {
            let response = call(&node, Some(token), method, path, body.as_ref());
            assert_eq!(response.status, 403, "{method} {path}: {}", response.body);
        }
    }
    assert_eq!(
        snapshot(&node),
        before,
        "no cross-namespace write changed anything"
    );
}

#[test]
fn private_functions_need_a_token_of_their_namespace() {
    let node = Node::start(WISP);
    create_namespace(&node, json!({ "name": "team-a" }));
    deploy_probe(&node, "open", "team-a", json!({ "route": "/open" }));
    deploy_probe(
        &node,
        "closed",
        "team-a",
        json!({ "private": true, "route": "/closed" }),
    );
    deploy_probe(&node, "other", "default", json!({}));
    let (_, invoke) = create_token(&node, &node.token, "team-a", "invoke");
    let (_, stranger) = create_token(&node, &node.token, "default", "admin");

    for path in ["/function/open.team-a", "/open"] {
        assert_eq!(call(&node, None, "GET", path, None).status, 200, "{path}");
    }
    let via_header = send(
        node.request("GET", "/").set("X-Function", "closed.team-a"),
        None,
    );
    assert_eq!(via_header.status, 401, "{}", via_header.body);
    for path in ["/function/closed.team-a", "/closed"] {
        let anonymous = call(&node, None, "GET", path, None);
        assert_eq!(anonymous.status, 401, "{path}");
        assert!(
            anonymous.error().contains("private"),
            "{}",
            anonymous.error()
        );
        assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            call(&node, Some("wisp_0000"), "GET", path, None).status,
            401
        );
        let elsewhere = call(&node, Some(&stranger), "GET", path, None);
        assert_eq!(elsewhere.status, 403, "{path}: {}", elsewhere.body);
        let allowed = call(&node, Some(&invoke), "GET", path, None);
        assert_eq!(allowed.status, 200, "{path}: {}", allowed.body);
        assert!(
            !allowed.body.to_lowercase().contains("authorization"),
            "the function never sees the caller's token: {}",
            allowed.body
        );
        assert_eq!(
            call(&node, Some(&node.token), "GET", path, None).status,
            200
        );
    }
    assert_eq!(
        call(&node, None, "POST", "/async-function/closed.team-a", None).status,
        401
    );
    assert_eq!(
        call(
            &node,
            Some(&stranger),
            "POST",
            "/async-function/closed.team-a",
            None
        )
        .status,
        403
    );
    assert_eq!(
        call(
            &node,
            Some(&invoke),
            "POST",
            "/async-function/closed.team-a",
            None
        )
        .status,
        202
    );

    // Another scheme's credentials reach a public function untouched; wisp's own token does not.
    let own = send(
        node.request("GET", "/function/other")
            .set("Authorization", "Basic dXNlcjpwdw=="),
        None,
    );
    assert!(own.body.contains("Basic dXNlcjpwdw=="), "{}", own.body);
    let with_token = call(&node, Some(&invoke), "GET", "/function/other", None);
    assert_eq!(with_token.status, 200);
    assert!(!with_token.body.contains(&invoke), "{}", with_token.body);

    let status = call(
        &node,
        Some(&node.token),
        "GET",
        "/system/function/closed.team-a",
        None,
    )
    .json();
    assert_eq!(status["private"], true);
    let status = call(
        &node,
        Some(&node.token),
        "GET",
        "/system/function/open.team-a",
        None,
    )
    .json();
    assert_eq!(status["private"], false);
}

#[test]
fn tokens_are_shown_once_and_revoked_at_once() {
    let node = Node::start(WISP);
    create_namespace(&node, json!({ "name": "team-a" }));
    deploy_probe(&node, "probe", "team-a", json!({ "private": true }));
    let (admin_id, a_admin) = create_token(&node, &node.token, "team-a", "admin");
    let (invoke_id, invoke) = create_token(&node, &a_admin, "team-a", "invoke");
    assert!(invoke.starts_with("wisp_") && invoke.len() > 60, "{invoke}");

    let listed = call(&node, Some(&a_admin), "GET", "/system/tokens", None);
    assert_eq!(listed.status, 200);
    assert!(!listed.body.contains(&invoke) && !listed.body.contains(&a_admin));
    let ids: Vec<_> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(ids, [json!(admin_id), json!(invoke_id)]);
    assert_eq!(listed.json()[1]["role"], "invoke");
    assert_eq!(listed.json()[1]["name"], "invoke-team-a");
    assert!(listed.json()[1]["token"].is_null());
    // Only hashes are stored.
    for file in ["wisp.db", "wisp.db-wal"] {
        let database = std::fs::read(node.data_dir.join(file)).unwrap_or_default();
        let text = String::from_utf8_lossy(&database);
        assert!(!text.contains(&invoke[5..]), "the token is not in {file}");
    }

    assert_eq!(
        call(&node, Some(&invoke), "GET", "/function/probe.team-a", None).status,
        200
    );
    let revoked = call(
        &node,
        Some(&a_admin),
        "DELETE",
        &format!("/system/tokens/{invoke_id}"),
        None,
    );
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    assert_eq!(
        call(&node, Some(&invoke), "GET", "/function/probe.team-a", None).status,
        401
    );
    assert_eq!(
        call(&node, Some(&invoke), "GET", "/system/functions", None).status,
        401
    );
    let again = call(
        &node,
        Some(&a_admin),
        "DELETE",
        &format!("/system/tokens/{invoke_id}"),
        None,
    );
    assert_eq!(again.status, 404);

    // Removing a namespace takes its tokens with it.
    let removed = call(
        &node,
        Some(&node.token),
        "DELETE",
        "/system/namespaces/team-a",
        None,
    );
    assert_eq!(
        removed.status, 409,
        "it still holds a function: {}",
        removed.body
    );
    assert!(
        removed.error().contains("1 function"),
        "{}",
        removed.error()
    );
    let gone = call(
        &node,
        Some(&a_admin),
        "DELETE",
        "/system/functions",
        Some(&json!({ "functionName": "probe", "namespace": "team-a" })),
    );
    assert_eq!(gone.status, 200, "{}", gone.body);
    let removed = call(
        &node,
        Some(&node.token),
        "DELETE",
        "/system/namespaces/team-a",
        None,
    );
    assert_eq!(removed.status, 204, "{}", removed.body);
    assert_eq!(
        call(&node, Some(&a_admin), "GET", "/system/functions", None).status,
        401
    );
    let default = call(
        &node,
        Some(&node.token),
        "DELETE",
        "/system/namespaces/default",
        None,
    );
    assert_eq!(default.status, 409);
    assert!(default.error().contains("default"), "{}", default.error());

    // Tokens and namespaces outlive a restart.
    create_namespace(
        &node,
        json!({ "name": "team-b", "quotas": { "maxFunctions": 3 } }),
    );
    let (_, kept) = create_token(&node, &node.token, "team-b", "deploy");
    let data_dir = node.data_dir.clone();
    let (status, scratch) = node.stop();
    assert!(status.success());
    let node = Node::start_with(WISP, scratch, data_dir, &[]);
    assert_eq!(
        call(&node, Some(&kept), "GET", "/system/functions", None).status,
        200
    );
    let path = "/system/namespaces?detail=true";
    let namespaces = call(&node, Some(&node.token), "GET", path, None).json();
    let names: Vec<_> = namespaces
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].clone())
        .collect();
    assert_eq!(names, [json!("default"), json!("team-b")]);
    assert_eq!(namespaces[1]["quotas"]["maxFunctions"], 3);
}

#[test]
fn quotas_refuse_with_their_name_and_leave_nothing_behind() {
    let node = Node::start(WISP);
    let probe_size = std::fs::metadata(wisp_testing::HTTP_PROBE).unwrap().len();
    create_namespace(
        &node,
        json!({ "name": "few", "quotas": { "maxFunctions": 1 } }),
    );
    create_namespace(
        &node,
        json!({ "name": "small", "quotas": { "maxArtifactBytes": probe_size + 1 } }),
    );
    create_namespace(
        &node,
        json!({ "name": "narrow", "quotas": { "maxConcurrency": 1 } }),
    );

    // max_functions, for a namespace token and for the node's alike.
    let (_, deployer) = create_token(&node, &node.token, "few", "deploy");
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    let deployment = |name: &str, namespace: &str, digest: &str| json!({ "service": name, "namespace": namespace, "kind": "wasm-http", "image": digest });
    let first = call(
        &node,
        Some(&deployer),
        "POST",
        "/system/functions",
        Some(&deployment("one", "few", &digest)),
    );
    assert_eq!(first.status, 202, "{}", first.body);
    let before = snapshot(&node);
    for token in [&deployer, &node.token] {
        let over = call(
            &node,
            Some(token),
            "POST",
            "/system/functions",
            Some(&deployment("two", "few", &digest)),
        );
        assert_eq!(over.status, 403, "{}", over.body);
        assert_eq!(
            over.error(),
            "namespace few is at its quota of 1 functions (max_functions)"
        );
    }
    let update = call(
        &node,
        Some(&deployer),
        "PUT",
        "/system/functions",
        Some(&deployment("one", "few", &digest)),
    );
    assert_eq!(
        update.status, 200,
        "an update is not one more function: {}",
        update.body
    );
    assert_eq!(snapshot(&node), before);

    // max_artifact_bytes: the same artifact counts once; another one is over.
    node.deploy_ok(deployment("one", "small", &digest));
    node.deploy_ok(deployment("two", "small", &digest));
    let stdio = node.upload_file(wisp_testing::STDIO_PROBE);
    let before = snapshot(&node);
    let mut other = deployment("three", "small", &stdio);
    other["kind"] = json!("wasm-stdio");
    let over = node.deploy(other);
    assert_eq!(over.status, 403, "{}", over.body);
    assert!(
        over.error().contains("(max_artifact_bytes)"),
        "{}",
        over.error()
    );
    assert!(
        over.error()
            .starts_with("namespace small's functions would use"),
        "{}",
        over.error()
    );
    assert_eq!(snapshot(&node), before);
    let artifacts = call(&node, Some(&node.token), "GET", "/system/artifacts", None);
    assert!(
        !artifacts.body.contains(&stdio),
        "the refused artifact is not kept: {}",
        artifacts.body
    );

    // max_concurrency: a second call while one runs is turned away at once.
    node.deploy_ok(deployment("slow", "narrow", &digest));
    let running = node.get_in_background("/function/slow.narrow/sleep?ms=2000");
    assert!(node.eventually(Duration::from_secs(10), || {
        call(&node, Some(&node.token), "GET", "/system/info", None).json()["activeInvocations"] == 1
    }));
    let busy = node.get("/function/slow.narrow");
    assert_eq!(busy.status, 429, "{}", busy.body);
    assert!(
        busy.error()
            .contains("namespace narrow (quota max_concurrency)"),
        "{}",
        busy.error()
    );
    assert!(busy.header("retry-after").is_some());
    assert_eq!(running.join().unwrap().status, 200);
    assert_eq!(
        node.get("/function/one.small").status,
        200,
        "other namespaces are not limited"
    );

    // Quotas of zero, and bad names, are refused.
    for body in [
        json!({ "name": "zero", "quotas": { "maxFunctions": 0 } }),
        json!({ "name": "Bad_Name" }),
        json!({ "name": "x", "quotas": { "maxFunction": 1 } }),
    ] {
        let response = call(
            &node,
            Some(&node.token),
            "POST",
            "/system/namespaces",
            Some(&body),
        );
        assert_eq!(response.status, 400, "{body}: {}", response.body);
    }
}

#[test]
fn namespaces_and_tokens_through_the_cli() {
    let node = Node::start(WISP);
    let run = |args: &[&str], token: Option<&str>| {
        let mut command = node.cli(WISP);
        command.args(args);
        if let Some(token) = token {
            command.env("WISP_TOKEN", token);
        }
        command.output().expect("run wisp")
    };
    let ok = |args: &[&str], token: Option<&str>| {
        let output = run(args, token);
        assert!(
            output.status.success(),
            "wisp {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let fails = |args: &[&str], token: Option<&str>| {
        let output = run(args, token);
        assert!(!output.status.success(), "wisp {args:?} should fail");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        stderr
    };

    let created = ok(
        &[
            "ns",
            "create",
            "team-a",
            "--max-functions",
            "2",
            "--max-concurrency",
            "4",
            "--max-artifact-bytes",
            "100MiB",
        ],
        None,
    );
    assert_eq!(created, "created namespace team-a\n");
    let listed: Value = serde_json::from_str(&ok(&["ns", "ls", "--json"], None)).unwrap();
    assert_eq!(listed[1]["name"], "team-a");
    assert_eq!(
        listed[1]["quotas"],
        json!({ "maxFunctions": 2, "maxConcurrency": 4, "maxArtifactBytes": "100MiB" })
    );
    let table = ok(&["ns", "ls"], None);
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("team-a") && line.contains("100MiB")),
        "{table}"
    );

    let token = ok(
        &[
            "token",
            "create",
            "--namespace",
            "team-a",
            "--role",
            "deploy",
            "--name",
            "ci",
        ],
        None,
    );
    let token = token.trim();
    assert!(token.starts_with("wisp_"), "{token}");
    let tokens: Value = serde_json::from_str(&ok(&["token", "ls", "--json"], None)).unwrap();
    assert_eq!(tokens[0]["name"], "ci");
    assert_eq!(tokens[0]["role"], "deploy");
    let id = tokens[0]["id"].as_str().unwrap().to_owned();
    let table = ok(&["token", "ls", "-n", "team-a"], None);
    assert!(
        table.contains(&id) && table.contains("ci") && !table.contains(token),
        "{table}"
    );

    // The namespace token works through WISP_TOKEN, in its namespace only.
    assert_eq!(ok(&["ls", "--json"], Some(token)).trim(), "[]");
    let refused = fails(&["ns", "create", "team-b"], Some(token));
    assert!(
        refused.contains("only the node's admin token can create namespaces"),
        "{refused}"
    );
    let refused = fails(
        &["token", "create", "-n", "team-a", "--role", "admin"],
        Some(token),
    );
    assert!(refused.contains("cannot manage tokens"), "{refused}");
    let refused = fails(&["usage", "--namespace", "default"], Some(token));
    assert!(refused.contains("not in default"), "{refused}");

    assert_eq!(
        ok(&["token", "revoke", &id], None),
        format!("revoked token {id}\n")
    );
    let refused = fails(&["ls"], Some(token));
    assert!(refused.contains("the token is not valid"), "{refused}");

    let refused = fails(&["ns", "rm", "default"], None);
    assert!(refused.contains("cannot be removed"), "{refused}");
    let unknown_role = run(
        &["token", "create", "-n", "team-a", "--role", "owner"],
        None,
    );
    assert!(!unknown_role.status.success());
    assert!(String::from_utf8_lossy(&unknown_role.stderr).contains("unknown role `owner`"));
    assert_eq!(
        ok(&["ns", "rm", "team-a"], None),
        "removed namespace team-a\n"
    );
    let refused = fails(&["ns", "rm", "team-a"], None);
    assert!(refused.contains("does not exist"), "{refused}");
}

#[test]
fn a_namespace_removed_and_made_again_at_once_is_there_to_use() {
    // In cluster mode, the node reads its own removal back from the
    // registry's watch after it made the namespace again: that late read
    // must not remove the new namespace.
    let node = Node::start(WISP);
    for round in 0..20 {
        create_namespace(&node, json!({ "name": "team-a" }));
        // Its tokens go with it: a new one is made each round.
        create_token(&node, &node.token, "team-a", "deploy");
        let listed = call(&node, Some(&node.token), "GET", "/system/namespaces", None);
        assert_eq!(listed.json(), json!(["default", "team-a"]), "round {round}");
        let removed = call(
            &node,
            Some(&node.token),
            "DELETE",
            "/system/namespaces/team-a",
            None,
        );
        assert_eq!(removed.status, 204, "remove: {}", removed.body);
    }
}

/// Removes function `p` and namespace `team-a`, then makes both again, as
/// another tenant taking the name would.
fn remove_and_make_again(node: &Node) {
    let function = json!({ "functionName": "p", "namespace": "team-a" });
    for (path, body) in [
        ("/system/functions", Some(&function)),
        ("/system/namespaces/team-a", None),
    ] {
        let removed = call(node, Some(&node.token), "DELETE", path, body);
        assert!(removed.status < 300, "{path}: {}", removed.body);
    }
    create_namespace(node, json!({ "name": "team-a" }));
    deploy_probe(node, "p", "team-a", json!({ "asyncConcurrency": 1 }));
}

#[test]
fn calls_queued_in_a_removed_namespace_never_run_in_one_made_again_by_its_name() {
    let node = Node::start(WISP);
    let described = |node: &Node| {
        call(
            node,
            Some(&node.token),
            "GET",
            "/system/function/p?namespace=team-a",
            None,
        )
        .json()
    };
    create_namespace(&node, json!({ "name": "team-a" }));
    deploy_probe(&node, "p", "team-a", json!({ "asyncConcurrency": 1 }));
    // One call holds the function's only async slot; five more wait behind it.
    for path in std::iter::once("/sleep?ms=3000").chain(["/echo?from=the-old-tenant"; 5]) {
        let queued = call(
            &node,
            None,
            "POST",
            &format!("/async-function/p.team-a{path}"),
            None,
        );
        assert_eq!(queued.status, 202, "{}", queued.body);
    }
    let running = || {
        call(
            &node,
            Some(&node.token),
            "GET",
            "/system/calls?namespace=team-a&status=running",
            None,
        )
        .json()["calls"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(node.eventually(Duration::from_secs(10), || running() == 1));
    remove_and_make_again(&node);
    // Long after the first call's slot is free again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        described(&node)["invocationCount"],
        0,
        "{}",
        described(&node)
    );
    let listed = call(
        &node,
        Some(&node.token),
        "GET",
        "/system/calls?namespace=team-a",
        None,
    );
    assert_eq!(listed.json()["calls"], json!([]), "{}", listed.body);
}

#[test]
fn an_attempt_of_a_removed_namespaces_call_records_nothing_on_a_new_call_of_its_id() {
    let node = Node::start(WISP);
    let enqueue = |id: &str, path: &str| {
        let queued = send(
            node.request("POST", &format!("/async-function/p.team-a{path}"))
                .set("X-Call-Id", id),
            None,
        );
        assert_eq!(queued.status, 202, "{}", queued.body);
    };
    let order = || {
        call(
            &node,
            Some(&node.token),
            "GET",
            "/system/calls/order-1?namespace=team-a",
            None,
        )
        .json()
    };
    create_namespace(&node, json!({ "name": "team-a" }));
    deploy_probe(&node, "p", "team-a", json!({ "asyncConcurrency": 1 }));
    let started = std::time::Instant::now();
    enqueue("order-1", "/sleep?ms=2500");
    assert!(node.eventually(Duration::from_secs(10), || order()["status"] == "running"));
    // Another tenant makes the namespace again and picks the same id, its
    // call queued behind one of 4 s.
    remove_and_make_again(&node);
    enqueue("blocker", "/sleep?ms=4000");
    enqueue("order-1", "/?who=the-new-tenant");
    // The old attempt ends at 2.5 s; the new call waits until about 6.5 s.
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(started.elapsed()));
    let waiting = order();
    assert_eq!(
        (&waiting["status"], &waiting["result"]),
        (&json!("queued"), &Value::Null),
        "{waiting}"
    );
    assert!(node.eventually(Duration::from_secs(15), || order()["status"] == "succeeded"));
    let finished = order();
    assert_eq!(finished["attempts"], 1, "{finished}");
    assert!(
        finished["result"]["body"]
            .as_str()
            .is_some_and(|body| body.contains("who=the-new-tenant")),
        "{finished}"
    );
}
