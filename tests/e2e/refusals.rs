//! Bad input gets a clear error with the right status and leaves nothing behind.

use serde_json::json;
use wisp_testing::{Node, send};

use crate::WISP;

/// Asserts that the node holds no function and no artifact.
fn assert_empty(node: &Node) {
    assert_eq!(
        send(node.admin("GET", "/system/functions"), None).json(),
        json!([])
    );
    assert_eq!(
        send(node.admin("GET", "/system/artifacts"), None).json(),
        json!([])
    );
}

#[test]
fn invalid_artifacts_are_refused_and_not_kept() {
    let node = Node::start(WISP);
    // A core module importing a function no adapter provides.
    let core_module = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x02\x09\x01\x03env\x01f\0\0".to_vec();
    let http = std::fs::read(wisp_testing::HTTP_PROBE).unwrap();
    let stdio = std::fs::read(wisp_testing::STDIO_PROBE).unwrap();
    let cases: [(&[u8], &str, &str); 5] = [
        (
            b"#!/bin/sh\necho not wasm\n",
            "wasm-http",
            "not WebAssembly",
        ),
        (
            &core_module,
            "wasm-http",
            "core WebAssembly module that cannot be made a component",
        ),
        (
            &stdio,
            "wasm-http",
            "does not export wasi:http/incoming-handler",
        ),
        (&http, "wasm-stdio", "does not export wasi:cli/run"),
        (
            b"definitely not a tar archive",
            "process",
            "not a usable tar archive",
        ),
    ];
    for (bytes, kind, expected) in cases {
        let digest = node.upload(bytes);
        let response = node.deploy(
            json!({ "service": "bad", "kind": kind, "image": digest, "envProcess": "./run" }),
        );
        assert_eq!(response.status, 400, "{kind}: {}", response.body);
        assert!(
            response.error().contains(expected),
            "{kind}: `{}` should say `{expected}`",
            response.error()
        );
        assert_empty(&node);
    }
    assert_eq!(node.get("/healthz").status, 200, "the node keeps serving");
}

#[test]
fn names_must_be_dns_labels() {
    let node = Node::start(WISP);
    for name in ["../x", "", &"a".repeat(64), "Hello", "a_b"] {
        let response =
            node.deploy(json!({ "service": name, "kind": "process", "envProcess": "cat" }));
        assert_eq!(response.status, 400, "{name:?}: {}", response.body);
        assert!(response.error().contains("name"), "{}", response.error());
    }
    assert_empty(&node);
}

#[test]
fn malformed_deployments_say_what_is_wrong() {
    let node = Node::start(WISP);
    let cases = [
        (
            json!({ "service": "a", "kind": "process", "envProcess": "cat", "colour": "red" }),
            "unknown field `colour`",
        ),
        (
            json!({ "service": "a", "kind": "lambda" }),
            "unknown variant `lambda`",
        ),
        (json!({ "service": "a", "kind": "process" }), "envProcess"),
        (
            json!({ "service": "a", "kind": "wasm-http" }),
            "needs `image`",
        ),
        (
            json!({ "service": "a", "kind": "wasm-http", "image": format!("sha256:{}", "0".repeat(64)) }),
            "no artifact",
        ),
        (
            json!({ "service": "a", "kind": "process", "envProcess": "cat", "timeout": "soon" }),
            "not a valid duration",
        ),
        (
            json!({ "service": "a", "kind": "process", "envProcess": "cat", "route": "/system/x" }),
            "overlaps `/system`",
        ),
    ];
    for (deployment, expected) in cases {
        let response = node.deploy(deployment);
        assert_eq!(response.status, 400, "{}", response.body);
        assert!(
            response.error().contains(expected),
            "`{}` should say `{expected}`",
            response.error()
        );
    }
    let not_json = send(node.admin("POST", "/system/functions"), Some(b"{"));
    assert_eq!(not_json.status, 400);
    assert_empty(&node);
}

#[test]
fn conflicts_and_unknown_functions() {
    let node = Node::start(WISP);
    let cat = json!({ "service": "cat", "kind": "process", "envProcess": "cat", "route": "/cat" });
    node.deploy_ok(cat.clone());
    assert_eq!(node.deploy(cat).status, 409, "POST of an existing function");
    let same_route = node.deploy(
        json!({ "service": "dog", "kind": "process", "envProcess": "cat", "route": "/cat" }),
    );
    assert_eq!(same_route.status, 409);
    assert!(
        same_route.error().contains("already served by cat"),
        "{}",
        same_route.error()
    );
    let update_missing = send(
        node.admin("PUT", "/system/functions"),
        Some(
            json!({ "service": "dog", "kind": "process", "envProcess": "cat" })
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(update_missing.status, 404);
    let unknown = node.get("/function/dog");
    assert_eq!(unknown.status, 404);
    assert!(unknown.error().contains("dog"), "{}", unknown.error());
    assert_eq!(node.get("/nothing/here").status, 404);
}

#[test]
fn admin_routes_need_the_admin_token() {
    let node = Node::start(WISP);
    let routes = [
        ("GET", "/system/functions"),
        ("POST", "/system/functions"),
        ("PUT", "/system/artifacts"),
        ("GET", "/system/info"),
    ];
    for (method, path) in routes {
        let missing = send(node.request(method, path), Some(b"{}"));
        assert_eq!(missing.status, 401, "{method} {path} without a token");
        assert!(missing.error().contains("token"), "{}", missing.error());
        let wrong = send(
            node.request(method, path)
                .set("Authorization", "Bearer not-the-token"),
            Some(b"{}"),
        );
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
    }
    assert_empty(&node);
    assert_eq!(node.get("/healthz").status, 200, "health needs no token");
}

#[test]
fn an_interrupted_upload_leaves_nothing_behind() {
    use std::io::Write as _;
    let node = Node::start(WISP);
    let address = node.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "PUT /system/artifacts HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Length: 1000000\r\n\r\nonly the beginning",
        node.token
    )
    .unwrap();
    stream.flush().unwrap();
    drop(stream);
    let tmp = node.data_dir.join("tmp");
    let empty = || {
        std::fs::read_dir(&tmp)
            .map(|entries| entries.count() == 0)
            .unwrap_or(false)
    };
    assert!(
        node.eventually(std::time::Duration::from_secs(5), empty),
        "the partial upload was removed"
    );
    assert_empty(&node);
}

/// Reads one response from `stream`: its head, lowercased, and its body
/// (sized by `Content-Length`, or chunked).
fn read_response(stream: &mut std::io::BufReader<std::net::TcpStream>) -> (String, Vec<u8>) {
    use std::io::{BufRead as _, Read as _};
    let read_line = |stream: &mut std::io::BufReader<_>| {
        let mut line = String::new();
        assert_ne!(stream.read_line(&mut line).unwrap(), 0, "EOF");
        line
    };
    let mut head = String::new();
    loop {
        let line = read_line(stream);
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let mut body = Vec::new();
    if head.contains("transfer-encoding: chunked") {
        loop {
            let size = usize::from_str_radix(read_line(stream).trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
            if size == 0 {
                return (head, body);
            }
        }
    }
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |length| length.trim().parse().unwrap());
    body.resize(length, 0);
    stream.read_exact(&mut body).unwrap();
    (head, body)
}

#[test]
fn a_request_refused_before_its_body_is_read_says_the_connection_closes() {
    use std::io::Write as _;
    let node = crate::node_with_probe(json!({}));
    let address = node.url.trim_start_matches("http://");
    let stream = std::net::TcpStream::connect(address).unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;

    // A body read to its end keeps the connection open for the next request.
    write!(
        writer,
        "POST /function/probe HTTP/1.1\r\nHost: {address}\r\nContent-Length: 5\r\n\r\nhello"
    )
    .unwrap();
    let (head, _) = read_response(&mut reader);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");

    // Refused on a header while the body is still on its way: the client is
    // told not to reuse the connection, rather than finding it closed later.
    write!(
        writer,
        "POST /async-function/probe HTTP/1.1\r\nHost: {address}\r\nX-Callback-Url: not a url\r\nContent-Length: 5\r\n\r\n"
    )
    .unwrap();
    writer.flush().unwrap();
    let (head, body) = read_response(&mut reader);
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("X-Callback-Url"));
}

#[test]
fn malformed_queries_empty_uploads_and_stray_parameters_are_json_errors() {
    let node = Node::start(WISP);
    // A query that does not parse names what was wrong, in the API's JSON.
    let bad = send(node.admin("GET", "/system/calls?limit=many"), None);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.error().contains("limit"), "{}", bad.body);
    let bad = send(node.admin("GET", "/system/records?limit=1"), None);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.error().contains("name"), "{}", bad.body);
    // An artifact needs bytes; nothing is stored.
    let empty = send(node.admin("PUT", "/system/artifacts"), Some(b""));
    assert_eq!(empty.status, 400, "{}", empty.body);
    assert!(empty.error().contains("empty"), "{}", empty.body);
    assert_empty(&node);
    // A listing's cursor means nothing to one key.
    let stray = send(node.admin("GET", "/system/kv/default/k?cursor=1"), None);
    assert_eq!(stray.status, 400, "{}", stray.body);
    assert!(stray.error().contains("cursor"), "{}", stray.body);
}
