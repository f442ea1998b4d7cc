//! Opening directories below `base` without following symlinks, and telling mounts apart;
//! the descriptor-level primitives every `safe_fs` operation is built on.
//!
//! Invariants: `base` is the only path opened by string; every component below it is opened
//! with `openat(.., O_NOFOLLOW | O_DIRECTORY)` relative to its parent's descriptor, and a
//! symlink there is `SymlinkInPath`. A directory on a different `st_dev`, or one that statx
//! reports as `STATX_ATTR_MOUNT_ROOT` (a bind mount of the same filesystem), is `CrossesMount`.

use std::ffi::{CStr, OsStr};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use nix::NixPath;

use super::{io, SafeFsError};
use crate::os::relpath::RelPath;

pub(super) fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

pub(super) fn open_base(base: &Path) -> Result<OwnedFd, SafeFsError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(base, flags, Mode::empty()).map_err(|e| {
        let errno = super::raw_errno(e); // before the allocation below
        SafeFsError::OpenBase {
            path: base.to_path_buf(),
            errno,
        }
    })
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// Opens directory `name` in `parent` (whose path is `dir_path`, used only for errors)
/// without following a symlink; `None` if it is absent.
pub(super) fn open_dir_at(
    parent: BorrowedFd<'_>,
    dir_path: &Path,
    name: &OsStr,
) -> Result<Option<OwnedFd>, SafeFsError> {
    match openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        // O_NOFOLLOW reports a symlink as ELOOP and O_DIRECTORY a non-directory as ENOTDIR;
        // rather than rely on which check the kernel makes first, ask lstat.
        Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
            let path = dir_path.join(name);
            match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).map(|st| file_type(&st)) {
                Ok(SFlag::S_IFLNK) => Err(SafeFsError::SymlinkInPath { path }),
                Ok(SFlag::S_IFDIR) => Err(io("open directory", &path, e)),
                Ok(_) => Err(SafeFsError::NotADirectory { path }),
                Err(Errno::ENOENT) => Ok(None),
                Err(e) => Err(io("stat", &path, e)),
            }
        }
        Err(e) => Err(io("open directory", &dir_path.join(name), e)),
    }
}

/// Opens the parent directory of `rel`'s leaf and returns it with its path; `None` if some
/// component is absent.
fn open_parent(base: &Path, rel: &RelPath) -> Result<Option<(OwnedFd, PathBuf)>, SafeFsError> {
    let mut cur = open_base(base)?;
    let mut path = base.to_path_buf();
    for seg in rel.parent().iter().flat_map(RelPath::segments) {
        match open_dir_at(cur.as_fd(), &path, OsStr::new(seg))? {
            Some(fd) => cur = fd,
            None => return Ok(None),
        }
        path.push(seg);
    }
    Ok(Some((cur, path)))
}

/// The leaf directory of a `RelPath`, opened and checked to be on its parent's mount.
pub(super) struct Leaf {
    pub(super) parent: OwnedFd,
    pub(super) fd: OwnedFd,
    pub(super) st: FileStat,
    pub(super) path: PathBuf,
}

/// Opens `rel`'s leaf without following symlinks; `None` if it or a parent is absent.
/// A leaf that is itself a mount point (a different device, or a bind mount of the same
/// filesystem) is `CrossesMount`.
pub(super) fn open_leaf(base: &Path, rel: &RelPath) -> Result<Option<Leaf>, SafeFsError> {
    let Some((parent, parent_path)) = open_parent(base, rel)? else {
        return Ok(None);
    };
    let name = OsStr::new(rel.file_name());
    let Some(fd) = open_dir_at(parent.as_fd(), &parent_path, name)? else {
        return Ok(None);
    };
    let parent_st = fstat(parent.as_fd()).map_err(|e| io("stat", &parent_path, e))?;
    let st = check_same_mount(fd.as_fd(), parent_st.st_dev, &parent_path, name)?;
    let path = parent_path.join(name);
    Ok(Some(Leaf {
        parent,
        fd,
        st,
        path,
    }))
}

/// Opens directory `base/rel` without following symlinks or crossing into another mount, for
/// a caller that works on the descriptor (a quota ioctl); `None` if it is absent.
pub fn open_dir(base: &Path, rel: &RelPath) -> Result<Option<OwnedFd>, SafeFsError> {
    Ok(open_leaf(base, rel)?.map(|leaf| leaf.fd))
}

/// statx's STATX_ATTR_MOUNT_ROOT for `name` in `dir` (or `dir` itself if `name` is empty),
/// or `None` where the kernel (< 5.8) or a seccomp filter cannot tell; `st_dev` checks
/// still apply then.
pub(super) fn is_mount_root(dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<bool>, Errno> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    // AT_STATX_DONT_SYNC: the mount-root bit is local VFS state, so skip NFS revalidation.
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: `name` is a valid NUL-terminated string, `buf` is writable and sized for
    // `struct statx`, and `dir` is a live descriptor for the duration of the call.
    let rc = unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, 0, buf.as_mut_ptr()) };
    if rc != 0 {
        return match Errno::last() {
            Errno::ENOSYS | Errno::EPERM | Errno::EINVAL => Ok(None),
            e => Err(e),
        };
    }
    // SAFETY: statx succeeded and filled the buffer, which was zero-initialised anyway.
    let stx = unsafe { buf.assume_init() };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok((stx.stx_attributes_mask & bit != 0).then_some(stx.stx_attributes & bit != 0))
}

/// Fails with `CrossesMount` unless `fd` (entry `name` in `dir_path`) is on device `dev` and
/// is not a mount root. A bind mount from the same filesystem shares `st_dev`; only the
/// mount-root bit reveals it.
pub(super) fn check_same_mount(
    fd: BorrowedFd<'_>,
    dev: u64,
    dir_path: &Path,
    name: &OsStr,
) -> Result<FileStat, SafeFsError> {
    let path = || dir_path.join(name);
    let st = fstat(fd).map_err(|e| io("stat", &path(), e))?;
    let root = is_mount_root(fd, c"").map_err(|e| io("statx", &path(), e))?;
    if st.st_dev != dev || root == Some(true) {
        return Err(SafeFsError::CrossesMount { path: path() });
    }
    Ok(st)
}

/// rmdir of `name` in `parent`; `Ok(false)` if it was already gone.
pub(super) fn rmdir_at<P: ?Sized + NixPath>(
    parent: BorrowedFd<'_>,
    name: &P,
    path: &Path,
) -> Result<bool, SafeFsError> {
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => Err(SafeFsError::NotEmpty {
            path: path.to_path_buf(),
        }),
        // A mount point in our namespace; checks made before this should already catch it.
        Err(Errno::EBUSY) => Err(SafeFsError::CrossesMount {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io("remove directory", path, e)),
    }
}

/// Whether directory `rel` has any entry: `None` if it does not exist. Reads at most one
/// entry, so a huge directory costs no more than an empty one.
pub fn has_entries(base: &Path, rel: &RelPath) -> Result<Option<bool>, SafeFsError> {
    let Some(leaf) = open_leaf(base, rel)? else {
        return Ok(None);
    };
    let mut dir =
        nix::dir::Dir::from_fd(leaf.fd).map_err(|e| io("read directory", &leaf.path, e))?;
    for entry in dir.iter() {
        let entry = entry.map_err(|e| io("read directory", &leaf.path, e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Ok(Some(true));
        }
    }
    Ok(Some(false))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::tmp;
    use super::*;

    #[test]
    fn device_mismatch_alone_counts_as_crossing() {
        // Covers kernels without STATX_ATTR_MOUNT_ROOT, where st_dev is the only signal.
        let base = tmp();
        let fd = nix::fcntl::open(base.path(), dir_flags(), Mode::empty()).expect("open");
        let dev = fstat(fd.as_fd()).expect("stat").st_dev;
        let name = OsStr::new("x");
        assert!(check_same_mount(fd.as_fd(), dev, base.path(), name).is_ok());
        let err = check_same_mount(fd.as_fd(), dev ^ 1, base.path(), name).expect_err("dev");
        assert!(matches!(err, SafeFsError::CrossesMount { .. }), "{err}");
    }
}
