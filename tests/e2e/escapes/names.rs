//! Names one tenant could take from another (items 4, 6 and 7 of the
//! catalogue): top-level routes, broker subjects, topics, consumers, queue
//! groups and client ids, and call ids. Each attack is made by a namespace
//! token (or an anonymous caller) against the real node, NATS and Mosquitto;
//! it must be refused, or leave the victim's calls as they were.

use std::time::Duration;

use serde_json::{Value, json};
use wisp_testing::{Node, Response, send};

use crate::{WISP, runtime, unique};

const NATS: &str = "nats://127.0.0.1:4222";

/// Sends `body` (JSON, if any) with `token` (none when `None`) and extra headers.
fn call(
    node: &Node,
    token: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Response {
    let mut request = node.request(method, path);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let body = body.map(Value::to_string);
    send(request, body.as_deref().map(str::as_bytes))
}

/// Creates `namespace` and a token of `role` in it; returns the token.
fn tenant(node: &Node, namespace: &str, role: &str) -> String {
    let created = call(
        node,
        Some(&node.token),
        "POST",
        "/system/namespaces",
        &[],
        Some(&json!({ "name": namespace })),
    );
    assert!(
        [201, 409].contains(&created.status),
        "create namespace: {}",
        created.body
    );
    let body = json!({ "namespace": namespace, "role": role, "name": role });
    let response = call(
        node,
        Some(&node.token),
        "POST",
        "/system/tokens",
        &[],
        Some(&body),
    );
    assert_eq!(response.status, 201, "create token: {}", response.body);
    response.json()["token"].as_str().unwrap().to_owned()
}

/// The http probe's deployment as `name` in `namespace`, with `extra` fields.
fn probe(node: &Node, name: &str, namespace: &str, extra: Value) -> Value {
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    let mut deployment =
        json!({ "service": name, "namespace": namespace, "kind": "wasm-http", "image": digest });
    crate::merge(&mut deployment, extra);
    deployment
}

/// Deploys with `token`.
fn deploy(node: &Node, token: &str, deployment: &Value) -> Response {
    call(
        node,
        Some(token),
        "POST",
        "/system/functions",
        &[],
        Some(deployment),
    )
}

/// The succeeded calls of `function` (`name.namespace`).
fn succeeded(node: &Node, function: &str) -> Vec<Value> {
    send(
        node.admin(
            "GET",
            &format!("/system/calls?function={function}&status=succeeded"),
        ),
        None,
    )
    .json()["calls"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The CloudEvents subjects (`ce-subject`) of the succeeded calls of `function`.
fn subjects(node: &Node, function: &str) -> Vec<String> {
    let mut subjects: Vec<String> = succeeded(node, function)
        .iter()
        .filter_map(|call| {
            let body = call["result"]["body"].as_str()?;
            body.lines()
                .find_map(|line| line.strip_prefix("header ce-subject="))
                .map(str::to_owned)
        })
        .collect();
    subjects.sort();
    subjects
}

/// Waits until every broker trigger of `function` in `namespace` is connected.
fn wait_connected(node: &Node, function: &str, namespace: &str) {
    let path = format!("/system/function/{function}?namespace={namespace}");
    let states = || {
        send(node.admin("GET", &path), None).json()["triggerStatus"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let connected = node.eventually(Duration::from_secs(15), || {
        states().iter().all(|status| status["state"] == "connected")
    });
    assert!(connected, "{function}.{namespace}: {:?}", states());
}

/// Item 4: namespace B cannot deploy a route that shares a path with
/// namespace A's (the same route, a prefix over it, or one under it), and
/// A's function keeps answering its route. Inside one namespace, a longer
/// prefix may still refine a shorter one.
#[test]
fn a_route_cannot_overlap_another_namespaces_route() {
    let node = Node::start(WISP);
    let a = tenant(&node, "team-a", "deploy");
    let b = tenant(&node, "team-b", "deploy");
    let login = probe(&node, "login", "team-a", json!({ "route": "/api/login" }));
    assert_eq!(deploy(&node, &a, &login).status, 202);
    assert_eq!(node.get("/api/login").status, 200);

    for route in ["/api/...", "/api/login", "/api/login/..."] {
        let shadow = probe(&node, "shadow", "team-b", json!({ "route": route }));
        let refused = deploy(&node, &b, &shadow);
        assert_eq!(refused.status, 409, "{route}: {}", refused.body);
        let error = refused.error();
        for expected in ["team-a", "login", "/api/login"] {
            assert!(error.contains(expected), "{route}: `{expected}` in {error}");
        }
    }
    let b_functions = call(
        &node,
        Some(&b),
        "GET",
        "/system/functions?namespace=team-b",
        &[],
        None,
    );
    assert_eq!(b_functions.json(), json!([]), "nothing of team-b's stored");

    // Inside team-a, a wider prefix is team-a's own design, as before.
    let wide = probe(&node, "wide", "team-a", json!({ "route": "/api/..." }));
    assert_eq!(deploy(&node, &a, &wide).status, 202);
    // A neighbouring path that shares no request path is fine.
    let beside = probe(&node, "beside", "team-b", json!({ "route": "/apix/..." }));
    assert_eq!(deploy(&node, &b, &beside).status, 202);

    let answered = node.get("/api/login");
    assert_eq!(answered.status, 200, "{}", answered.body);
    let records = send(node.admin("GET", "/system/records?name=login.team-a"), None).json();
    assert_eq!(records.as_array().unwrap().len(), 2, "login answered twice");
    assert_eq!(node.get("/apix/1").status, 200, "team-b's own path");
}

/// Item 6: a namespace token's triggers may only subscribe under the
/// namespace's prefix, and name only its own consumers and queue groups;
/// the refusal says which prefix is allowed. The node's admin token may
/// subscribe anywhere; `--nats-prefix` and `--mqtt-prefix` move the prefixes.
#[test]
fn a_tenant_subscribes_only_to_its_own_subjects_and_topics() {
    let node = Node::start(WISP);
    let a = tenant(&node, "team-a", "deploy");
    let refusals = [
        (json!({ "nats": ">" }), "`team-a.`"),
        (json!({ "nats": "*.orders" }), "`team-a.`"),
        (json!({ "nats": "team-b.orders" }), "`team-a.`"),
        (json!({ "nats": "team-a" }), "`team-a.`"),
        (json!({ "mqtt": "#" }), "`team-a/`"),
        (json!({ "mqtt": "+/orders" }), "`team-a/`"),
        (json!({ "mqtt": "team-b/#" }), "`team-a/`"),
        (
            json!({ "nats": "team-a.orders", "queue_group": "workers" }),
            "`team-a_`",
        ),
        (
            json!({ "nats": "team-a.orders", "nats_stream": "ORDERS", "nats_consumer": "team-b_orders" }),
            "`team-a_`",
        ),
    ];
    for (trigger, prefix) in &refusals {
        let deployment = probe(
            &node,
            "listener",
            "team-a",
            json!({ "triggers": [trigger] }),
        );
        let refused = deploy(&node, &a, &deployment);
        assert_eq!(refused.status, 400, "{trigger}: {}", refused.body);
        assert!(
            refused.error().contains(prefix),
            "{trigger}: `{prefix}` in {}",
            refused.error()
        );
    }
    let own = probe(
        &node,
        "listener",
        "team-a",
        json!({ "triggers": [
            { "nats": "team-a.>", "queue_group": "team-a_workers" },
            { "mqtt": "team-a/+/temp" },
        ] }),
    );
    assert_eq!(deploy(&node, &a, &own).status, 202);

    // The node's admin token is the operator's: it may subscribe anywhere.
    let wide = probe(
        &node,
        "audit",
        "team-a",
        json!({ "triggers": [{ "nats": "shared.audit" }, { "mqtt": "shared/#" }] }),
    );
    node.deploy_ok(wide);

    let moved = Node::start_args(
        WISP,
        &[
            "--nats-prefix",
            "tenants.{namespace}",
            "--mqtt-prefix",
            "tenants/{namespace}",
        ],
    );
    let a = tenant(&moved, "team-a", "deploy");
    let old = probe(
        &moved,
        "listener",
        "team-a",
        json!({ "triggers": [{ "nats": "team-a.x" }] }),
    );
    let refused = deploy(&moved, &a, &old);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("`tenants.team-a.`"),
        "{}",
        refused.error()
    );
    let new = probe(
        &moved,
        "listener",
        "team-a",
        json!({ "triggers": [{ "nats": "tenants.team-a.x" }, { "mqtt": "tenants/team-a/#" }] }),
    );
    assert_eq!(deploy(&moved, &a, &new).status, 202);
}

/// Item 6: names derived from a namespace and a function cannot collide.
/// Formerly, function `c` of namespace `a-b` and function `b-c` of namespace
/// `a` shared the MQTT client id `wisp-a-b-c-0` (and so one persistent
/// session), and function `c` of `a-b` and function `c-a` of `b` shared the
/// JetStream consumer `wisp-c-a-b`. Each now gets only its own messages.
#[test]
fn look_alike_namespaces_get_distinct_consumers_and_client_ids() {
    let run = unique("");
    let stream = format!("NAMES_{}", run.to_uppercase());
    let runtime = runtime();
    let context = runtime.block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("a-b.{run}.>"), format!("b.{run}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
        context
    });
    let node = Node::start(WISP);
    let jetstream =
        |namespace: &str| json!({ "nats": format!("{namespace}.{run}.>"), "nats_stream": stream });
    let mqtt = |namespace: &str| json!({ "mqtt": format!("{namespace}/{run}/#") });
    let functions = [
        ("c", "a-b", json!([mqtt("a-b"), jetstream("a-b")])),
        ("b-c", "a", json!([mqtt("a")])),
        ("c-a", "b", json!([jetstream("b")])),
    ];
    for (name, namespace, triggers) in &functions {
        let token = tenant(&node, namespace, "deploy");
        let deployment = probe(&node, name, namespace, json!({ "triggers": triggers }));
        let response = deploy(&node, &token, &deployment);
        assert_eq!(
            response.status, 202,
            "{name}.{namespace}: {}",
            response.body
        );
    }
    for (name, namespace, _) in &functions {
        wait_connected(&node, name, namespace);
    }

    runtime.block_on(async {
        for namespace in ["a-b", "b"] {
            context
                .publish(format!("{namespace}.{run}.order"), namespace.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let options = rumqttc::MqttOptions::new(format!("names-{run}"), "127.0.0.1", 1883);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
        for namespace in ["a-b", "a"] {
            client
                .publish(
                    format!("{namespace}/{run}/temp"),
                    rumqttc::QoS::AtLeastOnce,
                    // Retained, so a subscription the broker has not
                    // processed yet still gets it, once.
                    true,
                    namespace,
                )
                .await
                .unwrap();
        }
        drive_until_acknowledged(&mut events, 2).await;
    });

    let expected = [
        (
            "c.a-b",
            vec![format!("a-b.{run}.order"), format!("a-b/{run}/temp")],
        ),
        ("b-c.a", vec![format!("a/{run}/temp")]),
        ("c-a.b", vec![format!("b.{run}.order")]),
    ];
    // Only this run's subjects: the broker keeps a client id's session
    // between runs, and may hand over what an earlier run published last.
    let this_run = |function: &str| -> Vec<String> {
        subjects(&node, function)
            .into_iter()
            .filter(|subject| subject.contains(&run))
            .collect()
    };
    let all_in = node.eventually(Duration::from_secs(20), || {
        expected
            .iter()
            .all(|(function, own)| this_run(function).len() >= own.len())
    });
    for (function, own) in &expected {
        assert_eq!(&this_run(function), own, "{function} (all in: {all_in})");
    }
    runtime.block_on(async {
        context.delete_stream(&stream).await.unwrap();
        let options = rumqttc::MqttOptions::new(format!("names-{run}"), "127.0.0.1", 1883);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
        for namespace in ["a-b", "a"] {
            let topic = format!("{namespace}/{run}/temp");
            let cleared: &[u8] = &[];
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, true, cleared)
                .await
                .unwrap();
        }
        drive_until_acknowledged(&mut events, 2).await;
    });
}

/// Drives an MQTT connection until the broker has acknowledged `count` publishes.
async fn drive_until_acknowledged(events: &mut rumqttc::EventLoop, count: usize) {
    let mut acknowledged = 0;
    while acknowledged < count {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = events.poll().await.unwrap() {
            acknowledged += 1;
        }
    }
}

/// Item 7: an anonymous caller takes the id the next JetStream message will
/// get (`nats-{stream}-{sequence}`) for a call of its own; the message still
/// becomes a call of its own and runs.
#[test]
fn a_caller_cannot_take_the_call_id_of_a_jetstream_message() {
    let run = unique("");
    let stream = format!("CALLID_{}", run.to_uppercase());
    let subject = format!("calls.{run}");
    let runtime = runtime();
    let context = runtime.block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        context
    });
    let node = Node::start(WISP);
    node.deploy_ok(probe(
        &node,
        "orders",
        "default",
        json!({ "triggers": [{ "nats": subject, "nats_stream": stream }] }),
    ));
    let message_id = format!("nats-{stream}-1");
    let taken = call(
        &node,
        None,
        "POST",
        "/async-function/orders",
        &[("X-Call-Id", &message_id)],
        None,
    );
    assert_eq!(taken.status, 202, "{}", taken.body);
    assert_eq!(taken.header("x-call-id"), Some(message_id.as_str()));

    runtime.block_on(async {
        context
            .publish(subject.clone(), "the real order".into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
    let delivered = node.eventually(Duration::from_secs(15), || {
        succeeded(&node, "orders").iter().any(|call| {
            call["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("nats"))
                && call["result"]["body"]
                    .as_str()
                    .is_some_and(|body| body.contains("body=the real order"))
        })
    });
    assert!(
        delivered,
        "the message ran: {:?}",
        succeeded(&node, "orders")
    );
    let message = succeeded(&node, "orders")
        .into_iter()
        .find(|call| {
            call["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("nats"))
        })
        .unwrap();
    assert_eq!(
        message["id"],
        message_id.as_str(),
        "its id is as documented"
    );
    runtime.block_on(async { context.delete_stream(&stream).await.unwrap() });
}

/// Item 7 (and 14's shadowing): two namespaces' callers choose the same
/// `X-Call-Id`. Neither is refused for the other's, and each namespace's
/// token finds its own call and trace by that id.
#[test]
fn a_call_id_is_a_namespaces_own() {
    let node = Node::start(WISP);
    let a = tenant(&node, "team-a", "deploy");
    let b = tenant(&node, "team-b", "deploy");
    for (token, namespace) in [(&a, "team-a"), (&b, "team-b")] {
        assert_eq!(
            deploy(&node, token, &probe(&node, "orders", namespace, json!({}))).status,
            202
        );
    }
    let id = [("X-Call-Id", "order-42")];
    for namespace in ["team-a", "team-b"] {
        let path = format!("/async-function/orders.{namespace}");
        let accepted = call(&node, None, "POST", &path, &id, None);
        assert_eq!(accepted.status, 202, "{namespace}: {}", accepted.body);
        let sync = format!("/function/orders.{namespace}");
        assert_eq!(call(&node, None, "GET", &sync, &id, None).status, 200);
    }
    let again = call(
        &node,
        None,
        "POST",
        "/async-function/orders.team-a",
        &id,
        None,
    );
    assert_eq!(
        again.status, 409,
        "a namespace's own duplicate: {}",
        again.body
    );

    for (token, namespace) in [(&a, "team-a"), (&b, "team-b")] {
        let shown = call(
            &node,
            Some(token),
            "GET",
            "/system/calls/order-42",
            &[],
            None,
        );
        assert_eq!(shown.status, 200, "{namespace}: {}", shown.body);
        assert_eq!(shown.json()["namespace"], namespace);
        let trace = call(
            &node,
            Some(token),
            "GET",
            "/system/traces/order-42",
            &[],
            None,
        );
        assert_eq!(trace.status, 200, "{namespace}: {}", trace.body);
        let calls = trace.json()["calls"].as_array().cloned().unwrap();
        assert!(!calls.is_empty());
        assert!(
            calls.iter().all(|call| call["namespace"] == namespace),
            "{namespace}: {calls:?}"
        );
    }
    // The node's token sees both, so it names the one it means.
    let ambiguous = send(node.admin("GET", "/system/calls/order-42"), None);
    assert_eq!(ambiguous.status, 409, "{}", ambiguous.body);
    assert!(
        ambiguous.error().contains("orders.team-a"),
        "{}",
        ambiguous.error()
    );
    let named = send(
        node.admin("GET", "/system/calls/order-42?function=orders.team-b"),
        None,
    );
    assert_eq!(named.json()["namespace"], "team-b", "{}", named.body);
}
