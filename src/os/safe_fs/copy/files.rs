//! The regular files of one directory, copied by up to [`WORKERS`] threads at once.
//!
//! Why threads: on NFS a file's copy is a dozen round trips (open, create, COPY or CLONE, owner,
//! mode, times, rename...) and one file at a time leaves the server waiting on the client
//! between them. The workers share the call's deadline and its progress rule: once anything
//! was copied, no worker starts a file past the deadline; one stopped in the middle of a file
//! leaves the batch unfinished, and the walk answers "not complete" (the next call finds the
//! rest absent and copies it).
//!
//! Invariants: a file is opened `O_PATH` and checked to be a regular file on the source's
//! mount before it is opened for reading (an entry a pod swapped for a device node or a FIFO
//! since readdir is never opened: opening some devices has effects of its own), and is built
//! whole in the work directory before it is put in place.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{Mode, SFlag};

use super::super::walk::check_same_mount;
use super::super::{io, SafeFsError};
use super::{attrs, data, file_type, Copy, CopyStats, Frame};

/// Threads copying files at once. Each holds at most three descriptors and, where neither
/// reflink nor `copy_file_range` works, a 1 MiB buffer.
pub(super) const WORKERS: usize = 8;
/// Files gathered before they are handed out, so one directory of a million files is never
/// held in memory as names.
pub(super) const BATCH: usize = 256;

/// How a batch ended.
pub(super) struct Batch {
    /// Every file is in place (or gone from the source).
    pub(super) complete: bool,
    /// Some entry was no longer a regular file when opened.
    pub(super) changed: bool,
}

enum FileStep {
    Done,
    Changed,
    /// Stopped by the deadline in the middle of the file.
    Unfinished,
}

/// What a worker needs of the directory: its descriptors and paths (the walk's [`Frame`]
/// holds a directory stream, which threads must not share).
struct Dir<'a> {
    src: BorrowedFd<'a>,
    dst: BorrowedFd<'a>,
    path: &'a Path,
    rel: &'a Path,
}

#[derive(Default)]
struct Outcome {
    stats: CopyStats,
    stopped: bool,
    changed: bool,
    error: Option<SafeFsError>,
}

impl Copy {
    /// Copy the files pending in `top`.
    pub(super) fn files(
        &self,
        top: &mut Frame,
        stats: &mut CopyStats,
    ) -> Result<Batch, SafeFsError> {
        let names = std::mem::take(&mut top.pending);
        let dir = Dir {
            src: top.src.as_fd(),
            dst: top.dst.as_fd(),
            path: &top.path,
            rel: &top.rel,
        };
        let next = AtomicUsize::new(0);
        let progressed = AtomicBool::new(stats.progressed());
        let failed = AtomicBool::new(false);
        let work = || {
            let mut out = Outcome::default();
            loop {
                let late = progressed.load(Ordering::Relaxed) && Instant::now() >= self.deadline;
                if late || failed.load(Ordering::Relaxed) {
                    out.stopped = true;
                    break;
                }
                let Some(name) = names.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                match self.file(&dir, name, &mut out.stats) {
                    Ok(FileStep::Done) => progressed.store(true, Ordering::Relaxed),
                    Ok(FileStep::Changed) => out.changed = true,
                    Ok(FileStep::Unfinished) => {
                        progressed.store(true, Ordering::Relaxed);
                        out.stopped = true;
                        break;
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        out.error = Some(e);
                        break;
                    }
                }
            }
            out
        };
        let outcomes = run(WORKERS.min(names.len()), &work);
        let mut batch = Batch {
            complete: true,
            changed: false,
        };
        let mut error = None;
        for out in outcomes {
            stats.add(&out.stats);
            batch.complete &= !out.stopped;
            batch.changed |= out.changed;
            error = error.or(out.error);
        }
        match error {
            Some(e) => Err(e),
            None => Ok(batch),
        }
    }

    fn file(
        &self,
        dir: &Dir<'_>,
        name: &CStr,
        stats: &mut CopyStats,
    ) -> Result<FileStep, SafeFsError> {
        let os_name = OsStr::from_bytes(name.to_bytes());
        let path = dir.path.join(os_name);
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let handle = match openat(dir.src, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            // Removed since readdir: nothing to copy.
            Err(Errno::ENOENT) => return Ok(FileStep::Done),
            Err(e) => return Err(io("open", &path, e)),
        };
        let st = check_same_mount(handle.as_fd(), self.dev, dir.path, os_name)?;
        if file_type(&st) != SFlag::S_IFREG {
            return Ok(FileStep::Changed);
        }
        let reopen = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let read = OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let src = nix::fcntl::open(reopen.as_str(), read, Mode::empty())
            .map_err(|e| io("open", &path, e))?;
        let (work_name, dst, from) = self.work.file(&dir.rel.join(os_name), &st)?;
        let (size, deadline) = (st.st_size, self.deadline);
        let copied = data::copy(src.as_fd(), dst.as_fd(), size, from, deadline, stats)
            .map_err(|e| io("copy data of", &path, e))?;
        if !copied {
            return Ok(FileStep::Unfinished);
        }
        attrs::apply_fd(src.as_fd(), &st, dst.as_fd(), &path)?;
        drop(dst);
        self.place(work_name.as_c_str(), dir.dst, name, &path, stats)?;
        Ok(FileStep::Done)
    }
}

/// `work` on `workers` threads (on this one when one is enough, or when no thread can be
/// started), their outcomes gathered.
fn run(workers: usize, work: &(impl Fn() -> Outcome + Sync)) -> Vec<Outcome> {
    if workers <= 1 {
        return vec![work()];
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map_while(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
            .collect();
        if handles.is_empty() {
            return vec![work()];
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}
