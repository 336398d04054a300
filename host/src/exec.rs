//! Running a helper program (a native IPAM plugin, `nft`, `iptables-restore`)
//! with input on stdin: the one place the host spawns processes.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// Runs `program` with `args` and `env`, writes `input` to its stdin and
/// returns its output, whatever its exit status.
pub fn run<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    env: &[(&str, String)],
    input: &[u8],
) -> Result<Output> {
    let name = program.as_ref().to_string_lossy().into_owned();
    let mut cmd = Command::new(program.as_ref());
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("exec {name}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits without reading its input is not an error here;
        // its exit status says what happened.
        if let Err(e) = stdin.write_all(input) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(Error::io(format!("write to {name}: {e}")));
            }
        }
    }
    child
        .wait_with_output()
        .map_err(|e| Error::io(format!("wait for {name}: {e}")))
}
