//! Build orchestration: `cargo xtask <command>`.
//!
//!   build            guest components (wasm32-wasip2) and the host binary
//!   install DIR      build, then install into DIR: the `wasm-cni` binary,
//!                    `wasm/<type>.wasm` + precompiled `.cwasm`, and one link
//!                    per plugin type, so DIR works as /opt/cni/bin
//!   test             install into target/dist, then run every test
//!   demo             install into target/dist, then run the demo
//!   lint             rustfmt and clippy on the host and guest workspaces

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

type Result<T = ()> = std::result::Result<T, String>;

const GUEST_TARGET: &str = "wasm32-wasip2";
const ENTRY: &str = "wasm-cni";

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

/// Guest workspaces: the reference plugins and the example plugin.
fn guest_workspaces() -> Vec<PathBuf> {
    vec![
        root().join("plugins-wasm"),
        root().join("examples/route-override"),
    ]
}

/// Test-only components (never installed): the misbehaving plugin the host's
/// sandbox tests load from its own target directory.
fn fixtures() -> Result {
    let ws = root().join("tests/fixtures/misbehave");
    run(cargo()
        .current_dir(&ws)
        .args(["build", "--release", "--target", GUEST_TARGET]))
}

fn build_guests() -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for ws in guest_workspaces() {
        if !ws.join("Cargo.toml").is_file() {
            continue;
        }
        run(cargo()
            .current_dir(&ws)
            .args(["build", "--release", "--target", GUEST_TARGET]))?;
        let dir = ws.join("target").join(GUEST_TARGET).join("release");
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) == Some("wasm") {
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                out.push((stem.replace('_', "-"), path));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn build_host() -> Result<PathBuf> {
    run(cargo()
        .current_dir(root())
        .args(["build", "--release", "-p", ENTRY]))?;
    Ok(root().join("target/release").join(ENTRY))
}

fn replace_file(from: &Path, to: &Path) -> Result {
    // Remove first: a running binary cannot be overwritten in place.
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to)
        .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))?;
    Ok(())
}

fn install(dir: &Path) -> Result {
    let guests = build_guests()?;
    let binary = build_host()?;
    let wasm_dir = dir.join("wasm");
    std::fs::create_dir_all(&wasm_dir).map_err(|e| format!("{}: {e}", wasm_dir.display()))?;
    let entry = dir.join(ENTRY);
    replace_file(&binary, &entry)?;
    for (name, path) in &guests {
        replace_file(path, &wasm_dir.join(format!("{name}.wasm")))?;
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(ENTRY, &link)
            .map_err(|e| format!("link {}: {e}", link.display()))?;
    }
    run(Command::new(&entry).arg("precompile").arg(&wasm_dir))?;
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

fn test() -> Result {
    install(&dist())?;
    fixtures()?;
    for ws in guest_workspaces() {
        if ws.join("Cargo.toml").is_file() {
            run(cargo().current_dir(&ws).arg("test"))?;
        }
    }
    run(cargo()
        .current_dir(root())
        .env("WASM_CNI_DIST", dist())
        .args(["test", "--release", "--workspace", "--", "--test-threads=4"]))
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

fn lint() -> Result {
    run(cargo()
        .current_dir(root())
        .args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    for ws in guest_workspaces() {
        if ws.join("Cargo.toml").is_file() {
            run(cargo().current_dir(&ws).args(["fmt", "--all", "--check"]))?;
            run(cargo().current_dir(&ws).args([
                "clippy",
                "--target",
                GUEST_TARGET,
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
        ["lint"] => lint(),
        _ => Err("usage: cargo xtask build | install DIR | test | demo | lint".into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
