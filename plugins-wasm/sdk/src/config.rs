//! Parsing the plugin configuration the host hands over as JSON text.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::{CniError, CniResult, Error, Request};

/// Parses the whole plugin configuration into `T`. Unknown keys are allowed
/// (the CNI spec requires passing them through); a key with the wrong type is
/// a code-7 error naming the key.
pub fn parse_config<T: DeserializeOwned>(config: &str) -> Result<T, CniError> {
    let mut json = serde_json::Deserializer::from_str(config);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        if key.is_empty() || key == "." {
            Error::config(format!("invalid network configuration: {inner}"))
        } else {
            Error::config(format!("{key}: {inner}"))
        }
    })
}

/// The value of a `CNI_ARGS` key.
pub fn arg<'a>(args: &'a [(String, String)], key: &str) -> Option<&'a str> {
    args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The previous result a chained plugin works on; a code-7 error naming
/// `plugin` when the runtime gave none.
pub fn prev_result<'a>(req: &'a Request, plugin: &str) -> Result<&'a CniResult, CniError> {
    req.prev_result.as_ref().ok_or_else(|| {
        Error::config(format!(
            "prevResult: missing; {plugin} is a chained plugin and must follow one that creates the container interface"
        ))
    })
}

/// The `ipam` section common to every main plugin.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct IpamConfig {
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Conf {
        #[serde(default)]
        #[allow(dead_code)]
        mtu: Option<u32>,
        #[serde(default)]
        #[allow(dead_code)]
        ipam: IpamConfig,
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse_config::<Conf>(r#"{"mtu":"bad"}"#).unwrap_err();
        assert_eq!(e.code, crate::code::INVALID_CONFIG);
        assert!(e.msg.starts_with("mtu: invalid type"), "{}", e.msg);
        let e = parse_config::<Conf>(r#"{"ipam":{"type":5}}"#).unwrap_err();
        assert!(e.msg.starts_with("ipam.type: invalid type"), "{}", e.msg);
        let e = parse_config::<Conf>("5").unwrap_err();
        assert!(
            e.msg.starts_with("invalid network configuration"),
            "{}",
            e.msg
        );
        assert!(parse_config::<Conf>(r#"{"mtu":1400,"other":true}"#).is_ok());
    }
}
