//! WebAssembly components on wasmtime: one engine with the pooling allocator
//! (and a second one, counting fuel, for functions with a fuel limit),
//! components compiled once per artifact digest and engine version and cached
//! on disk, and a fresh instance per request from an `InstancePre`.
//!
//! A component met for the first time is compiled twice. Winch, a baseline
//! compiler, makes code in a fraction of Cranelift's time, and the function
//! serves with it at once; Cranelift then compiles it on a thread of lower
//! priority, the result is cached, and every function serving the Winch code
//! switches to Cranelift's between two calls (a call keeps the code it began
//! with). Functions with a fuel limit get Cranelift's code only.
//!
//! A guest starts inline, in the request's own task: most finish within one
//! epoch slice and pay no thread hand-off. One still running after a whole
//! slice moves to a runtime of its own whose threads run at a lower priority
//! than the node's: however many guests loop, the node's threads still accept
//! connections, fire timers and answer 504s on time. Timeouts are
//! epoch deadlines: a ticker thread advances the epoch every [`EPOCH_TICK`],
//! and on each tick a running guest yields to its executor (so looping guests
//! share the guest threads fairly) and traps once its deadline has passed.
//! Memory is bounded per store by a [`ResourceLimiter`]: all the linear
//! memories and tables of a component's core instances count together
//! against the function's `memory`. A guest sees only
//! the environment its function declares and, if it declares files, their
//! directory read-only; its outbound HTTP goes through [`crate::outbound`].

use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::Poll,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Strategy,
    UpdateDeadline,
    component::{Component, InstancePre, Linker, ResourceTable},
};
use wasmtime_wasi::{
    FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
    cli::AsyncStdinStream,
    p2::{
        bindings::CommandPre,
        pipe::{MemoryInputPipe, MemoryOutputPipe},
    },
};
use wasmtime_wasi_http::{
    WasiHttpCtx, WasiHttpCtxView, WasiHttpView,
    p2::bindings::{ProxyPre, http::types::Scheme},
};

use wisp_core::egress::EgressPolicy;

use crate::{
    GuestRunning, Input, Invocation, InvokeError, LogStream, Meter, Output, PrepareError, Response,
    component::{component_bytes, unprovided_spin_imports},
    full_response,
    keyvalue::{self, GuestKeyValue, KeyValueAccess},
    outbound::{Internal, OutboundPolicy, TRACEPARENT},
    stdio_content_type, watchdog_env,
};

/// How often the epoch advances: the granularity of timeouts and of yielding.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);
/// Bytes of each pooled fiber stack kept resident between instances.
const ASYNC_STACK_KEEP_RESIDENT: usize = 64 << 10;
/// Bytes of each pooled linear memory, and of each table, that an instance
/// may have written and that are put back in place (a copy of their first
/// contents) rather than given back to the kernel, on a host without swap
/// (see [`pool`]).
const MEMORY_KEEP_RESIDENT: usize = 1 << 20;
const TABLE_KEEP_RESIDENT: usize = 64 << 10;
/// How often a node that resets memories in place looks for swap.
const SWAP_WATCH: Duration = Duration::from_secs(1);
/// The buffer between a streamed body and a `wasm-stdio` guest's STDIN.
const STDIN_PIPE: usize = 64 << 10;
/// The most a `wasm-stdio` guest may write to STDOUT (its response body).
pub const MAX_STDOUT: usize = 64 << 20;
/// The most of a guest's STDERR (and a `wasm-http` guest's STDOUT) kept for the log, per invocation.
pub const MAX_STDERR: usize = 64 << 10;
/// The most core instances one instance of a component may have. A Rust
/// component has about four; one linked from shared libraries (Python's) a
/// few more per library.
pub const MAX_CORE_INSTANCES: u32 = 32;
/// The most linear memories one instance of a component may have: one, or
/// two with a WASI adapter, are usual. The pool reserves address space (about
/// 4GiB) for this many memories per instance, `--max-instances` times over.
pub const MAX_MEMORIES: u32 = 4;
/// The most tables one instance of a component may have.
pub const MAX_TABLES: u32 = 16;
/// What a table element is charged against a function's `memory`: wasmtime
/// keeps one pointer per element.
const TABLE_ELEMENT_BYTES: u64 = std::mem::size_of::<usize>() as u64;

/// Engine-wide settings, chosen by the node.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Where precompiled components are cached.
    pub cache_dir: PathBuf,
    /// Instances that may exist at once, across functions (pool slots).
    pub max_instances: u32,
    /// The largest memory any function may be given.
    pub max_memory: u64,
    /// The addresses guests may connect to, whatever their function allows.
    pub egress: Arc<EgressPolicy>,
}

/// Where guests' requests go: functions of this node in-process, anything
/// else over the network under the node's egress policy.
struct Outbound {
    egress: Arc<EgressPolicy>,
    internal: OnceLock<Arc<dyn Internal>>,
}

/// Per-function limits and environment.
#[derive(Debug, Clone)]
pub struct WasmLimits {
    /// The function's name, for the log.
    pub name: String,
    /// Its namespace: what its in-process calls may reach depends on it.
    pub namespace: String,
    /// Bound on linear memory, in bytes.
    pub memory: u64,
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// A directory the guest sees, read-only, at `/`; no filesystem when absent.
    pub files: Option<PathBuf>,
    /// Units of fuel (about one per WebAssembly instruction) a call may
    /// burn; unbounded when absent. The component must have been loaded
    /// [metered](WasmEngine::load).
    pub fuel: Option<u64>,
    /// Outbound HTTP destinations the guest may call.
    pub allowed_outbound_hosts: Vec<String>,
    /// The key-value stores the guest may open (`wasi:keyvalue`); none when absent.
    pub key_value: Option<KeyValueAccess>,
    /// Where the guest's output lines go.
    pub output: Output,
}

impl WasmLimits {
    /// A guest's WASI context as the function declares it: its environment
    /// and, if it has files, their directory read-only at `/`.
    fn wasi(&self) -> Result<WasiCtxBuilder, InvokeError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&self.env);
        if let Some(files) = &self.files {
            wasi.preopened_dir(files, "/", FsPerms::ReadOnly)
                .map_err(|error| {
                    InvokeError::Internal(format!("open {}: {error}", files.display()))
                })?;
        }
        Ok(wasi)
    }
}

/// Compile-cache counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Components loaded precompiled from disk.
    pub hits: AtomicU64,
    /// Components compiled by Cranelift because no precompiled copy existed
    /// (Winch's quick compilations are not counted).
    pub misses: AtomicU64,
}

/// How much lower than the node's threads guest threads run (a `nice` increment).
const GUEST_NICENESS: libc::c_int = 5;

/// The runtime guests run on. Dropping a runtime from async code panics, so
/// this one shuts down in the background.
struct GuestRuntime(Option<tokio::runtime::Runtime>);

impl GuestRuntime {
    fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("wisp-guest")
            .enable_all()
            .on_thread_start(lower_priority)
            .build()?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("present until dropped")
            .handle()
            .clone()
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A wasmtime engine and what is tied to it: the linker, the compile cache
/// and the components compiled for it.
struct Flavour {
    engine: Engine,
    linker: Linker<GuestState>,
    cache_dir: PathBuf,
    loaded: Mutex<HashMap<String, Component>>,
}

impl Flavour {
    /// An engine for `wasm`'s settings, its precompiled components cached
    /// under `cache_dir`, in a directory named after its compatibility hash.
    fn new(wasm: &wasmtime::Config, cache_dir: &Path) -> Result<Self, PrepareError> {
        let internal =
            |error: wasmtime::Error| PrepareError::Internal(format!("wasm engine: {error}"));
        let engine = Engine::new(wasm).map_err(internal)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(internal)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(internal)?;
        keyvalue::add_to_linker(&mut linker, |state: &mut GuestState| GuestKeyValue {
            access: state.outbound.function.key_value.as_ref(),
            table: &mut state.table,
            open: &mut state.key_value_open,
        })
        .map_err(internal)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache_dir = cache_dir.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&cache_dir).map_err(|error| {
            PrepareError::Internal(format!("create {}: {error}", cache_dir.display()))
        })?;
        Ok(Self {
            engine,
            linker,
            cache_dir,
            loaded: Mutex::default(),
        })
    }

    /// The component of `digest` compiled for this engine, if it is in memory.
    fn loaded(&self, digest: &str) -> Option<Component> {
        self.loaded
            .lock()
            .expect("component map")
            .get(digest)
            .cloned()
    }

    fn keep(&self, digest: &str, component: &Component) {
        self.loaded
            .lock()
            .expect("component map")
            .insert(digest.to_owned(), component.clone());
    }
}

/// Reads an artifact as a component (a command module gets the adapter).
fn read_component(wasm: &Path) -> Result<Vec<u8>, PrepareError> {
    let bytes = std::fs::read(wasm)
        .map_err(|error| PrepareError::Internal(format!("read {}: {error}", wasm.display())))?;
    Ok(component_bytes(&bytes)?.into_owned())
}

/// Compiles a component's `bytes` for `engine`.
fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, PrepareError> {
    Component::new(engine, bytes).map_err(|error| {
        PrepareError::InvalidArtifact(format!("the component does not compile: {}", chain(&error)))
    })
}

/// Caches a compiled component at `path`. Caching is an optimisation: a
/// failure is logged, not returned.
fn write_cache(path: &Path, component: &Component) {
    let write = || -> Result<(), String> {
        let bytes = component.serialize().map_err(|error| error.to_string())?;
        // Unique: two writers of one path never share a temporary file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "tmp{}-{}",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&tmp, bytes).map_err(|error| error.to_string())?;
        std::fs::rename(&tmp, path).map_err(|error| error.to_string())
    };
    if let Err(error) = write() {
        tracing::warn!(
            "could not cache compiled component at {}: {error}",
            path.display()
        );
    }
}

/// Lowers the calling thread's priority to the guests': work that can wait
/// does not take cores from the node's threads.
fn lower_priority() {
    // SAFETY: setpriority(2) on the calling thread (who = 0 is the
    // caller's tid under Linux's per-thread nice) has no memory-safety
    // preconditions. Failure only leaves the default priority.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, GUEST_NICENESS);
    }
}

/// What is done with Cranelift's code of a component once it is ready.
type Retarget = Box<dyn FnOnce(&Component) + Send>;

/// The wasmtime engines of a node: one for most functions, one that counts
/// fuel for those with a fuel limit (counting slows every guest down, so
/// only they pay for it), and one compiling with Winch.
pub struct WasmEngine {
    plain: Arc<Flavour>,
    metered: Flavour,
    /// Winch's engine, made when a component is first compiled: a node
    /// whose components are all cached never reserves its pool.
    quick: Arc<OnceLock<Option<Flavour>>>,
    quick_config: (wasmtime::Config, PathBuf),
    /// The digests queued for Cranelift, with what to do once each is ready.
    optimizing: Arc<Mutex<HashMap<String, Vec<Retarget>>>>,
    /// The queue of the one thread that compiles them.
    compile: std::sync::mpsc::Sender<Job>,
    guests: GuestRuntime,
    stats: Arc<CacheStats>,
    outbound: Arc<Outbound>,
}

/// A component as [`WasmEngine::load`] gives it.
#[derive(Clone)]
pub struct Loaded {
    component: Component,
    /// What Cranelift is to compile, when this is Winch's code.
    quick: Option<Job>,
}

/// A component for Cranelift to compile in the background.
#[derive(Debug, Clone)]
struct Job {
    digest: String,
    /// The artifact.
    wasm: PathBuf,
    /// Where its code is cached.
    cached: PathBuf,
}

/// Compiles the components queued on `jobs`, one at a time on a thread of
/// lower priority than the node's, caches each, and gives its code to the
/// functions waiting for it (those still deployed; none if the component
/// was unloaded meanwhile).
fn optimize(
    plain: &Flavour,
    quick: &OnceLock<Option<Flavour>>,
    optimizing: &Mutex<HashMap<String, Vec<Retarget>>>,
    stats: &CacheStats,
    jobs: std::sync::mpsc::Receiver<Job>,
) {
    lower_priority();
    for job in jobs {
        let started = Instant::now();
        let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            compile(&plain.engine, &read_component(&job.wasm)?)
        }))
        .unwrap_or_else(|_| Err(PrepareError::Internal("Cranelift panicked".into())));
        if let Ok(component) = &compiled {
            stats.misses.fetch_add(1, Ordering::Relaxed);
            write_cache(&job.cached, component);
        }
        let mut waiting = optimizing.lock().expect("optimizing");
        let Some(retargets) = waiting.remove(&job.digest) else {
            continue;
        };
        // Under the lock a function being prepared takes: it finds either
        // the waiting list or Cranelift's code.
        if let Ok(component) = &compiled {
            plain.keep(&job.digest, component);
        }
        if let Some(Some(quick)) = quick.get() {
            quick
                .loaded
                .lock()
                .expect("component map")
                .remove(&job.digest);
        }
        drop(waiting);
        match compiled {
            Ok(component) => {
                tracing::debug!(
                    "{}: Cranelift's code ready in {} ms",
                    job.digest,
                    started.elapsed().as_millis()
                );
                retargets
                    .into_iter()
                    .for_each(|retarget| retarget(&component));
            }
            Err(error) => tracing::warn!(
                "{}: Cranelift cannot compile what Winch did; Winch's code serves on: {error}",
                job.digest
            ),
        }
    }
}

/// A function's `InstancePre`: for Winch's code of its component, then for
/// Cranelift's, swapped in between two calls.
struct Tiered<P>(Arc<RwLock<P>>);

impl<P: Clone + Send + Sync + 'static> Tiered<P> {
    fn new(pre: P) -> Self {
        Self(Arc::new(RwLock::new(pre)))
    }

    /// The one a call starts with.
    fn current(&self) -> P {
        self.0.read().expect("instance pre").clone()
    }

    /// What swaps in the `InstancePre` of Cranelift's code, made with
    /// `linker` and `typed`, while the function is still deployed.
    fn retarget(
        &self,
        linker: Linker<GuestState>,
        typed: fn(InstancePre<GuestState>) -> wasmtime::Result<P>,
    ) -> Retarget {
        let cell = Arc::downgrade(&self.0);
        Box::new(move |component| {
            let Some(cell) = cell.upgrade() else { return };
            match linker.instantiate_pre(component).and_then(typed) {
                Ok(pre) => *cell.write().expect("instance pre") = pre,
                Err(error) => tracing::warn!(
                    "Cranelift's code of a component does not link; Winch's serves on: {}",
                    chain(&error)
                ),
            }
        })
    }
}

/// Whether the host has swap on (or cannot tell): a device or file listed
/// in `/proc/swaps` after its header.
fn swap_in_use() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |swaps| lists_swap(&swaps))
}

fn lists_swap(swaps: &str) -> bool {
    swaps.lines().skip(1).any(|line| !line.trim().is_empty())
}

/// Stops the node if swap is turned on while it resets memories in place:
/// from then on a guest's page could be swapped out and read by the next
/// instance in its slot ([`pool`]). Started again, the node gives pages back
/// to the kernel instead. One watch serves every engine of the process.
fn watch_swap() -> Result<(), PrepareError> {
    static WATCHING: OnceLock<()> = OnceLock::new();
    if WATCHING.set(()).is_err() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("wisp-swap-watch".into())
        .spawn(|| {
            while !swap_in_use() {
                std::thread::sleep(SWAP_WATCH);
            }
            tracing::error!(
                "swap was turned on: this node resets WebAssembly memories in place, which is \
                 safe only without swap; it stops now, and resets them through the kernel once \
                 started again"
            );
            std::process::exit(1);
        })
        .map(drop)
        .map_err(|error| PrepareError::Internal(format!("swap watch: {error}")))
}

/// The pool of instances `config` says; `reset_in_place` to reset the pages
/// an instance wrote by copying their first contents back, found with
/// Linux's `PAGEMAP_SCAN`.
///
/// Giving them back to the kernel (`madvise`) instead flushes the TLB of
/// every core the node runs on, and the next instance faults them in
/// again: that was half of a hello request's time in the kernel. wasmtime's
/// scan skips a written page that was swapped out, though, and the next
/// instance in that slot would read it: so only a host without swap resets
/// in place ([`swap_in_use`]).
fn pool(config: &WasmConfig, reset_in_place: bool) -> PoolingAllocationConfig {
    let instances = config.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        // One instance cannot take a share of the pool out of proportion:
        // a larger component is refused when it is loaded (a 400 at deploy).
        .max_core_instances_per_component(MAX_CORE_INSTANCES)
        .max_memories_per_component(MAX_MEMORIES)
        .max_tables_per_component(MAX_TABLES)
        // Every instance may be at those maxima: one tenant's calls of a
        // large component cannot empty the pool while instances are left.
        .total_core_instances(instances.saturating_mul(MAX_CORE_INSTANCES))
        .total_memories(instances.saturating_mul(MAX_MEMORIES))
        .total_tables(instances.saturating_mul(MAX_TABLES))
        .total_stacks(instances)
        .max_memory_size(config.max_memory as usize)
        // The top of a reused fiber stack stays resident: every call
        // touches it, and faulting it back in after a madvise cost a
        // quarter of a hello request. Of linear memories, only the pages an
        // instance wrote are worth keeping: copying back the first 256KiB
        // whatever was written measured slower than faulting pages in.
        .async_stack_keep_resident(ASYNC_STACK_KEEP_RESIDENT);
    if reset_in_place {
        pool.linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
    }
    pool
}

impl WasmEngine {
    /// Creates the engines and starts their epoch ticker.
    pub fn new(config: &WasmConfig) -> Result<Self, PrepareError> {
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true).epoch_interruption(true);
        // Fuel-limited functions are the exception: their instances are
        // allocated on demand rather than from a second pool.
        let metered = Flavour::new(
            wasm.clone().consume_fuel(true),
            &config.cache_dir.join("fuel"),
        )?;
        // Winch's code serves a component for the moment Cranelift's takes,
        // from a pool of its own as large, with the same bounds (a component
        // the pool would refuse is refused at deploy, and a function serving
        // Winch's code runs as many at once). Pools reserve address space,
        // not memory.
        let reset_in_place = !swap_in_use();
        if reset_in_place {
            watch_swap()?;
        }
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(
            config,
            reset_in_place,
        )));
        let mut quick_config = wasm.clone();
        quick_config.strategy(Strategy::Winch);
        // Cranelift compiles in the background on one thread of lower
        // priority: the cores stay the node's.
        wasm.parallel_compilation(false);
        let plain = Flavour::new(&wasm, &config.cache_dir)?;
        let quick: Arc<OnceLock<Option<Flavour>>> = Arc::default();

        let tickers = [plain.engine.weak(), metered.engine.weak()];
        let quick_ticker = Arc::downgrade(&quick);
        std::thread::Builder::new()
            .name("wisp-epoch".into())
            .spawn(move || {
                while let Some(engines) = tickers
                    .iter()
                    .map(|engine| engine.upgrade())
                    .collect::<Option<Vec<_>>>()
                {
                    engines.iter().for_each(Engine::increment_epoch);
                    drop(engines);
                    if let Some(quick) = quick_ticker.upgrade()
                        && let Some(Some(flavour)) = quick.get()
                    {
                        flavour.engine.increment_epoch();
                    }
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|error| PrepareError::Internal(format!("epoch ticker: {error}")))?;

        let guests = GuestRuntime::new()
            .map_err(|error| PrepareError::Internal(format!("guest runtime: {error}")))?;
        let plain = Arc::new(plain);
        let optimizing: Arc<Mutex<HashMap<String, Vec<Retarget>>>> = Arc::default();
        let stats: Arc<CacheStats> = Arc::default();
        let (compile, jobs) = std::sync::mpsc::channel();
        {
            let (plain, quick, optimizing, stats) = (
                plain.clone(),
                quick.clone(),
                optimizing.clone(),
                stats.clone(),
            );
            std::thread::Builder::new()
                .name("wisp-compile".into())
                .spawn(move || optimize(&plain, &quick, &optimizing, &stats, jobs))
                .map_err(|error| PrepareError::Internal(format!("compile thread: {error}")))?;
        }
        Ok(Self {
            plain,
            metered,
            quick,
            quick_config: (quick_config, config.cache_dir.join("winch")),
            optimizing,
            compile,
            guests,
            stats,
            outbound: Arc::new(Outbound {
                egress: config.egress.clone(),
                internal: OnceLock::new(),
            }),
        })
    }

    /// Where guests' requests to `http://{name}[.{namespace}].wisp.internal`
    /// go: set once, by the node that serves the functions.
    pub fn serve_internal(&self, internal: Arc<dyn Internal>) {
        let _ = self.outbound.internal.set(internal);
    }

    /// What [`WasmEngine::serve_internal`] set: where processes' requests to
    /// the node's endpoint go too ([`crate::endpoint`]).
    pub fn internal(&self) -> Option<Arc<dyn Internal>> {
        self.outbound.internal.get().cloned()
    }

    /// Winch's engine, made now if it is not yet; none if it cannot be.
    fn quick(&self) -> Option<&Flavour> {
        self.quick
            .get_or_init(|| {
                let (config, cache_dir) = &self.quick_config;
                Flavour::new(config, cache_dir)
                    .inspect_err(|error| {
                        tracing::warn!("components compile with Cranelift only: {error}");
                    })
                    .ok()
            })
            .as_ref()
    }

    /// Winch's engine, if it was made.
    fn quick_made(&self) -> Option<&Flavour> {
        self.quick.get().and_then(Option::as_ref)
    }

    fn flavour(&self, metered: bool) -> &Flavour {
        if metered { &self.metered } else { &self.plain }
    }

    /// Compile-cache counters.
    pub fn cache_stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Loads a component by digest, `metered` to count fuel: from memory,
    /// from the disk cache, or by compiling `wasm`. Compiled the first time,
    /// a component that is not metered is Winch's code at first, and
    /// Cranelift's once compiled in the background (then cached) for the
    /// functions prepared with it. Blocking: compilation takes a while.
    pub fn load(&self, digest: &str, wasm: &Path, metered: bool) -> Result<Loaded, PrepareError> {
        let flavour = self.flavour(metered);
        let hex = digest.trim_start_matches("sha256:");
        let cached = flavour.cache_dir.join(format!("{hex}.cwasm"));
        let optimized = |component| Loaded {
            component,
            quick: None,
        };
        let quick = |component| Loaded {
            component,
            quick: Some(Job {
                digest: digest.to_owned(),
                wasm: wasm.to_owned(),
                cached: cached.clone(),
            }),
        };
        if let Some(component) = flavour.loaded(digest) {
            return Ok(optimized(component));
        }
        if !metered && let Some(component) = self.quick_made().and_then(|made| made.loaded(digest))
        {
            return Ok(quick(component));
        }
        // SAFETY: the file was written by `Component::serialize` of an engine
        // with the same compatibility hash (it is in the directory name), into
        // a directory only this node writes, and renamed into place whole.
        if let Ok(component) = unsafe { Component::deserialize_file(&flavour.engine, &cached) } {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            flavour.keep(digest, &component);
            return Ok(optimized(component));
        }
        let bytes = read_component(wasm)?;
        if !metered && let Some(made) = self.quick() {
            match Component::new(&made.engine, &bytes) {
                Ok(component) => {
                    made.keep(digest, &component);
                    return Ok(quick(component));
                }
                // Cranelift says why, if it cannot compile it either.
                Err(error) => tracing::debug!("Winch cannot compile {digest}: {}", chain(&error)),
            }
        }
        let component = compile(&flavour.engine, &bytes)?;
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        write_cache(&cached, &component);
        flavour.keep(digest, &component);
        Ok(optimized(component))
    }

    /// Has `retarget` called with Cranelift's code of `loaded` once it is
    /// ready (at once if it is by now), if `loaded` is Winch's: the first
    /// function to wait for a component queues its compilation.
    fn when_optimized(&self, loaded: &Loaded, retarget: impl FnOnce() -> Retarget) {
        let Some(job) = &loaded.quick else { return };
        let mut optimizing = self.optimizing.lock().expect("optimizing");
        if let Some(waiting) = optimizing.get_mut(&job.digest) {
            waiting.push(retarget());
            return;
        }
        if let Some(component) = self.plain.loaded(&job.digest) {
            drop(optimizing);
            retarget()(&component);
            return;
        }
        optimizing.insert(job.digest.clone(), vec![retarget()]);
        drop(optimizing);
        if self.compile.send(job.clone()).is_err() {
            tracing::warn!(
                "{}: Winch's code serves on: the compiler is gone",
                job.digest
            );
            self.optimizing
                .lock()
                .expect("optimizing")
                .remove(&job.digest);
        }
    }

    /// Forgets the in-memory copy of a component no function uses any more,
    /// and Cranelift's compilation of it if it is queued.
    pub fn unload(&self, digest: &str) {
        self.optimizing.lock().expect("optimizing").remove(digest);
        for flavour in [Some(&*self.plain), Some(&self.metered), self.quick_made()]
            .into_iter()
            .flatten()
        {
            flavour.loaded.lock().expect("component map").remove(digest);
        }
    }

    /// Prepares a `wasi:http` component.
    pub fn http_function(
        &self,
        loaded: &Loaded,
        limits: WasmLimits,
    ) -> Result<HttpFunction, PrepareError> {
        let pre = self.instantiate_pre(loaded, &limits)?;
        let pre = ProxyPre::new(pre).map_err(|_| {
            PrepareError::InvalidArtifact(
                "the component does not export wasi:http/incoming-handler@0.2 (a wasm-http function \
                 needs the wasi:http/proxy world; is it a wasm-stdio command?)"
                    .into(),
            )
        })?;
        let pre = Tiered::new(pre);
        self.when_optimized(loaded, || {
            pre.retarget(self.plain.linker.clone(), ProxyPre::new)
        });
        Ok(HttpFunction {
            pre,
            limits: Arc::new(limits),
            guests: self.guests.handle(),
            outbound: self.outbound.clone(),
        })
    }

    /// Prepares a `wasi:cli` command component.
    pub fn stdio_function(
        &self,
        loaded: &Loaded,
        limits: WasmLimits,
    ) -> Result<StdioFunction, PrepareError> {
        let pre = self.instantiate_pre(loaded, &limits)?;
        let pre = CommandPre::new(pre).map_err(|_| {
            PrepareError::InvalidArtifact(
                "the component does not export wasi:cli/run@0.2 (a wasm-stdio function needs the \
                 wasi:cli/command world; is it a wasm-http handler?)"
                    .into(),
            )
        })?;
        let pre = Tiered::new(pre);
        self.when_optimized(loaded, || {
            pre.retarget(self.plain.linker.clone(), CommandPre::new)
        });
        Ok(StdioFunction {
            pre,
            limits: Arc::new(limits),
            guests: self.guests.handle(),
            outbound: self.outbound.clone(),
        })
    }

    fn instantiate_pre(
        &self,
        loaded: &Loaded,
        limits: &WasmLimits,
    ) -> Result<InstancePre<GuestState>, PrepareError> {
        let component = &loaded.component;
        let flavour = match (limits.fuel, &loaded.quick) {
            (None, Some(_)) => self.quick_made().ok_or_else(|| {
                PrepareError::Internal("Winch's code without Winch's engine".into())
            })?,
            _ => self.flavour(limits.fuel.is_some()),
        };
        if !Engine::same(component.engine(), &flavour.engine) {
            return Err(PrepareError::Internal(
                "the component was loaded for the other engine (metered or not)".into(),
            ));
        }
        flavour.linker.instantiate_pre(component).map_err(|error| {
            let spin = unprovided_spin_imports(component, &flavour.engine);
            PrepareError::InvalidArtifact(if spin.is_empty() {
                format!(
                    "the component needs imports wisp does not provide: {}",
                    chain(&error)
                )
            } else {
                format!(
                    "the component imports Spin host interfaces wisp does not provide: {}",
                    spin.join(", ")
                )
            })
        })
    }
}

/// An error and its causes on one line.
fn chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// The per-request state of a store.
struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    outbound: OutboundPolicy,
    /// Key-value stores the guest holds open.
    key_value_open: usize,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Bounds what one store (one call's instance, with all the core instances
/// of its component) may allocate: its linear memories and tables together
/// stay within the function's `memory`, and it may hold at most
/// [`MAX_CORE_INSTANCES`], [`MAX_MEMORIES`] and [`MAX_TABLES`] (the pool
/// refuses larger components at load; this also bounds the metered engine,
/// which has no pool). It remembers whether the guest hit the bound, and
/// meters the memory the store holds.
struct MemoryLimiter {
    limit: u64,
    denied: bool,
    /// Bytes across the store's memories and tables (they only grow, and
    /// are freed only with the store).
    held: u64,
    meter: Arc<Meter>,
}

impl MemoryLimiter {
    /// Takes the growth from `current` to `desired` bytes out of the
    /// store's budget, if it fits.
    fn grow(&mut self, current: u64, desired: u64) -> bool {
        let wanted = self.held.saturating_add(desired.saturating_sub(current));
        let allowed = wanted <= self.limit;
        self.denied |= !allowed;
        if allowed {
            self.held = wanted;
            self.meter.memory(self.held);
        }
        allowed
    }
}

impl ResourceLimiter for MemoryLimiter {
    // Also called when a memory is created (from 0 to its minimum), so
    // every memory of every core instance counts.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current as u64, desired as u64))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| (elements as u64).saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.grow(bytes(current), bytes(desired)))
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES as usize
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES as usize
    }

    fn tables(&self) -> usize {
        MAX_TABLES as usize
    }
}

fn new_store(
    engine: &Engine,
    limits: &Arc<WasmLimits>,
    outbound: &Outbound,
    wasi: WasiCtx,
    invocation: &Invocation,
    sliced: Arc<AtomicBool>,
) -> Store<GuestState> {
    let deadline = invocation.deadline.into_std();
    let state = GuestState {
        wasi,
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        limiter: MemoryLimiter {
            limit: limits.memory,
            denied: false,
            held: 0,
            meter: invocation.meter.clone(),
        },
        outbound: OutboundPolicy {
            function: limits.clone(),
            egress: outbound.egress.clone(),
            internal: outbound.internal.get().cloned(),
            depth: invocation.depth,
            call_id: invocation.call_id.clone(),
            traceparent: invocation.headers.get(TRACEPARENT).cloned(),
        },
        key_value_open: 0,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    if let Some(fuel) = limits.fuel {
        store
            .set_fuel(fuel)
            .expect("a function with fuel runs on the metered engine");
    }
    store.set_epoch_deadline(1);
    // The first tick can come a moment after the guest started: only a guest
    // still running at the second has used a whole slice and yields (and moves).
    let mut ticks = 0u32;
    store.epoch_deadline_callback(move |_| {
        ticks += 1;
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else if ticks == 1 {
            Ok(UpdateDeadline::Continue(1))
        } else {
            sliced.store(true, Ordering::Relaxed);
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// What a guest task gives back: how its run ended, and whether it was refused memory.
type GuestOutcome<T> = (wasmtime::Result<T>, bool);

/// A guest's run. It starts inline, polled by the request's own task: most
/// guests finish within one epoch slice, and then no thread hand-off is paid.
/// A guest still running after a whole slice moves to the guest runtime, so
/// the node's threads never carry long-running guest code.
enum GuestTask<T> {
    /// `None` only for the moment the run moves to the guest runtime.
    Inline(Option<Pin<Box<dyn Future<Output = GuestOutcome<T>> + Send>>>),
    Moved(tokio::task::JoinHandle<GuestOutcome<T>>),
    Done(Result<GuestOutcome<T>, tokio::task::JoinError>),
}

impl<T: Send + 'static> GuestTask<T> {
    /// Drives the guest until `watch` is ready (`Some`) or the guest is done (`None`).
    async fn drive<W: Future + Unpin>(
        &mut self,
        watch: &mut W,
        sliced: &AtomicBool,
        guests: &tokio::runtime::Handle,
    ) -> Option<W::Output> {
        std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(output) = Pin::new(&mut *watch).poll(cx) {
                    return Poll::Ready(Some(output));
                }
                match self {
                    Self::Inline(slot) => {
                        let run = slot.as_mut().expect("an inline run is present");
                        match run.as_mut().poll(cx) {
                            // Look at `watch` once more: finishing may have made it ready.
                            Poll::Ready(outcome) => *self = Self::Done(Ok(outcome)),
                            Poll::Pending if sliced.load(Ordering::Relaxed) => {
                                let run = slot.take().expect("an inline run is present");
                                *self = Self::Moved(guests.spawn(run));
                            }
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    Self::Moved(handle) => match Pin::new(handle).poll(cx) {
                        Poll::Ready(joined) => *self = Self::Done(joined),
                        Poll::Pending => return Poll::Pending,
                    },
                    Self::Done(_) => return Poll::Ready(None),
                }
            }
        })
        .await
    }

    /// Lets a guest that is still running (streaming a body) finish on the guest runtime.
    fn detach(self, guests: &tokio::runtime::Handle) {
        if let Self::Inline(Some(run)) = self {
            guests.spawn(run);
        }
    }

    /// Stops the guest wherever it is.
    fn abort(self) {
        if let Self::Moved(handle) = self {
            handle.abort();
        }
    }

    /// Drives the guest to its end (its own deadline bounds it) and returns how it ended.
    async fn finish(
        mut self,
        sliced: &AtomicBool,
        guests: &tokio::runtime::Handle,
    ) -> Result<GuestOutcome<T>, InvokeError> {
        self.drive(&mut std::future::pending::<()>(), sliced, guests)
            .await;
        match self {
            Self::Done(joined) => joined.map_err(|error| InvokeError::Internal(error.to_string())),
            _ => unreachable!("drive returns on a pending watch only once the guest is done"),
        }
    }
}

/// Classifies a guest that ended without a usable answer.
fn failure(
    error: wasmtime::Error,
    memory_denied: bool,
    limits: &WasmLimits,
    invocation: &Invocation,
    started: tokio::time::Instant,
) -> InvokeError {
    if tokio::time::Instant::now() >= invocation.deadline {
        return InvokeError::Timeout(invocation.deadline - started);
    }
    if memory_denied {
        return InvokeError::OutOfMemory(limits.memory);
    }
    if let Some(fuel) = limits.fuel
        && error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::OutOfFuel)
    {
        return InvokeError::Failed(format!("the guest used all of its fuel ({fuel} units)"));
    }
    let message = chain(&error);
    if message.contains("maximum concurrent") || message.contains("pooling allocator") {
        return InvokeError::Busy(message);
    }
    tracing::info!(target: "wisp::function", function = %limits.name, call_id = %invocation.call_id, "trapped: {message}");
    InvokeError::Failed(first_line(&message))
}

/// The guest-facing part of an error: the first line, without the backtrace.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_owned()
}

/// A prepared `wasi:http` component.
pub struct HttpFunction {
    pre: Tiered<ProxyPre<GuestState>>,
    limits: Arc<WasmLimits>,
    guests: tokio::runtime::Handle,
    outbound: Arc<Outbound>,
}

impl HttpFunction {
    /// Handles one request in a fresh instance.
    pub async fn invoke(&self, mut invocation: Invocation) -> Result<Response, InvokeError> {
        let started = tokio::time::Instant::now();
        let stdout = MemoryOutputPipe::new(MAX_STDERR);
        let stderr = MemoryOutputPipe::new(MAX_STDERR);
        let wasi = self
            .limits
            .wasi()?
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let sliced = Arc::new(AtomicBool::new(false));
        let pre = self.pre.current();
        let mut store = new_store(
            pre.engine(),
            &self.limits,
            &self.outbound,
            wasi,
            &invocation,
            sliced.clone(),
        );

        let authority = invocation
            .headers
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or("localhost");
        let uri = match &invocation.query {
            Some(query) => format!("http://{authority}{}?{query}", invocation.path),
            None => format!("http://{authority}{}", invocation.path),
        };
        let body = std::mem::replace(&mut invocation.body, Input::Whole(Bytes::new()))
            .into_body()
            .map_err(|error| wasmtime_wasi_http::Error::InternalError(Some(error.to_string())));
        let mut request = http::Request::builder()
            .method(invocation.method.clone())
            .uri(uri)
            .body(body)
            .map_err(|error| InvokeError::Internal(format!("request: {error}")))?;
        // The guest owns the headers from here on; nothing else reads them.
        *request.headers_mut() = std::mem::take(&mut invocation.headers);

        let (sender, receiver) = tokio::sync::oneshot::channel();
        let setup = |store: &mut Store<GuestState>| -> wasmtime::Result<_> {
            let mut http = store.data_mut().http();
            Ok((
                http.new_incoming_request(Scheme::Http, request)?,
                http.new_response_outparam(sender)?,
            ))
        };
        let (request, outparam) =
            setup(&mut store).map_err(|error| InvokeError::Internal(chain(&error)))?;

        let deadline = invocation.deadline;
        let output = self.limits.output.clone();
        let call_id = invocation.call_id.clone();
        let (running, guest_running) = GuestRunning::new();
        // The run is bounded by the deadline as a whole, body streaming included.
        let run = async move {
            // Dropped with the run, finished or stopped: the guest is done then.
            let _running = running;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam)
                    .await
            };
            let result = match tokio::time::timeout_at(deadline, run).await {
                Ok(result) => result,
                Err(_) => Err(wasmtime::Error::msg("deadline passed")),
            };
            // The guest is done, answered or not: what it wrote is complete.
            output.lines(Some(&call_id), LogStream::Stdout, &stdout.contents());
            output.lines(Some(&call_id), LogStream::Stderr, &stderr.contents());
            (result, store.data().limiter.denied)
        };
        let mut guest = GuestTask::Inline(Some(Box::pin(run)));
        let mut receiver = receiver;
        let answer =
            tokio::time::timeout_at(deadline, guest.drive(&mut receiver, &sliced, &self.guests))
                .await;
        match answer {
            Ok(Some(Ok(Ok(response)))) => {
                // The body streams from the guest, which may run on after it:
                // the response says so, so its slots can be held until then.
                guest.detach(&self.guests);
                let mut response = response.map(|body| body.map_err(Into::into).boxed_unsync());
                response.extensions_mut().insert(guest_running);
                Ok(response)
            }
            Ok(Some(Ok(Err(code)))) => {
                // Nothing streams: the call is over once the guest is
                // (its own deadline bounds the wait), and holds its slot till then.
                // How it ends does not change the answer it gave.
                let _ = guest.finish(&sliced, &self.guests).await?;
                Err(InvokeError::Failed(format!(
                    "the guest answered with an error: {code:?}"
                )))
            }
            Ok(_) => {
                // The guest dropped the response outparam: it returned or trapped without answering.
                let (result, denied) = guest.finish(&sliced, &self.guests).await?;
                Err(match result {
                    Ok(()) => {
                        InvokeError::Failed("the guest returned without sending a response".into())
                    }
                    Err(error) => failure(error, denied, &self.limits, &invocation, started),
                })
            }
            Err(_) => {
                guest.abort();
                Err(InvokeError::Timeout(invocation.deadline - started))
            }
        }
    }
}

/// A prepared `wasi:cli` command component.
pub struct StdioFunction {
    pre: Tiered<CommandPre<GuestState>>,
    limits: Arc<WasmLimits>,
    guests: tokio::runtime::Handle,
    outbound: Arc<Outbound>,
}

impl StdioFunction {
    /// Runs the command once: the body on STDIN, STDOUT as the response.
    pub async fn invoke(&self, mut invocation: Invocation) -> Result<Response, InvokeError> {
        let started = tokio::time::Instant::now();
        let stdout = MemoryOutputPipe::new(MAX_STDOUT);
        let stderr = MemoryOutputPipe::new(MAX_STDERR);
        let mut wasi = self.limits.wasi()?;
        wasi.envs(&watchdog_env(&invocation));
        match std::mem::replace(&mut invocation.body, Input::Whole(Bytes::new())) {
            Input::Whole(bytes) => wasi.stdin(MemoryInputPipe::new(bytes)),
            streamed => {
                // Fed through a pipe as the guest reads; a guest that stops
                // reading stops the feed.
                let (reader, writer) = tokio::io::duplex(STDIN_PIPE);
                tokio::spawn(streamed.write_into(writer));
                wasi.stdin(AsyncStdinStream::new(reader))
            }
        };
        let wasi = wasi
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .arg(&self.limits.name)
            .build();
        let sliced = Arc::new(AtomicBool::new(false));
        let pre = self.pre.current();
        let mut store = new_store(
            pre.engine(),
            &self.limits,
            &self.outbound,
            wasi,
            &invocation,
            sliced.clone(),
        );
        let deadline = invocation.deadline;
        let run = async move {
            let run = async {
                let command = pre.instantiate_async(&mut store).await?;
                command.wasi_cli_run().call_run(&mut store).await
            };
            let result = match tokio::time::timeout_at(deadline, run).await {
                Ok(result) => result,
                Err(_) => Err(wasmtime::Error::msg("deadline passed")),
            };
            (result, store.data().limiter.denied)
        };
        let guest = GuestTask::Inline(Some(Box::pin(run)));
        let (result, denied) = guest.finish(&sliced, &self.guests).await?;
        self.limits.output.lines(
            Some(&invocation.call_id),
            LogStream::Stderr,
            &stderr.contents(),
        );
        let status = match result {
            Ok(Ok(())) => 0,
            Ok(Err(())) => 1,
            Err(error) => match error.downcast_ref::<I32Exit>() {
                Some(I32Exit(status)) => *status,
                None => return Err(failure(error, denied, &self.limits, &invocation, started)),
            },
        };
        if status != 0 {
            return Err(InvokeError::Exit(status));
        }
        Ok(full_response(
            &stdio_content_type(&self.limits.env),
            stdout.contents(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_is_read_from_what_proc_swaps_lists() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!lists_swap(header));
        assert!(!lists_swap(""));
        assert!(lists_swap(&format!(
            "{header}/dev/zram0                              partition\t8388604\t\t0\t\t100\n"
        )));
        assert!(lists_swap(&format!(
            "{header}/swapfile                               file\t\t2097148\t\t0\t\t-2\n"
        )));
    }

    #[test]
    fn every_memory_and_table_of_a_store_counts_against_its_limit() {
        let mut limiter = MemoryLimiter {
            limit: 16 << 20,
            denied: false,
            held: 0,
            meter: Arc::default(),
        };
        assert!(limiter.memory_growing(0, 12 << 20, None).unwrap());
        assert!(!limiter.denied);
        assert!(
            !limiter.memory_growing(0, 12 << 20, None).unwrap(),
            "a second memory of the same store shares the limit"
        );
        assert!(limiter.denied);
        assert!(limiter.memory_growing(12 << 20, 14 << 20, None).unwrap());
        assert!(limiter.table_growing(0, 1000, None).unwrap());
        assert!(
            !limiter.table_growing(1000, 1 << 20, None).unwrap(),
            "tables count too"
        );
        assert_eq!(
            limiter.meter.memory_peak(),
            Some((14 << 20) + 1000 * TABLE_ELEMENT_BYTES)
        );
    }
}
