//! Content-addressed artifacts: `artifacts/<sha256 hex>` holds the bytes,
//! `trees/<sha256 hex>/` a process artifact's unpacked tar archive.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use rusqlite::{OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};
use wisp_core::api::ArtifactInfo;

use crate::{Store, StoreError, registry::now};

/// An artifact being uploaded: bytes go to a temporary file while they are
/// hashed; [`ArtifactUpload::commit`] moves the file under its digest.
/// Dropping an upload without committing it leaves nothing behind.
pub struct ArtifactUpload {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
}

impl ArtifactUpload {
    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .map_err(StoreError::io("write artifact", self.file.path()))
    }

    /// The bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of the bytes written so far (`sha256:...`), before they are committed.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// Stores the artifact under its digest; a no-op if those bytes are already stored.
    pub fn commit(self, store: &Store) -> Result<ArtifactInfo, StoreError> {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        let path = store.blob_path(&digest)?;
        if !path.exists() {
            self.file
                .as_file()
                .sync_all()
                .map_err(StoreError::io("sync artifact", &path))?;
            self.file
                .persist(&path)
                .map_err(|error| StoreError::io("store artifact", &path)(error.error))?;
        }
        store.db().execute(
            "INSERT OR IGNORE INTO artifacts (digest, size, created_at) VALUES (?1, ?2, ?3)",
            params![digest, self.size, now()],
        )?;
        Ok(ArtifactInfo {
            digest,
            size: self.size,
        })
    }
}

/// The hex part of a well-formed digest, so a digest can never name a path outside the store.
fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

impl Store {
    fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex =
            digest_hex(digest).ok_or_else(|| StoreError::UnknownArtifact(digest.to_owned()))?;
        Ok(self.root.join("artifacts").join(hex))
    }

    /// Starts an upload.
    pub fn begin_artifact(&self) -> Result<ArtifactUpload, StoreError> {
        let tmp = self.root.join("tmp");
        let file = tempfile::NamedTempFile::new_in(&tmp)
            .map_err(StoreError::io("create temporary file in", &tmp))?;
        Ok(ArtifactUpload {
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Stores `bytes` as an artifact.
    pub fn put_artifact(&self, bytes: &[u8]) -> Result<ArtifactInfo, StoreError> {
        let mut upload = self.begin_artifact()?;
        upload.write(bytes)?;
        upload.commit(self)
    }

    /// An artifact's size, if it is stored.
    pub fn artifact(&self, digest: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        let size: Option<u64> = self
            .db()
            .query_row(
                "SELECT size FROM artifacts WHERE digest = ?1",
                params![digest],
                |row| row.get(0),
            )
            .optional()?;
        Ok(size.map(|size| ArtifactInfo {
            digest: digest.to_owned(),
            size,
        }))
    }

    /// Every stored artifact.
    pub fn artifacts(&self) -> Result<Vec<ArtifactInfo>, StoreError> {
        let db = self.db();
        let mut statement =
            db.prepare("SELECT digest, size FROM artifacts ORDER BY created_at, digest")?;
        let rows = statement
            .query_map([], |row| {
                Ok(ArtifactInfo {
                    digest: row.get(0)?,
                    size: row.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The file holding an artifact's bytes.
    pub fn artifact_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let path = self.blob_path(digest)?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(StoreError::UnknownArtifact(digest.to_owned()))
        }
    }

    /// Removes an artifact, its unpacked tree, and its row.
    pub fn delete_artifact(&self, digest: &str) -> Result<(), StoreError> {
        let path = self.blob_path(digest)?;
        self.db()
            .execute("DELETE FROM artifacts WHERE digest = ?1", params![digest])?;
        let tree = self.tree_path(digest)?;
        if tree.exists() {
            std::fs::remove_dir_all(&tree).map_err(StoreError::io("remove", &tree))?;
        }
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::io("remove", &path)(error))
            }
            _ => Ok(()),
        }
    }

    fn tree_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex =
            digest_hex(digest).ok_or_else(|| StoreError::UnknownArtifact(digest.to_owned()))?;
        Ok(self.root.join("trees").join(hex))
    }

    /// The directory a tar artifact unpacks to, unpacking it on first use.
    /// Entries that would land outside the directory are refused.
    pub fn artifact_tree(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let tree = self.tree_path(digest)?;
        if tree.is_dir() {
            return Ok(tree);
        }
        let archive_path = self.artifact_path(digest)?;
        let tmp = self.root.join("tmp");
        let staging =
            tempfile::tempdir_in(&tmp).map_err(StoreError::io("create directory in", &tmp))?;
        let bad = |reason: String| StoreError::BadArchive {
            digest: digest.to_owned(),
            reason,
        };
        unpack(&archive_path, staging.path()).map_err(|error| bad(error.to_string()))?;
        match std::fs::rename(staging.path(), &tree) {
            // Another request unpacked the same archive first: theirs is identical.
            Err(_) if tree.is_dir() => Ok(tree),
            Err(error) => Err(StoreError::io("store tree", &tree)(error)),
            Ok(()) => {
                // The directory now lives at `tree`; keep the guard from removing it.
                let _ = staging.keep();
                Ok(tree)
            }
        }
    }
}

/// Unpacks a tar archive into a directory.
///
/// Entries with absolute names, `..` components, or that are devices or
/// FIFOs are refused, and so is any entry the tar crate finds would land
/// outside `into` (through a symlink unpacked before it, say). Then every
/// file and directory that was made is given a plain mode, without following
/// symlinks: executables and directories `0755`, the rest `0644`. Sandboxed
/// processes run as uids of their own and must read the function's files,
/// and no mode bit from the archive (setuid, say) reaches the host.
fn unpack(archive: &Path, into: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(std::fs::File::open(archive)?);
    archive.set_overwrite(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        check_entry(&path, entry.header().entry_type())
            .map_err(|why| std::io::Error::other(format!("entry {}: {why}", path.display())))?;
        if !entry.unpack_in(into)? {
            return Err(std::io::Error::other(format!(
                "entry {} points outside the archive",
                path.display()
            )));
        }
    }
    plain_modes(into)
}

/// Why an entry may not be unpacked, if it may not: its name must stay
/// inside the tree by itself (a leading `./`, as `tar -C dir .` writes, is
/// harmless and accepted), and it must be a file, a directory or a link.
fn check_entry(path: &Path, kind: tar::EntryType) -> Result<(), &'static str> {
    use std::path::Component;
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return Err("absolute names are refused"),
            Component::ParentDir => return Err("`..` is refused"),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    match kind {
        tar::EntryType::Block | tar::EntryType::Char => Err("devices are refused"),
        tar::EntryType::Fifo => Err("FIFOs are refused"),
        _ => Ok(()),
    }
}

/// Gives the directories and files under `dir` (itself included) plain
/// modes; symlinks are neither followed nor changed.
fn plain_modes(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            plain_modes(&path)?;
        } else if kind.is_file() {
            let executable = entry.metadata()?.permissions().mode() & 0o111 != 0;
            let mode = if executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_bytes_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store.put_artifact(b"hello").unwrap();
        let second = store.put_artifact(b"hello").unwrap();
        assert_eq!(first, second);
        assert_eq!(
            first.digest,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(store.artifacts().unwrap(), std::slice::from_ref(&first));
        assert_eq!(
            std::fs::read(store.artifact_path(&first.digest).unwrap()).unwrap(),
            b"hello"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn digests_cannot_name_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for digest in ["sha256:../../etc/passwd", "../x", "sha256:ABC"] {
            assert!(matches!(
                store.artifact_path(digest),
                Err(StoreError::UnknownArtifact(_))
            ));
        }
    }

    #[test]
    fn tar_artifacts_unpack_with_plain_modes_and_refuse_traversal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        // A setuid executable and a private file: both end up plain and readable.
        for (name, mode) in [("bin/run.sh", 0o4750), ("secret.txt", 0o600)] {
            let mut header = tar::Header::new_gnu();
            header.set_size(10);
            header.set_mode(mode);
            header.set_cksum();
            builder
                .append_data(&mut header, name, &b"#!/bin/sh\n"[..])
                .unwrap();
        }
        let good = store.put_artifact(&builder.into_inner().unwrap()).unwrap();
        let tree = store.artifact_tree(&good.digest).unwrap();
        let mode = |path: &str| {
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(tree.join(path)).unwrap().permissions(),
            ) & 0o7777
        };
        assert_eq!(mode("bin/run.sh"), 0o755);
        assert_eq!(mode("secret.txt"), 0o644);
        assert_eq!(mode(""), 0o755);

        // A symlink out of the tree, then an entry written through it.
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder.append_link(&mut link, "out", dir.path()).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_cksum();
        builder
            .append_data(&mut header, "out/planted", &b"x"[..])
            .unwrap();
        let through = store.put_artifact(&builder.into_inner().unwrap()).unwrap();
        assert!(matches!(
            store.artifact_tree(&through.digest),
            Err(StoreError::BadArchive { .. })
        ));
        assert!(!dir.path().join("planted").exists());

        let mut evil = Vec::new();
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..9].copy_from_slice(b"../escape");
        header.set_size(1);
        header.set_cksum();
        evil.extend_from_slice(header.as_bytes());
        evil.extend_from_slice(&[b'x'; 512]);
        evil.extend_from_slice(&[0; 1024]);
        let evil = store.put_artifact(&evil).unwrap();
        assert!(matches!(
            store.artifact_tree(&evil.digest),
            Err(StoreError::BadArchive { .. })
        ));
        assert!(!dir.path().join("trees/escape").exists() && !dir.path().join("escape").exists());
        assert!(matches!(
            store.artifact_tree(&store.put_artifact(b"not a tar").unwrap().digest),
            Err(StoreError::BadArchive { .. })
        ));
    }

    /// A one-entry archive whose name is written as is, as a hostile client would.
    fn raw_archive(name: &str, kind: tar::EntryType) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o755);
        header.set_size(if kind.is_file() { 1 } else { 0 });
        header.set_cksum();
        let mut archive = header.as_bytes().to_vec();
        if kind.is_file() {
            archive.extend_from_slice(&[b'x'; 512]);
        }
        archive.extend_from_slice(&[0; 1024]);
        archive
    }

    #[test]
    fn absolute_names_devices_and_fifos_are_refused_and_touch_nothing() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let host_file = dir.path().join("private");
        std::fs::write(&host_file, "host").unwrap();
        std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let host_name = host_file.to_str().unwrap();
        for (name, kind, why) in [
            (host_name, tar::EntryType::Regular, "absolute names"),
            (host_name, tar::EntryType::Directory, "absolute names"),
            ("dev/sda", tar::EntryType::Block, "devices"),
            ("dev/tty", tar::EntryType::Char, "devices"),
            ("pipe", tar::EntryType::Fifo, "FIFOs"),
            ("a/../../b", tar::EntryType::Regular, "`..`"),
        ] {
            let digest = store.put_artifact(&raw_archive(name, kind)).unwrap().digest;
            match store.artifact_tree(&digest) {
                Err(StoreError::BadArchive { reason, .. }) => {
                    assert!(reason.contains(why), "{name}: {reason}");
                }
                other => panic!("{name} as {kind:?} was unpacked: {other:?}"),
            }
        }
        let mode = std::fs::metadata(&host_file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the host file's mode changed");
        assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host");
        // `./` as `tar -C dir .` writes it is fine.
        let digest = store
            .put_artifact(&raw_archive("./run.sh", tar::EntryType::Regular))
            .unwrap()
            .digest;
        let tree = store.artifact_tree(&digest).unwrap();
        assert!(tree.join("run.sh").is_file());
    }
}
