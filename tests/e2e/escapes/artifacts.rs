//! Artifacts and the node's own data: uploads are charged to the uploader's
//! namespace and collected when nothing uses them, a tenant cannot remove
//! another tenant's upload; and the smaller leaks of the same issue: a
//! world-readable data directory, a namespace's call log outliving it, an
//! `invoke` token reading env and commands, percent-encoded function names,
//! and `/metrics` open to anyone.

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use serde_json::{Value, json};
use wisp_testing::{Node, Response, script_archive, send};

use crate::WISP;

/// Sends a request with `token` (none when `None`) and an optional body.
fn call(
    node: &Node,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Response {
    let mut request = node.request(method, path);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    send(request, body)
}

/// `call` with a JSON body.
fn call_json(node: &Node, token: Option<&str>, method: &str, path: &str, body: &Value) -> Response {
    call(node, token, method, path, Some(body.to_string().as_bytes()))
}

/// Creates `namespace` (with `quotas`) and a token of `role` in it.
fn namespace_with_token(node: &Node, namespace: &str, quotas: Value, role: &str) -> String {
    let created = call_json(
        node,
        Some(&node.token),
        "POST",
        "/system/namespaces",
        &json!({ "name": namespace, "quotas": quotas }),
    );
    assert_eq!(created.status, 201, "create {namespace}: {}", created.body);
    token_for(node, namespace, role)
}

/// A new token of `role` in `namespace`, made with the admin token.
fn token_for(node: &Node, namespace: &str, role: &str) -> String {
    let token = call_json(
        node,
        Some(&node.token),
        "POST",
        "/system/tokens",
        &json!({ "namespace": namespace, "role": role }),
    );
    assert_eq!(token.status, 201, "create token: {}", token.body);
    token.json()["token"].as_str().unwrap().to_owned()
}

/// Uploads `bytes` with `token` and returns the response.
fn upload(node: &Node, token: &str, bytes: &[u8]) -> Response {
    call(node, Some(token), "PUT", "/system/artifacts", Some(bytes))
}

/// The digest of a successful upload.
fn digest_of(response: &Response) -> String {
    assert_eq!(response.status, 200, "upload: {}", response.body);
    response.json()["digest"].as_str().unwrap().to_owned()
}

/// Where the node keeps an artifact's bytes.
fn blob(node: &Node, digest: &str) -> std::path::PathBuf {
    node.data_dir
        .join("artifacts")
        .join(digest.trim_start_matches("sha256:"))
}

/// A shell script as a process function's artifact, uploaded by the admin.
fn script(node: &Node, body: &str) -> String {
    node.upload(&script_archive("run.sh", body))
}

#[test]
fn uploads_count_toward_the_uploaders_artifact_quota() {
    let node = Node::start(WISP);
    let deployer = namespace_with_token(
        &node,
        "team-a",
        json!({ "maxArtifactBytes": 1000 }),
        "deploy",
    );

    // Unused uploads used to count toward no quota: a tenant could fill the disk.
    let first = digest_of(&upload(&node, &deployer, &[b'a'; 600]));
    let refused = upload(&node, &deployer, &[b'b'; 600]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let error = refused.error();
    assert!(
        error.contains("namespace team-a") && error.contains("(max_artifact_bytes)"),
        "{error}"
    );
    // The refused bytes are not kept anywhere in the store.
    assert_one_artifact_and_nothing_in_tmp(&node);

    // The same bytes again cost nothing more; another namespace has its own quota.
    assert_eq!(digest_of(&upload(&node, &deployer, &[b'a'; 600])), first);
    let other = namespace_with_token(
        &node,
        "team-b",
        json!({ "maxArtifactBytes": 1000 }),
        "deploy",
    );
    digest_of(&upload(&node, &other, &[b'b'; 600]));
}

/// Sends an upload's head with `framing` and then `body` over a plain
/// socket, without ending the body; answers the response's status and body.
fn raw_upload(node: &Node, token: &str, framing: &str, body: &[u8]) -> (u16, String) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let address = node.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "PUT /system/artifacts HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {token}\r\n{framing}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_namespace_without_an_artifact_quota_is_held_to_the_nodes_unused_upload_limit() {
    let node = Node::start_args(WISP, &["--namespace-max-unused-upload-bytes", "64KiB"]);
    let deployer = namespace_with_token(&node, "team-c", json!({}), "deploy");
    let assert_refused = |status: u16, body: &str| {
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("namespace team-c")
                && body.contains("(--namespace-max-unused-upload-bytes)"),
            "{body}"
        );
    };

    // Without a quota of its own, a namespace used to upload without limit.
    digest_of(&upload(&node, &deployer, &[b'a'; 40 << 10]));
    // A declared length over what is left (24 KiB, plus the 40 KiB it may
    // upload again at no cost) is refused before the body is read: none of
    // it is sent.
    let (status, body) = raw_upload(&node, &deployer, "Content-Length: 102400", &[]);
    assert_refused(status, &body);
    // A body without a length is cut off once it passes that: the node
    // answers before the body ends.
    let chunk = format!("{:x}\r\n{}\r\n", 8 << 10, "c".repeat(8 << 10));
    let (status, body) = raw_upload(
        &node,
        &deployer,
        "Transfer-Encoding: chunked",
        chunk.repeat(9).as_bytes(),
    );
    assert_refused(status, &body);
    // Uploaded whole, a second artifact is refused once its digest is known.
    let whole = upload(&node, &deployer, &[b'b'; 40 << 10]);
    assert_refused(whole.status, &whole.body);

    // Nothing of the refused uploads is kept, not even in tmp/.
    assert_one_artifact_and_nothing_in_tmp(&node);
    // The node's own token is the operator's, not held to it.
    node.upload(&[b'd'; 40 << 10]);
}

#[test]
fn unreferenced_uploads_are_collected_after_the_grace_period() {
    let node = Node::start_args(WISP, &["--artifact-grace-period", "1s"]);
    let used = script(&node, "#!/bin/sh\necho in use\n");
    node.deploy_ok(
        json!({ "service": "kept", "kind": "process", "image": used, "envProcess": "./run.sh" }),
    );
    let unused = node.upload(b"nobody deploys this");
    assert!(blob(&node, &unused).is_file());

    assert!(
        node.eventually(Duration::from_secs(30), || !blob(&node, &unused).exists()),
        "the unused upload was never collected"
    );
    let gone = call(
        &node,
        Some(&node.token),
        "GET",
        &format!("/system/artifacts/{unused}"),
        None,
    );
    assert_eq!(gone.status, 404, "{}", gone.body);
    // What a function uses stays, and the function keeps working.
    let kept = call(
        &node,
        Some(&node.token),
        "GET",
        &format!("/system/artifacts/{used}"),
        None,
    );
    assert_eq!(kept.status, 200, "{}", kept.body);
    let response = node.post("/function/kept", b"");
    assert_eq!((response.status, response.body.as_str()), (200, "in use\n"));

    // Once its function is removed, an artifact goes too.
    let removed = call_json(
        &node,
        Some(&node.token),
        "DELETE",
        "/system/functions",
        &json!({ "functionName": "kept" }),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(
        node.eventually(Duration::from_secs(30), || !blob(&node, &used).exists()),
        "the artifact of a removed function was never collected"
    );
}

#[test]
fn a_failing_deploy_cannot_remove_another_namespaces_upload() {
    let node = Node::start(WISP);
    let victim = namespace_with_token(&node, "victim", json!({}), "deploy");
    let attacker = namespace_with_token(&node, "attacker", json!({}), "deploy");
    let squeezed = namespace_with_token(
        &node,
        "squeezed",
        json!({ "maxArtifactBytes": 10 }),
        "deploy",
    );
    let probe = std::fs::read(wisp_testing::HTTP_PROBE).unwrap();
    let digest = digest_of(&upload(&node, &victim, &probe));

    // Other tenants name the victim's fresh upload in deploys that fail: one
    // of the wrong kind (400), one over its namespace's quota (403); the
    // first even uploads the same bytes itself beforehand.
    assert_eq!(digest_of(&upload(&node, &attacker, &probe)), digest);
    for (token, namespace, kind, status) in [
        (&attacker, "attacker", "wasm-stdio", 400),
        (&squeezed, "squeezed", "wasm-http", 403),
    ] {
        let failed = call_json(
            &node,
            Some(token),
            "POST",
            "/system/functions",
            &json!({ "service": "grab", "namespace": namespace, "kind": kind, "image": digest }),
        );
        assert_eq!(failed.status, status, "{}", failed.body);
    }

    assert!(
        blob(&node, &digest).is_file(),
        "the victim's upload was removed"
    );
    let deployed = call_json(
        &node,
        Some(&victim),
        "POST",
        "/system/functions",
        &json!({ "service": "app", "namespace": "victim", "kind": "wasm-http", "image": digest }),
    );
    assert_eq!(deployed.status, 202, "{}", deployed.body);
    assert_eq!(node.get("/function/app.victim").status, 200);
}

#[test]
fn the_data_directory_is_private_and_sandboxed_processes_still_run() {
    let node = Node::start(WISP);
    let image = script(&node, "#!/bin/sh\necho sandboxed\n");
    node.deploy_ok(
        json!({ "service": "sh", "kind": "process", "image": image, "envProcess": "./run.sh" }),
    );
    let response = node.post("/function/sh", b"");
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "sandboxed\n"),
        "{}",
        node.log()
    );

    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&node.data_dir), 0o700, "the data directory");
    for entry in std::fs::read_dir(&node.data_dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_file() {
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is readable by others",
                path.display()
            );
        }
    }
    // A node of a cluster keeps no admin token file: the cluster keeps it, sealed.
    let in_cluster = std::env::var_os("WISP_TEST_CLUSTER").is_some();
    for file in ["wisp.db", "telemetry.db", "admin-token"] {
        if file != "admin-token" || !in_cluster {
            assert_eq!(mode(&node.data_dir.join(file)), 0o600, "{file}");
        }
    }
    // The process ran as a uid of its own, yet the node's files stay closed to it.
    assert_eq!(mode(&node.data_dir.join("secrets")), 0o700);
}

#[test]
fn a_removed_namespace_leaves_nothing_to_its_successor() {
    let node = Node::start(WISP);
    namespace_with_token(&node, "team-a", json!({}), "deploy");
    let image = script(&node, "#!/bin/sh\necho 'private diary' >&2\necho done\n");
    node.deploy_ok(json!({
        "service": "diary", "namespace": "team-a", "kind": "process", "image": image, "envProcess": "./run.sh",
    }));
    let sync = node.post("/function/diary.team-a", b"");
    assert_eq!(sync.status, 200, "{}", sync.body);
    let call_id = sync.header("x-call-id").unwrap().to_owned();
    let queued = node.post("/async-function/diary.team-a", b"");
    assert_eq!(queued.status, 202, "{}", queued.body);
    let async_id = queued.header("x-call-id").unwrap().to_owned();
    let admin = |path: &str| call(&node, Some(&node.token), "GET", path, None);
    assert!(node.eventually(Duration::from_secs(30), || {
        admin(&format!("/system/calls/{async_id}")).json()["status"] == "succeeded"
    }));
    assert!(
        admin("/system/logs?namespace=team-a&name=diary")
            .body
            .contains("private diary")
    );

    let removed = call_json(
        &node,
        Some(&node.token),
        "DELETE",
        "/system/functions",
        &json!({ "functionName": "diary", "namespace": "team-a" }),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    let gone = call(
        &node,
        Some(&node.token),
        "DELETE",
        "/system/namespaces/team-a",
        None,
    );
    assert_eq!(gone.status, 204, "{}", gone.body);

    // A new team gets the name, and a token with every read right.
    namespace_with_token(&node, "team-a", json!({}), "deploy");
    let successor = token_for(&node, "team-a", "admin");
    let read = |path: &str| {
        let response = call(&node, Some(&successor), "GET", path, None);
        (response.status, response.body)
    };
    let (status, logs) = read("/system/logs?namespace=team-a&name=diary");
    assert_eq!(status, 200);
    assert!(!logs.contains("private diary"), "old logs: {logs}");
    assert_eq!(
        read("/system/records?name=diary.team-a"),
        (200, "[]".to_owned())
    );
    let (status, calls) = read("/system/calls?namespace=team-a");
    assert_eq!(
        (status, calls.contains(&async_id)),
        (200, false),
        "old calls: {calls}"
    );
    assert_eq!(read(&format!("/system/calls/{async_id}")).0, 404);
    assert_eq!(read(&format!("/system/traces/{call_id}")).0, 404);
    let (status, usage) = read("/system/usage?namespace=team-a");
    assert_eq!(
        (status, usage.contains("diary")),
        (200, false),
        "old usage: {usage}"
    );
}

#[test]
fn an_invoke_token_sees_no_env_or_command() {
    let node = Node::start(WISP);
    let invoker = namespace_with_token(&node, "team-a", json!({}), "invoke");
    let deployer = token_for(&node, "team-a", "deploy");
    let image = script(&node, "#!/bin/sh\necho ok\n");
    node.deploy_ok(json!({
        "service": "db", "namespace": "team-a", "kind": "process", "image": image,
        "envProcess": "./run.sh --password hunter2", "envVars": { "DATABASE_URL": "postgres://admin:s3cret@db" },
    }));

    for path in ["/system/functions", "/system/function/db.team-a"] {
        let seen = call(&node, Some(&invoker), "GET", path, None);
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert!(seen.body.contains("\"db\""), "{}", seen.body);
        for secret in ["hunter2", "s3cret", "envVars", "envProcess"] {
            assert!(
                !seen.body.contains(secret),
                "{path} shows {secret}: {}",
                seen.body
            );
        }
        let full = call(&node, Some(&deployer), "GET", path, None);
        assert!(
            full.body.contains("hunter2") && full.body.contains("s3cret"),
            "{}",
            full.body
        );
    }
}

#[test]
fn percent_encoded_function_names_route_with_the_right_path() {
    let node = Node::start(WISP);
    let image = script(
        &node,
        "#!/bin/sh\nprintf '%s?%s' \"$Http_Path\" \"$Http_Query\"\n",
    );
    node.deploy_ok(
        json!({ "service": "probe", "kind": "process", "image": image, "envProcess": "./run.sh" }),
    );
    for (path, seen) in [
        ("/function/probe/x/y?q=1", "/x/y?q=1"),
        ("/function/%70robe/x/y?q=1", "/x/y?q=1"),
        ("/function/%70robe", "/?"),
        ("/function/%70rob%65.default/a%20b", "/a%20b?"),
    ] {
        let response = node.get(path);
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, seen),
            "{path}"
        );
    }
    let queued = node.post("/async-function/%70robe/x/y", b"");
    assert_eq!(queued.status, 202, "{}", queued.body);
    let id = queued.header("x-call-id").unwrap().to_owned();
    assert!(node.eventually(Duration::from_secs(30), || {
        let info = call(
            &node,
            Some(&node.token),
            "GET",
            &format!("/system/calls/{id}"),
            None,
        )
        .json();
        info["status"] == "succeeded" && info["result"]["body"] == "/x/y?"
    }));
    // A name that decodes to something no function is called is unknown.
    let unknown = node.get("/function/probe%2Fx/y");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.json()["error"].is_string());
}

#[test]
fn metrics_need_the_metrics_token_when_one_is_set() {
    let metrics_token = "prometheus-scrapes-with-this";
    let node = Node::start_args(WISP, &["--metrics-token", metrics_token]);
    let invoker = namespace_with_token(&node, "team-a", json!({}), "admin");
    let image = script(&node, "#!/bin/sh\necho ok\n");
    node.deploy_ok(json!({ "service": "secret-project", "kind": "process", "image": image, "envProcess": "./run.sh" }));
    assert_eq!(node.post("/function/secret-project", b"").status, 200);

    let anonymous = node.get("/metrics");
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(anonymous.header("www-authenticate").is_some());
    assert!(!anonymous.body.contains("secret-project"));
    let tenant = call(&node, Some(&invoker), "GET", "/metrics", None);
    assert_eq!(tenant.status, 403, "{}", tenant.body);
    assert!(tenant.error().contains("metrics"), "{}", tenant.error());
    for token in [metrics_token, node.token.as_str()] {
        let scraped = call(&node, Some(token), "GET", "/metrics", None);
        assert_eq!(scraped.status, 200, "{}", scraped.body);
        assert!(scraped.body.contains("secret-project"));
    }
    // The metrics token reads metrics and nothing else.
    let api = call(&node, Some(metrics_token), "GET", "/system/functions", None);
    assert_eq!(api.status, 401, "{}", api.body);
}

/// The store holds exactly one artifact, and nothing of a refused upload is
/// left in its temporary directory.
fn assert_one_artifact_and_nothing_in_tmp(node: &Node) {
    let artifacts = call(node, Some(&node.token), "GET", "/system/artifacts", None);
    assert_eq!(
        artifacts.json().as_array().unwrap().len(),
        1,
        "{}",
        artifacts.body
    );
    let left = std::fs::read_dir(node.data_dir.join("tmp"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "files left in tmp/");
}
