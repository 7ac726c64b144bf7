//! Builds the test guests under `guests/` (for wasm32-wasip2, and the Spin
//! ones for wasm32-wasip1) and exports their paths as `WISP_GUEST_*` variables. Cargo reruns this only when a guest's
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
        "spin-probe",
        "spin-variables",
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
    // Spin's Rust template builds core modules for wasm32-wasip1.
    for (target, packages) in [
        ("wasm32-wasip2", &[][..]),
        ("wasm32-wasip1", &["spin-probe", "spin-variables"][..]),
    ] {
        let mut build = Command::new(&cargo);
        build
            .args(["build", "--release", "--target", target, "--manifest-path"])
            .arg(guests.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir);
        for package in packages {
            build.args(["--package", package]);
        }
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
            "building the test guests failed; is the target installed? `rustup target add {target}`"
        );
    }
    for (variable, file) in [
        (
            "WISP_GUEST_HTTP_PROBE",
            "wasm32-wasip2/release/http_probe.wasm",
        ),
        ("WISP_GUEST_KV_PROBE", "wasm32-wasip2/release/kv_probe.wasm"),
        (
            "WISP_GUEST_STDIO_PROBE",
            "wasm32-wasip2/release/stdio-probe.wasm",
        ),
        (
            "WISP_GUEST_SPIN_PROBE",
            "wasm32-wasip1/release/spin_probe.wasm",
        ),
        (
            "WISP_GUEST_SPIN_VARIABLES",
            "wasm32-wasip1/release/spin_variables.wasm",
        ),
    ] {
        println!(
            "cargo:rustc-env={variable}={}",
            target_dir.join(file).display()
        );
    }
}
