//! The nftables backend: one table, `inet wasm_cni`, whose rules never change
//! with the number of pods; every pod is a handful of set and map elements,
//! all in hash sets keyed by exact values, so adding or removing one costs the
//! same with one or a thousand others on the node. (Interval sets with
//! concatenated keys — nf_tables' pipapo — were tried first: each insert and
//! removal rebuilt the whole set, most of a DEL at 250 pods.)
//!
//! Elements go in and out over netlink ([`netlink`]): one batch, one
//! transaction per call, and only the sets a call needs are listed. The
//! table itself is written once per node by `nft -f -` from [`RULESET`],
//! under a lock, when the first call finds it missing.
//!
//! Per-pod state (elements carry the owner's comment):
//! - `masq_v4` / `_v6`: `pod : jump masq_<subnet>` — egress masqueraded
//!   unless it stays in the pod's subnet;
//! - `hostports_any_v4` / `_v6`: `protocol . host port : pod . port` (every
//!   host address), `hostports_ip_v4` / `_v6`: `host IP . protocol . host
//!   port : pod . port`;
//! - `hostport_masq_v4` / `_v6`: `pod : jump hpmasq_<subnets>` (hairpin from
//!   the pod's subnets, localhost) or `jump hostport_masq_all` (`masqAll`).
//!
//! The chains an element jumps to hold one or two rules per subnet (not per
//! pod); the first pod of a subnet on the node creates them, by `nft`, when
//! its batch fails for want of them.
//!
//! Host ports with `conditionsV4`/`conditionsV6` cannot share a map (their
//! conditions differ per pod): each such mapping is one rule in chain
//! `hostports_conditional`, commented with its owner, and its element goes
//! to `hostports_held_v4` / `_v6` — a map no rule reads, which keeps the
//! host port taken and lets CHECK read the mapping back.

mod netlink;
mod release;

use std::fs::{self, OpenOptions};
use std::net::IpAddr;

use nix::fcntl::{Flock, FlockArg};

use super::{
    among, protocol_name, stale, Condition, Firewall, HostPort, Masquerade, MatchField, Owned,
    Owner, PortMapping, PortOptions, Protocol, RuleKind,
};
use crate::bindings::IpNet;
use crate::error::{code, Error, Result};
use crate::exec;
use netlink::{Batch, Conn, Element, Failure, EEXIST, ENOENT};

pub const TABLE: &str = "wasm_cni";
const LOCK_DIR: &str = "/run/wasm-cni";
const CONDITIONAL: &str = "hostports_conditional";

/// The table, its sets and maps, and the rules that consult them.
pub const RULESET: &str = r#"
table inet wasm_cni {
  comment "wasm-cni: pod masquerade and host ports; per-pod state is in the sets and maps"

  map masq_v4 { type ipv4_addr : verdict; comment "pod address : chain masquerading its egress"; }
  map masq_v6 { type ipv6_addr : verdict; comment "pod address : chain masquerading its egress"; }
  map hostports_any_v4 { type inet_proto . inet_service : ipv4_addr . inet_service; comment "protocol . host port (every host address) : pod . port"; }
  map hostports_any_v6 { type inet_proto . inet_service : ipv6_addr . inet_service; comment "protocol . host port (every host address) : pod . port"; }
  map hostports_ip_v4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; comment "host IP . protocol . host port : pod . port"; }
  map hostports_ip_v6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; comment "host IP . protocol . host port : pod . port"; }
  map hostports_held_v4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags interval; comment "host ports forwarded by rules in hostports_conditional"; }
  map hostports_held_v6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; flags interval; comment "host ports forwarded by rules in hostports_conditional"; }
  map hostport_masq_v4 { type ipv4_addr : verdict; comment "pod : chain masquerading its host-port connections"; }
  map hostport_masq_v6 { type ipv6_addr : verdict; comment "pod : chain masquerading its host-port connections"; }

  chain hostport_masq_all {
    masquerade comment "masqAll: every host-port connection"
  }
  chain hostports_conditional {
    comment "host ports with conditions (conditionsV4/V6): one rule per mapping"
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump hostports_conditional comment "host ports with conditions"
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @hostports_ip_v4 comment "host ports on one address"
    fib daddr type local meta nfproto ipv4 meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @hostports_any_v4 comment "host ports"
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostports_ip_v6 comment "host ports on one address"
    fib daddr type local meta nfproto ipv6 meta l4proto { tcp, udp, sctp } dnat ip6 to meta l4proto . th dport map @hostports_any_v6 comment "host ports"
  }
  chain output {
    type nat hook output priority -100; policy accept;
    fib daddr type local jump hostports_conditional comment "host ports with conditions, from the node"
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @hostports_ip_v4 comment "host ports on one address, from the node"
    fib daddr type local meta nfproto ipv4 meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @hostports_any_v4 comment "host ports from the node"
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostports_ip_v6 comment "host ports on one address, from the node"
    fib daddr type local meta nfproto ipv6 meta l4proto { tcp, udp, sctp } dnat ip6 to meta l4proto . th dport map @hostports_any_v6 comment "host ports from the node"
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip daddr vmap @hostport_masq_v4 comment "host ports: hairpin, localhost, masqAll"
    ct status dnat ip6 daddr vmap @hostport_masq_v6 comment "host ports: hairpin, masqAll"
    ip daddr 224.0.0.0/4 return comment "multicast keeps its source"
    ip6 daddr ff00::/8 return comment "multicast keeps its source"
    ip saddr vmap @masq_v4 comment "pod egress"
    ip6 saddr vmap @masq_v6 comment "pod egress"
  }
}
"#;

/// A set of the new layout: when it is missing, the table is (re)written.
const LAYOUT_PROBE: &str = "hostports_any_v4";
/// The chain every `masqAll` pod's host-port connections jump to.
const MASQ_ALL: &str = "hostport_masq_all";

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "v4"
    } else {
        "v6"
    }
}

fn bits(ip: IpAddr) -> u32 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::from((v as u32).to_be_bytes())
    } else {
        IpAddr::from(v.to_be_bytes())
    }
}

/// First and last address of a prefix.
fn range(ip: IpAddr, prefix_len: u8) -> (IpAddr, IpAddr) {
    let b = bits(ip);
    let host: u128 = if prefix_len as u32 >= b {
        0
    } else {
        (u128::MAX >> (128 - b)) >> prefix_len
    };
    let v = to_u128(ip);
    (
        from_u128(v & !host, ip.is_ipv4()),
        from_u128(v | host, ip.is_ipv4()),
    )
}

fn addr(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn addr_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn proto_from(n: u8) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// A port as a key field: network order, padded to a register.
fn port(p: u16) -> [u8; 4] {
    let b = p.to_be_bytes();
    [b[0], b[1], 0, 0]
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A prefix as chain-name text: the first address in hex, then the length.
fn prefix_name(ip: IpAddr, prefix_len: u8) -> String {
    let (start, _) = range(ip, prefix_len);
    let hex: String = addr(start).iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}_{prefix_len}")
}

/// The chain a pod's egress jumps to: masquerade unless the destination is
/// in the pod's subnet. One per subnet on the node.
fn masq_chain(ip: IpAddr, prefix_len: u8) -> (String, String) {
    let (start, _) = range(ip, prefix_len);
    let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
    let name = format!("masq_{}_{}", family(ip), prefix_name(ip, prefix_len));
    let body = format!(
        "{fam} daddr != {start}/{prefix_len} masquerade comment \"egress of pods of {start}/{prefix_len}\""
    );
    (name, body)
}

/// The prefix length a `masq_*` chain name ends in.
fn masq_chain_prefix(name: &str) -> Option<u8> {
    name.strip_prefix("masq_")?.rsplit('_').next()?.parse().ok()
}

/// The chain a pod's host-port connections jump to with `snat`: masquerade
/// those from its subnets (hairpin) and, for IPv4, from localhost. `None`
/// when there is nothing to masquerade (IPv6 without a subnet).
fn hostport_masq_chain(pod: IpAddr, subnets: &[IpNet]) -> Option<(String, String)> {
    let fam = if pod.is_ipv4() { "ip" } else { "ip6" };
    let mut name = format!("hpmasq_{}", family(pod));
    let mut body = String::new();
    for s in subnets.iter().filter(|s| s.ip().is_ipv4() == pod.is_ipv4()) {
        let (start, _) = range(s.ip(), s.prefix_len);
        name += &format!("_{}", prefix_name(s.ip(), s.prefix_len));
        body += &format!(
            "{fam} saddr {start}/{len} masquerade comment \"hairpin\"\n",
            len = s.prefix_len
        );
    }
    if pod.is_ipv4() {
        name += "_lo";
        body += "ip saddr 127.0.0.0/8 masquerade comment \"localhost\"\n";
    }
    (!body.is_empty()).then_some((name, body))
}

/// A pod address jumping to `chain` (masq_*, hostport_masq_*).
fn jump_element(pod: IpAddr, chain: &str, comment: &str) -> Element {
    Element {
        key: addr(pod),
        jump: Some(chain.to_string()),
        comment: comment.to_string(),
        ..Element::default()
    }
}

/// A host port's key in `hostports_any_*`: protocol . host port (and the
/// tail of its key in `hostports_ip_*`).
fn any_key(protocol: Protocol, host_port: u16) -> Vec<u8> {
    concat(&[&[proto_number(protocol), 0, 0, 0], &port(host_port)])
}

/// A mapping's element and the map it goes to: `hostports_any_*` without a
/// host IP, `hostports_ip_*` with one.
fn mapping_element(m: &PortMapping, comment: &str) -> (&'static str, Element) {
    let pod: IpAddr = m.container_ip.into();
    let (set, key) = match m.host_ip.map(IpAddr::from) {
        Some(h) => (
            set_name("hostports_ip", pod),
            concat(&[&addr(h), &any_key(m.protocol, m.host_port)]),
        ),
        None => (
            set_name("hostports_any", pod),
            any_key(m.protocol, m.host_port),
        ),
    };
    let e = Element {
        key,
        data: Some(concat(&[&addr(pod), &port(m.container_port)])),
        comment: comment.to_string(),
        ..Element::default()
    };
    (set, e)
}

/// A conditional mapping's element in `hostports_held_*`: the host address
/// as a range (every address without a host IP).
fn held_element(m: &PortMapping, comment: &str) -> Element {
    let pod: IpAddr = m.container_ip.into();
    let (h0, h1) = match m.host_ip.map(IpAddr::from) {
        Some(h) => (h, h),
        None => range(pod, 0),
    };
    let proto = [proto_number(m.protocol), 0, 0, 0];
    Element {
        key: concat(&[&addr(h0), &proto, &port(m.host_port)]),
        key_end: Some(concat(&[&addr(h1), &proto, &port(m.host_port)])),
        data: Some(concat(&[&addr(pod), &port(m.container_port)])),
        comment: comment.to_string(),
        ..Element::default()
    }
}

/// A host-port map element back into its mapping (any of the three maps).
fn parse_mapping(e: &Element) -> Option<PortMapping> {
    let data = e.data.as_deref()?;
    let len = data.len().checked_sub(4)?;
    let pod = addr_from(data.get(..len)?)?;
    let host_len = e.key.len().checked_sub(8)?;
    let host_ip = match host_len {
        0 => None,
        _ => {
            let host = addr_from(&e.key[..host_len])?;
            let end = match e.key_end.as_deref() {
                Some(k) => addr_from(k.get(..host_len)?)?,
                None => host,
            };
            (host == end).then_some(host)
        }
    };
    Some(PortMapping {
        host_port: u16::from_be_bytes([e.key[host_len + 4], e.key[host_len + 5]]),
        container_port: u16::from_be_bytes([*data.get(len)?, *data.get(len + 1)?]),
        protocol: proto_from(e.key[host_len])?,
        host_ip: host_ip.map(Into::into),
        container_ip: pod.into(),
    })
}

/// A `pod : jump masq_<subnet>` element back into its masquerade rule.
fn parse_masquerade(e: &Element) -> Option<Masquerade> {
    Some(Masquerade {
        source: IpNet {
            addr: addr_from(&e.key)?.into(),
            prefix_len: masq_chain_prefix(e.jump.as_deref()?)?,
        },
    })
}

fn sets_of(kind: RuleKind) -> &'static [&'static str] {
    match kind {
        RuleKind::Masquerade => &["masq_v4", "masq_v6"],
        RuleKind::PortMappings => &[
            "hostports_any_v4",
            "hostports_any_v6",
            "hostports_ip_v4",
            "hostports_ip_v6",
            "hostports_held_v4",
            "hostports_held_v6",
            "hostport_masq_v4",
            "hostport_masq_v6",
        ],
    }
}

/// The sets `list` reads back for CHECK: all but the host-port masquerade
/// maps, which a mapping does not name.
fn listed_sets(kind: RuleKind) -> impl Iterator<Item = &'static str> {
    sets_of(kind)
        .iter()
        .copied()
        .filter(|s| !s.starts_with("hostport_masq"))
}

/// A failed batch as an error naming the set of the failing message.
fn failure(f: &Failure, sets: &[&str], what: &str) -> Error {
    let set = f.index.and_then(|i| sets.get(i)).copied().unwrap_or(TABLE);
    Error::io(format!("nftables: {what} ({set}): {}", f.describe()))
}

fn kernel_error(what: &str, f: &Failure) -> Error {
    Error::io(format!("nftables: {what}: {}", f.describe()))
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

/// A condition in nft syntax; every part was checked by
/// [`super::validate_options`], so it is text the host chose.
fn condition_text(c: &Condition) -> String {
    let op = if c.negate { "!= " } else { "" };
    match &c.field {
        MatchField::Source(n) | MatchField::Destination(n) => {
            let ip = n.ip();
            let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
            let dir = if matches!(c.field, MatchField::Source(_)) {
                "saddr"
            } else {
                "daddr"
            };
            let (start, _) = range(ip, n.prefix_len);
            format!("{fam} {dir} {op}{start}/{}", n.prefix_len)
        }
        MatchField::InInterface(name) => format!("iifname {op}\"{name}\""),
    }
}

/// The rule of one conditional mapping.
fn conditional_rule(m: &PortMapping, conditions: &[Condition], comment: &str) -> String {
    let pod: IpAddr = m.container_ip.into();
    let fam = if pod.is_ipv4() { "ip" } else { "ip6" };
    let mut parts: Vec<String> = conditions.iter().map(condition_text).collect();
    if let Some(h) = m.host_ip.map(IpAddr::from) {
        parts.push(format!("{fam} daddr {h}"));
    }
    parts.push(format!(
        "meta l4proto {p} {p} dport {} dnat {fam} to {}",
        m.host_port,
        match pod {
            IpAddr::V6(v6) => format!("[{v6}]:{}", m.container_port),
            v4 => format!("{v4}:{}", m.container_port),
        },
        p = protocol_name(m.protocol)
    ));
    format!(
        "add rule inet {TABLE} {CONDITIONAL} {} comment \"{}\"\n",
        parts.join(" "),
        comment.replace('"', "'")
    )
}

pub struct Nftables {
    conn: Option<Conn>,
    /// The node-wide lock, while a call holds it (see [`lock`]).
    locked: Option<Flock<fs::File>>,
}

impl Default for Nftables {
    fn default() -> Self {
        Self::new()
    }
}

/// The node-wide lock serialising table and chain creation and the
/// host-port check with its additions.
fn lock() -> Result<Flock<fs::File>> {
    fs::create_dir_all(LOCK_DIR).map_err(|e| Error::io(format!("create {LOCK_DIR}: {e}")))?;
    let path = format!("{LOCK_DIR}/nftables.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("open {path}: {e}")))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io(format!("lock {path}: {e}")))
}

impl Nftables {
    pub fn new() -> Self {
        Nftables {
            conn: None,
            locked: None,
        }
    }

    /// The netlink socket, opened on first use in the current namespace.
    fn conn(&mut self) -> Result<&mut Conn> {
        if self.conn.is_none() {
            let c = Conn::open().map_err(|e| {
                Error::io(format!("nftables: open a netfilter netlink socket: {e}"))
            })?;
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::io("nftables: no netlink socket"))
    }

    /// Creates the table, and the chains `chains` (name, rules) that are
    /// missing. Runs when a batch failed with ENOENT, under the lock, so
    /// parallel first ADDs do not add anything twice. A table of an older
    /// layout (without [`LAYOUT_PROBE`]) is replaced.
    fn ensure_table_and_chains(&mut self, chains: &[(String, String)]) -> Result<()> {
        // flock is per open file: taking it again here would wait forever
        // on a lock this call already holds.
        let _lock = match self.locked {
            Some(_) => None,
            None => Some(lock()?),
        };
        match self.conn()?.elements(TABLE, LAYOUT_PROBE) {
            Ok(_) => {}
            Err(f) if f.errno == ENOENT => {
                // `add table` first, so the delete succeeds when none exists.
                let script =
                    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n{RULESET}");
                nft(&["-f", "-"], &script).map_err(|e| e.context("create the wasm_cni table"))?;
                tracing::info!("created nftables table inet {TABLE}");
            }
            Err(f) => return Err(kernel_error("look for table inet wasm_cni", &f)),
        }
        let mut script = String::new();
        for (name, rules) in chains {
            match self.conn()?.chain(TABLE, name) {
                Ok(()) => {}
                Err(f) if f.errno == ENOENT => {
                    script += &format!("add chain inet {TABLE} {name}\n");
                    for rule in rules.lines().filter(|l| !l.trim().is_empty()) {
                        script += &format!("add rule inet {TABLE} {name} {rule}\n");
                    }
                }
                Err(f) => return Err(kernel_error(&format!("look for chain {name}"), &f)),
            }
        }
        if !script.is_empty() {
            nft(&["-f", "-"], &script).map_err(|e| e.context("create chains"))?;
            tracing::info!(chains = chains.len(), "created nftables chains");
        }
        Ok(())
    }

    /// Commits `batch` as one transaction. When the table or a chain an
    /// element jumps to is missing (ENOENT), creates them and commits again.
    fn try_commit(
        &mut self,
        batch: &Batch,
        chains: &[(String, String)],
    ) -> Result<std::result::Result<(), Failure>> {
        match self.conn()?.commit(batch) {
            Err(f) if f.errno == ENOENT => {
                self.ensure_table_and_chains(chains)?;
                Ok(self.conn()?.commit(batch))
            }
            other => Ok(other),
        }
    }

    /// Every element of `set`; none when the table does not exist.
    fn elements(&mut self, set: &str) -> Result<Vec<Element>> {
        match self.conn()?.elements(TABLE, set) {
            Ok(v) => Ok(v),
            Err(f) if f.errno == ENOENT => Ok(Vec::new()),
            Err(f) => Err(kernel_error(&format!("list set {set}"), &f)),
        }
    }

    /// Fails when a host port of `maps` is already mapped to another
    /// attachment: the same host IP, or either one on every address.
    /// Mappings on every address (the common case) are looked up by key
    /// in `hostports_any_*`, so the check costs the same with any number
    /// of pods; the maps of mappings with a host IP or conditions, which
    /// any mapping of the port may clash with, are listed.
    fn check_host_ports(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
        let mut taken: Vec<(PortMapping, String)> = Vec::new();
        let keep = |e: Element, taken: &mut Vec<(PortMapping, String)>| {
            if !owner.owns(&e.comment) {
                if let Some(m) = parse_mapping(&e) {
                    taken.push((m, e.comment));
                }
            }
        };
        for f in ["v4", "v6"] {
            let of_family: Vec<&PortMapping> = maps
                .iter()
                .filter(|m| family(m.container_ip.into()) == f)
                .collect();
            if of_family.is_empty() {
                continue;
            }
            let any = format!("hostports_any_{f}");
            for m in &of_family {
                match self
                    .conn()?
                    .element(TABLE, &any, &any_key(m.protocol, m.host_port))
                {
                    Ok(Some(e)) => keep(e, &mut taken),
                    Ok(None) => {}
                    Err(f) => return Err(kernel_error(&format!("look up set {any}"), &f)),
                }
            }
            for kind in ["hostports_ip", "hostports_held"] {
                for e in self.elements(&format!("{kind}_{f}"))? {
                    keep(e, &mut taken);
                }
            }
        }
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
                    code::ALREADY_EXISTS,
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

    /// The element of `set` keyed `key`, looked up by the kernel, if it is
    /// the owner's.
    fn owned_element(&mut self, owner: &Owner, set: &str, key: &[u8]) -> Result<Option<Element>> {
        match self.conn()?.element(TABLE, set, key) {
            Ok(e) => Ok(e.filter(|e| owner.owns(&e.comment))),
            Err(f) => Err(kernel_error(&format!("look up set {set}"), &f)),
        }
    }

    /// Each pod address's element in the `prefix` set of its family
    /// (`masq`, `hostport_masq`), looked up by key, where it is the owner's;
    /// with the set it is in.
    fn owned_of_pods(
        &mut self,
        owner: &Owner,
        prefix: &str,
        pods: &[IpAddr],
    ) -> Result<Vec<(&'static str, Element)>> {
        let mut found = Vec::new();
        for &pod in pods {
            let set = set_name(prefix, pod);
            if let Some(e) = self.owned_element(owner, set, &addr(pod))? {
                found.push((set, e));
            }
        }
        Ok(found)
    }

    /// Adds to `batch` the deletion of the owner's elements of the pod
    /// addresses in the `prefix` sets (see [`Nftables::owned_of_pods`]).
    fn delete_owned_of_pods(
        &mut self,
        owner: &Owner,
        prefix: &str,
        pods: &[IpAddr],
        batch: &mut Batch,
        names: &mut Vec<&'static str>,
    ) -> Result<()> {
        for (set, e) in self.owned_of_pods(owner, prefix, pods)? {
            batch.delete(TABLE, set, &e);
            names.push(set);
        }
        Ok(())
    }

    /// Commits a batch of deletions (`names`: the set of each); elements
    /// already gone are no error.
    fn commit_deletions(&mut self, batch: &Batch, names: &[&str]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.conn()?.commit(batch) {
            Err(f) if f.errno == ENOENT => Ok(()),
            other => other.map_err(|f| failure(&f, names, "delete elements")),
        }
    }

    /// Deletes the elements of `kind` that `pick` selects, and for port
    /// mappings the conditional rules of the same owners.
    fn delete_where(&mut self, kind: RuleKind, pick: impl Fn(&str) -> bool) -> Result<()> {
        let mut batch = Batch::new();
        let mut names: Vec<&str> = Vec::new();
        for set in sets_of(kind) {
            for e in self.elements(set)?.iter().filter(|e| pick(&e.comment)) {
                batch.delete(TABLE, set, e);
                names.push(set);
            }
        }
        if kind == RuleKind::PortMappings {
            let rules = match self.conn()?.rules(TABLE, CONDITIONAL) {
                Ok(r) => r,
                Err(f) if f.errno == ENOENT => Vec::new(),
                Err(f) => return Err(kernel_error(&format!("list chain {CONDITIONAL}"), &f)),
            };
            for r in rules.iter().filter(|r| pick(&r.comment)) {
                batch.delete_rule(TABLE, CONDITIONAL, r.handle);
                names.push(CONDITIONAL);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        match self.conn()?.commit(&batch) {
            // The table is gone: so is everything to delete.
            Err(f) if f.errno == ENOENT => Ok(()),
            other => other.map_err(|f| failure(&f, &names, "delete elements")),
        }
    }

    /// Commits `adds` in one transaction. Elements keyed by a pod address
    /// can pass to a new pod while the old owner's is still there (its DEL
    /// released the address first, or failed half way): when one of them
    /// exists, the transaction is sent again with each of them added,
    /// deleted and added, so the newest owner's comment is on it and its
    /// DEL is the one that removes it. Only that rare retry deletes: a
    /// transaction that deletes makes closing the socket wait for the
    /// kernel to free the old elements (an RCU grace period).
    fn add_all(&mut self, adds: &Additions) -> Result<std::result::Result<(), (i32, Error)>> {
        let mut first = Batch::new();
        let mut names = Vec::new();
        for (set, e) in &adds.plain {
            first.add(TABLE, set, e);
            names.push(*set);
        }
        for (set, e) in &adds.owned {
            first.add_new(TABLE, set, e);
            names.push(*set);
        }
        match self.try_commit(&first, &adds.chains)? {
            Err(f) if f.errno == EEXIST => {}
            other => return Ok(other.map_err(|f| (f.errno, failure(&f, &names, &adds.what)))),
        }
        let mut again = Batch::new();
        let mut names = Vec::new();
        for (set, e) in &adds.plain {
            again.add(TABLE, set, e);
            names.push(*set);
        }
        for (set, e) in &adds.owned {
            again.add(TABLE, set, e);
            again.delete(TABLE, set, e);
            again.add(TABLE, set, e);
            names.extend([*set, *set, *set]);
        }
        Ok(self
            .try_commit(&again, &adds.chains)?
            .map_err(|f| (f.errno, failure(&f, &names, &adds.what))))
    }
}

/// The elements of one call: `plain` ones added as they are, `owned` ones
/// (keyed by a pod address) taken over from an earlier owner if need be,
/// and the chains (name, rules) the elements jump to.
struct Additions {
    what: String,
    plain: Vec<(&'static str, Element)>,
    owned: Vec<(&'static str, Element)>,
    chains: Vec<(String, String)>,
}

impl Additions {
    fn new(what: &str) -> Additions {
        Additions {
            what: what.to_string(),
            plain: Vec::new(),
            owned: Vec::new(),
            chains: Vec::new(),
        }
    }

    fn jump(&mut self, set: &'static str, pod: IpAddr, chain: (String, String), comment: &str) {
        self.owned.push((set, jump_element(pod, &chain.0, comment)));
        if !self.chains.iter().any(|(n, _)| *n == chain.0) {
            self.chains.push(chain);
        }
    }
}

fn set_name(prefix: &str, ip: IpAddr) -> &'static str {
    match (prefix, ip.is_ipv4()) {
        ("masq", true) => "masq_v4",
        ("masq", false) => "masq_v6",
        ("hostports_any", true) => "hostports_any_v4",
        ("hostports_any", false) => "hostports_any_v6",
        ("hostports_ip", true) => "hostports_ip_v4",
        ("hostports_ip", false) => "hostports_ip_v6",
        ("hostports_held", true) => "hostports_held_v4",
        ("hostports_held", false) => "hostports_held_v6",
        (_, true) => "hostport_masq_v4",
        (_, false) => "hostport_masq_v6",
    }
}

impl Firewall for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn add_masquerade(&mut self, owner: &Owner, rules: &[Masquerade]) -> Result<()> {
        let c = owner.comment();
        let mut adds = Additions::new("add masquerade");
        for r in rules {
            let ip = r.source.ip();
            adds.jump(
                set_name("masq", ip),
                ip,
                masq_chain(ip, r.source.prefix_len),
                &c,
            );
        }
        self.add_all(&adds)?.map_err(|(_, e)| e)
    }

    fn add_port_mappings(
        &mut self,
        owner: &Owner,
        maps: &[PortMapping],
        opts: &PortOptions,
    ) -> Result<()> {
        let c = owner.comment();
        let mut adds = Additions::new("add port mappings");
        let mut rules = String::new();
        let mut pods: Vec<IpAddr> = Vec::new();
        for m in maps {
            let pod: IpAddr = m.container_ip.into();
            let conditions = if pod.is_ipv4() {
                &opts.conditions_v4
            } else {
                &opts.conditions_v6
            };
            if conditions.is_empty() {
                adds.plain.push(mapping_element(m, &c));
            } else {
                rules += &conditional_rule(m, conditions, &c);
                adds.plain
                    .push((set_name("hostports_held", pod), held_element(m, &c)));
            }
            if !pods.contains(&pod) {
                pods.push(pod);
            }
        }
        for pod in pods {
            let set = set_name("hostport_masq", pod);
            if opts.masq_all {
                adds.jump(set, pod, (MASQ_ALL.to_string(), String::new()), &c);
            } else if opts.snat {
                if let Some(chain) = hostport_masq_chain(pod, &opts.subnets) {
                    adds.jump(set, pod, chain, &c);
                }
            }
        }
        // The check and the additions under one lock: two ADDs cannot both
        // find a port free (the maps are keyed exactly, so the kernel does
        // not see a port on every address clash with one on a single one).
        self.locked = Some(lock()?);
        let added = self
            .check_host_ports(owner, maps)
            .and_then(|()| self.add_all(&adds));
        self.locked = None;
        // EBUSY, EEXIST: a host port another pod's element holds.
        let added = added?.map_err(|(errno, e)| {
            if [libc::EBUSY, libc::EEXIST, libc::ENOTEMPTY].contains(&errno) {
                Error::new(
                    code::ALREADY_EXISTS,
                    format!(
                        "portMappings: a host port is already mapped to another pod ({})",
                        e.msg
                    ),
                )
            } else {
                e
            }
        });
        added?;
        if !rules.is_empty() {
            // Conditional mappings are rare and their rules differ per pod:
            // written by `nft`. Undone on failure so nothing is half there.
            if let Err(e) = nft(&["-f", "-"], &rules) {
                let _ = self.remove(owner, RuleKind::PortMappings);
                return Err(e.context("add host ports with conditions"));
            }
        }
        Ok(())
    }

    fn remove(&mut self, owner: &Owner, kind: RuleKind) -> Result<()> {
        self.delete_where(kind, |c| owner.owns(c))
    }

    /// Each address's element of `masq_v4` / `masq_v6`, looked up by key
    /// and deleted when it is the owner's.
    fn remove_masquerade_of(&mut self, owner: &Owner, pods: &[IpAddr]) -> Result<()> {
        if pods.is_empty() {
            return self.remove(owner, RuleKind::Masquerade);
        }
        let mut batch = Batch::new();
        let mut names = Vec::new();
        self.delete_owned_of_pods(owner, "masq", pods, &mut batch, &mut names)?;
        self.commit_deletions(&batch, &names)
    }

    /// Each port's elements of `hostports_ip_*` (with a host IP) or
    /// `hostports_any_*` (one per pod address family), and each address's
    /// of `hostport_masq_*`, looked up by key and deleted. A port whose
    /// elements are not all found as the owner's (a mapping with
    /// conditions, one already gone, one the runtime did not pass to ADD)
    /// means the keys do not tell everything: the owner's are listed then.
    fn remove_host_ports(
        &mut self,
        owner: &Owner,
        ports: &[HostPort],
        pods: &[IpAddr],
    ) -> Result<()> {
        if ports.is_empty() || pods.is_empty() {
            return self.remove(owner, RuleKind::PortMappings);
        }
        let mut any_sets: Vec<&'static str> = Vec::new();
        for &pod in pods {
            let set = set_name("hostports_any", pod);
            if !any_sets.contains(&set) {
                any_sets.push(set);
            }
        }
        let mut batch = Batch::new();
        let mut names = Vec::new();
        for p in ports {
            let any = any_key(p.protocol, p.port);
            let keys: Vec<(&'static str, Vec<u8>)> = match p.host_ip.map(IpAddr::from) {
                Some(h) => vec![(set_name("hostports_ip", h), concat(&[&addr(h), &any]))],
                None => any_sets.iter().map(|&set| (set, any.clone())).collect(),
            };
            for (set, key) in keys {
                match self.owned_element(owner, set, &key)? {
                    Some(e) => {
                        batch.delete(TABLE, set, &e);
                        names.push(set);
                    }
                    None => return self.remove(owner, RuleKind::PortMappings),
                }
            }
        }
        self.delete_owned_of_pods(owner, "hostport_masq", pods, &mut batch, &mut names)?;
        self.commit_deletions(&batch, &names)
    }

    fn list(&mut self, owner: &Owner, kind: RuleKind) -> Result<Owned> {
        let mut owned = Owned {
            masquerade: vec![],
            port_mappings: vec![],
        };
        for set in listed_sets(kind) {
            for e in self
                .elements(set)?
                .iter()
                .filter(|e| owner.owns(&e.comment))
            {
                match kind {
                    RuleKind::Masquerade => owned.masquerade.extend(parse_masquerade(e)),
                    RuleKind::PortMappings => owned.port_mappings.extend(parse_mapping(e)),
                }
            }
        }
        Ok(owned)
    }

    /// Each mapping's element of `hostports_any_*` / `hostports_ip_*`,
    /// looked up by key; when one is not there as the owner's and the same
    /// mapping (a mapping with conditions is in `hostports_held_*`), the
    /// owner's are listed instead.
    fn port_mappings_of(
        &mut self,
        owner: &Owner,
        maps: &[PortMapping],
    ) -> Result<Vec<PortMapping>> {
        let mut found = Vec::with_capacity(maps.len());
        for m in maps {
            let (set, probe) = mapping_element(m, "");
            let have = self
                .owned_element(owner, set, &probe.key)?
                .as_ref()
                .and_then(parse_mapping);
            match have {
                Some(have) if have == *m => found.push(have),
                _ => {
                    let have = self.list(owner, RuleKind::PortMappings)?.port_mappings;
                    return Ok(among(maps, &have));
                }
            }
        }
        Ok(found)
    }

    /// Each address's element of `masq_v4` / `masq_v6`, looked up by key.
    fn masquerade_of(&mut self, owner: &Owner, pods: &[IpAddr]) -> Result<Vec<Masquerade>> {
        if pods.is_empty() {
            return Ok(self.list(owner, RuleKind::Masquerade)?.masquerade);
        }
        let found = self.owned_of_pods(owner, "masq", pods)?;
        Ok(found
            .iter()
            .filter_map(|(_, e)| parse_masquerade(e))
            .collect())
    }

    fn gc(&mut self, network: &str, kind: RuleKind, valid: &[Owner]) -> Result<()> {
        self.delete_where(kind, |c| stale(c, network, valid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_are_laid_out_as_nft_does() {
        // As `nft --debug=netlink` shows them: tcp . 8080 : 10.88.0.2 . 80
        let m = PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
            container_ip: ip("10.88.0.2").into(),
        };
        let (set, e) = mapping_element(&m, "wc:1 x");
        assert_eq!(set, "hostports_any_v4");
        assert_eq!(e.key, [6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(e.key_end, None);
        assert_eq!(e.data.as_deref(), Some(&[10, 88, 0, 2, 0, 80, 0, 0][..]));
        let back = parse_mapping(&e).unwrap();
        assert_eq!((back.host_port, back.container_port), (8080, 80));
        assert!(back.host_ip.is_none());

        // With a host IP: 192.0.2.1 . udp . 53 : fd00::2 . 53
        let m = PortMapping {
            host_port: 53,
            container_port: 53,
            protocol: Protocol::Udp,
            host_ip: Some(ip("fd00::1").into()),
            container_ip: ip("fd00::2").into(),
        };
        let (set, e) = mapping_element(&m, "c");
        assert_eq!(set, "hostports_ip_v6");
        assert_eq!(e.key.len(), 16 + 8);
        let back = parse_mapping(&e).unwrap();
        assert_eq!(back.host_ip.map(IpAddr::from), Some(ip("fd00::1")));
        assert_eq!(IpAddr::from(back.container_ip), ip("fd00::2"));

        // Conditional mappings keep the host address as a range.
        let held = held_element(&PortMapping { host_ip: None, ..m }, "c");
        assert!(parse_mapping(&held).unwrap().host_ip.is_none());

        let (a, b) = range(ip("fd00::5"), 64);
        assert_eq!((a, b), (ip("fd00::"), ip("fd00::ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn masquerade_jumps_to_its_subnets_chain() {
        let (name, rule) = masq_chain(ip("10.88.0.7"), 16);
        assert_eq!(name, "masq_v4_0a580000_16");
        assert_eq!(
            rule,
            "ip daddr != 10.88.0.0/16 masquerade comment \"egress of pods of 10.88.0.0/16\""
        );
        let e = jump_element(ip("10.88.0.7"), &name, "c");
        let m = parse_masquerade(&e).unwrap();
        assert_eq!((m.source.ip(), m.source.prefix_len), (ip("10.88.0.7"), 16));
        assert_eq!(
            masq_chain(ip("fd00::7"), 64).0,
            "masq_v6_fd000000000000000000000000000000_64"
        );

        let subnets = [
            IpNet {
                addr: ip("10.88.0.0").into(),
                prefix_len: 16,
            },
            IpNet {
                addr: ip("fd00::").into(),
                prefix_len: 64,
            },
        ];
        let (name, rules) = hostport_masq_chain(ip("10.88.0.7"), &subnets).unwrap();
        assert_eq!(name, "hpmasq_v4_0a580000_16_lo");
        assert_eq!(rules.lines().count(), 2);
        assert!(rules.contains("ip saddr 127.0.0.0/8 masquerade"));
        let (name, rules) = hostport_masq_chain(ip("fd00::7"), &subnets).unwrap();
        assert_eq!(name, "hpmasq_v6_fd000000000000000000000000000000_64");
        assert_eq!(
            rules.trim(),
            "ip6 saddr fd00::/64 masquerade comment \"hairpin\""
        );
        assert!(hostport_masq_chain(ip("fd00::7"), &subnets[..1]).is_none());
    }

    #[test]
    fn conditions_become_nft_matches() {
        let m = PortMapping {
            host_port: 53,
            container_port: 5353,
            protocol: Protocol::Udp,
            host_ip: Some(ip("192.0.2.1").into()),
            container_ip: ip("10.88.0.2").into(),
        };
        let conds = [
            Condition {
                negate: true,
                field: MatchField::Source(IpNet {
                    addr: ip("198.51.100.7").into(),
                    prefix_len: 24,
                }),
            },
            Condition {
                negate: false,
                field: MatchField::InInterface("eth1".into()),
            },
        ];
        assert_eq!(
            conditional_rule(&m, &conds, "wc:1 x"),
            "add rule inet wasm_cni hostports_conditional ip saddr != 198.51.100.0/24 \
             iifname \"eth1\" ip daddr 192.0.2.1 meta l4proto udp udp dport 53 \
             dnat ip to 10.88.0.2:5353 comment \"wc:1 x\"\n"
        );
    }
}
