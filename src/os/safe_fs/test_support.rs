//! Helpers shared by the `safe_fs` test modules: scratch directories, relative paths, files,
//! and real tmpfs/bind mounts (which need root; `is_root` lets a test skip without it).
//! Every mount is wrapped in a `MountGuard` so a failing assertion still unmounts.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tempfile::TempDir;

use crate::os::relpath::RelPath;

pub(super) fn rel(s: &str) -> RelPath {
    RelPath::parse(s).expect("valid test path")
}

pub(super) fn tmp() -> TempDir {
    TempDir::new().expect("tempdir")
}

pub(super) fn write(p: &Path) {
    fs::write(p, b"data").expect("write");
}

pub(super) fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: mount tests need root");
    false
}

/// Lazily unmounts on drop, so a failing assertion still cleans up.
pub(super) struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

pub(super) fn mount_tmpfs(target: &Path) -> MountGuard {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount tmpfs");
    MountGuard(target.to_path_buf())
}

pub(super) fn bind_mount(source: &Path, target: &Path) -> MountGuard {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");
    MountGuard(target.to_path_buf())
}
