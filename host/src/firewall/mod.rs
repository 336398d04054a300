//! Masquerade and port-forward rules of attachments, in the host's own
//! nftables table ([`nft`]) or iptables chains ([`iptables`]). Every rule or
//! set element carries its owner's tag, so DEL, CHECK and GC find exactly
//! one attachment's rules, and a plugin can only name its own attachment:
//! the owner comes from the invocation, not from the plugin.

pub mod iptables;
pub mod nft;

use std::net::IpAddr;
use std::path::Path;

pub use crate::bindings::cni::plugin::firewall::{
    Backend as Choice, Condition, HostPort, Masquerade, MatchField, Owned, PortMapping,
    PortOptions, Protocol, RuleKind,
};
use crate::error::Result;

/// The attachment a rule belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// FNV-1a, 64 bit: stable short tags, not security.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Longest comment nftables and iptables keep.
pub const MAX_COMMENT: usize = 127;

impl Owner {
    /// `wc:<network 8 hex>` — every tag of the network starts with it.
    pub fn network_tag(network: &str) -> String {
        format!("wc:{:08x}", fnv(&[network]) >> 32)
    }

    /// `wc:<network 8 hex>:<attachment 16 hex>`.
    pub fn tag(&self) -> String {
        format!(
            "{}:{:016x}",
            Self::network_tag(&self.network),
            fnv(&[&self.network, &self.container_id, &self.ifname])
        )
    }

    /// The tag, then the owner in words, cut to [`MAX_COMMENT`] bytes, so
    /// `nft list ruleset` / `iptables-save` explain themselves.
    pub fn comment(&self) -> String {
        let mut c = format!(
            "{} net={} id={} if={}",
            self.tag(),
            self.network,
            self.container_id,
            self.ifname
        );
        c.truncate(c.floor_char_boundary(MAX_COMMENT));
        c
    }

    /// Whether a comment was written for this owner.
    pub fn owns(&self, comment: &str) -> bool {
        comment.split(' ').next() == Some(self.tag().as_str())
    }
}

/// Whether a comment belongs to `network` but to none of `valid`.
pub fn stale(comment: &str, network: &str, valid: &[Owner]) -> bool {
    let Some(tag) = comment.split(' ').next() else {
        return false;
    };
    tag.starts_with(&format!("{}:", Owner::network_tag(network)))
        && !valid.iter().any(|o| o.tag() == tag)
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

pub fn choice_name(c: Choice) -> &'static str {
    match c {
        Choice::Auto => "auto",
        Choice::Nftables => "nftables",
        Choice::Iptables => "iptables",
    }
}

pub fn kind_name(k: RuleKind) -> &'static str {
    match k {
        RuleKind::Masquerade => "masquerade",
        RuleKind::PortMappings => "port-mappings",
    }
}

pub fn parse_protocol(s: &str) -> Option<Protocol> {
    match s {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

pub fn is_v4(ip: IpAddr) -> bool {
    ip.is_ipv4()
}

/// Checks what every backend relies on: a mapping's host IP is of its
/// container IP's family.
pub fn validate_mappings(maps: &[PortMapping]) -> Result<()> {
    for m in maps {
        let pod = IpAddr::from(m.container_ip);
        if let Some(h) = m.host_ip.map(IpAddr::from) {
            if h.is_ipv4() != pod.is_ipv4() {
                return Err(crate::error::Error::config(format!(
                    "portMappings: hostIP {h} and container IP {pod} are of different families"
                )));
            }
        }
    }
    Ok(())
}

/// An interface name that can stand in rule text as it is: 1-15 bytes of
/// letters, digits and `-_.@+`.
pub fn rule_safe_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
}

/// Checks the options a plugin sent before they reach a rule: the mark bit,
/// the external chain's name and each condition's family and interface,
/// so no text of a plugin's choosing ends up in a ruleset.
pub fn validate_options(opts: &PortOptions) -> Result<()> {
    use crate::error::Error;
    if opts.mark_masq_bit > 31 {
        return Err(Error::config(format!(
            "markMasqBit: {} is outside 0-31",
            opts.mark_masq_bit
        )));
    }
    if let Some(chain) = &opts.external_set_mark_chain {
        let ok = !chain.is_empty()
            && chain.len() <= 28
            && chain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Error::config(format!(
                "externalSetMarkChain: {chain:?} is not an iptables chain name"
            )));
        }
    }
    for (key, list, v4) in [
        ("conditionsV4", &opts.conditions_v4, true),
        ("conditionsV6", &opts.conditions_v6, false),
    ] {
        for c in list {
            match &c.field {
                MatchField::Source(n) | MatchField::Destination(n) => {
                    let ip = n.ip();
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    if ip.is_ipv4() != v4 || n.prefix_len > max {
                        return Err(Error::config(format!(
                            "{key}: {ip}/{} is not an IPv{} prefix",
                            n.prefix_len,
                            if v4 { 4 } else { 6 }
                        )));
                    }
                }
                MatchField::InInterface(name) => {
                    if !rule_safe_ifname(name) {
                        return Err(Error::config(format!(
                            "{key}: {name:?} is not an interface name"
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Those of `maps` that are in `have` (the owner's, as listed), in the
/// order of `maps`.
pub fn among(maps: &[PortMapping], have: &[PortMapping]) -> Vec<PortMapping> {
    maps.iter().filter(|m| have.contains(m)).cloned().collect()
}

/// One way of keeping the rules.
pub trait Firewall {
    /// "nftables" or "iptables".
    fn name(&self) -> &'static str;
    fn add_masquerade(&mut self, owner: &Owner, rules: &[Masquerade]) -> Result<()>;
    fn add_port_mappings(
        &mut self,
        owner: &Owner,
        maps: &[PortMapping],
        opts: &PortOptions,
    ) -> Result<()>;
    /// Removes the owner's rules of `kind`; Ok when there are none (or the
    /// backend has never been used on this node).
    fn remove(&mut self, owner: &Owner, kind: RuleKind) -> Result<()>;
    /// Removes the owner's masquerading of the pod addresses `pods` (its
    /// rules' keys, as far as the host knows them), without listing every
    /// pod's. By default, and with no addresses, the same as
    /// [`Firewall::remove`].
    fn remove_masquerade_of(&mut self, owner: &Owner, pods: &[IpAddr]) -> Result<()> {
        let _ = pods;
        self.remove(owner, RuleKind::Masquerade)
    }
    /// Removes the owner's port mappings of the host ports `ports` to the
    /// pod addresses `pods`, without listing every pod's; everything of
    /// the owner's, as [`Firewall::remove`], when a port is not found as
    /// the owner's. By default, and with no ports or addresses, the same as
    /// [`Firewall::remove`].
    fn remove_host_ports(
        &mut self,
        owner: &Owner,
        ports: &[HostPort],
        pods: &[IpAddr],
    ) -> Result<()> {
        let _ = (ports, pods);
        self.remove(owner, RuleKind::PortMappings)
    }
    fn list(&mut self, owner: &Owner, kind: RuleKind) -> Result<Owned>;
    /// Which of `maps` the owner has, without listing every pod's where
    /// the backend can look them up (see the WIT `port-mappings-of`). By
    /// default those of them [`Firewall::list`] finds.
    fn port_mappings_of(
        &mut self,
        owner: &Owner,
        maps: &[PortMapping],
    ) -> Result<Vec<PortMapping>> {
        let have = self.list(owner, RuleKind::PortMappings)?.port_mappings;
        Ok(among(maps, &have))
    }
    /// The owner's masquerading of the pod addresses `pods`, without
    /// listing every pod's (what CHECK asks). By default, and with no
    /// addresses, the owner's masquerading as [`Firewall::list`] finds it.
    fn masquerade_of(&mut self, owner: &Owner, pods: &[IpAddr]) -> Result<Vec<Masquerade>> {
        let _ = pods;
        Ok(self.list(owner, RuleKind::Masquerade)?.masquerade)
    }
    /// Removes the rules of `kind` of every attachment of `network` not in `valid`.
    fn gc(&mut self, network: &str, kind: RuleKind, valid: &[Owner]) -> Result<()>;
}

fn on_path(binary: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(binary).is_file())
}

/// The backend for a choice: `auto` is nftables when `nft` is installed,
/// else iptables.
/// Callers validate mappings with [`validate_mappings`] first.
pub fn backend(choice: Choice) -> Box<dyn Firewall + Send> {
    match choice {
        Choice::Nftables => Box::new(nft::Nftables::new()),
        Choice::Iptables => Box::new(iptables::Iptables::new()),
        Choice::Auto if on_path("nft") => Box::new(nft::Nftables::new()),
        Choice::Auto => Box::new(iptables::Iptables::new()),
    }
}

/// Both backends, for teardown: a pod may have been set up by either.
pub fn all() -> Vec<Box<dyn Firewall + Send>> {
    let mut v: Vec<Box<dyn Firewall + Send>> = Vec::new();
    if on_path("nft") {
        v.push(Box::new(nft::Nftables::new()));
    }
    if on_path("iptables") {
        v.push(Box::new(iptables::Iptables::new()));
    }
    v
}

/// Runs `f` on every installed backend, continuing past failures, and
/// reports every failure in one error.
pub fn each(mut f: impl FnMut(&mut dyn Firewall) -> Result<()>) -> Result<()> {
    let mut failures = Vec::new();
    for mut fw in all() {
        if let Err(e) = f(fw.as_mut()) {
            failures.push(format!("{}: {}", fw.name(), e.msg));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(crate::error::Error::io(failures.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Owner {
        Owner {
            network: "mynet".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn tags_identify_owner_and_network() {
        let a = owner("a");
        assert!(a.owns(&a.comment()));
        assert!(!owner("b").owns(&a.comment()));
        assert!(a.comment().contains("net=mynet id=a if=eth0"));
        assert!(stale(&a.comment(), "mynet", &[owner("b")]));
        assert!(!stale(&a.comment(), "mynet", &[owner("a")]));
        assert!(!stale(&a.comment(), "other", &[]));
        let long = owner(&"x".repeat(200));
        assert!(long.comment().len() <= MAX_COMMENT);
        assert!(long.owns(&long.comment()));
    }
}
