//! The test world: network namespaces that delete themselves, the installed
//! plugin directory, and a libcni-style driver that runs a conflist's plugins
//! inside a "node" namespace the way a container runtime does.
//!
//! Every test builds its world inside namespaces it creates and never
//! touches the machine's own namespace; a [`Netns`] is deleted when dropped,
//! also when the test panics.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

/// Whether this process may build namespaces (root on Linux).
pub fn privileged() -> bool {
    nix::unistd::geteuid().is_root() && Path::new("/run").is_dir()
}

/// Skips the calling test (with a note) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::privileged() {
            eprintln!("skipped: needs root to create network namespaces");
            return;
        }
    };
}

/// The plugin directory built by `cargo xtask install` (`target/dist`), or
/// `WASM_CNI_DIST` (relative to the workspace root when relative).
pub fn dist() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("WASM_CNI_DIST") {
        Some(d) => root.join(d),
        None => root.join("target/dist"),
    }
}

/// The reference plugins from Debian's containernetworking-plugins.
pub fn reference_dir() -> Option<PathBuf> {
    let dir = PathBuf::from("/usr/lib/cni");
    dir.join("bridge").is_file().then_some(dir)
}

/// Runs a shell command, panicking with its output when it fails.
pub fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A namespace named `wc-<tag>-<pid>-<n>`, with `lo` up.
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("wc-{tag}-{}-{n}", std::process::id());
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Netns { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `script` with `sh -c` inside the namespace.
    pub fn sh(&self, script: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            script.replace('\'', "'\\''")
        ))
    }

    /// Runs `script` inside the namespace; true when it exits 0.
    pub fn try_sh(&self, script: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `f` on the calling thread inside the namespace, then returns
    /// the thread to its own: what `f` makes there (a socket) stays in it.
    pub fn within<T>(&self, f: impl FnOnce() -> T) -> std::io::Result<T> {
        let _inside = InNetns::enter(&self.path())?;
        Ok(f())
    }

    /// One ping to `ip` from inside the namespace.
    pub fn ping(&self, ip: &str) -> bool {
        let cmd = if ip.contains(':') { "ping -6" } else { "ping" };
        self.try_sh(&format!("{cmd} -c 1 -W 2 {ip}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The calling thread inside another network namespace until dropped
/// (`setns` moves only the calling thread).
struct InNetns {
    back: File,
}

impl InNetns {
    fn enter(path: &Path) -> std::io::Result<InNetns> {
        let back = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(path)?;
        nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(InNetns { back })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // A thread left in the node namespace would run the rest of its
        // test there: stop instead.
        if let Err(e) = nix::sched::setns(self.back.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("cannot return to the thread's own network namespace: {e}");
            std::process::abort();
        }
    }
}

/// A CNI error as a plugin printed it.
#[derive(Debug, Clone)]
pub struct CniError {
    pub code: u64,
    pub msg: String,
    pub output: Value,
}

/// Runs plugins from one directory inside one node namespace, the way
/// libcni does: env vars, config on stdin, stdout parsed.
#[derive(Clone)]
pub struct Driver {
    pub dir: PathBuf,
    node: PathBuf,
    pub env: Vec<(String, String)>,
}

/// One attachment: container ID, netns path, interface name.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
}

impl Attachment {
    pub fn new(id: &str, netns: &Netns, ifname: &str) -> Self {
        Attachment {
            id: id.into(),
            netns: Some(netns.path()),
            ifname: ifname.into(),
        }
    }
}

impl Driver {
    pub fn new(dir: impl Into<PathBuf>, node: &Netns) -> Self {
        Driver {
            dir: dir.into(),
            node: node.path(),
            env: vec![("WASM_CNI_LOG_FILE".into(), String::new())],
        }
    }

    /// Execs plugin `ty` with `command`; Ok(stdout JSON or Null) or the error.
    pub fn exec(
        &self,
        ty: &str,
        command: &str,
        att: Option<&Attachment>,
        conf: &Value,
    ) -> Result<Value, CniError> {
        let mut cmd = Command::new(self.dir.join(ty));
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(a) = att {
            cmd.env("CNI_CONTAINERID", &a.id)
                .env("CNI_IFNAME", &a.ifname)
                .env(
                    "CNI_ARGS",
                    format!(
                        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
                        a.id
                    ),
                );
            if let Some(ns) = &a.netns {
                cmd.env("CNI_NETNS", ns);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // The plugin starts in the node namespace, like one a runtime in
        // that node runs: this thread enters it for the spawn, so the child
        // is made with posix_spawn (vfork), as Go's os/exec does for libcni.
        let in_node = InNetns::enter(&self.node)
            .unwrap_or_else(|e| panic!("enter {}: {e}", self.node.display()));
        let spawned = cmd.spawn();
        drop(in_node);
        let mut child = spawned.unwrap_or_else(|e| panic!("exec {ty}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write config");
        let out: Output = child.wait_with_output().expect("wait for plugin");
        let stdout: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "{ty} {command}: stdout is not JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })
        };
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(CniError {
                code: stdout["code"].as_u64().unwrap_or(0),
                msg: stdout["msg"].as_str().unwrap_or_default().to_string(),
                output: stdout,
            })
        }
    }

    /// The config a runtime gives plugin `i` of `list`: cniVersion and name
    /// inserted, runtimeConfig from the capabilities the plugin declares.
    pub fn plugin_conf(list: &Value, i: usize, prev: Option<&Value>, caps: &Value) -> Value {
        let mut conf = list["plugins"][i].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        if let Some(declared) = conf.get("capabilities").and_then(Value::as_object).cloned() {
            let mut rc = serde_json::Map::new();
            for (k, on) in declared {
                if on == json!(true) {
                    if let Some(v) = caps.get(&k) {
                        rc.insert(k, v.clone());
                    }
                }
            }
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
            if let Some(obj) = conf.as_object_mut() {
                obj.remove("capabilities");
            }
        }
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn plugins(list: &Value) -> usize {
        list["plugins"].as_array().map_or(0, Vec::len)
    }

    /// ADD through the whole list; returns the final result.
    pub fn add(&self, list: &Value, att: &Attachment, caps: &Value) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for i in 0..Self::plugins(list) {
            let conf = Self::plugin_conf(list, i, prev.as_ref(), caps);
            let ty = conf["type"].as_str().expect("type").to_string();
            prev = Some(self.exec(&ty, "ADD", Some(att), &conf)?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK through the whole list with the cached result.
    pub fn check(
        &self,
        list: &Value,
        att: &Attachment,
        caps: &Value,
        result: &Value,
    ) -> Result<(), CniError> {
        for i in 0..Self::plugins(list) {
            let conf = Self::plugin_conf(list, i, Some(result), caps);
            let ty = conf["type"].as_str().expect("type").to_string();
            self.exec(&ty, "CHECK", Some(att), &conf)?;
        }
        Ok(())
    }

    /// DEL in reverse order, with the cached result when there is one.
    pub fn del(
        &self,
        list: &Value,
        att: &Attachment,
        caps: &Value,
        result: Option<&Value>,
    ) -> Result<(), CniError> {
        for i in (0..Self::plugins(list)).rev() {
            let conf = Self::plugin_conf(list, i, result, caps);
            let ty = conf["type"].as_str().expect("type").to_string();
            self.exec(&ty, "DEL", Some(att), &conf)?;
        }
        Ok(())
    }

    /// GC with the attachments that are still valid.
    pub fn gc(&self, list: &Value, valid: &[&Attachment]) -> Result<(), CniError> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|a| json!({"containerID": a.id, "ifname": a.ifname}))
            .collect();
        for i in 0..Self::plugins(list) {
            let mut conf = Self::plugin_conf(list, i, None, &Value::Null);
            conf["cni.dev/valid-attachments"] = Value::Array(valid.clone());
            let ty = conf["type"].as_str().expect("type").to_string();
            self.exec(&ty, "GC", None, &conf)?;
        }
        Ok(())
    }
}

/// The container-side addresses of a result (`ips[].address`).
pub fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The address part of `10.1.2.3/24`.
pub fn addr_only(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// Files in a directory, sorted (empty when it does not exist).
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
