//! loopback: brings `lo` up in the container. It ignores `CNI_IFNAME`; as a
//! chained plugin it passes the previous result through.

use wasm_cni_sdk::{
    addr, link, netns, CniError, CniResult, Error, Interface, IpConfig, NetworkRequest, Plugin,
    Request,
};

struct Loopback;

const LO: &str = "lo";

impl Plugin for Loopback {
    fn add(req: Request) -> Result<CniResult, CniError> {
        let ns = netns::container()?;
        link::set_up(&ns, LO, true)?;
        if let Some(prev) = req.prev_result {
            return Ok(prev);
        }
        let ips = addr::list(&ns, LO)?
            .into_iter()
            .map(|address| IpConfig {
                address,
                gateway: None,
                interface: Some(0),
            })
            .collect();
        Ok(CniResult {
            interfaces: vec![Interface {
                name: LO.into(),
                mac: "00:00:00:00:00:00".into(),
                mtu: None,
                sandbox: Some(String::new()),
                socket_path: None,
                pci_id: None,
            }],
            ips,
            routes: vec![],
            dns: None,
        })
    }

    fn del(req: Request) -> Result<(), CniError> {
        if !req.has_netns {
            return Ok(());
        }
        let ns = netns::container()?;
        link::set_up(&ns, LO, false)
    }

    fn check(_req: Request) -> Result<(), CniError> {
        let ns = netns::container()?;
        match link::get(&ns, LO)? {
            Some(lo) if lo.up => Ok(()),
            Some(_) => Err(Error::plugin("loopback interface lo is down")),
            None => Err(Error::plugin("loopback interface lo is missing")),
        }
    }

    fn status(_req: NetworkRequest) -> Result<(), CniError> {
        Ok(())
    }

    fn gc(_req: NetworkRequest) -> Result<(), CniError> {
        Ok(())
    }
}

wasm_cni_sdk::export!(Loopback);
