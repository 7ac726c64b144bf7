//! The function registry: one row per function, its validated spec as JSON.

use rusqlite::{OptionalExtension as _, params};
use wisp_core::FunctionSpec;

use crate::{Store, StoreError};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS functions (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS artifacts (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// A function as stored, with its timestamps (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFunction {
    /// The validated spec.
    pub spec: FunctionSpec,
    /// When it was first deployed.
    pub created_at: i64,
    /// When it was last deployed.
    pub updated_at: i64,
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

fn parse(
    name: String,
    spec: String,
    created_at: i64,
    updated_at: i64,
) -> Result<StoredFunction, StoreError> {
    let spec =
        serde_json::from_str(&spec).map_err(|source| StoreError::Corrupt { name, source })?;
    Ok(StoredFunction {
        spec,
        created_at,
        updated_at,
    })
}

impl Store {
    /// Inserts or replaces a function.
    pub fn put_function(&self, spec: &FunctionSpec) -> Result<(), StoreError> {
        let json = serde_json::to_string(spec).expect("a spec always serializes");
        let now = now();
        self.db().execute(
            "INSERT INTO functions (namespace, name, spec, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (namespace, name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            params![spec.namespace, spec.name, json, now],
        )?;
        Ok(())
    }

    /// One function, if it exists.
    pub fn function(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredFunction>, StoreError> {
        let row = self
            .db()
            .query_row(
                "SELECT name, spec, created_at, updated_at FROM functions WHERE namespace = ?1 AND name = ?2",
                params![namespace, name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        row.map(|(name, spec, created, updated)| parse(name, spec, created, updated))
            .transpose()
    }

    /// Every function, ordered by namespace and name.
    pub fn functions(&self) -> Result<Vec<StoredFunction>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT name, spec, created_at, updated_at FROM functions ORDER BY namespace, name",
        )?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<Vec<(String, String, i64, i64)>, _>>()?;
        rows.into_iter()
            .map(|(name, spec, created, updated)| parse(name, spec, created, updated))
            .collect()
    }

    /// Removes a function and its triggers' firing records (so a function
    /// deployed again under the name does not catch up on firings from
    /// before); `false` if there was none.
    pub fn delete_function(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let mut db = self.db();
        let transaction = db.transaction()?;
        let deleted = transaction.execute(
            "DELETE FROM functions WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
        )?;
        transaction.execute(
            "DELETE FROM trigger_firings WHERE namespace = ?1 AND function = ?2",
            params![namespace, name],
        )?;
        transaction.commit()?;
        Ok(deleted > 0)
    }

    /// Whether any function's spec names this artifact.
    pub fn artifact_in_use(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.db().query_row(
            "SELECT EXISTS (SELECT 1 FROM functions WHERE json_extract(spec, '$.artifact') = ?1)",
            params![digest],
            |row| row.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use wisp_core::{FunctionKind, api::FunctionDeployment};

    use super::*;

    fn spec(name: &str) -> FunctionSpec {
        FunctionSpec::from_deployment(FunctionDeployment {
            service: name.into(),
            kind: Some(FunctionKind::Process),
            env_process: Some("cat".into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn functions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_function(&spec("b")).unwrap();
            store.put_function(&spec("a")).unwrap();
            store.put_function(&spec("a")).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let names: Vec<_> = store
            .functions()
            .unwrap()
            .into_iter()
            .map(|f| f.spec.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(store.delete_function("default", "a").unwrap());
        assert!(!store.delete_function("default", "a").unwrap());
        assert!(store.function("default", "a").unwrap().is_none());
        assert_eq!(
            store.function("default", "b").unwrap().unwrap().spec,
            spec("b")
        );
    }
}
