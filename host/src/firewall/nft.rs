//! The nftables backend: one table, `inet wasm_cni`, whose rules never change
//! after it is created; every pod is a handful of set and map elements, so a
//! pod costs the same with one or a thousand others on the node. Each call
//! is one `nft -f -` transaction. The table is created on first use, under a
//! lock, from [`RULESET`].
//!
//! Per-pod state (elements carry the owner's comment):
//! - `masq_v4` / `masq_v6`: pod addresses masqueraded on egress;
//! - `masq_skip_v4` / `_v6`: `pod . pod subnet` — traffic that keeps its source;
//! - `hostports_v4` / `_v6`: `host IP . protocol . host port : pod . port`;
//! - `hostport_masq_v4` / `_v6`: `source range . pod` — DNATed connections
//!   masqueraded (hairpin from the pod subnet, localhost, or all).

use std::fs::{self, OpenOptions};
use std::net::IpAddr;

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use super::{
    parse_protocol, protocol_name, stale, Firewall, Masquerade, Owned, Owner, PortMapping,
    PortOptions, RuleKind,
};
use crate::bindings::IpNet;
use crate::error::{Error, Result};
use crate::exec;

pub const TABLE: &str = "wasm_cni";
const LOCK_DIR: &str = "/run/wasm-cni";

/// The table, its sets and maps, and the rules that consult them.
pub const RULESET: &str = r#"
table inet wasm_cni {
  comment "wasm-cni: pod masquerade and host ports; per-pod state is in the sets and maps"

  set masq_v4 { type ipv4_addr; comment "pod addresses masqueraded on egress"; }
  set masq_v6 { type ipv6_addr; comment "pod addresses masqueraded on egress"; }
  set masq_skip_v4 { type ipv4_addr . ipv4_addr; flags interval; comment "pod . its subnet: keeps its source"; }
  set masq_skip_v6 { type ipv6_addr . ipv6_addr; flags interval; comment "pod . its subnet: keeps its source"; }
  map hostports_v4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags interval; comment "host IP . protocol . host port : pod . port"; }
  map hostports_v6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; flags interval; comment "host IP . protocol . host port : pod . port"; }
  set hostport_masq_v4 { type ipv4_addr . ipv4_addr; flags interval; comment "source . pod: host-port connections masqueraded (hairpin, localhost, masqAll)"; }
  set hostport_masq_v6 { type ipv6_addr . ipv6_addr; flags interval; comment "source . pod: host-port connections masqueraded (hairpin, masqAll)"; }

  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @hostports_v4 comment "host ports"
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostports_v6 comment "host ports"
  }
  chain output {
    type nat hook output priority -100; policy accept;
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @hostports_v4 comment "host ports from the node"
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostports_v6 comment "host ports from the node"
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip saddr . ip daddr @hostport_masq_v4 masquerade comment "host ports: hairpin, localhost, masqAll"
    ct status dnat ip6 saddr . ip6 daddr @hostport_masq_v6 masquerade comment "host ports: hairpin, masqAll"
    ip daddr 224.0.0.0/4 return comment "multicast keeps its source"
    ip6 daddr ff00::/8 return comment "multicast keeps its source"
    ip saddr . ip daddr @masq_skip_v4 return comment "within the pod subnet"
    ip6 saddr . ip6 daddr @masq_skip_v6 return comment "within the pod subnet"
    ip saddr @masq_v4 masquerade comment "pod egress"
    ip6 saddr @masq_v6 masquerade comment "pod egress"
  }
}
"#;

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "v4"
    } else {
        "v6"
    }
}

fn net_text(n: &IpNet) -> String {
    let trunc = truncate(n);
    format!("{}/{}", trunc.ip(), trunc.prefix_len)
}

/// The network of `n` (host bits cleared).
fn truncate(n: &IpNet) -> IpNet {
    let ip = n.ip();
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let v: u128 = match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    };
    let mask = if n.prefix_len == 0 {
        0
    } else {
        (u128::MAX << (bits - n.prefix_len as u32)) & (u128::MAX >> (128 - bits))
    };
    let net = v & mask;
    let addr = if ip.is_ipv4() {
        IpAddr::from((net as u32).to_be_bytes())
    } else {
        IpAddr::from(net.to_be_bytes())
    };
    IpNet {
        addr: addr.into(),
        prefix_len: n.prefix_len,
    }
}

/// One element of one of our sets or maps, as listed.
#[derive(Debug, Clone)]
struct Elem {
    set: String,
    /// The key in nft syntax (`10.88.0.2 . 10.88.0.0/16`).
    key: String,
    /// The mapped value of a map element.
    data: Option<String>,
    comment: String,
}

impl Elem {
    fn delete(&self) -> String {
        format!(
            "delete element inet {TABLE} {} {{ {} }}\n",
            self.set, self.key
        )
    }
}

/// A JSON element value as nft syntax.
fn value_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                format!("{}/{}", p.get("addr")?.as_str()?, p.get("len")?.as_u64()?)
            } else if let Some(c) = o.get("concat") {
                c.as_array()?
                    .iter()
                    .map(value_text)
                    .collect::<Option<Vec<_>>>()?
                    .join(" . ")
            } else if let Some(r) = o.get("range") {
                let r = r.as_array()?;
                format!("{}-{}", value_text(r.first()?)?, value_text(r.get(1)?)?)
            } else if let Some(e) = o.get("elem") {
                value_text(e.get("val")?)?
            } else {
                return None;
            }
        }
        _ => return None,
    })
}

fn comment_of(v: &Value) -> String {
    v.get("elem")
        .and_then(|e| e.get("comment"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn parse_elements(listing: &Value) -> Vec<Elem> {
    let mut out = Vec::new();
    let Some(items) = listing.get("nftables").and_then(Value::as_array) else {
        return out;
    };
    for item in items {
        let Some(set) = item.get("set").or_else(|| item.get("map")) else {
            continue;
        };
        let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
        for e in set
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (key, data) = match e {
                Value::Array(kv) if kv.len() == 2 => (&kv[0], Some(&kv[1])),
                other => (other, None),
            };
            if let Some(key_text) = value_text(key) {
                out.push(Elem {
                    set: name.to_string(),
                    key: key_text,
                    data: data.and_then(value_text),
                    comment: comment_of(key),
                });
            }
        }
    }
    out
}

fn sets_of(kind: RuleKind) -> &'static [&'static str] {
    match kind {
        RuleKind::Masquerade => &["masq_v4", "masq_v6", "masq_skip_v4", "masq_skip_v6"],
        RuleKind::PortMappings => &[
            "hostports_v4",
            "hostports_v6",
            "hostport_masq_v4",
            "hostport_masq_v6",
        ],
    }
}

/// Runs `nft` with `script` on stdin.
fn nft(args: &[&str], script: &str) -> Result<String> {
    let out = exec::run("nft", args, &[], script.as_bytes())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::io(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

pub struct Nftables;

impl Default for Nftables {
    fn default() -> Self {
        Self::new()
    }
}

impl Nftables {
    pub fn new() -> Self {
        Nftables
    }

    fn table_exists() -> bool {
        nft(&["list", "table", "inet", TABLE], "").is_ok()
    }

    /// Creates the table once per node, serialised by a lock so parallel
    /// first ADDs do not add the rules twice.
    fn ensure_table() -> Result<()> {
        fs::create_dir_all(LOCK_DIR).map_err(|e| Error::io(format!("create {LOCK_DIR}: {e}")))?;
        let path = format!("{LOCK_DIR}/nftables.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("open {path}: {e}")))?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io(format!("lock {path}: {e}")))?;
        if !Self::table_exists() {
            nft(&["-f", "-"], RULESET).map_err(|e| e.context("create the wasm_cni table"))?;
            tracing::info!("created nftables table inet {TABLE}");
        }
        Ok(())
    }

    /// One transaction; creates the table first when it is missing.
    fn apply(script: &str) -> Result<()> {
        if script.is_empty() {
            return Ok(());
        }
        match nft(&["-f", "-"], script) {
            Err(e) if e.msg.contains("No such file or directory") => {
                Self::ensure_table()?;
                nft(&["-f", "-"], script).map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// Every element of our sets; none when the table does not exist.
    fn elements() -> Result<Vec<Elem>> {
        match nft(&["-j", "list", "table", "inet", TABLE], "") {
            Ok(out) => {
                let v: Value = serde_json::from_str(&out)
                    .map_err(|e| Error::io(format!("parse nft -j output: {e}")))?;
                Ok(parse_elements(&v))
            }
            Err(e) if e.msg.contains("No such file or directory") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn element(set: &str, key: &str, data: Option<&str>, comment: &str) -> String {
        let comment = comment.replace('"', "'");
        match data {
            Some(d) => {
                format!("add element inet {TABLE} {set} {{ {key} comment \"{comment}\" : {d} }}\n")
            }
            None => format!("add element inet {TABLE} {set} {{ {key} comment \"{comment}\" }}\n"),
        }
    }

    /// An element keyed by a pod address, taken over by `comment`'s owner:
    /// an address can pass to a new pod while the old owner's element is
    /// still there (its DEL released the address first, or failed half
    /// way). Add (so it exists), delete, add again: one transaction, and the
    /// newest owner's DEL is the one that removes it.
    fn owned_element(set: &str, key: &str, comment: &str) -> String {
        format!(
            "{}delete element inet {TABLE} {set} {{ {key} }}\n{}",
            Self::element(set, key, None, comment),
            Self::element(set, key, None, comment)
        )
    }

    /// Fails when a host port of `maps` is already mapped to another
    /// attachment: the same host IP, or either one on every address.
    fn check_host_ports(owner: &Owner, maps: &[PortMapping]) -> Result<()> {
        let taken: Vec<(PortMapping, String)> = Self::elements()?
            .into_iter()
            .filter(|e| e.set.starts_with("hostports_") && !owner.owns(&e.comment))
            .filter_map(|e| Some((parse_mapping(&e.key, e.data.as_deref())?, e.comment)))
            .collect();
        for m in maps {
            let clash = taken.iter().find(|(t, _)| {
                t.host_port == m.host_port
                    && t.protocol == m.protocol
                    && IpAddr::from(t.container_ip).is_ipv4()
                        == IpAddr::from(m.container_ip).is_ipv4()
                    && (t.host_ip.is_none() || m.host_ip.is_none() || t.host_ip == m.host_ip)
            });
            if let Some((t, comment)) = clash {
                let holder = comment
                    .split_once(' ')
                    .map_or(comment.as_str(), |(_, who)| who);
                return Err(Error::new(
                    crate::error::code::ALREADY_EXISTS,
                    format!(
                        "portMappings: host port {}/{} is already mapped to {}:{} ({holder})",
                        m.host_port,
                        protocol_name(m.protocol),
                        IpAddr::from(t.container_ip),
                        t.container_port
                    ),
                ));
            }
        }
        Ok(())
    }

    fn delete_where(kind: RuleKind, pick: impl Fn(&Elem) -> bool) -> Result<()> {
        let sets = sets_of(kind);
        let script: String = Self::elements()?
            .iter()
            .filter(|e| sets.contains(&e.set.as_str()) && pick(e))
            .map(Elem::delete)
            .collect();
        Self::apply(&script)
    }
}

impl Firewall for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn add_masquerade(&mut self, owner: &Owner, rules: &[Masquerade]) -> Result<()> {
        let c = owner.comment();
        let mut script = String::new();
        for r in rules {
            let ip = r.source.ip();
            let f = family(ip);
            script += &Self::owned_element(&format!("masq_{f}"), &ip.to_string(), &c);
            let key = format!("{ip} . {}", net_text(&r.source));
            script += &Self::owned_element(&format!("masq_skip_{f}"), &key, &c);
        }
        Self::apply(&script).map_err(|e| e.context("add masquerade"))
    }

    fn add_port_mappings(
        &mut self,
        owner: &Owner,
        maps: &[PortMapping],
        opts: &PortOptions,
    ) -> Result<()> {
        Self::check_host_ports(owner, maps)?;
        let c = owner.comment();
        let mut script = String::new();
        let mut pods: Vec<IpAddr> = Vec::new();
        for m in maps {
            let pod: IpAddr = m.container_ip.into();
            let f = family(pod);
            let host = match m.host_ip {
                Some(h) => IpAddr::from(h).to_string(),
                None if pod.is_ipv4() => "0.0.0.0/0".into(),
                None => "::/0".into(),
            };
            let key = format!("{host} . {} . {}", protocol_name(m.protocol), m.host_port);
            let data = format!("{pod} . {}", m.container_port);
            script += &Self::element(&format!("hostports_{f}"), &key, Some(&data), &c);
            if !pods.contains(&pod) {
                pods.push(pod);
            }
        }
        for pod in pods {
            let f = family(pod);
            let set = format!("hostport_masq_{f}");
            if opts.masq_all {
                let any = if pod.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                script += &Self::owned_element(&set, &format!("{any} . {pod}"), &c);
            } else if opts.snat {
                for subnet in opts
                    .subnets
                    .iter()
                    .filter(|s| s.ip().is_ipv4() == pod.is_ipv4())
                {
                    script +=
                        &Self::owned_element(&set, &format!("{} . {pod}", net_text(subnet)), &c);
                }
                if pod.is_ipv4() {
                    script += &Self::owned_element(&set, &format!("127.0.0.0/8 . {pod}"), &c);
                }
            }
        }
        Self::apply(&script).map_err(|e| {
            if e.msg.contains("Device or resource busy") || e.msg.contains("File exists") {
                Error::new(
                    crate::error::code::ALREADY_EXISTS,
                    format!(
                        "portMappings: a host port is already mapped to another pod ({})",
                        e.msg
                    ),
                )
            } else {
                e.context("add port mappings")
            }
        })
    }

    fn remove(&mut self, owner: &Owner, kind: RuleKind) -> Result<()> {
        Self::delete_where(kind, |e| owner.owns(&e.comment))
    }

    fn list(&mut self, owner: &Owner, kind: RuleKind) -> Result<Owned> {
        let mut owned = Owned {
            masquerade: vec![],
            port_mappings: vec![],
        };
        for e in Self::elements()?.iter().filter(|e| owner.owns(&e.comment)) {
            match (kind, e.set.as_str()) {
                (RuleKind::Masquerade, "masq_skip_v4" | "masq_skip_v6") => {
                    // `pod . subnet/len`
                    let mut parts = e.key.split(" . ");
                    let ip = parts.next().and_then(|p| p.parse::<IpAddr>().ok());
                    let len = parts
                        .next()
                        .and_then(|s| s.split('/').nth(1))
                        .and_then(|l| l.parse::<u8>().ok());
                    if let (Some(ip), Some(prefix_len)) = (ip, len) {
                        owned.masquerade.push(Masquerade {
                            source: IpNet {
                                addr: ip.into(),
                                prefix_len,
                            },
                        });
                    }
                }
                (RuleKind::PortMappings, "hostports_v4" | "hostports_v6") => {
                    if let Some(m) = parse_mapping(&e.key, e.data.as_deref()) {
                        owned.port_mappings.push(m);
                    }
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    fn gc(&mut self, network: &str, kind: RuleKind, valid: &[Owner]) -> Result<()> {
        Self::delete_where(kind, |e| stale(&e.comment, network, valid))
    }
}

/// `host . proto . port` + `pod . port` back into a mapping.
fn parse_mapping(key: &str, data: Option<&str>) -> Option<PortMapping> {
    let k: Vec<&str> = key.split(" . ").collect();
    let d: Vec<&str> = data?.split(" . ").collect();
    if k.len() != 3 || d.len() != 2 {
        return None;
    }
    let host_ip = if k[0].contains('/') {
        None
    } else {
        Some(k[0].parse::<IpAddr>().ok()?.into())
    };
    Some(PortMapping {
        host_port: k[2].parse().ok()?,
        container_port: d[1].parse().ok()?,
        protocol: parse_protocol(k[1])?,
        host_ip,
        container_ip: d[0].parse::<IpAddr>().ok()?.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_elements_and_mappings_back() {
        let listing = json!({"nftables": [
            {"map": {"name": "hostports_v4", "elem": [[
                {"elem": {"val": {"concat": [{"prefix": {"addr": "0.0.0.0", "len": 0}}, "tcp", 8080]}, "comment": "wc:1:2 x"}},
                {"concat": ["10.88.0.2", 80]}
            ]]}},
            {"set": {"name": "masq_skip_v4", "elem": [
                {"elem": {"val": {"concat": ["10.88.0.2", {"prefix": {"addr": "10.88.0.0", "len": 16}}]}, "comment": "wc:1:2 x"}}
            ]}}
        ]});
        let elems = parse_elements(&listing);
        assert_eq!(elems[0].key, "0.0.0.0/0 . tcp . 8080");
        assert_eq!(elems[0].data.as_deref(), Some("10.88.0.2 . 80"));
        assert_eq!(elems[1].key, "10.88.0.2 . 10.88.0.0/16");
        assert_eq!(elems[1].comment, "wc:1:2 x");
        let m = parse_mapping(&elems[0].key, elems[0].data.as_deref()).unwrap();
        assert_eq!((m.host_port, m.container_port, m.host_ip), (8080, 80, None));
        assert_eq!(
            elems[1].delete(),
            "delete element inet wasm_cni masq_skip_v4 { 10.88.0.2 . 10.88.0.0/16 }\n"
        );
    }
}
