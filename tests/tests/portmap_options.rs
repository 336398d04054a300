//! The portmap options, end to end through the installed `wasm-cni` with
//! the bridge and portmap components: `markMasqBit`, `externalSetMarkChain`
//! and `conditionsV4` on iptables, `conditionsV4` on nftables, shown by
//! real TCP connections and by `iptables-save -t nat` / `nft list` in the
//! node namespace.
//!
//! The world of each test, all in namespaces the test creates: a node
//! namespace holding the bridge `wcpo0` (pods in 10.67.0.0/24) and the
//! rules; an outside host joined to the node by the veth uplink
//! `up0`/`out0` (198.51.100.1/24 on the node; 198.51.100.2/24 and
//! 198.51.100.4/24 outside), with no route to the pod subnet; pods, each a
//! namespace with one attachment `eth0`.

mod common;
#[path = "firewall/net.rs"]
mod net;

use common::Pod;
use net::{connect_from, reach, Server};
use serde_json::{json, Value};
use tempfile::TempDir;
use wasm_cni_tests::{dist, require_root, Attachment, Driver, Netns};

const NET: &str = "pmopts";
const BRIDGE: &str = "wcpo0";
const SUBNET4: &str = "10.67.0.0/24";
const GW4: &str = "10.67.0.1";
const NODE4: &str = "198.51.100.1";
const OUT4: &str = "198.51.100.2";
/// A second address of the outside host.
const OUT4_OTHER: &str = "198.51.100.4";
const POD_PORT: u16 = 80;

struct World {
    node: Netns,
    outside: Netns,
    data: TempDir,
    driver: Driver,
}

impl World {
    fn new() -> World {
        let node = Netns::new("pmnode");
        let outside = Netns::new("pmout");
        net::uplink(
            &node,
            &outside,
            &[&format!("{NODE4}/24")],
            &[&format!("{OUT4}/24"), &format!("{OUT4_OTHER}/24")],
        );
        let driver = Driver::new(dist(), &node);
        World {
            node,
            outside,
            data: TempDir::new().expect("temp dir"),
            driver,
        }
    }

    /// bridge (gateway, ipMasq, hairpin) + portmap, both on iptables, the
    /// portmap object extended by `options`.
    fn list(&self, options: Value) -> Value {
        self.list_on("iptables", options)
    }

    fn list_on(&self, backend: &str, options: Value) -> Value {
        let mut portmap = json!({
            "type": "portmap",
            "backend": backend,
            "capabilities": { "portMappings": true },
        });
        for (k, v) in options.as_object().into_iter().flatten() {
            portmap[k] = v.clone();
        }
        json!({
            "cniVersion": "1.1.0",
            "name": NET,
            "plugins": [{
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "ipMasqBackend": backend,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": self.data.path(),
                    "ranges": [[{ "subnet": SUBNET4 }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            }, portmap],
        })
    }

    fn pod(&self, id: &str) -> Pod {
        let ns = Netns::new("pmpod");
        let att = Attachment::new(id, &ns, "eth0");
        Pod { ns, att }
    }

    /// A pod `id` added with `hostPort` -> 80/tcp.
    fn add(&self, list: &Value, id: &str, host_port: u16) -> Pod {
        let pod = self.pod(id);
        self.driver
            .add(list, &pod.att, &caps(host_port))
            .unwrap_or_else(|e| panic!("ADD {id}: {e:?}"));
        pod
    }

    /// `iptables-save -t nat` of the node, without its comment lines.
    fn nat(&self) -> Vec<String> {
        self.node
            .sh("iptables-save -t nat")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    /// The node's nat rules written for container `id`.
    fn rules_of(&self, id: &str) -> Vec<String> {
        let needle = format!(" id={id} if=");
        self.nat()
            .into_iter()
            .filter(|l| l.contains(&needle))
            .collect()
    }
}

fn caps(host_port: u16) -> Value {
    json!({ "portMappings": [
        { "hostPort": host_port, "containerPort": POD_PORT, "protocol": "tcp" }
    ]})
}

/// `markMasqBit: 14`: the pod reaches its own host port through the node
/// (hairpin, masqueraded to the bridge address) because its connection was
/// marked 0x4000 and the node masquerades that mark; DEL takes the pod's
/// rules away.
#[test]
fn mark_masq_bit_masquerades_hairpin() {
    require_root!();
    let w = World::new();
    let list = w.list(json!({ "markMasqBit": 14 }));
    let pod = w.add(&list, "pod-a", 8080);
    let _srv = Server::start(&pod.ns, POD_PORT, "pod-a", 4);
    assert_eq!(reach(&pod.ns, NODE4, 8080), format!("pod-a {GW4}"));

    let mine = w.rules_of("pod-a");
    let marks: Vec<&String> = mine
        .iter()
        .filter(|l| l.ends_with("-j MARK --set-xmark 0x4000/0x4000"))
        .collect();
    assert!(
        marks.iter().any(|l| l.contains(&format!("-s {SUBNET4} "))),
        "no hairpin mark: {mine:#?}"
    );
    let nat = w.nat();
    assert!(
        nat.iter().any(|l| l
            .starts_with("-A WASM-CNI-HOSTPORT-MASQ -m mark --mark 0x4000/0x4000 ")
            && l.ends_with("-j MASQUERADE")),
        "no masquerade for mark 0x4000: {nat:#?}"
    );
    assert!(
        !nat.iter().any(|l| l.contains("0x2000")),
        "the default bit is in use: {nat:#?}"
    );

    w.driver
        .del(&list, &pod.att, &caps(8080), None)
        .expect("DEL");
    assert_eq!(w.rules_of("pod-a"), Vec::<String>::new());
}

/// `externalSetMarkChain: KUBE-MARK-MASQ`: without the chain ADD fails
/// naming the option and the chain, and leaves no host-port rule; with the
/// chain and its masquerade rule (as kube-proxy makes them) the pod's
/// hairpin connection goes through them, and no mark of ours is set.
#[test]
fn external_set_mark_chain_hands_masquerade_to_its_owner() {
    require_root!();
    let w = World::new();
    let list = w.list(json!({ "externalSetMarkChain": "KUBE-MARK-MASQ" }));
    let pod = w.pod("pod-a");
    let e = w
        .driver
        .add(&list, &pod.att, &caps(8080))
        .expect_err("ADD without the external chain");
    assert_eq!(e.code, 7, "{e:?}");
    assert!(
        e.msg.contains("externalSetMarkChain") && e.msg.contains("KUBE-MARK-MASQ"),
        "{e:?}"
    );
    let left: Vec<String> = w
        .nat()
        .into_iter()
        .filter(|l| l.contains("DNAT") || l.contains("KUBE-MARK-MASQ"))
        .collect();
    assert!(
        left.is_empty(),
        "a failed ADD left host-port rules: {left:#?}"
    );
    // The runtime cleans up the failed attachment.
    w.driver
        .del(&list, &pod.att, &caps(8080), None)
        .expect("DEL");

    w.node.sh("iptables -t nat -N KUBE-MARK-MASQ \
         && iptables -t nat -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000 \
         && iptables -t nat -A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE");
    w.driver
        .add(&list, &pod.att, &caps(8080))
        .unwrap_or_else(|e| panic!("ADD with the external chain: {e:?}"));
    let _srv = Server::start(&pod.ns, POD_PORT, "pod-a", 4);
    assert_eq!(reach(&pod.ns, NODE4, 8080), format!("pod-a {GW4}"));

    let mine = w.rules_of("pod-a");
    assert!(
        mine.iter()
            .any(|l| l.contains(&format!("-s {SUBNET4} ")) && l.ends_with("-j KUBE-MARK-MASQ")),
        "no jump to KUBE-MARK-MASQ: {mine:#?}"
    );
    assert!(!mine.iter().any(|l| l.contains("--set-xmark")), "{mine:#?}");
    assert!(
        !w.nat().iter().any(|l| l.contains("WASM-CNI-HOSTPORT-MASQ")),
        "{:#?}",
        w.nat()
    );
    // The other system's masquerade rule is what carried the connection.
    let counted = w.node.sh("iptables-save -c -t nat");
    let hits: u64 = counted
        .lines()
        .find(|l| l.contains("-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE"))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counted masquerade rule: {counted}"));
    assert!(hits > 0, "{counted}");
}

/// Pod `a` (host port 8080) is reached from [`OUT4`] only, pod `b` (8081)
/// from every other source: each answers with its name and the peer it saw.
/// The servers are returned, to keep listening for later checks.
fn only_the_selected_sources_reach(w: &World, a: &Pod, b: &Pod) -> (Server, Server) {
    let servers = (
        Server::start(&a.ns, POD_PORT, "pod-a", 2),
        Server::start(&b.ns, POD_PORT, "pod-b", 2),
    );
    let from = |src: &str, port: u16| connect_from(&w.outside, Some(src), NODE4, port, 3.0);
    assert_eq!(from(OUT4, 8080), Ok(format!("pod-a {OUT4}")));
    assert!(
        from(OUT4_OTHER, 8080).is_err(),
        "{OUT4_OTHER} reached pod-a"
    );
    assert!(from(OUT4, 8081).is_err(), "{OUT4} reached pod-b");
    assert_eq!(from(OUT4_OTHER, 8081), Ok(format!("pod-b {OUT4_OTHER}")));
    servers
}

/// `conditionsV4` narrow who reaches a host port: `-s <outside>/32` lets
/// only that address in, `! -s <outside>/32` everybody else. A connection
/// the conditions leave out reaches the node itself, where nothing listens.
#[test]
fn conditions_v4_select_the_sources_that_reach_the_pod() {
    require_root!();
    let w = World::new();
    let only = w.list(json!({ "conditionsV4": ["-s", format!("{OUT4}/32")] }));
    let except = w.list(json!({ "conditionsV4": ["!", "-s", format!("{OUT4}/32")] }));
    let a = w.add(&only, "pod-a", 8080);
    let b = w.add(&except, "pod-b", 8081);
    let _servers = only_the_selected_sources_reach(&w, &a, &b);

    for (id, cond) in [
        ("pod-a", format!("-s {OUT4}/32")),
        ("pod-b", format!("! -s {OUT4}/32")),
    ] {
        let entries: Vec<String> = w
            .rules_of(id)
            .into_iter()
            .filter(|l| l.starts_with("-A WASM-CNI-PREROUTING "))
            .collect();
        assert_eq!(entries.len(), 1, "{entries:#?}");
        assert!(
            entries[0].starts_with(&format!("-A WASM-CNI-PREROUTING {cond} -p tcp ")),
            "{entries:#?}"
        );
    }
}

/// nftables: `conditionsV4` in nft syntax. Each conditional mapping is one
/// rule of `hostports_conditional` with its owner's comment; only the
/// selected sources reach the pod; CHECK passes; DEL removes the rules.
#[test]
fn nft_conditions_v4_select_the_sources_that_reach_the_pod() {
    require_root!();
    let w = World::new();
    let only = w.list_on(
        "nftables",
        json!({ "conditionsV4": [format!("ip saddr {OUT4}")] }),
    );
    let except = w.list_on(
        "nftables",
        json!({ "conditionsV4": [format!("ip saddr != {OUT4}/32")] }),
    );
    let a = w.pod("pod-a");
    let result_a = w.driver.add(&only, &a.att, &caps(8080)).expect("ADD pod-a");
    let b = w.add(&except, "pod-b", 8081);
    let _servers = only_the_selected_sources_reach(&w, &a, &b);

    let chain = || {
        w.node
            .sh("nft list chain inet wasm_cni hostports_conditional")
    };
    let listing = chain();
    let rule_a = listing
        .lines()
        .find(|l| l.contains("id=pod-a "))
        .unwrap_or_else(|| panic!("no rule of pod-a:\n{listing}"));
    assert!(
        rule_a.contains(&format!("ip saddr {OUT4} ")) && rule_a.contains("tcp dport 8080"),
        "{rule_a}"
    );
    assert!(
        listing.contains(&format!("ip saddr != {OUT4} ")),
        "{listing}"
    );

    w.driver
        .check(&only, &a.att, &caps(8080), &result_a)
        .expect("CHECK pod-a");
    w.driver
        .del(&only, &a.att, &caps(8080), Some(&result_a))
        .expect("DEL pod-a");
    let listing = chain();
    assert!(!listing.contains("id=pod-a "), "{listing}");
    assert!(listing.contains("id=pod-b "), "{listing}");
    assert!(
        connect_from(&w.outside, Some(OUT4), NODE4, 8080, 3.0).is_err(),
        "pod-a still reachable after DEL"
    );
    w.driver
        .del(&except, &b.att, &caps(8081), None)
        .expect("DEL pod-b without prevResult");
    assert!(!chain().contains(" id="), "{}", chain());
    let held = w.node.sh("nft list map inet wasm_cni hostports_held_v4");
    assert!(!held.contains(" id="), "{held}");
}
