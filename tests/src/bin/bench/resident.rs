//! Both sides' plugin files, held in the page cache for the whole run.
//!
//! How the page cache holds a binary decides what mapping it costs each
//! process that runs it: a file held in 2 MiB pages is mapped a few 2 MiB
//! pages at a time, one read in by an exec is held in 4 KiB pages and
//! faulted in piece by piece (docs/benchmark.md). Machines that drop idle
//! page cache change that state under the run: this one pages out page
//! cache that no process maps once it has been idle for a few minutes
//! (DAMON's `pageout` of unmapped memory), so each side's binaries were
//! dropped while the other side ran and read back by the next exec, in
//! 4 KiB pages. So that neither side runs from what the other side or an
//! idle pause left behind, every regular file of the plugin directories is
//! dropped from the page cache first, read back through a mapping advised
//! `MADV_HUGEPAGE` (the kernel then reads it in 2 MiB pages, as it holds a
//! file just written in one write), and stays mapped until the run ends.

use std::ffi::c_void;
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::Path;
use std::ptr::NonNull;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use nix::sys::mman::{madvise, mmap, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};

const HUGE: usize = 2 << 20;

/// One file's mapping, inside a reservation that aligns it to 2 MiB.
struct Held {
    reservation: NonNull<c_void>,
    len: usize,
    start: usize,
}

pub struct Resident {
    held: Vec<Held>,
    /// Bytes held, and how many of them the kernel maps in 2 MiB pages.
    pub bytes: usize,
    pub huge_bytes: usize,
}

impl Resident {
    /// Drops each file of `dirs` from the page cache and reads it back in
    /// 2 MiB pages; the files stay mapped until this is dropped.
    pub fn hold(dirs: &[&Path]) -> Result<Resident, String> {
        let mut paths = Vec::new();
        for dir in dirs {
            super::regular_files(dir, &mut paths).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut resident = Resident {
            held: Vec::new(),
            bytes: 0,
            huge_bytes: 0,
        };
        for path in paths {
            let what = |e: nix::Error| format!("{}: {e}", path.display());
            let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let size = file
                .metadata()
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len() as usize;
            let Some(len) = NonZeroUsize::new(size) else {
                continue;
            };
            posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).map_err(what)?;
            // SAFETY: a fresh reservation of address space, then the file
            // mapped read-only at a 2 MiB boundary inside it; both stay
            // mapped until `drop` and are only read.
            unsafe {
                let reserve = len.saturating_add(HUGE);
                let reservation =
                    mmap_anonymous(None, reserve, ProtFlags::PROT_NONE, MapFlags::MAP_PRIVATE)
                        .map_err(what)?;
                let start = (reservation.as_ptr() as usize).next_multiple_of(HUGE);
                resident.held.push(Held {
                    reservation,
                    len: reserve.get(),
                    start,
                });
                let at = NonZeroUsize::new(start).ok_or_else(|| "reservation at 0".to_string())?;
                let map = mmap(
                    Some(at),
                    len,
                    ProtFlags::PROT_READ,
                    MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED,
                    &file,
                    0,
                )
                .map_err(what)?;
                madvise(map, size, MmapAdvise::MADV_HUGEPAGE).map_err(what)?;
                let bytes = map.cast::<u8>();
                for offset in (0..size).step_by(4096) {
                    std::ptr::read_volatile(bytes.as_ptr().add(offset));
                }
            }
            resident.bytes += size;
        }
        resident.huge_bytes = resident.file_pmd_mapped();
        Ok(resident)
    }

    /// `FilePmdMapped` of this process's mappings of the held files.
    fn file_pmd_mapped(&self) -> usize {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let mut ours = false;
        let mut total = 0;
        for line in smaps.lines() {
            if let Some(kb) = line.strip_prefix("FilePmdMapped:") {
                if ours {
                    let kb = kb.trim().trim_end_matches("kB").trim();
                    total += kb.parse::<usize>().unwrap_or(0) * 1024;
                }
                continue;
            }
            // A mapping's first line: `start-end perms offset dev inode path`.
            let start = line
                .split_once(' ')
                .and_then(|(range, _)| range.split_once('-'))
                .and_then(|(start, _)| usize::from_str_radix(start, 16).ok());
            if let Some(start) = start {
                ours = self.held.iter().any(|h| h.start == start);
            }
        }
        total
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        for h in &self.held {
            // SAFETY: the reservation made in `hold`, with the file mapped
            // inside it; nothing refers to either any more.
            unsafe {
                let _ = munmap(h.reservation, h.len);
            }
        }
    }
}
