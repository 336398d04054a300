//! The `firewall` capability. The owner of every rule is this invocation's
//! attachment; a plugin may masquerade or forward only to its own pod's
//! addresses (from `prevResult` or its IPAM result).

use std::net::IpAddr;

use crate::bindings::cni::plugin::firewall::{
    Backend, Host, HostPort, Masquerade, Owned, PortMapping, PortOptions, RuleKind,
};
use crate::bindings::{Attachment, CniError, IpAddress};
use crate::error::Error;
use crate::firewall::Owner;
use crate::kernel::Ns;
use crate::state::{HostState, Undo};

impl HostState {
    /// The pod addresses this attachment's rules are keyed by, for looking
    /// them up instead of listing every pod's: those of `prevResult` (what
    /// ADD keyed them by) and of this invocation's IPAM results; without
    /// either, those the container interface still has, asked of the
    /// kernel. None when the namespace or interface is gone too. IPv6
    /// link-local addresses are never keys.
    pub(crate) fn pod_addresses(&mut self) -> Vec<IpAddr> {
        let mut pods = self.grants.pod_ips();
        if pods.is_empty() {
            let ifname = self.inv.env.ifname.clone();
            if let Some(k) = self.kernel.as_deref_mut() {
                pods = k
                    .addr_list(Ns::Container, &ifname)
                    .map(|addrs| addrs.iter().map(|a| a.ip()).collect())
                    .unwrap_or_default();
            }
        }
        pods.retain(|ip| !is_link_local(*ip));
        pods
    }

    /// The pod's addresses where rules of `kind` are looked up by them:
    /// masquerading (port mappings are found by their host ports).
    pub(crate) fn pod_addresses_for(&mut self, kind: RuleKind) -> Vec<IpAddr> {
        match kind {
            RuleKind::Masquerade => self.pod_addresses(),
            RuleKind::PortMappings => Vec::new(),
        }
    }

    fn check_pod_ip(&self, ip: IpAddress) -> Result<(), Error> {
        if self.grants.is_pod_ip(ip.into()) {
            Ok(())
        } else {
            Err(Error::denied(format!(
                "{ip} is not an address of this attachment (prevResult or IPAM result)"
            )))
        }
    }
}

impl Host for HostState {
    fn add_masquerade(&mut self, backend: Backend, rules: Vec<Masquerade>) -> Result<(), CniError> {
        for r in &rules {
            self.check_pod_ip(r.source.addr)?;
        }
        let owner = self.owner();
        self.kernel()?.fw_add_masquerade(backend, &owner, &rules)?;
        self.undo.push(Undo::Firewall(RuleKind::Masquerade));
        Ok(())
    }

    fn add_port_mappings(
        &mut self,
        backend: Backend,
        mappings: Vec<PortMapping>,
        opts: PortOptions,
    ) -> Result<(), CniError> {
        for m in &mappings {
            self.check_pod_ip(m.container_ip)?;
        }
        crate::firewall::validate_mappings(&mappings)?;
        crate::firewall::validate_options(&opts)?;
        let owner = self.owner();
        self.kernel()?
            .fw_add_port_mappings(backend, &owner, &mappings, &opts)?;
        self.undo.push(Undo::Firewall(RuleKind::PortMappings));
        Ok(())
    }

    fn remove(&mut self, kind: RuleKind) -> Result<(), CniError> {
        let owner = self.owner();
        let pods = self.pod_addresses_for(kind);
        Ok(self.kernel()?.fw_remove(&owner, kind, &pods)?)
    }

    fn remove_host_ports(&mut self, ports: Vec<HostPort>) -> Result<(), CniError> {
        let owner = self.owner();
        let pods = self.pod_addresses();
        Ok(self.kernel()?.fw_remove_host_ports(&owner, &ports, &pods)?)
    }

    fn list(&mut self, kind: RuleKind) -> Result<Owned, CniError> {
        let owner = self.owner();
        let pods = self.pod_addresses_for(kind);
        Ok(self.kernel()?.fw_list(&owner, kind, &pods)?)
    }

    fn port_mappings_of(
        &mut self,
        mappings: Vec<PortMapping>,
    ) -> Result<Vec<PortMapping>, CniError> {
        crate::firewall::validate_mappings(&mappings)?;
        let owner = self.owner();
        Ok(self.kernel()?.fw_port_mappings_of(&owner, &mappings)?)
    }

    fn gc(&mut self, kind: RuleKind, valid: Vec<Attachment>) -> Result<(), CniError> {
        let network = self.inv.conf.name.clone();
        let valid: Vec<Owner> = valid
            .into_iter()
            .map(|a| Owner {
                network: network.clone(),
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect();
        Ok(self.kernel()?.fw_gc(&network, kind, &valid)?)
    }
}

/// IPv6 link-local (fe80::/10): never a pod address the firewall knows.
fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}
