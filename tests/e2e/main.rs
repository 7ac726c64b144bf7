//! End-to-end tests: the real `wisp` binary on an ephemeral port, driven over
//! HTTP and through the real CLI, with guest components built from source.

mod brokers;
mod buckets;
mod cli;
mod cluster;
mod compose;
mod endpoint;
mod escapes;
mod events;
mod invoke;
mod kv;
mod limits;
mod observability;
mod openapi;
mod openfaas;

mod refusals;
mod restart;
mod sandbox;
mod scaling;
mod secrets;
mod spin;
mod tenants;
mod thumbnails;
mod ui;

use serde_json::{Value, json};
use wisp_testing::{Node, Response, send};

/// The binary under test.
const WISP: &str = env!("CARGO_BIN_EXE_wisp");

/// A node with the http probe deployed as `probe` (and `extra` fields merged into its deployment).
/// Sends `method path` with `token` and a JSON `body`.
pub(crate) fn call(
    node: &Node,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Response {
    let request = node
        .request(method, path)
        .set("Authorization", &format!("Bearer {token}"));
    let body = body.map(|body| body.to_string());
    send(request, body.as_deref().map(str::as_bytes))
}

fn node_with_probe(extra: Value) -> Node {
    let node = Node::start(WISP);
    deploy_probe(&node, extra);
    node
}

/// Deploys the http probe as `probe` on `node` (with `extra` fields merged into its deployment).
fn deploy_probe(node: &Node, extra: Value) {
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    let mut deployment = json!({ "service": "probe", "kind": "wasm-http", "image": digest });
    merge(&mut deployment, extra);
    node.deploy_ok(deployment);
}

/// A name no other run of the tests uses, after `prefix`: brokers and
/// process tables are shared with every other test and earlier runs.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_nanos();
    format!("{prefix}{nanos:x}{:x}", std::process::id())
}

/// A runtime for the async clients of brokers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Shallow-merges the fields of `extra` into `base`.
fn merge(base: &mut Value, extra: Value) {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
}

/// The command lines of live processes whose working directory is a
/// function's directory on `node` (its artifact tree or the empty directory).
/// Directories are compared by device and inode: inside a sandbox the same
/// directory is mounted at another path.
fn processes_of(node: &Node) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let identity = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()))
    };
    let trees = std::fs::read_dir(node.data_dir.join("trees"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path());
    let dirs: Vec<_> = trees
        .chain([node.data_dir.join("empty")])
        .filter_map(|dir| identity(&dir))
        .collect();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|entry| identity(&entry.path().join("cwd")).is_some_and(|cwd| dirs.contains(&cwd)))
        .map(|entry| cmdline(&entry.file_name().to_string_lossy()))
        .collect()
}

/// Asserts that within `within` no process of `node`'s functions is left
/// ([`processes_of`]); `what` says what should have ended them.
fn assert_none_left(node: &Node, within: std::time::Duration, what: &str) {
    assert!(
        node.eventually(within, || processes_of(node).is_empty()),
        "{what}: left behind: {:?}",
        processes_of(node)
    );
}

/// The command line of process `pid`, its arguments joined by spaces.
fn cmdline(pid: &str) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\0', " ")
}
