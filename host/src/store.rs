//! host-local's reservation store, on disk exactly as the reference plugin
//! keeps it, so both can share one: `<dataDir>/<network>/<ip>` holding
//! `"<containerID>\r\n<ifname>"` (older files: the container ID alone),
//! `last_reserved_ip.<range>`, and an flock on `<dir>/lock` held for the
//! whole invocation.
//!
//! The reference layout has no index: finding an attachment's reservations
//! means reading every file, which grows with the pods on the node (5 µs a
//! file here). So each reservation made here is also noted in
//! `<dir>/.wasm-cni-attachments/<containerID>@<ifname>` (one address per
//! line; the reference plugin reads it and finds no reservation in it), and
//! ADD, CHECK and DEL look there first, checking each address's file still
//! names the attachment. DEL reads every file only when the index knows
//! nothing of the attachment: reservations another writer (the reference
//! plugin, an older version) made are still released. What the index does
//! not see is an ADD's duplicate check against those foreign reservations.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Context, Error, Result};

pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

pub struct DiskStore {
    dir: PathBuf,
    lock: Option<Flock<File>>,
}

const LAST_RESERVED: &str = "last_reserved_ip.";
/// Per-attachment index of the reservations made here (see the module doc).
const INDEX_DIR: &str = ".wasm-cni-attachments";

impl DiskStore {
    pub fn new(dir: PathBuf) -> Self {
        DiskStore { dir, lock: None }
    }

    /// Creates the directory and takes the lock, once per invocation.
    fn locked(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).context(format!("create store {}", self.dir.display()))?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .context(format!("open {}", path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io(format!("lock {}: {e}", path.display())))?;
        self.lock = Some(lock);
        Ok(())
    }

    pub fn reserve(&mut self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<bool> {
        self.locked()?;
        let path = self.dir.join(ip.to_string());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match file {
            Ok(mut f) => {
                let written = f
                    .write_all(format!("{container_id}\r\n{ifname}").as_bytes())
                    .map_err(|e| Error::io(format!("write {}: {e}", path.display())))
                    .and_then(|()| self.index_add(ip, container_id, ifname));
                if let Err(e) = written {
                    let _ = fs::remove_file(&path);
                    return Err(e);
                }
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(format!("reserve {}: {e}", path.display()))),
        }
    }

    pub fn release(&mut self, ip: IpAddr) -> Result<()> {
        self.locked()?;
        if let Some((container_id, ifname)) = self.holder(ip)? {
            self.index_remove(ip, &container_id, &ifname)?;
        }
        self.remove(ip)
    }

    fn remove(&mut self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(Error::io(format!("release {}: {e}", path.display())))
            }
            _ => Ok(()),
        }
    }

    pub fn list(&mut self) -> Result<Vec<Reservation>> {
        let mut out = Vec::new();
        self.scan(|ip, container_id, ifname| {
            out.push(Reservation {
                ip,
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            })
        })?;
        Ok(out)
    }

    /// Addresses the index holds for the attachment whose files still name
    /// it (see the module doc).
    pub fn owned(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        self.locked()?;
        let Some(path) = self.index_path(container_id, ifname) else {
            return Ok(Vec::new());
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}: {e}", path.display()))),
        };
        let mut out = Vec::new();
        for ip in text.lines().filter_map(|l| l.trim().parse::<IpAddr>().ok()) {
            let held = self.holder(ip)?;
            if held.is_some_and(|(c, i)| c == container_id && i == ifname) && !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }

    /// Addresses held by the attachment, read from every file. Files
    /// without an interface name (written by older host-local versions)
    /// match on the container ID.
    fn owned_by_scan(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        self.scan(|ip, cid, ifn| {
            if cid == container_id && (ifn == ifname || ifn.is_empty()) {
                out.push(ip);
            }
        })?;
        Ok(out)
    }

    /// The attachment `<dir>/<ip>` names, if the file exists.
    fn holder(&self, ip: IpAddr) -> Result<Option<(String, String)>> {
        let path = self.dir.join(ip.to_string());
        match fs::read_to_string(&path) {
            Ok(content) => {
                let mut lines = content.trim().splitn(2, "\r\n");
                let cid = lines.next().unwrap_or_default().trim().to_string();
                let ifname = lines.next().unwrap_or_default().trim().to_string();
                Ok(Some((cid, ifname)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}: {e}", path.display()))),
        }
    }

    /// The attachment's index file. The names come from the plugin: only
    /// a container ID of the spec's alphabet (which has no `@`, so the name
    /// is the attachment's alone) and a valid interface name make a path;
    /// anything else is not indexed (and found by a scan).
    fn index_path(&self, container_id: &str, ifname: &str) -> Option<PathBuf> {
        use crate::cni::env::{is_container_id, is_ifname};
        (is_container_id(container_id) && is_ifname(ifname)).then(|| {
            self.dir
                .join(INDEX_DIR)
                .join(format!("{container_id}@{ifname}"))
        })
    }

    fn index_add(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<()> {
        let Some(path) = self.index_path(container_id, ifname) else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).context(format!("create {}", dir.display()))?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{ip}\n").as_bytes()))
            .context(format!("write {}", path.display()))
    }

    /// Drops `ip` from the attachment's index; the file goes with its last
    /// address.
    fn index_remove(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<()> {
        let Some(path) = self.index_path(container_id, ifname) else {
            return Ok(());
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("read {}: {e}", path.display()))),
        };
        let rest: String = text
            .lines()
            .filter(|l| l.trim().parse::<IpAddr>().ok() != Some(ip))
            .map(|l| format!("{l}\n"))
            .collect();
        let done = if rest.trim().is_empty() {
            fs::remove_file(&path)
        } else {
            fs::write(&path, rest)
        };
        match done {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(Error::io(format!("update {}: {e}", path.display())))
            }
            _ => Ok(()),
        }
    }

    /// Calls `each(ip, container ID, ifname)` for every reservation file.
    /// Every ADD looks for the attachment's earlier reservations and every
    /// DEL for the ones to release, and the reference layout has no index,
    /// so this reads every file: relative to the open directory (no path
    /// walk per file) into one buffer.
    fn scan(&mut self, mut each: impl FnMut(IpAddr, &str, &str)) -> Result<()> {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::Mode;

        self.locked()?;
        let shown = || self.dir.display().to_string();
        let dir = File::open(&self.dir).context(format!("read {}", shown()))?;
        let entries = fs::read_dir(&self.dir).context(format!("read {}", shown()))?;
        let mut buf = Vec::with_capacity(256);
        for entry in entries {
            let entry = entry.context(format!("read {}", shown()))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue; // lock, last_reserved_ip.*, anything else
            };
            let file = match openat(
                &dir,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => File::from(fd),
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => return Err(Error::io(format!("read {}/{ip}: {e}", shown()))),
            };
            buf.clear();
            (&file)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(format!("read {}/{ip}: {e}", shown())))?;
            let content = String::from_utf8_lossy(&buf);
            let mut lines = content.trim().splitn(2, "\r\n");
            let container_id = lines.next().unwrap_or_default().trim();
            let ifname = lines.next().unwrap_or_default().trim();
            each(ip, container_id, ifname);
        }
        Ok(())
    }

    /// Releases the attachment's addresses: the index's, or, when it knows
    /// none, those found by reading every file.
    pub fn release_owner(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut ips = self.owned(container_id, ifname)?;
        if ips.is_empty() {
            ips = self.owned_by_scan(container_id, ifname)?;
        }
        for ip in &ips {
            self.remove(*ip)?;
        }
        match self
            .index_path(container_id, ifname)
            .map(|p| (fs::remove_file(&p), p))
        {
            Some((Err(e), p)) if e.kind() != ErrorKind::NotFound => {
                Err(Error::io(format!("remove {}: {e}", p.display())))
            }
            _ => Ok(ips),
        }
    }

    pub fn last_reserved(&mut self, range_id: u32) -> Result<Option<IpAddr>> {
        self.locked()?;
        let path = self.dir.join(format!("{LAST_RESERVED}{range_id}"));
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}: {e}", path.display()))),
        }
    }

    /// Rewrites the file in place. Emptying it first (as `fs::write` does)
    /// makes ext4 write it back to disk when it is closed, its safeguard
    /// for files replaced by truncation: ~0.15 ms of every ADD. Readers hold
    /// the store's lock, so none sees the file half-written.
    pub fn set_last_reserved(&mut self, range_id: u32, ip: IpAddr) -> Result<()> {
        self.locked()?;
        let path = self.dir.join(format!("{LAST_RESERVED}{range_id}"));
        let text = ip.to_string();
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.set_len(text.len() as u64)
            })
            .context(format!("write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_reference_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net1");
        let mut s = DiskStore::new(dir.clone());
        let ip: IpAddr = "10.1.0.2".parse().unwrap();
        assert!(s.reserve(ip, "c1", "eth0").unwrap());
        assert!(!s.reserve(ip, "c2", "eth0").unwrap());
        assert_eq!(
            fs::read_to_string(dir.join("10.1.0.2")).unwrap(),
            "c1\r\neth0"
        );
        s.set_last_reserved(0, ip).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
            "10.1.0.2"
        );
        assert!(dir.join("lock").exists());
        assert_eq!(s.owned("c1", "eth0").unwrap(), [ip]);
        assert_eq!(s.release_owner("c1", "eth0").unwrap(), [ip]);
        assert!(s.list().unwrap().is_empty());
        assert!(dir.join("last_reserved_ip.0").exists());
        assert!(!dir.join(INDEX_DIR).join("c1@eth0").exists());
    }

    #[test]
    fn last_reserved_is_rewritten_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = DiskStore::new(tmp.path().join("net1"));
        for ip in ["10.1.0.2", "10.1.0.100", "10.1.0.3", "fd00::1", "10.1.0.4"] {
            let ip: IpAddr = ip.parse().unwrap();
            s.set_last_reserved(0, ip).unwrap();
            let text = fs::read_to_string(tmp.path().join("net1/last_reserved_ip.0")).unwrap();
            assert_eq!(text, ip.to_string());
            assert_eq!(s.last_reserved(0).unwrap(), Some(ip));
        }
    }

    #[test]
    fn reservations_of_other_writers_are_released_too() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net1");
        let mut s = DiskStore::new(dir.clone());
        s.reserve("10.1.0.2".parse().unwrap(), "c2", "eth0")
            .unwrap();
        // The reference plugin's reservation, and a legacy file without an
        // interface name: not in the index, found by DEL's scan.
        fs::write(dir.join("10.1.0.3"), "c1\r\neth0").unwrap();
        fs::write(dir.join("fd00::5"), "c1").unwrap();
        assert!(s.owned("c1", "eth0").unwrap().is_empty());
        let mut released = s.release_owner("c1", "eth0").unwrap();
        released.sort();
        assert_eq!(released.len(), 2);
        assert_eq!(s.list().unwrap().len(), 1, "c2 keeps its address");
    }

    #[test]
    fn the_index_follows_releases_and_outside_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net1");
        let mut s = DiskStore::new(dir.clone());
        let (a, b): (IpAddr, IpAddr) = ("10.1.0.2".parse().unwrap(), "fd00::2".parse().unwrap());
        s.reserve(a, "c1", "eth0").unwrap();
        s.reserve(b, "c1", "eth0").unwrap();
        s.release(a).unwrap();
        assert_eq!(s.owned("c1", "eth0").unwrap(), [b]);
        // The file removed (and reused) by another writer: not ours any more.
        fs::write(dir.join(b.to_string()), "c9\r\neth0").unwrap();
        assert!(s.owned("c1", "eth0").unwrap().is_empty());
        // Same container, other interface: a separate attachment.
        s.reserve("10.1.0.4".parse().unwrap(), "c1", "net1")
            .unwrap();
        assert!(s.owned("c1", "eth0").unwrap().is_empty());
        assert_eq!(s.owned("c1", "net1").unwrap().len(), 1);
    }

    #[test]
    fn names_from_the_plugin_never_leave_the_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net1");
        let mut s = DiskStore::new(dir.clone());
        let ip: IpAddr = "10.1.0.2".parse().unwrap();
        assert!(s.reserve(ip, "../../x", "eth0").unwrap());
        assert!(s
            .reserve("10.1.0.3".parse().unwrap(), "c1", "../a")
            .unwrap());
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            3,
            "two files and the lock"
        );
        assert_eq!(s.release_owner("../../x", "eth0").unwrap(), [ip]);
    }
}
