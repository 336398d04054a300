//! Namespace handles: the node's and this invocation's container namespace.

use wasmtime::component::Resource;

use crate::bindings::cni::plugin::netns::{Host, HostNamespace};
use crate::bindings::CniError;
use crate::error::{Error, Result};
use crate::kernel::Ns;
use crate::state::HostState;

/// The host-side value behind a `namespace` handle.
#[derive(Debug, Clone, Copy)]
pub struct Namespace(pub Ns);

impl HostState {
    /// The namespace a handle stands for.
    pub(crate) fn ns(&self, handle: &Resource<Namespace>) -> Result<Ns> {
        self.table_ref()
            .get(handle)
            .map(|n| n.0)
            .map_err(|e| Error::denied(format!("invalid namespace handle: {e}")))
    }
}

impl Host for HostState {
    fn host(&mut self) -> wasmtime::Result<Resource<Namespace>> {
        Ok(self.table().push(Namespace(Ns::Host))?)
    }

    fn container(&mut self) -> wasmtime::Result<Result<Resource<Namespace>, CniError>> {
        if self.grants.role != crate::grants::Role::Network {
            return Ok(Err(
                Error::denied("an IPAM plugin has no namespace access").into()
            ));
        }
        let present = match self.kernel() {
            Ok(k) => k.has_container(),
            Err(e) => return Ok(Err(e.into())),
        };
        if !present {
            let path = self.inv.env.netns.as_ref().map(|p| p.display().to_string());
            return Ok(Err(Error::io(format!(
                "CNI_NETNS: container network namespace {} is not available",
                path.unwrap_or_else(|| "(not given)".into())
            ))
            .into()));
        }
        Ok(Ok(self.table().push(Namespace(Ns::Container))?))
    }
}

impl HostNamespace for HostState {
    fn is_container(&mut self, ns: Resource<Namespace>) -> wasmtime::Result<bool> {
        Ok(self.table().get(&ns)?.0 == Ns::Container)
    }

    fn drop(&mut self, ns: Resource<Namespace>) -> wasmtime::Result<()> {
        self.table().delete(ns)?;
        Ok(())
    }
}
