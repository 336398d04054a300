//! host-local's reservation store, on disk exactly as the reference plugin
//! keeps it, so both can share one: `<dataDir>/<network>/<ip>` holding
//! `"<containerID>\r\n<ifname>"` (older files: the container ID alone),
//! `last_reserved_ip.<range>`, and an flock on `<dir>/lock` held for the
//! whole invocation.

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
                let written = f.write_all(format!("{container_id}\r\n{ifname}").as_bytes());
                if let Err(e) = written {
                    let _ = fs::remove_file(&path);
                    return Err(Error::io(format!("write {}: {e}", path.display())));
                }
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(format!("reserve {}: {e}", path.display()))),
        }
    }

    pub fn release(&mut self, ip: IpAddr) -> Result<()> {
        self.locked()?;
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

    /// Addresses held by the attachment. Files without an interface name
    /// (written by older host-local versions) match on the container ID.
    pub fn owned(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        self.scan(|ip, cid, ifn| {
            if cid == container_id && (ifn == ifname || ifn.is_empty()) {
                out.push(ip);
            }
        })?;
        Ok(out)
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

    pub fn release_owner(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let ips = self.owned(container_id, ifname)?;
        for ip in &ips {
            self.release(*ip)?;
        }
        Ok(ips)
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

    pub fn set_last_reserved(&mut self, range_id: u32, ip: IpAddr) -> Result<()> {
        self.locked()?;
        let path = self.dir.join(format!("{LAST_RESERVED}{range_id}"));
        fs::write(&path, ip.to_string()).context(format!("write {}", path.display()))
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
        // A legacy file without an interface name belongs to its container.
        fs::write(dir.join("fd00::5"), "c1").unwrap();
        let mut owned = s.owned("c1", "eth0").unwrap();
        owned.sort();
        assert_eq!(owned.len(), 2);
        assert_eq!(s.release_owner("c1", "eth0").unwrap().len(), 2);
        assert!(s.list().unwrap().is_empty());
        assert!(dir.join("last_reserved_ip.0").exists());
    }
}
