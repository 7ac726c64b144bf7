//! The web UI, driven in real headless Chromium by Playwright (tests/ui/ui.mjs).

use std::{path::Path, process::Command};

use serde_json::json;
use wisp_testing::script_archive;

use crate::node_with_probe;

#[test]
fn the_web_ui_logs_in_lists_invokes_and_shows_logs_and_traces() {
    let node = node_with_probe(json!({}));
    let failing = "#!/bin/sh\necho 'broken on purpose' >&2\nexit 3\n";
    let digest = node.upload(&script_archive("fail.sh", failing));
    node.deploy_ok(
        json!({ "service": "failing", "kind": "process", "image": digest, "envProcess": "./fail.sh" }),
    );
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui.png");
    let _ = std::fs::remove_file(&screenshot);
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let output = Command::new("node")
        .current_dir(&ui)
        .arg("ui.mjs")
        .arg(&node.url)
        .arg(&node.token)
        .arg(&screenshot)
        .output()
        .expect("run node (./scripts/test installs Node.js, Playwright and Chromium)");
    assert!(
        output.status.success(),
        "the UI test failed (screenshot at {}): {}{}",
        screenshot.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let size = std::fs::metadata(&screenshot).map_or(0, |meta| meta.len());
    assert!(size > 10_000, "a screenshot was saved: {size} bytes");
}
