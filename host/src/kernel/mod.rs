//! The kernel operations the capabilities need, behind one small trait so a
//! recording mock can stand in for the kernel in unit tests. The real
//! implementation speaks rtnetlink over one socket per namespace.

pub mod conntrack;
pub(crate) mod detach;
pub mod netlink;
pub(crate) mod netns;
pub(crate) mod nfnetlink;
mod sysctl;

pub use netlink::NetlinkKernel;

use std::net::IpAddr;

use crate::bindings::cni::plugin::link::{BridgeOptions, LinkInfo, VethOptions, VethPair};
use crate::bindings::cni::plugin::route::RouteSpec;
use crate::bindings::IpNet;
use crate::error::{Error, Result};
use crate::firewall::{
    Choice, HostPort, Masquerade, Owned, Owner, PortMapping, PortOptions, RuleKind,
};

/// The MAC of the node end of every veth pair the host makes (locally
/// administered, unicast). A bridge keeps one forwarding-database entry of
/// its own for each distinct MAC of its ports, and the kernel walks the
/// whole database when it attaches or removes a port: with one MAC for all
/// node ends, a bridge of N pods holds one such entry instead of N. Nothing
/// sends frames to a node end (pods reach the gateway at the bridge's MAC),
/// and a kernel bridge takes ports that share a MAC.
pub const NODE_END_MAC: [u8; 6] = [0xee; 6];

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Six hex octets separated by colons; a code-7 error naming `mac` otherwise.
pub fn parse_mac(s: &str) -> Result<Vec<u8>> {
    let bytes: Option<Vec<u8>> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    match bytes {
        Some(b) if b.len() == 6 => Ok(b),
        _ => Err(Error::config(format!("mac: invalid MAC address {s:?}"))),
    }
}

/// Which namespace an operation is for. The container namespace is the one of
/// this invocation's `CNI_NETNS`, opened once by the kernel implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ns {
    Host,
    Container,
}

impl std::fmt::Display for Ns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ns::Host => "host",
            Ns::Container => "container",
        })
    }
}

pub trait Kernel {
    /// Whether the container namespace exists (it may be gone on DEL).
    fn has_container(&mut self) -> bool;

    fn link_get(&mut self, ns: Ns, name: &str) -> Result<Option<LinkInfo>>;
    /// Returns the bridge and whether this call created it.
    fn bridge_ensure(&mut self, name: &str, opts: &BridgeOptions) -> Result<(LinkInfo, bool)>;
    /// Creates `host_name` in the host namespace with its peer inside the
    /// container namespace.
    fn veth_create(&mut self, host_name: &str, opts: &VethOptions) -> Result<VethPair>;
    fn veth_peer(&mut self, ns: Ns, name: &str) -> Result<Option<LinkInfo>>;
    fn link_set_up(&mut self, ns: Ns, name: &str, up: bool) -> Result<()>;
    fn link_set_master(&mut self, name: &str, bridge: &str) -> Result<()>;
    fn link_set_promisc(&mut self, name: &str, on: bool) -> Result<()>;
    fn link_set_hairpin(&mut self, name: &str, on: bool) -> Result<()>;
    fn link_set_port_vlan(&mut self, name: &str, vid: u16, keep_default: bool) -> Result<()>;
    /// Deletes a link; Ok when it does not exist.
    fn link_delete(&mut self, ns: Ns, name: &str) -> Result<()>;

    /// Adds an address; Ok when it is already there.
    fn addr_add(&mut self, ns: Ns, link: &str, addr: &IpNet) -> Result<()>;
    fn addr_del(&mut self, ns: Ns, link: &str, addr: &IpNet) -> Result<()>;
    fn addr_list(&mut self, ns: Ns, link: &str) -> Result<Vec<IpNet>>;

    /// Adds a route; Ok when the same route is already there.
    fn route_add(&mut self, ns: Ns, route: &RouteSpec) -> Result<()>;
    fn route_del(&mut self, ns: Ns, route: &RouteSpec) -> Result<()>;
    fn route_list(&mut self, ns: Ns, dev: &str) -> Result<Vec<RouteSpec>>;

    fn sysctl_get(&mut self, ns: Ns, key: &str) -> Result<String>;
    fn sysctl_set(&mut self, ns: Ns, key: &str, value: &str) -> Result<()>;

    /// Firewall rules in the node namespace (see `firewall`).
    fn fw_add_masquerade(
        &mut self,
        choice: Choice,
        owner: &Owner,
        rules: &[Masquerade],
    ) -> Result<()>;
    fn fw_add_port_mappings(
        &mut self,
        choice: Choice,
        owner: &Owner,
        maps: &[PortMapping],
        opts: &PortOptions,
    ) -> Result<()>;
    /// Removes the owner's rules of `kind` from every backend. `pods` are
    /// the pod addresses its rules are keyed by, as far as the caller
    /// knows them (none: unknown), so that masquerading can be looked up
    /// by key instead of listing every pod's.
    fn fw_remove(&mut self, owner: &Owner, kind: RuleKind, pods: &[IpAddr]) -> Result<()>;
    /// Removes the owner's port mappings from every backend, finding them
    /// by their host ports and `pods` where it can (see the WIT
    /// `remove-host-ports`).
    fn fw_remove_host_ports(
        &mut self,
        owner: &Owner,
        ports: &[HostPort],
        pods: &[IpAddr],
    ) -> Result<()> {
        let _ = ports;
        self.fw_remove(owner, RuleKind::PortMappings, pods)
    }
    /// The owner's rules of `kind` in every backend (`pods` as for
    /// [`Kernel::fw_remove`]).
    fn fw_list(&mut self, owner: &Owner, kind: RuleKind, pods: &[IpAddr]) -> Result<Owned>;
    /// Which of `maps` the owner has in any backend (see the WIT
    /// `port-mappings-of`).
    fn fw_port_mappings_of(
        &mut self,
        owner: &Owner,
        maps: &[PortMapping],
    ) -> Result<Vec<PortMapping>> {
        let have = self
            .fw_list(owner, RuleKind::PortMappings, &[])?
            .port_mappings;
        Ok(crate::firewall::among(maps, &have))
    }
    fn fw_gc(&mut self, network: &str, kind: RuleKind, valid: &[Owner]) -> Result<()>;
}
