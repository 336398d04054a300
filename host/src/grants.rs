//! What one invocation may touch, decided before the plugin is instantiated.
//!
//! Deny by default. A network plugin may touch, in the node namespace, the
//! bridge named by the configuration's `bridge` key (for the `bridge` plugin
//! itself, `cni0` when the key is absent), the
//! links it creates and the host end of its own container interface; in the
//! container namespace, `CNI_IFNAME` and `lo`. It may delegate to the IPAM
//! plugin named by `ipam.type`. An IPAM plugin may use the reservation store
//! of this network only, and nothing else.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::cni::{Env, NetConf};
use crate::error::{Error, Result};
use crate::kernel::Ns;

/// Where host-local keeps reservations unless `ipam.dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// The bridge of a configuration without a `bridge` key.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// Per-interface sysctl leaves a plugin may set on a link it may touch.
const IFACE_SYSCTLS: &[&str] = &[
    "arp_notify",
    "accept_dad",
    "enhanced_dad",
    "route_localnet",
    "disable_ipv6",
    "forwarding",
    "proxy_arp",
    "accept_ra",
];
/// Namespace-wide sysctls a plugin may set.
const GLOBAL_SYSCTLS: &[&str] = &["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Creates or changes interfaces (bridge, loopback, user plugins).
    Network,
    /// Allocates addresses from a store (host-local).
    Ipam,
}

#[derive(Debug, Clone)]
pub struct Grants {
    pub role: Role,
    host_links: HashSet<String>,
    container_links: HashSet<String>,
    /// The container interface name (`CNI_IFNAME`).
    pub ifname: String,
    /// The IPAM plugin this invocation may delegate to.
    pub ipam: Option<String>,
    /// The store directory of an IPAM invocation: `<dataDir>/<network>`.
    pub store: Option<PathBuf>,
    /// The pod's addresses (prevResult, then IPAM results): the only ones a
    /// plugin may masquerade or forward host ports to.
    pod_ips: HashSet<IpAddr>,
}

impl Grants {
    pub fn network(conf: &NetConf, env: &Env) -> Self {
        // The bridge named by `bridge`; `cni0` only for the bridge plugin,
        // whose default it is.
        let bridge = conf
            .str_key("bridge")
            .or((conf.plugin_type == "bridge").then_some(DEFAULT_BRIDGE));
        let mut host_links: HashSet<String> = bridge.into_iter().map(str::to_string).collect();
        let mut pod_ips = HashSet::new();
        if let Some(prev) = &conf.prev_result {
            // The node-side interfaces of this attachment (bridge, host veth).
            host_links.extend(
                prev.interfaces
                    .iter()
                    .filter(|i| i.sandbox.is_none())
                    .map(|i| i.name.clone()),
            );
            pod_ips.extend(prev.ips.iter().map(|ip| ip.address.ip()));
        }
        Grants {
            role: Role::Network,
            host_links,
            container_links: HashSet::from([env.ifname.clone(), "lo".to_string()]),
            ifname: env.ifname.clone(),
            ipam: conf.ipam_type.clone(),
            store: None,
            pod_ips,
        }
    }

    /// Grants the addresses an IPAM plugin allocated for this attachment.
    pub fn allow_pod_ips(&mut self, ips: impl IntoIterator<Item = IpAddr>) {
        self.pod_ips.extend(ips);
    }

    /// The pod's addresses this invocation knows (see [`Grants::network`]).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        self.pod_ips.iter().copied().collect()
    }

    pub fn is_pod_ip(&self, ip: IpAddr) -> bool {
        self.role == Role::Network && self.pod_ips.contains(&ip)
    }

    pub fn ipam(conf: &NetConf, env: &Env) -> Result<Self> {
        let data_dir = conf
            .raw
            .get("ipam")
            .and_then(|i| i.get("dataDir"))
            .map(|d| {
                d.as_str()
                    .ok_or_else(|| Error::config("ipam.dataDir: must be a string"))
            })
            .transpose()?
            .unwrap_or(DEFAULT_DATA_DIR);
        let data_dir = Path::new(data_dir);
        if !data_dir.is_absolute() {
            return Err(Error::config(format!(
                "ipam.dataDir: must be an absolute path, got {}",
                data_dir.display()
            )));
        }
        Ok(Grants {
            role: Role::Ipam,
            host_links: HashSet::new(),
            container_links: HashSet::new(),
            ifname: env.ifname.clone(),
            ipam: None,
            // The network name is validated path-safe by NetConf::parse.
            store: Some(data_dir.join(&conf.name)),
            pod_ips: HashSet::new(),
        })
    }

    fn links(&self, ns: Ns) -> &HashSet<String> {
        match ns {
            Ns::Host => &self.host_links,
            Ns::Container => &self.container_links,
        }
    }

    /// Fails unless the link may be touched.
    pub fn check_link(&self, ns: Ns, name: &str) -> Result<()> {
        if self.role == Role::Network && self.links(ns).contains(name) {
            Ok(())
        } else {
            Err(Error::denied(format!(
                "link {name:?} in the {ns} namespace is outside this invocation's grant"
            )))
        }
    }

    /// Grants a link the invocation created or proved its own.
    pub fn allow_link(&mut self, ns: Ns, name: &str) {
        match ns {
            Ns::Host => self.host_links.insert(name.to_string()),
            Ns::Container => self.container_links.insert(name.to_string()),
        };
    }

    /// Fails unless the sysctl key is on the allowed list for a link the
    /// invocation may touch.
    pub fn check_sysctl(&self, ns: Ns, key: &str) -> Result<()> {
        let deny = || Err(Error::denied(format!("sysctl {key:?} is not allowed")));
        if self.role != Role::Network {
            return deny();
        }
        if GLOBAL_SYSCTLS.contains(&key) {
            return Ok(());
        }
        for prefix in ["net.ipv4.conf.", "net.ipv6.conf."] {
            if let Some((ifname, leaf)) = key.strip_prefix(prefix).and_then(|r| r.rsplit_once('.'))
            {
                if IFACE_SYSCTLS.contains(&leaf) && self.links(ns).contains(ifname) {
                    return Ok(());
                }
            }
        }
        deny()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(conf: &str) -> Grants {
        let conf = NetConf::parse(conf.as_bytes()).unwrap();
        let env = Env {
            ifname: "eth0".into(),
            ..Env::default()
        };
        Grants::network(&conf, &env)
    }

    #[test]
    fn network_plugins_get_their_bridge_and_interface_only() {
        let g = grants(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"br9"}"#);
        assert!(g.check_link(Ns::Host, "br9").is_ok());
        assert!(g.check_link(Ns::Host, "cni0").is_err());
        assert!(g.check_link(Ns::Host, "eth0").is_err());
        assert!(g.check_link(Ns::Container, "eth0").is_ok());
        assert!(g.check_link(Ns::Container, "lo").is_ok());
        assert!(g.check_link(Ns::Container, "eth1").is_err());
        let g = grants(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#);
        assert!(g.check_link(Ns::Host, "cni0").is_ok());
        let g = grants(r#"{"cniVersion":"1.0.0","name":"n","type":"mine"}"#);
        assert!(g.check_link(Ns::Host, "cni0").is_err());
    }

    #[test]
    fn sysctls_are_listed_and_scoped_to_granted_links() {
        let g = grants(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#);
        assert!(g.check_sysctl(Ns::Host, "net.ipv4.ip_forward").is_ok());
        assert!(g
            .check_sysctl(Ns::Container, "net.ipv6.conf.eth0.accept_dad")
            .is_ok());
        assert!(g
            .check_sysctl(Ns::Host, "net.ipv4.conf.cni0.route_localnet")
            .is_ok());
        assert!(g
            .check_sysctl(Ns::Host, "net.ipv4.conf.eth7.route_localnet")
            .is_err());
        assert!(g.check_sysctl(Ns::Host, "kernel.core_pattern").is_err());
        assert!(g
            .check_sysctl(Ns::Container, "net.ipv4.conf.eth0.rp_filter")
            .is_err());
    }

    #[test]
    fn only_the_pods_own_addresses_and_interfaces_are_granted_to_chained_plugins() {
        let g = grants(
            r#"{"cniVersion":"1.0.0","name":"n","type":"portmap","prevResult":{"cniVersion":"1.0.0",
            "interfaces":[{"name":"br0"},{"name":"eth0","sandbox":"/run/netns/p"}],
            "ips":[{"address":"10.1.0.5/24","interface":1}]}}"#,
        );
        assert!(g.is_pod_ip("10.1.0.5".parse().unwrap()));
        assert!(!g.is_pod_ip("10.1.0.6".parse().unwrap()));
        assert!(g
            .check_sysctl(Ns::Host, "net.ipv4.conf.br0.route_localnet")
            .is_ok());
        assert!(g.check_link(Ns::Host, "cni0").is_err());
    }

    #[test]
    fn ipam_store_is_scoped_to_the_network() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"net1","type":"bridge","ipam":{"type":"host-local","dataDir":"/tmp/x"}}"#,
        )
        .unwrap();
        let g = Grants::ipam(&conf, &Env::default()).unwrap();
        assert_eq!(g.store.as_deref(), Some(Path::new("/tmp/x/net1")));
        assert!(g.check_link(Ns::Container, "eth0").is_err());
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"b","ipam":{"type":"host-local","dataDir":"rel"}}"#,
        )
        .unwrap();
        assert_eq!(Grants::ipam(&conf, &Env::default()).unwrap_err().code, 7);
    }
}
