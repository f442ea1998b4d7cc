//! `copy_tree`: a volume's tree copied into a snapshot or a new volume, resumable, within a
//! deadline, the cheapest way the filesystem allows (see [`data`]).
//!
//! Invariants, each attacked by a test:
//! - The source is read as `remove_tree` deletes: every component is opened relative to its
//!   parent with `O_NOFOLLOW`, a symlink is copied as a symlink (never followed), and a
//!   directory or file on another mount (another device, or a bind mount's root) stops the copy
//!   with `CrossesMount`. Nothing is written outside the destination and work directories.
//! - What the destination shows is always complete: every non-directory is built in the work
//!   directory (data, owner, mode, xattrs, times) and renamed into place only when whole. A
//!   directory is made at once (so a resumed copy descends into it) and gets its attributes
//!   when everything in it is done. So a copy cut short by its deadline, a killed helper or a
//!   crash resumes by walking again: what exists in the destination is kept, the rest copied.
//! - A file's partial copy in the work directory is named after its path and the source's
//!   inode, size and mtime: a later call continues it while the source is unchanged, so a file
//!   larger than one call's budget still gets copied; a changed source starts afresh.
//! - Every call makes progress (at least one entry, or one chunk of a file), so a copy
//!   retried often enough completes whatever its budget.
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

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::dir::{Dir, OwningIter};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::walk::{check_same_mount, dir_flags, open_dir_at, open_leaf};
use super::{io, SafeFsError};
use crate::os::relpath::RelPath;

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
    /// The source path, for errors; and the path below the copy's root, for work names.
    path: PathBuf,
    rel: PathBuf,
}

/// Copy `plan.src` into `plan.dst` until done or `deadline`; see the module header.
pub fn copy_tree(plan: &CopyPlan, deadline: Instant) -> Result<CopyProgress, SafeFsError> {
    let missing = |base: &Path, rel: &RelPath| io("open", &base.join(rel.as_str()), Errno::ENOENT);
    let src =
        open_leaf(&plan.src_base, &plan.src)?.ok_or_else(|| missing(&plan.src_base, &plan.src))?;
    let dst =
        open_leaf(&plan.dst_base, &plan.dst)?.ok_or_else(|| missing(&plan.dst_base, &plan.dst))?;
    let work = open_leaf(&plan.work_base, &plan.work)?
        .ok_or_else(|| missing(&plan.work_base, &plan.work))?;
    let mut copy = Copy {
        dev: src.st.st_dev,
        work: work.fd,
        work_path: work.path,
        stats: CopyStats::default(),
        deadline,
    };
    let mut stack = vec![frame(src.fd, src.st, dst.fd, src.path, PathBuf::new())?];
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
        if let Some(child) = copy.entry(top, name)? {
            if stack.len() >= MAX_DEPTH {
                return Err(SafeFsError::TooDeep {
                    path: child.path,
                    limit: MAX_DEPTH,
                });
            }
            stack.push(child);
        }
    }
    copy.clear_work()?;
    // `complete` promises a copy that survives a power cut.
    nix::unistd::syncfs(dst.parent.as_fd()).map_err(|e| io("sync", &plan.dst_base, e))?;
    Ok(copy.progress(true))
}

fn frame(
    src: OwnedFd,
    src_st: FileStat,
    dst: OwnedFd,
    path: PathBuf,
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
        rel,
    })
}

struct Copy {
    dev: u64,
    work: OwnedFd,
    work_path: PathBuf,
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

    /// Copy entry `name` of `top`'s directory; a directory to descend into is returned.
    fn entry(&mut self, top: &Frame, name: &CStr) -> Result<Option<Frame>, SafeFsError> {
        let os_name = OsStr::from_bytes(name.to_bytes());
        let path = top.path.join(os_name);
        let st = match fstatat(top.src.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since readdir: nothing to copy.
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io("stat", &path, e)),
        };
        let kind = file_type(&st);
        let existing = match fstatat(top.dst.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(d) => Some(file_type(&d)),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(io("stat", &path, e)),
        };
        match (kind, existing) {
            (SFlag::S_IFDIR, Some(SFlag::S_IFDIR)) | (SFlag::S_IFDIR, None) => {
                self.directory(top, name, &path).map(Some)
            }
            // Renamed into place whole by an earlier call.
            (_, Some(d)) if d != SFlag::S_IFDIR => Ok(None),
            (_, Some(_)) => Err(io("copy over a directory", &path, Errno::EISDIR)),
            (SFlag::S_IFREG, None) => self.file(top, name, &path).map(|()| None),
            (SFlag::S_IFLNK, None) => self.symlink(top, name, &st, &path).map(|()| None),
            (SFlag::S_IFIFO | SFlag::S_IFSOCK, None) => {
                self.special(top, name, &st, &path).map(|()| None)
            }
            _ => {
                self.stats.skipped += 1;
                Ok(None)
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
        frame(src, src_st, dst, path.to_path_buf(), top.rel.join(os_name))
    }

    /// The work file of `rel`'s copy, named so that only an unchanged source continues it.
    fn work_name(rel: &Path, st: &FileStat) -> CString {
        let mut h = Sha256::new();
        h.update(rel.as_os_str().as_bytes());
        for n in [st.st_ino, st.st_size as u64, st.st_mtime as u64] {
            h.update(n.to_le_bytes());
        }
        h.update((st.st_mtime_nsec as u64).to_le_bytes());
        let name = format!("f-{}", &hex::encode(h.finalize())[..40]);
        CString::new(name).unwrap_or_default()
    }

    fn file(&mut self, top: &Frame, name: &CStr, path: &Path) -> Result<(), SafeFsError> {
        // O_NONBLOCK: should the entry have become a FIFO since it was looked at, opening it
        // must not wait for a writer; it is then refused below as not a regular file.
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let src = match openat(top.src.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(io("open", path, e)),
        };
        let os_name = OsStr::from_bytes(name.to_bytes());
        let st = check_same_mount(src.as_fd(), self.dev, &top.path, os_name)?;
        if file_type(&st) != SFlag::S_IFREG {
            return Err(io("copy (changed while copying)", path, Errno::EAGAIN));
        }
        let work_name = Self::work_name(&top.rel.join(os_name), &st);
        let work_flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let dst = openat(
            self.work.as_fd(),
            work_name.as_c_str(),
            work_flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io("create work file", &self.work_path, e))?;
        let from = fstat(dst.as_fd())
            .map_err(|e| io("stat work file", &self.work_path, e))?
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
            return Ok(()); // the deadline: continued by the next call
        }
        attrs::apply_fd(src.as_fd(), &st, dst.as_fd(), path)?;
        drop(dst);
        self.place(work_name.as_c_str(), top.dst.as_fd(), name, path)
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
        let tmp = self.fresh_work_name(path)?;
        nix::unistd::symlinkat(target.as_os_str(), self.work.as_fd(), tmp.as_c_str())
            .map_err(|e| io("make symlink", path, e))?;
        attrs::apply_at(self.work.as_fd(), &tmp, st, path, false)?;
        self.place(tmp.as_c_str(), top.dst.as_fd(), name, path)
    }

    fn special(
        &mut self,
        top: &Frame,
        name: &CStr,
        st: &FileStat,
        path: &Path,
    ) -> Result<(), SafeFsError> {
        let tmp = self.fresh_work_name(path)?;
        let kind = file_type(st);
        nix::sys::stat::mknodat(
            self.work.as_fd(),
            tmp.as_c_str(),
            kind,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .map_err(|e| io("make node", path, e))?;
        attrs::apply_at(self.work.as_fd(), &tmp, st, path, true)?;
        self.place(tmp.as_c_str(), top.dst.as_fd(), name, path)
    }

    /// A name in the work directory no earlier call left behind.
    fn fresh_work_name(&self, path: &Path) -> Result<CString, SafeFsError> {
        for n in 0..64u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let name = CString::new(format!("n-{nanos:x}-{n}")).unwrap_or_default();
            match fstatat(
                self.work.as_fd(),
                name.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Err(Errno::ENOENT) => return Ok(name),
                Ok(_) => continue,
                Err(e) => return Err(io("stat work entry", path, e)),
            }
        }
        Err(io("name a work entry", path, Errno::EEXIST))
    }

    /// Rename a finished entry into place; never over an existing one.
    fn place(
        &mut self,
        tmp: &CStr,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &Path,
    ) -> Result<(), SafeFsError> {
        nix::fcntl::renameat2(
            self.work.as_fd(),
            tmp,
            dir,
            name,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| io("put copy in place", path, e))?;
        self.stats.entries += 1;
        Ok(())
    }

    /// What is left in the (flat) work directory: partial copies of files that changed.
    fn clear_work(&self) -> Result<(), SafeFsError> {
        let dup = self
            .work
            .try_clone()
            .map_err(|_| io("read directory", &self.work_path, Errno::EBADF))?;
        let mut dir = Dir::from_fd(dup).map_err(|e| io("read directory", &self.work_path, e))?;
        let names: Vec<CString> = dir
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_c_str() != c"." && n.as_c_str() != c"..")
            .collect();
        for n in names {
            match nix::unistd::unlinkat(
                self.work.as_fd(),
                n.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io("clear work directory", &self.work_path, e)),
            }
        }
        Ok(())
    }
}
