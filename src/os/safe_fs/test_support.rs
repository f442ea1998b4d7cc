//! Helpers shared by the `safe_fs` test modules: scratch directories, relative paths, files,
//! and real tmpfs/bind mounts (which need root; `is_root` fails without it unless told to skip).
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

/// Mount tests need root. Without it they fail, unless PVDIR_SKIP_PRIVILEGED=1 says the
/// skip is deliberate: a test that silently passes without running cannot fail.
pub(super) fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("PVDIR_SKIP_PRIVILEGED").is_some_and(|v| v == "1"),
        "mount tests need root (set PVDIR_SKIP_PRIVILEGED=1 to skip them deliberately)"
    );
    eprintln!("skipped: mount tests need root");
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
