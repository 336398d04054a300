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
        assert!(listing.contains(": jump masq_v4_0a4d0000_24"), "{listing}");
        assert!(
            listing.contains("ip daddr != 10.77.0.0/24 masquerade"),
            "the subnet's chain: {listing}"
        );
        assert!(listing.contains("fd77::2 comment"), "{listing}");
        assert!(
            listing.contains(": jump masq_v6_fd770000000000000000000000000000_64"),
            "{listing}"
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
            listing.contains(": jump hpmasq_v4_0a4d0000_24_lo"),
            "hairpin and localhost: {listing}"
        );
        assert!(
            listing.contains("ip saddr 10.77.0.0/24 masquerade"),
            "hairpin: {listing}"
        );
        assert!(
            listing.contains("ip saddr 127.0.0.0/8 masquerade"),
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
