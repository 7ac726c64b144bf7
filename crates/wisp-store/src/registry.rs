//! The function registry: one row per function, its validated spec as JSON;
//! and the tenants: namespaces with their quotas, tokens, kept only as
//! SHA-256 hashes (they are random and long, so a fast hash is enough), and
//! secrets, kept as they are: the data directory is their trust boundary.
//!
//! `default`, and every namespace a function lives in, always has a row: the
//! schema inserts them, so a data directory from before namespaces were
//! stored opens with its namespaces in place.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension as _, params};
use wisp_core::{
    FunctionSpec,
    tenancy::{NamespaceUsage, Quotas, Role},
};

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
CREATE TABLE IF NOT EXISTS namespaces (
    name       TEXT PRIMARY KEY,
    quotas     TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
);
INSERT OR IGNORE INTO namespaces (name, created_at) VALUES ('default', unixepoch());
INSERT OR IGNORE INTO namespaces (name, created_at)
    SELECT DISTINCT namespace, unixepoch() FROM functions;
CREATE TABLE IF NOT EXISTS tokens (
    id         TEXT PRIMARY KEY,
    namespace  TEXT NOT NULL,
    role       TEXT NOT NULL,
    name       TEXT,
    hash       BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
";

/// A namespace as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNamespace {
    /// Its name.
    pub name: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// When it was created (seconds since the Unix epoch).
    pub created_at: i64,
}

/// A namespace token as stored: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Its public id.
    pub id: String,
    /// The namespace it acts in.
    pub namespace: String,
    /// What it may do there.
    pub role: Role,
    /// Its label.
    pub name: Option<String>,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// When it was created (seconds since the Unix epoch).
    pub created_at: i64,
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// When it was first created (seconds since the Unix epoch).
    pub created_at: i64,
}

/// What writing a secret did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretWrite {
    /// There was none by that name; now there is.
    Created,
    /// The value of the existing one was replaced.
    Replaced,
    /// One exists and replacing was not asked for, so nothing changed.
    Exists,
    /// There was none to replace, so nothing changed.
    Unknown,
}

/// What a namespace's functions hold, as its quotas count it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceContents {
    /// How many functions.
    pub functions: u32,
    /// The distinct artifacts they use, with their sizes.
    pub artifacts: BTreeMap<String, u64>,
}

impl NamespaceContents {
    /// The figures the namespace's quotas limit.
    pub fn usage(&self) -> NamespaceUsage {
        NamespaceUsage {
            functions: self.functions,
            artifact_bytes: self.artifacts.values().sum(),
        }
    }
}

/// What removing a namespace did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceRemoval {
    /// It is gone, with its tokens, secrets, async calls and uploads.
    Removed,
    /// There was none by that name.
    Unknown,
    /// It still holds this many functions, so it stays.
    InUse(u32),
}

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

/// A removed namespace's async calls and uploads go with it: a later
/// namespace of the same name must not read the calls, nor be charged for
/// the uploads.
fn forget_calls_and_uploads(
    transaction: &rusqlite::Transaction<'_>,
    name: &str,
) -> Result<(), StoreError> {
    transaction.execute("DELETE FROM calls WHERE namespace = ?1", params![name])?;
    transaction.execute("DELETE FROM uploads WHERE namespace = ?1", params![name])?;
    Ok(())
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
    /// Forgets every function, namespace (but `default`), token and secret:
    /// a node of a cluster fills its registry from the cluster's at start.
    pub fn clear_registry(&self) -> Result<(), StoreError> {
        self.db().execute_batch(
            "BEGIN;
             DELETE FROM functions;
             DELETE FROM tokens;
             DELETE FROM secrets;
             DELETE FROM namespaces WHERE name <> 'default';
             COMMIT;",
        )?;
        Ok(())
    }

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

    /// Every namespace, ordered by name.
    pub fn namespaces(&self) -> Result<Vec<StoredNamespace>, StoreError> {
        let db = self.db();
        let mut statement =
            db.prepare("SELECT name, quotas, created_at FROM namespaces ORDER BY name")?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<Vec<(String, String, i64)>, _>>()?;
        rows.into_iter()
            .map(|(name, quotas, created_at)| {
                let quotas =
                    serde_json::from_str(&quotas).map_err(|source| StoreError::Corrupt {
                        name: format!("namespace {name}"),
                        source,
                    })?;
                Ok(StoredNamespace {
                    name,
                    quotas,
                    created_at,
                })
            })
            .collect()
    }

    /// Creates a namespace; `None` if one by that name exists.
    pub fn create_namespace(
        &self,
        name: &str,
        quotas: &Quotas,
    ) -> Result<Option<StoredNamespace>, StoreError> {
        let json = serde_json::to_string(quotas).expect("quotas always serialize");
        let created_at = now();
        let inserted = self.db().execute(
            "INSERT OR IGNORE INTO namespaces (name, quotas, created_at) VALUES (?1, ?2, ?3)",
            params![name, json, created_at],
        )?;
        Ok((inserted > 0).then(|| StoredNamespace {
            name: name.to_owned(),
            quotas: *quotas,
            created_at,
        }))
    }

    /// Removes an empty namespace, its tokens, secrets, async calls and
    /// uploads, in one transaction.
    pub fn delete_namespace(&self, name: &str) -> Result<NamespaceRemoval, StoreError> {
        let mut db = self.db();
        let transaction = db.transaction()?;
        let functions: u32 = transaction.query_row(
            "SELECT COUNT(*) FROM functions WHERE namespace = ?1",
            params![name],
            |row| row.get(0),
        )?;
        if functions > 0 {
            return Ok(NamespaceRemoval::InUse(functions));
        }
        transaction.execute("DELETE FROM tokens WHERE namespace = ?1", params![name])?;
        transaction.execute("DELETE FROM secrets WHERE namespace = ?1", params![name])?;
        forget_calls_and_uploads(&transaction, name)?;
        let deleted =
            transaction.execute("DELETE FROM namespaces WHERE name = ?1", params![name])?;
        transaction.commit()?;
        Ok(if deleted > 0 {
            NamespaceRemoval::Removed
        } else {
            NamespaceRemoval::Unknown
        })
    }

    /// Forgets the async calls and uploads of a namespace that is gone, or
    /// gone and made again, while the node was not looking (cluster mode).
    pub fn forget_namespace_calls(&self, name: &str) -> Result<(), StoreError> {
        let mut db = self.db();
        let transaction = db.transaction()?;
        forget_calls_and_uploads(&transaction, name)?;
        transaction.commit()?;
        Ok(())
    }

    /// What the functions of `namespace` hold, leaving out the function
    /// named `except` (one about to be replaced).
    pub fn namespace_contents(
        &self,
        namespace: &str,
        except: Option<&str>,
    ) -> Result<NamespaceContents, StoreError> {
        let db = self.db();
        let except = except.unwrap_or_default();
        let functions = db.query_row(
            "SELECT COUNT(*) FROM functions WHERE namespace = ?1 AND name != ?2",
            params![namespace, except],
            |row| row.get(0),
        )?;
        let mut statement = db.prepare(
            "SELECT DISTINCT artifacts.digest, artifacts.size FROM functions
             JOIN artifacts ON artifacts.digest
                 IN (json_extract(functions.spec, '$.artifact'), json_extract(functions.spec, '$.files'))
             WHERE functions.namespace = ?1 AND functions.name != ?2",
        )?;
        let artifacts = statement
            .query_map(params![namespace, except], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(NamespaceContents {
            functions,
            artifacts,
        })
    }

    /// Every namespace token, ordered by namespace, then oldest first.
    pub fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT id, namespace, role, name, hash, created_at FROM tokens
             ORDER BY namespace, created_at, rowid",
        )?;
        let rows = statement
            .query_map([], |row| {
                let invalid = |column, error: Box<dyn std::error::Error + Send + Sync>| {
                    rusqlite::Error::FromSqlConversionFailure(
                        column,
                        rusqlite::types::Type::Text,
                        error,
                    )
                };
                let role: String = row.get(2)?;
                let hash: Vec<u8> = row.get(4)?;
                Ok(StoredToken {
                    id: row.get(0)?,
                    namespace: row.get(1)?,
                    role: role
                        .parse()
                        .map_err(|error: String| invalid(2, error.into()))?,
                    name: row.get(3)?,
                    hash: hash
                        .try_into()
                        .map_err(|_| invalid(4, "a token hash is not 32 bytes".into()))?,
                    created_at: row.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Stores a new token.
    pub fn put_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO tokens (id, namespace, role, name, hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                token.id,
                token.namespace,
                token.role.as_str(),
                token.name,
                token.hash.as_slice(),
                token.created_at
            ],
        )?;
        Ok(())
    }

    /// Removes a token; `false` if there was none.
    pub fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .db()
            .execute("DELETE FROM tokens WHERE id = ?1", params![id])?
            > 0)
    }

    /// A namespace's secrets (or every one), ordered by namespace and name.
    pub fn secrets(&self, namespace: Option<&str>) -> Result<Vec<StoredSecret>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT name, namespace, created_at FROM secrets
             WHERE ?1 IS NULL OR namespace = ?1 ORDER BY namespace, name",
        )?;
        let rows = statement
            .query_map(params![namespace], |row| {
                Ok(StoredSecret {
                    name: row.get(0)?,
                    namespace: row.get(1)?,
                    created_at: row.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Creates a secret, or (with `replace`) replaces the value of an existing one.
    pub fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &str,
        replace: bool,
    ) -> Result<SecretWrite, StoreError> {
        let db = self.db();
        let exists: bool = db.query_row(
            "SELECT EXISTS (SELECT 1 FROM secrets WHERE namespace = ?1 AND name = ?2)",
            params![namespace, name],
            |row| row.get(0),
        )?;
        Ok(match (exists, replace) {
            (true, false) => SecretWrite::Exists,
            (false, true) => SecretWrite::Unknown,
            (true, true) => {
                db.execute(
                    "UPDATE secrets SET value = ?3 WHERE namespace = ?1 AND name = ?2",
                    params![namespace, name, value],
                )?;
                SecretWrite::Replaced
            }
            (false, false) => {
                db.execute(
                    "INSERT INTO secrets (namespace, name, value, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![namespace, name, value, now()],
                )?;
                SecretWrite::Created
            }
        })
    }

    /// The values of the named secrets of `namespace`, in the order asked;
    /// `Err` names the first that does not exist.
    pub fn secret_values(
        &self,
        namespace: &str,
        names: &[String],
    ) -> Result<Result<Vec<String>, String>, StoreError> {
        let db = self.db();
        let mut statement =
            db.prepare_cached("SELECT value FROM secrets WHERE namespace = ?1 AND name = ?2")?;
        let mut values = Vec::with_capacity(names.len());
        for name in names {
            match statement
                .query_row(params![namespace, name], |row| row.get(0))
                .optional()?
            {
                Some(value) => values.push(value),
                None => return Ok(Err(name.clone())),
            }
        }
        Ok(Ok(values))
    }

    /// The functions of `namespace` that name the secret, ordered by name.
    pub fn secret_users(&self, namespace: &str, name: &str) -> Result<Vec<String>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT functions.name FROM functions, json_each(functions.spec, '$.secrets') AS secret
             WHERE functions.namespace = ?1 AND secret.value = ?2 ORDER BY functions.name",
        )?;
        let rows = statement
            .query_map(params![namespace, name], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Removes a secret; `false` if there was none.
    pub fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self.db().execute(
            "DELETE FROM secrets WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
        )? > 0)
    }

    /// Whether any function's spec names this artifact, as its code or its files.
    pub fn artifact_in_use(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.db().query_row(
            "SELECT EXISTS (SELECT 1 FROM functions
             WHERE ?1 IN (json_extract(spec, '$.artifact'), json_extract(spec, '$.files')))",
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

    fn names(store: &Store) -> Vec<String> {
        store
            .namespaces()
            .unwrap()
            .into_iter()
            .map(|namespace| namespace.name)
            .collect()
    }

    #[test]
    fn namespaces_hold_default_and_those_of_functions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(names(&store), ["default"]);
        let mut other = spec("a");
        other.namespace = "team-a".into();
        store.put_function(&other).unwrap();
        drop(store);
        // Reopening adds the namespaces of functions stored before namespaces were.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(names(&store), ["default", "team-a"]);
        let quotas = Quotas {
            max_functions: Some(2),
            ..Quotas::default()
        };
        let created = store.create_namespace("team-b", &quotas).unwrap().unwrap();
        assert_eq!(created.quotas, quotas);
        assert_eq!(store.create_namespace("team-b", &quotas).unwrap(), None);
        assert_eq!(
            store.delete_namespace("team-a").unwrap(),
            NamespaceRemoval::InUse(1)
        );
        assert_eq!(
            store.namespace_contents("team-a", None).unwrap().functions,
            1
        );
        assert_eq!(
            store.namespace_contents("team-a", Some("a")).unwrap(),
            NamespaceContents::default()
        );
        store.delete_function("team-a", "a").unwrap();
        assert_eq!(
            store.delete_namespace("team-a").unwrap(),
            NamespaceRemoval::Removed
        );
        assert_eq!(
            store.delete_namespace("team-a").unwrap(),
            NamespaceRemoval::Unknown
        );
        assert_eq!(store.namespaces().unwrap()[1], created);
    }

    #[test]
    fn secrets_are_kept_per_namespace_and_know_their_users() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.put_secret("default", "db", "one", true).unwrap(),
            SecretWrite::Unknown
        );
        assert_eq!(
            store.put_secret("default", "db", "one", false).unwrap(),
            SecretWrite::Created
        );
        assert_eq!(
            store.put_secret("default", "db", "two", false).unwrap(),
            SecretWrite::Exists
        );
        assert_eq!(
            store.put_secret("default", "db", "two", true).unwrap(),
            SecretWrite::Replaced
        );
        let names = ["db".to_owned()];
        assert_eq!(
            store.secret_values("default", &names).unwrap(),
            Ok(vec!["two".to_owned()])
        );
        assert_eq!(
            store.secret_values("other", &names).unwrap(),
            Err("db".to_owned())
        );
        let mut spec = spec("uses");
        spec.secrets = names.to_vec();
        store.put_function(&spec).unwrap();
        assert_eq!(store.secret_users("default", "db").unwrap(), ["uses"]);
        assert_eq!(
            store.secret_users("other", "db").unwrap(),
            [] as [String; 0]
        );
        let listed = store.secrets(None).unwrap();
        assert_eq!((listed.len(), listed[0].name.as_str()), (1, "db"));
        assert!(store.delete_secret("default", "db").unwrap());
        assert!(!store.delete_secret("default", "db").unwrap());
    }

    #[test]
    fn tokens_are_kept_and_go_with_their_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_namespace("team-a", &Quotas::default())
            .unwrap();
        let token = StoredToken {
            id: "t1".into(),
            namespace: "team-a".into(),
            role: Role::Deploy,
            name: Some("ci".into()),
            hash: [7; 32],
            created_at: 1,
        };
        store.put_token(&token).unwrap();
        assert_eq!(store.tokens().unwrap(), std::slice::from_ref(&token));
        assert!(store.delete_token("t1").unwrap());
        assert!(!store.delete_token("t1").unwrap());
        store.put_token(&token).unwrap();
        store.delete_namespace("team-a").unwrap();
        assert_eq!(store.tokens().unwrap(), []);
    }
}
