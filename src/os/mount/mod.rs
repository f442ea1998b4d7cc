//! How a mount reaches its target. Every mount pvdir makes for a pod is finished (source and
//! every flag) before it is attached, and it is attached in one step to the target directory
//! through a descriptor opened with `O_PATH | O_NOFOLLOW`. Three guarantees follow:
//! - a target never shows a half-made mount: a crash leaves either nothing there or the
//!   finished mount, so a retry never meets a writable bind where a read-only one was asked;
//! - a bind never loses a security flag of its source (`nosuid`, `nodev`, `noexec`, `ro`):
//!   flags are only ever added to the ones the source mount has;
//! - a symlink swapped in at the target between the driver's checks and the mount is never
//!   followed: the descriptor is the object that was checked.
//!
//! Two ways to get there, chosen per process ([`MountApi`]):
//! - the new mount API (Linux 5.12): a bind is a detached clone of the source (`open_tree`),
//!   given its extra flags (`mount_setattr`) and attached (`move_mount`);
//! - the classic API: the bind is made on a point of pvdir's private staging directory,
//!   remounted there with the source's flags plus the asked ones, and moved (`MS_MOVE`). A crash
//!   leaves the half-made bind in the staging directory, which the next start clears.
//!
//! NFS mounts always go through the staging directory: `mount.nfs` takes a path and resolves it
//! itself (realpath), so it only ever gets a point of pvdir's own. The move onto the target then
//! runs in a killable helper ([`op`]), because looking up the new mount's root may ask the
//! server.

pub mod op;
pub mod staging;
pub mod sys;

use std::borrow::Cow;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::mount::MntFlags;
use serde::{Deserialize, Serialize, Serializer};

use super::mount_flags::MountFlags;
use staging::Staging;

/// Which mount API to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MountApi {
    /// The new API, falling back to the classic one on a kernel without it.
    Auto,
    /// Always the classic API (for seccomp profiles that refuse the new syscalls).
    Classic,
}

/// The API in use: `Auto` turns into `Classic` for good once the new calls are missing or
/// refused.
pub struct ApiChoice {
    asked: MountApi,
    no_new_api: AtomicBool,
}

impl ApiChoice {
    pub fn new(asked: MountApi) -> Self {
        Self {
            asked,
            no_new_api: AtomicBool::new(false),
        }
    }

    /// The API to try now.
    pub fn current(&self) -> MountApi {
        if self.asked == MountApi::Classic || self.no_new_api.load(Ordering::Relaxed) {
            MountApi::Classic
        } else {
            MountApi::Auto
        }
    }

    fn new_api_unavailable(&self) {
        if !self.no_new_api.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "open_tree/mount_setattr are missing or refused: using the classic mount API"
            );
        }
    }
}

/// A mount step that failed, with the errno as the kernel gave it. Crosses the boundary of the
/// `pvdir internal mount` helper, hence serialisable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MountError {
    /// The target is not a directory that can be opened without following a symlink.
    #[error("target {path:?} is not a plain directory ({}): refusing to mount on it", Errno::from_raw(*errno))]
    Target {
        #[serde(serialize_with = "lossy")]
        path: PathBuf,
        errno: i32,
    },
    #[error("{step} {path:?}: {}", Errno::from_raw(*errno))]
    Step {
        step: Cow<'static, str>,
        #[serde(serialize_with = "lossy")]
        path: PathBuf,
        errno: i32,
    },
}

impl MountError {
    pub(crate) fn step(step: &'static str, path: &Path) -> impl FnOnce(Errno) -> MountError {
        let path = path.to_path_buf();
        move |errno| MountError::Step {
            step: Cow::Borrowed(step),
            path,
            errno: errno as i32,
        }
    }

    pub fn errno(&self) -> Errno {
        match self {
            MountError::Target { errno, .. } | MountError::Step { errno, .. } => {
                Errno::from_raw(*errno)
            }
        }
    }
}

fn lossy<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// The target directory as a descriptor, refusing a symlink or anything but a directory.
pub fn open_target(target: &Path) -> Result<OwnedFd, MountError> {
    sys::open_dir_path(target).map_err(|e| MountError::Target {
        path: target.to_path_buf(),
        errno: e as i32,
    })
}

/// Bind `source` onto `target`, adding `flags` to those of the mount `source` is on.
/// Blocking; `source` is pvdir's own volume directory on local disk.
pub fn bind(
    source: &Path,
    target: &Path,
    flags: MountFlags,
    api: &ApiChoice,
    staging: &Staging,
) -> Result<(), MountError> {
    let to = open_target(target)?;
    if api.current() == MountApi::Auto {
        match bind_detached(source, &to, flags) {
            Err(Detached::Unavailable) => api.new_api_unavailable(),
            Err(Detached::Failed(e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
    bind_staged(source, &to, flags, staging)
}

/// How a bind with the new API failed.
enum Detached {
    /// The kernel lacks the calls (ENOSYS), or a seccomp profile that predates them refuses
    /// the first one (EPERM, with the privilege to mount): use the classic API.
    Unavailable,
    Failed(MountError),
}

fn bind_detached(source: &Path, to: &OwnedFd, flags: MountFlags) -> Result<(), Detached> {
    let tree = sys::open_tree_clone(source).map_err(|e| match e {
        Errno::ENOSYS | Errno::EPERM => Detached::Unavailable,
        e => Detached::Failed(MountError::step("clone", source)(e)),
    })?;
    if !flags.is_empty() {
        sys::mount_setattr(tree.as_fd(), flags).map_err(|e| match e {
            // Linux 5.2 to 5.11 have open_tree but not mount_setattr.
            Errno::ENOSYS => Detached::Unavailable,
            e => Detached::Failed(MountError::step("set flags on the clone of", source)(e)),
        })?;
    }
    // Until this call the clone is attached nowhere; dropping `tree` on an error frees it.
    sys::move_mount(tree.as_fd(), to.as_fd())
        .map_err(|e| Detached::Failed(MountError::step("attach", source)(e)))
}

fn bind_staged(
    source: &Path,
    to: &OwnedFd,
    flags: MountFlags,
    staging: &Staging,
) -> Result<(), MountError> {
    let point = staging.point()?;
    let made = (|| {
        let bare =
            sys::open_dir_path(point.path()).map_err(MountError::step("open", point.path()))?;
        sys::bind(source, bare.as_fd()).map_err(MountError::step("bind", source))?;
        // Open it again: the descriptor from before the bind is the directory underneath.
        let root =
            sys::open_dir_path(point.path()).map_err(MountError::step("open", point.path()))?;
        // A bind remount replaces every per-mount flag, so it gets the source's as well as the
        // asked ones. The fresh bind shows the source mount's flags in the mount table (not
        // statvfs, whose read-only also means a read-only superblock).
        let holder = staged_flags(point.path())?;
        let all = flags.over(holder);
        if all != holder {
            sys::remount_bind(root.as_fd(), all)
                .map_err(MountError::step("set flags on the bind of", source))?;
        }
        sys::move_legacy(root.as_fd(), to.as_fd()).map_err(MountError::step("attach", source))
    })();
    if made.is_err() {
        // Never leave a half-made bind behind, even in the staging directory.
        let _ = sys::unmount(point.path(), MntFlags::MNT_DETACH);
    }
    point.remove();
    made
}

/// The per-mount flags of the mount at `point`, from the mount table.
fn staged_flags(point: &Path) -> Result<MountFlags, MountError> {
    let table = std::fs::read("/proc/self/mountinfo").map_err(|e| {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        MountError::step("read the mount table for", point)(errno)
    })?;
    crate::os::mountinfo::top_at(&crate::os::mountinfo::parse(&table), point)
        .map(|m| m.flags)
        .ok_or_else(|| MountError::step("find the staged bind at", point)(Errno::ENOENT))
}

/// Move the mount whose root is `from` (a staging point) onto `target`. Blocking; for NFS it
/// runs in the killable helper, since looking up `from` may ask the server.
pub fn move_onto(from: &Path, target: &Path, api: MountApi) -> Result<(), MountError> {
    let to = open_target(target)?;
    let root = sys::open_dir_path(from).map_err(MountError::step("open", from))?;
    if api == MountApi::Auto {
        match sys::move_mount(root.as_fd(), to.as_fd()) {
            // Missing, or refused by a seccomp profile that predates it: MS_MOVE then.
            Err(Errno::ENOSYS | Errno::EPERM) => {}
            other => return other.map_err(MountError::step("attach", from)),
        }
    }
    sys::move_legacy(root.as_fd(), to.as_fd()).map_err(MountError::step("attach", from))
}
