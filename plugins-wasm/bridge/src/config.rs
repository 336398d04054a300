//! The bridge plugin's configuration: the reference plugin's keys, validated
//! as a whole before anything on the node changes.

use serde::Deserialize;
use wasm_cni_sdk::{arg, parse_config, CniError, Dns, Error, IpamConfig, Request};

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
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
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
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub promisc: bool,
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
    pub fn parse(req: &Request) -> Result<Conf, CniError> {
        let raw: Raw = parse_config(&req.config)?;
        if raw.hairpin_mode && raw.promisc_mode {
            return Err(Error::config(
                "hairpinMode and promiscMode cannot both be set: promiscuous mode on the bridge already reflects frames",
            ));
        }
        if raw.ip_masq {
            return Err(Error::unsupported(
                "ipMasq: true is not supported yet by this bridge plugin; remove it or chain a masquerading plugin",
            ));
        }
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
        let mut mac = arg(&req.args, "MAC").map(str::to_string);
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
            mtu: raw.mtu,
            hairpin: raw.hairpin_mode,
            promisc: raw.promisc_mode,
            vlan,
            preserve_default_vlan: raw.preserve_default_vlan,
            enable_dad: raw.enabledad,
            ipam: raw.ipam.map(|i| i.kind).filter(|k| !k.is_empty()),
            dns,
            mac,
        })
    }
}
