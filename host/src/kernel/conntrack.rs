//! Forgetting stale UDP flows to a host port, over ctnetlink.
//!
//! Conntrack decides NAT once per flow, on its first packet. A UDP client
//! that was already sending to `node:hostPort` before the port was mapped
//! (a resolver retrying DNS from one source port, say) keeps the entry it
//! got then, and its datagrams keep going to the node itself instead of
//! being forwarded to the new pod, for as long as it keeps sending. So
//! after the rules of a UDP mapping are in place, every conntrack entry
//! whose original direction is UDP to that host port (and to its host IP,
//! when the mapping has one) is deleted; the client's next datagram starts
//! a new flow that meets the new rules.
//!
//! The table is dumped with `IPCTNL_MSG_CT_GET` + `NLM_F_DUMP` (one dump per
//! address family) and each matching entry is deleted with
//! `IPCTNL_MSG_CT_DELETE`, naming it by the original tuple (and zone) the
//! dump returned. The socket is opened in the calling thread's network
//! namespace, the one the firewall rules were just made in.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use nix::libc;
// The netlink crates rtnetlink is built on, as it re-exports them.
use rtnetlink::packet_core::{
    NetlinkBuffer, NlasIterator, NLA_TYPE_MASK, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::firewall::{PortMapping, Protocol};

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNETLINK_V0: u8 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;

const HEADER_LEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGEN_LEN: usize = 4;
/// Bigger than any datagram the kernel sends to a netlink dump (32 KiB).
const RECV_BUF: usize = 64 * 1024;

/// An address family of the conntrack table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// UDP traffic to this host port, on this node address or on any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    pub port: u16,
    pub addr: Option<IpAddr>,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            Some(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port),
            None => write!(f, "*:{}", self.port),
        }
    }
}

/// Deletes the conntrack entries of UDP flows to the host ports of the UDP
/// mappings among `maps`, each family dumped once. Call it after the rules
/// of the mappings are in place, in the namespace that holds them.
///
/// Never fails, as the reference portmap only logs here: the mapping
/// works for new flows either way. A kernel without conntrack or
/// ctnetlink is logged at debug; any other failure as a warning naming
/// the host ports and the error.
pub fn forget_udp_flows(maps: &[PortMapping]) {
    for (family, targets) in udp_targets(maps) {
        let ports = targets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let started = std::time::Instant::now();
        match delete_udp_flows(family, &targets) {
            Ok(n) => tracing::debug!(
                ?family,
                %ports,
                deleted = n,
                micros = started.elapsed().as_micros() as u64,
                "stale UDP conntrack entries deleted"
            ),
            Err(e) if unsupported(&e) => tracing::debug!(
                ?family,
                %ports,
                error = %e,
                "no conntrack in this kernel; no UDP flows to forget"
            ),
            Err(e) => tracing::warn!(
                ?family,
                %ports,
                error = %e,
                "could not delete stale UDP conntrack entries: UDP flows that were \
                 already sending to these host ports reach the pod only once they time out"
            ),
        }
    }
}

/// The host ports of the UDP mappings by family, without repeats; a port
/// mapped on every address makes its per-address entries redundant.
fn udp_targets(maps: &[PortMapping]) -> Vec<(Family, Vec<HostPort>)> {
    let all: BTreeSet<(Family, HostPort)> = maps
        .iter()
        .filter(|m| m.protocol == Protocol::Udp)
        .map(|m| {
            let family = Family::of(IpAddr::from(m.container_ip));
            let addr = m.host_ip.map(IpAddr::from);
            (
                family,
                HostPort {
                    port: m.host_port,
                    addr,
                },
            )
        })
        .collect();
    let mut out: Vec<(Family, Vec<HostPort>)> = Vec::new();
    for &(family, t) in &all {
        let wildcard = HostPort { addr: None, ..t };
        if t.addr.is_some() && all.contains(&(family, wildcard)) {
            continue;
        }
        match out.last_mut() {
            Some((f, v)) if *f == family => v.push(t),
            _ => out.push((family, vec![t])),
        }
    }
    out
}

/// Whether an error only says this kernel has no conntrack to ask: no
/// nfnetlink (`EPROTONOSUPPORT`), no ctnetlink (see [`delete_udp_flows`]),
/// or no table (`ENOENT`, `EOPNOTSUPP`).
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPROTONOSUPPORT | libc::ENOENT | libc::EOPNOTSUPP)
    ) || e.kind() == io::ErrorKind::Unsupported
}

/// Deletes every conntrack entry of `family` whose original direction is
/// UDP to one of `targets`; returns how many were deleted. Entries that
/// vanish in between (`ENOENT`) are not errors; after another failure the
/// remaining entries are still tried and the first error is returned.
///
/// nfnetlink answers a request for a subsystem it cannot load with
/// `EINVAL`; on the dump, that is reported as [`io::ErrorKind::Unsupported`].
pub fn delete_udp_flows(family: Family, targets: &[HostPort]) -> io::Result<usize> {
    if targets.is_empty() {
        return Ok(0);
    }
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;

    let stale = dump_matching(&sock, family, targets).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "no ctnetlink in this kernel (EINVAL)",
            )
        } else {
            e
        }
    })?;
    let mut deleted = 0;
    let mut first_err = None;
    for (seq, entry) in (2u32..).zip(&stale) {
        let req = delete_request(seq, family, &entry.tuple, entry.zone.as_deref());
        match sock.send(&req, 0).and_then(|_| ack(&sock, seq)) {
            Ok(()) => deleted += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(deleted),
    }
}

/// An entry to delete: its `CTA_TUPLE_ORIG` and `CTA_ZONE` attributes as
/// the dump returned them, header included.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stale {
    tuple: Vec<u8>,
    zone: Option<Vec<u8>>,
}

/// The original direction of an entry, as far as matching needs it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Orig {
    proto: Option<u8>,
    dst: Option<IpAddr>,
    dport: Option<u16>,
}

impl Orig {
    fn matches(&self, targets: &[HostPort]) -> bool {
        self.proto == Some(IPPROTO_UDP)
            && targets
                .iter()
                .any(|t| Some(t.port) == self.dport && t.addr.is_none_or(|a| Some(a) == self.dst))
    }
}

fn dump_matching(sock: &Socket, family: Family, targets: &[HostPort]) -> io::Result<Vec<Stale>> {
    const SEQ: u32 = 1;
    sock.send(&dump_request(SEQ, family), 0)?;
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        let n = sock.recv(&mut buf, 0)?;
        if n > buf.len() {
            return Err(bad("conntrack dump datagram truncated"));
        }
        for msg in messages(&buf)? {
            if msg.sequence_number() != SEQ {
                continue;
            }
            match msg.message_type() {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    error_code(msg.payload())?;
                }
                t if t == ct_type(IPCTNL_MSG_CT_GET) || t == ct_type(IPCTNL_MSG_CT_NEW) => {
                    if let Some(stale) = parse_entry(msg.payload(), targets)? {
                        out.push(stale);
                    }
                }
                _ => {}
            }
        }
    }
}

/// `IPCTNL_MSG_CT_NEW`: the type the kernel gives dumped entries.
const IPCTNL_MSG_CT_NEW: u16 = 0;

/// Waits for the kernel's answer to request `seq`.
fn ack(sock: &Socket, seq: u32) -> io::Result<()> {
    let mut buf = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        sock.recv(&mut buf, 0)?;
        for msg in messages(&buf)? {
            if msg.sequence_number() == seq && msg.message_type() == NLMSG_ERROR {
                return error_code(msg.payload());
            }
        }
    }
}

/// The netlink messages of one datagram.
fn messages(mut buf: &[u8]) -> io::Result<Vec<NetlinkBuffer<&[u8]>>> {
    let mut out = Vec::new();
    while buf.len() >= HEADER_LEN {
        let msg = NetlinkBuffer::new_checked(buf).map_err(|e| bad(format!("netlink: {e}")))?;
        let len = msg.length() as usize;
        let next = align4(len).min(buf.len());
        out.push(NetlinkBuffer::new(&buf[..len]));
        buf = &buf[next..];
    }
    Ok(out)
}

/// The errno of an `NLMSG_ERROR` payload; Ok for an acknowledgement.
fn error_code(payload: &[u8]) -> io::Result<()> {
    let code = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(|| bad("netlink error message too short"))?;
    match code {
        0 => Ok(()),
        c => Err(io::Error::from_raw_os_error(c.saturating_neg())),
    }
}

/// The entry of a dumped message, when its original direction matches.
fn parse_entry(payload: &[u8], targets: &[HostPort]) -> io::Result<Option<Stale>> {
    let attrs = payload
        .get(NFGEN_LEN..)
        .ok_or_else(|| bad("conntrack message too short"))?;
    let mut tuple = None;
    let mut zone = None;
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(|e| bad(format!("conntrack attribute: {e}")))?;
        let (kind, len) = (nla.kind() & NLA_TYPE_MASK, nla.length() as usize);
        let whole = nla.into_inner();
        let raw = whole.get(..len).unwrap_or(whole);
        match kind {
            CTA_TUPLE_ORIG => tuple = Some((raw, parse_tuple(nla.value())?)),
            CTA_ZONE => zone = Some(raw.to_vec()),
            _ => {}
        }
    }
    Ok(match tuple {
        Some((raw, orig)) if orig.matches(targets) => Some(Stale {
            tuple: raw.to_vec(),
            zone,
        }),
        _ => None,
    })
}

fn parse_tuple(value: &[u8]) -> io::Result<Orig> {
    let mut orig = Orig::default();
    for nla in NlasIterator::new(value) {
        let nla = nla.map_err(|e| bad(format!("conntrack tuple: {e}")))?;
        match nla.kind() & NLA_TYPE_MASK {
            CTA_TUPLE_IP => {
                for ip in NlasIterator::new(nla.value()) {
                    let ip = ip.map_err(|e| bad(format!("conntrack address: {e}")))?;
                    let v = ip.value();
                    orig.dst = match (ip.kind() & NLA_TYPE_MASK, v.len()) {
                        (CTA_IP_V4_DST, 4) => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
                        (CTA_IP_V6_DST, 16) => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
                        _ => orig.dst,
                    };
                }
            }
            CTA_TUPLE_PROTO => {
                for p in NlasIterator::new(nla.value()) {
                    let p = p.map_err(|e| bad(format!("conntrack protocol: {e}")))?;
                    let v = p.value();
                    match p.kind() & NLA_TYPE_MASK {
                        CTA_PROTO_NUM => orig.proto = v.first().copied(),
                        CTA_PROTO_DST_PORT => {
                            orig.dport = <[u8; 2]>::try_from(v).ok().map(u16::from_be_bytes)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(orig)
}

fn ct_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// A ctnetlink request: netlink header, `nfgenmsg`, then `attrs`.
fn request(msg: u16, flags: u16, seq: u32, family: Family, attrs: &[&[u8]]) -> Vec<u8> {
    let len = HEADER_LEN + NFGEN_LEN + attrs.iter().map(|a| align4(a.len())).sum::<usize>();
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&ct_type(msg).to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    buf.extend_from_slice(&[family.af(), NFNETLINK_V0, 0, 0]);
    for a in attrs {
        buf.extend_from_slice(a);
        buf.resize(align4(buf.len()), 0);
    }
    buf
}

fn dump_request(seq: u32, family: Family) -> Vec<u8> {
    request(IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, family, &[])
}

fn delete_request(seq: u32, family: Family, tuple: &[u8], zone: Option<&[u8]>) -> Vec<u8> {
    let attrs: Vec<&[u8]> = std::iter::once(tuple).chain(zone).collect();
    request(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, family, &attrs)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::IpAddress;

    /// A netlink attribute with its 4-byte header, padded.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        v.resize(align4(v.len()), 0);
        v
    }

    const NESTED: u16 = 0x8000;

    /// `CTA_TUPLE_ORIG` of a flow `src:sport -> dst:dport` of `proto`.
    fn orig_tuple(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let ip = [nla(1, &src), nla(CTA_IP_V4_DST, &dst)].concat();
        let pr = [
            nla(CTA_PROTO_NUM, &[proto]),
            nla(2, &sport.to_be_bytes()),
            nla(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        let inner = [
            nla(CTA_TUPLE_IP | NESTED, &ip),
            nla(CTA_TUPLE_PROTO | NESTED, &pr),
        ]
        .concat();
        nla(CTA_TUPLE_ORIG | NESTED, &inner)
    }

    /// The payload of a dumped entry: nfgenmsg, orig and reply tuples,
    /// status, and a zone when given.
    fn entry(orig: &[u8], zone: Option<u16>) -> Vec<u8> {
        let reply = orig_tuple([10, 0, 0, 9], [198, 51, 100, 2], 17, 53, 40000);
        let mut p = vec![libc::AF_INET as u8, 0, 0, 0];
        p.extend_from_slice(orig);
        p.extend_from_slice(&nla(2 | NESTED, &reply[4..]));
        p.extend_from_slice(&nla(3, &8u32.to_be_bytes()));
        if let Some(z) = zone {
            p.extend_from_slice(&nla(CTA_ZONE, &z.to_be_bytes()));
        }
        p
    }

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    #[test]
    fn dump_request_bytes() {
        let r = dump_request(7, Family::V6);
        let mut want = Vec::new();
        want.extend_from_slice(&20u32.to_ne_bytes());
        want.extend_from_slice(&0x0101u16.to_ne_bytes()); // ctnetlink, CT_GET
        want.extend_from_slice(&(1u16 | 0x300).to_ne_bytes()); // REQUEST | DUMP
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[10, 0, 0, 0]); // AF_INET6, v0, res_id 0
        assert_eq!(r, want);
    }

    #[test]
    fn delete_request_carries_the_dumped_tuple_and_zone() {
        let tuple = orig_tuple([198, 51, 100, 2], [198, 51, 100, 1], 17, 40000, 5353);
        let zone = nla(CTA_ZONE, &3u16.to_be_bytes());
        let r = delete_request(9, Family::V4, &tuple, Some(&zone));
        let len = 16 + 4 + tuple.len() + zone.len();
        assert_eq!(r.len(), len);
        assert_eq!(&r[..4], &(len as u32).to_ne_bytes());
        assert_eq!(&r[4..6], &0x0102u16.to_ne_bytes()); // ctnetlink, CT_DELETE
        assert_eq!(&r[6..8], &5u16.to_ne_bytes()); // REQUEST | ACK
        assert_eq!(&r[8..12], &9u32.to_ne_bytes());
        assert_eq!(&r[16..20], &[2, 0, 0, 0]);
        assert_eq!(&r[20..20 + tuple.len()], &tuple[..]);
        assert_eq!(&r[20 + tuple.len()..], &zone[..]);
    }

    #[test]
    fn entries_match_on_udp_destination_port_and_host_ip() {
        let node = [198, 51, 100, 1];
        let other = [198, 51, 100, 3];
        let out = [198, 51, 100, 2];
        let any = [HostPort {
            port: 5353,
            addr: None,
        }];
        let on_node = [HostPort {
            port: 5353,
            addr: Some(v4(node)),
        }];

        let udp = orig_tuple(out, node, 17, 40000, 5353);
        let e = entry(&udp, None);
        let got = parse_entry(&e, &any).expect("parses");
        assert_eq!(
            got,
            Some(Stale {
                tuple: udp.clone(),
                zone: None
            })
        );
        assert!(parse_entry(&e, &on_node).expect("parses").is_some());

        let to_other = entry(&orig_tuple(out, other, 17, 40000, 5353), None);
        assert!(parse_entry(&to_other, &any).expect("parses").is_some());
        assert_eq!(parse_entry(&to_other, &on_node).expect("parses"), None);

        let tcp = entry(&orig_tuple(out, node, 6, 40000, 5353), None);
        assert_eq!(parse_entry(&tcp, &any).expect("parses"), None);
        // The port is matched as a destination, not as a source.
        let from_port = entry(&orig_tuple(out, node, 17, 5353, 40000), None);
        assert_eq!(parse_entry(&from_port, &any).expect("parses"), None);

        let zoned = entry(&udp, Some(3));
        let got = parse_entry(&zoned, &any).expect("parses");
        assert_eq!(
            got,
            // The attribute as the kernel sent it, without its padding.
            Some(Stale {
                tuple: udp,
                zone: Some(nla(CTA_ZONE, &3u16.to_be_bytes())[..6].to_vec())
            })
        );
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        assert!(parse_entry(&[2, 0], &[]).is_err());
        let mut e = entry(&orig_tuple([1; 4], [2; 4], 17, 1, 2), None);
        e[4] = 0xff; // first attribute longer than the message
        assert!(parse_entry(
            &e,
            &[HostPort {
                port: 2,
                addr: None
            }]
        )
        .is_err());
        assert!(error_code(&[0, 0]).is_err());
        assert!(messages(&[0xff; 20]).is_err());
    }

    #[test]
    fn netlink_errors_become_errno() {
        assert!(error_code(&0i32.to_ne_bytes()).is_ok());
        let e = error_code(&(-93i32).to_ne_bytes()).expect_err("an error");
        assert_eq!(e.raw_os_error(), Some(93));
        assert!(unsupported(&e));
        let e = error_code(&(-1i32).to_ne_bytes()).expect_err("an error");
        assert!(!unsupported(&e));
    }

    fn map(proto: Protocol, host_port: u16, host_ip: Option<IpAddr>, pod: IpAddr) -> PortMapping {
        PortMapping {
            host_port,
            container_port: 53,
            protocol: proto,
            host_ip: host_ip.map(IpAddress::from),
            container_ip: IpAddress::from(pod),
        }
    }

    #[test]
    fn udp_targets_by_family_without_repeats() {
        let pod4 = v4([10, 0, 0, 9]);
        let pod6: IpAddr = "fd00::9".parse().expect("ip");
        let node = Some(v4([198, 51, 100, 1]));
        let maps = [
            map(Protocol::Udp, 53, None, pod4),
            map(Protocol::Udp, 53, node, pod4),
            map(Protocol::Udp, 53, None, pod6),
            map(Protocol::Tcp, 80, None, pod4),
            map(Protocol::Udp, 5353, node, pod4),
            map(Protocol::Udp, 5353, node, pod4),
        ];
        assert_eq!(
            udp_targets(&maps),
            vec![
                (
                    Family::V4,
                    vec![
                        HostPort {
                            port: 53,
                            addr: None
                        },
                        HostPort {
                            port: 5353,
                            addr: node
                        }
                    ]
                ),
                (
                    Family::V6,
                    vec![HostPort {
                        port: 53,
                        addr: None
                    }]
                ),
            ]
        );
        assert!(udp_targets(&[map(Protocol::Tcp, 80, None, pod4)]).is_empty());
    }
}
