//! The wasmtime embedding: one engine configuration, component loading
//! (precompiled artifacts by mmap; compiling only in a build with the
//! `compiler` feature, never in the installed binary), one linker per role,
//! and the run of one invocation with its limits and its undo log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{CallHook, Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

use crate::bindings::{AnyPlugin, CniResult, NetworkRequest, Request};
use crate::cni::Command;
use crate::delegate;
use crate::error::{code, Error, Result};
use crate::grants::{Grants, Role};
use crate::kernel::Kernel;
use crate::state::{HostState, Invocation, Undo};

/// Extension of a component as built.
pub const WASM_EXT: &str = "wasm";
/// Extension of a component precompiled for this host.
pub const PRECOMPILED_EXT: &str = "cwasm";
/// The interface whose import marks a component as an IPAM plugin.
const STORE_INTERFACE: &str = "cni:plugin/store@0.1.0";
/// What every plugin exports (any version).
#[cfg(feature = "compiler")]
const PLUGIN_INTERFACE: &str = "cni:plugin/plugin";
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits every plugin instance runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall time a plugin may spend running wasm code.
    pub timeout: Duration,
    /// Linear memory a plugin may hold.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
        }
    }
}

/// The one engine configuration. Precompiled artifacts only load into an
/// engine configured the same way, so both the precompiler and the runtime
/// take it from here.
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // No .eh_frame for the compiled code: only outside unwinders (a
    // debugger, a native backtrace) read it, wasm traps and backtraces do
    // not, and registering it with the process's unwinder cost every
    // component load ~25 µs.
    config.native_unwind_info(false);
    config
}

pub struct Runtime {
    engine: Engine,
    dir: PathBuf,
    /// One per role and WASI set, built on first use: an invocation
    /// needs one or two. A second caller waits for the first's build.
    linkers: [OnceLock<Result<Linker<HostState>>>; 2 * Wasi::SETS],
    limits: Limits,
    /// Components by name, each loaded once; a second caller waits for
    /// the first's load.
    loaded: Mutex<HashMap<String, Arc<OnceLock<Result<Component>>>>>,
    /// The process ends after its invocation (see [`Runtime::one_shot`]).
    one_shot: bool,
    /// Whether a thread advances the engine's epoch (see [`Runtime::tick`]).
    ticking: AtomicBool,
}

fn wasm_err(what: impl std::fmt::Display, e: wasmtime::Error) -> Error {
    Error::internal(format!("{what}: {e:#}"))
}

/// The component in the file `wasm`. A core module (what `cargo build
/// --target wasm32-unknown-unknown` makes of a plugin) becomes a component
/// here, from the WIT that the guest SDK's bindings embedded in it: such a
/// plugin imports no WASI, so it loads faster and its linker has none.
#[cfg(feature = "compiler")]
fn component_bytes(wasm: &Path) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(wasm).map_err(|e| Error::io(format!("read {}: {e}", wasm.display())))?;
    // A core module's header says version 1; a component's, layer 1.
    if bytes.get(..8) != Some(b"\0asm\x01\0\0\0") {
        return Ok(bytes);
    }
    wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| {
            Error::config(format!(
                "{}: cannot make this core module a component ({e:#}); a plugin built for \
                 wasm32-unknown-unknown needs the WIT the guest SDK's bindings embed",
                wasm.display()
            ))
        })
}

impl Runtime {
    /// A runtime serving the components in `dir` (`<type>.cwasm`, `<type>.wasm`).
    pub fn new(dir: impl Into<PathBuf>, limits: Limits) -> Result<Arc<Self>> {
        Self::build(dir.into(), limits, false)
    }

    /// A runtime for a process that exits after one invocation, as the
    /// CNI entry does: an instance's sockets and store lock are closed
    /// when its call ends, but its memory is left to the process exit
    /// instead of being unmapped piece by piece.
    pub fn one_shot(dir: impl Into<PathBuf>, limits: Limits) -> Result<Arc<Self>> {
        Self::build(dir.into(), limits, true)
    }

    fn build(dir: PathBuf, limits: Limits, one_shot: bool) -> Result<Arc<Self>> {
        if one_shot {
            crate::kernel::detach::exits_soon();
        }
        let engine = Engine::new(&engine_config()).map_err(|e| wasm_err("create engine", e))?;
        Ok(Arc::new(Runtime {
            engine,
            dir,
            linkers: Default::default(),
            limits,
            loaded: Mutex::new(HashMap::new()),
            one_shot,
            ticking: AtomicBool::new(false),
        }))
    }

    /// Makes the calling thread the engine's epoch ticker, unless one is
    /// running already: every [`EPOCH_TICK`] it advances the epoch that
    /// the instances' deadlines count, until the engine is gone. Takes the
    /// runtime by value so that the ticker holds the engine only weakly.
    fn tick(self: Arc<Self>) {
        if self.ticking.swap(true, Ordering::SeqCst) {
            return;
        }
        let engine = self.engine.weak();
        drop(self);
        loop {
            std::thread::sleep(EPOCH_TICK);
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        }
    }

    /// The linker for `role` and `wasi`, built the first time it is needed.
    fn linker_of(&self, role: Role, wasi: Wasi) -> Result<&Linker<HostState>> {
        let role_index = match role {
            Role::Network => 0,
            Role::Ipam => 1,
        };
        self.linkers[role_index * Wasi::SETS + wasi as usize]
            .get_or_init(|| Self::linker(&self.engine, role, wasi).map_err(|e| wasm_err("link", e)))
            .as_ref()
            .map_err(Error::clone)
    }

    /// Deny by default: an IPAM component is linked to `log` and `store`
    /// only; a network component to everything but `store`.
    fn linker(engine: &Engine, role: Role, wasi: Wasi) -> wasmtime::Result<Linker<HostState>> {
        use crate::bindings::cni::plugin as cap;
        type Me = wasmtime::component::HasSelf<HostState>;
        let mut l = Linker::new(engine);
        match wasi {
            // Nothing that could block, nothing to forbid.
            Wasi::None => {}
            Wasi::Cli => {
                add_wasi_cli(&mut l)?;
                forbid_blocking(&mut l)?;
            }
            Wasi::Full => {
                wasmtime_wasi::p2::add_to_linker_sync(&mut l)?;
                forbid_blocking(&mut l)?;
            }
        }
        cap::types::add_to_linker::<_, Me>(&mut l, |s| s)?;
        cap::log::add_to_linker::<_, Me>(&mut l, |s| s)?;
        match role {
            Role::Ipam => cap::store::add_to_linker::<_, Me>(&mut l, |s| s)?,
            Role::Network => {
                cap::netns::add_to_linker::<_, Me>(&mut l, |s| s)?;
                cap::link::add_to_linker::<_, Me>(&mut l, |s| s)?;
                cap::addr::add_to_linker::<_, Me>(&mut l, |s| s)?;
                cap::route::add_to_linker::<_, Me>(&mut l, |s| s)?;
                cap::sysctl::add_to_linker::<_, Me>(&mut l, |s| s)?;
                cap::ipam::add_to_linker::<_, Me>(&mut l, |s| s)?;
                cap::firewall::add_to_linker::<_, Me>(&mut l, |s| s)?;
            }
        }
        Ok(l)
    }

    pub(crate) fn limits(&self) -> StoreLimits {
        StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Compiles a component, or a core module built with the guest SDK
    /// (see [`component_bytes`]), for `load` to mmap later.
    #[cfg(feature = "compiler")]
    pub fn precompile(&self, wasm: &Path, out: &Path) -> Result<()> {
        let component = Component::new(&self.engine, component_bytes(wasm)?)
            .map_err(|e| wasm_err(format!("compile {}", wasm.display()), e))?;
        let ty = component.component_type();
        if !ty
            .exports(&self.engine)
            .any(|(name, _)| name.starts_with(PLUGIN_INTERFACE))
        {
            return Err(Error::config(format!(
                "{}: exports no `{PLUGIN_INTERFACE}` interface, so it is not a plugin \
                 (export one with `wasm_cni_sdk::export!`)",
                wasm.display()
            )));
        }
        let compiled = component
            .serialize()
            .map_err(|e| wasm_err(format!("serialize {}", wasm.display()), e))?;
        std::fs::write(out, compiled)
            .map_err(|e| Error::io(format!("write {}: {e}", out.display())))
    }

    /// Whether a component named `name` is installed.
    pub fn has_component(&self, name: &str) -> bool {
        let base = self.dir.join(name);
        base.with_extension(PRECOMPILED_EXT).is_file()
            || (cfg!(feature = "compiler") && base.with_extension(WASM_EXT).is_file())
    }

    /// Loads `name`: the precompiled artifact by mmap, once.
    pub fn load(&self, name: &str) -> Result<Component> {
        let cell = self
            .loaded
            .lock()
            .map_err(|_| Error::internal("component cache poisoned"))?
            .entry(name.to_string())
            .or_default()
            .clone();
        cell.get_or_init(|| self.load_uncached(name)).clone()
    }

    fn load_uncached(&self, name: &str) -> Result<Component> {
        let precompiled = self.dir.join(name).with_extension(PRECOMPILED_EXT);
        let started = Instant::now();
        // SAFETY: the artifact is one `wasm-cni-compile` wrote into the
        // plugin directory, which only root can write; wasmtime checks that
        // it matches this engine's version and configuration.
        let component = match unsafe { Component::deserialize_file(&self.engine, &precompiled) } {
            Ok(c) => c,
            Err(e) => self.load_unprecompiled(name, &precompiled, e)?,
        };
        tracing::debug!(
            component = name,
            elapsed_us = started.elapsed().as_micros() as u64,
            "loaded"
        );
        Ok(component)
    }

    /// The error for a plugin type with no component in the directory.
    fn missing(&self, name: &str) -> Error {
        Error::config(format!(
            "type: no plugin component {name:?} in {} (expected {name}.{PRECOMPILED_EXT})",
            self.dir.display()
        ))
    }

    /// No usable precompiled artifact: the installed binary has no compiler,
    /// so the error says how to make one.
    #[cfg(not(feature = "compiler"))]
    fn load_unprecompiled(
        &self,
        name: &str,
        precompiled: &Path,
        e: wasmtime::Error,
    ) -> Result<Component> {
        if !precompiled.exists() {
            return Err(self.missing(name));
        }
        Err(Error::io(format!(
            "component {name:?}: {} cannot be loaded by this wasm-cni ({e:#}); \
             recompile it with `wasm-cni-compile -o {} {name}.wasm`",
            precompiled.display(),
            self.dir.display()
        )))
    }

    /// No usable precompiled artifact: compile the `.wasm` now (tests, and
    /// builds with the `compiler` feature).
    #[cfg(feature = "compiler")]
    fn load_unprecompiled(
        &self,
        name: &str,
        precompiled: &Path,
        e: wasmtime::Error,
    ) -> Result<Component> {
        let wasm = precompiled.with_extension(WASM_EXT);
        if !wasm.is_file() {
            return Err(self.missing(name));
        }
        if precompiled.exists() {
            tracing::warn!(
                component = name,
                "precompiled artifact unusable ({e:#}); compiling"
            );
        } else {
            tracing::debug!(component = name, "no precompiled artifact; compiling");
        }
        Component::new(&self.engine, component_bytes(&wasm)?)
            .map_err(|e| wasm_err(format!("compile {}", wasm.display()), e))
    }

    /// The WASI a component's imports need.
    fn wasi_of(&self, component: &Component) -> Wasi {
        let ty = component.component_type();
        ty.imports(&self.engine)
            .filter_map(|(name, _)| name.strip_prefix("wasi:"))
            .map(|n| {
                if n.starts_with("cli/") || n.starts_with("io/") {
                    Wasi::Cli
                } else {
                    Wasi::Full
                }
            })
            .max()
            .unwrap_or(Wasi::None)
    }

    /// The role a component's imports give it.
    pub fn role(&self, component: &Component) -> Role {
        let ty = component.component_type();
        let mut names = ty.imports(&self.engine).map(|(name, _)| name);
        if names.any(|n| n == STORE_INTERFACE) {
            Role::Ipam
        } else {
            Role::Network
        }
    }

    /// Runs one invocation of plugin `name`. A failed ADD is undone: links
    /// it created are deleted and its IPAM allocation released.
    pub fn run(
        self: &Arc<Self>,
        name: &str,
        inv: Invocation,
        kernel: Box<dyn Kernel + Send>,
    ) -> Result<Option<CniResult>> {
        let inv = Arc::new(inv);
        self.prepare_in_background(name, &inv)?;
        let component = self.load(name)?;
        let role = self.role(&component);
        let (grants, kernel) = match role {
            Role::Network => (Grants::network(&inv.conf, &inv.env), Some(kernel)),
            Role::Ipam => (Grants::ipam(&inv.conf, &inv.env)?, None),
        };
        let (result, mut store) = self.call(name, &component, role, grants, kernel, &inv);
        if result.is_err() && inv.command == Command::Add {
            self.undo(store.data_mut());
        }
        self.retire(store);
        let mut result = result?;
        if let (Some(r), Some(netns)) = (result.as_mut(), inv.env.netns.as_ref()) {
            for iface in &mut r.interfaces {
                if iface.sandbox.is_some() {
                    iface.sandbox = Some(netns.display().to_string());
                }
            }
        }
        Ok(result)
    }

    /// Runs the IPAM plugin `name` for a network plugin: in-process when a
    /// component has that name, else the native binary from `CNI_PATH`.
    pub(crate) fn delegate(
        self: &Arc<Self>,
        name: &str,
        command: Command,
        inv: &Arc<Invocation>,
    ) -> Result<Option<CniResult>> {
        let started = Instant::now();
        let out = if self.has_component(name) {
            let component = self.load(name)?;
            let inv = Arc::new(Invocation {
                command,
                ..(**inv).clone()
            });
            let mut grants = match self.role(&component) {
                Role::Ipam => Grants::ipam(&inv.conf, &inv.env)?,
                Role::Network => Grants::network(&inv.conf, &inv.env),
            };
            // A delegate may not delegate again (no loops through ipam.type).
            grants.ipam = None;
            let role = grants.role;
            let (out, store) = self.call(name, &component, role, grants, None, &inv);
            self.retire(store);
            out
        } else {
            let binary = delegate::find(name, &inv.env.path).ok_or_else(|| {
                Error::config(format!(
                    "ipam.type: no IPAM plugin {name:?} installed here or in CNI_PATH"
                ))
            })?;
            delegate::exec(&binary, command, inv)
        };
        tracing::debug!(
            ipam = name,
            command = command.as_str(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "delegated"
        );
        out.map_err(|e| e.context(format!("IPAM plugin {name}")))
    }

    fn call(
        self: &Arc<Self>,
        name: &str,
        component: &Component,
        role: Role,
        grants: Grants,
        kernel: Option<Box<dyn Kernel + Send>>,
        inv: &Arc<Invocation>,
    ) -> (Result<Option<CniResult>>, Store<HostState>) {
        let state = HostState::new(self.clone(), inv.clone(), name, grants, kernel);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Splits a call's time between the plugin's code and the host's.
        store.call_hook(|mut ctx, hook| {
            let s = ctx.data_mut();
            match hook {
                CallHook::CallingHost => s.host_entered = Some(Instant::now()),
                CallHook::ReturningFromHost => {
                    if let Some(t) = s.host_entered.take() {
                        s.host_time += t.elapsed();
                    }
                }
                _ => {}
            }
            Ok(())
        });
        store.set_epoch_deadline(
            (self.limits.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64,
        );
        let out = self
            .linker_of(role, self.wasi_of(component))
            .and_then(|linker| {
                self.instantiate_and_call(name, component, linker, &mut store, inv)
                    .map_err(|e| match e {
                        Fault::Cni(e) => e,
                        Fault::Trap(e) => self.trap(name, e, store.data().last_words()),
                    })
            });
        (out, store)
    }

    /// Starts, on a second thread, what this invocation will need next
    /// while this one loads and runs the plugin: the linker of a network
    /// plugin (the usual role, without WASI as the plugins shipped here
    /// are built) and the IPAM component the configuration
    /// names, with its linker. A bridge ADD then finds host-local loaded
    /// when it asks for an address (0.3 ms off its critical path on this
    /// 2-core machine). Whatever the plugin turns out not to need is
    /// wasted on the other core; a failure here is met again, and
    /// reported, where the plugin needs the thing. The thread then stays
    /// on as the epoch ticker, if the runtime has none yet: one thread
    /// made per invocation instead of two (making one, `clone`, took
    /// 0.12-0.31 ms on a 2-vCPU VM). Without a thread no plugin runs:
    /// nothing would end one that never returns.
    fn prepare_in_background(self: &Arc<Self>, name: &str, inv: &Invocation) -> Result<()> {
        let ipam = inv
            .conf
            .ipam_type
            .clone()
            .filter(|ipam| ipam != name && self.has_component(ipam));
        let runtime = self.clone();
        // Its log lines belong to the invocation's span.
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("prepare".into())
            .spawn(move || {
                {
                    let _in = span.enter();
                    let _ = runtime.linker_of(Role::Network, Wasi::None);
                    if let Some(component) = ipam.and_then(|ipam| runtime.load(&ipam).ok()) {
                        let _ = runtime
                            .linker_of(runtime.role(&component), runtime.wasi_of(&component));
                    }
                }
                runtime.tick();
            })
            .map(drop)
            .map_err(|e| {
                Error::new(
                    code::TRY_AGAIN_LATER,
                    format!("start a thread to prepare the plugin and time its run: {e}"),
                )
            })
    }

    /// Ends an instance's store. Sockets and the IPAM store's lock are
    /// released now in any case; in a one-shot runtime the rest (the
    /// instance's memory) is left to the process exit.
    fn retire(&self, mut store: Store<HostState>) {
        if self.one_shot {
            let state = store.data_mut();
            drop(state.kernel.take());
            drop(state.store.take());
            std::mem::forget(store);
        }
    }

    fn instantiate_and_call(
        &self,
        name: &str,
        component: &Component,
        linker: &Linker<HostState>,
        store: &mut Store<HostState>,
        inv: &Invocation,
    ) -> Result<Option<CniResult>, Fault> {
        let started = Instant::now();
        let plugin = AnyPlugin::instantiate(&mut *store, component, linker).map_err(|e| {
            Error::new(
                code::PLUGIN_FAULT,
                format!("plugin {name} cannot be instantiated with the capabilities its role grants: {e:#}"),
            )
        })?;
        let instantiated = Instant::now();
        let out = self.dispatch(&plugin, store, inv);
        let host = store.data().host_time;
        tracing::debug!(
            component = name,
            instantiate_us = (instantiated - started).as_micros() as u64,
            run_us = instantiated.elapsed().as_micros() as u64,
            host_us = host.as_micros() as u64,
            "called"
        );
        out
    }

    /// Calls the plugin function of the invocation's command.
    fn dispatch(
        &self,
        plugin: &AnyPlugin,
        store: &mut Store<HostState>,
        inv: &Invocation,
    ) -> Result<Option<CniResult>, Fault> {
        let trap = Fault::Trap;
        let api = plugin.cni_plugin_plugin();
        let out = match inv.command {
            Command::Add | Command::Del | Command::Check => {
                // Opening the container namespace is host work too.
                let opened = Instant::now();
                let has_netns = match store.data_mut().kernel.as_deref_mut() {
                    Some(k) => inv.env.netns.is_some() && k.has_container(),
                    None => inv.env.netns.as_ref().is_some_and(|p| p.exists()),
                };
                store.data_mut().host_time += opened.elapsed();
                let req = request(inv, has_netns);
                match inv.command {
                    Command::Add => api.call_add(&mut *store, &req).map_err(trap)?.map(Some),
                    Command::Del => api
                        .call_del(&mut *store, &req)
                        .map_err(trap)?
                        .map(|()| None),
                    _ => api
                        .call_check(&mut *store, &req)
                        .map_err(trap)?
                        .map(|()| None),
                }
            }
            Command::Status | Command::Gc => {
                let req = NetworkRequest {
                    network_name: inv.conf.name.clone(),
                    cni_version: inv.conf.cni_version.clone(),
                    config: inv.conf.to_json(),
                    valid_attachments: match inv.command {
                        Command::Gc => inv.conf.valid_attachments().map_err(Fault::Cni)?,
                        _ => Vec::new(),
                    },
                };
                match inv.command {
                    Command::Gc => api.call_gc(&mut *store, &req).map_err(trap)?.map(|()| None),
                    _ => api
                        .call_status(&mut *store, &req)
                        .map_err(trap)?
                        .map(|()| None),
                }
            }
            Command::Version => {
                return Err(Fault::Cni(Error::internal(
                    "VERSION is answered by the host",
                )))
            }
        };
        out.map_err(|e| Fault::Cni(e.into()))
    }

    /// A trap as a CNI error that says what stopped the plugin, with the
    /// plugin's last words (its panic message) as details.
    fn trap(&self, name: &str, e: wasmtime::Error, last_words: String) -> Error {
        let text = format!("{e:#}");
        let why = if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            format!(
                "ran longer than its time limit of {} ms and was stopped",
                self.limits.timeout.as_millis()
            )
        } else if text.contains("forcing trap when growing memory") {
            format!(
                "exceeded its memory limit of {} MiB and was stopped",
                self.limits.memory_bytes >> 20
            )
        } else if text.contains(BLOCKING_DENIED) {
            BLOCKING_DENIED.to_string()
        } else {
            // The first line; the rest is a wasm backtrace.
            let first = e
                .downcast_ref::<Trap>()
                .map(|t| t.to_string())
                .unwrap_or_else(|| text.lines().next().unwrap_or_default().to_string());
            format!("trapped: {first}")
        };
        Error::new(code::PLUGIN_FAULT, format!("plugin {name} {why}"))
            .with_details(last_words.trim())
    }

    /// Undoes what a failed ADD created, newest first, continuing past
    /// failures and logging each.
    fn undo(self: &Arc<Self>, state: &mut HostState) {
        let undo = std::mem::take(&mut state.undo);
        for step in undo.into_iter().rev() {
            let res = match &step {
                Undo::DeleteLink(ns, link) => match state.kernel.as_deref_mut() {
                    Some(k) => k.link_delete(*ns, link),
                    None => Ok(()),
                },
                Undo::Firewall(kind) => {
                    let owner = state.owner();
                    let pods = state.pod_addresses_for(*kind);
                    match state.kernel.as_deref_mut() {
                        Some(k) => k.fw_remove(&owner, *kind, &pods),
                        None => Ok(()),
                    }
                }
                Undo::IpamDel => match state.grants.ipam.clone() {
                    Some(ipam) => {
                        let inv = Arc::new(Invocation {
                            command: Command::Del,
                            ..(*state.inv).clone()
                        });
                        self.delegate(&ipam, Command::Del, &inv).map(|_| ())
                    }
                    None => Ok(()),
                },
            };
            match res {
                Ok(()) => tracing::info!(?step, "undone after failed ADD"),
                Err(e) => tracing::error!(?step, error = %e, "could not undo after failed ADD"),
            }
        }
    }
}

/// Why a call ended without a result.
enum Fault {
    /// The plugin returned a CNI error, or the host refused to run it.
    Cni(Error),
    /// The plugin trapped or was stopped.
    Trap(wasmtime::Error),
}

impl From<Error> for Fault {
    fn from(e: Error) -> Self {
        Fault::Cni(e)
    }
}

/// The WASI a component is linked to, the least its imports need: none
/// for a component that imports none (the plugins shipped here, built
/// without WASI), which also spares the load and the linker its types and
/// functions. What Rust's standard library imports on `wasm32-wasip2`
/// (`wasi:cli`, and the `wasi:io` streams under stdio) is linked on its
/// own: linking all of WASI was most of the cost of building a linker. A
/// component that imports any other WASI interface gets all of it: clocks,
/// random, and filesystem and sockets with no directory opened and no
/// address allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wasi {
    None = 0,
    Cli = 1,
    Full = 2,
}

impl Wasi {
    /// How many there are: one linker slot each, per role.
    const SETS: usize = Wasi::Full as usize + 1;
}

/// `wasi:cli` and `wasi:io`, as `wasmtime_wasi::p2::add_to_linker_sync`
/// links them.
fn add_wasi_cli(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::p2::bindings::{cli, sync::io};
    use wasmtime_wasi::WasiView;
    fn table(s: &mut HostState) -> &mut wasmtime::component::ResourceTable {
        s.ctx().table
    }
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<_, IoTable>(l, table)?;
    io::poll::add_to_linker::<_, IoTable>(l, table)?;
    io::streams::add_to_linker::<_, IoTable>(l, table)?;
    let view = HostState::cli;
    cli::exit::add_to_linker::<_, WasiCli>(l, view)?;
    cli::environment::add_to_linker::<_, WasiCli>(l, view)?;
    cli::stdin::add_to_linker::<_, WasiCli>(l, view)?;
    cli::stdout::add_to_linker::<_, WasiCli>(l, view)?;
    cli::stderr::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, view)?;
    Ok(())
}

/// Host functions of `wasi:io` see the store's resource table.
struct IoTable;

impl wasmtime::component::HasData for IoTable {
    type Data<'a> = &'a mut wasmtime::component::ResourceTable;
}

const BLOCKING_DENIED: &str =
    "tried to block (sleep or poll), which plugins may not do, and was stopped";

/// Plugins may not block: a blocking WASI call would wait outside the time
/// limit, which only runs while wasm code runs. Sleeping and polling trap.
fn forbid_blocking(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.allow_shadowing(true);
    let deny = |_: wasmtime::StoreContextMut<'_, HostState>,
                _: wasmtime::component::types::ComponentFunc,
                _: &[wasmtime::component::Val],
                _: &mut [wasmtime::component::Val]|
     -> wasmtime::Result<()> { Err(wasmtime::Error::msg(BLOCKING_DENIED)) };
    let mut poll = l.instance("wasi:io/poll@0.2.12")?;
    poll.func_new("poll", deny)?;
    poll.func_new("[method]pollable.block", deny)?;
    let mut clock = l.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_new("subscribe-duration", deny)?;
    clock.func_new("subscribe-instant", deny)?;
    l.allow_shadowing(false);
    Ok(())
}

fn request(inv: &Invocation, has_netns: bool) -> Request {
    Request {
        network_name: inv.conf.name.clone(),
        cni_version: inv.conf.cni_version.clone(),
        container_id: inv.env.container_id.clone(),
        ifname: inv.env.ifname.clone(),
        args: inv.env.args.clone(),
        config: inv.conf.to_json(),
        prev_result: inv.conf.prev_result.clone(),
        has_netns,
    }
}
