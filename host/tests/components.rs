//! The installed components (bridge, loopback, host-local) run by the real
//! wasmtime runtime against the recording mock kernel: no root, no
//! namespaces. Needs `cargo xtask install target/dist` (or `WASM_CNI_DIST`).

mod common;

use std::path::Path;

use common::*;
use serde_json::{json, Value};
use tempfile::TempDir;
use wasm_cni_host::caps::link::host_veth_name;
use wasm_cni_host::cni::ip::parse_ip_net;
use wasm_cni_host::cni::Command;
use wasm_cni_host::kernel::Ns;
use wasm_cni_host::testing::MockKernel;
use wasm_cni_host::{Limits, Runtime};

const NET: &str = "testnet";

/// A bridge network on `cni0` with host-local IPAM from 10.22.0.0/24 kept in
/// `data`, plus the top-level keys of `extra`.
fn bridge_conf(data: &Path, extra: Value) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "subnet": "10.22.0.0/24",
            "dataDir": data,
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    });
    merge(&mut conf, extra);
    conf
}

fn merge(conf: &mut Value, extra: Value) {
    if let (Some(c), Value::Object(e)) = (conf.as_object_mut(), extra) {
        c.extend(e);
    }
}

fn strings(calls: &[&str]) -> Vec<String> {
    calls.iter().map(|c| c.to_string()).collect()
}

fn veth() -> String {
    host_veth_name(CID, IFNAME)
}

fn mac(k: &MockKernel, ns: Ns, name: &str) -> String {
    k.state()
        .links
        .get(&(ns, name.to_string()))
        .unwrap_or_else(|| panic!("no link {name} in the {ns} namespace"))
        .mac
        .clone()
}

fn net(s: &str) -> wasm_cni_host::bindings::IpNet {
    parse_ip_net(s, "test").unwrap()
}

// ---------------------------------------------------------------- bridge

#[test]
fn bridge_add_replaces_a_stale_host_end_of_the_same_attachment() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = bridge_conf(data.path(), json!({}));
    // A crashed ADD of this attachment left its host end behind.
    let stale = {
        let mut s = k.state();
        let mut l = s.links[&(Ns::Container, "lo".to_string())].clone();
        l.index = 99;
        l.name = veth();
        l.kind = "veth".into();
        s.links.insert((Ns::Host, veth()), l.clone());
        l
    };
    add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    let calls = k.calls();
    let create = format!("link.create-veth {} eth0 mtu=Some(1500)", veth());
    let delete = format!("link.delete host {}", veth());
    let at = |c: &str| calls.iter().position(|x| x == c);
    assert_eq!(
        calls.iter().filter(|c| **c == create).count(),
        2,
        "{calls:?}"
    );
    assert!(
        at(&delete).is_some_and(|d| d > at(&create).unwrap_or(usize::MAX)),
        "{calls:?}"
    );
    let s = k.state();
    assert_ne!(s.links[&(Ns::Host, veth())].index, stale.index);
    assert!(s.links.contains_key(&(Ns::Container, "eth0".to_string())));
}

#[test]
fn bridge_add_makes_exactly_the_expected_calls_and_result() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = bridge_conf(data.path(), json!({"hairpinMode": true}));
    let r = add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    let veth = veth();
    assert_eq!(
        k.calls(),
        strings(&[
            "link.ensure-bridge cni0 mtu=None promisc=false vlan-filtering=false",
            &format!("link.create-veth {veth} eth0 mtu=Some(1500)"),
            // The container's end first, while the host's end is down.
            "sysctl.set container net.ipv4.conf.eth0.arp_notify=1",
            "link.set-up container eth0 true",
            "addr.add container eth0 10.22.0.2/24",
            "route.add container 0.0.0.0/0 via 10.22.0.1 dev eth0",
            &format!("link.set-master {veth} cni0"),
            &format!("link.set-hairpin {veth} true"),
            &format!("link.set-up host {veth} true"),
            "addr.add host cni0 10.22.0.1/24",
            "sysctl.set host net.ipv4.ip_forward=1",
        ])
    );
    assert_eq!(
        json(&r, "1.0.0"),
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": mac(&k, Ns::Host, "cni0")},
                {"name": veth, "mac": mac(&k, Ns::Host, &veth)},
                {"name": "eth0", "mac": mac(&k, Ns::Container, "eth0"), "sandbox": NETNS},
            ],
            "ips": [{"interface": 2, "address": "10.22.0.2/24", "gateway": "10.22.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    );
    // The mock's kernel state is what the calls describe.
    let s = k.state();
    let bridge = &s.links[&(Ns::Host, "cni0".to_string())];
    assert_eq!(
        s.links[&(Ns::Host, veth.clone())].master,
        Some(bridge.index)
    );
    assert!(s.links[&(Ns::Host, veth.clone())].up);
    assert!(s.links[&(Ns::Container, "eth0".to_string())].up);
    assert_eq!(
        s.addrs[&(Ns::Container, "eth0".to_string())],
        vec![net("10.22.0.2/24")]
    );
    assert_eq!(
        s.addrs[&(Ns::Host, "cni0".to_string())],
        vec![net("10.22.0.1/24")]
    );
    drop(s);
    assert_eq!(
        reservations(data.path(), NET),
        vec![("10.22.0.2".to_string(), "c1\r\neth0".to_string())]
    );
}

#[test]
fn bridge_add_dual_stack_turns_dad_off_and_forwards_both_families() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": NET,
        "type": "bridge",
        "isDefaultGateway": true,
        "ipam": {
            "type": "host-local",
            "dataDir": data.path(),
            "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]]
        }
    });
    let r = add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    let veth = veth();
    assert_eq!(
        k.calls(),
        strings(&[
            "link.ensure-bridge cni0 mtu=None promisc=false vlan-filtering=false",
            &format!("link.create-veth {veth} eth0 mtu=Some(1500)"),
            "sysctl.set container net.ipv6.conf.eth0.accept_dad=0",
            "sysctl.set container net.ipv4.conf.eth0.arp_notify=1",
            "link.set-up container eth0 true",
            "addr.add container eth0 10.22.0.2/24",
            "addr.add container eth0 fd00:22::2/64",
            "route.add container 0.0.0.0/0 via 10.22.0.1 dev eth0",
            "route.add container ::/0 via fd00:22::1 dev eth0",
            &format!("link.set-master {veth} cni0"),
            &format!("link.set-up host {veth} true"),
            "addr.add host cni0 10.22.0.1/24",
            "addr.add host cni0 fd00:22::1/64",
            "sysctl.set host net.ipv4.ip_forward=1",
            "sysctl.set host net.ipv6.conf.all.forwarding=1",
        ])
    );
    let out = json(&r, "1.1.0");
    assert_eq!(
        out["ips"],
        json!([
            {"interface": 2, "address": "10.22.0.2/24", "gateway": "10.22.0.1"},
            {"interface": 2, "address": "fd00:22::2/64", "gateway": "fd00:22::1"}
        ])
    );
    assert_eq!(
        out["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}, {"dst": "::/0", "gw": "fd00:22::1"}])
    );
}

#[test]
fn bridge_asks_for_multicast_snooping_only_when_configured() {
    let rt = dist_runtime();
    let k = MockKernel::new();
    let conf = json!({
        "cniVersion": "1.0.0", "name": NET, "type": "bridge",
        "bridge": "br-l2", "multicastSnooping": false
    });
    add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    assert_eq!(
        k.calls()[0],
        "link.ensure-bridge br-l2 mtu=None promisc=false vlan-filtering=false multicast-snooping=false"
    );
}

#[test]
fn bridge_add_layer2_with_vlan_and_mtu() {
    let rt = dist_runtime();
    let k = MockKernel::new();
    let conf = json!({
        "cniVersion": "1.0.0", "name": NET, "type": "bridge",
        "bridge": "br-l2", "vlan": 100, "mtu": 9000
    });
    let r = add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    let veth = veth();
    assert_eq!(
        k.calls(),
        strings(&[
            "link.ensure-bridge br-l2 mtu=Some(9000) promisc=false vlan-filtering=true",
            &format!("link.create-veth {veth} eth0 mtu=Some(9000)"),
            "link.set-up container eth0 true",
            &format!("link.set-master {veth} br-l2"),
            &format!("link.set-port-vlan {veth} 100 keep-default=false"),
            &format!("link.set-up host {veth} true"),
        ])
    );
    assert!(r.ips.is_empty() && r.routes.is_empty());
    assert_eq!(r.interfaces.len(), 3);
    assert_eq!(r.interfaces[2].sandbox.as_deref(), Some(NETNS));
}

#[test]
fn bridge_del_releases_ipam_and_deletes_the_container_interface() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = bridge_conf(data.path(), json!({}));
    add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    assert_eq!(reservations(data.path(), NET).len(), 1);
    k.state().calls.clear();

    let out = run(rt, "bridge", inv(Command::Del, &conf), &k).expect("DEL");
    assert!(out.is_none());
    assert_eq!(k.calls(), strings(&["link.delete container eth0"]));
    assert!(reservations(data.path(), NET).is_empty());
    let s = k.state();
    assert!(!s.links.contains_key(&(Ns::Container, "eth0".to_string())));
    assert!(
        !s.links.contains_key(&(Ns::Host, veth())),
        "the peer goes with it"
    );
    assert!(
        s.links.contains_key(&(Ns::Host, "cni0".to_string())),
        "the bridge stays"
    );
    drop(s);

    // Again: nothing left, still fine.
    k.state().calls.clear();
    run(rt, "bridge", inv(Command::Del, &conf), &k).expect("second DEL");
    assert_eq!(k.calls(), strings(&["link.delete container eth0"]));
}

#[test]
fn bridge_del_without_netns_only_releases_ipam() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = bridge_conf(data.path(), json!({}));
    add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    k.state().calls.clear();
    k.state().has_container = false;

    // No CNI_NETNS at all.
    let mut del = inv(Command::Del, &conf);
    del.env.netns = None;
    run(rt, "bridge", del, &k).expect("DEL without netns");
    assert!(k.calls().is_empty(), "{:#?}", k.calls());
    assert!(reservations(data.path(), NET).is_empty());

    // A CNI_NETNS that is gone: the same.
    add_ok(
        rt,
        "bridge",
        inv_for(Command::Add, &conf, "c2", &[]),
        &MockKernel::new(),
    );
    assert_eq!(reservations(data.path(), NET).len(), 1);
    run(rt, "bridge", inv_for(Command::Del, &conf, "c2", &[]), &k).expect("DEL with a gone netns");
    assert!(k.calls().is_empty(), "{:#?}", k.calls());
    assert!(reservations(data.path(), NET).is_empty());
}

#[test]
fn bridge_check_passes_after_add_and_fails_when_the_address_is_gone() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = bridge_conf(data.path(), json!({}));
    let r = add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    let check = with_prev(&conf, &r);
    k.state().calls.clear();

    let out = run(rt, "bridge", inv(Command::Check, &check), &k);
    assert!(matches!(out, Ok(None)), "{out:?}");
    assert!(
        k.calls().is_empty(),
        "CHECK changes nothing: {:#?}",
        k.calls()
    );

    k.state()
        .addrs
        .get_mut(&(Ns::Container, "eth0".to_string()))
        .expect("eth0 has addresses")
        .clear();
    let e = fails(rt, "bridge", inv(Command::Check, &check), &k);
    assert_eq!(e.code, 100, "{e}");
    assert!(e.msg.contains("eth0 lacks address 10.22.0.2/24"), "{e}");
}

#[test]
fn bridge_check_fails_when_the_reservation_is_gone() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = bridge_conf(data.path(), json!({}));
    let r = add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    std::fs::remove_file(data.path().join(NET).join("10.22.0.2")).unwrap();
    let e = fails(rt, "bridge", inv(Command::Check, &with_prev(&conf, &r)), &k);
    assert_eq!(e.code, 100, "{e}");
    assert!(e.msg.contains("IPAM plugin host-local"), "{e}");
}

#[test]
fn bridge_config_errors_map_to_codes_before_any_kernel_call() {
    let rt = dist_runtime();
    /// Extra top-level keys, CNI_ARGS, the code, a text the message has.
    type Case = (
        Value,
        &'static [(&'static str, &'static str)],
        u32,
        &'static str,
    );
    let cases: &[Case] = &[
        (
            json!({"hairpinMode": true, "promiscMode": true}),
            &[],
            7,
            "hairpinMode",
        ),
        (
            json!({"ipMasq": true, "ipMasqBackend": "pf"}),
            &[],
            7,
            "ipMasqBackend",
        ),
        (json!({"vlanTrunk": [{"id": 5}]}), &[], 2, "vlanTrunk"),
        (json!({"vlan": 5000}), &[], 7, "vlan: 5000"),
        (
            json!({"runtimeConfig": {"mac": "not-a-mac"}}),
            &[],
            7,
            "invalid MAC address",
        ),
        (
            json!({"args": {"cni": {"mac": "0a:58:0a:16:00:zz"}}}),
            &[],
            7,
            "invalid MAC address",
        ),
        (json!({}), &[("MAC", "0a:58")], 7, "invalid MAC address"),
        (json!({"mtu": 10}), &[], 7, "mtu"),
        (json!({"bridge": "a/b"}), &[], 7, "bridge"),
        (json!({"vlanTrunk": [{"id": 5}]}), &[], 2, "vlanTrunk"),
        (
            json!({"hairpinMode": "yes"}),
            &[],
            7,
            "hairpinMode: invalid type",
        ),
    ];
    for (extra, args, code, needle) in cases {
        let data = TempDir::new().unwrap();
        let k = MockKernel::new();
        let conf = bridge_conf(data.path(), extra.clone());
        let e = fails(rt, "bridge", inv_for(Command::Add, &conf, CID, args), &k);
        assert_eq!(e.code, *code, "{extra} {args:?}: {e}");
        assert!(e.msg.contains(needle), "{extra} {args:?}: {e}");
        assert!(
            k.calls().is_empty(),
            "{extra}: kernel touched: {:#?}",
            k.calls()
        );
        assert!(
            reservations(data.path(), NET).is_empty(),
            "{extra}: IPAM ran"
        );
    }
}

#[test]
fn a_container_mac_equal_to_the_node_ends_is_refused_and_undone() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = bridge_conf(
        data.path(),
        json!({"runtimeConfig": {"mac": "EE:EE:EE:EE:EE:EE"}}),
    );
    let e = fails(rt, "bridge", inv(Command::Add, &conf), &k);
    assert_eq!(e.code, 7, "{e}");
    assert!(e.msg.starts_with("mac: EE:EE:EE:EE:EE:EE"), "{e}");
    // Refused before any veth is made; the bridge stays, the address is
    // released.
    assert!(
        !k.calls().iter().any(|c| c.starts_with("link.create-veth")),
        "{:#?}",
        k.calls()
    );
    assert!(reservations(data.path(), NET).is_empty(), "IPAM not undone");
}

#[test]
fn bridge_add_failing_after_ipam_is_undone_by_the_host() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    k.state().fail_on = Some("addr.add container".into());
    let conf = bridge_conf(data.path(), json!({}));
    let e = fails(rt, "bridge", inv(Command::Add, &conf), &k);
    assert_eq!(e.code, 5, "{e}");
    assert!(
        e.msg
            .contains("mock failure: addr.add container eth0 10.22.0.2/24"),
        "{e}"
    );
    let veth = veth();
    assert_eq!(
        k.calls(),
        strings(&[
            "link.ensure-bridge cni0 mtu=None promisc=false vlan-filtering=false",
            &format!("link.create-veth {veth} eth0 mtu=Some(1500)"),
            "sysctl.set container net.ipv4.conf.eth0.arp_notify=1",
            "link.set-up container eth0 true",
            "addr.add container eth0 10.22.0.2/24",
            // The undo: IPAM DEL (no kernel call), then the veth.
            &format!("link.delete host {veth}"),
        ])
    );
    assert!(
        reservations(data.path(), NET).is_empty(),
        "the reservation was released"
    );
    let s = k.state();
    assert!(!s.links.contains_key(&(Ns::Host, veth.clone())));
    assert!(!s.links.contains_key(&(Ns::Container, "eth0".to_string())));
    drop(s);

    // The retry succeeds (round robin moves on to .3) and holds one address.
    k.state().fail_on = None;
    k.state().calls.clear();
    let r = add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    assert_eq!(r.ips[0].address, net("10.22.0.3/24"));
    assert_eq!(
        reservations(data.path(), NET),
        vec![("10.22.0.3".to_string(), "c1\r\neth0".to_string())]
    );
}

#[test]
fn bridge_add_failing_before_ipam_deletes_the_veth_and_reserves_nothing() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    k.state().fail_on = Some("link.set-master".into());
    let conf = bridge_conf(data.path(), json!({}));
    let e = fails(rt, "bridge", inv(Command::Add, &conf), &k);
    assert_eq!(e.code, 5, "{e}");
    let calls = k.calls();
    assert_eq!(
        calls.last(),
        Some(&format!("link.delete host {}", veth())),
        "{calls:#?}"
    );
    assert!(reservations(data.path(), NET).is_empty());
}

#[test]
fn bridge_add_for_an_existing_interface_fails_without_touching_it() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = bridge_conf(data.path(), json!({}));
    add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    k.state().calls.clear();
    // Another attachment asking for eth0 in the same namespace.
    let e = fails(rt, "bridge", inv_for(Command::Add, &conf, "c2", &[]), &k);
    assert_eq!(e.code, 101, "{e}");
    assert!(e.msg.contains("eth0"), "{e}");
    let calls = k.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("container eth0") || c.starts_with("link.delete")),
        "{calls:#?}"
    );
    assert_eq!(
        reservations(data.path(), NET).len(),
        1,
        "c1 keeps its address"
    );
}

// -------------------------------------------------------------- loopback

fn lo_conf() -> Value {
    json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"})
}

fn seed_lo(k: &MockKernel) {
    k.state().addrs.insert(
        (Ns::Container, "lo".into()),
        vec![net("127.0.0.1/8"), net("::1/128")],
    );
}

#[test]
fn loopback_add_sets_lo_up_and_reports_its_addresses() {
    let rt = dist_runtime();
    let k = MockKernel::new();
    seed_lo(&k);
    let r = add_ok(rt, "loopback", inv(Command::Add, &lo_conf()), &k);
    assert_eq!(k.calls(), strings(&["link.set-up container lo true"]));
    assert!(k.state().links[&(Ns::Container, "lo".to_string())].up);
    assert_eq!(
        json(&r, "1.0.0"),
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": NETNS}],
            "ips": [
                {"interface": 0, "address": "127.0.0.1/8"},
                {"interface": 0, "address": "::1/128"}
            ],
            "dns": {}
        })
    );
}

#[test]
fn loopback_passes_the_previous_result_through() {
    let rt = dist_runtime();
    let k = MockKernel::new();
    seed_lo(&k);
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:16:00:02", "sandbox": NETNS}],
        "ips": [{"interface": 0, "address": "10.22.0.2/24", "gateway": "10.22.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}],
        "dns": {"nameservers": ["10.0.0.53"]}
    });
    let mut conf = lo_conf();
    conf["prevResult"] = prev.clone();
    let r = add_ok(rt, "loopback", inv(Command::Add, &conf), &k);
    assert_eq!(k.calls(), strings(&["link.set-up container lo true"]));
    assert_eq!(json(&r, "1.0.0"), prev);
}

#[test]
fn loopback_del_without_netns_is_a_no_op() {
    let rt = dist_runtime();
    let k = MockKernel::new();
    k.state().has_container = false;
    let mut del = inv(Command::Del, &lo_conf());
    del.env.netns = None;
    assert!(matches!(run(rt, "loopback", del, &k), Ok(None)));
    assert!(k.calls().is_empty(), "{:#?}", k.calls());

    // With the namespace it takes lo down again.
    let k = MockKernel::new();
    run(rt, "loopback", inv(Command::Del, &lo_conf()), &k).expect("DEL");
    assert_eq!(k.calls(), strings(&["link.set-up container lo false"]));
}

#[test]
fn loopback_check_wants_lo_up() {
    let rt = dist_runtime();
    let k = MockKernel::new();
    seed_lo(&k);
    let r = add_ok(rt, "loopback", inv(Command::Add, &lo_conf()), &k);
    let conf = with_prev(&lo_conf(), &r);
    run(rt, "loopback", inv(Command::Check, &conf), &k).expect("CHECK after ADD");
    k.state()
        .links
        .get_mut(&(Ns::Container, "lo".to_string()))
        .unwrap()
        .up = false;
    let e = fails(rt, "loopback", inv(Command::Check, &conf), &k);
    assert_eq!(e.code, 100, "{e}");
    assert!(e.msg.contains("lo is down"), "{e}");
}

// ------------------------------------------------------------ host-local

fn hl_conf(data: &Path, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("host-local");
    ipam["dataDir"] = json!(data);
    json!({"cniVersion": "1.1.0", "name": "hl", "type": "host-local", "ipam": ipam})
}

fn addresses(r: &wasm_cni_host::bindings::CniResult) -> Vec<String> {
    r.ips
        .iter()
        .map(|ip| match ip.gateway {
            Some(gw) => format!("{} gw {gw}", ip.address),
            None => ip.address.to_string(),
        })
        .collect()
}

fn hl_add(
    conf: &Value,
    cid: &str,
    args: &[(&str, &str)],
) -> Result<Vec<String>, wasm_cni_host::Error> {
    let k = MockKernel::new();
    let out = run(
        dist_runtime(),
        "host-local",
        inv_for(Command::Add, conf, cid, args),
        &k,
    );
    assert!(
        k.calls().is_empty(),
        "an IPAM plugin has no kernel: {:#?}",
        k.calls()
    );
    out.map(|r| addresses(&r.expect("host-local ADD returns a result")))
}

fn hl(command: Command, conf: &Value, cid: &str) -> Result<(), wasm_cni_host::Error> {
    let k = MockKernel::new();
    run(
        dist_runtime(),
        "host-local",
        inv_for(command, conf, cid, &[]),
        &k,
    )
    .map(drop)
}

#[test]
fn host_local_allocates_in_order_and_round_robin() {
    let data = TempDir::new().unwrap();
    let conf = hl_conf(data.path(), json!({"subnet": "10.30.0.0/24"}));
    for (cid, ip) in [("c1", 2), ("c2", 3), ("c3", 4)] {
        assert_eq!(
            hl_add(&conf, cid, &[]).unwrap(),
            [format!("10.30.0.{ip}/24 gw 10.30.0.1")]
        );
    }
    // Reservation files exactly as the reference plugin writes them.
    assert_eq!(
        reservations(data.path(), "hl"),
        [
            ("10.30.0.2", "c1"),
            ("10.30.0.3", "c2"),
            ("10.30.0.4", "c3")
        ]
        .map(|(ip, c)| (ip.to_string(), format!("{c}\r\neth0")))
    );
    assert_eq!(
        std::fs::read_to_string(data.path().join("hl/last_reserved_ip.0")).unwrap(),
        "10.30.0.4"
    );
    // A released address is handed out again only after the rest.
    hl(Command::Del, &conf, "c2").unwrap();
    assert_eq!(
        hl_add(&conf, "c4", &[]).unwrap(),
        ["10.30.0.5/24 gw 10.30.0.1"]
    );
    // Routes come back as configured.
    let conf = hl_conf(
        data.path(),
        json!({"subnet": "10.30.0.0/24", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.30.0.254"}]}),
    );
    let k = MockKernel::new();
    let r = add_ok(
        dist_runtime(),
        "host-local",
        inv_for(Command::Add, &conf, "c5", &[]),
        &k,
    );
    assert_eq!(
        json(&r, "1.1.0")["routes"],
        json!([{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.30.0.254"}])
    );
    assert!(r.ips.iter().all(|ip| ip.interface.is_none()));
}

#[test]
fn host_local_dual_stack_gives_one_address_per_range_set() {
    let data = TempDir::new().unwrap();
    let conf = hl_conf(
        data.path(),
        json!({"ranges": [
            [{"subnet": "10.30.0.0/24"}],
            [{"subnet": "fd00:30::/64", "rangeStart": "fd00:30::10", "gateway": "fd00:30::1"}]
        ]}),
    );
    assert_eq!(
        hl_add(&conf, "c1", &[]).unwrap(),
        ["10.30.0.2/24 gw 10.30.0.1", "fd00:30::10/64 gw fd00:30::1"]
    );
    assert_eq!(
        reservations(data.path(), "hl"),
        vec![
            ("10.30.0.2".to_string(), "c1\r\neth0".to_string()),
            ("fd00:30::10".to_string(), "c1\r\neth0".to_string()),
        ]
    );
}

#[test]
fn host_local_honours_a_requested_ip_from_cni_args() {
    let data = TempDir::new().unwrap();
    let conf = hl_conf(data.path(), json!({"subnet": "10.30.0.0/24"}));
    assert_eq!(
        hl_add(&conf, "c1", &[("IgnoreUnknown", "1"), ("IP", "10.30.0.50")]).unwrap(),
        ["10.30.0.50/24 gw 10.30.0.1"]
    );
    assert_eq!(
        reservations(data.path(), "hl"),
        vec![("10.30.0.50".to_string(), "c1\r\neth0".to_string())]
    );
    // Taken by c1: c2 asking for it fails and reserves nothing.
    let e = hl_add(&conf, "c2", &[("IP", "10.30.0.50")]).unwrap_err();
    assert_eq!(e.code, 100, "{e}");
    assert!(e.msg.contains("10.30.0.50 is not available"), "{e}");
    // Outside every range: a configuration error.
    let e = hl_add(&conf, "c3", &[("IP", "10.99.0.5")]).unwrap_err();
    assert_eq!(e.code, 7, "{e}");
    assert_eq!(reservations(data.path(), "hl").len(), 1);
}

#[test]
fn host_local_reports_exhaustion() {
    let data = TempDir::new().unwrap();
    // .1 is the gateway, .2 the only address to hand out.
    let conf = hl_conf(data.path(), json!({"subnet": "10.31.0.0/30"}));
    assert_eq!(
        hl_add(&conf, "c1", &[]).unwrap(),
        ["10.31.0.2/30 gw 10.31.0.1"]
    );
    let e = hl_add(&conf, "c2", &[]).unwrap_err();
    assert_eq!(e.code, 100, "{e}");
    assert!(
        e.msg.contains("no IP addresses available in range set"),
        "{e}"
    );
    assert_eq!(reservations(data.path(), "hl").len(), 1);
}

#[test]
fn host_local_gc_releases_reservations_not_in_the_valid_list() {
    let data = TempDir::new().unwrap();
    let conf = hl_conf(data.path(), json!({"subnet": "10.30.0.0/24"}));
    for cid in ["c1", "c2", "c3"] {
        hl_add(&conf, cid, &[]).unwrap();
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "c1", "ifname": "eth0"},
        {"containerID": "c3", "ifname": "eth0"},
        {"containerID": "c2", "ifname": "eth1"}
    ]);
    let k = MockKernel::new();
    let mut inv = inv(Command::Gc, &gc);
    inv.env = Default::default();
    assert!(matches!(
        run(dist_runtime(), "host-local", inv, &k),
        Ok(None)
    ));
    assert_eq!(
        reservations(data.path(), "hl"),
        vec![
            ("10.30.0.2".to_string(), "c1\r\neth0".to_string()),
            ("10.30.0.4".to_string(), "c3\r\neth0".to_string()),
        ]
    );
}

#[test]
fn host_local_del_is_idempotent_and_check_needs_a_reservation() {
    let data = TempDir::new().unwrap();
    let conf = hl_conf(data.path(), json!({"subnet": "10.30.0.0/24"}));
    hl_add(&conf, "c1", &[]).unwrap();
    hl(Command::Check, &conf, "c1").expect("CHECK after ADD");
    hl(Command::Del, &conf, "c1").expect("DEL");
    hl(Command::Del, &conf, "c1").expect("DEL again");
    assert!(reservations(data.path(), "hl").is_empty());
    let e = hl(Command::Check, &conf, "c1").unwrap_err();
    assert_eq!(e.code, 100, "{e}");
}

#[test]
fn host_local_rejects_a_config_without_ranges() {
    let data = TempDir::new().unwrap();
    let conf = hl_conf(data.path(), json!({}));
    let e = hl_add(&conf, "c1", &[]).unwrap_err();
    assert_eq!(e.code, 7, "{e}");
    assert!(e.msg.contains("ipam.ranges"), "{e}");
    assert!(reservations(data.path(), "hl").is_empty());
}

// ---------------------------------------------------------------- firewall

#[test]
fn bridge_ip_masq_masquerades_the_pod_and_del_removes_it() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let conf = bridge_conf(
        data.path(),
        json!({"ipMasq": true, "ipMasqBackend": "nftables"}),
    );
    add_ok(rt, "bridge", inv(Command::Add, &conf), &k);
    let calls = k.calls();
    assert!(
        calls.contains(&"firewall.add-masquerade nftables 10.22.0.2/24".to_string()),
        "{calls:#?}"
    );
    k.state().calls.clear();
    run(rt, "bridge", inv(Command::Del, &conf), &k).expect("DEL");
    // No prevResult: the host looks the masquerade up by the address the
    // container interface still has.
    assert!(
        k.calls()
            .contains(&"firewall.remove masquerade pods=[10.22.0.2]".to_string()),
        "{:#?}",
        k.calls()
    );
    assert!(k.state().masquerade.is_empty());
}

#[test]
fn bridge_add_failing_after_masquerade_removes_it_again() {
    let rt = dist_runtime();
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    // The gateway address is added after masquerading: fail there.
    k.state().fail_on = Some("sysctl.set host net.ipv4.ip_forward".into());
    let conf = bridge_conf(data.path(), json!({"ipMasq": true}));
    fails(rt, "bridge", inv(Command::Add, &conf), &k);
    assert!(
        k.state().masquerade.is_empty(),
        "the host undoes the masquerade"
    );
    assert!(
        k.calls()
            .contains(&"firewall.remove masquerade pods=[10.22.0.2]".to_string()),
        "undone by key, the pod's address: {:#?}",
        k.calls()
    );
    assert!(reservations(data.path(), NET).is_empty());
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}, {"name": "vethx"}, {"name": "eth0", "sandbox": NETNS}],
        "ips": [{"address": "10.22.0.2/24", "gateway": "10.22.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}]
    })
}

fn portmap_conf(mappings: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "portmap",
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": prev_result(),
    })
}

#[test]
fn portmap_forwards_to_the_pod_and_allows_localhost() {
    let rt = dist_runtime();
    let k = MockKernel::new();
    let conf = portmap_conf(json!([{"hostPort": 8080, "containerPort": 80, "protocol": "TCP"}]));
    let r = add_ok(rt, "portmap", inv(Command::Add, &conf), &k);
    assert_eq!(
        json(&r, "1.0.0")["ips"],
        prev_result()["ips"],
        "passes the result through"
    );
    assert_eq!(
        k.calls(),
        strings(&[
            "sysctl.set host net.ipv4.conf.cni0.route_localnet=1",
            "firewall.add-port-mappings auto :8080/tcp->10.22.0.2:80 snat=true masq-all=false",
        ])
    );
    run(rt, "portmap", inv(Command::Check, &conf), &k).expect("CHECK");
    run(rt, "portmap", inv(Command::Del, &conf), &k).expect("DEL");
    assert!(k.state().port_mappings.is_empty());
    // The rules are looked up by prevResult's address: this kernel's
    // container namespace has no eth0 to ask.
    assert_eq!(
        k.calls().last().map(String::as_str),
        Some("firewall.remove port-mappings pods=[10.22.0.2]")
    );
}

#[test]
fn portmap_config_errors_name_the_key_before_any_call() {
    let rt = dist_runtime();
    let cases: &[(Value, u32, &str)] = &[
        (json!([{"hostPort": 0, "containerPort": 80}]), 7, "hostPort"),
        (
            json!([{"hostPort": 80, "containerPort": 70000}]),
            7,
            "containerPort",
        ),
        (
            json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
            7,
            "protocol",
        ),
    ];
    for (mappings, code, needle) in cases {
        let k = MockKernel::new();
        let e = fails(
            rt,
            "portmap",
            inv(Command::Add, &portmap_conf(mappings.clone())),
            &k,
        );
        assert_eq!(e.code, *code, "{e}");
        assert!(e.msg.contains(needle), "{e}");
        assert!(k.calls().is_empty(), "{:#?}", k.calls());
    }
    let k = MockKernel::new();
    let mut conf = portmap_conf(json!([]));
    conf["conditionsV4"] = json!(["-p", "tcp"]);
    assert_eq!(fails(rt, "portmap", inv(Command::Add, &conf), &k).code, 2);
    let mut conf = portmap_conf(json!([{"hostPort": 80, "containerPort": 80}]));
    conf.as_object_mut().unwrap().remove("prevResult");
    assert_eq!(fails(rt, "portmap", inv(Command::Add, &conf), &k).code, 7);
}

#[test]
fn firewall_gc_keeps_valid_attachments() {
    let rt = dist_runtime();
    let k = MockKernel::new();
    let conf = portmap_conf(json!([{"hostPort": 8080, "containerPort": 80}]));
    add_ok(rt, "portmap", inv(Command::Add, &conf), &k);
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc.as_object_mut().unwrap().remove("prevResult");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": CID, "ifname": IFNAME}]);
    run(rt, "portmap", inv(Command::Gc, &gc), &k).expect("GC");
    assert_eq!(
        k.state().port_mappings.len(),
        1,
        "a valid attachment keeps its rules"
    );
    gc["cni.dev/valid-attachments"] = json!([]);
    run(rt, "portmap", inv(Command::Gc, &gc), &k).expect("GC");
    assert!(k.state().port_mappings.is_empty());
}

/// The plugins shipped here and the example are built without WASI (core
/// modules that `wasm-cni-compile` made components): a component that
/// imports none is linked to its capabilities alone, so no call of theirs
/// can reach even an empty WASI context.
#[test]
fn the_installed_plugins_import_no_wasi() {
    use wasmtime::component::Component;
    use wasmtime::Engine;
    let engine = Engine::new(&wasm_cni_host::runtime::engine_config()).expect("engine");
    let dir = dist_dir();
    for name in [
        "bridge",
        "host-local",
        "loopback",
        "masq",
        "portmap",
        "route-override",
    ] {
        let path = dir.join(format!("{name}.cwasm"));
        // SAFETY: an artifact `wasm-cni-compile` wrote for this engine
        // configuration; wasmtime checks that it matches.
        let component = unsafe { Component::deserialize_file(&engine, &path) }
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let imports: Vec<String> = component
            .component_type()
            .imports(&engine)
            .map(|(n, _)| n.to_string())
            .collect();
        assert!(
            imports.iter().any(|n| n.starts_with("cni:plugin/")),
            "{name} imports no capability: {imports:?}"
        );
        let wasi: Vec<&String> = imports.iter().filter(|n| n.starts_with("wasi:")).collect();
        assert!(wasi.is_empty(), "{name} imports WASI: {wasi:?}");
    }
}

/// `wasm-cni-compile` refuses what is not a plugin, naming the file: a
/// core module without the SDK's embedded WIT becomes an empty component,
/// and neither that nor an empty component exports `cni:plugin/plugin`.
#[test]
fn compiling_refuses_what_is_not_a_plugin() {
    let dir = TempDir::new().expect("tempdir");
    let rt = Runtime::new(dir.path(), Limits::default()).expect("runtime");
    for (name, bytes) in [
        ("core.wasm", &b"\0asm\x01\0\0\0"[..]),
        ("component.wasm", &b"\0asm\x0d\0\x01\0"[..]),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let out = path.with_extension("cwasm");
        let e = rt.precompile(&path, &out).expect_err(name);
        assert_eq!(e.code, 7, "{e}");
        assert!(e.msg.contains(name), "{e}");
        assert!(e.msg.contains("exports no `cni:plugin/plugin`"), "{e}");
        assert!(!out.exists(), "{name}: wrote {}", out.display());
    }
}
