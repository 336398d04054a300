//! The portmap plugin's configuration: the reference plugin's keys, read
//! from the JSON value so every error names its key, and validated as a
//! whole before any capability call.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::conditions::{self, Conditions, Syntax};
use wasm_cni_sdk::firewall::{Backend, Condition, Protocol};
use wasm_cni_sdk::nat::parse_backend;
use wasm_cni_sdk::{parse_config, parse_ip, CniError, Error};

/// Default of `markMasqBit`, as in the reference plugin.
const DEFAULT_MARK_MASQ_BIT: u8 = 13;

/// One entry of `runtimeConfig.portMappings`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// `hostIP`; an unspecified address (`0.0.0.0`, `::`) limits the
    /// mapping to its family without limiting the node address.
    pub host_ip: Option<IpAddr>,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Conf {
    pub mappings: Vec<Mapping>,
    /// `snat`, default true.
    pub snat: bool,
    /// `masqAll`, default false.
    pub masq_all: bool,
    /// `markMasqBit`, 0-31, default 13.
    pub mark_masq_bit: u8,
    /// `externalSetMarkChain`: marks connections for another system's
    /// masquerading instead of this plugin's own rule (iptables only).
    pub external_set_mark_chain: Option<String>,
    /// `conditionsV4` / `conditionsV6`.
    pub conditions_v4: Vec<Condition>,
    pub conditions_v6: Vec<Condition>,
    pub backend: Backend,
}

/// An iptables chain name another system owns: letters, digits, `-`, `_`.
fn chain_name(s: &str) -> Result<String, CniError> {
    let ok = s.len() <= 28
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(Error::config(format!(
            "externalSetMarkChain: {s:?} is not an iptables chain name"
        )))
    }
}

/// The backend: as configured, but iptables-only keys (`markMasqBit`,
/// `externalSetMarkChain`, iptables-style conditions) pick iptables when
/// unset, nft-style conditions pick nftables, and mixing them is an error,
/// as in the reference plugin.
fn choose_backend(
    configured: Backend,
    iptables_keys: bool,
    conditions: [&Option<Conditions>; 2],
) -> Result<Backend, CniError> {
    let mut wants: Option<(Backend, &str)> =
        iptables_keys.then_some((Backend::Iptables, "markMasqBit/externalSetMarkChain"));
    for (c, key) in conditions.into_iter().zip(["conditionsV4", "conditionsV6"]) {
        let Some(c) = c else { continue };
        let b = match c.syntax {
            Syntax::Iptables => Backend::Iptables,
            Syntax::Nftables => Backend::Nftables,
        };
        match wants {
            Some((w, by)) if w != b => {
                return Err(Error::config(format!(
                    "{key}: written for {}, but {by} is for {}",
                    backend_name(b),
                    backend_name(w)
                )))
            }
            _ => wants = Some((b, key)),
        }
    }
    match (configured, wants) {
        (Backend::Auto, Some((b, _))) => Ok(b),
        (c, Some((w, by))) if c != w => Err(Error::config(format!(
            "backend: {} does not support {by}, which is for {}",
            backend_name(c),
            backend_name(w)
        ))),
        (c, _) => Ok(c),
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Iptables => "iptables",
        Backend::Nftables => "nftables",
        Backend::Auto => "auto",
    }
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

fn as_bool(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, CniError> {
    match present(obj.get(key)) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| Error::config(format!("{key}: expected true or false, not {v}"))),
    }
}

fn port(entry: &Map<String, Value>, key: &str, what: &str) -> Result<u16, CniError> {
    let v =
        present(entry.get(key)).ok_or_else(|| Error::config(format!("{what}.{key}: missing")))?;
    v.as_u64()
        .filter(|p| (1..=65535).contains(p))
        .map(|p| p as u16)
        .ok_or_else(|| Error::config(format!("{what}.{key}: {v} is not a port number (1-65535)")))
}

fn protocol(entry: &Map<String, Value>, what: &str) -> Result<Protocol, CniError> {
    let v = match present(entry.get("protocol")) {
        None => return Ok(Protocol::Tcp),
        Some(v) => v,
    };
    let s = v.as_str().unwrap_or_default().to_ascii_lowercase();
    match s.as_str() {
        "" if v.is_string() => Ok(Protocol::Tcp),
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        _ => Err(Error::config(format!(
            "{what}.protocol: must be \"tcp\", \"udp\" or \"sctp\", not {v}"
        ))),
    }
}

fn host_ip(entry: &Map<String, Value>, what: &str) -> Result<Option<IpAddr>, CniError> {
    let key = format!("{what}.hostIP");
    match present(entry.get("hostIP")) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_ip(s, &key).map(Some),
        Some(v) => Err(Error::config(format!(
            "{key}: expected an IP address string, not {v}"
        ))),
    }
}

fn mappings(raw: &Map<String, Value>) -> Result<Vec<Mapping>, CniError> {
    let rc = match present(raw.get("runtimeConfig")) {
        None => return Ok(vec![]),
        Some(Value::Object(rc)) => rc,
        Some(_) => return Err(Error::config("runtimeConfig: expected an object")),
    };
    let list = match present(rc.get("portMappings")) {
        None => return Ok(vec![]),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(Error::config("runtimeConfig.portMappings: expected a list")),
    };
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let what = format!("runtimeConfig.portMappings[{i}]");
            let entry = entry
                .as_object()
                .ok_or_else(|| Error::config(format!("{what}: expected an object")))?;
            Ok(Mapping {
                host_port: port(entry, "hostPort", &what)?,
                container_port: port(entry, "containerPort", &what)?,
                protocol: protocol(entry, &what)?,
                host_ip: host_ip(entry, &what)?,
            })
        })
        .collect()
}

impl Conf {
    pub fn parse(config: &str) -> Result<Conf, CniError> {
        let raw: Value = parse_config(config)?;
        let raw = raw
            .as_object()
            .ok_or_else(|| Error::config("network configuration: expected an object"))?;
        let explicit_bit = present(raw.get("markMasqBit")).is_some();
        let mark_masq_bit = match present(raw.get("markMasqBit")) {
            None => DEFAULT_MARK_MASQ_BIT,
            Some(v) => v
                .as_u64()
                .filter(|b| *b <= 31)
                .map(|b| b as u8)
                .ok_or_else(|| Error::config(format!("markMasqBit: {v} is outside 0-31")))?,
        };
        let external_set_mark_chain = match present(raw.get("externalSetMarkChain")) {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(chain_name(s)?),
            Some(v) => {
                return Err(Error::config(format!(
                    "externalSetMarkChain: expected a chain name, not {v}"
                )))
            }
        };
        let conditions_v4 = conditions::parse(raw.get("conditionsV4"), "conditionsV4", false)?;
        let conditions_v6 = conditions::parse(raw.get("conditionsV6"), "conditionsV6", true)?;
        let backend = choose_backend(
            parse_backend(raw.get("backend"), "backend")?,
            explicit_bit || external_set_mark_chain.is_some(),
            [&conditions_v4, &conditions_v6],
        )?;
        Ok(Conf {
            snat: as_bool(raw, "snat", true)?,
            masq_all: as_bool(raw, "masqAll", false)?,
            mark_masq_bit,
            external_set_mark_chain,
            conditions_v4: conditions_v4.map(|c| c.list).unwrap_or_default(),
            conditions_v6: conditions_v6.map(|c| c.list).unwrap_or_default(),
            backend,
            mappings: mappings(raw)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_cni_sdk::code;

    fn parse(extra: &str) -> Result<Conf, CniError> {
        Conf::parse(&format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"portmap"{extra}}}"#
        ))
    }

    fn with_mappings(list: &str) -> Result<Conf, CniError> {
        parse(&format!(r#","runtimeConfig":{{"portMappings":{list}}}"#))
    }

    fn err(r: Result<Conf, CniError>, want_code: u32) -> String {
        let e = r.expect_err("config should be rejected");
        assert_eq!(e.code, want_code, "{}", e.msg);
        e.msg
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert!(c.mappings.is_empty());
        assert!(c.snat);
        assert!(!c.masq_all);
        assert_eq!(c.mark_masq_bit, 13);
        assert_eq!(c.backend, Backend::Auto);
        let c = parse(r#","runtimeConfig":{}"#).unwrap();
        assert!(c.mappings.is_empty());
        let c = with_mappings("null").unwrap();
        assert!(c.mappings.is_empty());
    }

    #[test]
    fn options() {
        let c = parse(
            r#","snat":false,"masqAll":true,"backend":"nftables",
               "externalSetMarkChain":"","conditionsV4":[]"#,
        )
        .unwrap();
        assert!(!c.snat);
        assert!(c.masq_all);
        assert_eq!(c.backend, Backend::Nftables);
        assert_eq!(parse(r#","markMasqBit":0"#).unwrap().mark_masq_bit, 0);
        assert_eq!(
            parse(r#","markMasqBit":31,"backend":"iptables""#)
                .unwrap()
                .backend,
            Backend::Iptables
        );
    }

    #[test]
    fn mappings_parsed() {
        let c = with_mappings(
            r#"[{"hostPort":8080,"containerPort":80},
                {"hostPort":53,"containerPort":53,"protocol":"UDP","hostIP":"192.0.2.1"},
                {"hostPort":9,"containerPort":9,"protocol":"Sctp","hostIP":"2001:db8::1"},
                {"hostPort":1,"containerPort":65535,"protocol":"","hostIP":""}]"#,
        )
        .unwrap();
        assert_eq!(
            c.mappings,
            [
                Mapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: None
                },
                Mapping {
                    host_port: 53,
                    container_port: 53,
                    protocol: Protocol::Udp,
                    host_ip: Some("192.0.2.1".parse().unwrap())
                },
                Mapping {
                    host_port: 9,
                    container_port: 9,
                    protocol: Protocol::Sctp,
                    host_ip: Some("2001:db8::1".parse().unwrap())
                },
                Mapping {
                    host_port: 1,
                    container_port: 65535,
                    protocol: Protocol::Tcp,
                    host_ip: None
                },
            ]
        );
    }

    #[test]
    fn bad_ports_name_the_key() {
        for (list, key) in [
            (
                r#"[{"hostPort":0,"containerPort":80}]"#,
                "runtimeConfig.portMappings[0].hostPort",
            ),
            (
                r#"[{"hostPort":80,"containerPort":80},{"hostPort":65536,"containerPort":80}]"#,
                "runtimeConfig.portMappings[1].hostPort",
            ),
            (
                r#"[{"hostPort":80,"containerPort":-1}]"#,
                "runtimeConfig.portMappings[0].containerPort",
            ),
            (
                r#"[{"hostPort":80}]"#,
                "runtimeConfig.portMappings[0].containerPort",
            ),
            (
                r#"[{"hostPort":"80","containerPort":80}]"#,
                "runtimeConfig.portMappings[0].hostPort",
            ),
            (
                r#"[{"hostPort":80.5,"containerPort":80}]"#,
                "runtimeConfig.portMappings[0].hostPort",
            ),
        ] {
            let msg = err(with_mappings(list), code::INVALID_CONFIG);
            assert!(msg.starts_with(&format!("{key}:")), "{msg}");
        }
    }

    #[test]
    fn bad_entries_name_the_key() {
        for (list, key) in [
            (
                r#"[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]"#,
                "runtimeConfig.portMappings[0].protocol",
            ),
            (
                r#"[{"hostPort":80,"containerPort":80,"protocol":6}]"#,
                "runtimeConfig.portMappings[0].protocol",
            ),
            (
                r#"[{"hostPort":80,"containerPort":80,"hostIP":"10.0.0"}]"#,
                "runtimeConfig.portMappings[0].hostIP",
            ),
            (
                r#"[{"hostPort":80,"containerPort":80,"hostIP":1}]"#,
                "runtimeConfig.portMappings[0].hostIP",
            ),
            (r#"[80]"#, "runtimeConfig.portMappings[0]"),
            (r#"{"hostPort":80}"#, "runtimeConfig.portMappings"),
        ] {
            let msg = err(with_mappings(list), code::INVALID_CONFIG);
            assert!(msg.starts_with(&format!("{key}:")), "{msg}");
        }
        let msg = err(parse(r#","runtimeConfig":[]"#), code::INVALID_CONFIG);
        assert!(msg.starts_with("runtimeConfig:"), "{msg}");
    }

    #[test]
    fn bad_options_name_the_key() {
        for (extra, key) in [
            (r#","markMasqBit":32"#, "markMasqBit"),
            (r#","markMasqBit":-1"#, "markMasqBit"),
            (r#","markMasqBit":"13""#, "markMasqBit"),
            (r#","snat":"yes""#, "snat"),
            (r#","masqAll":1"#, "masqAll"),
            (r#","backend":"nft""#, "backend"),
        ] {
            let msg = err(parse(extra), code::INVALID_CONFIG);
            assert!(msg.starts_with(&format!("{key}:")), "{msg}");
        }
    }

    #[test]
    fn iptables_keys_pick_iptables() {
        let c = parse(r#","externalSetMarkChain":"KUBE-MARK-MASQ""#).unwrap();
        assert_eq!(c.external_set_mark_chain.as_deref(), Some("KUBE-MARK-MASQ"));
        assert_eq!(c.backend, Backend::Iptables);
        assert_eq!(
            parse(r#","markMasqBit":14"#).unwrap().backend,
            Backend::Iptables
        );
        let c = parse(r#","conditionsV4":["-s","192.0.2.0/24"]"#).unwrap();
        assert_eq!((c.backend, c.conditions_v4.len()), (Backend::Iptables, 1));
        let c = parse(r#","conditionsV6":["ip6 saddr 2001:db8::/32"]"#).unwrap();
        assert_eq!((c.backend, c.conditions_v6.len()), (Backend::Nftables, 1));
    }

    #[test]
    fn mixed_backends_refused() {
        for (extra, key) in [
            (
                r#","externalSetMarkChain":"KUBE-MARK-MASQ","backend":"nftables""#,
                "backend",
            ),
            (r#","markMasqBit":14,"backend":"nftables""#, "backend"),
            (
                r#","conditionsV4":["ip saddr 10.0.0.1"],"backend":"iptables""#,
                "backend",
            ),
            (
                r#","markMasqBit":14,"conditionsV4":["ip saddr 10.0.0.1"]"#,
                "conditionsV4",
            ),
            (r#","externalSetMarkChain":"A B""#, "externalSetMarkChain"),
            (r#","externalSetMarkChain":5"#, "externalSetMarkChain"),
        ] {
            let msg = err(parse(extra), code::INVALID_CONFIG);
            assert!(msg.starts_with(&format!("{key}:")), "{extra}: {msg}");
        }
    }
}
