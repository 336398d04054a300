//! Address ranges and their round-robin iteration.
//!
//! Addresses are handled as `u128` plus a [`Family`]; an IPv4 address is its
//! 32-bit value zero-extended.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The host-bit mask of a prefix length (all ones for the host part).
    pub fn host_mask(self, prefix: u8) -> u128 {
        let host_bits = u32::from(self.bits() - prefix.min(self.bits()));
        if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        }
    }
}

/// The family and numeric value of an address.
pub fn to_u128(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(v4) => (Family::V4, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (Family::V6, u128::from(v6)),
    }
}

/// The address of a value; an IPv4 value is truncated to 32 bits.
pub fn from_u128(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// A subnet in canonical form (no host bits set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub family: Family,
    pub network: u128,
    pub prefix: u8,
}

impl Subnet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (family, v) = to_u128(ip);
        family == self.family && v & !self.family.host_mask(self.prefix) == self.network
    }

    /// The all-ones (broadcast for IPv4) address.
    pub fn last(&self) -> u128 {
        self.network | self.family.host_mask(self.prefix)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            from_u128(self.family, self.network),
            self.prefix
        )
    }
}

/// One allocation pool: `start..=end` inside `subnet`. The gateway is never
/// handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: Subnet,
    pub start: u128,
    pub end: u128,
    pub gateway: u128,
}

impl Range {
    pub fn family(&self) -> Family {
        self.subnet.family
    }

    pub fn gateway_ip(&self) -> IpAddr {
        from_u128(self.family(), self.gateway)
    }

    /// True when `ip` lies between the range's start and end (inclusive).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (family, v) = to_u128(ip);
        family == self.family() && self.start <= v && v <= self.end
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        self.family() == other.family() && self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fam = self.family();
        write!(
            f,
            "{}-{}",
            from_u128(fam, self.start),
            from_u128(fam, self.end)
        )
    }
}

/// The ranges one IP is allocated from (one entry of `ipam.ranges`).
/// Validated: non-empty, one family, no overlaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn family(&self) -> Option<Family> {
        self.ranges.first().map(Range::family)
    }

    /// The range holding `ip`.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.ranges
            .iter()
            .any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }

    /// Candidates for allocation, round-robin: from the address after
    /// `last` (when `last` is in the set) or else from the first range's
    /// start, through the end of each range into the next one, wrapping
    /// around, until every address was offered once. Gateways are skipped.
    pub fn iter_from(&self, last: Option<IpAddr>) -> RangeIter<'_> {
        let resume = last.and_then(|ip| {
            let idx = self.ranges.iter().position(|r| r.contains(ip))?;
            Some(self.successor((idx, to_u128(ip).1)))
        });
        let first = match (resume, self.ranges.first()) {
            (Some(pos), _) => Some(pos),
            (None, Some(r)) => Some((0, r.start)),
            (None, None) => None,
        };
        RangeIter {
            set: self,
            first: first.unwrap_or((0, 0)),
            next: first,
        }
    }

    /// The position after `pos` (range index, address).
    fn successor(&self, (idx, v): (usize, u128)) -> (usize, u128) {
        if v >= self.ranges[idx].end {
            let next = (idx + 1) % self.ranges.len();
            (next, self.ranges[next].start)
        } else {
            (idx, v + 1)
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Iterator returned by [`RangeSet::iter_from`]: yields the range and the
/// address of each candidate.
pub struct RangeIter<'a> {
    set: &'a RangeSet,
    first: (usize, u128),
    next: Option<(usize, u128)>,
}

impl<'a> Iterator for RangeIter<'a> {
    type Item = (&'a Range, IpAddr);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let pos = self.next?;
            let succ = self.set.successor(pos);
            self.next = (succ != self.first).then_some(succ);
            let range = &self.set.ranges[pos.0];
            if pos.1 != range.gateway {
                return Some((range, from_u128(range.family(), pos.1)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> u128 {
        to_u128(s.parse().unwrap()).1
    }

    fn range4(net: &str, prefix: u8, start: &str, end: &str, gw: &str) -> Range {
        Range {
            subnet: Subnet {
                family: Family::V4,
                network: v4(net),
                prefix,
            },
            start: v4(start),
            end: v4(end),
            gateway: v4(gw),
        }
    }

    fn ips(it: RangeIter<'_>) -> Vec<String> {
        it.map(|(_, ip)| ip.to_string()).collect()
    }

    #[test]
    fn host_mask() {
        assert_eq!(Family::V4.host_mask(24), 0xff);
        assert_eq!(Family::V4.host_mask(32), 0);
        assert_eq!(Family::V4.host_mask(0), 0xffff_ffff);
        assert_eq!(Family::V6.host_mask(0), u128::MAX);
        assert_eq!(Family::V6.host_mask(64), u128::from(u64::MAX));
    }

    #[test]
    fn iterates_from_start_skipping_gateway() {
        let set = RangeSet {
            ranges: vec![range4("10.0.0.0", 29, "10.0.0.1", "10.0.0.6", "10.0.0.1")],
        };
        assert_eq!(
            ips(set.iter_from(None)),
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
    }

    #[test]
    fn resumes_after_last_and_wraps_across_ranges() {
        let set = RangeSet {
            ranges: vec![
                range4("10.0.0.0", 29, "10.0.0.2", "10.0.0.3", "10.0.0.1"),
                range4("10.0.1.0", 29, "10.0.1.1", "10.0.1.3", "10.0.1.2"),
            ],
        };
        let last = Some("10.0.0.3".parse().unwrap());
        assert_eq!(
            ips(set.iter_from(last)),
            ["10.0.1.1", "10.0.1.3", "10.0.0.2", "10.0.0.3"]
        );
        let last = Some("10.0.1.3".parse().unwrap());
        assert_eq!(
            ips(set.iter_from(last)),
            ["10.0.0.2", "10.0.0.3", "10.0.1.1", "10.0.1.3"]
        );
        // An address outside the set restarts at the first range.
        let last = Some("192.168.0.1".parse().unwrap());
        assert_eq!(ips(set.iter_from(last))[0], "10.0.0.2");
        // The gateway itself as last reserved still resumes after it.
        let last = Some("10.0.1.2".parse().unwrap());
        assert_eq!(ips(set.iter_from(last))[0], "10.0.1.3");
    }

    #[test]
    fn single_address_range() {
        let set = RangeSet {
            ranges: vec![range4("10.0.0.0", 24, "10.0.0.9", "10.0.0.9", "10.0.0.1")],
        };
        assert_eq!(ips(set.iter_from(None)), ["10.0.0.9"]);
        assert_eq!(
            ips(set.iter_from(Some("10.0.0.9".parse().unwrap()))),
            ["10.0.0.9"]
        );
    }

    #[test]
    fn only_gateway_yields_nothing() {
        let set = RangeSet {
            ranges: vec![range4("10.0.0.0", 24, "10.0.0.1", "10.0.0.1", "10.0.0.1")],
        };
        assert!(ips(set.iter_from(None)).is_empty());
    }

    #[test]
    fn ipv6_top_of_space_does_not_overflow() {
        let set = RangeSet {
            ranges: vec![Range {
                subnet: Subnet {
                    family: Family::V6,
                    network: u128::MAX - 3,
                    prefix: 126,
                },
                start: u128::MAX - 2,
                end: u128::MAX,
                gateway: u128::MAX - 2,
            }],
        };
        assert_eq!(
            ips(set.iter_from(Some(IpAddr::V6(Ipv6Addr::from(u128::MAX))))),
            [
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            ]
        );
    }

    #[test]
    fn contains_and_overlap() {
        let a = range4("10.0.0.0", 24, "10.0.0.10", "10.0.0.20", "10.0.0.1");
        let b = range4("10.0.0.0", 24, "10.0.0.20", "10.0.0.30", "10.0.0.1");
        let c = range4("10.0.0.0", 24, "10.0.0.21", "10.0.0.30", "10.0.0.1");
        assert!(a.contains("10.0.0.10".parse().unwrap()));
        assert!(!a.contains("10.0.0.9".parse().unwrap()));
        assert!(!a.contains("::a00:a".parse().unwrap()));
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert_eq!(a.to_string(), "10.0.0.10-10.0.0.20");
        assert!(a.subnet.contains("10.0.0.255".parse().unwrap()));
        assert!(!a.subnet.contains("10.0.1.0".parse().unwrap()));
        assert_eq!(a.subnet.to_string(), "10.0.0.0/24");
    }
}
