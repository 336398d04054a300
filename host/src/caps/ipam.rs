//! The `ipam` capability: delegation to the plugin named by `ipam.type`.

use crate::bindings::cni::plugin::ipam::Host;
use crate::bindings::{CniError, CniResult};
use crate::cni::Command;
use crate::error::{Error, Result};
use crate::state::{HostState, Undo};

impl HostState {
    fn delegate(&mut self, command: Command) -> Result<Option<CniResult>> {
        let Some(ipam) = self.grants.ipam.clone() else {
            if self.inv.conf.ipam_type.is_some() {
                return Err(Error::denied(
                    "a delegated IPAM plugin may not delegate again",
                ));
            }
            return Err(Error::config(
                "ipam.type: this network configures no IPAM plugin",
            ));
        };
        self.runtime.delegate(&ipam, command, &self.inv)
    }
}

impl Host for HostState {
    fn add(&mut self) -> Result<CniResult, CniError> {
        let result = self
            .delegate(Command::Add)?
            .ok_or_else(|| Error::io("IPAM plugin returned no result"))?;
        self.undo.push(Undo::IpamDel);
        self.grants
            .allow_pod_ips(result.ips.iter().map(|ip| ip.address.ip()));
        Ok(result)
    }

    fn del(&mut self) -> Result<(), CniError> {
        self.delegate(Command::Del)?;
        Ok(())
    }

    fn check(&mut self) -> Result<(), CniError> {
        self.delegate(Command::Check)?;
        Ok(())
    }

    fn status(&mut self) -> Result<(), CniError> {
        self.delegate(Command::Status)?;
        Ok(())
    }

    fn gc(&mut self) -> Result<(), CniError> {
        self.delegate(Command::Gc)?;
        Ok(())
    }
}
