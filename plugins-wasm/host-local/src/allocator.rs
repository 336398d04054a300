//! Allocation, release, check and garbage collection over a reservation
//! store.
//!
//! The store is behind the [`Store`] trait so this logic runs natively in
//! tests; `lib.rs` implements it over the host's WIT `store` interface. The
//! host holds the store's lock for the whole invocation, so nothing here
//! locks.
//!
//! Error codes: allocation failures (address taken, range set exhausted,
//! duplicate allocation) and a failed CHECK are code 100; store errors are
//! passed on with their own code.

use std::net::IpAddr;

use wasm_cni_sdk::{CniError, Error};

use crate::config::Config;

/// One reservation in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    /// Empty for reservations written by old versions (container id only).
    pub ifname: String,
}

/// The reservation store of one network.
pub trait Store {
    /// Reserves `ip` for the attachment; false when it is already taken.
    fn reserve(&mut self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<bool, CniError>;
    fn release(&mut self, ip: IpAddr) -> Result<(), CniError>;
    /// Releases every address of the attachment; returns them.
    fn release_owner(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError>;
    fn owned(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError>;
    fn list(&mut self) -> Result<Vec<Reservation>, CniError>;
    fn last_reserved(&mut self, range_id: u32) -> Result<Option<IpAddr>, CniError>;
    fn set_last_reserved(&mut self, range_id: u32, ip: IpAddr) -> Result<(), CniError>;
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    /// Prefix length of the range's subnet.
    pub prefix: u8,
    pub gateway: IpAddr,
}

/// ADD: one address from every range set, in order. On failure every
/// address reserved by this call is released again.
pub fn allocate(
    store: &mut impl Store,
    config: &Config,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>, CniError> {
    let mut done: Vec<Allocation> = Vec::with_capacity(config.sets.len());
    let result = allocate_all(store, config, container_id, ifname, &mut done);
    if result.is_err() {
        for a in &done {
            // Best effort: the original error is what matters.
            let _ = store.release(a.ip);
        }
    }
    result.map(|()| done)
}

fn allocate_all(
    store: &mut impl Store,
    config: &Config,
    container_id: &str,
    ifname: &str,
    done: &mut Vec<Allocation>,
) -> Result<(), CniError> {
    let held = store.owned(container_id, ifname)?;
    for (idx, cs) in config.sets.iter().enumerate() {
        let id = u32::try_from(idx).map_err(|_| Error::config("too many range sets"))?;
        let set = &cs.set;
        let context =
            |e: CniError| Error::context(e, format_args!("failed to allocate for range {idx}"));

        let found = match cs.requested {
            Some(ip) => {
                let range = set.range_for(ip).ok_or_else(|| {
                    context(Error::config(format!(
                        "requested IP {ip} is not in range set {set}"
                    )))
                })?;
                if !store.reserve(ip, container_id, ifname).map_err(context)? {
                    return Err(context(Error::plugin(format!(
                        "requested IP address {ip} is not available in range set {set}"
                    ))));
                }
                Some((range, ip))
            }
            None => {
                // Duplicate allocation for one attachment is not allowed.
                if let Some(ip) = held.iter().find(|ip| set.contains(**ip)) {
                    return Err(context(Error::plugin(format!(
                        "{ip} has been allocated to {container_id}, duplicate allocation is not allowed"
                    ))));
                }
                let last = store.last_reserved(id).map_err(context)?;
                let mut found = None;
                for (range, ip) in set.iter_from(last) {
                    if store.reserve(ip, container_id, ifname).map_err(context)? {
                        found = Some((range, ip));
                        break;
                    }
                }
                found
            }
        };
        let Some((range, ip)) = found else {
            return Err(context(Error::plugin(format!(
                "no IP addresses available in range set: {set}"
            ))));
        };
        done.push(Allocation {
            ip,
            prefix: range.subnet.prefix,
            gateway: range.gateway_ip(),
        });
        store.set_last_reserved(id, ip).map_err(context)?;
    }
    Ok(())
}

/// DEL: releases everything the attachment holds; succeeds when it holds
/// nothing.
pub fn release(store: &mut impl Store, container_id: &str, ifname: &str) -> Result<(), CniError> {
    store.release_owner(container_id, ifname).map(drop)
}

/// CHECK: the attachment must hold at least one address.
pub fn check(store: &mut impl Store, container_id: &str, ifname: &str) -> Result<(), CniError> {
    if store.owned(container_id, ifname)?.is_empty() {
        return Err(Error::plugin(format!(
            "host-local: Failed to find address added by container {container_id}"
        )));
    }
    Ok(())
}

/// GC: releases every reservation whose attachment is not in `valid`
/// (`(container id, ifname)` pairs). A legacy reservation without an ifname
/// is kept when its container id appears in `valid`. Returns the released
/// addresses.
pub fn gc(store: &mut impl Store, valid: &[(String, String)]) -> Result<Vec<IpAddr>, CniError> {
    let is_valid = |r: &Reservation| {
        valid.iter().any(|(cid, ifname)| {
            *cid == r.container_id && (r.ifname.is_empty() || *ifname == r.ifname)
        })
    };
    let mut released = Vec::new();
    for r in store.list()? {
        if !is_valid(&r) {
            store.release(r.ip)?;
            released.push(r.ip);
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::collections::BTreeMap;
    use wasm_cni_sdk::code;

    /// An in-memory store.
    #[derive(Default)]
    struct MemStore {
        reserved: BTreeMap<IpAddr, (String, String)>,
        last: BTreeMap<u32, IpAddr>,
    }

    impl Store for MemStore {
        fn reserve(&mut self, ip: IpAddr, cid: &str, ifname: &str) -> Result<bool, CniError> {
            if self.reserved.contains_key(&ip) {
                return Ok(false);
            }
            self.reserved.insert(ip, (cid.into(), ifname.into()));
            Ok(true)
        }
        fn release(&mut self, ip: IpAddr) -> Result<(), CniError> {
            self.reserved.remove(&ip);
            Ok(())
        }
        fn release_owner(&mut self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
            let ips = self.owned(cid, ifname)?;
            for ip in &ips {
                self.reserved.remove(ip);
            }
            Ok(ips)
        }
        fn owned(&mut self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
            Ok(self
                .reserved
                .iter()
                .filter(|(_, (c, i))| c == cid && (i == ifname || i.is_empty()))
                .map(|(ip, _)| *ip)
                .collect())
        }
        fn list(&mut self) -> Result<Vec<Reservation>, CniError> {
            Ok(self
                .reserved
                .iter()
                .map(|(ip, (c, i))| Reservation {
                    ip: *ip,
                    container_id: c.clone(),
                    ifname: i.clone(),
                })
                .collect())
        }
        fn last_reserved(&mut self, id: u32) -> Result<Option<IpAddr>, CniError> {
            Ok(self.last.get(&id).copied())
        }
        fn set_last_reserved(&mut self, id: u32, ip: IpAddr) -> Result<(), CniError> {
            self.last.insert(id, ip);
            Ok(())
        }
    }

    fn conf(ipam: &str, args: &[(&str, &str)]) -> Config {
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config::parse(&format!(r#"{{"name":"n","ipam":{ipam}}}"#), &args, "1.0.0")
            .unwrap_or_else(|e| panic!("{}", e.msg))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn add(store: &mut MemStore, c: &Config, cid: &str) -> Result<Vec<String>, CniError> {
        allocate(store, c, cid, "eth0").map(|v| {
            v.iter()
                .map(|a| format!("{}/{} gw {}", a.ip, a.prefix, a.gateway))
                .collect()
        })
    }

    #[test]
    fn round_robin_and_exhaustion() {
        let c = conf(r#"{"subnet":"10.0.0.0/29"}"#, &[]);
        let mut s = MemStore::default();
        for (i, n) in [2, 3, 4, 5, 6].iter().enumerate() {
            assert_eq!(
                add(&mut s, &c, &format!("c{i}")).unwrap(),
                [format!("10.0.0.{n}/29 gw 10.0.0.1")]
            );
        }
        assert_eq!(s.last.get(&0), Some(&ip("10.0.0.6")));
        let e = add(&mut s, &c, "c9").unwrap_err();
        assert_eq!(e.code, code::PLUGIN);
        assert_eq!(
            e.msg,
            "failed to allocate for range 0: no IP addresses available in range set: 10.0.0.1-10.0.0.6"
        );
        // Freed addresses are reused only after the rest of the range.
        release(&mut s, "c1", "eth0").unwrap();
        release(&mut s, "c3", "eth0").unwrap();
        assert_eq!(add(&mut s, &c, "c10").unwrap(), ["10.0.0.3/29 gw 10.0.0.1"]);
        assert_eq!(add(&mut s, &c, "c11").unwrap(), ["10.0.0.5/29 gw 10.0.0.1"]);
    }

    #[test]
    fn resumes_from_last_reserved() {
        let c = conf(r#"{"subnet":"10.0.0.0/24"}"#, &[]);
        let mut s = MemStore::default();
        s.last.insert(0, ip("10.0.0.100"));
        assert_eq!(add(&mut s, &c, "a").unwrap(), ["10.0.0.101/24 gw 10.0.0.1"]);
    }

    #[test]
    fn dual_stack_one_per_set() {
        let c = conf(
            r#"{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"2001:db8::/64","gateway":"2001:db8::fe"}]]}"#,
            &[],
        );
        let mut s = MemStore::default();
        assert_eq!(
            add(&mut s, &c, "a").unwrap(),
            ["10.0.0.2/24 gw 10.0.0.1", "2001:db8::1/64 gw 2001:db8::fe"]
        );
        assert_eq!(s.last.get(&1), Some(&ip("2001:db8::1")));
    }

    #[test]
    fn duplicate_allocation_rejected() {
        let c = conf(r#"{"subnet":"10.0.0.0/24"}"#, &[]);
        let mut s = MemStore::default();
        add(&mut s, &c, "a").unwrap();
        let e = add(&mut s, &c, "a").unwrap_err();
        assert_eq!(e.code, code::PLUGIN);
        assert!(
            e.msg.contains("10.0.0.2 has been allocated to a"),
            "{}",
            e.msg
        );
        // Another interface of the same container is a different attachment.
        assert!(allocate(&mut s, &c, "a", "eth1").is_ok());
    }

    #[test]
    fn requested_ips() {
        let c = conf(
            r#"{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.1.0.0/24"}]]}"#,
            &[("IP", "10.1.0.50")],
        );
        let mut s = MemStore::default();
        assert_eq!(
            add(&mut s, &c, "a").unwrap(),
            ["10.0.0.2/24 gw 10.0.0.1", "10.1.0.50/24 gw 10.1.0.1"]
        );
        assert_eq!(s.last.get(&1), Some(&ip("10.1.0.50")));
        // Taken: error names the address, and the first set's address is rolled back.
        let e = add(&mut s, &c, "b").unwrap_err();
        assert_eq!(e.code, code::PLUGIN);
        assert!(
            e.msg
                .contains("requested IP address 10.1.0.50 is not available"),
            "{}",
            e.msg
        );
        assert_eq!(s.reserved.len(), 2);
    }

    #[test]
    fn failure_rolls_back_only_this_call() {
        let c = conf(
            r#"{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.1.0.0/30"}]]}"#,
            &[],
        );
        let mut s = MemStore::default();
        s.reserve(ip("10.1.0.2"), "other", "eth0").unwrap();
        s.reserve(ip("10.9.9.9"), "a", "eth0").unwrap();
        let e = add(&mut s, &c, "a").unwrap_err();
        assert!(
            e.msg
                .starts_with("failed to allocate for range 1: no IP addresses"),
            "{}",
            e.msg
        );
        let left: Vec<_> = s.reserved.keys().map(|k| k.to_string()).collect();
        assert_eq!(left, ["10.1.0.2", "10.9.9.9"]);
    }

    #[test]
    fn del_check_idempotent() {
        let c = conf(r#"{"subnet":"10.0.0.0/24"}"#, &[]);
        let mut s = MemStore::default();
        let e = check(&mut s, "a", "eth0").unwrap_err();
        assert_eq!(
            e.msg,
            "host-local: Failed to find address added by container a"
        );
        add(&mut s, &c, "a").unwrap();
        check(&mut s, "a", "eth0").unwrap();
        release(&mut s, "a", "eth0").unwrap();
        release(&mut s, "a", "eth0").unwrap();
        assert!(s.reserved.is_empty());
        assert!(check(&mut s, "a", "eth0").is_err());
    }

    #[test]
    fn gc_keeps_valid_attachments() {
        let mut s = MemStore::default();
        s.reserve(ip("10.0.0.2"), "a", "eth0").unwrap();
        s.reserve(ip("10.0.0.3"), "a", "eth1").unwrap();
        s.reserve(ip("10.0.0.4"), "b", "eth0").unwrap();
        s.reserve(ip("10.0.0.5"), "legacy", "").unwrap();
        s.reserve(ip("10.0.0.6"), "gone", "").unwrap();
        let valid = vec![
            ("a".to_string(), "eth0".to_string()),
            ("legacy".to_string(), "eth0".to_string()),
        ];
        let mut released = gc(&mut s, &valid).unwrap();
        released.sort();
        assert_eq!(released, [ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.6")]);
        assert_eq!(gc(&mut s, &[]).unwrap().len(), 2);
        assert!(s.reserved.is_empty());
    }
}
