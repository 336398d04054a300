//! Links: lookups, the bridge, the veth pair, port settings, deletion.

use std::os::fd::RawFd;

use futures::TryStreamExt;
use nix::libc::{EEXIST, ENODEV};
use rtnetlink::packet_route::link::{
    BridgeVlanInfoFlags, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as Info,
    LinkMessage,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, LinkVeth,
};

use super::{errno, nl_err};
use crate::bindings::cni::plugin::link::{BridgeOptions, LinkInfo, VethOptions, VethPair};
use crate::error::{Error, Result};

pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Result<Vec<u8>> {
    let bytes: Option<Vec<u8>> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    match bytes {
        Some(b) if b.len() == 6 => Ok(b),
        _ => Err(Error::config(format!("mac: invalid MAC address {s:?}"))),
    }
}

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

async fn index_of(h: &Handle, name: &str) -> Result<u32> {
    get(h, name)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| Error::io(format!("link {name} not found")))
}

pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    opts: &BridgeOptions,
) -> Result<(LinkInfo, bool)> {
    let mut created = false;
    if get_msg(h, name).await?.is_none() {
        let mut b = LinkBridge::new(name).up().promiscuous(opts.promisc);
        if let Some(mtu) = opts.mtu {
            b = b.mtu(mtu);
        }
        if let Some(mac) = &opts.mac {
            b = b.address(parse_mac(mac)?);
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
    let bridge = get(h, name)
        .await?
        .ok_or_else(|| Error::io(format!("bridge {name} vanished after creation")))?;
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
    }
    Ok((bridge, created))
}

pub async fn create_veth(
    host: &Handle,
    container: &Handle,
    container_fd: RawFd,
    host_name: &str,
    opts: &VethOptions,
) -> Result<VethPair> {
    let ifname = &opts.container_ifname;
    let mut peer = LinkUnspec::new_with_name(ifname).setns_by_fd(container_fd);
    if let Some(mtu) = opts.mtu {
        peer = peer.mtu(mtu);
    }
    if let Some(mac) = &opts.container_mac {
        peer = peer.address(parse_mac(mac)?);
    }
    let mut veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
    if let Some(mtu) = opts.mtu {
        veth = veth.mtu(mtu);
    }
    match host.link().add(veth.build()).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(EEXIST) => {
            let which = if get_msg(container, ifname).await?.is_some() {
                format!("container interface {ifname}")
            } else {
                format!("host interface {host_name}")
            };
            return Err(Error::io(format!(
                "create veth pair: {which} already exists"
            )));
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

pub async fn set_master(h: &Handle, name: &str, bridge: &str) -> Result<()> {
    let master = index_of(h, bridge).await?;
    let msg = LinkUnspec::new_with_name(name).controller(master).build();
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_err(format!("attach {name} to bridge {bridge}"), e))
}

pub async fn set_promisc(h: &Handle, name: &str, on: bool) -> Result<()> {
    let msg = LinkUnspec::new_with_name(name).promiscuous(on).build();
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_err(format!("set promisc on {name}"), e))
}

pub async fn set_hairpin(h: &Handle, name: &str, on: bool) -> Result<()> {
    let index = index_of(h, name).await?;
    let msg = LinkBridgePort::new(index).hairpin(on).build();
    h.link()
        .set_port(msg)
        .execute()
        .await
        .map_err(|e| nl_err(format!("set hairpin mode on {name}"), e))
}

pub async fn set_port_vlan(h: &Handle, name: &str, vid: u16, keep_default: bool) -> Result<()> {
    let index = index_of(h, name).await?;
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

pub async fn delete(h: &Handle, name: &str) -> Result<()> {
    let Some(link) = get(h, name).await? else {
        return Ok(());
    };
    match h.link().del(link.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(nl_err(format!("delete link {name}"), e)),
    }
}
