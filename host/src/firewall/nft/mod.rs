//! The nftables backend: one table, `inet wasm_cni`, whose rules never change
//! after it is created; every pod is a handful of set and map elements, so a
//! pod costs the same with one or a thousand others on the node.
//!
//! Elements go in and out over netlink ([`netlink`]): one batch, one
//! transaction per call, and only the sets a call needs are listed. The
//! table itself is written once per node by `nft -f -` from [`RULESET`],
//! under a lock, when the first call finds it missing.
//!
//! Per-pod state (elements carry the owner's comment):
//! - `masq_v4` / `masq_v6`: pod addresses masqueraded on egress;
//! - `masq_skip_v4` / `_v6`: `pod . pod subnet` — traffic that keeps its source;
//! - `hostports_v4` / `_v6`: `host IP . protocol . host port : pod . port`;
//! - `hostport_masq_v4` / `_v6`: `source range . pod` — DNATed connections
//!   masqueraded (hairpin from the pod subnet, localhost, or all).
//!
//! Host ports with `conditionsV4`/`conditionsV6` cannot share a map (their
//! conditions differ per pod): each such mapping is one rule in chain
//! `hostports_conditional`, commented with its owner, and its element goes
//! to `hostports_held_v4` / `_v6` — a map no rule reads, which keeps the
//! host port taken and lets CHECK read the mapping back.

mod netlink;

use std::fs::{self, OpenOptions};
use std::net::IpAddr;

use nix::fcntl::{Flock, FlockArg};

use super::{
    protocol_name, stale, Condition, Firewall, Masquerade, MatchField, Owned, Owner, PortMapping,
    PortOptions, Protocol, RuleKind,
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

  set masq_v4 { type ipv4_addr; comment "pod addresses masqueraded on egress"; }
  set masq_v6 { type ipv6_addr; comment "pod addresses masqueraded on egress"; }
  set masq_skip_v4 { type ipv4_addr . ipv4_addr; flags interval; comment "pod . its subnet: keeps its source"; }
  set masq_skip_v6 { type ipv6_addr . ipv6_addr; flags interval; comment "pod . its subnet: keeps its source"; }
  map hostports_v4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags interval; comment "host IP . protocol . host port : pod . port"; }
  map hostports_v6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; flags interval; comment "host IP . protocol . host port : pod . port"; }
  map hostports_held_v4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags interval; comment "host ports forwarded by rules in hostports_conditional"; }
  map hostports_held_v6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; flags interval; comment "host ports forwarded by rules in hostports_conditional"; }
  set hostport_masq_v4 { type ipv4_addr . ipv4_addr; flags interval; comment "source . pod: host-port connections masqueraded (hairpin, localhost, masqAll)"; }
  set hostport_masq_v6 { type ipv6_addr . ipv6_addr; flags interval; comment "source . pod: host-port connections masqueraded (hairpin, masqAll)"; }

  chain hostports_conditional {
    comment "host ports with conditions (conditionsV4/V6): one rule per mapping"
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump hostports_conditional comment "host ports with conditions"
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @hostports_v4 comment "host ports"
    fib daddr type local meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostports_v6 comment "host ports"
  }
  chain output {
    type nat hook output priority -100; policy accept;
    fib daddr type local jump hostports_conditional comment "host ports with conditions, from the node"
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

/// The prefix length of a range that is one prefix.
fn prefix_of(start: IpAddr, end: IpAddr) -> u8 {
    let xor = to_u128(start) ^ to_u128(end);
    let lead = xor.leading_zeros() - (128 - bits(start));
    lead as u8
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

/// `source range . pod` (hostport_masq) or `pod . subnet` (masq_skip).
fn range_pair(first: (IpAddr, u8), second: (IpAddr, u8), comment: &str) -> Element {
    let (a0, a1) = range(first.0, first.1);
    let (b0, b1) = range(second.0, second.1);
    Element {
        key: concat(&[&addr(a0), &addr(b0)]),
        key_end: Some(concat(&[&addr(a1), &addr(b1)])),
        data: None,
        comment: comment.to_string(),
    }
}

fn mapping_element(m: &PortMapping, comment: &str) -> Element {
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
    }
}

/// A map element back into its mapping.
fn parse_mapping(e: &Element) -> Option<PortMapping> {
    let len = e.key.len().checked_sub(8)?;
    let host = addr_from(&e.key[..len])?;
    let host_end = addr_from(e.key_end.as_deref()?.get(..len)?)?;
    let data = e.data.as_deref()?;
    Some(PortMapping {
        host_port: u16::from_be_bytes([e.key[len + 4], e.key[len + 5]]),
        container_port: u16::from_be_bytes([*data.get(len)?, *data.get(len + 1)?]),
        protocol: proto_from(e.key[len])?,
        host_ip: (host == host_end).then(|| host.into()),
        container_ip: addr_from(data.get(..len)?)?.into(),
    })
}

/// A `pod . subnet` element back into its masquerade rule.
fn parse_masquerade(e: &Element) -> Option<Masquerade> {
    let half = e.key.len() / 2;
    let pod = addr_from(&e.key[..half])?;
    let start = addr_from(&e.key[half..])?;
    let end = addr_from(e.key_end.as_deref()?.get(half..)?)?;
    Some(Masquerade {
        source: IpNet {
            addr: pod.into(),
            prefix_len: prefix_of(start, end),
        },
    })
}

fn sets_of(kind: RuleKind) -> &'static [&'static str] {
    match kind {
        RuleKind::Masquerade => &["masq_v4", "masq_v6", "masq_skip_v4", "masq_skip_v6"],
        RuleKind::PortMappings => &[
            "hostports_v4",
            "hostports_v6",
            "hostports_held_v4",
            "hostports_held_v6",
            "hostport_masq_v4",
            "hostport_masq_v6",
        ],
    }
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
}

impl Default for Nftables {
    fn default() -> Self {
        Self::new()
    }
}

impl Nftables {
    pub fn new() -> Self {
        Nftables { conn: None }
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

    /// Creates the table once per node, serialised by a lock so parallel
    /// first ADDs do not add the rules twice.
    fn ensure_table(&mut self) -> Result<()> {
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
        match self.conn()?.elements(TABLE, "masq_v4") {
            Ok(_) => Ok(()),
            Err(f) if f.errno == ENOENT => {
                nft(&["-f", "-"], RULESET).map_err(|e| e.context("create the wasm_cni table"))?;
                tracing::info!("created nftables table inet {TABLE}");
                Ok(())
            }
            Err(f) => Err(kernel_error("look for table inet wasm_cni", &f)),
        }
    }

    /// Commits `batch` as one transaction; creates the table first when it
    /// is missing.
    fn try_commit(&mut self, batch: &Batch) -> Result<std::result::Result<(), Failure>> {
        match self.conn()?.commit(batch) {
            Err(f) if f.errno == ENOENT => {
                self.ensure_table()?;
                Ok(self.conn()?.commit(batch))
            }
            other => Ok(other),
        }
    }

    /// [`Self::try_commit`], the failing message's set named in the error.
    fn commit(&mut self, batch: &Batch, sets: &[&str], what: &str) -> Result<()> {
        self.try_commit(batch)?.map_err(|f| failure(&f, sets, what))
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
    /// attachment: the same host IP, or either one on every address. Lists
    /// only the host-port maps of the families asked for.
    fn check_host_ports(&mut self, owner: &Owner, maps: &[PortMapping]) -> Result<()> {
        let mut taken: Vec<(PortMapping, String)> = Vec::new();
        for f in ["v4", "v6"] {
            if !maps.iter().any(|m| family(m.container_ip.into()) == f) {
                continue;
            }
            for set in [format!("hostports_{f}"), format!("hostports_held_{f}")] {
                taken.extend(
                    self.elements(&set)?
                        .into_iter()
                        .filter(|e| !owner.owns(&e.comment))
                        .filter_map(|e| Some((parse_mapping(&e)?, e.comment))),
                );
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
        self.commit(&batch, &names, "delete elements")
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
        match self.try_commit(&first)? {
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
            .try_commit(&again)?
            .map_err(|f| (f.errno, failure(&f, &names, &adds.what))))
    }
}

/// The elements of one call: `plain` ones added as they are, `owned` ones
/// (keyed by a pod address) taken over from an earlier owner if need be.
struct Additions {
    what: String,
    plain: Vec<(&'static str, Element)>,
    owned: Vec<(&'static str, Element)>,
}

impl Additions {
    fn new(what: &str) -> Additions {
        Additions {
            what: what.to_string(),
            plain: Vec::new(),
            owned: Vec::new(),
        }
    }
}

fn set_name(prefix: &str, ip: IpAddr) -> &'static str {
    match (prefix, ip.is_ipv4()) {
        ("masq", true) => "masq_v4",
        ("masq", false) => "masq_v6",
        ("masq_skip", true) => "masq_skip_v4",
        ("masq_skip", false) => "masq_skip_v6",
        ("hostports", true) => "hostports_v4",
        ("hostports", false) => "hostports_v6",
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
            let pod = Element {
                key: addr(ip),
                comment: c.clone(),
                ..Element::default()
            };
            adds.owned.push((set_name("masq", ip), pod));
            let skip = range_pair((ip, bits(ip) as u8), (ip, r.source.prefix_len), &c);
            adds.owned.push((set_name("masq_skip", ip), skip));
        }
        self.add_all(&adds)?.map_err(|(_, e)| e)
    }

    fn add_port_mappings(
        &mut self,
        owner: &Owner,
        maps: &[PortMapping],
        opts: &PortOptions,
    ) -> Result<()> {
        self.check_host_ports(owner, maps)?;
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
            let held = if conditions.is_empty() {
                "hostports"
            } else {
                rules += &conditional_rule(m, conditions, &c);
                "hostports_held"
            };
            adds.plain
                .push((set_name(held, pod), mapping_element(m, &c)));
            if !pods.contains(&pod) {
                pods.push(pod);
            }
        }
        for pod in pods {
            let set = set_name("hostport_masq", pod);
            let host = (pod, bits(pod) as u8);
            if opts.masq_all {
                adds.owned.push((set, range_pair((pod, 0), host, &c)));
            } else if opts.snat {
                for subnet in opts
                    .subnets
                    .iter()
                    .filter(|s| s.ip().is_ipv4() == pod.is_ipv4())
                {
                    let e = range_pair((subnet.ip(), subnet.prefix_len), host, &c);
                    adds.owned.push((set, e));
                }
                if pod.is_ipv4() {
                    let lo = range_pair((IpAddr::from([127, 0, 0, 0]), 8), host, &c);
                    adds.owned.push((set, lo));
                }
            }
        }
        // EBUSY, EEXIST, ENOTEMPTY: a host port another pod's element holds
        // (the check above and this add can race with another ADD).
        self.add_all(&adds)?.map_err(|(errno, e)| {
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
        })?;
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

    fn list(&mut self, owner: &Owner, kind: RuleKind) -> Result<Owned> {
        let mut owned = Owned {
            masquerade: vec![],
            port_mappings: vec![],
        };
        let sets: &[&str] = match kind {
            RuleKind::Masquerade => &["masq_skip_v4", "masq_skip_v6"],
            RuleKind::PortMappings => &[
                "hostports_v4",
                "hostports_v6",
                "hostports_held_v4",
                "hostports_held_v6",
            ],
        };
        for set in sets {
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
        // As `nft --debug=netlink` shows them: 0.0.0.0/0 . tcp . 8080 : 10.88.0.2 . 80
        let m = PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
            container_ip: ip("10.88.0.2").into(),
        };
        let e = mapping_element(&m, "wc:1 x");
        assert_eq!(e.key, [0, 0, 0, 0, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(
            e.key_end.as_deref(),
            Some(&[255, 255, 255, 255, 6, 0, 0, 0, 0x1f, 0x90, 0, 0][..])
        );
        assert_eq!(e.data.as_deref(), Some(&[10, 88, 0, 2, 0, 80, 0, 0][..]));
        let back = parse_mapping(&e).unwrap();
        assert_eq!((back.host_port, back.container_port), (8080, 80));
        assert!(back.host_ip.is_none());

        let skip = range_pair((ip("10.88.0.2"), 32), (ip("10.88.0.2"), 16), "c");
        assert_eq!(skip.key, [10, 88, 0, 2, 10, 88, 0, 0]);
        assert_eq!(
            skip.key_end.as_deref(),
            Some(&[10, 88, 0, 2, 10, 88, 255, 255][..])
        );
        let m = parse_masquerade(&skip).unwrap();
        assert_eq!((m.source.ip(), m.source.prefix_len), (ip("10.88.0.2"), 16));

        let (a, b) = range(ip("fd00::5"), 64);
        assert_eq!((a, b), (ip("fd00::"), ip("fd00::ffff:ffff:ffff:ffff")));
        assert_eq!(prefix_of(a, b), 64);
        assert_eq!(prefix_of(ip("0.0.0.0"), ip("255.255.255.255")), 0);
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
