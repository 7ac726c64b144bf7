//! Artifact unpacking: any bytes uploaded as a process artifact either
//! unpack inside their tree or are refused; nothing is ever written next to
//! the store, and no host file changes mode (the seeds name the sentinel
//! file below as an absolute entry).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use wisp_store::Store;

/// A store in a directory of its own, and that directory's parent.
static STORE: LazyLock<(tempfile::TempDir, Store)> = LazyLock::new(|| {
    let outside = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(&outside.path().join("store")).expect("a store");
    (outside, store)
});

/// A host file whose 0600 mode no archive may change.
static SENTINEL: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join("wisp-fuzz-sentinel");
    let _ = std::fs::remove_dir_all(&path);
    std::fs::write(&path, "sentinel").expect("the sentinel file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
});

fuzz_target!(|archive: &[u8]| {
    use std::os::unix::fs::PermissionsExt as _;
    let (outside, store) = &*STORE;
    let sentinel = &*SENTINEL;
    let Ok(artifact) = store.put_artifact(archive) else {
        return;
    };
    if let Ok(tree) = store.artifact_tree(&artifact.digest) {
        assert!(tree.starts_with(outside.path().join("store")));
    }
    let beside: Vec<_> = std::fs::read_dir(outside.path())
        .expect("the store's parent")
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert_eq!(beside, ["store"], "written next to the store");
    let mode = std::fs::metadata(sentinel).expect("the sentinel").permissions().mode();
    assert_eq!(mode & 0o7777, 0o600, "a host file's mode changed");
    store.delete_artifact(&artifact.digest).expect("delete");
});
