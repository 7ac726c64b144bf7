//! Items 1, 2 and 13: a tenant's environment never reaches a program that
//! runs outside the sandbox, an archive never names a host path, and no
//! sandbox outlives its call.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::json;
use wisp_testing::{Node, send};

use crate::{WISP, unique};

/// The command lines of live processes that contain `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(needle))
        .collect()
}

/// A tar archive of `files` (name, mode, bytes).
fn archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, mode, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_cksum();
        builder.append_data(&mut header, name, *bytes).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn a_preloaded_library_never_runs_on_the_host() {
    let node = Node::start(WISP);
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("owned");
    // The attack as reproduced: a shared object whose constructor writes a
    // marker on the host, shipped in the function's own archive.
    let source = scratch.path().join("evil.c");
    std::fs::write(
        &source,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void owned(void) {{\n\
             FILE *f = fopen(\"{}\", \"a\"); if (f) {{ fputs(\"owned\\n\", f); fclose(f); }} }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let library = scratch.path().join("evil.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("a C compiler (cc) to build the attack");
    assert!(built.success());
    let image = node.upload(&archive(&[
        ("run.sh", 0o755, b"#!/bin/sh\necho ran\n"),
        ("evil.so", 0o755, &std::fs::read(&library).unwrap()),
    ]));
    let tree = node.data_dir.join("trees").join(&image["sha256:".len()..]);
    let preload = tree.join("evil.so");
    for (variable, value) in [
        ("LD_PRELOAD", preload.display().to_string()),
        ("LD_LIBRARY_PATH", tree.display().to_string()),
        ("GCONV_PATH", tree.display().to_string()),
        ("GLIBC_TUNABLES", "glibc.malloc.check=3".to_owned()),
    ] {
        let response = node.deploy(json!({
            "service": "preload", "kind": "process", "image": image,
            "envProcess": "./run.sh", "envVars": { variable: value },
        }));
        assert_eq!(response.status, 400, "{variable}: {}", response.body);
        assert!(response.error().contains(variable), "{}", response.error());
    }
    // Nor smuggled into another variable's value: the environment is
    // handed over as NUL-separated entries.
    let response = node.deploy(json!({
        "service": "preload", "kind": "process", "image": image, "envProcess": "./run.sh",
        "envVars": { "INNOCENT": format!("x\u{0}LD_PRELOAD={}", preload.display()) },
    }));
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(response.error().contains("NUL"), "{}", response.error());
    // Nor through a secret, whose name becomes a variable.
    let secret = json!({ "name": "ld-preload", "value": preload.display().to_string() });
    let response = send(
        node.admin("POST", "/system/secrets"),
        Some(secret.to_string().as_bytes()),
    );
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(
        response.error().contains("LD_PRELOAD"),
        "{}",
        response.error()
    );
    // Nothing was deployed, nothing ran, and the node serves.
    assert_eq!(node.get("/function/preload").status, 404);
    assert!(!marker.exists(), "the constructor ran on the host");
    assert_eq!(node.get("/healthz").status, 200);
}

#[test]
fn programs_outside_the_sandbox_start_with_a_fixed_environment() {
    let node = Node::start(WISP);
    let script = unique("env-");
    let image = node.upload(&archive(&[(
        &format!("{script}.sh"),
        0o755,
        b"#!/bin/sh\necho \"sees=$TENANT_VARIABLE\"\ncat /proc/1/cmdline | tr '\\0' ' '; echo\nls /proc/self/fd | tr '\\n' ' '; echo\nsleep 5\n",
    )]));
    node.deploy_ok(json!({
        "service": "env", "kind": "process", "image": image, "timeout": "10s",
        "envProcess": format!("./{script}.sh"), "envVars": { "TENANT_VARIABLE": "tenant-value" },
    }));
    let call = node.get_in_background("/function/env");
    // While it runs: bubblewrap, outside the sandbox, has none of it.
    let mut seen = Vec::new();
    assert!(
        node.eventually(Duration::from_secs(10), || {
            seen = sandbox_processes(&script);
            !seen.is_empty()
        }),
        "the sandbox never started"
    );
    for (pid, comm, environ) in &seen {
        if comm == "bwrap" {
            assert!(
                environ.is_empty(),
                "bubblewrap ({pid}) runs with an environment: {environ:?}"
            );
        }
    }
    let response = call.join().unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let mut lines = response.body.lines();
    // The function itself has its variable.
    assert_eq!(lines.next(), Some("sees=tenant-value"));
    // The sandbox's first process names no host path.
    let first = lines.next().unwrap();
    assert!(
        !first.contains(node.data_dir.to_str().unwrap()),
        "the sandbox sees a host path: {first}"
    );
    // Only STDIN, STDOUT and STDERR (and the descriptor `ls` opens) are passed on.
    let fds: Vec<u32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|fd| fd.parse().unwrap())
        .collect();
    assert!(
        fds.iter().filter(|&&fd| fd > 2).count() <= 1,
        "descriptors leaked into the sandbox: {fds:?}"
    );
}

/// The pid, command name and environment of processes whose command line
/// names `script`.
fn sandbox_processes(script: &str) -> Vec<(u32, String, Vec<String>)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            if !String::from_utf8_lossy(&cmdline).contains(script) {
                return None;
            }
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let environ = environ
                .split(|&byte| byte == 0)
                .filter(|entry| !entry.is_empty())
                .map(|entry| String::from_utf8_lossy(entry).into_owned())
                .collect();
            Some((pid, comm.trim().to_owned(), environ))
        })
        .collect()
}

#[test]
fn an_absolute_archive_entry_cannot_change_a_host_file() {
    let node = Node::start(WISP);
    let scratch = tempfile::tempdir().unwrap();
    let host_file = scratch.path().join("private-key");
    std::fs::write(&host_file, "host secret").unwrap();
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let name = host_file.to_str().unwrap();
    for (name, kind, why) in [
        (name, tar::EntryType::Regular, "absolute"),
        ("../../escape", tar::EntryType::Regular, ".."),
        ("./a/../../escape", tar::EntryType::Regular, ".."),
        ("disk", tar::EntryType::Block, "devices"),
        ("fifo", tar::EntryType::Fifo, "FIFOs"),
    ] {
        // Written by hand: the tar crate will not write these names.
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o755);
        header.set_size(if kind.is_file() { 4 } else { 0 });
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        if kind.is_file() {
            bytes.extend_from_slice(b"evil");
            bytes.resize(1024, 0);
        }
        bytes.extend_from_slice(&[0; 1024]);
        let image = node.upload(&bytes);
        let response = node.deploy(json!({
            "service": "tarred", "kind": "process", "image": image, "envProcess": "cat",
        }));
        assert_eq!(response.status, 400, "{name}: {}", response.body);
        assert!(
            response.error().contains(why),
            "{name}: {}",
            response.error()
        );
    }
    let meta = std::fs::metadata(&host_file).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "the host file's mode changed"
    );
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host secret");
    assert!(!scratch.path().join("escape").exists());
    assert_eq!(node.get("/function/tarred").status, 404);
    // A plain archive still deploys.
    let image = node.upload(&wisp_testing::script_archive(
        "run.sh",
        "#!/bin/sh\necho ok\n",
    ));
    node.deploy_ok(json!({
        "service": "tarred", "kind": "process", "image": image, "envProcess": "./run.sh",
    }));
    assert_eq!(node.get("/function/tarred").body, "ok\n");
}

#[test]
fn no_sandbox_outlives_a_cancelled_call_or_the_node() {
    let node = Node::start_args(WISP, &["--grace-period", "1s"]);
    let script = unique("hang-");
    let image = node.upload(&wisp_testing::script_archive(
        &format!("{script}.sh"),
        "#!/bin/sh\nsleep 30 & sleep 30\n",
    ));
    node.deploy_ok(json!({
        "service": "hang", "kind": "process", "image": image, "timeout": "60s",
        "envProcess": format!("./{script}.sh"), "maxConcurrency": 64,
    }));
    let address = node.url.trim_start_matches("http://").to_owned();
    // Clients that give up while their calls run, as at the end of any load test.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            write!(
                stream,
                "POST /function/hang HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            )
            .unwrap();
            stream
        })
        .collect();
    assert!(
        node.eventually(Duration::from_secs(20), || {
            processes_with(&script).len() >= 8
        }),
        "the calls never started: {:?}",
        processes_with(&script)
    );
    drop(clients);
    let gone = node.eventually(Duration::from_secs(10), || {
        processes_with(&script).is_empty()
    });
    assert!(gone, "left behind: {:?}", processes_with(&script));

    // A call in flight when the node stops goes with it.
    let call = node.get_in_background("/function/hang");
    assert!(
        node.eventually(Duration::from_secs(20), || !processes_with(&script)
            .is_empty()),
        "the call never started"
    );
    let (_, _scratch) = node.stop();
    let _ = call.join();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&script).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        processes_with(&script).is_empty(),
        "left behind after the node stopped: {:?}",
        processes_with(&script)
    );
}
