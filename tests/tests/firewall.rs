//! Masquerade and host ports, end to end: the installed bridge (`ipMasq`),
//! masq and portmap plugins drive the host's firewall backends inside a
//! node namespace, and real TCP connections and pings show what the rules
//! do.
//!
//! The world of each test (see [`Fw`]), all in namespaces the test creates:
//! - a node namespace holding the bridge `wcfw0` (pods in 10.66.0.0/24, and
//!   fd66::/64 for dual-stack pods) and the firewall rules;
//! - an "outside" host joined to the node by the veth uplink `up0`/`out0`:
//!   198.51.100.1/24 and fd00:51::1/64 on the node, 198.51.100.2/24 and
//!   fd00:51::2/64 outside. The outside host has no route to the pod
//!   subnets, so a pod reaches it only through masquerade;
//! - pods, each a namespace with one attachment `eth0`.
//!
//! Every scenario runs once per backend (`ipMasqBackend` / `backend` =
//! "nftables" and "iptables"): `<scenario>::nftables`, `<scenario>::iptables`.
//! Rules are inspected where the backend keeps them: the elements of
//! `table inet wasm_cni` (nftables), the lines of `iptables-save -t nat`
//! and `ip6tables-save -t nat` (iptables), selected by the owner comment
//! `wc:<tag> net=<net> id=<cid> if=<ifname>`.
//!
//! TCP endpoints are python3 one-liners (`firewall/net.rs`): a server that
//! answers `<name> <peer address>`, so a client learns both whom it reached
//! and the source address the server saw.

mod common;
#[path = "firewall/net.rs"]
mod net;

use std::path::Path;
use std::time::Instant;

use common::{ip_json, link, reserved_by, wait_dad, Pod};
use net::{connect, reach, Server};
use serde_json::{json, Value};
use tempfile::TempDir;
use wasm_cni_tests::{addr_only, dist, reference_dir, require_root, Attachment, Driver, Netns};

/// CNI version of our conflists (GC needs 1.1.0).
const LATEST: &str = "1.1.0";
/// The Debian reference plugins speak up to 1.0.0.
const REFERENCE_VERSION: &str = "1.0.0";
const NET: &str = "fwnet";
const BRIDGE: &str = "wcfw0";
const SUBNET4: &str = "10.66.0.0/24";
const SUBNET6: &str = "fd66::/64";
const GW4: &str = "10.66.0.1";
const NODE4: &str = "198.51.100.1";
const OUT4: &str = "198.51.100.2";
/// A second node address on the uplink, for `hostIP`.
const NODE4_OTHER: &str = "198.51.100.3";
const NODE6: &str = "fd00:51::1";
const OUT6: &str = "fd00:51::2";
const HOST_PORT: u16 = 8080;
const POD_PORT: u16 = 80;
/// Where the outside host's server listens.
const OUTSIDE_PORT: u16 = 9000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    fn key(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

/// Who masquerades pod egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Masq {
    /// The bridge's `ipMasq`.
    Bridge,
    /// A `masq` plugin after a bridge without `ipMasq`.
    Plugin,
}

/// The conflist under test.
#[derive(Debug, Clone, Copy)]
struct Conf {
    version: &'static str,
    /// `ipMasqBackend` / `backend`; None leaves each plugin's default.
    backend: Option<Backend>,
    dual_stack: bool,
    masq: Masq,
    portmap: bool,
}

impl Conf {
    /// bridge(isGateway, ipMasq, hairpinMode, host-local 10.66.0.0/24) +
    /// portmap(capabilities.portMappings), on `backend`.
    fn new(backend: Backend) -> Conf {
        Conf {
            version: LATEST,
            backend: Some(backend),
            dual_stack: false,
            masq: Masq::Bridge,
            portmap: true,
        }
    }

    fn dual_stack(self) -> Conf {
        Conf {
            dual_stack: true,
            ..self
        }
    }

    fn list(&self, data: &Path) -> Value {
        let mut ranges = vec![json!([{ "subnet": SUBNET4 }])];
        let mut routes = vec![json!({ "dst": "0.0.0.0/0" })];
        if self.dual_stack {
            ranges.push(json!([{ "subnet": SUBNET6 }]));
            routes.push(json!({ "dst": "::/0" }));
        }
        let mut bridge = json!({
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": self.masq == Masq::Bridge,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": data,
                "ranges": ranges,
                "routes": routes,
            }
        });
        let mut plugins = Vec::new();
        if let (Some(b), Masq::Bridge) = (self.backend, self.masq) {
            bridge["ipMasqBackend"] = json!(b.key());
        }
        plugins.push(bridge);
        if self.masq == Masq::Plugin {
            let mut masq = json!({ "type": "masq" });
            if let Some(b) = self.backend {
                masq["backend"] = json!(b.key());
            }
            plugins.push(masq);
        }
        if self.portmap {
            let mut portmap =
                json!({ "type": "portmap", "capabilities": { "portMappings": true } });
            if let Some(b) = self.backend {
                portmap["backend"] = json!(b.key());
            }
            plugins.push(portmap);
        }
        json!({ "cniVersion": self.version, "name": NET, "plugins": plugins })
    }
}

/// Runtime capabilities: `portMappings` of (hostPort, containerPort, hostIP), TCP.
fn ports(maps: &[(u16, u16, Option<&str>)]) -> Value {
    let list: Vec<Value> = maps
        .iter()
        .map(|(h, c, ip)| {
            let mut m = json!({ "hostPort": h, "containerPort": c, "protocol": "tcp" });
            if let Some(ip) = ip {
                m["hostIP"] = json!(ip);
            }
            m
        })
        .collect();
    json!({ "portMappings": list })
}

/// The runtime capability of every scenario: 8080 -> 80/tcp.
fn port_8080() -> Value {
    ports(&[(HOST_PORT, POD_PORT, None)])
}

/// The node, the outside host and the uplink between them, a host-local
/// data dir and a driver for one plugin directory.
struct Fw {
    backend: Option<Backend>,
    node: Netns,
    outside: Netns,
    data: TempDir,
    driver: Driver,
}

impl Fw {
    /// A world on the installed plugin directory using `backend`.
    fn new(backend: Backend) -> Fw {
        Fw::on(&dist(), "fwnode", Some(backend))
    }

    fn on(dir: &Path, tag: &str, backend: Option<Backend>) -> Fw {
        let node = Netns::new(tag);
        let outside = Netns::new("fwout");
        net::uplink(
            &node,
            &outside,
            &[&format!("{NODE4}/24"), &format!("{NODE6}/64")],
            &[&format!("{OUT4}/24"), &format!("{OUT6}/64")],
        );
        let driver = Driver::new(dir, &node);
        Fw {
            backend,
            node,
            outside,
            data: TempDir::new().expect("temp dir"),
            driver,
        }
    }

    fn list(&self, conf: &Conf) -> Value {
        conf.list(self.data.path())
    }

    /// A new pod namespace attached as `eth0` under container ID `id`.
    fn pod(&self, id: &str) -> Pod {
        let ns = Netns::new("fwpod");
        let att = Attachment::new(id, &ns, "eth0");
        Pod { ns, att }
    }

    fn add(&self, list: &Value, pod: &Pod, caps: &Value) -> Value {
        self.driver
            .add(list, &pod.att, caps)
            .unwrap_or_else(|e| panic!("ADD {} failed: {e:?}", pod.att.id))
    }

    /// A new pod, added; returns it and the result.
    fn add_pod(&self, list: &Value, id: &str, caps: &Value) -> (Pod, Value) {
        let pod = self.pod(id);
        let result = self.add(list, &pod, caps);
        (pod, result)
    }

    fn store(&self) -> std::path::PathBuf {
        self.data.path().join(NET)
    }

    fn node_veths(&self) -> usize {
        ip_json(&self.node, "link show type veth")
            .as_array()
            .map_or(0, |a| a.iter().filter(|l| l["ifname"] != "up0").count())
    }

    /// Everything of the backend in use owned by container `cid`: nftables
    /// elements (`set: element`) or iptables-save lines.
    fn owned(&self, cid: &str) -> Vec<String> {
        let needle = format!(" id={cid} if=");
        let mut v: Vec<String> = match self.backend.expect("a backend") {
            Backend::Nftables => nft_elements(&self.node)
                .into_iter()
                .filter(|e| e.comment.contains(&needle))
                .map(|e| format!("{}: {}", e.set, e.text))
                .collect(),
            Backend::Iptables => iptables_lines(&self.node)
                .into_iter()
                .filter(|l| l.contains(&needle))
                .collect(),
        };
        v.sort();
        v
    }

    /// What of `cid` is a host-port rule of the family (`v6`).
    fn mappings(&self, cid: &str, v6: bool) -> Vec<String> {
        let (fam, save) = if v6 {
            ("_v6:", "[ip6tables] ")
        } else {
            ("_v4:", "[iptables] ")
        };
        self.owned(cid)
            .into_iter()
            .filter(|l| match self.backend {
                Some(Backend::Nftables) => {
                    l.starts_with(&format!("hostports_any{fam}"))
                        || l.starts_with(&format!("hostports_ip{fam}"))
                }
                _ => l.starts_with(save) && l.contains("-j DNAT"),
            })
            .collect()
    }

    /// What of `cid` masquerades its egress.
    fn masquerade(&self, cid: &str) -> Vec<String> {
        self.owned(cid)
            .into_iter()
            .filter(|l| match self.backend {
                Some(Backend::Nftables) => l.starts_with("masq_v4_") || l.starts_with("masq_v6_"),
                _ => l.contains("-M ") && l.contains("-j MASQUERADE"),
            })
            .collect()
    }

    /// Per-attachment state of the backend in use, whoever owns it:
    /// nftables elements or iptables per-attachment chains.
    fn attachment_state(&self) -> Vec<String> {
        match self.backend.expect("a backend") {
            Backend::Nftables => nft_elements(&self.node)
                .into_iter()
                .map(|e| format!("{}: {} ({})", e.set, e.text, e.comment))
                .collect(),
            Backend::Iptables => iptables_lines(&self.node)
                .into_iter()
                .filter(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|c| is_attachment_chain(c.trim_start_matches(':')))
                })
                .collect(),
        }
    }

    /// Asserts the backend holds nothing of `cid`: no element (nftables)
    /// or line (iptables) whose comment names it, in the listing a person
    /// would read (`nft list table inet wasm_cni`, `iptables-save -t nat`).
    fn assert_nothing_of(&self, cid: &str) {
        assert_eq!(self.owned(cid), Vec::<String>::new(), "rules of {cid} left");
        let needle = format!("id={cid} ");
        let listing = match self.backend.expect("a backend") {
            Backend::Nftables => {
                if !self.node.try_sh("nft list table inet wasm_cni") {
                    return;
                }
                self.node.sh("nft list table inet wasm_cni")
            }
            Backend::Iptables => self.node.sh("iptables-save -t nat; ip6tables-save -t nat"),
        };
        let left: Vec<&str> = listing.lines().filter(|l| l.contains(&needle)).collect();
        assert!(left.is_empty(), "rules of {cid} left: {left:#?}");
    }

    /// Asserts the rules of the other backend hold nothing of `cid`.
    fn assert_only_in_backend(&self, cid: &str) {
        let needle = format!(" id={cid} if=");
        match self.backend.expect("a backend") {
            Backend::Nftables => {
                let stray: Vec<String> = iptables_lines(&self.node)
                    .into_iter()
                    .filter(|l| l.contains(&needle))
                    .collect();
                assert!(
                    stray.is_empty(),
                    "nftables backend wrote iptables rules: {stray:#?}"
                );
            }
            Backend::Iptables => {
                let stray: Vec<Elem> = nft_elements(&self.node)
                    .into_iter()
                    .filter(|e| e.comment.contains(&needle))
                    .collect();
                assert!(
                    stray.is_empty(),
                    "iptables backend wrote nft elements: {stray:#?}"
                );
            }
        }
    }
}

/// `WASM-CNI-<16 hex>-<kind>`: a per-attachment iptables chain.
fn is_attachment_chain(name: &str) -> bool {
    name.strip_prefix("WASM-CNI-")
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(hex, kind)| {
            hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && kind.len() == 1
        })
}

/// One element of a set or map of `table inet wasm_cni`.
#[derive(Debug, Clone)]
struct Elem {
    set: String,
    /// The element as JSON text (key, or `[key, value]` for maps).
    text: String,
    comment: String,
}

/// `nft -j list table inet wasm_cni` in `ns`; None when there is no table.
fn nft_table(ns: &Netns) -> Option<Value> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "nft",
            "-j",
            "list",
            "table",
            "inet",
            "wasm_cni",
        ])
        .output()
        .expect("run nft");
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("nft -j output is JSON"))
}

/// Every element of every set and map of our table.
fn nft_elements(ns: &Netns) -> Vec<Elem> {
    let mut out = Vec::new();
    let Some(t) = nft_table(ns) else {
        return out;
    };
    for item in t["nftables"].as_array().into_iter().flatten() {
        let Some(set) = item.get("set").or_else(|| item.get("map")) else {
            continue;
        };
        for e in set["elem"].as_array().into_iter().flatten() {
            let key = if e.is_array() { &e[0] } else { e };
            out.push(Elem {
                set: set["name"].as_str().unwrap_or_default().to_string(),
                text: e.to_string(),
                comment: key["elem"]["comment"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }
    out
}

/// The rules of our table (they should not depend on the number of pods).
fn nft_rules(ns: &Netns) -> Vec<String> {
    nft_table(ns)
        .map(|t| {
            t["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("rule"))
                .map(|r| {
                    let mut r = r.clone();
                    if let Some(o) = r.as_object_mut() {
                        o.remove("handle");
                    }
                    r.to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The nat tables of both families (`[iptables] …`, `[ip6tables] …`).
fn iptables_lines(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for save in ["iptables", "ip6tables"] {
        let text = ns.sh(&format!("{save}-save -t nat"));
        out.extend(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("[{save}] {l}")),
        );
    }
    out
}

/// The pod's IPv4 address (no prefix).
fn pod_ip4(result: &Value) -> String {
    wasm_cni_tests::result_ips(result)
        .iter()
        .find(|a| !a.contains(':'))
        .map(|a| addr_only(a).to_string())
        .unwrap_or_else(|| panic!("no IPv4 address in {result}"))
}

/// Asserts that `pod` reaches the outside host with the node's uplink
/// address as its source (ping and TCP).
fn assert_egress_masqueraded(fw: &Fw, pod: &Pod) {
    assert!(
        pod.ns.ping(OUT4),
        "{} cannot ping the outside host {OUT4} (it has no route back: only masquerade makes this work)",
        pod.att.id
    );
    let _srv = Server::start(&fw.outside, OUTSIDE_PORT, "outside", 8);
    assert_eq!(
        reach(&pod.ns, OUT4, OUTSIDE_PORT),
        format!("outside {NODE4}"),
        "the outside host must see the node's uplink address as the source"
    );
}

/// Generates `mod <scenario> { nftables, iptables }` from `fn <scenario>(Backend)`;
/// `nftables = "reason"` or `iptables = "reason"` marks that one ignored.
macro_rules! per_backend {
    ($scenario:ident) => {
        per_backend!(@gen $scenario, [], []);
    };
    ($scenario:ident, nftables = $reason:literal) => {
        per_backend!(@gen $scenario, [#[ignore = $reason]], []);
    };
    ($scenario:ident, iptables = $reason:literal) => {
        per_backend!(@gen $scenario, [], [#[ignore = $reason]]);
    };
    (@gen $scenario:ident, [$(#[$nft:meta])*], [$(#[$ipt:meta])*]) => {
        mod $scenario {
            #[test]
            $(#[$nft])*
            fn nftables() {
                super::$scenario(super::Backend::Nftables);
            }
            #[test]
            $(#[$ipt])*
            fn iptables() {
                super::$scenario(super::Backend::Iptables);
            }
        }
    };
}

per_backend!(pod_egress_is_masqueraded);
fn pod_egress_is_masqueraded(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let (pod, result) = fw.add_pod(&fw.list(&Conf::new(b)), "pod-a", &port_8080());
    assert!(
        !fw.outside.ping(&pod_ip4(&result)),
        "the outside host must have no route to the pods"
    );
    assert!(
        !fw.masquerade("pod-a").is_empty(),
        "no masquerade rule: {:#?}",
        fw.owned("pod-a")
    );
    fw.assert_only_in_backend("pod-a");
    assert_egress_masqueraded(&fw, &pod);
    // Within the pod subnet the source is kept.
    let (pod_b, result_b) = fw.add_pod(
        &fw.list(&Conf::new(b)),
        "pod-b",
        &ports(&[(8081, POD_PORT, None)]),
    );
    let _srv = Server::start(&pod_b.ns, POD_PORT, "pod-b", 8);
    assert_eq!(
        reach(&pod.ns, &pod_ip4(&result_b), POD_PORT),
        format!("pod-b {}", pod_ip4(&result)),
        "pod to pod must not be masqueraded"
    );
}

per_backend!(outside_reaches_the_pod_through_the_host_port);
fn outside_reaches_the_pod_through_the_host_port(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let (pod, _) = fw.add_pod(&fw.list(&Conf::new(b)), "pod-a", &port_8080());
    assert_eq!(
        fw.mappings("pod-a", false).len(),
        1,
        "{:#?}",
        fw.owned("pod-a")
    );
    let _srv = Server::start(&pod.ns, POD_PORT, "pod-a", 8);
    // No SNAT for outside sources: the pod sees the real peer.
    assert_eq!(
        reach(&fw.outside, NODE4, HOST_PORT),
        format!("pod-a {OUT4}")
    );
    // The node itself, to its own uplink address: DNAT in output.
    assert_eq!(reach(&fw.node, NODE4, HOST_PORT), format!("pod-a {NODE4}"));
}

per_backend!(hairpin_and_localhost_reach_the_pod);
fn hairpin_and_localhost_reach_the_pod(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let (pod, _) = fw.add_pod(&fw.list(&Conf::new(b)), "pod-a", &port_8080());
    let localnet = fw.node.sh(&format!(
        "cat /proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet"
    ));
    assert_eq!(localnet.trim(), "1", "route_localnet on {BRIDGE}");
    let _srv = Server::start(&pod.ns, POD_PORT, "pod-a", 8);
    // The pod to its own host port: DNATed back to itself, masqueraded to
    // the bridge address so the reply goes through the node.
    assert_eq!(reach(&pod.ns, NODE4, HOST_PORT), format!("pod-a {GW4}"));
    // The node's localhost: DNAT in output, masqueraded off 127.0.0.1.
    assert_eq!(
        reach(&fw.node, "127.0.0.1", HOST_PORT),
        format!("pod-a {GW4}")
    );
}

per_backend!(check_passes_and_notices_a_missing_mapping);
fn check_passes_and_notices_a_missing_mapping(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let list = fw.list(&Conf::new(b));
    let caps = port_8080();
    let (pod, result) = fw.add_pod(&list, "pod-a", &caps);
    fw.driver
        .check(&list, &pod.att, &caps, &result)
        .expect("CHECK after ADD");
    // Only portmap's rules removed: CHECK must notice.
    let conf = Driver::plugin_conf(&list, 1, Some(&result), &caps);
    fw.driver
        .exec("portmap", "DEL", Some(&pod.att), &conf)
        .expect("portmap DEL");
    assert!(
        fw.mappings("pod-a", false).is_empty(),
        "{:#?}",
        fw.owned("pod-a")
    );
    let err = fw
        .driver
        .check(&list, &pod.att, &caps, &result)
        .expect_err("CHECK without the port mapping must fail");
    assert!(
        err.msg.contains("8080") && err.msg.contains("missing"),
        "CHECK error should name the missing mapping: {err:?}"
    );
}

per_backend!(del_removes_every_rule_of_the_pod);
fn del_removes_every_rule_of_the_pod(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let list = fw.list(&Conf::new(b));
    let caps = port_8080();
    let (pod, result) = fw.add_pod(&list, "pod-a", &caps);
    assert!(
        !fw.masquerade("pod-a").is_empty(),
        "{:#?}",
        fw.owned("pod-a")
    );
    assert!(
        !fw.mappings("pod-a", false).is_empty(),
        "{:#?}",
        fw.owned("pod-a")
    );
    fw.driver
        .del(&list, &pod.att, &caps, Some(&result))
        .expect("DEL");
    fw.assert_nothing_of("pod-a");
    assert_eq!(
        fw.attachment_state(),
        Vec::<String>::new(),
        "per-attachment state left"
    );
    assert_eq!(fw.node_veths(), 0, "veth left");
    fw.driver
        .del(&list, &pod.att, &caps, Some(&result))
        .expect("second DEL");
    fw.assert_nothing_of("pod-a");
    // The host port is closed again.
    let _srv = Server::start(&pod.ns, POD_PORT, "pod-a", 8);
    assert!(
        connect(&fw.outside, NODE4, HOST_PORT, 1.0).is_err(),
        "8080 still forwarded"
    );

    // A DEL without prevResult (the runtime lost its cache) removes as much.
    let (pod_b, _) = fw.add_pod(&list, "pod-b", &caps);
    assert!(!fw.owned("pod-b").is_empty());
    fw.driver
        .del(&list, &pod_b.att, &caps, None)
        .expect("DEL without prevResult");
    fw.assert_nothing_of("pod-b");
    assert_eq!(
        fw.attachment_state(),
        Vec::<String>::new(),
        "per-attachment state left"
    );
    assert_eq!(reserved_by(&fw.store(), "pod-b"), Vec::<String>::new());

    // DEL finds host ports by the mappings it is given; without them, or
    // with others than ADD had, it still removes every one of the pod's.
    for (id, del_caps) in [
        ("pod-c", json!({})),
        ("pod-d", ports(&[(8082, POD_PORT, None)])),
    ] {
        let (pod, result) = fw.add_pod(&list, id, &caps);
        assert!(!fw.mappings(id, false).is_empty(), "{:#?}", fw.owned(id));
        fw.driver
            .del(&list, &pod.att, &del_caps, Some(&result))
            .unwrap_or_else(|e| panic!("DEL {id} with {del_caps}: {e:?}"));
        fw.assert_nothing_of(id);
    }
}

#[test]
/// A netfilter socket that deleted something is closed in the background,
/// once the kernel has freed what it deleted, with the sockets other
/// invocations of the node handed over meanwhile: when pods have come and
/// gone, none stays open in the node namespace.
fn no_netfilter_socket_stays_open_after_pods_come_and_go() {
    require_root!();
    let b = Backend::Nftables;
    let fw = Fw::new(b);
    let list = fw.list(&Conf::new(b));
    let caps = port_8080();
    for id in ["pod-a", "pod-b", "pod-c"] {
        let (pod, result) = fw.add_pod(&list, id, &caps);
        fw.driver
            .check(&list, &pod.att, &caps, &result)
            .expect("CHECK");
        fw.driver
            .del(&list, &pod.att, &caps, Some(&result))
            .expect("DEL");
        fw.assert_nothing_of(id);
    }
    // A grace period is 5-30 ms; the close waits for a few at most.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let open = netfilter_sockets(&fw.node);
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "netfilter sockets still open in the node namespace: {open:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Netfilter netlink sockets of processes in `ns` (`/proc/net/netlink`,
/// protocol 12; the kernel's own has port id 0).
fn netfilter_sockets(ns: &Netns) -> Vec<String> {
    ns.sh("cat /proc/net/netlink")
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"12") && f.get(2).is_some_and(|pid| *pid != "0")
        })
        .map(str::to_string)
        .collect()
}

per_backend!(del_after_the_pod_netns_is_gone_removes_the_rules);
/// The runtime lost the pod's namespace (a node reboot, a crash): DEL
/// without CNI_NETNS still removes the pod's masquerade and host ports.
fn del_after_the_pod_netns_is_gone_removes_the_rules(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let list = fw.list(&Conf::new(b));
    let caps = port_8080();
    let (pod, result) = fw.add_pod(&list, "pod-a", &caps);
    assert!(!fw.masquerade("pod-a").is_empty() && !fw.mappings("pod-a", false).is_empty());
    let att = Attachment {
        netns: None,
        ..pod.att.clone()
    };
    drop(pod);
    fw.driver
        .del(&list, &att, &caps, Some(&result))
        .expect("DEL without netns");
    fw.assert_nothing_of("pod-a");
    assert_eq!(reserved_by(&fw.store(), "pod-a"), Vec::<String>::new());
}

per_backend!(a_second_pods_rules_survive_the_first_pods_del);
fn a_second_pods_rules_survive_the_first_pods_del(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let list = fw.list(&Conf::new(b));
    let caps_a = port_8080();
    let caps_b = ports(&[(8081, POD_PORT, None)]);
    let (pod_a, result_a) = fw.add_pod(&list, "pod-a", &caps_a);
    let (pod_b, result_b) = fw.add_pod(&list, "pod-b", &caps_b);
    let before = fw.owned("pod-b");
    assert!(!before.is_empty());
    fw.driver
        .del(&list, &pod_a.att, &caps_a, Some(&result_a))
        .expect("DEL pod-a");
    fw.assert_nothing_of("pod-a");
    assert_eq!(
        fw.owned("pod-b"),
        before,
        "pod-b's rules changed with pod-a's DEL"
    );
    fw.driver
        .check(&list, &pod_b.att, &caps_b, &result_b)
        .expect("CHECK pod-b");
    let _srv = Server::start(&pod_b.ns, POD_PORT, "pod-b", 8);
    assert_eq!(reach(&fw.outside, NODE4, 8081), format!("pod-b {OUT4}"));
    assert_egress_masqueraded(&fw, &pod_b);
}

per_backend!(gc_removes_the_rules_of_pods_not_listed);
fn gc_removes_the_rules_of_pods_not_listed(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let list = fw.list(&Conf::new(b));
    let (_pod_a, _) = fw.add_pod(&list, "pod-a", &port_8080());
    let (pod_b, _) = fw.add_pod(&list, "pod-b", &ports(&[(8081, POD_PORT, None)]));
    // Another network on the same node, whose rules this GC must not see.
    let mut other = list.clone();
    other["name"] = json!("fwother");
    other["plugins"][0]["bridge"] = json!("wcfw1");
    other["plugins"][0]["ipam"]["ranges"] = json!([[{ "subnet": "10.67.0.0/24" }]]);
    let (_pod_c, _) = fw.add_pod(&other, "pod-c", &ports(&[(8082, POD_PORT, None)]));
    let before = fw.owned("pod-b");
    let other_before = fw.owned("pod-c");
    assert!(!fw.owned("pod-a").is_empty() && !before.is_empty() && !other_before.is_empty());
    fw.driver.gc(&list, &[&pod_b.att]).expect("GC");
    assert_eq!(
        fw.owned("pod-c"),
        other_before,
        "GC of {NET} touched the rules of another network"
    );
    fw.assert_nothing_of("pod-a");
    assert_eq!(
        fw.owned("pod-b"),
        before,
        "GC touched the rules of the valid pod-b"
    );
    assert_eq!(reserved_by(&fw.store(), "pod-a"), Vec::<String>::new());
    assert_eq!(reserved_by(&fw.store(), "pod-b").len(), 1);
    let _srv = Server::start(&pod_b.ns, POD_PORT, "pod-b", 8);
    assert_eq!(reach(&fw.outside, NODE4, 8081), format!("pod-b {OUT4}"));
    assert!(
        connect(&fw.outside, NODE4, HOST_PORT, 1.0).is_err(),
        "pod-a's 8080 still forwarded"
    );
}

per_backend!(masq_plugin_masquerades_egress);
fn masq_plugin_masquerades_egress(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let conf = Conf {
        masq: Masq::Plugin,
        portmap: false,
        ..Conf::new(b)
    };
    let list = fw.list(&conf);
    assert_eq!(list["plugins"][0]["ipMasq"], false, "{list}");
    let caps = json!({});
    let (pod, result) = fw.add_pod(&list, "pod-a", &caps);
    assert!(
        !fw.masquerade("pod-a").is_empty(),
        "{:#?}",
        fw.owned("pod-a")
    );
    fw.assert_only_in_backend("pod-a");
    assert_egress_masqueraded(&fw, &pod);
    fw.driver
        .check(&list, &pod.att, &caps, &result)
        .expect("CHECK");
    // Only masq's rules removed: CHECK must notice.
    let conf = Driver::plugin_conf(&list, 1, Some(&result), &caps);
    fw.driver
        .exec("masq", "DEL", Some(&pod.att), &conf)
        .expect("masq DEL");
    assert_eq!(fw.masquerade("pod-a"), Vec::<String>::new());
    let err = fw
        .driver
        .check(&list, &pod.att, &caps, &result)
        .expect_err("CHECK without the masquerade rule must fail");
    assert!(err.msg.contains("masquerade"), "{err:?}");
    fw.driver
        .del(&list, &pod.att, &caps, Some(&result))
        .expect("DEL");
    fw.assert_nothing_of("pod-a");
}

per_backend!(host_ip_limits_the_mapping_to_that_address);
fn host_ip_limits_the_mapping_to_that_address(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    fw.node.sh(&format!("ip addr add {NODE4_OTHER}/24 dev up0"));
    // A dual-stack pod with a v4-only mapping.
    let list = fw.list(&Conf::new(b).dual_stack());
    let caps = ports(&[(HOST_PORT, POD_PORT, Some(NODE4))]);
    let (pod, result) = fw.add_pod(&list, "pod-a", &caps);
    assert_eq!(
        fw.mappings("pod-a", false).len(),
        1,
        "{:#?}",
        fw.owned("pod-a")
    );
    assert_eq!(
        fw.mappings("pod-a", true),
        Vec::<String>::new(),
        "v6 mapping for a v4 hostIP"
    );
    fw.driver
        .check(&list, &pod.att, &caps, &result)
        .expect("CHECK of a dual-stack pod with a v4-only mapping");
    let _srv = Server::start(&pod.ns, POD_PORT, "pod-a", 8);
    assert_eq!(
        reach(&fw.outside, NODE4, HOST_PORT),
        format!("pod-a {OUT4}")
    );
    assert!(
        connect(&fw.outside, NODE4_OTHER, HOST_PORT, 1.0).is_err(),
        "a mapping for hostIP {NODE4} must not forward {NODE4_OTHER}:{HOST_PORT}"
    );
}

per_backend!(ipv6_host_ports_for_a_dual_stack_pod);
fn ipv6_host_ports_for_a_dual_stack_pod(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let list = fw.list(&Conf::new(b).dual_stack());
    let caps = port_8080();
    let (pod, result) = fw.add_pod(&list, "pod-a", &caps);
    assert_eq!(
        fw.mappings("pod-a", false).len(),
        1,
        "{:#?}",
        fw.owned("pod-a")
    );
    assert_eq!(
        fw.mappings("pod-a", true).len(),
        1,
        "{:#?}",
        fw.owned("pod-a")
    );
    fw.driver
        .check(&list, &pod.att, &caps, &result)
        .expect("CHECK of a dual-stack pod");
    wait_dad(&fw.node, BRIDGE);
    let _srv = Server::start(&pod.ns, POD_PORT, "pod-a", 8);
    assert_eq!(
        reach(&fw.outside, NODE6, HOST_PORT),
        format!("pod-a {OUT6}")
    );
    assert_eq!(
        reach(&fw.outside, NODE4, HOST_PORT),
        format!("pod-a {OUT4}")
    );
    // IPv6 egress is masqueraded too.
    let _out = Server::start(&fw.outside, OUTSIDE_PORT, "outside", 8);
    assert_eq!(
        reach(&pod.ns, OUT6, OUTSIDE_PORT),
        format!("outside {NODE6}")
    );
}

per_backend!(the_same_host_port_twice_fails_and_leaves_nothing);
/// A second pod asking for a host port another pod holds: portmap's ADD
/// fails with an error naming the port and adds none of its rules; the
/// runtime then DELs the failed attachment (without prevResult: it cached
/// no result), as containerd, CRI-O and podman do, and nothing of it stays.
/// The first pod keeps its rules and its port throughout.
fn the_same_host_port_twice_fails_and_leaves_nothing(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let list = fw.list(&Conf::new(b));
    let caps = port_8080();
    let (pod_a, _) = fw.add_pod(&list, "pod-a", &caps);
    let before = fw.owned("pod-a");
    let pod_b = fw.pod("pod-b");
    let err = fw
        .driver
        .add(&list, &pod_b.att, &caps)
        .expect_err("a second pod on host port 8080 must fail");
    eprintln!("second ADD: code {}: {}", err.code, err.msg);
    assert!(
        err.msg.contains("already mapped") && err.msg.contains("8080"),
        "the error should say host port 8080 is taken: {err:?}"
    );
    assert_eq!(
        fw.mappings("pod-b", false),
        Vec::<String>::new(),
        "the failed ADD left a mapping"
    );
    assert_eq!(
        fw.owned("pod-a"),
        before,
        "the failed ADD touched pod-a's rules"
    );

    fw.driver
        .del(&list, &pod_b.att, &caps, None)
        .expect("the runtime's DEL after the failed ADD");
    fw.assert_nothing_of("pod-b");
    assert_eq!(fw.node_veths(), 1, "a veth of pod-b left in the node");
    assert!(link(&pod_b.ns, "eth0").is_none(), "eth0 left in pod-b");
    assert_eq!(
        reserved_by(&fw.store(), "pod-b"),
        Vec::<String>::new(),
        "reservation of pod-b left"
    );
    assert_eq!(
        fw.owned("pod-a"),
        before,
        "pod-b's DEL touched pod-a's rules"
    );
    let _srv = Server::start(&pod_a.ns, POD_PORT, "pod-a", 8);
    assert_eq!(
        reach(&fw.outside, NODE4, HOST_PORT),
        format!("pod-a {OUT4}")
    );
}

/// The nftables table's rules do not grow with the pods: 50 pods, each with
/// a host port, add only set and map elements.
#[test]
fn nftables_rules_are_constant_in_the_number_of_pods() {
    require_root!();
    let started = Instant::now();
    let b = Backend::Nftables;
    let fw = Fw::new(b);
    let list = fw.list(&Conf::new(b));
    let mut pods = Vec::new();
    pods.push(fw.add_pod(&list, "pod-0", &ports(&[(10000, POD_PORT, None)])));
    let rules_1 = nft_rules(&fw.node);
    let elems_1 = nft_elements(&fw.node).len();
    assert!(!rules_1.is_empty() && elems_1 > 0);
    for i in 1..50u16 {
        pods.push(fw.add_pod(
            &list,
            &format!("pod-{i}"),
            &ports(&[(10000 + i, POD_PORT, None)]),
        ));
    }
    let rules_50 = nft_rules(&fw.node);
    let elems_50 = nft_elements(&fw.node).len();
    eprintln!(
        "1 pod: {} rules, {elems_1} elements; 50 pods: {} rules, {elems_50} elements ({:?})",
        rules_1.len(),
        rules_50.len(),
        started.elapsed()
    );
    assert_eq!(
        rules_50, rules_1,
        "the rules changed with the number of pods"
    );
    assert_eq!(
        elems_50,
        50 * elems_1,
        "each pod should add the same elements"
    );
    // The last pod's port works among all the others.
    let (last, _) = pods.last().expect("pods");
    let _srv = Server::start(&last.ns, POD_PORT, "pod-49", 2);
    assert_eq!(reach(&fw.outside, NODE4, 10049), format!("pod-49 {OUT4}"));
}

/// What a conflist's pods can do, as seen from both ends.
#[derive(Debug, PartialEq, Eq)]
struct Reachability {
    outside_to_host_port: String,
    pod_to_outside: String,
    hairpin: String,
    node_localhost: String,
}

fn reachability(dir: &Path, tag: &str) -> Reachability {
    let fw = Fw::on(dir, tag, None);
    let conf = Conf {
        version: REFERENCE_VERSION,
        backend: None,
        ..Conf::new(Backend::Nftables)
    };
    let list = fw.list(&conf);
    let (pod, _) = fw.add_pod(&list, "pod-a", &port_8080());
    let _in = Server::start(&pod.ns, POD_PORT, "pod-a", 3);
    let _out = Server::start(&fw.outside, OUTSIDE_PORT, "outside", 2);
    Reachability {
        outside_to_host_port: connect(&fw.outside, NODE4, HOST_PORT, 3.0).unwrap_or_else(|e| e),
        pod_to_outside: connect(&pod.ns, OUT4, OUTSIDE_PORT, 3.0).unwrap_or_else(|e| e),
        hairpin: connect(&pod.ns, NODE4, HOST_PORT, 3.0).unwrap_or_else(|e| e),
        node_localhost: connect(&fw.node, "127.0.0.1", HOST_PORT, 3.0).unwrap_or_else(|e| e),
    }
}

/// The same conflist (no backend keys) through the reference plugins and
/// ours gives the same reachability.
#[test]
fn reference_plugins_give_the_same_reachability() {
    require_root!();
    let Some(reference) = reference_dir().filter(|d| d.join("portmap").is_file()) else {
        eprintln!("skipped: reference bridge/portmap not installed in /usr/lib/cni");
        return;
    };
    let theirs = reachability(&reference, "fwref");
    let ours = reachability(&dist(), "fwours");
    let want = Reachability {
        outside_to_host_port: format!("pod-a {OUT4}"),
        pod_to_outside: format!("outside {NODE4}"),
        hairpin: format!("pod-a {GW4}"),
        node_localhost: format!("pod-a {GW4}"),
    };
    assert_eq!(theirs, want, "the reference plugins");
    assert_eq!(ours, theirs, "ours vs the reference plugins");
}

per_backend!(overlapping_host_ips_on_one_port_are_refused_in_either_order);
/// One pod maps 198.51.100.1:8080, another 8080 on every address: they
/// overlap on 198.51.100.1:8080, so the second ADD is refused whichever
/// came first, and the first keeps the port.
fn overlapping_host_ips_on_one_port_are_refused_in_either_order(b: Backend) {
    require_root!();
    for (first, second) in [(Some(NODE4), None), (None, Some(NODE4))] {
        let fw = Fw::new(b);
        let list = fw.list(&Conf::new(b));
        let (pod_a, _) = fw.add_pod(&list, "pod-a", &ports(&[(HOST_PORT, POD_PORT, first)]));
        let pod_b = fw.pod("pod-b");
        let second_add = fw
            .driver
            .add(&list, &pod_b.att, &ports(&[(HOST_PORT, POD_PORT, second)]));
        let _srv = Server::start(&pod_a.ns, POD_PORT, "pod-a", 8);
        let outcome = connect(&fw.outside, NODE4, HOST_PORT, 2.0);
        let err = second_add.err().unwrap_or_else(|| {
            panic!(
                "pod-a maps hostIP {first:?}:8080, pod-b hostIP {second:?}:8080: the second ADD \
                 succeeded; {NODE4}:8080 now reaches {outcome:?}; rules: {:#?}",
                fw.attachment_state()
            )
        });
        assert!(
            err.msg.contains("already mapped") && err.msg.contains("8080"),
            "{err:?}"
        );
        assert_eq!(outcome, Ok(format!("pod-a {OUT4}")));
    }
}

per_backend!(a_reused_pod_address_keeps_its_rules);
/// Pod A's DEL is under way: bridge DEL has released A's address (IPAM
/// first) but not yet removed A's masquerade, and a concurrent ADD of pod B
/// (allowed: different containers) is given the same address. B's ADD
/// must give B rules of its own: CHECK passes, and A's DEL completing
/// leaves B masqueraded.
///
/// The interleaving is reproduced deterministically: B's network has the
/// same name, bridge and subnet but its own host-local dataDir, so it gets
/// A's address while A's rules are still in place.
fn a_reused_pod_address_keeps_its_rules(b: Backend) {
    require_root!();
    let fw = Fw::new(b);
    let list_a = fw.list(&Conf::new(b));
    let data_b = TempDir::new().expect("temp dir");
    let list_b = Conf::new(b).list(data_b.path());
    let caps_a = port_8080();
    let caps_b = ports(&[(8081, POD_PORT, None)]);
    let (pod_a, result_a) = fw.add_pod(&list_a, "pod-a", &caps_a);
    let (pod_b, result_b) = fw.add_pod(&list_b, "pod-b", &caps_b);
    assert_eq!(
        pod_ip4(&result_a),
        pod_ip4(&result_b),
        "precondition: one address"
    );
    assert!(
        !fw.masquerade("pod-b").is_empty(),
        "pod-b has no masquerade of its own: {:#?}",
        fw.attachment_state()
    );
    fw.driver
        .check(&list_b, &pod_b.att, &caps_b, &result_b)
        .expect("CHECK of pod-b right after its ADD");
    let before = fw.owned("pod-b");
    fw.driver
        .del(&list_a, &pod_a.att, &caps_a, Some(&result_a))
        .expect("DEL pod-a");
    drop(pod_a);
    assert_eq!(
        fw.owned("pod-b"),
        before,
        "pod-a's DEL changed pod-b's rules"
    );
    fw.driver
        .check(&list_b, &pod_b.att, &caps_b, &result_b)
        .expect("CHECK of pod-b after pod-a's DEL");
    assert_egress_masqueraded(&fw, &pod_b);
}
