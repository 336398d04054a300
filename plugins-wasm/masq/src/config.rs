//! The masq plugin's configuration: one key, `backend`.

use serde_json::Value;
use wasm_cni_sdk::firewall::Backend;
use wasm_cni_sdk::nat::parse_backend;
use wasm_cni_sdk::{parse_config, CniError};

/// The validated configuration.
#[derive(Debug)]
pub struct Conf {
    /// `backend`: "nftables", "iptables", or absent for whichever the node has.
    pub backend: Backend,
}

impl Conf {
    pub fn parse(config: &str) -> Result<Conf, CniError> {
        let raw: Value = parse_config(config)?;
        Ok(Conf {
            backend: parse_backend(raw.get("backend"), "backend")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_cni_sdk::code;

    fn parse(extra: &str) -> Result<Conf, CniError> {
        Conf::parse(&format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"masq"{extra}}}"#
        ))
    }

    #[test]
    fn backend_defaults_to_auto() {
        assert_eq!(parse("").unwrap().backend, Backend::Auto);
        assert_eq!(parse(r#","backend":null"#).unwrap().backend, Backend::Auto);
    }

    #[test]
    fn backend_named() {
        assert_eq!(
            parse(r#","backend":"nftables""#).unwrap().backend,
            Backend::Nftables
        );
        assert_eq!(
            parse(r#","backend":"iptables""#).unwrap().backend,
            Backend::Iptables
        );
    }

    #[test]
    fn bad_backend_names_the_key() {
        for bad in [r#""ebtables""#, r#""""#, "[]"] {
            let e = parse(&format!(r#","backend":{bad}"#)).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.msg.starts_with("backend:"), "{}", e.msg);
        }
    }

    #[test]
    fn not_json() {
        let e = Conf::parse("{").unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }
}
