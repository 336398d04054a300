//! From the configured mappings and the container's addresses to the
//! rules the host installs.

use std::net::IpAddr;

use wasm_cni_sdk::firewall::{HostPort, PortMapping, PortOptions, Protocol};
use wasm_cni_sdk::{IpNet, IpNetExt};

use crate::config::{Conf, Mapping};

/// Each mapping for each container address of its family: a mapping with a
/// `hostIP` only to addresses of that family, one without to every address.
/// Duplicates are dropped.
pub fn expand(mappings: &[Mapping], container_ips: &[IpNet]) -> Vec<PortMapping> {
    let mut out: Vec<PortMapping> = Vec::new();
    for m in mappings {
        for c in container_ips {
            let cip = c.ip();
            if m.host_ip.is_some_and(|h| h.is_ipv4() != cip.is_ipv4()) {
                continue;
            }
            let rule = PortMapping {
                host_port: m.host_port,
                container_port: m.container_port,
                protocol: m.protocol,
                host_ip: m.host_ip.filter(|h| !h.is_unspecified()).map(Into::into),
                container_ip: cip.into(),
            };
            if !out.iter().any(|have| same(have, &rule)) {
                out.push(rule);
            }
        }
    }
    out
}

/// The host ports of the mappings, the keys DEL finds their rules by,
/// without duplicates.
pub fn host_ports(mappings: &[Mapping]) -> Vec<HostPort> {
    let mut out: Vec<HostPort> = Vec::new();
    for m in mappings {
        let p = HostPort {
            port: m.host_port,
            protocol: m.protocol,
            host_ip: m.host_ip.filter(|h| !h.is_unspecified()).map(Into::into),
        };
        if !out
            .iter()
            .any(|h| h.port == p.port && h.protocol == p.protocol && h.host_ip == p.host_ip)
        {
            out.push(p);
        }
    }
    out
}

/// The options of the rules: the container subnets for hairpin
/// masquerading, without duplicates.
pub fn options(conf: &Conf, container_ips: &[IpNet]) -> PortOptions {
    let mut subnets: Vec<IpNet> = Vec::new();
    for ip in container_ips {
        let net = ip.trunc();
        if !subnets.contains(&net) {
            subnets.push(net);
        }
    }
    PortOptions {
        snat: conf.snat,
        masq_all: conf.masq_all,
        subnets,
        mark_masq_bit: conf.mark_masq_bit,
        external_set_mark_chain: conf.external_set_mark_chain.clone(),
        conditions_v4: conf.conditions_v4.clone(),
        conditions_v6: conf.conditions_v6.clone(),
    }
}

pub fn same(a: &PortMapping, b: &PortMapping) -> bool {
    a.host_port == b.host_port
        && a.container_port == b.container_port
        && a.protocol == b.protocol
        && a.host_ip == b.host_ip
        && a.container_ip == b.container_ip
}

/// The first wanted rule the host does not have.
pub fn missing<'a>(have: &[PortMapping], want: &'a [PortMapping]) -> Option<&'a PortMapping> {
    want.iter().find(|w| !have.iter().any(|h| same(h, w)))
}

fn endpoint(ip: Option<IpAddr>, port: u16) -> String {
    match ip {
        None => format!("*:{port}"),
        Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        Some(v4) => format!("{v4}:{port}"),
    }
}

/// `tcp 192.0.2.1:8080 -> 10.0.0.5:80`, for messages.
pub fn describe(m: &PortMapping) -> String {
    let proto = match m.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    format!(
        "{proto} {} -> {}",
        endpoint(m.host_ip.map(Into::into), m.host_port),
        endpoint(Some(m.container_ip.into()), m.container_port)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_cni_sdk::parse_ip_net;

    fn net(s: &str) -> IpNet {
        parse_ip_net(s, "test").unwrap()
    }

    fn mapping(hp: u16, cp: u16, host_ip: Option<&str>) -> Mapping {
        Mapping {
            host_port: hp,
            container_port: cp,
            protocol: Protocol::Tcp,
            host_ip: host_ip.map(|s| s.parse().unwrap()),
        }
    }

    fn described(rules: &[PortMapping]) -> Vec<String> {
        rules.iter().map(describe).collect()
    }

    #[test]
    fn families() {
        let ips = [net("10.0.0.5/24"), net("2001:db8::5/64")];
        let rules = expand(
            &[
                mapping(8080, 80, None),
                mapping(8081, 81, Some("192.0.2.1")),
                mapping(8082, 82, Some("2001:db8::1")),
                mapping(8083, 83, Some("0.0.0.0")),
                mapping(8084, 84, Some("::")),
            ],
            &ips,
        );
        assert_eq!(
            described(&rules),
            [
                "tcp *:8080 -> 10.0.0.5:80",
                "tcp *:8080 -> [2001:db8::5]:80",
                "tcp 192.0.2.1:8081 -> 10.0.0.5:81",
                "tcp [2001:db8::1]:8082 -> [2001:db8::5]:82",
                "tcp *:8083 -> 10.0.0.5:83",
                "tcp *:8084 -> [2001:db8::5]:84",
            ]
        );
    }

    #[test]
    fn v4_only_pod_skips_v6_mappings() {
        let rules = expand(
            &[
                mapping(8080, 80, None),
                mapping(8082, 82, Some("2001:db8::1")),
            ],
            &[net("10.0.0.5/24")],
        );
        assert_eq!(described(&rules), ["tcp *:8080 -> 10.0.0.5:80"]);
    }

    #[test]
    fn duplicates_dropped() {
        let rules = expand(
            &[mapping(8080, 80, None), mapping(8080, 80, None)],
            &[net("10.0.0.5/24")],
        );
        assert_eq!(rules.len(), 1);
    }

    #[test]
    fn host_ports_are_the_keys_of_the_mappings() {
        let ports = host_ports(&[
            mapping(8080, 80, None),
            mapping(8080, 81, None),
            mapping(8081, 81, Some("192.0.2.1")),
            mapping(8083, 83, Some("0.0.0.0")),
        ]);
        let keys: Vec<(u16, Option<IpAddr>)> = ports
            .iter()
            .map(|p| (p.port, p.host_ip.map(Into::into)))
            .collect();
        assert_eq!(
            keys,
            [
                (8080, None),
                (8081, Some("192.0.2.1".parse().unwrap())),
                (8083, None),
            ]
        );
    }

    #[test]
    fn missing_rule() {
        let want = expand(
            &[mapping(8080, 80, None)],
            &[net("10.0.0.5/24"), net("2001:db8::5/64")],
        );
        assert!(missing(&want, &want).is_none());
        let m = missing(&want[..1], &want).unwrap();
        assert_eq!(describe(m), "tcp *:8080 -> [2001:db8::5]:80");
    }

    #[test]
    fn subnets_truncated_and_unique() {
        let conf = Conf::parse(r#"{"name":"n","markMasqBit":5,"snat":false}"#).unwrap();
        let opts = options(
            &conf,
            &[
                net("10.0.0.5/24"),
                net("10.0.0.6/24"),
                net("2001:db8::5/64"),
            ],
        );
        assert_eq!(opts.subnets, [net("10.0.0.0/24"), net("2001:db8::/64")]);
        assert_eq!(opts.mark_masq_bit, 5);
        assert!(!opts.snat && !opts.masq_all);
    }
}
