//! Events: async calls on the durable queue, retries and dead letters,
//! callbacks, `async_concurrency`, cron triggers as CloudEvents, and a node
//! killed with 1,000 calls in its queue.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use wisp_testing::{Node, send};

use crate::{WISP, deploy_probe, node_with_probe};

/// `POST /async-function/{path}` with `headers`; the call id, after checking the 202.
fn enqueue(node: &Node, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let mut request = node.request("POST", &format!("/async-function/{path}"));
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = send(request, Some(body));
    assert_eq!(response.status, 202, "{}", response.body);
    response.header("x-call-id").expect("X-Call-Id").to_owned()
}

fn call(node: &Node, id: &str) -> Value {
    send(node.admin("GET", &format!("/system/calls/{id}")), None).json()
}

fn calls(node: &Node, query: &str) -> Vec<Value> {
    let response = send(node.admin("GET", &format!("/system/calls?{query}")), None);
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["calls"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until call `id` reaches `status` and returns it.
fn wait_for(node: &Node, id: &str, status: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    let reached = node.eventually(within, || {
        last = call(node, id);
        last["status"] == status
    });
    assert!(reached, "call {id} should become {status}: {last}");
    last
}

fn queue_info(node: &Node) -> Value {
    send(node.admin("GET", "/system/info"), None).json()["queue"].clone()
}

#[test]
fn an_async_call_runs_the_stored_request_and_keeps_its_result() {
    let node = node_with_probe(json!({}));
    let id = enqueue(
        &node,
        "probe/items/1?full=true",
        &[("X-Tag", "blue"), ("Content-Type", "text/plain")],
        b"hello",
    );
    let done = wait_for(&node, &id, "succeeded", Duration::from_secs(10));
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(done["source"], "http");
    let result = &done["result"];
    assert_eq!(result["status"], 200);
    let body = result["body"].as_str().unwrap();
    for expected in [
        "method=POST",
        "path=/items/1",
        "query=full=true",
        "header x-tag=blue",
        "body=hello",
    ] {
        assert!(body.contains(expected), "`{expected}` in {body}");
    }
    assert!(done["finishedAt"].is_string());

    // The CLI queues a call and prints its id; `wisp calls` lists it.
    let output = node
        .cli(WISP)
        .args(["invoke", "probe", "--async"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let cli_id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    wait_for(&node, &cli_id, "succeeded", Duration::from_secs(10));
    let listed = node.cli(WISP).args(["calls", "probe"]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains(&cli_id) && listed.contains(&id), "{listed}");
    let shown = node
        .cli(WISP)
        .args(["calls", "show", &id])
        .output()
        .unwrap();
    assert!(
        String::from_utf8(shown.stdout)
            .unwrap()
            .contains("status:          succeeded")
    );
}

#[test]
fn bad_async_calls_are_refused_and_nothing_is_stored() {
    let node = node_with_probe(json!({}));
    let unknown = node.post("/async-function/nope", b"x");
    assert_eq!(unknown.status, 404);
    assert!(unknown.error().contains("nope"), "{}", unknown.error());
    for url in ["not a url", "ftp://example.com/x", "/relative"] {
        let response = send(
            node.request("POST", "/async-function/probe")
                .set("X-Callback-Url", url),
            Some(b"x"),
        );
        assert_eq!(response.status, 400, "{url}: {}", response.body);
        assert!(
            response.error().contains("X-Callback-Url"),
            "{}",
            response.error()
        );
    }
    assert!(calls(&node, "").is_empty(), "refused calls are not stored");

    let id = enqueue(&node, "probe", &[("X-Call-Id", "same-id")], b"");
    assert_eq!(id, "same-id");
    let again = send(
        node.request("POST", "/async-function/probe")
            .set("X-Call-Id", "same-id"),
        Some(b""),
    );
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(call(&node, "nope")["error"], "no call nope");
    let bad = send(node.admin("GET", "/system/calls?status=lost"), None);
    assert_eq!(bad.status, 400);
}

#[test]
fn failed_attempts_are_retried_then_dead_and_retried_by_hand() {
    let node = node_with_probe(json!({ "retries": 2, "retryBackoff": "50ms" }));
    let id = enqueue(&node, "probe/status?code=503", &[], b"");
    let dead = wait_for(&node, &id, "dead", Duration::from_secs(10));
    assert_eq!(
        dead["attempts"], 3,
        "the first attempt and 2 retries: {dead}"
    );
    assert_eq!(dead["error"], "the function answered 503");
    assert_eq!(dead["result"]["status"], 503);
    let info = queue_info(&node);
    assert_eq!(
        (info["dead"].clone(), info["retries"].clone()),
        (json!(1), json!(2)),
        "{info}"
    );

    // A 4xx is the caller's mistake: no retry.
    let failed = enqueue(&node, "probe/status?code=404", &[], b"");
    let failed = wait_for(&node, &failed, "failed", Duration::from_secs(10));
    assert_eq!(failed["attempts"], 1, "{failed}");

    let listed = node.cli(WISP).args(["calls", "--dead"]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains(&id), "{listed}");
    assert_eq!(listed.lines().count(), 2, "only the dead letter: {listed}");

    let retried = node
        .cli(WISP)
        .args(["calls", "retry", &id])
        .output()
        .unwrap();
    assert!(retried.status.success(), "{retried:?}");
    let dead = wait_for(&node, &id, "dead", Duration::from_secs(10));
    assert_eq!(dead["attempts"], 3, "fresh attempts: {dead}");
    let queued = send(node.admin("POST", "/system/calls/missing/retry"), None);
    assert_eq!(queued.status, 404);
    let not_finished = node
        .cli(WISP)
        .args(["calls", "retry", "missing"])
        .output()
        .unwrap();
    assert!(!not_finished.status.success());
    assert_eq!(
        String::from_utf8(not_finished.stderr)
            .unwrap()
            .lines()
            .count(),
        1,
        "one plain line"
    );
}

#[test]
fn an_async_timeout_is_its_own_and_a_timeout_is_retried() {
    let node = node_with_probe(
        json!({ "timeout": "100ms", "asyncTimeout": "2s", "retries": 1, "retryBackoff": "50ms" }),
    );
    // Too slow for the sync timeout, fine for the async one.
    assert_eq!(node.get("/function/probe/sleep?ms=400").status, 504);
    let slow = enqueue(&node, "probe/sleep?ms=400", &[], b"");
    wait_for(&node, &slow, "succeeded", Duration::from_secs(10));
    let hung = enqueue(&node, "probe/loop", &[], b"");
    let dead = wait_for(&node, &hung, "dead", Duration::from_secs(20));
    assert_eq!(dead["attempts"], 2, "{dead}");
    assert!(
        dead["error"].as_str().unwrap().contains("timed out"),
        "{dead}"
    );
}

/// An HTTP server that answers callbacks with `statuses` in turn (200 when
/// they run out) and keeps each request's head and body.
struct Sink {
    url: String,
    received: Arc<Mutex<Vec<(String, String)>>>,
}

impl Sink {
    fn start(statuses: Vec<u16>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/done", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = received.clone();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .and_then(|length| length.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                kept.lock()
                    .unwrap()
                    .push((head, String::from_utf8_lossy(&body).into_owned()));
                let status = statuses.next().unwrap_or(200);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Self { url, received }
    }
}

#[test]
fn the_result_is_posted_to_the_callback_url_until_it_is_taken() {
    // The sink listens on loopback, which callbacks may reach only when the operator opens it.
    let node = Node::start_args(WISP, &["--allow-egress", "127.0.0.0/8"]);
    deploy_probe(&node, json!({}));
    let sink = Sink::start(vec![500]);
    let id = enqueue(
        &node,
        "probe/cb",
        &[("X-Callback-Url", sink.url.as_str())],
        b"payload",
    );
    let delivered = node.eventually(Duration::from_secs(15), || {
        call(&node, &id)["callbackStatus"] == "delivered"
    });
    assert!(delivered, "{}", call(&node, &id));
    let received = sink.received.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "refused once, then taken");
    let (head, body) = &received[1];
    assert!(head.starts_with("post /done "), "{head}");
    assert!(head.contains(&format!("x-call-id: {id}")), "{head}");
    assert!(head.contains("x-function-status: 200"), "{head}");
    assert!(head.contains("x-function-name: probe.default"), "{head}");
    assert!(body.contains("body=payload"), "{body}");
    assert_eq!(queue_info(&node)["callbacksDelivered"], 1);
}

#[test]
fn async_concurrency_bounds_a_functions_parallel_calls() {
    let node = node_with_probe(json!({ "asyncConcurrency": 1 }));
    let ids: Vec<String> = (0..4)
        .map(|_| enqueue(&node, "probe/sleep?ms=200", &[], b""))
        .collect();
    let mut spans = Vec::new();
    for id in &ids {
        let done = wait_for(&node, id, "succeeded", Duration::from_secs(15));
        let at = |field: &str| {
            chrono::DateTime::parse_from_rfc3339(done[field].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        };
        spans.push((at("startedAt"), at("finishedAt")));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "one at a time, in order: {spans:?}");
    }
}

#[test]
fn cron_triggers_hand_over_cloudevents_and_show_in_describe() {
    let node = node_with_probe(json!({ "triggers": [{ "cron": "@every 1s" }] }));
    let mut fired = Vec::new();
    let enough = node.eventually(Duration::from_secs(10), || {
        fired = calls(&node, "function=probe&status=succeeded");
        fired.len() >= 2
    });
    assert!(enough, "two ticks in 10s: {fired:?}");
    let tick = &fired[0];
    assert_eq!(tick["source"], "cron \"@every 1s\"");
    let body = tick["result"]["body"].as_str().unwrap();
    for expected in [
        "method=POST",
        "path=/\n",
        "header ce-specversion=1.0",
        "header ce-type=dev.wisp.cron.tick",
        "header ce-source=/triggers/default/probe",
        "header ce-subject=@every 1s",
        "header ce-time=",
    ] {
        assert!(body.contains(expected), "`{expected}` in {body}");
    }
    let described = node.cli(WISP).args(["describe", "probe"]).output().unwrap();
    let described = String::from_utf8(described.stdout).unwrap();
    assert!(
        described.contains("trigger:")
            && described.contains("cron \"@every 1s\": scheduled, next "),
        "{described}"
    );
    assert!(queue_info(&node)["triggerFirings"].as_u64().unwrap() >= 2);

    let refused = node.deploy(json!({
        "service": "bad", "kind": "process", "envProcess": "cat",
        "triggers": [{ "cron": "*/5 * * *" }],
    }));
    assert_eq!(refused.status, 400);
    assert!(
        refused.error().contains("trigger cron \"*/5 * * *\""),
        "{}",
        refused.error()
    );
    assert_eq!(
        send(node.admin("GET", "/system/function/bad"), None).status,
        404
    );
}

#[test]
fn a_trigger_that_missed_firings_while_down_fires_once_at_start_up() {
    let node = node_with_probe(json!({ "triggers": [{ "cron": "@every 1s" }] }));
    assert!(node.eventually(Duration::from_secs(10), || !calls(&node, "").is_empty()));
    let data_dir = node.data_dir.clone();
    let (_, scratch) = node.stop();
    let stopped = chrono::Utc::now();
    // Down for 4 s: at least three firings are missed.
    std::thread::sleep(Duration::from_secs(4));
    let restarted = chrono::Utc::now();
    let node = Node::start_with(WISP, scratch, data_dir, &[]);
    let caught_up = node.eventually(Duration::from_secs(10), || {
        node.log().contains("missed its firing")
    });
    assert!(caught_up, "{}", node.log());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(node.log().matches("missed its firing").count(), 1);
    let ce_times: Vec<chrono::DateTime<chrono::Utc>> = calls(&node, "status=succeeded")
        .iter()
        .map(|call| {
            let body = call["result"]["body"].as_str().unwrap_or_default();
            let time = body
                .lines()
                .find_map(|line| line.strip_prefix("header ce-time="))
                .expect("ce-time");
            time.parse().unwrap()
        })
        .collect();
    let mut distinct = ce_times.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        ce_times.len(),
        "no firing twice: {ce_times:?}"
    );
    let while_down = ce_times
        .iter()
        .filter(|time| **time > stopped && **time < restarted)
        .count();
    assert!(
        while_down <= 1,
        "one catch-up, not one per missed firing: {ce_times:?}"
    );
}

#[test]
fn no_call_is_lost_when_the_node_is_killed_with_1000_queued() {
    const CALLS: usize = 1000;
    let node = Node::start_args(WISP, &["--async-workers", "8"]);
    deploy_probe(&node, json!({}));
    let url = node.url.clone();
    // Four clients enqueue at once; each call takes 20 ms to run, so 8
    // workers run 400 a second and the queue is still full at the kill.
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = ureq::Agent::new();
                for _ in 0..CALLS / 4 {
                    let response = agent
                        .post(&format!("{url}/async-function/probe/sleep?ms=20"))
                        .send_bytes(b"")
                        .expect("enqueue");
                    assert_eq!(response.status(), 202);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let info = queue_info(&node);
    assert!(
        info["depth"].as_u64().unwrap() > 0,
        "calls still queued when the node is killed: {info}"
    );
    let data_dir = node.data_dir.clone();
    let scratch = node.kill();

    let node = Node::start_with(WISP, scratch, data_dir, &["--async-workers", "8"]);
    let mut info = Value::Null;
    let drained = node.eventually(Duration::from_secs(60), || {
        info = queue_info(&node);
        info["depth"] == 0 && info["running"] == 0
    });
    assert!(drained, "{info}");
    let succeeded = calls(&node, "status=succeeded&limit=1000");
    assert_eq!(succeeded.len(), CALLS, "every call completed, none lost");
    let redelivered = info["redelivered"].as_u64().unwrap();
    let repeated = succeeded
        .iter()
        .filter(|call| call["attempts"].as_u64().unwrap() > 1)
        .count() as u64;
    assert_eq!(
        repeated, redelivered,
        "only interrupted calls ran twice: {info}"
    );
    assert!(redelivered <= 8, "at most one per worker: {info}");
}

#[test]
fn a_corrupt_call_fails_alone_and_the_queue_goes_on() {
    let node = node_with_probe(json!({ "asyncConcurrency": 1 }));
    // The first call holds the function's only async slot while the node stops.
    enqueue(&node, "probe/sleep?ms=2000", &[], b"");
    enqueue(&node, "probe", &[("X-Call-Id", "victim")], b"");
    enqueue(&node, "probe", &[("X-Call-Id", "after")], b"");
    let data_dir = node.data_dir.clone();
    let (_, scratch) = node.stop();
    let db = rusqlite::Connection::open(data_dir.join("wisp.db")).unwrap();
    let corrupted = db
        .execute(
            "UPDATE calls SET event = x'ffffffff' WHERE id = 'victim'",
            [],
        )
        .unwrap();
    assert_eq!(corrupted, 1);
    drop(db);

    let node = Node::start_with(WISP, scratch, data_dir, &[]);
    let victim = wait_for(&node, "victim", "failed", Duration::from_secs(20));
    assert!(
        victim["error"]
            .as_str()
            .unwrap()
            .contains("the stored call is corrupt"),
        "{victim}"
    );
    wait_for(&node, "after", "succeeded", Duration::from_secs(20));
    assert_eq!(node.get("/function/probe").status, 200);
}
