//! Spin's artifacts as they are: a `wasm32-wasip1` module built by Spin's
//! Rust SDK deploys unchanged (the node makes it a component with the WASI
//! preview1 adapter), its key-value calls reach the function's declared
//! stores, and one importing a Spin interface wisp lacks is refused with
//! the interface's name.

use serde_json::json;
use wisp_testing::{Node, Response, send};

use crate::WISP;

/// `method /function/spin{path}` with `body`.
fn spin(node: &Node, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    send(node.admin(method, &format!("/function/spin{path}")), body)
}

#[test]
fn a_spin_sdk_module_serves_as_it_is_and_reaches_its_declared_stores() {
    let node = Node::start(WISP);
    let module = std::fs::read(wisp_testing::SPIN_PROBE).unwrap();
    assert!(
        module.starts_with(b"\0asm\x01\0\0\0"),
        "a core module, as `spin build` leaves it"
    );
    let digest = node.upload(&module);
    node.deploy_ok(json!({
        "service": "spin", "kind": "wasm-http", "image": digest, "keyValueStores": ["default"],
    }));

    let hello = spin(&node, "GET", "/", None);
    assert_eq!(hello.status, 200, "{}", hello.body);
    assert_eq!(hello.body, "hello from a Spin component\n");

    let set = spin(&node, "PUT", "/kv/default/users/42", Some(b"ada"));
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(spin(&node, "GET", "/kv/default/users/42", None).body, "ada");
    spin(&node, "PUT", "/kv/default/users/7", Some(b"grace"));
    assert_eq!(
        spin(&node, "GET", "/keys/default", None).body,
        "users/42\nusers/7"
    );
    // The same store operators and wasi:keyvalue guests see.
    let operator = send(node.admin("GET", "/system/kv/default/users/42"), None);
    assert_eq!((operator.status, operator.body.as_str()), (200, "ada"));

    for (path, error) in [
        ("/kv/sessions/x", "AccessDenied"),
        ("/kv/Not_A_Store/x", "NoSuchStore"),
    ] {
        let refused = spin(&node, "GET", path, None);
        assert_eq!(refused.status, 500, "{path}: {}", refused.body);
        assert!(refused.body.contains(error), "{path}: {}", refused.body);
    }

    assert_eq!(
        spin(&node, "DELETE", "/kv/default/users/42", None).status,
        200
    );
    assert_eq!(spin(&node, "GET", "/kv/default/users/42", None).status, 404);
    assert_eq!(spin(&node, "GET", "/keys/default", None).body, "users/7");
}

#[test]
fn a_spin_module_without_its_stores_declared_is_denied_them() {
    let node = Node::start(WISP);
    let digest = node.upload_file(wisp_testing::SPIN_PROBE);
    node.deploy_ok(json!({ "service": "spin", "kind": "wasm-http", "image": digest }));
    let refused = spin(&node, "PUT", "/kv/default/k", Some(b"v"));
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert!(refused.body.contains("AccessDenied"), "{}", refused.body);
    let operator = send(node.admin("GET", "/system/kv/default/k"), None);
    assert_eq!(
        operator.status, 404,
        "nothing was written: {}",
        operator.body
    );
}

#[test]
fn a_spin_module_importing_what_wisp_lacks_is_refused_naming_it() {
    let node = Node::start(WISP);
    let digest = node.upload_file(wisp_testing::SPIN_VARIABLES);
    let refused = node.deploy(json!({ "service": "vars", "kind": "wasm-http", "image": digest }));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("fermyon:spin/variables@2.0.0"),
        "names the interface: {}",
        refused.error()
    );
    assert_eq!(
        send(node.admin("GET", "/system/functions"), None).json(),
        json!([]),
        "nothing half-deployed stays"
    );
}
