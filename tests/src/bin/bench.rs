//! The benchmark: the same conflists through our plugin directory and
//! through the reference plugins (/usr/lib/cni), driven by the same
//! libcni-style [`Driver`] inside namespaces this program creates.
//!
//! Run with `cargo xtask bench` (root), which installs the plugins into
//! target/dist first. Options (after `--`):
//!
//! ```text
//! --levels 1,50,250,1000   pods already on the node while samples are timed
//! --samples 20             timed ADD -> CHECK -> DEL rounds per level
//! --chains A,B,C           A bridge+host-local, B +ipMasq, C +portmap
//! --threads 16             parallel ADD: threads
//! --parallel-pods 256      parallel ADD: pods
//! --stall 300              give up (and clean up) after this many seconds
//!                          without progress
//! --out target/bench       report.md, samples.csv, latency.png
//! --ours-only              skip the reference plugins (quick runs while
//!                          working on ours; no side-by-side figures)
//! ```
//!
//! Everything happens inside a node namespace and one namespace per pod; the
//! machine's own namespace is never touched. Namespaces and temporary
//! directories are deleted when dropped, on panic (unwinding) and, through a
//! signal thread and a stall watchdog, on Ctrl-C, SIGTERM or a hang.

#[path = "bench/attach.rs"]
mod attach;
#[path = "bench/resident.rs"]
mod resident;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use wasm_cni_tests::{
    addr_only, dist, privileged, reference_dir, result_ips, sh, Attachment, CniError, Driver, Netns,
};

const CNI_VERSION: &str = "1.0.0";
const NETWORK: &str = "benchnet";
const BRIDGE: &str = "wcbench0";
const SUBNET: &str = "10.99.0.0/16";
/// Host ports: background pods 10000+i, sample pods 40000+n.
const BG_PORT: usize = 10000;
const SAMPLE_PORT: usize = 40000;
/// Runs of the RSS and log probes (medians are reported).
const PROBE_RUNS: usize = 5;

// ---------------------------------------------------------------- options

struct Opts {
    levels: Vec<usize>,
    samples: usize,
    chains: Vec<Chain>,
    threads: usize,
    parallel_pods: usize,
    stall: Duration,
    out: PathBuf,
    /// `mcast_snooping` set on every node's bridge after its first pod;
    /// `None`: the kernel's default (on).
    mcast_snooping: Option<bool>,
    /// Leave the reference plugins out.
    ours_only: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            levels: vec![1, 50, 250, 1000],
            samples: 20,
            chains: vec![Chain::A, Chain::B, Chain::C],
            threads: 16,
            parallel_pods: 256,
            stall: Duration::from_secs(300),
            out: workspace().join("target/bench"),
            mcast_snooping: None,
            ours_only: false,
        };
        let mut it = args.iter().filter(|a| *a != "--");
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            let num = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("{flag} {s}: {e}"))
            };
            match flag.as_str() {
                "--levels" => {
                    o.levels = value()?.split(',').map(num).collect::<Result<_, _>>()?;
                    o.levels.sort_unstable();
                    o.levels.dedup();
                }
                "--samples" => o.samples = num(value()?)?.max(1),
                "--chains" => {
                    o.chains = value()?
                        .split(',')
                        .map(|c| Chain::parse(c).ok_or(format!("--chains: unknown chain {c}")))
                        .collect::<Result<_, _>>()?
                }
                "--threads" => o.threads = num(value()?)?.max(1),
                "--parallel-pods" => o.parallel_pods = num(value()?)?,
                "--stall" => o.stall = Duration::from_secs(num(value()?)?.max(10) as u64),
                "--out" => o.out = workspace().join(value()?),
                "--mcast-snooping" => {
                    o.mcast_snooping = match value()?.as_str() {
                        "on" => Some(true),
                        "off" => Some(false),
                        v => return Err(format!("--mcast-snooping {v}: on or off")),
                    }
                }
                "--ours-only" => o.ours_only = true,
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown option {other}")),
            }
        }
        // A Linux bridge takes at most 1024 ports.
        if o.levels.last().is_some_and(|&l| l > 1000) || o.parallel_pods > 1000 {
            return Err("at most 1000 pods per node (a Linux bridge has 1024 ports)".into());
        }
        Ok(o)
    }

    fn command_line(&self) -> String {
        let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let snooping = match self.mcast_snooping {
            Some(true) => " --mcast-snooping on",
            Some(false) => " --mcast-snooping off",
            None => "",
        };
        let ours_only = if self.ours_only { " --ours-only" } else { "" };
        format!(
            "cargo xtask bench -- --levels {} --samples {} --chains {} --threads {} --parallel-pods {}{snooping}{ours_only}",
            list(&self.levels),
            self.samples,
            self.chains
                .iter()
                .map(|c| c.id())
                .collect::<Vec<_>>()
                .join(","),
            self.threads,
            self.parallel_pods
        )
    }
}

const USAGE: &str = "usage: bench [--levels 1,50,250,1000] [--samples 20] [--chains A,B,C] \
[--threads 16] [--parallel-pods 256] [--stall SECS] [--out DIR] [--mcast-snooping on|off] [--ours-only]";

fn workspace() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

// ---------------------------------------------------------------- the subjects

/// One plugin directory under test.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Side {
    Ours,
    Reference,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Reference => "reference",
        }
    }
}

/// The conflists compared.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Chain {
    /// bridge + host-local
    A,
    /// A with `ipMasq: true`
    B,
    /// B + portmap (one hostPort per pod)
    C,
}

impl Chain {
    fn parse(s: &str) -> Option<Chain> {
        match s.trim().to_ascii_uppercase().as_str() {
            "A" => Some(Chain::A),
            "B" => Some(Chain::B),
            "C" => Some(Chain::C),
            _ => None,
        }
    }

    fn id(self) -> &'static str {
        match self {
            Chain::A => "A",
            Chain::B => "B",
            Chain::C => "C",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Chain::A => "bridge + host-local",
            Chain::B => "bridge (ipMasq) + host-local",
            Chain::C => "bridge (ipMasq) + host-local, portmap",
        }
    }

    fn has_firewall(self) -> bool {
        self != Chain::A
    }

    /// The conflist, its host-local store in `data`; with `nft`, the
    /// nftables backend keys on bridge and portmap.
    fn list(self, data: &Path, nft: bool) -> Value {
        let mut bridge = json!({
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": data,
                "ranges": [[{"subnet": SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        });
        let mut plugins = Vec::new();
        if self.has_firewall() {
            bridge["ipMasq"] = json!(true);
            if nft {
                bridge["ipMasqBackend"] = json!("nftables");
            }
        }
        plugins.push(bridge);
        if self == Chain::C {
            let mut portmap = json!({
                "type": "portmap",
                "capabilities": {"portMappings": true},
                "snat": true
            });
            if nft {
                portmap["backend"] = json!("nftables");
            }
            plugins.push(portmap);
        }
        json!({"cniVersion": CNI_VERSION, "name": NETWORK, "plugins": plugins})
    }

    /// The runtime capabilities for a pod with host port `port`.
    fn caps(self, port: usize) -> Value {
        match self {
            Chain::C => json!({"portMappings": [
                {"hostPort": port, "containerPort": 80, "protocol": "tcp"}
            ]}),
            _ => json!({}),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Op {
    Add,
    Check,
    Del,
}

impl Op {
    const ALL: [Op; 3] = [Op::Add, Op::Check, Op::Del];

    fn label(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Check => "CHECK",
            Op::Del => "DEL",
        }
    }
}

// ---------------------------------------------------------------- cleanup and progress

/// The directory holding every temporary file of this run (removed by the
/// signal thread and the watchdog when they end the process).
static TEMP_ROOT: OnceLock<PathBuf> = OnceLock::new();
/// `--mcast-snooping`: set on each latency node's bridge after its first pod.
static MCAST_SNOOPING: OnceLock<bool> = OnceLock::new();
static STARTED: OnceLock<Instant> = OnceLock::new();
/// Milliseconds after [`STARTED`] of the last progress.
static LAST_PROGRESS: AtomicU64 = AtomicU64::new(0);

/// Set when the run is being torn down from the signal thread or the
/// watchdog: working threads park at their next step.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn park_if_stopping() {
    while STOPPING.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn progress() {
    park_if_stopping();
    let t = STARTED.get_or_init(Instant::now).elapsed().as_millis() as u64;
    LAST_PROGRESS.store(t, Ordering::Relaxed);
}

/// A new namespace (none once the teardown has begun).
fn netns(tag: &str) -> Netns {
    park_if_stopping();
    Netns::new(tag)
}

fn temp_dir() -> TempDir {
    match TEMP_ROOT.get() {
        Some(root) => TempDir::new_in(root),
        None => TempDir::new(),
    }
    .expect("temp dir")
}

/// Deletes this process's namespaces (`wc-<tag>-<pid>-<n>`, see [`Netns`])
/// and the temporary root, for when Drop guards will not run. Stderr is
/// silenced first: other threads may still race it for the same namespaces.
fn emergency_cleanup() {
    STOPPING.store(true, Ordering::SeqCst);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let mark = format!("-{}-", std::process::id());
    // Until two passes a second apart find nothing: a thread may be between
    // creating a namespace and parking.
    let mut clean_passes = 0;
    for _ in 0..30 {
        let ours: Vec<String> = wasm_cni_tests::files(Path::new("/run/netns"))
            .into_iter()
            .filter(|n| n.starts_with("wc-") && n.contains(&mark))
            .collect();
        for name in &ours {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        clean_passes = if ours.is_empty() { clean_passes + 1 } else { 0 };
        if clean_passes == 2 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Some(root) = TEMP_ROOT.get() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Ctrl-C, SIGTERM and SIGHUP go to one thread, which cleans up and exits.
/// Children get an empty signal mask (std resets it), so they still die on
/// Ctrl-C as usual.
fn install_signal_thread() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("bench: {sig}: deleting namespaces and temporary files");
            emergency_cleanup();
            std::process::exit(130);
        }
    });
}

/// Ends the run (cleaning up) when nothing progressed for `stall`.
fn install_watchdog(stall: Duration) {
    progress();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = STARTED.get_or_init(Instant::now).elapsed().as_millis() as u64;
        let idle = now.saturating_sub(LAST_PROGRESS.load(Ordering::Relaxed));
        if idle > stall.as_millis() as u64 {
            eprintln!(
                "bench: no progress for {}s (a plugin hangs?): deleting namespaces and temporary files",
                idle / 1000
            );
            emergency_cleanup();
            std::process::exit(3);
        }
    });
}

// ---------------------------------------------------------------- a node

/// A node: its namespace, host-local store, driver and background pods.
/// Dropping it deletes the pod namespaces, then the node's (taking the
/// bridge, veths and firewall rules with it). The store stays until the
/// run's temporary root is removed at the end: removing thousands of
/// reservation files would slow the next node's file creations (ext4
/// without a journal passes over every inode freed in the last 5-35 s
/// before it takes a free one), for either side.
struct Node {
    pods: Vec<Netns>,
    ns: Netns,
    driver: Driver,
    data: PathBuf,
    chain: Chain,
    list: Value,
    /// Whether `list` carries the nftables backend keys.
    nft: bool,
    /// Set when the nftables keys were refused and dropped.
    fallback: Option<String>,
    /// ADDs so far (the first one decides on the fallback).
    adds: usize,
}

impl Node {
    /// A fresh node for `chain`; `nft`: with the nftables backend keys.
    fn new(dir: &Path, chain: Chain, nft: bool) -> Node {
        let ns = netns("bn");
        let data = temp_dir().keep();
        // Ours logs as installed: the `info` level, appended to a file.
        let mut driver = Driver::new(dir, &ns);
        driver.env = vec![(
            "WASM_CNI_LOG_FILE".into(),
            data.join("wasm-cni.log").display().to_string(),
        )];
        let nft = nft && chain.has_firewall();
        let list = chain.list(&data, nft);
        Node {
            pods: Vec::new(),
            ns,
            driver,
            data,
            chain,
            list,
            nft,
            fallback: None,
            adds: 0,
        }
    }

    /// ADD of the chain. When the very first ADD fails with the nftables
    /// keys, it is undone and retried (and every later ADD made) with the
    /// plugin's default backend.
    fn add(&mut self, att: &Attachment, caps: &Value) -> Result<Value, CniError> {
        let first = self.adds == 0;
        self.adds += 1;
        let res = self.driver.add(&self.list, att, caps);
        progress();
        let res = match res {
            Err(e) if first && self.nft => {
                let _ = self.driver.del(&self.list, att, caps, None);
                self.nft = false;
                self.list = self.chain.list(&self.data, false);
                self.fallback = Some(format!(
                    "refused the nftables keys (code {}: {}); ran with its default backend",
                    e.code, e.msg
                ));
                self.driver.add(&self.list, att, caps)
            }
            other => other,
        };
        // The first pod made the bridge.
        if let (true, Ok(_), Some(&on)) = (first, &res, MCAST_SNOOPING.get()) {
            sh(&format!(
                "ip -n {} link set {BRIDGE} type bridge mcast_snooping {}",
                self.ns.name(),
                u8::from(on)
            ));
        }
        res
    }

    fn check(&self, att: &Attachment, caps: &Value, result: &Value) -> Result<(), CniError> {
        let res = self.driver.check(&self.list, att, caps, result);
        progress();
        res
    }

    fn del(&self, att: &Attachment, caps: &Value, result: Option<&Value>) -> Result<(), CniError> {
        let res = self.driver.del(&self.list, att, caps, result);
        progress();
        res
    }

    /// Adds untimed background pods until `n` exist (`bg-ADD` samples).
    fn fill_to(&mut self, n: usize, log: &mut Log, who: (Side, Chain)) -> Result<(), String> {
        let from = self.pods.len();
        while self.pods.len() < n {
            let i = self.pods.len();
            let ns = netns("bp");
            let att = Attachment::new(&format!("bg-{i:05}"), &ns, "eth0");
            let caps = self.chain.caps(BG_PORT + i);
            let t = Instant::now();
            self.add(&att, &caps)
                .map_err(|e| format!("background pod {i}: ADD failed: {}", cni_err(&e)))?;
            log.sample(who, "bg-ADD", i, 0, ms(t));
            self.pods.push(ns);
            if (i + 1).is_multiple_of(50) || i + 1 == n {
                eprintln!(
                    "  [{} {}] {}/{n} background pods",
                    who.1.id(),
                    who.0.label(),
                    i + 1
                );
            }
        }
        if n > from {
            eprintln!(
                "  [{} {}] node has {n} pods ({} added)",
                who.1.id(),
                who.0.label(),
                n - from
            );
        }
        Ok(())
    }

    /// Which firewall backend holds this node's rules, from what is in its
    /// namespace: nftables tables of our own, or CNI chains in iptables.
    fn backend(&self) -> String {
        // Tables of the iptables-nft compatibility layer.
        const XT: [&str; 5] = ["nat", "filter", "mangle", "raw", "security"];
        let tables = self.ns.sh("nft list tables 2>/dev/null || true");
        let own: Vec<&str> = tables
            .lines()
            .filter_map(|l| l.trim().strip_prefix("table "))
            .filter(|t| !t.split_whitespace().nth(1).is_some_and(|n| XT.contains(&n)))
            .collect();
        let chains = self
            .ns
            .sh("iptables-save -t nat 2>/dev/null | grep -cE '^:(WASM-)?CNI-' || true");
        let chains = chains.trim().parse::<usize>().unwrap_or(0);
        let mut parts = Vec::new();
        if !own.is_empty() {
            parts.push(format!("nftables (table {})", own.join(", table ")));
        }
        if chains > 0 {
            parts.push(format!(
                "iptables ({chains} CNI chains in nat, through {})",
                iptables_flavour()
            ));
        }
        if parts.is_empty() {
            "none seen".into()
        } else {
            parts.join(" + ")
        }
    }
}

fn iptables_flavour() -> &'static str {
    static F: OnceLock<String> = OnceLock::new();
    F.get_or_init(|| {
        let v = sh("iptables --version 2>/dev/null || true");
        if v.contains("nf_tables") {
            "iptables-nft".into()
        } else if v.contains("legacy") {
            "iptables-legacy".into()
        } else {
            "iptables".into()
        }
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn cni_err(e: &CniError) -> String {
    format!("code {}: {}", e.code, e.msg)
}

/// A pointer to the known bug behind an error, if it is one.
fn known_issue(msg: &str) -> &'static str {
    if msg.contains("could not check ipv6 dnat") {
        " — a known bug of this reference portmap, fixed upstream after 1.1.1: CHECK of \
         a pod without IPv6 looks for IPv6 rules (containernetworking/plugins#819, #821)"
    } else {
        ""
    }
}

// ---------------------------------------------------------------- samples

/// Every timing of the run, and what went wrong on the way.
#[derive(Default)]
struct Log {
    /// (chain, side, op, pods on the node) -> ms
    latency: BTreeMap<(Chain, Side, Op, usize), Vec<f64>>,
    /// (chain, side, op, pods on the node) -> ms on the 1-pod node, each
    /// sample taken right after the same sample on the node with that many
    latency_beside: BTreeMap<(Chain, Side, Op, usize), Vec<f64>>,
    /// (chain, side, pods on the node) -> ms of the kernel attaching one port
    attach: BTreeMap<(Chain, Side, usize), Vec<f64>>,
    csv: String,
    notes: Vec<String>,
    /// (chain, side) -> backend description
    backends: BTreeMap<(Chain, Side), String>,
    /// Sides and chains that refused the nftables keys.
    fallback: BTreeSet<(Side, Chain)>,
}

impl Log {
    fn sample(&mut self, (side, chain): (Side, Chain), op: &str, pods: usize, n: usize, ms: f64) {
        let _ = writeln!(
            self.csv,
            "{},{},{op},{pods},{n},{ms:.3}",
            side.label(),
            chain.id()
        );
    }

    fn timed(&mut self, who: (Side, Chain), op: Op, pods: usize, n: usize, ms: f64) {
        self.sample(who, op.label(), pods, n, ms);
        self.latency
            .entry((who.1, who.0, op, pods))
            .or_default()
            .push(ms);
    }

    /// A sample on the 1-pod node, taken beside the cell with `level` pods.
    fn timed_beside(&mut self, who: (Side, Chain), op: Op, level: usize, n: usize, ms: f64) {
        self.sample(who, &format!("{}-1pod", op.label()), level, n, ms);
        self.latency_beside
            .entry((who.1, who.0, op, level))
            .or_default()
            .push(ms);
    }

    fn note(&mut self, s: String) {
        eprintln!("  note: {s}");
        if !self.notes.contains(&s) {
            self.notes.push(s);
        }
    }
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: &[f64]) -> Option<f64> {
    let s = sorted(v);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let s = sorted(v);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.clamp(1, s.len().max(1)) - 1).copied()
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(x) if x >= 100.0 => format!("{x:.0} ms"),
        Some(x) if x >= 10.0 => format!("{x:.1} ms"),
        Some(x) => format!("{x:.2} ms"),
    }
}

// ---------------------------------------------------------------- latency

/// The first error of each operation in a cell, and how many failed.
type Failures = BTreeMap<Op, (usize, String)>;

/// One timed round on `node`: a new pod ADDed, CHECKed and DELeted.
/// `record` gets each operation's milliseconds; failures are counted.
fn round(
    node: &mut Node,
    name: &str,
    caps: &Value,
    failures: &mut Failures,
    mut record: impl FnMut(Op, f64),
) {
    let ns = netns("bs");
    let att = Attachment::new(name, &ns, "eth0");
    let t = Instant::now();
    let result = match node.add(&att, caps) {
        Ok(r) => {
            record(Op::Add, ms(t));
            r
        }
        Err(e) => {
            failures.entry(Op::Add).or_insert((0, cni_err(&e))).0 += 1;
            let _ = node.del(&att, caps, None);
            return;
        }
    };
    let t = Instant::now();
    match node.check(&att, caps, &result) {
        Ok(()) => record(Op::Check, ms(t)),
        Err(e) => failures.entry(Op::Check).or_insert((0, cni_err(&e))).0 += 1,
    }
    let t = Instant::now();
    match node.del(&att, caps, Some(&result)) {
        Ok(()) => record(Op::Del, ms(t)),
        Err(e) => failures.entry(Op::Del).or_insert((0, cni_err(&e))).0 += 1,
    }
}

/// One side of one chain: background pods up to each level, then timed
/// ADD -> CHECK -> DEL rounds of sample pods. Each round is followed by one
/// on a second node of the chain that keeps 1 pod, so every cell also
/// measures the 1-pod case under the same conditions: the machine's speed
/// drifts over the minutes between cells, and the ratio of the two in one
/// cell is what growth with the pods costs (see `Report::render_flatness`).
fn latency(side: Side, dir: &Path, chain: Chain, opts: &Opts, log: &mut Log) -> Result<(), String> {
    let who = (side, chain);
    let mut node = Node::new(dir, chain, true);
    let mut beside = Node::new(dir, chain, true);
    beside.fill_to(1, log, who)?;
    let mut port = SAMPLE_PORT;
    for &level in &opts.levels {
        let before = node.pods.len();
        node.fill_to(level, log, who)?;
        if node.pods.len() > before {
            let waited = settle();
            eprintln!(
                "  (waited {:.1} s for an idle machine)",
                waited.as_secs_f64()
            );
        }
        let mut failures = Failures::new();
        let mut beside_failures = Failures::new();
        for s in 0..opts.samples {
            let caps = chain.caps(port);
            port += 1;
            round(
                &mut node,
                &format!("smp-{level}-{s}"),
                &caps,
                &mut failures,
                |op, t| log.timed(who, op, level, s, t),
            );
            round(
                &mut beside,
                &format!("one-{level}-{s}"),
                &caps,
                &mut beside_failures,
                |op, t| log.timed_beside(who, op, level, s, t),
            );
        }
        let summary: Vec<String> = Op::ALL
            .iter()
            .map(|&op| {
                let v = log
                    .latency
                    .get(&(chain, side, op, level))
                    .cloned()
                    .unwrap_or_default();
                format!("{} {}", op.label(), fmt_ms(median(&v)))
            })
            .collect();
        eprintln!(
            "  [{} {}] {level} pods: median {}",
            chain.id(),
            side.label(),
            summary.join(", ")
        );
        match attach::probe(&node.ns, BRIDGE, opts.samples) {
            Ok(times) => {
                for (n, &t) in times.iter().enumerate() {
                    log.sample(who, "attach", level, n, t);
                }
                log.attach.insert((chain, side, level), times);
            }
            Err(e) => log.note(format!(
                "chain {} {}: the kernel attach probe failed at {level} pods: {e}",
                chain.id(),
                side.label()
            )),
        }
        for (on, failed) in [("", failures), (" (1-pod node)", beside_failures)] {
            for (op, (n, msg)) in failed {
                log.note(format!(
                    "chain {} {}: {n} of {} sample {} failed at {level} pods{on} (first: {msg}){}",
                    chain.id(),
                    side.label(),
                    opts.samples,
                    op.label(),
                    known_issue(&msg)
                ));
            }
        }
    }
    if chain.has_firewall() {
        let mut backend = node.backend();
        if let Some(f) = &node.fallback {
            backend = format!("{backend}; {f}");
            log.fallback.insert(who);
        } else if backend.starts_with("iptables") {
            backend.push_str("; the nftables keys were accepted but ignored");
        }
        log.backends.insert((chain, side), backend);
    }
    Ok(())
}

// ---------------------------------------------------------------- parallel ADD

struct Throughput {
    pods: usize,
    ok: usize,
    secs: f64,
    unique_ips: usize,
    first_error: Option<String>,
    backend: String,
}

/// `opts.parallel_pods` pods of chain C added by `opts.threads` threads
/// (each with its own driver) on a fresh node; `nft` as in [`Node::new`].
fn throughput(dir: &Path, opts: &Opts, nft: bool) -> Throughput {
    let node = Node::new(dir, Chain::C, nft);
    let n = opts.parallel_pods;
    let pods: Vec<Netns> = (0..n)
        .map(|_| {
            progress();
            netns("bp")
        })
        .collect();
    let started = Instant::now();
    let results: Vec<Result<Value, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..opts.threads.min(n.max(1)))
            .map(|t| {
                let (pods, list, driver) = (&pods, &node.list, &node.driver);
                scope.spawn(move || {
                    (t..n)
                        .step_by(opts.threads)
                        .map(|i| {
                            let att = Attachment::new(&format!("par-{i:05}"), &pods[i], "eth0");
                            let res = driver.add(list, &att, &Chain::C.caps(BG_PORT + i));
                            progress();
                            res.map_err(|e| cni_err(&e))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let ips: HashSet<String> = results
        .iter()
        .flatten()
        .flat_map(result_ips)
        .map(|a| addr_only(&a).to_string())
        .collect();
    Throughput {
        pods: n,
        ok: results.iter().filter(|r| r.is_ok()).count(),
        secs,
        unique_ips: ips.len(),
        first_error: results.iter().find_map(|r| r.clone().err()),
        backend: node.backend(),
    }
}

// ---------------------------------------------------------------- peak RSS

/// A peak RSS in MB, and whether it was no more than the probe's baseline.
type Rss = (f64, bool);

/// The child side of [`peak_rss`]: one ADD of `list_kind` through `dir` on a
/// fresh node; prints the children's peak RSS (KiB) before and after.
fn rss_probe(dir: &Path, kind: &str) -> Result<(), String> {
    use nix::sys::resource::{getrusage, UsageWho};
    let maxrss = || {
        getrusage(UsageWho::RUSAGE_CHILDREN)
            .map(|u| u.max_rss())
            .unwrap_or(0)
    };
    let node = Node::new(dir, Chain::A, false);
    let pod = netns("bp");
    let att = Attachment::new("rss-0", &pod, "eth0");
    let list = match kind {
        "chain-a" => node.list.clone(),
        // host-local run directly, with the bridge plugin's configuration.
        "host-local" => {
            let mut l = node.list.clone();
            l["plugins"][0]["type"] = json!("host-local");
            l
        }
        other => return Err(format!("unknown probe {other}")),
    };
    let before = maxrss();
    node.driver
        .add(&list, &att, &json!({}))
        .map_err(|e| cni_err(&e))?;
    println!("{before} {}", maxrss());
    Ok(())
}

/// Peak RSS (MB) of one ADD: this program re-run as a child that does
/// nothing but that ADD, so `RUSAGE_CHILDREN` of the child covers the
/// plugin process and every process it waited for (the reference bridge
/// execs host-local) — the largest of them, as `ru_maxrss` is a maximum.
/// Also returns the child's own baseline (its `ip`/`sh` helpers) when the
/// plugin stayed below it.
fn peak_rss(dir: &Path, kind: &str) -> Result<Rss, String> {
    let mut peaks = Vec::new();
    let mut below = false;
    for _ in 0..PROBE_RUNS {
        let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .arg("--rss-probe")
            .arg(dir)
            .arg(kind)
            .output()
            .map_err(|e| e.to_string())?;
        progress();
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<f64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        match nums.as_slice() {
            [before, after] if out.status.success() => {
                below |= after <= before;
                peaks.push(after / 1000.0 * 1.024);
            }
            _ => {
                return Err(format!(
                    "probe failed: {}{}",
                    text.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
    }
    Ok((median(&peaks).unwrap_or(0.0), below))
}

// ---------------------------------------------------------------- wasm share

/// Timings of one of our invocations, from its debug log.
#[derive(Default, Clone)]
struct Trace {
    wall_us: f64,
    done_us: f64,
    load_bridge_us: f64,
    load_ipam_us: f64,
    delegated_us: f64,
    /// Both components: instantiation, and their own code (a call's time
    /// less the time in host functions).
    instantiate_us: f64,
    guest_us: f64,
    /// Host functions the components called (kernel, store, firewall),
    /// the nested host-local call not counted twice.
    host_us: f64,
}

/// `key=value` fields of a tracing line after its message.
fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&pat))
        .map(|v| v.trim_matches('"').to_string())
}

fn parse_trace(log: &str, wall_us: f64) -> Trace {
    let mut t = Trace {
        wall_us,
        ..Trace::default()
    };
    for line in log.lines() {
        // `<time> <LEVEL> <span>: <target>: <message> <fields>`
        let Some(tail) = line.rsplit(": ").next() else {
            continue;
        };
        let us = field(tail, "elapsed_us")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let num = |k: &str| {
            field(tail, k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        match tail.split_whitespace().next() {
            Some("called") => {
                t.instantiate_us += num("instantiate_us");
                t.guest_us += num("run_us") - num("host_us");
                t.host_us += num("host_us");
            }
            Some("loaded") if field(tail, "component").as_deref() == Some("bridge") => {
                t.load_bridge_us += us
            }
            Some("loaded") => t.load_ipam_us += us,
            Some("delegated") => t.delegated_us += us,
            Some("done") => t.done_us += us,
            _ => {}
        }
    }
    // bridge's host time holds the whole host-local delegation.
    t.host_us -= t.delegated_us;
    t
}

/// Our chain A ADD and DEL, traced: one [`Trace`] per operation.
struct WasmShare {
    add: Trace,
    del: Trace,
}

/// Runs chain A ADDs and DELs of ours with `WASM_CNI_LOG=debug` into log
/// files and reads the host's timings back; medians of [`PROBE_RUNS`].
fn wasm_share(dir: &Path) -> Result<WasmShare, String> {
    let node = Node::new(dir, Chain::A, false);
    let mut driver = Driver::new(dir, &node.ns);
    let logs = temp_dir();
    let mut traced = |name: String, op: &dyn Fn(&Driver) -> Result<Value, CniError>| {
        let file = logs.path().join(name);
        driver.env = vec![
            ("WASM_CNI_LOG".into(), "debug".into()),
            ("WASM_CNI_LOG_FILE".into(), file.display().to_string()),
        ];
        let t = Instant::now();
        let out = op(&driver).map_err(|e| cni_err(&e))?;
        let wall = t.elapsed().as_secs_f64() * 1e6;
        progress();
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let trace = parse_trace(&text, wall);
        if trace.done_us == 0.0 {
            return Err(format!(
                "no `done` line in the debug log ({} bytes)",
                text.len()
            ));
        }
        Ok((trace, out))
    };
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for i in 0..PROBE_RUNS {
        let ns = netns("bp");
        let att = Attachment::new(&format!("log-{i}"), &ns, "eth0");
        let (trace, result) = traced(format!("add-{i}.log"), &|d: &Driver| {
            d.add(&node.list, &att, &json!({}))
        })?;
        adds.push(trace);
        let (trace, _) = traced(format!("del-{i}.log"), &|d: &Driver| {
            d.del(&node.list, &att, &json!({}), Some(&result))
                .map(|()| Value::Null)
        })?;
        dels.push(trace);
    }
    Ok(WasmShare {
        add: Trace::median(&adds),
        del: Trace::median(&dels),
    })
}

impl Trace {
    /// The field-wise median.
    fn median(traces: &[Trace]) -> Trace {
        let med =
            |f: fn(&Trace) -> f64| median(&traces.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
        Trace {
            wall_us: med(|t| t.wall_us),
            done_us: med(|t| t.done_us),
            load_bridge_us: med(|t| t.load_bridge_us),
            load_ipam_us: med(|t| t.load_ipam_us),
            delegated_us: med(|t| t.delegated_us),
            instantiate_us: med(|t| t.instantiate_us),
            guest_us: med(|t| t.guest_us),
            host_us: med(|t| t.host_us),
        }
    }
}

// ---------------------------------------------------------------- sizes

/// Bytes of the regular files under `path` (links not followed).
/// Regular files at or under `path`, links left out (ours names every
/// plugin by a link to one binary).
fn regular_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            regular_files(&entry?.path(), out)?;
        }
    } else if meta.is_file() {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Bytes in the regular files at or under `path` (what could be read).
fn tree_size(path: &Path) -> u64 {
    let mut files = Vec::new();
    let _ = regular_files(path, &mut files);
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

// ---------------------------------------------------------------- report

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map(|kib| format!(", {:.1} GiB RAM", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!(
        "{} CPUs (nproc; {cpu}){mem}, kernel {}, load average at start {}",
        sh("nproc").trim(),
        sh("uname -r").trim(),
        load_average()
    )
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews
/// the timings).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU time of the machine so far from `/proc/stat`: (idle + iowait, all),
/// in clock ticks.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((idle, v.iter().sum()))
}

/// Most a phase waits for the machine to be idle.
const SETTLE_LIMIT: Duration = Duration::from_secs(90);

/// Waits until the machine is idle (at least 90 % idle in two consecutive
/// half seconds), so a phase does not pay for the last one: deleting a
/// thousand pod namespaces leaves the kernel freeing them for seconds in
/// the background. Dirty pages are written back first: the build just
/// before a run leaves hundreds of MB of them, whose writeback would
/// otherwise run during the first phase. Returns how long it waited.
fn settle() -> Duration {
    let started = Instant::now();
    nix::unistd::sync();
    let mut quiet = 0;
    let mut last = cpu_ticks();
    while quiet < 2 && started.elapsed() < SETTLE_LIMIT {
        std::thread::sleep(Duration::from_millis(500));
        let now = cpu_ticks();
        quiet = match (last, now) {
            (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
                if (i1 - i0) as f64 >= 0.9 * (t1 - t0) as f64 {
                    quiet + 1
                } else {
                    0
                }
            }
            // Nothing to read: do not wait.
            _ => 2,
        };
        last = now;
    }
    started.elapsed()
}

fn versions() -> (String, String) {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let ours = match (
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["status", "--porcelain"]),
    ) {
        (Some(rev), Some(changes)) if !changes.is_empty() => {
            format!("git {rev} + uncommitted changes")
        }
        (Some(rev), _) => format!("git {rev}"),
        _ => "unknown revision".into(),
    };
    let theirs =
        sh("dpkg-query -W -f '${Version}' containernetworking-plugins 2>/dev/null || true");
    let theirs = if theirs.trim().is_empty() {
        "unknown version".into()
    } else {
        format!("Debian containernetworking-plugins {}", theirs.trim())
    };
    (ours, theirs)
}

struct Report {
    opts_line: String,
    header: Vec<String>,
    sides: Vec<(Side, PathBuf)>,
    chains: Vec<Chain>,
    levels: Vec<usize>,
    samples: usize,
    threads: usize,
    throughput: Vec<(Side, Result<Throughput, String>)>,
    rss: Vec<(String, Result<Rss, String>)>,
    sizes: Vec<(String, u64)>,
    wasm: Result<WasmShare, String>,
    plot: String,
}

impl Report {
    fn render(&self, log: &Log) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# wasm-cni benchmark\n");
        for h in &self.header {
            let _ = writeln!(w, "- {h}");
        }
        let _ = writeln!(w, "- command: `{}`", self.opts_line);
        let _ = writeln!(
            w,
            "- conflists: cniVersion {CNI_VERSION}, IPv4 host-local {SUBNET} (dataDir in a temp dir), \
             bridge `{BRIDGE}` with isGateway and hairpinMode; portmap with snat and one \
             hostPort per pod (`{BG_PORT}+i`, container port 80); the nftables keys \
             (`ipMasqBackend`, portmap `backend`) are given to both sides; each side creates \
             the bridge with its own defaults (ours: a MAC of its own and no multicast \
             snooping; the reference: the kernel's, snooping on) unless `--mcast-snooping` \
             sets snooping on both; ours logs as installed (level `info`, one line per \
             invocation, appended to a file in the node's temp dir)"
        );
        let _ = writeln!(
            w,
            "- latency: wall time around `Driver::add/check/del` (every plugin of the list, \
             process start included), median and p99 (nearest rank: with 20 samples, the slowest) over {} samples per cell; \
             each sample is a new pod ADDed, CHECKed and DELeted while the given number of \
             background pods exist, then the same on a node with 1 pod (see \
             \"Growth with the pods\"); each chain and side starts on a fresh node once the machine \
             is idle again (the kernel frees the last one's namespaces in the background). \
             speedup = reference median / ours median.\n",
            self.samples
        );
        for &chain in &self.chains {
            let _ = writeln!(w, "## Chain {}: {}\n", chain.id(), chain.title());
            if chain.has_firewall() {
                for (side, _) in &self.sides {
                    let b = log
                        .backends
                        .get(&(chain, *side))
                        .map_or("not observed", String::as_str);
                    let _ = writeln!(w, "- firewall backend, {}: {b}", side.label());
                }
                let _ = writeln!(w);
            }
            let _ = writeln!(
                w,
                "| operation | pods on node | ours median | ours p99 | reference median | reference p99 | speedup |"
            );
            let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            for op in Op::ALL {
                for &level in &self.levels {
                    let get = |side| {
                        log.latency
                            .get(&(chain, side, op, level))
                            .cloned()
                            .unwrap_or_default()
                    };
                    let (o, r) = (get(Side::Ours), get(Side::Reference));
                    let speedup = match (median(&o), median(&r)) {
                        (Some(a), Some(b)) if a > 0.0 => format!("{:.1}×", b / a),
                        _ => "—".into(),
                    };
                    let _ = writeln!(
                        w,
                        "| {} | {level} | {} | {} | {} | {} | {speedup} |",
                        op.label(),
                        fmt_ms(median(&o)),
                        fmt_ms(percentile(&o, 99.0)),
                        fmt_ms(median(&r)),
                        fmt_ms(percentile(&r, 99.0)),
                    );
                }
            }
            let _ = writeln!(w);
        }

        self.render_flatness(w, log);
        self.render_attach(w, log);

        let _ = writeln!(w, "## Parallel ADD (chain C, fresh node)\n");
        let _ = writeln!(
            w,
            "| side | threads | pods | succeeded | wall | pods/s | unique IPs | firewall backend |"
        );
        let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for (side, t) in &self.throughput {
            match t {
                Ok(t) => {
                    let _ = writeln!(
                        w,
                        "| {} | {} | {} | {} | {:.2} s | {:.1} | {}{} | {} |",
                        side.label(),
                        self.threads,
                        t.pods,
                        t.ok,
                        t.secs,
                        t.ok as f64 / t.secs,
                        t.unique_ips,
                        if t.unique_ips == t.pods {
                            " ✓"
                        } else {
                            " ✗"
                        },
                        t.backend
                    );
                }
                Err(e) => {
                    let _ = writeln!(w, "| {} | failed: {e} | | | | | | |", side.label());
                }
            }
        }
        let _ = writeln!(w);

        let _ = writeln!(w, "## Peak RSS of one ADD (chain A)\n");
        let _ = writeln!(w, "| invocation | peak RSS |");
        let _ = writeln!(w, "| --- | ---: |");
        for (what, r) in &self.rss {
            let cell = match r {
                Ok((v, false)) => format!("{v:.1} MB"),
                Ok((v, true)) => format!("≤ {v:.1} MB (below the probe's own helpers)"),
                Err(e) => format!("failed: {e}"),
            };
            let _ = writeln!(w, "| {what} | {cell} |");
        }
        let _ = writeln!(
            w,
            "\n`ru_maxrss` of `RUSAGE_CHILDREN` in a child that runs only that ADD: the \
             largest process of the tree (the reference bridge execs host-local, which \
             is resident at the same time; its own peak is the host-local row). Median \
             of {PROBE_RUNS} runs.\n"
        );

        let _ = writeln!(w, "## Install size\n");
        let _ = writeln!(w, "| plugin directory | size |");
        let _ = writeln!(w, "| --- | ---: |");
        for (what, bytes) in &self.sizes {
            let _ = writeln!(w, "| {what} | {} |", mb(*bytes));
        }
        let _ = writeln!(
            w,
            "\nMB = 10^6 bytes; regular files only (our plugin names are links to `wasm-cni`).\n"
        );

        let _ = writeln!(w, "## Wasm share of one invocation (ours, chain A)\n");
        match &self.wasm {
            Ok(WasmShare { add, del }) => {
                let row = |w: &mut String, what: &str, f: &dyn Fn(&Trace) -> f64| {
                    let cell = |t: &Trace| {
                        let us = f(t).max(0.0);
                        format!(
                            "{:.2} ms ({:.0} %)",
                            us / 1000.0,
                            100.0 * us / t.wall_us.max(1.0)
                        )
                    };
                    let _ = writeln!(w, "| {what} | {} | {} |", cell(add), cell(del));
                };
                let _ = writeln!(w, "| part (share of the process wall time) | ADD | DEL |");
                let _ = writeln!(w, "| --- | ---: | ---: |");
                row(w, "wall time of the process (exec to exit)", &|t| t.wall_us);
                row(w, "in-process total (`done`)", &|t| t.done_us);
                row(
                    w,
                    "wasm: load both components (`loaded`, mmap of `.cwasm`)",
                    &|t| t.load_bridge_us + t.load_ipam_us,
                );
                row(
                    w,
                    "wasm: instantiate both (`called` instantiate_us)",
                    &|t| t.instantiate_us,
                );
                row(
                    w,
                    "wasm: the components' own code (run_us − host_us)",
                    &|t| t.guest_us,
                );
                row(
                    w,
                    "host work the components asked for: netlink, sysctl, store, firewall (host_us)",
                    &|t| t.host_us,
                );
                row(
                    w,
                    "rest in-process: engine and linkers, config, result, delegation",
                    &|t| {
                        t.done_us
                            - t.load_bridge_us
                            - t.load_ipam_us
                            - t.instantiate_us
                            - t.guest_us
                            - t.host_us
                    },
                );
                row(
                    w,
                    "outside `done`: exec, dynamic linking, logger setup, exit",
                    &|t| t.wall_us - t.done_us,
                );
                let wasm =
                    |t: &Trace| t.load_bridge_us + t.load_ipam_us + t.instantiate_us + t.guest_us;
                let _ = writeln!(
                    w,
                    "\nMedians of {PROBE_RUNS} ADD/DEL pairs on a fresh node with `WASM_CNI_LOG=debug` \
                     (logging to a file adds a little), bridge with host-local delegated \
                     in-process. The wasm share (load + instantiate + the components' code) is \
                     {:.2} ms of an ADD and {:.2} ms of a DEL; time in host functions is measured \
                     by wasmtime's call hooks around every call out of a component.\n",
                    wasm(add) / 1000.0,
                    wasm(del) / 1000.0
                );
            }
            Err(e) => {
                let _ = writeln!(w, "Could not be measured: {e}\n");
            }
        }

        let _ = writeln!(w, "## Plot\n\n{}\n", self.plot);
        if !log.notes.is_empty() {
            let _ = writeln!(w, "## Notes\n");
            for n in &log.notes {
                let _ = writeln!(w, "- {n}");
            }
            let _ = writeln!(w);
        }
        md
    }

    /// Each level's ADD and DEL against the 1-pod node's, sampled in turn.
    fn render_flatness(&self, w: &mut String, log: &Log) {
        if log.latency_beside.is_empty() {
            return;
        }
        let _ = writeln!(
            w,
            "## Growth with the pods: each level against a 1-pod node\n"
        );
        let _ = writeln!(
            w,
            "Each sample round above (ADD, CHECK, DEL of a new pod) is followed by the \
             same round on a second node of the chain that keeps 1 pod, so every cell \
             also measures the 1-pod case in the same minutes: the machine's speed drifts \
             between cells, not within one. ratio = the level's median over the 1-pod \
             node's in that cell.\n"
        );
        let _ = writeln!(
            w,
            "| chain | side | pods on node | ADD | ADD, 1-pod node | ratio | DEL | DEL, 1-pod node | ratio |"
        );
        let _ = writeln!(
            w,
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for &chain in &self.chains {
            for &(side, _) in &self.sides {
                for &level in &self.levels {
                    let key = |op| (chain, side, op, level);
                    let cells = |op| {
                        let on = log.latency.get(&key(op)).and_then(|v| median(v));
                        let one = log.latency_beside.get(&key(op)).and_then(|v| median(v));
                        let ratio = match (on, one) {
                            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                            _ => "—".into(),
                        };
                        format!("{} | {} | {ratio}", fmt_ms(on), fmt_ms(one))
                    };
                    let _ = writeln!(
                        w,
                        "| {} | {} | {level} | {} | {} |",
                        chain.id(),
                        side.label(),
                        cells(Op::Add),
                        cells(Op::Del)
                    );
                }
            }
        }
        let _ = writeln!(w);
    }

    /// The kernel's attach request at each level, beside the ADD's growth.
    fn render_attach(&self, w: &mut String, log: &Log) {
        if log.attach.is_empty() {
            return;
        }
        let _ = writeln!(
            w,
            "## The kernel's part: attaching one port to the bridge\n"
        );
        let _ = writeln!(
            w,
            "One `RTM_SETLINK` with `IFLA_MASTER` of a spare veth (down, as our bridge \
             attaches its host end), timed from the request to the kernel's \
             acknowledgement, on each node after its samples and detached again before the \
             next; median of {} per cell. Every bridge plugin makes this request in each \
             pod's ADD, and the kernel walks the bridge's ports and forwarding database \
             in it. Each side's node has that side's bridge (see the conflists above).\n",
            self.samples
        );
        let columns: Vec<(Chain, Side)> = self
            .chains
            .iter()
            .flat_map(|&c| self.sides.iter().map(move |&(s, _)| (c, s)))
            .collect();
        let mut head = String::from("| pods on node |");
        let mut rule = String::from("| ---: |");
        for (c, s) in &columns {
            let _ = write!(head, " chain {} {} |", c.id(), s.label());
            rule.push_str(" ---: |");
        }
        let _ = writeln!(w, "{head}\n{rule}");
        let attach = |c: Chain, s: Side, level: usize| {
            log.attach.get(&(c, s, level)).and_then(|v| median(v))
        };
        for &level in &self.levels {
            let mut row = format!("| {level} |");
            for &(c, s) in &columns {
                let _ = write!(row, " {} |", fmt_ms(attach(c, s, level)));
            }
            let _ = writeln!(w, "{row}");
        }
        let (Some(&first), Some(&last)) = (self.levels.first(), self.levels.last()) else {
            return;
        };
        let _ = writeln!(w);
        for &chain in &self.chains {
            let add = |level| {
                log.latency
                    .get(&(chain, Side::Ours, Op::Add, level))
                    .and_then(|v| median(v))
            };
            let (Some(a0), Some(a1), Some(k0), Some(k1)) = (
                add(first),
                add(last),
                attach(chain, Side::Ours, first),
                attach(chain, Side::Ours, last),
            ) else {
                continue;
            };
            let _ = writeln!(
                w,
                "- chain {}, ours, from {first} to {last} pods: ADD {a0:.2} → {a1:.2} ms \
                 ({:+.2} ms, {:.2}×); the attach request alone {k0:.2} → {k1:.2} ms ({:+.2} ms)",
                chain.id(),
                a1 - a0,
                a1 / a0,
                k1 - k0
            );
        }
        let _ = writeln!(w);
    }
}

/// Renders `samples.csv` into `latency.png` with the plot script, or says
/// how to.
fn plot(csv: &Path, png: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/plot.py");
    let how = format!(
        "`pip install matplotlib && python3 {} {} {}`",
        script.display(),
        csv.display(),
        png.display()
    );
    let has_mpl = Command::new("python3")
        .args(["-c", "import matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_mpl {
        eprintln!("bench: no plot: python3 with matplotlib not found; to draw it: {how}");
        return format!("Not drawn (python3 with matplotlib not found); to draw it: {how}");
    }
    match Command::new("python3")
        .arg(&script)
        .arg(csv)
        .arg(png)
        .output()
    {
        Ok(o) if o.status.success() => format!(
            "![ADD latency vs pods on the node]({})",
            png.file_name().unwrap_or_default().to_string_lossy()
        ),
        Ok(o) => format!(
            "The plot script failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("The plot script could not run: {e}"),
    }
}

// ---------------------------------------------------------------- main

/// Runs `f`, turning a panic into an error (the Drop guards inside it have
/// already run by then).
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(format!("{what}: {msg}"))
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    install_signal_thread();
    if let [flag, dir, kind] = args.as_slice() {
        if flag == "--rss-probe" {
            // The probe's node keeps its files under a root of its own,
            // removed when the probe ends.
            let root = TempDir::with_prefix("wasm-cni-bench-probe-").expect("temp dir");
            let _ = TEMP_ROOT.set(root.path().to_path_buf());
            let probed = rss_probe(Path::new(dir), kind);
            drop(root);
            if let Err(e) = probed {
                eprintln!("{e}");
                std::process::exit(1);
            }
            return;
        }
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if !privileged() {
        eprintln!("bench: builds network namespaces: run it as root");
        std::process::exit(1);
    }
    let ours = dist();
    if !ours.join("wasm-cni").is_file() {
        eprintln!(
            "bench: no plugins in {}: run `cargo xtask bench` (it installs them)",
            ours.display()
        );
        std::process::exit(1);
    }
    let root = TempDir::with_prefix("wasm-cni-bench-").expect("temp dir");
    let _ = TEMP_ROOT.set(root.path().to_path_buf());
    if let Some(on) = opts.mcast_snooping {
        let _ = MCAST_SNOOPING.set(on);
    }
    install_watchdog(opts.stall);
    if let Err(e) = std::fs::create_dir_all(&opts.out) {
        eprintln!("bench: {}: {e}", opts.out.display());
        std::process::exit(1);
    }

    let mut log = Log::default();
    let reference = reference_dir().filter(|_| !opts.ours_only);
    let mut sides = vec![(Side::Ours, ours.clone())];
    match &reference {
        Some(r) => sides.push((Side::Reference, r.clone())),
        None if opts.ours_only => log.note("--ours-only: the reference plugins left out".into()),
        None => log.note("reference plugins not found in /usr/lib/cni: only ours measured".into()),
    }
    let (ours_version, ref_version) = versions();
    let date = sh("date -u '+%Y-%m-%d %H:%M UTC'");
    let mut header = vec![
        format!("date: {}", date.trim()),
        format!("machine: {}", machine()),
        format!("ours: {} ({ours_version})", ours.display()),
    ];
    if let Some(r) = &reference {
        header.push(format!("reference: {} ({ref_version})", r.display()));
    }
    if let Some(on) = opts.mcast_snooping {
        header.push(format!(
            "node tuning: multicast snooping {} on each latency node's bridge \
             (`ip link set {BRIDGE} type bridge mcast_snooping {}` after its first pod, both sides)",
            if on { "on" } else { "off" },
            u8::from(on)
        ));
    }
    // Before anything runs: see `resident` for why.
    let dirs: Vec<&Path> = std::iter::once(ours.as_path())
        .chain(reference.as_deref())
        .collect();
    let _resident = match resident::Resident::hold(&dirs) {
        Ok(r) => {
            header.push(format!(
                "page cache: every file of the plugin directories dropped from it, read back \
                 in 2 MiB pages and held mapped for the run ({} of {} mapped in 2 MiB pages)",
                mb(r.huge_bytes as u64),
                mb(r.bytes as u64)
            ));
            Some(r)
        }
        Err(e) => {
            header.push(format!(
                "page cache: the plugin files could not be held ({e}); each side runs from \
                 what the page cache holds"
            ));
            None
        }
    };
    for h in &header {
        eprintln!("bench: {h}");
    }

    // Quick probes first.
    settle();
    eprintln!("bench: sizes, peak RSS, wasm share");
    let mut sizes = vec![(
        format!("ours: {} (all files)", ours.display()),
        tree_size(&ours),
    )];
    if let Some(r) = &reference {
        let used: u64 = ["bridge", "host-local", "portmap"]
            .iter()
            .map(|p| tree_size(&r.join(p)))
            .sum();
        sizes.push((
            format!(
                "reference: bridge + host-local + portmap in {}",
                r.display()
            ),
            used,
        ));
        sizes.push((format!("reference: all of {}", r.display()), tree_size(r)));
    }
    // The build just before leaves the machine busy writing it back.
    settle();
    let mut rss = vec![(
        "ours: bridge ADD (host-local in-process)".to_string(),
        guarded("rss", || peak_rss(&ours, "chain-a")),
    )];
    if let Some(r) = &reference {
        rss.push((
            "reference: bridge ADD (largest of bridge and its host-local child)".into(),
            guarded("rss", || peak_rss(r, "chain-a")),
        ));
        let ipam = guarded("rss", || peak_rss(r, "host-local"));
        // Both are resident while bridge waits for host-local.
        if let (Ok((bridge, false)), Ok((ipam, false))) = (&rss[1].1, &ipam) {
            if bridge > ipam {
                let sum = Ok((bridge + ipam, false));
                rss.push((
                    "reference: bridge + host-local resident together (upper bound: sum)".into(),
                    sum,
                ));
            }
        }
        rss.insert(2, ("reference: host-local ADD alone".into(), ipam));
    }
    let wasm = guarded("wasm share", || wasm_share(&ours));

    // Latency: one fresh node per chain and side.
    for &chain in &opts.chains {
        for (side, dir) in &sides {
            eprintln!(
                "bench: chain {} ({}), {}: levels {:?}, {} samples each",
                chain.id(),
                chain.title(),
                side.label(),
                opts.levels,
                opts.samples
            );
            let waited = settle();
            eprintln!(
                "  (waited {:.1} s for an idle machine)",
                waited.as_secs_f64()
            );
            let t = Instant::now();
            let res = guarded("latency", || latency(*side, dir, chain, &opts, &mut log));
            if let Err(e) = res {
                log.note(format!(
                    "chain {} {}: stopped: {e}",
                    chain.id(),
                    side.label()
                ));
            }
            eprintln!(
                "bench: chain {} {} done in {:.0} s (namespaces deleted)",
                chain.id(),
                side.label(),
                t.elapsed().as_secs_f64()
            );
        }
    }

    let mut tput = Vec::new();
    if opts.parallel_pods > 0 {
        for (side, dir) in &sides {
            eprintln!(
                "bench: parallel ADD, chain C, {}: {} pods by {} threads",
                side.label(),
                opts.parallel_pods,
                opts.threads
            );
            let nft = !log.fallback.contains(&(*side, Chain::C));
            settle();
            let t = guarded("parallel ADD", || Ok(throughput(dir, &opts, nft)));
            if let Ok(t) = &t {
                eprintln!(
                    "  {} of {} in {:.2} s: {:.1} pods/s, {} unique IPs",
                    t.ok,
                    t.pods,
                    t.secs,
                    t.ok as f64 / t.secs,
                    t.unique_ips
                );
                if let Some(e) = &t.first_error {
                    log.note(format!(
                        "parallel ADD {}: {} failed (first: {e})",
                        side.label(),
                        t.pods - t.ok
                    ));
                }
            }
            tput.push((*side, t));
        }
    }

    let csv = opts.out.join("samples.csv");
    let png = opts.out.join("latency.png");
    let _ = std::fs::remove_file(&png);
    let md_path = opts.out.join("report.md");
    let written = std::fs::write(&csv, format!("side,chain,op,pods,sample,ms\n{}", log.csv));
    if let Err(e) = written {
        log.note(format!("could not write {}: {e}", csv.display()));
    }
    let minutes = STARTED
        .get()
        .map_or(0.0, |t| t.elapsed().as_secs_f64() / 60.0);
    header.push(format!(
        "run time {minutes:.0} min; load average at the end {}",
        load_average()
    ));
    let report = Report {
        opts_line: opts.command_line(),
        header,
        sides,
        chains: opts.chains.clone(),
        levels: opts.levels.clone(),
        samples: opts.samples,
        threads: opts.threads,
        throughput: tput,
        rss,
        sizes,
        wasm,
        plot: plot(&csv, &png),
    };
    let md = report.render(&log);
    println!("{md}");
    match std::fs::write(&md_path, &md) {
        Ok(()) => eprintln!(
            "bench: wrote {}, {}{}",
            md_path.display(),
            csv.display(),
            if png.is_file() {
                format!(", {}", png.display())
            } else {
                String::new()
            }
        ),
        Err(e) => eprintln!("bench: could not write {}: {e}", md_path.display()),
    }
    drop(root);
}
