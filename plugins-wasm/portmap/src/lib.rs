//! portmap: a chained plugin that forwards host ports to the container, as
//! the reference portmap plugin does (same keys), with the rules kept by
//! the host in its own nftables table or iptables chains.
//!
//! ADD: needs `prevResult`; with no `runtimeConfig.portMappings` it passes
//! the previous result through. Otherwise each mapping goes to the
//! container addresses of its family (a mapping with `hostIP` to those of
//! that family, one without to every container address), with hairpin and
//! localhost masquerading when `snat` (which, for IPv4 mappings, also sets
//! `route_localnet` on the bridge: the first interface of the result
//! outside the container, skipped when there is none).
//! Returns the previous result unchanged.
//! DEL: removes this attachment's port mappings; always, also without
//! `prevResult`, mappings or namespace, and succeeds when there are none.
//! The host finds them by the host ports of `runtimeConfig.portMappings`
//! (the runtime passes the same ones as to ADD), or, without those, by
//! reading every pod's.
//! CHECK: the host still has every rule ADD asked for (a no-op without
//! mappings), looked up by key. A pod without an IPv6 address has no IPv6
//! rules to check.
//! GC: removes the port mappings of attachments no longer valid.
//!
//! The host fills in the rules' owner (network, container ID, interface), so
//! the plugin can only ever touch its own attachment's rules.

mod conditions;
mod config;
mod rules;

use config::Conf;
use wasm_cni_sdk::firewall::{self, RuleKind};
use wasm_cni_sdk::{
    nat, netns, prev_result, sysctl, CniError, CniResult, Error, IpAddress, NetworkRequest, Plugin,
    Request,
};

struct Portmap;

/// Lets 127.0.0.1 be DNATed to a pod behind `bridge`, for connections to a
/// host port from the node's localhost.
fn route_localnet(result: &CniResult) -> Result<(), CniError> {
    let Some(bridge) = result.interfaces.iter().find(|i| i.sandbox.is_none()) else {
        return Ok(());
    };
    let key = format!("net.ipv4.conf.{}.route_localnet", bridge.name);
    sysctl::set(&netns::host(), &key, "1").map_err(|e| Error::context(e, format!("set {key}")))
}

impl Plugin for Portmap {
    fn add(req: Request) -> Result<CniResult, CniError> {
        let conf = Conf::parse(&req.config)?;
        let prev = prev_result(&req, "portmap")?;
        if conf.mappings.is_empty() {
            return Ok(prev.clone());
        }
        let ips = nat::container_ips(prev);
        let mappings = rules::expand(&conf.mappings, &ips);
        if mappings.is_empty() {
            wasm_cni_sdk::log(
                wasm_cni_sdk::log::Level::Warn,
                "portmap: prevResult has no container address for the port mappings",
            );
            return Ok(prev.clone());
        }
        if conf.snat
            && mappings
                .iter()
                .any(|m| matches!(m.container_ip, IpAddress::V4(_)))
        {
            route_localnet(prev)?;
        }
        firewall::add_port_mappings(conf.backend, &mappings, &rules::options(&conf, &ips))
            .map_err(|e| Error::context(e, "add port mappings"))?;
        Ok(prev.clone())
    }

    fn del(req: Request) -> Result<(), CniError> {
        let conf = Conf::parse(&req.config)?;
        firewall::remove_host_ports(&rules::host_ports(&conf.mappings))
            .map_err(|e| Error::context(e, "remove port mappings"))
    }

    fn check(req: Request) -> Result<(), CniError> {
        let conf = Conf::parse(&req.config)?;
        if conf.mappings.is_empty() {
            return Ok(());
        }
        let prev = prev_result(&req, "portmap")?;
        let want = rules::expand(&conf.mappings, &nat::container_ips(prev));
        if want.is_empty() {
            return Ok(());
        }
        let have = firewall::port_mappings_of(&want)?;
        match rules::missing(&have, &want) {
            Some(m) => Err(Error::plugin(format!(
                "port mapping {} is missing",
                rules::describe(m)
            ))),
            None => Ok(()),
        }
    }

    fn status(req: NetworkRequest) -> Result<(), CniError> {
        Conf::parse(&req.config)?;
        Ok(())
    }

    fn gc(req: NetworkRequest) -> Result<(), CniError> {
        Conf::parse(&req.config)?;
        firewall::gc(RuleKind::PortMappings, &req.valid_attachments)
            .map_err(|e| Error::context(e, "collect port mappings"))
    }
}

wasm_cni_sdk::export!(Portmap);
