//! `process-http` apps and concurrency: replicas behind the proxy, scale
//! from and to zero, the autoscaler under a spike, crashed replicas,
//! redeploys under load, fixed counts, graceful stops, and requests over a
//! concurrency limit waiting in the queue.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::{Value, json};
use wisp_testing::{HTTP_APP, Node, Response, script_archive, send};

use crate::{WISP, merge, node_with_probe};

/// The deployment of the test app as `app`, with `extra` fields merged in.
fn app_deployment(node: &Node, extra: Value) -> Value {
    let digest = node.upload(&script_archive("app.py", HTTP_APP));
    let mut deployment = json!({
        "service": "app",
        "kind": "process-http",
        "image": digest,
        "envProcess": "./app.py",
        "timeout": "30s",
    });
    merge(&mut deployment, extra);
    deployment
}

/// A node serving the test app as `app`.
fn node_with_app(extra: Value) -> Node {
    let node = Node::start(WISP);
    node.deploy_ok(app_deployment(&node, extra));
    node
}

/// The app's status, as `GET /system/function/app` answers it.
fn status(node: &Node) -> Value {
    let response = send(node.admin("GET", "/system/function/app"), None);
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

fn replicas(node: &Node) -> u64 {
    status(node)["replicas"].as_u64().expect("replicas")
}

/// The replica that answered, as the app reports it: its port.
fn replica_of(response: &Response) -> String {
    response
        .body
        .split_whitespace()
        .find_map(|word| word.strip_prefix("replica="))
        .unwrap_or_else(|| panic!("no replica in {}", response.body))
        .to_owned()
}

/// The host pid of a replica's app process (it runs in a PID namespace of
/// its own, so the pid it sees is not the host's), found by its `$PORT`.
fn pid_of(replica: &str) -> Option<u32> {
    let port = format!("PORT={replica}\0");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let is_app = String::from_utf8_lossy(&cmdline).contains("python3");
            (is_app
                && environ
                    .windows(port.len())
                    .any(|window| window == port.as_bytes()))
            .then_some(pid)
        })
}

fn alive(replica: &str) -> bool {
    pid_of(replica).is_some()
}

#[test]
fn an_app_is_proxied_with_its_path_query_headers_and_body() {
    let node = node_with_app(json!({}));
    let deployed = status(&node);
    assert_eq!(deployed["minScale"], 1, "{deployed}");
    assert_eq!(
        (
            deployed["replicas"].as_u64(),
            deployed["availableReplicas"].as_u64()
        ),
        (Some(1), Some(1)),
        "the deploy waits for the first replica: {deployed}"
    );

    let response = send(
        node.request("POST", "/function/app/echo/x?y=1&z=2")
            .set("X-Test", "42")
            .set("X-Call-Id", "call-7"),
        Some(b"payload"),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .body
            .starts_with("POST /echo/x?y=1&z=2 x-test=42 call=call-7"),
        "{}",
        response.body
    );
    assert!(response.body.ends_with("body=payload"), "{}", response.body);
    assert_eq!(response.header("x-call-id"), Some("call-7"));

    // Requests reuse the warm replica.
    let first = replica_of(&node.get("/function/app"));
    let second = replica_of(&node.get("/function/app"));
    assert_eq!(first, second);

    let output = node
        .cli(WISP)
        .args(["describe", "app"])
        .output()
        .expect("run wisp describe");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 to 10 replicas"), "{text}");
    assert!(text.contains("1 (1 ready, 0 cold starts)"), "{text}");
}

#[test]
fn an_app_that_does_not_start_is_refused_and_nothing_is_kept() {
    let node = Node::start(WISP);
    let digest = node.upload(&script_archive(
        "app.sh",
        "#!/bin/sh\necho 'cannot open the database' >&2\nexit 3\n",
    ));
    let response = node.deploy(json!({
        "service": "broken",
        "kind": "process-http",
        "image": digest,
        "envProcess": "./app.sh",
    }));
    assert_eq!(response.status, 400, "{}", response.body);
    let error = response.error();
    assert!(error.contains("exited"), "{error}");
    assert!(error.contains("cannot open the database"), "{error}");
    let functions = send(node.admin("GET", "/system/functions"), None);
    assert_eq!(functions.json(), json!([]));
    let artifacts = send(node.admin("GET", "/system/artifacts"), None);
    assert_eq!(
        artifacts.json(),
        json!([]),
        "the refused artifact is removed"
    );
}

#[test]
fn a_crashed_replica_fails_its_request_and_is_replaced() {
    let node = node_with_app(json!({}));
    let before = replica_of(&node.get("/function/app"));
    let pid = pid_of(&before).expect("the replica's process");

    // Killed from outside with a request in flight: that request fails at once.
    let in_flight = node.get_in_background("/function/app/sleep?ms=20000");
    thread::sleep(Duration::from_millis(300));
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let failed = in_flight.join().expect("request in flight");
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert!(
        failed.error().contains("did not answer"),
        "{}",
        failed.error()
    );

    // Crashing while answering: the same.
    let mut replacement = String::new();
    assert!(
        node.eventually(Duration::from_secs(20), || {
            let response = node.get("/function/app");
            if response.status == 200 {
                replacement = replica_of(&response);
            }
            response.status == 200
        }),
        "a replacement replica serves"
    );
    assert_ne!(replacement, before);
    let crashed = node.get("/function/app/crash");
    assert_eq!(crashed.status, 502, "{}", crashed.body);
    assert!(
        crashed.error().contains("did not answer"),
        "{}",
        crashed.error()
    );

    let mut after = None;
    assert!(
        node.eventually(Duration::from_secs(20), || {
            let response = node.get("/function/app");
            after = (response.status == 200).then(|| replica_of(&response));
            after.is_some() && replicas(&node) == 1
        }),
        "a replacement replica serves"
    );
    assert_ne!(after, Some(replacement), "the crashed replica was replaced");
}

#[test]
fn an_idle_app_scales_to_zero_and_a_request_wakes_it() {
    let node = node_with_app(json!({ "minScale": 0, "scaleDownDelay": "1s" }));
    assert_eq!(replicas(&node), 0, "min 0 starts nothing");

    let response = node.get("/function/app/hello");
    assert_eq!(
        response.status, 200,
        "the request is held, not failed: {}",
        response.body
    );
    let replica = replica_of(&response);
    assert!(alive(&replica));
    let woken = status(&node);
    assert_eq!(woken["coldStarts"], 1, "{woken}");
    assert_eq!(woken["replicas"], 1, "{woken}");

    assert!(
        node.eventually(Duration::from_secs(15), || replicas(&node) == 0),
        "back to zero after the delay"
    );
    assert!(
        node.eventually(Duration::from_secs(10), || !alive(&replica)),
        "the idle replica's process is gone"
    );
    let again = node.get("/function/app/hello");
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(status(&node)["coldStarts"], 2);
}

#[test]
fn a_spike_scales_out_and_back_to_zero_with_only_explicit_429s() {
    let node = Arc::new(node_with_app(json!({
        "minScale": 0,
        "maxScale": 4,
        "targetConcurrency": 5,
        "scaleDownDelay": "1s",
        "maxConcurrency": 60,
        "queueTimeout": "20s",
    })));
    let spiking = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (node, spiking, peak) = (node.clone(), spiking.clone(), peak.clone());
        thread::spawn(move || {
            while spiking.load(Ordering::Relaxed) {
                peak.fetch_max(replicas(&node), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let (node, statuses) = (node.clone(), statuses.clone());
            thread::spawn(move || {
                let response = node.get("/function/app/sleep?ms=200");
                if response.status == 429 {
                    assert!(
                        response.header("retry-after").is_some(),
                        "429 without Retry-After"
                    );
                }
                statuses.lock().unwrap().push(response.status);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
    spiking.store(false, Ordering::Relaxed);
    monitor.join().expect("monitor thread");

    let statuses = statuses.lock().unwrap();
    let ok = statuses.iter().filter(|status| **status == 200).count();
    let busy = statuses.iter().filter(|status| **status == 429).count();
    assert_eq!(ok + busy, 200, "only 200s and 429s: {statuses:?}");
    assert!(
        ok >= 120,
        "60 run and 60 wait; only the rest may be turned away: {ok} served"
    );
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        (2..=4).contains(&peak),
        "the spike scaled out within maxScale: peak {peak} replicas"
    );
    assert!(
        node.eventually(Duration::from_secs(20), || replicas(&node) == 0),
        "back to zero after the spike"
    );
}

#[test]
fn a_redeploy_under_load_fails_no_request() {
    let node = Arc::new(node_with_app(json!({ "envVars": { "VERSION": "1" } })));
    let running = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new((Vec::new(), BTreeSet::new())));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (node, running, seen) = (node.clone(), running.clone(), seen.clone());
            thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let response = node.get("/function/app/sleep?ms=20");
                    let mut seen = seen.lock().unwrap();
                    if response.status == 200 {
                        let version = response
                            .body
                            .split_whitespace()
                            .find_map(|word| word.strip_prefix("version="))
                            .unwrap_or_default()
                            .to_owned();
                        seen.1.insert(version);
                    } else {
                        seen.0
                            .push(format!("{}: {}", response.status, response.body));
                    }
                }
            })
        })
        .collect();
    for version in ["2", "3"] {
        thread::sleep(Duration::from_millis(500));
        let update = app_deployment(&node, json!({ "envVars": { "VERSION": version } }));
        let response = send(
            node.admin("PUT", "/system/functions"),
            Some(update.to_string().as_bytes()),
        );
        assert_eq!(response.status, 200, "{}", response.body);
    }
    thread::sleep(Duration::from_millis(500));
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client thread");
    }
    let seen = seen.lock().unwrap();
    assert!(seen.0.is_empty(), "failed requests: {:?}", seen.0);
    assert!(seen.1.contains("1") && seen.1.contains("3"), "{:?}", seen.1);
    let last = node.get("/function/app");
    assert!(last.body.contains("version=3"), "{}", last.body);
}

#[test]
fn scale_sets_a_fixed_count_until_handed_back() {
    let node = Arc::new(node_with_app(json!({ "scaleDownDelay": "1s" })));
    let wisp = |args: &[&str]| node.cli(WISP).args(args).output().expect("run wisp scale");
    let output = wisp(&["scale", "app", "3"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        node.eventually(Duration::from_secs(20), || {
            status(&node)["availableReplicas"] == 3
        }),
        "three replicas ready"
    );
    // Scaling down lets the stopped replica finish what it has in flight.
    let slow: Vec<_> = (0..3)
        .map(|_| node.get_in_background("/function/app/sleep?ms=1500"))
        .collect();
    thread::sleep(Duration::from_millis(300));
    let output = wisp(&["scale", "app", "2"]);
    assert!(output.status.success(), "{output:?}");
    for request in slow {
        let response = request.join().expect("slow request");
        assert_eq!(response.status, 200, "{}", response.body);
    }
    assert!(
        node.eventually(Duration::from_secs(20), || replicas(&node) == 2),
        "down to two"
    );
    let output = wisp(&["scale", "app", "auto"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        node.eventually(Duration::from_secs(20), || replicas(&node) == 1),
        "back to minScale"
    );

    let refused = wisp(&["scale", "app", "500"]);
    assert!(!refused.status.success());
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    node.deploy_ok(json!({ "service": "probe", "kind": "wasm-http", "image": digest }));
    let refused = wisp(&["scale", "probe", "2"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no replicas to scale"), "{stderr}");
}

#[test]
fn sigterm_finishes_requests_in_flight_and_stops_the_replicas() {
    let node = node_with_app(json!({}));
    let replica = replica_of(&node.get("/function/app"));
    assert!(alive(&replica));
    let slow = node.get_in_background("/function/app/sleep?ms=1000");
    thread::sleep(Duration::from_millis(300));
    let (status, scratch) = node.stop();
    assert!(status.success(), "{status}");
    let slow = slow.join().expect("slow request");
    assert_eq!(
        slow.status, 200,
        "the request in flight finished: {}",
        slow.body
    );
    assert!(!alive(&replica), "the replica stopped with the node");

    // The app comes back with the node.
    let data_dir = scratch.path().join("data");
    let node = Node::start_with(WISP, scratch, data_dir, &[]);
    assert!(
        node.eventually(Duration::from_secs(20), || node.get("/function/app").status
            == 200),
        "the app serves after a restart"
    );
}

#[test]
fn over_the_limit_requests_wait_for_the_queue_timeout_then_get_429() {
    let node = node_with_probe(json!({ "maxConcurrency": 1, "queueTimeout": "300ms" }));
    let node = Arc::new(node);
    let pair = |path: &'static str| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let node = node.clone();
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(50 * i));
                    node.get(path)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("client"))
            .collect::<Vec<_>>()
    };
    // The second request waits for the first, which ends within the queue timeout.
    let quick = pair("/function/probe/sleep?ms=100");
    assert!(
        quick.iter().all(|response| response.status == 200),
        "{quick:?}"
    );
    // The first outlasts the queue timeout, so the second is turned away.
    let slow = pair("/function/probe/sleep?ms=1500");
    let rejected = slow
        .iter()
        .find(|response| response.status == 429)
        .unwrap_or_else(|| panic!("one is turned away: {slow:?}"));
    assert_eq!(rejected.header("retry-after"), Some("1"));
    assert!(
        rejected.error().contains("waited 300ms"),
        "{}",
        rejected.error()
    );
}

#[test]
fn a_spike_on_one_function_leaves_room_for_the_others() {
    // Four wasm instances in all: a function without its own limit may use two.
    let node = Arc::new(Node::start_args(WISP, &["--max-instances", "4"]));
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    for name in ["greedy", "quiet"] {
        node.deploy_ok(json!({ "service": name, "kind": "wasm-http", "image": digest }));
    }
    let spike: Vec<_> = (0..6)
        .map(|_| {
            let node = node.clone();
            thread::spawn(move || node.get("/function/greedy/sleep?ms=1500").status)
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let response = node.get("/function/quiet");
        assert_eq!(response.status, 200, "{}", response.body);
    }
    let statuses: Vec<u16> = spike
        .into_iter()
        .map(|client| client.join().expect("client"))
        .collect();
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        2,
        "greedy ran at its share: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|status| [200, 429].contains(status)),
        "{statuses:?}"
    );
}

#[test]
fn a_namespace_limit_is_shared_by_its_functions() {
    let node = Node::start_args(WISP, &["--namespace-max-concurrency", "1"]);
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    for name in ["one", "two"] {
        node.deploy_ok(json!({ "service": name, "kind": "wasm-http", "image": digest }));
    }
    let slow = node.get_in_background("/function/one/sleep?ms=1000");
    thread::sleep(Duration::from_millis(200));
    let rejected = node.get("/function/two");
    assert_eq!(rejected.status, 429, "{}", rejected.body);
    assert!(
        rejected.error().contains("namespace default"),
        "{}",
        rejected.error()
    );
    assert_eq!(slow.join().expect("slow request").status, 200);
    assert_eq!(node.get("/function/two").status, 200);
}
