//! Kernel work that may finish after the invocation has answered.
//!
//! Some requests return long after their effect is visible: deleting a link
//! is announced by the kernel within a millisecond, but the request returns
//! only once the device is freed, after RCU grace periods (about 20 ms on
//! a small VM); closing a netfilter socket that deleted something waits for
//! the same. A runtime waits for the plugin process to exit, so such a tail
//! is handed to a detached process that holds only the descriptors it
//! needs: it is reparented to init and finishes on its own, and the
//! runtime's pipes see EOF as soon as the plugin exits.
//!
//! The detached process shares this process's memory (`CLONE_VM`, like a
//! thread, but its own process): making it costs no page-table copy and
//! leaves no copy-on-write faults behind, where a fork cost the invocation
//! half a millisecond or more. It is made through a short-lived
//! intermediate that is reaped at once, so it never becomes a zombie of a
//! long-lived embedder; a process that exits right after its invocation
//! (the CNI entry, see [`exits_soon`]) makes it directly, as its own child,
//! which its exit hands to init. Sharing memory sets the rules for a job: it runs
//! beside this process's threads on their heap and thread-local storage
//! (`errno` included), so it makes raw system calls only ([`sys`]), never
//! allocates or locks, and owns nothing that needs dropping (`Copy`). It
//! lives on a stack of its own, which it unmaps as it exits.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// The most descriptors a detached job may keep.
const MAX_KEEP: usize = 4;
/// Stack of the detached process (its job holds a few hundred bytes).
const STACK_BYTES: usize = 64 * 1024;
/// Stack of the intermediate, which only makes the detached process.
const INTERMEDIATE_STACK_BYTES: usize = 16 * 1024;
const PAGE: usize = 4096;

/// Set by [`exits_soon`].
static EXITS_SOON: AtomicBool = AtomicBool::new(false);

/// Tells [`spawn`] that this process exits right after its invocation: a
/// detached process is then made as this process's own child, without the
/// intermediate and the wait for it (0.1–0.9 ms on a busy 2-core node, the
/// intermediate waiting for a CPU). It outlives this process like any
/// orphan and is reaped by init; it is at most a zombie until this process
/// exits.
pub(crate) fn exits_soon() {
    EXITS_SOON.store(true, Ordering::Relaxed);
}

/// What the detached process starts from, placed at the top of its stack.
struct Detached<F> {
    keep: [RawFd; MAX_KEEP],
    n: usize,
    job: F,
    /// The whole mapping, guard page included, which the process unmaps.
    map: *mut libc::c_void,
    map_len: usize,
}

/// Runs `job` in a detached process that keeps only the descriptors in
/// `keep` (at most [`MAX_KEEP`]), and returns once it is started. `false`
/// when it could not be made: the caller does the work itself.
///
/// `job` shares this process's memory (see the module notes): raw system
/// calls from [`sys`] only, no allocation, no locks, no panics.
pub(crate) fn spawn<F: Fn() + Copy + Send + 'static>(keep: &[RawFd], job: F) -> bool {
    if keep.len() > MAX_KEEP || !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return false;
    }
    let map_len = STACK_BYTES + PAGE;
    // SAFETY: a new private anonymous mapping, checked below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: the lowest page of the mapping just made becomes its guard.
    unsafe { libc::mprotect(map, PAGE, libc::PROT_NONE) };
    let mut kept = [-1; MAX_KEEP];
    kept[..keep.len()].copy_from_slice(keep);
    let start = Detached {
        keep: kept,
        n: keep.len(),
        job,
        map,
        map_len,
    };
    // The start block at the top of the stack, which grows down below it.
    let top = (map as usize + map_len - std::mem::size_of::<Detached<F>>())
        & !(std::mem::align_of::<Detached<F>>().max(16) - 1);
    let at = top as *mut Detached<F>;
    // SAFETY: `at` lies inside the mapping, aligned for `Detached<F>`.
    unsafe { at.write(start) };

    if EXITS_SOON.load(Ordering::Relaxed) {
        // SAFETY: the detached process runs on the mapping's stack from the
        // start block; clone's errno, on failure, is this thread's.
        let pid = unsafe {
            libc::clone(
                detached::<F>,
                at.cast(),
                libc::CLONE_VM | libc::SIGCHLD,
                at.cast(),
            )
        };
        if pid <= 0 {
            // SAFETY: no process was made to run on the mapping.
            unsafe { libc::munmap(map, map_len) };
            return false;
        }
        return true;
    }

    let mut intermediate_stack = vec![0u8; INTERMEDIATE_STACK_BYTES];
    let intermediate_top =
        (intermediate_stack.as_mut_ptr() as usize + INTERMEDIATE_STACK_BYTES) & !15;
    // SAFETY: the intermediate runs on its own stack, calls only clone
    // (whose errno, on failure, only this thread could read, and it is
    // waiting) and exits; this thread waits for it before going on.
    let made = unsafe {
        let pid = libc::clone(
            intermediate::<F>,
            intermediate_top as *mut libc::c_void,
            libc::CLONE_VM | libc::SIGCHLD,
            at.cast(),
        );
        let mut status = 0;
        pid > 0
            && loop {
                match libc::waitpid(pid, &mut status, libc::__WALL) {
                    -1 if std::io::Error::last_os_error().kind()
                        == std::io::ErrorKind::Interrupted => {}
                    // Its exit status says whether it made the process.
                    r if r == pid => {
                        break libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
                    }
                    // Reaped by someone else (SIGCHLD ignored): it has
                    // exited, and may have made it; its stack must stay.
                    _ => break true,
                }
            }
    };
    drop(intermediate_stack);
    if !made {
        // SAFETY: no process was made to run on the mapping.
        unsafe { libc::munmap(map, map_len) };
    }
    made
}

/// Makes the detached process and exits: its parent is then init, which
/// reaps it. Exit status 0 when it was made.
extern "C" fn intermediate<F: Fn() + Copy>(at: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `at` is the start block `spawn` placed at the top of the new
    // stack; the detached process's stack grows down from it.
    let pid = unsafe { libc::clone(detached::<F>, at, libc::CLONE_VM | libc::SIGCHLD, at) };
    if pid > 0 {
        0
    } else {
        1
    }
}

/// The detached process: descriptors, job, then unmap its stack and exit.
extern "C" fn detached<F: Fn() + Copy>(at: *mut libc::c_void) -> libc::c_int {
    // SAFETY: the start block `spawn` wrote; nothing else uses it.
    let start = unsafe { &*(at as *const Detached<F>) };
    close_all_but(&start.keep[..start.n]);
    (start.job)();
    // SAFETY: nothing on this stack is used after the unmap.
    unsafe { sys::unmap_stack_and_exit(start.map, start.map_len) }
}

/// Closes every descriptor but `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut sorted = [0 as RawFd; MAX_KEEP];
    let n = keep.len().min(MAX_KEEP);
    sorted[..n].copy_from_slice(&keep[..n]);
    sorted[..n].sort_unstable();
    let mut low = 0u32;
    for &fd in &sorted[..n] {
        let fd = fd as u32;
        if fd > low {
            sys::close_range(low, fd - 1);
        }
        low = fd + 1;
    }
    sys::close_range(low, u32::MAX);
}

/// System calls without libc, for detached jobs: libc's wrappers write
/// `errno`, which a detached process shares with the thread that made it.
/// Each returns the kernel's answer: a count, or a negated errno.
pub(crate) mod sys {
    use libc::{c_long, c_void};

    #[cfg(target_arch = "x86_64")]
    unsafe fn syscall6(n: c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the caller passes a system call and arguments valid for it.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
                in("r10") a[3], in("r8") a[4], in("r9") a[5],
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    #[cfg(target_arch = "aarch64")]
    unsafe fn syscall6(n: c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the caller passes a system call and arguments valid for it.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a[0] as isize => ret,
                in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
                options(nostack),
            );
        }
        ret
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    unsafe fn syscall6(_n: c_long, _a: [usize; 6]) -> isize {
        // `spawn` makes no detached process on other architectures.
        -(libc::ENOSYS as isize)
    }

    fn call(n: c_long, a: [usize; 6]) -> isize {
        // SAFETY: every wrapper below passes only buffers it borrows for the
        // call, with their lengths.
        unsafe { syscall6(n, a) }
    }

    pub fn read(fd: i32, buf: &mut [u8]) -> isize {
        call(
            libc::SYS_read,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }

    pub fn send(fd: i32, buf: &[u8], flags: i32) -> isize {
        call(
            libc::SYS_sendto,
            [
                fd as usize,
                buf.as_ptr() as usize,
                buf.len(),
                flags as usize,
                0,
                0,
            ],
        )
    }

    pub fn recv(fd: i32, buf: &mut [u8]) -> isize {
        call(
            libc::SYS_recvfrom,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }

    #[cfg(test)]
    pub fn getppid() -> isize {
        call(libc::SYS_getppid, [0; 6])
    }

    pub fn close(fd: i32) {
        call(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
    }

    pub fn close_range(low: u32, high: u32) {
        call(
            libc::SYS_close_range,
            [low as usize, high as usize, 0, 0, 0, 0],
        );
    }

    /// `membarrier(MEMBARRIER_CMD_GLOBAL)`: returns after an RCU grace
    /// period.
    pub fn membarrier_global() -> isize {
        const MEMBARRIER_CMD_GLOBAL: usize = 1;
        call(libc::SYS_membarrier, [MEMBARRIER_CMD_GLOBAL, 0, 0, 0, 0, 0])
    }

    /// The wall-clock time, as a file's modification time is kept.
    pub fn realtime() -> Option<(i64, i64)> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let r = call(
            libc::SYS_clock_gettime,
            [
                libc::CLOCK_REALTIME as usize,
                (&mut ts as *mut libc::timespec) as usize,
                0,
                0,
                0,
                0,
            ],
        );
        (r == 0).then_some((ts.tv_sec, ts.tv_nsec))
    }

    /// Modification time of the file at `path` (NUL-terminated).
    pub fn mtime(path: &[u8]) -> Option<(i64, i64)> {
        if path.last() != Some(&0) {
            return None;
        }
        // SAFETY: a zeroed `stat` is a valid out-buffer; libc's layout is
        // the kernel's on these architectures.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let r = call(
            libc::SYS_newfstatat,
            [
                libc::AT_FDCWD as usize,
                path.as_ptr() as usize,
                (&mut st as *mut libc::stat) as usize,
                0,
                0,
                0,
            ],
        );
        (r == 0).then_some((st.st_mtime, st.st_mtime_nsec))
    }

    /// Sets the times of the file at `path` (NUL-terminated) to now.
    pub fn touch(path: &[u8]) {
        if path.last() == Some(&0) {
            call(
                libc::SYS_utimensat,
                [libc::AT_FDCWD as usize, path.as_ptr() as usize, 0, 0, 0, 0],
            );
        }
    }

    /// Unmaps the stack this runs on and exits the process, touching no
    /// memory in between.
    ///
    /// # Safety
    /// `map`/`len` must be the mapping holding the current stack, and
    /// nothing may use it afterwards (nothing can: this does not return).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn unmap_stack_and_exit(map: *mut c_void, len: usize) -> ! {
        // SAFETY: two system calls; the second needs no memory.
        unsafe {
            std::arch::asm!(
                "syscall",
                "mov eax, {exit}",
                "xor edi, edi",
                "syscall",
                exit = const libc::SYS_exit,
                in("rax") libc::SYS_munmap,
                in("rdi") map,
                in("rsi") len,
                options(noreturn, nostack),
            )
        }
    }

    /// See the x86-64 version.
    ///
    /// # Safety
    /// As there.
    #[cfg(target_arch = "aarch64")]
    pub unsafe fn unmap_stack_and_exit(map: *mut c_void, len: usize) -> ! {
        // SAFETY: two system calls; the second needs no memory.
        unsafe {
            std::arch::asm!(
                "svc 0",
                "mov x8, {exit}",
                "mov x0, xzr",
                "svc 0",
                exit = const libc::SYS_exit,
                in("x8") libc::SYS_munmap,
                in("x0") map,
                in("x1") len,
                options(noreturn, nostack),
            )
        }
    }

    /// Never reached: `spawn` makes no detached process here.
    ///
    /// # Safety
    /// None needed.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub unsafe fn unmap_stack_and_exit(_map: *mut c_void, _len: usize) -> ! {
        // SAFETY: ends this process.
        unsafe { libc::_exit(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two new descriptors into `fds`.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: both are new and owned here.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_detached_job_runs_with_its_descriptors_only_and_is_not_our_child() {
        let (ours, theirs) = socketpair();
        let (witness, witness_peer) = socketpair();
        let fd = theirs.as_raw_fd();
        let peer = witness_peer.as_raw_fd();
        assert!(spawn(&[fd], move || {
            // Its copy of the witness's peer is closed: this send fails.
            let sent = sys::send(peer, &[1], libc::MSG_NOSIGNAL);
            let parent = sys::getppid() as i32;
            let mut msg = [0u8; 5];
            msg[..4].copy_from_slice(&parent.to_ne_bytes());
            msg[4] = (sent < 0) as u8;
            sys::send(fd, &msg, libc::MSG_NOSIGNAL);
        }));
        drop(theirs);
        drop(witness_peer);
        let mut buf = [0u8; 16];
        // SAFETY: reads into `buf`.
        let n = unsafe { libc::read(ours.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, 5);
        let parent = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        assert_ne!(parent as u32, std::process::id(), "the job is our child");
        assert_eq!(buf[4], 1, "the job saw a descriptor it was not given");
        // The job's end closes when it exits.
        // SAFETY: as above.
        let n = unsafe { libc::read(ours.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, 0);
        drop(witness);
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        assert!(!spawn(&[0, 1, 2, 3, 4], || {}));
    }
}
