//! The `addr` capability.

use wasmtime::component::Resource;

use super::netns::Namespace;
use crate::bindings::cni::plugin::addr::Host;
use crate::bindings::{CniError, IpNet};
use crate::state::HostState;

impl Host for HostState {
    fn add(
        &mut self,
        ns: Resource<Namespace>,
        link: String,
        address: IpNet,
    ) -> Result<(), CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &link)?;
        Ok(self.kernel()?.addr_add(ns, &link, &address)?)
    }

    fn del(
        &mut self,
        ns: Resource<Namespace>,
        link: String,
        address: IpNet,
    ) -> Result<(), CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &link)?;
        Ok(self.kernel()?.addr_del(ns, &link, &address)?)
    }

    fn list(&mut self, ns: Resource<Namespace>, link: String) -> Result<Vec<IpNet>, CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &link)?;
        Ok(self.kernel()?.addr_list(ns, &link)?)
    }
}
