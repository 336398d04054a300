//! The iptables backend: rules in the `nat` table of `iptables` (IPv4) and
//! `ip6tables` (IPv6), in chains of our own only.
//!
//! Layout (per family):
//! - `WASM-CNI-POSTROUTING`, `WASM-CNI-PREROUTING`, `WASM-CNI-OUTPUT`: jumped
//!   to once from the built-in chain of the same name (PREROUTING and OUTPUT
//!   only for `-m addrtype --dst-type LOCAL`); those three jumps carry the
//!   comment [`BASE_COMMENT`] and are never removed.
//! - `WASM-CNI-HOSTPORT-MASQ` (shared, created when first needed, never
//!   removed): one `-m mark --mark M/M -j MASQUERADE` per mark bit in use
//!   (`markMasqBit`; networks may use different bits); jumped to from the
//!   top of the built-in `POSTROUTING` (comment [`MASQ_COMMENT`]), ahead of
//!   masquerade rules of other plugins that `ACCEPT` pod-subnet traffic.
//! - per attachment, `WASM-CNI-<16 hex of the owner tag>-<kind>`:
//!   - `-M` (masquerade): `-s pod -d subnet -j RETURN`, then
//!     `-s pod ! -d 224.0.0.0/4|ff00::/8 -j MASQUERADE`; jumped to from
//!     `WASM-CNI-POSTROUTING` by `-s pod`;
//!   - `-D` (host ports): per mapping, first the connections that must be
//!     masqueraded are flagged — `[-s source] [-d hostIP] -p P --dport H -j
//!     MARK --set-xmark M/M` (M = `1 << markMasqBit`) for each pod subnet
//!     and 127.0.0.0/8 (`snat`), or for every source (`masqAll`); with
//!     `externalSetMarkChain` the same rules jump to that chain instead
//!     (`-j KUBE-MARK-MASQ`) and the other system masquerades them — then
//!     `[-d hostIP] -p P --dport H -j DNAT --to-destination pod:port`;
//!     jumped to from `WASM-CNI-PREROUTING` and `WASM-CNI-OUTPUT` by
//!     `[conditions] -p P --dport H`, where the conditions are the
//!     family's `conditionsV4` / `conditionsV6` (`[!] -s`, `[!] -d`,
//!     `[!] -i`).
//!
//! The mark is set in `nat` PREROUTING/OUTPUT on a connection's first
//! packet, so the masquerade decision in POSTROUTING covers the whole
//! connection; the bit is only ever set (`--set-xmark M/M`), never cleared,
//! as in the reference portmap plugin, so a bit shared with kube-proxy's
//! `KUBE-MARK-MASQ` (0x4000) means the same thing to both. Chains `-S` of
//! an earlier layout (host-port masquerade by conntrack state) are still
//! removed with an attachment's host ports.
//!
//! Every rule in the per-attachment chains, and every jump to them, carries
//! `-m comment --comment "<owner.comment()>"`, so DEL, CHECK and GC select
//! an attachment's rules by the tag that starts the comment; the kind is the
//! suffix of the chain the rule is in or jumps to. An addition is one
//! `iptables-restore --noflush -w` per family, built from an `iptables-save
//! -t nat` taken under a lock (`/run/wasm-cni/iptables.lock`): chains are
//! declared only when missing (declaring an existing chain would flush it),
//! rules already there are not added again, and every check (host ports
//! taken, `externalSetMarkChain` missing) runs for both families before
//! either is written; should the second family's transaction fail anyway,
//! what the first one added is taken out again. A removal deletes the
//! jumps, then flushes and deletes the attachment's chains in the same
//! transaction.
//!
//! Every DEL (and GC, and CHECK's listing) asks each installed backend,
//! so a node that never used this one would pay for two `iptables-save`
//! runs per DEL. The first addition therefore leaves the marker
//! `/run/wasm-cni/iptables.used.<netns cookie>`, one per network namespace
//! (the cookie, unlike the namespace's inode number, is never reused by a
//! later namespace; written before the rules, so a crash in
//! between cannot leave rules the marker does not announce); without it,
//! remove, list and GC return at once without running anything. `/run` is
//! a tmpfs: the marker goes at reboot together with the rules it stands
//! for, which live only in the kernel.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};

use super::{
    parse_protocol, protocol_name, stale, Condition, Firewall, Masquerade, MatchField, Owned,
    Owner, PortMapping, PortOptions, Protocol, RuleKind,
};
use crate::bindings::{IpAddress, IpNet};
use crate::error::{code, Error, Result};
use crate::exec;

/// Our chains jumped to from the built-in chains.
pub const POSTROUTING: &str = "WASM-CNI-POSTROUTING";
pub const PREROUTING: &str = "WASM-CNI-PREROUTING";
pub const OUTPUT: &str = "WASM-CNI-OUTPUT";
/// Prefix of every chain of ours.
pub const CHAIN_PREFIX: &str = "WASM-CNI-";
/// The comment on the three jumps from the built-in chains.
pub const BASE_COMMENT: &str = "wasm-cni: pod masquerade and host ports";
/// The shared chain masquerading host-port connections by their mark.
pub const HOSTPORT_MASQ: &str = "WASM-CNI-HOSTPORT-MASQ";
/// The comment on the jump to [`HOSTPORT_MASQ`] and on its rules.
pub const MASQ_COMMENT: &str = "wasm-cni: host-port connections marked for masquerade";
/// Present once this backend has added rules since boot (see the module
/// doc); the current network namespace's cookie is appended.
pub const USED_MARKER: &str = "/run/wasm-cni/iptables.used";

const LOCK_DIR: &str = "/run/wasm-cni";
const LOCK_FILE: &str = "/run/wasm-cni/iptables.lock";

/// Suffix of the per-attachment masquerade chain.
const MASQ: char = 'M';
/// Suffix of the per-attachment host-port DNAT chain.
const DNAT: char = 'D';
/// Suffix of the per-attachment host-port masquerade chain of an earlier
/// layout; no longer created, still removed.
const SNAT: char = 'S';

fn suffixes(kind: RuleKind) -> &'static [char] {
    match kind {
        RuleKind::Masquerade => &[MASQ],
        RuleKind::PortMappings => &[DNAT, SNAT],
    }
}

/// `WASM-CNI-<16 hex>-<kind>` (27 characters) for a tag
/// `wc:<8 hex>:<16 hex>`; None for anything else.
fn tag_chain(tag: &str, kind: char) -> Option<String> {
    let hex = tag.strip_prefix("wc:")?.split(':').nth(1)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("{CHAIN_PREFIX}{hex}-{kind}"))
}

fn owner_chain(owner: &Owner, kind: char) -> String {
    // The tag always has this form.
    tag_chain(&owner.tag(), kind).unwrap_or_else(|| format!("{CHAIN_PREFIX}invalid-{kind}"))
}

/// The kind suffix of a per-attachment chain name.
fn attachment_kind(chain: &str) -> Option<char> {
    let rest = chain.strip_prefix(CHAIN_PREFIX)?;
    let (hex, kind) = rest.split_once('-')?;
    let mut k = kind.chars();
    let kind = k.next()?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && k.next().is_none())
        .then_some(kind)
}

/// The comment as written: characters iptables-restore or -save might quote
/// or escape differently become `_` (the tag, first, is plain ASCII).
fn comment_text(owner: &Owner) -> String {
    owner
        .comment()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ._:=/@+,-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const ALL: [Family; 2] = [Family::V4, Family::V6];

    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
    fn multicast(self) -> &'static str {
        match self {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }
}

/// `ip/32` or `ip/128`, as iptables-save prints a host.
fn host(ip: IpAddr) -> String {
    format!("{ip}/{}", Family::of(ip).host_len())
}

/// The network of `n` (host bits cleared) as `addr/len`.
fn network(n: &IpNet) -> String {
    let ip = n.ip();
    let bits: u32 = if ip.is_ipv4() { 32 } else { 128 };
    let len = u32::from(n.prefix_len).min(bits);
    let v: u128 = match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    };
    let mask = if len == 0 {
        0
    } else {
        (u128::MAX << (bits - len)) & (u128::MAX >> (128 - bits))
    };
    let net = v & mask;
    let addr = if ip.is_ipv4() {
        IpAddr::from((net as u32).to_be_bytes())
    } else {
        IpAddr::from(net.to_be_bytes())
    };
    format!("{addr}/{len}")
}

/// `markMasqBit` as iptables-save prints the mark and its mask:
/// `0x2000/0x2000` for bit 13.
fn mark_text(bit: u8) -> Result<String> {
    let value = 1u32
        .checked_shl(bit.into())
        .ok_or_else(|| Error::config(format!("markMasqBit: {bit} is outside 0-31")))?;
    Ok(format!("{value:#x}/{value:#x}"))
}

/// The words of one family's conditions, in the order iptables-save
/// prints them (`[!] -s`, `[!] -d`, `[!] -i`). iptables takes each of
/// these once per rule, so a second condition on the same field is
/// refused; `-s 0.0.0.0/0` (any) adds nothing, and its negation, which
/// would match no traffic at all, is refused.
fn condition_words(key: &str, conditions: &[Condition]) -> Result<Vec<String>> {
    let mut slots: [Option<(bool, String)>; 3] = [None, None, None];
    for c in conditions {
        let (slot, value, any) = match &c.field {
            MatchField::Source(n) => (0, network(n), n.prefix_len == 0),
            MatchField::Destination(n) => (1, network(n), n.prefix_len == 0),
            MatchField::InInterface(name) => (2, name.clone(), false),
        };
        let flag = ["-s", "-d", "-i"][slot];
        let shown = format!("{}{flag} {value}", if c.negate { "! " } else { "" });
        if any {
            if c.negate {
                return Err(Error::config(format!(
                    "{key}: \"{shown}\" matches no traffic; remove the mappings instead"
                )));
            }
            continue;
        }
        if let Some((neg, old)) = &slots[slot] {
            return Err(Error::config(format!(
                "{key}: \"{shown}\" and \"{}{flag} {old}\": iptables takes one {flag} per rule",
                if *neg { "! " } else { "" }
            )));
        }
        slots[slot] = Some((c.negate, value));
    }
    let mut words = Vec::new();
    for (slot, flag) in slots.into_iter().zip(["-s", "-d", "-i"]) {
        if let Some((negate, value)) = slot {
            if negate {
                words.push("!".to_string());
            }
            words.push(flag.to_string());
            words.push(value);
        }
    }
    Ok(words)
}

/// `ip:port`, `[ip6]:port`.
fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    Some((ip.parse().ok()?, port.parse().ok()?))
}

/// `a.b.c.d/len` into address and prefix length (no prefix: a host).
fn parse_net(s: &str) -> Option<(IpAddr, u8)> {
    match s.split_once('/') {
        Some((a, l)) => Some((a.parse().ok()?, l.parse().ok()?)),
        None => {
            let ip: IpAddr = s.parse().ok()?;
            Some((ip, Family::of(ip).host_len()))
        }
    }
}

/// Splits a rule the way iptables-restore does: whitespace-separated words,
/// `"…"` quoting, backslash escapes.
fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// A word as iptables-restore reads it back.
fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!._:/,[]-".contains(&b))
    {
        word.to_string()
    } else {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// One `-A` line of `iptables-save`.
#[derive(Debug, Clone)]
struct Rule {
    /// The line as saved, to delete it with `-D`.
    raw: String,
    chain: String,
    /// The words after the chain name.
    args: Vec<String>,
}

impl Rule {
    /// The value after `flag`, unless the flag is negated.
    fn opt(&self, flag: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == flag)?;
        if i > 0 && self.args[i - 1] == "!" {
            return None;
        }
        self.args.get(i + 1).map(String::as_str)
    }
    fn comment(&self) -> &str {
        self.opt("--comment").unwrap_or_default()
    }
    fn target(&self) -> &str {
        self.opt("-j").unwrap_or_default()
    }
}

/// The `nat` table as `iptables-save -t nat` prints it.
#[derive(Debug, Default)]
struct Table {
    chains: BTreeSet<String>,
    rules: Vec<Rule>,
}

impl Table {
    fn parse(text: &str) -> Table {
        let mut t = Table::default();
        let mut in_nat = false;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                in_nat = name == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    t.chains.insert(name.to_string());
                }
            } else if line.starts_with("-A ") {
                let mut words = tokenize(line);
                if words.len() >= 2 {
                    let args = words.split_off(2);
                    t.rules.push(Rule {
                        raw: line.to_string(),
                        chain: words.pop().unwrap_or_default(),
                        args,
                    });
                }
            }
        }
        t
    }

    fn has_rule(&self, chain: &str, args: &[String]) -> bool {
        self.rules
            .iter()
            .any(|r| r.chain == chain && r.args == args)
    }
}

/// The words of a rule, as we write it and as iptables-save prints it.
struct Spec(Vec<String>);

impl Spec {
    fn new() -> Spec {
        Spec(Vec::new())
    }
    fn arg(mut self, words: &[&str]) -> Spec {
        self.0.extend(words.iter().map(|w| w.to_string()));
        self
    }
    fn src(self, s: Option<&str>) -> Spec {
        match s {
            Some(s) => self.arg(&["-s", s]),
            None => self,
        }
    }
    fn dst(self, d: Option<&str>) -> Spec {
        match d {
            Some(d) => self.arg(&["-d", d]),
            None => self,
        }
    }
    fn port(self, p: Protocol, port: u16) -> Spec {
        let p = protocol_name(p);
        self.arg(&["-p", p, "-m", p, "--dport", &port.to_string()])
    }
    fn comment(self, c: &str) -> Spec {
        self.arg(&["-m", "comment", "--comment", c])
    }
    fn words(mut self, words: &[String]) -> Spec {
        self.0.extend_from_slice(words);
        self
    }
    fn jump(self, target: &str) -> Spec {
        self.arg(&["-j", target])
    }
}

/// One `iptables-restore --noflush` transaction, built against a saved
/// table so it only adds what is missing.
struct Batch<'a> {
    table: &'a Table,
    chains: Vec<String>,
    lines: Vec<String>,
    added: Vec<(String, Vec<String>)>,
}

impl<'a> Batch<'a> {
    fn new(table: &'a Table) -> Self {
        Batch {
            table,
            chains: Vec::new(),
            lines: Vec::new(),
            added: Vec::new(),
        }
    }

    fn chain(&mut self, name: &str) {
        if !self.table.chains.contains(name) && !self.chains.iter().any(|c| c == name) {
            self.chains.push(name.to_string());
        }
    }

    fn exists(&self, chain: &str, args: &[String]) -> bool {
        self.table.has_rule(chain, args) || self.added.iter().any(|(c, a)| c == chain && a == args)
    }

    fn line(&mut self, op: &str, chain: &str, spec: &Spec) {
        let words: Vec<String> = spec.0.iter().map(|w| quote(w)).collect();
        self.lines.push(format!("{op} {chain} {}", words.join(" ")));
    }

    /// Appends the rule unless it is there.
    fn append(&mut self, chain: &str, spec: Spec) {
        if !self.exists(chain, &spec.0) {
            self.line("-A", chain, &spec);
            self.added.push((chain.to_string(), spec.0));
        }
    }

    /// Inserts the rule first in the chain unless it is there.
    fn insert(&mut self, chain: &str, spec: Spec) {
        if !self.exists(chain, &spec.0) {
            self.line("-I", &format!("{chain} 1"), &spec);
            self.added.push((chain.to_string(), spec.0));
        }
    }

    /// Our three entry chains and the one jump to each from its built-in.
    fn base(&mut self) {
        for chain in [POSTROUTING, PREROUTING, OUTPUT] {
            self.chain(chain);
        }
        self.append(
            "POSTROUTING",
            Spec::new().comment(BASE_COMMENT).jump(POSTROUTING),
        );
        for (builtin, ours) in [("PREROUTING", PREROUTING), ("OUTPUT", OUTPUT)] {
            let local = Spec::new().arg(&["-m", "addrtype", "--dst-type", "LOCAL"]);
            self.append(builtin, local.comment(BASE_COMMENT).jump(ours));
        }
    }

    /// The shared chain masquerading connections marked with `mark`, the
    /// jump to it first in `POSTROUTING`, and the rule for this mark.
    fn masquerade_mark(&mut self, mark: &str) {
        self.chain(HOSTPORT_MASQ);
        self.insert(
            "POSTROUTING",
            Spec::new().comment(MASQ_COMMENT).jump(HOSTPORT_MASQ),
        );
        let rule = Spec::new()
            .arg(&["-m", "mark", "--mark", mark])
            .comment(MASQ_COMMENT)
            .jump("MASQUERADE");
        self.append(HOSTPORT_MASQ, rule);
    }

    fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.lines.is_empty()
    }

    /// The transaction taking this batch out again: its rules in chains
    /// that were there before, then the chains it declared.
    fn undo_script(&self) -> String {
        let mut s = String::from("*nat\n");
        for (chain, words) in &self.added {
            if !self.chains.contains(chain) {
                let words: Vec<String> = words.iter().map(|w| quote(w)).collect();
                s += &format!("-D {chain} {}\n", words.join(" "));
            }
        }
        for c in &self.chains {
            s += &format!("-F {c}\n");
        }
        for c in &self.chains {
            s += &format!("-X {c}\n");
        }
        s += "COMMIT\n";
        s
    }

    fn script(&self) -> String {
        let mut s = String::from("*nat\n");
        for c in &self.chains {
            s += &format!(":{c} - [0:0]\n");
        }
        for l in &self.lines {
            s += l;
            s.push('\n');
        }
        s += "COMMIT\n";
        s
    }
}

/// The binary, from `$PATH` or the usual sbin directories.
fn find(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

fn missing(binary: &str) -> Error {
    Error::io(format!(
        "{binary} not found (looked in $PATH, /usr/sbin, /sbin, /usr/bin, /bin): \
         install iptables or use the nftables backend"
    ))
}

/// Whether a failing `*-save` says the family or table is not there at all
/// (no IPv6, no nat module): then there are no rules of ours either.
fn unavailable(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "does not exist",
        "not supported",
        "can't initialize",
        "cannot initialize",
        "unable to open",
    ]
    .iter()
    .any(|p| s.contains(p))
}

/// `<family>-save -t nat`, parsed; None when the binary is missing or the
/// table cannot exist on this node.
fn save(family: Family) -> Result<Option<Table>> {
    let name = family.save();
    let Some(bin) = find(name) else {
        return Ok(None);
    };
    let out = Command::new(&bin)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("exec {}: {e}", bin.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if unavailable(&stderr) {
            tracing::debug!("{name} -t nat: {}", stderr.trim());
            return Ok(None);
        }
        return Err(Error::io(format!("{name} -t nat: {}", stderr.trim())));
    }
    Ok(Some(Table::parse(&String::from_utf8_lossy(&out.stdout))))
}

/// Feeds `script` to `<family>-restore --noflush -w`. A failure names the
/// command, its stderr and the rule on the line it reports.
fn restore(family: Family, script: &str) -> Result<()> {
    let name = family.restore();
    let bin = find(name).ok_or_else(|| missing(name))?;
    let run = |args: &[&str]| exec::run(&bin, args, &[], script.as_bytes());
    let mut args = vec!["--noflush", "-w"];
    let mut out = run(&args)?;
    let old = |o: &std::process::Output| {
        let e = String::from_utf8_lossy(&o.stderr);
        e.contains("unrecognized option") || e.contains("invalid option")
    };
    if !out.status.success() && old(&out) {
        // iptables before 1.6.2 has no -w for restore.
        args.pop();
        out = run(&args)?;
    }
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let rule = failed_line(&stderr)
        .and_then(|n| script.lines().nth(n.checked_sub(1)?))
        .map(|l| format!(" (rule: {l})"))
        .unwrap_or_default();
    Err(
        Error::io(format!("{name} {}: {stderr}{rule}", args.join(" ")))
            .with_details(script.to_string()),
    )
}

/// N of `… line N failed`.
fn failed_line(stderr: &str) -> Option<usize> {
    let words: Vec<&str> = stderr.split_whitespace().collect();
    words.windows(3).find_map(|w| {
        (w[0] == "line" && w[2].starts_with("failed"))
            .then(|| w[1].trim_end_matches(':').parse().ok())
            .flatten()
    })
}

/// Serialises our save-then-restore sequences between invocations.
fn lock() -> Result<Flock<File>> {
    fs::create_dir_all(LOCK_DIR).map_err(|e| Error::io(format!("create {LOCK_DIR}: {e}")))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .map_err(|e| Error::io(format!("open {LOCK_FILE}: {e}")))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io(format!("lock {LOCK_FILE}: {e}")))
}

/// The families present in `ips`, in order.
fn families(ips: impl Iterator<Item = IpAddr>) -> Vec<Family> {
    let mut seen: Vec<Family> = ips.map(Family::of).collect();
    seen.sort_by_key(|f| *f == Family::V6);
    seen.dedup();
    seen
}

/// A DNAT rule of any attachment, for conflicts and listing.
struct Dnat {
    comment: String,
    map: PortMapping,
}

fn parse_dnat(r: &Rule) -> Option<Dnat> {
    if r.target() != "DNAT" || attachment_kind(&r.chain) != Some(DNAT) {
        return None;
    }
    let host_ip = match r.opt("-d") {
        Some(d) => Some(IpAddress::from(parse_net(d)?.0)),
        None => None,
    };
    let (pod, port) = parse_endpoint(r.opt("--to-destination")?)?;
    Some(Dnat {
        comment: r.comment().to_string(),
        map: PortMapping {
            host_port: r.opt("--dport")?.parse().ok()?,
            container_port: port,
            protocol: parse_protocol(r.opt("-p")?)?,
            host_ip,
            container_ip: pod.into(),
        },
    })
}

/// A masquerade entry from `-s pod -d subnet -j RETURN` in a `-M` chain.
fn parse_masq(r: &Rule) -> Option<Masquerade> {
    if r.target() != "RETURN" || attachment_kind(&r.chain) != Some(MASQ) {
        return None;
    }
    let (pod, _) = parse_net(r.opt("-s")?)?;
    let prefix_len = match r.opt("-d") {
        Some(d) => parse_net(d)?.1,
        None => 0,
    };
    Some(Masquerade {
        source: IpNet {
            addr: pod.into(),
            prefix_len,
        },
    })
}

/// Deleting, in one transaction, every chain of `kind` of the tags picked by
/// `pick` (a comment's first word), with the jumps to them. `also` adds a
/// tag whose chains go even without rules.
fn removal(
    table: &Table,
    kind: RuleKind,
    pick: &dyn Fn(&str) -> bool,
    also: Option<&str>,
) -> String {
    let mut tags: BTreeSet<String> = table
        .rules
        .iter()
        .filter(|r| pick(r.comment()))
        .filter_map(|r| r.comment().split(' ').next().map(str::to_string))
        .collect();
    tags.extend(also.map(str::to_string));
    let chains: BTreeSet<String> = tags
        .iter()
        .flat_map(|t| suffixes(kind).iter().filter_map(|k| tag_chain(t, *k)))
        .filter(|c| table.chains.contains(c))
        .collect();
    if chains.is_empty() {
        return String::new();
    }
    let mut s = String::from("*nat\n");
    for r in &table.rules {
        if chains.contains(r.target()) && !chains.contains(&r.chain) {
            if let Some(rest) = r.raw.strip_prefix("-A ") {
                s += &format!("-D {rest}\n");
            }
        }
    }
    for c in &chains {
        s += &format!("-F {c}\n");
    }
    for c in &chains {
        s += &format!("-X {c}\n");
    }
    s += "COMMIT\n";
    s
}

pub struct Iptables {
    /// [`USED_MARKER`], or another path for tests.
    marker: PathBuf,
}

impl Iptables {
    /// The backend of the current network namespace: its marker is
    /// [`USED_MARKER`] with the namespace's cookie, so using iptables in one
    /// namespace costs nothing to the others, nor to a namespace created
    /// after one that used it is gone. Without cookies (Linux < 5.14), the
    /// one marker of the machine.
    pub fn new() -> Self {
        match crate::kernel::netns::cookie() {
            Some(cookie) => Self::with_marker(format!("{USED_MARKER}.{cookie}")),
            None => Self::with_marker(USED_MARKER),
        }
    }

    /// A backend that records its first use at `marker` instead of
    /// [`USED_MARKER`].
    pub fn with_marker(marker: impl Into<PathBuf>) -> Self {
        Iptables {
            marker: marker.into(),
        }
    }

    /// Whether this backend may have rules on the node: its marker exists
    /// (or cannot be looked at, in which case the rules are read anyway).
    fn used(&self) -> bool {
        !matches!(self.marker.try_exists(), Ok(false))
    }

    fn mark_used(&self) -> Result<()> {
        if let Ok(true) = self.marker.try_exists() {
            return Ok(());
        }
        let show = self.marker.display();
        if let Some(dir) = self.marker.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}: {e}", dir.display())))?;
        }
        fs::write(&self.marker, b"").map_err(|e| Error::io(format!("write the marker {show}: {e}")))
    }

    /// Removes, per family, the chains of `kind` of the tags `pick` selects.
    fn delete_where(
        &self,
        kind: RuleKind,
        pick: &dyn Fn(&str) -> bool,
        also: Option<&str>,
    ) -> Result<()> {
        if !self.used() || !Family::ALL.iter().any(|f| find(f.save()).is_some()) {
            return Ok(());
        }
        let _lock = lock()?;
        for family in Family::ALL {
            let Some(table) = save(family)? else { continue };
            let script = removal(&table, kind, pick, also);
            if !script.is_empty() {
                restore(family, &script)?;
            }
        }
        Ok(())
    }

    /// Builds one batch per family against the saved tables, then applies
    /// them; nothing is written unless every family's batch was built, and
    /// a family that fails to apply takes the ones applied before it out
    /// again.
    fn add(&self, fams: &[Family], build: impl Fn(Family, &mut Batch) -> Result<()>) -> Result<()> {
        if fams.is_empty() {
            return Ok(());
        }
        for family in fams {
            for bin in [family.save(), family.restore()] {
                if find(bin).is_none() {
                    return Err(missing(bin));
                }
            }
        }
        let _lock = lock()?;
        let mut tables = Vec::new();
        for &family in fams {
            let table = save(family)?.ok_or_else(|| {
                Error::io(format!(
                    "{} -t nat: the nat table is not available",
                    family.save()
                ))
            })?;
            tables.push((family, table));
        }
        let mut scripts = Vec::new();
        for (family, table) in &tables {
            let mut batch = Batch::new(table);
            batch.base();
            build(*family, &mut batch)?;
            if !batch.is_empty() {
                scripts.push((*family, batch.script(), batch.undo_script()));
            }
        }
        self.mark_used()?;
        let mut applied: Vec<(Family, String)> = Vec::new();
        for (family, script, undo) in scripts {
            if let Err(e) = restore(family, &script) {
                for (f, u) in applied.iter().rev() {
                    if let Err(u_err) = restore(*f, u) {
                        tracing::warn!("take back the {} rules: {}", f.restore(), u_err.msg);
                    }
                }
                return Err(e);
            }
            applied.push((family, undo));
        }
        Ok(())
    }
}

impl Default for Iptables {
    fn default() -> Self {
        Self::new()
    }
}

fn overlaps(a: Option<IpAddress>, b: Option<IpAddress>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl Firewall for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn add_masquerade(&mut self, owner: &Owner, rules: &[Masquerade]) -> Result<()> {
        let c = comment_text(owner);
        let chain = owner_chain(owner, MASQ);
        let fams = families(rules.iter().map(|r| r.source.ip()));
        self.add(&fams, |family, batch| {
            batch.chain(&chain);
            for r in rules.iter().filter(|r| Family::of(r.source.ip()) == family) {
                let pod = host(r.source.ip());
                let subnet = network(&r.source);
                // Kept sources first, so a later subnet of the same pod
                // still precedes its MASQUERADE rule.
                let dst = (r.source.prefix_len > 0).then_some(subnet.as_str());
                let keep = Spec::new()
                    .src(Some(&pod))
                    .dst(dst)
                    .comment(&c)
                    .jump("RETURN");
                batch.insert(&chain, keep);
                let masq = Spec::new()
                    .src(Some(&pod))
                    .arg(&["!", "-d", family.multicast()])
                    .comment(&c)
                    .jump("MASQUERADE");
                batch.append(&chain, masq);
                batch.append(
                    POSTROUTING,
                    Spec::new().src(Some(&pod)).comment(&c).jump(&chain),
                );
            }
            Ok(())
        })
        .map_err(|e| e.context("add masquerade"))
    }

    fn add_port_mappings(
        &mut self,
        owner: &Owner,
        maps: &[PortMapping],
        opts: &PortOptions,
    ) -> Result<()> {
        let c = comment_text(owner);
        let dnat = owner_chain(owner, DNAT);
        let fams = families(maps.iter().map(|m| m.container_ip.into()));
        let conditions_v4 = condition_words("conditionsV4", &opts.conditions_v4)?;
        let conditions_v6 = condition_words("conditionsV6", &opts.conditions_v6)?;
        // What flags a connection for masquerading: our mark, or a jump to
        // the chain of the system that masquerades it.
        let (flag, own_mark) = match &opts.external_set_mark_chain {
            Some(chain) => (vec!["-j".to_string(), chain.clone()], None),
            None => {
                let mark = mark_text(opts.mark_masq_bit)?;
                let words = ["-j", "MARK", "--set-xmark", &mark].map(str::to_string);
                (words.to_vec(), Some(mark))
            }
        };
        self.add(&fams, |family, batch| {
            let ours: Vec<&PortMapping> = maps
                .iter()
                .filter(|m| Family::of(m.container_ip.into()) == family)
                .collect();
            // The sources whose connections are masqueraded; `None` is any.
            let sources: Vec<Option<String>> = if opts.masq_all {
                vec![None]
            } else if opts.snat {
                let mut s: Vec<Option<String>> = opts
                    .subnets
                    .iter()
                    .filter(|n| Family::of(n.ip()) == family)
                    .map(|n| (n.prefix_len > 0).then(|| network(n)))
                    .collect();
                if family == Family::V4 {
                    s.push(Some("127.0.0.0/8".into()));
                }
                s
            } else {
                vec![]
            };
            if !sources.is_empty() {
                if let Some(chain) = &opts.external_set_mark_chain {
                    if !batch.table.chains.contains(chain) {
                        return Err(Error::config(format!(
                            "externalSetMarkChain: chain {chain} does not exist in the nat \
                             table of {} (it is created by the system that masquerades the \
                             marked connections, e.g. kube-proxy's KUBE-MARK-MASQ)",
                            family.save().trim_end_matches("-save")
                        )));
                    }
                }
            }
            let conditions = match family {
                Family::V4 => &conditions_v4,
                Family::V6 => &conditions_v6,
            };
            let existing: Vec<Dnat> = batch.table.rules.iter().filter_map(parse_dnat).collect();
            batch.chain(&dnat);
            for (i, m) in ours.iter().enumerate() {
                let pod: IpAddr = m.container_ip.into();
                let same_key = |o: &PortMapping| {
                    o.protocol == m.protocol
                        && o.host_port == m.host_port
                        && overlaps(o.host_ip, m.host_ip)
                };
                let clash = existing
                    .iter()
                    .filter(|e| same_key(&e.map))
                    .find(|e| !owner.owns(&e.comment) || e.map != **m)
                    .map(|e| {
                        let to = endpoint(e.map.container_ip.into(), e.map.container_port);
                        format!("{to} ({})", e.comment)
                    })
                    .or_else(|| {
                        ours[..i]
                            .iter()
                            .copied()
                            .find(|o| same_key(o) && *o != *m)
                            .map(|o| endpoint(o.container_ip.into(), o.container_port))
                    });
                if let Some(other) = clash {
                    return Err(Error::new(
                        code::ALREADY_EXISTS,
                        format!(
                            "portMappings: host port {}/{}{} is already mapped to {other}",
                            m.host_port,
                            protocol_name(m.protocol),
                            m.host_ip.map(|h| format!(" on {h}")).unwrap_or_default()
                        ),
                    ));
                }
                let hip = m.host_ip.map(|h| host(h.into()));
                // Flagged first (inserted at the top of the chain, so also
                // ahead of a DNAT rule an earlier addition left), then DNAT.
                for src in &sources {
                    let rule = Spec::new()
                        .src(src.as_deref())
                        .dst(hip.as_deref())
                        .port(m.protocol, m.host_port)
                        .comment(&c)
                        .words(&flag);
                    batch.insert(&dnat, rule);
                }
                let to = endpoint(pod, m.container_port);
                let rule = Spec::new()
                    .dst(hip.as_deref())
                    .port(m.protocol, m.host_port)
                    .comment(&c)
                    .arg(&["-j", "DNAT", "--to-destination", &to]);
                batch.append(&dnat, rule);
                for entry in [PREROUTING, OUTPUT] {
                    let jump = Spec::new()
                        .words(conditions)
                        .port(m.protocol, m.host_port)
                        .comment(&c)
                        .jump(&dnat);
                    batch.append(entry, jump);
                }
            }
            if let Some(mark) = &own_mark {
                if !sources.is_empty() && !ours.is_empty() {
                    batch.masquerade_mark(mark);
                }
            }
            Ok(())
        })
        .map_err(|e| {
            if e.code == code::IO_FAILURE {
                e.context("add port mappings")
            } else {
                e
            }
        })
    }

    fn remove(&mut self, owner: &Owner, kind: RuleKind) -> Result<()> {
        let tag = owner.tag();
        self.delete_where(kind, &|c| owner.owns(c), Some(&tag))
            .map_err(|e| e.context(format!("remove the iptables rules of {tag}")))
    }

    fn list(&mut self, owner: &Owner, kind: RuleKind) -> Result<Owned> {
        let mut owned = Owned {
            masquerade: vec![],
            port_mappings: vec![],
        };
        if !self.used() {
            return Ok(owned);
        }
        for family in Family::ALL {
            let Some(table) = save(family)? else { continue };
            for r in table.rules.iter().filter(|r| owner.owns(r.comment())) {
                match kind {
                    RuleKind::Masquerade => {
                        if r.chain == owner_chain(owner, MASQ) {
                            owned.masquerade.extend(parse_masq(r));
                        }
                    }
                    RuleKind::PortMappings => {
                        if r.chain == owner_chain(owner, DNAT) {
                            owned.port_mappings.extend(parse_dnat(r).map(|d| d.map));
                        }
                    }
                }
            }
        }
        Ok(owned)
    }

    fn gc(&mut self, network: &str, kind: RuleKind, valid: &[Owner]) -> Result<()> {
        self.delete_where(kind, &|c| stale(c, network, valid), None)
            .map_err(|e| e.context(format!("garbage-collect the iptables rules of {network}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_quoting() {
        let line = r#"-A X -s 10.0.0.5/32 -m comment --comment "wc:1:2 net=a id=b if=c" -j RETURN"#;
        let w = tokenize(line);
        assert_eq!(w[7], "wc:1:2 net=a id=b if=c");
        assert_eq!(
            tokenize(&w.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")),
            w
        );
        assert_eq!(tokenize(r#"--comment "a\'b\"c""#), ["--comment", "a'b\"c"]);
        assert_eq!(tokenize("--comment wasm-cni"), ["--comment", "wasm-cni"]);
    }

    #[test]
    fn chains_and_endpoints() {
        let tag = "wc:1234abcd:0123456789abcdef";
        let c = tag_chain(tag, 'M').unwrap();
        assert_eq!(c, "WASM-CNI-0123456789abcdef-M");
        assert!(c.len() <= 28);
        assert_eq!(attachment_kind(&c), Some('M'));
        assert_eq!(attachment_kind(POSTROUTING), None);
        assert_eq!(tag_chain("wasm-cni:", 'M'), None);
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(endpoint(v6, 80), "[fd00::5]:80");
        assert_eq!(parse_endpoint("[fd00::5]:80"), Some((v6, 80)));
        let n = IpNet {
            addr: "10.1.2.3".parse::<IpAddr>().unwrap().into(),
            prefix_len: 20,
        };
        assert_eq!(network(&n), "10.1.0.0/20");
        assert_eq!(failed_line("iptables-restore: line 4 failed"), Some(4));
    }

    fn cond(negate: bool, field: MatchField) -> Condition {
        Condition { negate, field }
    }

    fn net(s: &str) -> IpNet {
        let (a, l) = s.split_once('/').unwrap();
        IpNet {
            addr: a.parse::<IpAddr>().unwrap().into(),
            prefix_len: l.parse().unwrap(),
        }
    }

    #[test]
    fn mark_bits_and_conditions_as_saved() {
        assert_eq!(mark_text(13).unwrap(), "0x2000/0x2000");
        assert_eq!(mark_text(0).unwrap(), "0x1/0x1");
        assert_eq!(mark_text(31).unwrap(), "0x80000000/0x80000000");
        assert_eq!(mark_text(32).unwrap_err().code, code::INVALID_CONFIG);

        // Printed in iptables-save's order whatever the order given.
        let list = [
            cond(true, MatchField::InInterface("eth1".into())),
            cond(false, MatchField::Destination(net("10.1.2.3/16"))),
            cond(true, MatchField::Source(net("192.0.2.7/32"))),
        ];
        assert_eq!(
            condition_words("conditionsV4", &list).unwrap().join(" "),
            "! -s 192.0.2.7/32 -d 10.1.0.0/16 ! -i eth1"
        );
        let any = [cond(false, MatchField::Source(net("0.0.0.0/0")))];
        assert!(condition_words("conditionsV4", &any).unwrap().is_empty());
        let none = [cond(true, MatchField::Source(net("::/0")))];
        let e = condition_words("conditionsV6", &none).unwrap_err();
        assert!(
            e.msg.starts_with("conditionsV6:") && e.msg.contains("no traffic"),
            "{e}"
        );
        let twice = [
            cond(false, MatchField::Source(net("192.0.2.0/24"))),
            cond(true, MatchField::Source(net("192.0.2.7/32"))),
        ];
        let e = condition_words("conditionsV4", &twice).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("one -s per rule"), "{e}");
    }

    #[test]
    fn a_batch_undoes_what_it_added() {
        let save = "*nat\n:POSTROUTING ACCEPT [0:0]\n:WASM-CNI-POSTROUTING - [0:0]\nCOMMIT\n";
        let t = Table::parse(save);
        let mut b = Batch::new(&t);
        b.chain("WASM-CNI-X");
        b.append("WASM-CNI-X", Spec::new().comment("a b").jump("RETURN"));
        b.insert("POSTROUTING", Spec::new().comment("a b").jump("WASM-CNI-X"));
        assert_eq!(
            b.undo_script(),
            "*nat\n-D POSTROUTING -m comment --comment \"a b\" -j WASM-CNI-X\n\
             -F WASM-CNI-X\n-X WASM-CNI-X\nCOMMIT\n"
        );
    }

    #[test]
    fn removal_deletes_jumps_then_chains() {
        let save = "*nat\n:POSTROUTING ACCEPT [0:0]\n:WASM-CNI-POSTROUTING - [0:0]\n\
            :WASM-CNI-0123456789abcdef-M - [0:0]\n\
            -A POSTROUTING -m comment --comment wasm-cni -j WASM-CNI-POSTROUTING\n\
            -A WASM-CNI-0123456789abcdef-M -s 10.0.0.5/32 -d 10.0.0.0/24 -m comment --comment \"wc:1234abcd:0123456789abcdef x\" -j RETURN\n\
            -A WASM-CNI-POSTROUTING -s 10.0.0.5/32 -m comment --comment \"wc:1234abcd:0123456789abcdef x\" -j WASM-CNI-0123456789abcdef-M\n\
            COMMIT\n";
        let t = Table::parse(save);
        assert_eq!(t.rules.len(), 3);
        let m = parse_masq(&t.rules[1]).unwrap();
        assert_eq!(m.source.prefix_len, 24);
        let s = removal(
            &t,
            RuleKind::Masquerade,
            &|c| c.starts_with("wc:1234abcd:"),
            None,
        );
        assert_eq!(
            s,
            "*nat\n-D WASM-CNI-POSTROUTING -s 10.0.0.5/32 -m comment --comment \"wc:1234abcd:0123456789abcdef x\" -j WASM-CNI-0123456789abcdef-M\n\
             -F WASM-CNI-0123456789abcdef-M\n-X WASM-CNI-0123456789abcdef-M\nCOMMIT\n"
        );
        assert_eq!(removal(&t, RuleKind::PortMappings, &|_| true, None), "");
    }
}
