//! Processes that may use the network (`network = "outbound"`, and
//! `process-http` replicas) have a network namespace of their own, reached
//! through slirp4netns: they cannot connect to services on the host's
//! loopback, the node's own addresses, private ranges or the cloud metadata
//! address, while a range the operator opened (`--allow-egress`) is
//! reachable and the gateway still reaches replicas.

use std::net::{IpAddr, TcpListener, UdpSocket};

use serde_json::json;
use wisp_testing::{Node, script_archive};

use crate::WISP;

/// A Python program that tries to connect to each `HOST:PORT` argument and
/// prints one line for each: `HOST:PORT connected` or the error's name.
const CONNECT: &str = r#"
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        print(target, "connected")
    except Exception as error:
        print(target, type(error).__name__)
"#;

/// A `process-http` app on `$PORT` that answers `GET /?HOST:PORT&...` with
/// what [`CONNECT`] prints for those targets.
const CONNECTING_APP: &str = r#"#!/usr/bin/env python3
import os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        lines = []
        query = self.path.partition("?")[2]
        for target in filter(None, query.split("&")):
            host, port = target.rsplit(":", 1)
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                lines.append(target + " connected")
            except Exception as error:
                lines.append(target + " " + type(error).__name__)
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// The node's port.
fn admin_port(node: &Node) -> String {
    node.url.rsplit(':').next().expect("a port").to_owned()
}

/// This machine's address on its default route (no packet is sent), if it has one.
fn own_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback())
}

/// Deploys an outbound process `name` that prints its `resolv.conf`, then
/// tries to connect to `targets`.
fn outbound(node: &Node, name: &str, targets: &[String]) {
    let script = format!(
        "#!/bin/sh\ncat /etc/resolv.conf\nexec python3 -c '{CONNECT}' {}\n",
        targets.join(" ")
    );
    let image = node.upload(&script_archive("run.sh", &script));
    node.deploy_ok(json!({
        "service": name, "namespace": "attackers", "kind": "process", "network": "outbound",
        "image": image, "envProcess": "./run.sh", "timeout": "10s",
    }));
}

/// The result [`CONNECT`] printed for `target`.
fn result<'a>(body: &'a str, target: &str) -> &'a str {
    body.lines()
        .find_map(|line| line.strip_prefix(target)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no line for {target}: {body}"))
}

#[test]
fn an_outbound_process_reaches_neither_host_loopback_nor_the_node_nor_metadata() {
    let node = Node::start(WISP);
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut targets = vec![
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", admin_port(&node)),
        "169.254.169.254:80".to_owned(),
        "10.0.2.2:22".to_owned(),
        "10.1.2.3:80".to_owned(),
        "192.168.1.1:80".to_owned(),
    ];
    let own = own_address();
    if let Some(own) = own {
        targets.push(format!("{own}:{port}"));
    }
    outbound(&node, "prober", &targets);
    let response = node.post("/function/prober.attackers", b"");
    assert_eq!(response.status, 200, "{}", response.body);
    let body = &response.body;
    // The namespace's own loopback: nothing listens there.
    assert_eq!(
        result(body, &targets[0]),
        "ConnectionRefusedError",
        "{body}"
    );
    assert_eq!(
        result(body, &targets[1]),
        "ConnectionRefusedError",
        "{body}"
    );
    // slirp's gateway, which would be the host's loopback, is refused.
    assert_ne!(result(body, "10.0.2.2:22"), "connected", "{body}");
    // Denied by a route: refused at once, never tried.
    for target in &targets[2..] {
        if target != "10.0.2.2:22" {
            assert_eq!(result(body, target), "PermissionError", "{target}: {body}");
        }
    }
    assert!(!body.contains("connected"), "{body}");
    assert!(
        body.starts_with("nameserver 10.0.2.3\n"),
        "names are resolved through slirp's forwarder: {body}"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing reached the host's listener"
    );
    assert_eq!(node.get("/healthz").status, 200);
}

#[test]
fn an_outbound_process_reaches_what_the_operator_opened_and_nothing_else() {
    let Some(own) = own_address() else {
        eprintln!("skipped: this machine has no address but loopback to open");
        return;
    };
    let opened = format!("{own}/32");
    let node = Node::start_args(WISP, &["--allow-egress", &opened]);
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let targets = [
        format!("{own}:{port}"),
        format!("127.0.0.1:{port}"),
        "169.254.169.254:80".to_owned(),
    ];
    outbound(&node, "opened", &targets);
    let response = node.post("/function/opened.attackers", b"");
    assert_eq!(response.status, 200, "{}", response.body);
    let body = &response.body;
    assert_eq!(result(body, &targets[0]), "connected", "{body}");
    assert_eq!(
        result(body, &targets[1]),
        "ConnectionRefusedError",
        "{body}"
    );
    assert_eq!(result(body, &targets[2]), "PermissionError", "{body}");
    listener.set_nonblocking(false).unwrap();
    let (_, from) = listener.accept().expect("the opened address was reached");
    assert_eq!(
        from.ip(),
        own,
        "it came from the host's side, through slirp"
    );
}

#[test]
fn a_replica_serves_through_the_gateway_but_cannot_reach_host_loopback() {
    let node = Node::start(WISP);
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let image = node.upload(&script_archive("app.py", CONNECTING_APP));
    node.deploy_ok(json!({
        "service": "app", "namespace": "attackers", "kind": "process-http",
        "image": image, "envProcess": "./app.py", "timeout": "10s",
    }));
    let mut targets = vec![
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", admin_port(&node)),
        "169.254.169.254:80".to_owned(),
    ];
    if let Some(own) = own_address() {
        targets.push(format!("{own}:{port}"));
    }
    let response = node.get(&format!("/function/app.attackers?{}", targets.join("&")));
    assert_eq!(
        response.status, 200,
        "served through the gateway: {}",
        response.body
    );
    let body = &response.body;
    assert_eq!(
        result(body, &targets[0]),
        "ConnectionRefusedError",
        "{body}"
    );
    assert_eq!(
        result(body, &targets[1]),
        "ConnectionRefusedError",
        "{body}"
    );
    for target in &targets[2..] {
        assert_eq!(result(body, target), "PermissionError", "{target}: {body}");
    }
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing reached the host's listener"
    );
}
