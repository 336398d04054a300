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

use crate::firewall::{PortMapping, Protocol};
use crate::kernel::nfnetlink::{
    self, malformed, message, pad, Attr, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
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
    let sock = nfnetlink::open()?;
    let mut seq = 1;
    let mut stale = Vec::new();
    nfnetlink::dump(
        &sock,
        &mut seq,
        |s| dump_request(s, family),
        |attrs| {
            stale.extend(parse_entry(attrs, targets)?);
            Ok(())
        },
    )
    .map_err(|e| {
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
    for (seq, entry) in (seq..).zip(&stale) {
        let req = delete_request(seq, family, &entry.tuple, entry.zone.as_deref());
        match nfnetlink::call(&sock, seq, &req) {
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

/// The entry of a dumped message's attributes, when its original
/// direction matches.
fn parse_entry(payload: &[u8], targets: &[HostPort]) -> io::Result<Option<Stale>> {
    let mut tuple = None;
    let mut zone = None;
    for a in ct_attrs("attribute", payload)? {
        match a.kind {
            CTA_TUPLE_ORIG => tuple = Some((a.raw, parse_tuple(a.value)?)),
            CTA_ZONE => zone = Some(a.raw.to_vec()),
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
    for a in ct_attrs("tuple", value)? {
        match a.kind {
            CTA_TUPLE_IP => {
                for ip in ct_attrs("address", a.value)? {
                    let v = ip.value;
                    orig.dst = match (ip.kind, v.len()) {
                        (CTA_IP_V4_DST, 4) => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
                        (CTA_IP_V6_DST, 16) => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
                        _ => orig.dst,
                    };
                }
            }
            CTA_TUPLE_PROTO => {
                for p in ct_attrs("protocol", a.value)? {
                    let v = p.value;
                    match p.kind {
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

/// The attributes in `b`; when they are malformed, an error naming which
/// part of a conntrack entry `b` is.
fn ct_attrs<'a>(what: &str, b: &'a [u8]) -> io::Result<Vec<Attr<'a>>> {
    nfnetlink::attrs(b).map_err(|e| malformed(format!("conntrack {what}: {e}")))
}

fn dump_request(seq: u32, family: Family) -> Vec<u8> {
    request(IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, family, &[])
}

/// Deletes the entry of `tuple` and `zone`, attributes as dumped.
fn delete_request(seq: u32, family: Family, tuple: &[u8], zone: Option<&[u8]>) -> Vec<u8> {
    let mut attrs = Vec::new();
    for a in std::iter::once(tuple).chain(zone) {
        attrs.extend_from_slice(a);
        pad(&mut attrs);
    }
    request(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, family, &attrs)
}

/// A ctnetlink request about entries of `family`.
fn request(msg: u16, flags: u16, seq: u32, family: Family, attrs: &[u8]) -> Vec<u8> {
    message(
        NFNL_SUBSYS_CTNETLINK,
        msg,
        NLM_F_REQUEST | flags,
        seq,
        family.af(),
        0,
        attrs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::IpAddress;
    use crate::kernel::nfnetlink::{put_attr, put_nested};

    /// A netlink attribute with its 4-byte header, padded.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_attr(&mut v, kind, value);
        v
    }

    /// An attribute holding the attributes `inner`.
    fn nested(kind: u16, inner: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_nested(&mut v, kind, |b| b.extend_from_slice(inner));
        v
    }

    /// `CTA_TUPLE_ORIG` of a flow `src:sport -> dst:dport` of `proto`.
    fn orig_tuple(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let ip = [nla(1, &src), nla(CTA_IP_V4_DST, &dst)].concat();
        let pr = [
            nla(CTA_PROTO_NUM, &[proto]),
            nla(2, &sport.to_be_bytes()),
            nla(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        let inner = [nested(CTA_TUPLE_IP, &ip), nested(CTA_TUPLE_PROTO, &pr)].concat();
        nested(CTA_TUPLE_ORIG, &inner)
    }

    /// The attributes of a dumped entry: orig and reply tuples, status,
    /// and a zone when given.
    fn entry(orig: &[u8], zone: Option<u16>) -> Vec<u8> {
        let reply = orig_tuple([10, 0, 0, 9], [198, 51, 100, 2], 17, 53, 40000);
        let mut p = orig.to_vec();
        p.extend_from_slice(&nested(2, &reply[4..]));
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
        e[0] = 0xff; // first attribute longer than the message
        let err = parse_entry(
            &e,
            &[HostPort {
                port: 2,
                addr: None,
            }],
        )
        .expect_err("malformed");
        assert!(
            err.to_string().starts_with("conntrack attribute: "),
            "{err}"
        );
    }

    #[test]
    fn kernel_without_conntrack_is_unsupported() {
        let e = nfnetlink::acked(&(-93i32).to_ne_bytes()).expect_err("an error");
        assert!(unsupported(&e));
        let e = nfnetlink::acked(&(-1i32).to_ne_bytes()).expect_err("an error");
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
