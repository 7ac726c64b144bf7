//! The node's OpenAPI document (`/system/openapi.json`) drives a
//! property-based test of the whole API: schemathesis (from PyPI, installed
//! by `scripts/test` into `$WISP_SCHEMATHESIS`) generates valid and invalid
//! requests for every operation it lists and checks each answer against it.

use std::{process::Command, time::Duration};

use serde_json::json;
use wisp_testing::send;

use super::{call, node_with_probe, tenants};

#[test]
fn the_openapi_document_lists_every_route_and_needs_no_token() {
    let node = node_with_probe(json!({}));
    let document = node.get("/system/openapi.json");
    assert_eq!(document.status, 200, "{}", document.body);
    assert_eq!(document.header("content-type"), Some("application/json"));
    let document = document.json();
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = document["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/function/{name}", "post"),
        ("/async-function/{name}", "post"),
        ("/system/functions", "post"),
        ("/system/functions", "delete"),
        ("/system/scale-function/{name}", "post"),
        ("/system/artifacts", "put"),
        ("/system/calls/{id}/retry", "post"),
        ("/system/logs", "get"),
        ("/system/namespaces/{name}", "delete"),
        ("/system/tokens", "post"),
        ("/system/secrets", "put"),
        ("/system/kv/{store}/{key}", "put"),
        ("/system/nodes", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|item| item.get(method)).is_some(),
            "{method} {path} is not in the document"
        );
    }
    // Every operation documents its errors: `{"error": ...}`.
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            assert_eq!(
                operation["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path}"
            );
        }
    }
    let schemas = &document["components"]["schemas"];
    let deployment = &schemas["FunctionDeployment"];
    assert_eq!(deployment["required"], json!(["service"]));
    assert!(deployment["properties"]["allowedOutboundHosts"].is_object());
    // A deploy refuses unknown fields; a status, which adds its own to the
    // deployment's, is not refused by its own schema.
    assert_eq!(deployment["additionalProperties"], false);
    let status = schemas["FunctionStatus"]["allOf"]
        .as_array()
        .expect("allOf");
    assert!(
        status
            .iter()
            .all(|part| part.get("additionalProperties").is_none() && part.get("$ref").is_none()),
        "{status:?}"
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let node = node_with_probe(json!({ "triggers": [{ "cron": "@every 1h" }] }));
    // Something in every list the read routes answer.
    tenants::create_namespace(&node, json!({ "name": "team-a" }));
    tenants::create_token(&node, &node.token, "team-a", "deploy");
    let secret = json!({ "name": "db-password", "value": "hunter2" });
    assert_eq!(
        call(&node, &node.token, "POST", "/system/secrets", Some(secret)).status,
        201
    );
    let key = send(
        node.admin("PUT", "/system/kv/default/greeting"),
        Some(b"hi"),
    );
    assert_eq!(key.status, 204, "{}", key.body);
    // A call under the id tests/openapi/schemathesis.toml names.
    let queued = send(
        node.request("POST", "/async-function/probe")
            .set("X-Call-Id", "openapi-call"),
        Some(b"queued"),
    );
    assert_eq!(queued.status, 202, "{}", queued.body);
    let finished = node.eventually(Duration::from_secs(10), || {
        call(
            &node,
            &node.token,
            "GET",
            "/system/calls/openapi-call",
            None,
        )
        .json()["status"]
            == "succeeded"
    });
    assert!(finished, "the async call did not finish");

    let schemathesis = std::env::var("WISP_SCHEMATHESIS").expect(
        "WISP_SCHEMATHESIS: the directory schemathesis is installed in (scripts/test does it)",
    );
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openapi/schemathesis.toml"
    );
    let report = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(format!("{schemathesis}/bin/schemathesis"))
        .env("PYTHONPATH", &schemathesis)
        .current_dir(report.path())
        .args(["--config-file", config])
        .args(["run", &format!("{}/system/openapi.json", node.url)])
        .args(["--header", &format!("Authorization: Bearer {}", node.token)])
        .args(["--max-examples", "30", "--seed", "1"])
        .args(["--request-timeout", "20", "--workers", "2", "--no-color"])
        .args([
            "--generation-database",
            "none",
            "--suppress-health-check",
            "all",
        ])
        .output()
        .expect("schemathesis runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}"
    );
    // The node kept serving through it all.
    assert_eq!(node.get("/healthz").status, 200);
}
