//! Parsing and validation of the host-local configuration.
//!
//! The plugin receives the whole network configuration; its keys live under
//! `ipam`, as for the reference plugin:
//!
//! - `ipam.ranges`: list of range sets, each a list of
//!   `{subnet, rangeStart?, rangeEnd?, gateway?}`. One IP per range set.
//! - `ipam.subnet` / `rangeStart` / `rangeEnd` / `gateway` (legacy single
//!   range): prepended to `ranges` as its own range set when `subnet` is set
//!   (without `subnet` the other three are ignored, as in the reference).
//! - `runtimeConfig.ipRanges`: same shape as `ranges`, prepended before both.
//! - `ipam.routes`: `[{dst, gw?, mtu?, advmss?, priority?, table?, scope?}]`,
//!   returned as given.
//! - Requested addresses, in this order: `CNI_ARGS` `IP` (comma-separated
//!   list allowed), `args.cni.ips`, `runtimeConfig.ips`; each `ip[/prefix]`,
//!   the prefix is ignored.
//! - `ipam.dataDir`: read by the host (it scopes the store); ignored here.
//! - `ipam.resolvConf`: accepted but **ignored** — this component has no
//!   file system access, so no `dns` is returned; [`Config::resolv_conf`]
//!   lets the caller log a warning.
//!
//! Defaults and checks follow the reference plugin: gateway = network + 1,
//! rangeStart = network + 1, rangeEnd = broadcast − 1 (IPv4) or the last
//! address (IPv6); /31 and /32 (IPv6 /127, /128) are too small; a subnet
//! with host bits set is rejected (as the reference does since 2018);
//! rangeStart and rangeEnd must lie in the subnet, rangeStart ≤ rangeEnd; the
//! gateway must be of the subnet's family but, as in the reference, may lie
//! outside the subnet; ranges within a set and range sets must not overlap;
//! a range set has one family. Requested addresses must each fall into a
//! distinct range set and must not be a gateway.
//!
//! Every error is code 7 and names the offending key.

use std::net::IpAddr;

use serde_json::{Map, Value};
use wasm_cni_sdk::{arg, CniError, Error, IpAddress, IpNet, Route};

use crate::range::{from_u128, to_u128, Family, Range, RangeSet, Subnet};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Range sets in allocation order; the index is the store's range id.
    pub sets: Vec<ConfiguredSet>,
    pub routes: Vec<Route>,
    /// `ipam.resolvConf`, which this component ignores.
    pub resolv_conf: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ConfiguredSet {
    pub set: RangeSet,
    /// Where the set came from, e.g. `ipam.ranges[1]`.
    pub origin: String,
    /// The address requested for this set, if any.
    pub requested: Option<IpAddr>,
}

/// Parses and validates the configuration, `CNI_ARGS` and the CNI version.
pub fn parse(
    config: &str,
    args: &[(String, String)],
    cni_version: &str,
) -> Result<Config, CniError> {
    let root: Value = serde_json::from_str(config)
        .map_err(|e| Error::config(format!("invalid network configuration: {e}")))?;
    let root = as_object(&root, "network configuration")?;
    let ipam = match get(root, "ipam") {
        Some(v) => as_object(v, "ipam")?,
        None => return Err(Error::config("IPAM config missing 'ipam' key")),
    };
    let runtime = get(root, "runtimeConfig")
        .map(|v| as_object(v, "runtimeConfig"))
        .transpose()?;

    let requested = requested_ips(root, runtime, args)?;

    // Range sets: runtimeConfig.ipRanges, then the legacy range, then ranges.
    let mut sets = Vec::new();
    if let Some(v) = runtime.and_then(|rt| get(rt, "ipRanges")) {
        sets.extend(parse_range_sets(v, "runtimeConfig.ipRanges")?);
    }
    if get(ipam, "subnet").is_some() {
        let origin = "ipam".to_string();
        let range = parse_range(ipam, "ipam")?;
        sets.push(ConfiguredSet {
            set: RangeSet {
                ranges: vec![range],
            },
            origin,
            requested: None,
        });
    }
    if let Some(v) = get(ipam, "ranges") {
        sets.extend(parse_range_sets(v, "ipam.ranges")?);
    }
    if sets.is_empty() {
        return Err(Error::config(
            "ipam.ranges: no IP ranges specified (set ipam.ranges or ipam.subnet)",
        ));
    }

    check_sets(&sets, cni_version)?;
    assign_requested(&mut sets, &requested)?;

    let routes = match get(ipam, "routes") {
        Some(v) => as_array(v, "ipam.routes")?
            .iter()
            .enumerate()
            .map(|(i, r)| parse_route(r, &format!("ipam.routes[{i}]")))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };

    let resolv_conf = match get(ipam, "resolvConf") {
        Some(v) => Some(as_str(v, "ipam.resolvConf")?.to_string()).filter(|s| !s.is_empty()),
        None => None,
    };

    Ok(Config {
        sets,
        routes,
        resolv_conf,
    })
}

/// Cross-set checks: overlaps and the one-address-per-family limit of old
/// CNI versions.
fn check_sets(sets: &[ConfiguredSet], cni_version: &str) -> Result<(), CniError> {
    for (i, a) in sets.iter().enumerate() {
        for (j, b) in sets.iter().enumerate().skip(i + 1) {
            if a.set.overlaps(&b.set) {
                return Err(Error::config(format!(
                    "range set {i} ({}) overlaps with range set {j} ({})",
                    a.origin, b.origin
                )));
            }
        }
    }
    let count = |f| sets.iter().filter(|s| s.set.family() == Some(f)).count();
    if (count(Family::V4) > 1 || count(Family::V6) > 1) && version_below_0_3(cni_version) {
        return Err(Error::config(format!(
            "cniVersion: CNI version {cni_version} does not support more than 1 address per family"
        )));
    }
    Ok(())
}

fn version_below_0_3(v: &str) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) < (0, 3),
        _ => false,
    }
}

/// Gives each requested address to the range set containing it.
fn assign_requested(
    sets: &mut [ConfiguredSet],
    requested: &[(IpAddr, String)],
) -> Result<(), CniError> {
    for (ip, source) in requested {
        let Some(cs) = sets.iter_mut().find(|cs| cs.set.contains(*ip)) else {
            return Err(Error::config(format!(
                "{source}: requested IP {ip} is not in any configured range set"
            )));
        };
        match cs.requested {
            Some(prev) if prev == *ip => continue,
            Some(prev) => {
                return Err(Error::config(format!(
                    "{source}: requested IPs {prev} and {ip} are both in range set {} \
                     (only one IP per range set)",
                    cs.origin
                )))
            }
            None => {}
        }
        if cs.set.range_for(*ip).is_some_and(|r| r.gateway_ip() == *ip) {
            return Err(Error::config(format!(
                "{source}: requested IP {ip} is the subnet's gateway"
            )));
        }
        cs.requested = Some(*ip);
    }
    Ok(())
}

/// The requested addresses with the key each came from.
fn requested_ips(
    root: &Map<String, Value>,
    runtime: Option<&Map<String, Value>>,
    args: &[(String, String)],
) -> Result<Vec<(IpAddr, String)>, CniError> {
    let mut out = Vec::new();
    if let Some(list) = arg(args, "IP") {
        for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push((
                parse_requested(s, "CNI_ARGS IP")?,
                "CNI_ARGS IP".to_string(),
            ));
        }
    }
    let args_ips = match get(root, "args") {
        Some(a) => match get(as_object(a, "args")?, "cni") {
            Some(c) => get(as_object(c, "args.cni")?, "ips"),
            None => None,
        },
        None => None,
    };
    let lists = [
        (args_ips, "args.cni.ips"),
        (runtime.and_then(|rt| get(rt, "ips")), "runtimeConfig.ips"),
    ];
    for (value, key) in lists {
        let Some(value) = value else { continue };
        for (i, v) in as_array(value, key)?.iter().enumerate() {
            let what = format!("{key}[{i}]");
            let ip = parse_requested(as_str(v, &what)?, &what)?;
            out.push((ip, what));
        }
    }
    Ok(out)
}

/// `ip[/prefix]`; the prefix is checked and dropped.
fn parse_requested(s: &str, what: &str) -> Result<IpAddr, CniError> {
    match s.split_once('/') {
        Some(_) => Ok(parse_cidr(s, what)?.0.to_canonical()),
        None => parse_ip(s, what),
    }
}

fn parse_range_sets(v: &Value, key: &str) -> Result<Vec<ConfiguredSet>, CniError> {
    as_array(v, key)?
        .iter()
        .enumerate()
        .map(|(i, set)| {
            let origin = format!("{key}[{i}]");
            let set = parse_range_set(set, &origin)?;
            Ok(ConfiguredSet {
                set,
                origin,
                requested: None,
            })
        })
        .collect()
}

fn parse_range_set(v: &Value, path: &str) -> Result<RangeSet, CniError> {
    let items = as_array(v, path)?;
    if items.is_empty() {
        return Err(Error::config(format!("{path}: empty range set")));
    }
    let mut ranges: Vec<Range> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        let range = parse_range(as_object(item, &rpath)?, &rpath)?;
        if ranges.first().is_some_and(|r| r.family() != range.family()) {
            return Err(Error::config(format!("{path}: mixed address families")));
        }
        if let Some(other) = ranges.iter().find(|r| r.overlaps(&range)) {
            return Err(Error::config(format!(
                "{path}: subnets {other} and {range} overlap"
            )));
        }
        ranges.push(range);
    }
    Ok(RangeSet { ranges })
}

/// One `{subnet, rangeStart, rangeEnd, gateway}` object at `path`.
fn parse_range(obj: &Map<String, Value>, path: &str) -> Result<Range, CniError> {
    let key = format!("{path}.subnet");
    let text = match get(obj, "subnet") {
        Some(v) => as_str(v, &key)?,
        None => return Err(Error::config(format!("{key}: missing"))),
    };
    let (ip, prefix) = parse_cidr(text, &key)?;
    let (family, value) = to_u128(ip);
    if prefix > family.bits() - 2 {
        return Err(Error::config(format!(
            "{key}: network {text} too small to allocate from"
        )));
    }
    let network = value & !family.host_mask(prefix);
    let subnet = Subnet {
        family,
        network,
        prefix,
    };
    if network != value {
        return Err(Error::config(format!(
            "{key}: network {text} has host bits set; for a subnet mask of length \
             {prefix} the network address is {}",
            from_u128(family, network)
        )));
    }

    let addr_in_subnet = |name: &str, default: u128| -> Result<u128, CniError> {
        let key = format!("{path}.{name}");
        let Some(v) = get(obj, name) else {
            return Ok(default);
        };
        let ip = parse_ip(as_str(v, &key)?, &key)?;
        if !subnet.contains(ip) {
            return Err(Error::config(format!(
                "{key}: {ip} not in network {subnet}"
            )));
        }
        Ok(to_u128(ip).1)
    };
    let last = match family {
        Family::V4 => subnet.last() - 1,
        Family::V6 => subnet.last(),
    };
    let start = addr_in_subnet("rangeStart", network + 1)?;
    let end = addr_in_subnet("rangeEnd", last)?;
    if start > end {
        return Err(Error::config(format!(
            "{path}.rangeEnd: {} is before rangeStart {}",
            from_u128(family, end),
            from_u128(family, start)
        )));
    }

    let gateway = match get(obj, "gateway") {
        None => network + 1,
        Some(v) => {
            let key = format!("{path}.gateway");
            let ip = parse_ip(as_str(v, &key)?, &key)?;
            let (gw_family, gw) = to_u128(ip);
            if gw_family != family {
                return Err(Error::config(format!(
                    "{key}: {ip} is not of the address family of subnet {subnet}"
                )));
            }
            gw
        }
    };

    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

fn parse_route(v: &Value, path: &str) -> Result<Route, CniError> {
    let obj = as_object(v, path)?;
    let key = format!("{path}.dst");
    let dst = match get(obj, "dst") {
        Some(v) => {
            // Returned verbatim: host bits are kept.
            let (ip, prefix) = parse_cidr(as_str(v, &key)?, &key)?;
            IpNet {
                addr: IpAddress::from(ip),
                prefix_len: prefix,
            }
        }
        None => return Err(Error::config(format!("{key}: missing"))),
    };
    let gw = match get(obj, "gw") {
        Some(v) => {
            let key = format!("{path}.gw");
            Some(IpAddress::from(parse_ip(as_str(v, &key)?, &key)?))
        }
        None => None,
    };
    let num = |name: &str| -> Result<Option<u32>, CniError> {
        match get(obj, name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::config(format!("{path}.{name}: expected a non-negative integer"))
                }),
        }
    };
    Ok(Route {
        dst,
        gw,
        mtu: num("mtu")?,
        advmss: num("advmss")?,
        priority: num("priority")?,
        table: num("table")?,
        scope: num("scope")?,
    })
}

/// An address; IPv4-mapped IPv6 addresses become IPv4 as in Go's `To4`.
fn parse_ip(s: &str, what: &str) -> Result<IpAddr, CniError> {
    s.parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| Error::config(format!("{what}: invalid IP address {s:?}")))
}

/// `addr/prefix`, the prefix being required.
fn parse_cidr(s: &str, what: &str) -> Result<(IpAddr, u8), CniError> {
    let invalid = || Error::config(format!("{what}: invalid CIDR {s:?}"));
    let (addr, len) = s.split_once('/').ok_or_else(invalid)?;
    let ip: IpAddr = addr.parse().map_err(|_| invalid())?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let prefix: u8 = len.parse().map_err(|_| invalid())?;
    if prefix > Family::of(ip).bits() {
        return Err(invalid());
    }
    Ok((ip, prefix))
}

/// A key's value; JSON `null` counts as absent.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, CniError> {
    v.as_object()
        .ok_or_else(|| Error::config(format!("{what}: expected an object")))
}

fn as_array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, CniError> {
    v.as_array()
        .ok_or_else(|| Error::config(format!("{what}: expected a list")))
}

fn as_str<'a>(v: &'a Value, what: &str) -> Result<&'a str, CniError> {
    v.as_str()
        .ok_or_else(|| Error::config(format!("{what}: expected a string")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_cni_sdk::code;

    fn parse_ok(ipam: &str) -> Config {
        parse_full(
            &format!(r#"{{"cniVersion":"1.0.0","name":"n","ipam":{ipam}}}"#),
            &[],
        )
        .unwrap_or_else(|e| panic!("{}", e.msg))
    }

    fn parse_full(conf: &str, args: &[(&str, &str)]) -> Result<Config, CniError> {
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(conf, &args, "1.0.0")
    }

    fn parse_err(ipam: &str) -> String {
        let e = parse_full(&format!(r#"{{"name":"n","ipam":{ipam}}}"#), &[])
            .expect_err("config should be rejected");
        assert_eq!(e.code, code::INVALID_CONFIG, "{}", e.msg);
        e.msg
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_v4() {
        let c = parse_ok(r#"{"ranges":[[{"subnet":"10.1.2.0/24"}]]}"#);
        let r = &c.sets[0].set.ranges[0];
        assert_eq!(r.to_string(), "10.1.2.1-10.1.2.254");
        assert_eq!(r.gateway_ip(), ip("10.1.2.1"));
        assert_eq!(c.sets[0].origin, "ipam.ranges[0]");
        assert!(c.routes.is_empty());
    }

    #[test]
    fn defaults_v6() {
        let c = parse_ok(r#"{"ranges":[[{"subnet":"2001:db8::/64"}]]}"#);
        let r = &c.sets[0].set.ranges[0];
        assert_eq!(r.to_string(), "2001:db8::1-2001:db8::ffff:ffff:ffff:ffff");
        assert_eq!(r.gateway_ip(), ip("2001:db8::1"));
    }

    #[test]
    fn explicit_range_and_gateway() {
        let c = parse_ok(
            r#"{"ranges":[[{"subnet":"10.0.0.0/16","rangeStart":"10.0.5.10",
                 "rangeEnd":"10.0.5.20","gateway":"10.0.0.254"}]]}"#,
        );
        let r = &c.sets[0].set.ranges[0];
        assert_eq!(r.to_string(), "10.0.5.10-10.0.5.20");
        assert_eq!(r.gateway_ip(), ip("10.0.0.254"));
    }

    #[test]
    fn legacy_range_is_prepended_and_runtime_ranges_first() {
        let conf = r#"{"name":"n","cniVersion":"1.0.0",
            "runtimeConfig":{"ipRanges":[[{"subnet":"192.168.0.0/24"}]]},
            "ipam":{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.100",
                    "ranges":[[{"subnet":"2001:db8::/64"}]]}}"#;
        let c = parse_full(conf, &[]).unwrap();
        let origins: Vec<_> = c.sets.iter().map(|s| s.origin.as_str()).collect();
        assert_eq!(
            origins,
            ["runtimeConfig.ipRanges[0]", "ipam", "ipam.ranges[0]"]
        );
        assert_eq!(c.sets[1].set.ranges[0].to_string(), "10.0.0.100-10.0.0.254");
    }

    #[test]
    fn routes_verbatim() {
        let c = parse_ok(
            r#"{"subnet":"10.0.0.0/24","routes":[{"dst":"0.0.0.0/0"},
                {"dst":"192.168.1.5/24","gw":"10.0.0.9","mtu":1400}]}"#,
        );
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].dst.to_string(), "0.0.0.0/0");
        assert!(c.routes[0].gw.is_none());
        assert_eq!(c.routes[1].dst.to_string(), "192.168.1.5/24");
        assert_eq!(
            c.routes[1].gw.map(|g| g.to_string()),
            Some("10.0.0.9".into())
        );
        assert_eq!(c.routes[1].mtu, Some(1400));
    }

    #[test]
    fn resolv_conf_and_data_dir_accepted() {
        let c = parse_ok(r#"{"subnet":"10.0.0.0/24","dataDir":"/run/x","resolvConf":"/etc/r"}"#);
        assert_eq!(c.resolv_conf.as_deref(), Some("/etc/r"));
    }

    #[test]
    fn missing_ipam_or_ranges() {
        let e = parse_full(r#"{"name":"n"}"#, &[]).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("'ipam'"), "{}", e.msg);
        assert!(parse_err(r#"{"type":"host-local"}"#).contains("no IP ranges"));
        assert!(parse_err(r#"{"ranges":[]}"#).contains("no IP ranges"));
        assert_eq!(
            parse_err(r#"{"ranges":[[]]}"#),
            "ipam.ranges[0]: empty range set"
        );
        assert_eq!(
            parse_err(r#"{"ranges":{}}"#),
            "ipam.ranges: expected a list"
        );
        assert_eq!(parse_err(r#"[]"#), "ipam: expected an object");
    }

    #[test]
    fn invalid_values_name_the_key() {
        assert_eq!(
            parse_err(r#"{"ranges":[[{"subnet":"10.0.0.0"}]]}"#),
            r#"ipam.ranges[0][0].subnet: invalid CIDR "10.0.0.0""#
        );
        assert_eq!(
            parse_err(r#"{"ranges":[[{"subnet":"10.0.0.0/33"}]]}"#),
            r#"ipam.ranges[0][0].subnet: invalid CIDR "10.0.0.0/33""#
        );
        assert_eq!(
            parse_err(r#"{"ranges":[[{"rangeStart":"10.0.0.1"}]]}"#),
            "ipam.ranges[0][0].subnet: missing"
        );
        assert_eq!(
            parse_err(r#"{"subnet":"10.0.0.0/24","gateway":"10.0.0.x"}"#),
            r#"ipam.gateway: invalid IP address "10.0.0.x""#
        );
        assert_eq!(
            parse_err(r#"{"subnet":"10.0.0.0/24","gateway":"2001:db8::1"}"#),
            "ipam.gateway: 2001:db8::1 is not of the address family of subnet 10.0.0.0/24"
        );
        assert_eq!(
            parse_err(r#"{"subnet":42}"#),
            "ipam.subnet: expected a string"
        );
        assert_eq!(
            parse_err(r#"{"subnet":"10.0.0.0/24","routes":[{"gw":"10.0.0.1"}]}"#),
            "ipam.routes[0].dst: missing"
        );
        assert_eq!(
            parse_err(r#"{"subnet":"10.0.0.0/24","routes":[{"dst":"0.0.0.0/0","mtu":-1}]}"#),
            "ipam.routes[0].mtu: expected a non-negative integer"
        );
    }

    #[test]
    fn too_small_and_host_bits() {
        for s in [
            "10.0.0.0/31",
            "10.0.0.1/32",
            "2001:db8::/127",
            "2001:db8::/128",
        ] {
            let msg = parse_err(&format!(r#"{{"ranges":[[{{"subnet":"{s}"}}]]}}"#));
            assert!(msg.contains("too small"), "{msg}");
        }
        assert!(parse_ok(r#"{"subnet":"10.0.0.0/30"}"#).sets.len() == 1);
        let msg = parse_err(r#"{"subnet":"10.0.0.5/24"}"#);
        assert!(
            msg.starts_with("ipam.subnet: ") && msg.contains("10.0.0.0"),
            "{msg}"
        );
    }

    #[test]
    fn bounds_inside_subnet() {
        assert_eq!(
            parse_err(r#"{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}"#),
            "ipam.rangeStart: 10.0.1.1 not in network 10.0.0.0/24"
        );
        assert_eq!(
            parse_err(r#"{"subnet":"10.0.0.0/24","rangeEnd":"10.0.1.1"}"#),
            "ipam.rangeEnd: 10.0.1.1 not in network 10.0.0.0/24"
        );
        assert_eq!(
            parse_err(r#"{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.8"}"#),
            "ipam.rangeEnd: 10.0.0.8 is before rangeStart 10.0.0.9"
        );
        // As in the reference, the gateway may lie outside the subnet.
        parse_ok(r#"{"subnet":"10.0.0.0/24","gateway":"10.9.9.9"}"#);
    }

    #[test]
    fn overlaps_and_families() {
        assert_eq!(
            parse_err(r#"{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/16"}]]}"#),
            "ipam.ranges[0]: subnets 10.0.0.1-10.0.0.254 and 10.0.0.1-10.0.255.254 overlap"
        );
        assert_eq!(
            parse_err(r#"{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"2001:db8::/64"}]]}"#),
            "ipam.ranges[0]: mixed address families"
        );
        assert_eq!(
            parse_err(
                r#"{"subnet":"10.0.0.0/24","ranges":[[{"subnet":"10.0.1.0/24"}],[{"subnet":"10.0.0.0/25"}]]}"#
            ),
            "range set 0 (ipam) overlaps with range set 2 (ipam.ranges[1])"
        );
        // Disjoint pools of one subnet are fine.
        let c = parse_ok(
            r#"{"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.100"}],
                          [{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.101"}]]}"#,
        );
        assert_eq!(c.sets.len(), 2);
    }

    #[test]
    fn multiple_per_family_needs_0_3() {
        let ipam = r#"{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.1.0.0/24"}]]}}"#;
        let e = parse(ipam, &[], "0.2.0").unwrap_err();
        assert!(e.msg.contains("0.2.0"), "{}", e.msg);
        assert!(parse(ipam, &[], "0.3.1").is_ok());
        assert!(parse(ipam, &[], "1.1.0").is_ok());
    }

    #[test]
    fn requested_ips_from_all_sources() {
        let conf = r#"{"name":"n",
            "args":{"cni":{"ips":["2001:db8::10/64"]}},
            "runtimeConfig":{"ips":["10.2.0.5"]},
            "ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"2001:db8::/64"}],
                              [{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]}}"#;
        let c = parse_full(conf, &[("IP", "10.0.0.7, 10.1.0.9")]).unwrap();
        let req: Vec<_> = c.sets.iter().map(|s| s.requested).collect();
        assert_eq!(
            req,
            [
                Some(ip("10.0.0.7")),
                Some(ip("2001:db8::10")),
                Some(ip("10.1.0.9")),
                Some(ip("10.2.0.5"))
            ]
        );
    }

    #[test]
    fn requested_ip_errors() {
        let conf = r#"{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10"}]]}}"#;
        let err = |ips: &str| parse_full(conf, &[("IP", ips)]).unwrap_err();
        assert_eq!(
            err("10.0.0.5").msg,
            "CNI_ARGS IP: requested IP 10.0.0.5 is not in any configured range set"
        );
        assert_eq!(err("x").msg, r#"CNI_ARGS IP: invalid IP address "x""#);
        assert!(err("10.0.0.11,10.0.0.12")
            .msg
            .contains("only one IP per range set"));
        // The same address twice is one request.
        assert!(parse_full(conf, &[("IP", "10.0.0.11,10.0.0.11")]).is_ok());

        let conf = r#"{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]},
                       "runtimeConfig":{"ips":["10.0.0.1/24"]}}"#;
        let e = parse_full(conf, &[]).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert_eq!(
            e.msg,
            "runtimeConfig.ips[0]: requested IP 10.0.0.1 is the subnet's gateway"
        );
        let conf =
            r#"{"name":"n","ipam":{"subnet":"10.0.0.0/24"},"args":{"cni":{"ips":"10.0.0.2"}}}"#;
        assert_eq!(
            parse_full(conf, &[]).unwrap_err().msg,
            "args.cni.ips: expected a list"
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_canonical() {
        let conf = r#"{"name":"n","ipam":{"subnet":"10.0.0.0/24","rangeStart":"::ffff:10.0.0.5"}}"#;
        let c = parse_full(conf, &[("IP", "::ffff:10.0.0.9")]).unwrap();
        assert_eq!(c.sets[0].set.ranges[0].to_string(), "10.0.0.5-10.0.0.254");
        assert_eq!(c.sets[0].requested, Some(ip("10.0.0.9")));
    }
}
