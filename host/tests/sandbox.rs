//! The sandbox against a plugin that misbehaves on purpose
//! (`tests/fixtures/misbehave`, built by `cargo xtask test`): every mode ends
//! in a code-100 CNI error that says what happened, within a bounded time,
//! and no refused call reaches the (mock) kernel.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tempfile::TempDir;
use wasm_cni_host::caps::link::host_veth_name;
use wasm_cni_host::cni::Command;
use wasm_cni_host::testing::MockKernel;
use wasm_cni_host::{Error, Limits, Runtime};

const LIMITS: Limits = Limits {
    timeout: Duration::from_millis(500),
    memory_bytes: 16 << 20,
};
/// Time limit plus generous slack for a loaded CI machine and debug builds.
const BOUND: Duration = Duration::from_secs(5);
const FIXTURES: &str = "tests/fixtures/misbehave/target/wasm32-wasip2/release";

fn fixture(file: &str) -> PathBuf {
    let path = repo_root().join(FIXTURES).join(file);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask test`, or build the fixture with \
         `cd tests/fixtures/misbehave && cargo build --release --target wasm32-wasip2`",
        path.display()
    );
    path
}

/// The runtime's directory: it must outlive every test (delegation looks
/// its IPAM plugin up there), and statics are never dropped, so it is
/// removed when the test binary exits.
static RUNTIME_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_runtime_dir() {
    if let Some(dir) = RUNTIME_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One runtime with the fixtures (`misbehave`, `misbehave-store`) and the
/// installed host-local as IPAM, under [`LIMITS`]. Compiled once, before any
/// timed call.
fn runtime() -> &'static Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        let dir = TempDir::new().unwrap().keep();
        if RUNTIME_DIR.set(dir.clone()).is_ok() {
            // SAFETY: registers a function that only removes a directory.
            unsafe { libc::atexit(remove_runtime_dir) };
        }
        let copy = |from: &Path, name: &str| {
            std::fs::copy(from, dir.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        };
        copy(&fixture("misbehave.wasm"), "misbehave.wasm");
        copy(&fixture("misbehave_store.wasm"), "misbehave-store.wasm");
        let dist = dist_dir();
        copy(&dist.join("host-local.cwasm"), "host-local.cwasm");
        let rt = Runtime::new(&dir, LIMITS).expect("runtime");
        for name in ["misbehave", "misbehave-store", "host-local"] {
            rt.load(name).unwrap_or_else(|e| panic!("load {name}: {e}"));
        }
        rt
    })
}

fn conf(mode: &str, extra: Value) -> Value {
    let mut c =
        json!({"cniVersion": "1.0.0", "name": "sandbox", "type": "misbehave", "mode": mode});
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

/// Runs `plugin` with `conf`; returns the error, the time it took and the
/// kernel calls it made.
fn misbehave_as(plugin: &str, command: Command, conf: &Value, k: &MockKernel) -> (Error, Duration) {
    let rt = runtime();
    let started = Instant::now();
    let out = run(rt, plugin, inv(command, conf), k);
    let took = started.elapsed();
    assert!(took < BOUND, "{plugin} {conf}: took {took:?}");
    match out {
        Ok(r) => panic!("{plugin} {conf}: succeeded, want a code-100 error: {r:?}"),
        Err(e) => {
            assert_ne!(e.code, 999, "{conf}: the plugin got out: {e}");
            assert_eq!(e.code, 100, "{conf}: {e}");
            (e, took)
        }
    }
}

fn misbehave(mode: &str, extra: Value) -> (Error, MockKernel) {
    let k = MockKernel::new();
    let (e, _) = misbehave_as("misbehave", Command::Add, &conf(mode, extra), &k);
    (e, k)
}

fn assert_no_calls(k: &MockKernel) {
    assert!(
        k.calls().is_empty(),
        "a refused call reached the kernel: {:#?}",
        k.calls()
    );
}

#[test]
fn baseline_the_fixture_runs() {
    let k = MockKernel::new();
    let r = run(
        runtime(),
        "misbehave",
        inv(Command::Add, &conf("ok", json!({}))),
        &k,
    )
    .expect("mode ok")
    .expect("a result");
    assert_eq!(r.interfaces[0].name, "misbehave0");
    assert_no_calls(&k);
}

#[test]
fn endless_loop_is_stopped_at_the_time_limit() {
    let k = MockKernel::new();
    let (e, took) = misbehave_as("misbehave", Command::Add, &conf("loop", json!({})), &k);
    assert!(e.msg.contains("time limit of 500 ms"), "{e}");
    assert!(e.msg.contains("misbehave"), "names the plugin: {e}");
    assert!(
        took >= Duration::from_millis(400),
        "stopped early: {took:?}"
    );
    assert_no_calls(&k);
    // DEL and CHECK are held to the same limit.
    for command in [Command::Del, Command::Check] {
        let (e, _) = misbehave_as("misbehave", command, &conf("loop", json!({})), &k);
        assert!(e.msg.contains("time limit"), "{e}");
    }
}

#[test]
fn memory_hog_is_stopped() {
    let (e, k) = misbehave("hog", json!({}));
    assert!(e.msg.contains("misbehave"), "{e}");
    assert!(e.msg.contains("memory limit of 16 MiB"), "{e}");
    assert_no_calls(&k);
}

#[test]
fn stack_overflow_traps() {
    let (e, k) = misbehave("stack", json!({}));
    assert!(e.msg.contains("trapped"), "{e}");
    assert_no_calls(&k);
}

#[test]
fn blocking_wasi_calls_are_refused() {
    let k = MockKernel::new();
    let started = Instant::now();
    let out = run(
        runtime(),
        "misbehave",
        inv(Command::Add, &conf("sleep", json!({"secs": "10"}))),
        &k,
    );
    let took = started.elapsed();
    let e = out.expect_err("a sleeping plugin must be stopped");
    assert_eq!(e.code, 100, "{e}");
    // Blocking calls would wait outside the time limit: they are refused.
    assert!(e.msg.contains("tried to block"), "{e}");
    assert!(took < BOUND, "stopped only after {took:?}");
}

#[test]
fn exit_is_an_error_not_a_success() {
    let (e, k) = misbehave("exit", json!({}));
    assert!(e.msg.contains("trapped"), "{e}");
    assert_no_calls(&k);
}

#[test]
fn a_flood_of_handles_is_stopped() {
    let (e, k) = misbehave("handles", json!({}));
    assert!(
        e.msg.contains("trapped") || e.msg.contains("time limit"),
        "{e}"
    );
    assert_no_calls(&k);
}

#[test]
fn panic_traps() {
    let (e, k) = misbehave("panic", json!({}));
    assert!(e.msg.contains("plugin misbehave trapped"), "{e}");
    assert!(e.details.contains("misbehave: deliberate panic"), "{e:?}");
    assert_no_calls(&k);
}

/// Built without WASI the plugin has no stderr: the SDK's panic hook logs
/// the message to the host, which reports it as the error's details.
#[test]
fn a_panic_without_wasi_is_reported() {
    let rt = runtime_with(
        "tests/fixtures/misbehave/target/wasm32-unknown-unknown/release/misbehave.wasm",
        "misbehave",
        "run `cargo xtask test`, or build the fixture with `cd tests/fixtures/misbehave && \
         cargo build --release --target wasm32-unknown-unknown`",
        LIMITS,
    );
    let k = MockKernel::new();
    let e = run(
        &rt,
        "misbehave",
        inv(Command::Add, &conf("panic", json!({}))),
        &k,
    )
    .expect_err("a panic fails the call");
    assert_eq!(e.code, 100, "{e}");
    assert!(e.msg.contains("plugin misbehave trapped"), "{e}");
    assert!(
        e.details.contains("panicked at src/lib.rs:") && e.details.contains("deliberate panic"),
        "{e:?}"
    );
    assert_no_calls(&k);
}

#[test]
fn host_link_outside_the_grant_is_denied() {
    let (e, k) = misbehave("escape-link", json!({}));
    assert!(e.msg.starts_with("denied:"), "{e}");
    assert!(e.msg.contains("\"eth0\" in the host namespace"), "{e}");
    assert_no_calls(&k);
    // Another bridge than the configured one is not granted either.
    let (e, k) = misbehave("escape-link", json!({"bridge": "br-mine", "link": "cni0"}));
    assert!(e.msg.contains("\"cni0\""), "{e}");
    assert_no_calls(&k);
}

#[test]
fn the_configured_bridge_is_granted() {
    // Control for the test above: the same call on the granted bridge reaches
    // the kernel (the mock has no such link, so it fails there).
    let k = MockKernel::new();
    let out = run(
        runtime(),
        "misbehave",
        inv(
            Command::Add,
            &conf("escape-link", json!({"bridge": "cni0", "link": "cni0"})),
        ),
        &k,
    );
    assert_eq!(k.calls(), ["link.set-up host cni0 true"]);
    assert_eq!(out.unwrap_err().code, 5);
}

/// A mock node with the default bridge `cni0`, as most nodes have.
fn node_with_cni0() -> MockKernel {
    use wasm_cni_host::bindings::cni::plugin::link::LinkInfo;
    let k = MockKernel::new();
    let cni0 = LinkInfo {
        name: "cni0".into(),
        index: 5,
        mac: "0a:58:0a:16:00:01".into(),
        mtu: 1500,
        up: true,
        kind: "bridge".into(),
        master: None,
    };
    k.state()
        .links
        .insert((wasm_cni_host::kernel::Ns::Host, "cni0".into()), cni0);
    k
}

#[test]
fn a_plugin_without_a_bridge_key_gets_no_node_link() {
    let k = node_with_cni0();
    let out = run(
        runtime(),
        "misbehave",
        inv(Command::Add, &conf("host-route", json!({}))),
        &k,
    );
    assert!(
        k.calls().is_empty(),
        "reached the node: {:#?} -> {out:?}",
        k.calls()
    );
    let k = node_with_cni0();
    let c = conf(
        "escape-sysctl",
        json!({"key": "net.ipv4.conf.cni0.route_localnet", "value": "1"}),
    );
    let out = run(runtime(), "misbehave", inv(Command::Add, &c), &k);
    assert!(
        k.calls().is_empty(),
        "reached the node: {:#?} -> {out:?}",
        k.calls()
    );
}

#[test]
fn container_ifname_other_than_cni_ifname_is_denied() {
    let (e, k) = misbehave("escape-ifname", json!({}));
    assert!(e.msg.starts_with("denied:"), "{e}");
    assert!(e.msg.contains("\"eth1\" is not CNI_IFNAME \"eth0\""), "{e}");
    assert_no_calls(&k);
}

#[test]
fn sysctls_off_the_list_are_denied() {
    for (ns, key) in [
        ("host", "kernel.core_pattern"),
        ("host", "net.ipv4.conf.eth9.forwarding"),
        ("host", "net.ipv4.conf.all.forwarding"),
        ("container", "net.ipv4.conf.eth0.rp_filter"),
        (
            "container",
            "net.ipv4.conf.eth0/../../../../kernel/core_pattern.forwarding",
        ),
    ] {
        let (e, k) = misbehave("escape-sysctl", json!({"ns": ns, "key": key}));
        assert!(e.msg.starts_with("denied:"), "{key}: {e}");
        assert!(
            e.msg.contains(&format!("sysctl {key:?} is not allowed")),
            "{key}: {e}"
        );
        assert_no_calls(&k);
    }
}

#[test]
fn store_import_makes_an_ipam_plugin_without_links() {
    // A component importing `store` is an IPAM plugin; this one imports
    // `link` too, which the IPAM role does not provide: it never runs.
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let c = conf(
        "store",
        json!({"type": "misbehave-store", "ipam": {"dataDir": data.path()}}),
    );
    let (e, _) = misbehave_as("misbehave-store", Command::Add, &c, &k);
    assert!(e.msg.contains("cannot be instantiated"), "{e}");
    assert!(e.msg.contains("misbehave-store"), "{e}");
    assert_no_calls(&k);
    assert!(
        std::fs::read_dir(data.path()).unwrap().next().is_none(),
        "the store was touched"
    );
}

#[test]
fn no_file_system() {
    for path in ["/etc/hostname", "/etc/passwd", "/proc/self/environ", "."] {
        let (e, k) = misbehave("escape-fs", json!({"path": path}));
        assert!(e.msg.contains("file system unavailable"), "{path}: {e}");
        assert_no_calls(&k);
    }
}

#[test]
fn no_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (e, _) = misbehave("escape-net", json!({"addr": addr}));
    assert!(e.msg.contains("network unavailable"), "{e}");
    match listener.accept() {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the plugin reached the listener: {other:?}"),
    }
}

#[test]
fn no_environment() {
    let (e, _) = misbehave("escape-env", json!({}));
    assert!(e.msg.contains("environment empty"), "{e}");
}

#[test]
fn a_veth_created_before_the_time_limit_is_undone() {
    let k = MockKernel::new();
    let (e, _) = misbehave_as(
        "misbehave",
        Command::Add,
        &conf("veth-then-loop", json!({})),
        &k,
    );
    assert!(e.msg.contains("time limit"), "{e}");
    let veth = host_veth_name(CID, IFNAME);
    assert_eq!(
        k.calls(),
        [
            format!("link.create-veth {veth} eth0 mtu=None"),
            format!("link.delete host {veth}")
        ]
    );
    assert!(
        k.state().links.keys().all(|(_, name)| name == "lo"),
        "{:?}",
        k.state().links.keys()
    );
}

#[test]
fn addresses_allocated_before_a_panic_are_released() {
    let data = TempDir::new().unwrap();
    let k = MockKernel::new();
    let c = conf(
        "ipam-then-panic",
        json!({"ipam": {"type": "host-local", "subnet": "10.40.0.0/24", "dataDir": data.path()}}),
    );
    let (e, _) = misbehave_as("misbehave", Command::Add, &c, &k);
    assert!(e.msg.contains("trapped"), "{e}");
    assert!(
        reservations(data.path(), "sandbox").is_empty(),
        "the reservation leaked"
    );
    assert_no_calls(&k);
}

const RECURSE_CHILD: &str = "WASM_CNI_SANDBOX_RECURSE_CHILD";

/// Runs in a child process (see below) because a host stack overflow would
/// abort the whole test binary.
fn recursive_delegation_child() {
    let k = MockKernel::new();
    let c = conf("recurse", json!({"ipam": {"type": "misbehave"}}));
    let started = Instant::now();
    let out = run(runtime(), "misbehave", inv(Command::Add, &c), &k);
    println!("RECURSE-OUTCOME after {:?}: {out:?}", started.elapsed());
    let e = out.expect_err("self-delegation must fail");
    assert_eq!(e.code, 100, "{e}");
    assert!(started.elapsed() < BOUND);
    assert_no_calls(&k);
}

#[test]
fn recursive_ipam_delegation_is_refused() {
    if std::env::var_os(RECURSE_CHILD).is_some() {
        recursive_delegation_child();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "recursive_ipam_delegation_is_refused",
            "--include-ignored",
            "--nocapture",
        ])
        .env(RECURSE_CHILD, "1")
        .output()
        .expect("spawn the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("RECURSE-OUTCOME"),
        "the host did not survive a self-delegating plugin: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        stderr
            .chars()
            .rev()
            .take(2000)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
}
