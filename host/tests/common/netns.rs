//! A network namespace per test, for the root-only backend tests: deleted on
//! drop (also on panic); code runs inside it on a thread that entered it, and
//! the programs that thread starts inherit it.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A network namespace for one test, deleted on drop (also on panic).
pub struct Netns(pub String);

impl Netns {
    /// A namespace `wc-<tag>-<pid>-<n>`; none (the test is skipped) unless root.
    pub fn new(tag: &str) -> Option<Netns> {
        static N: AtomicUsize = AtomicUsize::new(0);
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let name = format!(
            "wc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        Some(Netns(name))
    }

    /// Starts `f` on a fresh thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// Runs `f` on a fresh thread inside the namespace; panics propagate.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// `ip -n <ns> <args>` (never the machine's own namespace).
    pub fn ip(&self, args: &str) {
        let ok = Command::new("ip")
            .args(["-n", &self.0])
            .args(args.split_whitespace())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip -n {} {args}", self.0);
    }

    pub fn sysctl(&self, setting: &str) {
        let ok = Command::new("ip")
            .args(["netns", "exec", &self.0, "sysctl", "-qw", setting])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "sysctl {setting} in {}", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
