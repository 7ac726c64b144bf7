//! Test support for wisp: the paths of the guest components built from
//! `guests/` by this crate's build script, and [`Node`], a harness that runs
//! the real `wisp up` on an ephemeral port and talks to it over HTTP, and
//! [`NatsCluster`], real NATS servers for nodes in cluster mode.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

mod components;
mod nats;

pub use components::{many_memories, many_memories_spinning};
pub use nats::NatsCluster;

/// A `wasi:http` guest: `/` echoes the request; `/trap`, `/loop`,
/// `/sleep?ms=`, `/grow?mib=`, `/status?code=`, `/big?bytes=`, `/env`,
/// `/stream?chunks=&ms=` (a slow streamed body), `/linger?ms=` (answers,
/// then runs on for `ms` and logs when it stopped) misbehave on purpose.
pub const HTTP_PROBE: &str = env!("WISP_GUEST_HTTP_PROBE");
/// A `wasi:http` guest using `wasi:keyvalue`: `/get`, `/set` (the body),
/// `/delete`, `/exists`, `/increment?by=`, `/keys?cursor=`, `/set-many`
/// (`key=value` lines), `/get-many?keys=a,b`, each with `?store=&key=`; a
/// store error is a 403, 404 or 500 naming it.
pub const KV_PROBE: &str = env!("WISP_GUEST_KV_PROBE");
/// A `wasm32-wasip1` module as Spin's Rust SDK builds it: `GET /` says
/// hello; `GET|PUT|DELETE /kv/{store}/{key}` and `GET /keys/{store}` use
/// Spin's key-value interface; a store error is a 500 naming it.
pub const SPIN_PROBE: &str = env!("WISP_GUEST_SPIN_PROBE");
/// A Spin SDK module reading a Spin variable: it imports
/// `fermyon:spin/variables@2.0.0`, which wisp does not provide.
pub const SPIN_VARIABLES: &str = env!("WISP_GUEST_SPIN_VARIABLES");
/// A `wasi:cli` command guest: the body `env`, `exit N`, `loop` or `trap` chooses, anything else is echoed.
pub const STDIO_PROBE: &str = env!("WISP_GUEST_STDIO_PROBE");

/// A `process-http` app in Python, listening on `$PORT`: `/` and any other
/// path echo `METHOD PATH?QUERY` with the `X-Test` and `X-Call-Id` headers,
/// `$VERSION`, the replica (its `$PORT`, which no other replica has) and the body; `/sleep?ms=` answers late;
/// `/crash` exits mid-request; `/_/ready` answers 200.
pub const HTTP_APP: &str = r#"#!/usr/bin/env python3
import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def handle_any(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        if url.path == "/crash":
            os._exit(1)
        if url.path == "/sleep":
            time.sleep(int(parse_qs(url.query)["ms"][0]) / 1000)
        text = "%s %s x-test=%s call=%s version=%s replica=%s body=%s" % (
            self.command, self.path, self.headers.get("X-Test"), self.headers.get("X-Call-Id"),
            os.environ.get("VERSION"), os.environ["PORT"], body)
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = handle_any

    def log_message(self, format, *args):
        pass

class Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True

print("app starting", flush=True)
Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// A tar archive holding one executable file: a `process` function's artifact.
pub fn script_archive(name: &str, script: &str) -> Vec<u8> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    archive
        .append_data(&mut header, name, script.as_bytes())
        .expect("append to an in-memory archive");
    archive.into_inner().expect("finish an in-memory archive")
}

/// How long a node may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A response, whatever its status.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` in {}", self.body))
            .to_owned()
    }
}

/// Sends a request and returns the response, also for 4xx and 5xx.
pub fn send(request: ureq::Request, body: Option<&[u8]>) -> Response {
    let result = match body {
        Some(body) => request.send_bytes(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("request failed: {error}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = response.header(&name).unwrap_or_default().to_owned();
            (name, value)
        })
        .collect();
    let body = response.into_string().unwrap_or_default();
    Response {
        status,
        headers,
        body,
    }
}

/// A running `wisp up` with its own data directory.
pub struct Node {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin token.
    pub token: String,
    /// The web UI, `http://127.0.0.1:PORT/ui/`, on a listener of its own
    /// (`None` when the node serves no UI).
    pub ui_url: Option<String>,
    /// The data directory.
    pub data_dir: PathBuf,
    log: PathBuf,
    /// The node's NATS server, when it is a cluster of one (`WISP_TEST_CLUSTER`).
    nats: Option<NatsCluster>,
    _scratch: tempfile::TempDir,
    agent: ureq::Agent,
}

impl Node {
    /// Starts a node with a fresh data directory.
    pub fn start(wisp: &str) -> Self {
        Self::start_args(wisp, &[])
    }

    /// Starts a node with a fresh data directory and extra `wisp up` arguments.
    pub fn start_args(wisp: &str, args: &[&str]) -> Self {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let data_dir = scratch.path().join("data");
        Self::start_with(wisp, scratch, data_dir, args)
    }

    /// Starts a node on `data_dir` with extra `wisp up` arguments; `scratch` holds its log.
    pub fn start_with(
        wisp: &str,
        scratch: tempfile::TempDir,
        data_dir: PathBuf,
        args: &[&str],
    ) -> Self {
        // One log per start, so a restarted node's log does not hide the first one's.
        let log = (0..)
            .map(|n| scratch.path().join(format!("wisp-{n}.log")))
            .find(|path| !path.exists())
            .expect("a free log name");
        // With WISP_TEST_CLUSTER set, every node is a cluster of one on a
        // NATS server of its own, kept in the scratch directory across restarts.
        let nats = (std::env::var_os("WISP_TEST_CLUSTER").is_some()
            && !args.contains(&"--cluster"))
        .then(|| NatsCluster::start_at(1, &scratch.path().join("nats")));
        let cluster_args = nats.as_ref().map(|nats| {
            let key = scratch.path().join("cluster.key");
            std::fs::write(&key, "5e".repeat(32)).expect("write the cluster key");
            vec![
                "--cluster".to_owned(),
                nats.urls_from(0),
                "--cluster-key-file".to_owned(),
                key.display().to_string(),
            ]
        });
        let mut child = Command::new(wisp)
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(args)
            .args(cluster_args.into_iter().flatten())
            .env("WISP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start wisp up");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut url, mut token, mut ui_url) = (None, None, None);
        while url.is_none() || token.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = line.strip_prefix("listening on ") {
                        url = Some(found.to_owned());
                    } else if let Some(found) = line.strip_prefix("admin token: ") {
                        token = Some(found.to_owned());
                    } else if let Some(found) = line.strip_prefix("web UI on ") {
                        ui_url = Some(found.to_owned());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "wisp up did not start: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        Self {
            child: Some(child),
            url: url.expect("read above"),
            token: token.expect("read above"),
            ui_url,
            data_dir,
            log,
            nats,
            _scratch: scratch,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
        }
    }

    /// Stops the node with SIGTERM, as a service manager would, and returns its exit status.
    /// The scratch directory is handed back so the data directory can be reused.
    pub fn stop(mut self) -> (ExitStatus, tempfile::TempDir) {
        let mut child = self.child.take().expect("the node is running");
        let terminated = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        assert!(
            terminated.is_ok_and(|status| status.success()),
            "send SIGTERM"
        );
        let status = child.wait().expect("wait for wisp");
        (status, self.take_scratch())
    }

    /// Kills the node with SIGKILL, as a crash or the OOM killer would; the
    /// scratch directory is handed back so the data directory can be reused.
    pub fn kill(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().expect("the node is running");
        child.kill().expect("send SIGKILL");
        child.wait().expect("wait for wisp");
        self.take_scratch()
    }

    fn take_scratch(&mut self) -> tempfile::TempDir {
        // Its NATS server stops with it; a restart starts one on the same store.
        self.nats = None;
        std::mem::replace(
            &mut self._scratch,
            tempfile::tempdir().expect("temporary directory"),
        )
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node is running").id()
    }

    /// The most memory the node's process has held so far (its `VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the node's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc status")
            * 1024
    }

    /// What the node has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request without a token.
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent.request(method, &format!("{}{path}", self.url))
    }

    /// A request with the admin token.
    pub fn admin(&self, method: &str, path: &str) -> ureq::Request {
        self.request(method, path)
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// `GET path` without a token.
    pub fn get(&self, path: &str) -> Response {
        send(self.request("GET", path), None)
    }

    /// `GET path` without a token on a thread of its own, for a request
    /// that should still be in flight while the test goes on.
    pub fn get_in_background(&self, path: &str) -> std::thread::JoinHandle<Response> {
        let request = self.request("GET", path);
        std::thread::spawn(move || send(request, None))
    }

    /// `POST path` with `body`, without a token.
    pub fn post(&self, path: &str, body: &[u8]) -> Response {
        send(self.request("POST", path), Some(body))
    }

    /// Uploads an artifact and returns its digest.
    pub fn upload(&self, bytes: &[u8]) -> String {
        let response = send(self.admin("PUT", "/system/artifacts"), Some(bytes));
        assert_eq!(response.status, 200, "upload: {}", response.body);
        response.json()["digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    }

    /// Uploads the file at `path` and returns its digest.
    pub fn upload_file(&self, path: impl AsRef<Path>) -> String {
        self.upload(&std::fs::read(path).expect("read the artifact"))
    }

    /// `POST /system/functions` with a JSON deployment.
    pub fn deploy(&self, deployment: serde_json::Value) -> Response {
        send(
            self.admin("POST", "/system/functions"),
            Some(deployment.to_string().as_bytes()),
        )
    }

    /// Deploys and insists it worked.
    pub fn deploy_ok(&self, deployment: serde_json::Value) {
        let response = self.deploy(deployment);
        assert_eq!(response.status, 202, "deploy: {}", response.body);
    }

    /// The `wisp` CLI pointed at this node.
    pub fn cli(&self, wisp: &str) -> Command {
        let mut command = Command::new(wisp);
        command
            .env("WISP_URL", &self.url)
            .env("WISP_TOKEN", &self.token)
            .env_remove("WISP_DATA_DIR");
        command
    }

    /// Polls `condition` until it holds or `within` passes.
    pub fn eventually(&self, within: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        condition()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- wisp log ---\n{}", self.log());
        }
    }
}
