//! `wasm-cni`: one binary for every plugin type. Installed as
//! `/opt/cni/bin/wasm-cni` with links named after each plugin
//! (`/opt/cni/bin/bridge` -> `wasm-cni`), it picks the component by the name
//! it was run as (or, run as `wasm-cni`, by the configuration's `type`) and
//! speaks the CNI exec contract: `CNI_*` environment, configuration on stdin,
//! result or error JSON on stdout, logs to a file.
//!
//! It loads only precompiled components (`wasm/<type>.cwasm`, mapped into
//! memory); `wasm-cni-compile` makes them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;
use wasm_cni_host::cni::config::MAX_CONFIG_BYTES;
use wasm_cni_host::cni::{result, version, Command, Env, NetConf};
use wasm_cni_host::kernel::NetlinkKernel;
use wasm_cni_host::{Error, Invocation, Limits, Runtime};

/// The installed binary is built on musl (see `cargo xtask install`), whose
/// allocator is slow for the engine's many small allocations.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// Maps the first `HEAP_PREFAULT` bytes of the heap in one system call.
/// Touched page by page, an invocation's heap cost one page fault per 4
/// KiB (~70 of them, 2-3 us each on a VM); populated in one go, the kernel
/// maps the same pages in a fraction of that. The block is freed at once
/// and stays in the allocator for what follows. 256 KiB measured best
/// (bridge CHECK -0.3 ms, portmap -0.14 ms; 1 MiB was slower than none).
#[cfg(target_env = "musl")]
fn prefault_heap() {
    use std::alloc::{alloc, dealloc, Layout};
    let Ok(layout) = Layout::from_size_align(HEAP_PREFAULT, 4096) else {
        return;
    };
    // SAFETY: a non-zero layout; the block is only advised and freed.
    unsafe {
        let block = alloc(layout);
        if !block.is_null() {
            // Linux 5.14 or newer; elsewhere the pages fault in as used.
            libc::madvise(block.cast(), HEAP_PREFAULT, libc::MADV_POPULATE_WRITE);
            dealloc(block, layout);
        }
    }
}

#[cfg(target_env = "musl")]
const HEAP_PREFAULT: usize = 256 << 10;

const ENTRY_NAME: &str = "wasm-cni";
const ABOUT: &str = "wasm-cni: CNI plugins as sandboxed WebAssembly components";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or(ENTRY_NAME)
        .to_string();
    if name == ENTRY_NAME && args.len() > 1 {
        return admin(&args[1..]);
    }
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command.is_empty() {
        eprintln!(
            "{ABOUT} ({name})\nCNI protocol versions supported: {}",
            version::SUPPORTED.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    #[cfg(target_env = "musl")]
    prefault_heap();
    logging::init();
    let started = Instant::now();
    let container = std::env::var("CNI_CONTAINERID").unwrap_or_default();
    let span =
        tracing::info_span!("cni", command = %command, container_id = %container, plugin = %name);
    let _enter = span.enter();

    let mut stdout = std::io::stdout().lock();
    let (out, code) = match invoke(&command, &name) {
        Ok(Some(json)) => (Some(json), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err((err, cni_version)) => {
            tracing::error!(code = err.code, msg = %err.msg, "failed");
            let body = json!({
                "cniVersion": cni_version,
                "code": err.code,
                "msg": err.msg,
                "details": err.details,
            });
            (Some(body), ExitCode::FAILURE)
        }
    };
    if let Some(out) = out {
        let text = serde_json::to_string_pretty(&out).unwrap_or_else(|_| out.to_string());
        // Nothing else can be said to the runtime if stdout is gone.
        let _ = writeln!(stdout, "{text}");
    }
    tracing::info!(elapsed_us = started.elapsed().as_micros() as u64, "done");
    code
}

/// Runs one CNI command. Errors carry the cniVersion to report them in.
fn invoke(command: &str, name: &str) -> Result<Option<serde_json::Value>, (Error, String)> {
    let latest = || version::LATEST.to_string();
    let command = Command::parse(command).map_err(|e| (e, latest()))?;
    let stdin = read_stdin().map_err(|e| (e, latest()))?;
    if command == Command::Version {
        return Ok(Some(version_json(&stdin)));
    }
    let conf = NetConf::parse(&stdin).map_err(|e| (e, latest()))?;
    let v = conf.cni_version.clone();
    let fail = |e: Error| (e, v.clone());
    if !version::at_least(&conf.cni_version, command.min_version()) {
        return Err(fail(Error::version(format!(
            "cniVersion {} does not support {} (needs {} or newer)",
            conf.cni_version,
            command.as_str(),
            command.min_version()
        ))));
    }
    let env = Env::load(command, |k| std::env::var(k).ok()).map_err(fail)?;
    // The name the binary was run as wins; run as the entry itself, `type`.
    let plugin = if name == ENTRY_NAME {
        conf.plugin_type.clone()
    } else {
        name.to_string()
    };
    let runtime =
        Runtime::one_shot(components_dir().map_err(fail)?, Limits::default()).map_err(fail)?;
    let kernel = NetlinkKernel::new(env.netns.clone()).map_err(fail)?;
    let inv = Invocation { command, env, conf };
    let out = runtime.run(&plugin, inv, Box::new(kernel));
    // The process ends right after this call. Dropping the engine would
    // unregister and unmap each loaded component's code, one object at a
    // time (0.1 ms, 0.4 ms with musl's unwinder); the kernel frees the
    // whole address space at exit anyway. Only memory and the read-only
    // component files are left to it: the invocation's sockets were closed
    // with its state.
    std::mem::forget(runtime);
    Ok(out.map_err(fail)?.map(|r| result::to_json(&r, &v)))
}

fn read_stdin() -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("read configuration from stdin: {e}")))?;
    Ok(buf)
}

fn version_json(stdin: &[u8]) -> serde_json::Value {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .filter(|v| version::SUPPORTED.contains(&v.as_str()));
    json!({
        "cniVersion": asked.unwrap_or_else(|| version::LATEST.to_string()),
        "supportedVersions": version::SUPPORTED,
    })
}

/// `WASM_CNI_COMPONENTS`, or `wasm/` beside the real binary.
fn components_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("WASM_CNI_COMPONENTS") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::io(format!("locate the wasm-cni binary: {e}")))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::io("the wasm-cni binary has no parent directory"))?;
    Ok(dir.join("wasm"))
}

fn admin(args: &[String]) -> ExitCode {
    eprintln!(
        "{ABOUT}\n\nunknown arguments {args:?}. Run as a CNI plugin (CNI_COMMAND set), it serves the component\n\
         named like the link it was run as, or the configuration's `type`. Components are precompiled\n\
         `.cwasm` files in `wasm/` beside the binary, or in $WASM_CNI_COMPONENTS; `wasm-cni-compile`\n\
         makes them from `.wasm` components."
    );
    ExitCode::from(2)
}

mod logging {
    //! Logs go to a file; stdout is the protocol. `WASM_CNI_LOG_FILE`
    //! (default `/var/log/wasm-cni.log`) and `WASM_CNI_LOG` (an
    //! env-filter, default `info`).
    use std::fs::OpenOptions;
    use std::sync::Mutex;

    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::EnvFilter;

    pub fn init() {
        let path =
            std::env::var("WASM_CNI_LOG_FILE").unwrap_or_else(|_| "/var/log/wasm-cni.log".into());
        if path.is_empty() {
            return;
        }
        let Ok(file) = OpenOptions::new().create(true).append(true).open(&path) else {
            return;
        };
        let filter =
            EnvFilter::try_from_env("WASM_CNI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(Mutex::new(file))
            .with_ansi(false)
            .with_span_events(FmtSpan::NONE)
            .try_init();
    }
}
