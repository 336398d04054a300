//! A CNI host that runs plugins as sandboxed WebAssembly components.
//!
//! The runtime hands a plugin typed requests and narrow capabilities
//! (`link`, `addr`, `route`, `sysctl`, `ipam`, `store`), checks every call
//! against what this invocation was granted, and renders the typed result in
//! the layout of the configuration's CNI version.
//!
//! - [`cni`]: the exec contract (environment, configuration, result layouts)
//! - [`runtime`]: wasmtime embedding, loading, limits, undo
//! - [`grants`]: what one invocation may touch
//! - [`firewall`]: masquerade and host-port rules (nftables, iptables)
//! - [`caps`]: one module per WIT capability
//! - [`kernel`]: the kernel operations, real (rtnetlink) or mocked
//! - [`store`]: host-local's on-disk reservation store
//! - [`testing`]: a recording mock kernel for plugin unit tests without root

pub mod bindings;
pub mod caps;
pub mod cni;
pub mod delegate;
pub mod error;
pub mod exec;
pub mod firewall;
pub mod grants;
pub mod kernel;
pub mod runtime;
pub mod state;
pub mod store;
pub mod testing;

pub use error::{Error, Result};
pub use runtime::{Limits, Runtime};
pub use state::Invocation;
