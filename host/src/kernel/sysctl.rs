//! Kernel parameters through `/proc/sys`, opened inside the namespace they
//! belong to.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// `net.ipv4.ip_forward` -> `/proc/sys/net/ipv4/ip_forward`. Interface names
/// may contain dots (`eth0.100`); they are validated by the caller and kept
/// whole here by splitting only the fixed prefix.
fn path(key: &str) -> PathBuf {
    let mut p = PathBuf::from("/proc/sys");
    for prefix in ["net.ipv4.conf.", "net.ipv6.conf."] {
        if let Some(rest) = key.strip_prefix(prefix) {
            if let Some((ifname, leaf)) = rest.rsplit_once('.') {
                p.extend(prefix.trim_end_matches('.').split('.'));
                p.push(ifname);
                p.push(leaf);
                return p;
            }
        }
    }
    p.extend(key.split('.'));
    p
}

pub fn read(key: &str) -> Result<String> {
    let mut s = String::new();
    File::open(path(key))
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| Error::io(format!("read sysctl {key}: {e}")))?;
    Ok(s.trim().to_string())
}

pub fn write(key: &str, value: &str) -> Result<()> {
    File::options()
        .write(true)
        .open(path(key))
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| Error::io(format!("set sysctl {key}={value}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::path;

    #[test]
    fn keeps_dotted_interface_names_whole() {
        assert_eq!(
            path("net.ipv4.ip_forward").to_str(),
            Some("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path("net.ipv4.conf.eth0.100.route_localnet").to_str(),
            Some("/proc/sys/net/ipv4/conf/eth0.100/route_localnet")
        );
    }
}
