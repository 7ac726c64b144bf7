//! Who uploaded which artifact, and the collection of artifacts nothing
//! uses.
//!
//! An upload is one row per artifact and uploader (a token's id, or
//! [`NODE_UPLOADER`] for the node's admin token), charged to a namespace:
//! until a function of that namespace uses the artifact, it counts against
//! the namespace's `max_artifact_bytes` as an unused upload. A row lasts a
//! grace period; then the artifact is kept only while a function uses it.
//! An artifact is collected once no function uses it, no upload row is left,
//! and it was neither uploaded nor released (its last function removed or
//! moved to another artifact) within the grace period, which is what
//! `artifacts.created_at` records. Removing an artifact for a refused deploy
//! forgets only the deploying token's own upload, so no tenant can remove
//! what another uploaded.

use rusqlite::params;

use crate::{Store, StoreError, registry::now};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS uploads (
    digest      TEXT NOT NULL,
    uploader    TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    uploaded_at INTEGER NOT NULL,
    PRIMARY KEY (digest, uploader)
);
CREATE INDEX IF NOT EXISTS uploads_by_namespace ON uploads (namespace);
";

/// The uploader of artifacts the node's admin token uploads.
pub const NODE_UPLOADER: &str = "node";

/// Whether a function's spec (`functions.spec`) names `digest` (SQL).
const USES: &str = "?digest IN (json_extract(functions.spec, '$.artifact'), json_extract(functions.spec, '$.files'))";

impl Store {
    /// Records that `uploader` uploaded `digest`, charged to `namespace`,
    /// now (again, if it did before).
    pub fn record_upload(
        &self,
        digest: &str,
        uploader: &str,
        namespace: &str,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT OR REPLACE INTO uploads (digest, uploader, namespace, uploaded_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![digest, uploader, namespace, now()],
        )?;
        Ok(())
    }

    /// Whether a function of `namespace` uses `digest`.
    pub fn used_in_namespace(&self, namespace: &str, digest: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM functions WHERE namespace = ?1 AND {})",
            USES.replace("?digest", "?2")
        );
        Ok(self
            .db()
            .query_row(&sql, params![namespace, digest], |row| row.get(0))?)
    }

    /// The total size of the distinct artifacts uploads charged to
    /// `namespace` hold that none of its functions uses, leaving out `except`.
    pub fn unused_upload_bytes(&self, namespace: &str, except: &str) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT COALESCE(SUM(size), 0) FROM artifacts
             WHERE digest != ?2
               AND digest IN (SELECT digest FROM uploads WHERE namespace = ?1)
               AND NOT EXISTS (SELECT 1 FROM functions WHERE namespace = ?1 AND {})",
            USES.replace("?digest", "artifacts.digest")
        );
        Ok(self
            .db()
            .query_row(&sql, params![namespace, except], |row| row.get(0))?)
    }

    /// The size of the largest artifact uploads charged to `namespace` hold
    /// or its functions use: an upload of those bytes again costs nothing
    /// more, so an upload may be that much over what the quota has left
    /// until its digest is known.
    pub fn largest_namespace_artifact(&self, namespace: &str) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT COALESCE(MAX(size), 0) FROM artifacts
             WHERE digest IN (SELECT digest FROM uploads WHERE namespace = ?1)
                OR EXISTS (SELECT 1 FROM functions WHERE namespace = ?1 AND {})",
            USES.replace("?digest", "artifacts.digest")
        );
        Ok(self
            .db()
            .query_row(&sql, params![namespace], |row| row.get(0))?)
    }

    /// Forgets `uploader`'s upload of `digest` (its deploy was refused) and,
    /// if it had one, removes the artifact when no function uses it and no
    /// one else's upload holds it. Answers whether it was removed: an
    /// artifact `uploader` did not upload is never removed.
    pub fn forget_upload(&self, digest: &str, uploader: &str) -> Result<bool, StoreError> {
        let unused = {
            let db = self.db();
            let forgotten = db.execute(
                "DELETE FROM uploads WHERE digest = ?1 AND uploader = ?2",
                params![digest, uploader],
            )?;
            if forgotten == 0 {
                return Ok(false);
            }
            let sql = format!(
                "SELECT NOT EXISTS (SELECT 1 FROM uploads WHERE digest = ?1)
                    AND NOT EXISTS (SELECT 1 FROM functions WHERE {})",
                USES.replace("?digest", "?1")
            );
            db.query_row(&sql, params![digest], |row| row.get::<_, bool>(0))?
        };
        if unused {
            self.delete_artifact(digest)?;
        }
        Ok(unused)
    }

    /// Starts an artifact's grace period again: its last function was just
    /// removed or moved to another artifact, and the same artifact may well
    /// be deployed again soon, without another upload.
    pub fn release_artifact(&self, digest: &str) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE artifacts SET created_at = ?2 WHERE digest = ?1",
            params![digest, now()],
        )?;
        Ok(())
    }

    /// Forgets uploads made before `cutoff` (seconds since the Unix epoch),
    /// then removes every artifact that no function uses, that no upload
    /// holds, and that was uploaded or released before `cutoff`. Answers
    /// the digests removed.
    pub fn collect_artifacts(&self, cutoff: i64) -> Result<Vec<String>, StoreError> {
        let unused: Vec<String> = {
            let db = self.db();
            db.execute(
                "DELETE FROM uploads WHERE uploaded_at < ?1",
                params![cutoff],
            )?;
            let sql = format!(
                "SELECT digest FROM artifacts
                 WHERE created_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM uploads WHERE uploads.digest = artifacts.digest)
                   AND NOT EXISTS (SELECT 1 FROM functions WHERE {})",
                USES.replace("?digest", "artifacts.digest")
            );
            let mut statement = db.prepare(&sql)?;
            statement
                .query_map(params![cutoff], |row| row.get(0))?
                .collect::<Result<_, _>>()?
        };
        for digest in &unused {
            self.delete_artifact(digest)?;
        }
        Ok(unused)
    }
}

#[cfg(test)]
mod tests {
    use wisp_core::{FunctionKind, FunctionSpec, api::FunctionDeployment};

    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn function(namespace: &str, digest: &str) -> FunctionSpec {
        FunctionSpec::from_deployment(FunctionDeployment {
            service: "f".into(),
            namespace: Some(namespace.into()),
            kind: Some(FunctionKind::WasmHttp),
            image: Some(digest.into()),
            ..FunctionDeployment::default()
        })
        .unwrap()
    }

    #[test]
    fn unused_uploads_are_charged_to_their_namespace_until_a_function_uses_them() {
        let (_dir, store) = store();
        let a = store.put_artifact(&[1; 100]).unwrap().digest;
        let b = store.put_artifact(&[2; 10]).unwrap().digest;
        store.record_upload(&a, "t1", "team").unwrap();
        store.record_upload(&b, "t1", "team").unwrap();
        store.record_upload(&b, "t2", "team").unwrap();
        store.record_upload(&a, "other", "elsewhere").unwrap();
        assert_eq!(store.unused_upload_bytes("team", "").unwrap(), 110);
        assert_eq!(store.unused_upload_bytes("team", &b).unwrap(), 100);
        store.put_function(&function("team", &a)).unwrap();
        assert!(store.used_in_namespace("team", &a).unwrap());
        assert_eq!(store.unused_upload_bytes("team", "").unwrap(), 10);
        assert_eq!(store.unused_upload_bytes("elsewhere", "").unwrap(), 100);
        assert_eq!(store.largest_namespace_artifact("team").unwrap(), 100);
        assert_eq!(store.largest_namespace_artifact("nobody").unwrap(), 0);
    }

    #[test]
    fn a_refused_deploy_forgets_only_its_own_upload() {
        let (dir, store) = store();
        let digest = store.put_artifact(b"shared").unwrap().digest;
        store.record_upload(&digest, "victim", "a").unwrap();
        store.record_upload(&digest, "attacker", "b").unwrap();
        assert!(!store.forget_upload(&digest, "attacker").unwrap());
        assert!(!store.forget_upload(&digest, "stranger").unwrap());
        assert!(store.artifact(&digest).unwrap().is_some());
        assert!(store.forget_upload(&digest, "victim").unwrap());
        assert!(store.artifact(&digest).unwrap().is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("artifacts"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn only_artifacts_unused_past_the_grace_period_are_collected() {
        let (_dir, store) = store();
        let used = store.put_artifact(b"used").unwrap().digest;
        let uploaded = store.put_artifact(b"uploaded").unwrap().digest;
        let idle = store.put_artifact(b"idle").unwrap().digest;
        store.put_function(&function("team", &used)).unwrap();
        store.record_upload(&uploaded, "t1", "team").unwrap();
        // Nothing is older than an hour ago.
        assert!(store.collect_artifacts(now() - 3600).unwrap().is_empty());
        // An upload younger than the cutoff keeps its artifact; at a later
        // cutoff it has expired, and only the used artifact stays.
        let later = now() + 10;
        assert_eq!(
            store.collect_artifacts(now() - 1).unwrap(),
            Vec::<String>::new()
        );
        let mut collected = store.collect_artifacts(later).unwrap();
        collected.sort();
        let mut expected = vec![uploaded, idle];
        expected.sort();
        assert_eq!(collected, expected);
        assert!(store.artifact(&used).unwrap().is_some());
    }
}
