//! A recording mock kernel. Plugin authors unit-test components against it
//! without root: it keeps links, addresses, routes and sysctls in memory,
//! and records every call as one line of text to assert on.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::bindings::cni::plugin::link::{BridgeOptions, LinkInfo, VethOptions, VethPair};
use crate::bindings::cni::plugin::route::RouteSpec;
use crate::bindings::IpNet;
use crate::error::{Error, Result};
use crate::firewall::{
    choice_name, kind_name, protocol_name, Choice, Masquerade, Owned, Owner, PortMapping,
    PortOptions, RuleKind,
};
use crate::kernel::{Kernel, Ns};

#[derive(Debug, Default)]
pub struct MockState {
    /// Every call, e.g. `link.set-up container eth0 true`.
    pub calls: Vec<String>,
    pub links: BTreeMap<(Ns, String), LinkInfo>,
    pub addrs: BTreeMap<(Ns, String), Vec<IpNet>>,
    pub routes: BTreeMap<Ns, Vec<RouteSpec>>,
    pub sysctls: BTreeMap<(Ns, String), String>,
    /// Host-side peer of each container interface and back.
    pub peers: BTreeMap<(Ns, String), String>,
    pub has_container: bool,
    /// Firewall rules by owner tag.
    pub masquerade: BTreeMap<String, Vec<Masquerade>>,
    pub port_mappings: BTreeMap<String, Vec<PortMapping>>,
    /// Calls whose text starts with this fail with an I/O error.
    pub fail_on: Option<String>,
    next_index: u32,
}

/// A handle to shared mock state; clone it before handing one to the runtime.
#[derive(Debug, Clone, Default)]
pub struct MockKernel(pub Arc<Mutex<MockState>>);

impl MockKernel {
    /// A kernel with `lo` in the container namespace.
    pub fn new() -> Self {
        let k = MockKernel::default();
        {
            let mut s = k.state();
            s.has_container = true;
            s.next_index = 10;
            s.links.insert(
                (Ns::Container, "lo".into()),
                link("lo", 1, "00:00:00:00:00:00", 65536, "", false),
            );
        }
        k
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, MockState> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }
}

fn link(name: &str, index: u32, mac: &str, mtu: u32, kind: &str, up: bool) -> LinkInfo {
    LinkInfo {
        name: name.into(),
        index,
        mac: mac.into(),
        mtu,
        up,
        kind: kind.into(),
        master: None,
    }
}

impl MockState {
    fn record(&mut self, call: String) -> Result<()> {
        let fail = self
            .fail_on
            .as_ref()
            .is_some_and(|f| call.starts_with(f.as_str()));
        self.calls.push(call.clone());
        if fail {
            Err(Error::io(format!("mock failure: {call}")))
        } else {
            Ok(())
        }
    }

    fn mac(&mut self) -> String {
        self.next_index += 1;
        format!("0a:58:00:00:00:{:02x}", self.next_index)
    }

    fn need(&self, ns: Ns, name: &str) -> Result<()> {
        if self.links.contains_key(&(ns, name.to_string())) {
            Ok(())
        } else {
            Err(Error::io(format!("link {name} not found")))
        }
    }
}

impl Kernel for MockKernel {
    fn has_container(&mut self) -> bool {
        self.state().has_container
    }

    fn link_get(&mut self, ns: Ns, name: &str) -> Result<Option<LinkInfo>> {
        let s = self.state();
        Ok(s.links.get(&(ns, name.to_string())).cloned())
    }

    fn bridge_ensure(&mut self, name: &str, opts: &BridgeOptions) -> Result<(LinkInfo, bool)> {
        let mut s = self.state();
        let snooping = opts
            .multicast_snooping
            .map(|on| format!(" multicast-snooping={on}"))
            .unwrap_or_default();
        s.record(format!(
            "link.ensure-bridge {name} mtu={:?} promisc={} vlan-filtering={}{snooping}",
            opts.mtu, opts.promisc, opts.vlan_filtering
        ))?;
        let key = (Ns::Host, name.to_string());
        if let Some(l) = s.links.get(&key) {
            return Ok((l.clone(), false));
        }
        s.next_index += 1;
        let mac = opts.mac.clone().unwrap_or_else(|| s.mac());
        let l = link(
            name,
            s.next_index,
            &mac,
            opts.mtu.unwrap_or(1500),
            "bridge",
            true,
        );
        s.links.insert(key, l.clone());
        Ok((l, true))
    }

    fn veth_create(&mut self, host_name: &str, opts: &VethOptions) -> Result<VethPair> {
        let mut s = self.state();
        s.record(format!(
            "link.create-veth {host_name} {} mtu={:?}",
            opts.container_ifname, opts.mtu
        ))?;
        let ckey = (Ns::Container, opts.container_ifname.clone());
        if s.links.contains_key(&ckey) || s.links.contains_key(&(Ns::Host, host_name.into())) {
            return Err(Error::new(
                crate::error::code::ALREADY_EXISTS,
                format!(
                    "create veth pair {host_name}/{}: an interface of that name exists",
                    opts.container_ifname
                ),
            ));
        }
        let mtu = opts.mtu.unwrap_or(1500);
        s.next_index += 1;
        let host_mac = crate::kernel::format_mac(&crate::kernel::NODE_END_MAC);
        let host = link(host_name, s.next_index, &host_mac, mtu, "veth", false);
        s.next_index += 1;
        let cmac = opts.container_mac.clone().unwrap_or_else(|| s.mac());
        let container = link(
            &opts.container_ifname,
            s.next_index,
            &cmac,
            mtu,
            "veth",
            false,
        );
        s.links.insert((Ns::Host, host_name.into()), host.clone());
        s.links.insert(ckey, container.clone());
        s.peers
            .insert((Ns::Host, host_name.into()), opts.container_ifname.clone());
        s.peers.insert(
            (Ns::Container, opts.container_ifname.clone()),
            host_name.into(),
        );
        Ok(VethPair { host, container })
    }

    fn veth_peer(&mut self, ns: Ns, name: &str) -> Result<Option<LinkInfo>> {
        let s = self.state();
        let other = if ns == Ns::Host {
            Ns::Container
        } else {
            Ns::Host
        };
        Ok(s.peers
            .get(&(ns, name.to_string()))
            .and_then(|p| s.links.get(&(other, p.clone())))
            .cloned())
    }

    fn link_set_up(&mut self, ns: Ns, name: &str, up: bool) -> Result<()> {
        let mut s = self.state();
        s.record(format!("link.set-up {ns} {name} {up}"))?;
        s.need(ns, name)?;
        if let Some(l) = s.links.get_mut(&(ns, name.to_string())) {
            l.up = up;
        }
        Ok(())
    }

    fn link_set_master(&mut self, name: &str, bridge: &str) -> Result<()> {
        let mut s = self.state();
        s.record(format!("link.set-master {name} {bridge}"))?;
        s.need(Ns::Host, bridge)?;
        let master = s
            .links
            .get(&(Ns::Host, bridge.to_string()))
            .map(|b| b.index);
        match s.links.get_mut(&(Ns::Host, name.to_string())) {
            Some(l) => {
                l.master = master;
                Ok(())
            }
            None => Err(Error::io(format!("link {name} not found"))),
        }
    }

    fn link_set_promisc(&mut self, name: &str, on: bool) -> Result<()> {
        self.state().record(format!("link.set-promisc {name} {on}"))
    }

    fn link_set_hairpin(&mut self, name: &str, on: bool) -> Result<()> {
        self.state().record(format!("link.set-hairpin {name} {on}"))
    }

    fn link_set_port_vlan(&mut self, name: &str, vid: u16, keep_default: bool) -> Result<()> {
        self.state().record(format!(
            "link.set-port-vlan {name} {vid} keep-default={keep_default}"
        ))
    }

    fn link_delete(&mut self, ns: Ns, name: &str) -> Result<()> {
        let mut s = self.state();
        s.record(format!("link.delete {ns} {name}"))?;
        if s.links.remove(&(ns, name.to_string())).is_some() {
            s.addrs.remove(&(ns, name.to_string()));
            if let Some(peer) = s.peers.remove(&(ns, name.to_string())) {
                let other = if ns == Ns::Host {
                    Ns::Container
                } else {
                    Ns::Host
                };
                s.links.remove(&(other, peer.clone()));
                s.addrs.remove(&(other, peer.clone()));
                s.peers.remove(&(other, peer));
            }
        }
        Ok(())
    }

    fn addr_add(&mut self, ns: Ns, link: &str, addr: &IpNet) -> Result<()> {
        let mut s = self.state();
        s.record(format!("addr.add {ns} {link} {addr}"))?;
        s.need(ns, link)?;
        let list = s.addrs.entry((ns, link.to_string())).or_default();
        if !list.contains(addr) {
            list.push(*addr);
        }
        Ok(())
    }

    fn addr_del(&mut self, ns: Ns, link: &str, addr: &IpNet) -> Result<()> {
        let mut s = self.state();
        s.record(format!("addr.del {ns} {link} {addr}"))?;
        if let Some(list) = s.addrs.get_mut(&(ns, link.to_string())) {
            list.retain(|a| a != addr);
        }
        Ok(())
    }

    fn addr_list(&mut self, ns: Ns, link: &str) -> Result<Vec<IpNet>> {
        let s = self.state();
        s.need(ns, link)?;
        Ok(s.addrs
            .get(&(ns, link.to_string()))
            .cloned()
            .unwrap_or_default())
    }

    fn route_add(&mut self, ns: Ns, route: &RouteSpec) -> Result<()> {
        let mut s = self.state();
        let gw = route.gw.map(|g| format!(" via {g}")).unwrap_or_default();
        s.record(format!(
            "route.add {ns} {}{gw} dev {}",
            route.dst, route.dev
        ))?;
        s.need(ns, &route.dev)?;
        let list = s.routes.entry(ns).or_default();
        if !list.contains(route) {
            list.push(route.clone());
        }
        Ok(())
    }

    fn route_del(&mut self, ns: Ns, route: &RouteSpec) -> Result<()> {
        let mut s = self.state();
        s.record(format!("route.del {ns} {} dev {}", route.dst, route.dev))?;
        if let Some(list) = s.routes.get_mut(&ns) {
            list.retain(|r| r != route);
        }
        Ok(())
    }

    fn route_list(&mut self, ns: Ns, dev: &str) -> Result<Vec<RouteSpec>> {
        let s = self.state();
        Ok(s.routes
            .get(&ns)
            .map(|l| l.iter().filter(|r| r.dev == dev).cloned().collect())
            .unwrap_or_default())
    }

    fn sysctl_get(&mut self, ns: Ns, key: &str) -> Result<String> {
        let s = self.state();
        Ok(s.sysctls
            .get(&(ns, key.to_string()))
            .cloned()
            .unwrap_or_else(|| "0".into()))
    }

    fn sysctl_set(&mut self, ns: Ns, key: &str, value: &str) -> Result<()> {
        let mut s = self.state();
        s.record(format!("sysctl.set {ns} {key}={value}"))?;
        s.sysctls.insert((ns, key.to_string()), value.to_string());
        Ok(())
    }

    fn fw_add_masquerade(
        &mut self,
        choice: Choice,
        owner: &Owner,
        rules: &[Masquerade],
    ) -> Result<()> {
        let mut s = self.state();
        let list: Vec<String> = rules.iter().map(|r| r.source.to_string()).collect();
        s.record(format!(
            "firewall.add-masquerade {} {}",
            choice_name(choice),
            list.join(" ")
        ))?;
        s.masquerade
            .entry(owner.tag())
            .or_default()
            .extend(rules.iter().cloned());
        Ok(())
    }

    fn fw_add_port_mappings(
        &mut self,
        choice: Choice,
        owner: &Owner,
        maps: &[PortMapping],
        opts: &PortOptions,
    ) -> Result<()> {
        let mut s = self.state();
        let list: Vec<String> = maps
            .iter()
            .map(|m| {
                let host = m.host_ip.map(|h| h.to_string()).unwrap_or_default();
                format!(
                    "{host}:{}/{}->{}:{}",
                    m.host_port,
                    protocol_name(m.protocol),
                    m.container_ip,
                    m.container_port
                )
            })
            .collect();
        s.record(format!(
            "firewall.add-port-mappings {} {} snat={} masq-all={}",
            choice_name(choice),
            list.join(" "),
            opts.snat,
            opts.masq_all
        ))?;
        s.port_mappings
            .entry(owner.tag())
            .or_default()
            .extend(maps.iter().cloned());
        Ok(())
    }

    fn fw_remove(&mut self, owner: &Owner, kind: RuleKind, pods: &[IpAddr]) -> Result<()> {
        let mut s = self.state();
        let mut pods: Vec<String> = pods.iter().map(IpAddr::to_string).collect();
        pods.sort();
        s.record(format!(
            "firewall.remove {} pods=[{}]",
            kind_name(kind),
            pods.join(" ")
        ))?;
        match kind {
            RuleKind::Masquerade => s.masquerade.remove(&owner.tag()),
            RuleKind::PortMappings => s.port_mappings.remove(&owner.tag()).map(|_| vec![]),
        };
        Ok(())
    }

    fn fw_list(&mut self, owner: &Owner, kind: RuleKind, _pods: &[IpAddr]) -> Result<Owned> {
        let s = self.state();
        let tag = owner.tag();
        Ok(Owned {
            masquerade: match kind {
                RuleKind::Masquerade => s.masquerade.get(&tag).cloned().unwrap_or_default(),
                RuleKind::PortMappings => vec![],
            },
            port_mappings: match kind {
                RuleKind::PortMappings => s.port_mappings.get(&tag).cloned().unwrap_or_default(),
                RuleKind::Masquerade => vec![],
            },
        })
    }

    fn fw_gc(&mut self, network: &str, kind: RuleKind, valid: &[Owner]) -> Result<()> {
        let mut s = self.state();
        s.record(format!(
            "firewall.gc {} valid={}",
            kind_name(kind),
            valid.len()
        ))?;
        let prefix = format!("{}:", Owner::network_tag(network));
        let keep: Vec<String> = valid.iter().map(Owner::tag).collect();
        let stale = |tag: &String| tag.starts_with(&prefix) && !keep.contains(tag);
        match kind {
            RuleKind::Masquerade => s.masquerade.retain(|t, _| !stale(t)),
            RuleKind::PortMappings => s.port_mappings.retain(|t, _| !stale(t)),
        }
        Ok(())
    }
}
