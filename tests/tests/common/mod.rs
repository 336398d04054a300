//! Shared pieces of the bridge and reference suites: the conflists under
//! test, a "world" (node namespace + IPAM data dir + driver), pods, and
//! readers for `ip -j` output and the host-local store.
//!
//! Everything lives in namespaces and temporary directories the test
//! creates; nothing here touches the machine's own namespace.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use wasm_cni_tests::{files, Attachment, CniError, Driver, Netns};

/// Every version the product supports (and the reference suite tests).
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The network (and host-local store directory) name.
pub const NET: &str = "wcnet";
/// The loopback network, a separate single-plugin network as runtimes use it.
pub const LO_NET: &str = "wclo";
pub const BRIDGE: &str = "wcbr0";
pub const SUBNET4: &str = "10.88.1.0/24";
pub const SUBNET6: &str = "fd88::/64";
pub const GW4: &str = "10.88.1.1";
pub const GW6: &str = "fd88::1";
/// The MAC every veth's node end has.
pub const NODE_END_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// The bridge plugin object: gateway, hairpin, dual-stack host-local with
/// default routes, its store in `data_dir`.
pub fn bridge_plugin(data_dir: &Path) -> Value {
    json!({
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": SUBNET4}], [{"subnet": SUBNET6}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        }
    })
}

/// A conflist of one plugin.
pub fn list_of(version: &str, name: &str, plugin: Value) -> Value {
    json!({"cniVersion": version, "name": name, "plugins": [plugin]})
}

/// The `bridge` conflist under test.
pub fn bridge_list(version: &str, data_dir: &Path) -> Value {
    list_of(version, NET, bridge_plugin(data_dir))
}

/// The bridge conflist with `f` applied to its plugin object.
pub fn bridge_list_with(version: &str, data_dir: &Path, f: impl FnOnce(&mut Value)) -> Value {
    let mut plugin = bridge_plugin(data_dir);
    f(&mut plugin);
    list_of(version, NET, plugin)
}

/// The separate loopback network.
pub fn loopback_list(version: &str) -> Value {
    list_of(version, LO_NET, json!({"type": "loopback"}))
}

/// No runtime capabilities.
pub fn no_caps() -> Value {
    json!({})
}

/// A node namespace, a host-local data dir and a driver for one plugin dir.
pub struct World {
    pub node: Netns,
    pub data: TempDir,
    pub driver: Driver,
}

/// A pod: its namespace and its attachment to the bridge network.
pub struct Pod {
    pub ns: Netns,
    pub att: Attachment,
}

impl World {
    pub fn new(tag: &str, dir: &Path) -> World {
        let node = Netns::new(tag);
        let driver = Driver::new(dir, &node);
        World {
            node,
            data: TempDir::new().expect("temp dir"),
            driver,
        }
    }

    /// The bridge conflist with this world's data dir.
    pub fn list(&self, version: &str) -> Value {
        bridge_list(version, self.data.path())
    }

    /// The host-local store of the bridge network.
    pub fn store(&self) -> PathBuf {
        self.data.path().join(NET)
    }

    /// A new pod namespace attached as `eth0` under container ID `id`
    /// (not yet added).
    pub fn pod(&self, id: &str) -> Pod {
        let ns = Netns::new("pod");
        let att = Attachment::new(id, &ns, "eth0");
        Pod { ns, att }
    }

    /// ADD of `list` for `pod`, panicking with the CNI error.
    pub fn add(&self, list: &Value, pod: &Pod) -> Value {
        self.driver
            .add(list, &pod.att, &no_caps())
            .unwrap_or_else(|e| panic!("ADD {} failed: {e:?}", pod.att.id))
    }

    /// A new pod added to the `version` bridge network; returns it and the result.
    pub fn add_pod(&self, version: &str, id: &str) -> (Pod, Value) {
        let pod = self.pod(id);
        let result = self.add(&self.list(version), &pod);
        (pod, result)
    }

    /// ADD of the loopback network for `pod`.
    pub fn add_loopback(&self, version: &str, pod: &Pod) -> Result<Value, CniError> {
        let att = Attachment::new(&pod.att.id, &pod.ns, "lo");
        self.driver.add(&loopback_list(version), &att, &no_caps())
    }

    /// Host-side veth interfaces in the node.
    pub fn node_veths(&self) -> Vec<String> {
        names(&ip_json(&self.node, "link show type veth"))
    }
}

/// `ip -j <args>` inside `ns`, parsed (an empty output is an empty list).
pub fn ip_json(ns: &Netns, args: &str) -> Value {
    let out = ns.sh(&format!("ip -j {args}"));
    if out.trim().is_empty() {
        return json!([]);
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("`ip -j {args}` is not JSON ({e}): {out}"))
}

/// The `ifname`s of an `ip -j link`/`addr` list.
pub fn names(links: &Value) -> Vec<String> {
    links
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The link `name` in `ns` (`ip -d -j link show`), if it exists.
pub fn link(ns: &Netns, name: &str) -> Option<Value> {
    let all = ip_json(ns, "-d link show");
    all.as_array()?
        .iter()
        .find(|l| l["ifname"] == name)
        .cloned()
}

/// Whether the link `name` in `ns` is administratively up.
pub fn is_up(ns: &Netns, name: &str) -> bool {
    link(ns, name)
        .and_then(|l| l["flags"].as_array().cloned())
        .is_some_and(|flags| flags.iter().any(|f| f == "UP"))
}

/// The global addresses of `dev` in `ns` as `addr/prefix`.
pub fn global_addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let all = ip_json(ns, &format!("addr show dev {dev}"));
    let mut out = Vec::new();
    for l in all.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                out.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or(""),
                    a["prefixlen"]
                ));
            }
        }
    }
    out
}

/// Waits (bounded) until no address of `dev` in `ns` is tentative.
///
/// A new IPv6 address goes through duplicate address detection (about a
/// second) before the kernel uses it; the bridge's gateway address is such
/// an address, and pings to or through it fail until DAD is done.
pub fn wait_dad(ns: &Netns, dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = ip_json(ns, &format!("-6 addr show dev {dev}"));
        let tentative = all
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .any(|a| a["tentative"] == true);
        if !tentative {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dev}: IPv6 addresses still tentative after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` every 20 ms for up to 5 s; panics naming `what` on timeout.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The routes in `ns` (`ip -j [-6] route`), dropping kernel-generated
/// link-local ones.
pub fn routes(ns: &Netns, v6: bool) -> Vec<Value> {
    let family = if v6 { "-6 " } else { "" };
    let all = ip_json(ns, &format!("{family}route show"));
    all.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["dst"] != "fe80::/64")
        .collect()
}

/// The default route of the family, if any.
pub fn default_route(ns: &Netns, v6: bool) -> Option<Value> {
    routes(ns, v6).into_iter().find(|r| r["dst"] == "default")
}

/// Whether `name` is host-local bookkeeping rather than a reservation.
/// Our per-attachment index of reservations, beside the reference layout.
pub const INDEX_DIR: &str = ".wasm-cni-attachments";

fn bookkeeping(name: &str) -> bool {
    name == "lock" || name.starts_with("last_reserved_ip.") || name == INDEX_DIR
}

/// Index entries (`<container id>@<ifname>`) of container `id`.
pub fn indexed(store: &Path, id: &str) -> Vec<String> {
    files(&store.join(INDEX_DIR))
        .into_iter()
        .filter(|f| f.split('@').next() == Some(id))
        .collect()
}

/// Reservation files in a host-local store: (file name, content).
pub fn reservations(store: &Path) -> Vec<(String, String)> {
    files(store)
        .into_iter()
        .filter(|f| !bookkeeping(f))
        .map(|f| {
            let content = std::fs::read_to_string(store.join(&f)).unwrap_or_default();
            (f, content)
        })
        .collect()
}

/// Reservation files held by container `id`.
pub fn reserved_by(store: &Path, id: &str) -> Vec<String> {
    reservations(store)
        .into_iter()
        .filter(|(_, c)| c.split("\r\n").next() == Some(id))
        .map(|(f, _)| f)
        .collect()
}

/// Runs `dir/plugin` inside `node` with exactly `env` and `stdin`, for
/// requests the driver cannot express (bad JSON, no CNI_COMMAND).
pub fn run_raw(
    node: &Netns,
    dir: &Path,
    plugin: &str,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        node.name(),
        "env",
        "-i",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "WASM_CNI_LOG_FILE=",
    ]);
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(dir.join(plugin))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ip netns exec");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait for plugin")
}

/// The error JSON a failed raw run printed on stdout.
pub fn raw_error(out: &Output) -> Value {
    assert!(
        !out.status.success(),
        "expected a failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "error output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Every key path of a JSON value (`ips[0].address`), for shape comparisons.
pub fn key_paths(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    out.push(path.clone());
                    walk(child, &path, out);
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    walk(child, &format!("{at}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out.sort();
    out
}

/// The address strings of a result's `ips`, v4 and v6.
pub fn split_ips(result: &Value) -> (Vec<String>, Vec<String>) {
    wasm_cni_tests::result_ips(result)
        .into_iter()
        .partition(|a| !a.contains(':'))
}
