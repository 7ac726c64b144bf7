//! Cluster mode: three real `nats-server` processes routed to each other,
//! and wisp nodes started with `--cluster` on them. What is deployed,
//! removed, granted, revoked or kept secret through one node holds on every
//! node within a second, concurrent writes of one name never mix, a node
//! that was down catches up, and secrets never reach NATS unsealed.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use wisp_testing::{NatsCluster, Node, Response, send};

use crate::{WISP, call};

/// How soon a change made through one node must hold on the others.
const EVERYWHERE: Duration = Duration::from_secs(1);
/// How long a test waits for a change it only builds on (not one whose
/// speed it checks) to hold everywhere: a loaded machine compiles slowly.
const SETTLED: Duration = Duration::from_secs(20);

/// The sealing key, the same for every node of a test.
fn key_file(dir: &Path) -> String {
    let path = dir.join("cluster.key");
    std::fs::write(&path, format!("{}\n", "5e".repeat(32))).unwrap();
    path.display().to_string()
}

/// The arguments of a node on `nats`, connecting to server `first` first.
fn cluster_args(nats: &NatsCluster, first: usize, key: &str) -> Vec<String> {
    [
        "--cluster",
        &nats.urls_from(first),
        "--cluster-key-file",
        key,
        "--cluster-replicas",
        "3",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Three NATS servers and `count` wisp nodes spread over them.
fn cluster(count: usize) -> (NatsCluster, tempfile::TempDir, String, Vec<Node>) {
    let nats = NatsCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let nodes = (0..count)
        .map(|index| {
            let args = cluster_args(&nats, index, &key);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Node::start_args(WISP, &args)
        })
        .collect();
    (nats, dir, key, nodes)
}

/// A process function answering `word`.
fn says(name: &str, word: &str) -> Value {
    json!({ "service": name, "kind": "process", "envProcess": format!("echo {word}") })
}

/// Whether every node answers `path` with `status` (and `body`, when given) within [`EVERYWHERE`].
fn everywhere(nodes: &[&Node], path: &str, status: u16, body: Option<&str>) -> bool {
    everywhere_within(EVERYWHERE, nodes, path, status, body)
}

/// Whether every node answers `path` with `status` (and `body`, when given) within [`SETTLED`].
fn settled(nodes: &[&Node], path: &str, status: u16, body: Option<&str>) -> bool {
    everywhere_within(SETTLED, nodes, path, status, body)
}

/// Whether every node answers `path` with `status` (and `body`, when given) within `within`.
fn everywhere_within(
    within: Duration,
    nodes: &[&Node],
    path: &str,
    status: u16,
    body: Option<&str>,
) -> bool {
    let started = Instant::now();
    nodes.iter().all(|node| {
        let left = within.saturating_sub(started.elapsed());
        node.eventually(left, || {
            let response = node.post(path, b"");
            response.status == status && body.is_none_or(|body| response.body.trim() == body)
        })
    })
}

#[test]
fn what_one_node_changes_holds_on_every_node_within_a_second() {
    let (nats, _dir, _key, nodes) = cluster(3);
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    assert!(
        nodes.iter().all(|node| node.token == a.token),
        "one admin token for the cluster"
    );

    a.deploy_ok(says("hello", "hi"));
    assert!(
        everywhere(&[b, c], "/function/hello", 200, Some("hi")),
        "deployed everywhere"
    );
    let updated = send(
        c.admin("PUT", "/system/functions"),
        Some(says("hello", "hey").to_string().as_bytes()),
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert!(
        everywhere(&[a, b], "/function/hello", 200, Some("hey")),
        "updated everywhere"
    );
    let removed = send(
        c.admin("DELETE", "/system/functions"),
        Some(json!({ "functionName": "hello" }).to_string().as_bytes()),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(
        everywhere(&[a, b], "/function/hello", 404, None),
        "removed everywhere"
    );

    // A component uploaded to one node is fetched, checked and compiled by the others.
    let digest = b.upload_file(wisp_testing::HTTP_PROBE);
    b.deploy_ok(json!({ "service": "probe", "kind": "wasm-http", "image": digest }));
    for node in [a, c] {
        assert!(
            node.eventually(Duration::from_secs(10), || {
                let echo = node.post("/function/probe", b"ping");
                echo.status == 200 && echo.body.contains("ping")
            }),
            "the component runs on every node: {}",
            node.log()
        );
    }

    // Namespaces and their tokens, granted on one node, revoked on another.
    let created = call(
        a,
        &a.token,
        "POST",
        "/system/namespaces",
        Some(json!({ "name": "team" })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let token = call(
        a,
        &a.token,
        "POST",
        "/system/tokens",
        Some(json!({ "namespace": "team", "role": "deploy" })),
    );
    assert_eq!(token.status, 201, "{}", token.body);
    let (id, secret_token) = (
        token.json()["id"].as_str().unwrap().to_owned(),
        token.json()["token"].as_str().unwrap().to_owned(),
    );
    let listing = "/system/functions?namespace=team";
    for node in [b, c] {
        assert!(
            node.eventually(EVERYWHERE, || call(
                node,
                &secret_token,
                "GET",
                listing,
                None
            )
            .status
                == 200),
            "the token works on every node"
        );
    }
    let revoked = call(c, &c.token, "DELETE", &format!("/system/tokens/{id}"), None);
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    for node in [a, b] {
        assert!(
            node.eventually(EVERYWHERE, || call(
                node,
                &secret_token,
                "GET",
                listing,
                None
            )
            .status
                == 401),
            "the revoked token stops working on every node"
        );
    }

    // A secret set on one node reaches a function deployed on another,
    // and the NATS servers only ever hold it sealed.
    let value = "cluster-s3cr3t-9931";
    let secret = call(
        a,
        &a.token,
        "POST",
        "/system/secrets",
        Some(json!({ "name": "db-password", "namespace": "team", "value": value })),
    );
    assert_eq!(secret.status, 201, "{}", secret.body);
    let image = b.upload(&wisp_testing::script_archive(
        "run.sh",
        "#!/bin/sh\nprintf '%s' \"$DB_PASSWORD\"\n",
    ));
    let deploy = || {
        b.deploy(json!({
            "service": "reader", "namespace": "team", "kind": "process",
            "image": image, "envProcess": "./run.sh", "secrets": ["db-password"],
        }))
    };
    assert!(
        b.eventually(EVERYWHERE, || deploy().status == 202),
        "the secret reached b"
    );
    assert!(settled(&[a, c], "/function/reader.team", 200, Some(value)));
    let stored: Vec<u8> = nats
        .stores()
        .iter()
        .flat_map(|store| files_under(store))
        .flat_map(|file| std::fs::read(file).unwrap_or_default())
        .collect();
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        stored.contains("db-password"),
        "the stores hold the registry"
    );
    assert!(
        !stored.contains(value),
        "a secret's value is sealed in NATS"
    );
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn two_nodes_deploying_one_name_at_once_give_one_409_and_never_a_mix() {
    let (_nats, _dir, _key, nodes) = cluster(2);
    let [a, b] = [&nodes[0], &nodes[1]];
    for round in 0..5 {
        let name = format!("race{round}");
        let (first, second) = std::thread::scope(|scope| {
            let first = scope.spawn(|| a.deploy(says(&name, "a")));
            let second = scope.spawn(|| b.deploy(says(&name, "b")));
            (first.join().unwrap(), second.join().unwrap())
        });
        let mut statuses = [first.status, second.status];
        statuses.sort();
        assert_eq!(statuses, [202, 409], "{} / {}", first.body, second.body);
        let (winner, loser) = if first.status == 202 {
            ("a", &second)
        } else {
            ("b", &first)
        };
        // Refused by the cluster's compare-and-set, or by the node itself
        // when the winner's deploy reached it first.
        let error = loser.error();
        assert!(
            error.contains("another node") || error.contains("already exists"),
            "{error}"
        );
        let path = format!("/function/{name}");
        assert!(
            settled(&[a, b], &path, 200, Some(winner)),
            "one version everywhere"
        );
    }
}

#[test]
fn a_node_that_was_down_catches_up_at_start() {
    let (nats, _dir, key, mut nodes) = cluster(2);
    nodes[0].deploy_ok(says("stays", "here"));
    nodes[0].deploy_ok(says("goes", "soon"));
    assert!(settled(&[&nodes[1]], "/function/goes", 200, None));
    let down = nodes.pop().unwrap();
    let data_dir = down.data_dir.clone();
    let scratch = down.kill();

    let a = &nodes[0];
    let removed = send(
        a.admin("DELETE", "/system/functions"),
        Some(json!({ "functionName": "goes" }).to_string().as_bytes()),
    );
    assert_eq!(removed.status, 200);
    a.deploy_ok(says("new", "arrival"));

    let args = cluster_args(&nats, 1, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let back = Node::start_with(WISP, scratch, data_dir, &args);
    // Serving only once it knows the cluster's functions: no waiting here.
    assert_eq!(back.post("/function/new", b"").body.trim(), "arrival");
    assert_eq!(back.post("/function/stays", b"").body.trim(), "here");
    assert_eq!(back.post("/function/goes", b"").status, 404);
}

#[test]
fn the_live_nodes_are_listed_and_a_dead_one_is_dropped() {
    let (_nats, _dir, _key, mut nodes) = cluster(3);
    let listed = |node: &Node| -> Vec<String> {
        let response = node.admin("GET", "/system/nodes").call().unwrap();
        let nodes: Vec<Value> = response.into_json().unwrap();
        let mut addresses: Vec<String> = nodes
            .iter()
            .map(|node| node["address"].as_str().unwrap().to_owned())
            .collect();
        addresses.sort();
        addresses
    };
    let mut everyone: Vec<String> = nodes.iter().map(|node| node.url.clone()).collect();
    everyone.sort();
    let a = &nodes[0];
    assert!(
        a.eventually(Duration::from_secs(5), || listed(a) == everyone),
        "{:?}",
        listed(a)
    );
    let output = a.cli(WISP).arg("nodes").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(everyone.iter().all(|url| table.contains(url)), "{table}");
    // A namespace token may not list them.
    assert_eq!(
        call(a, "wisp_not-a-token", "GET", "/system/nodes", None).status,
        401
    );

    let dead = nodes.pop().unwrap();
    let dead_url = dead.url.clone();
    drop(dead.kill());
    let a = &nodes[0];
    assert!(
        a.eventually(Duration::from_secs(10), || !listed(a).contains(&dead_url)),
        "a node that stops heartbeating is dropped in seconds"
    );
    // Each node lists the members again at most every half second.
    let b = &nodes[1];
    assert!(b.eventually(Duration::from_secs(1), || listed(b).len() == 2));
}

#[test]
fn a_single_node_lists_itself_by_the_url_it_advertises() {
    let node = Node::start(WISP);
    let response = node.admin("GET", "/system/nodes").call().unwrap();
    let nodes: Vec<Value> = response.into_json().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["address"], node.url);
    assert_eq!(nodes[0]["version"], env!("CARGO_PKG_VERSION"));

    let advertised = Node::start_args(WISP, &["--advertise-url", "http://wisp-1.internal:8080"]);
    let response = advertised.admin("GET", "/system/nodes").call().unwrap();
    let nodes: Vec<Value> = response.into_json().unwrap();
    assert_eq!(nodes[0]["address"], "http://wisp-1.internal:8080");
}

/// The succeeded calls of `probe` on every node, as one node answers for all.
fn succeeded_everywhere(nodes: &[Node]) -> Vec<Value> {
    send(
        nodes[0].admin("GET", "/system/calls?function=probe&status=succeeded"),
        None,
    )
    .json()["calls"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `GET path` on `node` with its admin token.
fn read(node: &Node, path: &str) -> Response {
    send(node.admin("GET", path), None)
}

#[test]
fn any_node_answers_for_the_calls_and_call_logs_of_every_node() {
    let (_nats, _dir, _key, nodes) = cluster(2);
    let (asker, holder) = (&nodes[0], &nodes[1]);
    let image = asker.upload(&wisp_testing::script_archive(
        "run.sh",
        "#!/bin/sh\nread word\necho \"said $word\" >&2\necho ok\n",
    ));
    asker.deploy_ok(json!({
        "service": "talker", "kind": "process", "image": image, "envProcess": "./run.sh",
    }));
    assert!(settled(
        &nodes.iter().collect::<Vec<_>>(),
        "/function/talker",
        200,
        Some("ok")
    ));
    let invoke = |node: &Node, path: &str, id: &str, word: &str| {
        send(
            node.request("POST", path).set("X-Call-Id", id),
            Some(format!("{word}\n").as_bytes()),
        )
    };
    let here = invoke(asker, "/function/talker", "here", "hello");
    assert_eq!(here.status, 200, "{}", here.body);
    let there = invoke(holder, "/function/talker", "there", "bonjour");
    assert_eq!(there.status, 200, "{}", there.body);
    let queued = invoke(holder, "/async-function/talker", "queued", "hola");
    assert_eq!(queued.status, 202, "{}", queued.body);

    // The async call the other node holds, by id and in the list.
    assert!(
        asker.eventually(Duration::from_secs(10), || {
            let call = read(asker, "/system/calls/queued");
            call.status == 200 && call.json()["status"] == "succeeded"
        }),
        "{}",
        read(asker, "/system/calls/queued").body
    );
    let listed = read(asker, "/system/calls?function=talker").json();
    let ids: Vec<&str> = listed["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|call| call["id"].as_str())
        .collect();
    assert_eq!(ids, ["queued"]);

    // Log lines, traces, records and usage of calls served by either node.
    let logs = read(asker, "/system/logs?name=talker").body;
    for word in ["said hello", "said bonjour", "said hola"] {
        assert!(logs.contains(word), "{word} in {logs}");
    }
    let trace = read(asker, "/system/traces/there");
    assert_eq!(trace.status, 200, "{}", trace.body);
    assert_eq!(
        trace.json()["calls"][0]["callId"],
        "there",
        "{}",
        trace.body
    );
    let records = read(asker, "/system/records?name=talker").body;
    for id in ["here", "there", "queued"] {
        assert!(records.contains(&format!("\"{id}\"")), "{id} in {records}");
    }
    for node in [asker, holder] {
        let usage = read(node, "/system/usage").json();
        let talker = usage
            .as_array()
            .unwrap()
            .iter()
            .find(|usage| usage["function"] == "talker")
            .cloned()
            .unwrap_or_default();
        // Three calls, and the readiness probes of `everywhere` on each node.
        assert!(talker["invocations"].as_u64().unwrap_or(0) >= 5, "{usage}");
        assert_eq!(
            talker["invocations"],
            read(holder, "/system/usage")
                .json()
                .as_array()
                .unwrap()
                .iter()
                .find(|usage| usage["function"] == "talker")
                .unwrap()["invocations"]
        );
    }

    // A retry goes to the node that holds the call.
    let retried = send(asker.admin("POST", "/system/calls/queued/retry"), None);
    assert_eq!(retried.status, 202, "{}", retried.body);

    // Another namespace's token finds nothing of it on any node.
    let created = call(
        asker,
        &asker.token,
        "POST",
        "/system/namespaces",
        Some(json!({ "name": "nosy" })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let token = call(
        asker,
        &asker.token,
        "POST",
        "/system/tokens",
        Some(json!({ "namespace": "nosy", "role": "admin" })),
    )
    .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        asker.eventually(EVERYWHERE, || call(
            holder,
            &token,
            "GET",
            "/system/calls",
            None
        )
        .status
            == 200),
        "the token works on the holder"
    );
    let hidden = call(asker, &token, "GET", "/system/calls/queued", None);
    assert_eq!(hidden.status, 403, "{}", hidden.body);
    let trace = call(asker, &token, "GET", "/system/traces/there", None);
    assert_eq!(trace.status, 403, "{}", trace.body);
    let listed = call(asker, &token, "GET", "/system/calls", None);
    assert_eq!(listed.json()["calls"], json!([]), "{}", listed.body);
    let logs = call(asker, &token, "GET", "/system/logs", None);
    assert!(!logs.body.contains("said"), "{}", logs.body);
}

/// The lines of the probe's answers that start with `prefix`, one per call.
fn lines_of(calls: &[Value], prefix: &str) -> Vec<String> {
    calls
        .iter()
        .filter_map(|call| {
            let body = call["result"]["body"].as_str()?;
            body.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .map(str::to_owned)
        })
        .collect()
}

/// Deploys the http probe with `triggers` through the first node and waits
/// until every node serves it.
fn deploy_triggered_probe(nodes: &[Node], triggers: Value) {
    let digest = nodes[0].upload_file(wisp_testing::HTTP_PROBE);
    nodes[0].deploy_ok(json!({
        "service": "probe", "kind": "wasm-http", "image": digest, "triggers": triggers,
    }));
    for node in nodes {
        assert!(
            node.eventually(Duration::from_secs(10), || node
                .post("/function/probe", b"")
                .status
                == 200),
            "{}",
            node.log()
        );
    }
}

#[test]
fn a_cron_trigger_fires_once_per_tick_across_the_cluster() {
    let (_nats, _dir, _key, nodes) = cluster(3);
    deploy_triggered_probe(&nodes, json!([{ "cron": "@every 1s" }]));
    let mut ticks = Vec::new();
    let enough = nodes[0].eventually(Duration::from_secs(15), || {
        ticks = lines_of(&succeeded_everywhere(&nodes), "header ce-time=");
        ticks.len() >= 4
    });
    assert!(enough, "ticks: {ticks:?}");
    let mut distinct = ticks.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        ticks.len(),
        "no tick fired twice: {ticks:?}"
    );
}

#[test]
fn a_restarted_node_catches_up_on_no_tick_the_cluster_fired() {
    let (nats, _dir, key, mut nodes) = cluster(2);
    deploy_triggered_probe(&nodes, json!([{ "cron": "@every 1s" }]));
    // One node goes down for a few ticks, which the other fires, and comes back.
    let down = nodes.pop().unwrap();
    let data_dir = down.data_dir.clone();
    let scratch = down.kill();
    std::thread::sleep(Duration::from_secs(3));
    let args = cluster_args(&nats, 1, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    nodes.push(Node::start_with(WISP, scratch, data_dir, &args));
    let mut ticks = Vec::new();
    let enough = nodes[0].eventually(Duration::from_secs(15), || {
        ticks = lines_of(&succeeded_everywhere(&nodes), "header ce-time=");
        ticks.len() >= 8
    });
    assert!(enough, "ticks: {ticks:?}");
    let mut distinct = ticks.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        ticks.len(),
        "no tick fired twice: {ticks:?}"
    );
}

#[test]
fn broker_messages_are_taken_once_per_cluster() {
    let (_nats, _dir, _key, nodes) = cluster(3);
    let subject = crate::unique("wisp.cluster.");
    let base = crate::unique("wisp/cluster/");
    let stream = crate::unique("wisp-cluster:");
    let queue = crate::unique("wisp-cluster.");
    deploy_triggered_probe(
        &nodes,
        json!([
            { "nats": subject },
            { "mqtt": format!("{base}/#") },
            { "redis_stream": stream },
            { "amqp": queue },
        ]),
    );
    for node in &nodes {
        let connected = node.eventually(Duration::from_secs(10), || {
            let status = send(node.admin("GET", "/system/function/probe"), None).json();
            status["triggerStatus"]
                .as_array()
                .is_some_and(|links| links.iter().all(|link| link["state"] == "connected"))
        });
        assert!(connected, "{}", node.log());
    }
    const MESSAGES: usize = 12;
    let mut redis = crate::brokers::redis();
    for n in 0..MESSAGES {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("msg")
            .arg(format!("redis {n}"))
            .query(&mut redis)
            .unwrap();
    }
    crate::runtime().block_on(async {
        let (_amqp, channel) = crate::brokers::amqp().await;
        for n in 0..MESSAGES {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    Default::default(),
                    format!("amqp {n}").as_bytes(),
                    Default::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
        for n in 0..MESSAGES {
            client
                .publish(subject.clone(), format!("nats {n}").into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        let options = rumqttc::MqttOptions::new(crate::unique("wisp-test-"), "127.0.0.1", 1883);
        let (mqtt, mut events) = rumqttc::AsyncClient::new(options, 64);
        for n in 0..MESSAGES {
            mqtt.publish(
                format!("{base}/n"),
                rumqttc::QoS::AtLeastOnce,
                false,
                format!("mqtt {n}"),
            )
            .await
            .unwrap();
        }
        let mut acked = 0;
        while acked < MESSAGES {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                events.poll().await.unwrap()
            {
                acked += 1;
            }
        }
    });
    let mut bodies = Vec::new();
    let all = nodes[0].eventually(Duration::from_secs(15), || {
        bodies = lines_of(&succeeded_everywhere(&nodes), "body=");
        bodies.len() >= 4 * MESSAGES
    });
    assert!(all, "{bodies:?}");
    // Give a second delivery the time to show.
    std::thread::sleep(Duration::from_millis(500));
    let mut bodies = lines_of(&succeeded_everywhere(&nodes), "body=");
    bodies.sort();
    let mut expected: Vec<String> = (0..MESSAGES)
        .flat_map(|n| {
            [
                format!("amqp {n}"),
                format!("mqtt {n}"),
                format!("nats {n}"),
                format!(r#"{{"msg":"redis {n}"}}"#),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(bodies, expected, "each message once, on one node");
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut redis).unwrap();
    crate::runtime().block_on(async {
        let (_amqp, channel) = crate::brokers::amqp().await;
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await
            .unwrap();
    });
}

#[test]
fn postgres_notifications_are_taken_once_per_cluster_and_by_another_node_when_one_is_lost() {
    use crate::brokers::psql;
    let table = crate::unique("wisp_cluster_");
    psql(include_str!("../../docs/postgres-notify.sql"));
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY);
         CREATE TRIGGER changed AFTER INSERT ON {table}
           FOR EACH ROW EXECUTE FUNCTION wisp_notify('{table}');"
    ));
    let (_nats, _dir, _key, mut nodes) = cluster(3);
    deploy_triggered_probe(
        &nodes,
        json!([{ "postgres": "postgres://postgres@127.0.0.1/test", "channel": table }]),
    );
    let state = |node: &Node| {
        send(node.admin("GET", "/system/function/probe"), None).json()["triggerStatus"][0]["state"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    // One node listens; the others stand by.
    let listener = |nodes: &[Node]| {
        let states: Vec<String> = nodes.iter().map(state).collect();
        let listening: Vec<usize> = (0..nodes.len())
            .filter(|&i| states[i] == "connected")
            .collect();
        let standing_by = states.iter().filter(|s| *s == "standby").count();
        (listening.len() == 1 && standing_by == nodes.len() - 1).then(|| listening[0])
    };
    let mut chosen = None;
    let one = nodes[0].eventually(Duration::from_secs(20), || {
        chosen = listener(&nodes);
        chosen.is_some()
    });
    assert!(one, "{:?}", nodes.iter().map(state).collect::<Vec<_>>());
    let rows = |nodes: &[Node]| {
        let mut ids: Vec<String> = lines_of(&succeeded_everywhere(nodes), "body=")
            .iter()
            .map(|body| serde_json::from_str::<Value>(body).unwrap()["row"]["id"].to_string())
            .collect();
        ids.sort_by_key(|id| id.parse::<u32>().unwrap());
        ids
    };
    let expect = |range: std::ops::RangeInclusive<u32>| -> Vec<String> {
        range.map(|id| id.to_string()).collect()
    };
    psql(&format!(
        "INSERT INTO {table} SELECT generate_series(1, 10)"
    ));
    let all = nodes[0].eventually(Duration::from_secs(15), || rows(&nodes).len() >= 10);
    assert!(all, "{:?}", rows(&nodes));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        rows(&nodes),
        expect(1..=10),
        "each notification once, on one node"
    );

    // The listening node is lost: another takes over, and takes the
    // notifications sent once it listens.
    drop(nodes.remove(chosen.unwrap()).kill());
    let again = nodes[0].eventually(Duration::from_secs(20), || listener(&nodes).is_some());
    assert!(again, "{:?}", nodes.iter().map(state).collect::<Vec<_>>());
    psql(&format!(
        "INSERT INTO {table} SELECT generate_series(11, 15)"
    ));
    let taken = nodes[0].eventually(Duration::from_secs(15), || rows(&nodes).len() >= 5);
    assert!(taken, "{:?}", rows(&nodes));
    std::thread::sleep(Duration::from_millis(500));
    // The lost node's calls went with it; the new ones are each there once.
    assert_eq!(rows(&nodes), expect(11..=15));
    psql(&format!("DROP TABLE {table}"));
}

#[test]
fn losing_one_nats_server_of_three_loses_nothing() {
    let (mut nats, _dir, _key, nodes) = cluster(3);
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    a.deploy_ok(says("before", "kept"));
    assert!(settled(&[b, c], "/function/before", 200, Some("kept")));
    // Async calls queued through every node before and while the server goes.
    let queue = |round: usize| {
        for n in 0..60 {
            let node = [a, b, c][n % 3];
            let id = format!("call-{round}-{n}");
            let queued = send(
                node.request("POST", "/async-function/before")
                    .set("X-Call-Id", &id),
                None,
            );
            assert_eq!(queued.status, 202, "{}", queued.body);
        }
    };
    queue(0);
    // Node a connected to the first server first: it has to move, and the
    // streams led from there elect new leaders, which takes seconds.
    nats.kill(0);
    queue(1);
    // On this two-core machine, with seven processes on it, the streams'
    // new leaders take up to about 20 s to serve again.
    let recovery = Duration::from_secs(45);
    // A deploy whose answer was lost in the election may have gone
    // through: then the next attempt finds it deployed (409).
    let deployed = a.eventually(recovery, || {
        matches!(a.deploy(says("after", "arrived")).status, 202 | 409)
    });
    assert!(deployed, "deploys go on: {}", a.log());
    for node in [a, b, c] {
        assert!(
            node.eventually(recovery, || node.post("/function/after", b"").body.trim()
                == "arrived"),
            "served everywhere: {}",
            node.log()
        );
        assert_eq!(node.post("/function/before", b"").body.trim(), "kept");
    }
    let succeeded = || {
        read(
            a,
            "/system/calls?function=before&status=succeeded&limit=1000",
        )
        .json()["calls"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(
        a.eventually(recovery, || succeeded() == 120),
        "every async call ran once: {} of 120",
        succeeded()
    );
    let removed = send(
        b.admin("DELETE", "/system/functions"),
        Some(json!({ "functionName": "before" }).to_string().as_bytes()),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    for node in [a, c] {
        assert!(
            node.eventually(recovery, || node.post("/function/before", b"").status
                == 404)
        );
    }
}

#[test]
fn a_node_down_while_a_namespace_is_made_again_keeps_nothing_of_the_old_one() {
    let (nats, _dir, key, mut nodes) = cluster(2);
    let a = &nodes[0];
    let create = |node: &Node| {
        call(
            node,
            &node.token,
            "POST",
            "/system/namespaces",
            Some(json!({ "name": "team" })),
        )
    };
    assert_eq!(create(a).status, 201);
    let mut old = says("old", "first tenant");
    old["namespace"] = json!("team");
    a.deploy_ok(old);
    let c = &nodes[1];
    assert!(settled(
        &[c],
        "/function/old.team",
        200,
        Some("first tenant")
    ));
    let logged = |node: &Node| {
        // wisp's line for each call of the old function.
        let response = send(node.admin("GET", "/system/logs?name=old.team"), None);
        assert_eq!(response.status, 200, "{}", response.body);
        !response.body.trim().is_empty()
    };
    assert!(
        c.eventually(Duration::from_secs(5), || logged(c)),
        "c logged the call"
    );

    let down = nodes.pop().unwrap();
    let data_dir = down.data_dir.clone();
    let scratch = down.kill();
    let a = &nodes[0];
    let removed = send(
        a.admin("DELETE", "/system/functions"),
        Some(
            json!({ "functionName": "old", "namespace": "team" })
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(
        call(a, &a.token, "DELETE", "/system/namespaces/team", None).status,
        204
    );
    assert_eq!(create(a).status, 201, "made again, for someone else");

    let args = cluster_args(&nats, 1, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let back = Node::start_with(WISP, scratch, data_dir, &args);
    assert_eq!(back.post("/function/old.team", b"").status, 404);
    assert!(
        !logged(&back),
        "the old namespace's logs are gone: {}",
        back.log()
    );
}

#[test]
fn a_token_written_to_a_namespace_since_removed_works_nowhere() {
    let (nats, _dir, _key, nodes) = cluster(2);
    let a = &nodes[0];
    let created = call(
        a,
        &a.token,
        "POST",
        "/system/namespaces",
        Some(json!({ "name": "team" })),
    );
    assert_eq!(created.status, 201);
    // What a node behind the cluster writes: a token of a generation of the
    // namespace that is gone (here, one that never was).
    let token = "wisp_stale-generation-token-0000000000000000000000000000000000";
    let hash = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    let value = json!({
        "generation": "0123456789abcdef01234567",
        "value": { "namespace": "team", "role": "admin", "name": null, "hash": hash, "created_at": 0 },
    });
    crate::runtime().block_on(async {
        let first = nats.urls_from(0);
        let client = async_nats::connect(first.split(',').next().unwrap())
            .await
            .unwrap();
        let registry = async_nats::jetstream::new(client)
            .get_key_value("wisp_registry")
            .await
            .unwrap();
        registry
            .put("token.00000000deadbeef", value.to_string().into())
            .await
            .unwrap();
    });
    // A token of the namespace's own generation, made after it, reaches every node...
    let fresh = call(
        a,
        &a.token,
        "POST",
        "/system/tokens",
        Some(json!({ "namespace": "team", "role": "admin" })),
    );
    assert_eq!(fresh.status, 201);
    let fresh = fresh.json()["token"].as_str().unwrap().to_owned();
    for node in &nodes {
        assert!(node.eventually(EVERYWHERE, || {
            call(node, &fresh, "GET", "/system/tokens", None).status == 200
        }));
        // ... and the stale one works on none.
        assert_eq!(call(node, token, "GET", "/system/tokens", None).status, 401);
    }
}

#[test]
fn artifacts_nothing_uses_leave_the_cluster_after_the_grace_period() {
    let nats = NatsCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let nodes: Vec<Node> = (0..2)
        .map(|index| {
            let mut args = cluster_args(&nats, index, &key);
            args.extend(["--artifact-grace-period".to_owned(), "1s".to_owned()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Node::start_args(WISP, &args)
        })
        .collect();
    let (a, b) = (&nodes[0], &nodes[1]);
    let in_cluster = |digest: &str| {
        crate::runtime().block_on(async {
            let urls = nats.urls_from(0);
            let first = urls.split(',').next().unwrap();
            let client = async_nats::connect(first).await.unwrap();
            let store = async_nats::jetstream::new(client)
                .get_object_store("wisp_artifacts")
                .await
                .unwrap();
            store.info(digest).await.is_ok_and(|info| !info.deleted)
        })
    };
    let probe = a.upload_file(wisp_testing::HTTP_PROBE);
    let script = a.upload(&wisp_testing::script_archive(
        "run.sh",
        "#!/bin/sh\necho kept\n",
    ));
    a.deploy_ok(json!({ "service": "probe", "kind": "wasm-http", "image": probe }));
    a.deploy_ok(json!({
        "service": "kept", "kind": "process", "image": script, "envProcess": "./run.sh",
    }));
    assert!(in_cluster(&probe) && in_cluster(&script));

    // Removed through the other node, the probe's artifact goes after the
    // grace period; the artifact still in use stays.
    assert!(settled(&[b], "/function/probe", 200, None));
    let removed = call(
        b,
        &b.token,
        "DELETE",
        "/system/functions",
        Some(json!({ "functionName": "probe" })),
    );
    assert!(removed.status < 300, "{}", removed.body);
    assert!(
        a.eventually(Duration::from_secs(15), || !in_cluster(&probe)),
        "the unused artifact left the cluster's store"
    );
    assert!(in_cluster(&script), "the artifact in use stays");
    assert_eq!(a.post("/function/kept", b"").body.trim(), "kept");

    // Deployed again, it is stored again, and served by the other node.
    let probe = a.upload_file(wisp_testing::HTTP_PROBE);
    a.deploy_ok(json!({ "service": "probe", "kind": "wasm-http", "image": probe }));
    assert!(in_cluster(&probe));
    assert!(settled(&[b], "/function/probe", 200, None), "{}", b.log());
}

#[test]
fn a_lost_nodes_async_calls_are_taken_over_and_each_outcome_recorded_once() {
    const CALLS: usize = 1000;
    let (nats, _dir, key, mut nodes) = cluster(3);
    let digest = nodes[0].upload_file(wisp_testing::HTTP_PROBE);
    // Few at once on each node, 50 ms each: every node still has calls
    // queued when one of them is killed.
    nodes[0].deploy_ok(json!({
        "service": "probe", "kind": "wasm-http", "image": digest, "asyncConcurrency": 2,
    }));
    assert!(settled(
        &nodes.iter().collect::<Vec<_>>(),
        "/function/probe",
        200,
        None
    ));
    let ids: Vec<String> = (0..CALLS).map(|n| format!("call-{n}")).collect();
    std::thread::scope(|scope| {
        for (index, node) in nodes.iter().enumerate() {
            let ids = &ids;
            scope.spawn(move || {
                for id in ids.iter().skip(index).step_by(3) {
                    let queued = send(
                        node.request("POST", "/async-function/probe/sleep?ms=50")
                            .set("X-Call-Id", id),
                        None,
                    );
                    assert_eq!(queued.status, 202, "{}", queued.body);
                }
            });
        }
    });
    let lost = nodes.remove(1);
    let data_dir = lost.data_dir.clone();
    let scratch = lost.kill();
    let (a, c) = (&nodes[0], &nodes[1]);

    // Every call ends succeeded: the lost node's unfinished ones on the others.
    let succeeded = |node: &Node| {
        read(
            node,
            "/system/calls?function=probe&status=succeeded&limit=1000",
        )
        .json()["calls"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let taken_over = || {
        [a, c]
            .iter()
            .map(|node| {
                read(node, "/system/info").json()["queue"]["redelivered"]
                    .as_u64()
                    .unwrap()
            })
            .sum::<u64>()
    };
    assert!(
        a.eventually(Duration::from_secs(90), || {
            let queue = |node: &Node| read(node, "/system/info").json()["queue"].clone();
            taken_over() > 0
                && [a, c]
                    .iter()
                    .all(|node| queue(node)["depth"] == 0 && queue(node)["running"] == 0)
        }),
        "the lost node's calls are taken over and run: {}",
        a.log()
    );
    // The lost node comes back with the calls it finished before it was
    // lost, and forgets those the others took over.
    let args = cluster_args(&nats, 1, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let back = Node::start_with(WISP, scratch, data_dir, &args);
    assert!(
        a.eventually(Duration::from_secs(30), || succeeded(a) == CALLS),
        "{} of {CALLS} succeeded: {}",
        succeeded(a),
        back.log()
    );
    // One status each, on one node: a call recorded by two is a 409.
    let wrong: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            let call = read(a, &format!("/system/calls/{id}"));
            (call.status != 200 || call.json()["status"] != "succeeded")
                .then(|| format!("{id}: {} {}", call.status, call.body))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} calls: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    let info = read(&back, "/system/info").json();
    assert_eq!(info["queue"]["depth"], 0, "{info}");
    assert_eq!(info["queue"]["running"], 0, "{info}");
}

#[test]
fn quotas_and_routes_hold_across_the_cluster_when_two_nodes_deploy_at_once() {
    let (_nats, _dir, _key, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    // Two deploys, one through each node, released at the same moment.
    let race = |first: Value, second: Value| -> Vec<u16> {
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            let racers: Vec<_> = [(a, first), (b, second)]
                .into_iter()
                .map(|(node, deployment)| {
                    let start = &start;
                    scope.spawn(move || {
                        start.wait();
                        node.deploy(deployment).status
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().unwrap())
                .collect()
        })
    };
    let function = |name: &str, namespace: &str, route: Option<&str>| {
        let mut deployment = says(name, name);
        deployment["namespace"] = json!(namespace);
        if let Some(route) = route {
            deployment["route"] = json!(route);
        }
        deployment
    };
    for round in 0..6 {
        // A namespace with room for one function: one of two new ones gets it.
        let namespace = format!("quota-{round}");
        let created = call(
            a,
            &a.token,
            "POST",
            "/system/namespaces",
            Some(json!({ "name": namespace, "quotas": { "maxFunctions": 1 } })),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        assert!(b.eventually(EVERYWHERE, || {
            read(b, "/system/namespaces")
                .json()
                .as_array()
                .is_some_and(|names| names.contains(&json!(namespace)))
        }));
        let statuses = race(
            function("one", &namespace, None),
            function("two", &namespace, None),
        );
        let deployed = statuses.iter().filter(|status| **status == 202).count();
        assert_eq!(deployed, 1, "round {round}: {statuses:?}");

        // One route claimed by two namespaces: one of them gets it.
        let route = format!("/shared-{round}");
        let statuses = race(
            function("left", &format!("left-{round}"), Some(&route)),
            function("right", &format!("right-{round}"), Some(&route)),
        );
        let deployed = statuses.iter().filter(|status| **status == 202).count();
        assert_eq!(deployed, 1, "round {round}: {statuses:?}");
    }
}

#[test]
fn a_namespaces_own_concurrency_and_queue_quotas_hold_across_the_cluster() {
    let (nats, _dir, _key, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    // How many slots of narrow's quota the nodes hold, as the cluster has it.
    let held = || {
        crate::runtime().block_on(async {
            let urls = nats.urls_from(0);
            let client = async_nats::connect(urls.split(',').next().unwrap())
                .await
                .unwrap();
            let quotas = async_nats::jetstream::new(client)
                .get_key_value("wisp_quotas")
                .await
                .unwrap();
            let Some(entry) = quotas.get("narrow.concurrency").await.unwrap() else {
                return 0;
            };
            let shares: serde_json::Map<String, Value> = serde_json::from_slice(&entry).unwrap();
            shares
                .values()
                .map(|held| held["share"].as_u64().unwrap())
                .sum::<u64>()
        })
    };
    for (namespace, quotas) in [
        ("narrow", json!({ "maxConcurrency": 1 })),
        ("short", json!({ "maxQueuedCalls": 2 })),
    ] {
        let created = call(
            a,
            &a.token,
            "POST",
            "/system/namespaces",
            Some(json!({ "name": namespace, "quotas": quotas })),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        let mut slow = says("slow", "done");
        slow["namespace"] = json!(namespace);
        slow["envProcess"] = json!("sleep 3");
        a.deploy_ok(slow);
    }
    assert!(settled(&[a, b], "/function/slow.short", 200, None));
    assert!(settled(&[a, b], "/function/slow.narrow", 200, None));

    // The nodes give back their shares of the calls above once they end.
    assert!(a.eventually(SETTLED, || held() == 0));
    // One call running on A, its slot held in the cluster, leaves no room on B.
    let running = a.get_in_background("/function/slow.narrow");
    assert!(a.eventually(SETTLED, || held() == 1));
    let busy = b.post("/function/slow.narrow", b"");
    assert_eq!(busy.status, 429, "{}", busy.body);
    assert!(
        busy.error().contains("across the cluster"),
        "{}",
        busy.error()
    );
    assert!(busy.header("retry-after").is_some());
    assert_eq!(running.join().unwrap().status, 200);
    // Once it is over, B gets the slot within a second or two.
    assert!(b.eventually(Duration::from_secs(10), || {
        b.get_in_background("/function/slow.narrow")
            .join()
            .unwrap()
            .status
            == 200
    }));

    // Two async calls queued, one through each node, fill the quota of 2:
    // a third is refused by either node, though each holds only one.
    let enqueue = |node: &Node| node.post("/async-function/slow.short", b"");
    let enqueued =
        |node: &Node| node.eventually(Duration::from_secs(10), || enqueue(node).status == 202);
    assert!(enqueued(a));
    assert!(enqueued(b));
    for node in [a, b] {
        let over = enqueue(node);
        assert_eq!(over.status, 429, "{}", over.body);
        assert!(
            over.error().contains("across the cluster")
                && over.error().contains("max_queued_calls"),
            "{}",
            over.error()
        );
    }
    // Once they have run, there is room again.
    assert!(enqueued(b));
}
