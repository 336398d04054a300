//! Routes in the main table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use nix::libc::{EEXIST, ESRCH};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::link::get;
use super::{errno, nl_err};
use crate::bindings::cni::plugin::route::RouteSpec;
use crate::bindings::IpNet;
use crate::error::{Error, Result};

fn message(r: &RouteSpec, oif: u32) -> Result<RouteMessage> {
    let bad = |e| Error::config(format!("route {}: {e}", r.dst));
    // Routes a plugin adds are configuration, as with the reference plugins:
    // protocol "boot" (`ip route` prints none).
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.ip(), r.dst.prefix_len)
        .map_err(bad)?
        .output_interface(oif)
        .protocol(RouteProtocol::Boot);
    if let Some(gw) = r.gw {
        b = b.gateway(gw.into()).map_err(bad)?;
    }
    if let Some(p) = r.priority {
        b = b.priority(p);
    }
    if let Some(t) = r.table {
        b = b.table_id(t);
    }
    if let Some(s) = r.scope {
        b = b.scope(RouteScope::from(s as u8));
    } else if r.gw.is_none() {
        b = b.scope(RouteScope::Link);
    }
    let mut msg = b.build();
    let mut metrics = Vec::new();
    if let Some(mtu) = r.mtu {
        metrics.push(RouteMetric::Mtu(mtu));
    }
    if let Some(advmss) = r.advmss {
        metrics.push(RouteMetric::Advmss(advmss));
    }
    if !metrics.is_empty() {
        msg.attributes.push(RouteAttribute::Metrics(metrics));
    }
    Ok(msg)
}

/// Adds route `r`, whose link `r.dev` has index `oif`.
pub async fn add(h: &Handle, r: &RouteSpec, oif: u32) -> Result<()> {
    match h.route().add(message(r, oif)?).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(nl_err(
            format!("add route {} via {:?} dev {}", r.dst, r.gw, r.dev),
            e,
        )),
    }
}

pub async fn del(h: &Handle, r: &RouteSpec) -> Result<()> {
    let Some(link) = get(h, &r.dev).await? else {
        return Ok(());
    };
    // Match the route whichever protocol installed it.
    let mut msg = message(r, link.index)?;
    msg.header.protocol = RouteProtocol::Unspec;
    match h.route().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(ESRCH) => Ok(()),
        Err(e) => Err(nl_err(format!("delete route {} dev {}", r.dst, r.dev), e)),
    }
}

fn spec(msg: &RouteMessage, dev: &str) -> Option<RouteSpec> {
    let mut dst = None;
    let mut gw = None;
    let mut priority = None;
    let mut table = (msg.header.table != 0).then_some(msg.header.table as u32);
    let mut mtu = None;
    let mut advmss = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = addr(a),
            RouteAttribute::Gateway(a) => gw = addr(a),
            RouteAttribute::Priority(p) => priority = Some(*p),
            RouteAttribute::Table(t) => table = Some(*t),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    match m {
                        RouteMetric::Mtu(v) => mtu = Some(*v),
                        RouteMetric::Advmss(v) => advmss = Some(*v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let v4 = msg.header.address_family == rtnetlink::packet_route::AddressFamily::Inet;
    let dst = dst.unwrap_or(if v4 {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    Some(RouteSpec {
        dst: IpNet {
            addr: dst.into(),
            prefix_len: msg.header.destination_prefix_length,
        },
        gw: gw.map(Into::into),
        dev: dev.to_string(),
        mtu,
        advmss,
        priority,
        table,
        scope: Some(u8::from(msg.header.scope) as u32),
    })
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn oif(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// Routes of the main table whose output link is `dev`.
pub async fn list(h: &Handle, dev: &str, index: u32) -> Result<Vec<RouteSpec>> {
    let mut out = Vec::new();
    for mut query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        // A strict dump filters on protocol and type when set: every
        // protocol (`boot`, `kernel`, `static` …) and type is wanted; the
        // kernel filters the table.
        query.header.protocol = RouteProtocol::Unspec;
        query.header.scope = RouteScope::Universe;
        query.header.kind = RouteType::Unspec;
        let msgs: Vec<RouteMessage> = h
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(format!("list routes of {dev}"), e))?;
        out.extend(
            msgs.iter()
                .filter(|m| oif(m) == Some(index))
                .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
                .filter_map(|m| spec(m, dev)),
        );
    }
    Ok(out)
}
