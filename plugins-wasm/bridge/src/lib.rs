//! bridge: connects the container to a Linux bridge on the node through a
//! veth pair, with addresses from the IPAM plugin, as the reference bridge
//! plugin does (same keys, same result).
//!
//! ADD: ensure the bridge -> veth pair with the container end named
//! `CNI_IFNAME` -> IPAM ADD -> addresses and routes in the container ->
//! attach (the host makes a bridge port without IPv6 addresses of its own),
//! hairpin, VLAN -> the host's end up -> with `ipMasq`, masquerade of the
//! container's addresses (host firewall) -> gateway address on the bridge
//! and IP forwarding.
//! DEL, best effort: IPAM DEL, delete the container interface (its peer goes
//! too), remove the masquerade rules; the first error is returned.
//! CHECK: the bridge, the veth, the container's addresses and routes and the
//! masquerade rules still match the previous result. GC: IPAM GC and, with
//! `ipMasq`, the masquerade rules of attachments no longer valid. The host
//! undoes a failed ADD.

mod config;

use std::net::IpAddr;

use config::Conf;
use wasm_cni_sdk::firewall::{self, RuleKind};
use wasm_cni_sdk::link::{BridgeOptions, LinkInfo, VethOptions};
use wasm_cni_sdk::netns::Namespace;
use wasm_cni_sdk::{
    addr, iface, ipam, link, nat, netns, route, sysctl, CniError, CniResult, Error, Interface,
    IpNet, IpNetExt, NetworkRequest, Plugin, Request, Route,
};

struct Bridge;

/// Index of the container interface in the result: [bridge, host veth, container].
const CONTAINER_IF: u32 = 2;

fn interface(l: &LinkInfo, in_container: bool) -> Interface {
    Interface {
        name: l.name.clone(),
        mac: l.mac.clone(),
        mtu: None,
        sandbox: in_container.then(String::new),
        socket_path: None,
        pci_id: None,
    }
}

fn default_route(v4: bool) -> IpNet {
    let addr = if v4 { "0.0.0.0".parse() } else { "::".parse() };
    IpNet {
        addr: addr.unwrap_or(IpAddr::from([0u8; 4])).into(),
        prefix_len: 0,
    }
}

/// Gateways the IPAM plugin left out are the first address of the subnet;
/// the default route goes via the gateway when asked.
fn complete(conf: &Conf, result: &mut CniResult) {
    for ip in &mut result.ips {
        ip.interface = Some(CONTAINER_IF);
        if ip.gateway.is_none() && conf.is_gateway {
            let first = match ip.address.network() {
                IpAddr::V4(n) => IpAddr::from(u32::from(n).wrapping_add(1).to_be_bytes()),
                IpAddr::V6(n) => IpAddr::from(u128::from(n).wrapping_add(1).to_be_bytes()),
            };
            ip.gateway = Some(first.into());
        }
    }
    if conf.is_default_gateway {
        for ip in result.ips.clone() {
            let Some(gw) = ip.gateway else { continue };
            let dst = default_route(ip.address.is_ipv4());
            if !result.routes.iter().any(|r| r.dst == dst) {
                result.routes.push(Route {
                    dst,
                    gw: Some(gw),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                });
            }
        }
    }
}

/// The gateway address (with the subnet's prefix) on the bridge. Another
/// IPv4 address, or an IPv6 one of an overlapping subnet, is an error unless
/// `forceAddress`, which replaces it.
fn ensure_gateway_addr(conf: &Conf, host: &Namespace, gw: IpNet) -> Result<(), CniError> {
    for existing in addr::list(host, &conf.bridge)? {
        if existing == gw {
            return Ok(());
        }
        if existing.is_ipv4() != gw.is_ipv4() {
            continue;
        }
        let clash = gw.is_ipv4() || existing.contains(gw.ip()) || gw.contains(existing.ip());
        if !clash {
            continue;
        }
        if !conf.force_address {
            return Err(Error::plugin(format!(
                "bridge {} already has an IP address different from {gw} ({existing}); set forceAddress to replace it",
                conf.bridge
            )));
        }
        addr::del(host, &conf.bridge, existing)?;
    }
    addr::add(host, &conf.bridge, gw)
}

fn setup_gateway(conf: &Conf, host: &Namespace, result: &CniResult) -> Result<(), CniError> {
    let mut forwarding = (false, false);
    for ip in &result.ips {
        let Some(gw) = ip.gateway else { continue };
        let gw_net = IpNet {
            addr: gw,
            prefix_len: ip.address.prefix_len,
        };
        ensure_gateway_addr(conf, host, gw_net)?;
        if ip.address.is_ipv4() {
            forwarding.0 = true;
        } else {
            forwarding.1 = true;
        }
    }
    if forwarding.0 {
        sysctl::set(host, "net.ipv4.ip_forward", "1")?;
    }
    if forwarding.1 {
        sysctl::set(host, "net.ipv6.conf.all.forwarding", "1")?;
    }
    Ok(())
}

/// The result's addresses of the container interface.
fn container_ips(result: &CniResult) -> Vec<IpNet> {
    result
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == CONTAINER_IF))
        .map(|ip| ip.address)
        .collect()
}

/// Keeps the first error of a best-effort sequence.
fn keep_first(first: &mut Option<CniError>, r: Result<(), CniError>) {
    if let Err(e) = r {
        first.get_or_insert(e);
    }
}

impl Plugin for Bridge {
    fn add(req: Request) -> Result<CniResult, CniError> {
        let conf = Conf::parse(&req.config, &req.args)?;
        let host = netns::host();
        let container = netns::container()?;

        let bridge = link::ensure_bridge(
            &conf.bridge,
            &BridgeOptions {
                mtu: conf.mtu,
                promisc: conf.promisc,
                vlan_filtering: conf.vlan.is_some(),
                mac: None,
                multicast_snooping: conf.multicast_snooping,
            },
        )?;
        let pair = link::create_veth(
            &container,
            &VethOptions {
                container_ifname: req.ifname.clone(),
                mtu: conf.mtu.or(Some(bridge.mtu)).filter(|m| *m > 0),
                container_mac: conf.mac.clone(),
            },
        )?;
        let host_if = &pair.host.name;

        let mut result = CniResult {
            interfaces: vec![
                interface(&bridge, false),
                interface(&pair.host, false),
                interface(&pair.container, true),
            ],
            ips: vec![],
            routes: vec![],
            dns: None,
        };
        // The container's end is set up while the host's end is still down:
        // the link has no carrier yet, and the kernel takes addresses and
        // routes on it all the same. The host's end comes up last: that
        // brings the carrier up and starts the kernel's link-watch work for
        // the new bridge port, which holds RTNL for a time that grows with
        // the bridge's ports; the requests after it need no RTNL (the
        // masquerade batch) or only on the node's first pod (the gateway).
        if conf.ipam.is_some() {
            let allocated = ipam::add()?;
            result.ips = allocated.ips;
            result.routes = allocated.routes;
            result.dns = allocated.dns;
            complete(&conf, &mut result);
            iface::configure(
                &container,
                &req.ifname,
                CONTAINER_IF,
                &result,
                conf.enable_dad,
            )?;
        } else {
            link::set_up(&container, &req.ifname, true)?;
        }

        link::set_master(host_if, &conf.bridge)?;
        if conf.hairpin {
            link::set_hairpin(host_if, true)?;
        }
        if let Some(vid) = conf.vlan {
            link::set_port_vlan(host_if, vid, conf.preserve_default_vlan)?;
        }
        // The bridge takes a port's MAC when the first one joins: report the
        // MAC it has now.
        if let Some(now) = link::get(&host, &conf.bridge)? {
            result.interfaces[0] = interface(&now, false);
        }
        link::set_up(&host, host_if, true)?;

        if conf.ipam.is_some() {
            if let Some(backend) = conf.ip_masq {
                nat::add_masquerade(backend, &container_ips(&result))?;
            }
            if conf.is_gateway {
                setup_gateway(&conf, &host, &result)?;
            }
        }
        if conf.dns.is_some() {
            result.dns = conf.dns;
        }
        Ok(result)
    }

    fn del(req: Request) -> Result<(), CniError> {
        let conf = Conf::parse(&req.config, &req.args)?;
        let mut first = None;
        // Rules first, the address last: once released, the address may be
        // handed to another pod at once.
        if conf.ip_masq.is_some() {
            keep_first(
                &mut first,
                firewall::remove(RuleKind::Masquerade)
                    .map_err(|e| Error::context(e, "remove masquerade")),
            );
        }
        if req.has_netns {
            keep_first(
                &mut first,
                netns::container().and_then(|c| link::delete(&c, &req.ifname)),
            );
        }
        if conf.ipam.is_some() {
            keep_first(&mut first, ipam::del());
        }
        first.map_or(Ok(()), Err)
    }

    fn check(req: Request) -> Result<(), CniError> {
        let conf = Conf::parse(&req.config, &req.args)?;
        let prev = req
            .prev_result
            .as_ref()
            .ok_or_else(|| Error::config("prevResult: required for CHECK"))?;
        if conf.ipam.is_some() {
            ipam::check()?;
        }
        let host = netns::host();
        let container = netns::container()?;
        let bridge = link::get(&host, &conf.bridge)?
            .filter(|b| b.kind == "bridge")
            .ok_or_else(|| Error::plugin(format!("bridge {} is missing", conf.bridge)))?;
        let cif = link::get(&container, &req.ifname)?.ok_or_else(|| {
            Error::plugin(format!("container interface {} is missing", req.ifname))
        })?;
        if let Some(want) = prev
            .interfaces
            .iter()
            .find(|i| i.name == req.ifname && i.sandbox.is_some())
        {
            if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&cif.mac) {
                return Err(Error::plugin(format!(
                    "container interface {} has MAC {}, the result says {}",
                    req.ifname, cif.mac, want.mac
                )));
            }
        }
        let peer = link::veth_peer(&container, &req.ifname)?
            .ok_or_else(|| Error::plugin(format!("{} has no veth peer on the node", req.ifname)))?;
        if peer.master != Some(bridge.index) {
            return Err(Error::plugin(format!(
                "host interface {} is not attached to bridge {}",
                peer.name, conf.bridge
            )));
        }
        let have = addr::list(&container, &req.ifname)?;
        let ips = container_ips(prev);
        for ip in &ips {
            if !have.contains(ip) {
                return Err(Error::plugin(format!(
                    "container interface {} lacks address {ip}",
                    req.ifname
                )));
            }
        }
        let routes = route::list(&container, &req.ifname)?;
        for r in &prev.routes {
            if !routes.iter().any(|have| have.dst == r.dst) {
                return Err(Error::plugin(format!(
                    "route to {} on {} is missing",
                    r.dst, req.ifname
                )));
            }
        }
        if conf.ip_masq.is_some() {
            nat::check_masquerade(&ips)?;
        }
        Ok(())
    }

    fn status(req: NetworkRequest) -> Result<(), CniError> {
        let conf = Conf::parse(&req.config, &[])?;
        if conf.ipam.is_some() {
            ipam::status()?;
        }
        Ok(())
    }

    /// Best effort like DEL: both collections run, the first error is returned.
    fn gc(req: NetworkRequest) -> Result<(), CniError> {
        let conf = Conf::parse(&req.config, &[])?;
        let mut first = None;
        if conf.ipam.is_some() {
            keep_first(&mut first, ipam::gc());
        }
        if conf.ip_masq.is_some() {
            keep_first(
                &mut first,
                firewall::gc(RuleKind::Masquerade, &req.valid_attachments)
                    .map_err(|e| Error::context(e, "collect masquerade rules")),
            );
        }
        first.map_or(Ok(()), Err)
    }
}

wasm_cni_sdk::export!(Bridge);
