//! The `bridge` conflist (gateway, hairpin, dual-stack host-local with
//! default routes) and the `loopback` network, run through the installed
//! plugin directory in namespaces each test creates.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{json, Value};
use wasm_cni_tests::{addr_only, dist, reference_dir, require_root, result_ips, Attachment, Netns};

const LATEST: &str = "1.1.0";

/// A world on the installed plugin directory.
fn world() -> World {
    World::new("node", &dist())
}

/// A world with `n` pods (`pod-0` ...) added to the bridge network.
fn world_with_pods(n: usize) -> (World, Vec<(Pod, Value)>) {
    let w = world();
    let pods = (0..n)
        .map(|i| w.add_pod(LATEST, &format!("pod-{i}")))
        .collect();
    (w, pods)
}

/// The pod address of the family from a result, without prefix.
fn pod_ip(result: &Value, v6: bool) -> String {
    let (v4, v6s) = split_ips(result);
    let list = if v6 { v6s } else { v4 };
    addr_only(
        list.first()
            .unwrap_or_else(|| panic!("no address in {result}")),
    )
    .to_string()
}

fn has_link(ns: &Netns, name: &str) -> bool {
    link(ns, name).is_some()
}

#[test]
fn three_pods_get_unique_dual_stack_addresses() {
    require_root!();
    let (_w, pods) = world_with_pods(3);
    let mut seen = HashSet::new();
    for (pod, result) in &pods {
        let (v4, v6) = split_ips(result);
        assert_eq!(
            (v4.len(), v6.len()),
            (1, 1),
            "one address per family: {result}"
        );
        for a in v4.iter().chain(&v6) {
            assert!(seen.insert(a.clone()), "{a} handed out twice");
            assert!(
                global_addrs(&pod.ns, "eth0").contains(a),
                "{a} is not on eth0 in {}",
                pod.att.id
            );
        }
        assert!(
            v4[0].starts_with("10.88.1.") && v4[0].ends_with("/24"),
            "{v4:?}"
        );
        assert!(
            v6[0].starts_with("fd88::") && v6[0].ends_with("/64"),
            "{v6:?}"
        );
        // Set by netlink, as the sysctl would: the pod announces its address.
        assert_eq!(
            pod.ns
                .sh("cat /proc/sys/net/ipv4/conf/eth0/arp_notify")
                .trim(),
            "1"
        );
    }
}

#[test]
fn pods_route_by_default_via_the_gateway() {
    require_root!();
    let (_w, pods) = world_with_pods(3);
    for (pod, _) in &pods {
        for (v6, gw) in [(false, GW4), (true, GW6)] {
            let route = default_route(&pod.ns, v6)
                .unwrap_or_else(|| panic!("{}: no default route (v6={v6})", pod.att.id));
            assert_eq!(route["gateway"], gw, "{route}");
            assert_eq!(route["dev"], "eth0", "{route}");
        }
    }
}

#[test]
fn loopback_network_brings_lo_up() {
    require_root!();
    let w = world();
    let pod = w.pod("pod-lo");
    pod.ns.sh("ip link set lo down");
    assert!(!is_up(&pod.ns, "lo"));
    let result = w.add_loopback(LATEST, &pod).expect("loopback ADD");
    assert!(is_up(&pod.ns, "lo"));
    assert_eq!(result["interfaces"][0]["name"], "lo", "{result}");
    let ips = result_ips(&result);
    assert!(ips.contains(&"127.0.0.1/8".to_string()), "{result}");
}

#[test]
fn bridge_holds_the_gateway_addresses() {
    require_root!();
    let (w, _pods) = world_with_pods(1);
    let addrs = global_addrs(&w.node, BRIDGE);
    for gw in [format!("{GW4}/24"), format!("{GW6}/64")] {
        assert!(addrs.contains(&gw), "bridge lacks {gw}: {addrs:?}");
    }
    assert_eq!(
        link(&w.node, BRIDGE).expect("bridge")["linkinfo"]["info_kind"],
        "bridge"
    );
}

#[test]
fn host_veths_are_hairpin_ports_of_the_bridge() {
    require_root!();
    let (w, pods) = world_with_pods(3);
    let ports = names(&ip_json(&w.node, &format!("link show master {BRIDGE}")));
    for (pod, result) in &pods {
        let host_if = result["interfaces"][1]["name"]
            .as_str()
            .expect("host veth name");
        let l = link(&w.node, host_if).unwrap_or_else(|| panic!("{host_if} missing in node"));
        assert_eq!(l["linkinfo"]["info_kind"], "veth", "{l}");
        assert_eq!(l["master"], BRIDGE, "{l}");
        assert!(
            ports.contains(&host_if.to_string()),
            "{host_if} not in {ports:?}"
        );
        assert_eq!(l["linkinfo"]["info_slave_data"]["hairpin"], true, "{l}");
        let sysfs = w
            .node
            .sh(&format!("cat /sys/class/net/{host_if}/brport/hairpin_mode"));
        assert_eq!(sysfs.trim(), "1", "{}: hairpin_mode", pod.att.id);
        assert!(is_up(&w.node, host_if), "{host_if} is down");
        // A switch port has no IPv6 address of its own (the pods' IPv6
        // crosses it, see pods_reach_each_other_the_gateway_and_the_node).
        assert_eq!(l["inet6_addr_gen_mode"], "none", "{l}");
        let v6 = w.node.sh(&format!("ip -6 addr show dev {host_if}"));
        assert!(v6.trim().is_empty(), "{host_if} has IPv6 addresses: {v6}");
        // Each end has the one queue each way a veth uses.
        let eth0 = link(&pod.ns, "eth0").expect("eth0");
        for end in [&l, &eth0] {
            assert_eq!(end["num_tx_queues"], 1, "{end}");
            assert_eq!(end["num_rx_queues"], 1, "{end}");
        }
        // Every node end has the one shared MAC, as the result says; the
        // pods' ends have their own.
        assert_eq!(l["address"], NODE_END_MAC, "{l}");
        assert_eq!(result["interfaces"][1]["mac"], NODE_END_MAC, "{result}");
        assert_ne!(eth0["address"], NODE_END_MAC, "{eth0}");
    }
    // So the bridge keeps one forwarding entry of its own for all of them.
    let fdb = w.node.sh(&format!("bridge -j fdb show br {BRIDGE}"));
    let fdb: Value = serde_json::from_str(&fdb).expect("bridge fdb JSON");
    let own: Vec<&Value> = fdb
        .as_array()
        .expect("fdb list")
        .iter()
        .filter(|e| e["mac"] == NODE_END_MAC)
        .collect();
    assert_eq!(own.len(), 1, "entries for {NODE_END_MAC}: {own:?}");
    assert_eq!(own[0]["state"], "permanent", "{own:?}");
}

#[test]
fn a_container_mac_equal_to_the_node_ends_is_an_invalid_config() {
    require_root!();
    let w = world();
    let pod = w.pod("shared-mac");
    let list = bridge_list_with(LATEST, w.data.path(), |p| {
        p["runtimeConfig"] = json!({"mac": NODE_END_MAC.to_uppercase()})
    });
    let err = w
        .driver
        .add(&list, &pod.att, &no_caps())
        .expect_err("ADD with the node ends' MAC for the container");
    assert_eq!(err.code, 7, "{err:?}");
    assert!(err.msg.starts_with("mac: "), "{err:?}");
    assert_gone(&w, &pod);
}

#[test]
fn pods_reach_each_other_the_gateway_and_the_node() {
    require_root!();
    let (w, pods) = world_with_pods(2);
    wait_dad(&w.node, BRIDGE);
    let (a, ra) = &pods[0];
    let (b, rb) = &pods[1];
    for v6 in [false, true] {
        let gw = if v6 { GW6 } else { GW4 };
        assert!(a.ns.ping(&pod_ip(rb, v6)), "pod-0 -> pod-1 (v6={v6})");
        assert!(b.ns.ping(&pod_ip(ra, v6)), "pod-1 -> pod-0 (v6={v6})");
        assert!(a.ns.ping(gw), "pod-0 -> gateway {gw}");
        assert!(w.node.ping(&pod_ip(rb, v6)), "node -> pod-1 (v6={v6})");
    }
}

#[test]
fn check_passes_after_add() {
    require_root!();
    let (w, pods) = world_with_pods(1);
    let (pod, result) = &pods[0];
    w.driver
        .check(&w.list(LATEST), &pod.att, &no_caps(), result)
        .expect("CHECK after ADD");
    let lo = Attachment::new(&pod.att.id, &pod.ns, "lo");
    let lo_result = w.add_loopback(LATEST, pod).expect("loopback ADD");
    w.driver
        .check(&loopback_list(LATEST), &lo, &no_caps(), &lo_result)
        .expect("loopback CHECK after ADD");
}

/// Asserts that nothing of `pod` remains: no node veth, no pod eth0, no
/// reservation file.
fn assert_gone(w: &World, pod: &Pod) {
    assert!(
        w.node_veths().is_empty(),
        "veths left in the node: {:?}",
        w.node_veths()
    );
    assert!(!has_link(&pod.ns, "eth0"), "eth0 left in {}", pod.att.id);
    assert_store_released(w, &pod.att.id);
}

fn assert_store_released(w: &World, id: &str) {
    assert_eq!(
        reserved_by(&w.store(), id),
        Vec::<String>::new(),
        "reservations of {id} left"
    );
    for f in wasm_cni_tests::files(&w.store()) {
        assert!(
            f == "lock" || f.starts_with("last_reserved_ip.") || f == common::INDEX_DIR,
            "unexpected file {f} in store"
        );
    }
    assert_eq!(
        common::indexed(&w.store(), id),
        Vec::<String>::new(),
        "index entries of {id} left"
    );
}

#[test]
fn del_twice_removes_everything() {
    require_root!();
    let (w, pods) = world_with_pods(1);
    let (pod, result) = &pods[0];
    assert_eq!(reserved_by(&w.store(), "pod-0").len(), 2);
    let list = w.list(LATEST);
    w.driver
        .del(&list, &pod.att, &no_caps(), Some(result))
        .expect("first DEL");
    assert_gone(&w, pod);
    w.driver
        .del(&list, &pod.att, &no_caps(), Some(result))
        .expect("second DEL");
    assert_gone(&w, pod);
}

#[test]
fn del_without_prev_result_releases_everything() {
    require_root!();
    let (w, pods) = world_with_pods(1);
    let (pod, _) = &pods[0];
    w.driver
        .del(&w.list(LATEST), &pod.att, &no_caps(), None)
        .expect("DEL without prevResult");
    assert_gone(&w, pod);
}

#[test]
fn del_after_the_pod_netns_is_gone_releases_the_addresses() {
    require_root!();
    let (w, mut pods) = world_with_pods(1);
    let (pod, result) = pods.remove(0);
    let att = pod.att.clone();
    drop(pod); // deletes the pod namespace; its veth pair goes with it
    w.driver
        .del(&w.list(LATEST), &att, &no_caps(), Some(&result))
        .expect("DEL after netns deletion");
    assert_store_released(&w, &att.id);
    // The kernel tears a deleted namespace down asynchronously; its veth
    // pair leaves the node shortly after.
    wait_until("the pod's veth leaves the node", || {
        w.node_veths().is_empty()
    });
}

#[test]
fn del_without_netns_releases_the_addresses() {
    require_root!();
    let (w, pods) = world_with_pods(1);
    let (pod, result) = &pods[0];
    let att = Attachment {
        netns: None,
        ..pod.att.clone()
    };
    w.driver
        .del(&w.list(LATEST), &att, &no_caps(), Some(result))
        .expect("DEL without CNI_NETNS");
    assert_store_released(&w, &att.id);
}

const INTERFACE_KEYS_1_0: &[&str] = &["name", "mac", "sandbox"];
const INTERFACE_KEYS_1_1: &[&str] = &["name", "mac", "mtu", "sandbox", "socketPath", "pciID"];
const ROUTE_KEYS_1_0: &[&str] = &["dst", "gw"];
const ROUTE_KEYS_1_1: &[&str] = &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"];

fn assert_keys_within(obj: &Value, allowed: &[&str], what: &str) {
    let map = obj
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {obj}"));
    for k in map.keys() {
        assert!(
            allowed.contains(&k.as_str()),
            "{what} has unexpected key {k:?}: {obj}"
        );
    }
}

/// Checks a bridge ADD result against the layout of `version`.
fn assert_layout(result: &Value, version: &str, pod: &Pod) {
    let v11 = version == "1.1.0";
    let has_ip_version = version.starts_with("0.");
    assert_eq!(result["cniVersion"], version, "{result}");
    assert_keys_within(
        result,
        &["cniVersion", "interfaces", "ips", "routes", "dns"],
        "result",
    );

    let ifs = result["interfaces"].as_array().expect("interfaces list");
    assert_eq!(ifs.len(), 3, "bridge, host veth, container: {result}");
    let if_keys = if v11 {
        INTERFACE_KEYS_1_1
    } else {
        INTERFACE_KEYS_1_0
    };
    for (i, iface) in ifs.iter().enumerate() {
        assert_keys_within(iface, if_keys, &format!("interfaces[{i}]"));
        assert!(iface["name"].is_string(), "{iface}");
        assert!(
            iface["mac"].as_str().is_some_and(|m| m.len() == 17),
            "{iface}"
        );
    }
    assert_eq!(ifs[0]["name"], BRIDGE);
    assert!(
        ifs[0].get("sandbox").is_none() && ifs[1].get("sandbox").is_none(),
        "{result}"
    );
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], pod.ns.path().display().to_string());

    let ips = result["ips"].as_array().expect("ips list");
    assert_eq!(ips.len(), 2, "{result}");
    let ip_keys: &[&str] = if has_ip_version {
        &["version", "interface", "address", "gateway"]
    } else {
        &["interface", "address", "gateway"]
    };
    for ip in ips {
        assert_keys_within(ip, ip_keys, "ips[]");
        let address = ip["address"].as_str().expect("address");
        let v6 = address.contains(':');
        assert!(address.contains('/'), "address is a CIDR: {ip}");
        assert_eq!(ip["interface"], 2, "{ip}");
        assert_eq!(ip["gateway"], if v6 { GW6 } else { GW4 }, "{ip}");
        if has_ip_version {
            assert_eq!(ip["version"], if v6 { "6" } else { "4" }, "{ip}");
        }
    }

    let routes = result["routes"].as_array().expect("routes list");
    let route_keys = if v11 { ROUTE_KEYS_1_1 } else { ROUTE_KEYS_1_0 };
    let dsts: Vec<&str> = routes.iter().filter_map(|r| r["dst"].as_str()).collect();
    assert_eq!(dsts, ["0.0.0.0/0", "::/0"], "{result}");
    for r in routes {
        assert_keys_within(r, route_keys, "routes[]");
    }
    if let Some(dns) = result.get("dns") {
        assert!(dns.is_object(), "{result}");
    }
}

#[test]
fn results_have_the_layout_of_every_version() {
    require_root!();
    let w = world();
    for version in VERSIONS {
        let (pod, result) = w.add_pod(version, &format!("pod-{}", version.replace('.', "")));
        assert_layout(&result, version, &pod);
        let list = w.list(version);
        if version != "0.3.0" && version != "0.3.1" {
            w.driver
                .check(&list, &pod.att, &no_caps(), &result)
                .expect("CHECK");
        }
        w.driver
            .del(&list, &pod.att, &no_caps(), Some(&result))
            .expect("DEL");
        assert_gone(&w, &pod);
    }
}

#[test]
fn loopback_results_have_the_layout_of_every_version() {
    require_root!();
    let w = world();
    for version in VERSIONS {
        let pod = w.pod(&format!("pod-lo{}", version.replace('.', "")));
        let result = w.add_loopback(version, &pod).expect("loopback ADD");
        assert_eq!(result["cniVersion"], version, "{result}");
        assert_eq!(result["interfaces"][0]["name"], "lo", "{result}");
        assert_eq!(
            result["interfaces"][0]["sandbox"],
            pod.ns.path().display().to_string()
        );
        let ips = result["ips"].as_array().expect("ips list");
        assert!(!ips.is_empty(), "{result}");
        for ip in ips {
            assert_eq!(ip["interface"], 0, "{ip}");
            assert_eq!(
                ip.get("version").is_some(),
                version.starts_with("0."),
                "{version}: {ip}"
            );
        }
    }
}

#[test]
fn check_needs_version_0_4_0() {
    require_root!();
    let w = world();
    for version in ["0.3.0", "0.3.1"] {
        let (pod, result) = w.add_pod(version, &format!("pod-{}", version.replace('.', "")));
        let err = w
            .driver
            .check(&w.list(version), &pod.att, &no_caps(), &result)
            .expect_err("CHECK with a 0.3.x config");
        assert_eq!(err.code, 1, "{err:?}");
    }
}

#[test]
fn add_without_netns_is_an_env_error() {
    require_root!();
    let w = world();
    let att = Attachment {
        id: "pod-nons".into(),
        netns: None,
        ifname: "eth0".into(),
    };
    let err = w
        .driver
        .add(&w.list(LATEST), &att, &no_caps())
        .expect_err("ADD without CNI_NETNS");
    assert_eq!(err.code, 4, "{err:?}");
    assert!(err.msg.contains("CNI_NETNS"), "{err:?}");
    assert!(reservations(&w.store()).is_empty());
}

#[test]
fn unknown_cni_version_is_rejected() {
    require_root!();
    let w = world();
    let pod = w.pod("pod-020");
    let err = w
        .driver
        .add(&w.list("0.2.0"), &pod.att, &no_caps())
        .expect_err("0.2.0");
    assert_eq!(err.code, 1, "{err:?}");
    assert!(w.node_veths().is_empty());
}

#[test]
fn invalid_json_is_a_decode_error() {
    require_root!();
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let netns = pod.path().display().to_string();
    let path = dist().display().to_string();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "pod-json"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
    ];
    let out = run_raw(
        &node,
        &dist(),
        "bridge",
        &env,
        br#"{"cniVersion": "1.1.0", "name": "#,
    );
    assert_eq!(raw_error(&out)["code"], 6);
}

#[test]
fn hairpin_with_promisc_is_an_invalid_config() {
    require_root!();
    let w = world();
    let pod = w.pod("pod-promisc");
    let list = bridge_list_with(LATEST, w.data.path(), |p| p["promiscMode"] = json!(true));
    let err = w
        .driver
        .add(&list, &pod.att, &no_caps())
        .expect_err("hairpin + promisc");
    assert_eq!(err.code, 7, "{err:?}");
    assert!(!has_link(&w.node, BRIDGE), "config errors change nothing");
}

#[test]
fn unknown_ip_masq_backend_is_an_invalid_config() {
    require_root!();
    let w = world();
    let pod = w.pod("pod-masq");
    let list = bridge_list_with(LATEST, w.data.path(), |p| {
        p["ipMasq"] = json!(true);
        p["ipMasqBackend"] = json!("pf");
    });
    let err = w
        .driver
        .add(&list, &pod.att, &no_caps())
        .expect_err("ipMasqBackend");
    assert_eq!(err.code, 7, "{err:?}");
    assert!(err.msg.contains("ipMasqBackend"), "{err:?}");
    assert!(w.node_veths().is_empty());
    assert!(reservations(&w.store()).is_empty());
}

#[test]
fn add_onto_an_existing_interface_fails_and_leaves_nothing() {
    require_root!();
    let w = world();
    let pod = w.pod("pod-dup");
    pod.ns.sh("ip link add eth0 type veth peer name peer0");
    let err = w
        .driver
        .add(&w.list(LATEST), &pod.att, &no_caps())
        .expect_err("eth0 exists");
    assert_eq!(err.code, 101, "{err:?}");
    assert!(
        err.msg.contains("eth0") && err.msg.contains("exists"),
        "{err:?}"
    );
    assert!(
        reservations(&w.store()).is_empty(),
        "{:?}",
        reservations(&w.store())
    );
    assert!(w.node_veths().is_empty(), "{:?}", w.node_veths());
    let eth0 = link(&pod.ns, "eth0").expect("the existing eth0 stays");
    assert_eq!(eth0["linkinfo"]["info_kind"], "veth");
    assert!(has_link(&pod.ns, "peer0"));
}

/// Creates the bridge in the node ahead of the plugin, with `cidr` on it.
fn prebuilt_bridge(node: &Netns, cidr: &str) {
    node.sh(&format!(
        "ip link add {BRIDGE} type bridge && ip addr add {cidr} dev {BRIDGE} && ip link set {BRIDGE} up"
    ));
}

#[test]
fn failed_add_after_ipam_is_undone() {
    require_root!();
    let w = world();
    prebuilt_bridge(&w.node, "10.88.1.254/24");
    let pod = w.pod("pod-clash");
    let err = w
        .driver
        .add(&w.list(LATEST), &pod.att, &no_caps())
        .expect_err("bridge has another IPv4 address");
    assert!(
        err.msg.contains(BRIDGE) && err.msg.contains("address"),
        "{err:?}"
    );
    // IPAM did allocate (it recorded its round-robin position) before the
    // bridge step failed; the host released the allocation again.
    assert!(
        w.store().join("last_reserved_ip.0").is_file(),
        "IPAM never ran"
    );
    assert!(w.node_veths().is_empty(), "veth left: {:?}", w.node_veths());
    assert!(!has_link(&pod.ns, "eth0"), "eth0 left in the pod");
    assert!(
        reservations(&w.store()).is_empty(),
        "{:?}",
        reservations(&w.store())
    );
    assert_eq!(global_addrs(&w.node, BRIDGE), ["10.88.1.254/24"]);
}

/// The bridge's `mcast_snooping` as `ip -d link` shows it.
fn mcast_snooping(node: &Netns) -> Value {
    link(node, BRIDGE).expect("bridge")["linkinfo"]["info_data"]["mcast_snooping"].clone()
}

#[test]
fn multicast_snooping_is_off_on_a_new_bridge_and_set_only_when_asked() {
    require_root!();
    let snooping = |on: bool| move |p: &mut Value| p["multicastSnooping"] = json!(on);
    // Unset: the bridge is created without it.
    let w = world();
    let a = w.pod("pod-snoop-a");
    let ra = w.add(&w.list(LATEST), &a);
    assert_eq!(mcast_snooping(&w.node), 0);
    // Pods on a bridge without snooping still reach each other (IPv6
    // neighbour discovery is multicast).
    let b = w.pod("pod-snoop-b");
    let rb = w.add(&w.list(LATEST), &b);
    wait_dad(&w.node, BRIDGE);
    for v6 in [false, true] {
        assert!(a.ns.ping(&pod_ip(&rb, v6)), "a -> b (v6={v6})");
        assert!(b.ns.ping(&pod_ip(&ra, v6)), "b -> a (v6={v6})");
    }
    // Asked on: an existing bridge that differs is changed; asked off, back.
    let c = w.pod("pod-snoop-c");
    w.add(&bridge_list_with(LATEST, w.data.path(), snooping(true)), &c);
    assert_eq!(mcast_snooping(&w.node), 1);
    let d = w.pod("pod-snoop-d");
    w.add(
        &bridge_list_with(LATEST, w.data.path(), snooping(false)),
        &d,
    );
    assert_eq!(mcast_snooping(&w.node), 0);

    // Unset: a bridge someone else made keeps the kernel's default (on).
    let w = world();
    prebuilt_bridge(&w.node, "10.88.1.1/24");
    let e = w.pod("pod-snoop-e");
    w.add(&w.list(LATEST), &e);
    assert_eq!(mcast_snooping(&w.node), 1);
}

/// The bridge's MAC and how the kernel came by it (`addr_assign_type`:
/// 3 when set explicitly, 1 random, 0 taken from a port).
fn bridge_mac(node: &Netns) -> (String, String) {
    let mac = link(node, BRIDGE).expect("bridge")["address"]
        .as_str()
        .expect("address")
        .to_string();
    let how = node.sh(&format!("cat /sys/class/net/{BRIDGE}/addr_assign_type"));
    (mac, how.trim().to_string())
}

#[test]
fn the_gateway_mac_stays_as_pods_come_and_go() {
    require_root!();
    let w = world();
    let (first, r0) = w.add_pod(LATEST, "pod-mac-0");
    let (mac, how) = bridge_mac(&w.node);
    assert_eq!(how, "3", "the bridge's MAC is its own, not a port's");
    let octet = u8::from_str_radix(&mac[..2], 16).expect("hex");
    assert_eq!(octet & 3, 2, "{mac}: locally administered unicast");
    assert_eq!(r0["interfaces"][0]["mac"], json!(mac), "{r0}");
    // A port whose MAC is lower than every other joins, then the first
    // pod leaves: a bridge that follows its ports would change its MAC
    // both times (and the pods' cached gateway MAC would go stale).
    let low = w.pod("pod-mac-1");
    let with_low_mac = |p: &mut Value| p["runtimeConfig"] = json!({"mac": "02:00:00:00:00:01"});
    w.add(&bridge_list_with(LATEST, w.data.path(), with_low_mac), &low);
    w.driver
        .del(&w.list(LATEST), &first.att, &no_caps(), Some(&r0))
        .expect("DEL");
    assert_eq!(bridge_mac(&w.node), (mac.clone(), "3".into()));
    let (_, r2) = w.add_pod(LATEST, "pod-mac-2");
    assert_eq!(r2["interfaces"][0]["mac"], json!(mac), "{r2}");
}

#[test]
fn force_address_replaces_the_bridge_address() {
    require_root!();
    let w = world();
    prebuilt_bridge(&w.node, "10.88.1.254/24");
    let pod = w.pod("pod-force");
    let list = bridge_list_with(LATEST, w.data.path(), |p| p["forceAddress"] = json!(true));
    w.add(&list, &pod);
    let addrs = global_addrs(&w.node, BRIDGE);
    assert!(addrs.contains(&format!("{GW4}/24")), "{addrs:?}");
    assert!(!addrs.contains(&"10.88.1.254/24".to_string()), "{addrs:?}");
}

#[test]
fn version_lists_every_supported_version() {
    require_root!();
    let node = Netns::new("node");
    let driver = wasm_cni_tests::Driver::new(dist(), &node);
    let out = driver
        .exec("bridge", "VERSION", None, &json!({"cniVersion": LATEST}))
        .expect("VERSION");
    let supported: Vec<&str> = out["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for v in VERSIONS {
        assert!(supported.contains(&v), "{v} missing from {out}");
    }
}

#[test]
fn no_command_prints_about_and_succeeds() {
    require_root!();
    let node = Netns::new("node");
    let out = run_raw(&node, &dist(), "bridge", &[], b"");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("CNI") && l.contains("wasm")),
        "about line: {stderr}"
    );
    assert!(stderr.contains("1.1.0"), "{stderr}");
}

#[test]
fn static_ipam_is_delegated_to_the_native_plugin() {
    require_root!();
    let Some(reference) = reference_dir() else {
        eprintln!("skipped: no reference plugins (needs /usr/lib/cni/static)");
        return;
    };
    let mut w = world();
    let path = format!("{}:{}", dist().display(), reference.display());
    w.driver.env.push(("CNI_PATH".into(), path));
    // The Debian reference plugins speak up to 1.0.0, and a delegated
    // plugin gets the same configuration.
    let list = bridge_list_with("1.0.0", w.data.path(), |p| {
        p["ipam"] = json!({
            "type": "static",
            "addresses": [{"address": "10.88.9.5/24", "gateway": "10.88.9.1"}]
        });
    });
    let pod = w.pod("pod-static");
    let result = w.add(&list, &pod);
    assert_eq!(result_ips(&result), ["10.88.9.5/24"], "{result}");
    assert_eq!(global_addrs(&pod.ns, "eth0"), ["10.88.9.5/24"]);
    assert!(global_addrs(&w.node, BRIDGE).contains(&"10.88.9.1/24".to_string()));
    w.driver
        .del(&list, &pod.att, &no_caps(), Some(&result))
        .expect("DEL");
    assert!(!has_link(&pod.ns, "eth0"));
}

#[test]
fn status_succeeds() {
    require_root!();
    let w = world();
    let list = w.list(LATEST);
    let conf = wasm_cni_tests::Driver::plugin_conf(&list, 0, None, &Value::Null);
    let out = w
        .driver
        .exec("bridge", "STATUS", None, &conf)
        .expect("STATUS");
    assert!(out.is_null(), "STATUS prints nothing: {out}");
}

#[test]
fn gc_with_no_valid_attachments_releases_every_reservation() {
    require_root!();
    let (w, _pods) = world_with_pods(2);
    assert_eq!(reservations(&w.store()).len(), 4);
    w.driver.gc(&w.list(LATEST), &[]).expect("GC");
    assert_eq!(reservations(&w.store()), Vec::<(String, String)>::new());
}

#[test]
fn gc_keeps_the_reservations_of_valid_attachments() {
    require_root!();
    let (w, pods) = world_with_pods(2);
    w.driver.gc(&w.list(LATEST), &[&pods[0].0.att]).expect("GC");
    assert_eq!(
        reserved_by(&w.store(), "pod-0").len(),
        2,
        "listed attachment kept"
    );
    assert!(
        reserved_by(&w.store(), "pod-1").is_empty(),
        "vanished attachment released"
    );
}

#[test]
fn gc_accepts_the_older_attachments_key() {
    require_root!();
    let (w, pods) = world_with_pods(2);
    let mut conf = wasm_cni_tests::Driver::plugin_conf(&w.list(LATEST), 0, None, &Value::Null);
    let att = &pods[0].0.att;
    conf["cni.dev/attachments"] = json!([{"containerID": att.id, "ifname": att.ifname}]);
    w.driver.exec("bridge", "GC", None, &conf).expect("GC");
    assert_eq!(
        reserved_by(&w.store(), "pod-0").len(),
        2,
        "listed attachment kept"
    );
    assert!(
        reserved_by(&w.store(), "pod-1").is_empty(),
        "vanished attachment released"
    );
}
