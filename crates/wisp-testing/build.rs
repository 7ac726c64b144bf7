//! Builds the test guests under `guests/` for wasm32-wasip2 and exports their
//! paths as `WISP_GUEST_*` variables. Cargo reruns this only when a guest's
//! source changes, so guests are not rebuilt on every test run.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets this")).join("../..");
    let guests = root.join("guests");
    for source in [
        "Cargo.toml",
        "http-probe",
        "kv-probe",
        "probe-support",
        "stdio-probe",
    ] {
        println!("cargo:rerun-if-changed={}", guests.join(source).display());
    }
    // kv-probe's bindings come from the WIT the node implements.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("crates/wisp-runtime/wit").display()
    );
    let target_dir = root.join("target/guests");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags are for the host, not for the guests.
    for variable in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(variable);
    }
    let status = build.status().expect("run cargo to build the test guests");
    assert!(
        status.success(),
        "building the test guests failed; is the target installed? `rustup target add wasm32-wasip2`"
    );
    let out = target_dir.join("wasm32-wasip2/release");
    for (variable, file) in [
        ("WISP_GUEST_HTTP_PROBE", "http_probe.wasm"),
        ("WISP_GUEST_KV_PROBE", "kv_probe.wasm"),
        ("WISP_GUEST_STDIO_PROBE", "stdio-probe.wasm"),
    ] {
        println!("cargo:rustc-env={variable}={}", out.join(file).display());
    }
}
