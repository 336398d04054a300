//! Conversions between the WIT address records and `std::net`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{CniError, Error, IpAddress, IpNet};

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

impl PartialEq for IpAddress {
    fn eq(&self, other: &Self) -> bool {
        IpAddr::from(*self) == IpAddr::from(*other)
    }
}

impl PartialEq for IpNet {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr && self.prefix_len == other.prefix_len
    }
}

/// Parses an address; `what` names the field in the error.
pub fn parse_ip(s: &str, what: &str) -> Result<IpAddr, CniError> {
    s.parse()
        .map_err(|_| Error::config(format!("{what}: invalid IP address {s:?}")))
}

/// Parses `addr/prefix` (a bare address gets a host prefix); `what` names
/// the field in the error.
pub fn parse_ip_net(s: &str, what: &str) -> Result<IpNet, CniError> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip = parse_ip(addr, what)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix_len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(Error::config(format!(
                    "{what}: invalid prefix length in {s:?}"
                )))
            }
        },
    };
    Ok(IpNet {
        addr: ip.into(),
        prefix_len,
    })
}

/// Arithmetic on [`IpNet`] that plugins need.
pub trait IpNetExt {
    fn ip(&self) -> IpAddr;
    fn is_ipv4(&self) -> bool;
    /// The network address (host bits cleared).
    fn network(&self) -> IpAddr;
    /// The same prefix with host bits cleared.
    fn trunc(&self) -> IpNet;
    fn contains(&self, ip: IpAddr) -> bool;
}

fn mask(bits: u32, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        (u128::MAX << (bits - prefix as u32)) & (u128::MAX >> (128 - bits))
    }
}

fn to_u128(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn from_u128(v: u128, bits: u32) -> IpAddr {
    if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl IpNetExt for IpNet {
    fn ip(&self) -> IpAddr {
        self.addr.into()
    }
    fn is_ipv4(&self) -> bool {
        matches!(self.addr, IpAddress::V4(_))
    }
    fn network(&self) -> IpAddr {
        let (v, bits) = to_u128(self.ip());
        from_u128(v & mask(bits, self.prefix_len), bits)
    }
    fn trunc(&self) -> IpNet {
        IpNet {
            addr: self.network().into(),
            prefix_len: self.prefix_len,
        }
    }
    fn contains(&self, ip: IpAddr) -> bool {
        let (net, bits) = to_u128(self.ip());
        let (v, vbits) = to_u128(ip);
        bits == vbits && (net & mask(bits, self.prefix_len)) == (v & mask(bits, self.prefix_len))
    }
}
