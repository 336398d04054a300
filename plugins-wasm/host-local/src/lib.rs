//! host-local IPAM as a WebAssembly component.
//!
//! Allocates addresses from the ranges in the configuration's `ipam` section
//! (see [`config`] for the keys) and records them in the host's reservation
//! store, the only capability this component imports besides `log`. The host
//! scopes the store to `<ipam.dataDir>/<network name>/` and holds its lock
//! for the whole invocation.
//!
//! Verbs: ADD allocates one address per range set; DEL releases the
//! attachment's addresses (succeeds when there are none); CHECK fails unless
//! the attachment holds an address; STATUS validates the configuration; GC
//! releases the reservations of attachments not in `valid-attachments`.
//! The configuration is validated (code 7) before any store call.
//! `ipam.resolvConf` is ignored with a warning (no file system access).

mod allocator;
mod config;
mod range;

use std::net::IpAddr;

use wasm_cni_sdk::{
    log, store, CniError, CniResult, IpConfig, IpNet, NetworkRequest, Plugin, Request,
};

use crate::allocator::Reservation;
use crate::config::Config;

struct HostLocal;

impl Plugin for HostLocal {
    fn add(req: Request) -> Result<CniResult, CniError> {
        let config = load(&req.config, &req.args, &req.cni_version)?;
        let allocations =
            allocator::allocate(&mut WitStore, &config, &req.container_id, &req.ifname)?;
        let ips = allocations
            .into_iter()
            .map(|a| IpConfig {
                address: IpNet {
                    addr: a.ip.into(),
                    prefix_len: a.prefix,
                },
                gateway: Some(a.gateway.into()),
                interface: None,
            })
            .collect();
        Ok(CniResult {
            interfaces: Vec::new(),
            ips,
            routes: config.routes,
            dns: None,
        })
    }

    fn del(req: Request) -> Result<(), CniError> {
        load(&req.config, &req.args, &req.cni_version)?;
        allocator::release(&mut WitStore, &req.container_id, &req.ifname)
    }

    fn check(req: Request) -> Result<(), CniError> {
        load(&req.config, &req.args, &req.cni_version)?;
        allocator::check(&mut WitStore, &req.container_id, &req.ifname)
    }

    fn status(req: NetworkRequest) -> Result<(), CniError> {
        load(&req.config, &[], &req.cni_version).map(drop)
    }

    fn gc(req: NetworkRequest) -> Result<(), CniError> {
        load(&req.config, &[], &req.cni_version)?;
        let valid: Vec<(String, String)> = req
            .valid_attachments
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        let released = allocator::gc(&mut WitStore, &valid)?;
        if !released.is_empty() {
            log(
                log::Level::Info,
                format!("host-local gc: released {} address(es)", released.len()),
            );
        }
        Ok(())
    }
}

/// Parses and validates the configuration, warning about ignored keys.
fn load(config: &str, args: &[(String, String)], cni_version: &str) -> Result<Config, CniError> {
    let config = config::parse(config, args, cni_version)?;
    if let Some(path) = &config.resolv_conf {
        log(
            log::Level::Warn,
            format!("host-local: ipam.resolvConf {path:?} is not supported and ignored"),
        );
    }
    Ok(config)
}

/// The host's WIT `store` interface.
struct WitStore;

impl allocator::Store for WitStore {
    fn reserve(&mut self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<bool, CniError> {
        store::reserve(ip.into(), container_id, ifname)
    }

    fn release(&mut self, ip: IpAddr) -> Result<(), CniError> {
        store::release(ip.into())
    }

    fn release_owner(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        store::release_owner(container_id, ifname)
            .map(|ips| ips.into_iter().map(IpAddr::from).collect())
    }

    fn owned(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        store::owned(container_id, ifname).map(|ips| ips.into_iter().map(IpAddr::from).collect())
    }

    fn list(&mut self) -> Result<Vec<Reservation>, CniError> {
        store::list().map(|list| {
            list.into_iter()
                .map(|r| Reservation {
                    ip: r.ip.into(),
                    container_id: r.container_id,
                    ifname: r.ifname,
                })
                .collect()
        })
    }

    fn last_reserved(&mut self, range_id: u32) -> Result<Option<IpAddr>, CniError> {
        store::last_reserved(range_id).map(|ip| ip.map(IpAddr::from))
    }

    fn set_last_reserved(&mut self, range_id: u32, ip: IpAddr) -> Result<(), CniError> {
        store::set_last_reserved(range_id, ip.into())
    }
}

// The SDK does not re-export the macro at its root (yet); it lives in `bindings`.
wasm_cni_sdk::export!(HostLocal);
