//! `wisp dev`: the everyday loop. Starts a local node unless one answers,
//! builds and deploys every function of the manifest, then watches their
//! sources and deploys again only what changed, printing the functions'
//! log lines with their call ids, until Ctrl-C.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::Args;
use globset::{Glob, GlobSet, GlobSetBuilder};
use wisp_core::{
    manifest::{FunctionManifest, Manifest},
    spec::DEFAULT_NAMESPACE,
    telemetry::LogEntry,
};

use super::{Remote, build, default_data_dir, deploy, logs};
use crate::client::Client;

/// How often the sources are looked at.
const POLL: Duration = Duration::from_millis(300);
/// How long a started node has to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Directories never watched: build output and tools' own.
const SKIPPED: [&str; 5] = ["target", ".git", "node_modules", "__pycache__", ".wisp"];

/// Build, deploy and watch the functions of a wisp.toml, with their logs.
///
/// Example: wisp dev -f my-project/wisp.toml
#[derive(Args)]
pub struct Dev {
    /// The manifest.
    #[arg(short = 'f', long = "file", default_value = "wisp.toml")]
    file: PathBuf,
    #[command(flatten)]
    remote: Remote,
}

/// A function and the files that make it.
struct Watched {
    function: FunctionManifest,
    globs: Option<GlobSet>,
    roots: Vec<PathBuf>,
    fingerprint: Vec<(PathBuf, SystemTime, u64)>,
}

impl Dev {
    pub fn execute(self) -> anyhow::Result<()> {
        let node = LocalNode::ensure(&self.remote)?;
        let client = Client::new(&self.remote);
        let (manifest, dir) = build::load(&self.file)?;
        let mut watched = watch_list(&manifest, &dir)?;
        let mut manifest_stamp = stamp(&self.file);
        // Ctrl-C (or SIGTERM) stops the node this command started, then the command.
        let child = Arc::new(Mutex::new(node));
        stop_on_signal(child.clone());
        for namespace in namespaces(&manifest) {
            follow_logs(&self.remote, namespace);
        }
        for entry in &mut watched {
            deploy_and_report(&client, &entry.function, &dir, &self.remote);
            entry.fingerprint = fingerprint(&entry.roots, entry.globs.as_ref());
        }
        eprintln!("watching {} for changes; Ctrl-C to stop", dir.display());
        loop {
            std::thread::sleep(POLL);
            let stamp_now = stamp(&self.file);
            if stamp_now != manifest_stamp {
                manifest_stamp = stamp_now;
                match build::load(&self.file).and_then(|(manifest, _)| {
                    let list = watch_list(&manifest, &dir)?;
                    Ok((manifest, list))
                }) {
                    Ok((manifest, list)) => {
                        eprintln!("{} changed", self.file.display());
                        watched = list;
                        for namespace in namespaces(&manifest) {
                            follow_logs(&self.remote, namespace);
                        }
                        for entry in &mut watched {
                            deploy_and_report(&client, &entry.function, &dir, &self.remote);
                            entry.fingerprint = fingerprint(&entry.roots, entry.globs.as_ref());
                        }
                    }
                    Err(error) => eprintln!("error: {error:#}; the last good manifest stays"),
                }
                continue;
            }
            for entry in &mut watched {
                let now = fingerprint(&entry.roots, entry.globs.as_ref());
                if now == entry.fingerprint {
                    continue;
                }
                eprintln!("{} changed", entry.function.name);
                deploy_and_report(&client, &entry.function, &dir, &self.remote);
                // What the build wrote is not a change to build again for.
                entry.fingerprint = fingerprint(&entry.roots, entry.globs.as_ref());
            }
        }
    }
}

/// Builds and deploys one function; a failure is printed, and the version
/// the node runs keeps serving.
fn deploy_and_report(client: &Client, function: &FunctionManifest, dir: &Path, remote: &Remote) {
    let started = Instant::now();
    match deploy::deploy_function(client, function, dir, true, remote) {
        Ok(deploy::Outcome::Deployed(_)) => {
            eprintln!("{}: ready in {:.1?}", function.name, started.elapsed());
        }
        Ok(_) => {}
        Err(error) => eprintln!(
            "error: {}: {error:#}; the last good version keeps serving",
            function.name
        ),
    }
}

/// The namespaces a manifest deploys to.
fn namespaces(manifest: &Manifest) -> BTreeSet<String> {
    manifest
        .function
        .iter()
        .map(|f| {
            f.namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.into())
        })
        .collect()
}

/// What each function watches: its `watch` globs, else its artifact
/// directory (a process), else the manifest's directory when it has a build,
/// else its artifact file.
fn watch_list(manifest: &Manifest, dir: &Path) -> anyhow::Result<Vec<Watched>> {
    manifest
        .function
        .iter()
        .map(|function| {
            let (roots, globs) = if function.watch.is_empty() {
                let artifact = function.artifact.as_ref().map(|a| dir.join(a));
                let roots = match artifact {
                    Some(path) if path.is_dir() || function.build.is_none() => vec![path],
                    _ => vec![dir.to_owned()],
                };
                (roots, None)
            } else {
                let mut set = GlobSetBuilder::new();
                for pattern in &function.watch {
                    let glob = Glob::new(pattern)
                        .with_context(|| format!("watch of {}: `{pattern}`", function.name))?;
                    set.add(glob);
                }
                (vec![dir.to_owned()], Some(set.build()?))
            };
            Ok(Watched {
                function: function.clone(),
                globs,
                roots,
                fingerprint: Vec::new(),
            })
        })
        .collect()
}

/// The files under `roots` (matching `globs`, relative to the first root),
/// each with its modification time and size, in path order.
fn fingerprint(roots: &[PathBuf], globs: Option<&GlobSet>) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = roots.to_vec();
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            let skipped = path
                .file_name()
                .is_some_and(|name| SKIPPED.iter().any(|skip| name == *skip));
            if skipped && !roots.contains(&path) {
                continue;
            }
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|entry| entry.path()));
            }
            continue;
        }
        let relative = path.strip_prefix(&roots[0]).unwrap_or(&path);
        if globs.is_some_and(|globs| !globs.is_match(relative)) {
            continue;
        }
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        files.push((path, modified, metadata.len()));
    }
    files.sort();
    files
}

fn stamp(file: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(file).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Prints a namespace's new log lines as they come, on a thread of its own.
fn follow_logs(remote: &Remote, namespace: String) {
    static FOLLOWED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    if !FOLLOWED.lock().expect("followed").insert(namespace.clone()) {
        return;
    }
    let client = Client::new(remote);
    std::thread::spawn(move || {
        let query = [
            ("namespace", namespace.clone()),
            ("tail", "0".to_owned()),
            ("follow", "true".to_owned()),
        ];
        loop {
            match client.logs(&query) {
                Ok(reader) => {
                    for line in reader.lines().map_while(Result::ok) {
                        if let Ok(entry) = serde_json::from_str::<LogEntry>(&line) {
                            logs::print_line(&entry.function, &entry);
                        }
                    }
                }
                Err(error) => eprintln!("logs of namespace {namespace}: {error:#}"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// A node this command started, stopped with it.
struct LocalNode(Option<Child>);

impl LocalNode {
    /// Uses the node at `remote.url` if it answers; else starts one there
    /// (only on a loopback URL), with the default data directory.
    fn ensure(remote: &Remote) -> anyhow::Result<Self> {
        let probe = Client::new(remote);
        if probe.healthy() {
            eprintln!("using the node at {}", remote.url());
            return Ok(Self(None));
        }
        let url = remote.url();
        let listen = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|address| {
                address.starts_with("127.0.0.1:") || address.starts_with("localhost:")
            })
            .with_context(|| {
                format!(
                    "no node answers at {} and wisp dev starts one only on a loopback \
                     address such as http://127.0.0.1:8080",
                    url
                )
            })?
            .replace("localhost:", "127.0.0.1:");
        let data_dir = default_data_dir();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("create {}", data_dir.display()))?;
        let log = data_dir.join("dev-node.log");
        let mut child = Command::new(std::env::current_exe().context("find the wisp program")?)
            .args(["up", "--no-ui", "--listen", &listen])
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?,
            )
            .spawn()
            .context("start a node with `wisp up`")?;
        let stdout = child.stdout.take();
        let node = Self(Some(child));
        // The node's STDOUT is read to its end, so it never writes to a closed pipe.
        let (listening, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout?).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = listening.send(url.to_owned());
                }
            }
            Some(())
        });
        match started.recv_timeout(START_TIMEOUT) {
            Ok(url) => {
                eprintln!("started a node at {url} (its log: {})", log.display());
                Ok(node)
            }
            Err(_) => {
                drop(node);
                bail!(
                    "the node did not start: {}",
                    std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .lines()
                        .last()
                        .unwrap_or("see its log")
                )
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SIGTERM: the node stops gracefully, its replicas with it.
            let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
            // SAFETY: kill(2) on the pid of a child not yet waited for.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// On Ctrl-C or SIGTERM, stops the node `wisp dev` started, then exits.
fn stop_on_signal(node: Arc<Mutex<LocalNode>>) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for signals");
        runtime.block_on(async {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        });
        eprintln!("stopping");
        node.lock().expect("node").stop();
        std::process::exit(0);
    });
}
