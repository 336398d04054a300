//! The real kernel: rtnetlink over one socket per namespace. The socket for
//! the container namespace is opened inside it once (the thread enters the
//! namespace only to create the socket) and used for every later request, so
//! nothing switches namespaces twice.

mod addr;
mod link;
mod route;

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use rtnetlink::Handle;
use tokio::runtime::Runtime;

use super::{netns, sysctl, Kernel, Ns};
use crate::bindings::cni::plugin::link::{BridgeOptions, LinkInfo, VethOptions, VethPair};
use crate::bindings::cni::plugin::route::RouteSpec;
use crate::bindings::IpNet;
use crate::error::{Error, Result};
use crate::firewall::{
    self, Choice, HostPort, Masquerade, Owned, Owner, PortMapping, PortOptions, RuleKind,
};

/// The container namespace, opened on first use; its netlink socket is
/// made on the first request for it (firewall plugins never need one).
struct Container {
    file: File,
    handle: Option<Handle>,
}

pub struct NetlinkKernel {
    rt: Runtime,
    host: Option<Handle>,
    netns_path: Option<PathBuf>,
    container: Option<Container>,
    /// Indexes of the links this invocation has looked up or made, by
    /// namespace and name. A link keeps its index for life, and the names
    /// a plugin works on are its attachment's own (its veth ends, its
    /// bridge), so a bridge ADD asks the kernel for each once instead of
    /// before every request. Deleting a link here forgets them all.
    indexes: HashMap<(Ns, String), u32>,
}

/// The errno of a failed netlink request.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// A netlink failure as a CNI I/O error naming what was being done.
pub(crate) fn nl_err(what: impl std::fmt::Display, e: rtnetlink::Error) -> Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => Error::io(format!("{what}: {}", m.to_io())),
        other => Error::io(format!("{what}: {other}")),
    }
}

/// A route netlink socket with strict checking (`NETLINK_GET_STRICT_CHK`):
/// the kernel then honours the filters of a dump request's header (the
/// link of an address dump, the table of a route dump) instead of sending
/// every object of the namespace for the caller to sift — an address dump
/// of the bridge on a node with 1000 pods would otherwise carry every
/// veth's link-local address. Dump requests leave the header fields the
/// kernel does not filter on zero, as strict checking requires.
fn connect() -> Result<Handle> {
    use netlink_sys::AsyncSocket;
    let (mut conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::io(format!("open netlink socket: {e}")))?;
    conn.socket_mut()
        .socket_mut()
        .set_netlink_get_strict_chk(true)
        .map_err(|e| Error::io(format!("netlink socket: strict checking: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

impl NetlinkKernel {
    /// `netns` is the invocation's `CNI_NETNS`; it is opened on first use.
    pub fn new(netns: Option<PathBuf>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::io(format!("start netlink runtime: {e}")))?;
        Ok(NetlinkKernel {
            rt,
            host: None,
            netns_path: netns,
            container: None,
            indexes: HashMap::new(),
        })
    }

    fn open_container(&mut self) -> Result<&mut Container> {
        if self.container.is_none() {
            let path = self
                .netns_path
                .as_ref()
                .ok_or_else(|| Error::env("CNI_NETNS: not given"))?;
            let file = File::open(path).map_err(|e| {
                Error::io(format!(
                    "CNI_NETNS: open network namespace {}: {e}",
                    path.display()
                ))
            })?;
            self.container = Some(Container { file, handle: None });
        }
        self.container
            .as_mut()
            .ok_or_else(|| Error::internal("container namespace not opened"))
    }

    /// The netlink socket inside the container namespace, made once.
    fn container_handle(&mut self) -> Result<Handle> {
        self.open_container()?;
        let container = self
            .container
            .as_mut()
            .ok_or_else(|| Error::internal("container namespace not opened"))?;
        if let Some(h) = &container.handle {
            return Ok(h.clone());
        }
        let _guard = self.rt.enter();
        let handle = netns::within(&container.file, connect)??;
        container.handle = Some(handle.clone());
        Ok(handle)
    }

    fn handle(&mut self, ns: Ns) -> Result<Handle> {
        match ns {
            Ns::Host => {
                if self.host.is_none() {
                    let _guard = self.rt.enter();
                    self.host = Some(connect()?);
                }
                self.host
                    .clone()
                    .ok_or_else(|| Error::internal("host netlink socket not opened"))
            }
            Ns::Container => self.container_handle(),
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn learn(&mut self, ns: Ns, link: &LinkInfo) {
        self.indexes.insert((ns, link.name.clone()), link.index);
    }

    /// The index of link `name` in `ns`: known, or asked of the kernel.
    fn index(&mut self, ns: Ns, name: &str) -> Result<u32> {
        if let Some(index) = self.indexes.get(&(ns, name.to_string())) {
            return Ok(*index);
        }
        let h = self.handle(ns)?;
        let link = self
            .block_on(link::get(&h, name))?
            .ok_or_else(|| Error::io(format!("link {name} not found")))?;
        self.learn(ns, &link);
        Ok(link.index)
    }
}

impl Kernel for NetlinkKernel {
    fn has_container(&mut self) -> bool {
        self.open_container().is_ok()
    }

    fn link_get(&mut self, ns: Ns, name: &str) -> Result<Option<LinkInfo>> {
        let h = self.handle(ns)?;
        let found = self.block_on(link::get(&h, name))?;
        if let Some(link) = &found {
            self.learn(ns, link);
        }
        Ok(found)
    }

    fn bridge_ensure(&mut self, name: &str, opts: &BridgeOptions) -> Result<(LinkInfo, bool)> {
        let h = self.handle(Ns::Host)?;
        let ensured = self.block_on(link::ensure_bridge(&h, name, opts))?;
        self.learn(Ns::Host, &ensured.0);
        Ok(ensured)
    }

    fn veth_create(&mut self, host_name: &str, opts: &VethOptions) -> Result<VethPair> {
        let h = self.handle(Ns::Host)?;
        let c = self.handle(Ns::Container)?;
        let fd = self.open_container()?.file.as_raw_fd();
        let pair = self.block_on(link::create_veth(&h, &c, fd, host_name, opts))?;
        self.learn(Ns::Host, &pair.host);
        self.learn(Ns::Container, &pair.container);
        Ok(pair)
    }

    fn veth_peer(&mut self, ns: Ns, name: &str) -> Result<Option<LinkInfo>> {
        let here = self.handle(ns)?;
        let other = match ns {
            Ns::Host => Ns::Container,
            Ns::Container => Ns::Host,
        };
        let there = self.handle(other)?;
        self.block_on(link::peer(&here, &there, name))
    }

    fn link_set_up(&mut self, ns: Ns, name: &str, up: bool) -> Result<()> {
        let h = self.handle(ns)?;
        self.block_on(link::set_up(&h, name, up))
    }

    fn link_set_master(&mut self, name: &str, bridge: &str) -> Result<()> {
        let master = self.index(Ns::Host, bridge)?;
        let h = self.handle(Ns::Host)?;
        self.block_on(link::set_master(&h, name, bridge, master))
    }

    fn link_set_promisc(&mut self, name: &str, on: bool) -> Result<()> {
        let h = self.handle(Ns::Host)?;
        self.block_on(link::set_promisc(&h, name, on))
    }

    fn link_set_hairpin(&mut self, name: &str, on: bool) -> Result<()> {
        let index = self.index(Ns::Host, name)?;
        let h = self.handle(Ns::Host)?;
        self.block_on(link::set_hairpin(&h, name, index, on))
    }

    fn link_set_port_vlan(&mut self, name: &str, vid: u16, keep_default: bool) -> Result<()> {
        let index = self.index(Ns::Host, name)?;
        let h = self.handle(Ns::Host)?;
        self.block_on(link::set_port_vlan(&h, name, index, vid, keep_default))
    }

    fn link_delete(&mut self, ns: Ns, name: &str) -> Result<()> {
        let h = self.handle(ns)?;
        // A veth's other end goes with it: forget every index.
        self.indexes.clear();
        let Some(found) = self.block_on(link::get(&h, name))? else {
            return Ok(());
        };
        let open = || {
            link::DeleteSockets::open()
                .map_err(|e| Error::io(format!("delete link {name}: open netlink socket: {e}")))
        };
        let socks = match ns {
            Ns::Host => open()?,
            Ns::Container => netns::within(&self.open_container()?.file, open)??,
        };
        link::delete_announced(socks, found.index, name)
    }

    fn addr_add(&mut self, ns: Ns, link: &str, addr: &IpNet) -> Result<()> {
        let index = self.index(ns, link)?;
        let h = self.handle(ns)?;
        self.block_on(addr::add(&h, link, index, addr))
    }

    fn addr_del(&mut self, ns: Ns, link: &str, addr: &IpNet) -> Result<()> {
        let h = self.handle(ns)?;
        self.block_on(addr::del(&h, link, addr))
    }

    fn addr_list(&mut self, ns: Ns, link: &str) -> Result<Vec<IpNet>> {
        let index = self.index(ns, link)?;
        let h = self.handle(ns)?;
        self.block_on(addr::list(&h, index))
    }

    fn route_add(&mut self, ns: Ns, route: &RouteSpec) -> Result<()> {
        let oif = self.index(ns, &route.dev)?;
        let h = self.handle(ns)?;
        self.block_on(route::add(&h, route, oif))
    }

    fn route_del(&mut self, ns: Ns, route: &RouteSpec) -> Result<()> {
        let h = self.handle(ns)?;
        self.block_on(route::del(&h, route))
    }

    fn route_list(&mut self, ns: Ns, dev: &str) -> Result<Vec<RouteSpec>> {
        let index = self.index(ns, dev)?;
        let h = self.handle(ns)?;
        self.block_on(route::list(&h, dev, index))
    }

    fn sysctl_get(&mut self, ns: Ns, key: &str) -> Result<String> {
        match ns {
            Ns::Host => sysctl::read(key),
            Ns::Container => netns::within(&self.open_container()?.file, || sysctl::read(key))?,
        }
    }

    fn sysctl_set(&mut self, ns: Ns, key: &str, value: &str) -> Result<()> {
        if let (Some((link, id)), Ok(v)) = (link::ipv4_conf_key(key), value.trim().parse()) {
            let index = self.index(ns, link)?;
            let h = self.handle(ns)?;
            return self.block_on(link::set_ipv4_conf(&h, link, index, id, v));
        }
        match ns {
            Ns::Host => sysctl::write(key, value),
            Ns::Container => {
                netns::within(&self.open_container()?.file, || sysctl::write(key, value))?
            }
        }
    }

    fn fw_add_masquerade(
        &mut self,
        choice: Choice,
        owner: &Owner,
        rules: &[Masquerade],
    ) -> Result<()> {
        firewall::backend(choice).add_masquerade(owner, rules)
    }

    fn fw_add_port_mappings(
        &mut self,
        choice: Choice,
        owner: &Owner,
        maps: &[PortMapping],
        opts: &PortOptions,
    ) -> Result<()> {
        firewall::backend(choice).add_port_mappings(owner, maps, opts)?;
        // UDP flows that reached the node before the rules existed keep
        // their conntrack entries, and with them their old destination:
        // forget them (this thread is in the node namespace). Only logs.
        super::conntrack::forget_udp_flows(maps);
        Ok(())
    }

    fn fw_remove(&mut self, owner: &Owner, kind: RuleKind, pods: &[IpAddr]) -> Result<()> {
        if kind == RuleKind::Masquerade {
            return firewall::each(|fw| fw.remove_masquerade_of(owner, pods));
        }
        firewall::each(|fw| fw.remove(owner, kind))
    }

    fn fw_remove_host_ports(
        &mut self,
        owner: &Owner,
        ports: &[HostPort],
        pods: &[IpAddr],
    ) -> Result<()> {
        firewall::each(|fw| fw.remove_host_ports(owner, ports, pods))
    }

    fn fw_list(&mut self, owner: &Owner, kind: RuleKind, pods: &[IpAddr]) -> Result<Owned> {
        let mut all = Owned {
            masquerade: vec![],
            port_mappings: vec![],
        };
        match kind {
            RuleKind::Masquerade => {
                for mut fw in firewall::all() {
                    all.masquerade.extend(fw.masquerade_of(owner, pods)?);
                }
            }
            RuleKind::PortMappings => {
                for mut fw in firewall::all() {
                    all.port_mappings
                        .extend(fw.list(owner, kind)?.port_mappings);
                }
            }
        }
        Ok(all)
    }

    fn fw_port_mappings_of(
        &mut self,
        owner: &Owner,
        maps: &[PortMapping],
    ) -> Result<Vec<PortMapping>> {
        let mut found: Vec<PortMapping> = Vec::new();
        for mut fw in firewall::all() {
            for m in fw.port_mappings_of(owner, maps)? {
                if !found.contains(&m) {
                    found.push(m);
                }
            }
        }
        Ok(found)
    }

    fn fw_gc(&mut self, network: &str, kind: RuleKind, valid: &[Owner]) -> Result<()> {
        firewall::each(|fw| fw.gc(network, kind, valid))
    }
}
