//! What plugins that ask the host for masquerade and port-forward rules
//! ([`firewall`]) share: the backend key, the container addresses of a
//! previous result, and masquerading those addresses.

use serde_json::Value;

use crate::firewall::{self, Backend, Masquerade, RuleKind};
use crate::{CniError, CniResult, Error, IpNet};

/// Parses a backend key (`backend`, `ipMasqBackend`): `"nftables"` or
/// `"iptables"`; absent or null is [`Backend::Auto`]. Anything else is a
/// code-7 error naming `key`.
pub fn parse_backend(value: Option<&Value>, key: &str) -> Result<Backend, CniError> {
    match value {
        None | Some(Value::Null) => Ok(Backend::Auto),
        Some(Value::String(s)) if s == "nftables" => Ok(Backend::Nftables),
        Some(Value::String(s)) if s == "iptables" => Ok(Backend::Iptables),
        Some(other) => Err(Error::config(format!(
            "{key}: must be \"nftables\" or \"iptables\", not {other}"
        ))),
    }
}

/// The container addresses of a previous result, each with its subnet's
/// prefix: every IP when the result lists no interfaces, else the IPs not
/// known to be on an interface outside the container (an IP whose
/// `interface` points at an entry with a `sandbox`, or that has no
/// `interface`, as the reference portmap plugin does).
pub fn container_ips(result: &CniResult) -> Vec<IpNet> {
    result
        .ips
        .iter()
        .filter(|ip| {
            result.interfaces.is_empty()
                || ip.interface.is_none_or(|i| {
                    result
                        .interfaces
                        .get(i as usize)
                        .is_some_and(|iface| iface.sandbox.is_some())
                })
        })
        .map(|ip| ip.address)
        .collect()
}

/// Masquerades traffic from each address (a pod address with its subnet's
/// prefix) leaving its subnet. Nothing to do for no addresses.
pub fn add_masquerade(backend: Backend, sources: &[IpNet]) -> Result<(), CniError> {
    if sources.is_empty() {
        return Ok(());
    }
    let rules: Vec<Masquerade> = sources
        .iter()
        .map(|&source| Masquerade { source })
        .collect();
    firewall::add_masquerade(backend, &rules).map_err(|e| Error::context(e, "add masquerade"))
}

/// Fails unless the attachment has a masquerade rule for each address.
pub fn check_masquerade(sources: &[IpNet]) -> Result<(), CniError> {
    if sources.is_empty() {
        return Ok(());
    }
    let owned = firewall::list(RuleKind::Masquerade)?;
    match missing_masquerade(&owned.masquerade, sources) {
        Some(ip) => Err(Error::plugin(format!(
            "masquerade rule for {ip} is missing"
        ))),
        None => Ok(()),
    }
}

/// The first address without a masquerade rule.
fn missing_masquerade(have: &[Masquerade], want: &[IpNet]) -> Option<IpNet> {
    want.iter()
        .find(|ip| !have.iter().any(|m| m.source == **ip))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{code, parse_ip_net, Interface, IpConfig};
    use serde_json::json;

    fn net(s: &str) -> IpNet {
        parse_ip_net(s, "test").unwrap()
    }

    fn iface(name: &str, sandbox: bool) -> Interface {
        Interface {
            name: name.into(),
            mac: String::new(),
            mtu: None,
            sandbox: sandbox.then(String::new),
            socket_path: None,
            pci_id: None,
        }
    }

    fn ip(s: &str, interface: Option<u32>) -> IpConfig {
        IpConfig {
            address: net(s),
            gateway: None,
            interface,
        }
    }

    #[test]
    fn backend_values() {
        assert!(matches!(parse_backend(None, "k"), Ok(Backend::Auto)));
        assert!(matches!(
            parse_backend(Some(&Value::Null), "k"),
            Ok(Backend::Auto)
        ));
        assert!(matches!(
            parse_backend(Some(&json!("nftables")), "k"),
            Ok(Backend::Nftables)
        ));
        assert!(matches!(
            parse_backend(Some(&json!("iptables")), "k"),
            Ok(Backend::Iptables)
        ));
        for bad in [json!("nft"), json!(""), json!(1), json!(true)] {
            let e = parse_backend(Some(&bad), "ipMasqBackend").unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.msg.starts_with("ipMasqBackend:"), "{}", e.msg);
        }
    }

    #[test]
    fn container_ips_of_sandbox_interfaces() {
        let result = CniResult {
            interfaces: vec![
                iface("cni0", false),
                iface("veth1", false),
                iface("eth0", true),
            ],
            ips: vec![
                ip("10.0.0.5/24", Some(2)),
                ip("10.9.0.1/24", Some(0)),
                ip("2001:db8::5/64", None),
                ip("10.8.0.1/24", Some(7)),
            ],
            routes: vec![],
            dns: None,
        };
        assert_eq!(
            container_ips(&result),
            [net("10.0.0.5/24"), net("2001:db8::5/64")]
        );
    }

    #[test]
    fn container_ips_without_interfaces() {
        let result = CniResult {
            interfaces: vec![],
            ips: vec![ip("10.0.0.5/24", Some(2)), ip("2001:db8::5/64", None)],
            routes: vec![],
            dns: None,
        };
        assert_eq!(
            container_ips(&result),
            [net("10.0.0.5/24"), net("2001:db8::5/64")]
        );
    }

    #[test]
    fn missing_masquerade_compares_prefix() {
        let have = [Masquerade {
            source: net("10.0.0.5/24"),
        }];
        assert_eq!(missing_masquerade(&have, &[net("10.0.0.5/24")]), None);
        assert_eq!(
            missing_masquerade(&have, &[net("10.0.0.5/24"), net("10.0.0.5/16")]),
            Some(net("10.0.0.5/16"))
        );
    }
}
