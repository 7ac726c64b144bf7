//! End-to-end tests: the real `wisp` binary on an ephemeral port, driven over
//! HTTP and through the real CLI, with guest components built from source.

mod brokers;
mod cli;
mod events;
mod invoke;
mod limits;
mod observability;
mod refusals;
mod restart;
mod scaling;
mod ui;

use serde_json::{Value, json};
use wisp_testing::Node;

/// The binary under test.
const WISP: &str = env!("CARGO_BIN_EXE_wisp");

/// A node with the http probe deployed as `probe` (and `extra` fields merged into its deployment).
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

/// Shallow-merges the fields of `extra` into `base`.
fn merge(base: &mut Value, extra: Value) {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
}
