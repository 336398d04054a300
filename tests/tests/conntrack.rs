//! UDP host ports and flows that were there first: a client that was
//! already sending to `node:hostPort` before the port was mapped (a
//! resolver retrying from one source port) must reach the pod with its
//! next datagram once portmap has mapped the port, instead of staying on
//! the conntrack entry that sends its datagrams to the node itself.
//!
//! The world of each test, all in namespaces the test creates:
//! - a node namespace with the bridge `wcct0` (pods in 10.67.0.0/24 and
//!   fd67::/64), already running one pod, so its masquerade rules have
//!   turned connection tracking on, as on any node with pods;
//! - an "outside" host on the uplink `up0`/`out0` (203.0.113.1 and
//!   fd00:67::1 on the node, .2 and ::2 outside);
//! - a DNS-like pod whose UDP socket waits on port 5353, mapped from host
//!   port 5300.
//!
//! UDP sockets are plain `std::net::UdpSocket`s, each created by a thread
//! that entered the namespace it belongs to.

mod common;
#[path = "firewall/net.rs"]
mod net;

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::wait_dad;
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};
use tempfile::TempDir;
use wasm_cni_tests::{dist, require_root, Attachment, Driver, Netns};

const NET: &str = "ctnet";
const BRIDGE: &str = "wcct0";
const NODE4: &str = "203.0.113.1";
const OUT4: &str = "203.0.113.2";
const NODE6: &str = "fd00:67::1";
const OUT6: &str = "fd00:67::2";
const HOST_PORT: u16 = 5300;
/// A port nothing maps: its flow must keep its entry.
const OTHER_PORT: u16 = 5301;
const POD_PORT: u16 = 5353;
const CLIENT_PORT: u16 = 40000;
const OTHER_CLIENT_PORT: u16 = 40001;
/// How long the pod waits for the client's datagrams after the ADD.
const WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn node(self) -> IpAddr {
        match self {
            Family::V4 => NODE4,
            Family::V6 => NODE6,
        }
        .parse()
        .expect("node address")
    }

    fn outside(self) -> IpAddr {
        match self {
            Family::V4 => OUT4,
            Family::V6 => OUT6,
        }
        .parse()
        .expect("outside address")
    }

    fn any(self) -> IpAddr {
        match self {
            Family::V4 => "0.0.0.0",
            Family::V6 => "::",
        }
        .parse()
        .expect("unspecified address")
    }
}

/// A UDP socket bound to `addr` inside `ns`.
fn udp_in(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    let path = ns.path();
    std::thread::spawn(move || {
        let netns = File::open(&path).expect("open the namespace");
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).expect("enter the namespace");
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
    })
    .join()
    .expect("socket thread")
}

/// A client that sends a datagram every 100 ms from one source port until
/// dropped, as a resolver retrying does.
struct Client {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    fn start(sock: UdpSocket, to: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u32;
            while !flag.load(Ordering::SeqCst) {
                // Nothing listens on the node before the mapping: ICMP
                // errors do not stop an unconnected socket.
                let _ = sock.send_to(format!("query {n}").as_bytes(), to);
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Client {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The node's conntrack table as `/proc/net/nf_conntrack` shows it, when
/// the kernel has that file.
fn conntrack_lines(node: &Netns) -> Option<Vec<String>> {
    if !node.try_sh("test -r /proc/net/nf_conntrack") {
        return None;
    }
    Some(
        node.sh("cat /proc/net/nf_conntrack")
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// Whether the table has a UDP entry from the outside host's `sport` to
/// `dport` (the original direction is the first tuple of a line).
fn has_flow(lines: &[String], family: Family, sport: u16, dport: u16) -> bool {
    // IPv6 addresses are printed in full there: fd00:0067:0000:...
    let src = match family.outside() {
        IpAddr::V6(a) => {
            let words: Vec<String> = a.segments().iter().map(|w| format!("{w:04x}")).collect();
            format!("src={}", words.join(":"))
        }
        a => format!("src={a}"),
    };
    lines.iter().any(|l| {
        let first: Vec<&str> = l.split_whitespace().take(10).collect();
        first.contains(&"udp")
            && first.contains(&src.as_str())
            && first.contains(&format!("sport={sport}").as_str())
            && first.contains(&format!("dport={dport}").as_str())
    })
}

struct World {
    node: Netns,
    outside: Netns,
    data: TempDir,
    driver: Driver,
}

impl World {
    fn new() -> World {
        let node = Netns::new("ctnode");
        let outside = Netns::new("ctout");
        net::uplink(
            &node,
            &outside,
            &[&format!("{NODE4}/24"), &format!("{NODE6}/64")],
            &[&format!("{OUT4}/24"), &format!("{OUT6}/64")],
        );
        let driver = Driver::new(dist(), &node);
        World {
            node,
            outside,
            data: TempDir::new().expect("temp dir"),
            driver,
        }
    }

    /// bridge (gateway, masquerade, dual-stack host-local) + portmap, both
    /// on `backend`.
    fn list(&self, backend: &str) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": NET,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "ipMasq": true,
                    "ipMasqBackend": backend,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.data.path(),
                        "ranges": [[{ "subnet": "10.67.0.0/24" }], [{ "subnet": "fd67::/64" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }],
                    }
                },
                {
                    "type": "portmap",
                    "backend": backend,
                    "capabilities": { "portMappings": true }
                }
            ]
        })
    }

    fn add(&self, list: &Value, id: &str, ns: &Netns, caps: &Value) -> Attachment {
        let att = Attachment::new(id, ns, "eth0");
        self.driver
            .add(list, &att, caps)
            .unwrap_or_else(|e| panic!("ADD {id} failed: {e:?}"));
        att
    }
}

/// The scenario, on one backend and family; with `host_ip`, the mapping
/// is limited to the node's uplink address.
fn stale_flow_reaches_new_pod(backend: &str, family: Family, host_ip: bool) {
    let w = World::new();
    let list = w.list(backend);

    // A node that already runs a pod: masquerade rules, connection tracking on.
    let web = Netns::new("ctweb");
    w.add(&list, "web", &web, &json!({}));

    // The client starts sending before the port is mapped; so does a
    // client of a port nothing will map.
    let node = SocketAddr::new(family.node(), HOST_PORT);
    let client = Client::start(
        udp_in(&w.outside, SocketAddr::new(family.outside(), CLIENT_PORT)),
        node,
    );
    let _other = Client::start(
        udp_in(
            &w.outside,
            SocketAddr::new(family.outside(), OTHER_CLIENT_PORT),
        ),
        SocketAddr::new(family.node(), OTHER_PORT),
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = conntrack_lines(&w.node);
    if let Some(lines) = &before {
        assert!(
            has_flow(lines, family, CLIENT_PORT, HOST_PORT),
            "no conntrack entry for the client's flow before the mapping: {lines:#?}"
        );
    }

    // The DNS pod: its socket waits before the pod is attached.
    let dns = Netns::new("ctdns");
    let server = udp_in(&dns, SocketAddr::new(family.any(), POD_PORT));
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut mapping = json!({
        "hostPort": HOST_PORT,
        "containerPort": POD_PORT,
        "protocol": "udp",
    });
    if host_ip {
        mapping["hostIP"] = json!(family.node().to_string());
    }
    w.add(&list, "dns", &dns, &json!({ "portMappings": [mapping] }));
    if family == Family::V6 {
        wait_dad(&dns, "eth0");
        wait_dad(&w.node, BRIDGE);
    }

    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 64];
    let got = loop {
        match server.recv_from(&mut buf) {
            Ok((n, from)) => break Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from)),
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => break None,
        }
    };
    let after = conntrack_lines(&w.node);
    drop(client);
    let (msg, from) = got.unwrap_or_else(|| {
        panic!(
            "the pod got nothing from the client that was sending to {node} before \
             the mapping (its old conntrack entry still sends it to the node); \
             conntrack: {after:#?}"
        )
    });
    assert!(msg.starts_with("query "), "unexpected datagram {msg:?}");
    assert_eq!(
        from,
        SocketAddr::new(family.outside(), CLIENT_PORT),
        "the datagram came from elsewhere"
    );
    // Only the mapped port's flows were forgotten.
    if let Some(lines) = &after {
        assert!(
            has_flow(lines, family, OTHER_CLIENT_PORT, OTHER_PORT),
            "the flow to unmapped port {OTHER_PORT} lost its entry: {lines:#?}"
        );
    }
}

macro_rules! scenarios {
    ($($name:ident: $family:expr, $host_ip:expr;)*) => {
        $(
            mod $name {
                use super::*;

                #[test]
                fn nftables() {
                    require_root!();
                    stale_flow_reaches_new_pod("nftables", $family, $host_ip);
                }

                #[test]
                fn iptables() {
                    require_root!();
                    stale_flow_reaches_new_pod("iptables", $family, $host_ip);
                }
            }
        )*
    };
}

scenarios! {
    udp_flow_before_mapping_v4: Family::V4, false;
    udp_flow_before_mapping_v6: Family::V6, false;
    udp_flow_before_mapping_on_host_ip: Family::V4, true;
}
