//! Results in every supported layout. Plugins produce one typed result; this
//! module renders it for the configuration's `cniVersion` and reads a
//! `prevResult` (or a native IPAM plugin's output) from any of them.
//!
//! Layout differences: 0.3.x and 0.4.0 carry `"version": "4"|"6"` in each IP;
//! 1.0.0 dropped it; 1.1.0 added interface `mtu`, `socketPath`, `pciID` and
//! route `mtu`, `advmss`, `priority`, `table`, `scope`.

use serde_json::{json, Map, Value};

use super::ip::{parse_ip, parse_ip_net};
use super::version;
use crate::bindings::{CniResult, Dns, Interface, IpConfig, Route};
use crate::error::{Error, Result};

/// Renders `r` in the layout of `cni_version`.
pub fn to_json(r: &CniResult, cni_version: &str) -> Value {
    let v11 = version::at_least(cni_version, "1.1.0");
    let has_ip_version = !version::at_least(cni_version, "1.0.0");
    let mut out = Map::new();
    out.insert("cniVersion".into(), json!(cni_version));
    if !r.interfaces.is_empty() {
        let list = r
            .interfaces
            .iter()
            .map(|i| interface_json(i, v11))
            .collect();
        out.insert("interfaces".into(), Value::Array(list));
    }
    if !r.ips.is_empty() {
        let list = r.ips.iter().map(|ip| ip_json(ip, has_ip_version)).collect();
        out.insert("ips".into(), Value::Array(list));
    }
    if !r.routes.is_empty() {
        let list = r.routes.iter().map(|rt| route_json(rt, v11)).collect();
        out.insert("routes".into(), Value::Array(list));
    }
    out.insert(
        "dns".into(),
        r.dns.as_ref().map(dns_json).unwrap_or_else(|| json!({})),
    );
    Value::Object(out)
}

fn put<T: Into<Value>>(m: &mut Map<String, Value>, k: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(k.into(), v.into());
    }
}

fn interface_json(i: &Interface, v11: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(i.name));
    if !i.mac.is_empty() {
        m.insert("mac".into(), json!(i.mac));
    }
    if v11 {
        put(&mut m, "mtu", i.mtu);
    }
    put(&mut m, "sandbox", i.sandbox.clone());
    if v11 {
        put(&mut m, "socketPath", i.socket_path.clone());
        put(&mut m, "pciID", i.pci_id.clone());
    }
    Value::Object(m)
}

fn ip_json(ip: &IpConfig, has_version: bool) -> Value {
    let mut m = Map::new();
    if has_version {
        let v = if ip.address.ip().is_ipv4() { "4" } else { "6" };
        m.insert("version".into(), json!(v));
    }
    put(&mut m, "interface", ip.interface);
    m.insert("address".into(), json!(ip.address.to_string()));
    put(&mut m, "gateway", ip.gateway.map(|g| g.to_string()));
    Value::Object(m)
}

fn route_json(r: &Route, v11: bool) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), json!(r.dst.to_string()));
    put(&mut m, "gw", r.gw.map(|g| g.to_string()));
    if v11 {
        put(&mut m, "mtu", r.mtu);
        put(&mut m, "advmss", r.advmss);
        put(&mut m, "priority", r.priority);
        put(&mut m, "table", r.table);
        put(&mut m, "scope", r.scope);
    }
    Value::Object(m)
}

fn dns_json(d: &Dns) -> Value {
    let mut m = Map::new();
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| json!(v));
    put(&mut m, "nameservers", list(&d.nameservers));
    put(&mut m, "domain", d.domain.clone());
    put(&mut m, "search", list(&d.search));
    put(&mut m, "options", list(&d.options));
    Value::Object(m)
}

/// Reads a result in any supported layout.
pub fn from_json(v: &Value) -> Result<CniResult> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::decode("result must be a JSON object"))?;
    let list = |k: &str| -> Result<&[Value]> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(Error::decode(format!("{k}: must be a list"))),
        }
    };
    let interfaces = list("interfaces")?
        .iter()
        .enumerate()
        .map(|(n, i)| read_interface(i, &format!("interfaces[{n}]")))
        .collect::<Result<_>>()?;
    let ips = list("ips")?
        .iter()
        .enumerate()
        .map(|(n, i)| read_ip(i, &format!("ips[{n}]")))
        .collect::<Result<_>>()?;
    let routes = list("routes")?
        .iter()
        .enumerate()
        .map(|(n, r)| read_route(r, &format!("routes[{n}]")))
        .collect::<Result<_>>()?;
    let dns = match obj.get("dns") {
        None | Some(Value::Null) => None,
        Some(d) => Some(read_dns(d)?).filter(|d| {
            !(d.nameservers.is_empty()
                && d.domain.is_none()
                && d.search.is_empty()
                && d.options.is_empty())
        }),
    };
    Ok(CniResult {
        interfaces,
        ips,
        routes,
        dns,
    })
}

fn opt_str(v: &Value, k: &str, at: &str) -> Result<Option<String>> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::decode(format!("{at}.{k}: must be a string"))),
    }
}

fn opt_u32(v: &Value, k: &str, at: &str) -> Result<Option<u32>> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| Error::decode(format!("{at}.{k}: must be a non-negative integer"))),
    }
}

fn str_list(v: &Value, k: &str, at: &str) -> Result<Vec<String>> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::decode(format!("{at}.{k}: must be a list of strings")))
            })
            .collect(),
        Some(_) => Err(Error::decode(format!("{at}.{k}: must be a list"))),
    }
}

fn read_interface(v: &Value, at: &str) -> Result<Interface> {
    Ok(Interface {
        name: opt_str(v, "name", at)?
            .ok_or_else(|| Error::decode(format!("{at}.name: missing")))?,
        mac: opt_str(v, "mac", at)?.unwrap_or_default(),
        mtu: opt_u32(v, "mtu", at)?,
        sandbox: opt_str(v, "sandbox", at)?,
        socket_path: opt_str(v, "socketPath", at)?,
        pci_id: opt_str(v, "pciID", at)?,
    })
}

fn read_ip(v: &Value, at: &str) -> Result<IpConfig> {
    let address = opt_str(v, "address", at)?
        .ok_or_else(|| Error::decode(format!("{at}.address: missing")))?;
    Ok(IpConfig {
        address: parse_ip_net(&address, &format!("{at}.address"))?,
        gateway: opt_str(v, "gateway", at)?
            .map(|g| parse_ip(&g, &format!("{at}.gateway")))
            .transpose()?,
        interface: opt_u32(v, "interface", at)?,
    })
}

fn read_route(v: &Value, at: &str) -> Result<Route> {
    let dst = opt_str(v, "dst", at)?.ok_or_else(|| Error::decode(format!("{at}.dst: missing")))?;
    Ok(Route {
        dst: parse_ip_net(&dst, &format!("{at}.dst"))?,
        gw: opt_str(v, "gw", at)?
            .map(|g| parse_ip(&g, &format!("{at}.gw")))
            .transpose()?,
        mtu: opt_u32(v, "mtu", at)?,
        advmss: opt_u32(v, "advmss", at)?,
        priority: opt_u32(v, "priority", at)?,
        table: opt_u32(v, "table", at)?,
        scope: opt_u32(v, "scope", at)?,
    })
}

fn read_dns(v: &Value) -> Result<Dns> {
    Ok(Dns {
        nameservers: str_list(v, "nameservers", "dns")?,
        domain: opt_str(v, "domain", "dns")?,
        search: str_list(v, "search", "dns")?,
        options: str_list(v, "options", "dns")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "cni0", "mac": "0a:58:0a:16:00:01", "mtu": 1500},
                           {"name": "eth0", "mac": "0a:58:0a:16:00:02", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.22.0.2/16", "gateway": "10.22.0.1", "interface": 1},
                    {"address": "fd00::2/64", "gateway": "fd00::1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1", "priority": 10}],
            "dns": {"nameservers": ["10.0.0.53"]}
        })
    }

    #[test]
    fn round_trips_1_1_0() {
        let r = from_json(&sample()).unwrap();
        assert_eq!(to_json(&r, "1.1.0"), sample());
    }

    #[test]
    fn renders_old_layouts() {
        let r = from_json(&sample()).unwrap();
        let v = to_json(&r, "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("priority").is_none());
        let v = to_json(&r, "1.0.0");
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        // Every layout reads back to the same addresses.
        for ver in version::SUPPORTED {
            let back = from_json(&to_json(&r, ver)).unwrap();
            assert_eq!(back.ips, r.ips);
        }
    }

    #[test]
    fn names_the_bad_field() {
        let err = from_json(&json!({"ips": [{"address": "10.0.0.1"}]})).unwrap_err();
        assert!(err.msg.contains("ips[0].address"), "{err}");
    }
}
