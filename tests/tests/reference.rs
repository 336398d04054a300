//! Side by side with the reference plugins (Debian containernetworking-plugins
//! in /usr/lib/cni): the same conflist through our plugin directory and
//! through theirs, each in its own node namespace with its own data dir,
//! must give the same results, pod configuration and host-local store; and
//! both host-locals must share one store.
//!
//! The Debian reference plugins speak CNI up to 1.0.0, so the conflists
//! here use 1.0.0.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use wasm_cni_tests::{dist, reference_dir, require_root, result_ips, Driver, Netns};

const VERSION: &str = "1.0.0";

/// The reference plugin directory, or None (with a note) to skip.
fn reference() -> Option<PathBuf> {
    let dir = reference_dir();
    if dir.is_none() {
        eprintln!("skipped: reference plugins not installed in /usr/lib/cni");
    }
    dir
}

/// One side of a comparison: a world and its first pod, added to the bridge
/// network and the loopback network.
struct Side {
    world: World,
    pod: Pod,
    result: Value,
    lo_result: Value,
}

impl Side {
    fn new(tag: &str, dir: &Path, version: &str) -> Side {
        let world = World::new(tag, dir);
        let (pod, result) = world.add_pod(version, "pod-0");
        let lo_result = world.add_loopback(version, &pod).expect("loopback ADD");
        Side {
            world,
            pod,
            result,
            lo_result,
        }
    }
}

/// Ours and the reference's, for the same requests in `version`.
fn both_in(version: &str) -> Option<(Side, Side)> {
    let reference = reference()?;
    Some((
        Side::new("ours", &dist(), version),
        Side::new("ref", &reference, version),
    ))
}

fn both() -> Option<(Side, Side)> {
    both_in(VERSION)
}

/// Asserts that two bridge ADD results have the same shape and content,
/// except for MACs and the random host veth name.
fn assert_same_result(ours: &Side, theirs: &Side) {
    let (a, b) = (&ours.result, &theirs.result);
    assert_eq!(
        key_paths(a),
        key_paths(b),
        "keys differ:\nours {a}\nref  {b}"
    );
    for list in ["interfaces", "ips", "routes"] {
        assert_eq!(
            a[list].as_array().map(Vec::len),
            b[list].as_array().map(Vec::len),
            "{list}"
        );
    }
    assert_eq!(a["cniVersion"], b["cniVersion"]);
    // Interface names match except the host veth's, which is random.
    assert_eq!(a["interfaces"][0]["name"], b["interfaces"][0]["name"]);
    assert_eq!(a["interfaces"][2]["name"], b["interfaces"][2]["name"]);
    for (x, y) in [(a, &ours.pod), (b, &theirs.pod)] {
        assert_eq!(
            x["interfaces"][2]["sandbox"],
            y.ns.path().display().to_string()
        );
    }
    for i in 0..2 {
        for key in ["version", "interface", "gateway", "address"] {
            assert_eq!(a["ips"][i].get(key), b["ips"][i].get(key), "ips[{i}].{key}");
        }
    }
    assert_eq!(a["routes"], b["routes"]);
    assert_eq!(a["dns"], b["dns"]);
}

#[test]
fn results_have_the_reference_shape() {
    require_root!();
    let Some((ours, theirs)) = both() else { return };
    assert_same_result(&ours, &theirs);
}

#[test]
fn results_have_the_reference_shape_in_older_versions() {
    require_root!();
    // Only the bridge results: the reference loopback (Debian 1.1.1) leaves
    // `ips[].version` out of its 0.3.x/0.4.0 results, against the spec; our
    // loopback layout is checked against the spec in bridge.rs.
    for version in ["0.3.0", "0.3.1", "0.4.0"] {
        let Some((ours, theirs)) = both_in(version) else {
            return;
        };
        assert_same_result(&ours, &theirs);
    }
}

#[test]
fn first_pod_gets_the_reference_addresses() {
    require_root!();
    let Some((ours, theirs)) = both() else { return };
    assert_eq!(result_ips(&ours.result), ["10.88.1.2/24", "fd88::2/64"]);
    assert_eq!(result_ips(&ours.result), result_ips(&theirs.result));
    assert_eq!(
        global_addrs(&ours.pod.ns, "eth0"),
        global_addrs(&theirs.pod.ns, "eth0")
    );
    assert_eq!(
        global_addrs(&ours.world.node, BRIDGE),
        global_addrs(&theirs.world.node, BRIDGE)
    );
}

#[test]
fn loopback_result_has_the_reference_shape() {
    require_root!();
    let Some((ours, theirs)) = both() else { return };
    let (a, b) = (&ours.lo_result, &theirs.lo_result);
    assert_eq!(
        key_paths(a),
        key_paths(b),
        "keys differ:\nours {a}\nref  {b}"
    );
    assert_eq!(a["interfaces"][0]["name"], b["interfaces"][0]["name"]);
    assert_eq!(result_ips(a), result_ips(b));
}

/// A route as `ip -j route` prints it, without `protocol` (compared on its own).
fn without_protocol(mut r: Value) -> Value {
    if let Some(m) = r.as_object_mut() {
        m.remove("protocol");
    }
    r
}

/// The pod's routes of both families, sorted, each passed through `f`.
fn pod_routes(ns: &Netns, f: impl Fn(Value) -> Value) -> Vec<String> {
    let mut out: Vec<String> = [false, true]
        .into_iter()
        .flat_map(|v6| routes(ns, v6))
        .map(|r| f(r).to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn pod_routes_match_the_reference() {
    require_root!();
    let Some((ours, theirs)) = both() else { return };
    assert_eq!(
        pod_routes(&ours.pod.ns, without_protocol),
        pod_routes(&theirs.pod.ns, without_protocol)
    );
}

#[test]
fn pod_routes_have_the_reference_protocol() {
    require_root!();
    let Some((ours, theirs)) = both() else { return };
    assert_eq!(
        pod_routes(&ours.pod.ns, |r| r),
        pod_routes(&theirs.pod.ns, |r| r)
    );
}

/// Every file of a store except `lock` (and our index, which the reference
/// plugin does not keep), with its content.
fn store_contents(store: &Path) -> Vec<(String, String)> {
    wasm_cni_tests::files(store)
        .into_iter()
        .filter(|f| f != "lock" && f != common::INDEX_DIR)
        .map(|f| {
            let content = std::fs::read_to_string(store.join(&f)).unwrap_or_default();
            (f, content)
        })
        .collect()
}

#[test]
fn host_local_files_match_the_reference() {
    require_root!();
    let Some((ours, theirs)) = both() else { return };
    let (a, b) = (
        store_contents(&ours.world.store()),
        store_contents(&theirs.world.store()),
    );
    assert_eq!(a, b);
    let names: Vec<&str> = a.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        [
            "10.88.1.2",
            "fd88::2",
            "last_reserved_ip.0",
            "last_reserved_ip.1"
        ]
    );
    assert_eq!(a[0].1, "pod-0\r\neth0");
    assert!(ours.world.store().join("lock").exists() && theirs.world.store().join("lock").exists());
}

/// Two plugin directories driving one node and one data dir.
struct Shared {
    world: World,
    reference: Driver,
}

fn shared() -> Option<Shared> {
    let reference = reference()?;
    let world = World::new("shared", &dist());
    let reference = Driver::new(reference, &world.node);
    Some(Shared { world, reference })
}

#[test]
fn shared_store_allocates_distinct_addresses() {
    require_root!();
    let Some(s) = shared() else { return };
    let list = s.world.list(VERSION);
    let mut seen = Vec::new();
    let mut pods = Vec::new();
    for i in 0..4 {
        let driver = if i % 2 == 0 {
            &s.world.driver
        } else {
            &s.reference
        };
        let pod = s.world.pod(&format!("pod-{i}"));
        let result = driver
            .add(&list, &pod.att, &no_caps())
            .unwrap_or_else(|e| panic!("ADD pod-{i} via {}: {e:?}", driver.dir.display()));
        for ip in result_ips(&result) {
            assert!(!seen.contains(&ip), "{ip} allocated twice: {seen:?}");
            seen.push(ip);
        }
        pods.push(pod);
    }
    assert_eq!(reservations(&s.world.store()).len(), 8);
}

#[test]
fn each_del_releases_the_others_reservations() {
    require_root!();
    let Some(s) = shared() else { return };
    let list = s.world.list(VERSION);
    let ours = &s.world.driver;
    for (adder, deleter, id) in [
        (ours, &s.reference, "pod-ours"),
        (&s.reference, ours, "pod-ref"),
    ] {
        let pod = s.world.pod(id);
        let result = adder.add(&list, &pod.att, &no_caps()).expect("ADD");
        assert_eq!(reserved_by(&s.world.store(), id).len(), 2, "{id}: reserved");
        deleter
            .del(&list, &pod.att, &no_caps(), Some(&result))
            .unwrap_or_else(|e| panic!("DEL {id} via {}: {e:?}", deleter.dir.display()));
        assert!(
            reserved_by(&s.world.store(), id).is_empty(),
            "{id}: released"
        );
        assert!(link(&pod.ns, "eth0").is_none(), "{id}: eth0 removed");
    }
}
