//! Entering a network namespace for one operation on the current thread.

use std::fs::File;
use std::os::fd::AsFd;

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};

/// Runs `f` with the current thread inside the namespace `target`, then
/// returns to the namespace it started in. Only sockets and `/proc/sys/net`
/// files opened inside `f` belong to `target`.
pub fn within<T>(target: &File, f: impl FnOnce() -> T) -> Result<T> {
    let origin = File::open("/proc/thread-self/ns/net")
        .map_err(|e| Error::io(format!("open current network namespace: {e}")))?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io(format!("enter container network namespace: {e}")))?;
    let out = f();
    setns(origin.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
        Error::internal(format!("return to the host network namespace failed: {e}"))
    })?;
    Ok(out)
}
