//! Conversions between the WIT address records and text / `std::net`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::bindings::{IpAddress, IpNet};
use crate::error::{Error, Result};

impl From<IpAddr> for IpAddress {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                IpAddress::V4((a, b, c, d))
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddress::V6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
            }
        }
    }
}

impl From<IpAddress> for IpAddr {
    fn from(ip: IpAddress) -> Self {
        match ip {
            IpAddress::V4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            IpAddress::V6((a, b, c, d, e, f, g, h)) => {
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
            }
        }
    }
}

impl fmt::Display for IpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        IpAddr::from(*self).fmt(f)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl IpNet {
    pub fn ip(&self) -> IpAddr {
        self.addr.into()
    }
}

/// Parses an address; `what` names the field in the error.
pub fn parse_ip(s: &str, what: &str) -> Result<IpAddress> {
    s.parse::<IpAddr>()
        .map(Into::into)
        .map_err(|_| Error::decode(format!("{what}: invalid IP address {s:?}")))
}

/// Parses `addr/prefix`; `what` names the field in the error.
pub fn parse_ip_net(s: &str, what: &str) -> Result<IpNet> {
    let bad = || Error::decode(format!("{what}: invalid CIDR {s:?}"));
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(prefix_len) if prefix_len <= max => Ok(IpNet {
            addr: ip.into(),
            prefix_len,
        }),
        _ => Err(bad()),
    }
}
