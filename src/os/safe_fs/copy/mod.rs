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
//!   an entry whose type changed between calls is replaced. A directory an earlier call
//!   finished is not walked again (see [`work`]); one that saw an entry change kind while it
//!   was walked is not logged as finished. After a restart of the machine the destination is
//!   emptied and the copy starts again (see [`work`]).
//! - A file larger than one call's budget is continued from its partial copy by later calls
//!   while its source is unchanged (see [`work`]).
//! - Every call makes progress (at least one entry, or one chunk of a file) before its
//!   deadline may stop it, so a copy retried often enough completes whatever its budget; and
//!   a call stopped in the middle of a file answers "not complete" at once.
//! - `complete` is returned only after the whole tree is copied and the destination's
//!   filesystem is synced: a caller that records "done" never records a copy a power cut loses.
//! - Regular files of one directory are copied by up to [`files::WORKERS`] threads at once:
//!   on NFS each file costs a dozen round trips, and waiting for them one file at a time left
//!   the network and the server idle (see [`files`]).
//! - Memory and descriptors are bounded: one open directory (and its destination) per level,
//!   at most `MAX_DEPTH` levels, plus the files the workers hold open; deeper trees are refused
//!   with `TooDeep`, never half-copied as if whole. Device nodes are skipped (a restore must
//!   not hand a pod a device it could not make itself) and counted.

mod attrs;
mod data;
mod entry;
mod files;
#[cfg(test)]
mod tests;
mod work;

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::dir::{Dir, OwningIter};
use nix::errno::Errno;
use nix::sys::stat::{FileStat, SFlag};
use serde::{Deserialize, Serialize};

use super::walk::open_leaf;
use super::{io, SafeFsError};
use crate::os::relpath::RelPath;
use entry::{Copy, Step};
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
    /// Directories an earlier call finished, not walked again.
    #[serde(default)]
    pub finished_before: u64,
}

impl CopyStats {
    pub fn bytes(&self) -> u64 {
        self.cloned_bytes + self.kernel_bytes + self.written_bytes
    }

    /// Whether anything new was copied (or counted as left out); walking past or skipping
    /// what earlier calls copied is not progress.
    fn progressed(&self) -> bool {
        self.entries + self.bytes() + self.skipped > 0
    }

    fn add(&mut self, other: &CopyStats) {
        self.entries += other.entries;
        self.cloned_bytes += other.cloned_bytes;
        self.kernel_bytes += other.kernel_bytes;
        self.written_bytes += other.written_bytes;
        self.skipped += other.skipped;
        self.finished_before += other.finished_before;
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
    /// copy's root, for work names and the log of finished directories.
    path: PathBuf,
    dst_path: PathBuf,
    rel: PathBuf,
    /// The inode readdir gave for this directory, which keys it in the log.
    ino: u64,
    /// The destination directory was made by this call, so it holds nothing not made by it:
    /// its entries need no look-up before they are copied.
    fresh: bool,
    /// An entry changed kind while this directory was walked: copied as it was first seen or
    /// left out, so the directory is walked again next time rather than logged as finished.
    unsettled: bool,
    /// Regular files seen and not yet copied, handed to the workers together.
    pending: Vec<CString>,
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
    let mut copy = Copy::new(src.st.st_dev, dst.st.st_dev, work, deadline);
    let mut stats = CopyStats::default();
    let root = frame(src.fd, src.st, dst.fd, [src.path, dst.path], PathBuf::new())?;
    let mut stack = vec![root];
    let progress = |stats: CopyStats, complete| Ok(CopyProgress { complete, stats });
    while let Some(top) = stack.last_mut() {
        // Every call copies something new before it may stop, however short its budget
        // (walking past what earlier calls copied is not progress): else a copy whose calls
        // all stopped there would never finish.
        if stats.progressed() && Instant::now() >= deadline {
            return progress(stats, false);
        }
        let next = match top.entries.next() {
            Some(entry) => Some(entry.map_err(|e| io("read directory", &top.path, e))?),
            None => None,
        };
        // The files gathered so far go to the workers before the walk leaves this level
        // (descends, or finishes it) and whenever a batch is full.
        let leaving = next
            .as_ref()
            .is_none_or(|e| e.file_type() == Some(nix::dir::Type::Directory));
        if !top.pending.is_empty() && (leaving || top.pending.len() >= files::BATCH) {
            let batch = copy.files(top, &mut stats)?;
            top.unsettled |= batch.changed;
            if !batch.complete {
                return progress(stats, false);
            }
        }
        let Some(entry) = next else {
            // Everything below is done: the directory gets its attributes, last.
            let Some(done) = stack.pop() else { break };
            copy.finish(&done)?;
            // A directory walked again must be reached: its parents are not finished either.
            if let (true, Some(parent)) = (done.unsettled, stack.last_mut()) {
                parent.unsettled = true;
            }
            continue;
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        match copy.entry(top, &entry, &mut stats)? {
            Step::Done => {}
            Step::Pending => top.pending.push(name.to_owned()),
            Step::Changed => top.unsettled = true,
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
    progress(stats, true)
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
        ino: 0,
        fresh: false,
        unsettled: false,
        pending: Vec::new(),
    })
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}
