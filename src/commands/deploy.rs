//! `wisp deploy`: build, upload each artifact once, deploy.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Args;
use sha2::{Digest as _, Sha256};
use wisp_core::manifest::FunctionManifest;

use super::{Remote, build};
use crate::client::Client;

/// Uploads at least this large get a progress bar.
const PROGRESS_THRESHOLD: u64 = 1 << 20;

/// Build, upload and deploy the functions of a wisp.toml.
#[derive(Args)]
pub struct Deploy {
    /// The manifest.
    #[arg(short = 'f', long = "file", default_value = "wisp.toml")]
    file: PathBuf,
    /// Skip the build commands.
    #[arg(long)]
    no_build: bool,
    #[command(flatten)]
    remote: Remote,
}

impl Deploy {
    pub fn execute(self) -> anyhow::Result<()> {
        let (manifest, dir) = build::load(&self.file)?;
        if manifest.function.is_empty() {
            bail!("{} declares no [[function]]", self.file.display());
        }
        let client = Client::new(&self.remote);
        let mut deployed = Vec::new();
        for function in &manifest.function {
            if !self.no_build {
                build::run_build(function, &dir)?;
            }
            let image = match artifact_bytes(function, &dir)? {
                Some(bytes) => Some(upload(&client, &function.name, bytes)?),
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
                    Some(upload(&client, &function.name, pack(&path)?)?)
                }
                None => None,
            };
            let status = client
                .deploy(&function.deployment(image, files))
                .with_context(|| format!("deploy {}", function.name))?;
            if !self.remote.json {
                let route = status
                    .deployment
                    .route
                    .as_deref()
                    .map(|r| format!(" and {}{r}", self.remote.url))
                    .unwrap_or_default();
                println!(
                    "deployed {} ({}) at {}/function/{}{route}",
                    function.name, function.kind, self.remote.url, function.name
                );
            }
            deployed.push(status);
        }
        if self.remote.json {
            println!("{}", serde_json::to_string_pretty(&deployed)?);
        }
        Ok(())
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
