//! The nftables backend, run inside a network namespace of its own (root
//! only): elements in, elements out, the owner's only, rules constant.

use std::net::IpAddr;
use std::process::Command;

mod common;

use common::netns::Netns;
use wasm_cni_host::bindings::IpNet;
use wasm_cni_host::firewall::nft::Nftables;
use wasm_cni_host::firewall::{
    Firewall, Masquerade, Owner, PortMapping, PortOptions, Protocol, RuleKind,
};

fn nft_list() -> String {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "wasm_cni"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn owner(id: &str) -> Owner {
    Owner {
        network: "testnet".into(),
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

fn net(s: &str) -> IpNet {
    let (a, l) = s.split_once('/').expect("cidr");
    IpNet {
        addr: a.parse::<IpAddr>().expect("ip").into(),
        prefix_len: l.parse().expect("len"),
    }
}

fn ip(s: &str) -> wasm_cni_host::bindings::IpAddress {
    s.parse::<IpAddr>().expect("ip").into()
}

fn mapping(host_port: u16, pod: &str) -> PortMapping {
    PortMapping {
        host_port,
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: None,
        container_ip: ip(pod),
    }
}

fn opts() -> PortOptions {
    PortOptions {
        snat: true,
        masq_all: false,
        subnets: vec![net("10.77.0.0/24"), net("fd77::/64")],
        mark_masq_bit: 13,
        external_set_mark_chain: None,
        conditions_v4: vec![],
        conditions_v6: vec![],
    }
}

fn rule_lines(listing: &str) -> usize {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.contains("masquerade")
                || l.contains("dnat")
                || l.ends_with("return")
                || l.contains(" return comment")
        })
        .count()
}

#[test]
fn masquerade_elements_belong_to_their_owner() {
    let Some(ns) = Netns::new("masq") else { return };
    ns.run(|| {
        let mut fw = Nftables::new();
        let (a, b) = (owner("a"), owner("b"));
        fw.add_masquerade(
            &a,
            &[
                Masquerade {
                    source: net("10.77.0.2/24"),
                },
                Masquerade {
                    source: net("fd77::2/64"),
                },
            ],
        )
        .expect("add a");
        fw.add_masquerade(
            &b,
            &[Masquerade {
                source: net("10.77.0.3/24"),
            }],
        )
        .expect("add b");
        // Adding the same again is no error (a retried ADD).
        fw.add_masquerade(
            &b,
            &[Masquerade {
                source: net("10.77.0.3/24"),
            }],
        )
        .expect("add b again");
        let listing = nft_list();
        assert!(listing.contains("10.77.0.2 comment"), "{listing}");
        assert!(listing.contains("set masq_v4_0a4d0000_24 {"), "{listing}");
        assert!(
            listing.contains("ip saddr @masq_v4_0a4d0000_24 ip daddr != 10.77.0.0/24 masquerade"),
            "the subnet's rule: {listing}"
        );
        assert!(listing.contains("fd77::2 comment"), "{listing}");
        assert!(
            listing.contains("set masq_v6_fd770000000000000000000000000000_64 {"),
            "{listing}"
        );
        assert!(
            !listing.contains("jump masq"),
            "no element jumps: {listing}"
        );
        assert!(listing.contains("net=testnet id=a if=eth0"), "{listing}");
        let owned = fw.list(&a, RuleKind::Masquerade).expect("list");
        assert_eq!(owned.masquerade.len(), 2);
        fw.remove(&a, RuleKind::Masquerade).expect("remove a");
        fw.remove(&a, RuleKind::Masquerade).expect("remove a twice");
        let listing = nft_list();
        assert!(!listing.contains("10.77.0.2"), "{listing}");
        assert!(!listing.contains("fd77::2"), "{listing}");
        assert!(listing.contains("10.77.0.3"), "b is untouched: {listing}");
        assert!(fw
            .list(&a, RuleKind::Masquerade)
            .expect("list")
            .masquerade
            .is_empty());
    });
}

#[test]
fn port_mappings_and_hairpin_elements() {
    let Some(ns) = Netns::new("ports") else {
        return;
    };
    ns.run(|| {
        let mut fw = Nftables::new();
        let a = owner("a");
        let mut with_ip = mapping(53, "10.77.0.2");
        with_ip.protocol = Protocol::Udp;
        with_ip.host_ip = Some(ip("192.0.2.10"));
        fw.add_port_mappings(
            &a,
            &[
                mapping(8080, "10.77.0.2"),
                mapping(8080, "fd77::2"),
                with_ip,
            ],
            &opts(),
        )
        .expect("add");
        let listing = nft_list();
        assert!(listing.contains("tcp . 8080 comment"), "{listing}");
        assert!(listing.contains(": 10.77.0.2 . 80"), "{listing}");
        assert!(listing.contains(": fd77::2 . 80"), "{listing}");
        assert!(listing.contains("192.0.2.10 . udp . 53"), "{listing}");
        assert!(
            listing.contains("set hpmasq_v4_0a4d0000_24_lo {"),
            "hairpin and localhost: {listing}"
        );
        assert!(
            listing.contains("ip daddr @hpmasq_v4_0a4d0000_24_lo ip saddr 10.77.0.0/24 masquerade"),
            "hairpin: {listing}"
        );
        assert!(
            listing.contains("ip daddr @hpmasq_v4_0a4d0000_24_lo ip saddr 127.0.0.0/8 masquerade"),
            "localhost: {listing}"
        );
        let owned = fw.list(&a, RuleKind::PortMappings).expect("list");
        assert_eq!(owned.port_mappings.len(), 3);
        // A host port already mapped to another pod is refused.
        let err = fw
            .add_port_mappings(&owner("b"), &[mapping(8080, "10.77.0.3")], &opts())
            .unwrap_err();
        assert!(err.msg.contains("already mapped"), "{err}");
        fw.remove(&a, RuleKind::PortMappings).expect("remove");
        let listing = nft_list();
        assert!(!listing.contains("8080"), "{listing}");
        assert!(!listing.contains("10.77.0.2"), "{listing}");
    });
}

#[test]
fn port_mappings_of_finds_the_owners_mappings_by_key() {
    let Some(ns) = Netns::new("ports-of") else {
        return;
    };
    ns.run(|| {
        let mut fw = Nftables::new();
        let (a, b) = (owner("a"), owner("b"));
        let mut with_ip = mapping(53, "10.77.0.2");
        with_ip.protocol = Protocol::Udp;
        with_ip.host_ip = Some(ip("192.0.2.10"));
        let a_maps = [
            mapping(8080, "10.77.0.2"),
            mapping(8080, "fd77::2"),
            with_ip,
        ];
        fw.add_port_mappings(&a, &a_maps, &opts()).expect("add a");
        fw.add_port_mappings(&b, &[mapping(9090, "10.77.0.3")], &opts())
            .expect("add b");
        let found = fw.port_mappings_of(&a, &a_maps).expect("of a");
        assert_eq!(found, a_maps.to_vec());
        // Another owner's mapping, one to another pod port, one that is not
        // there: none of them is a's.
        let mut other_port = mapping(8080, "10.77.0.2");
        other_port.container_port = 81;
        let not_a = [
            mapping(9090, "10.77.0.3"),
            other_port,
            mapping(7070, "10.77.0.2"),
        ];
        assert!(fw.port_mappings_of(&a, &not_a).expect("not a").is_empty());
        // What is there is still found beside what is not.
        let mixed = [mapping(7070, "10.77.0.2"), mapping(8080, "10.77.0.2")];
        assert_eq!(
            fw.port_mappings_of(&a, &mixed).expect("mixed"),
            vec![mapping(8080, "10.77.0.2")]
        );
        fw.remove(&a, RuleKind::PortMappings).expect("remove a");
        assert!(fw.port_mappings_of(&a, &a_maps).expect("gone").is_empty());
    });
}

#[test]
fn gc_removes_vanished_attachments_of_its_network_only() {
    let Some(ns) = Netns::new("gc") else { return };
    ns.run(|| {
        let mut fw = Nftables::new();
        let other = Owner {
            network: "othernet".into(),
            ..owner("z")
        };
        fw.add_masquerade(
            &owner("a"),
            &[Masquerade {
                source: net("10.77.0.2/24"),
            }],
        )
        .expect("a");
        fw.add_masquerade(
            &owner("b"),
            &[Masquerade {
                source: net("10.77.0.3/24"),
            }],
        )
        .expect("b");
        fw.add_masquerade(
            &other,
            &[Masquerade {
                source: net("10.78.0.2/24"),
            }],
        )
        .expect("z");
        fw.gc("testnet", RuleKind::Masquerade, &[owner("b")])
            .expect("gc");
        let listing = nft_list();
        assert!(!listing.contains("10.77.0.2"), "{listing}");
        assert!(listing.contains("10.77.0.3"), "{listing}");
        assert!(
            listing.contains("10.78.0.2"),
            "another network is untouched: {listing}"
        );
    });
}

#[test]
fn a_thousand_pods_add_no_rules() {
    let Some(ns) = Netns::new("flat") else { return };
    ns.run(|| {
        let mut fw = Nftables::new();
        fw.add_masquerade(
            &owner("first"),
            &[Masquerade {
                source: net("10.80.0.2/16"),
            }],
        )
        .expect("first");
        let rules_with_one = rule_lines(&nft_list());
        // 1000 pods in one transaction per 100, as elements.
        for batch in 0..10u32 {
            for i in 0..100u32 {
                let n = batch * 100 + i + 3;
                let src = format!("10.80.{}.{}/16", n / 250, n % 250 + 2);
                fw.add_masquerade(
                    &owner(&format!("p{n}")),
                    &[Masquerade { source: net(&src) }],
                )
                .expect("add");
            }
        }
        let listing = nft_list();
        assert_eq!(
            rule_lines(&listing),
            rules_with_one,
            "rules must not grow with pods"
        );
        assert!(
            listing.matches("comment \"wc:").count() >= 1001,
            "elements hold the pods"
        );
    });
}

/// The table as the layout before wrote it: pods in verdict maps jumping to
/// per-subnet chains, one host-port mapping with conditions.
const VERDICT_LAYOUT: &str = r#"
table inet wasm_cni {
  map masq_v4 { type ipv4_addr : verdict; }
  map masq_v6 { type ipv6_addr : verdict; }
  map hostports_any_v4 { type inet_proto . inet_service : ipv4_addr . inet_service; }
  map hostports_any_v6 { type inet_proto . inet_service : ipv6_addr . inet_service; }
  map hostports_ip_v4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
  map hostports_ip_v6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }
  map hostports_held_v4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags interval; }
  map hostports_held_v6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; flags interval; }
  map hostport_masq_v4 { type ipv4_addr : verdict; }
  map hostport_masq_v6 { type ipv6_addr : verdict; }
  chain hostport_masq_all {
    masquerade
  }
  chain hostports_conditional {
  }
  chain masq_v4_0a4d0000_24 {
    ip daddr != 10.77.0.0/24 masquerade
  }
  chain hpmasq_v4_0a4d0000_24_lo {
    ip saddr 10.77.0.0/24 masquerade
    ip saddr 127.0.0.0/8 masquerade
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump hostports_conditional
    fib daddr type local meta nfproto ipv4 meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @hostports_any_v4
  }
  chain output {
    type nat hook output priority -100; policy accept;
    fib daddr type local meta nfproto ipv4 meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @hostports_any_v4
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip daddr vmap @hostport_masq_v4
    ip saddr vmap @masq_v4
  }
}
"#;

fn nft_load(script: &str) {
    use std::io::Write;
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    nft.stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    assert!(
        nft.wait().expect("nft").success(),
        "nft -f loads:\n{script}"
    );
}

/// The text of set `name` in a listing, from its name to its closing brace.
fn set_text<'a>(listing: &'a str, name: &str) -> &'a str {
    listing
        .split(&format!("set {name} {{"))
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_default()
}

#[test]
fn a_table_of_verdict_maps_is_upgraded_in_place() {
    let Some(ns) = Netns::new("upgrade") else {
        return;
    };
    ns.run(|| {
        let (a, b) = (owner("a"), owner("b"));
        let (ca, cb) = (a.comment(), b.comment());
        let t = "inet wasm_cni";
        nft_load(&format!(
            "{VERDICT_LAYOUT}
add element {t} masq_v4 {{ 10.77.0.2 comment \"{ca}\" : jump masq_v4_0a4d0000_24 }}
add element {t} hostport_masq_v4 {{ 10.77.0.2 comment \"{ca}\" : jump hpmasq_v4_0a4d0000_24_lo }}
add element {t} hostport_masq_v4 {{ 10.77.0.3 comment \"{cb}\" : jump hostport_masq_all }}
add element {t} hostports_any_v4 {{ tcp . 8080 comment \"{ca}\" : 10.77.0.2 . 80 }}
add rule {t} hostports_conditional iifname \"eth1\" tcp dport 53 dnat ip to 10.77.0.3:53 comment \"{cb}\"
"
        ));
        let pod_a: IpAddr = "10.77.0.2".parse().expect("ip");
        let a_masq = [Masquerade {
            source: net("10.77.0.2/24"),
        }];

        // Before the first ADD of the new binary, CHECK reads the old maps.
        let mut fw = Nftables::new();
        let before = fw.masquerade_of(&a, &[pod_a]).expect("check before");
        assert_eq!(before, a_masq);

        // The first ADD after the binary is replaced upgrades the table.
        let c = owner("c");
        let c_masq = [Masquerade {
            source: net("10.77.0.4/24"),
        }];
        fw.add_masquerade(&c, &c_masq).expect("add c");

        let listing = nft_list();
        assert!(!listing.contains("vmap"), "no verdict map left: {listing}");
        assert!(!listing.contains("jump masq_v4"), "{listing}");
        assert!(!listing.contains("chain hostport_masq_all"), "{listing}");
        // Every pod keeps its masquerade, under its owner.
        let after = fw.masquerade_of(&a, &[pod_a]).expect("check after");
        assert_eq!(after, a_masq);
        let owned = fw.list(&c, RuleKind::Masquerade).expect("list c");
        assert_eq!(owned.masquerade, c_masq);
        let hairpin = set_text(&listing, "hpmasq_v4_0a4d0000_24_lo");
        assert!(hairpin.contains("10.77.0.2"), "hairpin kept: {listing}");
        let localhost = "ip daddr @hpmasq_v4_0a4d0000_24_lo ip saddr 127.0.0.0/8 masquerade";
        assert!(listing.contains(localhost), "{listing}");
        let all = set_text(&listing, "hostport_masq_all_v4");
        assert!(all.contains("10.77.0.3"), "masqAll kept: {listing}");
        // Host ports and rules with conditions are untouched.
        let maps = fw.list(&a, RuleKind::PortMappings).expect("list ports");
        assert_eq!(maps.port_mappings.len(), 1);
        assert!(listing.contains("iifname \"eth1\" tcp dport 53"), "{listing}");
        assert_eq!(
            listing.matches("jump hostports_conditional").count(),
            2,
            "base chains written once: {listing}"
        );

        // DEL after the upgrade removes what the pod had before it.
        fw.remove(&a, RuleKind::Masquerade).expect("remove a");
        fw.remove(&a, RuleKind::PortMappings).expect("remove a ports");
        let listing = nft_list();
        assert!(!listing.contains("10.77.0.2"), "{listing}");
        assert!(listing.contains("10.77.0.4"), "{listing}");
    });
}
