//! pvdir's private staging directory, where mounts are finished before they are attached to a
//! target (see the parent module).
//!
//! Invariants:
//! - the directory is not below a shared mount (if it was, it is made a private mount of its
//!   own), so nothing made there shows anywhere else and the kernel lets mounts be moved out;
//! - every point is a fresh subdirectory named after this process (pid and start time) and a
//!   counter, so concurrent calls never share one;
//! - whatever an earlier process left there (a crash between making a mount and moving it) is
//!   cleared before this process stages anything.

use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;

use super::{sys, MountError};
use crate::os::mountinfo::{self, MountEntry};

pub struct Staging {
    dir: PathBuf,
    /// Names this process's points apart from an earlier process's with the same pid (a
    /// container's driver is pid 1 every time).
    token: String,
    next: AtomicU64,
}

/// One staging point: an empty directory until something is mounted on it.
pub struct Point {
    path: PathBuf,
}

impl Point {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the (empty again) directory; what cannot be removed is left for the next start.
    pub fn remove(self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

impl Staging {
    /// `dir` must be absolute and free of symlinks (the caller canonicalises it).
    pub fn new(dir: PathBuf) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            dir,
            token: format!("{}-{started:x}", std::process::id()),
            next: AtomicU64::new(0),
        }
    }

    /// Create the directory (mode 0700) and make it a private mount of its own. Returns the
    /// mount points an earlier process left below it, deepest first, for the caller to
    /// unmount (NFS ones may need a bounded helper) before calling [`Staging::clear`].
    pub fn prepare(&self, mounts: &[MountEntry]) -> Result<Vec<MountEntry>, MountError> {
        let step = |what| MountError::step(what, &self.dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| step("create")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
        // Below a shared mount (a systemd host's /run), mounts made here would show in every
        // peer, and the kernel refuses to move a mount out of a shared parent: make the
        // directory a private mount of its own. Below a private or slave mount (a
        // container's root) there is nothing to do, and nothing is left mounted.
        if mountinfo::containing(mounts, &self.dir).is_some_and(|m| m.shared) {
            if mountinfo::top_at(mounts, &self.dir).is_none() {
                let fd = sys::open_dir_path(&self.dir).map_err(step("open"))?;
                sys::bind_onto_itself(fd.as_fd()).map_err(step("bind onto itself"))?;
            }
            let root = sys::open_dir_path(&self.dir).map_err(step("open"))?;
            sys::make_private(root.as_fd()).map_err(step("make private"))?;
        }
        let mut left: Vec<MountEntry> = mounts
            .iter()
            .filter(|m| m.mount_point.starts_with(&self.dir) && m.mount_point != self.dir)
            .cloned()
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
        Ok(left)
    }

    /// Remove the (now unmounted) points an earlier process left. Entries that are not empty
    /// directories are not pvdir's and stay.
    pub fn clear(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }

    /// A new, empty staging point.
    pub fn point(&self) -> Result<Point, MountError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{n}", self.token));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(Point { path }),
            Err(e) => Err(MountError::step("create staging point", &path)(
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )),
        }
    }
}
