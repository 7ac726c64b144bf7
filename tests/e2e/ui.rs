//! The web UI, driven in real headless Chromium by Playwright (tests/ui/ui.mjs).
//! It is served on a listener of its own, so a function's page (served on the
//! node's main address) cannot read the token the UI keeps.

use std::{path::Path, process::Command};

use serde_json::json;
use wisp_testing::script_archive;

use crate::node_with_probe;

/// A function page that tries every way a page on the node's address has to
/// the UI's token: its own storage, the UI framed (on this origin and on the
/// UI's), the UI opened in a window. It writes what it found into `#loot`
/// (its own canary among it, when its scripts run) and sets `data-done` on
/// the body.
const THIEF: &str = r#"#!/bin/sh
cat <<'EOF'
<!doctype html><title>thief</title><pre id="loot"></pre>
<script>
(async () => {
  const loot = [];
  const grab = (what) => { try { const found = what(); if (found) loot.push(String(found)); } catch (error) {} };
  const storage = (store) => Object.keys(store).map((key) => store.getItem(key)).join(" ");
  // A canary of its own: proof that it reads the storage of its origin.
  grab(() => localStorage.setItem("thief-canary", "canary-seen"));
  grab(() => storage(localStorage));
  grab(() => storage(sessionStorage));
  grab(() => document.cookie);
  const ui = new URLSearchParams(location.search).get("ui");
  for (const src of ["/ui/", ui].filter(Boolean)) {
    const frame = document.createElement("iframe");
    frame.src = src;
    document.body.append(frame);
    await new Promise((done) => { frame.onload = done; setTimeout(done, 3000); });
    grab(() => storage(frame.contentWindow.localStorage));
    grab(() => frame.contentDocument.documentElement.outerHTML);
    const opened = window.open(src);
    await new Promise((done) => setTimeout(done, 1000));
    grab(() => storage(opened.localStorage));
    grab(() => opened.document.documentElement.outerHTML);
    grab(() => opened.close());
  }
  document.getElementById("loot").textContent = JSON.stringify(loot);
  document.body.dataset.done = "1";
})();
</script>
EOF
"#;

#[test]
fn the_web_ui_logs_in_lists_invokes_and_shows_logs_and_traces() {
    let node = node_with_probe(json!({}));
    let failing = "#!/bin/sh\necho 'broken on purpose' >&2\nexit 3\n";
    let digest = node.upload(&script_archive("fail.sh", failing));
    node.deploy_ok(
        json!({ "service": "failing", "kind": "process", "image": digest, "envProcess": "./fail.sh" }),
    );
    node.deploy_ok(
        json!({ "service": "chained", "kind": "pipeline", "steps": ["probe", "failing"] }),
    );
    let app = node.upload(&script_archive("app.py", wisp_testing::HTTP_APP));
    node.deploy_ok(json!({
        "service": "app", "kind": "process-http", "image": app, "envProcess": "./app.py",
        "minScale": 0,
    }));
    let thief = node.upload(&script_archive("thief.sh", THIEF));
    node.deploy_ok(json!({
        "service": "thief", "kind": "process", "image": thief, "envProcess": "./thief.sh",
        "envVars": { "content_type": "text/html; charset=utf-8" },
    }));
    node.deploy_ok(json!({
        "service": "guarded", "kind": "process", "envProcess": "echo guarded", "private": true,
    }));
    let secret = wisp_testing::send(
        node.admin("POST", "/system/secrets"),
        Some(
            json!({ "name": "api-key", "value": "s3cret" })
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(secret.status, 201, "{}", secret.body);
    let ui_url = node.ui_url.clone().expect("the node serves its web UI");

    // The UI's pages may not be framed, and the node's address only points to it.
    let page = wisp_testing::send(ureq::get(&ui_url), None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(
        page.header("content-security-policy")
            .is_some_and(|policy| policy.contains("frame-ancestors 'none'")),
        "{:?}",
        page.headers
    );
    let redirect = wisp_testing::send(
        ureq::AgentBuilder::new()
            .redirects(0)
            .build()
            .get(&format!("{}/ui/", node.url)),
        None,
    );
    assert_eq!(redirect.status, 308, "{}", redirect.body);
    assert_eq!(redirect.header("location"), Some(ui_url.as_str()));
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui.png");
    let _ = std::fs::remove_file(&screenshot);
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let output = Command::new("node")
        .current_dir(&ui)
        .arg("ui.mjs")
        .arg(&node.url)
        .arg(&ui_url)
        .arg(&node.token)
        .arg(&screenshot)
        .arg(wisp_testing::HTTP_PROBE)
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
