//! Tenants in memory: the namespaces with their quotas and concurrency
//! limits, and the namespace tokens by hash, so resolving a token on the
//! invocation path reads no database. Every change is written to the store
//! first and then here, as deploys are; callers hold the node's deploy lock,
//! so changes to tenants and functions happen one at a time.

pub(crate) mod routes;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use sha2::{Digest as _, Sha256};
use wisp_core::{
    FunctionSpec,
    tenancy::{NamespaceUsage, Principal, Quotas, Role, s3_keys},
};
use wisp_store::{NamespaceRemoval, Store, StoreError, StoredNamespace, StoredToken};

use crate::admission::Limit;

/// What a token starts with, so it is recognisable in a leaked config or a secret scanner.
const TOKEN_PREFIX: &str = "wisp_";

/// A namespace and the concurrency limit its functions share, if bounded.
struct Namespace {
    stored: StoredNamespace,
    limit: Option<Arc<Limit>>,
}

#[derive(Default)]
struct State {
    namespaces: HashMap<String, Namespace>,
    /// Namespace tokens by the SHA-256 of the token.
    tokens: HashMap<[u8; 32], Principal>,
}

/// The node's tenants.
pub(crate) struct Tenants {
    state: RwLock<State>,
    /// The node's per-namespace concurrency limit, for namespaces without a quota of their own.
    default_max_concurrency: Option<u32>,
}

impl Tenants {
    /// Loads every namespace and token from the store.
    pub(crate) fn load(
        store: &Store,
        default_max_concurrency: Option<u32>,
    ) -> Result<Self, StoreError> {
        let tenants = Self {
            state: RwLock::default(),
            default_max_concurrency,
        };
        {
            let mut state = tenants.write();
            for stored in store.namespaces()? {
                tenants.insert_namespace(&mut state, stored);
            }
            for token in store.tokens()? {
                state.tokens.insert(token.hash, principal(&token));
            }
        }
        Ok(tenants)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("tenants")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("tenants")
    }

    fn insert_namespace(&self, state: &mut State, stored: StoredNamespace) {
        let limit = stored
            .quotas
            .max_concurrency
            .map(|max| {
                (
                    format!("namespace {} (quota max_concurrency)", stored.name),
                    max,
                )
            })
            .or_else(|| {
                self.default_max_concurrency
                    .map(|max| (format!("namespace {}", stored.name), max))
            })
            .map(|(scope, max)| Arc::new(Limit::new(scope, max)));
        state
            .namespaces
            .insert(stored.name.clone(), Namespace { stored, limit });
    }

    /// The principal a namespace token stands for, if it is one.
    pub(crate) fn principal(&self, token: &str) -> Option<Principal> {
        self.read().tokens.get(&hash(token)).cloned()
    }

    /// A namespace, if it exists.
    pub(crate) fn namespace(&self, name: &str) -> Option<StoredNamespace> {
        self.read()
            .namespaces
            .get(name)
            .map(|namespace| namespace.stored.clone())
    }

    /// Every namespace, ordered by name.
    pub(crate) fn namespaces(&self) -> Vec<StoredNamespace> {
        let mut namespaces: Vec<_> = self
            .read()
            .namespaces
            .values()
            .map(|namespace| namespace.stored.clone())
            .collect();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        namespaces
    }

    /// The concurrency limit a namespace's functions share: its own quota,
    /// else the node's per-namespace limit, else none.
    pub(crate) fn limit(&self, namespace: &str) -> Option<Arc<Limit>> {
        self.read()
            .namespaces
            .get(namespace)
            .and_then(|namespace| namespace.limit.clone())
    }

    /// Creates a namespace; `None` if it exists.
    pub(crate) fn create_namespace(
        &self,
        store: &Store,
        name: &str,
        quotas: &Quotas,
    ) -> Result<Option<StoredNamespace>, StoreError> {
        let created = store.create_namespace(name, quotas)?;
        if let Some(stored) = &created {
            self.insert_namespace(&mut self.write(), stored.clone());
        }
        Ok(created)
    }

    /// Removes an empty namespace and its tokens.
    pub(crate) fn remove_namespace(
        &self,
        store: &Store,
        name: &str,
    ) -> Result<NamespaceRemoval, StoreError> {
        let removal = store.delete_namespace(name)?;
        if removal == NamespaceRemoval::Removed {
            let mut state = self.write();
            state.namespaces.remove(name);
            state
                .tokens
                .retain(|_, principal| !in_namespace(principal, name));
        }
        Ok(removal)
    }

    /// Makes a token for `namespace`, not yet known (see
    /// [`Tenants::add_token`]); the token itself is returned once and never kept.
    pub(crate) fn new_token(
        namespace: &str,
        role: Role,
        name: Option<String>,
    ) -> (String, StoredToken) {
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
        let stored = StoredToken {
            id: hex::encode(rand::random::<[u8; 8]>()),
            namespace: namespace.to_owned(),
            role,
            name,
            hash: hash(&token),
            created_at: now(),
        };
        (token, stored)
    }

    /// Makes a token known: from the next request on, it acts in its namespace.
    pub(crate) fn add_token(&self, store: &Store, stored: StoredToken) -> Result<(), StoreError> {
        store.put_token(&stored)?;
        self.write().tokens.insert(stored.hash, principal(&stored));
        Ok(())
    }

    /// Revokes a token: from the next request on, it is unknown.
    pub(crate) fn revoke_token(&self, store: &Store, id: &str) -> Result<bool, StoreError> {
        let removed = store.delete_token(id)?;
        self.write().tokens.retain(
            |_, principal| !matches!(principal, Principal::Tenant { id: own, .. } if own == id),
        );
        Ok(removed)
    }

    /// The token whose S3 access key id is `key_id`: its hash and principal.
    pub(crate) fn s3_key(&self, key_id: &str) -> Option<([u8; 32], Principal)> {
        self.read()
            .tokens
            .iter()
            .find(|(hash, _)| s3_keys(hash).0 == key_id)
            .map(|(hash, principal)| (*hash, principal.clone()))
    }

    /// The principal of the token with this id, if it exists.
    pub(crate) fn token(&self, id: &str) -> Option<Principal> {
        self.read()
            .tokens
            .values()
            .find(|principal| matches!(principal, Principal::Tenant { id: own, .. } if own == id))
            .cloned()
    }
}

fn principal(token: &StoredToken) -> Principal {
    Principal::Tenant {
        id: token.id.clone(),
        namespace: token.namespace.clone(),
        role: token.role,
    }
}

fn in_namespace(principal: &Principal, name: &str) -> bool {
    matches!(principal, Principal::Tenant { namespace, .. } if namespace == name)
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What `spec`'s namespace would hold with `spec` deployed (in place of
/// its current version, if any), as the namespace's quotas count it.
pub(crate) fn usage_with(store: &Store, spec: &FunctionSpec) -> Result<NamespaceUsage, StoreError> {
    let mut contents = store.namespace_contents(&spec.namespace, Some(&spec.name))?;
    contents.functions += 1;
    for digest in spec.artifacts() {
        if let Some(artifact) = store.artifact(digest)? {
            contents.artifacts.insert(artifact.digest, artifact.size);
        }
    }
    Ok(contents.usage())
}
