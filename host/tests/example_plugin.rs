//! The example plugin `examples/route-override` against the recording mock
//! kernel: what a platform team's own unit tests for a plugin look like.
//! Needs `cargo xtask install target/dist` (which builds the example), or
//! `cd examples/route-override && cargo build --release --target wasm32-unknown-unknown`.

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use serde_json::{json, Value};
use wasm_cni_host::bindings::cni::plugin::link::LinkInfo;
use wasm_cni_host::bindings::cni::plugin::route::RouteSpec;
use wasm_cni_host::cni::ip::{parse_ip, parse_ip_net};
use wasm_cni_host::cni::Command;
use wasm_cni_host::kernel::Ns;
use wasm_cni_host::testing::MockKernel;
use wasm_cni_host::{Limits, Runtime};

const PLUGIN: &str = "route-override";

fn runtime() -> &'static Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        runtime_with(
            "examples/route-override/target/wasm32-unknown-unknown/release/route_override.wasm",
            PLUGIN,
            "run `cargo xtask install target/dist`, or build it with \
             `cd examples/route-override && cargo build --release --target wasm32-unknown-unknown`",
            Limits::default(),
        )
    })
}

/// What bridge returned for the attachment: the previous result.
fn prev() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:16:00:01"},
            {"name": "veth0123456789a", "mac": "0a:58:0a:16:00:02"},
            {"name": "eth0", "mac": "0a:58:0a:16:00:03", "sandbox": NETNS}
        ],
        "ips": [{"interface": 2, "address": "10.22.0.2/24", "gateway": "10.22.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}],
        "dns": {}
    })
}

fn conf(extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "testnet",
        "type": PLUGIN,
        "addRoutes": [
            {"dst": "10.96.0.0/12", "gw": "10.22.0.254"},
            {"dst": "192.168.50.0/24"}
        ],
        "prevResult": prev()
    });
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

fn spec(dst: &str, gw: Option<&str>) -> RouteSpec {
    RouteSpec {
        dst: parse_ip_net(dst, "dst").unwrap(),
        gw: gw.map(|g| parse_ip(g, "gw").unwrap()),
        dev: "eth0".into(),
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
    }
}

/// A mock kernel with eth0 in the container and bridge's default route on it.
fn kernel() -> MockKernel {
    let k = MockKernel::new();
    {
        let mut s = k.state();
        s.links.insert(
            (Ns::Container, "eth0".into()),
            LinkInfo {
                name: "eth0".into(),
                index: 3,
                mac: "0a:58:0a:16:00:03".into(),
                mtu: 1500,
                up: true,
                kind: "veth".into(),
                master: None,
            },
        );
        s.routes
            .insert(Ns::Container, vec![spec("0.0.0.0/0", Some("10.22.0.1"))]);
    }
    k
}

fn routes(k: &MockKernel) -> Vec<RouteSpec> {
    k.state()
        .routes
        .get(&Ns::Container)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn add_puts_the_routes_on_the_interface_and_appends_them() {
    let k = kernel();
    let r = add_ok(runtime(), PLUGIN, inv(Command::Add, &conf(json!({}))), &k);
    assert_eq!(
        k.calls(),
        [
            "route.add container 10.96.0.0/12 via 10.22.0.254 dev eth0",
            "route.add container 192.168.50.0/24 dev eth0",
        ]
    );
    let mut want = prev();
    want["routes"] = json!([
        {"dst": "0.0.0.0/0", "gw": "10.22.0.1"},
        {"dst": "10.96.0.0/12", "gw": "10.22.0.254"},
        {"dst": "192.168.50.0/24"}
    ]);
    assert_eq!(json(&r, "1.0.0"), want);
    assert_eq!(
        routes(&k),
        [
            spec("0.0.0.0/0", Some("10.22.0.1")),
            spec("10.96.0.0/12", Some("10.22.0.254")),
            spec("192.168.50.0/24", None)
        ]
    );
}

#[test]
fn add_without_routes_passes_the_previous_result_through() {
    let k = kernel();
    let r = add_ok(
        runtime(),
        PLUGIN,
        inv(Command::Add, &conf(json!({"addRoutes": []}))),
        &k,
    );
    assert!(k.calls().is_empty());
    assert_eq!(json(&r, "1.0.0"), prev());
}

#[test]
fn flush_gateway_removes_the_default_route() {
    let k = kernel();
    let r = add_ok(
        runtime(),
        PLUGIN,
        inv(Command::Add, &conf(json!({"flushGateway": true}))),
        &k,
    );
    assert_eq!(
        k.calls(),
        [
            "route.del container 0.0.0.0/0 dev eth0",
            "route.add container 10.96.0.0/12 via 10.22.0.254 dev eth0",
            "route.add container 192.168.50.0/24 dev eth0",
        ]
    );
    let out = json(&r, "1.0.0");
    assert_eq!(
        out["routes"],
        json!([{"dst": "10.96.0.0/12", "gw": "10.22.0.254"}, {"dst": "192.168.50.0/24"}])
    );
    assert_eq!(
        out["ips"],
        json!([{"interface": 2, "address": "10.22.0.2/24"}])
    );
    assert!(!routes(&k).iter().any(|r| r.dst.prefix_len == 0));
}

#[test]
fn malformed_add_routes_is_code_7_naming_the_key() {
    let cases = [
        (
            json!({"addRoutes": {"dst": "10.0.0.0/8"}}),
            "addRoutes: must be a list",
        ),
        (
            json!({"addRoutes": [{"dst": "10.0.0.0/8"}, {"gw": "10.22.0.9"}]}),
            "addRoutes[1].dst: missing",
        ),
        (
            json!({"addRoutes": [{"dst": "10.0.0.0/88"}]}),
            "addRoutes[0].dst",
        ),
        (
            json!({"addRoutes": [{"dst": "10.1.0.0/8"}]}),
            "addRoutes[0].dst: 10.1.0.0/8 has host bits set",
        ),
        (
            json!({"addRoutes": [{"dst": "10.0.0.0/8", "gw": "fd00::1"}]}),
            "addRoutes[0].gw",
        ),
        (json!({"flushGateway": 1}), "flushGateway"),
    ];
    for (extra, needle) in cases {
        let k = kernel();
        let e = fails(
            runtime(),
            PLUGIN,
            inv(Command::Add, &conf(extra.clone())),
            &k,
        );
        assert_eq!(e.code, 7, "{extra}: {e}");
        assert!(e.msg.contains(needle), "{extra}: {e}");
        assert!(k.calls().is_empty(), "{extra}: {:#?}", k.calls());
    }
}

#[test]
fn add_needs_a_previous_result_with_the_interface() {
    let k = kernel();
    let mut c = conf(json!({}));
    c.as_object_mut().unwrap().remove("prevResult");
    let e = fails(runtime(), PLUGIN, inv(Command::Add, &c), &k);
    assert_eq!(e.code, 7, "{e}");
    assert!(e.msg.contains("prevResult"), "{e}");

    let mut other = prev();
    other["interfaces"][2]["name"] = json!("net1");
    let e = fails(
        runtime(),
        PLUGIN,
        inv(Command::Add, &conf(json!({"prevResult": other}))),
        &k,
    );
    assert_eq!(e.code, 7, "{e}");
    assert!(e.msg.contains("no interface eth0"), "{e}");
    assert!(k.calls().is_empty());
}

#[test]
fn a_failing_route_add_fails_the_add() {
    let k = kernel();
    k.state().fail_on = Some("route.add container 192.168.50.0/24".into());
    let e = fails(runtime(), PLUGIN, inv(Command::Add, &conf(json!({}))), &k);
    assert_eq!(e.code, 5, "{e}");
    assert!(e.msg.contains("add route 192.168.50.0/24 on eth0"), "{e}");
}

#[test]
fn del_removes_only_its_routes_and_is_idempotent() {
    let k = kernel();
    add_ok(runtime(), PLUGIN, inv(Command::Add, &conf(json!({}))), &k);
    k.state().calls.clear();
    run(runtime(), PLUGIN, inv(Command::Del, &conf(json!({}))), &k).expect("DEL");
    assert_eq!(
        k.calls(),
        [
            "route.del container 10.96.0.0/12 dev eth0",
            "route.del container 192.168.50.0/24 dev eth0",
        ]
    );
    assert_eq!(routes(&k), [spec("0.0.0.0/0", Some("10.22.0.1"))]);

    k.state().calls.clear();
    run(runtime(), PLUGIN, inv(Command::Del, &conf(json!({}))), &k).expect("second DEL");
    assert!(k.calls().is_empty(), "{:#?}", k.calls());
}

#[test]
fn del_tolerates_a_gone_namespace_or_interface() {
    // No namespace.
    let k = kernel();
    k.state().has_container = false;
    let mut del = inv(Command::Del, &conf(json!({})));
    del.env.netns = None;
    run(runtime(), PLUGIN, del, &k).expect("DEL without netns");
    run(runtime(), PLUGIN, inv(Command::Del, &conf(json!({}))), &k).expect("DEL with a gone netns");
    assert!(k.calls().is_empty());
    // The interface went first (the main plugin's DEL ran before).
    let k = kernel();
    k.state().links.remove(&(Ns::Container, "eth0".to_string()));
    run(runtime(), PLUGIN, inv(Command::Del, &conf(json!({}))), &k).expect("DEL without eth0");
    assert!(k.calls().is_empty());
}

#[test]
fn check_verifies_the_routes() {
    let k = kernel();
    let r = add_ok(runtime(), PLUGIN, inv(Command::Add, &conf(json!({}))), &k);
    let check = with_prev(&conf(json!({})), &r);
    run(runtime(), PLUGIN, inv(Command::Check, &check), &k).expect("CHECK after ADD");

    k.state()
        .routes
        .get_mut(&Ns::Container)
        .unwrap()
        .retain(|r| r.dst.to_string() != "10.96.0.0/12");
    let e = fails(runtime(), PLUGIN, inv(Command::Check, &check), &k);
    assert_eq!(e.code, 100, "{e}");
    assert!(
        e.msg
            .contains("route 10.96.0.0/12 via 10.22.0.254 on eth0 is missing"),
        "{e}"
    );
}

#[test]
fn check_with_flush_gateway_wants_no_default_route() {
    let k = kernel();
    let c = conf(json!({"flushGateway": true}));
    let r = add_ok(runtime(), PLUGIN, inv(Command::Add, &c), &k);
    let check = with_prev(&c, &r);
    run(runtime(), PLUGIN, inv(Command::Check, &check), &k).expect("CHECK after ADD");
    k.state()
        .routes
        .get_mut(&Ns::Container)
        .unwrap()
        .push(spec("0.0.0.0/0", Some("10.22.0.1")));
    let e = fails(runtime(), PLUGIN, inv(Command::Check, &check), &k);
    assert_eq!(e.code, 100, "{e}");
    assert!(e.msg.contains("default route"), "{e}");
}

#[test]
fn add_fails_when_the_interface_is_missing_in_the_container() {
    // prevResult names net1 (CNI_IFNAME) but the container has no net1.
    let k = kernel();
    let mut p = prev();
    p["interfaces"][2]["name"] = json!("net1");
    let mut i = inv(Command::Add, &conf(json!({"prevResult": p})));
    i.env.ifname = "net1".into();
    let e = fails(runtime(), PLUGIN, i, &k);
    assert_eq!(e.code, 5, "{e}");
    assert!(e.msg.contains("net1 does not exist"), "{e}");
    assert!(k.calls().is_empty());
}
