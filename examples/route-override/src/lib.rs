//! route-override: a chained plugin that adds static routes to the container
//! interface another plugin (bridge, ...) created.
//!
//! ADD: needs `prevResult` with the container interface `CNI_IFNAME` in it;
//! optionally flushes the default routes (`flushGateway`), adds every route
//! of `addRoutes` on `CNI_IFNAME` inside the container, and returns the
//! previous result with those routes appended.
//! DEL: removes the routes of `addRoutes` that are still there; succeeds
//! when the namespace, the interface or the routes are already gone.
//! CHECK: every route of `addRoutes` is still on `CNI_IFNAME`, and no
//! default route when `flushGateway`.
//!
//! The plugin only touches `CNI_IFNAME` in the container namespace; the host
//! would refuse anything else.

mod config;

use wasm_cni_sdk::netns::Namespace;
use wasm_cni_sdk::route::RouteSpec;
use wasm_cni_sdk::{
    link, netns, route, CniError, CniResult, Error, NetworkRequest, Plugin, Request, Route,
};

struct RouteOverride;

fn spec(r: &Route, dev: &str) -> RouteSpec {
    RouteSpec {
        dst: r.dst,
        gw: r.gw,
        dev: dev.to_string(),
        mtu: r.mtu,
        advmss: r.advmss,
        priority: r.priority,
        table: r.table,
        scope: r.scope,
    }
}

/// Whether a route in the kernel is the one configured.
fn same(have: &RouteSpec, want: &Route) -> bool {
    have.dst == want.dst && have.gw == want.gw
}

fn is_default(r: &Route) -> bool {
    r.dst.prefix_len == 0
}

fn prev_result(req: &Request) -> Result<CniResult, CniError> {
    req.prev_result.clone().ok_or_else(|| {
        Error::config("prevResult: missing; route-override is a chained plugin and must follow one that creates the interface")
    })
}

/// The container namespace, failing unless `CNI_IFNAME` is there.
fn interface(req: &Request) -> Result<Namespace, CniError> {
    let ns = netns::container()?;
    if link::get(&ns, &req.ifname)?.is_none() {
        return Err(Error::io(format!(
            "container interface {} does not exist",
            req.ifname
        )));
    }
    Ok(ns)
}

impl Plugin for RouteOverride {
    fn add(req: Request) -> Result<CniResult, CniError> {
        let conf = config::parse(&req.config)?;
        let mut result = prev_result(&req)?;
        if !result
            .interfaces
            .iter()
            .any(|i| i.name == req.ifname && i.sandbox.is_some())
        {
            return Err(Error::config(format!(
                "prevResult: no interface {} inside the container; chain route-override after the plugin that creates it",
                req.ifname
            )));
        }
        let ns = interface(&req)?;
        if conf.flush_gateway {
            for have in route::list(&ns, &req.ifname)? {
                if have.dst.prefix_len == 0 {
                    route::del(&ns, &have).map_err(|e| {
                        Error::context(e, format!("flush default route on {}", req.ifname))
                    })?;
                }
            }
            result.routes.retain(|r| !is_default(r));
            for ip in &mut result.ips {
                ip.gateway = None;
            }
        }
        for r in &conf.add_routes {
            route::add(&ns, &spec(r, &req.ifname))
                .map_err(|e| Error::context(e, format!("add route {} on {}", r.dst, req.ifname)))?;
            if !result
                .routes
                .iter()
                .any(|have| have.dst == r.dst && have.gw == r.gw)
            {
                result.routes.push(*r);
            }
        }
        Ok(result)
    }

    fn del(req: Request) -> Result<(), CniError> {
        let conf = config::parse(&req.config)?;
        if !req.has_netns || conf.add_routes.is_empty() {
            return Ok(());
        }
        // Gone since the host looked: nothing left to remove.
        let Ok(ns) = netns::container() else {
            return Ok(());
        };
        if link::get(&ns, &req.ifname)?.is_none() {
            return Ok(());
        }
        for have in route::list(&ns, &req.ifname)? {
            if conf.add_routes.iter().any(|want| same(&have, want)) {
                route::del(&ns, &have).map_err(|e| {
                    Error::context(e, format!("delete route {} on {}", have.dst, req.ifname))
                })?;
            }
        }
        Ok(())
    }

    fn check(req: Request) -> Result<(), CniError> {
        let conf = config::parse(&req.config)?;
        prev_result(&req)?;
        let ns = interface(&req)?;
        let have = route::list(&ns, &req.ifname)?;
        for want in &conf.add_routes {
            if !have.iter().any(|h| same(h, want)) {
                let via = want.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(Error::plugin(format!(
                    "route {}{via} on {} is missing",
                    want.dst, req.ifname
                )));
            }
        }
        if conf.flush_gateway {
            if let Some(d) = have.iter().find(|h| h.dst.prefix_len == 0) {
                return Err(Error::plugin(format!(
                    "default route {} on {} is back although flushGateway is set",
                    d.dst, req.ifname
                )));
            }
        }
        Ok(())
    }

    fn status(req: NetworkRequest) -> Result<(), CniError> {
        config::parse(&req.config).map(drop)
    }

    fn gc(req: NetworkRequest) -> Result<(), CniError> {
        // No state of its own: routes go with the interface.
        config::parse(&req.config).map(drop)
    }
}

wasm_cni_sdk::export!(RouteOverride);
