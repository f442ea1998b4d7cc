//! `remove_tree`: a directory and everything in it, whatever a pod built inside.
//!
//! Invariants: removal is iterative over an explicit stack of at most `MAX_FRAMES` open
//! directories, and directories are read `READ_BATCH` entries at a time, so no tree can exhaust
//! the stack, descriptors or memory. There is no depth at which it gives up: a directory found
//! below the deepest frame is first moved up into a directory made for it in the tree's root
//! (inside the tree being deleted, on its one mount, so no name in the tree can stand in the
//! way), where a later pass finds it and descends into it from the top. A chain of any depth is
//! so cut into pieces of at most `MAX_FRAMES` levels, and a removal cut short (a killed helper,
//! a crash) leaves only a smaller tree that the next call continues. Symlinks and other
//! non-directories are unlinked, never followed; every directory descended into is checked with
//! `check_same_mount`, and a mount found anywhere (even over a file) is `CrossesMount`.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::renameat;
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::walk::{check_same_mount, is_mount_root, open_dir_at, open_leaf, rmdir_at};
use super::{io, RemoveOutcome, SafeFsError};
use crate::os::relpath::RelPath;

/// Directories `remove_tree` holds open at once, and so the most levels it descends before
/// moving what is deeper up to the root. Containers commonly run with RLIMIT_NOFILE = 1024.
const MAX_FRAMES: usize = 64;
/// Entries read per readdir pass; bounds memory on huge directories.
const READ_BATCH: usize = 256;
/// How often a concurrent writer may refill a directory before `remove_tree` gives up.
const MAX_REFILLS: u32 = 16;
/// Names tried for the directory a deep directory is moved into (taken only if the tree holds
/// an entry of that very name, which has the current time in nanoseconds in it).
const MAX_NAME_TRIES: u32 = 64;

/// One open directory on `remove_tree`'s explicit stack.
struct Frame {
    dir: Dir,
    /// Name within the parent frame's directory.
    name: CString,
}

/// Removes directory `rel` and everything in it, never following symlinks and never entering
/// another mount.
pub fn remove_tree(base: &Path, rel: &RelPath) -> Result<RemoveOutcome, SafeFsError> {
    let Some(leaf) = open_leaf(base, rel)? else {
        return Ok(RemoveOutcome::AlreadyGone);
    };
    let name =
        CString::new(rel.file_name()).map_err(|_| io("remove", &leaf.path, Errno::EINVAL))?;
    let dir = Dir::from_fd(leaf.fd).map_err(|e| io("read directory", &leaf.path, e))?;
    let mut stack = vec![Frame { dir, name }];
    empty_tree(&mut stack, leaf.path.clone(), leaf.st.st_dev)?;
    drop(stack);
    rmdir_at(leaf.parent.as_fd(), rel.file_name(), &leaf.path)?;
    Ok(RemoveOutcome::Removed)
}

/// Empties directory `rel`, keeping it (and its owner, mode and project): for a copy that
/// must start again into a destination it does not own the making of.
pub(super) fn empty_dir(base: &Path, rel: &RelPath) -> Result<(), SafeFsError> {
    let Some(leaf) = open_leaf(base, rel)? else {
        return Ok(());
    };
    let name = CString::new(rel.file_name()).map_err(|_| io("empty", &leaf.path, Errno::EINVAL))?;
    let dir = Dir::from_fd(leaf.fd).map_err(|e| io("read directory", &leaf.path, e))?;
    let mut stack = vec![Frame { dir, name }];
    empty_tree(&mut stack, leaf.path.clone(), leaf.st.st_dev)
}

/// Removes directory `name` in `parent` (at `parent_path`, on device `dev`) and everything in
/// it, as [`remove_tree`] does, for a caller that holds the parent open.
pub(super) fn remove_subdir_at(
    parent: BorrowedFd<'_>,
    name: &CStr,
    parent_path: &Path,
    dev: u64,
) -> Result<(), SafeFsError> {
    let Some(frame) = open_subdir(parent, name.to_owned(), parent_path, dev)? else {
        return Ok(());
    };
    let path = parent_path.join(OsStr::from_bytes(name.to_bytes()));
    let mut stack = vec![frame];
    empty_tree(&mut stack, path.clone(), dev)?;
    drop(stack);
    rmdir_at(parent, name, &path).map(drop)
}

/// Empties the bottom frame's directory depth-first; `path` tracks the top frame's path.
/// Each pass re-reads the top directory from the start: everything already handled is gone,
/// so no per-frame entry lists are kept that a wide, deep tree could blow up.
fn empty_tree(stack: &mut Vec<Frame>, mut path: PathBuf, dev: u64) -> Result<(), SafeFsError> {
    let root_path = path.clone();
    let mut refills = 0;
    let mut moved_up = 0u64;
    loop {
        let Some(top) = stack.last_mut() else {
            return Err(io("read directory", &path, Errno::EBADF));
        };
        let batch = read_batch(&mut top.dir, &path)?;
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
        let dir_fd = top.dir.as_fd();
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
        let Some(frame) = child else { continue };
        if stack.len() < MAX_FRAMES {
            path.push(OsStr::from_bytes(frame.name.to_bytes()));
            stack.push(frame);
            continue;
        }
        // Too deep to hold open: move it up into the root, whose next pass descends into it.
        let (Some(root), Some(parent)) = (stack.first(), stack.last()) else {
            return Err(io("read directory", &path, Errno::EBADF));
        };
        move_up(
            parent.dir.as_fd(),
            &frame.name,
            root.dir.as_fd(),
            &path,
            &root_path,
            &mut moved_up,
        )?;
    }
}

/// Moves directory `name` in `parent` (whose path is `path`) up into a directory this call
/// makes in `root`, under its own name. Nothing the tree holds can be in a directory made just
/// now, so no name a pod chose can make the move fail (a fixed naming scheme could be filled in
/// advance, and every retry would fail alike). Everything involved is inside the tree being
/// removed and on its one mount (checked on the way down); a mount point refuses to move.
fn move_up(
    parent: BorrowedFd<'_>,
    name: &CStr,
    root: BorrowedFd<'_>,
    path: &Path,
    root_path: &Path,
    counter: &mut u64,
) -> Result<(), SafeFsError> {
    let from = || path.join(OsStr::from_bytes(name.to_bytes()));
    let mut made = None;
    for _ in 0..MAX_NAME_TRIES {
        *counter += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let fresh = format!(".pvdir-deep-{nanos:x}-{counter:x}");
        match mkdirat(root, fresh.as_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) => {
                made = Some(fresh);
                break;
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(io("make a directory in", root_path, e)),
        }
    }
    let Some(fresh) = made else {
        return Err(io("make a directory in", root_path, Errno::EEXIST));
    };
    let holder_path = root_path.join(&fresh);
    let holder = open_dir_at(root, root_path, OsStr::new(&fresh))?
        .ok_or_else(|| io("open", &holder_path, Errno::ENOENT))?;
    match renameat(parent, name, holder.as_fd(), name) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = rmdir_at(root, fresh.as_str(), &holder_path);
            Err(match e {
                Errno::EBUSY => SafeFsError::CrossesMount { path: from() },
                e => io("move up", &from(), e),
            })
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
    let fd: OwnedFd = match open_dir_at(dir, dir_path, os_name) {
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
    check_same_mount(fd.as_fd(), dev, dir_path, os_name)?;
    let dir = Dir::from_fd(fd).map_err(|e| io("read directory", &dir_path.join(os_name), e))?;
    Ok(Some(Frame { dir, name }))
}

/// Pops the (now empty) top frame, whose path is `path`, and removes it from its parent.
fn pop_frame(stack: &mut Vec<Frame>, path: &Path) -> Result<(), SafeFsError> {
    let (Some(child), Some(parent)) = (stack.pop(), stack.last()) else {
        return Err(io("remove directory", path, Errno::EBADF));
    };
    drop(child.dir);
    rmdir_at(parent.dir.as_fd(), child.name.as_c_str(), path).map(drop)
}

#[cfg(test)]
#[path = "remove_tests.rs"]
mod tests;
