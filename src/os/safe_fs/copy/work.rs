//! The copy's work directory: where entries are built before they are renamed into place,
//! and the marker that tells a resumed copy whether the machine restarted since.
//!
//! Invariants:
//! - Entries renamed into the destination were not synced one by one (a sync per file would
//!   cost a 10,000-file copy 10,000 flushes). A power cut may therefore keep a rename and lose
//!   the data behind it. The marker holds the kernel's boot ID of the calls that copied: a copy
//!   resumed under another boot ID (or with no marker, which a power cut may also leave) cannot
//!   trust what its destination holds, and starts again from an empty destination. Within one
//!   boot, a killed process loses nothing the kernel accepted, so resuming is safe.
//! - A file's partial copy is named `f-<path hash>-<source hash>`: continued while the
//!   source's inode, size and mtime are unchanged, and replaced (never kept beside) when they
//!   changed, so a busy file cannot fill the disk with stale partial copies. Other entries
//!   (`n-…`: links and nodes being made) are never continued and are cleared at each start.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use sha2::{Digest, Sha256};

use super::super::{io, SafeFsError};

const MARKER: &CStr = c"boot";
/// Bytes of SHA-256 in each half of a work file's name (see [`hash`]).
const HASH_BYTES: usize = 12;
/// `f-<path hash>`: what names the partial copies of one path.
const KEY_LEN: usize = 2 + 2 * HASH_BYTES;

pub(super) struct Work {
    pub(super) fd: OwnedFd,
    pub(super) path: PathBuf,
    /// Partial copies found, by path hash.
    partial: HashMap<String, CString>,
    /// Names handed out by [`Work::fresh_name`] in this call.
    next: u64,
}

/// The kernel's boot ID; empty where it cannot be read (then every start is a fresh one).
fn boot_id() -> Vec<u8> {
    std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

fn hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(&h.finalize()[..HASH_BYTES])
}

impl Work {
    /// Open the work directory's contents for a call. `Ok((work, fresh))`: `fresh` when the
    /// destination cannot be trusted (see the module header) and must be emptied first.
    pub(super) fn open(fd: OwnedFd, path: PathBuf) -> Result<(Self, bool), SafeFsError> {
        let mut work = Self {
            fd,
            path,
            partial: HashMap::new(),
            next: 0,
        };
        let boot = boot_id();
        let marked = work.read_marker()?;
        let fresh = boot.is_empty() || marked.as_deref() != Some(&boot[..]);
        for name in work.names()? {
            let bytes = name.to_bytes();
            let keep = !fresh && bytes.starts_with(b"f-");
            if keep {
                let key = String::from_utf8_lossy(&bytes[..bytes.len().min(KEY_LEN)]).into_owned();
                work.partial.insert(key, name);
            } else if name.as_c_str() != MARKER {
                work.unlink(&name)?;
            }
        }
        if fresh {
            work.write_marker(&boot)?;
        }
        Ok((work, fresh))
    }

    fn names(&self) -> Result<Vec<CString>, SafeFsError> {
        let dup = self
            .fd
            .try_clone()
            .map_err(|_| io("read directory", &self.path, Errno::EBADF))?;
        let mut dir = Dir::from_fd(dup).map_err(|e| io("read directory", &self.path, e))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io("read directory", &self.path, e))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    fn unlink(&self, name: &CStr) -> Result<(), SafeFsError> {
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io("clear work directory", &self.path, e)),
        }
    }

    fn read_marker(&self) -> Result<Option<Vec<u8>>, SafeFsError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        match openat(self.fd.as_fd(), MARKER, flags, Mode::empty()) {
            Ok(fd) => {
                let mut buf = [0u8; 64];
                let n = nix::unistd::read(&fd, &mut buf).unwrap_or(0);
                Ok(Some(buf[..n].to_vec()))
            }
            Err(Errno::ENOENT) => Ok(None),
            // Something that is not our marker: no trust either.
            Err(_) => Ok(Some(Vec::new())),
        }
    }

    fn write_marker(&self, boot: &[u8]) -> Result<(), SafeFsError> {
        self.unlink(MARKER)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let fd = openat(
            self.fd.as_fd(),
            MARKER,
            flags | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io("write copy marker", &self.path, e))?;
        nix::unistd::write(&fd, boot).map_err(|e| io("write copy marker", &self.path, e))?;
        Ok(())
    }

    /// The work file of the copy of `rel` (source stat `st`), created or continued; a partial
    /// copy of an earlier state of the same path is removed first.
    pub(super) fn file(
        &mut self,
        rel: &Path,
        st: &FileStat,
    ) -> Result<(CString, OwnedFd), SafeFsError> {
        let key = format!("f-{}", hash(&[rel.as_os_str().as_bytes()]));
        let state = hash(&[
            &st.st_ino.to_le_bytes(),
            &st.st_size.to_le_bytes(),
            &st.st_mtime.to_le_bytes(),
            &st.st_mtime_nsec.to_le_bytes(),
        ]);
        let name = CString::new(format!("{key}-{state}"))
            .map_err(|_| io("name a work file", &self.path, Errno::EINVAL))?;
        if let Some(old) = self.partial.remove(&key) {
            if old != name {
                self.unlink(&old)?;
            }
        }
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            self.fd.as_fd(),
            name.as_c_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io("create work file", &self.path, e))?;
        Ok((name, fd))
    }

    /// A name no earlier call left behind, for a link or node being made.
    pub(super) fn fresh_name(&mut self) -> CString {
        // `n-` names are cleared at each start and one copy runs in a work directory at a
        // time, so a counter of this call's cannot collide.
        self.next += 1;
        CString::new(format!("n-{}", self.next)).unwrap_or_default()
    }

    pub(super) fn dir(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// At the end of a complete copy: nothing of it is left but the marker's directory.
    pub(super) fn clear(&self) -> Result<(), SafeFsError> {
        for name in self.names()? {
            self.unlink(&name)?;
        }
        Ok(())
    }
}
