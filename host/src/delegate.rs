//! Delegation to a native IPAM binary found in `CNI_PATH` (dhcp, static,
//! whereabouts ...): the same environment, the same configuration on stdin,
//! the result read back in whatever layout it printed.

use std::path::{Path, PathBuf};

use crate::bindings::CniResult;
use crate::cni::{result, Command};
use crate::error::{Error, Result};
use crate::exec;
use crate::state::Invocation;

/// The first executable named `name` in `CNI_PATH`.
pub fn find(name: &str, path: &[PathBuf]) -> Option<PathBuf> {
    path.iter().map(|dir| dir.join(name)).find(|p| p.is_file())
}

pub fn exec(binary: &Path, command: Command, inv: &Invocation) -> Result<Option<CniResult>> {
    let env = &inv.env;
    let join = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    let args = env
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let netns = env
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let vars = [
        ("CNI_COMMAND", command.as_str().to_string()),
        ("CNI_CONTAINERID", env.container_id.clone()),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", env.ifname.clone()),
        ("CNI_ARGS", args),
        ("CNI_PATH", join(&env.path)),
    ];
    let no_args: [&str; 0] = [];
    let out = exec::run(binary, &no_args, &vars, inv.conf.to_json().as_bytes())?;
    let stdout: serde_json::Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::decode(format!("output of {} is not JSON: {e}", binary.display()))
        })?
    };
    if !out.status.success() {
        // A CNI error object, passed through as the plugin reported it.
        let code = stdout.get("code").and_then(|c| c.as_u64()).unwrap_or(999) as u32;
        let msg = stdout
            .get("msg")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        let details = stdout.get("details").and_then(|d| d.as_str()).unwrap_or("");
        return Err(Error::new(code, msg).with_details(details));
    }
    match command {
        Command::Add => Ok(Some(result::from_json(&stdout)?)),
        _ => Ok(None),
    }
}
