//! The common fields of a plugin configuration, parsed and validated before
//! anything on the node changes. Plugin-specific keys stay in the raw JSON,
//! which the plugin receives as text.

use serde_json::{Map, Value};

use super::{result, version};
use crate::bindings::{Attachment, CniResult};
use crate::error::{Error, Result};

/// Largest configuration read from stdin.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    /// `ipam.type`, when an `ipam` section is present.
    pub ipam_type: Option<String>,
    pub prev_result: Option<CniResult>,
    /// The whole configuration object.
    pub raw: Map<String, Value>,
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(Error::decode(format!(
                "network configuration is larger than {MAX_CONFIG_BYTES} bytes"
            )));
        }
        let raw: Map<String, Value> = serde_json::from_slice(bytes).map_err(|e| {
            Error::decode(format!("network configuration is not a JSON object: {e}"))
        })?;
        let cni_version = string_field(&raw, "cniVersion")?
            .ok_or_else(|| Error::config("cniVersion: missing"))?;
        version::check(&cni_version)?;
        let name = string_field(&raw, "name")?.ok_or_else(|| Error::config("name: missing"))?;
        validate_name(&name)?;
        let plugin_type =
            string_field(&raw, "type")?.ok_or_else(|| Error::config("type: missing"))?;
        if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type.starts_with('.') {
            return Err(Error::config(format!(
                "type: invalid plugin name {plugin_type:?}"
            )));
        }
        let ipam_type = match raw.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(ipam)) => match ipam.get("type") {
                Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
                Some(Value::String(_)) | None => None,
                Some(_) => return Err(Error::config("ipam.type: must be a string")),
            },
            Some(_) => return Err(Error::config("ipam: must be an object")),
        };
        if let Some(t) = &ipam_type {
            if t.contains('/') || t.starts_with('.') {
                return Err(Error::config(format!(
                    "ipam.type: invalid plugin name {t:?}"
                )));
            }
        }
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(result::from_json(v).map_err(|e| e.context("prevResult"))?),
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            ipam_type,
            prev_result,
            raw,
        })
    }

    /// The configuration as JSON text, as a plugin receives it.
    pub fn to_json(&self) -> String {
        Value::Object(self.raw.clone()).to_string()
    }

    /// A string key of the top-level object.
    pub fn str_key(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }

    /// `cni.dev/valid-attachments`, or the older `cni.dev/attachments`.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>> {
        let Some((key, list)) = ["cni.dev/valid-attachments", "cni.dev/attachments"]
            .iter()
            .find_map(|k| self.raw.get(*k).map(|v| (*k, v)))
        else {
            return Ok(Vec::new());
        };
        let items = list
            .as_array()
            .ok_or_else(|| Error::config(format!("{key}: must be a list")))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = |f: &str| {
                    item.get(f)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            Error::config(format!("{key}[{i}].{f}: missing or not a string"))
                        })
                };
                Ok(Attachment {
                    container_id: field("containerID")?,
                    ifname: field("ifname")?,
                })
            })
            .collect()
    }
}

fn string_field(raw: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::config(format!("{key}: must be a string"))),
    }
}

/// Network names become directory names (host-local's store), so they must
/// be path safe: a letter or digit first, then `[A-Za-z0-9_.-]`.
fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "name: invalid network name {name:?} (must start with a letter or digit and hold only [A-Za-z0-9_.-])"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_fields_and_prev_result() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"n1","type":"bridge","ipam":{"type":"host-local"},
            "prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/24"}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(conf.prev_result.unwrap().ips.len(), 1);
    }

    #[test]
    fn rejects_bad_configs_with_the_right_code() {
        let cases: &[(&[u8], u32, &str)] = &[
            (b"{", 6, "JSON"),
            (br#"{"name":"n","type":"bridge"}"#, 7, "cniVersion"),
            (
                br#"{"cniVersion":"0.2.0","name":"n","type":"bridge"}"#,
                1,
                "0.2.0",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"../x","type":"bridge"}"#,
                7,
                "name",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"a/b"}"#,
                7,
                "type",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"b","ipam":[]}"#,
                7,
                "ipam",
            ),
        ];
        for (input, code, needle) in cases {
            let err = NetConf::parse(input).unwrap_err();
            assert_eq!(err.code, *code, "{err}");
            assert!(err.msg.contains(needle), "{err}");
        }
    }

    #[test]
    fn reads_both_gc_attachment_keys() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let text = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"t","{key}":[{{"containerID":"c","ifname":"eth0"}}]}}"#
            );
            let conf = NetConf::parse(text.as_bytes()).unwrap();
            assert_eq!(conf.valid_attachments().unwrap()[0].container_id, "c");
        }
    }
}
