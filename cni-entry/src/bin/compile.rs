//! `wasm-cni-compile`: compiles WebAssembly components into the precompiled
//! `.cwasm` files `wasm-cni` maps at run time, with the same engine
//! configuration. The installed plugin binary has no compiler; run this once
//! per component after building or upgrading it (and after upgrading
//! `wasm-cni`, whose version the artifacts are tied to).
//!
//!   wasm-cni-compile [-o OUTDIR] PATH...
//!
//! A PATH that is a directory stands for every `*.wasm` in it. Each
//! `<name>.wasm` becomes `<name>.cwasm` in OUTDIR, or beside it. A core
//! module built with the guest SDK for `wasm32-unknown-unknown` is made a
//! component first, from the WIT its bindings embedded; a file that exports
//! no `cni:plugin/plugin` interface is refused.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wasm_cni_host::runtime::{PRECOMPILED_EXT, WASM_EXT};
use wasm_cni_host::{Error, Limits, Runtime};

const USAGE: &str = "usage: wasm-cni-compile [-o OUTDIR] PATH...\n\
    compiles each PATH (a component or SDK-built core module `.wasm`, or a directory of them)\n\
    into `<name>.cwasm`\n\
    in OUTDIR or beside it, for `wasm-cni` to load";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut out_dir = None;
    let mut inputs = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-o" | "--out" => match args.next() {
                Some(dir) => out_dir = Some(PathBuf::from(dir)),
                None => return usage("-o needs a directory"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => inputs.push(PathBuf::from(arg)),
        }
    }
    if inputs.is_empty() {
        return usage("no component given");
    }
    match compile_all(&inputs, out_dir.as_deref()) {
        Ok(n) => {
            println!("compiled {n} components");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wasm-cni-compile: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("wasm-cni-compile: {problem}\n{USAGE}");
    ExitCode::from(2)
}

fn compile_all(inputs: &[PathBuf], out_dir: Option<&Path>) -> Result<usize, Error> {
    let mut wasm = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input)
                .map_err(|e| Error::io(format!("read {}: {e}", input.display())))?;
            for entry in entries {
                let path = entry
                    .map_err(|e| Error::io(format!("read {}: {e}", input.display())))?
                    .path();
                if path.extension().and_then(|e| e.to_str()) == Some(WASM_EXT) {
                    wasm.push(path);
                }
            }
        } else if input.is_file() {
            wasm.push(input.clone());
        } else {
            return Err(Error::io(format!(
                "{}: no such file or directory",
                input.display()
            )));
        }
    }
    wasm.sort();
    // The directory only matters for loading; compiling needs the engine.
    let runtime = Runtime::new(".", Limits::default())?;
    for path in &wasm {
        let out = match out_dir {
            Some(dir) => dir.join(path.file_name().unwrap_or_default()),
            None => path.clone(),
        }
        .with_extension(PRECOMPILED_EXT);
        runtime.precompile(path, &out)?;
    }
    Ok(wasm.len())
}
