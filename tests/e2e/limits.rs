//! Guests that fail, loop, sleep, or grow are contained: the right status,
//! within the deadline, and the node keeps serving everyone else.

use std::time::{Duration, Instant};

use serde_json::json;
use wisp_testing::{Node, send};

use crate::{WISP, assert_none_left, node_with_probe};

/// How far past its timeout an invocation may end.
const SLACK: Duration = Duration::from_millis(100);

#[test]
fn a_trapping_guest_is_a_502() {
    let node = node_with_probe(json!({}));
    let response = node.get("/function/probe/trap");
    assert_eq!(response.status, 502, "{}", response.body);
    assert!(
        response.error().contains("function probe"),
        "{}",
        response.error()
    );
    assert_eq!(
        node.get("/function/probe").status,
        200,
        "the next request gets a fresh instance"
    );
}

#[test]
fn a_guest_that_grows_past_its_memory_limit_is_a_502() {
    let node = node_with_probe(json!({ "memory": "16MiB" }));
    assert_eq!(
        node.get("/function/probe/grow?mib=4").status,
        200,
        "within the limit"
    );
    let response = node.get("/function/probe/grow?mib=64");
    assert_eq!(response.status, 502, "{}", response.body);
    assert!(
        response.error().contains("memory limit"),
        "{}",
        response.error()
    );
}

#[test]
fn a_guest_that_burns_all_its_fuel_is_a_502() {
    let node = node_with_probe(json!({ "fuel": 200_000_000u64, "timeout": "60s" }));
    let echo = node.post("/function/probe", b"fuelled");
    assert_eq!(echo.status, 200, "enough fuel for a call: {}", echo.body);
    let looping = node.get("/function/probe/loop");
    assert_eq!(looping.status, 502, "{}", looping.body);
    assert!(
        looping
            .error()
            .contains("used all of its fuel (200000000 units)"),
        "{}",
        looping.body
    );
    let status = send(node.admin("GET", "/system/function/probe"), None).json();
    assert_eq!(status["fuel"], 200_000_000u64, "{status}");
    // The same component without fuel runs beside it, on the engine that
    // does not count fuel.
    let digest = status["image"].as_str().unwrap();
    node.deploy_ok(json!({ "service": "plain", "kind": "wasm-http", "image": digest }));
    assert_eq!(node.post("/function/plain", b"x").status, 200);
    assert_eq!(node.post("/function/probe", b"x").status, 200);
}

#[test]
fn looping_and_sleeping_guests_time_out_and_are_stopped() {
    let node = node_with_probe(json!({ "timeout": "500ms" }));
    for path in ["/function/probe/loop", "/function/probe/sleep?ms=5000"] {
        let started = Instant::now();
        let response = node.get(path);
        let elapsed = started.elapsed();
        assert_eq!(response.status, 504, "{path}: {}", response.body);
        assert!(
            response.error().contains("timed out"),
            "{}",
            response.error()
        );
        assert!(
            elapsed < Duration::from_millis(500) + SLACK,
            "{path} answered after {elapsed:?}"
        );
    }
    let active =
        || send(node.admin("GET", "/system/info"), None).json()["activeInvocations"].as_u64();
    assert!(
        node.eventually(Duration::from_secs(2), || active() == Some(0)),
        "the instances are gone"
    );
}

#[test]
fn eight_looping_guests_time_out_on_time_while_others_are_served() {
    let node = node_with_probe(json!({ "timeout": "1s" }));
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    node.deploy_ok(json!({ "service": "healthy", "kind": "wasm-http", "image": digest }));
    let node = std::sync::Arc::new(node);
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let node = node.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let status = node.get("/function/probe/loop").status;
                (status, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut healthy = 0;
    while loops.iter().any(|handle| !handle.is_finished()) {
        let response = node.get("/function/healthy");
        assert_eq!(
            response.status, 200,
            "a healthy function keeps answering: {}",
            response.body
        );
        healthy += 1;
    }
    assert!(healthy > 0);
    for handle in loops {
        let (status, elapsed) = handle.join().unwrap();
        assert_eq!(status, 504);
        assert!(
            elapsed < Duration::from_secs(1) + SLACK,
            "a looping guest answered after {elapsed:?}"
        );
    }
}

#[test]
fn stdio_guests_and_processes_that_fail_are_502_with_stderr_in_the_log() {
    let node = Node::start(WISP);
    let digest = node.upload_file(wisp_testing::STDIO_PROBE);
    node.deploy_ok(
        json!({ "service": "stdio", "kind": "wasm-stdio", "image": digest, "timeout": "500ms" }),
    );
    node.deploy_ok(
        json!({ "service": "fails", "kind": "process", "envProcess": "sh -c", "timeout": "500ms" }),
    );

    let exit = node.post("/function/stdio", b"exit 3");
    assert_eq!(exit.status, 502, "{}", exit.body);
    // WASI 0.2's stable `exit` reports only success or failure: any non-zero status is 1.
    assert!(
        exit.error().contains("exited with status 1"),
        "{}",
        exit.error()
    );
    assert!(
        !exit.body.contains("exiting with status"),
        "STDERR stays out of the response"
    );
    assert!(
        node.eventually(Duration::from_secs(2), || node
            .log()
            .contains("exiting with status 3 as asked")),
        "STDERR is in the log"
    );

    assert_eq!(node.post("/function/stdio", b"trap").status, 502);
    let started = Instant::now();
    assert_eq!(node.post("/function/stdio", b"loop").status, 504);
    assert!(started.elapsed() < Duration::from_millis(500) + SLACK);

    let failing = node.post("/function/fails", b"");
    assert_eq!(
        failing.status, 502,
        "`sh -c` without a script fails: {}",
        failing.body
    );
}

#[test]
fn a_process_that_exits_non_zero_is_a_502_and_one_that_hangs_is_killed() {
    let node = Node::start(WISP);
    let script = |body: &str| node.upload(&wisp_testing::script_archive("run.sh", body));
    let failing = script("#!/bin/sh\necho secret-detail >&2\necho partial\nexit 7\n");
    node.deploy_ok(json!({ "service": "failing", "kind": "process", "image": failing, "envProcess": "./run.sh" }));
    let response = node.post("/function/failing", b"");
    assert_eq!(response.status, 502);
    assert!(
        response.error().contains("exited with status 7"),
        "{}",
        response.error()
    );
    assert!(
        !response.body.contains("secret-detail"),
        "STDERR stays out of the response"
    );
    assert!(node.eventually(Duration::from_secs(2), || {
        node.log().contains("secret-detail")
    }));

    let hanging = script("#!/bin/sh\nsleep 60 &\nsleep 30\n");
    node.deploy_ok(json!({ "service": "hanging", "kind": "process", "image": hanging, "envProcess": "./run.sh", "timeout": "300ms" }));
    let started = Instant::now();
    assert_eq!(node.post("/function/hanging", b"").status, 504);
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK);
    assert_none_left(
        &node,
        Duration::from_secs(2),
        "the child was killed with it",
    );
}

#[test]
fn bodies_over_the_limit_are_413() {
    let node = node_with_probe(json!({ "maxBodySize": "1KiB" }));
    assert_eq!(node.post("/function/probe", &[b'x'; 1024]).status, 200);
    let declared = node.post("/function/probe", &[b'x'; 1025]);
    assert_eq!(declared.status, 413, "{}", declared.body);
    assert!(declared.error().contains("1KiB"), "{}", declared.error());
    let chunked = send(node.request("POST", "/function/probe"), None);
    assert_eq!(chunked.status, 200);
    let streamed = node
        .request("POST", "/function/probe")
        .send(std::io::Read::take(std::io::repeat(b'y'), 4096));
    let status = match streamed {
        Ok(response) => response.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(
        status, 413,
        "a chunked body without a length is bounded too"
    );
    assert_eq!(node.get("/function/probe").status, 200);
}

#[test]
fn max_concurrency_answers_429_with_retry_after() {
    let node = node_with_probe(json!({ "maxConcurrency": 1, "timeout": "5s" }));
    let sleeper = node.get_in_background("/function/probe/sleep?ms=1500");
    let info =
        || send(node.admin("GET", "/system/info"), None).json()["activeInvocations"].as_u64();
    assert!(node.eventually(Duration::from_secs(5), || info() == Some(1)));
    let rejected = node.get("/function/probe");
    assert_eq!(rejected.status, 429, "{}", rejected.body);
    assert_eq!(rejected.header("retry-after"), Some("1"));
    assert_eq!(sleeper.join().unwrap().status, 200);
    assert_eq!(node.get("/function/probe").status, 200);
}

#[test]
fn slow_and_huge_request_heads_cannot_starve_the_gateway() {
    use std::io::{ErrorKind, Read as _, Write as _};
    let node = Node::start_args(WISP, &["--header-read-timeout", "1s"]);
    let address = node.url.trim_start_matches("http://").to_owned();
    // Slowloris: many connections, each sending its head a line at a time.
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            stream
        })
        .collect();
    for _ in 0..15 {
        assert_eq!(node.get("/healthz").status, 200, "served alongside");
        for stream in &mut slow {
            // Trickling more header lines does not buy more time.
            let _ = stream.write_all(b"X-Slow: 1\r\n");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let open = slow
        .iter()
        .filter(|stream| {
            let mut stream: &std::net::TcpStream = stream;
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut answer = [0; 256];
            // Closed (EOF or a reset), or answered 408 and closed: all but a read timeout.
            stream.read(&mut answer).is_err_and(|error| {
                matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
            })
        })
        .count();
    assert_eq!(open, 0, "every slow connection was closed");

    // A head over the limit is refused with 431 and the node serves on.
    let mut huge = std::net::TcpStream::connect(&address).unwrap();
    let header = format!("X-Big: {}\r\n", "a".repeat(100 << 10));
    let _ = huge.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{header}\r\n").as_bytes());
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(node.get("/healthz").status, 200);
}

/// What `/metrics` counts of the compile cache's misses: Cranelift's
/// compilations, done in the background after Winch's.
fn compiled(node: &Node) -> Option<u64> {
    let metrics = send(node.admin("GET", "/metrics"), None).body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("wisp_compile_cache_misses_total "))
        .and_then(|count| count.trim().parse().ok())
}

#[test]
fn a_new_components_limits_hold_on_winchs_code_and_on_cranelifts_after() {
    // A node's first deploy of a component serves at once with Winch's
    // code while Cranelift compiles; the same calls are made before and
    // after Cranelift's code takes over, and give the same answers.
    let node = node_with_probe(json!({ "timeout": "500ms", "memory": "16MiB" }));
    let calls = |tier: &str| {
        let echo = node.post("/function/probe", b"same");
        assert_eq!(echo.status, 200, "{tier}: {}", echo.body);
        assert!(echo.body.contains("body=same\n"), "{tier}: {}", echo.body);
        let looping = node.get("/function/probe/loop");
        assert_eq!(looping.status, 504, "{tier}: {}", looping.body);
        let bomb = node.get("/function/probe/grow?mib=64");
        assert_eq!(bomb.status, 502, "{tier}: {}", bomb.body);
        assert!(
            bomb.error().contains("memory limit"),
            "{tier}: {}",
            bomb.error()
        );
        assert_eq!(node.get("/function/probe/trap").status, 502, "{tier}");
    };
    calls("first calls");
    assert!(
        node.eventually(Duration::from_secs(60), || compiled(&node) == Some(1)),
        "Cranelift's code is compiled and cached: {:?}",
        compiled(&node)
    );
    calls("on Cranelift's code");
    // A second function of the same artifact uses the cached code at once.
    let digest = send(node.admin("GET", "/system/function/probe"), None).json()["image"]
        .as_str()
        .unwrap()
        .to_owned();
    node.deploy_ok(json!({ "service": "again", "kind": "wasm-http", "image": digest }));
    assert_eq!(node.post("/function/again", b"x").status, 200);
    assert_eq!(compiled(&node), Some(1), "compiled once");
}
