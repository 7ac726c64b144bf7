//! State and the compile cache survive a restart.

use serde_json::json;
use wisp_testing::{Node, send};

use crate::WISP;

#[test]
fn functions_and_compiled_code_survive_a_restart() {
    let node = Node::start(WISP);
    let http = node.upload_file(wisp_testing::HTTP_PROBE);
    let stdio = node.upload_file(wisp_testing::STDIO_PROBE);
    node.deploy_ok(
        json!({ "service": "probe", "kind": "wasm-http", "image": http, "route": "/probe" }),
    );
    node.deploy_ok(json!({ "service": "stdio", "kind": "wasm-stdio", "image": stdio }));
    node.deploy_ok(json!({ "service": "cat", "kind": "process", "envProcess": "cat" }));
    let before = send(node.admin("GET", "/system/functions"), None).json();
    // Each component is compiled by Cranelift once, in the background
    // (Winch's code serves meanwhile), and cached.
    let misses =
        || send(node.admin("GET", "/system/info"), None).json()["compileCacheMisses"].clone();
    assert!(
        node.eventually(std::time::Duration::from_secs(60), || misses() == 2),
        "each component compiled once: {}",
        misses()
    );

    let token = node.token.clone();
    let data_dir = node.data_dir.clone();
    let (status, scratch) = node.stop();
    assert!(status.success(), "SIGTERM stops the node cleanly: {status}");

    let node = Node::start_with(WISP, scratch, data_dir, &[]);
    assert_eq!(node.token, token, "the generated admin token is kept");
    let mut after = send(node.admin("GET", "/system/functions"), None).json();
    for function in after.as_array_mut().unwrap() {
        function["invocationCount"] = json!(0);
    }
    let mut before = before;
    for function in before.as_array_mut().unwrap() {
        function["invocationCount"] = json!(0);
    }
    assert_eq!(after, before);
    assert_eq!(node.get("/probe").status, 200);
    assert_eq!(node.post("/function/stdio", b"hi").body, "hi");
    assert_eq!(node.post("/function/cat", b"meow").body, "meow");
    let info = send(node.admin("GET", "/system/info"), None).json();
    assert_eq!(
        info["compileCacheMisses"], 0,
        "nothing was recompiled: {info}"
    );
    assert_eq!(info["compileCacheHits"], 2, "{info}");
}
