//! The `link` capability: the bridge, the veth pair, port settings.

use wasmtime::component::Resource;

use super::netns::Namespace;
use crate::bindings::cni::plugin::link::{BridgeOptions, Host, LinkInfo, VethOptions, VethPair};
use crate::bindings::CniError;
use crate::error::{code, Error};
use crate::kernel::{parse_mac, Ns, NODE_END_MAC};
use crate::state::{HostState, Undo};

/// The host end of an attachment's veth: `veth` and 11 hex digits of a hash
/// of container ID and interface name. Stable across retries, so a stale
/// end left by a crashed ADD of the same attachment is found and replaced.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:011x}", h >> 20)
}

impl Host for HostState {
    fn ensure_bridge(&mut self, name: String, opts: BridgeOptions) -> Result<LinkInfo, CniError> {
        self.grants.check_link(Ns::Host, &name)?;
        let (bridge, created) = self.kernel()?.bridge_ensure(&name, &opts)?;
        if created {
            tracing::info!(bridge = %name, "created bridge");
        }
        Ok(bridge)
    }

    fn create_veth(
        &mut self,
        container: Resource<Namespace>,
        opts: VethOptions,
    ) -> Result<VethPair, CniError> {
        if self.ns(&container)? != Ns::Container {
            return Err(Error::denied(
                "create-veth: the peer must go into the container namespace",
            )
            .into());
        }
        if opts.container_ifname != self.grants.ifname {
            return Err(Error::denied(format!(
                "create-veth: container interface {:?} is not CNI_IFNAME {:?}",
                opts.container_ifname, self.grants.ifname
            ))
            .into());
        }
        if let Some(mac) = &opts.container_mac {
            if parse_mac(mac)? == NODE_END_MAC {
                return Err(Error::config(format!(
                    "mac: {mac} is the MAC of the node end of every veth; the container's end needs another"
                ))
                .into());
            }
        }
        let host_name = host_veth_name(&self.inv.env.container_id, &opts.container_ifname);
        let kernel = self.kernel()?;
        // Created first, asked about only when a name is taken (the
        // usual ADD makes no lookups).
        let pair = match kernel.veth_create(&host_name, &opts) {
            Err(e) if e.code == code::ALREADY_EXISTS => {
                // The spec: an ADD for an interface that already exists
                // fails, and the existing interface stays as it is.
                if kernel
                    .link_get(Ns::Container, &opts.container_ifname)?
                    .is_some()
                {
                    return Err(Error::new(
                        code::ALREADY_EXISTS,
                        format!(
                            "CNI_IFNAME: interface {} already exists in the container",
                            opts.container_ifname
                        ),
                    )
                    .into());
                }
                // A host end without its container end is left from a
                // crashed ADD of this same attachment (the name derives
                // from it): replace it.
                if kernel.link_get(Ns::Host, &host_name)?.is_none() {
                    return Err(e.into());
                }
                tracing::warn!(link = %host_name, "replacing a stale host veth of this attachment");
                kernel.link_delete(Ns::Host, &host_name)?;
                kernel.veth_create(&host_name, &opts)?
            }
            other => other?,
        };
        self.grants.allow_link(Ns::Host, &host_name);
        self.undo.push(Undo::DeleteLink(Ns::Host, host_name));
        Ok(pair)
    }

    fn get(&mut self, ns: Resource<Namespace>, name: String) -> Result<Option<LinkInfo>, CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &name)?;
        Ok(self.kernel()?.link_get(ns, &name)?)
    }

    fn veth_peer(
        &mut self,
        ns: Resource<Namespace>,
        name: String,
    ) -> Result<Option<LinkInfo>, CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &name)?;
        let peer = self.kernel()?.veth_peer(ns, &name)?;
        if let Some(p) = &peer {
            let other = if ns == Ns::Host {
                Ns::Container
            } else {
                Ns::Host
            };
            self.grants.allow_link(other, &p.name);
        }
        Ok(peer)
    }

    fn set_up(&mut self, ns: Resource<Namespace>, name: String, up: bool) -> Result<(), CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &name)?;
        Ok(self.kernel()?.link_set_up(ns, &name, up)?)
    }

    fn set_master(&mut self, name: String, bridge: String) -> Result<(), CniError> {
        self.grants.check_link(Ns::Host, &name)?;
        self.grants.check_link(Ns::Host, &bridge)?;
        Ok(self.kernel()?.link_set_master(&name, &bridge)?)
    }

    fn set_promisc(&mut self, name: String, on: bool) -> Result<(), CniError> {
        self.grants.check_link(Ns::Host, &name)?;
        Ok(self.kernel()?.link_set_promisc(&name, on)?)
    }

    fn set_hairpin(&mut self, name: String, on: bool) -> Result<(), CniError> {
        self.grants.check_link(Ns::Host, &name)?;
        Ok(self.kernel()?.link_set_hairpin(&name, on)?)
    }

    fn set_port_vlan(
        &mut self,
        name: String,
        vid: u16,
        keep_default: bool,
    ) -> Result<(), CniError> {
        self.grants.check_link(Ns::Host, &name)?;
        if vid == 0 || vid > 4094 {
            return Err(Error::config(format!("vlan: {vid} is outside 1-4094")).into());
        }
        Ok(self
            .kernel()?
            .link_set_port_vlan(&name, vid, keep_default)?)
    }

    fn delete(&mut self, ns: Resource<Namespace>, name: String) -> Result<(), CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &name)?;
        Ok(self.kernel()?.link_delete(ns, &name)?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_veth_names_are_stable_and_fit_ifnamsiz() {
        let a = super::host_veth_name("c1", "eth0");
        assert_eq!(a, super::host_veth_name("c1", "eth0"));
        assert_ne!(a, super::host_veth_name("c1", "eth1"));
        assert_eq!(a.len(), 15);
    }
}
