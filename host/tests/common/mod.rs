//! Shared helpers for the host's component tests: where the built components
//! are, invocations, and running a component against the recording
//! [`MockKernel`].

#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use tempfile::TempDir;
use wasm_cni_host::bindings::CniResult;
use wasm_cni_host::cni::{result, Command, Env, NetConf};
use wasm_cni_host::testing::MockKernel;
use wasm_cni_host::{Error, Invocation, Limits, Runtime};

/// The `CNI_NETNS` of every invocation here; the mock never opens it.
pub const NETNS: &str = "/var/run/netns/cni-test-pod";
pub const CID: &str = "c1";
pub const IFNAME: &str = "eth0";

pub fn repo_root() -> PathBuf {
    let host = Path::new(env!("CARGO_MANIFEST_DIR"));
    host.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| host.to_path_buf())
}

/// The installed components: `$WASM_CNI_DIST/wasm` (a relative
/// `WASM_CNI_DIST` is taken from the repository root), else
/// `target/dist/wasm`.
pub fn dist_dir() -> PathBuf {
    let dist = match std::env::var_os("WASM_CNI_DIST") {
        Some(d) if !d.is_empty() => repo_root().join(d),
        _ => repo_root().join("target/dist"),
    };
    let dir = dist.join("wasm");
    for name in ["bridge", "loopback", "host-local"] {
        let wasm = dir.join(format!("{name}.cwasm"));
        assert!(
            wasm.is_file(),
            "component {} is missing: run `cargo xtask install target/dist` in {} first \
             (or point WASM_CNI_DIST at an installed plugin directory)",
            wasm.display(),
            repo_root().display()
        );
    }
    dir
}

/// One runtime over the installed components for the whole test binary, so
/// each component is loaded once.
pub fn dist_runtime() -> &'static Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(dist_dir(), Limits::default()).expect("runtime"))
}

/// A runtime directory holding one guest build output `built` (a path
/// relative to the repository root) as `<name>.wasm`. `hint` says how to
/// build it when it is missing. The component is loaded here, so the
/// directory is removed at once: the runtime keeps what it loaded.
pub fn runtime_with(built: &str, name: &str, hint: &str, limits: Limits) -> Arc<Runtime> {
    let src = repo_root().join(built);
    assert!(src.is_file(), "{} is missing: {hint}", src.display());
    let dir = TempDir::new().expect("tempdir");
    std::fs::copy(&src, dir.path().join(format!("{name}.wasm"))).expect("copy component");
    let rt = Runtime::new(dir.path(), limits).expect("runtime");
    // Compile once here, before any timed test.
    rt.load(name).expect("component compiles");
    drop(dir);
    rt
}

pub fn parse_conf(conf: &Value) -> NetConf {
    NetConf::parse(conf.to_string().as_bytes()).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// An invocation for container `CID`, interface `IFNAME`, in `NETNS`.
pub fn inv(command: Command, conf: &Value) -> Invocation {
    Invocation {
        command,
        env: Env {
            container_id: CID.into(),
            netns: Some(NETNS.into()),
            ifname: IFNAME.into(),
            args: Vec::new(),
            path: Vec::new(),
        },
        conf: parse_conf(conf),
    }
}

pub fn inv_for(command: Command, conf: &Value, cid: &str, args: &[(&str, &str)]) -> Invocation {
    let mut i = inv(command, conf);
    i.env.container_id = cid.into();
    i.env.args = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    i
}

pub fn run(
    rt: &Arc<Runtime>,
    plugin: &str,
    inv: Invocation,
    kernel: &MockKernel,
) -> Result<Option<CniResult>, Error> {
    rt.run(plugin, inv, Box::new(kernel.clone()))
}

/// Runs an ADD that must succeed and return a result.
pub fn add_ok(rt: &Arc<Runtime>, plugin: &str, inv: Invocation, kernel: &MockKernel) -> CniResult {
    match run(rt, plugin, inv, kernel) {
        Ok(Some(r)) => r,
        Ok(None) => panic!("{plugin} ADD returned no result"),
        Err(e) => panic!("{plugin} ADD failed: {e}\ncalls: {:#?}", kernel.calls()),
    }
}

/// Runs a verb that must fail; returns the error.
pub fn fails(rt: &Arc<Runtime>, plugin: &str, inv: Invocation, kernel: &MockKernel) -> Error {
    let command = inv.command;
    match run(rt, plugin, inv, kernel) {
        Ok(r) => panic!(
            "{plugin} {} succeeded, want an error: {r:?}",
            command.as_str()
        ),
        Err(e) => e,
    }
}

/// A result as the runtime would print it for `version`.
pub fn json(r: &CniResult, version: &str) -> Value {
    result::to_json(r, version)
}

/// `conf` with `prevResult` set to `r` (rendered for the conf's version).
pub fn with_prev(conf: &Value, r: &CniResult) -> Value {
    let mut conf = conf.clone();
    let version = conf["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    conf["prevResult"] = json(r, &version);
    conf
}

/// The reservation files of network `net` in a host-local data directory,
/// sorted by name, with their contents (lock and last-reserved files left
/// out).
pub fn reservations(data_dir: &Path, net: &str) -> Vec<(String, String)> {
    let dir = data_dir.join(net);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.parse::<std::net::IpAddr>().ok()?;
            Some((name, std::fs::read_to_string(e.path()).ok()?))
        })
        .collect();
    out.sort();
    out
}
