//! Build orchestration: `cargo xtask <command>`.
//!
//!   build            guest components and the host binary
//!   install DIR      build, then install into DIR: the `wasm-cni` binary,
//!                    `wasm/<type>.cwasm` (components precompiled by
//!                    `wasm-cni-compile`), and one link per plugin type, so
//!                    DIR works as /opt/cni/bin
//!   test             install into target/dist, then run every test
//!   demo             install into target/dist, then run the demo
//!   bench [-- ARGS]  install into target/dist, then run the benchmark in
//!                    release mode (root; ours vs /usr/lib/cni), writing
//!                    target/bench/{report.md,samples.csv,latency.png};
//!                    ARGS e.g. `--levels 1,50,250 --samples 20`
//!   lint             rustfmt and clippy on the host and guest workspaces

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

type Result<T = ()> = std::result::Result<T, String>;

/// What plugins build for: core modules with no WASI, which
/// `wasm-cni-compile` makes components from the WIT that the guest SDK's
/// bindings embedded. Without WASI's types they load faster, their linker
/// has no WASI functions, and the host gives them no WASI at all.
const PLUGIN_TARGET: &str = "wasm32-unknown-unknown";
/// The sandbox tests' misbehaving plugin builds with WASI, to try it.
const WASI_TARGET: &str = "wasm32-wasip2";
const ENTRY: &str = "wasm-cni";
const COMPILER: &str = "wasm-cni-compile";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Guest workspaces: the plugins shipped here and the example.
fn guest_workspaces() -> Vec<PathBuf> {
    vec![
        root().join("plugins-wasm"),
        root().join("examples/route-override"),
    ]
}

/// Test-only components (never installed): the misbehaving plugin the host's
/// sandbox tests load from its own target directory, built with WASI (to
/// try it) and without (to see what a panic reports there).
fn fixture_workspace() -> PathBuf {
    root().join("tests/fixtures/misbehave")
}

fn fixtures() -> Result {
    let ws = fixture_workspace();
    for target in [WASI_TARGET, PLUGIN_TARGET] {
        run(cargo()
            .current_dir(&ws)
            .args(["build", "--release", "--target", target]))?;
    }
    Ok(())
}

fn build_guests() -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let target = PLUGIN_TARGET;
    for ws in guest_workspaces() {
        if !ws.join("Cargo.toml").is_file() {
            continue;
        }
        if !has_rust_target(target) {
            return Err(format!(
                "{}: the {target} target is not installed (`rustup target add {target}`)",
                ws.display()
            ));
        }
        run(cargo()
            .current_dir(&ws)
            .args(["build", "--release", "--target", target]))?;
        let dir = ws.join("target").join(target).join("release");
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) == Some("wasm") {
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                out.push((stem.replace('_', "-"), path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let out = Command::new(rustc())
        .arg("-vV")
        .output()
        .map_err(|e| format!("{} -vV: {e}", rustc()))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or_else(|| format!("{} -vV names no host triple", rustc()))
}

fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

/// Whether the Rust standard library for `triple` is installed
/// (`rustup target add <triple>`).
fn has_rust_target(triple: &str) -> bool {
    Command::new(rustc())
        .args(["--print", "target-libdir", "--target", triple])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .is_some_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        })
}

/// Whether `tool` is an executable in `PATH`.
fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

/// The target the installed binary is built for, and a note on why.
///
/// A runtime execs the installed binary once per plugin call, so what it
/// costs to start counts. It is linked statically and not
/// position-independent: as a dynamic PIE each start spent ~0.6 ms in the
/// loader (three shared libraries, 15k relocations). On musl rather than
/// glibc when the musl target and a musl C compiler (for wasmtime's C
/// helpers) are installed: glibc probes the CPU's caches at every start
/// with ~60 `cpuid` instructions, which trap to the hypervisor on a virtual
/// machine (~0.2 ms), and a static musl binary also starts and exits
/// faster. The static glibc build is the fallback.
fn entry_target(host: &str) -> (String, String) {
    if let Some(arch) = host.strip_suffix("-unknown-linux-gnu") {
        let musl = format!("{arch}-unknown-linux-musl");
        let cc = format!("{arch}-linux-musl-gcc");
        if has_rust_target(&musl) && in_path(&cc) {
            return (musl, "static musl".into());
        }
        let why = format!(
            "static glibc; for a faster start install the musl target \
             (`rustup target add {musl}`, and {cc} from Debian's musl-tools)"
        );
        return (host.to_string(), why);
    }
    (host.to_string(), "static".into())
}

/// Builds the installed binary and the precompiler; returns their paths.
/// The precompiler is built apart, for the host, so Cranelift stays out of
/// the binary that is installed.
fn build_host() -> Result<(PathBuf, PathBuf)> {
    let (target, why) = entry_target(&host_triple()?);
    eprintln!("wasm-cni: building for {target} ({why})");
    // An explicit `--target` keeps the flags off build scripts and proc macros.
    let var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        target.to_uppercase().replace('-', "_")
    );
    run(cargo()
        .current_dir(root())
        .args(["build", "--release", "-p", ENTRY, "--bin", ENTRY])
        .args(["--target", &target])
        .env(
            var,
            "-C target-feature=+crt-static -C relocation-model=static",
        ))?;
    run(cargo().current_dir(root()).args([
        "build",
        "--release",
        "-p",
        ENTRY,
        "--features",
        "compiler",
        "--bin",
        COMPILER,
    ]))?;
    let binary = root()
        .join("target")
        .join(&target)
        .join("release")
        .join(ENTRY);
    Ok((binary, root().join("target/release").join(COMPILER)))
}

/// Copies `from` to `to` with one write of the whole file, which the page
/// cache then holds in 2 MiB pages (a copy by `copy_file_range`, as
/// `std::fs::copy` makes, leaves it in smaller ones): the kernel maps the
/// installed binary's code mostly 2 MiB at a time, and an invocation takes
/// fewer page faults (a bridge CHECK ~113 instead of ~155; see
/// docs/benchmark.md).
fn replace_file(from: &Path, to: &Path) -> Result {
    // Remove first: a running binary cannot be overwritten in place.
    let _ = std::fs::remove_file(to);
    let copy = |e: std::io::Error| format!("copy {} -> {}: {e}", from.display(), to.display());
    let bytes = std::fs::read(from).map_err(copy)?;
    std::fs::write(to, bytes).map_err(copy)?;
    let mode = std::fs::metadata(from).map_err(copy)?.permissions();
    std::fs::set_permissions(to, mode).map_err(copy)?;
    Ok(())
}

fn install(dir: &Path) -> Result {
    let guests = build_guests()?;
    let (binary, compiler) = build_host()?;
    // Components named by plugin type, compiled from here into DIR/wasm.
    let staged = root().join("target/components");
    let wasm_dir = dir.join("wasm");
    for d in [&staged, &wasm_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let entry = dir.join(ENTRY);
    replace_file(&binary, &entry)?;
    let mut compile = Command::new(&compiler);
    compile.arg("-o").arg(&wasm_dir);
    for (name, path) in &guests {
        let wasm = staged.join(format!("{name}.wasm"));
        replace_file(path, &wasm)?;
        compile.arg(&wasm);
        // Left by older installs; the runtime only reads `.cwasm`.
        let _ = std::fs::remove_file(wasm_dir.join(format!("{name}.wasm")));
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(ENTRY, &link)
            .map_err(|e| format!("link {}: {e}", link.display()))?;
    }
    run(&mut compile)?;
    eprintln!(
        "installed {} plugins into {}: {}",
        guests.len(),
        dir.display(),
        guests
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn dist() -> PathBuf {
    root().join("target/dist")
}

/// Runs `cargo test` in `dir`, echoing its output, and adds up its
/// `test result:` lines.
fn cargo_test(dir: &Path, args: &[&str], env: &[(&str, &Path)], tally: &mut (u64, u64)) -> Result {
    use std::io::{BufRead, BufReader};
    let mut cmd = cargo();
    cmd.current_dir(dir)
        .arg("test")
        .args(args)
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    eprintln!("+ {cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(std::io::Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_suffix(word))
                        .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                tally.0 += count("passed");
                tally.1 += count("failed");
            }
        }
    }
    let status = child.wait().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn test() -> Result {
    install(&dist())?;
    fixtures()?;
    let mut tally = (0, 0);
    let mut res = Ok(());
    for ws in guest_workspaces() {
        if ws.join("Cargo.toml").is_file() && res.is_ok() {
            res = cargo_test(&ws, &[], &[], &mut tally);
        }
    }
    if res.is_ok() {
        let dist = dist();
        res = cargo_test(
            &root(),
            &["--release", "--workspace", "--", "--test-threads=4"],
            &[("WASM_CNI_DIST", &dist)],
            &mut tally,
        );
    }
    println!("tests: {} passed, {} failed", tally.0, tally.1);
    res
}

fn demo() -> Result {
    install(&dist())?;
    run(cargo()
        .current_dir(root())
        .env("WASM_CNI_DIST", dist())
        .args([
            "run",
            "--quiet",
            "-p",
            "wasm-cni-tests",
            "--example",
            "demo",
        ]))
}

fn bench(args: &[&str]) -> Result {
    install(&dist())?;
    let args = args.strip_prefix(&["--"]).unwrap_or(args);
    run(cargo()
        .current_dir(root())
        .env("WASM_CNI_DIST", dist())
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "wasm-cni-tests",
            "--bin",
            "bench",
            "--",
        ])
        .args(args))
}

fn lint() -> Result {
    run(cargo()
        .current_dir(root())
        .args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The installed binary, without the compiler feature the tests turn
    // on, for the target it is installed for (musl has code of its own).
    let (target, _) = entry_target(&host_triple()?);
    run(cargo().current_dir(root()).args([
        "clippy", "-p", ENTRY, "--bin", ENTRY, "--target", &target, "--", "-D", "warnings",
    ]))?;
    let guests = guest_workspaces().into_iter().map(|ws| (ws, PLUGIN_TARGET));
    for (ws, target) in guests.chain([(fixture_workspace(), WASI_TARGET)]) {
        if ws.join("Cargo.toml").is_file() {
            run(cargo().current_dir(&ws).args(["fmt", "--all", "--check"]))?;
            run(cargo().current_dir(&ws).args([
                "clippy",
                "--target",
                target,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["build"] => build_guests().and_then(|_| build_host()).map(|_| ()),
        ["install", dir] => install(Path::new(dir)),
        ["test"] => test(),
        ["demo"] => demo(),
        ["bench", rest @ ..] => bench(rest),
        ["lint"] => lint(),
        _ => Err(
            "usage: cargo xtask build | install DIR | test | demo | bench [-- ARGS] | lint".into(),
        ),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
