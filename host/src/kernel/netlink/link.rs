//! Links: lookups, the bridge, the veth pair, port settings, deletion.

use std::os::fd::RawFd;

use futures::TryStreamExt;
use nix::libc::{EAFNOSUPPORT, EEXIST, ENODEV};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, BridgeVlanInfoFlags, In6AddrGenMode, InfoBridge, InfoData, InfoKind,
    InfoVeth, LinkAttribute, LinkFlags, LinkInfo as Info, LinkMessage,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, LinkVeth,
};

use super::{errno, nl_err};
use crate::bindings::cni::plugin::link::{BridgeOptions, LinkInfo, VethOptions, VethPair};
use crate::error::{code, Error, Result};
use crate::kernel::nfnetlink::{self, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};
use crate::kernel::{format_mac, parse_mac, NODE_END_MAC};

fn info(msg: &LinkMessage) -> LinkInfo {
    let mut out = LinkInfo {
        name: String::new(),
        index: msg.header.index,
        mac: String::new(),
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: String::new(),
        master: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => out.name = n.clone(),
            LinkAttribute::Address(a) => out.mac = format_mac(a),
            LinkAttribute::Mtu(m) => out.mtu = *m,
            LinkAttribute::Controller(m) => out.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let Info::Kind(k) = i {
                        out.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn peer_index(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

async fn get_msg(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("look up link {name}"), e)),
    }
}

pub async fn get(h: &Handle, name: &str) -> Result<Option<LinkInfo>> {
    Ok(get_msg(h, name).await?.as_ref().map(info))
}

async fn get_by_index(h: &Handle, index: u32) -> Result<Option<LinkInfo>> {
    match h.link().get().match_index(index).execute().try_next().await {
        Ok(m) => Ok(m.as_ref().map(info)),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("look up link #{index}"), e)),
    }
}

/// A bridge's multicast snooping setting, from its link message.
fn multicast_snooping(msg: &LinkMessage) -> Option<bool> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            Info::Data(InfoData::Bridge(attrs)) => attrs.iter().find_map(|b| match b {
                InfoBridge::MulticastSnooping(on) => Some(*on),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// A random locally administered unicast MAC, as the kernel picks for a
/// new bridge.
fn random_mac() -> Result<Vec<u8>> {
    let mut mac = vec![0u8; 6];
    // SAFETY: the kernel writes at most `mac.len()` bytes into `mac`.
    let n = unsafe { nix::libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if usize::try_from(n).ok() != Some(mac.len()) {
        let e = std::io::Error::last_os_error();
        return Err(Error::io(format!("a MAC for the bridge: getrandom: {e}")));
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// Returns the bridge `name`, creating it when missing, and whether this
/// call created it.
///
/// A bridge created here is given its MAC (`opts.mac`, else a random
/// locally administered one): a bridge whose MAC the kernel chose takes the
/// lowest of its ports' MACs, so the pods' gateway MAC would change as pods
/// come and go, and the kernel walks every port for it on each port added
/// or removed. It gets multicast snooping only when asked: without a
/// multicast querier on the bridge the kernel floods multicast to every
/// port either way, and with snooping on, every port added, removed or
/// brought up re-arms timers on every port.
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    opts: &BridgeOptions,
) -> Result<(LinkInfo, bool)> {
    let mut created = false;
    let existing = get_msg(h, name).await?;
    if existing.is_none() {
        let mac = match &opts.mac {
            Some(mac) => parse_mac(mac)?,
            None => random_mac()?,
        };
        let mut b = LinkBridge::new(name)
            .up()
            .promiscuous(opts.promisc)
            .address(mac)
            .append_info_data(InfoBridge::MulticastSnooping(
                opts.multicast_snooping.unwrap_or(false),
            ));
        if let Some(mtu) = opts.mtu {
            b = b.mtu(mtu);
        }
        if opts.vlan_filtering {
            b = b.vlan_filtering(true);
        }
        match h.link().add(b.build()).execute().await {
            Ok(()) => created = true,
            // Another invocation created it first; use theirs.
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(nl_err(format!("create bridge {name}"), e)),
        }
    }
    let bridge = match existing {
        Some(b) => b,
        None => get_msg(h, name)
            .await?
            .ok_or_else(|| Error::io(format!("bridge {name} vanished after creation")))?,
    };
    let snooping = multicast_snooping(&bridge);
    let bridge = info(&bridge);
    if bridge.kind != "bridge" {
        return Err(Error::config(format!(
            "bridge: link {name} exists but is a {:?} device, not a bridge",
            bridge.kind
        )));
    }
    if !created {
        if !bridge.up {
            set_up(h, name, true).await?;
        }
        if opts.promisc {
            set_promisc(h, name, true).await?;
        }
        if opts.vlan_filtering {
            let msg = LinkBridge::new(name).vlan_filtering(true).build();
            h.link()
                .change(msg)
                .execute()
                .await
                .map_err(|e| nl_err(format!("enable vlan_filtering on {name}"), e))?;
        }
        // Also on a bridge another invocation created just before this one.
        if let Some(on) = opts.multicast_snooping.filter(|on| snooping != Some(*on)) {
            let msg = LinkBridge::new(name)
                .append_info_data(InfoBridge::MulticastSnooping(on))
                .build();
            h.link()
                .change(msg)
                .execute()
                .await
                .map_err(|e| nl_err(format!("set mcast_snooping {} on {name}", u8::from(on)), e))?;
        }
    }
    Ok((bridge, created))
}

/// One transmit and one receive queue, as the kernel gives a veth end
/// anyway: asked for in the creating request, the kernel allocates just
/// those, where it would allocate one per CPU and then cut the end down to
/// one, waiting for an RCU grace period per end while it holds the network
/// configuration lock.
fn one_queue<T>(b: LinkMessageBuilder<T>) -> LinkMessageBuilder<T> {
    b.append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
}

/// Makes a veth pair in one request: the node end named `host_name` with
/// [`NODE_END_MAC`], the container end made directly inside the container
/// namespace (no move), both with one queue each.
pub async fn create_veth(
    host: &Handle,
    container: &Handle,
    container_fd: RawFd,
    host_name: &str,
    opts: &VethOptions,
) -> Result<VethPair> {
    let ifname = &opts.container_ifname;
    let mut peer = one_queue(LinkUnspec::new_with_name(ifname)).setns_by_fd(container_fd);
    if let Some(mtu) = opts.mtu {
        peer = peer.mtu(mtu);
    }
    if let Some(mac) = &opts.container_mac {
        peer = peer.address(parse_mac(mac)?);
    }
    let mut veth = one_queue(LinkMessageBuilder::<LinkVeth>::new_with_info_kind(
        InfoKind::Veth,
    ))
    .name(host_name.to_string())
    .address(NODE_END_MAC.to_vec())
    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
    if let Some(mtu) = opts.mtu {
        veth = veth.mtu(mtu);
    }
    match host.link().add(veth.build()).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(EEXIST) => {
            return Err(Error::new(
                code::ALREADY_EXISTS,
                format!("create veth pair {host_name}/{ifname}: an interface of that name exists"),
            ));
        }
        Err(e) => return Err(nl_err(format!("create veth pair {host_name}/{ifname}"), e)),
    }
    let host_link = get(host, host_name).await?;
    let container_link = get(container, ifname).await?;
    match (host_link, container_link) {
        (Some(host), Some(container)) => Ok(VethPair { host, container }),
        _ => Err(Error::io(format!(
            "veth pair {host_name}/{ifname} vanished after creation"
        ))),
    }
}

/// The other end of veth `name` (in `here`), looked up in `there`.
pub async fn peer(here: &Handle, there: &Handle, name: &str) -> Result<Option<LinkInfo>> {
    let Some(msg) = get_msg(here, name).await? else {
        return Ok(None);
    };
    match peer_index(&msg) {
        Some(index) => get_by_index(there, index).await,
        None => Ok(None),
    }
}

pub async fn set_up(h: &Handle, name: &str, up: bool) -> Result<()> {
    let b = LinkUnspec::new_with_name(name);
    let msg = if up { b.up() } else { b.down() }.build();
    h.link().set(msg).execute().await.map_err(|e| {
        nl_err(
            format!("set link {name} {}", if up { "up" } else { "down" }),
            e,
        )
    })
}

/// Makes `name` a port of `bridge`. A bridge port only switches frames
/// (the bridge takes every frame it receives), so in the same request it is
/// given no IPv6 address of its own (address generation off): no link-local
/// address and route per port, which would make the node's IPv6 tables grow
/// with the pods, and every link change on the node walks them. A port
/// without IPv6 (a kernel without it, an MTU under 1280) is attached as is.
pub async fn set_master(h: &Handle, name: &str, bridge: &str, master: u32) -> Result<()> {
    let no_addresses =
        LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
            In6AddrGenMode::None,
        )])]);
    let port = || LinkUnspec::new_with_name(name).controller(master);
    let res = match h
        .link()
        .set(port().append_extra_attribute(no_addresses).build())
        .execute()
        .await
    {
        Err(e) if errno(&e) == Some(EAFNOSUPPORT) => h.link().set(port().build()).execute().await,
        other => other,
    };
    res.map_err(|e| nl_err(format!("attach {name} to bridge {bridge}"), e))
}

pub async fn set_promisc(h: &Handle, name: &str, on: bool) -> Result<()> {
    let msg = LinkUnspec::new_with_name(name).promiscuous(on).build();
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_err(format!("set promisc on {name}"), e))
}

/// IPv4 settings of a link that netlink sets exactly as their sysctl does
/// (`IPV4_DEVCONF_*` numbers of `<linux/ip.h>`; only values read where
/// they are used, with no side effect in their sysctl handler).
const IPV4_CONF: &[(&str, u16)] = &[
    ("proxy_arp", 3),
    ("arp_announce", 18),
    ("arp_ignore", 19),
    ("arp_accept", 21),
    ("arp_notify", 22),
];
const IFLA_AF_SPEC: u16 = 26;
const AF_INET: u16 = 2;
const IFLA_INET_CONF: u16 = 1;

/// `net.ipv4.conf.<link>.<setting>` for a setting of [`IPV4_CONF`]: the
/// link and the setting's number.
pub fn ipv4_conf_key(key: &str) -> Option<(&str, u16)> {
    let (link, setting) = key.strip_prefix("net.ipv4.conf.")?.rsplit_once('.')?;
    if link == "all" || link == "default" {
        return None;
    }
    let id = IPV4_CONF.iter().find(|(n, _)| *n == setting)?.1;
    Some((link, id))
}

/// One netlink attribute, padded.
fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + payload.len() + 3);
    b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(payload);
    b.resize((b.len() + 3) & !3, 0);
    b
}

/// Sets IPv4 setting `id` (see [`ipv4_conf_key`]) of link `name` by
/// netlink instead of `/proc/sys/net/ipv4/conf/<name>/…`. Every pod's
/// namespace has its own `eth0` under the one `conf` directory entry the
/// namespaces share, so resolving that path walks one cached entry per pod
/// on the node; the link's index does not.
pub async fn set_ipv4_conf(h: &Handle, name: &str, index: u32, id: u16, value: u32) -> Result<()> {
    let conf = nla(IFLA_INET_CONF, &nla(id, &value.to_ne_bytes()));
    let spec = nla(AF_INET, &conf);
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::Other(
        rtnetlink::packet_core::DefaultNla::new(IFLA_AF_SPEC, spec),
    ));
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_err(format!("set IPv4 setting {id} of {name}"), e))
}

pub async fn set_hairpin(h: &Handle, name: &str, index: u32, on: bool) -> Result<()> {
    let msg = LinkBridgePort::new(index).hairpin(on).build();
    h.link()
        .set_port(msg)
        .execute()
        .await
        .map_err(|e| nl_err(format!("set hairpin mode on {name}"), e))
}

pub async fn set_port_vlan(
    h: &Handle,
    name: &str,
    index: u32,
    vid: u16,
    keep_default: bool,
) -> Result<()> {
    if !keep_default {
        let msg = LinkBridgeVlan::new(index)
            .vlan(1, BridgeVlanInfoFlags::empty())
            .build();
        match h.link().del_with_message(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(nix::libc::ENOENT) => {}
            Err(e) => return Err(nl_err(format!("remove default VLAN 1 from {name}"), e)),
        }
    }
    let flags = BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged;
    let msg = LinkBridgeVlan::new(index).vlan(vid, flags).build();
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_err(format!("set VLAN {vid} on {name}"), e))
}

/// How long a deletion may take to be announced.
const DELETE_TIMEOUT_MS: i32 = 10_000;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTMGRP_LINK: u32 = 1;
const NLMSG_HDRLEN: usize = 16;

/// The two sockets a deletion uses, both opened in the link's namespace: one
/// for the request, one listening to link announcements.
pub struct DeleteSockets {
    request: netlink_sys::Socket,
    monitor: netlink_sys::Socket,
}

impl DeleteSockets {
    /// Opens them in the current network namespace.
    pub fn open() -> std::io::Result<DeleteSockets> {
        let mut request = netlink_sys::Socket::new(netlink_sys::constants::NETLINK_ROUTE)?;
        request.bind_auto()?;
        let mut monitor = netlink_sys::Socket::new(netlink_sys::constants::NETLINK_ROUTE)?;
        monitor.bind(&netlink_sys::SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(DeleteSockets { request, monitor })
    }
}

/// RTM_DELLINK of the link with `index`, acked.
fn del_request(index: u32) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0..4].copy_from_slice(&32u32.to_ne_bytes());
    m[4..6].copy_from_slice(&RTM_DELLINK.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, type 0, then the index.
    m[20..24].copy_from_slice(&index.to_ne_bytes());
    m
}

/// The errno of the first NLMSG_ERROR in `buf` (0 for an ack).
fn ack_errno(buf: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    let code = i32::from_ne_bytes(buf.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)?.try_into().ok()?);
    (kind == NLMSG_ERROR).then_some(code.wrapping_neg())
}

/// Whether `datagram` (link announcements) says the kernel is deleting the link
/// with `index`: the device's own RTM_DELLINK, or the RTM_NEWLINK that
/// announces it brought down (`IFF_UP` cleared and among the changed flags),
/// which is the first thing the kernel does in unregistering a device that
/// is up, holding RTNL for the rest. Bridge ports are also announced with
/// RTM_DELLINK of family AF_BRIDGE when they leave the bridge; only the
/// device's own (AF_UNSPEC) counts, and a change of carrier (which leaves
/// `IFF_UP` as it was) does not. A datagram that is not whole messages says
/// nothing.
fn announces_deletion(datagram: &[u8], index: u32) -> bool {
    const IFF_UP: u32 = 1;
    let Ok(messages) = nfnetlink::messages(datagram) else {
        return false;
    };
    messages.iter().any(|m| {
        // ifinfomsg: family, pad, type, index, flags, change.
        let Some(body) = m.payload.first_chunk::<16>() else {
            return false;
        };
        let word =
            |at: usize| u32::from_ne_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        let (family, flags, change) = (body[0], word(8), word(12));
        let brought_down = flags & IFF_UP == 0 && change & IFF_UP != 0;
        family == 0
            && word(4) == index
            && (m.kind == RTM_DELLINK || (m.kind == RTM_NEWLINK && brought_down))
    })
}

/// Deletes link `index` (`name` for messages) with `socks` opened in its
/// namespace, and returns once the kernel announces that it is deleting it
/// (see [`announces_deletion`]). From then on the kernel holds RTNL until
/// the link is unregistered, so every later request that makes or changes
/// a link, an address or a route on the node comes after the whole
/// deletion; a dump, which takes no lock, may still list the link (down)
/// for that time. The kernel answers the request itself only after freeing
/// the device, RCU grace periods later (~20 ms here, most of a DEL); that
/// tail is left to a detached child (see [`crate::kernel::detach`]) holding
/// the request socket, so the invocation does not wait for it. A link
/// already gone is not an error.
pub fn delete_announced(socks: DeleteSockets, index: u32, name: &str) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let fail =
        |what: &str, e: std::io::Error| Error::io(format!("delete link {name}: {what}: {e}"));
    let request = del_request(index);
    let mut fds = [0 as RawFd; 2];
    // A datagram pair, so the detached answer can be sent without SIGPIPE
    // when nobody reads any more.
    // SAFETY: socketpair writes two descriptors into `fds`.
    if unsafe {
        nix::libc::socketpair(
            nix::libc::AF_UNIX,
            nix::libc::SOCK_SEQPACKET | nix::libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(fail("socketpair", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and owned here.
    let (answer_r, answer_w) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (req_fd, w_fd) = (socks.request.as_raw_fd(), answer_w.as_raw_fd());
    let detached = crate::kernel::detach::spawn(&[req_fd, w_fd], move || {
        use crate::kernel::detach::sys;
        // Send, wait for the kernel's answer, pass its errno on.
        let mut errno: i32 = nix::libc::EIO;
        if sys::send(req_fd, &request, 0) == request.len() as isize {
            let mut buf = [0u8; 512];
            let n = sys::recv(req_fd, &mut buf);
            if let Some(got) = usize::try_from(n).ok().and_then(|n| buf.get(..n)) {
                errno = ack_errno(got).unwrap_or(nix::libc::EIO);
            }
        }
        sys::send(w_fd, &errno.to_ne_bytes(), nix::libc::MSG_NOSIGNAL);
    });
    drop(answer_w);
    if !detached {
        // No child: send it here and wait for the whole of it.
        socks
            .request
            .send(&request, 0)
            .map_err(|e| fail("send", e))?;
        let mut buf = vec![0u8; 512];
        let n = socks
            .request
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| fail("receive", e))?;
        return answer(
            ack_errno(&buf[..n.min(buf.len())]).unwrap_or(nix::libc::EIO),
            name,
        );
    }
    drop(socks.request);
    let mut buf = vec![0u8; 64 * 1024];
    let mut watching = true;
    loop {
        let mut polled = [
            nix::libc::pollfd {
                fd: answer_r.as_raw_fd(),
                events: nix::libc::POLLIN,
                revents: 0,
            },
            nix::libc::pollfd {
                fd: if watching {
                    socks.monitor.as_raw_fd()
                } else {
                    -1
                },
                events: nix::libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polls two valid (or ignored, -1) descriptors.
        let n = unsafe { nix::libc::poll(polled.as_mut_ptr(), 2, DELETE_TIMEOUT_MS) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(fail("poll", e));
        }
        if n == 0 {
            return Err(Error::io(format!(
                "delete link {name}: not deleted within {} s",
                DELETE_TIMEOUT_MS / 1000
            )));
        }
        if polled[1].revents != 0 {
            match socks
                .monitor
                .recv(&mut &mut buf[..], nix::libc::MSG_DONTWAIT)
            {
                Ok(n) if announces_deletion(&buf[..n.min(buf.len())], index) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Announcements lost (ENOBUFS on a busy node): wait for the
                // kernel's answer instead.
                Err(_) => watching = false,
            }
        }
        if polled[0].revents != 0 {
            let mut errno = [0u8; 4];
            // SAFETY: reads at most 4 bytes into `errno`.
            let got =
                unsafe { nix::libc::read(answer_r.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
            if got != 4 {
                return Err(Error::io(format!(
                    "delete link {name}: the deleting process ended without an answer"
                )));
            }
            return answer(i32::from_ne_bytes(errno), name);
        }
    }
}

fn answer(errno: i32, name: &str) -> Result<()> {
    match errno {
        0 | ENODEV => Ok(()),
        e => Err(Error::io(format!(
            "delete link {name}: {}",
            std::io::Error::from_raw_os_error(e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of `kind` with an ifinfomsg of `family`, `index`,
    /// `flags` and `change`.
    fn announcement(kind: u16, family: u8, index: u32, flags: u32, change: u32) -> Vec<u8> {
        let mut m = vec![0u8; 32];
        m[0..4].copy_from_slice(&32u32.to_ne_bytes());
        m[4..6].copy_from_slice(&kind.to_ne_bytes());
        m[16] = family;
        m[20..24].copy_from_slice(&index.to_ne_bytes());
        m[24..28].copy_from_slice(&flags.to_ne_bytes());
        m[28..32].copy_from_slice(&change.to_ne_bytes());
        m
    }

    #[test]
    fn delete_request_is_an_acked_rtm_dellink_of_the_index() {
        let m = del_request(7);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_DELLINK);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 5);
        assert_eq!(m[16], 0, "family AF_UNSPEC");
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
    }

    #[test]
    fn only_the_devices_own_deletion_counts() {
        const UP: u32 = 1;
        let bridge_port_left = announcement(RTM_DELLINK, 7, 5, 0, 0);
        let other_link = announcement(RTM_DELLINK, 0, 6, 0, 0);
        let other_link_down = announcement(RTM_NEWLINK, 0, 6, 0, UP);
        let carrier_lost = announcement(RTM_NEWLINK, 0, 5, UP, 0);
        let still_down = announcement(RTM_NEWLINK, 0, 5, 0, 0);
        let brought_up = announcement(RTM_NEWLINK, 0, 5, UP, UP);
        for (what, m) in [
            ("bridge port left", &bridge_port_left),
            ("other link", &other_link),
            ("other link down", &other_link_down),
            ("carrier lost", &carrier_lost),
            ("a change of a link already down", &still_down),
            ("brought up", &brought_up),
        ] {
            assert!(!announces_deletion(m, 5), "{what}");
        }
        assert!(announces_deletion(
            &announcement(RTM_NEWLINK, 0, 5, 0, UP),
            5
        ));
        let deleted = announcement(RTM_DELLINK, 0, 5, 0, 0);
        let batch = [bridge_port_left, other_link, carrier_lost, deleted].concat();
        assert!(announces_deletion(&batch, 5));
        assert!(
            !announces_deletion(&batch[..batch.len() - 4], 5),
            "a cut message is not read"
        );
    }

    #[test]
    fn ipv4_settings_by_netlink_are_named_exactly() {
        assert_eq!(
            ipv4_conf_key("net.ipv4.conf.eth0.arp_notify"),
            Some(("eth0", 22))
        );
        assert_eq!(
            ipv4_conf_key("net.ipv4.conf.eth0.100.arp_notify"),
            Some(("eth0.100", 22))
        );
        assert_eq!(ipv4_conf_key("net.ipv4.conf.all.arp_notify"), None);
        assert_eq!(ipv4_conf_key("net.ipv4.conf.eth0.forwarding"), None);
        assert_eq!(ipv4_conf_key("net.ipv6.conf.eth0.accept_dad"), None);
        // IFLA_INET_CONF { 22: 1 } inside AF_INET: lengths include headers.
        let conf = nla(IFLA_INET_CONF, &nla(22, &1u32.to_ne_bytes()));
        assert_eq!(&conf[..4], &[12, 0, 1, 0]);
        assert_eq!(&conf[4..8], &[8, 0, 22, 0]);
    }

    #[test]
    fn acks_and_errors_are_read() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-ENODEV).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(ENODEV));
        assert_eq!(ack_errno(&announcement(RTM_DELLINK, 0, 1, 0, 0)), None);
        assert_eq!(ack_errno(&ack[..10]), None);
        assert!(answer(ENODEV, "x").is_ok());
        assert!(answer(nix::libc::EPERM, "x").is_err());
    }
}
