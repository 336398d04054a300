//! `conditionsV4` / `conditionsV6`: extra matches on traffic to the host
//! ports, written as the reference plugin takes them — iptables arguments
//! (`["-s", "192.0.2.0/24", "!", "-i", "eth1"]`) or nftables expressions
//! (`["ip saddr 192.0.2.0/24", "iifname != \"eth1\""]`). They become typed
//! conditions; the host writes the rules, so a condition can only ever
//! narrow which traffic reaches the pod.

use serde_json::Value;
use wasm_cni_sdk::firewall::{Condition, MatchField};
use wasm_cni_sdk::{parse_ip_net, CniError, Error, IpNet};

/// Which syntax the conditions were written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Iptables,
    Nftables,
}

/// Parsed conditions of one family, with the syntax they were written in.
#[derive(Debug, Clone)]
pub struct Conditions {
    pub syntax: Syntax,
    pub list: Vec<Condition>,
}

const SUPPORTED: &str = "supported are source (-s / ip saddr), destination (-d / ip daddr) \
                         and input interface (-i / iifname), each optionally negated";

/// Reads `key` (a list of strings); `None` when absent, null or empty.
pub fn parse(value: Option<&Value>, key: &str, v6: bool) -> Result<Option<Conditions>, CniError> {
    let list = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) if a.is_empty() => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(Error::config(format!(
                "{key}: expected a list of strings, not {other}"
            )))
        }
    };
    let mut words: Vec<&str> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let s = item
            .as_str()
            .ok_or_else(|| Error::config(format!("{key}[{i}]: expected a string, not {item}")))?;
        words.extend(s.split_whitespace());
    }
    let Some(first) = words.first() else {
        return Ok(None);
    };
    let syntax = if first.starts_with('-') || first.starts_with('!') {
        Syntax::Iptables
    } else {
        Syntax::Nftables
    };
    let list = match syntax {
        Syntax::Iptables => iptables(&words, key, v6)?,
        Syntax::Nftables => nftables(&words, key, v6)?,
    };
    Ok(Some(Conditions { syntax, list }))
}

fn net(text: &str, key: &str, v6: bool) -> Result<IpNet, CniError> {
    let n = parse_ip_net(text, key)?;
    if matches!(n.addr, wasm_cni_sdk::IpAddress::V6(_)) != v6 {
        return Err(Error::config(format!(
            "{key}: {text} is not an IPv{} address",
            if v6 { 6 } else { 4 }
        )));
    }
    Ok(n)
}

fn interface(name: &str, key: &str) -> Result<String, CniError> {
    let name = name.trim_matches('"');
    let ok = !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b));
    if ok {
        Ok(name.to_string())
    } else {
        Err(Error::config(format!(
            "{key}: {name:?} is not an interface name"
        )))
    }
}

fn iptables(words: &[&str], key: &str, v6: bool) -> Result<Vec<Condition>, CniError> {
    let mut out = Vec::new();
    let mut it = words.iter().peekable();
    while let Some(&w) = it.next() {
        let (negate, opt) = if w == "!" {
            let opt = it
                .next()
                .ok_or_else(|| Error::config(format!("{key}: \"!\" at the end")))?;
            (true, *opt)
        } else {
            (false, w)
        };
        let arg = it
            .next()
            .ok_or_else(|| Error::config(format!("{key}: {opt} needs a value")))?;
        let field = match opt {
            "-s" | "--source" | "--src" => MatchField::Source(net(arg, key, v6)?),
            "-d" | "--destination" | "--dst" => MatchField::Destination(net(arg, key, v6)?),
            "-i" | "--in-interface" => MatchField::InInterface(interface(arg, key)?),
            other => {
                return Err(Error::unsupported(format!(
                    "{key}: {other} is not supported; {SUPPORTED}"
                )))
            }
        };
        out.push(Condition { negate, field });
    }
    Ok(out)
}

fn nftables(words: &[&str], key: &str, v6: bool) -> Result<Vec<Condition>, CniError> {
    let family = if v6 { "ip6" } else { "ip" };
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let (what, consumed) = match words[i] {
            f @ ("ip" | "ip6") => {
                if f != family {
                    return Err(Error::config(format!(
                        "{key}: {f} expressions do not apply to IPv{} traffic",
                        if v6 { 6 } else { 4 }
                    )));
                }
                match words.get(i + 1) {
                    Some(&"saddr") => ("saddr", 2),
                    Some(&"daddr") => ("daddr", 2),
                    other => {
                        return Err(Error::unsupported(format!(
                            "{key}: {f} {} is not supported; {SUPPORTED}",
                            other.unwrap_or(&"")
                        )))
                    }
                }
            }
            "iifname" => ("iifname", 1),
            other => {
                return Err(Error::unsupported(format!(
                    "{key}: {other} is not supported; {SUPPORTED}"
                )))
            }
        };
        i += consumed;
        let negate = match words.get(i) {
            Some(&"!=") => {
                i += 1;
                true
            }
            Some(&"==") => {
                i += 1;
                false
            }
            _ => false,
        };
        let arg = words
            .get(i)
            .ok_or_else(|| Error::config(format!("{key}: {what} needs a value")))?;
        i += 1;
        let field = match what {
            "saddr" => MatchField::Source(net(arg, key, v6)?),
            "daddr" => MatchField::Destination(net(arg, key, v6)?),
            _ => MatchField::InInterface(interface(arg, key)?),
        };
        out.push(Condition { negate, field });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasm_cni_sdk::code;

    fn ok(v: Value, v6: bool) -> Conditions {
        parse(Some(&v), "conditionsV4", v6).unwrap().unwrap()
    }

    #[test]
    fn iptables_arguments() {
        let c = ok(
            json!(["-s", "192.0.2.0/24", "!", "-i", "eth1", "-d 198.51.100.7"]),
            false,
        );
        assert_eq!(c.syntax, Syntax::Iptables);
        assert_eq!(c.list.len(), 3);
        assert!(
            matches!(&c.list[0], Condition { negate: false, field: MatchField::Source(n) } if n.prefix_len == 24)
        );
        assert!(
            matches!(&c.list[1], Condition { negate: true, field: MatchField::InInterface(i) } if i == "eth1")
        );
        assert!(
            matches!(&c.list[2], Condition { negate: false, field: MatchField::Destination(n) } if n.prefix_len == 32)
        );
    }

    #[test]
    fn nft_expressions() {
        let c = ok(
            json!(["ip6 saddr != 2001:db8::/32", "iifname \"eth0\""]),
            true,
        );
        assert_eq!(c.syntax, Syntax::Nftables);
        assert!(
            matches!(&c.list[0], Condition { negate: true, field: MatchField::Source(n) } if n.prefix_len == 32)
        );
        assert!(
            matches!(&c.list[1], Condition { negate: false, field: MatchField::InInterface(i) } if i == "eth0")
        );
    }

    #[test]
    fn absent_or_empty() {
        assert!(parse(None, "k", false).unwrap().is_none());
        assert!(parse(Some(&json!([])), "k", false).unwrap().is_none());
        assert!(parse(Some(&Value::Null), "k", false).unwrap().is_none());
    }

    #[test]
    fn errors_name_the_key() {
        for (v, v6, want) in [
            (json!(["-p", "tcp"]), false, code::UNSUPPORTED_FIELD),
            (json!(["meta mark 1"]), false, code::UNSUPPORTED_FIELD),
            (json!(["-s"]), false, code::INVALID_CONFIG),
            (json!(["-s", "2001:db8::1"]), false, code::INVALID_CONFIG),
            (json!(["ip saddr 10.0.0.1"]), true, code::INVALID_CONFIG),
            (json!(["-i", "a;b"]), false, code::INVALID_CONFIG),
            (json!([1]), false, code::INVALID_CONFIG),
            (json!("-s 1.2.3.4"), false, code::INVALID_CONFIG),
        ] {
            let e = parse(Some(&v), "conditionsV4", v6).expect_err(&v.to_string());
            assert_eq!(e.code, want, "{v}: {}", e.msg);
            assert!(e.msg.starts_with("conditionsV4"), "{}", e.msg);
        }
    }
}
