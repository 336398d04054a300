//! TCP endpoints inside test namespaces: a python3 server that answers each
//! connection with its name and the peer address it saw, and a client that
//! prints that answer. Both have bounded timeouts; a server is killed (by
//! its own process id) when dropped.

#![allow(dead_code)] // podman.rs uses only part of this

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use wasm_cni_tests::Netns;

/// How long a server waits for its next connection before it exits.
const SERVER_IDLE_SECS: u32 = 20;

/// Answers up to `n` connections with `<name> <peer address>\n` (IPv4
/// peers of the dual-stack socket without their `::ffff:` prefix) and
/// prints each peer; `ready` once listening.
const SERVER: &str = r#"
import socket, sys
port, name, n, idle = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
s.listen(64)
s.settimeout(idle)
print("ready", flush=True)
for _ in range(n):
    c, a = s.accept()
    peer = a[0][7:] if a[0].startswith("::ffff:") else a[0]
    c.sendall(("%s %s\n" % (name, peer)).encode())
    c.close()
    print(peer, flush=True)
"#;

/// Connects to `host port` within `timeout` seconds (from the source
/// address in the optional fourth argument) and prints the first line the
/// server sends.
const CLIENT: &str = r#"
import socket, sys
host, port, t = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
src = (sys.argv[4], 0) if len(sys.argv) > 4 else None
try:
    s = socket.create_connection((host, port), timeout=t, source_address=src)
    s.settimeout(t)
    print(s.recv(256).decode().strip())
except Exception as e:
    print("%s:%d: %s" % (host, port, e), file=sys.stderr)
    sys.exit(1)
"#;

/// The system python3 (fast to start), else whatever `python3` is on PATH.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A server listening on `[::]:port` (IPv4 too) inside a namespace.
pub struct Server {
    child: Child,
    /// Kept open: the server prints each peer.
    _out: BufReader<ChildStdout>,
}

impl Server {
    /// Starts the server in `ns` and waits until it listens; it answers
    /// at most `n` connections.
    pub fn start(ns: &Netns, port: u16, name: &str, n: u32) -> Server {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), python(), "-c", SERVER])
            .args([
                port.to_string(),
                name.to_string(),
                n.to_string(),
                SERVER_IDLE_SECS.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the python3 server");
        let mut out = BufReader::new(child.stdout.take().expect("server stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read from the server");
        if line.trim() != "ready" {
            let _ = child.kill();
            let o = child.wait_with_output().expect("wait for the server");
            panic!(
                "server {name} on port {port} in {} did not start: {line}{}",
                ns.name(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Server { child, _out: out }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects from `ns` to `host:port` and returns the server's answer
/// (`<name> <peer>`), or the client's error.
pub fn connect(ns: &Netns, host: &str, port: u16, timeout_secs: f32) -> Result<String, String> {
    connect_from(ns, None, host, port, timeout_secs)
}

/// Like [`connect`], from the source address `src` when given.
pub fn connect_from(
    ns: &Netns,
    src: Option<&str>,
    host: &str,
    port: u16,
    timeout_secs: f32,
) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), python(), "-c", CLIENT])
        .args([host.to_string(), port.to_string(), timeout_secs.to_string()])
        .args(src)
        .stdin(Stdio::null())
        .output()
        .expect("run the python3 client");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Like [`connect`] with a 3 s timeout, panicking when it fails.
pub fn reach(ns: &Netns, host: &str, port: u16) -> String {
    connect(ns, host, port, 3.0)
        .unwrap_or_else(|e| panic!("{} cannot reach {host}:{port}: {e}", ns.name()))
}

/// Wires `node` to `outside` with a veth pair, `up0` in the node and `out0`
/// outside, both up, with the given addresses (`addr/len`; IPv6 ones
/// without duplicate address detection, so they are usable at once).
pub fn uplink(node: &Netns, outside: &Netns, node_addrs: &[&str], out_addrs: &[&str]) {
    let addrs = |dev: &str, list: &[&str]| -> String {
        list.iter()
            .map(|a| {
                let nodad = if a.contains(':') { " nodad" } else { "" };
                format!(" && ip addr add {a} dev {dev}{nodad}")
            })
            .collect()
    };
    node.sh(&format!(
        "ip link add up0 type veth peer name out0 netns {out}{} && ip link set up0 up",
        addrs("up0", node_addrs),
        out = outside.name()
    ));
    outside.sh(&format!(
        "true{} && ip link set out0 up",
        addrs("out0", out_addrs)
    ));
}
