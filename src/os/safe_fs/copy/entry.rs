//! One entry of the walk, on the walking thread: what kind it is, what the destination already
//! holds under its name, and then a directory to descend into, a regular file for the workers
//! (see [`super::files`]), or a symlink or node made in the work directory and put in place.
//!
//! Invariant: an entry is put in place only whole, and never over another entry unless that is
//! a whole copy of the same entry (see [`Copy::place`]).

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use nix::dir::{Entry, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags};
use nix::sys::stat::{fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::super::walk::{check_same_mount, dir_flags, open_dir_at};
use super::super::{io, SafeFsError};
use super::{attrs, file_type, frame, CopyStats, Frame, Work};

/// What became of one entry.
pub(super) enum Step {
    Done,
    Descend(Box<Frame>),
    /// A regular file, for the workers.
    Pending,
    /// The entry changed kind between readdir and its copy: left out of this walk.
    Changed,
}

/// What one call's copy shares with its workers.
pub(super) struct Copy {
    /// The source's and the destination's devices: nothing on another is entered.
    pub(super) dev: u64,
    pub(super) dst_dev: u64,
    pub(super) work: Work,
    pub(super) deadline: Instant,
}

impl Copy {
    pub(super) fn new(dev: u64, dst_dev: u64, work: Work, deadline: Instant) -> Self {
        Self {
            dev,
            dst_dev,
            work,
            deadline,
        }
    }

    /// Look at `entry` of `top`'s directory and copy it, or say what is to be done with it.
    pub(super) fn entry(
        &self,
        top: &Frame,
        entry: &Entry,
        stats: &mut CopyStats,
    ) -> Result<Step, SafeFsError> {
        let name = entry.file_name();
        let os_name = OsStr::from_bytes(name.to_bytes());
        let path = top.path.join(os_name);
        // readdir's type spares a stat per file and directory (on NFS, READDIRPLUS fetched it
        // already); each is checked again once opened. Other kinds need their stat to copy.
        let (kind, st) = match entry.file_type() {
            Some(Type::File) => (SFlag::S_IFREG, None),
            Some(Type::Directory) => (SFlag::S_IFDIR, None),
            _ => match fstatat(top.src.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => (file_type(&st), Some(st)),
                // Removed since readdir: nothing to copy.
                Err(Errno::ENOENT) => return Ok(Step::Done),
                Err(e) => return Err(io("stat", &path, e)),
            },
        };
        // A directory this call made holds only what this call put there.
        let existing = if top.fresh {
            None
        } else {
            match fstatat(top.dst.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(d) => Some(file_type(&d)),
                Err(Errno::ENOENT) => None,
                Err(e) => return Err(io("stat", &path, e)),
            }
        };
        // An entry in place whose kind changed since (the source changed between calls) is
        // replaced; one of the same kind was renamed into place whole by an earlier call.
        match (kind == SFlag::S_IFDIR, existing) {
            (true, Some(SFlag::S_IFDIR)) => {
                if self.work.finished(&top.rel.join(os_name), entry.ino()) {
                    stats.finished_before += 1;
                    return Ok(Step::Done);
                }
            }
            (_, None) => {}
            (false, Some(SFlag::S_IFDIR)) => {
                let dst = top.dst.as_fd();
                super::super::remove::remove_subdir_at(dst, name, &top.dst_path, self.dst_dev)?;
            }
            (true, Some(_)) => match unlinkat(top.dst.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io("replace", &path, e)),
            },
            (false, Some(_)) => return Ok(Step::Done),
        }
        match (kind, st) {
            (SFlag::S_IFDIR, _) => self.directory(top, entry, &path, stats),
            (SFlag::S_IFREG, _) => Ok(Step::Pending),
            (SFlag::S_IFLNK, Some(st)) => self.symlink(top, name, &st, &path, stats),
            (SFlag::S_IFIFO | SFlag::S_IFSOCK, Some(st)) => {
                self.special(top, name, &st, &path, stats)
            }
            _ => {
                stats.skipped += 1;
                Ok(Step::Done)
            }
        }
    }

    fn directory(
        &self,
        top: &Frame,
        entry: &Entry,
        path: &Path,
        stats: &mut CopyStats,
    ) -> Result<Step, SafeFsError> {
        let name = entry.file_name();
        let os_name = OsStr::from_bytes(name.to_bytes());
        let src = match open_dir_at(top.src.as_fd(), &top.path, os_name) {
            Ok(Some(src)) => src,
            // Gone, or no longer a directory (a symlink now, say) since readdir.
            Ok(None) | Err(SafeFsError::SymlinkInPath { .. }) => return Ok(Step::Changed),
            Err(e) => return Err(e),
        };
        let src_st = check_same_mount(src.as_fd(), self.dev, &top.path, os_name)?;
        let fresh = match mkdirat(top.dst.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {
                stats.entries += 1;
                true
            }
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(io("make directory", path, e)),
        };
        let dst = openat(top.dst.as_fd(), name, dir_flags(), Mode::empty())
            .map_err(|e| io("open copied directory", path, e))?;
        let paths = [path.to_path_buf(), top.dst_path.join(os_name)];
        let mut child = frame(src, src_st, dst, paths, top.rel.join(os_name))?;
        child.ino = entry.ino();
        child.fresh = fresh;
        Ok(Step::Descend(Box::new(child)))
    }

    /// Everything below `done` is in place: its directory gets its attributes, last, and is
    /// logged as finished unless it is the root (whose end is the copy's) or was unsettled.
    pub(super) fn finish(&mut self, done: &Frame) -> Result<(), SafeFsError> {
        attrs::apply_fd(done.src.as_fd(), &done.src_st, done.dst.as_fd(), &done.path)?;
        if done.unsettled || done.rel.as_os_str().is_empty() {
            return Ok(());
        }
        self.work.finish(&done.rel, done.ino)
    }

    fn symlink(
        &self,
        top: &Frame,
        name: &CStr,
        st: &FileStat,
        path: &Path,
        stats: &mut CopyStats,
    ) -> Result<Step, SafeFsError> {
        let target = match nix::fcntl::readlinkat(top.src.as_fd(), name) {
            Ok(t) => t,
            Err(Errno::ENOENT) => return Ok(Step::Done),
            Err(e) => return Err(io("read link", path, e)),
        };
        let make =
            |dir: BorrowedFd<'_>, tmp: &CStr| nix::unistd::symlinkat(target.as_os_str(), dir, tmp);
        self.aside(top, name, st, path, make, false, stats)
    }

    /// A FIFO or socket node: a new node of the same kind (nothing listens on a copied socket).
    fn special(
        &self,
        top: &Frame,
        name: &CStr,
        st: &FileStat,
        path: &Path,
        stats: &mut CopyStats,
    ) -> Result<Step, SafeFsError> {
        let make = |dir: BorrowedFd<'_>, tmp: &CStr| {
            let mode = Mode::from_bits_truncate(0o600);
            nix::sys::stat::mknodat(dir, tmp, file_type(st), mode, 0)
        };
        self.aside(top, name, st, path, make, true, stats)
    }

    /// Make an entry in the work directory with `make`, give it `st`'s owner and times (and
    /// mode, with `chmod`), and put it in place.
    #[allow(clippy::too_many_arguments)]
    fn aside(
        &self,
        top: &Frame,
        name: &CStr,
        st: &FileStat,
        path: &Path,
        make: impl FnOnce(BorrowedFd<'_>, &CStr) -> Result<(), Errno>,
        chmod: bool,
        stats: &mut CopyStats,
    ) -> Result<Step, SafeFsError> {
        let tmp = self.work.fresh_name();
        make(self.work.dir(), &tmp).map_err(|e| io("make", path, e))?;
        attrs::apply_at(self.work.dir(), &tmp, st, path, chmod)?;
        self.place(tmp.as_c_str(), top.dst.as_fd(), name, path, stats)?;
        Ok(Step::Done)
    }

    /// Rename a finished entry from the work directory into place.
    pub(super) fn place(
        &self,
        tmp: &CStr,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &Path,
        stats: &mut CopyStats,
    ) -> Result<(), SafeFsError> {
        let work = self.work.dir();
        let flags = nix::fcntl::RenameFlags::RENAME_NOREPLACE;
        match nix::fcntl::renameat2(work, tmp, dir, name, flags) {
            Ok(()) => {}
            // Something put the entry there first: only whole entries of this copy ever are
            // (a helper killed by its deadline finishing the rename it was stuck in), so the
            // one in place is as good as ours.
            Err(Errno::EEXIST) => {
                return match unlinkat(work, tmp, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(io("remove work name", path, e)),
                };
            }
            // The Linux NFS client rejects every renameat2 flag. The name was seen absent (or
            // its directory was made by this call), and only this copy writes its
            // destination (the caller holds its guard, and no pod sees the destination before
            // the copy is complete), so a plain rename replaces at most a whole copy of the
            // same entry, as above. One round trip, where link and unlink took two.
            Err(Errno::EINVAL) => nix::fcntl::renameat(work, tmp, dir, name)
                .map_err(|e| io("put copy in place", path, e))?,
            Err(e) => return Err(io("put copy in place", path, e)),
        }
        stats.entries += 1;
        Ok(())
    }
}
