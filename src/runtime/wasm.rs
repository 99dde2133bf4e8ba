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
//! - stdout/stderr go to CRI-format log files (`runtime::logs`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{Instrument, debug, info_span, warn};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, Linker, Module, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::logs::{LogFile, LogStream, Rotation};
use super::module_source::{self, ModuleRef};
use super::{
    BoxFuture, ExitStatus, PodContext, RunningContainer, Runtime, RuntimeError, StopHandle,
};
use crate::model::{Container, VolumeSource};

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
    engine: Engine,
    opts: WasmOptions,
    http: reqwest::Client,
    /// Compiled code by module digest; modules are immutable, so entries
    /// never go stale.
    compiled: Mutex<HashMap<String, Compiled>>,
    p1_linker: Linker<P1State>,
    p2_linker: wasmtime::component::Linker<P2State>,
    fingerprint: String,
}

struct Limits {
    memory_limit: u64,
    /// Set when a growth was refused, so the trap is reported as OOMKilled.
    exceeded: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
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
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
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
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(wasmtime_error)?;
        let mut p1_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |s: &mut P1State| &mut s.wasi)
            .map_err(wasmtime_error)?;
        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker).map_err(wasmtime_error)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = format!("{:016x}", hasher.finish());

        // The epoch ticker: every tick, every running module yields once.
        let ticker_engine = engine.weak();
        let tick = opts.epoch_tick;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                match ticker_engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        });
        Ok(Arc::new(WasmRuntime {
            engine,
            opts,
            http,
            compiled: Mutex::new(HashMap::new()),
            p1_linker,
            p2_linker,
            fingerprint,
        }))
    }

    fn cache_path(&self, sha256: &str) -> PathBuf {
        self.opts
            .data_dir
            .join("wasm-cache")
            .join(format!("{sha256}-{}.cwasm", self.fingerprint))
    }

    fn memory_cached(&self, sha256: &str) -> Option<Compiled> {
        self.compiled.lock().ok()?.get(sha256).cloned()
    }

    /// Fetches, verifies and compiles a module, or takes it from a cache.
    async fn load(
        &self,
        image: &str,
        secrets: &[String],
        policy: crate::model::PullPolicy,
    ) -> Result<(Compiled, String), RuntimeError> {
        let refs_dir = self.opts.data_dir.join("wasm-cache").join("oci-refs");
        let r = ModuleRef::parse(image).map_err(|e| RuntimeError::InvalidImage(e.to_string()))?;
        // OCI references learn their digest from the registry's manifest
        // (and bring the layer unless it is cached).
        let (sha256, mut pulled) = match r.sha256() {
            Some(sha256) => (sha256.to_string(), None),
            None => module_source::pull_oci(image, secrets, policy, &refs_dir, |sha| {
                self.memory_cached(sha).is_some() || self.cache_path(sha).is_file()
            })
            .await
            .map_err(|e| RuntimeError::ImagePull(e.to_string()))?,
        };
        if let Some(c) = self.memory_cached(&sha256) {
            return Ok((c, sha256));
        }
        let cache = self.cache_path(&sha256);
        let compiled = match self.load_cached(&cache) {
            Some(c) => c,
            None => {
                let bytes = match pulled.take() {
                    Some(bytes) => bytes,
                    // A cache entry that would not load: pull the layer again.
                    None if matches!(r, ModuleRef::Oci(_)) => module_source::pull_oci(
                        image,
                        secrets,
                        crate::model::PullPolicy::Always,
                        &refs_dir,
                        |_| false,
                    )
                    .await
                    .map_err(|e| RuntimeError::ImagePull(e.to_string()))?
                    .1
                    .unwrap_or_default(),
                    None => module_source::fetch(&r, &self.http)
                        .await
                        .map_err(|e| RuntimeError::ImagePull(e.to_string()))?,
                };
                let engine = self.engine.clone();
                let compiled = tokio::task::spawn_blocking(move || compile(&engine, &bytes))
                    .await
                    .map_err(|e| RuntimeError::Create(format!("compiler task failed: {e}")))??;
                if let Err(e) = store_cached(&cache, &compiled) {
                    warn!(path = %cache.display(), error = %e, "cannot cache compiled module");
                }
                compiled
            }
        };
        if let Ok(mut map) = self.compiled.lock() {
            map.insert(sha256.clone(), compiled.clone());
        }
        Ok((compiled, sha256))
    }

    fn load_cached(&self, path: &Path) -> Option<Compiled> {
        let kind = Engine::detect_precompiled_file(path).ok()??;
        // SAFETY: the file was written by `store_cached` from code this
        // engine (same fingerprint, in the file name) compiled, into the
        // agent's private data directory. wasmtime checks the header and
        // refuses code for another engine configuration.
        #[allow(unsafe_code)]
        let compiled = unsafe {
            match kind {
                wasmtime::Precompiled::Module => {
                    Module::deserialize_file(&self.engine, path).map(Compiled::Module)
                }
                wasmtime::Precompiled::Component => {
                    Component::deserialize_file(&self.engine, path).map(Compiled::Component)
                }
            }
        };
        match compiled {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "ignoring unusable compiled-module cache entry");
                let _ = std::fs::remove_file(path);
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
        b.env("HOSTNAME", &pod.spec.name);
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
            let perms = if m.read_only {
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

fn compile(engine: &Engine, bytes: &[u8]) -> Result<Compiled, RuntimeError> {
    let invalid =
        |e: wasmtime::Error| RuntimeError::InvalidImage(format!("invalid Wasm module: {e:#}"));
    // Components carry layer 1 in the header; core modules (and WAT text,
    // accepted for hand-written modules) are compiled as modules.
    if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0] {
        Component::new(engine, bytes)
            .map(Compiled::Component)
            .map_err(invalid)
    } else {
        Module::new(engine, bytes)
            .map(Compiled::Module)
            .map_err(invalid)
    }
}

fn store_cached(path: &Path, compiled: &Compiled) -> anyhow::Result<()> {
    let bytes = match compiled {
        Compiled::Module(m) => m.serialize().map_err(wasmtime_error)?,
        Compiled::Component(c) => c.serialize().map_err(wasmtime_error)?,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Where a pod volume lives on the host.
fn volume_host_path(pod: &PodContext, name: &str) -> Result<PathBuf, RuntimeError> {
    let v = pod
        .spec
        .volumes
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| {
            RuntimeError::CreateConfig(format!("volume {name:?} is not defined in the pod"))
        })?;
    Ok(match &v.source {
        VolumeSource::HostPath { path } => PathBuf::from(path),
        VolumeSource::EmptyDir { .. } | VolumeSource::Files { .. } => {
            pod.pod_dir.join("volumes").join(name)
        }
    })
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
                None => format!("{e:#}"),
            };
            ExitStatus {
                exit_code: TRAP_EXIT_CODE,
                reason: Some("Error".into()),
                message: Some(detail.lines().next().unwrap_or_default().to_string()),
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
        Box::pin(async move {
            for v in &pod.spec.volumes {
                let dir = pod.pod_dir.join("volumes").join(&v.name);
                let made = match &v.source {
                    VolumeSource::HostPath { .. } => Ok(()),
                    VolumeSource::EmptyDir { .. } => std::fs::create_dir_all(&dir),
                    VolumeSource::Files {
                        files,
                        default_mode,
                    } => super::write_volume_files(&dir, files, *default_mode),
                };
                made.map_err(|e| {
                    RuntimeError::CreateConfig(format!("cannot set up volume {:?}: {e}", v.name))
                })?;
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
            let (compiled, sha256) = self
                .load(
                    &container.image,
                    &pod.spec.image_pull_secrets,
                    container.image_pull_policy,
                )
                .await?;
            let log = LogFile::create(
                pod.log_path(&container.name, restart_count),
                self.opts.rotation,
            )
            .map_err(|e| RuntimeError::Create(format!("cannot create log file: {e}")))?;
            let log = Arc::new(Mutex::new(log));
            let mut wasi = self.build_wasi(pod, container, &log)?;
            let limits = Limits {
                memory_limit: container
                    .resources
                    .memory_limit_bytes
                    .unwrap_or(self.opts.default_memory_limit),
                exceeded: false,
            };
            let container_id = format!("wasm://{}", uuid::Uuid::new_v4().simple());
            let image_id = format!("sha256:{sha256}");
            let (stop, stop_rx) = StopHandle::new();
            let (exit_tx, exited) = oneshot::channel();
            let span = info_span!("wasm container", pod = %pod.spec.key(), container = %container.name, runtime = "wasm");

            let run: BoxFuture<'static, ExitStatus> = match compiled {
                Compiled::Module(module) => {
                    let mut store = Store::new(
                        &self.engine,
                        P1State {
                            wasi: wasi.build_p1(),
                            limits,
                        },
                    );
                    store.limiter(|s| &mut s.limits);
                    store.set_epoch_deadline(1);
                    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
                    let instance = self
                        .p1_linker
                        .instantiate_async(&mut store, &module)
                        .await
                        .map_err(|e| {
                            RuntimeError::Create(format!("cannot instantiate module: {e:#}"))
                        })?;
                    let start = instance
                        .get_typed_func::<(), ()>(&mut store, "_start")
                        .map_err(|_| {
                            RuntimeError::InvalidImage(
                                "module exports no _start function (not a WASI command)".into(),
                            )
                        })?;
                    Box::pin(async move {
                        let result = start.call_async(&mut store, ()).await;
                        exit_status(result, store.data().limits.exceeded)
                    })
                }
                Compiled::Component(component) => {
                    let mut store = Store::new(
                        &self.engine,
                        P2State {
                            ctx: wasi.build(),
                            table: ResourceTable::new(),
                            limits,
                        },
                    );
                    store.limiter(|s| &mut s.limits);
                    store.set_epoch_deadline(1);
                    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
                    let command =
                        Command::instantiate_async(&mut store, &component, &self.p2_linker)
                            .await
                            .map_err(|e| {
                                RuntimeError::InvalidImage(format!(
                                    "component is not a WASI command: {e:#}"
                                ))
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

            tokio::spawn(
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
}
