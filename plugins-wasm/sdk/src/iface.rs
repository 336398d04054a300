//! Configuring a container interface from an IPAM result: what every
//! interface-creating plugin does after it has its addresses.

use crate::netns::Namespace;
use crate::route::RouteSpec;
use crate::{addr, link, route, sysctl, CniError, CniResult, Error, IpConfig, IpNetExt};

/// The result's addresses of interface `index` (all when unset).
fn ips_of(result: &CniResult, index: u32) -> Vec<&IpConfig> {
    result
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == index))
        .collect()
}

/// Brings `ifname` up with the result's addresses of interface `index`
/// (all when unset) and the result's routes. A route without `gw` goes via
/// the gateway of the address of its family, as the reference plugins do.
/// Duplicate address detection is turned off unless `enable_dad` (when
/// there are IPv6 addresses), and the kernel's gratuitous ARP on a later
/// change of the link is on (`arp_notify`).
///
/// The link need not have a carrier yet (a veth whose peer is still down):
/// the kernel takes the addresses and routes all the same.
pub fn configure(
    ns: &Namespace,
    ifname: &str,
    index: u32,
    result: &CniResult,
    enable_dad: bool,
) -> Result<(), CniError> {
    let ips = ips_of(result, index);
    if !enable_dad && ips.iter().any(|ip| !ip.address.is_ipv4()) {
        // Address DAD takes a second or more and is pointless on a fresh
        // veth; ignore failure when IPv6 is off in the pod.
        let _ = sysctl::set(ns, &format!("net.ipv6.conf.{ifname}.accept_dad"), "0");
    }
    let _ = sysctl::set(ns, &format!("net.ipv4.conf.{ifname}.arp_notify"), "1");
    link::set_up(ns, ifname, true).map_err(|e| Error::context(e, format!("set {ifname} up")))?;
    for ip in &ips {
        addr::add(ns, ifname, ip.address)
            .map_err(|e| Error::context(e, format!("add {} to {ifname}", ip.address)))?;
    }
    for r in &result.routes {
        let gw = r.gw.or_else(|| {
            ips.iter()
                .find(|ip| ip.address.is_ipv4() == r.dst.is_ipv4())
                .and_then(|ip| ip.gateway)
        });
        let spec = RouteSpec {
            dst: r.dst,
            gw,
            dev: ifname.to_string(),
            mtu: r.mtu,
            advmss: r.advmss,
            priority: r.priority,
            table: r.table,
            scope: r.scope,
        };
        route::add(ns, &spec)
            .map_err(|e| Error::context(e, format!("add route {} on {ifname}", r.dst)))?;
    }
    Ok(())
}
