//! Addresses on a link.

use std::net::IpAddr;

use futures::TryStreamExt;
use nix::libc::{EADDRNOTAVAIL, EEXIST};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;

use super::link::get;
use super::{errno, nl_err};
use crate::bindings::IpNet;
use crate::error::Result;

fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the address of the interface; IFA_ADDRESS the peer on
    // point-to-point links. Prefer the local one when present.
    let mut found = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => found = Some(*ip),
            AddressAttribute::Address(ip) if found.is_none() => found = Some(*ip),
            _ => {}
        }
    }
    found.map(|ip: IpAddr| IpNet {
        addr: ip.into(),
        prefix_len: msg.header.prefix_len,
    })
}

/// The addresses of link `index`, IPv4 then IPv6: the kernel filters by
/// link (strict checking, see [`super::connect`]); the filter here only
/// repeats it. One dump per family: the kernel walks one family's
/// addresses without RTNL, but takes RTNL for a dump of every family, and
/// RTNL may be held for a while by the link-watch work of a port just
/// brought up.
async fn dump(h: &Handle, index: u32) -> Result<Vec<AddressMessage>> {
    let mut all = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = h.address().get().set_link_index_filter(index);
        request.message_mut().header.index = index;
        request.message_mut().header.family = family;
        let found: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(format!("list addresses of link #{index}"), e))?;
        all.extend(found);
    }
    Ok(all)
}

/// Adds `addr` to link `link`, whose index is `index`.
pub async fn add(h: &Handle, link: &str, index: u32, addr: &IpNet) -> Result<()> {
    match h
        .address()
        .add(index, addr.ip(), addr.prefix_len)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(nl_err(format!("add address {addr} to {link}"), e)),
    }
}

pub async fn del(h: &Handle, link: &str, addr: &IpNet) -> Result<()> {
    let Some(l) = get(h, link).await? else {
        return Ok(());
    };
    for msg in dump(h, l.index).await? {
        if msg.header.index == l.index && address_of(&msg).as_ref() == Some(addr) {
            match h.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                Err(e) => return Err(nl_err(format!("delete address {addr} from {link}"), e)),
            }
        }
    }
    Ok(())
}

/// The addresses of link `index`.
pub async fn list(h: &Handle, index: u32) -> Result<Vec<IpNet>> {
    Ok(dump(h, index)
        .await?
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(address_of)
        .collect())
}
