//! The `sysctl` capability: an allowed list, see `grants`.

use wasmtime::component::Resource;

use super::netns::Namespace;
use crate::bindings::cni::plugin::sysctl::Host;
use crate::bindings::CniError;
use crate::state::HostState;

impl Host for HostState {
    fn get(&mut self, ns: Resource<Namespace>, key: String) -> Result<String, CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_sysctl(ns, &key)?;
        Ok(self.kernel()?.sysctl_get(ns, &key)?)
    }

    fn set(&mut self, ns: Resource<Namespace>, key: String, value: String) -> Result<(), CniError> {
        let ns = self.ns(&ns)?;
        self.grants.check_sysctl(ns, &key)?;
        Ok(self.kernel()?.sysctl_set(ns, &key, &value)?)
    }
}
