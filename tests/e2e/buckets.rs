//! Object buckets through S3's API: boto3 (from PyPI, installed by
//! `scripts/test` into `$WISP_BOTO3`) drives a namespace's buckets as a user
//! would; `curl`-style requests with a bearer token reach the same objects;
//! a namespace's byte quota holds; objects outlive a restart and go with
//! their namespace; stored and removed objects fire the functions whose
//! bucket triggers watch them; a wasm function reaches the buckets it
//! declares, in-process.

use std::{process::Command, time::Duration};

use serde_json::json;
use wisp_testing::{Node, Response, send};

use crate::{
    WISP,
    tenants::{create_namespace, create_token},
};

/// `method /s3{path}` with `token` as a bearer and `body`.
fn s3(node: &Node, token: &str, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    let request = node
        .request(method, &format!("/s3{path}"))
        .set("Authorization", &format!("Bearer {token}"));
    send(request, body)
}

/// How many files `objects/{dir}` holds in the node's data directory.
fn files_in(node: &Node, dir: &str) -> usize {
    std::fs::read_dir(node.data_dir.join("objects").join(dir)).map_or(0, Iterator::count)
}

#[test]
fn boto3_puts_lists_gets_ranges_and_deletes_objects_with_a_50_mb_multipart_upload() {
    let node = Node::start(WISP);
    create_namespace(&node, json!({ "name": "team-a" }));
    create_namespace(&node, json!({ "name": "team-b" }));
    let (_, team_a) = create_token(&node, &node.token, "team-a", "deploy");
    let (_, team_a_invoke) = create_token(&node, &node.token, "team-a", "invoke");
    let (_, team_b) = create_token(&node, &node.token, "team-b", "admin");
    let boto3 = std::env::var("WISP_BOTO3")
        .expect("WISP_BOTO3: the directory boto3 is installed in (scripts/test does it)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/buckets/boto3_client.py");
    let output = Command::new("python3")
        .arg(script)
        .env("PYTHONPATH", boto3)
        .env("WISP_URL", &node.url)
        .env("ADMIN_TOKEN", &node.token)
        .env("TEAM_A_TOKEN", &team_a)
        .env("TEAM_A_INVOKE_TOKEN", &team_a_invoke)
        .env("TEAM_B_TOKEN", &team_b)
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        node.log()
    );
    // The parts and staging files of the uploads are gone with them (on
    // one node; a cluster keeps only staging files on disk).
    for dir in ["parts", "tmp", "data"] {
        let left = files_in(&node, dir);
        assert_eq!(left, 0, "objects/{dir} holds {left} files");
    }
}

#[test]
fn a_bearer_token_reaches_its_namespaces_objects_within_its_quota_and_they_outlive_a_restart() {
    let node = Node::start(WISP);
    create_namespace(
        &node,
        json!({ "name": "team-a", "quotas": { "maxObjectBytes": "1KiB" } }),
    );
    let (_, team_a) = create_token(&node, &node.token, "team-a", "deploy");

    // `curl -T`: a PUT creates the bucket; the object keeps its type.
    let put = node
        .request("PUT", "/s3/uploads/notes/a.txt")
        .set("Authorization", &format!("Bearer {team_a}"))
        .set("Content-Type", "text/markdown");
    assert_eq!(send(put, Some(b"# hello")).status, 200);
    let got = s3(&node, &team_a, "GET", "/uploads/notes/a.txt", None);
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body, "# hello");
    assert_eq!(got.header("content-type"), Some("text/markdown"));
    // The ETag is the MD5 of the bytes, as S3's and rclone's checks expect.
    assert_eq!(
        got.header("etag"),
        Some("\"3065ee006c667d1aa68e5f54fc96e292\"")
    );

    // Past the namespace's 1 KiB: refused, and nothing of it is kept.
    let refused = s3(&node, &team_a, "PUT", "/uploads/big.bin", Some(&[7; 1020]));
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("<Code>QuotaExceeded</Code>"),
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("max_object_bytes"),
        "{}",
        refused.body
    );
    assert_eq!(
        s3(&node, &team_a, "HEAD", "/uploads/big.bin", None).status,
        404
    );
    // Replacing an object counts its new size, not both.
    assert_eq!(
        s3(
            &node,
            &team_a,
            "PUT",
            "/uploads/notes/a.txt",
            Some(&[b'x'; 1000])
        )
        .status,
        200
    );

    // The parts of an upload in progress count too, so abandoned uploads
    // cannot fill the disk past the quota.
    let started = s3(&node, &team_a, "POST", "/uploads/parts.bin?uploads", None);
    assert_eq!(started.status, 200, "{}", started.body);
    let upload = started
        .body
        .split("<UploadId>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("an upload id")
        .to_owned();
    let part = |number: u32, bytes: usize| {
        let path = format!("/uploads/parts.bin?partNumber={number}&uploadId={upload}");
        s3(&node, &team_a, "PUT", &path, Some(&vec![1; bytes]))
    };
    assert_eq!(part(1, 20).status, 200);
    let refused = part(2, 10);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("<Code>QuotaExceeded</Code>"),
        "{}",
        refused.body
    );
    let aborted = s3(
        &node,
        &team_a,
        "DELETE",
        &format!("/uploads/parts.bin?uploadId={upload}"),
        None,
    );
    assert_eq!(aborted.status, 204, "{}", aborted.body);
    assert_eq!(part(2, 10).status, 404, "an aborted upload takes no parts");

    // No token, an unknown one, or a path outside the bucket's: refused.
    let anonymous = send(node.request("GET", "/s3/uploads/notes/a.txt"), None);
    assert_eq!(anonymous.status, 403);
    assert!(anonymous.body.contains("<Code>AccessDenied</Code>"));
    let unknown = s3(
        &node,
        &format!("wisp_{}", "0".repeat(64)),
        "GET",
        "/uploads/notes/a.txt",
        None,
    );
    assert_eq!(unknown.status, 403);
    let other = s3(&node, &team_a, "GET", "/uploads.default/notes/a.txt", None);
    assert_eq!(other.status, 403, "{}", other.body);
    // `..` in a key is a key like any other: it names no file.
    assert_eq!(
        s3(
            &node,
            &team_a,
            "PUT",
            "/uploads/..%2F..%2Fwisp.db",
            Some(b"x")
        )
        .status,
        200
    );
    let listed = s3(&node, &team_a, "GET", "/uploads?list-type=2", None);
    assert!(
        listed.body.contains("<Key>../../wisp.db</Key>"),
        "{}",
        listed.body
    );
    assert!(
        std::fs::metadata(node.data_dir.join("wisp.db"))
            .unwrap()
            .len()
            > 1
    );

    // A restart keeps the objects; removing the namespace removes them.
    let data_dir = node.data_dir.clone();
    let (_, scratch) = node.stop();
    let node = Node::start_with(WISP, scratch, data_dir, &[]);
    let got = s3(&node, &team_a, "GET", "/uploads/notes/a.txt", None);
    assert_eq!((got.status, got.body.len()), (200, 1000));
    let removed = send(node.admin("DELETE", "/system/namespaces/team-a"), None);
    assert_eq!(removed.status, 204, "{}", removed.body);
    create_namespace(&node, json!({ "name": "team-a" }));
    let got = s3(
        &node,
        &node.token,
        "GET",
        "/uploads.team-a/notes/a.txt",
        None,
    );
    assert_eq!(got.status, 404, "{}", got.body);
    assert_eq!(
        files_in(&node, "data"),
        0,
        "the namespace's files are gone with it"
    );
}

#[test]
fn objects_stored_and_removed_fire_the_functions_whose_bucket_triggers_match() {
    let node = Node::start(WISP);
    let probe = node.upload_file(wisp_testing::HTTP_PROBE);
    node.deploy_ok(json!({
        "service": "thumbnailer", "kind": "wasm-http", "image": probe,
        "triggers": [{ "bucket": "uploads", "events": ["created"], "prefix": "img/" }],
    }));
    node.deploy_ok(json!({
        "service": "janitor", "kind": "wasm-http", "image": probe,
        "triggers": [{ "bucket": "uploads", "events": ["deleted"] }],
    }));
    for (trigger, says) in [
        (
            json!({ "events": ["created"] }),
            "`events` is for bucket triggers",
        ),
        (json!({ "bucket": "Uploads" }), "not a bucket's name"),
        (
            json!({ "bucket": "uploads", "events": ["moved"] }),
            "`moved` is not",
        ),
        (
            json!({ "bucket": "uploads", "kv": "default" }),
            "one source",
        ),
    ] {
        let refused = node.deploy(json!({
            "service": "bad", "kind": "wasm-http", "image": probe, "triggers": [trigger],
        }));
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert!(refused.error().contains(says), "{}", refused.error());
    }
    let token = node.token.clone();
    assert_eq!(
        s3(&node, &token, "PUT", "/uploads/img/cat.png", Some(b"png")).status,
        200
    );
    assert_eq!(
        s3(&node, &token, "PUT", "/uploads/doc/a.txt", Some(b"txt")).status,
        200
    );
    assert_eq!(
        s3(&node, &token, "PUT", "/other/img/dog.png", Some(b"png")).status,
        200
    );
    assert_eq!(
        s3(&node, &token, "DELETE", "/uploads/doc/a.txt", None).status,
        204
    );
    // Removing what is not there fires nothing.
    assert_eq!(
        s3(&node, &token, "DELETE", "/uploads/doc/a.txt", None).status,
        204
    );

    let calls = |function: &str| {
        send(
            node.admin(
                "GET",
                &format!("/system/calls?function={function}&status=succeeded"),
            ),
            None,
        )
        .json()["calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        node.eventually(Duration::from_secs(10), || calls("thumbnailer").len()
            + calls("janitor").len()
            >= 2),
        "two changes fire two calls"
    );
    std::thread::sleep(Duration::from_millis(500));
    let created = calls("thumbnailer");
    let deleted = calls("janitor");
    assert_eq!(
        (created.len(), deleted.len()),
        (1, 1),
        "{created:?} {deleted:?}"
    );
    let body = created[0]["result"]["body"].as_str().unwrap();
    assert_eq!(
        created[0]["source"],
        "bucket \"uploads\" created prefix \"img/\""
    );
    assert!(
        body.contains("header ce-type=dev.wisp.object.created"),
        "{body}"
    );
    assert!(body.contains("header ce-subject=img/cat.png"), "{body}");
    assert!(
        body.contains(r#""bucket":"uploads""#) && body.contains(r#""size":3"#),
        "{body}"
    );
    let body = deleted[0]["result"]["body"].as_str().unwrap();
    assert!(
        body.contains("header ce-type=dev.wisp.object.deleted"),
        "{body}"
    );
    assert!(body.contains("header ce-subject=doc/a.txt"), "{body}");
}

#[test]
fn a_wasm_function_reaches_the_buckets_it_declares_in_process() {
    let node = Node::start(WISP);
    create_namespace(&node, json!({ "name": "team-b" }));
    let token = node.token.clone();
    for (path, body) in [
        ("/uploads/cat.txt", "meow"),
        ("/private/key.txt", "secret"),
        ("/uploads.team-b/cat.txt", "team-b's"),
    ] {
        assert_eq!(
            s3(&node, &token, "PUT", path, Some(body.as_bytes())).status,
            200
        );
    }
    // The probe answers with what a GET of PROBE_UPSTREAM answered it.
    let probe = node.upload_file(wisp_testing::HTTP_PROBE);
    let deploy = |name: &str, namespace: &str, path: &str, buckets: serde_json::Value| {
        node.deploy_ok(json!({
            "service": name, "namespace": namespace, "kind": "wasm-http", "image": probe,
            "envVars": { "PROBE_UPSTREAM": format!("http://wisp.internal/s3{path}") },
            "buckets": buckets,
        }));
    };
    deploy("reader", "default", "/uploads/cat.txt", json!(["uploads"]));
    deploy(
        "lister",
        "default",
        "/uploads?list-type=2",
        json!(["uploads"]),
    );
    deploy("snoop", "default", "/private/key.txt", json!(["uploads"]));
    deploy(
        "thief",
        "default",
        "/uploads.team-b/cat.txt",
        json!(["uploads"]),
    );
    deploy("undeclared", "default", "/uploads/cat.txt", json!([]));
    node.deploy_ok(json!({
        "service": "elsewhere", "kind": "wasm-http", "image": probe,
        "envVars": { "PROBE_UPSTREAM": "http://wisp.internal/system/functions" },
        "buckets": ["system"],
    }));
    deploy("reader", "team-b", "/uploads/cat.txt", json!(["uploads"]));

    let read = node.post("/function/reader", b"");
    assert_eq!(
        (read.status, read.body.as_str()),
        (200, "meow"),
        "{}",
        node.log()
    );
    let listed = node.post("/function/lister", b"");
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(
        listed.body.contains("<Key>cat.txt</Key>"),
        "{}",
        listed.body
    );
    // Only what it declares, and only in its own namespace.
    for function in ["snoop", "thief", "undeclared"] {
        let refused = node.post(&format!("/function/{function}"), b"");
        assert_eq!(refused.status, 403, "{function}: {}", refused.body);
        // S3's XML error, its apostrophe escaped.
        assert!(
            refused.body.contains("<Code>AccessDenied</Code>")
                && refused.body.contains(": declare it in `buckets`"),
            "{function}: {}",
            refused.body
        );
    }
    // The node serves its functions nothing but their buckets.
    let elsewhere = node.post("/function/elsewhere", b"");
    assert_eq!(elsewhere.status, 404, "{}", elsewhere.body);
    let theirs = node.post("/function/reader.team-b", b"");
    assert_eq!((theirs.status, theirs.body.as_str()), (200, "team-b's"));
}
