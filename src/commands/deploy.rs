//! `wisp deploy`: build, upload each artifact once, deploy what changed,
//! and with `--prune` remove what the manifest no longer lists.

use std::{
    collections::BTreeSet,
    io::{IsTerminal as _, Read as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Args;
use sha2::{Digest as _, Sha256};
use wisp_core::{
    api::{FunctionDeployment, FunctionStatus},
    manifest::FunctionManifest,
    spec::{DEFAULT_NAMESPACE, FunctionSpec},
};

use super::{Remote, build};
use crate::client::Client;

/// Uploads at least this large get a progress bar.
const PROGRESS_THRESHOLD: u64 = 1 << 20;

/// Build, upload and deploy the functions of a wisp.toml.
///
/// Example: wisp deploy --filter hello --prune (or -f spin.toml, -f stack.yml)
#[derive(Args)]
pub struct Deploy {
    /// The manifest.
    #[arg(short = 'f', long = "file", default_value = "wisp.toml")]
    file: PathBuf,
    /// Skip the build commands.
    #[arg(long)]
    no_build: bool,
    /// Deploy only this function of the manifest (repeatable).
    #[arg(long = "filter", value_name = "NAME")]
    filter: Vec<String>,
    /// Remove the functions of the manifest's namespaces that it no longer lists.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    remote: Remote,
}

/// What happened to one function of the manifest.
pub(crate) enum Outcome {
    Deployed(Box<FunctionStatus>),
    Unchanged(Box<FunctionStatus>),
    Failed(anyhow::Error),
}

impl Deploy {
    pub fn execute(self) -> anyhow::Result<()> {
        let (manifest, dir) = build::load(&self.file)?;
        if manifest.function.is_empty() {
            bail!("{} declares no [[function]]", self.file.display());
        }
        if let Some(unknown) = self
            .filter
            .iter()
            .find(|name| !manifest.function.iter().any(|f| &f.name == *name))
        {
            bail!(
                "--filter {unknown}: {} declares no such function",
                self.file.display()
            );
        }
        let client = Client::new(&self.remote);
        let chosen = manifest
            .function
            .iter()
            .filter(|f| self.filter.is_empty() || self.filter.contains(&f.name));
        let mut outcomes = Vec::new();
        for function in chosen {
            let outcome = deploy_function(&client, function, &dir, !self.no_build, &self.remote)
                .with_context(|| format!("deploy {}", function.name));
            outcomes.push(outcome.unwrap_or_else(Outcome::Failed));
        }
        let pruned = if self.prune {
            self.prune(&client, &manifest.function)?
        } else {
            0
        };
        let count = |wanted: fn(&Outcome) -> bool| outcomes.iter().filter(|o| wanted(o)).count();
        let failed = count(|o| matches!(o, Outcome::Failed(_)));
        if self.remote.json {
            let statuses: Vec<&FunctionStatus> = outcomes
                .iter()
                .filter_map(|outcome| match outcome {
                    Outcome::Deployed(status) | Outcome::Unchanged(status) => Some(&**status),
                    Outcome::Failed(_) => None,
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&statuses)?);
        } else {
            let mut summary = format!(
                "{} deployed, {} unchanged, {failed} failed",
                count(|o| matches!(o, Outcome::Deployed(_))),
                count(|o| matches!(o, Outcome::Unchanged(_))),
            );
            if self.prune {
                summary.push_str(&format!(", {pruned} removed"));
            }
            println!("{summary}");
        }
        let total = outcomes.len();
        let mut errors = outcomes.into_iter().filter_map(|outcome| match outcome {
            Outcome::Failed(error) => Some(error),
            _ => None,
        });
        match (errors.next(), failed) {
            (None, _) => Ok(()),
            (Some(error), 1) => Err(error),
            (Some(first), _) => {
                for error in std::iter::once(first).chain(errors) {
                    eprintln!("error: {error:#}");
                }
                bail!("{failed} of {total} functions failed to deploy")
            }
        }
    }

    /// Removes the functions of the manifest's namespaces it does not list;
    /// returns how many.
    fn prune(&self, client: &Client, functions: &[FunctionManifest]) -> anyhow::Result<usize> {
        let namespace_of = |f: &FunctionManifest| {
            f.namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.into())
        };
        let namespaces: BTreeSet<String> = functions.iter().map(namespace_of).collect();
        let mut removed = 0;
        for namespace in namespaces {
            for status in client.functions_in(&namespace)? {
                let name = &status.deployment.service;
                if functions
                    .iter()
                    .any(|f| &f.name == name && namespace_of(f) == namespace)
                {
                    continue;
                }
                client
                    .remove(name, Some(namespace.clone()))
                    .with_context(|| format!("remove {name}.{namespace}"))?;
                if !self.remote.json {
                    println!(
                        "removed {name}.{namespace}: {} no longer lists it",
                        self.file.display()
                    );
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Builds, uploads and deploys one function, unless the node runs it as it is.
pub(crate) fn deploy_function(
    client: &Client,
    function: &FunctionManifest,
    dir: &Path,
    build: bool,
    remote: &Remote,
) -> anyhow::Result<Outcome> {
    if build {
        build::run_build(function, dir)?;
    }
    let image = match artifact_bytes(function, dir)? {
        Some(bytes) => Some(upload(client, &function.name, bytes)?),
        None => None,
    };
    let files = match &function.files {
        Some(files) => {
            let path = dir.join(files);
            if !path.is_dir() {
                bail!(
                    "the files of {} at {} must be a directory",
                    function.name,
                    path.display()
                );
            }
            Some(upload(client, &function.name, pack(&path)?)?)
        }
        None => None,
    };
    let deployment = function.deployment(image, files);
    let namespace = deployment.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    if let Some(current) = client.function_if_any(&format!("{}.{namespace}", function.name))?
        && same(&current.deployment, &deployment)
    {
        if !remote.json {
            println!("unchanged {}", function.name);
        }
        return Ok(Outcome::Unchanged(Box::new(current)));
    }
    let status = with_spinner(&format!("deploying {}", function.name), || {
        client.deploy(&deployment)
    })?;
    if !remote.json {
        let route = status
            .deployment
            .route
            .as_deref()
            .map(|r| format!(" and {}{r}", remote.url()))
            .unwrap_or_default();
        println!(
            "deployed {} ({}) at {}/function/{}{route}",
            function.name,
            function.kind,
            remote.url(),
            function.name
        );
    }
    Ok(Outcome::Deployed(Box::new(status)))
}

/// Runs `work` with a spinner on a terminal: a deploy waits while the node
/// compiles a component or starts an app's replicas.
fn with_spinner<T>(message: &str, work: impl FnOnce() -> T) -> T {
    if !std::io::stderr().is_terminal() {
        return work();
    }
    let spinner = indicatif::ProgressBar::new_spinner().with_message(message.to_owned());
    spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    let result = work();
    spinner.finish_and_clear();
    result
}

/// Whether a deployment would change nothing of the function deployed:
/// both read the same once every default is filled in.
fn same(current: &FunctionDeployment, wanted: &FunctionDeployment) -> bool {
    match (
        FunctionSpec::from_deployment(current.clone()),
        FunctionSpec::from_deployment(wanted.clone()),
    ) {
        (Ok(current), Ok(wanted)) => current == wanted,
        _ => false,
    }
}

/// The bytes to upload: a `.wasm` file as it is, a process's directory [packed](pack).
fn artifact_bytes(function: &FunctionManifest, dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(artifact) = &function.artifact else {
        if function.kind.is_wasm() {
            bail!(
                "function {} needs `artifact`: the path of its .wasm file",
                function.name
            );
        }
        return Ok(None);
    };
    let path = dir.join(artifact);
    if function.kind.is_process() && path.is_dir() {
        return pack(&path).map(Some);
    }
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "read the artifact of {} at {}",
            function.name,
            path.display()
        )
    })?;
    Ok(Some(bytes))
}

/// A directory as a reproducible tar archive (so unchanged trees are not uploaded again).
fn pack(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    archive.mode(tar::HeaderMode::Deterministic);
    archive.follow_symlinks(false);
    append_sorted(&mut archive, path, Path::new(""))
        .with_context(|| format!("pack {} as a tar archive", path.display()))?;
    Ok(archive.into_inner()?)
}

/// Appends a directory's entries in name order, so the same tree gives the same bytes.
fn append_sorted(
    archive: &mut tar::Builder<Vec<u8>>,
    root: &Path,
    relative: &Path,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(relative))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = relative.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            archive.append_dir(&name, entry.path())?;
            append_sorted(archive, root, &name)?;
        } else {
            archive.append_path_with_name(entry.path(), &name)?;
        }
    }
    Ok(())
}

/// Uploads unless the gateway already has these bytes; returns the digest.
fn upload(client: &Client, name: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if client.has_artifact(&digest)? {
        eprintln!("{name}: artifact {digest} is already on the gateway");
        return Ok(digest);
    }
    let size = bytes.len() as u64;
    let reader = std::io::Cursor::new(bytes);
    let stored = if size >= PROGRESS_THRESHOLD {
        let bar = indicatif::ProgressBar::new(size).with_message(format!("uploading {name}"));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        let stored = client.upload(bar.wrap_read(reader), size);
        bar.finish_and_clear();
        stored
    } else {
        client.upload(reader.take(size), size)
    }
    .with_context(|| format!("upload the artifact of {name}"))?;
    if stored.digest != digest {
        bail!(
            "the gateway stored {name}'s artifact as {} but it hashes to {digest}",
            stored.digest
        );
    }
    eprintln!("{name}: uploaded artifact {digest} ({size} bytes)");
    Ok(digest)
}
