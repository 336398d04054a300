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
use wasm_cni_host::firewall::iptables::{Iptables, HOSTPORT_MASQ, MASQ_COMMENT};
use wasm_cni_host::firewall::{
    Condition, Firewall, Masquerade, MatchField, Owner, PortMapping, PortOptions, Protocol,
    RuleKind,
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

/// Only our chains hold rules, except one jump from each built-in chain
/// (and, in POSTROUTING, the one to the shared host-port masquerade chain).
fn assert_only_entry_jumps_in_builtins() {
    for v6 in [false, true] {
        let outside: Vec<String> = rules(v6)
            .into_iter()
            .filter(|l| !l.starts_with("-A WASM-CNI-"))
            .filter(|l| {
                l != &format!(
                    "-A POSTROUTING -m comment --comment \"{MASQ_COMMENT}\" -j {HOSTPORT_MASQ}"
                )
            })
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

/// The `-A` lines of `chain` in one family, in order.
fn in_chain(v6: bool, chain: &str) -> Vec<String> {
    let head = format!("-A {chain} ");
    rules(v6)
        .into_iter()
        .filter(|l| l.starts_with(&head))
        .collect()
}

/// `snat` flags hairpin (the pod subnets) and localhost (IPv4) connections
/// with the mark bit in the DNAT chain, ahead of the DNAT; `masqAll` flags
/// every source; one shared rule per bit masquerades what is flagged.
#[test]
fn snat_and_masq_all_mark_connections_for_masquerade() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let (a, b) = (owner("testnet", "a"), owner("testnet", "b"));
        let maps_a = vec![
            mapping(8080, Protocol::Tcp, None, "10.77.0.5", 80),
            mapping(8080, Protocol::Tcp, None, "fd77::5", 80),
        ];
        let mut o = opts(true, false);
        o.mark_masq_bit = 14;
        fw.add_port_mappings(&a, &maps_a, &o).unwrap();
        let (c, dnat) = (a.comment(), format!("WASM-CNI-{}-D", tag_hex(&a)));
        let port = "-p tcp -m tcp --dport 8080";
        let mark = "-j MARK --set-xmark 0x4000/0x4000";
        let v4 = in_chain(false, &dnat);
        assert_eq!(v4.len(), 3, "{v4:#?}");
        for src in ["10.77.0.0/24", "127.0.0.0/8"] {
            let line = format!("-A {dnat} -s {src} {port} -m comment --comment \"{c}\" {mark}");
            assert!(v4[..2].contains(&line), "missing {line} before the DNAT: {v4:#?}");
        }
        assert!(v4[2].ends_with("-j DNAT --to-destination 10.77.0.5:80"), "{v4:#?}");
        let v6 = in_chain(true, &dnat);
        assert_eq!(
            v6[0],
            format!("-A {dnat} -s fd77::/64 {port} -m comment --comment \"{c}\" {mark}")
        );
        assert_eq!(v6.len(), 2, "{v6:#?}");
        for v6 in [false, true] {
            assert_eq!(
                in_chain(v6, HOSTPORT_MASQ),
                [format!(
                    "-A {HOSTPORT_MASQ} -m mark --mark 0x4000/0x4000 -m comment --comment \"{MASQ_COMMENT}\" -j MASQUERADE"
                )]
            );
            // First in POSTROUTING, ahead of anything that would accept
            // pod-subnet traffic unmasqueraded.
            let post = in_chain(v6, "POSTROUTING");
            assert!(post[0].ends_with(&format!("-j {HOSTPORT_MASQ}")), "{post:#?}");
        }
        assert!(!state().contains("--ctstate DNAT"), "{}", state());

        // masqAll on bit 13: every source flagged; a second rule for that
        // bit, the one for 14 kept, none added twice.
        let maps_b = vec![mapping(9090, Protocol::Udp, None, "10.77.0.6", 90)];
        fw.add_port_mappings(&b, &maps_b, &opts(true, true)).unwrap();
        fw.add_port_mappings(&b, &maps_b, &opts(true, true)).unwrap();
        let dnat_b = format!("WASM-CNI-{}-D", tag_hex(&b));
        assert_eq!(
            in_chain(false, &dnat_b)[0],
            format!(
                "-A {dnat_b} -p udp -m udp --dport 9090 -m comment --comment \"{}\" -j MARK --set-xmark 0x2000/0x2000",
                b.comment()
            )
        );
        assert_eq!(in_chain(false, &dnat_b).len(), 2);
        let masq = in_chain(false, HOSTPORT_MASQ);
        assert_eq!(masq.len(), 2, "{masq:#?}");
        assert!(masq[1].contains("--mark 0x2000/0x2000"), "{masq:#?}");
        assert_eq!(in_chain(true, HOSTPORT_MASQ).len(), 1);
        assert_only_entry_jumps_in_builtins();

        // Removal takes the attachment's chains; the shared rules stay.
        fw.remove(&a, RuleKind::PortMappings).unwrap();
        fw.remove(&b, RuleKind::PortMappings).unwrap();
        assert!(owned_lines(&a).is_empty() && owned_lines(&b).is_empty());
        assert!(owned_chains(&a).is_empty() && owned_chains(&b).is_empty());
        assert!(!state().contains("DNAT"), "{}", state());
        assert_eq!(in_chain(false, HOSTPORT_MASQ).len(), 2);
    });
}

fn external(chain: &str) -> PortOptions {
    PortOptions {
        external_set_mark_chain: Some(chain.into()),
        ..opts(true, false)
    }
}

/// `externalSetMarkChain`: the DNAT chain jumps to the other system's chain
/// for the connections to masquerade, and no mark or masquerade rule of
/// ours is written; a chain that is not there fails the addition, naming
/// the option and the chain, with nothing written in either family.
#[test]
fn external_set_mark_chain_is_jumped_to_instead_of_marking() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let a = owner("testnet", "a");
        let maps = vec![
            mapping(8080, Protocol::Tcp, None, "10.77.0.5", 80),
            mapping(8080, Protocol::Tcp, None, "fd77::5", 80),
        ];
        // Only in the IPv4 nat table yet.
        let ok = Command::new("iptables")
            .args(["-t", "nat", "-N", "KUBE-MARK-MASQ"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "iptables -N KUBE-MARK-MASQ");
        let before = state();
        for (chain, table) in [("KUBE-MARK-MASQ", "ip6tables"), ("NO-SUCH-CHAIN", "iptables")] {
            let e = fw
                .add_port_mappings(&a, &maps, &external(chain))
                .unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{e}");
            assert!(e.msg.starts_with("externalSetMarkChain: "), "{e}");
            assert!(e.msg.contains(&format!("chain {chain} does not exist in the nat table of {table}")), "{e}");
            assert_eq!(state(), before, "a failed addition left rules");
        }

        let ok = Command::new("ip6tables")
            .args(["-t", "nat", "-N", "KUBE-MARK-MASQ"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip6tables -N KUBE-MARK-MASQ");
        fw.add_port_mappings(&a, &maps, &external("KUBE-MARK-MASQ"))
            .expect("add");
        let (c, dnat) = (a.comment(), format!("WASM-CNI-{}-D", tag_hex(&a)));
        let v4 = in_chain(false, &dnat);
        for src in ["10.77.0.0/24", "127.0.0.0/8"] {
            let line = format!(
                "-A {dnat} -s {src} -p tcp -m tcp --dport 8080 -m comment --comment \"{c}\" -j KUBE-MARK-MASQ"
            );
            assert!(v4.contains(&line), "missing {line}: {v4:#?}");
        }
        assert!(in_chain(true, &dnat)[0].contains("-s fd77::/64 "));
        assert!(in_chain(true, &dnat)[0].ends_with("-j KUBE-MARK-MASQ"));
        let all = state();
        assert!(!all.contains("MARK --set-xmark"), "{all}");
        assert!(!all.contains(HOSTPORT_MASQ), "{all}");
        assert_only_entry_jumps_in_builtins();

        fw.remove(&a, RuleKind::PortMappings).unwrap();
        assert!(owned_lines(&a).is_empty(), "{:#?}", owned_lines(&a));
        assert!(owned_chains(&a).is_empty());
        assert!(!state().contains("-j KUBE-MARK-MASQ"), "{}", state());

        // The IPv6 transaction fails in the kernel (its external chain leads
        // back into our entry chain: a loop) after the IPv4 one went in:
        // the IPv4 rules are taken out again.
        let ok = Command::new("ip6tables")
            .args(["-t", "nat", "-A", "KUBE-MARK-MASQ", "-j", "WASM-CNI-OUTPUT"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip6tables -A KUBE-MARK-MASQ");
        let before = state();
        let e = fw
            .add_port_mappings(&a, &maps, &external("KUBE-MARK-MASQ"))
            .unwrap_err();
        assert_eq!(e.code, code::IO_FAILURE, "{e}");
        assert!(e.msg.contains("ip6tables-restore"), "{e}");
        assert_eq!(state(), before, "a failed addition left rules");
    });
}

/// `conditionsV4` / `conditionsV6` narrow the rules that lead into the
/// attachment's DNAT chain, each family its own.
#[test]
fn conditions_narrow_the_jumps_into_the_dnat_chain() {
    let Some(ns) = Netns::new("ipt") else { return };
    ns.run(|| {
        let mut fw = Iptables::new();
        let a = owner("testnet", "a");
        let maps = vec![
            mapping(8080, Protocol::Tcp, None, "10.77.0.5", 80),
            mapping(8080, Protocol::Tcp, None, "fd77::5", 80),
        ];
        let mut o = opts(true, false);
        o.conditions_v4 = vec![
            Condition {
                negate: true,
                field: MatchField::InInterface("eth1".into()),
            },
            Condition {
                negate: true,
                field: MatchField::Source(net("192.0.2.7/32")),
            },
        ];
        o.conditions_v6 = vec![Condition {
            negate: false,
            field: MatchField::Destination(net("fd00::1/128")),
        }];
        fw.add_port_mappings(&a, &maps, &o).expect("add");
        let (c, dnat) = (a.comment(), format!("WASM-CNI-{}-D", tag_hex(&a)));
        let tail = format!("-p tcp -m tcp --dport 8080 -m comment --comment \"{c}\" -j {dnat}");
        for entry in ["WASM-CNI-PREROUTING", "WASM-CNI-OUTPUT"] {
            assert_eq!(
                in_chain(false, entry),
                [format!("-A {entry} ! -s 192.0.2.7/32 ! -i eth1 {tail}")]
            );
            assert_eq!(
                in_chain(true, entry),
                [format!("-A {entry} -d fd00::1/128 {tail}")]
            );
        }
        // Inside the chain nothing changes.
        assert!(in_chain(false, &dnat)
            .iter()
            .all(|l| !l.contains("192.0.2.7")));
        let before = state();
        fw.add_port_mappings(&a, &maps, &o).expect("add again");
        assert_eq!(state(), before);

        // Two source conditions cannot share one iptables rule.
        o.conditions_v4.push(Condition {
            negate: false,
            field: MatchField::Source(net("192.0.2.0/24")),
        });
        let b = owner("testnet", "b");
        let e = fw
            .add_port_mappings(
                &b,
                &[mapping(8081, Protocol::Tcp, None, "10.77.0.6", 80)],
                &o,
            )
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG, "{e}");
        assert!(e.msg.starts_with("conditionsV4: "), "{e}");
        assert_eq!(state(), before);

        fw.remove(&a, RuleKind::PortMappings).unwrap();
        assert!(owned_lines(&a).is_empty(), "{:#?}", owned_lines(&a));
        for v6 in [false, true] {
            assert!(in_chain(v6, "WASM-CNI-PREROUTING").is_empty());
            assert!(in_chain(v6, "WASM-CNI-OUTPUT").is_empty());
        }
    });
}

/// A backend without its marker has never added rules since boot: remove,
/// list and GC return at once and touch nothing — even rules that are
/// there (written here by a backend with another marker) stay. Its first
/// addition leaves the marker, and from then on it removes.
#[test]
fn a_backend_never_used_since_boot_reads_and_removes_nothing() {
    let Some(ns) = Netns::new("ipt") else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let (used, fresh) = (
        dir.path().join("a/iptables.used"),
        dir.path().join("b/iptables.used"),
    );
    let (u, f) = (used.clone(), fresh.clone());
    ns.run(move || {
        let a = owner("testnet", "a");
        let maps = vec![mapping(8080, Protocol::Tcp, None, "10.77.0.5", 80)];
        let mut writer = Iptables::with_marker(&u);
        writer.add_masquerade(&a, &[masq("10.77.0.5/24")]).unwrap();
        writer
            .add_port_mappings(&a, &maps, &opts(true, false))
            .unwrap();
        assert!(u.is_file(), "no marker after the first addition");
        let before = state();

        let mut unused = Iptables::with_marker(&f);
        unused.remove(&a, RuleKind::PortMappings).expect("remove");
        unused.remove(&a, RuleKind::Masquerade).expect("remove");
        unused
            .gc("testnet", RuleKind::PortMappings, &[])
            .expect("gc");
        let owned = unused.list(&a, RuleKind::PortMappings).expect("list");
        assert!(owned.port_mappings.is_empty() && owned.masquerade.is_empty());
        assert_eq!(
            state(),
            before,
            "a backend without its marker changed rules"
        );
        assert!(!f.exists());

        // The writer, which has its marker, sees and removes them.
        assert_eq!(
            writer
                .list(&a, RuleKind::PortMappings)
                .unwrap()
                .port_mappings,
            maps
        );
        writer.remove(&a, RuleKind::PortMappings).unwrap();
        writer.remove(&a, RuleKind::Masquerade).unwrap();
        assert!(owned_lines(&a).is_empty(), "{:#?}", owned_lines(&a));
    });
    assert!(used.is_file() && !fresh.exists());
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
