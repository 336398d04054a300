//! The `route` capability.

use wasmtime::component::Resource;

use super::netns::Namespace;
use crate::bindings::cni::plugin::route::{Host, RouteSpec};
use crate::bindings::CniError;
use crate::state::HostState;

impl Host for HostState {
    fn add(&mut self, ns: Resource<Namespace>, route: RouteSpec) -> Result<(), CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &route.dev)?;
        Ok(self.kernel()?.route_add(ns, &route)?)
    }

    fn del(&mut self, ns: Resource<Namespace>, route: RouteSpec) -> Result<(), CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &route.dev)?;
        Ok(self.kernel()?.route_del(ns, &route)?)
    }

    fn list(&mut self, ns: Resource<Namespace>, dev: String) -> Result<Vec<RouteSpec>, CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_link(ns, &dev)?;
        Ok(self.kernel()?.route_list(ns, &dev)?)
    }
}
