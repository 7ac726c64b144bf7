//! Items 8, 9, 10 and 17: a component's memories count together against its
//! `memory`, a streaming response keeps its concurrency slots until its body
//! is done, request bodies are bounded in size by the node and in time by
//! `--body-read-timeout`, and what an instance leaves in its memory no later
//! instance reads.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::json;
use wisp_testing::{Node, send};

use crate::{WISP, deploy_probe};

/// The node's `host:port`.
fn address(node: &Node) -> String {
    node.url.trim_start_matches("http://").to_owned()
}

/// Invocations running on the node, as `/system/info` counts them.
fn active(node: &Node) -> Option<u64> {
    send(node.admin("GET", "/system/info"), None).json()["activeInvocations"].as_u64()
}

/// Reads a response head (up to its blank line) from `stream`, waiting up to `within`.
fn read_head(stream: &mut TcpStream, within: Duration) -> String {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(error) => panic!(
                "no response head within {within:?} ({error}); so far: {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Item 8: two core instances, each growing its own memory by 12 MiB, stay
/// within a 16 MiB limit one memory at a time but not together.
#[test]
fn memories_of_several_core_instances_count_together_against_the_limit() {
    let node = Node::start(WISP);
    let digest = node.upload(&wisp_testing::many_memories(2, 12));
    node.deploy_ok(
        json!({ "service": "roomy", "kind": "wasm-stdio", "image": digest, "memory": "64MiB" }),
    );
    let roomy = node.post("/function/roomy", b"");
    assert_eq!(roomy.status, 200, "24 MiB fit in 64 MiB: {}", roomy.body);

    node.deploy_ok(
        json!({ "service": "tight", "kind": "wasm-stdio", "image": digest, "memory": "16MiB" }),
    );
    let tight = node.post("/function/tight", b"");
    assert_eq!(
        tight.status, 502,
        "24 MiB in all is over 16 MiB: {}",
        tight.body
    );
    assert!(tight.error().contains("memory limit"), "{}", tight.error());
    assert_eq!(
        node.post("/function/roomy", b"").status,
        200,
        "the node serves on"
    );

    // The metered engine (functions with fuel) has no pool, and the same limit.
    node.deploy_ok(json!({
        "service": "metered", "kind": "wasm-stdio", "image": digest, "memory": "16MiB",
        "fuel": 1_000_000u64,
    }));
    let metered = node.post("/function/metered", b"");
    assert_eq!(metered.status, 502, "{}", metered.body);
    assert!(
        metered.error().contains("memory limit"),
        "{}",
        metered.error()
    );
}

/// Item 8: a component with more memories or core instances than one
/// instance may hold is refused at deploy, naming the maximum, instead of
/// taking a share of the pool out of proportion.
#[test]
fn a_component_with_too_many_memories_is_refused_at_deploy() {
    let node = Node::start(WISP);
    let digest = node.upload(&wisp_testing::many_memories(16, 0));
    let refused =
        node.deploy(json!({ "service": "hoarder", "kind": "wasm-stdio", "image": digest }));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("16 Wasm linear memories")
            && refused.error().contains("maximum of 4"),
        "{}",
        refused.error()
    );
    let digest = node.upload(&wisp_testing::many_memories(64, 0));
    let refused =
        node.deploy(json!({ "service": "hoarder", "kind": "wasm-stdio", "image": digest }));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("65 core module instances")
            && refused.error().contains("maximum of 32"),
        "{}",
        refused.error()
    );
    let listed = send(node.admin("GET", "/system/functions"), None).json();
    assert_eq!(listed, json!([]), "nothing was deployed");
}

/// Item 9: while a response body still streams from its guest, the call
/// holds its function's and its namespace's slots; a client that goes away
/// mid-body gives them back.
#[test]
fn a_streaming_response_holds_its_slots_until_its_body_is_done() {
    let node = Node::start_args(WISP, &["--namespace-max-concurrency", "1"]);
    deploy_probe(&node, json!({ "maxConcurrency": 1, "timeout": "60s" }));
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    node.deploy_ok(json!({ "service": "sibling", "kind": "wasm-http", "image": digest }));
    node.deploy_ok(json!({
        "service": "bystander", "namespace": "others", "kind": "wasm-http", "image": digest,
    }));

    // A body of 1,000 lines, one every 50 ms: it streams for longer than the test runs.
    let mut streaming = TcpStream::connect(address(&node)).unwrap();
    streaming
        .write_all(b"GET /function/probe/stream?chunks=1000&ms=50 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = read_head(&mut streaming, Duration::from_secs(10));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut first = [0; 8];
    streaming.read_exact(&mut first).unwrap();

    let same = node.get("/function/probe");
    assert_eq!(
        same.status, 429,
        "the function's one slot is taken: {}",
        same.body
    );
    let sibling = node.get("/function/sibling");
    assert_eq!(
        sibling.status, 429,
        "the namespace's one slot is taken: {}",
        sibling.body
    );
    assert!(sibling.error().contains("namespace"), "{}", sibling.error());
    assert_eq!(active(&node), Some(1), "one instance is live");
    assert_eq!(
        node.get("/function/bystander.others").status,
        200,
        "another namespace is served"
    );

    // The client goes away mid-body: the guest's next write fails, and the slots come back.
    drop(streaming);
    assert!(
        node.eventually(Duration::from_secs(10), || node
            .get("/function/probe")
            .status
            == 200),
        "the slot is released once the body is dropped"
    );
    assert_eq!(node.get("/function/sibling").status, 200);
    assert!(node.eventually(Duration::from_secs(5), || active(&node) == Some(0)));
}

/// Item 9: a finished stream gives its slot back before its end reaches
/// the client, so the client's next call runs.
#[test]
fn a_finished_stream_gives_its_slot_back() {
    let node = Node::start(WISP);
    deploy_probe(&node, json!({ "maxConcurrency": 1, "timeout": "10s" }));
    let streamed = node.get("/function/probe/stream?chunks=3&ms=10");
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.body, "chunk 0\nchunk 1\nchunk 2\n");
    for _ in 0..20 {
        let next = node.get("/function/probe/stream?chunks=2&ms=1");
        assert_eq!(
            next.status, 200,
            "the slot is free once a body has ended: {}",
            next.body
        );
    }
}

/// Item 10: a function cannot declare a body limit above the node's.
#[test]
fn a_body_limit_above_the_nodes_is_refused() {
    let node = Node::start(WISP);
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    let refused = node.deploy(json!({
        "service": "greedy", "kind": "wasm-http", "image": digest, "maxBodySize": "1GiB",
    }));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("1GiB") && refused.error().contains("32MiB"),
        "names the asked size and the node's limit: {}",
        refused.error()
    );
    node.deploy_ok(json!({
        "service": "greedy", "kind": "wasm-http", "image": digest, "maxBodySize": "32MiB",
    }));
    assert_eq!(node.post("/function/greedy", b"fits").status, 200);
}

/// Item 10: a client that sends its head, then trickles its body or stops
/// sending, gets 408 once `--body-read-timeout` passes, and its slot is given
/// back, while others are served all along.
#[test]
fn a_trickled_or_stalled_body_is_cut_off_with_408() {
    let node = Node::start_args(WISP, &["--body-read-timeout", "1s"]);
    deploy_probe(&node, json!({ "timeout": "60s" }));
    let head = b"POST /function/probe HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
    let mut trickling = TcpStream::connect(address(&node)).unwrap();
    trickling.write_all(head).unwrap();
    let mut stalled = TcpStream::connect(address(&node)).unwrap();
    stalled.write_all(head).unwrap();
    stalled.write_all(b"only this much").unwrap();

    // Ten bytes a second would take a day; meanwhile others are served.
    let started = Instant::now();
    trickling.set_nonblocking(true).unwrap();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        let _ = trickling.write_all(b"x");
        assert_eq!(node.post("/function/probe", b"bystander").status, 200);
        let mut buffer = [0; 1024];
        match trickling.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(error) => panic!("{error}"),
        }
        if answer.windows(4).any(|window| window == b"\r\n\r\n") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "trickled: {answer:?}");

    let stalled_head = read_head(&mut stalled, Duration::from_secs(20));
    assert!(
        stalled_head.starts_with("HTTP/1.1 408"),
        "stalled: {stalled_head}"
    );
    let mut rest = String::new();
    let _ = stalled.read_to_string(&mut rest);
    let json = &rest[rest.find('{').unwrap_or(0)..=rest.rfind('}').unwrap_or(0)];
    let error: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|_| panic!("a JSON error: {rest}"));
    assert!(
        error["error"].as_str().unwrap_or_default().contains("1s"),
        "names the deadline: {error}"
    );
    assert!(
        node.eventually(Duration::from_secs(5), || active(&node) == Some(0)),
        "no call is left holding a slot"
    );
}

/// Item 10: a body is read before the call takes any slot, so a client
/// that trickles its body to a function at its limit (reconnecting after
/// each 408) keeps no one else out: only its connection is held. (Were the
/// slot taken first, either the others or the trickler would get 429.)
#[test]
fn a_trickled_body_holds_no_slot() {
    let node = Node::start_args(WISP, &["--body-read-timeout", "2s"]);
    deploy_probe(&node, json!({ "maxConcurrency": 1, "timeout": "60s" }));
    let head = b"POST /function/probe HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
    for round in 0..2 {
        let mut trickling = TcpStream::connect(address(&node)).unwrap();
        trickling.write_all(head).unwrap();
        trickling.set_nonblocking(true).unwrap();
        let mut answer = Vec::new();
        let mut served = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
            assert!(Instant::now() < deadline, "no 408 for the trickled body");
            let _ = trickling.write_all(b"x");
            let other = node.post("/function/probe", b"bystander");
            assert_eq!(
                other.status, 200,
                "round {round}: a trickled body holds no slot: {}",
                other.body
            );
            served += 1;
            let mut buffer = [0; 1024];
            match trickling.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => answer.extend_from_slice(&buffer[..read]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => panic!("{error}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408"), "trickled: {answer:?}");
        assert!(served > 1, "others were served while the body trickled");
    }
}

/// Item 9, async calls: a guest that answers at once and runs on keeps its
/// worker (and its share of `asyncConcurrency`) until it is done, so no
/// more of its instances live at once than `asyncConcurrency` allows.
#[test]
fn an_async_call_holds_its_worker_until_its_guest_is_done() {
    let node = Node::start(WISP);
    deploy_probe(&node, json!({ "asyncConcurrency": 1 }));
    let enqueue = || {
        let response = node.post("/async-function/probe/linger?ms=1500", b"");
        assert_eq!(response.status, 202, "{}", response.body);
        response.header("x-call-id").unwrap().to_owned()
    };
    let ids = [enqueue(), enqueue()];

    // Each guest answers with the time it started, and logs the time it stopped.
    let mut spans = Vec::new();
    for id in &ids {
        let mut call = serde_json::Value::Null;
        let done = node.eventually(Duration::from_secs(30), || {
            call = send(node.admin("GET", &format!("/system/calls/{id}")), None).json();
            call["status"] == "succeeded"
        });
        assert!(done, "{call}");
        let body = call["result"]["body"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let started: u128 = body
            .trim()
            .strip_prefix("started at ")
            .and_then(|millis| millis.parse().ok())
            .unwrap_or_else(|| panic!("the start time: {body:?}"));
        let mut stopped = None;
        let logged = node.eventually(Duration::from_secs(30), || {
            let logs = send(node.admin("GET", "/system/logs?name=probe"), None);
            stopped = logs.body.lines().find_map(|line| {
                let line: serde_json::Value = serde_json::from_str(line).ok()?;
                (line["callId"] == id.as_str() && line["stream"] == "stderr")
                    .then(|| {
                        line["message"]
                            .as_str()?
                            .strip_prefix("lingered until ")?
                            .parse()
                            .ok()
                    })
                    .flatten()
            });
            stopped.is_some()
        });
        assert!(logged, "call {id} logged when its guest stopped");
        spans.push((started, stopped.unwrap()));
    }
    spans.sort();
    assert!(
        spans[1].0 >= spans[0].1,
        "the second guest started only once the first was done: {spans:?}"
    );
}

/// Item 8: the instance pool holds `--max-instances` instances of the
/// largest component the node accepts, so calls of one that has the most
/// memories and core instances allowed, in flight up to its
/// `maxConcurrency`, leave room for other tenants' calls.
#[test]
fn a_component_at_the_maxima_leaves_room_in_the_pool() {
    let node = Node::start_args(WISP, &["--max-instances", "8"]);
    // The most memories a component may have (`wisp_runtime::wasm::MAX_MEMORIES`).
    let digest = node.upload(&wisp_testing::many_memories_spinning(4));
    node.deploy_ok(json!({
        "service": "hoarder", "namespace": "greedy", "kind": "wasm-stdio", "image": digest,
        "maxConcurrency": 4, "timeout": "60s",
    }));
    deploy_probe(&node, json!({}));
    let _spinning: Vec<_> = (0..4)
        .map(|_| node.get_in_background("/function/hoarder.greedy"))
        .collect();
    assert!(
        node.eventually(Duration::from_secs(20), || active(&node) == Some(4)),
        "four calls of the hoarder are in flight"
    );
    for _ in 0..10 {
        let other = node.get("/function/probe");
        assert_eq!(other.status, 200, "the pool has room: {}", other.body);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(active(&node), Some(4), "the hoarder's calls still run");
}

/// Item 17: what an instance leaves in its memory, no later instance in its
/// pool slot reads, whoever's function that instance serves. The probe leaves
/// a secret on every page of 2 MiB of zeroed memory (more than a slot's pages
/// reset in place: the rest goes back to the kernel) and on a page of the
/// component's data, and says what it found there first.
#[test]
fn what_an_instance_leaves_in_its_memory_no_later_instance_reads() {
    let node = Node::start(WISP);
    deploy_probe(&node, json!({}));
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    node.deploy_ok(json!({
        "service": "probe", "namespace": "others", "kind": "wasm-http", "image": digest,
    }));
    let remember = |function: &str, secret: &str| {
        let response = node.get(&format!("/function/{function}/remember?secret={secret}"));
        assert_eq!(response.status, 200, "{}", response.body);
        response.body
    };
    for round in 0..20 {
        for function in ["probe", "probe.others"] {
            assert_eq!(
                remember(function, &format!("{function}-{round}")),
                "seen=\n",
                "round {round} of {function}"
            );
        }
    }
    // Instances in flight at once take several slots, and reuse them.
    std::thread::scope(|scope| {
        for client in 0..8 {
            scope.spawn(move || {
                let function = ["probe", "probe.others"][client % 2];
                for round in 0..10 {
                    assert_eq!(
                        remember(function, &format!("client{client}-{round}")),
                        "seen=\n",
                        "client {client}, round {round} of {function}"
                    );
                }
            });
        }
    });
}
