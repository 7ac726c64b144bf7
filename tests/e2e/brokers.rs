//! Broker triggers against the real NATS server (with JetStream), the real
//! Mosquitto, RabbitMQ, Redis and PostgreSQL on this machine: messages, stream
//! entries and notifications become calls carrying CloudEvents, JetStream and
//! AMQP messages and Redis entries are acknowledged once their call is over, a lost
//! database connection is made again, and a broker that is down leaves the
//! node serving with the trigger shown disconnected.

use std::time::Duration;

use serde_json::{Value, json};
use wisp_testing::{Node, send};

use crate::{
    WISP, deploy_probe, node_with_probe, runtime,
    tenants::{create_namespace, create_token},
    unique,
};

const NATS: &str = "nats://127.0.0.1:4222";

fn trigger_status(node: &Node) -> Value {
    send(node.admin("GET", "/system/function/probe"), None).json()["triggerStatus"][0].clone()
}

fn wait_connected(node: &Node) {
    let connected = node.eventually(Duration::from_secs(10), || {
        trigger_status(node)["state"] == "connected"
    });
    assert!(connected, "{}", trigger_status(node));
}

fn succeeded(node: &Node) -> Vec<Value> {
    send(
        node.admin("GET", "/system/calls?function=probe&status=succeeded"),
        None,
    )
    .json()["calls"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_succeeded(node: &Node, count: usize) -> Vec<Value> {
    let mut calls = Vec::new();
    let done = node.eventually(Duration::from_secs(15), || {
        calls = succeeded(node);
        calls.len() >= count
    });
    assert!(done, "{count} calls expected: {calls:?}");
    calls
}

#[test]
fn nats_messages_become_cloudevents() {
    let subject = unique("wisp.test.");
    let node = node_with_probe(json!({ "triggers": [{ "nats": subject }] }));
    wait_connected(&node);
    runtime().block_on(async {
        let client = async_nats::connect(NATS).await.unwrap();
        for n in 0..3 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", "text/plain");
            client
                .publish_with_headers(subject.clone(), headers, format!("order {n}").into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
    });
    let calls = wait_succeeded(&node, 3);
    let mut payloads = Vec::new();
    for call in &calls {
        let body = call["result"]["body"].as_str().unwrap();
        for expected in [
            "header ce-type=dev.wisp.nats.message".to_owned(),
            format!("header ce-subject={subject}"),
            "header content-type=text/plain".to_owned(),
        ] {
            assert!(body.contains(&expected), "`{expected}` in {body}");
        }
        payloads.extend(body.lines().filter_map(|line| line.strip_prefix("body=")));
    }
    payloads.sort_unstable();
    assert_eq!(payloads, ["order 0", "order 1", "order 2"]);
    assert_eq!(calls[0]["source"], format!("nats \"{subject}\""));
}

#[test]
fn jetstream_messages_are_acknowledged_once_their_call_is_over() {
    let subject = unique("wisp.js.");
    let stream = unique("WISP_").to_uppercase();
    let runtime = runtime();
    let context = runtime.block_on(async {
        let client = async_nats::connect(NATS).await.unwrap();
        let context = async_nats::jetstream::new(client);
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        // Published before the function exists: the stream keeps them.
        for n in 0..5 {
            context
                .publish(subject.clone(), format!("event {n}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        context
    });
    let node = node_with_probe(json!({
        "triggers": [{ "nats": subject, "nats_stream": stream, "nats_consumer": "probe" }],
    }));
    let calls = wait_succeeded(&node, 5);
    let mut ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    ids.sort();
    let expected: Vec<String> = (1..=5).map(|seq| format!("nats-{stream}-{seq}")).collect();
    assert_eq!(ids, expected, "one call per stream sequence");
    let acknowledged = node.eventually(Duration::from_secs(10), || {
        runtime.block_on(async {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = context
                .get_consumer_from_stream("probe", &stream)
                .await
                .unwrap();
            let info = consumer.info().await.unwrap();
            info.num_ack_pending == 0
                && info.num_pending == 0
                && info.ack_floor.stream_sequence == 5
        })
    });
    assert!(acknowledged, "every message acknowledged after its call");
    runtime.block_on(async { context.delete_stream(&stream).await.unwrap() });
}

#[test]
fn mqtt_messages_become_cloudevents() {
    let base = unique("wisp/test/");
    let node = node_with_probe(json!({ "triggers": [{ "mqtt": format!("{base}/#") }] }));
    wait_connected(&node);
    let topic = format!("{base}/kitchen/temp");
    runtime().block_on(async {
        let options = rumqttc::MqttOptions::new(unique("wisp-test-"), "127.0.0.1", 1883);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
        client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, false, "21.5")
            .await
            .unwrap();
        // Drive the connection until the broker has the message.
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                events.poll().await.unwrap()
            {
                break;
            }
        }
    });
    let calls = wait_succeeded(&node, 1);
    let body = calls[0]["result"]["body"].as_str().unwrap();
    for expected in [
        "header ce-type=dev.wisp.mqtt.message".to_owned(),
        format!("header ce-subject={topic}"),
        "body=21.5".to_owned(),
    ] {
        assert!(body.contains(&expected), "`{expected}` in {body}");
    }
}

#[test]
fn a_broker_that_is_down_shows_disconnected_and_the_node_serves() {
    let node = Node::start_args(
        WISP,
        &[
            "--nats-url",
            "nats://wisp:s3cret@127.0.0.1:1",
            "--mqtt-url",
            "mqtt://127.0.0.1:1",
            "--redis-url",
            "redis://:s3cret@127.0.0.1:1/0",
            "--amqp-url",
            "amqp://guest:s3cret@127.0.0.1:1/%2f",
        ],
    );
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    node.deploy_ok(json!({
        "service": "probe", "kind": "wasm-http", "image": digest,
        "triggers": [
            { "nats": "orders.created" },
            { "mqtt": "sensors/#" },
            { "redis_stream": "orders" },
            { "amqp": "orders" },
        ],
    }));
    assert_eq!(node.get("/function/probe").status, 200);
    let mut text = String::new();
    let described = node.eventually(Duration::from_secs(10), || {
        let output = node.cli(WISP).args(["describe", "probe"]).output().unwrap();
        text = String::from_utf8(output.stdout).unwrap();
        text.contains(
            "nats \"orders.created\": disconnected (cannot connect to NATS at nats://127.0.0.1:1",
        ) && text.contains("mqtt \"sensors/#\": disconnected (MQTT broker at mqtt://127.0.0.1:1")
            && text.contains(
                "redis stream \"orders\": disconnected (Redis at redis://127.0.0.1:1: connect",
            )
            && text.contains("amqp \"orders\": disconnected (AMQP broker at amqp://127.0.0.1:1")
    });
    assert!(described, "{text}\n{}", node.log());
    // The operator's credentials are no tenant's to read.
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!node.log().contains("s3cret"), "{}", node.log());
    assert!(
        node.log().contains("is disconnected"),
        "the error is logged"
    );
    assert_eq!(node.get("/function/probe").status, 200, "still serving");

    // Each broker trigger holds connections: a function has at most 16.
    let many = node.deploy(json!({
        "service": "many", "kind": "wasm-http", "image": digest,
        "triggers": (0..17).map(|n| json!({ "amqp": format!("orders.{n}") })).collect::<Vec<_>>(),
    }));
    assert_eq!(many.status, 400);
    assert!(
        many.error().contains("at most 16 triggers"),
        "{}",
        many.error()
    );

    let refused = node.deploy(json!({
        "service": "bad", "kind": "wasm-http", "image": digest,
        "triggers": [{ "nats": "orders..created" }],
    }));
    assert_eq!(refused.status, 400);
    assert!(
        refused.error().contains("trigger nats \"orders..created\""),
        "{}",
        refused.error()
    );
}

/// A connection to the machine's Redis.
pub(crate) fn redis() -> redis::Connection {
    redis::Client::open("redis://127.0.0.1:6379/")
        .unwrap()
        .get_connection()
        .expect("Redis answers on 127.0.0.1:6379")
}

/// The entries of `stream` that `group` has read and not acknowledged.
fn unacknowledged(stream: &str, group: &str) -> usize {
    redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(100)
        .query::<Vec<redis::Value>>(&mut redis())
        .unwrap()
        .len()
}

#[test]
fn redis_stream_entries_become_calls_acknowledged_once_over_and_caught_up_after_a_restart() {
    let stream = unique("wisp-test:");
    let node = node_with_probe(json!({ "triggers": [{ "redis_stream": stream }] }));
    wait_connected(&node);
    let mut redis = redis();
    let mut add = |item: &str| -> String {
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("item")
            .arg(item)
            .arg("qty")
            .arg(2)
            .query(&mut redis)
            .unwrap()
    };
    let mut entries: Vec<String> = ["tea", "coffee", "cake"].map(&mut add).to_vec();
    let calls = wait_succeeded(&node, 3);
    let mut ids: Vec<String> = calls
        .iter()
        .map(|call| call["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let expected: Vec<String> = entries
        .iter()
        .map(|entry| format!("redis-{stream}-{entry}"))
        .collect();
    assert_eq!(ids, expected, "one call per entry, named by it");
    let body = calls[0]["result"]["body"].as_str().unwrap();
    for expected in [
        "header ce-type=dev.wisp.redis.stream.entry".to_owned(),
        format!("header ce-subject={stream}"),
        "header content-type=application/json".to_owned(),
        r#""qty":"2""#.to_owned(),
    ] {
        assert!(body.contains(&expected), "`{expected}` in {body}");
    }
    assert_eq!(calls[0]["source"], format!("redis stream \"{stream}\""));
    let acknowledged = node.eventually(Duration::from_secs(10), || {
        unacknowledged(&stream, "default_probe") == 0
    });
    assert!(acknowledged, "every entry acknowledged after its call");

    // Entries added while the node is down are read when it is back.
    let data_dir = node.data_dir.clone();
    let (_, scratch) = node.stop();
    entries.push(add("bread"));
    let node = wisp_testing::Node::start_with(WISP, scratch, data_dir, &[]);
    let calls = wait_succeeded(&node, 4);
    assert!(
        calls
            .iter()
            .any(|call| call["id"] == format!("redis-{stream}-{}", entries[3])),
        "{calls:?}"
    );
    // An entry over the node's body limit (32 MiB) is no call, and is not
    // left pending either.
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("blob")
        .arg(vec![b'x'; 33 << 20])
        .query(&mut redis)
        .unwrap();
    let skipped = node.eventually(Duration::from_secs(10), || {
        node.log().contains("over the node's body limit")
            && unacknowledged(&stream, "default_probe") == 0
    });
    assert!(skipped, "{}", node.log());
    assert_eq!(succeeded(&node).len(), 4);
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut redis).unwrap();

    // A namespace reads only the streams under its prefix.
    create_namespace(&node, json!({ "name": "team-a" }));
    let (_, token) = create_token(&node, &node.token, "team-a", "deploy");
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    let refused = send(
        node.request("POST", "/system/functions")
            .set("Authorization", &format!("Bearer {token}")),
        Some(
            json!({
                "service": "orders", "namespace": "team-a", "kind": "wasm-http", "image": digest,
                "triggers": [{ "redis_stream": "orders" }],
            })
            .to_string()
            .as_bytes(),
        ),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("streams under `team-a:`"),
        "{}",
        refused.error()
    );
}

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A connection to the machine's RabbitMQ, and a channel on it.
pub(crate) async fn amqp() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(AMQP, Default::default())
        .await
        .expect("RabbitMQ answers on 127.0.0.1:5672");
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// The messages of `queue` ready to be delivered, as RabbitMQ counts them.
async fn ready(channel: &lapin::Channel, queue: &str) -> u32 {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .unwrap()
        .message_count()
}

#[test]
fn amqp_messages_become_calls_acknowledged_once_over() {
    let queue = unique("wisp-test.");
    let node = node_with_probe(json!({ "triggers": [{ "amqp": queue }] }));
    wait_connected(&node);
    let runtime = runtime();
    let (connection, channel) = runtime.block_on(async {
        let (connection, channel) = amqp().await;
        for n in 0..3 {
            let properties = lapin::BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_message_id(format!("m{n}").into());
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    Default::default(),
                    format!("order {n}").as_bytes(),
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
        (connection, channel)
    });
    let calls = wait_succeeded(&node, 3);
    let mut ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    ids.sort();
    let expected: Vec<String> = (0..3).map(|n| format!("amqp-{queue}-m{n}")).collect();
    assert_eq!(
        ids, expected,
        "one call per message, named by its message-id"
    );
    let mut payloads = Vec::new();
    for call in &calls {
        let body = call["result"]["body"].as_str().unwrap();
        for expected in [
            "header ce-type=dev.wisp.amqp.message".to_owned(),
            format!("header ce-subject={queue}"),
            "header content-type=text/plain".to_owned(),
        ] {
            assert!(body.contains(&expected), "`{expected}` in {body}");
        }
        payloads.extend(body.lines().filter_map(|line| line.strip_prefix("body=")));
    }
    payloads.sort_unstable();
    assert_eq!(payloads, ["order 0", "order 1", "order 2"]);
    assert_eq!(calls[0]["source"], format!("amqp \"{queue}\""));
    // A removed function consumes no more: its connection goes with it.
    remove_probe(&node);
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let consumers = || {
        runtime.block_on(async {
            channel
                .queue_declare(queue.as_str().into(), passive, Default::default())
                .await
                .unwrap()
                .consumer_count()
        })
    };
    assert!(
        node.eventually(Duration::from_secs(10), || consumers() == 0),
        "{} consumers left",
        consumers()
    );
    // Once the node is gone, a message it had not acknowledged would be
    // ready again: none is.
    drop(node.stop());
    std::thread::sleep(Duration::from_millis(500));
    runtime.block_on(async {
        assert_eq!(
            ready(&channel, &queue).await,
            0,
            "every message acknowledged"
        );
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await
            .unwrap();
        connection.close(0, "done".into()).await.unwrap();
    });
}

/// Runs `sql` with `psql` on the machine's PostgreSQL (database `test`),
/// and returns what it printed, unaligned.
pub(crate) fn psql(sql: &str) -> String {
    let output = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test"])
        .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The server process listening on `channel`, as PostgreSQL lists it.
fn listener(channel: &str) -> String {
    psql(&format!(
        "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN \"{channel}\"'"
    ))
    .trim()
    .to_owned()
}

#[test]
fn row_changes_become_cloudevents_and_a_lost_connection_is_made_again() {
    let table = unique("wisp_orders_");
    psql(include_str!("../../docs/postgres-notify.sql"));
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, item text);
         CREATE TRIGGER changed AFTER INSERT OR UPDATE OR DELETE ON {table}
           FOR EACH ROW EXECUTE FUNCTION wisp_notify('{table}');"
    ));
    let node = node_with_probe(json!({ "triggers": [{
        "postgres": "postgres://postgres@127.0.0.1:5432/test", "channel": table,
    }] }));
    wait_connected(&node);
    psql(&format!("INSERT INTO {table} VALUES (1, 'tea')"));
    let calls = wait_succeeded(&node, 1);
    let body = calls[0]["result"]["body"].as_str().unwrap();
    for expected in [
        "header ce-type=dev.wisp.postgres.notification".to_owned(),
        format!("header ce-subject={table}"),
        "header content-type=application/json".to_owned(),
        format!(
            r#"body={{"op" : "INSERT", "table" : "{table}", "row" : {{"id":1,"item":"tea"}}}}"#
        ),
    ] {
        assert!(body.contains(&expected), "`{expected}` in {body}");
    }
    assert_eq!(
        calls[0]["source"],
        format!("postgres \"{table}\" on 127.0.0.1:5432/test")
    );

    // The database drops the node's connection: the node connects and
    // listens again, and the next change is a call too.
    let first = listener(&table);
    assert!(!first.is_empty(), "the node listens");
    psql(&format!("SELECT pg_terminate_backend({first})"));
    let again = node.eventually(Duration::from_secs(15), || {
        let now = listener(&table);
        !now.is_empty() && now != first
    });
    assert!(again, "listening again: {}", node.log());
    psql(&format!("UPDATE {table} SET item = 'coffee' WHERE id = 1"));
    let calls = wait_succeeded(&node, 2);
    assert!(
        calls.iter().any(|call| call["result"]["body"]
            .as_str()
            .unwrap()
            .contains(r#""op" : "UPDATE""#)),
        "{calls:?}"
    );
    // A removed function listens no more: its connection goes with it.
    remove_probe(&node);
    assert!(
        node.eventually(Duration::from_secs(10), || listener(&table).is_empty()),
        "still listening: {}",
        listener(&table)
    );
    psql(&format!("DROP TABLE {table}"));
}

/// Removes the function `probe`.
fn remove_probe(node: &Node) {
    let removed = send(
        node.admin("DELETE", "/system/functions"),
        Some(json!({ "functionName": "probe" }).to_string().as_bytes()),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
}

#[test]
fn postgres_triggers_reach_only_listed_servers_and_never_show_the_password() {
    let port = free_port();
    let listed = format!("db.example:5432,127.0.0.1:{port}");
    let node = Node::start_args(WISP, &["--postgres-hosts", &listed]);
    let digest = node.upload_file(wisp_testing::HTTP_PROBE);
    create_namespace(&node, json!({ "name": "team-a" }));
    let (_, token) = create_token(&node, &node.token, "team-a", "deploy");
    let as_tenant = |url: &str| {
        let deployment = json!({
            "service": "orders", "namespace": "team-a", "kind": "wasm-http", "image": digest,
            "triggers": [{ "postgres": url, "channel": "orders" }],
        });
        send(
            node.request("POST", "/system/functions")
                .set("Authorization", &format!("Bearer {token}")),
            Some(deployment.to_string().as_bytes()),
        )
    };
    // A tenant's URL has the node connect where it says: only to servers
    // the operator listed.
    let refused = as_tenant("postgres://postgres@127.0.0.1:5432/test");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains(&format!(
            "lists in `wisp up --postgres-hosts` (db.example:5432, 127.0.0.1:{port})"
        )),
        "{}",
        refused.error()
    );
    // A socket of the node's is no one's to name.
    let socket = as_tenant("postgres://%2Fvar%2Frun%2Fpostgresql/test");
    assert_eq!(socket.status, 400, "{}", socket.body);
    assert!(socket.error().contains("over TCP"), "{}", socket.error());
    let function = "/system/function/orders?namespace=team-a";
    assert_eq!(send(node.admin("GET", function), None).status, 404);

    // Listed, it deploys. The server is down, which the trigger shows,
    // without the password anywhere.
    let accepted = as_tenant(&format!("postgres://app:hunter2@127.0.0.1:{port}/shop"));
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let expected = format!("PostgreSQL at 127.0.0.1:{port}/shop");
    let mut status = Value::Null;
    let shown = node.eventually(Duration::from_secs(10), || {
        status = send(node.admin("GET", function), None).json()["triggerStatus"][0].clone();
        status["state"] == "disconnected"
            && status["error"].as_str().unwrap_or("").contains(&expected)
    });
    assert!(shown, "{status}");
    assert_eq!(
        status["trigger"],
        format!("postgres \"orders\" on 127.0.0.1:{port}/shop")
    );
    assert!(!status.to_string().contains("hunter2"), "{status}");
    assert!(!node.log().contains("hunter2"), "{}", node.log());
    // A token that may only invoke the function does not see the password;
    // one that may deploy it does.
    let (_, invoker) = create_token(&node, &node.token, "team-a", "invoke");
    let seen_by = |token: &str| {
        send(
            node.request("GET", function)
                .set("Authorization", &format!("Bearer {token}")),
            None,
        )
        .json()["triggers"][0]["postgres"]
            .clone()
    };
    assert_eq!(
        seen_by(&invoker),
        format!("postgres://app:***@127.0.0.1:{port}/shop")
    );
    assert_eq!(
        seen_by(&token),
        format!("postgres://app:hunter2@127.0.0.1:{port}/shop")
    );
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a broker started by the test when it goes out of scope.
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &str, args: &[&str]) -> Broker {
    Broker(
        std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start {program}: {error}")),
    )
}

#[test]
fn triggers_connect_once_a_late_broker_comes_up() {
    let (nats_port, mqtt_port) = (free_port(), free_port());
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let mqtt_url = format!("mqtt://127.0.0.1:{mqtt_port}");
    let node = Node::start_args(WISP, &["--nats-url", &nats_url, "--mqtt-url", &mqtt_url]);
    deploy_probe(
        &node,
        json!({ "triggers": [{ "nats": "late.orders" }, { "mqtt": "late/#" }] }),
    );
    let states = || {
        send(node.admin("GET", "/system/function/probe"), None).json()["triggerStatus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|status| status["state"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(node.eventually(Duration::from_secs(5), || states() == ["disconnected"; 2]));

    let port = nats_port.to_string();
    let _nats = spawn("/usr/sbin/nats-server", &["-a", "127.0.0.1", "-p", &port]);
    let port = mqtt_port.to_string();
    let _mosquitto = spawn("/usr/sbin/mosquitto", &["-p", &port]);
    let connected = node.eventually(Duration::from_secs(40), || states() == ["connected"; 2]);
    assert!(connected, "{:?}", states());

    runtime().block_on(async {
        let client = async_nats::connect(&nats_url).await.unwrap();
        client.publish("late.orders", "late".into()).await.unwrap();
        client.flush().await.unwrap();
    });
    let calls = wait_succeeded(&node, 1);
    assert!(
        calls[0]["result"]["body"]
            .as_str()
            .unwrap()
            .contains("body=late")
    );
}
