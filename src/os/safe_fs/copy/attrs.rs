//! An entry's attributes copied onto its copy: owner, mode, extended attributes, times.
//!
//! Order matters: chown clears the setuid and setgid bits and file capabilities, so the owner
//! goes first, then the mode and the extended attributes (`security.capability` among them),
//! and the times last, since setting anything else updates them.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::FileStat;

use super::super::{io, SafeFsError};

/// Attributes of the open `src` (stat `st`) onto the open `dst`.
pub(super) fn apply_fd(
    src: BorrowedFd<'_>,
    st: &FileStat,
    dst: BorrowedFd<'_>,
    path: &Path,
) -> Result<(), SafeFsError> {
    let fd = dst.as_raw_fd();
    // SAFETY (all three): plain syscalls on a live descriptor.
    check(unsafe { libc::fchown(fd, st.st_uid, st.st_gid) }).map_err(|e| io("chown", path, e))?;
    check(unsafe { libc::fchmod(fd, st.st_mode & 0o7777) }).map_err(|e| io("chmod", path, e))?;
    xattrs(src, dst).map_err(|e| io("copy extended attributes of", path, e))?;
    let times = times(st);
    check(unsafe { libc::futimens(fd, times.as_ptr()) }).map_err(|e| io("set times", path, e))
}

/// Attributes onto the entry `name` in `dir`, never following it (a symlink's own owner and
/// times; symlinks have no mode). Extended attributes are not copied here: Linux allows user
/// attributes on neither symlinks nor FIFOs.
pub(super) fn apply_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    st: &FileStat,
    path: &Path,
    chmod: bool,
) -> Result<(), SafeFsError> {
    let d = dir.as_raw_fd();
    let nofollow = libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY (all three): `name` is NUL-terminated and `dir` a live descriptor.
    check(unsafe { libc::fchownat(d, name.as_ptr(), st.st_uid, st.st_gid, nofollow) })
        .map_err(|e| io("chown", path, e))?;
    if chmod {
        // Not a symlink (the caller made a FIFO or socket node there), so nothing to follow.
        check(unsafe { libc::fchmodat(d, name.as_ptr(), st.st_mode & 0o7777, 0) })
            .map_err(|e| io("chmod", path, e))?;
    }
    let times = times(st);
    check(unsafe { libc::utimensat(d, name.as_ptr(), times.as_ptr(), nofollow) })
        .map_err(|e| io("set times", path, e))
}

fn check(rc: libc::c_int) -> Result<(), Errno> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

fn times(st: &FileStat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

/// Every extended attribute of `src` onto `dst` (ACLs are `system.posix_acl_*` attributes).
/// A filesystem without extended attributes on either side has none to copy.
fn xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<(), Errno> {
    let names = match read(|buf, len| unsafe {
        // SAFETY: `buf` is writable for `len` bytes (or null with len 0, to ask the size).
        libc::flistxattr(src.as_raw_fd(), buf.cast(), len)
    }) {
        Ok(n) => n,
        Err(Errno::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = std::ffi::CString::new(name) else {
            continue;
        };
        let value = match read(|buf, len| unsafe {
            // SAFETY: as above; `cname` is NUL-terminated.
            libc::fgetxattr(src.as_raw_fd(), cname.as_ptr(), buf.cast(), len)
        }) {
            Ok(v) => v,
            // Removed meanwhile.
            Err(Errno::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: `value` is readable for its length; `cname` is NUL-terminated.
        let rc = unsafe {
            libc::fsetxattr(
                dst.as_raw_fd(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        match check(rc) {
            Ok(()) => {}
            // The destination keeps no extended attributes at all: nothing more to copy.
            Err(Errno::ENOTSUP) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A variable-length value read with the size-query protocol of the xattr calls, retried if
/// it grew between the query and the read.
fn read(mut call: impl FnMut(*mut u8, usize) -> isize) -> Result<Vec<u8>, Errno> {
    for _ in 0..8 {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(Errno::last());
        }
        let mut buf = vec![0u8; size as usize];
        if buf.is_empty() {
            return Ok(buf);
        }
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        if Errno::last() != Errno::ERANGE {
            return Err(Errno::last());
        }
    }
    Err(Errno::ERANGE)
}
