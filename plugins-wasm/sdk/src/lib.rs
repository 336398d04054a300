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

/// Exports a [`Plugin`] implementation as the component's
/// `cni:plugin/plugin`: `wasm_cni_sdk::export!(MyPlugin);`.
///
/// A panic is reported before it traps: its message ("panicked at
/// src/lib.rs:12:5: ...") goes to the host's log at level error, and the
/// host gives it to the runtime as the error's details. That works with or
/// without WASI (a plugin built for `wasm32-unknown-unknown` has no stderr).
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        type __WasmCniExport = $crate::PanicsReported<$ty>;
        $crate::bindings::export!(__WasmCniExport with_types_in $crate::bindings);
    };
}

/// `P` with a panic hook installed before each call; see [`export!`].
#[doc(hidden)]
pub struct PanicsReported<P>(core::marker::PhantomData<P>);

impl<P: Plugin> PanicsReported<P> {
    fn hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                log::log(log::Level::Error, &info.to_string());
            }));
        });
    }
}

impl<P: Plugin> Plugin for PanicsReported<P> {
    fn add(req: Request) -> Result<CniResult, CniError> {
        Self::hook();
        P::add(req)
    }
    fn del(req: Request) -> Result<(), CniError> {
        Self::hook();
        P::del(req)
    }
    fn check(req: Request) -> Result<(), CniError> {
        Self::hook();
        P::check(req)
    }
    fn status(req: NetworkRequest) -> Result<(), CniError> {
        Self::hook();
        P::status(req)
    }
    fn gc(req: NetworkRequest) -> Result<(), CniError> {
        Self::hook();
        P::gc(req)
    }
}
