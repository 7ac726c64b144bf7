//! Secrets: created from STDIN with the CLI, handed to wasm and process
//! functions as declared (environment variables, and files in the
//! sandbox), replaced in place, and never shown by the API, the CLI or the
//! node's log. Refused writes from other namespaces leave them as they were.

use std::{io::Write as _, os::unix::fs::PermissionsExt as _, process::Stdio};

use serde_json::json;
use wisp_testing::Node;

use crate::{WISP, call, deploy_probe};

const VALUE: &str = "s3cr3t-value-4711";
const ROTATED: &str = "rotated-value-0815";

/// A process function that prints the secret's variable, then its file,
/// then its file where OpenFaaS's functions read it.
const READER: &str = "#!/bin/sh\nprintf 'env=%s\\n' \"$DB_PASSWORD\"\n\
    cat /run/secrets/db-password 2>&1 || true\nprintf '|'\n\
    cat /var/openfaas/secrets/db-password 2>&1 || true\n";

/// Runs `wisp secret ARGS` against `node` with `stdin`; (success, STDOUT + STDERR).
fn secret_cli(node: &Node, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = node
        .cli(WISP)
        .arg("secret")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wisp secret");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The CLI's output for `args`, which must succeed.
fn cli_ok(node: &Node, args: &[&str]) -> String {
    let output = node.cli(WISP).args(args).output().unwrap();
    assert!(output.status.success(), "wisp {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn deploy_reader(node: &Node, name: &str) {
    let image = node.upload(&wisp_testing::script_archive("run.sh", READER));
    node.deploy_ok(json!({
        "service": name, "kind": "process", "image": image, "envProcess": "./run.sh",
        "secrets": ["db-password"],
    }));
}

#[test]
fn secrets_reach_the_functions_that_declare_them_and_nothing_else() {
    let node = Node::start(WISP);
    let (ok, output) = secret_cli(&node, &["create", "db-password"], "");
    assert!(!ok && output.contains("empty"), "{output}");
    let (ok, output) = secret_cli(&node, &["create", "db-password"], &format!("{VALUE}\n"));
    assert!(ok, "{output}");
    let (ok, output) = secret_cli(&node, &["create", "db-password"], VALUE);
    assert!(!ok && output.contains("already exists"), "{output}");

    deploy_probe(&node, json!({ "secrets": ["db-password"] }));
    deploy_reader(&node, "reader");
    let seen = |value: &str| {
        let env = node.get("/function/probe/env");
        assert!(
            env.body.contains(&format!("DB_PASSWORD={value}\n")),
            "{}",
            env.body
        );
        let read = node.post("/function/reader", b"");
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(read.body, format!("env={value}\n{value}|{value}"));
    };
    seen(VALUE);

    let data = &node.data_dir;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("secrets")), 0o700);
    assert_eq!(
        mode(&data.join("secrets/default/reader/db-password")),
        0o444
    );

    // A new value takes effect without a redeploy.
    let (ok, output) = secret_cli(&node, &["create", "db-password", "--replace"], ROTATED);
    assert!(ok, "{output}");
    seen(ROTATED);

    // Removing a secret in use is refused, naming its users.
    let (ok, output) = secret_cli(&node, &["rm", "db-password"], "");
    assert!(!ok && output.contains("probe, reader"), "{output}");

    let mut shown = vec![
        node.admin("GET", "/system/secrets")
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
        node.admin("GET", "/system/functions")
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
        node.admin("GET", "/system/function/probe")
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
        node.admin("GET", "/system/function/reader")
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
        cli_ok(&node, &["secret", "ls"]),
        cli_ok(&node, &["secret", "ls", "--json"]),
        cli_ok(&node, &["ls", "--json"]),
        cli_ok(&node, &["describe", "probe", "--json"]),
        cli_ok(&node, &["describe", "reader", "--json"]),
    ];
    assert!(shown[0].contains("\"db-password\""), "{}", shown[0]);
    assert!(shown[3].contains("db-password"), "{}", shown[3]);
    shown.push(node.log());
    for text in &shown {
        assert!(!text.contains(VALUE) && !text.contains(ROTATED), "{text}");
    }

    for name in ["probe", "reader"] {
        cli_ok(&node, &["rm", name]);
    }
    assert!(!data.join("secrets/default/reader").exists());
    let (ok, output) = secret_cli(&node, &["rm", "db-password"], "");
    assert!(ok, "{output}");
    assert_eq!(cli_ok(&node, &["secret", "ls", "--json"]).trim(), "[]");
}

#[test]
fn secrets_refuse_missing_names_and_other_namespaces() {
    let node = Node::start(WISP);
    let admin = node.token.clone();
    let missing = node.deploy(json!({
        "service": "cat", "kind": "process", "envProcess": "cat", "secrets": ["nope"],
    }));
    assert_eq!(missing.status, 400, "{}", missing.body);
    assert!(
        missing.error().contains("secret nope does not exist"),
        "{}",
        missing.body
    );

    let mut tokens = std::collections::HashMap::new();
    for namespace in ["team-a", "team-b"] {
        let created = call(
            &node,
            &admin,
            "POST",
            "/system/namespaces",
            Some(json!({ "name": namespace })),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        for role in ["admin", "deploy", "invoke"] {
            let body = json!({ "namespace": namespace, "role": role });
            let created = call(&node, &admin, "POST", "/system/tokens", Some(body));
            assert_eq!(created.status, 201, "{}", created.body);
            let token = created.json()["token"].as_str().unwrap().to_owned();
            tokens.insert(format!("{role}-{namespace}"), token);
        }
    }
    let secret = |value: &str| json!({ "name": "db", "namespace": "team-a", "value": value });
    let created = call(
        &node,
        &tokens["deploy-team-a"],
        "POST",
        "/system/secrets",
        Some(secret(VALUE)),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(!created.body.contains(VALUE));
    let again = call(
        &node,
        &tokens["admin-team-a"],
        "POST",
        "/system/secrets",
        Some(secret(VALUE)),
    );
    assert_eq!(again.status, 409, "{}", again.body);
    let listing = || {
        call(
            &node,
            &admin,
            "GET",
            "/system/secrets?namespace=team-a",
            None,
        )
        .body
    };
    let before = listing();

    let refused = [
        (
            "invoke-team-a",
            "POST",
            "/system/secrets",
            Some(secret(ROTATED)),
        ),
        (
            "invoke-team-a",
            "GET",
            "/system/secrets?namespace=team-a",
            None,
        ),
        (
            "invoke-team-a",
            "DELETE",
            "/system/secrets/db?namespace=team-a",
            None,
        ),
        (
            "admin-team-b",
            "POST",
            "/system/secrets",
            Some(secret(ROTATED)),
        ),
        (
            "admin-team-b",
            "PUT",
            "/system/secrets",
            Some(secret(ROTATED)),
        ),
        (
            "admin-team-b",
            "GET",
            "/system/secrets?namespace=team-a",
            None,
        ),
        (
            "admin-team-b",
            "DELETE",
            "/system/secrets/db?namespace=team-a",
            None,
        ),
        (
            "deploy-team-b",
            "PUT",
            "/system/secrets",
            Some(secret(ROTATED)),
        ),
    ];
    for (token, method, path, body) in refused {
        let response = call(&node, &tokens[token], method, path, body);
        assert_eq!(
            response.status, 403,
            "{token} {method} {path}: {}",
            response.body
        );
    }
    let own = call(
        &node,
        &tokens["admin-team-b"],
        "GET",
        "/system/secrets",
        None,
    );
    assert_eq!(own.json(), json!([]));
    assert_eq!(listing(), before);

    // The value is the first one: a function of team-a sees it.
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    let deployment = json!({
        "service": "probe", "namespace": "team-a", "kind": "wasm-http", "image": digest,
        "secrets": ["db"],
    });
    let deployed = call(
        &node,
        &tokens["deploy-team-a"],
        "POST",
        "/system/functions",
        Some(deployment),
    );
    assert_eq!(deployed.status, 202, "{}", deployed.body);
    let env = node.get("/function/probe.team-a/env");
    assert!(env.body.contains(&format!("DB={VALUE}\n")), "{}", env.body);

    // A value that is not a string is refused without being quoted.
    let bad = call(
        &node,
        &admin,
        "PUT",
        "/system/secrets",
        Some(json!({ "name": "db", "namespace": "team-a", "value": 4711 })),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(!bad.body.contains("4711"), "{}", bad.body);
    let in_use = call(
        &node,
        &admin,
        "DELETE",
        "/system/secrets/db?namespace=team-a",
        None,
    );
    assert_eq!(in_use.status, 409, "{}", in_use.body);
    assert!(in_use.error().contains("probe"), "{}", in_use.body);
}

#[test]
fn secrets_are_variables_only_without_the_sandbox() {
    let node = Node::start_args(WISP, &["--no-sandbox"]);
    let (ok, output) = secret_cli(&node, &["create", "db-password"], VALUE);
    assert!(ok, "{output}");
    deploy_reader(&node, "reader");
    let read = node.post("/function/reader", b"");
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(
        read.body.starts_with(&format!("env={VALUE}\n")),
        "{}",
        read.body
    );
    assert!(!read.body.ends_with(VALUE), "{}", read.body);
    assert!(!node.data_dir.join("secrets/default/reader").exists());
}
