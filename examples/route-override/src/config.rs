//! The plugin's configuration keys, validated before anything in the
//! container changes. Every error is code 7 and names the key.
//!
//! ```json
//! { "type": "route-override",
//!   "addRoutes": [ { "dst": "10.96.0.0/12", "gw": "10.22.0.254" },
//!                  { "dst": "192.168.50.0/24" } ],
//!   "flushGateway": false }
//! ```

use serde_json::{Map, Value};
use wasm_cni_sdk::{parse_ip, parse_ip_net, CniError, Error, IpNetExt, Route};

#[derive(Debug, Clone)]
pub struct Conf {
    /// Routes to add on `CNI_IFNAME`, in order.
    pub add_routes: Vec<Route>,
    /// Remove the default routes (and the gateways of the addresses) the
    /// previous plugins set up.
    pub flush_gateway: bool,
}

pub fn parse(config: &str) -> Result<Conf, CniError> {
    let root: Value = serde_json::from_str(config)
        .map_err(|e| Error::config(format!("invalid network configuration: {e}")))?;
    let root = root
        .as_object()
        .ok_or_else(|| Error::config("network configuration: must be a JSON object"))?;
    let add_routes = match root.get("addRoutes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, r)| parse_route(r, &format!("addRoutes[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(Error::config(
                "addRoutes: must be a list of {dst, gw} objects",
            ))
        }
    };
    let flush_gateway = match root.get("flushGateway") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::config("flushGateway: must be true or false")),
    };
    Ok(Conf {
        add_routes,
        flush_gateway,
    })
}

fn string<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::config(format!("{at}.{key}: must be a string"))),
    }
}

fn parse_route(v: &Value, at: &str) -> Result<Route, CniError> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::config(format!("{at}: must be an object with dst and gw")))?;
    let dst_text =
        string(obj, "dst", at)?.ok_or_else(|| Error::config(format!("{at}.dst: missing")))?;
    let dst = parse_ip_net(dst_text, &format!("{at}.dst"))?;
    if dst.trunc() != dst {
        return Err(Error::config(format!(
            "{at}.dst: {dst_text} has host bits set (did you mean {}?)",
            dst.trunc()
        )));
    }
    let gw = string(obj, "gw", at)?
        .map(|g| parse_ip(g, &format!("{at}.gw")))
        .transpose()?;
    if let Some(gw) = gw {
        if gw.is_ipv4() != dst.is_ipv4() {
            return Err(Error::config(format!(
                "{at}.gw: gateway {gw} is not of the same address family as dst {dst}"
            )));
        }
    }
    Ok(Route {
        dst,
        gw: gw.map(Into::into),
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(config: &str) -> CniError {
        parse(config).unwrap_err()
    }

    #[test]
    fn parses_routes_and_flag() {
        let c = parse(
            r#"{"addRoutes":[{"dst":"10.96.0.0/12","gw":"10.22.0.254"},{"dst":"fd00:96::/64"}],
               "flushGateway":true,"other":1}"#,
        )
        .unwrap();
        assert!(c.flush_gateway);
        assert_eq!(c.add_routes.len(), 2);
        assert_eq!(c.add_routes[0].dst.to_string(), "10.96.0.0/12");
        assert_eq!(
            c.add_routes[0].gw.map(|g| g.to_string()).as_deref(),
            Some("10.22.0.254")
        );
        assert_eq!(c.add_routes[1].gw, None);
        let empty = parse("{}").unwrap();
        assert!(empty.add_routes.is_empty() && !empty.flush_gateway);
    }

    #[test]
    fn names_the_bad_key_with_code_7() {
        let cases = [
            (r#"{"addRoutes":"10.0.0.0/8"}"#, "addRoutes: must be a list"),
            (r#"{"addRoutes":[7]}"#, "addRoutes[0]: must be an object"),
            (
                r#"{"addRoutes":[{"gw":"10.0.0.1"}]}"#,
                "addRoutes[0].dst: missing",
            ),
            (
                r#"{"addRoutes":[{"dst":"10.0.0.0/8"},{"dst":"nope"}]}"#,
                "addRoutes[1].dst",
            ),
            (
                r#"{"addRoutes":[{"dst":"10.0.0.0/33"}]}"#,
                "addRoutes[0].dst",
            ),
            (
                r#"{"addRoutes":[{"dst":"10.1.2.3/8"}]}"#,
                "addRoutes[0].dst: 10.1.2.3/8 has host bits set",
            ),
            (
                r#"{"addRoutes":[{"dst":"10.0.0.0/8","gw":"fd00::1"}]}"#,
                "addRoutes[0].gw",
            ),
            (
                r#"{"addRoutes":[{"dst":"10.0.0.0/8","gw":5}]}"#,
                "addRoutes[0].gw: must be a string",
            ),
            (r#"{"flushGateway":"yes"}"#, "flushGateway"),
            ("[]", "must be a JSON object"),
        ];
        for (config, want) in cases {
            let e = err(config);
            assert_eq!(e.code, 7, "{config}: {}", e.msg);
            assert!(e.msg.contains(want), "{config}: {}", e.msg);
        }
    }
}
