//! Artifact unpacking: any bytes uploaded as a process artifact either
//! unpack inside their tree or are refused; nothing is ever written next to
//! the store.
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

fuzz_target!(|archive: &[u8]| {
    let (outside, store) = &*STORE;
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
    store.delete_artifact(&artifact.digest).expect("delete");
});
