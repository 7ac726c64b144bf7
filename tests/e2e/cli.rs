//! The real CLI against the real node: deploy the examples from their
//! manifests, invoke, list, describe, remove; errors are one line and a
//! non-zero exit.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use wisp_testing::Node;

use crate::WISP;

fn run(mut command: Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wisp");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(command: Command, stdin: &[u8]) -> String {
    let output = run(command, stdin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

/// Copies the project `from` into `to`, leaving out build output.
fn copy_project(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "target" {
                copy_project(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_examples_deploy_and_answer_through_the_cli() {
    let node = Node::start(WISP);
    // Copied out of the repository: each example is a project of its own.
    let copies = tempfile::tempdir().unwrap();
    for example in ["hello", "wordcount", "shout"] {
        copy_project(&examples().join(example), &copies.path().join(example));
        let mut deploy = node.cli(WISP);
        deploy
            .args(["deploy", "-f"])
            .arg(copies.path().join(example).join("wisp.toml"));
        let printed = ok(deploy, b"");
        assert!(
            printed.contains(&format!("deployed {example}")),
            "{printed}"
        );
    }

    let mut hello = node.cli(WISP);
    hello.args(["invoke", "hello", "--method", "GET", "--path", "/a?b=c"]);
    assert_eq!(ok(hello, b""), "Hello from wisp!\npath: /a\nquery: b=c\n");
    assert!(
        node.get("/hello").body.starts_with("Hello from wisp!"),
        "the manifest's route serves it"
    );

    let mut count = node.cli(WISP);
    count.args(["invoke", "wordcount"]);
    let counted: Value = serde_json::from_str(&ok(count, b"one two\nthree\n")).unwrap();
    assert_eq!(
        counted,
        serde_json::json!({ "lines": 2, "words": 3, "bytes": 14 })
    );

    let mut shout = node.cli(WISP);
    shout.args(["invoke", "shout", "--path", "/x?y=1"]);
    assert_eq!(ok(shout, b"quiet please\n"), "POST /x?y=1\nQUIET PLEASE\n");

    let mut ls = node.cli(WISP);
    ls.args(["ls", "--json"]);
    let listed: Value = serde_json::from_str(&ok(ls, b"")).unwrap();
    let names: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["service"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "shout", "wordcount"]);
    let mut table = node.cli(WISP);
    table.arg("ls");
    let table = ok(table, b"");
    assert!(
        table.lines().any(|line| line.starts_with("hello")
            && line.contains("wasm-http")
            && line.contains("/hello")),
        "{table}"
    );

    let mut describe = node.cli(WISP);
    describe.args(["describe", "wordcount", "--json"]);
    let described: Value = serde_json::from_str(&ok(describe, b"")).unwrap();
    assert_eq!(described["kind"], "wasm-stdio");
    assert_eq!(described["invocationCount"], 1);

    let mut rm = node.cli(WISP);
    rm.args(["rm", "shout"]);
    assert_eq!(ok(rm, b""), "removed shout\n");
    let mut gone = node.cli(WISP);
    gone.args(["invoke", "shout"]);
    let output = run(gone, b"");
    assert!(!output.status.success());
    // One line, with the call id that finds the call's log lines.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: function shout is not deployed (404, call "),
        "{stderr}"
    );
}

#[test]
fn identical_artifacts_are_not_uploaded_twice() {
    let node = Node::start(WISP);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("wisp.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[function]]\nname = \"probe\"\nkind = \"wasm-http\"\nartifact = \"{}\"\n",
            wisp_testing::HTTP_PROBE
        ),
    )
    .unwrap();
    for expected in ["uploaded", "already on the gateway"] {
        let mut deploy = node.cli(WISP);
        deploy.args(["deploy", "-f"]).arg(&manifest);
        let output = run(deploy, b"");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "`{expected}` in {stderr}");
    }
    let artifacts: Value = wisp_testing::send(node.admin("GET", "/system/artifacts"), None).json();
    assert_eq!(artifacts.as_array().unwrap().len(), 1);
    assert_eq!(
        node.get("/function/probe").status,
        200,
        "the second deploy updated in place"
    );
}

#[test]
fn cli_errors_are_one_line_and_exit_non_zero() {
    let node = Node::start(WISP);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("wisp.toml");
    std::fs::write(
        &manifest,
        "[[function]]\nname = \"a\"\nkind = \"process\"\ncomand = \"cat\"\n",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["deploy".into(), "-f".into(), manifest.display().to_string()],
            "line 4: unknown key `comand`",
        ),
        (
            vec!["deploy".into(), "-f".into(), "/no/such/wisp.toml".into()],
            "read /no/such/wisp.toml",
        ),
        (
            vec!["describe".into(), "nope".into()],
            "function nope is not deployed in namespace default (404)",
        ),
        (vec!["rm".into(), "nope".into()], "(404)"),
        (
            vec![
                "invoke".into(),
                "x".into(),
                "--header".into(),
                "novalue".into(),
            ],
            "not `Name=Value`",
        ),
    ];
    for (args, expected) in cases {
        let mut command = node.cli(WISP);
        command.args(&args);
        let output = run(command, b"");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, not {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: `{expected}` in {stderr}"
        );
    }
    let mut wrong_token = node.cli(WISP);
    wrong_token.args(["ls", "--token", "wrong-token-wrong-token"]);
    let output = run(wrong_token, b"");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("(401)"));
    let mut unreachable = Command::new(WISP);
    unreachable.args(["ls", "--url", "http://127.0.0.1:1"]);
    let output = run(unreachable, b"");
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .starts_with("error: cannot reach wisp at http://127.0.0.1:1")
    );
}

#[test]
fn deploy_changes_only_what_changed_filters_prunes_and_sums_up() {
    let node = Node::start(WISP);
    // A function of another namespace, which no prune of this manifest touches.
    node.deploy_ok(serde_json::json!({
        "service": "keep", "namespace": "elsewhere", "kind": "process", "envProcess": "echo kept",
    }));
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("wisp.toml");
    let write = |functions: &[(&str, &str)]| {
        let text: String = functions
            .iter()
            .map(|(name, word)| {
                format!("[[function]]\nname = \"{name}\"\nkind = \"process\"\ncommand = \"echo {word}\"\n\n")
            })
            .collect();
        std::fs::write(&manifest, text).unwrap();
    };
    let deploy = |extra: &[&str]| {
        let mut command = node.cli(WISP);
        command.args(["deploy", "-f"]).arg(&manifest).args(extra);
        run(command, b"")
    };
    let stdout = |output: &Output| String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    write(&[("a", "one"), ("b", "two"), ("c", "three")]);
    let first = deploy(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).ends_with("3 deployed, 0 unchanged, 0 failed\n"),
        "{}",
        stdout(&first)
    );
    let again = deploy(&[]);
    assert!(
        stdout(&again).ends_with("0 deployed, 3 unchanged, 0 failed\n"),
        "{}",
        stdout(&again)
    );

    // Only the filtered function is deployed, though another changed too.
    write(&[("a", "uno"), ("b", "dos"), ("c", "three")]);
    let filtered = deploy(&["--filter", "b"]);
    assert!(
        stdout(&filtered).ends_with("1 deployed, 0 unchanged, 0 failed\n"),
        "{}",
        stdout(&filtered)
    );
    assert_eq!(node.post("/function/b", b"").body.trim(), "dos");
    assert_eq!(node.post("/function/a", b"").body.trim(), "one");
    let unknown = deploy(&["--filter", "nope"]);
    assert!(!unknown.status.success());
    assert_eq!(stderr(&unknown).lines().count(), 1, "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("--filter nope"),
        "{}",
        stderr(&unknown)
    );

    // c left the manifest; d cannot deploy: c is removed, a is deployed, and
    // the failure is one line and a non-zero exit.
    let mut text = String::new();
    for (name, word) in [("a", "uno"), ("b", "dos")] {
        text.push_str(&format!(
            "[[function]]\nname = \"{name}\"\nkind = \"process\"\ncommand = \"echo {word}\"\n\n"
        ));
    }
    text.push_str(
        "[[function]]\nname = \"d\"\nkind = \"wasm-http\"\nartifact = \"missing.wasm\"\n",
    );
    std::fs::write(&manifest, text).unwrap();
    let pruned = deploy(&["--prune"]);
    assert!(!pruned.status.success(), "{}", stdout(&pruned));
    assert_eq!(stderr(&pruned).lines().count(), 1, "{}", stderr(&pruned));
    assert!(stderr(&pruned).contains("deploy d"), "{}", stderr(&pruned));
    assert!(
        stdout(&pruned).contains("removed c.default"),
        "{}",
        stdout(&pruned)
    );
    assert!(
        stdout(&pruned).ends_with("1 deployed, 1 unchanged, 1 failed, 1 removed\n"),
        "{}",
        stdout(&pruned)
    );
    assert_eq!(node.post("/function/a", b"").body.trim(), "uno");
    assert_eq!(node.post("/function/c", b"").status, 404);
    assert_eq!(
        node.post("/function/keep.elsewhere", b"").body.trim(),
        "kept"
    );
}

/// Collects what a child writes to `pipe`, as it comes.
fn collect(pipe: impl std::io::Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    text
}

#[test]
fn wisp_dev_starts_a_node_deploys_redeploys_on_change_and_shows_logs() {
    use std::time::{Duration, Instant};
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = project.path();
    std::fs::create_dir(dir.join("app")).unwrap();
    let script = |word: &str| {
        let path = dir.join("app/run.sh");
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"greeting with {word}\" >&2\necho {word}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    script("v1");
    std::fs::write(
        dir.join("wisp.toml"),
        "[[function]]\nname = \"greet\"\nkind = \"process\"\nbuild = \"test ! -e broken\"\n\
         artifact = \"app\"\ncommand = \"./run.sh\"\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut dev = Command::new(WISP)
        .arg("dev")
        .current_dir(dir)
        .env("WISP_URL", &url)
        .env("WISP_DATA_DIR", data.path())
        .env_remove("WISP_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stdout, stderr) = (
        collect(dev.stdout.take().unwrap()),
        collect(dev.stderr.take().unwrap()),
    );
    let agent = ureq::Agent::new();
    let greet = |id: &str| {
        agent
            .post(&format!("{url}/function/greet"))
            .set("X-Call-Id", id)
            .call()
            .ok()
            .and_then(|response| response.into_string().ok())
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let eventually = |mut condition: Box<dyn FnMut() -> bool + '_>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    let output = || format!("{}{}", stderr.lock().unwrap(), stdout.lock().unwrap());
    assert!(
        eventually(Box::new(|| greet("first") == "v1")),
        "{}",
        output()
    );
    assert!(output().contains("started a node at"), "{}", output());

    // The function's lines come with their call ids.
    assert!(
        eventually(Box::new(|| {
            greet("dev-call-7");
            stdout
                .lock()
                .unwrap()
                .contains("greet dev-call-7 [stderr] greeting with v1")
        })),
        "{}",
        output()
    );

    // A change is built and deployed.
    script("v2");
    assert!(
        eventually(Box::new(|| greet("second") == "v2")),
        "{}",
        output()
    );

    // A build that fails is shown; the last good version keeps serving.
    std::fs::write(dir.join("broken"), "").unwrap();
    script("v3");
    assert!(
        eventually(Box::new(
            || output().contains("the last good version keeps serving")
        )),
        "{}",
        output()
    );
    assert!(
        output().contains("the build of greet failed"),
        "{}",
        output()
    );
    assert_eq!(greet("third"), "v2");

    // Ctrl-C stops the command and the node it started.
    // SAFETY: kill(2) on the pid of a child not yet waited for.
    assert_eq!(unsafe { libc::kill(dev.id() as i32, libc::SIGINT) }, 0);
    let status = dev.wait().unwrap();
    assert!(status.success(), "{status}: {}", output());
    assert!(
        eventually(Box::new(|| std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err())),
        "the node stopped"
    );
}

#[test]
fn an_openfaas_stack_file_and_a_spin_manifest_deploy_as_they_are() {
    let node = Node::start(WISP);
    let dir = tempfile::tempdir().unwrap();
    let file = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    };
    let deploy = |manifest: &Path| {
        let mut command = node.cli(WISP);
        command.args(["deploy", "-f"]).arg(manifest);
        run(command, b"")
    };
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    // OpenFaaS: classic watchdog functions, a handler directory and its fprocess.
    let script = file(
        "hello/hello.sh",
        "#!/bin/sh\nread name\necho \"hello $name from $GREETING\"\n",
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    file("upper/README", "tr does the work\n");
    let stack = file(
        "stack.yml",
        "version: 1.0\nprovider:\n  name: openfaas\n  gateway: http://127.0.0.1:8080\n\
         functions:\n  hello:\n    handler: ./hello\n    fprocess: ./hello.sh\n    \
         environment:\n      GREETING: stack\n  upper:\n    lang: python3\n    \
         handler: ./upper\n    image: example/upper:latest\n    fprocess: tr a-z A-Z\n",
    );
    let deployed = deploy(&stack);
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    assert!(
        stderr(&deployed).contains("note: functions.upper.lang (python3) is not used"),
        "{}",
        stderr(&deployed)
    );
    assert_eq!(
        node.post("/function/hello", b"ada\n").body,
        "hello ada from stack\n"
    );
    assert_eq!(node.post("/function/upper", b"shout").body, "SHOUT");

    // Spin: components of HTTP triggers, with their routes and variables.
    std::fs::copy(wisp_testing::HTTP_PROBE, dir.path().join("probe.wasm")).unwrap();
    let spin = file(
        "spin.toml",
        r#"spin_manifest_version = 2
[application]
name = "probes"
[variables]
greeting = { default = "hi" }
[[trigger.http]]
route = "/env"
component = "front"
[[trigger.http]]
route = "/back/..."
component = "back"
[component.front]
source = "probe.wasm"
environment = { MODE = "spin" }
variables = { greeting = "{{ greeting }} there" }
[component.back]
source = "probe.wasm"
"#,
    );
    let deployed = deploy(&spin);
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    let env = node.get("/env");
    assert_eq!(env.status, 200, "{}", env.body);
    for line in ["MODE=spin", "GREETING=hi there"] {
        assert!(env.body.lines().any(|l| l == line), "{line}: {}", env.body);
    }
    let back = node.get("/back/anything");
    assert_eq!(back.status, 200, "{}", back.body);
    assert!(back.body.contains("path=/back/anything"), "{}", back.body);

    // What has no wisp equivalent is one line naming its key, and nothing is deployed.
    let text = std::fs::read_to_string(&spin).unwrap();
    // Appended, the key lands in [component.back].
    let spin = file(
        "sqlite/spin.toml",
        &(text + "sqlite_databases = [\"default\"]\n"),
    );
    let refused = deploy(&spin);
    assert!(!refused.status.success());
    assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("unknown key `sqlite_databases`"),
        "{}",
        stderr(&refused)
    );
    let stack = file(
        "cpu/stack.yml",
        "functions:\n  capped:\n    handler: .\n    fprocess: cat\n    limits:\n      cpu: 100m\n",
    );
    let refused = deploy(&stack);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("unknown key `cpu`"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(node.post("/function/capped", b"").status, 404);
}

#[test]
fn contexts_choose_the_node_and_errors_say_what_to_set() {
    let node = Node::start(WISP);
    node.deploy_ok(serde_json::json!({
        "service": "hello", "kind": "process", "envProcess": "echo hello",
    }));
    let config = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // The CLI of a second terminal: no URL, no token, no local node's token.
    let wisp = |args: &[&str]| {
        let mut command = Command::new(WISP);
        command
            .args(args)
            .env_remove("WISP_URL")
            .env_remove("WISP_TOKEN")
            .env("XDG_CONFIG_HOME", config.path())
            .env("WISP_DATA_DIR", data.path());
        run(command, b"")
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let fails_saying = |output: &Output, said: &str| {
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(said), "{said}: {stderr}");
    };

    fails_saying(&wisp(&["ls", "--url", &node.url]), "--token or WISP_TOKEN");
    fails_saying(
        &wisp(&["ls", "--url", "http://127.0.0.1:1"]),
        "start a node with `wisp up`",
    );
    fails_saying(
        &wisp(&["login", &node.url, "--token", "wisp_wrong", "--name", "dev"]),
        "(401)",
    );
    assert!(text(&wisp(&["context", "ls"]).stdout).starts_with("no contexts"));

    let login = wisp(&["login", &node.url, "--token", &node.token, "--name", "dev"]);
    assert!(login.status.success(), "{}", text(&login.stderr));
    assert_eq!(
        text(&wisp(&["context", "ls"]).stdout),
        format!("* dev\t{}\n", node.url)
    );
    let listed = wisp(&["ls"]);
    assert!(
        text(&listed.stdout).contains("hello"),
        "{}",
        text(&listed.stderr)
    );
    let other = wisp(&["ls", "--namespace", "other"]);
    assert!(other.status.success(), "{}", text(&other.stderr));
    assert!(
        !text(&other.stdout).contains("hello"),
        "{}",
        text(&other.stdout)
    );

    let version = text(&wisp(&["version"]).stdout);
    let release = env!("CARGO_PKG_VERSION");
    assert_eq!(
        version,
        format!(
            "client: wisp {release}\nnode:   wisp {release} at {}\n",
            node.url
        )
    );
    let included = text(&wisp(&["invoke", "hello", "-i"]).stdout);
    assert!(included.starts_with("HTTP/1.1 200 OK\n"), "{included}");
    assert!(included.contains("\nx-call-id: "), "{included}");
    assert!(included.ends_with("\n\nhello\n"), "{included}");

    fails_saying(&wisp(&["context", "use", "nope"]), "no context nope");
    let completions = wisp(&["completions", "bash"]);
    assert!(
        text(&completions.stdout).contains("complete -F _wisp"),
        "{}",
        text(&completions.stdout)
    );
    let saved = std::fs::metadata(config.path().join("wisp/contexts.toml")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&saved.permissions()) & 0o777,
        0o600,
        "the saved token is its owner's only"
    );
}

#[test]
fn every_template_of_wisp_new_deploys_from_anywhere_and_answers() {
    let node = Node::start(WISP);
    // Outside the repository: a project stands on its own.
    let projects = tempfile::tempdir().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let cases = [
        (
            "rust-http",
            r#"{"name": "ada"}"#,
            r#"{"message":"hello, ada"}"#,
        ),
        (
            "rust-stdio",
            "one two three\n",
            r#"{"lines":1,"words":3,"bytes":14}"#,
        ),
        (
            "python-http",
            r#"{"name": "ada"}"#,
            r#"{"message": "hello, ada"}"#,
        ),
        (
            "js-http",
            r#"{"name": "ada"}"#,
            r#"{"message":"hello, ada"}"#,
        ),
        (
            "c-stdio",
            "one two three\n",
            r#"{"lines":1,"words":3,"bytes":14}"#,
        ),
        ("shell", "ada", "hello, ada"),
        (
            "python",
            r#"{"name": "ada"}"#,
            r#"{"message": "hello, ada"}"#,
        ),
        (
            "python-app",
            r#"{"name": "ada"}"#,
            r#"{"message": "hello, ada"}"#,
        ),
        (
            "node-app",
            r#"{"name": "ada"}"#,
            r#"{"message":"hello, ada"}"#,
        ),
    ];
    for (template, request, answer) in cases {
        let name = format!("my-{template}");
        let dir = projects.path().join(&name);
        let mut new = node.cli(WISP);
        new.args(["new", &name, "--template", template, "--dir"])
            .arg(&dir);
        let created = run(new, b"");
        assert!(
            created.status.success(),
            "{template}: {}",
            text(&created.stderr)
        );
        assert!(dir.join("README.md").is_file(), "{template}: a README");

        let mut deploy = node.cli(WISP);
        deploy.current_dir(&dir).arg("deploy");
        let deployed = run(deploy, b"");
        assert!(
            deployed.status.success(),
            "{template}: {}{}",
            text(&deployed.stdout),
            text(&deployed.stderr)
        );
        let mut invoke = node.cli(WISP);
        invoke.args(["invoke", &name]);
        let answered = run(invoke, request.as_bytes());
        assert!(
            answered.status.success(),
            "{template}: {}",
            text(&answered.stderr)
        );
        assert_eq!(text(&answered.stdout).trim(), answer, "{template}");
    }

    let mut again = node.cli(WISP);
    again
        .args(["new", "my-shell", "--template", "shell", "--dir"])
        .arg(projects.path().join("my-shell"));
    let refused = run(again, b"");
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("exists"),
        "{}",
        text(&refused.stderr)
    );
    let mut unknown = node.cli(WISP);
    unknown.args(["new", "x", "--template", "cobol"]);
    let refused = run(unknown, b"");
    assert!(
        text(&refused.stderr).contains("no template cobol"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn a_build_without_its_toolchain_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wisp.toml"),
        "[[function]]\nname = \"x\"\nkind = \"wasm-http\"\nbuild = \"componentize-py -w x componentize app\"\nartifact = \"x.wasm\"\n",
    )
    .unwrap();
    let mut build = Command::new(WISP);
    build
        .current_dir(dir.path())
        .arg("build")
        .env("PATH", "/usr/bin:/bin");
    let output = run(build, b"");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(stderr.contains("pip install componentize-py"), "{stderr}");
}
