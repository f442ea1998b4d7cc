//! `remove_tree`: a directory and everything in it.
//!
//! Invariants: removal is iterative over an explicit stack of at most `MAX_DEPTH` frames, of
//! which at most `FD_WINDOW` hold an open descriptor (older ones are closed and reopened via
//! "..", checked by device and inode), and directories are read `READ_BATCH` entries at a
//! time, so a crafted tree can exhaust neither stack, fds nor memory. Symlinks and other
//! non-directories are unlinked, never followed; every directory descended into is checked
//! with `check_same_mount`, and a mount found anywhere (even over a file) is `CrossesMount`.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::openat;
use nix::sys::stat::{fstat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::walk::{check_same_mount, dir_flags, is_mount_root, open_dir_at, open_leaf, rmdir_at};
use super::{io, RemoveOutcome, SafeFsError};
use crate::os::relpath::RelPath;

/// Deepest directory nesting `remove_tree` will descend into.
pub const MAX_DEPTH: usize = 4096;
/// Directory descriptors `remove_tree` keeps open at once; ancestors beyond this are closed
/// and reopened through "..", because containers commonly run with RLIMIT_NOFILE = 1024.
const FD_WINDOW: usize = 64;
/// Entries read per readdir pass; bounds memory on huge directories.
const READ_BATCH: usize = 256;
/// How often a concurrent writer may refill a directory before `remove_tree` gives up.
const MAX_REFILLS: u32 = 16;

/// One directory on `remove_tree`'s explicit stack.
struct Frame {
    /// `None` once closed to stay within `FD_WINDOW`; reopened through "..".
    dir: Option<Dir>,
    /// Name within the parent frame's directory.
    name: CString,
    dev: u64,
    ino: u64,
}

impl Frame {
    fn new(fd: OwnedFd, name: CString, st: &FileStat, path: &Path) -> Result<Frame, SafeFsError> {
        let dir = Dir::from_fd(fd).map_err(|e| io("read directory", path, e))?;
        Ok(Frame {
            dir: Some(dir),
            name,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// Removes directory `rel` and everything in it, never following symlinks, never entering
/// another mount, and never descending more than `MAX_DEPTH` levels.
pub fn remove_tree(base: &Path, rel: &RelPath) -> Result<RemoveOutcome, SafeFsError> {
    let Some(leaf) = open_leaf(base, rel)? else {
        return Ok(RemoveOutcome::AlreadyGone);
    };
    let name =
        CString::new(rel.file_name()).map_err(|_| io("remove", &leaf.path, Errno::EINVAL))?;
    let mut stack = vec![Frame::new(leaf.fd, name, &leaf.st, &leaf.path)?];
    empty_tree(&mut stack, leaf.path.clone(), leaf.st.st_dev)?;
    drop(stack);
    rmdir_at(leaf.parent.as_fd(), rel.file_name(), &leaf.path)?;
    Ok(RemoveOutcome::Removed)
}

/// Empties the bottom frame's directory depth-first; `path` tracks the top frame's path.
/// Each pass re-reads the top directory from the start: everything already handled is gone,
/// so no per-frame entry lists are kept that a wide, deep tree could blow up.
fn empty_tree(stack: &mut Vec<Frame>, mut path: PathBuf, dev: u64) -> Result<(), SafeFsError> {
    let mut refills = 0;
    loop {
        let Some(dir) = stack.last_mut().and_then(|f| f.dir.as_mut()) else {
            return Err(io("read directory", &path, Errno::EBADF));
        };
        let batch = read_batch(dir, &path)?;
        if batch.is_empty() {
            if stack.len() == 1 {
                return Ok(());
            }
            match pop_frame(stack, &path) {
                // A concurrent writer refilled it; the parent's next pass finds it again.
                Err(SafeFsError::NotEmpty { .. }) if refills < MAX_REFILLS => refills += 1,
                other => other?,
            }
            path.pop();
            continue;
        }
        let dir_fd = dir.as_fd();
        let mut child = None;
        for (name, kind) in batch {
            // An unknown or stale d_type is settled by unlinkat's EISDIR.
            if kind != Some(Type::Directory) && unlink_entry(dir_fd, &name, &path)? {
                continue;
            }
            if let Some(frame) = open_subdir(dir_fd, name, &path, dev)? {
                child = Some(frame);
                break;
            }
        }
        if let Some(frame) = child {
            let name = OsStr::from_bytes(frame.name.to_bytes());
            if stack.len() >= MAX_DEPTH {
                return Err(SafeFsError::TooDeep {
                    path: path.join(name),
                });
            }
            path.push(name);
            stack.push(frame);
            if let Some(old) = stack.len().checked_sub(FD_WINDOW + 1) {
                if let Some(f) = stack.get_mut(old) {
                    f.dir = None;
                }
            }
        }
    }
}

/// Reads up to `READ_BATCH` entries other than "." and ".."; the iterator rewinds on drop.
fn read_batch(dir: &mut Dir, path: &Path) -> Result<Vec<(CString, Option<Type>)>, SafeFsError> {
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| io("read directory", path, e))?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            out.push((name.to_owned(), entry.file_type()));
        }
        if out.len() >= READ_BATCH {
            break;
        }
    }
    Ok(out)
}

/// Unlinks a non-directory (a symlink is removed as a link). `false` means it is a directory.
fn unlink_entry(dir: BorrowedFd<'_>, name: &CStr, dir_path: &Path) -> Result<bool, SafeFsError> {
    let path = || dir_path.join(OsStr::from_bytes(name.to_bytes()));
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(Errno::EISDIR) => Ok(false),
        // EBUSY is either a file bind-mounted over this name (e.g. a subPath mount) or, on
        // NFS, a silly-renamed ".nfsXXXX" file still held open somewhere.
        Err(Errno::EBUSY) => match is_mount_root(dir, name) {
            Ok(Some(false)) => Err(io("unlink (file busy)", &path(), Errno::EBUSY)),
            _ => Err(SafeFsError::CrossesMount { path: path() }),
        },
        Err(e) => Err(io("unlink", &path(), e)),
    }
}

/// Opens a subdirectory for descent after checking it stays on the tree's mount. `None` if it
/// vanished or turned out not to be a directory (then it was unlinked instead).
fn open_subdir(
    dir: BorrowedFd<'_>,
    name: CString,
    dir_path: &Path,
    dev: u64,
) -> Result<Option<Frame>, SafeFsError> {
    let os_name = OsStr::from_bytes(name.to_bytes());
    let fd = match open_dir_at(dir, dir_path, os_name) {
        Ok(Some(fd)) => fd,
        Ok(None) => return Ok(None),
        // Swapped for a symlink or file since readdir: unlink it as a non-directory.
        Err(SafeFsError::SymlinkInPath { .. } | SafeFsError::NotADirectory { .. }) => {
            return if unlink_entry(dir, &name, dir_path)? {
                Ok(None)
            } else {
                Err(io("unlink", &dir_path.join(os_name), Errno::EISDIR))
            };
        }
        Err(e) => return Err(e),
    };
    let st = check_same_mount(fd.as_fd(), dev, dir_path, os_name)?;
    let path = dir_path.join(os_name);
    Frame::new(fd, name, &st, &path).map(Some)
}

/// Pops the (now empty) top frame, whose path is `path`, and removes it from its parent,
/// reopening the parent via ".." if it was closed.
fn pop_frame(stack: &mut Vec<Frame>, path: &Path) -> Result<(), SafeFsError> {
    let (Some(child), Some(parent)) = (stack.pop(), stack.last_mut()) else {
        return Err(io("remove directory", path, Errno::EBADF));
    };
    let parent_dir = match (parent.dir.as_ref(), child.dir.as_ref()) {
        (Some(dir), _) => dir,
        (None, Some(child_dir)) => {
            let fd = openat(child_dir.as_fd(), "..", dir_flags(), Mode::empty())
                .map_err(|e| io("reopen parent of", path, e))?;
            let st = fstat(fd.as_fd()).map_err(|e| io("stat parent of", path, e))?;
            // ".." is only trustworthy if it is still the directory we descended from; a
            // rename racing with us could otherwise lead the walk out of the tree.
            if st.st_dev != parent.dev || st.st_ino != parent.ino {
                return Err(io("reopen parent of", path, Errno::ESTALE));
            }
            let dir = Dir::from_fd(fd).map_err(|e| io("read directory", path, e))?;
            parent.dir.insert(dir)
        }
        (None, None) => return Err(io("reopen parent of", path, Errno::EBADF)),
    };
    drop(child.dir);
    rmdir_at(parent_dir.as_fd(), child.name.as_c_str(), path).map(drop)
}

#[cfg(test)]
#[path = "remove_tests.rs"]
mod tests;
