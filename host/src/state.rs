//! The data of one component instance: its grants, the kernel it talks to,
//! its store, and the undo log of what it created.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::cni::{Command, Env, NetConf};
use crate::error::{Error, Result};
use crate::firewall::{Owner, RuleKind};
use crate::grants::Grants;
use crate::kernel::{Kernel, Ns};
use crate::runtime::Runtime;
use crate::store::DiskStore;

/// One invocation as the runtime made it.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    pub env: Env,
    pub conf: NetConf,
}

/// Something an ADD created, undone in reverse order when the ADD fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    DeleteLink(Ns, String),
    IpamDel,
    /// Remove this attachment's firewall rules of one kind.
    Firewall(RuleKind),
}

pub struct HostState {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) inv: Arc<Invocation>,
    pub(crate) plugin: String,
    pub(crate) grants: Grants,
    pub(crate) kernel: Option<Box<dyn Kernel + Send>>,
    pub(crate) store: Option<DiskStore>,
    pub(crate) undo: Vec<Undo>,
    pub(crate) limits: StoreLimits,
    /// Built on the plugin's first WASI call: the shipped plugins import
    /// no WASI, and a context costs a random generator's seeding.
    wasi: Option<WasiCtx>,
    stderr: MemoryOutputPipe,
    /// The last message the plugin logged at level error: what the SDK's
    /// panic hook says before a panic traps, in a plugin without stderr.
    pub(crate) last_error: Option<String>,
    table: ResourceTable,
    /// Time spent in host functions (capabilities, WASI) during this
    /// instance's calls, and when the current one was entered.
    pub(crate) host_time: std::time::Duration,
    pub(crate) host_entered: Option<std::time::Instant>,
}

/// How much of a plugin's stderr is kept.
const STDERR_BYTES: usize = 16 << 10;

impl HostState {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        inv: Arc<Invocation>,
        plugin: &str,
        grants: Grants,
        kernel: Option<Box<dyn Kernel + Send>>,
    ) -> Self {
        let store = grants.store.clone().map(DiskStore::new);
        let stderr = MemoryOutputPipe::new(STDERR_BYTES);
        HostState {
            limits: runtime.limits(),
            runtime,
            inv,
            plugin: plugin.to_string(),
            grants,
            kernel,
            store,
            undo: Vec::new(),
            wasi: None,
            stderr,
            last_error: None,
            table: ResourceTable::new(),
            host_time: std::time::Duration::ZERO,
            host_entered: None,
        }
    }

    pub(crate) fn kernel(&mut self) -> Result<&mut (dyn Kernel + Send + 'static)> {
        self.kernel
            .as_deref_mut()
            .ok_or_else(|| Error::denied("an IPAM plugin has no access to network links"))
    }

    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The attachment this invocation acts for.
    pub(crate) fn owner(&self) -> Owner {
        Owner {
            network: self.inv.conf.name.clone(),
            container_id: self.inv.env.container_id.clone(),
            ifname: self.inv.env.ifname.clone(),
        }
    }

    /// What the plugin said before it stopped: its stderr, and the last
    /// error it logged (a panic's message, from the SDK's hook).
    pub(crate) fn last_words(&self) -> String {
        let stderr = String::from_utf8_lossy(&self.stderr.contents()).into_owned();
        match &self.last_error {
            Some(logged) if !stderr.contains(logged.as_str()) => {
                [stderr.trim_end(), logged.as_str()].join("\n")
            }
            _ => stderr,
        }
    }

    pub(crate) fn table_ref(&self) -> &ResourceTable {
        &self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let stderr = &self.stderr;
        // Nothing granted: no preopens, no sockets, no environment.
        // Stderr is kept to report a plugin's panic message.
        let ctx = self
            .wasi
            .get_or_insert_with(|| WasiCtx::builder().stderr(stderr.clone()).build());
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}
