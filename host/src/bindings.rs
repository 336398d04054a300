//! Host-side bindings generated from the `any-plugin` world.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "any-plugin",
    additional_derives: [PartialEq],
    // Namespace handles live in the resource table; a failing table
    // operation traps the guest.
    imports: { "cni:plugin/netns": trappable },
    with: {
        "cni:plugin/netns.namespace": crate::caps::netns::Namespace,
    },
});

pub use cni::plugin::types::{
    Attachment, CniError, CniResult, Dns, Interface, IpAddress, IpConfig, IpNet, NetworkRequest,
    Request, Route,
};
