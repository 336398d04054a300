//! Guest SDK for CNI plugins written as WebAssembly components.
//!
//! A plugin implements [`Plugin`] (the WIT `cni:plugin/plugin` interface) and
//! registers it with [`export!`]. It talks to the node only through the host
//! capabilities re-exported here (`link`, `addr`, `route`, `sysctl`, `ipam`,
//! `firewall`, `store`, `log`); the host checks every call against what this one
//! invocation was granted. A component imports only the capabilities it
//! calls, so an IPAM plugin that uses `store` is never linked to `link`.
//!
//! ```ignore
//! use wasm_cni_sdk::{Plugin, Request, NetworkRequest, CniResult, CniError};
//! struct Mine;
//! impl Plugin for Mine {
//!     fn add(req: Request) -> Result<CniResult, CniError> { /* ... */ }
//!     // del, check, status, gc ...
//! }
//! wasm_cni_sdk::export!(Mine);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "any-plugin",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "wasm_cni_sdk::bindings",
    });
}

pub use bindings::cni::plugin::{
    addr, firewall, ipam, link, log, netns, route, store, sysctl, types,
};
pub use bindings::export;
pub use bindings::exports::cni::plugin::plugin::Guest as Plugin;
pub use types::{
    Attachment, CniError, CniResult, Dns, Interface, IpAddress, IpConfig, IpNet, NetworkRequest,
    Request, Route,
};

mod config;
mod error;
pub mod iface;
mod ip;
pub mod nat;

pub use config::{arg, parse_config, prev_result, IpamConfig};
pub use error::{code, Error};
pub use ip::{parse_ip, parse_ip_net, IpNetExt};

/// Writes a message to the host's log.
pub fn log(level: log::Level, message: impl AsRef<str>) {
    log::log(level, message.as_ref());
}
