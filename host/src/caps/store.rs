//! The `store` capability: this network's reservations, for IPAM plugins.

use crate::bindings::cni::plugin::store::{Host, Reservation};
use crate::bindings::{CniError, IpAddress};
use crate::error::{Error, Result};
use crate::state::HostState;
use crate::store::DiskStore;

impl HostState {
    fn disk(&mut self) -> Result<&mut DiskStore> {
        self.store
            .as_mut()
            .ok_or_else(|| Error::denied("only an IPAM plugin may use the reservation store"))
    }
}

impl Host for HostState {
    fn reserve(
        &mut self,
        ip: IpAddress,
        container_id: String,
        ifname: String,
    ) -> Result<bool, CniError> {
        Ok(self.disk()?.reserve(ip.into(), &container_id, &ifname)?)
    }

    fn release(&mut self, ip: IpAddress) -> Result<(), CniError> {
        Ok(self.disk()?.release(ip.into())?)
    }

    fn release_owner(
        &mut self,
        container_id: String,
        ifname: String,
    ) -> Result<Vec<IpAddress>, CniError> {
        let ips = self.disk()?.release_owner(&container_id, &ifname)?;
        Ok(ips.into_iter().map(Into::into).collect())
    }

    fn owned(&mut self, container_id: String, ifname: String) -> Result<Vec<IpAddress>, CniError> {
        let ips = self.disk()?.owned(&container_id, &ifname)?;
        Ok(ips.into_iter().map(Into::into).collect())
    }

    fn list(&mut self) -> Result<Vec<Reservation>, CniError> {
        let all = self.disk()?.list()?;
        Ok(all
            .into_iter()
            .map(|r| Reservation {
                ip: r.ip.into(),
                container_id: r.container_id,
                ifname: r.ifname,
            })
            .collect())
    }

    fn last_reserved(&mut self, range_id: u32) -> Result<Option<IpAddress>, CniError> {
        Ok(self.disk()?.last_reserved(range_id)?.map(Into::into))
    }

    fn set_last_reserved(&mut self, range_id: u32, ip: IpAddress) -> Result<(), CniError> {
        Ok(self.disk()?.set_last_reserved(range_id, ip.into())?)
    }
}
