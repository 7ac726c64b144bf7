//! Key-value stores: a wasm guest reaches through `wasi:keyvalue` the stores
//! its function declares, in its own namespace, and nothing else; operators
//! read and write the same stores through `/system/kv` and `wisp kv`; values
//! outlive the node's restart and go with their namespace; changes fire the
//! functions whose triggers watch them.

use std::{io::Write as _, process::Stdio, time::Duration};

use serde_json::{Value, json};
use wisp_testing::{Node, Response, send};

use crate::{WISP, call};

/// Deploys the kv probe as `name` in `namespace` with the stores `stores`.
fn deploy_kv_probe(node: &Node, name: &str, namespace: &str, stores: Value) {
    let digest = node.upload_file(wisp_testing::KV_PROBE);
    node.deploy_ok(json!({
        "service": name, "namespace": namespace, "kind": "wasm-http", "image": digest,
        "keyValueStores": stores,
    }));
}

/// `POST /function/{function}{operation}` with `body`: what the guest answered.
fn guest(node: &Node, function: &str, operation: &str, body: &[u8]) -> Response {
    send(
        node.admin("POST", &format!("/function/{function}{operation}")),
        Some(body),
    )
}

/// The guest's answer to `operation`, which must be a 200.
fn guest_ok(node: &Node, function: &str, operation: &str, body: &[u8]) -> String {
    let response = guest(node, function, operation, body);
    assert_eq!(response.status, 200, "{operation}: {}", response.body);
    response.body
}

/// Sends each `(function, operation, body)` in turn; each must answer 200 with its answer.
fn answers(node: &Node, steps: &[(&str, String, &str, &str)]) {
    for (function, operation, body, answer) in steps {
        assert_eq!(
            guest_ok(node, function, operation, body.as_bytes()),
            *answer,
            "{function}{operation}"
        );
    }
}

/// A node with namespace `team-b` beside `default`.
fn node_with_team_b() -> Node {
    let node = Node::start(WISP);
    let created = call(
        &node,
        &node.token,
        "POST",
        "/system/namespaces",
        Some(json!({ "name": "team-b" })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    node
}

/// `method /system/kv{path}` with the admin token and a raw `body`.
fn api(node: &Node, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    send(node.admin(method, &format!("/system/kv{path}")), body)
}

#[test]
fn a_guest_reaches_the_stores_it_declares_and_nothing_else() {
    let node = node_with_team_b();
    deploy_kv_probe(&node, "counter", "default", json!(["default", "sessions"]));
    deploy_kv_probe(&node, "nosy", "default", json!([]));
    deploy_kv_probe(&node, "counter", "team-b", json!(["default"]));

    // get, set, exists, delete, on a key with slashes in it.
    let key = "store=default&key=users/42";
    answers(
        &node,
        &[
            ("counter", format!("/get?{key}"), "", "(none)\n"),
            ("counter", format!("/set?{key}"), "alice", "set\n"),
            ("counter", format!("/get?{key}"), "", "alice"),
            ("counter", format!("/exists?{key}"), "", "true\n"),
        ],
    );
    // Operators see what the guest wrote, under the same key.
    let read = api(&node, "GET", "/default/users/42", None);
    assert_eq!((read.status, read.body.as_str()), (200, "alice"));
    assert_eq!(
        api(&node, "GET", "", None).json(),
        json!(["default"]),
        "only stores that hold a key are listed"
    );
    // Stores are apart from each other, and from another namespace's.
    let sessions = "store=sessions&key=users/42";
    answers(
        &node,
        &[
            ("counter.team-b", format!("/get?{key}"), "", "(none)\n"),
            ("counter", format!("/get?{sessions}"), "", "(none)\n"),
            ("counter", format!("/delete?{key}"), "", "deleted\n"),
            ("counter", format!("/exists?{key}"), "", "false\n"),
        ],
    );
    assert_eq!(api(&node, "GET", "/default/users/42", None).status, 404);

    // A store the function did not declare, or that is no store's name, is refused.
    for (function, operation, status, told) in [
        ("counter", "/get?store=other&key=k", 403, "access-denied"),
        ("nosy", "/get?store=default&key=k", 403, "access-denied"),
        ("counter", "/get?store=Bad..&key=k", 404, "no-such-store"),
    ] {
        let refused = guest(&node, function, operation, b"");
        assert_eq!(
            refused.status, status,
            "{function}{operation}: {}",
            refused.body
        );
        assert!(refused.body.contains(told), "{}", refused.body);
    }
    // Keys and values out of bounds are errors the guest is told.
    let big = vec![b'v'; 512 * 1024 + 1];
    let refused = guest(&node, "counter", "/set?store=default&key=big", &big);
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert!(refused.body.contains("larger than"), "{}", refused.body);
    let refused = guest(&node, "counter", "/set?store=default&key=", b"x");
    assert!(
        refused.body.contains("a key is 1 to 1024 bytes"),
        "{}",
        refused.body
    );
    assert_eq!(api(&node, "GET", "/default/big", None).status, 404);

    // Batches, and a listing in pages of 1,000 keys in byte order.
    let lines: Vec<String> = (0..1005).map(|n| format!("k{n:04}={n}\n")).collect();
    let refused = guest(
        &node,
        "counter",
        "/set-many?store=sessions",
        lines.concat().as_bytes(),
    );
    assert!(
        refused.body.contains("at most 1000 keys, not 1005"),
        "{}",
        refused.body
    );
    assert_eq!(
        api(&node, "GET", "/sessions", None).json(),
        json!({ "keys": [] }),
        "a refused batch writes nothing"
    );
    for batch in lines.chunks(1000) {
        let set = guest_ok(
            &node,
            "counter",
            "/set-many?store=sessions",
            batch.concat().as_bytes(),
        );
        assert_eq!(set, format!("set {}\n", batch.len()));
    }
    assert_eq!(
        guest_ok(
            &node,
            "counter",
            "/get-many?store=sessions&keys=k0007,nope,k1004",
            b""
        ),
        "k0007=7\n(none)\nk1004=1004\n"
    );
    let first = guest_ok(&node, "counter", "/keys?store=sessions", b"");
    let first: Vec<&str> = first.lines().collect();
    assert_eq!(first.len(), 1001, "1,000 keys and a cursor");
    assert_eq!(
        (first[0], first[999], first[1000]),
        ("k0000", "k0999", "cursor=1000")
    );
    let rest = guest_ok(&node, "counter", "/keys?store=sessions&cursor=1000", b"");
    assert_eq!(rest, "k1000\nk1001\nk1002\nk1003\nk1004\n");
    let page = api(&node, "GET", "/sessions?cursor=1000", None).json();
    assert_eq!(
        page,
        json!({ "keys": ["k1000", "k1001", "k1002", "k1003", "k1004"] })
    );
    assert_eq!(api(&node, "GET", "/sessions", None).json()["cursor"], 1000);
}

#[test]
fn increments_from_many_calls_at_once_lose_none() {
    let node = Node::start(WISP);
    deploy_kv_probe(&node, "counter", "default", json!(["default"]));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let request = node.admin("POST", "/function/counter/increment?store=default&key=hits");
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let response = send(request.clone(), Some(b""));
                    assert_eq!(response.status, 200, "{}", response.body);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(
        guest_ok(
            &node,
            "counter",
            "/increment?store=default&key=hits&by=0",
            b""
        ),
        "200\n"
    );
    // A value that is not a number is not incremented, and stays.
    assert_eq!(
        api(&node, "PUT", "/default/name", Some(b"wisp")).status,
        204
    );
    let refused = guest(&node, "counter", "/increment?store=default&key=name", b"");
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert!(refused.body.contains("decimal number"), "{}", refused.body);
    assert_eq!(api(&node, "GET", "/default/name", None).body, "wisp");
}

#[test]
fn a_guest_cannot_make_the_host_hold_more_than_its_share() {
    let node = Node::start_args(WISP, &["--kv-max-bytes", "4MiB"]);
    deploy_kv_probe(&node, "hoarder", "default", json!(["default"]));
    // Handles live in host memory: a guest holds at most 64 open at once.
    assert_eq!(
        guest_ok(&node, "hoarder", "/open-many?store=default&count=64", b""),
        "opened 64\n"
    );
    let refused = guest(&node, "hoarder", "/open-many?store=default&count=65", b"");
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert!(
        refused.body.contains("at most 64 stores"),
        "{}",
        refused.body
    );
    // One large value asked for many times is not gathered past 16 MiB.
    let value = vec![b'v'; 512 * 1024];
    assert_eq!(api(&node, "PUT", "/default/big", Some(&value)).status, 204);
    let keys = vec!["big"; 40].join(",");
    let refused = guest(
        &node,
        "hoarder",
        &format!("/get-many?store=default&keys={keys}"),
        b"",
    );
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert!(
        refused.body.contains("at most 16777216 bytes"),
        "{}",
        refused.body
    );
    // A flood of writes stops at the node's bound; what is there stays
    // readable, removals work, and then writes do again.
    let mut written = 0;
    let full = loop {
        let response = api(
            &node,
            "PUT",
            &format!("/default/flood{written}"),
            Some(&value),
        );
        if response.status != 204 {
            break response;
        }
        written += 1;
        assert!(written < 16, "4 MiB holds fewer than 16 values of 512 KiB");
    };
    assert_eq!(full.status, 507, "{}", full.body);
    assert!(full.error().contains("--kv-max-bytes"), "{}", full.error());
    let refused = guest(&node, "hoarder", "/set?store=default&key=more", &value);
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert!(refused.body.contains("full"), "{}", refused.body);
    assert_eq!(
        api(&node, "GET", "/default/flood0", None).body.len(),
        value.len()
    );
    for n in 0..written {
        assert_eq!(
            api(&node, "DELETE", &format!("/default/flood{n}"), None).status,
            204
        );
    }
    assert_eq!(
        api(&node, "PUT", "/default/again", Some(&value)).status,
        204
    );
}

#[test]
fn operators_write_what_guests_read_and_values_outlive_a_restart() {
    let node = Node::start(WISP);
    deploy_kv_probe(&node, "reader", "default", json!(["config"]));
    let written = api(&node, "PUT", "/config/greeting", Some(b"hello\x00world"));
    assert_eq!(written.status, 204, "{}", written.body);
    assert_eq!(
        guest_ok(&node, "reader", "/get?store=config&key=greeting", b""),
        "hello\u{0}world"
    );
    // Bad requests answer JSON errors and write nothing.
    for (method, path, body, status, says) in [
        ("PUT", "/Config/k", Some(&b"v"[..]), 400, "not a DNS label"),
        (
            "GET",
            "/config/nope",
            None,
            404,
            "is not in key-value store config",
        ),
        (
            "PUT",
            "/config/huge",
            Some(&[0u8; 600 * 1024][..]),
            413,
            "at most",
        ),
        ("GET", "/config/k?namespace=nowhere", None, 404, "nowhere"),
    ] {
        let response = api(&node, method, path, body);
        assert_eq!(
            response.status, status,
            "{method} {path}: {}",
            response.body
        );
        assert!(response.error().contains(says), "{}", response.error());
    }
    assert_eq!(
        api(&node, "GET", "/config", None).json(),
        json!({ "keys": ["greeting"] })
    );

    let data_dir = node.data_dir.clone();
    let (status, scratch) = node.stop();
    assert!(status.success(), "{status}");
    let node = Node::start_with(WISP, scratch, data_dir, &[]);
    assert_eq!(
        guest_ok(&node, "reader", "/get?store=config&key=greeting", b""),
        "hello\u{0}world"
    );
}

#[test]
fn a_namespaces_stores_go_with_it() {
    let node = Node::start(WISP);
    let namespace = |method: &str, path: &str, body: Option<Value>| {
        call(&node, &node.token, method, path, body).status
    };
    for round in 0..2 {
        assert_eq!(
            namespace(
                "POST",
                "/system/namespaces",
                Some(json!({ "name": "team-c" }))
            ),
            201
        );
        assert_eq!(
            api(&node, "GET", "/default/left?namespace=team-c", None).status,
            404,
            "round {round}: a new namespace starts with empty stores"
        );
        let written = api(
            &node,
            "PUT",
            "/default/left?namespace=team-c",
            Some(b"behind"),
        );
        assert_eq!(written.status, 204, "{}", written.body);
        assert_eq!(namespace("DELETE", "/system/namespaces/team-c", None), 204);
    }
}

#[test]
fn the_cli_gets_sets_lists_and_removes_keys() {
    let node = Node::start(WISP);
    let wisp = |args: &[&str], stdin: &[u8]| {
        let mut child = node
            .cli(WISP)
            .arg("kv")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            output.stdout,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = wisp(&["set", "default", "greeting", "hello"], b"");
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "set greeting in default (5 bytes)\n"
    );
    let binary: Vec<u8> = (0..=255).collect();
    let (ok, _, err) = wisp(&["set", "default", "photos/a b.bin"], &binary);
    assert!(ok, "{err}");
    let (ok, out, err) = wisp(&["get", "default", "photos/a b.bin"], b"");
    assert!(ok, "{err}");
    assert_eq!(out, binary, "values go in and out as they are");
    let (ok, out, _) = wisp(&["ls"], b"");
    assert!(ok);
    assert_eq!(String::from_utf8_lossy(&out), "default\n");
    let (ok, out, _) = wisp(&["ls", "default"], b"");
    assert!(ok);
    assert_eq!(String::from_utf8_lossy(&out), "greeting\nphotos/a b.bin\n");
    let (ok, _, err) = wisp(&["rm", "default", "greeting"], b"");
    assert!(ok, "{err}");
    let (ok, out, err) = wisp(&["get", "default", "greeting"], b"");
    assert!(!ok && out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is not in key-value store default"), "{err}");
    let (ok, _, err) = wisp(&["ls", "default", "--namespace", "nowhere"], b"");
    assert!(!ok && err.contains("nowhere"), "{err}");
}

#[test]
fn changes_of_a_store_fire_the_functions_that_watch_it() {
    let node = node_with_team_b();
    deploy_kv_probe(&node, "writer", "default", json!(["default"]));
    deploy_kv_probe(&node, "writer", "team-b", json!(["default"]));
    // The http probe answers with the request it got: the CloudEvent.
    let probe = node.upload_file(wisp_testing::HTTP_PROBE);
    node.deploy_ok(json!({
        "service": "watcher", "kind": "wasm-http", "image": probe,
        "triggers": [{ "kv": "default", "prefix": "users/" }],
    }));
    for (trigger, says) in [
        (
            json!({ "prefix": "users/" }),
            "`prefix` is for key-value and bucket triggers",
        ),
        (json!({ "kv": "Default" }), "not a key-value store's name"),
        (json!({ "kv": "default", "mqtt": "a/b" }), "one source"),
    ] {
        let refused = node.deploy(json!({
            "service": "bad", "kind": "wasm-http", "image": probe, "triggers": [trigger],
        }));
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert!(refused.error().contains(says), "{}", refused.error());
    }

    // Changes by guests and by operators fire it; other keys, other
    // stores and other namespaces' stores of the same name do not.
    guest_ok(&node, "writer", "/set?store=default&key=users/1", b"alice");
    assert_eq!(
        api(&node, "PUT", "/default/users/2", Some(b"bob")).status,
        204
    );
    guest_ok(
        &node,
        "writer",
        "/increment?store=default&key=users/count&by=2",
        b"",
    );
    assert_eq!(
        api(&node, "PUT", "/default/other/3", Some(b"x")).status,
        204
    );
    assert_eq!(
        api(&node, "PUT", "/sessions/users/4", Some(b"x")).status,
        204
    );
    guest_ok(
        &node,
        "writer.team-b",
        "/set?store=default&key=users/5",
        b"eve",
    );
    guest_ok(&node, "writer", "/delete?store=default&key=users/1", b"");

    let fired = |node: &Node| {
        let response = send(
            node.admin("GET", "/system/calls?function=watcher&status=succeeded"),
            None,
        );
        response.json()["calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let mut calls = Vec::new();
    let all = node.eventually(Duration::from_secs(10), || {
        calls = fired(&node);
        calls.len() >= 4
    });
    assert!(all, "four changes fire four calls: {calls:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fired(&node).len(), 4, "and nothing else fires it");
    let mut events: Vec<String> = calls
        .iter()
        .map(|call| {
            assert_eq!(call["source"], "kv \"default\" prefix \"users/\"");
            let body = call["result"]["body"].as_str().unwrap();
            assert!(
                body.contains("header ce-source=/triggers/default/watcher"),
                "{body}"
            );
            let header = |name: &str| {
                body.lines()
                    .find_map(|line| line.strip_prefix(&format!("header {name}=")))
                    .unwrap_or_default()
                    .to_owned()
            };
            let value = body.lines().find_map(|line| line.strip_prefix("body="));
            format!(
                "{} {} {}",
                header("ce-type"),
                header("ce-subject"),
                value.unwrap_or_default()
            )
        })
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            "dev.wisp.kv.delete users/1 ",
            "dev.wisp.kv.set users/1 alice",
            "dev.wisp.kv.set users/2 bob",
            "dev.wisp.kv.set users/count 2",
        ]
    );
    let described = node
        .cli(WISP)
        .args(["describe", "watcher"])
        .output()
        .unwrap();
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.contains("kv \"default\" prefix \"users/\": watching"),
        "{described}"
    );
}
