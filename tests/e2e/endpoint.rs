//! Processes and apps reach the node at `$WISP_API_URL` with
//! `$WISP_API_TOKEN`: the key-value stores and buckets their function
//! declares, shared with wasm guests, and the functions its
//! `allowed_outbound_hosts` allows, in-process; nothing of another
//! namespace's, nothing without the token, and no endpoint at all for a
//! function that declares none of these.

use serde_json::json;
use wisp_testing::{Node, Response, script_archive, send};

use crate::{WISP, call};

/// A process that forwards its request to the node's endpoint with curl:
/// `/{path}` goes to `$WISP_API_URL/{path}` with the method, body and query
/// it came with (and the token, unless the query is `anonymous`), and
/// answers the node's status and body.
const FORWARDER: &str = r#"#!/bin/sh
auth="Authorization: Bearer $WISP_API_TOKEN"
url="$WISP_API_URL$Http_Path"
case "$Http_Query" in
    anonymous) auth="X-Nothing: 1" ;;
    ?*) url="$url?$Http_Query" ;;
esac
exec curl -sS -X "$Http_Method" -H "$auth" --data-binary @- -w ' %{http_code}' "$url"
"#;

/// An app (`process-http`) whose every request reads key `greeting` of its
/// `default` store through the endpoint.
const KV_APP: &str = r#"#!/usr/bin/env python3
import os, urllib.request, urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        request = urllib.request.Request(os.environ["WISP_API_URL"] + "/kv/default/greeting",
            headers={"Authorization": "Bearer " + os.environ["WISP_API_TOKEN"]})
        try:
            data = urllib.request.urlopen(request).read()
        except urllib.error.HTTPError as error:
            data = ("%d %s" % (error.code, error.read().decode())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// Deploys the forwarder as `name` in `namespace`, with `extra` fields.
fn deploy_forwarder(node: &Node, name: &str, namespace: &str, extra: serde_json::Value) {
    let digest = node.upload(&script_archive("forward.sh", FORWARDER));
    let mut deployment = json!({
        "service": name, "namespace": namespace, "kind": "process", "image": digest,
        "envProcess": "./forward.sh",
    });
    crate::merge(&mut deployment, extra);
    node.deploy_ok(deployment);
}

/// `method /function/{function}{path}` with `body`, as the admin: what the
/// forwarder answered, `{body} {status}` of the node's endpoint.
fn forward(node: &Node, function: &str, method: &str, path: &str, body: &[u8]) -> String {
    let response = send(
        node.admin(method, &format!("/function/{function}{path}")),
        Some(body),
    );
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    response.body
}

/// The status the forwarder saw, and the body before it.
fn status(answer: &str) -> (&str, u16) {
    let (body, status) = answer.rsplit_once(' ').expect("a status");
    (body, status.parse().expect("a status code"))
}

fn namespace(node: &Node, name: &str) {
    let created = call(
        node,
        &node.token,
        "POST",
        "/system/namespaces",
        Some(json!({ "name": name })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
}

#[test]
fn a_process_and_a_guest_share_the_stores_they_declare_and_nothing_else() {
    let node = Node::start(WISP);
    namespace(&node, "team-b");
    let probe = node.upload_file(wisp_testing::KV_PROBE);
    node.deploy_ok(json!({
        "service": "guest", "kind": "wasm-http", "image": probe, "keyValueStores": ["default"],
    }));
    deploy_forwarder(
        &node,
        "shell",
        "default",
        json!({ "keyValueStores": ["default"] }),
    );
    deploy_forwarder(
        &node,
        "nosy",
        "default",
        json!({ "keyValueStores": ["sessions"] }),
    );
    node.deploy_ok(json!({ "service": "bare", "kind": "process", "envProcess": "env" }));
    deploy_forwarder(
        &node,
        "shell",
        "team-b",
        json!({ "keyValueStores": ["default"] }),
    );

    // What the guest writes, the process reads, and the other way round.
    let set = send(
        node.admin("POST", "/function/guest/set?store=default&key=users/42"),
        Some(b"alice"),
    );
    assert_eq!(set.status, 200, "{}", set.body);
    let read = forward(&node, "shell", "GET", "/kv/default/users/42", b"");
    assert_eq!(status(&read), ("alice", 200));
    let written = forward(&node, "shell", "PUT", "/kv/default/users/43", b"bob");
    assert_eq!(status(&written).1, 204, "{written}");
    let got = send(
        node.admin("POST", "/function/guest/get?store=default&key=users/43"),
        Some(b""),
    );
    assert_eq!((got.status, got.body.as_str()), (200, "bob"));
    let listed = forward(&node, "shell", "GET", "/kv/default", b"");
    let (page, code) = status(&listed);
    assert_eq!(code, 200, "{listed}");
    let page: serde_json::Value = serde_json::from_str(page).expect("a page of keys");
    assert_eq!(page["keys"], json!(["users/42", "users/43"]), "{page}");
    let removed = forward(&node, "shell", "DELETE", "/kv/default/users/43", b"");
    assert_eq!(status(&removed).1, 204, "{removed}");
    let gone = send(node.admin("GET", "/system/kv/default/users/43"), None);
    assert_eq!(gone.status, 404, "{}", gone.body);

    // A function that reaches nothing of the node's is told of no endpoint.
    let bare = node.post("/function/bare", b"");
    assert_eq!(bare.status, 200, "{}", bare.body);
    assert!(!bare.body.contains("WISP_API"), "{}", bare.body);
    // A function that did not declare the store is told so.
    let refused = forward(&node, "nosy", "GET", "/kv/default/users/42", b"");
    let (error, code) = status(&refused);
    assert_eq!(code, 403, "{refused}");
    assert!(error.contains("default"), "{error}");
    // Another namespace's store of the same name is another store, and a
    // function cannot ask for another namespace's.
    let theirs = forward(&node, "shell.team-b", "GET", "/kv/default/users/42", b"");
    assert_eq!(status(&theirs).1, 404, "{theirs}");
    let asked = forward(
        &node,
        "shell.team-b",
        "GET",
        "/kv/default/users/42?namespace=default",
        b"",
    );
    assert_eq!(status(&asked).1, 403, "{asked}");
    // Without the token, nothing.
    let anonymous = forward(&node, "shell", "GET", "/kv/default/users/42?anonymous", b"");
    let (error, code) = status(&anonymous);
    assert_eq!(code, 401, "{anonymous}");
    assert!(error.contains("WISP_API_TOKEN"), "{error}");
    assert!(!anonymous.contains("alice"));
}

#[test]
fn a_process_reaches_its_buckets_and_calls_functions_in_process() {
    let node = Node::start(WISP);
    namespace(&node, "team-b");
    deploy_forwarder(
        &node,
        "shell",
        "default",
        json!({
            "buckets": ["uploads"],
            "allowedOutboundHosts": ["http://probe.wisp.internal", "http://*.team-b.wisp.internal"],
        }),
    );
    crate::deploy_probe(&node, json!({}));
    node.deploy_ok(json!({
        "service": "hidden", "namespace": "team-b", "kind": "process",
        "envProcess": "echo hidden", "private": true,
    }));
    node.deploy_ok(json!({
        "service": "open", "namespace": "team-b", "kind": "process", "envProcess": "echo open",
    }));

    // S3's API on the buckets it declares: what it puts, clients read.
    let put = forward(&node, "shell", "PUT", "/s3/uploads/notes/a.txt", b"hello");
    assert_eq!(status(&put).1, 200, "{put}");
    let read = send(node.admin("GET", "/s3/uploads/notes/a.txt"), None);
    assert_eq!((read.status, read.body.as_str()), (200, "hello"));
    let undeclared = forward(&node, "shell", "GET", "/s3/private/a.txt", b"");
    let (error, code) = status(&undeclared);
    assert_eq!(code, 403, "{undeclared}");
    assert!(error.contains("AccessDenied"), "{error}");

    // Functions, in-process, that its allowlist names: its own namespace's,
    // another's public ones, not another's private ones.
    let echoed = forward(&node, "shell", "POST", "/function/probe/echo", b"ping");
    let (echo, code) = status(&echoed);
    assert_eq!(code, 200, "{echoed}");
    assert!(echo.contains("body=ping"), "{echo}");
    let open = forward(&node, "shell", "GET", "/function/open.team-b", b"");
    assert_eq!(status(&open), ("open\n", 200));
    let hidden = forward(&node, "shell", "GET", "/function/hidden.team-b", b"");
    assert_eq!(status(&hidden).1, 401, "{hidden}");
    assert!(!hidden.contains("hidden\n"));
    let unknown = forward(&node, "shell", "GET", "/function/nobody.team-b", b"");
    assert_eq!(status(&unknown).1, 404, "{unknown}");
    let unlisted = forward(&node, "shell", "GET", "/function/other", b"");
    let (error, code) = status(&unlisted);
    assert_eq!(code, 403, "{unlisted}");
    assert!(error.contains("allowed_outbound_hosts"), "{error}");
    let elsewhere = forward(&node, "shell", "GET", "/system/functions", b"");
    assert_eq!(status(&elsewhere).1, 404, "{elsewhere}");
}

#[test]
fn a_process_calling_itself_ends_with_508() {
    let node = Node::start(WISP);
    let looping = node.upload(&script_archive(
        "loop.sh",
        "#!/bin/sh\nexec curl -sS -H \"Authorization: Bearer $WISP_API_TOKEN\" \\\n    \
         -w ' %{http_code}' \"$WISP_API_URL/function/loop\"\n",
    ));
    node.deploy_ok(json!({
        "service": "loop", "kind": "process", "image": looping, "envProcess": "./loop.sh",
        "timeout": "60s", "allowedOutboundHosts": ["http://*.wisp.internal"],
    }));
    let answer = node.get("/function/loop");
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Each process answers what the one it called answered, and its status:
    // ten calls deep, the eleventh refused.
    assert!(answer.body.contains("a loop\"} 508"), "{}", answer.body);
    assert_eq!(answer.body.matches(" 200").count(), 10, "{}", answer.body);
}

#[test]
fn an_app_reads_its_store_through_the_endpoint() {
    let node = Node::start(WISP);
    let app = node.upload(&script_archive("app.py", KV_APP));
    node.deploy_ok(json!({
        "service": "app", "kind": "process-http", "image": app, "envProcess": "./app.py",
        "keyValueStores": ["default"],
    }));
    let set = send(
        node.admin("PUT", "/system/kv/default/greeting"),
        Some(b"hi there"),
    );
    assert_eq!(set.status, 204, "{}", set.body);
    let answer: Response = node.get("/function/app");
    assert_eq!((answer.status, answer.body.as_str()), (200, "hi there"));
}
