//! podman's CNI backend, end to end, on our plugin directory and on the
//! reference one: the same unchanged bridge + host-local conflist, the same
//! observable outcome. And `podman run -p` on our bridge (`ipMasq`) +
//! portmap: the published port works from the node and from an outside
//! namespace joined to it by a veth uplink.
//!
//! How the world is built (see `PodmanWorld`):
//! - a node network namespace; every podman call runs as
//!   `timeout 60 nsenter --net=<node> podman …`, so the CNI plugins podman
//!   execs (and the bridge they create) live in the node, never in the
//!   machine's namespace. `ip netns exec` is not used: it remounts `/sys`
//!   in a private mount namespace, which hides `/sys/fs/cgroup` (the OCI
//!   runtime then fails: "no cgroup mount found in mountinfo") and would
//!   also hide the netns bind mounts podman makes under `/run/netns` from
//!   later podman calls;
//! - a private containers.conf (`CONTAINERS_CONF`) and storage.conf
//!   (`CONTAINERS_STORAGE_CONF`) whose every path (graphroot, runroot,
//!   tmp_dir, locks, events log, CNI config dir, host-local dataDir, the
//!   plugin log) is inside one temp dir;
//! - no image: the container runs from a tiny busybox root filesystem with
//!   `--rootfs` (an `import`ed image would make containers/image write its
//!   blob-info cache to `/var/lib/containers/cache` whatever `--root` says).
//!
//! What podman itself still touches outside the temp dir: its container netns
//! file in `/run/netns`, the OCI runtime's state dir (`/run/runc`) and
//! libcni's result cache (`/var/lib/cni/results`); the test checks the first
//! and last are gone after `podman rm`.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasm_cni_tests::{dist, reference_dir, require_root, Netns};

#[path = "firewall/net.rs"]
mod net;

const NET: &str = "wcpodman";
const BRIDGE: &str = "wcpm0";
const SUBNET: &str = "10.89.0.0/24";
const GATEWAY: &str = "10.89.0.1";
const CTR: &str = "wc-pm";
/// The node's uplink address and the outside host's, for `-p`.
const NODE_UPLINK: &str = "198.51.100.1";
const OUTSIDE: &str = "198.51.100.2";
const PUBLISHED: u16 = 18080;
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether `prog` is on PATH.
fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A hard resource limit of this process (`/proc/self/limits` row starting
/// with `name`), capped at `cap`.
fn hard_limit(name: &str, cap: u64) -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|hard| hard.parse::<u64>().ok())
        .map_or(cap, |v| v.min(cap))
}

/// True when `path` is an ELF executable without an interpreter (static).
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP = 3
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) != 3
    })
}

/// The conflist both plugin directories get: the same text, only the
/// host-local dataDir points into the test's temp dir. podman sets `lo` up
/// itself (it does not exec the loopback plugin), so the list is bridge +
/// host-local, like podman's own CNI networks minus portmap/firewall/tuning.
fn conflist(ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir,
            }
        }]
    })
}

/// A private podman installation driven inside one node namespace. Dropping
/// it removes every container (so CNI DEL runs while the node still
/// exists: declare the `Netns` before this), unmounts what podman left under
/// the temp dir and in `/run/netns`, then deletes the temp dir.
struct PodmanWorld {
    node: PathBuf,
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    ipam: PathBuf,
    log: PathBuf,
    sandboxes: RefCell<Vec<PathBuf>>,
}

impl PodmanWorld {
    fn new(node: &Netns, plugin_dir: &Path) -> PodmanWorld {
        PodmanWorld::with_conflist(node, plugin_dir, conflist)
    }

    /// A world whose network is `list(<host-local dataDir>)`.
    fn with_conflist(
        node: &Netns,
        plugin_dir: &Path,
        list: impl FnOnce(&Path) -> Value,
    ) -> PodmanWorld {
        let tmp = tempfile::Builder::new()
            .prefix("wc-podman-")
            .tempdir()
            .expect("temp dir");
        let t = tmp.path().to_path_buf();
        for d in [
            "cni",
            "ipam",
            "root",
            "runroot",
            "libpod",
            "home",
            "tmp",
            "rootfs/bin",
        ] {
            std::fs::create_dir_all(t.join(d)).expect("mkdir");
        }
        // The root filesystem: a static busybox and the applets we use.
        let busybox = Path::new("/bin/busybox");
        assert!(
            is_static_elf(busybox),
            "/bin/busybox is missing or not static: install Debian's busybox-static"
        );
        let rootfs = t.join("rootfs");
        std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "ip", "ping", "sleep", "cat", "nc"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("symlink");
        }
        // What `nc -ll -p 80 -e /bin/hi` answers every connection with.
        std::fs::write(
            rootfs.join("bin/hi"),
            "#!/bin/sh\necho hi from the container\n",
        )
        .expect("write /bin/hi");
        std::fs::set_permissions(
            rootfs.join("bin/hi"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod /bin/hi");
        // This VM lacks CAP_SYS_RESOURCE: ulimits must stay within the hard
        // limits. crun refuses hybrid cgroup v1/v2 hosts; runc copes with
        // every layout, so prefer it when installed.
        let nofile = hard_limit("Max open files", 1024);
        let nproc = hard_limit("Max processes", 1024);
        let runtime = if have("runc") { "runc" } else { "crun" };
        let log = t.join("wasm-cni.log");
        eprintln!(
            "podman world in {}: runtime {runtime}, plugins {}",
            t.display(),
            plugin_dir.display()
        );
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
default_sysctls = ["net.ipv4.ping_group_range=0 0"]

[network]
network_backend = "cni"
cni_plugin_dirs = [{dir}]
network_config_dir = {cni}
default_network = "{NET}"

[engine]
runtime = "{runtime}"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {events}
tmp_dir = {tmpdir}
static_dir = {static_dir}
lock_type = "file"
# conmon runs `podman container cleanup` when the container dies; that
# process often does the CNI DEL, with conmon's environment.
conmon_env_vars = ["PATH={PATH}", "WASM_CNI_LOG_FILE={logs}", "WASM_CNI_LOG=info"]
"#,
            dir = q(plugin_dir.to_path_buf()),
            cni = q(t.join("cni")),
            events = q(t.join("events.log")),
            tmpdir = q(t.join("libpod")),
            static_dir = q(t.join("root/libpod")),
            logs = log.display(),
        );
        std::fs::write(t.join("containers.conf"), conf).expect("write containers.conf");
        // vfs: no image layers are used (`--rootfs`), so the temp dir's
        // filesystem need not support overlay.
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
            q(t.join("root")),
            q(t.join("runroot")),
        );
        std::fs::write(t.join("storage.conf"), storage).expect("write storage.conf");
        let ipam = t.join("ipam");
        std::fs::write(
            t.join("cni").join(format!("{NET}.conflist")),
            serde_json::to_string_pretty(&list(&ipam)).expect("json"),
        )
        .expect("write conflist");
        PodmanWorld {
            node: node.path(),
            tmp,
            rootfs,
            ipam,
            log,
            sandboxes: RefCell::new(Vec::new()),
        }
    }

    /// `timeout 60 nsenter --net=<node> podman <args>` with the private config.
    fn run(&self, args: &[&str]) -> Output {
        let t = self.tmp.path();
        Command::new("timeout")
            .args(["-k", "5", "60", "nsenter"])
            .arg(format!("--net={}", self.node.display()))
            .arg("podman")
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", t.join("home"))
            .env("TMPDIR", t.join("tmp"))
            .env("CONTAINERS_CONF", t.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", t.join("storage.conf"))
            .env("WASM_CNI_LOG_FILE", &self.log)
            .env("WASM_CNI_LOG", "info")
            .output()
            .expect("run podman")
    }

    /// Like `run`, panicking with podman's output when it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`podman {}` failed ({}):\n{}{}\nplugin log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn exec(&self, script: &[&str]) -> String {
        let mut args = vec!["exec", CTR];
        args.extend_from_slice(script);
        self.ok(&args)
    }

    /// The host-local reservation file for `ip`.
    fn reservation(&self, ip: &str) -> PathBuf {
        self.ipam.join(NET).join(ip)
    }

    fn plugin_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodmanWorld {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        let prefix = self.tmp.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut left: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        for sandbox in self.sandboxes.borrow().iter().filter(|p| p.exists()) {
            let _ = Command::new("umount").arg(sandbox).status();
            let _ = std::fs::remove_file(sandbox);
        }
    }
}

/// Polls `cond` for up to two seconds.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether link `name` exists in the machine's own network namespace.
fn in_root_ns(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The skip checks shared by both tests; None means skip.
fn podman_ready() -> Option<()> {
    if !have("podman") {
        eprintln!("skipped: podman is not installed (Debian: podman runc busybox-static)");
        return None;
    }
    if !have("nsenter") {
        eprintln!("skipped: nsenter (util-linux) is not installed");
        return None;
    }
    Some(())
}

/// One container on `plugin_dir`, checked the same way for every directory.
fn container_on(plugin_dir: &Path, ours: bool) {
    let started = Instant::now();
    let node = Netns::new("pm");
    let world = PodmanWorld::new(&node, plugin_dir);

    // Start: podman runs CNI ADD through the conflist.
    let rootfs = world.rootfs.display().to_string();
    let cid = world
        .ok(&[
            "run",
            "-d",
            "--name",
            CTR,
            "--network",
            NET,
            "--rootfs",
            &rootfs,
            "sleep",
            "600",
        ])
        .trim()
        .to_string();
    assert_eq!(cid.len(), 64, "container id: {cid:?}");
    let sandbox = world.ok(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.SandboxKey}}",
        CTR,
    ]);
    world
        .sandboxes
        .borrow_mut()
        .push(PathBuf::from(sandbox.trim()));
    eprintln!("podman run: {:?}", started.elapsed());

    // The container side: an address in the subnet, lo up, default route.
    let addr = world.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    let cidr = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no IPv4 address on eth0: {addr}"))
        .to_string();
    let (ip, prefix) = cidr.split_once('/').expect("address/prefix");
    assert!(
        ip.starts_with("10.89.0.") && ip != GATEWAY && prefix == "24",
        "eth0 has {cidr}"
    );
    let lo = world.exec(&["ip", "-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains(",UP"), "lo is not up: {lo}");
    let route = world.exec(&["ip", "-4", "route", "show", "default"]);
    assert!(
        route
            .trim()
            .starts_with(&format!("default via {GATEWAY} dev eth0")),
        "default route: {route:?}"
    );
    let mac = world
        .exec(&["cat", "/sys/class/net/eth0/address"])
        .trim()
        .to_string();

    // podman parsed the CNI result the same way.
    let nets: Value = serde_json::from_str(&world.ok(&[
        "inspect",
        "--format",
        "{{json .NetworkSettings.Networks}}",
        CTR,
    ]))
    .expect("inspect JSON");
    let n = &nets[NET];
    assert_eq!(n["IPAddress"], json!(ip), "podman inspect: {nets}");
    assert_eq!(n["IPPrefixLen"], json!(24), "podman inspect: {nets}");
    assert_eq!(n["Gateway"], json!(GATEWAY), "podman inspect: {nets}");
    assert_eq!(n["MacAddress"], json!(mac), "podman inspect: {nets}");

    // The node side: the bridge holds the gateway address and one veth,
    // and none of it is in the machine's namespace.
    let br = node.sh(&format!("ip -4 -o addr show dev {BRIDGE}"));
    assert!(
        br.contains(&format!("{GATEWAY}/24")),
        "bridge addresses: {br}"
    );
    let ports = node.sh(&format!("ip -o link show master {BRIDGE}"));
    let veths: Vec<String> = ports
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    assert_eq!(veths.len(), 1, "bridge ports: {ports}");
    let veth = veths[0].clone();
    assert!(
        !in_root_ns(BRIDGE),
        "bridge {BRIDGE} leaked into the root namespace"
    );
    assert!(
        !in_root_ns(&veth),
        "veth {veth} leaked into the root namespace"
    );

    // Traffic both ways.
    let ping = world.run(&["exec", CTR, "ping", "-c", "1", "-W", "2", GATEWAY]);
    assert!(
        ping.status.success(),
        "container cannot ping the gateway: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    assert!(node.ping(ip), "node cannot ping the container at {ip}");

    // The IPAM store and libcni's cache hold this attachment.
    let reservation = world.reservation(ip);
    let held = std::fs::read_to_string(&reservation)
        .unwrap_or_else(|e| panic!("reservation {}: {e}", reservation.display()));
    assert_eq!(
        held.trim_end(),
        format!("{cid}\r\neth0"),
        "reservation file content"
    );
    let cached = PathBuf::from(format!("/var/lib/cni/results/{NET}-{cid}-eth0"));
    assert!(
        cached.exists(),
        "libcni cached no result at {}",
        cached.display()
    );
    if ours {
        let log = world.plugin_log();
        assert!(
            log.contains(&format!("command=ADD container_id={cid} plugin=bridge")),
            "our bridge did not serve the ADD; plugin log:\n{log}"
        );
    }
    eprintln!("checks while running: {:?}", started.elapsed());

    // Remove: podman runs CNI DEL; everything the ADD made is gone.
    world.ok(&["rm", "--force", "--time", "0", CTR]);
    assert!(
        eventually(|| !node.try_sh(&format!("ip link show dev {veth}"))),
        "veth {veth} still in the node after podman rm"
    );
    assert!(
        eventually(|| !reservation.exists()),
        "host-local reservation {} still there after podman rm",
        reservation.display()
    );
    assert!(
        !cached.exists(),
        "libcni cache {} left behind",
        cached.display()
    );
    let sandbox = PathBuf::from(sandbox.trim());
    assert!(
        eventually(|| !sandbox.exists()),
        "podman's netns {} left behind",
        sandbox.display()
    );
    assert_eq!(
        world.ok(&["ps", "--all", "--quiet"]).trim(),
        "",
        "containers left"
    );
    if ours {
        let log = world.plugin_log();
        assert!(
            log.contains(&format!("command=DEL container_id={cid} plugin=bridge")),
            "our bridge did not serve the DEL; plugin log:\n{log}"
        );
        assert!(
            !log.contains(" ERROR "),
            "our plugins logged errors:\n{log}"
        );
    }
    eprintln!("total: {:?}", started.elapsed());
}

/// podman + our plugin directory (`target/dist`, or `WASM_CNI_DIST`).
#[test]
fn podman_runs_a_container_on_our_plugins() {
    require_root!();
    if podman_ready().is_none() {
        return;
    }
    let dir = dist();
    assert!(
        dir.join("bridge").exists() && dir.join("host-local").exists(),
        "{} has no bridge/host-local: run `cargo xtask install target/dist`",
        dir.display()
    );
    let dir = dir.canonicalize().expect("canonical dist dir");
    container_on(&dir, true);
}

/// The same with the reference plugins, for comparison.
#[test]
fn podman_runs_a_container_on_the_reference_plugins() {
    require_root!();
    if podman_ready().is_none() {
        return;
    }
    let Some(dir) = reference_dir() else {
        eprintln!("skipped: reference plugins not installed (Debian: containernetworking-plugins)");
        return;
    };
    container_on(&dir, false);
}

/// bridge (`ipMasq`) + portmap (`capabilities.portMappings`) on the same
/// subnet: what `podman run -p` needs from a CNI network.
fn portmap_conflist(ipam_dir: &Path) -> Value {
    let mut list = conflist(ipam_dir);
    list["plugins"][0]["ipMasq"] = json!(true);
    list["plugins"]
        .as_array_mut()
        .expect("plugins")
        .push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    list
}

/// `podman run -p 18080:80` on our bridge + portmap: podman hands the
/// mapping to portmap as `runtimeConfig.portMappings`, and the published
/// port reaches the container's server from the node and from an outside
/// host joined to the node by a veth uplink; `podman rm` removes the rules.
#[test]
fn podman_publishes_a_port_through_our_portmap() {
    require_root!();
    if podman_ready().is_none() {
        return;
    }
    let dir = dist();
    assert!(
        dir.join("portmap").exists(),
        "{} has no portmap: run `cargo xtask install target/dist`",
        dir.display()
    );
    let dir = dir.canonicalize().expect("canonical dist dir");
    let started = Instant::now();
    let node = Netns::new("pmfw");
    let outside = Netns::new("pmout");
    node.sh(&format!(
        "ip link add up0 type veth peer name out0 netns {} \
         && ip addr add {NODE_UPLINK}/24 dev up0 && ip link set up0 up",
        outside.name()
    ));
    outside.sh(&format!(
        "ip addr add {OUTSIDE}/24 dev out0 && ip link set out0 up"
    ));
    let world = PodmanWorld::with_conflist(&node, &dir, portmap_conflist);

    let rootfs = world.rootfs.display().to_string();
    let publish = format!("{PUBLISHED}:80");
    let cid = world
        .ok(&[
            "run",
            "-d",
            "--name",
            CTR,
            "--network",
            NET,
            "-p",
            &publish,
            "--rootfs",
            &rootfs,
            "nc",
            "-ll",
            "-p",
            "80",
            "-e",
            "/bin/hi",
        ])
        .trim()
        .to_string();
    let sandbox = world.ok(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.SandboxKey}}",
        CTR,
    ]);
    world
        .sandboxes
        .borrow_mut()
        .push(PathBuf::from(sandbox.trim()));
    eprintln!("podman run -p: {:?}", started.elapsed());

    let log = world.plugin_log();
    assert!(
        log.contains(&format!("command=ADD container_id={cid} plugin=portmap")),
        "our portmap did not serve the ADD; plugin log:\n{log}"
    );
    // The server in the container may take a moment to listen.
    let mut last = Err(String::new());
    assert!(
        eventually(|| {
            last = net::connect(&node, NODE_UPLINK, PUBLISHED, 1.0);
            last.is_ok()
        }),
        "the node cannot reach {NODE_UPLINK}:{PUBLISHED}: {last:?}\nplugin log:\n{}",
        world.plugin_log()
    );
    assert_eq!(last.as_deref(), Ok("hi from the container"));
    assert_eq!(
        net::reach(&outside, NODE_UPLINK, PUBLISHED),
        "hi from the container",
        "from the outside host"
    );
    let needle = format!("id={cid} ");
    let owned = |table: &str| {
        table
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let table = node.sh("nft list table inet wasm_cni");
    assert!(
        owned(&table)
            .iter()
            .any(|l| l.contains(&format!("tcp . {PUBLISHED} "))),
        "no host-port element for {PUBLISHED} of {cid}:\n{table}"
    );

    world.ok(&["rm", "--force", "--time", "0", CTR]);
    assert!(
        eventually(|| owned(&node.sh("nft list table inet wasm_cni")).is_empty()),
        "rules of {cid} left after podman rm:\n{}",
        node.sh("nft list table inet wasm_cni")
    );
    assert!(
        net::connect(&outside, NODE_UPLINK, PUBLISHED, 1.0).is_err(),
        "{PUBLISHED} still forwarded after podman rm"
    );
    let log = world.plugin_log();
    assert!(
        log.contains(&format!("command=DEL container_id={cid} plugin=portmap")),
        "our portmap did not serve the DEL; plugin log:\n{log}"
    );
    assert!(
        !log.contains(" ERROR "),
        "our plugins logged errors:\n{log}"
    );
    eprintln!("total: {:?}", started.elapsed());
}
