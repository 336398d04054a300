//! Parsing the plugin configuration the host hands over as JSON text.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::{CniError, CniResult, Error, Request};

/// Parses the whole plugin configuration into `T`. Unknown keys are allowed
/// (the CNI spec requires passing them through); a key with the wrong type is
/// a code-7 error naming the key.
pub fn parse_config<T: DeserializeOwned>(config: &str) -> Result<T, CniError> {
    serde_json::from_str(config)
        .map_err(|e| Error::config(format!("invalid network configuration: {e}")))
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
