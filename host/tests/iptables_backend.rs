//! The iptables backend, run inside a network namespace of its own (root
//! only; skipped otherwise): rules land in our chains only, belong to their
//! owner, and come back out of `list`, `remove` and `gc`. Never touches the
//! machine's own namespace: the backend runs on a thread that has entered
//! the test namespace, and the iptables commands it starts inherit it.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

mod common;

use common::netns::Netns;
use wasm_cni_host::bindings::{IpAddress, IpNet};
use wasm_cni_host::error::code;
use wasm_cni_host::firewall::iptables::Iptables;
use wasm_cni_host::firewall::{
    Firewall, Masquerade, Owner, PortMapping, PortOptions, Protocol, RuleKind,
};

/// `iptables-save -t nat` (or ip6tables) in the current thread's namespace.
fn saved(v6: bool) -> String {
    let bin = if v6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    let out = Command::new(bin).args(["-t", "nat"]).output().expect(bin);
    assert!(
        out.status.success(),
        "{bin}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `-A` lines of both families.
fn rules(v6: bool) -> Vec<String> {
    saved(v6)
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

/// The chain declarations of one family.
fn chains(v6: bool) -> Vec<String> {
    saved(v6)
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The saved output without its timestamped comment lines.
fn state() -> String {
    [false, true]
        .iter()
        .flat_map(|v6| saved(*v6).lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn owner(network: &str, id: &str) -> Owner {
    Owner {
        network: network.into(),
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

fn tag_hex(o: &Owner) -> String {
    o.tag().rsplit(':').next().unwrap().to_string()
}

/// Lines of either family that carry the owner's tag.
fn owned_lines(o: &Owner) -> Vec<String> {
    let tag = o.tag();
    [false, true]
        .iter()
        .flat_map(|v6| rules(*v6))
        .filter(|l| l.contains(&tag))
        .collect()
}

/// Chains of either family named after the owner.
fn owned_chains(o: &Owner) -> Vec<String> {
    let hex = tag_hex(o);
    [false, true]
        .iter()
        .flat_map(|v6| chains(*v6))
        .filter(|c| c.contains(&hex))
        .collect()
}

fn net(s: &str) -> IpNet {
    let (a, l) = s.split_once('/').expect("cidr");
    IpNet {
        addr: a.parse::<IpAddr>().expect("ip").into(),
        prefix_len: l.parse().expect("len"),
    }
}

fn ip(s: &str) -> IpAddress {
    s.parse::<IpAddr>().expect("ip").into()
}

fn masq(s: &str) -> Masquerade {
    Masquerade { source: net(s) }
}

fn mapping(
    host_port: u16,
    proto: Protocol,
    host_ip: Option<&str>,
    pod: &str,
    port: u16,
) -> PortMapping {
    PortMapping {
        host_port,
        container_port: port,
        protocol: proto,
        host_ip: host_ip.map(ip),
        container_ip: ip(pod),
    }
}

fn opts(snat: bool, masq_all: bool) -> PortOptions {
    PortOptions {
        snat,
        masq_all,
        subnets: vec![net("10.77.0.0/24"), net("fd77::/64")],
        mark_masq_bit: 13,
        external_set_mark_chain: None,
        conditions_v4: vec![],
        conditions_v6: vec![],
    }
}

fn sorted<T: std::fmt::Debug>(v: Vec<T>) -> Vec<String> {
    let mut s: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    s.sort();
    s
}

/// Only our chains hold rules, except one jump from each built-in chain.
fn assert_only_entry_jumps_in_builtins() {
    for v6 in [false, true] {
        let outside: Vec<String> = rules(v6)
            .into_iter()
            .filter(|l| !l.starts_with("-A WASM-CNI-"))
            .collect();
        let posts = outside
            .iter()
            .filter(|l| l.starts_with("-A POSTROUTING "))
            .count();
        let pres = outside
            .iter()
            .filter(|l| l.starts_with("-A PREROUTING "))
            .count();
        let outs = outside
            .iter()
            .filter(|l| l.starts_with("-A OUTPUT "))
            .count();
        assert!(posts <= 1 && pres <= 1 && outs <= 1, "{outside:#?}");
        assert_eq!(posts + pres + outs, outside.len(), "{outside:#?}");
        for l in &outside {
            assert!(l.contains("-j WASM-CNI-"), "{l}");
            if !l.starts_with("-A POSTROUTING ") {
                assert!(l.contains("-m addrtype --dst-type LOCAL"), "{l}");
            }
        }
    }
}

#[test]
fn masquerade_is_listed_removed_and_idempotent() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let a = owner("testnet", "a");
        let want = vec![masq("10.77.0.5/24"), masq("fd77::5/64")];
        fw.add_masquerade(&a, &want).expect("add");

        let v4 = saved(false);
        let chain = format!("WASM-CNI-{}-M", tag_hex(&a));
        let c = a.comment();
        for line in [
            "-A POSTROUTING -m comment --comment \"wasm-cni: pod masquerade and host ports\" -j WASM-CNI-POSTROUTING".to_string(),
            format!("-A WASM-CNI-POSTROUTING -s 10.77.0.5/32 -m comment --comment \"{c}\" -j {chain}"),
            format!("-A {chain} -s 10.77.0.5/32 -d 10.77.0.0/24 -m comment --comment \"{c}\" -j RETURN"),
            format!("-A {chain} -s 10.77.0.5/32 ! -d 224.0.0.0/4 -m comment --comment \"{c}\" -j MASQUERADE"),
        ] {
            assert!(v4.lines().any(|l| l == line), "missing {line}\n{v4}");
        }
        let v6 = saved(true);
        assert!(v6.contains(&format!("-A {chain} -s fd77::5/128 -d fd77::/64 ")), "{v6}");
        assert!(v6.contains(&format!("-A {chain} -s fd77::5/128 ! -d ff00::/8 ")), "{v6}");
        assert_only_entry_jumps_in_builtins();

        let owned = fw.list(&a, RuleKind::Masquerade).expect("list");
        assert_eq!(sorted(owned.masquerade), sorted(want.clone()));
        assert!(owned.port_mappings.is_empty());
        assert!(fw.list(&a, RuleKind::PortMappings).unwrap().port_mappings.is_empty());

        // Adding the same again changes nothing.
        let before = state();
        fw.add_masquerade(&a, &want).expect("add again");
        assert_eq!(state(), before);

        // Removing the other kind leaves these alone.
        fw.remove(&a, RuleKind::PortMappings).expect("remove port mappings");
        assert_eq!(state(), before);

        fw.remove(&a, RuleKind::Masquerade).expect("remove");
        assert!(owned_lines(&a).is_empty(), "{:#?}", owned_lines(&a));
        assert!(owned_chains(&a).is_empty(), "{:#?}", owned_chains(&a));
        assert!(fw.list(&a, RuleKind::Masquerade).unwrap().masquerade.is_empty());
        // Our entry chains and the jumps to them stay.
        for v6 in [false, true] {
            let ch = chains(v6);
            for ours in ["WASM-CNI-POSTROUTING", "WASM-CNI-PREROUTING", "WASM-CNI-OUTPUT"] {
                assert!(ch.iter().any(|c| c == ours), "{ch:?}");
            }
            assert_eq!(rules(v6).len(), 3, "{:#?}", rules(v6));
        }
        let after = state();
        fw.remove(&a, RuleKind::Masquerade).expect("remove again");
        assert_eq!(state(), after);
    });
}

#[test]
fn owners_are_independent() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let (a, b) = (owner("testnet", "a"), owner("testnet", "b"));
        fw.add_masquerade(&a, &[masq("10.77.0.5/24")]).unwrap();
        fw.add_masquerade(&b, &[masq("10.77.0.6/24"), masq("fd77::6/64")])
            .unwrap();
        let maps_a = vec![mapping(8080, Protocol::Tcp, None, "10.77.0.5", 80)];
        let maps_b = vec![mapping(8081, Protocol::Tcp, None, "10.77.0.6", 80)];
        fw.add_port_mappings(&a, &maps_a, &opts(true, false))
            .unwrap();
        fw.add_port_mappings(&b, &maps_b, &opts(true, false))
            .unwrap();
        assert_only_entry_jumps_in_builtins();

        let b_lines = owned_lines(&b);
        fw.remove(&a, RuleKind::Masquerade).unwrap();
        fw.remove(&a, RuleKind::PortMappings).unwrap();
        assert!(owned_lines(&a).is_empty());
        assert!(owned_chains(&a).is_empty());
        assert_eq!(owned_lines(&b), b_lines);
        assert_eq!(
            fw.list(&b, RuleKind::Masquerade).unwrap().masquerade.len(),
            2
        );
        assert_eq!(
            fw.list(&b, RuleKind::PortMappings).unwrap().port_mappings,
            maps_b
        );
        assert!(fw
            .list(&a, RuleKind::PortMappings)
            .unwrap()
            .port_mappings
            .is_empty());
    });
}

#[test]
fn port_mappings_v4_and_v6_with_and_without_host_ip() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let a = owner("testnet", "a");
        let want = vec![
            mapping(8080, Protocol::Tcp, None, "10.77.0.5", 80),
            mapping(5353, Protocol::Udp, Some("192.168.50.1"), "10.77.0.5", 53),
            mapping(9000, Protocol::Sctp, None, "10.77.0.5", 9000),
            mapping(8080, Protocol::Tcp, None, "fd77::5", 80),
            mapping(8443, Protocol::Tcp, Some("fd00::1"), "fd77::5", 443),
        ];
        fw.add_port_mappings(&a, &want, &opts(false, false)).expect("add");

        let (c, hex) = (a.comment(), tag_hex(&a));
        let dnat = format!("WASM-CNI-{hex}-D");
        let v4 = saved(false);
        for line in [
            format!("-A WASM-CNI-PREROUTING -p tcp -m tcp --dport 8080 -m comment --comment \"{c}\" -j {dnat}"),
            format!("-A WASM-CNI-OUTPUT -p tcp -m tcp --dport 8080 -m comment --comment \"{c}\" -j {dnat}"),
            format!("-A {dnat} -p tcp -m tcp --dport 8080 -m comment --comment \"{c}\" -j DNAT --to-destination 10.77.0.5:80"),
            format!("-A {dnat} -d 192.168.50.1/32 -p udp -m udp --dport 5353 -m comment --comment \"{c}\" -j DNAT --to-destination 10.77.0.5:53"),
            format!("-A {dnat} -p sctp -m sctp --dport 9000 -m comment --comment \"{c}\" -j DNAT --to-destination 10.77.0.5:9000"),
        ] {
            assert!(v4.lines().any(|l| l == line), "missing {line}\n{v4}");
        }
        let v6 = saved(true);
        for line in [
            format!("-A {dnat} -p tcp -m tcp --dport 8080 -m comment --comment \"{c}\" -j DNAT --to-destination [fd77::5]:80"),
            format!("-A {dnat} -d fd00::1/128 -p tcp -m tcp --dport 8443 -m comment --comment \"{c}\" -j DNAT --to-destination [fd77::5]:443"),
        ] {
            assert!(v6.lines().any(|l| l == line), "missing {line}\n{v6}");
        }
        // Neither snat nor masqAll: no masquerade chain.
        assert!(!state().contains(&format!("WASM-CNI-{hex}-S")));
        assert_only_entry_jumps_in_builtins();

        let owned = fw.list(&a, RuleKind::PortMappings).expect("list");
        assert_eq!(sorted(owned.port_mappings), sorted(want.clone()));
        assert!(fw.list(&a, RuleKind::Masquerade).unwrap().masquerade.is_empty());

        let before = state();
        fw.add_port_mappings(&a, &want, &opts(false, false)).expect("add again");
        assert_eq!(state(), before);
        fw.remove(&a, RuleKind::Masquerade).unwrap();
        assert_eq!(state(), before);

        fw.remove(&a, RuleKind::PortMappings).expect("remove");
        assert!(owned_lines(&a).is_empty(), "{:#?}", owned_lines(&a));
        assert!(owned_chains(&a).is_empty());
        fw.remove(&a, RuleKind::PortMappings).expect("remove again");
    });
}

#[test]
fn snat_and_masq_all_masquerade_dnated_connections() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let (a, b) = (owner("testnet", "a"), owner("testnet", "b"));
        let maps_a = vec![
            mapping(8080, Protocol::Tcp, None, "10.77.0.5", 80),
            mapping(8080, Protocol::Tcp, None, "fd77::5", 80),
        ];
        fw.add_port_mappings(&a, &maps_a, &opts(true, false)).unwrap();
        let (c, snat) = (a.comment(), format!("WASM-CNI-{}-S", tag_hex(&a)));
        let v4 = saved(false);
        for line in [
            format!("-A WASM-CNI-POSTROUTING -d 10.77.0.5/32 -m conntrack --ctstate DNAT -m comment --comment \"{c}\" -j {snat}"),
            format!("-A {snat} -s 10.77.0.0/24 -d 10.77.0.5/32 -m conntrack --ctstate DNAT -m comment --comment \"{c}\" -j MASQUERADE"),
            format!("-A {snat} -s 127.0.0.0/8 -d 10.77.0.5/32 -m conntrack --ctstate DNAT -m comment --comment \"{c}\" -j MASQUERADE"),
        ] {
            assert!(v4.lines().any(|l| l == line), "missing {line}\n{v4}");
        }
        let v6 = saved(true);
        let line = format!("-A {snat} -s fd77::/64 -d fd77::5/128 -m conntrack --ctstate DNAT -m comment --comment \"{c}\" -j MASQUERADE");
        assert!(v6.lines().any(|l| l == line), "missing {line}\n{v6}");
        assert!(!v6.contains("127.0.0.0/8") && !v6.contains("::1/128"), "{v6}");
        let in_chain = |s: &str, ch: &str| s.lines().filter(|l| l.starts_with(&format!("-A {ch} "))).count();
        assert_eq!(in_chain(&v4, &snat), 2, "{v4}");
        assert_eq!(in_chain(&v6, &snat), 1, "{v6}");

        let maps_b = vec![mapping(9090, Protocol::Udp, None, "10.77.0.6", 90)];
        fw.add_port_mappings(&b, &maps_b, &opts(true, true)).unwrap();
        let (cb, snat_b) = (b.comment(), format!("WASM-CNI-{}-S", tag_hex(&b)));
        let v4 = saved(false);
        let line = format!("-A {snat_b} -d 10.77.0.6/32 -m conntrack --ctstate DNAT -m comment --comment \"{cb}\" -j MASQUERADE");
        assert!(v4.lines().any(|l| l == line), "missing {line}\n{v4}");
        assert_eq!(in_chain(&v4, &snat_b), 1, "{v4}");
        assert!(!saved(true).contains(&snat_b));
        assert_only_entry_jumps_in_builtins();

        fw.remove(&a, RuleKind::PortMappings).unwrap();
        fw.remove(&b, RuleKind::PortMappings).unwrap();
        assert!(!state().contains("MASQUERADE"), "{}", state());
        assert!(!state().contains("DNAT"), "{}", state());
    });
}

#[test]
fn host_port_taken_by_another_pod_is_refused() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let (a, b) = (owner("testnet", "a"), owner("testnet", "b"));
        fw.add_port_mappings(
            &a,
            &[mapping(8080, Protocol::Tcp, None, "10.77.0.5", 80)],
            &opts(true, false),
        )
        .unwrap();
        let before = state();
        for host_ip in [None, Some("192.168.50.1")] {
            let e = fw
                .add_port_mappings(
                    &b,
                    &[mapping(8080, Protocol::Tcp, host_ip, "10.77.0.6", 80)],
                    &opts(true, false),
                )
                .unwrap_err();
            assert_eq!(e.code, code::ALREADY_EXISTS, "{e}");
            assert!(e.msg.contains("8080/tcp"), "{e}");
        }
        assert_eq!(state(), before);
        // Another protocol or port is fine.
        fw.add_port_mappings(
            &b,
            &[mapping(8080, Protocol::Udp, None, "10.77.0.6", 80)],
            &opts(true, false),
        )
        .unwrap();
        // Mixed families in one mapping are a configuration error, found
        // before any backend runs.
        let e = wasm_cni_host::firewall::validate_mappings(&[mapping(
            1,
            Protocol::Tcp,
            Some("fd00::1"),
            "10.77.0.6",
            1,
        )])
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG, "{e}");
    });
}

#[test]
fn gc_removes_stale_owners_of_one_network_only() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let a = owner("testnet", "a");
        let b = owner("testnet", "b");
        let c = owner("othernet", "c");
        for (o, pod, pod6, port) in [
            (&a, "10.77.0.5", "fd77::5", 8080),
            (&b, "10.77.0.6", "fd77::6", 8081),
            (&c, "10.78.0.7", "fd78::7", 8082),
        ] {
            fw.add_masquerade(
                o,
                &[masq(&format!("{pod}/24")), masq(&format!("{pod6}/64"))],
            )
            .unwrap();
            let maps = [
                mapping(port, Protocol::Tcp, None, pod, 80),
                mapping(port, Protocol::Tcp, None, pod6, 80),
            ];
            fw.add_port_mappings(o, &maps, &opts(true, false)).unwrap();
        }
        let (a_lines, c_lines) = (owned_lines(&a), owned_lines(&c));

        fw.gc("testnet", RuleKind::Masquerade, std::slice::from_ref(&a))
            .expect("gc masquerade");
        assert!(fw
            .list(&b, RuleKind::Masquerade)
            .unwrap()
            .masquerade
            .is_empty());
        assert_eq!(
            fw.list(&b, RuleKind::PortMappings)
                .unwrap()
                .port_mappings
                .len(),
            2
        );
        assert!(owned_chains(&b).iter().all(|ch| !ch.ends_with("-M")));

        fw.gc("testnet", RuleKind::PortMappings, std::slice::from_ref(&a))
            .expect("gc port mappings");
        assert!(owned_lines(&b).is_empty(), "{:#?}", owned_lines(&b));
        assert!(owned_chains(&b).is_empty(), "{:#?}", owned_chains(&b));
        assert_eq!(owned_lines(&a), a_lines);
        assert_eq!(owned_lines(&c), c_lines);

        // Nothing stale left: a second run changes nothing.
        let before = state();
        fw.gc("testnet", RuleKind::PortMappings, std::slice::from_ref(&a))
            .unwrap();
        fw.gc("testnet", RuleKind::Masquerade, std::slice::from_ref(&a))
            .unwrap();
        assert_eq!(state(), before);
        assert_only_entry_jumps_in_builtins();
    });
}

#[test]
fn remove_list_and_gc_on_a_fresh_namespace_are_empty() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let a = owner("testnet", "a");
        let before = state();
        fw.remove(&a, RuleKind::Masquerade).unwrap();
        fw.remove(&a, RuleKind::PortMappings).unwrap();
        fw.gc("testnet", RuleKind::Masquerade, &[]).unwrap();
        let owned = fw.list(&a, RuleKind::PortMappings).unwrap();
        assert!(owned.masquerade.is_empty() && owned.port_mappings.is_empty());
        // Nothing was created by reading or removing.
        assert_eq!(state(), before);
        assert!(!before.contains("WASM-CNI"));
    });
}

/// Accepts `n` TCP connections on `addr` inside `ns`, answering each with
/// the peer's address; returns once the socket is listening.
fn serve(ns: &Netns, addr: &str, n: usize) -> std::thread::JoinHandle<()> {
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = std::net::TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        for _ in 0..n {
            let (mut s, peer) = l.accept().expect("accept");
            let _ = std::io::Write::write_all(&mut s, peer.ip().to_string().as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    h
}

/// Connects from `ns` to `addr`: the source address the server saw, or the
/// error.
fn fetch(ns: &Netns, addr: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// A node namespace with a pod (10.77.0.5/24 behind 10.77.0.1) and an
/// outside host (192.168.9.2, which has no route to the pod subnet): the
/// rules must really forward and masquerade.
#[test]
fn rules_forward_and_masquerade_real_traffic() {
    let Some(node) = Netns::new("ipt") else {
        return;
    };
    let (pod, ext) = (Netns::new("ipt").unwrap(), Netns::new("ipt").unwrap());
    node.ip(&format!(
        "link add h-pod type veth peer name eth0 netns {}",
        pod.0
    ));
    node.ip(&format!(
        "link add h-ext type veth peer name eth0 netns {}",
        ext.0
    ));
    for ns in [&node, &pod, &ext] {
        ns.ip("link set lo up");
    }
    node.ip("addr add 10.77.0.1/24 dev h-pod");
    node.ip("link set h-pod up");
    node.ip("addr add 192.168.9.1/24 dev h-ext");
    node.ip("link set h-ext up");
    pod.ip("addr add 10.77.0.5/24 dev eth0");
    pod.ip("link set eth0 up");
    pod.ip("route add default via 10.77.0.1");
    ext.ip("addr add 192.168.9.2/24 dev eth0");
    ext.ip("link set eth0 up");
    node.sysctl("net.ipv4.ip_forward=1");
    node.sysctl("net.ipv4.conf.h-pod.route_localnet=1");

    let a = owner("testnet", "a");
    let o = a.clone();
    node.run(move || {
        let mut fw = Iptables::new();
        fw.add_masquerade(&o, &[masq("10.77.0.5/24")]).unwrap();
        let maps = [mapping(8080, Protocol::Tcp, None, "10.77.0.5", 80)];
        fw.add_port_mappings(&o, &maps, &opts(true, false)).unwrap();
    });

    // Pod egress leaves with the node's address.
    let srv = serve(&ext, "192.168.9.2:7000", 1);
    assert_eq!(
        fetch(&pod, "192.168.9.2:7000").as_deref(),
        Ok("192.168.9.1")
    );
    srv.join().unwrap();

    // A host port from outside (PREROUTING): the pod sees the client.
    let srv = serve(&pod, "10.77.0.5:80", 4);
    assert_eq!(
        fetch(&ext, "192.168.9.1:8080").as_deref(),
        Ok("192.168.9.2")
    );
    // From the node itself (OUTPUT).
    assert_eq!(
        fetch(&node, "192.168.9.1:8080").as_deref(),
        Ok("192.168.9.1")
    );
    // From the node's localhost (snat: 127.0.0.0/8 is masqueraded).
    assert_eq!(fetch(&node, "127.0.0.1:8080").as_deref(), Ok("10.77.0.1"));
    // Hairpin: the pod reaching its own host port (snat: its subnet).
    assert_eq!(fetch(&pod, "10.77.0.1:8080").as_deref(), Ok("10.77.0.1"));
    srv.join().unwrap();

    // masqAll: every forwarded connection comes from the node.
    let o = a.clone();
    node.run(move || {
        let maps = [mapping(8081, Protocol::Tcp, None, "10.77.0.5", 81)];
        Iptables::new()
            .add_port_mappings(&o, &maps, &opts(true, true))
            .unwrap();
    });
    let srv = serve(&pod, "10.77.0.5:81", 1);
    assert_eq!(fetch(&ext, "192.168.9.1:8081").as_deref(), Ok("10.77.0.1"));
    srv.join().unwrap();

    // Removed: nothing listens on the node's port 8080 any more.
    let o = a.clone();
    node.run(move || Iptables::new().remove(&o, RuleKind::PortMappings).unwrap());
    assert!(fetch(&ext, "192.168.9.1:8080").is_err());
}
