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
//! - `masq_<subnet>` (a set of pod addresses, one per subnet): egress
//!   masqueraded unless it stays in the pod's subnet;
//! - `hostports_any_v4` / `_v6`: `protocol . host port : pod . port` (every
//!   host address), `hostports_ip_v4` / `_v6`: `host IP . protocol . host
//!   port : pod . port`;
//! - `hpmasq_<subnets>` (a set of pod addresses, one per combination of a
//!   pod's subnets): its host-port connections masqueraded when they come
//!   from those subnets (hairpin) or localhost; `hostport_masq_all_v4` /
//!   `_v6`: all of them (`masqAll`).
//!
//! A per-subnet set comes with one rule per subnet (not per pod) that reads
//! it, in chain `pod_egress` or `hostport_masq`; the first pod of a subnet on
//! the node creates both, by `nft`, when its batch fails for want of the
//! set. No element carries a verdict: an element that jumps to a chain makes
//! the kernel validate the whole table at every commit, walking every such
//! element, which costs more with every pod.
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

  map hostports_any_v4 { type inet_proto . inet_service : ipv4_addr . inet_service; comment "protocol . host port (every host address) : pod . port"; }
  map hostports_any_v6 { type inet_proto . inet_service : ipv6_addr . inet_service; comment "protocol . host port (every host address) : pod . port"; }
  map hostports_ip_v4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; comment "host IP . protocol . host port : pod . port"; }
  map hostports_ip_v6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; comment "host IP . protocol . host port : pod . port"; }
  map hostports_held_v4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags interval; comment "host ports forwarded by rules in hostports_conditional"; }
  map hostports_held_v6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; flags interval; comment "host ports forwarded by rules in hostports_conditional"; }
  set hostport_masq_all_v4 { type ipv4_addr; comment "pods whose host-port connections are all masqueraded (masqAll)"; }
  set hostport_masq_all_v6 { type ipv6_addr; comment "pods whose host-port connections are all masqueraded (masqAll)"; }

  chain hostport_masq {
    comment "host-port connections masqueraded: masqAll, and one rule per hpmasq_* set"
    ip daddr @hostport_masq_all_v4 masquerade comment "masqAll"
    ip6 daddr @hostport_masq_all_v6 masquerade comment "masqAll"
  }
  chain pod_egress {
    comment "pod egress masqueraded: one rule per masq_* set (subnet)"
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
    ct status dnat jump hostport_masq comment "host ports: hairpin, localhost, masqAll"
    ip daddr 224.0.0.0/4 return comment "multicast keeps its source"
    ip6 daddr ff00::/8 return comment "multicast keeps its source"
    jump pod_egress comment "pod egress"
  }
}
"#;

/// A set of the current layout: when it is missing, the table is upgraded
/// (see [`Nftables::upgrade`]) or written.
const LAYOUT_PROBE: &str = "hostport_masq_all_v4";
/// A set of the layout before, whose per-pod verdict maps are upgraded in
/// place; a table without it is older still, and replaced.
const VERDICT_LAYOUT_PROBE: &str = "hostports_any_v4";
/// The per-pod verdict maps of the layout before.
const VERDICT_MAPS: [&str; 4] = ["masq_v4", "masq_v6", "hostport_masq_v4", "hostport_masq_v6"];
/// The chains holding the rules of the per-subnet sets.
const EGRESS: &str = "pod_egress";
const HOSTPORT_MASQ: &str = "hostport_masq";

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

/// A set of pod addresses made on demand, and the rules in `chain` that
/// read it: one per subnet (`masq_*`), one per combination of a pod's
/// subnets (`hpmasq_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodSet {
    name: String,
    v4: bool,
    comment: String,
    chain: &'static str,
    rules: Vec<String>,
}

impl PodSet {
    /// The `nft` commands creating the set and its rules.
    fn script(&self) -> String {
        let ty = if self.v4 { "ipv4_addr" } else { "ipv6_addr" };
        let mut s = format!(
            "add set inet {TABLE} {} {{ type {ty}; comment \"{}\"; }}\n",
            self.name, self.comment
        );
        for rule in &self.rules {
            s += &format!("add rule inet {TABLE} {} {rule}\n", self.chain);
        }
        s
    }
}

/// The set of the pods of a subnet whose egress is masqueraded unless the
/// destination is in the subnet. One per subnet on the node.
fn masq_set(ip: IpAddr, prefix_len: u8) -> PodSet {
    let (start, _) = range(ip, prefix_len);
    let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
    let name = format!("masq_{}_{}", family(ip), prefix_name(ip, prefix_len));
    let subnet = format!("{start}/{prefix_len}");
    PodSet {
        rules: vec![format!(
            "{fam} saddr @{name} {fam} daddr != {subnet} masquerade comment \"egress of pods of {subnet}\""
        )],
        name,
        v4: ip.is_ipv4(),
        comment: format!("pods of {subnet}: egress masqueraded"),
        chain: EGRESS,
    }
}

/// The prefix length a `masq_*` set's name ends in.
fn masq_set_prefix(name: &str) -> Option<u8> {
    name.strip_prefix("masq_")?.rsplit('_').next()?.parse().ok()
}

/// The set of the pods whose host-port connections with `snat` are
/// masqueraded when they come from the pod's subnets (hairpin) and, for
/// IPv4, from localhost. `None` when there is nothing to masquerade (IPv6
/// without a subnet).
fn hostport_masq_set(pod: IpAddr, subnets: &[IpNet]) -> Option<PodSet> {
    let fam = if pod.is_ipv4() { "ip" } else { "ip6" };
    let mut name = format!("hpmasq_{}", family(pod));
    let mut sources = Vec::new();
    for s in subnets.iter().filter(|s| s.ip().is_ipv4() == pod.is_ipv4()) {
        let (start, _) = range(s.ip(), s.prefix_len);
        name += &format!("_{}", prefix_name(s.ip(), s.prefix_len));
        sources.push((format!("{start}/{}", s.prefix_len), "hairpin"));
    }
    if pod.is_ipv4() {
        name += "_lo";
        sources.push(("127.0.0.0/8".to_string(), "localhost"));
    }
    let rules: Vec<String> = sources
        .iter()
        .map(|(src, why)| {
            format!("{fam} daddr @{name} {fam} saddr {src} masquerade comment \"{why}\"")
        })
        .collect();
    let comment = format!(
        "pods whose host-port connections from {} are masqueraded",
        sources
            .iter()
            .map(|(src, _)| src.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    (!rules.is_empty()).then_some(PodSet {
        name,
        v4: pod.is_ipv4(),
        comment,
        chain: HOSTPORT_MASQ,
        rules,
    })
}

/// The subnets an `hpmasq_v4_*` / `hpmasq_v6_*` name lists (the layout
/// before named its chains so), for the upgrade.
fn hostport_masq_subnets(name: &str) -> Option<Vec<IpNet>> {
    let rest = name
        .strip_prefix("hpmasq_v4")
        .or_else(|| name.strip_prefix("hpmasq_v6"))?;
    let parts: Vec<&str> = rest.split('_').filter(|p| !p.is_empty()).collect();
    let parts = parts.strip_suffix(&["lo"]).unwrap_or(&parts);
    let mut subnets = Vec::new();
    for pair in parts.chunks(2) {
        let [hex, len] = pair else { return None };
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        subnets.push(IpNet {
            addr: addr_from(&bytes?)?.into(),
            prefix_len: len.parse().ok()?,
        });
    }
    Some(subnets)
}

/// A pod address in one of the sets of pods.
fn pod_element(pod: IpAddr, comment: &str) -> Element {
    Element {
        key: addr(pod),
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

/// A pod's element of a `masq_<subnet>` set back into its masquerade rule
/// (or of the verdict map `masq_v4` of a table not yet upgraded: `pod :
/// jump masq_<subnet>`).
fn parse_masquerade(set: &str, e: &Element) -> Option<Masquerade> {
    Some(Masquerade {
        source: IpNet {
            addr: addr_from(&e.key)?.into(),
            prefix_len: masq_set_prefix(e.jump.as_deref().unwrap_or(set))?,
        },
    })
}

/// Whether a set of the table holds elements of `kind` (any family).
fn holds(kind: RuleKind, set: &str) -> bool {
    match kind {
        RuleKind::Masquerade => set.starts_with("masq_"),
        RuleKind::PortMappings => set.starts_with("hostport") || set.starts_with("hpmasq_"),
    }
}

/// Whether a set of the table holds pods whose host-port connections are
/// masqueraded (the layout before: a verdict map `hostport_masq_v4`).
fn is_hostport_masq(set: &str) -> bool {
    set.starts_with("hostport_masq") || set.starts_with("hpmasq_")
}

/// Whether a set holds the elements of `kind` keyed by the address `pod`:
/// the sets of pods of its family.
fn holds_pod(kind: RuleKind, set: &str, pod: IpAddr) -> bool {
    let fam = family(pod);
    match kind {
        RuleKind::Masquerade => set.starts_with(&format!("masq_{fam}")),
        RuleKind::PortMappings => is_hostport_masq(set) && set.split('_').any(|part| part == fam),
    }
}

/// A failed batch as an error naming the set of the failing message.
fn failure(f: &Failure, sets: &[String], what: &str) -> Error {
    let set = f
        .index
        .and_then(|i| sets.get(i))
        .map_or(TABLE, String::as_str);
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

    /// Creates the table, and the sets of pods `sets` that are missing with
    /// their rules. Runs when a batch failed with ENOENT, under the lock, so
    /// parallel first ADDs do not add anything twice. A table of the layout
    /// before is upgraded in place; one older still is replaced.
    fn ensure_table_and_sets(&mut self, sets: &[PodSet]) -> Result<()> {
        // flock is per open file: taking it again here would wait forever
        // on a lock this call already holds.
        let _lock = match self.locked {
            Some(_) => None,
            None => Some(lock()?),
        };
        match self.conn()?.set(TABLE, LAYOUT_PROBE) {
            Ok(()) => {}
            Err(f) if f.errno == ENOENT => match self.conn()?.set(TABLE, VERDICT_LAYOUT_PROBE) {
                Ok(()) => self.upgrade()?,
                Err(f) if f.errno == ENOENT => {
                    // `add table` first, so the delete succeeds when none exists.
                    let script =
                        format!("add table inet {TABLE}\ndelete table inet {TABLE}\n{RULESET}");
                    nft(&["-f", "-"], &script)
                        .map_err(|e| e.context("create the wasm_cni table"))?;
                    tracing::info!("created nftables table inet {TABLE}");
                }
                Err(f) => return Err(kernel_error("look for table inet wasm_cni", &f)),
            },
            Err(f) => return Err(kernel_error("look for table inet wasm_cni", &f)),
        }
        let mut script = String::new();
        for set in sets {
            match self.conn()?.set(TABLE, &set.name) {
                Ok(()) => {}
                Err(f) if f.errno == ENOENT => script += &set.script(),
                Err(f) => return Err(kernel_error(&format!("look for set {}", set.name), &f)),
            }
        }
        if !script.is_empty() {
            nft(&["-f", "-"], &script).map_err(|e| e.context("create sets of pods"))?;
            tracing::info!(sets = sets.len(), "created nftables sets of pods");
        }
        Ok(())
    }

    /// Upgrades, in one transaction, a table whose pods are in verdict maps
    /// (`masq_v4`: `pod : jump masq_<subnet>`, `hostport_masq_v4`: `pod :
    /// jump hpmasq_<subnets>` or `jump hostport_masq_all`) to sets of pods:
    /// every pod keeps its masquerade and its owner's comment; host-port
    /// maps and conditional rules stay as they are.
    fn upgrade(&mut self) -> Result<()> {
        let mut sets: Vec<PodSet> = Vec::new();
        let mut elements = String::new();
        for map in VERDICT_MAPS {
            for e in self.elements(map)? {
                let (Some(pod), Some(jump)) = (addr_from(&e.key), e.jump.as_deref()) else {
                    continue;
                };
                // The set the pod moves to, and whether it is made here.
                let target = match (map.starts_with("masq_"), jump) {
                    (true, _) => masq_set_prefix(jump)
                        .map(|len| masq_set(pod, len))
                        .map(Some),
                    (false, "hostport_masq_all") => Some(None),
                    (false, _) => hostport_masq_subnets(jump)
                        .and_then(|s| hostport_masq_set(pod, &s))
                        .map(Some),
                };
                let Some(made) = target else {
                    tracing::warn!(
                        map,
                        jump,
                        "upgrade: an element of an unknown chain is dropped"
                    );
                    continue;
                };
                let name = match &made {
                    Some(set) => set.name.clone(),
                    None => set_name("hostport_masq_all", pod).to_string(),
                };
                elements += &format!(
                    "add element inet {TABLE} {name} {{ {pod} comment \"{}\" }}\n",
                    e.comment.replace('"', "'")
                );
                if let Some(set) = made.filter(|s| !sets.contains(s)) {
                    sets.push(set);
                }
            }
        }
        let mut script = String::new();
        for chain in ["prerouting", "output", "postrouting"] {
            script += &format!("flush chain inet {TABLE} {chain}\n");
        }
        for map in VERDICT_MAPS {
            if self.conn()?.set(TABLE, map).is_ok() {
                script += &format!("delete map inet {TABLE} {map}\n");
            }
        }
        let chains = self
            .conn()?
            .chains(TABLE)
            .map_err(|f| kernel_error("list the chains of table inet wasm_cni", &f))?;
        for chain in chains.iter().filter(|c| {
            c.starts_with("masq_") || c.starts_with("hpmasq_") || *c == "hostport_masq_all"
        }) {
            script += &format!("delete chain inet {TABLE} {chain}\n");
        }
        script += RULESET;
        for set in &sets {
            script += &set.script();
        }
        script += &elements;
        nft(&["-f", "-"], &script).map_err(|e| e.context("upgrade the wasm_cni table"))?;
        tracing::info!(
            sets = sets.len(),
            "upgraded nftables table inet {TABLE} to sets of pods"
        );
        Ok(())
    }

    /// Commits `batch` as one transaction. When the table or a set of pods
    /// is missing (ENOENT), creates them and commits again.
    fn try_commit(
        &mut self,
        batch: &Batch,
        sets: &[PodSet],
    ) -> Result<std::result::Result<(), Failure>> {
        match self.conn()?.commit(batch) {
            Err(f) if f.errno == ENOENT => {
                self.ensure_table_and_sets(sets)?;
                Ok(self.conn()?.commit(batch))
            }
            other => Ok(other),
        }
    }

    /// The names of the table's sets holding elements of `kind`; none when
    /// the table does not exist.
    fn sets_of(&mut self, kind: RuleKind) -> Result<Vec<String>> {
        match self.conn()?.sets(TABLE) {
            Ok(v) => Ok(v.into_iter().filter(|s| holds(kind, s)).collect()),
            Err(f) if f.errno == ENOENT => Ok(Vec::new()),
            Err(f) => Err(kernel_error("list the sets of table inet wasm_cni", &f)),
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

    /// Each pod address's element in the sets of pods of `kind` of its
    /// family (`masq_*`; `hpmasq_*` and `hostport_masq_all_*`), looked up by
    /// key, where it is the owner's; with the set it is in.
    fn owned_of_pods(
        &mut self,
        owner: &Owner,
        kind: RuleKind,
        pods: &[IpAddr],
    ) -> Result<Vec<(String, Element)>> {
        let sets = self.sets_of(kind)?;
        let mut found = Vec::new();
        for &pod in pods {
            for set in sets.iter().filter(|s| holds_pod(kind, s, pod)) {
                if let Some(e) = self.owned_element(owner, set, &addr(pod))? {
                    found.push((set.clone(), e));
                }
            }
        }
        Ok(found)
    }

    /// Adds to `batch` the deletion of the owner's elements of the pod
    /// addresses (see [`Nftables::owned_of_pods`]).
    fn delete_owned_of_pods(
        &mut self,
        owner: &Owner,
        kind: RuleKind,
        pods: &[IpAddr],
        batch: &mut Batch,
        names: &mut Vec<String>,
    ) -> Result<()> {
        for (set, e) in self.owned_of_pods(owner, kind, pods)? {
            batch.delete(TABLE, &set, &e);
            names.push(set);
        }
        Ok(())
    }

    /// Commits a batch of deletions (`names`: the set of each); elements
    /// already gone are no error.
    fn commit_deletions(&mut self, batch: &Batch, names: &[String]) -> Result<()> {
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
        let mut names: Vec<String> = Vec::new();
        for set in self.sets_of(kind)? {
            for e in self.elements(&set)?.iter().filter(|e| pick(&e.comment)) {
                batch.delete(TABLE, &set, e);
                names.push(set.clone());
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
                names.push(CONDITIONAL.to_string());
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
            names.push(set.clone());
        }
        for (set, e) in &adds.owned {
            first.add_new(TABLE, set, e);
            names.push(set.clone());
        }
        match self.try_commit(&first, &adds.sets)? {
            Err(f) if f.errno == EEXIST => {}
            other => return Ok(other.map_err(|f| (f.errno, failure(&f, &names, &adds.what)))),
        }
        let mut again = Batch::new();
        let mut names = Vec::new();
        for (set, e) in &adds.plain {
            again.add(TABLE, set, e);
            names.push(set.clone());
        }
        for (set, e) in &adds.owned {
            again.add(TABLE, set, e);
            again.delete(TABLE, set, e);
            again.add(TABLE, set, e);
            names.extend([set.clone(), set.clone(), set.clone()]);
        }
        Ok(self
            .try_commit(&again, &adds.sets)?
            .map_err(|f| (f.errno, failure(&f, &names, &adds.what))))
    }
}

/// The elements of one call: `plain` ones added as they are, `owned` ones
/// (keyed by a pod address) taken over from an earlier owner if need be,
/// and the sets of pods they go to, made if missing.
struct Additions {
    what: String,
    plain: Vec<(String, Element)>,
    owned: Vec<(String, Element)>,
    sets: Vec<PodSet>,
}

impl Additions {
    fn new(what: &str) -> Additions {
        Additions {
            what: what.to_string(),
            plain: Vec::new(),
            owned: Vec::new(),
            sets: Vec::new(),
        }
    }

    /// `pod` into the set named `set`, one of the table's own.
    fn pod(&mut self, set: &str, pod: IpAddr, comment: &str) {
        self.owned
            .push((set.to_string(), pod_element(pod, comment)));
    }

    /// `pod` into `set`, which is made if missing.
    fn pod_in(&mut self, set: PodSet, pod: IpAddr, comment: &str) {
        self.pod(&set.name, pod, comment);
        if !self.sets.contains(&set) {
            self.sets.push(set);
        }
    }
}

fn set_name(prefix: &str, ip: IpAddr) -> &'static str {
    match (prefix, ip.is_ipv4()) {
        ("hostports_any", true) => "hostports_any_v4",
        ("hostports_any", false) => "hostports_any_v6",
        ("hostports_ip", true) => "hostports_ip_v4",
        ("hostports_ip", false) => "hostports_ip_v6",
        ("hostports_held", true) => "hostports_held_v4",
        ("hostports_held", false) => "hostports_held_v6",
        (_, true) => "hostport_masq_all_v4",
        (_, false) => "hostport_masq_all_v6",
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
            adds.pod_in(masq_set(ip, r.source.prefix_len), ip, &c);
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
                let (set, e) = mapping_element(m, &c);
                adds.plain.push((set.to_string(), e));
            } else {
                rules += &conditional_rule(m, conditions, &c);
                adds.plain.push((
                    set_name("hostports_held", pod).to_string(),
                    held_element(m, &c),
                ));
            }
            if !pods.contains(&pod) {
                pods.push(pod);
            }
        }
        for pod in pods {
            if opts.masq_all {
                adds.pod(set_name("hostport_masq_all", pod), pod, &c);
            } else if opts.snat {
                if let Some(set) = hostport_masq_set(pod, &opts.subnets) {
                    adds.pod_in(set, pod, &c);
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

    /// Each address's element of the `masq_*` sets of its family, looked
    /// up by key and deleted when it is the owner's.
    fn remove_masquerade_of(&mut self, owner: &Owner, pods: &[IpAddr]) -> Result<()> {
        if pods.is_empty() {
            return self.remove(owner, RuleKind::Masquerade);
        }
        let mut batch = Batch::new();
        let mut names = Vec::new();
        self.delete_owned_of_pods(owner, RuleKind::Masquerade, pods, &mut batch, &mut names)?;
        self.commit_deletions(&batch, &names)
    }

    /// Each port's elements of `hostports_ip_*` (with a host IP) or
    /// `hostports_any_*` (one per pod address family), and each address's
    /// of the host-port masquerade sets, looked up by key and deleted. A port whose
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
                        names.push(set.to_string());
                    }
                    None => return self.remove(owner, RuleKind::PortMappings),
                }
            }
        }
        self.delete_owned_of_pods(owner, RuleKind::PortMappings, pods, &mut batch, &mut names)?;
        self.commit_deletions(&batch, &names)
    }

    fn list(&mut self, owner: &Owner, kind: RuleKind) -> Result<Owned> {
        let mut owned = Owned {
            masquerade: vec![],
            port_mappings: vec![],
        };
        // The host-port masquerade sets are not read back: a mapping does
        // not name them.
        for set in self.sets_of(kind)? {
            if is_hostport_masq(&set) {
                continue;
            }
            for e in self
                .elements(&set)?
                .iter()
                .filter(|e| owner.owns(&e.comment))
            {
                match kind {
                    RuleKind::Masquerade => owned.masquerade.extend(parse_masquerade(&set, e)),
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

    /// Each address's element of the `masq_*` sets of its family, looked
    /// up by key.
    fn masquerade_of(&mut self, owner: &Owner, pods: &[IpAddr]) -> Result<Vec<Masquerade>> {
        if pods.is_empty() {
            return Ok(self.list(owner, RuleKind::Masquerade)?.masquerade);
        }
        let found = self.owned_of_pods(owner, RuleKind::Masquerade, pods)?;
        Ok(found
            .iter()
            .filter_map(|(set, e)| parse_masquerade(set, e))
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
    fn pods_go_to_their_subnets_set() {
        let set = masq_set(ip("10.88.0.7"), 16);
        assert_eq!(set.name, "masq_v4_0a580000_16");
        assert_eq!(
            set.rules,
            [
                "ip saddr @masq_v4_0a580000_16 ip daddr != 10.88.0.0/16 masquerade \
              comment \"egress of pods of 10.88.0.0/16\""
            ]
        );
        assert_eq!(set.chain, EGRESS);
        assert!(set
            .script()
            .starts_with("add set inet wasm_cni masq_v4_0a580000_16 { type ipv4_addr;"));
        let e = pod_element(ip("10.88.0.7"), "c");
        assert_eq!((&e.data, &e.jump), (&None, &None));
        let m = parse_masquerade(&set.name, &e).unwrap();
        assert_eq!((m.source.ip(), m.source.prefix_len), (ip("10.88.0.7"), 16));
        assert_eq!(
            masq_set(ip("fd00::7"), 64).name,
            "masq_v6_fd000000000000000000000000000000_64"
        );
        // The layout before kept pods in a map named `masq_v4`.
        assert!(parse_masquerade("masq_v4", &e).is_none());

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
        let set = hostport_masq_set(ip("10.88.0.7"), &subnets).unwrap();
        assert_eq!(set.name, "hpmasq_v4_0a580000_16_lo");
        assert_eq!(set.chain, HOSTPORT_MASQ);
        assert_eq!(
            set.rules,
            [
                "ip daddr @hpmasq_v4_0a580000_16_lo ip saddr 10.88.0.0/16 masquerade comment \"hairpin\"",
                "ip daddr @hpmasq_v4_0a580000_16_lo ip saddr 127.0.0.0/8 masquerade comment \"localhost\""
            ]
        );
        let set = hostport_masq_set(ip("fd00::7"), &subnets).unwrap();
        assert_eq!(set.name, "hpmasq_v6_fd000000000000000000000000000000_64");
        assert_eq!(set.rules.len(), 1);
        assert!(hostport_masq_set(ip("fd00::7"), &subnets[..1]).is_none());

        // Names of the layout before read back for the upgrade.
        let back = hostport_masq_subnets("hpmasq_v4_0a580000_16_lo").unwrap();
        assert_eq!(back, subnets[..1]);
        let back = hostport_masq_subnets("hpmasq_v6_fd000000000000000000000000000000_64");
        assert_eq!(back.unwrap(), subnets[1..]);
        assert_eq!(hostport_masq_subnets("hpmasq_v4_lo"), Some(vec![]));
        assert_eq!(hostport_masq_subnets("hpmasq_v4_0a58"), None);

        // Which sets a pod's elements are looked up in.
        let pod4 = ip("10.88.0.7");
        assert!(holds_pod(RuleKind::Masquerade, "masq_v4_0a580000_16", pod4));
        assert!(!holds_pod(RuleKind::Masquerade, "masq_v6_fd00_64", pod4));
        assert!(holds_pod(
            RuleKind::PortMappings,
            "hostport_masq_all_v4",
            pod4
        ));
        assert!(holds_pod(
            RuleKind::PortMappings,
            "hpmasq_v4_0a580000_16_lo",
            pod4
        ));
        assert!(!holds_pod(RuleKind::PortMappings, "hostports_any_v4", pod4));
        assert!(!holds(RuleKind::Masquerade, "hostport_masq_all_v4"));
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
