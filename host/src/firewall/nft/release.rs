//! How a netfilter socket is closed.
//!
//! Closing a netfilter socket waits for nf_tables to free what
//! transactions deleted: the kernel's release hook flushes the namespace's
//! deferred destroy work, and it does so holding the commit lock that every
//! transaction, and every network device registered in the namespace, also
//! takes. The deletions themselves are complete and visible before that;
//! only the freeing is waited for. The destroy work waits an RCU grace
//! period (5-15 ms measured here) after each deleting transaction, and
//! while it waits, later deletions queue another run behind it.
//!
//! So when something may still be being freed (the socket deleted
//! something itself, or another invocation's freeing is pending: see
//! [`FREEING_MARKER`]), the socket is not closed by the invocation but
//! handed to the namespace's *collector*: a detached process
//! ([`crate::kernel::detach`]) that holds every such socket, sits out
//! grace periods without any lock (`membarrier(MEMBARRIER_CMD_GLOBAL)` is
//! a `synchronize_rcu`) until two pass in a row in which no transaction
//! deleted anything (every deleter stamps the marker as it commits), and
//! then lets go of them all at once. A deletion seen before those two is
//! freed by then, even one whose run queued behind another's, so the
//! release hook takes the lock only for a moment, and neither the next
//! plugin of the chain nor the next pod's new veth waits for it.
//! Transactions that only add queue no destroy work and do not count.
//!
//! The collector listens on an abstract unix socket of the namespace;
//! handing a socket over is a connection carrying it (`SCM_RIGHTS`), never
//! accepted: closing the listener releases the connections and the
//! sockets in them. The first invocation that finds none becomes it. A
//! socket is only handed to a collector running as the same user. Where
//! one cannot be reached or made, the socket gets a detached close of its
//! own that waits the same way. Otherwise (most invocations) it is closed at once.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use netlink_sys::Socket;
use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::kernel::detach::{self, sys};

/// With the namespace's cookie appended: while its modification time is
/// in the future, a freeing may be pending in that namespace. A deleting
/// transaction sets it [`FREEING_WINDOW`] ahead; a detached close sets it
/// back to the present once its sockets are closed, unless a deletion came
/// meanwhile (tmpfs: gone at reboot, like the rules).
pub const FREEING_MARKER: &str = "/run/wasm-cni/nft.deleted";
/// How long a freeing is assumed to last if no close says it is over: a
/// grace period is 5-30 ms on a small node, and a wrong guess costs a
/// handover.
const FREEING_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// The collector's address, in the abstract namespace of the network
/// namespace (so one per node namespace).
const COLLECTOR: &[u8] = b"wasm-cni/netfilter-release";

/// Most grace periods a detached close waits (5-10 ms each on a 2-core
/// VM; well inside [`FREEING_WINDOW`]). A close that gives up holds
/// nf_tables' commit mutex while the pending frees wait for a grace
/// period, and the next pod's veth registration and batches wait with it.
const QUIET_TRIES: usize = 32;
/// Grace periods in a row without a deletion before the close: the destroy
/// work of a deletion seen before them may have queued behind another
/// run, one grace period, before waiting its own.
const QUIET_PERIODS: usize = 2;

/// A namespace's freeing marker, its path NUL-terminated in a fixed
/// buffer: a detached close owns nothing to drop.
#[derive(Clone, Copy)]
pub(super) struct Marker {
    path: [u8; 64],
}

impl Marker {
    /// The marker of the current network namespace.
    pub(super) fn of_this_namespace() -> Option<Marker> {
        let cookie = crate::kernel::netns::cookie()?;
        let path = format!("{FREEING_MARKER}.{cookie}");
        let mut buf = [0u8; 64];
        // One byte left for the NUL.
        buf.get_mut(..path.len())
            .filter(|_| path.len() < 64)?
            .copy_from_slice(path.as_bytes());
        Some(Marker { path: buf })
    }

    fn path(&self) -> &std::path::Path {
        use std::os::unix::ffi::OsStrExt;
        let len = self.path.iter().position(|&b| b == 0).unwrap_or(64);
        std::path::Path::new(std::ffi::OsStr::from_bytes(&self.path[..len]))
    }

    /// The time the marker holds. Raw system calls only: a detached close
    /// calls it.
    fn stamp(&self) -> Option<(i64, i64)> {
        sys::mtime(&self.path)
    }

    /// Marks a freeing in the current namespace as pending for
    /// [`FREEING_WINDOW`] (a deleting transaction was committed), creating
    /// the marker (and its directory) if needed, and returns the marker.
    /// Best effort: without it, another invocation's close may wait.
    pub(super) fn stamp_deletion() -> Option<Marker> {
        let marker = Marker::of_this_namespace()?;
        let path = marker.path();
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
        };
        let file = open()
            .or_else(|_| {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                open()
            })
            .ok()?;
        file.set_modified(std::time::SystemTime::now() + FREEING_WINDOW)
            .ok()?;
        Some(marker)
    }
}

/// Whether a marker's time is still ahead: a freeing may be pending.
fn ahead(stamp: Option<(i64, i64)>) -> bool {
    stamp.zip(sys::realtime()).is_some_and(|(t, now)| t > now)
}

/// Whether a marker's time says a deletion came since it read `last`: it
/// moved, and ahead (a close that is over sets it to the present).
fn deleted_since(last: Option<(i64, i64)>, now: Option<(i64, i64)>) -> bool {
    now != last && ahead(now)
}

/// Closes a netfilter socket of the current namespace: at once, unless it
/// `deleted` something (and stamped `marker`) or another invocation's
/// freeing is pending; then through the namespace's collector.
pub(super) fn release(sock: Socket, deleted: bool, marker: Option<Marker>) {
    let marker = marker.or_else(Marker::of_this_namespace);
    if !deleted && !marker.is_some_and(|m| ahead(m.stamp())) {
        return;
    }
    if hand_over(&sock) {
        return;
    }
    let listener = collector_listener();
    if listener.is_none() && hand_over(&sock) {
        // Another invocation became the collector just now.
        return;
    }
    close_in_background(sock, listener, marker);
}

/// Hands `sock` to the namespace's collector; `false` when there is none,
/// it runs as another user, or it holds all it can.
fn hand_over(sock: &Socket) -> bool {
    let Ok(addr) = UnixAddr::new_abstract(COLLECTOR) else {
        return false;
    };
    let Ok(conn) = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    ) else {
        return false;
    };
    if sock::connect(conn.as_raw_fd(), &addr).is_err() {
        return false;
    }
    // A netfilter socket acts with its opener's privileges: only a
    // collector of the same user may hold it.
    let same_user = sock::getsockopt(&conn, sockopt::PeerCredentials)
        .is_ok_and(|c| c.uid() == nix::unistd::geteuid().as_raw());
    if !same_user {
        return false;
    }
    let fds = [sock.as_raw_fd()];
    let sent = sock::sendmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &[std::io::IoSlice::new(&[0])],
        &[sock::ControlMessage::ScmRights(&fds)],
        sock::MsgFlags::MSG_DONTWAIT | sock::MsgFlags::MSG_NOSIGNAL,
        None,
    );
    sent == Ok(1)
}

/// The listening socket of a new collector for this namespace; `None` when
/// another one holds the address (or no socket can be made).
fn collector_listener() -> Option<OwnedFd> {
    let addr = UnixAddr::new_abstract(COLLECTOR).ok()?;
    let listener = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    sock::bind(listener.as_raw_fd(), &addr).ok()?;
    // As many connections as the kernel allows (`net.core.somaxconn`);
    // past that, invocations close their sockets themselves.
    sock::listen(&listener.as_fd(), sock::Backlog::MAXALLOWABLE).ok()?;
    Some(listener)
}

/// Closes `sock` in a detached process once nothing is left to free. With
/// a `listener`, that process is the namespace's collector: it lets go of
/// the sockets handed to it along with its own.
fn close_in_background(sock: Socket, listener: Option<OwnedFd>, marker: Option<Marker>) {
    let Ok((r, w)) = nix::unistd::pipe() else {
        return;
    };
    let fd = sock.as_raw_fd();
    let rfd = r.as_raw_fd();
    let lfd: RawFd = listener.as_ref().map_or(-1, |l| l.as_raw_fd());
    let keep = [fd, rfd, lfd];
    let keep = if lfd < 0 { &keep[..2] } else { &keep[..] };
    detach::spawn(keep, move || {
        let mut b = [0u8; 1];
        // Returns at EOF: every write end (this process's) is closed.
        while sys::read(rfd, &mut b) > 0 {}
        let stamp = || marker.and_then(|m| m.stamp());
        let mut last = stamp();
        let mut quiet = 0;
        for _ in 0..QUIET_TRIES {
            // Unsupported (EINVAL under nohz_full, ENOSYS): close at once.
            if sys::membarrier_global() != 0 {
                break;
            }
            let now = stamp();
            if deleted_since(last, now) {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet == QUIET_PERIODS {
                    break;
                }
            }
            last = now;
        }
        // Closing the listener first takes no more, and lets go of every
        // connection not accepted, with the socket in it. Each release
        // waits for what is still being freed, so once these return, every
        // deletion stamped before them is freed: unless one was stamped
        // meanwhile, the marker goes back to the present.
        let before = stamp();
        if lfd >= 0 {
            sys::close(lfd);
        }
        sys::close(fd);
        if let Some(m) = marker.filter(|m| ahead(before) && m.stamp() == before) {
            sys::touch(&m.path);
        }
    });
    // Without a detached process, the sockets are closed here, and wait.
    drop(listener);
    drop(sock);
    drop(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stamp_moved_ahead_counts_as_a_deletion() {
        let now = sys::realtime().expect("clock");
        let ahead_of_now = (now.0 + 1, now.1);
        let behind = (now.0 - 1, now.1);
        // A deleter stamped, the first or a later one.
        assert!(deleted_since(Some(behind), Some(ahead_of_now)));
        assert!(deleted_since(None, Some(ahead_of_now)));
        // Nothing new; a close said its freeing is over; no marker.
        assert!(!deleted_since(Some(ahead_of_now), Some(ahead_of_now)));
        assert!(!deleted_since(Some(ahead_of_now), Some(behind)));
        assert!(!deleted_since(Some(ahead_of_now), None));
    }
}
