//! `wasi:keyvalue` and Spin's `fermyon:spin/key-value` for guests: `open`
//! gives a guest a bucket for each key-value store its function declares, in
//! its own namespace, and nothing else; reads and writes go to the node's
//! backend ([`KeyValue`]).

use std::sync::Arc;

use wasmtime::component::{Linker, Resource, ResourceTableError};
use wisp_core::kv::{Bucket, KeyValue, KvError, check_key, check_value};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wisp:keyvalue/guest",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Opened,
            "fermyon:spin/key-value.store": super::SpinStore,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::Failure,
        },
    });
}

use bindings::{
    fermyon::spin::key_value as spin,
    wasi::keyvalue::{atomics, batch, store},
};

/// The stores a function's guests may open, and where they are kept.
#[derive(Clone)]
pub struct KeyValueAccess {
    /// The node's key-value backend.
    pub backend: Arc<dyn KeyValue>,
    /// The function's namespace: the only one whose stores it reaches.
    pub namespace: String,
    /// The stores it declares (`key_value_stores`).
    pub stores: Vec<String>,
}

impl std::fmt::Debug for KeyValueAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValueAccess")
            .field("namespace", &self.namespace)
            .field("stores", &self.stores)
            .finish_non_exhaustive()
    }
}

impl KeyValueAccess {
    /// The bucket of `store`, if the function declared it.
    fn open(&self, store: &str) -> Result<Bucket, KvError> {
        let bucket = Bucket::new(&self.namespace, store)?;
        if !self.stores.iter().any(|declared| declared == store) {
            return Err(KvError::NotDeclared(store.to_owned()));
        }
        Ok(bucket)
    }
}

/// A store a guest opened through `wasi:keyvalue`.
pub struct Opened(Bucket);

/// A store a guest opened through Spin's `fermyon:spin/key-value`.
pub struct SpinStore(Bucket);

/// What a guest is told of a failed key-value call, in the terms both
/// interfaces share; a backend's own words go to the node's log only.
enum Told {
    NoSuchStore,
    AccessDenied,
    /// [`MAX_OPEN`] stores are open.
    TableFull,
    Other(String),
}

impl From<KvError> for Told {
    fn from(error: KvError) -> Self {
        match error {
            KvError::BadStore(_) => Self::NoSuchStore,
            KvError::NotDeclared(_) => Self::AccessDenied,
            KvError::Backend(detail) => {
                tracing::warn!("key-value store: {detail}");
                Self::Other("the key-value store cannot be reached".into())
            }
            other => Self::Other(other.to_string()),
        }
    }
}

impl From<Told> for store::Error {
    fn from(told: Told) -> Self {
        match told {
            Told::NoSuchStore => Self::NoSuchStore,
            Told::AccessDenied => Self::AccessDenied,
            Told::TableFull => Self::Other(format!(
                "at most {MAX_OPEN} stores are open at once: drop one first"
            )),
            Told::Other(detail) => Self::Other(detail),
        }
    }
}

impl From<Told> for spin::Error {
    fn from(told: Told) -> Self {
        match told {
            Told::NoSuchStore => Self::NoSuchStore,
            Told::AccessDenied => Self::AccessDenied,
            Told::TableFull => Self::StoreTableFull,
            Told::Other(detail) => Self::Other(detail),
        }
    }
}

impl From<KvError> for spin::Error {
    fn from(error: KvError) -> Self {
        Told::from(error).into()
    }
}

/// Why a guest's key-value call failed: a `wasi:keyvalue/store.error`, or
/// a trap for a host failure the guest cannot handle.
pub enum Failure {
    /// An error the guest is told.
    Guest(store::Error),
    /// The guest's handle is not in its table: it is trapped.
    Trap(ResourceTableError),
}

impl From<KvError> for Failure {
    fn from(error: KvError) -> Self {
        Self::Guest(Told::from(error).into())
    }
}

impl From<ResourceTableError> for Failure {
    fn from(error: ResourceTableError) -> Self {
        Self::Trap(error)
    }
}

/// Stores one instance may hold open at once: handles live in host memory,
/// outside the guest's memory limit.
const MAX_OPEN: usize = 64;
/// Keys one batch call names at most.
const MAX_BATCH_KEYS: usize = 1000;
/// Bytes of values one `get-many` (or of keys one Spin `get-keys`) answers
/// at most: the host gathers them before the guest receives them.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// The key-value side of a guest's state: what it may open, its handles,
/// and how many of them are open.
pub(crate) struct GuestKeyValue<'a> {
    pub(crate) access: Option<&'a KeyValueAccess>,
    pub(crate) table: &'a mut wasmtime::component::ResourceTable,
    pub(crate) open: &'a mut usize,
}

/// A batch of `count` keys, refused past [`MAX_BATCH_KEYS`].
fn check_batch(count: usize) -> Result<(), Failure> {
    if count > MAX_BATCH_KEYS {
        return Err(Failure::Guest(store::Error::Other(format!(
            "a batch names at most {MAX_BATCH_KEYS} keys, not {count}"
        ))));
    }
    Ok(())
}

impl GuestKeyValue<'_> {
    fn bucket(&self, opened: &Resource<Opened>) -> Result<(Bucket, Arc<dyn KeyValue>), Failure> {
        let bucket = self.table.get(opened)?.0.clone();
        let backend = self
            .access
            .map(|access| access.backend.clone())
            .ok_or(Failure::Guest(store::Error::AccessDenied))?;
        Ok((bucket, backend))
    }

    /// The bucket of a store a Spin guest opened; a store is only ever
    /// opened with access, so a handle without it is a trap.
    fn spin_bucket(
        &self,
        opened: &Resource<SpinStore>,
    ) -> wasmtime::Result<(Bucket, Arc<dyn KeyValue>)> {
        let bucket = self.table.get(opened)?.0.clone();
        let access = self
            .access
            .ok_or_else(|| wasmtime::format_err!("a key-value store open without access"))?;
        Ok((bucket, access.backend.clone()))
    }

    /// Opens a store for either interface: declared, in the function's
    /// namespace, and within [`MAX_OPEN`].
    fn open_bucket(&mut self, store: &str) -> Result<Bucket, Told> {
        let access = self.access.ok_or(Told::AccessDenied)?;
        let bucket = access.open(store)?;
        if *self.open >= MAX_OPEN {
            return Err(Told::TableFull);
        }
        Ok(bucket)
    }
}

/// Adds `wasi:keyvalue` to a linker whose state gives a [`GuestKeyValue`].
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> GuestKeyValue<'_>,
) -> wasmtime::Result<()> {
    bindings::Guest::add_to_linker::<T, KeyValueHost>(linker, view)
}

struct KeyValueHost;

impl wasmtime::component::HasData for KeyValueHost {
    type Data<'a> = GuestKeyValue<'a>;
}

impl store::Host for GuestKeyValue<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Opened>, Failure> {
        let bucket = self
            .open_bucket(&identifier)
            .map_err(|told| Failure::Guest(told.into()))?;
        let opened = self.table.push(Opened(bucket))?;
        *self.open += 1;
        Ok(opened)
    }

    fn convert_error(&mut self, failure: Failure) -> wasmtime::Result<store::Error> {
        match failure {
            Failure::Guest(error) => Ok(error),
            Failure::Trap(error) => Err(error.into()),
        }
    }
}

impl store::HostBucket for GuestKeyValue<'_> {
    async fn get(
        &mut self,
        opened: Resource<Opened>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let (bucket, backend) = self.bucket(&opened)?;
        check_key(&key)?;
        Ok(backend.get(&bucket, &key).await?)
    }

    async fn set(
        &mut self,
        opened: Resource<Opened>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Failure> {
        let (bucket, backend) = self.bucket(&opened)?;
        check_key(&key)?;
        check_value(&value)?;
        Ok(backend.set(&bucket, &key, value).await?)
    }

    async fn delete(&mut self, opened: Resource<Opened>, key: String) -> Result<(), Failure> {
        let (bucket, backend) = self.bucket(&opened)?;
        check_key(&key)?;
        Ok(backend.delete(&bucket, &key).await?)
    }

    async fn exists(&mut self, opened: Resource<Opened>, key: String) -> Result<bool, Failure> {
        let (bucket, backend) = self.bucket(&opened)?;
        check_key(&key)?;
        Ok(backend.get(&bucket, &key).await?.is_some())
    }

    async fn list_keys(
        &mut self,
        opened: Resource<Opened>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, Failure> {
        let (bucket, backend) = self.bucket(&opened)?;
        let page = backend.list(&bucket, cursor.unwrap_or(0)).await?;
        Ok(store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    async fn drop(&mut self, opened: Resource<Opened>) -> wasmtime::Result<()> {
        self.table.delete(opened)?;
        *self.open -= 1;
        Ok(())
    }
}

impl atomics::Host for GuestKeyValue<'_> {
    async fn increment(
        &mut self,
        opened: Resource<Opened>,
        key: String,
        delta: u64,
    ) -> Result<u64, Failure> {
        let (bucket, backend) = self.bucket(&opened)?;
        check_key(&key)?;
        Ok(backend.increment(&bucket, &key, delta).await?)
    }
}

impl batch::Host for GuestKeyValue<'_> {
    async fn get_many(
        &mut self,
        opened: Resource<Opened>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Failure> {
        let (bucket, backend) = self.bucket(&opened)?;
        check_batch(keys.len())?;
        let mut values = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        for key in keys {
            check_key(&key)?;
            let value = backend.get(&bucket, &key).await?;
            bytes += value.as_ref().map_or(0, Vec::len);
            if bytes > MAX_BATCH_BYTES {
                return Err(Failure::Guest(store::Error::Other(format!(
                    "a get-many answers at most {MAX_BATCH_BYTES} bytes of values: ask for fewer keys"
                ))));
            }
            values.push(value.map(|value| (key, value)));
        }
        Ok(values)
    }

    async fn set_many(
        &mut self,
        opened: Resource<Opened>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Failure> {
        let (bucket, backend) = self.bucket(&opened)?;
        check_batch(entries.len())?;
        for (key, value) in &entries {
            check_key(key)?;
            check_value(value)?;
        }
        for (key, value) in entries {
            backend.set(&bucket, &key, value).await?;
        }
        Ok(())
    }

    async fn delete_many(
        &mut self,
        opened: Resource<Opened>,
        keys: Vec<String>,
    ) -> Result<(), Failure> {
        let (bucket, backend) = self.bucket(&opened)?;
        check_batch(keys.len())?;
        for key in &keys {
            check_key(key)?;
        }
        for key in keys {
            backend.delete(&bucket, &key).await?;
        }
        Ok(())
    }
}

impl spin::Host for GuestKeyValue<'_> {}

impl spin::HostStore for GuestKeyValue<'_> {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<SpinStore>, spin::Error>> {
        let bucket = match self.open_bucket(&label) {
            Ok(bucket) => bucket,
            Err(told) => return Ok(Err(told.into())),
        };
        let opened = self.table.push(SpinStore(bucket))?;
        *self.open += 1;
        Ok(Ok(opened))
    }

    async fn get(
        &mut self,
        store: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin::Error>> {
        let (bucket, backend) = self.spin_bucket(&store)?;
        Ok(
            async { check_key(&key).map(|()| backend.get(&bucket, &key))?.await }
                .await
                .map_err(spin::Error::from),
        )
    }

    async fn set(
        &mut self,
        store: Resource<SpinStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin::Error>> {
        let (bucket, backend) = self.spin_bucket(&store)?;
        Ok(async {
            check_key(&key)?;
            check_value(&value)?;
            backend.set(&bucket, &key, value).await
        }
        .await
        .map_err(spin::Error::from))
    }

    async fn delete(
        &mut self,
        store: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), spin::Error>> {
        let (bucket, backend) = self.spin_bucket(&store)?;
        Ok(async {
            check_key(&key)
                .map(|()| backend.delete(&bucket, &key))?
                .await
        }
        .await
        .map_err(spin::Error::from))
    }

    async fn exists(
        &mut self,
        store: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, spin::Error>> {
        let value = spin::HostStore::get(self, store, key).await?;
        Ok(value.map(|value| value.is_some()))
    }

    async fn get_keys(
        &mut self,
        store: Resource<SpinStore>,
    ) -> wasmtime::Result<Result<Vec<String>, spin::Error>> {
        let (bucket, backend) = self.spin_bucket(&store)?;
        // Each key costs the host its bytes and its `String`: a store of
        // millions of one-byte keys is refused rather than listed.
        Ok(backend
            .all_keys(&bucket, MAX_BATCH_BYTES)
            .await
            .map_err(Into::into))
    }

    async fn drop(&mut self, store: Resource<SpinStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        *self.open -= 1;
        Ok(())
    }
}
