//! Hostile functions, wasm and process, are contained: each attack runs
//! while a well-behaved function in another namespace is called over and
//! over, and every one of those calls must succeed.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use wisp_testing::{Node, Response, send};

use crate::{WISP, assert_none_left, cmdline, deploy_probe, merge, processes_of};

/// How far past its timeout a contained call may end.
const SLACK: Duration = Duration::from_millis(500);

/// A node with the bystander: `echo` in namespace `others`, a process that
/// answers its body. Its body limit lets the floods below be sent whole.
fn node() -> Node {
    let node = Node::start_args(WISP, &["--max-body-size", "128MiB"]);
    node.deploy_ok(json!({
        "service": "echo", "namespace": "others", "kind": "process", "envProcess": "cat",
    }));
    node
}

/// Deploys `script` as the process function `name` in namespace `attackers`
/// (with `extra` merged in).
fn attacker(node: &Node, name: &str, script: &str, extra: Value) {
    let image = node.upload(&wisp_testing::script_archive("run.sh", script));
    let mut deployment = json!({
        "service": name, "namespace": "attackers", "kind": "process",
        "image": image, "envProcess": "./run.sh", "timeout": "2s",
    });
    merge(&mut deployment, extra);
    node.deploy_ok(deployment);
}

/// Runs `attack` while the bystander is called in a loop; every bystander
/// call must answer 200 with its body.
fn while_serving<T>(node: &Node, attack: impl FnOnce() -> T) -> T {
    /// Stops the bystander however the attack ends, a failed assertion included.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let bystander = scope.spawn(|| {
            let (mut served, mut failed) = (0, Vec::new());
            // At least one call, begun while the attack runs, however short it is.
            while !stop.load(Ordering::Relaxed) || served + failed.len() == 0 {
                let response = node.post("/function/echo.others", b"still here");
                if response.status == 200 && response.body == "still here" {
                    served += 1;
                } else {
                    failed.push(format!("{}: {}", response.status, response.body));
                }
            }
            (served, failed)
        });
        let result = {
            let _stop = Stop(&stop);
            attack()
        };
        let (served, failed) = bystander.join().expect("the bystander thread");
        assert!(failed.is_empty(), "bystander calls failed: {failed:?}");
        assert!(served > 0, "the bystander was never served");
        result
    })
}

/// Calls an attacker and checks it ended by its deadline.
fn attack(node: &Node, name: &str, body: &[u8]) -> Response {
    attack_within(node, name, body, Duration::from_secs(2))
}

/// Calls an attacker deployed with `timeout` and checks it ended by then.
fn attack_within(node: &Node, name: &str, body: &[u8], timeout: Duration) -> Response {
    let started = Instant::now();
    let response = node.post(&format!("/function/{name}.attackers"), body);
    assert!(
        started.elapsed() < timeout + SLACK,
        "the attack ended by its deadline: {:?}",
        started.elapsed()
    );
    response
}

#[test]
fn a_process_sees_only_its_own_files_and_a_private_tmp() {
    let node = node();
    let victim = node.upload(&wisp_testing::script_archive(
        "secret.sh",
        "#!/bin/sh\necho victim-secret\n",
    ));
    node.deploy_ok(json!({
        "service": "victim", "kind": "process", "image": victim, "envProcess": "./secret.sh",
    }));
    let victim_tree = node.data_dir.join("trees").join(&victim["sha256:".len()..]);
    assert!(victim_tree.join("secret.sh").is_file());
    let data_dir = node.data_dir.display();
    let script = format!(
        r#"#!/bin/sh
try() {{ if "$@" >/dev/null 2>&1; then echo "LEAKED: $*"; else echo "refused: $*"; fi; }}
try cat /etc/passwd
try cat /etc/shadow
try ls {data_dir}/trees
try cat {data_dir}/admin-token
try cat {data_dir}/wisp.db
try cat {victim}/secret.sh
try touch ./planted
try touch {data_dir}/planted
head -1 ./run.sh
echo scratch > /tmp/scratch && cat /tmp/scratch
id -u
"#,
        victim = victim_tree.display()
    );
    attacker(&node, "reader", &script, json!({}));
    let response = while_serving(&node, || attack(&node, "reader", b""));
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(!response.body.contains("LEAKED"), "{}", response.body);
    assert_eq!(
        response.body.matches("refused: ").count(),
        8,
        "{}",
        response.body
    );
    assert!(
        response.body.contains("#!/bin/sh\nscratch\n"),
        "its own files and /tmp work: {}",
        response.body
    );
    let uid: u32 = response.body.lines().last().unwrap().parse().unwrap();
    assert!(uid >= 300_000, "runs as an unprivileged uid: {uid}");
    assert!(!node.data_dir.join("planted").exists());
    assert_eq!(node.post("/function/victim", b"").body, "victim-secret\n");
}

#[test]
fn a_process_without_network_cannot_reach_the_admin_api_or_anything_else() {
    let node = node();
    let port = node.url.rsplit(':').next().unwrap();
    let connect = format!(
        r#"python3 -c "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1); print('connected')" 2>&1 | tail -1"#
    );
    let listen = r#"python3 -c "import socket; socket.socket().bind(('0.0.0.0', 0)); socket.socket().listen(); print('listening')" 2>&1 | tail -1"#;
    attacker(
        &node,
        "isolated",
        &format!("#!/bin/sh\n{connect}\n{listen}\n"),
        json!({}),
    );
    let isolated = while_serving(&node, || attack(&node, "isolated", b""));
    assert_eq!(isolated.status, 200, "{}", isolated.body);
    // A warm sandbox (a root node) refuses IP sockets outright; a sandbox
    // of its own per call has only its own loopback.
    assert!(
        isolated.body.starts_with("PermissionError")
            || isolated.body.starts_with("ConnectionRefusedError"),
        "no socket, or no route to the node from its own network namespace: {}",
        isolated.body
    );

    // With outbound network it has a namespace of its own too, so the
    // node's loopback is out of reach (see `escapes::network`), and nothing
    // can connect in.
    attacker(
        &node,
        "outbound",
        &format!("#!/bin/sh\n{connect}\n{listen}\n"),
        json!({ "network": "outbound" }),
    );
    let outbound = attack(&node, "outbound", b"");
    assert_eq!(outbound.status, 200, "{}", outbound.body);
    let lines: Vec<&str> = outbound.body.lines().collect();
    assert!(
        lines[0].starts_with("ConnectionRefusedError"),
        "{}",
        outbound.body
    );
    assert!(
        lines[1].starts_with("PermissionError"),
        "no listening socket: {}",
        outbound.body
    );
}

#[test]
fn landlock_keeps_a_process_from_running_planted_code_or_reaching_host_sockets() {
    use std::os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    };
    let node = node();
    // An abstract UNIX socket belongs to the network namespace, which an
    // outbound function shares with the host.
    let name = format!("wisp-test-{}", std::process::id());
    let address = SocketAddr::from_abstract_name(&name).unwrap();
    let _listener = UnixListener::bind_addr(&address).unwrap();
    UnixStream::connect_addr(&address).expect("the host reaches its own socket");
    let script = format!(
        r#"#!/bin/sh
try() {{ if "$@" >/dev/null 2>&1; then echo "LEAKED: $*"; else echo "refused: $*"; fi; }}
cp /usr/bin/true /tmp/planted && echo copied
try /tmp/planted
try touch /dev/planted
try python3 -c "import socket; socket.socket(socket.AF_UNIX).connect('\0{name}')"
"#
    );
    attacker(&node, "planter", &script, json!({ "network": "outbound" }));
    let response = while_serving(&node, || attack(&node, "planter", b""));
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.body.starts_with("copied\n"),
        "/tmp is writable: {}",
        response.body
    );
    assert!(!response.body.contains("LEAKED"), "{}", response.body);
    assert_eq!(
        response.body.matches("refused: ").count(),
        3,
        "{}",
        response.body
    );
}

#[test]
fn a_fork_bomb_is_bounded_and_gone_at_the_deadline() {
    let node = node();
    attacker(
        &node,
        "bomb",
        // Its shells wait on a FIFO, which needs no fork: at the limit they
        // stay, rather than exiting when `sleep` cannot be started.
        "#!/bin/sh\nmkfifo /tmp/hold && exec 3<>/tmp/hold\nbomb() { bomb | bomb & read x <&3; }\nbomb 2>/dev/null\n",
        json!({}),
    );
    let response = while_serving(&node, || {
        std::thread::scope(|scope| {
            let call = scope.spawn(|| attack(&node, "bomb", b""));
            let bomb = || {
                let processes = processes_of(&node);
                processes
                    .iter()
                    .filter(|process| process.contains("run.sh"))
                    .count()
            };
            assert!(
                node.eventually(Duration::from_millis(1500), || bomb() >= 16),
                "the bomb went off"
            );
            let most = bomb();
            assert!(most <= 64, "bounded by the process limit: {most}");
            call.join().expect("the attack")
        })
    });
    // The deadline stops it (504), unless the limit stops its first shell
    // first: a shell that cannot fork exits with status 2 (502).
    assert!(
        [502, 504].contains(&response.status),
        "{}: {}",
        response.status,
        response.body
    );
    assert_none_left(&node, Duration::from_secs(2), "the calls are over");
}

#[test]
fn a_fork_bomb_on_one_node_leaves_another_nodes_processes_room_to_fork() {
    let bombed = node();
    attacker(
        &bombed,
        "bomb",
        // Its shells wait on a FIFO, which needs no fork: at the limit they
        // stay, rather than exiting when `sleep` cannot be started.
        "#!/bin/sh\nmkfifo /tmp/hold && exec 3<>/tmp/hold\nbomb() { bomb | bomb & read x <&3; }\nbomb 2>/dev/null\n",
        // Long enough to go off and be watched on a loaded machine.
        json!({ "timeout": "6s" }),
    );
    let neighbour = node();
    attacker(
        &neighbour,
        "forks",
        "#!/bin/sh\nfor i in $(seq 40); do sleep 0.2 & done; wait\nid -u\n",
        json!({}),
    );
    let uid_of = |node: &Node| {
        let response = attack(node, "forks", b"");
        assert_eq!(response.status, 200, "{}", response.body);
        response.body.trim().parse::<u32>().expect("a uid")
    };
    std::thread::scope(|scope| {
        let call = scope.spawn(|| attack_within(&bombed, "bomb", b"", Duration::from_secs(6)));
        let bombs = || {
            processes_of(&bombed)
                .iter()
                .filter(|process| process.contains("run.sh"))
                .count()
        };
        assert!(
            bombed.eventually(Duration::from_secs(5), || bombs() >= 16),
            "the bomb did not go off: {:?}",
            processes_of(&bombed)
        );
        // Until it holds all it can: it stops growing.
        let mut last = bombs();
        bombed.eventually(Duration::from_secs(1), || {
            std::thread::sleep(Duration::from_millis(100));
            let now = bombs();
            std::mem::replace(&mut last, now) == now
        });
        // Every call of the neighbour forks while the bomb holds its limit.
        for _ in 0..3 {
            assert!(bombs() >= 16, "the bomb still holds its limit");
            let uid = uid_of(&neighbour);
            assert!(uid >= 300_000, "an unprivileged uid: {uid}");
        }
        call.join().expect("the attack");
    });
}

#[test]
fn loops_and_sleepers_holding_children_are_killed_at_the_deadline() {
    let node = node();
    for (name, script) in [
        ("loop", "#!/bin/sh\nwhile :; do :; done\n"),
        // A child in a session of its own is out of the process group, but
        // not out of the sandbox's PID namespace.
        (
            "sleeper",
            "#!/bin/sh\nsetsid sleep 60 &\nsleep 60 &\nsleep 60\n",
        ),
    ] {
        attacker(&node, name, script, json!({}));
        let response = while_serving(&node, || attack(&node, name, b""));
        assert_eq!(response.status, 504, "{script}: {}", response.body);
        assert_none_left(&node, Duration::from_secs(2), script);
    }
}

#[test]
fn nothing_a_call_leaves_behind_reaches_the_next() {
    let node = node();
    // Each call says what it finds of earlier ones (files in /tmp, sleepers,
    // a listener on its loopback) and which sockets it may make, then
    // leaves all three behind.
    attacker(
        &node,
        "litterer",
        r#"#!/bin/sh
echo "tmp:$(ls -A /tmp | tr '\n' ' ')"
echo "sleepers:$(cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$')"
echo "listeners:$(grep -c ":1F90 00000000:0000 0A" /proc/net/tcp)"
echo "uid:$(id -u)"
python3 -c 'import socket
for family in (2, 10, 30, 40, 43):
    try: socket.socket(family, socket.SOCK_STREAM); print("socket family", family)
    except OSError: pass'
echo litter > /tmp/litter
sleep 300 </dev/null >/dev/null 2>&1 &
setsid sleep 300 </dev/null >/dev/null 2>&1 &
python3 -c 'import socket,time; s=socket.socket(); s.bind(("127.0.0.1", 8080)); s.listen(); time.sleep(300)' </dev/null >/dev/null 2>&1 &
sleep 0.3
"#,
        json!({}),
    );
    let calls: Vec<Response> = (0..3)
        .map(|_| node.post("/function/litterer.attackers", b""))
        .collect();
    let mut uids = Vec::new();
    for response in &calls {
        assert_eq!(response.status, 200, "{}", response.body);
        let mut lines = response.body.lines();
        assert_eq!(lines.next(), Some("tmp:"), "{}", response.body);
        assert_eq!(lines.next(), Some("sleepers:0"), "{}", response.body);
        assert_eq!(lines.next(), Some("listeners:0"), "{}", response.body);
        uids.push(lines.next().unwrap().to_owned());
        // Calls share the warm sandbox's network namespace: no socket
        // family that could reach another call's (IP, TIPC, vsock, SMC).
        assert_eq!(lines.next(), None, "{}", response.body);
    }
    uids.dedup();
    assert_eq!(
        uids.len(),
        3,
        "each call runs as a uid of its own: {uids:?}"
    );
    assert_none_left(&node, Duration::from_secs(2), "the calls are over");
}

#[test]
fn calls_in_flight_at_once_keep_their_own_input_output_and_status() {
    let node = node();
    attacker(
        &node,
        "many",
        r#"#!/bin/sh
body=$(cat)
case "$body" in
hang) sleep 30 ;;
fail) echo "failing on purpose" >&2; exit 3 ;;
esac
sleep 0.5
echo "$body"
"#,
        json!({}),
    );
    // Ten calls, one that fails and one past its deadline, all at once in
    // one warm sandbox: each answer is its own call's.
    let bodies: Vec<String> = (0..10)
        .map(|index| format!("call-{index}"))
        .chain(["fail".to_owned(), "hang".to_owned()])
        .collect();
    let responses: Vec<Response> = std::thread::scope(|scope| {
        let calls: Vec<_> = bodies
            .iter()
            .map(|body| {
                let node = &node;
                scope.spawn(move || attack(node, "many", body.as_bytes()))
            })
            .collect();
        calls.into_iter().map(|call| call.join().unwrap()).collect()
    });
    for (body, response) in bodies.iter().zip(&responses) {
        match body.as_str() {
            "fail" => {
                assert_eq!(response.status, 502, "{}", response.body);
                assert!(response.error().contains("status 3"), "{}", response.body);
            }
            "hang" => assert_eq!(response.status, 504, "{}", response.body),
            _ => {
                assert_eq!(response.status, 200, "{body}: {}", response.body);
                assert_eq!(response.body.trim(), body);
            }
        }
    }
    assert_none_left(&node, Duration::from_secs(2), "the calls are over");
}

/// The warm sandboxes' templates (`wisp-jail --template`) that processes
/// whose command line holds `marker` descend from.
fn templates_running(marker: &str) -> Vec<u32> {
    let parent = |pid: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let parent = status.lines().find_map(|line| line.strip_prefix("PPid:"))?;
        Some(parent.trim().to_owned())
    };
    let mut templates: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.parse::<u32>().is_ok() && cmdline(pid).contains(marker))
        .filter_map(|pid| {
            std::iter::successors(parent(&pid), |pid| parent(pid))
                .take(4)
                .find(|pid| cmdline(pid).starts_with("/run/wisp-jail --template"))?
                .parse()
                .ok()
        })
        .collect();
    templates.sort_unstable();
    templates.dedup();
    templates
}

#[test]
fn no_call_outlives_its_warm_sandbox() {
    let node = node();
    attacker(
        &node,
        "stuck",
        "#!/bin/sh\ncase \"$Http_Query\" in hang) sleep 31 & sleep 31 ;; esac\necho ok\n",
        json!({ "timeout": "60s" }),
    );
    let call = node.get_in_background("/function/stuck.attackers?hang");
    let mut templates = Vec::new();
    assert!(
        node.eventually(Duration::from_secs(20), || {
            templates = templates_running("sleep 31");
            !templates.is_empty()
        }),
        "the call never started"
    );
    // The template dies (as on a crash): the call's processes go with it,
    // the call fails, and the next call gets a new sandbox.
    for template in templates {
        // SAFETY: kill(2) on a pid read from /proc.
        unsafe { libc::kill(template as libc::pid_t, libc::SIGKILL) };
    }
    assert_none_left(&node, Duration::from_secs(5), "the template is gone");
    let failed = call.join().unwrap();
    assert!(failed.status >= 500, "{}: {}", failed.status, failed.body);
    let next = node.get("/function/stuck.attackers");
    assert_eq!(
        (next.status, next.body.trim()),
        (200, "ok"),
        "{}",
        next.body
    );
}

#[test]
fn memory_disk_and_output_bombs_are_cut_off() {
    let node = node();
    attacker(
        &node,
        "memory",
        "#!/bin/sh\nexec python3 -c 'x = bytearray(1 << 30)'\n",
        json!({ "memory": "128MiB" }),
    );
    let memory = while_serving(&node, || attack(&node, "memory", b""));
    assert_eq!(memory.status, 502, "{}", memory.body);
    assert!(
        node.eventually(Duration::from_secs(2), || node
            .log()
            .contains("MemoryError")),
        "the allocation failed inside the function"
    );

    // 10 GB to /tmp stops at the size of its private /tmp.
    attacker(
        &node,
        "disk",
        "#!/bin/sh\ndd if=/dev/zero of=/tmp/fill bs=1M count=10240 2>&1\necho dd exited $?\n",
        json!({}),
    );
    let disk = while_serving(&node, || attack(&node, "disk", b""));
    assert_eq!(disk.status, 200, "{}", disk.body);
    assert!(
        disk.body.contains("No space left") && disk.body.contains("67108864 bytes"),
        "stopped at 64 MiB: {}",
        disk.body
    );

    // Endless STDOUT is cut off at the response limit.
    attacker(
        &node,
        "output",
        "#!/bin/sh\nexec cat /dev/zero\n",
        json!({}),
    );
    let output = while_serving(&node, || attack(&node, "output", b""));
    assert_eq!(output.status, 502, "{}", output.body);
    assert!(output.error().contains("larger than"), "{}", output.error());
}

#[test]
fn a_process_that_never_reads_its_input_does_not_hold_the_upload() {
    let node = node();
    attacker(
        &node,
        "deaf",
        "#!/bin/sh\nsleep 0.5\necho ignored the body\n",
        json!({ "maxBodySize": "128MiB" }),
    );
    let body = vec![b'x'; 100 << 20];
    let response = while_serving(&node, || attack(&node, "deaf", &body));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, "ignored the body\n");
}

#[test]
fn syscalls_a_sandbox_escape_needs_are_refused() {
    let node = node();
    // Both are allowed to an unprivileged process outside the sandbox.
    let script = r#"#!/bin/sh
exec python3 -c '
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for name, result in [("ptrace", libc.ptrace(0, 0, 0, 0)), ("unshare", libc.unshare(0x10000000))]:
    print(name, result, os.strerror(ctypes.get_errno()))
'
"#;
    attacker(&node, "syscalls", script, json!({}));
    let response = attack(&node, "syscalls", b"");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.body,
        "ptrace -1 Operation not permitted\nunshare -1 Operation not permitted\n"
    );
}

#[test]
fn wasm_guests_have_no_files_and_reach_only_declared_hosts() {
    let node = node();
    let admin = format!("{}/system/functions", node.url);
    deploy_probe(
        &node,
        json!({ "namespace": "attackers", "envVars": { "PROBE_UPSTREAM": admin } }),
    );
    let read = while_serving(&node, || {
        node.get("/function/probe.attackers/read?path=/etc/passwd")
    });
    assert_eq!(read.status, 403, "{}", read.body);

    let call = while_serving(&node, || node.get("/function/probe.attackers"));
    assert_eq!(call.status, 502, "{}", call.body);
    assert!(call.body.contains("HttpRequestDenied"), "{}", call.body);
    let logs = node
        .cli(WISP)
        .args(["logs", "probe.attackers"])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains(&format!("outbound request to {admin} denied")),
        "the attempt is in the function's log: {logs}"
    );
}

#[test]
fn a_wasm_guest_reads_its_declared_files_and_nothing_else() {
    let node = node();
    let project = tempfile::tempdir().unwrap();
    let files = project.path().join("static");
    std::fs::create_dir_all(files.join("docs")).unwrap();
    std::fs::write(files.join("docs/hello.txt"), "hello from a file\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", files.join("passwd")).unwrap();
    std::fs::copy(wisp_testing::HTTP_PROBE, project.path().join("probe.wasm")).unwrap();
    let manifest = project.path().join("wisp.toml");
    std::fs::write(
        &manifest,
        "[[function]]\nname = \"reader\"\nnamespace = \"attackers\"\nkind = \"wasm-http\"\n\
         artifact = \"probe.wasm\"\nfiles = \"static\"\n",
    )
    .unwrap();
    let deployed = node
        .cli(WISP)
        .args(["deploy", "-f"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(deployed.status.success(), "{deployed:?}");

    let read = |path: &str| node.get(&format!("/function/reader.attackers/read?path={path}"));
    let hello = read("/docs/hello.txt");
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (200, "hello from a file\n")
    );
    for outside in ["/passwd", "/../etc/passwd", "/etc/passwd"] {
        let refused = while_serving(&node, || read(outside));
        assert_eq!(refused.status, 403, "{outside}: {}", refused.body);
    }
    let write = while_serving(&node, || {
        node.get("/function/reader.attackers/write?path=/docs/new.txt")
    });
    assert_eq!(write.status, 403, "{}", write.body);
    assert_eq!(read("/docs/new.txt").status, 403, "nothing was written");

    let described = send(
        node.admin("GET", "/system/function/reader?namespace=attackers"),
        None,
    );
    let digest = described.json()["files"].as_str().unwrap().to_owned();
    let removed = node
        .cli(WISP)
        .args(["rm", "reader.attackers"])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{removed:?}");
    let redeployed = node
        .cli(WISP)
        .args(["deploy", "--no-build", "-f"])
        .arg(&manifest)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&redeployed.stderr);
    assert!(
        stderr.contains(&format!("artifact {digest} is already on the gateway")),
        "the unchanged files are not uploaded again: {stderr}"
    );
}

#[test]
fn wasm_floods_are_cut_off() {
    let node = node();
    deploy_probe(
        &node,
        json!({ "namespace": "attackers", "timeout": "2s", "maxBodySize": "128MiB" }),
    );
    let spew = while_serving(&node, || {
        node.get("/function/probe.attackers/spew?mib=10240")
    });
    assert!(
        spew.status == 200 || spew.status == 502,
        "{}: {}",
        spew.status,
        spew.body
    );
    assert!(!spew.body.contains("wrote 10240 MiB"), "{}", spew.body);

    let body = vec![b'x'; 100 << 20];
    let unread = while_serving(&node, || {
        send(
            node.request("POST", "/function/probe.attackers/sleep?ms=100"),
            Some(&body),
        )
    });
    assert_eq!(unread.status, 200, "{}", unread.body);
}
