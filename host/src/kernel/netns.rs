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

/// `SO_NETNS_COOKIE` (Linux 5.14): not in the libc crate for every target.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The current network namespace's cookie: a number the kernel never gives
/// to another namespace until reboot (unlike the namespace's inode number,
/// which a new namespace reuses as soon as an old one is gone). `None` on
/// kernels without it.
pub fn cookie() -> Option<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the descriptor is owned and closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor no one else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}
