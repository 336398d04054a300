//! The bridge plugin's configuration: the reference plugin's keys, validated
//! as a whole before anything on the node changes.

use serde::Deserialize;
use wasm_cni_sdk::firewall::Backend;
use wasm_cni_sdk::nat::parse_backend;
use wasm_cni_sdk::{arg, parse_config, CniError, Dns, Error, IpamConfig};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    ip_masq_backend: Option<serde_json::Value>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    multicast_snooping: Option<bool>,
    #[serde(default)]
    vlan: Option<u32>,
    #[serde(default)]
    vlan_trunk: Option<serde_json::Value>,
    #[serde(default)]
    preserve_default_vlan: bool,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    enabledad: bool,
    #[serde(default)]
    disable_container_interface: bool,
    #[serde(default)]
    port_isolation: bool,
    #[serde(default)]
    ipam: Option<IpamConfig>,
    #[serde(default)]
    dns: Option<RawDns>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    args: Option<Args>,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    mac: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Args {
    #[serde(default)]
    cni: Option<ArgsCni>,
}

#[derive(Debug, Default, Deserialize)]
struct ArgsCni {
    #[serde(default)]
    mac: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    search: Vec<String>,
    #[serde(default)]
    options: Vec<String>,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Conf {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    /// Masquerade the container's addresses (`ipMasq`), with this backend
    /// (`ipMasqBackend`).
    pub ip_masq: Option<Backend>,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub promisc: bool,
    /// `multicastSnooping` (ours): the bridge's IGMP/MLD snooping, also set
    /// on an existing bridge; unset, a bridge created here has none and an
    /// existing one is left as it is.
    pub multicast_snooping: Option<bool>,
    pub vlan: Option<u16>,
    pub preserve_default_vlan: bool,
    pub enable_dad: bool,
    /// `ipam.type`, when the network is layer 3.
    pub ipam: Option<String>,
    pub dns: Option<Dns>,
    /// Container MAC: CNI_ARGS `MAC` < `args.cni.mac` < `runtimeConfig.mac`.
    pub mac: Option<String>,
}

fn check_mac(mac: &str, what: &str) -> Result<(), CniError> {
    let parts: Vec<_> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{what}: invalid MAC address {mac:?}"
        )))
    }
}

impl Conf {
    /// Parses the configuration of an ADD, DEL or CHECK with its `CNI_ARGS`;
    /// STATUS and GC pass none.
    pub fn parse(config: &str, args: &[(String, String)]) -> Result<Conf, CniError> {
        let raw: Raw = parse_config(config)?;
        if raw.hairpin_mode && raw.promisc_mode {
            return Err(Error::config(
                "hairpinMode and promiscMode cannot both be set: promiscuous mode on the bridge already reflects frames",
            ));
        }
        let backend = parse_backend(raw.ip_masq_backend.as_ref(), "ipMasqBackend")?;
        for (on, key) in [
            (raw.macspoofchk, "macspoofchk"),
            (raw.port_isolation, "portIsolation"),
            (raw.disable_container_interface, "disableContainerInterface"),
        ] {
            if on {
                return Err(Error::unsupported(format!("{key}: true is not supported")));
            }
        }
        if raw.vlan_trunk.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(Error::unsupported(
                "vlanTrunk: VLAN trunks are not supported",
            ));
        }
        let vlan = match raw.vlan {
            None | Some(0) => None,
            Some(v @ 1..=4094) => Some(v as u16),
            Some(v) => return Err(Error::config(format!("vlan: {v} is outside 0-4094"))),
        };
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(Error::config(format!("mtu: {mtu} is outside 68-65535")));
            }
        }
        let bridge = raw
            .bridge
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "cni0".into());
        if bridge.len() > 15 || bridge.contains(['/', ':', ' ']) {
            return Err(Error::config(format!(
                "bridge: invalid interface name {bridge:?}"
            )));
        }
        let mut mac = arg(args, "MAC").map(str::to_string);
        if let Some(m) = raw.args.and_then(|a| a.cni).and_then(|c| c.mac) {
            mac = Some(m);
        }
        if let Some(m) = raw.runtime_config.mac {
            mac = Some(m);
        }
        if let Some(m) = &mac {
            check_mac(m, "mac")?;
        }
        let dns = raw
            .dns
            .filter(|d| {
                !d.nameservers.is_empty()
                    || d.domain.is_some()
                    || !d.search.is_empty()
                    || !d.options.is_empty()
            })
            .map(|d| Dns {
                nameservers: d.nameservers,
                domain: d.domain,
                search: d.search,
                options: d.options,
            });
        Ok(Conf {
            bridge,
            is_gateway: raw.is_gateway || raw.is_default_gateway,
            is_default_gateway: raw.is_default_gateway,
            force_address: raw.force_address,
            ip_masq: raw.ip_masq.then_some(backend),
            mtu: raw.mtu,
            hairpin: raw.hairpin_mode,
            promisc: raw.promisc_mode,
            multicast_snooping: raw.multicast_snooping,
            vlan,
            preserve_default_vlan: raw.preserve_default_vlan,
            enable_dad: raw.enabledad,
            ipam: raw.ipam.map(|i| i.kind).filter(|k| !k.is_empty()),
            dns,
            mac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_cni_sdk::code;

    fn parse(extra: &str) -> Result<Conf, CniError> {
        let sep = if extra.is_empty() { "" } else { "," };
        Conf::parse(
            &format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"bridge"{sep}{extra}}}"#),
            &[],
        )
    }

    fn err(extra: &str, want_code: u32) -> String {
        let e = parse(extra).expect_err("config should be rejected");
        assert_eq!(e.code, want_code, "{}", e.msg);
        e.msg
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(c.ip_masq.is_none());
        assert!(c.ipam.is_none());
        assert!(!c.is_gateway);
    }

    #[test]
    fn ip_masq_backends() {
        let c = parse(r#""ipMasq":true"#).unwrap();
        assert_eq!(c.ip_masq, Some(Backend::Auto));
        let c = parse(r#""ipMasq":true,"ipMasqBackend":"nftables""#).unwrap();
        assert_eq!(c.ip_masq, Some(Backend::Nftables));
        let c = parse(r#""ipMasq":true,"ipMasqBackend":"iptables""#).unwrap();
        assert_eq!(c.ip_masq, Some(Backend::Iptables));
        let c = parse(r#""ipMasq":false,"ipMasqBackend":"iptables""#).unwrap();
        assert!(c.ip_masq.is_none());
    }

    #[test]
    fn bad_ip_masq_backend() {
        for bad in [r#""nft""#, r#""""#, "3"] {
            let msg = err(
                &format!(r#""ipMasq":true,"ipMasqBackend":{bad}"#),
                code::INVALID_CONFIG,
            );
            assert!(msg.starts_with("ipMasqBackend:"), "{msg}");
        }
        // Checked even when masquerading is off, as the reference does.
        err(r#""ipMasqBackend":"xtables""#, code::INVALID_CONFIG);
    }

    #[test]
    fn multicast_snooping() {
        assert_eq!(parse("").unwrap().multicast_snooping, None);
        let c = parse(r#""multicastSnooping":false"#).unwrap();
        assert_eq!(c.multicast_snooping, Some(false));
        let msg = err(r#""multicastSnooping":"off""#, code::INVALID_CONFIG);
        assert!(msg.starts_with("multicastSnooping:"), "{msg}");
    }

    #[test]
    fn gateway_flags() {
        let c = parse(r#""isDefaultGateway":true"#).unwrap();
        assert!(c.is_gateway && c.is_default_gateway);
    }

    #[test]
    fn rejected() {
        let msg = err(
            r#""hairpinMode":true,"promiscMode":true"#,
            code::INVALID_CONFIG,
        );
        assert!(msg.contains("hairpinMode"), "{msg}");
        assert!(err(r#""vlan":4095"#, code::INVALID_CONFIG).starts_with("vlan:"));
        assert!(err(r#""mtu":10"#, code::INVALID_CONFIG).starts_with("mtu:"));
        assert!(err(r#""bridge":"a/b""#, code::INVALID_CONFIG).starts_with("bridge:"));
        assert!(err(r#""macspoofchk":true"#, code::UNSUPPORTED_FIELD).starts_with("macspoofchk"));
        assert!(err(r#""vlanTrunk":[{"id":5}]"#, code::UNSUPPORTED_FIELD).starts_with("vlanTrunk"));
    }

    #[test]
    fn mac_precedence() {
        let args = [("MAC".to_string(), "02:00:00:00:00:01".to_string())];
        let base = r#"{"name":"n","type":"bridge""#;
        let c = Conf::parse(&format!("{base}}}"), &args).unwrap();
        assert_eq!(c.mac.as_deref(), Some("02:00:00:00:00:01"));
        let c = Conf::parse(
            &format!(r#"{base},"args":{{"cni":{{"mac":"02:00:00:00:00:02"}}}}}}"#),
            &args,
        )
        .unwrap();
        assert_eq!(c.mac.as_deref(), Some("02:00:00:00:00:02"));
        let c = Conf::parse(
            &format!(
                r#"{base},"args":{{"cni":{{"mac":"02:00:00:00:00:02"}}}},"runtimeConfig":{{"mac":"02:00:00:00:00:03"}}}}"#
            ),
            &args,
        )
        .unwrap();
        assert_eq!(c.mac.as_deref(), Some("02:00:00:00:00:03"));
        let e =
            Conf::parse(&format!(r#"{base},"runtimeConfig":{{"mac":"zz"}}}}"#), &[]).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }
}
