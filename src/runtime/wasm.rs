//! The Wasm runtime: WASI preview 1 modules and preview 2 command
//! components run by wasmtime inside the agent.
//!
//! - Each container is a tokio task driving one wasmtime `Store`. Epoch
//!   interruption makes every module yield to the executor each tick, so a
//!   busy loop cannot starve the agent or other pods; stopping a container
//!   drops its task at the next yield.
//! - Memory is capped by a `ResourceLimiter` from `resources.limits.memory`;
//!   a module that grows past it traps and is reported `OOMKilled`.
//! - Compiled code is cached on disk by module digest and engine
//!   fingerprint (`{data_dir}/wasm-cache`), and in memory, so restarts and
//!   repeated starts do not compile again.
//! - A pod image is either plain Wasm, compiled here by Cranelift (builds
//!   with `wasm-compiler`), or code precompiled for this node's CPU by
//!   `kedge wasm compile --target …` (`.cwasm`), which every build loads.
//!   Precompiled code is native code: only bytes verified against the pod's
//!   pinned sha256 digest, or the agent's own cache, are ever deserialized.
//! - stdout/stderr go to CRI-format log files (`runtime::logs`).
//! - Usage (the stats RPC) is metered with atomics only: the bytes of each
//!   instance's linear memories (the `ResourceLimiter` sees every creation
//!   and growth) and the time spent polling its future (`Metered`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{Instrument, debug, info, info_span, warn};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, Linker, Module, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::cpu_quota::CpuQuota;
use super::digest::Sha256Digest;
use super::logs::{LogFile, LogStream, Rotation};
use super::module_source::{self, ModuleRef};
use super::{
    BoxFuture, ExitStatus, PodContext, RunningContainer, Runtime, RuntimeError, StopHandle,
    UsageMap,
};
use crate::model::{Container, EventType, Usage};

/// Reported as the node's containerRuntimeVersion.
pub const VERSION: &str = "wasmtime://48";

/// Exit code reported for a trap (as `wasmtime run` does: 128 + SIGABRT).
pub const TRAP_EXIT_CODE: i32 = 134;
/// Exit code reported for a module killed by the agent or a memory limit.
pub const KILLED_EXIT_CODE: i32 = 137;

#[derive(Debug, Clone)]
pub struct WasmOptions {
    pub data_dir: PathBuf,
    pub epoch_tick: Duration,
    pub default_memory_limit: u64,
    pub rotation: Rotation,
}

#[derive(Clone)]
enum Compiled {
    Module(Module),
    Component(Component),
}

pub struct WasmRuntime {
    /// The engine for this CPU's code (compiled here or precompiled).
    native: Arc<EngineSet>,
    /// The engine for Pulley bytecode (portable precompiled modules), made
    /// on the first Pulley module; lives as long as the runtime.
    pulley: Mutex<Option<Arc<EngineSet>>>,
    opts: WasmOptions,
    http: reqwest::Client,
    /// Compiled code by module digest; modules are immutable, so entries
    /// never go stale.
    compiled: Mutex<HashMap<Sha256Digest, Compiled>>,
    /// One load at a time per module digest (and per OCI reference while
    /// it is resolved): pods that arrive together wait for the first one's
    /// compile instead of compiling again.
    flights: Flights,
    /// Compiles performed (plain Wasm through Cranelift), for tests and
    /// benchmarks.
    compiles: AtomicU64,
    fingerprint: String,
    /// The meter of every running instance by container id; an entry lives
    /// until its instance's task ends.
    meters: Meters,
}

type Meters = Arc<Mutex<Vec<(String, Arc<Meter>)>>>;

/// What one instance used so far.
#[derive(Default)]
struct Meter {
    /// Time spent polling the instance's future.
    cpu_ns: AtomicU64,
    /// Bytes of its linear memories.
    memory: AtomicU64,
}

/// The instance's future, timing every poll into its meter, and held to
/// its CPU limit (`limits.cpu`) as a CFS quota: over its quota for the
/// period, it is not polled again until the period that pays for it
/// (`runtime::cpu_quota`; epoch interruption makes it yield every tick).
struct Metered {
    run: BoxFuture<'static, ExitStatus>,
    meter: Arc<Meter>,
    /// None: no CPU limit.
    quota: Option<CpuQuota>,
    /// When the instance started: the quota's time origin.
    began: tokio::time::Instant,
    /// Throttled: polled again once this ends.
    throttled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl std::future::Future for Metered {
    type Output = ExitStatus;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ExitStatus> {
        if let Some(sleep) = self.throttled.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.throttled = None;
        }
        let began = Instant::now();
        let poll = self.run.as_mut().poll(cx);
        let spent = began.elapsed();
        let spent_ns = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.meter.cpu_ns.fetch_add(spent_ns, Ordering::Relaxed);
        if poll.is_pending() {
            let origin = self.began;
            let now = origin.elapsed();
            if let Some(until) = self.quota.as_mut().and_then(|q| q.charge(now, spent)) {
                let mut sleep = Box::pin(tokio::time::sleep_until(origin + until));
                // Registers the wake-up at the period's end (the instance's
                // own wake-up, a yield, is taken and ignored until then).
                if sleep.as_mut().poll(cx).is_pending() {
                    self.throttled = Some(sleep);
                }
            }
        }
        poll
    }
}

/// Per-key async gates; an entry lives while someone holds or waits for it.
#[derive(Default)]
struct Flights(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Holding the gate of one key; dropping it lets the next waiter in and
/// removes the entry when nobody else wants it.
struct Flight<'a> {
    flights: &'a Flights,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Flights {
    async fn enter(&self, key: String) -> Flight<'_> {
        let gate = match self.0.lock() {
            Ok(mut map) => map.entry(key.clone()).or_default().clone(),
            // A poisoned map only loses the sharing, never correctness.
            Err(_) => Arc::default(),
        };
        let mut flight = Flight {
            flights: self,
            key,
            guard: None,
        };
        flight.guard = Some(gate.lock_owned().await);
        flight
    }

    #[cfg(all(test, feature = "wasm-compiler"))]
    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Ok(mut map) = self.flights.0.lock()
            && map
                .get(&self.key)
                .is_some_and(|g| Arc::strong_count(g) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// An engine with the WASI linkers bound to it (linkers belong to one engine).
struct EngineSet {
    engine: Engine,
    p1_linker: Linker<P1State>,
    p2_linker: wasmtime::component::Linker<P2State>,
}

impl EngineSet {
    /// Makes the engine and its linkers, and starts its epoch ticker: every
    /// tick, every running module yields once. The ticker ends with the engine.
    fn new(config: &Config, tick: Duration) -> anyhow::Result<EngineSet> {
        let engine = Engine::new(config).map_err(wasmtime_error)?;
        let mut p1_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |s: &mut P1State| &mut s.wasi)
            .map_err(wasmtime_error)?;
        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker).map_err(wasmtime_error)?;
        #[cfg(feature = "data")]
        data_host::add_to_linker(&mut p2_linker).map_err(wasmtime_error)?;
        // A thread of its own, not a tokio task: modules that spin on
        // every worker thread at once would otherwise starve the task that
        // makes them yield, and the whole agent with them.
        let ticker_engine = engine.weak();
        std::thread::Builder::new()
            .name("kedge-wasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker: {e}"))?;
        Ok(EngineSet {
            engine,
            p1_linker,
            p2_linker,
        })
    }
}

struct Limits {
    memory_limit: u64,
    /// Set when a growth was refused, so the trap is reported as OOMKilled.
    exceeded: bool,
    /// Counts the bytes of every memory made or grown (wasmtime asks here
    /// for both; a new memory grows from 0).
    meter: Arc<Meter>,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_limit {
            self.exceeded = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded (wanted {desired})",
                self.memory_limit
            ));
        }
        let grown = desired.saturating_sub(current) as u64;
        self.meter.memory.fetch_add(grown, Ordering::Relaxed);
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

struct P1State {
    wasi: WasiP1Ctx,
    limits: Limits,
}

struct P2State {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    /// What `kedge:data/publish` publishes through, as this container.
    #[cfg(feature = "data")]
    data: data_host::DataHost,
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// The data path's host interface for components (`kedge:data/publish`,
/// `src/data/wit/publish.wit`, version 0.2.0, and 0.1.0 for the guests
/// built against it, `src/data/wit-0.1.0`), in builds with `data`: a
/// component that imports it publishes as its own pod and container through
/// the agent's data path (`data::publish::PodPublisher`). Preview 1 modules
/// do not get it (a core module cannot import a WIT interface).
#[cfg(feature = "data")]
mod data_host {
    use std::sync::Arc;

    use tracing::warn;

    use super::P2State;
    use crate::data::publish::{BatchError, PodPublisher, PublishError};

    wasmtime::component::bindgen!({
        path: "src/data/wit",
        world: "publisher",
        imports: { default: async },
    });

    /// Version 0.1.0 (without the batch calls): its functions are today's.
    mod v0_1 {
        wasmtime::component::bindgen!({
            path: "src/data/wit-0.1.0",
            world: "publisher",
            imports: { default: async },
        });
    }

    use kedge::data::publish::{
        BatchError as WitBatchError, Host, Message, PublishError as WitError,
    };
    use v0_1::kedge::data::publish::{Host as HostV0_1, PublishError as WitErrorV0_1};

    /// One instance's side of the interface.
    pub(super) struct DataHost {
        /// The pod's handle (None: the runtime was given none, as in a
        /// prefetch or a test).
        publisher: Option<Arc<dyn PodPublisher>>,
        container: String,
        /// Whether a refusal was logged yet: once per instance, as the
        /// endpoint logs an unrouted message once per connection.
        warned: bool,
    }

    impl DataHost {
        pub(super) fn new(publisher: Option<Arc<dyn PodPublisher>>, container: &str) -> DataHost {
            DataHost {
                publisher,
                container: container.to_string(),
                warned: false,
            }
        }
    }

    pub(super) fn add_to_linker(
        linker: &mut wasmtime::component::Linker<P2State>,
    ) -> wasmtime::Result<()> {
        kedge::data::publish::add_to_linker::<P2State, wasmtime::component::HasSelf<P2State>>(
            linker,
            |state| state,
        )?;
        v0_1::kedge::data::publish::add_to_linker::<P2State, wasmtime::component::HasSelf<P2State>>(
            linker,
            |state| state,
        )
    }

    /// The WIT error for a refusal.
    fn to_wit(e: PublishError) -> WitError {
        match e {
            PublishError::NoRoute { .. } => WitError::NoRoute,
            PublishError::InvalidTopic(_) => WitError::InvalidTopic,
            PublishError::TooLarge { max, .. } => {
                WitError::TooLarge(u32::try_from(max).unwrap_or(u32::MAX))
            }
            PublishError::Unavailable(why) => WitError::Unavailable(why),
            PublishError::Storage(why) => WitError::Storage(why),
        }
    }

    /// Version 0.1.0's error: the same cases.
    fn to_v0_1(e: WitError) -> WitErrorV0_1 {
        match e {
            WitError::NoRoute => WitErrorV0_1::NoRoute,
            WitError::InvalidTopic => WitErrorV0_1::InvalidTopic,
            WitError::TooLarge(max) => WitErrorV0_1::TooLarge(max),
            WitError::Unavailable(why) => WitErrorV0_1::Unavailable(why),
            WitError::Storage(why) => WitErrorV0_1::Storage(why),
        }
    }

    impl DataHost {
        /// One message (`publish`, `publish-once`) or a batch: the
        /// messages as (topic, payload).
        async fn publish(
            &mut self,
            sequence: Option<u64>,
            messages: Vec<(String, Vec<u8>)>,
        ) -> Result<(), WitBatchError> {
            let result = match &self.publisher {
                Some(publisher) => {
                    publisher
                        .publish_batch(&self.container, sequence, messages)
                        .await
                }
                None => Err(BatchError {
                    index: 0,
                    error: PublishError::Unavailable("this runtime was given no data path".into()),
                }),
            };
            result.map_err(|e| {
                if !std::mem::replace(&mut self.warned, true) {
                    warn!(container = %self.container, error = %e, "a Wasm component's publish was refused (logged once per instance)");
                }
                WitBatchError {
                    index: u32::try_from(e.index).unwrap_or(u32::MAX),
                    error: to_wit(e.error),
                }
            })
        }
    }

    fn pairs(messages: Vec<Message>) -> Vec<(String, Vec<u8>)> {
        messages.into_iter().map(|m| (m.topic, m.payload)).collect()
    }

    impl Host for P2State {
        async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), WitError> {
            let one = vec![(topic, payload)];
            self.data.publish(None, one).await.map_err(|e| e.error)
        }

        async fn publish_once(
            &mut self,
            sequence: u64,
            topic: String,
            payload: Vec<u8>,
        ) -> Result<(), WitError> {
            let one = vec![(topic, payload)];
            self.data
                .publish(Some(sequence), one)
                .await
                .map_err(|e| e.error)
        }

        async fn publish_batch(&mut self, messages: Vec<Message>) -> Result<(), WitBatchError> {
            self.data.publish(None, pairs(messages)).await
        }

        async fn publish_batch_once(
            &mut self,
            sequence: u64,
            messages: Vec<Message>,
        ) -> Result<(), WitBatchError> {
            self.data.publish(Some(sequence), pairs(messages)).await
        }
    }

    impl HostV0_1 for P2State {
        async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), WitErrorV0_1> {
            Host::publish(self, topic, payload).await.map_err(to_v0_1)
        }

        async fn publish_once(
            &mut self,
            sequence: u64,
            topic: String,
            payload: Vec<u8>,
        ) -> Result<(), WitErrorV0_1> {
            Host::publish_once(self, sequence, topic, payload)
                .await
                .map_err(to_v0_1)
        }
    }
}

/// Hands a container's log stream to WASI as stdout or stderr.
struct LogOutput(LogStream);

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.0.clone())
    }
}

impl WasmRuntime {
    pub fn new(opts: WasmOptions, http: reqwest::Client) -> anyhow::Result<Arc<WasmRuntime>> {
        let native = Arc::new(EngineSet::new(&engine_config(), opts.epoch_tick)?);
        let fingerprint = engine_fingerprint(&native.engine);
        Ok(Arc::new(WasmRuntime {
            native,
            pulley: Mutex::new(None),
            opts,
            http,
            compiled: Mutex::new(HashMap::new()),
            flights: Flights::default(),
            compiles: AtomicU64::new(0),
            fingerprint,
            meters: Meters::default(),
        }))
    }

    /// The engine for code of `arch` (an `artifact_arch` answer): Pulley's,
    /// made now if needed, or this CPU's.
    fn engine_for(&self, arch: Option<&str>) -> Result<Engine, RuntimeError> {
        if arch != Some(PULLEY) {
            return Ok(self.native.engine.clone());
        }
        let mut slot = self
            .pulley
            .lock()
            .map_err(|_| RuntimeError::Create("pulley engine lock poisoned".into()))?;
        if slot.is_none() {
            let set =
                EngineSet::new(&pulley_engine_config(), self.opts.epoch_tick).map_err(|e| {
                    RuntimeError::Create(format!("cannot start the Pulley engine: {e:#}"))
                })?;
            *slot = Some(Arc::new(set));
        }
        Ok(slot
            .as_ref()
            .map(|s| s.engine.clone())
            .unwrap_or_else(|| self.native.engine.clone()))
    }

    /// The engine set a module or component was loaded into.
    fn set_of(&self, engine: &Engine) -> Result<Arc<EngineSet>, RuntimeError> {
        if Engine::same(&self.native.engine, engine) {
            return Ok(self.native.clone());
        }
        if let Ok(slot) = self.pulley.lock()
            && let Some(set) = slot.as_ref()
            && Engine::same(&set.engine, engine)
        {
            return Ok(set.clone());
        }
        Err(RuntimeError::Create(
            "module belongs to no engine of this agent".into(),
        ))
    }

    /// The cache file of a module: a name made of two checked parts only
    /// (the module's digest and the engine's fingerprint), so no digest from
    /// a registry or a pod spec can point it elsewhere.
    fn cache_path(&self, sha256: &Sha256Digest) -> PathBuf {
        self.opts
            .data_dir
            .join("wasm-cache")
            .join(format!("{sha256}-{}.cwasm", self.fingerprint))
    }

    /// How many modules this runtime compiled (not counting cache hits and
    /// precompiled artifacts).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    fn memory_cached(&self, sha256: &Sha256Digest) -> Option<Compiled> {
        self.compiled.lock().ok()?.get(sha256).cloned()
    }

    /// Fetches, verifies and compiles a module, or takes it from a cache.
    async fn load(
        &self,
        image: &str,
        secrets: &[String],
        policy: crate::model::PullPolicy,
    ) -> Result<(Compiled, Sha256Digest), RuntimeError> {
        let refs_dir = self.opts.data_dir.join("wasm-cache").join("oci-refs");
        let r = ModuleRef::parse(image).map_err(|e| RuntimeError::InvalidImage(e.to_string()))?;
        // Pods of one OCI reference resolve it one at a time, so a burst
        // asks the registry for the layer once (with IfNotPresent).
        let _resolving = match &r {
            ModuleRef::Oci(_) => Some(self.flights.enter(format!("ref:{image}")).await),
            _ => None,
        };
        // OCI references learn their digest from the registry's manifest
        // (and bring the layer unless it is cached).
        let (sha256, mut pulled) = match r.sha256() {
            Some(sha256) => (sha256.clone(), None),
            None => module_source::pull_oci(image, secrets, policy, &refs_dir, |sha| {
                self.memory_cached(sha).is_some() || self.cache_path(sha).is_file()
            })
            .await
            .map_err(|e| RuntimeError::ImagePull(e.to_string()))?,
        };
        if let Some(c) = self.memory_cached(&sha256) {
            return Ok((c, sha256));
        }
        // Single flight: the first pod of a digest loads it (from the disk
        // cache or by compiling), the others wait here and find it in memory.
        let _loading = self.flights.enter(format!("sha256:{sha256}")).await;
        if let Some(c) = self.memory_cached(&sha256) {
            return Ok((c, sha256));
        }
        let cache = self.cache_path(&sha256);
        let compiled = match self.load_cached(&cache) {
            Some(c) => c,
            None => {
                // Verified against the pinned digest by `fetch` / `pull_oci`.
                let bytes = match pulled.take() {
                    Some(bytes) => bytes,
                    // A cache entry that would not load: pull the layer again.
                    None if matches!(r, ModuleRef::Oci(_)) => {
                        let (again, bytes) = module_source::pull_oci(
                            image,
                            secrets,
                            crate::model::PullPolicy::Always,
                            &refs_dir,
                            |_| false,
                        )
                        .await
                        .map_err(|e| RuntimeError::ImagePull(e.to_string()))?;
                        // The bytes were verified against `again`: they may
                        // be cached only under that digest.
                        if again != sha256 {
                            return Err(RuntimeError::ImagePull(format!(
                                "image {image} moved from sha256:{sha256} to sha256:{again} \
                                 while it was pulled; pull it again"
                            )));
                        }
                        bytes.unwrap_or_default()
                    }
                    None => module_source::fetch(&r, &self.http)
                        .await
                        .map_err(|e| RuntimeError::ImagePull(e.to_string()))?,
                };
                let engine = self.engine_for(artifact_arch(&bytes))?;
                let compiles = Engine::detect_precompiled(&bytes).is_none();
                let name = sha256.short();
                let (compiled, serialized) =
                    tokio::task::spawn_blocking(move || load_verified(&engine, &bytes, &name))
                        .await
                        .map_err(|e| {
                            RuntimeError::Create(format!("compiler task failed: {e}"))
                        })??;
                if compiles {
                    self.compiles.fetch_add(1, Ordering::Relaxed);
                    info!(module = %sha256.short(), "compiled Wasm module");
                }
                if let Err(e) = store_cached(&cache, &serialized) {
                    warn!(path = %cache.display(), error = %e, "cannot cache compiled module");
                }
                compiled
            }
        };
        check_kind(&compiled, &sha256.short())?;
        if let Ok(mut map) = self.compiled.lock() {
            map.insert(sha256.clone(), compiled.clone());
        }
        Ok((compiled, sha256))
    }

    /// Loads a cache entry whose bytes still have the digest recorded when
    /// the agent wrote it; anything else is removed and compiled again.
    fn load_cached(&self, path: &Path) -> Option<Compiled> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot open compiled-module cache entry");
                return None;
            }
        };
        let checked = read_cache_entry(path, file).and_then(|(file, bytes)| {
            let kind = Engine::detect_precompiled(&bytes)
                .ok_or_else(|| "not precompiled code".to_string())?;
            let engine = self
                .engine_for(artifact_arch(&bytes))
                .map_err(|e| e.to_string())?;
            // The bytes matched the digest the agent recorded when it wrote
            // the entry (`store_cached`), from code it compiled or verified.
            deserialize(&engine, kind, Artifact::CacheFile(path, file))
                .map_err(|e| format!("{e:#}"))
        });
        match checked {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "ignoring unusable compiled-module cache entry");
                let _ = std::fs::remove_file(path);
                let _ = std::fs::remove_file(digest_sidecar(path));
                None
            }
        }
    }

    fn build_wasi(
        &self,
        pod: &PodContext,
        container: &Container,
        log: &Arc<Mutex<LogFile>>,
    ) -> Result<WasiCtxBuilder, RuntimeError> {
        let mut b = WasiCtxBuilder::new();
        let argv0 = container.name.clone();
        let mut argv: Vec<String> = if container.command.is_empty() {
            vec![argv0]
        } else {
            container.command.clone()
        };
        argv.extend(container.args.iter().cloned());
        b.args(&argv);
        // Only what the pod declares: WASI programs list their environment,
        // and a variable nobody set (HOSTNAME was one) is a variable too.
        for e in &container.env {
            b.env(&e.name, &e.value);
        }
        if let Some(wd) = &container.working_dir {
            // Preview 2 has a real initial working directory; preview 1
            // has none, so modules there only see PWD.
            b.initial_cwd(wd);
            b.env("PWD", wd);
        }
        b.stdout(LogOutput(LogStream {
            file: log.clone(),
            stream: 0,
        }));
        b.stderr(LogOutput(LogStream {
            file: log.clone(),
            stream: 1,
        }));
        for m in &container.volume_mounts {
            let host = volume_host_path(pod, &m.name)?;
            let host = match &m.sub_path {
                Some(sub) => host.join(sub),
                None => host,
            };
            if m.sub_path.is_some() {
                std::fs::create_dir_all(&host).map_err(|e| {
                    RuntimeError::CreateConfig(format!(
                        "cannot create subPath {} of volume {:?}: {e}",
                        host.display(),
                        m.name
                    ))
                })?;
            }
            let perms = if pod.spec.mount_read_only(m) {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            b.preopened_dir(&host, &m.mount_path, perms).map_err(|e| {
                RuntimeError::CreateConfig(format!(
                    "cannot mount volume {:?} ({}) at {}: {e}",
                    m.name,
                    host.display(),
                    m.mount_path
                ))
            })?;
        }
        Ok(b)
    }
}

/// wasmtime has its own error type; the edges speak anyhow.
fn wasmtime_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// The wasmtime configuration of the agent's engine. `kedge wasm compile`
/// compiles with this same configuration (plus a target), which is what
/// makes its artifacts load on a device: wasmtime refuses code compiled
/// with other settings.
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config
}

/// The configuration of the engine for Pulley bytecode: the agent's, with
/// the 64-bit little-endian Pulley target (what `--target pulley64` makes).
pub fn pulley_engine_config() -> Config {
    let mut config = engine_config();
    // The target name is a constant wasmtime knows.
    let _ = config.target("pulley64");
    config
}

/// Names the engine's code in cache file names, so code for another engine
/// configuration is never picked up: wasmtime's compatibility hash where
/// there is a compiler, else the agent and wasmtime versions (a runtime-only
/// engine's configuration is fixed by them).
fn engine_fingerprint(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    #[cfg(feature = "wasm-compiler")]
    engine.precompile_compatibility_hash().hash(&mut hasher);
    #[cfg(not(feature = "wasm-compiler"))]
    {
        let _ = engine;
        (env!("CARGO_PKG_VERSION"), VERSION, NODE_ARCH).hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// The architecture this agent runs on, in `kedge wasm compile --target` words.
pub const NODE_ARCH: &str = std::env::consts::ARCH;

/// Whether this build can compile plain Wasm (Cranelift is in it).
pub const HAS_COMPILER: bool = cfg!(feature = "wasm-compiler");

/// How a verified module's bytes become code on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoadPlan {
    /// Plain Wasm (or WAT): compile it here.
    Compile,
    /// Precompiled code for this node: deserialize it.
    Deserialize(wasmtime::Precompiled),
}

/// Decides how to load a module from what its bytes are (`precompiled`:
/// wasmtime's header check; `artifact_arch`: the ELF machine of a
/// precompiled artifact) and what this build can do. No I/O.
fn load_plan(
    image: &str,
    precompiled: Option<wasmtime::Precompiled>,
    artifact_arch: Option<&str>,
    has_compiler: bool,
    node_arch: &str,
) -> Result<LoadPlan, RuntimeError> {
    match precompiled {
        None if has_compiler => Ok(LoadPlan::Compile),
        None => Err(RuntimeError::ImagePull(format!(
            "module {image} is not precompiled for this node ({node_arch}, an agent without the \
             Wasm compiler); compile it with `kedge wasm compile --target {node_arch}`"
        ))),
        Some(kind) => match artifact_arch {
            Some(arch) if arch == node_arch || arch == PULLEY => Ok(LoadPlan::Deserialize(kind)),
            other => Err(RuntimeError::ImagePull(format!(
                "module {image} was precompiled for {} but this node is {node_arch}; \
                 compile it with `kedge wasm compile --target {node_arch}`",
                other.unwrap_or("another architecture")
            ))),
        },
    }
}

/// The `kedge wasm compile --target` of portable Pulley bytecode.
pub const PULLEY: &str = "pulley64";

/// The CPU a precompiled artifact (an ELF file) was compiled for, from its
/// ELF header's machine field (Pulley: wasmtime marks a RISC-V header with
/// its own flag); None when it is not one kedge builds for.
fn artifact_arch(bytes: &[u8]) -> Option<&'static str> {
    /// wasmtime_environ::obj::EF_WASMTIME_PULLEY64
    const EF_WASMTIME_PULLEY64: u32 = 1 << 3;
    if bytes.len() < 52 || bytes[..4] != *b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let flags = u32::from_le_bytes([bytes[48], bytes[49], bytes[50], bytes[51]]);
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        62 => Some("x86_64"),
        183 => Some("aarch64"),
        243 if flags & EF_WASMTIME_PULLEY64 != 0 => Some(PULLEY),
        _ => None,
    }
}

/// Turns verified module bytes into code: compiles plain Wasm or
/// deserializes a precompiled artifact. Also returns the serialized code
/// for the disk cache.
fn load_verified(
    engine: &Engine,
    bytes: &[u8],
    image: &str,
) -> Result<(Compiled, Vec<u8>), RuntimeError> {
    let plan = load_plan(
        image,
        Engine::detect_precompiled(bytes),
        artifact_arch(bytes),
        HAS_COMPILER,
        NODE_ARCH,
    )?;
    match plan {
        LoadPlan::Compile => {
            refuse_foreign_component(bytes, image)?;
            compile(engine, bytes)
        }
        LoadPlan::Deserialize(kind) => {
            // `bytes` matched the digest the pod pinned (`load`).
            let compiled = deserialize(engine, kind, Artifact::Verified(bytes)).map_err(|e| {
                RuntimeError::ImagePull(format!(
                    "module {image} was precompiled for another engine: {e:#}; compile it with \
                     `kedge wasm compile --target {NODE_ARCH}` of this agent's version ({VERSION})"
                ))
            })?;
            Ok((compiled, bytes.to_vec()))
        }
    }
}

/// What this runtime runs, named when it refuses something else.
pub const SUPPORTED_KINDS: &str = "WASI preview 1 modules (wasm32-wasip1) and WASI preview 2 \
                                   command components (wasm32-wasip2)";

fn unsupported_kind(image: &str, what: &str) -> RuntimeError {
    RuntimeError::Create(format!(
        "module {image} is {what}, which is not supported: kedge runs {SUPPORTED_KINDS}"
    ))
}

/// The WASI version of a component's import or export name when it is not
/// preview 2 (`wasi:cli/run@0.3.0-rc-2025-09-16` → `0.3`).
fn foreign_wasi_version(name: &str) -> Option<String> {
    let (package, version) = name.strip_prefix("wasi:")?.split_once('@')?;
    let _ = package;
    let mut parts = version.split(['.', '-', '+']);
    let version = format!("{}.{}", parts.next()?, parts.next()?);
    (version != "0.2").then_some(version)
}

/// Refuses, before compiling, a component of a WASI version this runtime
/// does not run (its top-level import and export names say which; the
/// compiler would otherwise refuse a WASI 0.3 component's async ABI with a
/// validation error). Other input is left to the compiler.
fn refuse_foreign_component(bytes: &[u8], image: &str) -> Result<(), RuntimeError> {
    use wasmtime::wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        let names: Vec<&str> = match payload {
            Payload::Version { .. } => {
                depth += 1;
                continue;
            }
            Payload::End(_) => {
                depth = depth.saturating_sub(1);
                continue;
            }
            Payload::ComponentImportSection(r) if depth == 1 => {
                r.into_iter().flatten().map(|i| i.name.name).collect()
            }
            Payload::ComponentExportSection(r) if depth == 1 => {
                r.into_iter().flatten().map(|e| e.name.name).collect()
            }
            _ => continue,
        };
        if let Some(v) = names.into_iter().find_map(foreign_wasi_version) {
            return Err(unsupported_kind(image, &format!("a WASI {v} component")));
        }
    }
    Ok(())
}

/// Refuses loaded code this runtime cannot run: core modules must be WASI
/// preview 1 commands (imports from `wasi_snapshot_preview1` only, a
/// `_start` function), components WASI preview 2 commands (exporting
/// `wasi:cli/run@0.2`).
fn check_kind(compiled: &Compiled, image: &str) -> Result<(), RuntimeError> {
    match compiled {
        Compiled::Module(m) => {
            if let Some(i) = m.imports().find(|i| i.module() != "wasi_snapshot_preview1") {
                let what = if i.module() == "wasi_unstable" {
                    "a WASI preview 0 module (it imports from wasi_unstable)".to_string()
                } else {
                    format!(
                        "a core module that imports from {:?}, not only WASI preview 1",
                        i.module()
                    )
                };
                return Err(unsupported_kind(image, &what));
            }
            let start = m
                .exports()
                .any(|e| e.name() == "_start" && matches!(e.ty(), wasmtime::ExternType::Func(_)));
            if !start {
                return Err(unsupported_kind(
                    image,
                    "a core module without a _start function (a library or reactor, not a WASI command)",
                ));
            }
        }
        Compiled::Component(c) => {
            let ty = c.component_type();
            let engine = c.engine();
            let names: Vec<&str> = ty
                .imports(engine)
                .map(|(n, _)| n)
                .chain(ty.exports(engine).map(|(n, _)| n))
                .collect();
            if let Some(v) = names.iter().copied().find_map(foreign_wasi_version) {
                return Err(unsupported_kind(image, &format!("a WASI {v} component")));
            }
            if !ty
                .exports(engine)
                .any(|(n, _)| n.starts_with("wasi:cli/run@0.2"))
            {
                return Err(unsupported_kind(
                    image,
                    "a component that exports no wasi:cli/run@0.2 (not a WASI preview 2 command)",
                ));
            }
        }
    }
    Ok(())
}

/// Precompiled code to deserialize, and why it may be trusted.
enum Artifact<'a> {
    /// Bytes whose sha256 matched the digest pinned in the pod spec.
    Verified(&'a [u8]),
    /// A file the agent wrote into its private `wasm-cache`, open, whose
    /// bytes were just checked against the digest recorded beside it.
    CacheFile(&'a Path, std::fs::File),
}

/// Loads precompiled native code into the engine.
fn deserialize(
    engine: &Engine,
    kind: wasmtime::Precompiled,
    artifact: Artifact<'_>,
) -> wasmtime::Result<Compiled> {
    use wasmtime::Precompiled;
    // SAFETY: deserializing runs native code that wasmtime cannot check;
    // it is only sound for trusted artifacts. `Artifact` admits two: bytes
    // verified against the sha256 digest the pod spec pins (whoever may
    // write pod specs for this node may run code on it), and the agent's
    // own cache files in its private data directory, written from such
    // bytes or from its own compiler, under a name made of checked digests
    // only, and whose bytes matched the digest recorded when they were
    // written. wasmtime still checks the header
    // (version, target, flags) and refuses code for another engine.
    #[allow(unsafe_code)]
    unsafe {
        match (kind, artifact) {
            (Precompiled::Module, Artifact::Verified(b)) => {
                Module::deserialize(engine, b).map(Compiled::Module)
            }
            // Mapped from the file: instances share its pages, including
            // the copy-on-write memory image.
            (Precompiled::Module, Artifact::CacheFile(_, f)) => {
                Module::deserialize_open_file(engine, f).map(Compiled::Module)
            }
            (Precompiled::Component, Artifact::Verified(b)) => {
                Component::deserialize(engine, b).map(Compiled::Component)
            }
            // wasmtime opens components by path only; entries are replaced
            // by rename, never rewritten, and one load of a digest runs at a time.
            (Precompiled::Component, Artifact::CacheFile(p, _)) => {
                Component::deserialize_file(engine, p).map(Compiled::Component)
            }
        }
    }
}

/// Components carry layer 1 in the header; anything else (core modules,
/// WAT text) is compiled as a module.
#[cfg(feature = "wasm-compiler")]
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Device builds parse binary Wasm only: WAT text needs a build host.
#[cfg(feature = "wasm-compiler")]
fn refuse_wat(bytes: &[u8]) -> Result<(), String> {
    let text = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'(' | b';'));
    if text && !cfg!(feature = "build-host") {
        return Err("the module is WAT text, which device builds do not parse; \
                    give the binary .wasm (e.g. `wasm-tools parse m.wat -o m.wasm`) \
                    or run `kedge wasm compile` on a build host"
            .into());
    }
    Ok(())
}

/// Compiles plain Wasm; also returns the code serialized for the cache.
#[cfg(feature = "wasm-compiler")]
fn compile(engine: &Engine, bytes: &[u8]) -> Result<(Compiled, Vec<u8>), RuntimeError> {
    refuse_wat(bytes).map_err(RuntimeError::InvalidImage)?;
    let invalid =
        |e: wasmtime::Error| RuntimeError::InvalidImage(format!("invalid Wasm module: {e:#}"));
    let compiled = if is_component(bytes) {
        Component::new(engine, bytes)
            .map(Compiled::Component)
            .map_err(invalid)?
    } else {
        Module::new(engine, bytes)
            .map(Compiled::Module)
            .map_err(invalid)?
    };
    let serialized = match &compiled {
        Compiled::Module(m) => m.serialize(),
        Compiled::Component(c) => c.serialize(),
    }
    .map_err(|e| RuntimeError::Create(format!("cannot serialize compiled code: {e:#}")))?;
    Ok((compiled, serialized))
}

/// Without Cranelift `load_plan` never asks to compile.
#[cfg(not(feature = "wasm-compiler"))]
fn compile(_engine: &Engine, _bytes: &[u8]) -> Result<(Compiled, Vec<u8>), RuntimeError> {
    Err(RuntimeError::Create(
        "this agent was built without the Wasm compiler".into(),
    ))
}

/// A target of `kedge wasm compile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompileTarget {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
    /// Portable Pulley bytecode: runs on every device, interpreted (slower).
    #[value(name = "pulley64")]
    Pulley64,
}

impl CompileTarget {
    /// The triple wasmtime compiles for (it checks architecture and OS).
    pub fn triple(self) -> &'static str {
        match self {
            CompileTarget::X86_64 => "x86_64-unknown-linux-musl",
            CompileTarget::Aarch64 => "aarch64-unknown-linux-musl",
            CompileTarget::Pulley64 => "pulley64",
        }
    }
}

/// Compiles a Wasm module or component (or WAT) for `target` with the
/// agent's engine configuration; the result is what `.cwasm` files hold.
/// Baseline CPU features of the target are assumed (no host detection), so
/// the code runs on every CPU of that architecture.
#[cfg(feature = "wasm-compiler")]
pub fn precompile(bytes: &[u8], target: CompileTarget) -> anyhow::Result<Vec<u8>> {
    // Device builds carry Cranelift's code generator for their own CPU only.
    if !cfg!(feature = "build-host")
        && target != CompileTarget::Pulley64
        && !target.triple().starts_with(NODE_ARCH)
    {
        anyhow::bail!(
            "this kedge is a device build: it compiles for {NODE_ARCH} and pulley64 only; \
             compile for {} on a build host (a kedge built with default features)",
            target.triple().split('-').next().unwrap_or_default()
        );
    }
    let mut config = engine_config();
    config.target(target.triple()).map_err(wasmtime_error)?;
    let engine = Engine::new(&config).map_err(wasmtime_error)?;
    if Engine::detect_precompiled(bytes).is_some() {
        anyhow::bail!("the input is already precompiled; give the .wasm module instead");
    }
    refuse_wat(bytes).map_err(anyhow::Error::msg)?;
    if is_component(bytes) {
        engine.precompile_component(bytes)
    } else {
        engine.precompile_module(bytes)
    }
    .map_err(|e| anyhow::anyhow!("invalid Wasm module: {e:#}"))
}

/// Where the digest of a cache entry's own bytes is recorded.
fn digest_sidecar(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Writes a compiled module to the cache with the digest of its bytes
/// beside it; each file is replaced atomically.
fn store_cached(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let digest = Sha256Digest::of(bytes);
    module_source::write_atomically(&digest_sidecar(path), digest.as_str().as_bytes())?;
    module_source::write_atomically(path, bytes)
}

/// Reads a cache entry and checks it against its recorded digest; returns
/// the open file (what is deserialized) and its bytes.
fn read_cache_entry(
    path: &Path,
    mut file: std::fs::File,
) -> Result<(std::fs::File, Vec<u8>), String> {
    let recorded = std::fs::read_to_string(digest_sidecar(path))
        .map_err(|e| format!("no recorded digest: {e}"))?;
    let recorded = Sha256Digest::parse(recorded.trim_end_matches('\n'))
        .map_err(|e| format!("recorded digest: {e}"))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| e.to_string())?;
    let actual = Sha256Digest::of(&bytes);
    if actual != recorded {
        return Err(format!(
            "its bytes have digest sha256:{actual}, recorded sha256:{recorded}"
        ));
    }
    Ok((file, bytes))
}

/// A Wasm container runs inside the agent, where no seccomp or AppArmor
/// profile of its own can apply: only RuntimeDefault (the agent's own
/// confinement, and WASI's) or unset is accepted. `kedge convert` refuses the
/// others with their field path; this is for specs made without it.
fn refuse_kernel_profiles(container: &Container) -> Result<(), RuntimeError> {
    let Some(sc) = &container.security_context else {
        return Ok(());
    };
    for (profile, field) in [
        (&sc.seccomp_profile, "seccompProfile"),
        (&sc.app_armor_profile, "appArmorProfile"),
    ] {
        if let Some(p) = profile
            && *p != crate::model::SecurityProfile::RuntimeDefault
        {
            return Err(RuntimeError::CreateConfig(format!(
                "securityContext.{field} {p:?} is not supported for wasm containers (no kernel profile applies inside the agent)"
            )));
        }
    }
    Ok(())
}

/// Where a pod volume lives on the host.
fn volume_host_path(pod: &PodContext, name: &str) -> Result<PathBuf, RuntimeError> {
    super::volumes::volume_host_path(&pod.spec, &pod.pod_dir, name).ok_or_else(|| {
        RuntimeError::CreateConfig(format!("volume {name:?} is not defined in the pod"))
    })
}

/// The longest status message kept from a failed run (the kubelet's
/// termination messages are short too).
const MAX_MESSAGE: usize = 512;

/// Why a run failed, on one line: the error's causes without wasmtime's
/// backtrace context ("error while executing at wasm backtrace: …"), which
/// says where, not why.
fn error_cause(e: &wasmtime::Error) -> String {
    const BACKTRACE: &str = "error while executing at wasm backtrace:";
    let causes: Vec<String> = e
        .chain()
        .map(|c| c.to_string())
        .filter(|c| !c.starts_with(BACKTRACE))
        .collect();
    let text = if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    };
    one_line(&text)
}

/// Whitespace (newlines included) folded to single spaces, cut to
/// `MAX_MESSAGE` characters.
fn one_line(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match folded.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &folded[..at]),
        None => folded,
    }
}

/// Maps how a run ended to an exit status.
fn exit_status(result: wasmtime::Result<()>, oom: bool) -> ExitStatus {
    match result {
        Ok(()) => ExitStatus {
            exit_code: 0,
            reason: None,
            message: None,
        },
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                return ExitStatus {
                    exit_code: exit.0,
                    reason: None,
                    message: None,
                };
            }
            if oom {
                return ExitStatus {
                    exit_code: KILLED_EXIT_CODE,
                    reason: Some("OOMKilled".into()),
                    message: Some(format!("{e}")),
                };
            }
            let detail = match e.downcast_ref::<wasmtime::Trap>() {
                Some(trap) => format!("wasm trap: {trap}"),
                None => error_cause(&e),
            };
            ExitStatus {
                exit_code: TRAP_EXIT_CODE,
                reason: Some("Error".into()),
                message: Some(detail),
            }
        }
    }
}

impl Runtime for WasmRuntime {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn version(&self) -> String {
        VERSION.into()
    }

    fn prepare_pod<'a>(&'a self, pod: &'a PodContext) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move { super::materialize_volumes(pod) })
    }

    fn prefetch<'a>(&'a self, pod: &'a PodContext) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            for c in pod.spec.init_containers.iter().chain(&pod.spec.containers) {
                self.load(&c.image, &pod.spec.image_pull_secrets, c.image_pull_policy)
                    .await?;
            }
            Ok(())
        })
    }

    fn start_container<'a>(
        &'a self,
        pod: &'a PodContext,
        container: &'a Container,
        restart_count: u32,
    ) -> BoxFuture<'a, Result<RunningContainer, RuntimeError>> {
        Box::pin(async move {
            refuse_kernel_profiles(container)?;
            let loading = std::time::Instant::now();
            let loaded = self
                .load(
                    &container.image,
                    &pod.spec.image_pull_secrets,
                    container.image_pull_policy,
                )
                .await;
            let (compiled, sha256) = match loaded {
                Ok(l) => l,
                Err(e) => {
                    if let RuntimeError::ImagePull(why) = &e {
                        pod.events.emit(
                            &pod.spec,
                            Some(&container.name),
                            EventType::Warning,
                            "Failed",
                            format!("Failed to pull module \"{}\": {why}", container.image),
                        );
                    }
                    return Err(e);
                }
            };
            // The kubelet's Pulled, for a module: fetched, verified and
            // compiled, or found in the cache.
            pod.events.emit(
                &pod.spec,
                Some(&container.name),
                EventType::Normal,
                "Pulled",
                format!(
                    "Module \"{}\" ready (sha256:{}) in {:.3?}",
                    container.image,
                    sha256.short(),
                    loading.elapsed()
                ),
            );
            let log = LogFile::create(
                pod.log_path(&container.name, restart_count),
                self.opts.rotation,
            )
            .map_err(|e| RuntimeError::Create(format!("cannot create log file: {e}")))?;
            let log = Arc::new(Mutex::new(log));
            let mut wasi = self.build_wasi(pod, container, &log)?;
            let meter = Arc::new(Meter::default());
            let limits = Limits {
                memory_limit: container
                    .resources
                    .memory_limit_bytes
                    .unwrap_or(self.opts.default_memory_limit),
                exceeded: false,
                meter: meter.clone(),
            };
            let container_id = format!("wasm://{}", uuid::Uuid::new_v4().simple());
            let image_id = format!("sha256:{sha256}");
            let (stop, stop_rx) = StopHandle::new();
            let (exit_tx, exited) = oneshot::channel();
            let span = info_span!("wasm container", pod = %pod.spec.key(), container = %container.name, runtime = "wasm");

            let run: BoxFuture<'static, ExitStatus> = match compiled {
                Compiled::Module(module) => {
                    let set = self.set_of(module.engine())?;
                    let mut store = Store::new(
                        &set.engine,
                        P1State {
                            wasi: wasi.build_p1(),
                            limits,
                        },
                    );
                    store.limiter(|s| &mut s.limits);
                    store.set_epoch_deadline(1);
                    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
                    let instance = set
                        .p1_linker
                        .instantiate_async(&mut store, &module)
                        .await
                        .map_err(|e| {
                            RuntimeError::Create(format!("cannot instantiate module: {e:#}"))
                        })?;
                    let start = instance
                        .get_typed_func::<(), ()>(&mut store, "_start")
                        .map_err(|e| RuntimeError::Create(format!("cannot call _start: {e:#}")))?;
                    Box::pin(async move {
                        let result = start.call_async(&mut store, ()).await;
                        exit_status(result, store.data().limits.exceeded)
                    })
                }
                Compiled::Component(component) => {
                    let set = self.set_of(component.engine())?;
                    let mut store = Store::new(
                        &set.engine,
                        P2State {
                            ctx: wasi.build(),
                            table: ResourceTable::new(),
                            limits,
                            #[cfg(feature = "data")]
                            data: data_host::DataHost::new(pod.data.clone(), &container.name),
                        },
                    );
                    store.limiter(|s| &mut s.limits);
                    store.set_epoch_deadline(1);
                    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
                    let command =
                        Command::instantiate_async(&mut store, &component, &set.p2_linker)
                            .await
                            .map_err(|e| {
                                RuntimeError::Create(format!("cannot instantiate component: {e:#}"))
                            })?;
                    Box::pin(async move {
                        let result = command.wasi_cli_run().call_run(&mut store).await;
                        let oom = store.data().limits.exceeded;
                        let result = match result {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(())) => Err(wasmtime::Error::new(I32Exit(1))),
                            Err(e) => Err(e),
                        };
                        exit_status(result, oom)
                    })
                }
            };

            let run = Metered {
                run,
                meter: meter.clone(),
                quota: CpuQuota::of_millis(container.resources.cpu_limit_millis),
                began: tokio::time::Instant::now(),
                throttled: None,
            };
            let meters = self.meters.clone();
            if let Ok(mut m) = meters.lock() {
                m.push((container_id.clone(), meter));
            }
            let metered_id = container_id.clone();
            crate::spawn(
                async move {
                    let status = tokio::select! {
                        status = run => status,
                        grace = stop_rx => {
                            // WASI has no signals to deliver: a stop is a kill.
                            debug!(grace = ?grace.ok(), "stopping wasm container");
                            ExitStatus {
                                exit_code: KILLED_EXIT_CODE,
                                reason: Some("Error".into()),
                                message: Some("stopped by the kedge agent".into()),
                            }
                        }
                    };
                    if let Ok(mut log) = log.lock() {
                        let _ = log.flush_partial();
                    }
                    if let Ok(mut m) = meters.lock() {
                        m.retain(|(id, _)| *id != metered_id);
                    }
                    let _ = exit_tx.send(status);
                }
                .instrument(span),
            );
            Ok(RunningContainer {
                container_id,
                image_id,
                exited,
                stop,
                adopted: false,
            })
        })
    }

    fn cleanup_pod<'a>(&'a self, _pod: &'a PodContext) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn container_usage(&self) -> BoxFuture<'_, Result<UsageMap, RuntimeError>> {
        let now = crate::model::now_ms();
        let usage = self.meters.lock().map(|m| {
            m.iter()
                .map(|(id, meter)| {
                    let usage = Usage {
                        timestamp_ms: now,
                        cpu_core_ns: meter.cpu_ns.load(Ordering::Relaxed),
                        memory_working_set_bytes: meter.memory.load(Ordering::Relaxed),
                    };
                    (id.clone(), usage)
                })
                .collect()
        });
        let usage = usage.map_err(|_| RuntimeError::Create("wasm meters lock poisoned".into()));
        Box::pin(async move { usage })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Precompiled;

    fn test_runtime(dir: &Path) -> Arc<WasmRuntime> {
        // reqwest's client needs it, whichever test runs first.
        crate::tls::install_crypto_provider();
        WasmRuntime::new(
            WasmOptions {
                data_dir: dir.to_path_buf(),
                epoch_tick: Duration::from_millis(10),
                default_memory_limit: 64 << 20,
                rotation: Rotation {
                    max_file_bytes: 1 << 20,
                    max_files: 2,
                },
            },
            reqwest::Client::new(),
        )
        .expect("runtime")
    }

    /// A module referenced by `file://` with its digest pinned.
    #[cfg(feature = "wasm-compiler")]
    fn module_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write module");
        format!(
            "file://{}@sha256:{}",
            path.display(),
            Sha256Digest::of(bytes)
        )
    }

    #[cfg(feature = "wasm-compiler")]
    /// `(module (func (export "_start")))` in binary form (no WAT parser
    /// needed, so this runs in every build with the compiler).
    const START_ONLY: &[u8] = &[
        0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, // header
        1, 4, 1, 0x60, 0, 0, // type section: () -> ()
        3, 2, 1, 0, // function section
        7, 10, 1, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0, // export "_start"
        10, 4, 1, 2, 0, 0x0b, // code section
    ];

    #[cfg(feature = "wasm-compiler")]
    /// A module with one page of memory whose `_start` loops forever.
    const SPIN_ONE_PAGE: &[u8] = &[
        0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, // header
        1, 4, 1, 0x60, 0, 0, // type section: () -> ()
        3, 2, 1, 0, // function section
        5, 3, 1, 0, 1, // memory section: one memory, min 1 page
        7, 10, 1, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0, // export "_start"
        10, 9, 1, 7, 0, 0x03, 0x40, 0x0c, 0, 0x0b, 0x0b, // loop br 0 end end
    ];

    /// A running instance is metered (its page of memory, the time it was
    /// polled, growing); its meter is gone once it stopped.
    #[cfg(feature = "wasm-compiler")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_instance_reports_its_memory_and_polled_time() {
        use crate::model::{RestartPolicy, samples};
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = test_runtime(&dir.path().join("data"));
        let mut container = samples::container("spin");
        container.image = module_file(dir.path(), "spin.wasm", SPIN_ONE_PAGE);
        let pod = PodContext {
            spec: samples::spec("spin", "u1", 1, RestartPolicy::Never),
            pod_dir: dir.path().join("pod"),
            events: super::super::EventSink::default(),
            #[cfg(feature = "data")]
            data: None,
        };
        let mut running = rt
            .start_container(&pod, &container, 0)
            .await
            .expect("starts");
        let mut last = 0;
        for _ in 0..3 {
            loop {
                let usage = rt.container_usage().await.expect("usage");
                let u = usage
                    .iter()
                    .find(|(id, _)| *id == running.container_id)
                    .expect("metered")
                    .1;
                assert_eq!(u.memory_working_set_bytes, 65536);
                assert!(u.cpu_core_ns >= last);
                if u.cpu_core_ns > last {
                    last = u.cpu_core_ns;
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        running.stop.stop(Duration::ZERO);
        let status = running.exited.await.expect("exit status");
        assert_eq!(status.exit_code, KILLED_EXIT_CODE);
        assert!(rt.container_usage().await.expect("usage").is_empty());
    }

    /// A spinning instance limited to 200m is held to about a fifth of a
    /// core, like a CFS quota, while an unlimited one beside it runs as the
    /// machine lets it: measured over the same seconds (generous bounds: a
    /// shared 2-core machine).
    #[cfg(feature = "wasm-compiler")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cpu_limit_holds_a_spinning_instance_to_its_quota() {
        use crate::model::{RestartPolicy, samples};
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = test_runtime(&dir.path().join("data"));
        let image = module_file(dir.path(), "spin.wasm", SPIN_ONE_PAGE);
        let pod = PodContext {
            spec: samples::spec("spin", "u1", 1, RestartPolicy::Never),
            pod_dir: dir.path().join("pod"),
            events: super::super::EventSink::default(),
            #[cfg(feature = "data")]
            data: None,
        };
        let mut limited = samples::container("limited");
        limited.image = image.clone();
        limited.resources.cpu_limit_millis = Some(200);
        let mut free = samples::container("free");
        free.image = image;
        let mut limited = rt.start_container(&pod, &limited, 0).await.expect("starts");
        let mut free = rt.start_container(&pod, &free, 0).await.expect("starts");
        let cpu = |usage: &UsageMap, id: &str| {
            usage
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, u)| u.cpu_core_ns)
                .expect("metered")
        };
        // Past the first period, then three seconds.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rt.container_usage().await.expect("usage");
        let since = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rt.container_usage().await.expect("usage");
        let wall = since.elapsed().as_nanos() as f64;
        let share = |id: &str| (cpu(&after, id) - cpu(&before, id)) as f64 / wall;
        let (limited_share, free_share) = (share(&limited.container_id), share(&free.container_id));
        limited.stop.stop(Duration::ZERO);
        free.stop.stop(Duration::ZERO);
        let _ = limited.exited.await;
        let _ = free.exited.await;
        eprintln!("cpu share: limited to 200m {limited_share:.3}, unlimited {free_share:.3}");
        assert!(
            limited_share > 0.0 && limited_share <= 0.3,
            "200m used {limited_share:.3} of a core"
        );
        assert!(
            limited_share < free_share / 2.0,
            "200m used {limited_share:.3}, unlimited {free_share:.3}"
        );
    }

    /// Image references with hostile digests never reach the cache or the
    /// network: they are refused where they enter.
    #[tokio::test]
    async fn hostile_digests_are_refused_before_any_path_is_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = test_runtime(dir.path());
        let ok = Sha256Digest::of(b"m").to_string();
        for digest in [
            "../../etc/x".to_string(),
            ok.to_uppercase(),
            ok[..63].to_string(),
            format!("{ok}0"),
            format!("{}\0", &ok[..63]),
        ] {
            let image = format!("file:///m.wasm@sha256:{digest}");
            let e = rt
                .load(&image, &[], crate::model::PullPolicy::IfNotPresent)
                .await
                .err()
                .expect("refused");
            assert_eq!(e.reason(), "InvalidImageName", "{e}");
            assert!(
                e.to_string()
                    .contains(": expected 64 lowercase hex characters"),
                "{e}"
            );
        }
        assert!(!dir.path().join("wasm-cache").exists());
    }

    /// Twenty pods of one new module arriving together: one compile, the
    /// others wait for it; one cache entry, no temporary files, no gates left.
    #[cfg(feature = "wasm-compiler")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_of_one_new_module_compile_it_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = module_file(dir.path(), "m.wasm", START_ONLY);
        let rt = test_runtime(&dir.path().join("data"));
        let mut loads = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (rt, image) = (rt.clone(), image.clone());
            loads.spawn(async move {
                rt.load(&image, &[], crate::model::PullPolicy::IfNotPresent)
                    .await
                    .map(|(_, digest)| digest)
            });
        }
        let mut digests = Vec::new();
        while let Some(done) = loads.join_next().await {
            digests.push(done.expect("task").expect("loads"));
        }
        assert_eq!(digests.len(), 20);
        assert_eq!(rt.compiles(), 1, "compiled once");
        assert_eq!(rt.flights.len(), 0, "no gate left behind");
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("data/wasm-cache"))
            .expect("cache dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        let entry = format!("{}-{}.cwasm", Sha256Digest::of(START_ONLY), rt.fingerprint);
        assert_eq!(names, [entry.clone(), format!("{entry}.sha256")]);
    }

    /// A cache entry is deserialized only while its bytes have the digest
    /// recorded when the agent wrote it.
    #[cfg(feature = "wasm-compiler")]
    #[tokio::test]
    async fn cache_entries_are_checked_against_their_recorded_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = module_file(dir.path(), "m.wasm", START_ONLY);
        let digest = Sha256Digest::of(START_ONLY);
        let rt = test_runtime(&dir.path().join("data"));
        rt.load(&image, &[], crate::model::PullPolicy::IfNotPresent)
            .await
            .expect("compiles");
        let entry = rt.cache_path(&digest);
        let sidecar = digest_sidecar(&entry);
        let code = std::fs::read(&entry).expect("cache entry written");
        assert_eq!(
            std::fs::read_to_string(&sidecar).expect("digest recorded"),
            Sha256Digest::of(&code).as_str()
        );
        assert!(rt.load_cached(&entry).is_some(), "an intact entry loads");

        // Changed bytes (a flipped bit in the code) are not loaded, and the
        // entry goes.
        let mut tampered = code.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        std::fs::write(&entry, &tampered).expect("tamper");
        assert!(rt.load_cached(&entry).is_none(), "tampered entry refused");
        assert!(!entry.exists() && !sidecar.exists());

        // A hostile or missing recorded digest is a miss too.
        for recorded in [
            None,
            Some("../../etc/x"),
            Some(&*digest.as_str().to_uppercase()),
        ] {
            std::fs::write(&entry, &code).expect("entry");
            match recorded {
                Some(r) => std::fs::write(&sidecar, r).expect("sidecar"),
                None => {
                    let _ = std::fs::remove_file(&sidecar);
                }
            }
            assert!(rt.load_cached(&entry).is_none(), "{recorded:?}");
        }

        // A fresh agent compiles again rather than trusting the bad entry.
        std::fs::write(&entry, &tampered).expect("tamper");
        std::fs::write(&sidecar, Sha256Digest::of(&code).as_str()).expect("sidecar");
        let fresh = test_runtime(&dir.path().join("data"));
        fresh
            .load(&image, &[], crate::model::PullPolicy::IfNotPresent)
            .await
            .expect("compiles again");
        let rewritten = std::fs::read(&entry).expect("entry rewritten");
        assert_eq!(
            std::fs::read_to_string(&sidecar).expect("sidecar"),
            Sha256Digest::of(&rewritten).as_str()
        );
    }

    #[test]
    fn wasi_versions_are_read_from_names() {
        assert_eq!(
            foreign_wasi_version("wasi:cli/run@0.3.0-rc-2025-09-16").as_deref(),
            Some("0.3")
        );
        assert_eq!(foreign_wasi_version("wasi:cli/run@0.2.6"), None);
        assert_eq!(foreign_wasi_version("wasi:io/streams@0.2.0"), None);
        assert_eq!(foreign_wasi_version("acme:app/api@1.0.0"), None);
        assert_eq!(
            foreign_wasi_version("wasi:http/types@1.0.0").as_deref(),
            Some("1.0")
        );
    }

    /// Kinds kedge cannot run are refused by name, with what it runs, not
    /// as an invalid image with a parser error.
    #[cfg(feature = "wasm-compiler")]
    #[test]
    fn unsupported_kinds_are_named_with_the_supported_ones() {
        let engine = Engine::new(&engine_config()).expect("engine");
        let wasm = |wat: &str| wat::parse_str(wat).expect("wat");
        let refused = |bytes: &[u8]| -> RuntimeError {
            match load_verified(&engine, bytes, "m")
                .and_then(|(c, _)| check_kind(&c, "m").map(|()| c))
            {
                Ok(_) => panic!("accepted"),
                Err(e) => e,
            }
        };
        // A WASI 0.3 command: an async `run` (the component model's async
        // ABI, which this engine does not enable).
        let p3 = wasm(
            r#"(component
                 (import "wasi:cli/stdout@0.3.0-rc-2025-09-16" (instance))
                 (core module $m
                   (func (export "run") (result i32) i32.const 0)
                   (func (export "cb") (param i32 i32 i32) (result i32) i32.const 0))
                 (core instance $i (instantiate $m))
                 (func $run (result (result))
                   (canon lift (core func $i "run") async (callback (core func $i "cb"))))
                 (instance $r (export "run" (func $run)))
                 (export "wasi:cli/run@0.3.0-rc-2025-09-16" (instance $r)))"#,
        );
        let preview0 = wasm(
            r#"(module (import "wasi_unstable" "proc_exit" (func (param i32)))
                       (func (export "_start")))"#,
        );
        let reactor = wasm(r#"(module (func (export "_initialize")))"#);
        let library = wasm(
            r#"(component (core module $m (func (export "f")))
                          (core instance $i (instantiate $m))
                          (func (export "f") (canon lift (core func $i "f"))))"#,
        );
        for (bytes, what) in [
            (&p3, "is a WASI 0.3 component"),
            (&preview0, "is a WASI preview 0 module"),
            (&reactor, "is a core module without a _start function"),
            (&library, "is a component that exports no wasi:cli/run@0.2"),
        ] {
            let e = refused(bytes);
            assert_eq!(e.reason(), "CreateContainerError", "{e}");
            let text = e.to_string();
            assert!(text.starts_with(&format!("module m {what}")), "{text}");
            assert!(
                text.ends_with(&format!(
                    "which is not supported: kedge runs {SUPPORTED_KINDS}"
                )),
                "{text}"
            );
        }
        // A WASI preview 1 command passes.
        let (c, _) = load_verified(&engine, START_ONLY, "m").expect("compiles");
        check_kind(&c, "m").expect("a WASI command");
    }

    #[test]
    fn failures_keep_their_cause_on_one_line() {
        let e = wasmtime::Error::msg("exit with invalid exit status outside of [0..126)")
            .context("error while executing at wasm backtrace:\n    0: 0x1234 - guest!main\n    1: 0x5678 - <unknown>!_start");
        let s = exit_status(Err(e), false);
        assert_eq!(s.exit_code, TRAP_EXIT_CODE);
        assert_eq!(
            s.message.as_deref(),
            Some("exit with invalid exit status outside of [0..126)")
        );
        let long = wasmtime::Error::msg(format!("a\nb {}", "x".repeat(2000)));
        let m = exit_status(Err(long), false).message.unwrap_or_default();
        assert!(
            m.starts_with("a b xxx") && m.chars().count() == MAX_MESSAGE + 1,
            "{m}"
        );
    }

    #[test]
    fn plain_wasm_is_compiled_only_by_builds_with_the_compiler() {
        assert_eq!(
            load_plan("m", None, None, true, "aarch64").ok(),
            Some(LoadPlan::Compile)
        );
        let e = load_plan("sha256:abc", None, None, false, "aarch64").expect_err("refused");
        assert_eq!(e.reason(), "ErrImagePull");
        assert_eq!(
            e.to_string(),
            "module sha256:abc is not precompiled for this node (aarch64, an agent without the \
             Wasm compiler); compile it with `kedge wasm compile --target aarch64`"
        );
    }

    #[test]
    fn precompiled_code_loads_only_on_its_architecture() {
        for compiler in [true, false] {
            assert_eq!(
                load_plan(
                    "m",
                    Some(Precompiled::Component),
                    Some("x86_64"),
                    compiler,
                    "x86_64"
                )
                .ok(),
                Some(LoadPlan::Deserialize(Precompiled::Component))
            );
            let e = load_plan(
                "m",
                Some(Precompiled::Module),
                Some("aarch64"),
                compiler,
                "x86_64",
            )
            .expect_err("wrong arch");
            assert_eq!(e.reason(), "ErrImagePull");
            assert_eq!(
                e.to_string(),
                "module m was precompiled for aarch64 but this node is x86_64; \
                 compile it with `kedge wasm compile --target x86_64`"
            );
            assert_eq!(
                load_plan(
                    "m",
                    Some(Precompiled::Module),
                    Some(PULLEY),
                    compiler,
                    "aarch64"
                )
                .ok(),
                Some(LoadPlan::Deserialize(Precompiled::Module)),
                "Pulley bytecode runs on every node"
            );
            let e = load_plan("m", Some(Precompiled::Module), None, compiler, "x86_64")
                .expect_err("unknown arch");
            assert!(
                e.to_string()
                    .contains("precompiled for another architecture")
            );
        }
    }

    #[test]
    fn artifact_arch_reads_the_elf_machine() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[18] = 183;
        assert_eq!(artifact_arch(&elf), Some("aarch64"));
        elf[18] = 62;
        assert_eq!(artifact_arch(&elf), Some("x86_64"));
        elf[18] = 243; // RISC-V: real riscv64 code is not for us…
        assert_eq!(artifact_arch(&elf), None);
        elf[48] = 1 << 3; // …but wasmtime's Pulley flag makes it Pulley
        assert_eq!(artifact_arch(&elf), Some(PULLEY));
        assert_eq!(artifact_arch(b"\0asm\x01\0\0\0"), None);
        assert_eq!(artifact_arch(&elf[..10]), None);
    }

    /// WAT is refused by name in device builds and compiled on build hosts.
    #[cfg(feature = "wasm-compiler")]
    #[test]
    fn wat_text_needs_a_build_host() {
        let wat = b"  ;; demo\n(module)";
        assert_eq!(refuse_wat(wat).is_ok(), cfg!(feature = "build-host"));
        if let Err(e) = refuse_wat(wat) {
            assert!(e.contains("WAT text"), "{e}");
        }
        assert!(refuse_wat(b"\0asm\x01\0\0\0").is_ok());
    }

    /// `kedge wasm compile` output for this node loads in the agent's
    /// engine; output for the other architecture is refused by name.
    #[cfg(feature = "build-host")]
    #[test]
    fn precompiled_artifacts_round_trip_through_the_agent_engine() {
        let wat = br#"(module (func (export "_start")))"#;
        let (here, there) = if NODE_ARCH == "aarch64" {
            (CompileTarget::Aarch64, CompileTarget::X86_64)
        } else {
            (CompileTarget::X86_64, CompileTarget::Aarch64)
        };
        let engine = Engine::new(&engine_config()).expect("engine");
        let code = precompile(wat, here).expect("precompile");
        assert_eq!(artifact_arch(&code), Some(NODE_ARCH));
        let (compiled, cached) = load_verified(&engine, &code, "m").expect("loads");
        assert!(matches!(compiled, Compiled::Module(_)));
        assert_eq!(cached, code, "the artifact itself is cached");

        let other = precompile(wat, there).expect("cross-compile");
        let e = load_verified(&engine, &other, "m").err().expect("refused");
        assert!(
            e.to_string().contains(&format!(
                "compile it with `kedge wasm compile --target {NODE_ARCH}`"
            )),
            "{e}"
        );
        let e = precompile(&code, here).expect_err("already precompiled");
        assert!(e.to_string().contains("already precompiled"), "{e}");

        // Pulley bytecode loads into the Pulley engine, on any CPU.
        let portable = precompile(wat, CompileTarget::Pulley64).expect("pulley");
        assert_eq!(artifact_arch(&portable), Some(PULLEY));
        let pulley = Engine::new(&pulley_engine_config()).expect("pulley engine");
        let (compiled, _) = load_verified(&pulley, &portable, "m").expect("pulley loads");
        assert!(matches!(compiled, Compiled::Module(_)));
    }
}
