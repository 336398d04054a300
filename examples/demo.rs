//! The demo: pods in network namespaces on the wasm plugins, shown working,
//! then cleaned up. Everything happens inside namespaces the demo creates
//! (a "node" and two pods); the machine's own network is not touched.
//!
//! Run with `cargo xtask demo` (root), which installs the plugins into
//! target/dist first.

use std::time::Instant;

use serde_json::{json, Value};
use wasm_cni_tests::{addr_only, dist, files, privileged, result_ips, Attachment, Driver, Netns};

const BRIDGE: &str = include_str!("conflists/10-wasm-bridge.conflist");
const LOOPBACK: &str = include_str!("conflists/99-loopback.conflist");

fn step(s: &str) {
    println!("\n== {s}");
}

fn main() {
    if !privileged() {
        eprintln!("the demo builds network namespaces: run it as root");
        std::process::exit(1);
    }
    let data = tempfile::tempdir().expect("temp dir");
    let mut bridge: Value = serde_json::from_str(BRIDGE).expect("embedded conflist");
    bridge["plugins"][0]["ipam"]["dataDir"] = json!(data.path());
    let lo: Value = serde_json::from_str(LOOPBACK).expect("embedded conflist");

    step(&format!("plugins from {}", dist().display()));
    let node = Netns::new("demo-node");
    let driver = Driver::new(dist(), &node);
    let pods: Vec<Netns> = (1..=2)
        .map(|i| Netns::new(&format!("demo-pod{i}")))
        .collect();
    println!(
        "node namespace {}, pods {}",
        node.name(),
        pods.iter().map(Netns::name).collect::<Vec<_>>().join(", ")
    );

    step("ADD: bridge + host-local (dual stack) and loopback for each pod");
    let mut attached = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let att = Attachment::new(&format!("demo-pod-{}", i + 1), pod, "eth0");
        let lo_att = Attachment::new(&att.id, pod, "lo");
        let t = Instant::now();
        let result = driver
            .add(&bridge, &att, &Value::Null)
            .unwrap_or_else(|e| panic!("ADD failed: {e:?}"));
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        driver
            .add(&lo, &lo_att, &Value::Null)
            .unwrap_or_else(|e| panic!("loopback ADD failed: {e:?}"));
        println!(
            "{}: {} in {ms:.1} ms",
            att.id,
            result_ips(&result).join(", ")
        );
        attached.push((att, lo_att, result));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&attached[0].2).unwrap_or_default()
    );

    step("inside pod 1");
    print!(
        "{}",
        pods[0].sh("ip -br addr; ip route; ip -6 route show default")
    );
    step("on the node");
    print!(
        "{}",
        node.sh("ip -br link show type bridge; ip -br addr show cni0")
    );

    step("reachability");
    let ip = |n: usize, v6: bool| {
        result_ips(&attached[n].2)
            .into_iter()
            .find(|a| a.contains(':') == v6)
            .map(|a| addr_only(&a).to_string())
            .unwrap_or_default()
    };
    for (what, ok) in [
        ("pod1 -> pod2 (IPv4)", pods[0].ping(&ip(1, false))),
        ("pod1 -> pod2 (IPv6)", pods[0].ping(&ip(1, true))),
        ("node -> pod1", node.ping(&ip(0, false))),
        ("pod2 -> gateway 10.88.0.1", pods[1].ping("10.88.0.1")),
    ] {
        println!("{what}: {}", if ok { "ok" } else { "FAILED" });
    }

    step("CHECK");
    for (att, _, result) in &attached {
        match driver.check(&bridge, att, &Value::Null, result) {
            Ok(()) => println!("{}: ok", att.id),
            Err(e) => println!("{}: FAILED {e:?}", att.id),
        }
    }

    step("DEL");
    for (att, lo_att, result) in &attached {
        let t = Instant::now();
        driver
            .del(&bridge, att, &Value::Null, Some(result))
            .unwrap_or_else(|e| panic!("DEL failed: {e:?}"));
        driver
            .del(&lo, lo_att, &Value::Null, None)
            .unwrap_or_else(|e| panic!("DEL failed: {e:?}"));
        println!(
            "{}: removed in {:.1} ms",
            att.id,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    println!(
        "veths left on the node: {}",
        node.sh("ip -br link show type veth | wc -l").trim()
    );
    println!(
        "IPAM store: {}",
        files(&data.path().join("wasm-bridge")).join(" ")
    );
    step("cleanup: namespaces deleted");
}
