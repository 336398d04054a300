//! The kernel's part of a bridge ADD: how long attaching one more port to
//! the node's bridge takes by itself. Every bridge plugin, ours and the
//! reference, makes this one request (`RTM_SETLINK` with `IFLA_MASTER`) for
//! each pod, and the kernel's answer grows with the ports the bridge already
//! has: `br_add_if` walks them for port numbers, features, MTU and GSO
//! limits, and walks the forwarding database to make the new port
//! promiscuous. Timed in the benchmark's own node, among its pods, so that
//! the plugins' growth can be set against it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};
use wasm_cni_tests::Netns;

const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const IFLA_MASTER: u16 = 10;
/// Names of the spare veth pairs: `wcprobe<i>a` is attached, `…b` its peer.
const PREFIX: &str = "wcprobe";

/// Attaches `samples` spare veths (down, as a plugin attaches its host end)
/// to `bridge` in `node`, one at a time, each detached again before the
/// next; returns the time from each request to the kernel's
/// acknowledgement, in ms. Each spare is made by an `ip` process of its own
/// just before its request, so that, as in a plugin's ADD, other work has
/// run since the kernel last walked the bridge: attaching back to back,
/// with its ports and forwarding database still in the CPU's caches, the
/// request takes a fraction of what it takes in an ADD.
pub fn probe(node: &Netns, bridge: &str, samples: usize) -> Result<Vec<f64>, String> {
    let sock = route_socket_in(node)?;
    let master = link_index(node, bridge)?;
    let mut spares = Spares { node, count: 0 };
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let port = spares.add()?;
        let t = Instant::now();
        set_master(&sock, port, master, 2 * i as u32 + 1).map_err(|e| format!("attach: {e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        set_master(&sock, port, 0, 2 * i as u32 + 2).map_err(|e| format!("detach: {e}"))?;
    }
    Ok(times)
}

/// The spare veth pairs made so far, deleted on drop.
struct Spares<'a> {
    node: &'a Netns,
    count: usize,
}

impl Spares<'_> {
    /// Makes the next pair; returns the index of its end to attach.
    fn add(&mut self) -> Result<u32, String> {
        let name = format!("{PREFIX}{}a", self.count);
        let one_queue = "numtxqueues 1 numrxqueues 1";
        ip_batch(
            self.node,
            &format!(
                "link add {name} {one_queue} type veth peer name {PREFIX}{}b {one_queue}\n",
                self.count
            ),
            false,
        )?;
        self.count += 1;
        link_index(self.node, &name)
    }
}

impl Drop for Spares<'_> {
    fn drop(&mut self) {
        let batch: String = (0..self.count)
            .map(|i| format!("link del {PREFIX}{i}a\n"))
            .collect();
        let _ = ip_batch(self.node, &batch, true);
    }
}

/// `ip -batch` in `node`; `force`: on past commands that fail.
fn ip_batch(node: &Netns, batch: &str, force: bool) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["-n", node.name()])
        .args(force.then_some("-force"))
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run ip: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(batch.as_bytes())
            .map_err(|e| format!("write to ip: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -batch in {}: {}",
            node.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The index of link `name` in `node` (`ip -o link`: `<index>: <name>…`).
fn link_index(node: &Netns, name: &str) -> Result<u32, String> {
    let out = Command::new("ip")
        .args(["-n", node.name(), "-o", "link", "show", "dev", name])
        .output()
        .map_err(|e| format!("run ip: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split(':').next().map(|i| i.trim().parse()) {
        Some(Ok(index)) if out.status.success() => Ok(index),
        _ => Err(format!(
            "no index for link {name} in {}: {}",
            node.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A route netlink socket of `node`'s namespace (a socket stays in the
/// namespace it was made in).
fn route_socket_in(node: &Netns) -> Result<OwnedFd, String> {
    node.within(|| {
        socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
    })
    .map_err(|e| format!("enter {}: {e}", node.name()))?
    .map_err(|e| format!("route netlink socket: {e}"))
}

/// `ip link set <port> master <master>` (0: nomaster) as one request,
/// waiting for the kernel's acknowledgement.
fn set_master(sock: &OwnedFd, port: u32, master: u32, seq: u32) -> Result<(), String> {
    // nlmsghdr (16 bytes), ifinfomsg (16), one u32 attribute (8).
    let mut m = [0u8; 40];
    m[0..4].copy_from_slice(&40u32.to_ne_bytes());
    m[4..6].copy_from_slice(&RTM_SETLINK.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m[20..24].copy_from_slice(&port.to_ne_bytes());
    m[32..34].copy_from_slice(&8u16.to_ne_bytes());
    m[34..36].copy_from_slice(&IFLA_MASTER.to_ne_bytes());
    m[36..40].copy_from_slice(&master.to_ne_bytes());
    send(sock.as_raw_fd(), &m, MsgFlags::empty()).map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())
            .map_err(|e| format!("recv: {e}"))?;
        let mut at = 0;
        while at + 20 <= n {
            let word = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
            let len = word(at) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if kind == NLMSG_ERROR && word(at + 8) == seq {
                let errno = word(at + 16) as i32;
                return match errno {
                    0 => Ok(()),
                    e => Err(nix::errno::Errno::from_raw(-e).to_string()),
                };
            }
            if len < 16 {
                break;
            }
            at += (len + 3) & !3;
        }
    }
}
