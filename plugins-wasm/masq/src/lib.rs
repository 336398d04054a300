//! masq: a chained plugin that masquerades the container's addresses, as
//! the bridge plugin's `ipMasq` does, for plugins that have no such key.
//!
//! ADD: needs `prevResult`; asks the host to masquerade traffic from each
//! container address (an address of an interface inside the container, or
//! every address when the result lists no interfaces) leaving its subnet,
//! and returns the previous result unchanged.
//! DEL: removes this attachment's masquerade rules; succeeds when there are
//! none, also without `prevResult` or namespace.
//! CHECK: the host still has a masquerade rule for each container address.
//! GC: removes the masquerade rules of attachments no longer valid.
//!
//! The host fills in the rules' owner (network, container ID, interface), so
//! the plugin can only ever touch its own attachment's rules.

mod config;

use config::Conf;
use wasm_cni_sdk::firewall::{self, RuleKind};
use wasm_cni_sdk::{nat, prev_result, CniError, CniResult, Error, NetworkRequest, Plugin, Request};

struct Masq;

impl Plugin for Masq {
    fn add(req: Request) -> Result<CniResult, CniError> {
        let conf = Conf::parse(&req.config)?;
        let prev = prev_result(&req, "masq")?;
        nat::add_masquerade(conf.backend, &nat::container_ips(prev))?;
        Ok(prev.clone())
    }

    fn del(req: Request) -> Result<(), CniError> {
        Conf::parse(&req.config)?;
        firewall::remove(RuleKind::Masquerade).map_err(|e| Error::context(e, "remove masquerade"))
    }

    fn check(req: Request) -> Result<(), CniError> {
        Conf::parse(&req.config)?;
        let prev = prev_result(&req, "masq")?;
        nat::check_masquerade(&nat::container_ips(prev))
    }

    fn status(req: NetworkRequest) -> Result<(), CniError> {
        Conf::parse(&req.config)?;
        Ok(())
    }

    fn gc(req: NetworkRequest) -> Result<(), CniError> {
        Conf::parse(&req.config)?;
        firewall::gc(RuleKind::Masquerade, &req.valid_attachments)
            .map_err(|e| Error::context(e, "collect masquerade rules"))
    }
}

wasm_cni_sdk::export!(Masq);
