//! The `CNI_*` environment of one invocation, validated per command.

use std::path::PathBuf;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(Error::env(format!(
                    "CNI_COMMAND: unknown command {other:?}"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The oldest configuration version the command exists in.
    pub fn min_version(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
            _ => "0.1.0",
        }
    }

    fn per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The validated environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    /// `CNI_NETNS`; optional on DEL.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs, in order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` split on `:`.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and validates the variables `command` needs. Every missing
    /// variable is named in one code-4 error.
    pub fn load(command: Command, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let mut env = Env {
            path: get("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
            ..Env::default()
        };
        if !command.per_attachment() {
            return Ok(env);
        }
        let mut missing = Vec::new();
        match get("CNI_CONTAINERID") {
            Some(id) => env.container_id = id,
            None => missing.push("CNI_CONTAINERID"),
        }
        match get("CNI_IFNAME") {
            Some(ifname) => env.ifname = ifname,
            None => missing.push("CNI_IFNAME"),
        }
        env.netns = get("CNI_NETNS").map(PathBuf::from);
        if env.netns.is_none() && command != Command::Del {
            missing.push("CNI_NETNS");
        }
        if !missing.is_empty() {
            return Err(Error::env(format!(
                "required environment variables missing: {}",
                missing.join(", ")
            )));
        }
        validate_container_id(&env.container_id)?;
        validate_ifname(&env.ifname)?;
        if let Some(args) = get("CNI_ARGS") {
            env.args = parse_args(&args)?;
        }
        Ok(env)
    }
}

fn validate_container_id(id: &str) -> Result<()> {
    if is_container_id(id) {
        Ok(())
    } else {
        Err(Error::env(format!(
            "CNI_CONTAINERID: invalid container id {id:?} (must start with a letter or digit and hold only [A-Za-z0-9_.-])"
        )))
    }
}

/// A name Linux accepts for an interface: 1-15 bytes, not `.` or `..`, no
/// `/`, `:`, NUL or whitespace.
pub(crate) fn is_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

/// A container ID of the spec's alphabet: a letter or digit, then
/// letters, digits, `_`, `.`, `-`.
pub(crate) fn is_container_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn validate_ifname(name: &str) -> Result<()> {
    if is_ifname(name) {
        Ok(())
    } else {
        Err(Error::env(format!(
            "CNI_IFNAME: invalid interface name {name:?} (1-15 bytes, no '/', ':' or spaces)"
        )))
    }
}

/// Parses `K=V;K2=V2`.
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Error::env(format!(
                "CNI_ARGS: invalid pair {pair:?} (want KEY=VALUE)"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(cmd: Command, vars: &[(&str, &str)]) -> Result<Env> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::load(cmd, |k| m.get(k).cloned())
    }

    #[test]
    fn names_every_missing_variable() {
        let err = load(Command::Add, &[("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_CONTAINERID") && err.msg.contains("CNI_NETNS"));
    }

    #[test]
    fn del_does_not_need_netns() {
        let env = load(
            Command::Del,
            &[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
        )
        .unwrap();
        assert!(env.netns.is_none());
    }

    #[test]
    fn validates_ids_and_args() {
        let base = [("CNI_NETNS", "/run/netns/x"), ("CNI_IFNAME", "eth0")];
        let mut bad = base.to_vec();
        bad.push(("CNI_CONTAINERID", "-bad"));
        assert_eq!(load(Command::Add, &bad).unwrap_err().code, 4);
        let mut ok = base.to_vec();
        ok.push(("CNI_CONTAINERID", "abc"));
        ok.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.0.0.9"));
        let env = load(Command::Add, &ok).unwrap();
        assert_eq!(env.args.len(), 3);
        assert_eq!(env.args[2], ("IP".into(), "10.0.0.9".into()));
        assert!(validate_ifname("a-very-long-interface").is_err());
    }
}
