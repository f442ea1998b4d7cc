//! The copy's work directory: where entries are built before they are renamed into place,
//! the marker that tells a resumed copy whether the machine restarted since, and the log of
//! directories earlier calls finished.
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
//! - The log `dirs` holds one line per directory finished (everything below it in place, its
//!   attributes set), keyed by its path and its inode as readdir reports it: a resumed call
//!   skips those rather than walking them again, which on NFS costs round trips per entry. It
//!   is trusted under the same boot ID as the rest and cleared with it. A line cut short (a
//!   helper killed while appending) matches no directory, which is then only walked again.
//! - Work files and names are handed out to the copy's worker threads at once (`&self`).

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use sha2::{Digest, Sha256};

use super::super::{io, SafeFsError};

const MARKER: &CStr = c"boot";
/// The log of finished directories.
const DIRS: &CStr = c"dirs";
/// The log is read whole at each start; a longer one (a tree of millions of directories) is
/// left unread, and its directories walked again.
const DIRS_MAX: usize = 64 << 20;
/// Bytes of SHA-256 in each half of a work file's name (see [`hash`]).
const HASH_BYTES: usize = 12;
/// `f-<path hash>`: what names the partial copies of one path.
const KEY_LEN: usize = 2 + 2 * HASH_BYTES;

pub(super) struct Work {
    pub(super) fd: OwnedFd,
    pub(super) path: PathBuf,
    /// Partial copies found, by path hash.
    partial: Mutex<HashMap<String, CString>>,
    /// Names handed out by [`Work::fresh_name`] in this call.
    next: AtomicU64,
    /// Directories finished by earlier calls of this boot, by [`dir_key`].
    finished: HashSet<String>,
    /// The log, once this call appends to it.
    log: Option<OwnedFd>,
}

/// A finished directory's line in the log: its path below the copy's root and the inode
/// readdir gave for it (a directory replaced since by another of the same name is walked).
fn dir_key(rel: &Path, ino: u64) -> String {
    hash(&[rel.as_os_str().as_bytes(), b"\0", &ino.to_le_bytes()])
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
            partial: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            finished: HashSet::new(),
            log: None,
        };
        let boot = boot_id();
        let marked = work.read(MARKER, 64)?;
        let fresh = boot.is_empty() || marked.as_deref() != Some(&boot[..]);
        let mut partial = HashMap::new();
        for name in work.names()? {
            let bytes = name.to_bytes();
            if !fresh && bytes.starts_with(b"f-") {
                let key = String::from_utf8_lossy(&bytes[..bytes.len().min(KEY_LEN)]).into_owned();
                partial.insert(key, name);
            } else if name.as_c_str() != MARKER && (fresh || name.as_c_str() != DIRS) {
                work.unlink(&name)?;
            }
        }
        work.partial = Mutex::new(partial);
        if fresh {
            work.write_marker(&boot)?;
        } else if let Some(log) = work.read(DIRS, DIRS_MAX)? {
            work.finished = log
                .split(|b| *b == b'\n')
                .filter(|line| line.len() == 2 * HASH_BYTES)
                .map(|line| String::from_utf8_lossy(line).into_owned())
                .collect();
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

    /// Up to `max` bytes of the work file `name`; `None` if there is none. What cannot be
    /// read (not a file of ours) reads as empty: no trust either.
    fn read(&self, name: &CStr, max: usize) -> Result<Option<Vec<u8>>, SafeFsError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(self.fd.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(_) => return Ok(Some(Vec::new())),
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match nix::unistd::read(&fd, &mut buf) {
                Ok(0) => return Ok(Some(out)),
                Ok(n) if out.len() + n <= max => out.extend_from_slice(&buf[..n]),
                Ok(_) | Err(_) => return Ok(Some(Vec::new())),
            }
        }
    }

    /// Whether an earlier call of this boot finished directory `rel` (readdir's inode `ino`).
    pub(super) fn finished(&self, rel: &Path, ino: u64) -> bool {
        self.finished.contains(&dir_key(rel, ino))
    }

    /// Log directory `rel` as finished. Not synced: the log is trusted within one boot only.
    pub(super) fn finish(&mut self, rel: &Path, ino: u64) -> Result<(), SafeFsError> {
        let log = match &self.log {
            Some(log) => log,
            None => {
                let flags = OFlag::O_WRONLY
                    | OFlag::O_APPEND
                    | OFlag::O_CREAT
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_CLOEXEC;
                let fd = openat(
                    self.fd.as_fd(),
                    DIRS,
                    flags,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io("open directory log", &self.path, e))?;
                self.log.insert(fd)
            }
        };
        // One write per line: a helper killed meanwhile leaves a whole line or a short one,
        // which the reader drops.
        let line = format!("{}\n", dir_key(rel, ino));
        let n = nix::unistd::write(log, line.as_bytes())
            .map_err(|e| io("write directory log", &self.path, e))?;
        if n != line.len() {
            return Err(io("write directory log", &self.path, Errno::EIO));
        }
        Ok(())
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

    /// The work file of the copy of `rel` (source stat `st`), created or continued, and the
    /// length already copied into it; a partial copy of an earlier state of the same path is
    /// removed first.
    pub(super) fn file(
        &self,
        rel: &Path,
        st: &FileStat,
    ) -> Result<(CString, OwnedFd, i64), SafeFsError> {
        let key = format!("f-{}", hash(&[rel.as_os_str().as_bytes()]));
        let state = hash(&[
            &st.st_ino.to_le_bytes(),
            &st.st_size.to_le_bytes(),
            &st.st_mtime.to_le_bytes(),
            &st.st_mtime_nsec.to_le_bytes(),
        ]);
        let name = CString::new(format!("{key}-{state}"))
            .map_err(|_| io("name a work file", &self.path, Errno::EINVAL))?;
        let found = (self.partial.lock())
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        let continued = found.as_ref() == Some(&name);
        if let Some(old) = found.filter(|old| *old != name) {
            self.unlink(&old)?;
        }
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let open = |extra: OFlag| {
            let mode = Mode::from_bits_truncate(0o600);
            openat(self.fd.as_fd(), name.as_c_str(), flags | extra, mode)
        };
        // A new work file is known to be empty without asking (on NFS a stat is a round trip);
        // only one found at the start, or one this call made already (readdir may repeat a
        // name of a directory that changes), has a length to learn.
        let new = if continued {
            Err(Errno::EEXIST)
        } else {
            open(OFlag::O_EXCL)
        };
        match new {
            Ok(fd) => Ok((name, fd, 0)),
            Err(Errno::EEXIST) => {
                let fd = open(OFlag::empty()).map_err(|e| io("open work file", &self.path, e))?;
                let len = fstat(fd.as_fd())
                    .map_err(|e| io("stat work file", &self.path, e))?
                    .st_size;
                Ok((name, fd, len))
            }
            Err(e) => Err(io("create work file", &self.path, e)),
        }
    }

    /// A name no earlier call left behind, for a link or node being made.
    pub(super) fn fresh_name(&self) -> CString {
        // `n-` names are cleared at each start and one copy runs in a work directory at a
        // time, so a counter of this call's cannot collide.
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        CString::new(format!("n-{n}")).unwrap_or_default()
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
