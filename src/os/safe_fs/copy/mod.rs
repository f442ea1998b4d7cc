//! `copy_tree`: a volume's tree copied into a snapshot or a new volume, resumable, within a
//! deadline, the cheapest way the filesystem allows (see [`data`]).
//!
//! Invariants, each attacked by a test:
//! - The source is read as `remove_tree` deletes: every component is opened relative to its
//!   parent with `O_NOFOLLOW`, a symlink is copied as a symlink (never followed), and a
//!   directory or file on another mount (another device, or a bind mount's root) stops the copy
//!   with `CrossesMount`. A file is opened `O_PATH` first and read only once it is seen to be a
//!   regular file, so an entry swapped for a device or FIFO meanwhile is never opened. Nothing
//!   is written outside the destination and work directories.
//! - What the destination shows is always complete: every non-directory is built in the work
//!   directory (data, owner, mode, xattrs, times) and renamed into place only when whole. A
//!   directory is made at once (so a resumed copy descends into it) and gets its attributes
//!   when everything in it is done. So a copy cut short by its deadline, a killed helper or a
//!   crash resumes by walking again: what exists in the destination is kept, the rest copied;
//!   an entry whose type changed between calls is replaced. After a restart of the machine the
//!   destination is emptied and the copy starts again (see [`work`]).
//! - A file larger than one call's budget is continued from its partial copy by later calls
//!   while its source is unchanged (see [`work`]).
//! - Every call makes progress (at least one entry, or one chunk of a file) before its
//!   deadline may stop it, so a copy retried often enough completes whatever its budget; and
//!   a call stopped in the middle of a file answers "not complete" at once.
//! - `complete` is returned only after the whole tree is copied and the destination's
//!   filesystem is synced: a caller that records "done" never records a copy a power cut loses.
//! - Memory and descriptors are bounded: one open directory (and its destination) per level,
//!   at most `MAX_DEPTH` levels; deeper trees are refused with `TooDeep`, never half-copied as
//!   if whole. Device nodes are skipped (a restore must not hand a pod a device it could not
//!   make itself) and counted.

mod attrs;
mod data;
#[cfg(test)]
mod tests;
mod work;

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::dir::{Dir, OwningIter};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use serde::{Deserialize, Serialize};

use super::walk::{check_same_mount, dir_flags, open_dir_at, open_leaf};
use super::{io, SafeFsError};
use crate::os::relpath::RelPath;
use work::Work;

/// Levels of directories held open at once (two descriptors each, plus a duplicate).
pub const MAX_DEPTH: usize = 128;

/// Where a copy goes and what it may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyPlan {
    pub src_base: PathBuf,
    pub src: RelPath,
    /// Must exist; receives the source's contents, and at the end the source root's attributes.
    pub dst_base: PathBuf,
    pub dst: RelPath,
    /// Must exist, on the destination's filesystem (and, under a quota, in its project);
    /// emptied when the copy completes.
    pub work_base: PathBuf,
    pub work: RelPath,
}

/// How much was copied, and how. Bytes are counted by the way they were copied: shared by a
/// reflink (no data written), copied by the kernel (`copy_file_range`, which NFS 4.2 turns
/// into a copy on the server), or read and written here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStats {
    pub entries: u64,
    pub cloned_bytes: u64,
    pub kernel_bytes: u64,
    pub written_bytes: u64,
    /// Device nodes left out.
    pub skipped: u64,
}

impl CopyStats {
    pub fn bytes(&self) -> u64 {
        self.cloned_bytes + self.kernel_bytes + self.written_bytes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// Every entry is in place and synced; otherwise the deadline came first.
    pub complete: bool,
    pub stats: CopyStats,
}

/// One directory level being copied.
struct Frame {
    entries: OwningIter,
    /// The source directory (a duplicate of the iterator's descriptor, for `*at` calls).
    src: OwnedFd,
    src_st: FileStat,
    dst: OwnedFd,
    /// The source path, for errors; the destination's, for errors; and the path below the
    /// copy's root, for work names.
    path: PathBuf,
    dst_path: PathBuf,
    rel: PathBuf,
}

/// Copy `plan.src` into `plan.dst` until done or `deadline`; see the module header.
pub fn copy_tree(plan: &CopyPlan, deadline: Instant) -> Result<CopyProgress, SafeFsError> {
    let missing = |base: &Path, rel: &RelPath| io("open", &base.join(rel.as_str()), Errno::ENOENT);
    let src =
        open_leaf(&plan.src_base, &plan.src)?.ok_or_else(|| missing(&plan.src_base, &plan.src))?;
    let work = open_leaf(&plan.work_base, &plan.work)?
        .ok_or_else(|| missing(&plan.work_base, &plan.work))?;
    let (work, fresh) = Work::open(work.fd, work.path)?;
    if fresh {
        super::remove::empty_dir(&plan.dst_base, &plan.dst)?;
    }
    let dst =
        open_leaf(&plan.dst_base, &plan.dst)?.ok_or_else(|| missing(&plan.dst_base, &plan.dst))?;
    let mut copy = Copy {
        dev: src.st.st_dev,
        dst_dev: dst.st.st_dev,
        work,
        stats: CopyStats::default(),
        deadline,
    };
    let root = frame(src.fd, src.st, dst.fd, [src.path, dst.path], PathBuf::new())?;
    let mut stack = vec![root];
    while let Some(top) = stack.last_mut() {
        // Every call copies something new before it may stop, however short its budget
        // (walking past what earlier calls copied is not progress): else a copy whose calls
        // all stopped there would never finish.
        if copy.stats != CopyStats::default() && Instant::now() >= deadline {
            return Ok(copy.progress(false));
        }
        let Some(entry) = top.entries.next() else {
            // Everything below is done: the directory gets its attributes, last.
            let Some(done) = stack.pop() else { break };
            attrs::apply_fd(done.src.as_fd(), &done.src_st, done.dst.as_fd(), &done.path)?;
            continue;
        };
        let entry = entry.map_err(|e| io("read directory", &top.path, e))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        match copy.entry(top, name)? {
            Step::Done => {}
            // Stopped by the deadline in the middle of a file: the next call continues it.
            Step::Unfinished => return Ok(copy.progress(false)),
            Step::Descend(child) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SafeFsError::TooDeep {
                        path: child.path,
                        limit: MAX_DEPTH,
                    });
                }
                stack.push(*child);
            }
        }
    }
    copy.work.clear()?;
    // `complete` promises a copy that survives a power cut.
    nix::unistd::syncfs(dst.parent.as_fd()).map_err(|e| io("sync", &plan.dst_base, e))?;
    Ok(copy.progress(true))
}

fn frame(
    src: OwnedFd,
    src_st: FileStat,
    dst: OwnedFd,
    [path, dst_path]: [PathBuf; 2],
    rel: PathBuf,
) -> Result<Frame, SafeFsError> {
    let dup = src.try_clone().map_err(|e| {
        io(
            "duplicate descriptor",
            &path,
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)),
        )
    })?;
    let dir = Dir::from_fd(dup).map_err(|e| io("read directory", &path, e))?;
    Ok(Frame {
        entries: dir.into_iter(),
        src,
        src_st,
        dst,
        path,
        dst_path,
        rel,
    })
}

/// What became of one entry.
enum Step {
    Done,
    Descend(Box<Frame>),
    /// A file's copy was cut by the deadline.
    Unfinished,
}

struct Copy {
    dev: u64,
    dst_dev: u64,
    work: Work,
    stats: CopyStats,
    deadline: Instant,
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

impl Copy {
    fn progress(&self, complete: bool) -> CopyProgress {
        CopyProgress {
            complete,
            stats: self.stats,
        }
    }

    /// Copy entry `name` of `top`'s directory.
    fn entry(&mut self, top: &Frame, name: &CStr) -> Result<Step, SafeFsError> {
        let os_name = OsStr::from_bytes(name.to_bytes());
        let path = top.path.join(os_name);
        let st = match fstatat(top.src.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since readdir: nothing to copy.
            Err(Errno::ENOENT) => return Ok(Step::Done),
            Err(e) => return Err(io("stat", &path, e)),
        };
        let kind = file_type(&st);
        let existing = match fstatat(top.dst.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(d) => Some(file_type(&d)),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(io("stat", &path, e)),
        };
        // An entry in place whose kind changed since (the source changed between calls) is
        // replaced; one of the same kind was renamed into place whole by an earlier call.
        match (kind == SFlag::S_IFDIR, existing) {
            (true, Some(SFlag::S_IFDIR)) | (_, None) => {}
            (false, Some(SFlag::S_IFDIR)) => {
                let dst = top.dst.as_fd();
                super::remove::remove_subdir_at(dst, name, &top.dst_path, self.dst_dev)?;
            }
            (true, Some(_)) => {
                match nix::unistd::unlinkat(
                    top.dst.as_fd(),
                    name,
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                ) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(io("replace", &path, e)),
                }
            }
            (false, Some(_)) => return Ok(Step::Done),
        }
        match kind {
            SFlag::S_IFDIR => self
                .directory(top, name, &path)
                .map(|f| Step::Descend(Box::new(f))),
            SFlag::S_IFREG => self.file(top, name, &path),
            SFlag::S_IFLNK => self.symlink(top, name, &st, &path).map(|()| Step::Done),
            SFlag::S_IFIFO | SFlag::S_IFSOCK => {
                self.special(top, name, &st, &path).map(|()| Step::Done)
            }
            _ => {
                self.stats.skipped += 1;
                Ok(Step::Done)
            }
        }
    }

    fn directory(&mut self, top: &Frame, name: &CStr, path: &Path) -> Result<Frame, SafeFsError> {
        let os_name = OsStr::from_bytes(name.to_bytes());
        let src = open_dir_at(top.src.as_fd(), &top.path, os_name)?
            .ok_or_else(|| io("open directory", path, Errno::ENOENT))?;
        let src_st = check_same_mount(src.as_fd(), self.dev, &top.path, os_name)?;
        match mkdirat(top.dst.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => self.stats.entries += 1,
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(io("make directory", path, e)),
        }
        let dst = openat(top.dst.as_fd(), name, dir_flags(), Mode::empty())
            .map_err(|e| io("open copied directory", path, e))?;
        let paths = [path.to_path_buf(), top.dst_path.join(os_name)];
        frame(src, src_st, dst, paths, top.rel.join(os_name))
    }

    /// The file is opened `O_PATH` and checked before it is opened for reading: an entry a
    /// pod swapped for a device node or a FIFO since it was looked at is never opened (opening
    /// some devices has effects of its own), and is left for the next walk to see as it is.
    fn file(&mut self, top: &Frame, name: &CStr, path: &Path) -> Result<Step, SafeFsError> {
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let handle = match openat(top.src.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Step::Done),
            Err(e) => return Err(io("open", path, e)),
        };
        let os_name = OsStr::from_bytes(name.to_bytes());
        let st = check_same_mount(handle.as_fd(), self.dev, &top.path, os_name)?;
        if file_type(&st) != SFlag::S_IFREG {
            return Ok(Step::Done);
        }
        let reopen = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let read = OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let src = nix::fcntl::open(reopen.as_str(), read, Mode::empty())
            .map_err(|e| io("open", path, e))?;
        let (work_name, dst) = self.work.file(&top.rel.join(os_name), &st)?;
        let from = fstat(dst.as_fd())
            .map_err(|e| io("stat work file", &self.work.path, e))?
            .st_size;
        let copied = data::copy(
            src.as_fd(),
            dst.as_fd(),
            st.st_size,
            from,
            self.deadline,
            &mut self.stats,
        )
        .map_err(|e| io("copy data of", path, e))?;
        if !copied {
            return Ok(Step::Unfinished);
        }
        attrs::apply_fd(src.as_fd(), &st, dst.as_fd(), path)?;
        drop(dst);
        self.place(work_name.as_c_str(), top.dst.as_fd(), name, path)?;
        Ok(Step::Done)
    }

    fn symlink(
        &mut self,
        top: &Frame,
        name: &CStr,
        st: &FileStat,
        path: &Path,
    ) -> Result<(), SafeFsError> {
        let target = match nix::fcntl::readlinkat(top.src.as_fd(), name) {
            Ok(t) => t,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(io("read link", path, e)),
        };
        let make =
            |dir: BorrowedFd<'_>, tmp: &CStr| nix::unistd::symlinkat(target.as_os_str(), dir, tmp);
        self.aside(top, name, st, path, make, false)
    }

    /// A FIFO or socket node: a new node of the same kind (nothing listens on a copied socket).
    fn special(
        &mut self,
        top: &Frame,
        name: &CStr,
        st: &FileStat,
        path: &Path,
    ) -> Result<(), SafeFsError> {
        let make = |dir: BorrowedFd<'_>, tmp: &CStr| {
            let mode = Mode::from_bits_truncate(0o600);
            nix::sys::stat::mknodat(dir, tmp, file_type(st), mode, 0)
        };
        self.aside(top, name, st, path, make, true)
    }

    /// Make an entry in the work directory with `make`, give it `st`'s owner and times (and
    /// mode, with `chmod`), and put it in place.
    fn aside(
        &mut self,
        top: &Frame,
        name: &CStr,
        st: &FileStat,
        path: &Path,
        make: impl FnOnce(BorrowedFd<'_>, &CStr) -> Result<(), Errno>,
        chmod: bool,
    ) -> Result<(), SafeFsError> {
        let tmp = self.work.fresh_name();
        make(self.work.dir(), &tmp).map_err(|e| io("make", path, e))?;
        attrs::apply_at(self.work.dir(), &tmp, st, path, chmod)?;
        self.place(tmp.as_c_str(), top.dst.as_fd(), name, path)
    }

    /// Rename a finished entry into place; never over an existing one.
    fn place(
        &mut self,
        tmp: &CStr,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &Path,
    ) -> Result<(), SafeFsError> {
        let work = self.work.dir();
        match nix::fcntl::renameat2(
            work,
            tmp,
            dir,
            name,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            // The Linux NFS client rejects every renameat2 flag. link(2) is just as exclusive
            // (EEXIST, never a replacement) and links a symlink itself, not its target; the
            // work name then goes. A crash in between leaves only a name in the work directory.
            Err(Errno::EINVAL) => {
                nix::unistd::linkat(work, tmp, dir, name, AtFlags::empty())
                    .map_err(|e| io("put copy in place", path, e))?;
                nix::unistd::unlinkat(work, tmp, nix::unistd::UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| io("remove work name", path, e))?;
            }
            Err(e) => return Err(io("put copy in place", path, e)),
        }
        self.stats.entries += 1;
        Ok(())
    }
}
