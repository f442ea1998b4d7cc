//! Thin wrappers over the mount syscalls: the new mount API (`open_tree` and `move_mount` since
//! Linux 5.2, `mount_setattr` since 5.12) and classic mount(2)/umount2(2). They return the errno
//! unchanged, so callers can tell an old kernel (ENOSYS) from a real failure. Nothing here
//! decides anything.
//!
//! Targets are always descriptors opened with `O_PATH | O_NOFOLLOW`: the object that was
//! checked is the object that gets the mount, whatever happens to its path meanwhile.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use crate::os::mount_flags::MountFlags;

fn cstr(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// A directory as an `O_PATH` descriptor, refusing a symlink in the last component (the
/// kernel reports ENOTDIR for a symlink opened with `O_NOFOLLOW | O_DIRECTORY`).
pub fn open_dir_path(path: &Path) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    open(path, flags, Mode::empty())
}

/// The path through which mount(2) reaches exactly the object behind `fd`: proc's magic link
/// resolves to the descriptor's own dentry and mount, never to a path looked up again.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// A detached copy of the mount at `source` showing that directory (a bind mount that is not
/// attached anywhere yet), with every per-mount flag of the mount `source` is on.
pub fn open_tree_clone(source: &Path) -> Result<OwnedFd, Errno> {
    let path = cstr(source)?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_SYMLINK_NOFOLLOW as u32;
    // SAFETY: `path` is a valid NUL-terminated string; the kernel returns a new descriptor
    // or -1, and nothing else is touched.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    let fd = Errno::result(fd)?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add per-mount flags to the mount behind `fd`; flags it already has are kept.
pub fn mount_setattr(fd: BorrowedFd<'_>, flags: MountFlags) -> Result<(), Errno> {
    let (attr_set, attr_clr) = flags.mount_attr();
    let attr = libc::mount_attr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` is a valid, fully initialised struct of the size passed; the empty path
    // with AT_EMPTY_PATH makes the call act on `fd` itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(rc).map(drop)
}

/// Attach the mount behind `from` (detached, or the root of an attached mount) on top of the
/// directory behind `to`.
pub fn move_mount(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno> {
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: both descriptors are live for the call; the empty paths with the EMPTY_PATH
    // flags make the kernel use the descriptors themselves.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    Errno::result(rc).map(drop)
}

/// mount(2) `MS_BIND` of `source` on the directory behind `to`.
pub fn bind(source: &Path, to: BorrowedFd<'_>) -> Result<(), Errno> {
    mount(
        Some(source),
        &fd_path(to),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
}

/// mount(2) `MS_BIND | MS_REMOUNT`: replaces every per-mount flag of the bind whose root is
/// behind `fd` with `flags`.
pub fn remount_bind(fd: BorrowedFd<'_>, flags: MountFlags) -> Result<(), Errno> {
    // Retain, not truncate: nix has no name for MS_NOSYMFOLLOW, which must not be dropped.
    let bits = MsFlags::from_bits_retain(flags.ms_flags());
    mount(
        None::<&str>,
        &fd_path(fd),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | bits,
        None::<&str>,
    )
}

/// mount(2) `MS_MOVE` of the mount whose root is behind `from` onto the directory behind `to`.
pub fn move_legacy(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno> {
    mount(
        Some(&fd_path(from)),
        &fd_path(to),
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
}

/// Bind `dir` onto itself, so that it is a mount whose propagation can be set apart.
pub fn bind_onto_itself(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    bind(&fd_path(dir), dir)
}

/// Make the mount whose root is behind `fd` private: nothing mounted below it propagates
/// anywhere, and mounts below it may be moved (the kernel refuses to move a mount out of a
/// shared parent).
pub fn make_private(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    mount(
        None::<&str>,
        &fd_path(fd),
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// umount2(2) of the topmost mount at `target`, never following a symlink there.
pub fn unmount(target: &Path, flags: MntFlags) -> Result<(), Errno> {
    umount2(target, flags | MntFlags::UMOUNT_NOFOLLOW)
}
