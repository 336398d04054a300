//! Kernel work that may finish after the invocation has answered.
//!
//! Some requests return long after their effect is visible: deleting a link
//! is announced by the kernel within a millisecond, but the request returns
//! only once the device is freed, after RCU grace periods (about 20 ms on
//! a small VM); closing a netfilter socket that deleted something waits for
//! the same. A runtime waits for the plugin process to exit, so such a tail
//! is handed to a grandchild that holds only the descriptors it needs: it is
//! reparented to init and finishes on its own, and the runtime's pipes see
//! EOF as soon as the plugin exits.

use std::os::fd::RawFd;

/// The most descriptors a detached job may keep.
const MAX_KEEP: usize = 4;

/// Runs `job` in a grandchild that keeps only the descriptors in `keep`
/// (at most [`MAX_KEEP`]), and returns once the intermediate child is
/// reaped. `false` when no child could be made: the caller does the work
/// itself.
///
/// `job` runs after `fork` in a process that has other threads, so it may
/// only make async-signal-safe system calls: no allocation, no locks, no
/// logging. It should end in `_exit`; returning exits with status 0.
pub(crate) fn spawn(keep: &[RawFd], job: impl FnOnce()) -> bool {
    if keep.len() > MAX_KEEP {
        return false;
    }
    // SAFETY: both children call only async-signal-safe functions (fork,
    // close_range, what `job` is allowed, _exit) before they exit.
    match unsafe { libc::fork() } {
        -1 => false,
        0 => unsafe {
            if libc::fork() == 0 {
                close_all_but(keep);
                job();
                libc::_exit(0);
            }
            // The kept descriptors first: the grandchild's copies are then
            // the last (a job may wait for the others to close, and a last
            // close may be what takes long).
            for &fd in keep {
                libc::close(fd);
            }
            libc::_exit(0);
        },
        child => {
            let mut status = 0;
            // SAFETY: waits for the child just forked.
            unsafe { libc::waitpid(child, &mut status, 0) };
            true
        }
    }
}

/// Closes every descriptor but `keep`, without allocating.
fn close_all_but(keep: &[RawFd]) {
    let mut sorted = [0 as RawFd; MAX_KEEP];
    let n = keep.len().min(MAX_KEEP);
    sorted[..n].copy_from_slice(&keep[..n]);
    sorted[..n].sort_unstable();
    let mut low = 0u32;
    for &fd in &sorted[..n] {
        let fd = fd as u32;
        if fd > low {
            // SAFETY: closes descriptors of this (forked) process only.
            unsafe { libc::syscall(libc::SYS_close_range, low, fd - 1, 0u32) };
        }
        low = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, low, u32::MAX, 0u32) };
}
