//! The directory operations the driver performs, as data.
//!
//! An [`FsOp`] is a plain serialisable value so that the same code runs either on the blocking
//! thread pool (local disk) or inside a killable child process (`pvdir internal fs`, for paths on
//! an NFS export that may stop answering). [`execute`] is the only place that performs them.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::relpath::RelPath;
use super::safe_fs::{self, EnsureOutcome, RemoveOutcome, RenameOutcome, SafeFsError, SwapOutcome};
use super::FsStats;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// Capacity and inode counts of the filesystem holding `path`; of its project instead,
    /// where `path` is a directory in a project of its own (a local volume with a quota).
    Statfs { path: PathBuf },
    /// The same for an NFS mount at `path`. Fails with `NotNfs` when `path` is not on NFS: a
    /// mount detached after the caller saw it in the table leaves the local disk beneath, whose
    /// figures must not pass for the volume's.
    StatfsNfs { path: PathBuf },
    /// Create `base/rel` (and missing parents, marked as ours); chmod the leaf to `mode`.
    EnsureDir {
        base: PathBuf,
        rel: RelPath,
        mode: Option<u32>,
    },
    /// Delete `base/rel` without following symlinks or crossing mounts; then, if asked, remove
    /// the empty parents that the driver itself created.
    RemoveTree {
        base: PathBuf,
        rel: RelPath,
        prune_parents: bool,
    },
    /// Rename `base/rel` to `to` beside it, never over anything with content.
    RenameAside {
        base: PathBuf,
        rel: RelPath,
        to: String,
    },
    /// Read the state files `base/dir/<name>`; absent ones are `None`.
    ReadRecords {
        base: PathBuf,
        dir: RelPath,
        names: Vec<String>,
    },
    /// Replace `base/dir/name` atomically; with `exclusive`, keep an existing one instead.
    /// Synced to disk before the reply only if `durable` (see `safe_fs::write_record_with`).
    WriteRecord {
        base: PathBuf,
        dir: RelPath,
        name: String,
        contents: Vec<u8>,
        exclusive: bool,
        durable: bool,
    },
    /// Replace `base/dir/name` by `new` (remove it, if `None`) only while it holds exactly
    /// `expected`.
    SwapRecord {
        base: PathBuf,
        dir: RelPath,
        name: String,
        expected: String,
        new: Option<String>,
    },
    /// Remove `base/dir/name`; absent is not an error.
    RemoveRecord {
        base: PathBuf,
        dir: RelPath,
        name: String,
    },
    /// Names in `base/dir`, sorted; an absent directory is empty.
    ListRecords { base: PathBuf, dir: RelPath },
    /// Deal with the scratch files (temporaries, tombs) in `base/dir` of the writers allowed
    /// (see `safe_fs::sweep_scratch`).
    SweepScratch {
        base: PathBuf,
        dir: RelPath,
        writers: safe_fs::Writers,
    },
    /// Copy a tree (see `safe_fs::copy_tree`) for at most `budget_ms`, then report how far
    /// it got; a later call with the same plan continues.
    CopyTree {
        plan: safe_fs::CopyPlan,
        budget_ms: u64,
    },
    /// Whether `base/rel` holds anything; `None` when it does not exist.
    HasEntries { base: PathBuf, rel: RelPath },
    /// Create a publish target directory (the CO creates its parent).
    MakeTarget { path: PathBuf },
    /// Remove an empty publish target directory; absent is not an error.
    RemoveTarget { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    Stats(FsStats),
    Ensured(EnsureOutcome),
    Removed(RemoveOutcome),
    Renamed(RenameOutcome),
    /// Record contents, which are UTF-8 JSON (a record that is not is refused when read).
    Records(Vec<Option<String>>),
    /// Whether a record write stored it (false: exclusive and one existed).
    Written(bool),
    Swapped(SwapOutcome),
    /// Whether a directory has entries (`None`: it does not exist).
    Entries(Option<bool>),
    Names(Vec<String>),
    Swept(safe_fs::Swept),
    Copied(safe_fs::CopyProgress),
    Done,
}

impl FsOp {
    /// The path the operation works at or below.
    pub fn path(&self) -> &Path {
        match self {
            FsOp::Statfs { path }
            | FsOp::StatfsNfs { path }
            | FsOp::MakeTarget { path }
            | FsOp::RemoveTarget { path } => path,
            FsOp::EnsureDir { base, .. }
            | FsOp::RemoveTree { base, .. }
            | FsOp::RenameAside { base, .. }
            | FsOp::ReadRecords { base, .. }
            | FsOp::WriteRecord { base, .. }
            | FsOp::SwapRecord { base, .. }
            | FsOp::RemoveRecord { base, .. }
            | FsOp::ListRecords { base, .. }
            | FsOp::SweepScratch { base, .. }
            | FsOp::HasEntries { base, .. } => base,
            FsOp::CopyTree { plan, .. } => &plan.dst_base,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            FsOp::Statfs { .. } => "statfs",
            FsOp::StatfsNfs { .. } => "statfs-nfs",
            FsOp::EnsureDir { .. } => "ensure-dir",
            FsOp::RemoveTree { .. } => "remove-tree",
            FsOp::RenameAside { .. } => "rename-aside",
            FsOp::ReadRecords { .. } => "read-records",
            FsOp::WriteRecord { .. } => "write-record",
            FsOp::SwapRecord { .. } => "swap-record",
            FsOp::RemoveRecord { .. } => "remove-record",
            FsOp::ListRecords { .. } => "list-records",
            FsOp::SweepScratch { .. } => "sweep-scratch",
            FsOp::HasEntries { .. } => "has-entries",
            FsOp::CopyTree { .. } => "copy-tree",
            FsOp::MakeTarget { .. } => "make-target",
            FsOp::RemoveTarget { .. } => "remove-target",
        }
    }
}

fn io(step: &'static str, path: &Path, e: std::io::Error) -> SafeFsError {
    SafeFsError::Io {
        step: step.into(),
        path: path.to_path_buf(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Perform one operation, blocking the calling thread.
pub fn execute(op: &FsOp) -> Result<FsReply, SafeFsError> {
    match op {
        FsOp::Statfs { path } => statfs(path)
            .map(|s| with_project_usage(path, s))
            .map(FsReply::Stats),
        FsOp::StatfsNfs { path } => statfs_nfs(path).map(FsReply::Stats),
        FsOp::EnsureDir { base, rel, mode } => {
            safe_fs::ensure_dir(base, rel, *mode).map(FsReply::Ensured)
        }
        FsOp::RemoveTree {
            base,
            rel,
            prune_parents,
        } => {
            let outcome = safe_fs::remove_tree(base, rel)?;
            if *prune_parents {
                safe_fs::prune_owned_parents(base, rel)?;
            }
            Ok(FsReply::Removed(outcome))
        }
        FsOp::RenameAside { base, rel, to } => {
            safe_fs::rename_aside(base, rel, to).map(FsReply::Renamed)
        }
        FsOp::ReadRecords { base, dir, names } => {
            safe_fs::read_records(base, dir, names).map(FsReply::Records)
        }
        FsOp::WriteRecord {
            base,
            dir,
            name,
            contents,
            exclusive,
            durable,
        } => safe_fs::write_record_with(base, dir, name, contents, *exclusive, *durable)
            .map(FsReply::Written),
        FsOp::SwapRecord {
            base,
            dir,
            name,
            expected,
            new,
        } => safe_fs::swap_record(base, dir, name, expected, new.as_deref()).map(FsReply::Swapped),
        FsOp::RemoveRecord { base, dir, name } => {
            safe_fs::remove_record(base, dir, name).map(|()| FsReply::Done)
        }
        FsOp::ListRecords { base, dir } => safe_fs::list_records(base, dir).map(FsReply::Names),
        FsOp::SweepScratch { base, dir, writers } => {
            safe_fs::sweep_scratch(base, dir, *writers).map(FsReply::Swept)
        }
        FsOp::HasEntries { base, rel } => safe_fs::has_entries(base, rel).map(FsReply::Entries),
        FsOp::CopyTree { plan, budget_ms } => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(*budget_ms);
            safe_fs::copy_tree(plan, deadline).map(FsReply::Copied)
        }
        FsOp::MakeTarget { path } => {
            match fs::create_dir(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // symlink_metadata: a target that is a symlink is not a directory we made.
                    let meta =
                        fs::symlink_metadata(path).map_err(|e| io("stat target", path, e))?;
                    if !meta.is_dir() {
                        return Err(SafeFsError::NotADirectory {
                            path: path.to_path_buf(),
                        });
                    }
                }
                // CSI: "The CO SHALL ensure that the parent directory of this path exists";
                // pvdir makes the target itself, never its parents.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(SafeFsError::NoParent {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => return Err(io("create target", path, e)),
            }
            Ok(FsReply::Done)
        }
        FsOp::RemoveTarget { path } => match fs::remove_dir(path) {
            Ok(()) => Ok(FsReply::Removed(RemoveOutcome::Removed)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(FsReply::Removed(RemoveOutcome::AlreadyGone))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Err(SafeFsError::NotEmpty {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(io("remove target", path, e)),
        },
    }
}

/// The type is checked after the figures are read: a detach before the check is caught, and
/// one after it came too late to change what was read.
fn statfs_nfs(path: &Path) -> Result<FsStats, SafeFsError> {
    let stats = statfs(path)?;
    let fs = nix::sys::statfs::statfs(path).map_err(|e| {
        let errno = safe_fs::raw_errno(e); // before the allocation below
        SafeFsError::Io {
            step: "statfs".into(),
            path: path.to_path_buf(),
            errno,
        }
    })?;
    if fs.filesystem_type() != nix::sys::statfs::NFS_SUPER_MAGIC {
        return Err(SafeFsError::NotNfs {
            path: path.to_path_buf(),
        });
    }
    Ok(stats)
}

/// A volume directory in its own project reports the project's usage and limit, read from the
/// quota (no tree walk): its own bytes and files, not the whole disk's. XFS and ext4 already
/// answer statfs on such a directory with the limit as total; the used inodes they report are
/// the filesystem's unless an inode limit is set, so both figures are taken from the quota.
fn with_project_usage(path: &Path, fs: FsStats) -> FsStats {
    let Some(project) = super::quota::volume_usage(path) else {
        return fs;
    };
    let mut stats = FsStats {
        used_bytes: project.bytes,
        used_inodes: project.inodes,
        free_inodes: fs.free_inodes,
        ..fs
    };
    if project.limit_bytes > 0 {
        let left = project.limit_bytes.saturating_sub(project.bytes);
        stats.total_bytes = project.limit_bytes;
        stats.available_bytes = left.min(fs.available_bytes);
    }
    stats
}

fn statfs(path: &Path) -> Result<FsStats, SafeFsError> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| {
        let errno = safe_fs::raw_errno(e); // before the allocation below
        SafeFsError::Io {
            step: "statfs".into(),
            path: path.to_path_buf(),
            errno,
        }
    })?;
    let frsize = s.fragment_size();
    let blocks = s.blocks();
    let total = blocks.saturating_mul(frsize);
    let free = s.blocks_free().saturating_mul(frsize);
    let files = s.files();
    let files_free = s.files_free();
    Ok(FsStats {
        total_bytes: total,
        available_bytes: s.blocks_available().saturating_mul(frsize),
        used_bytes: total.saturating_sub(free),
        total_inodes: files,
        free_inodes: files_free,
        used_inodes: files.saturating_sub(files_free),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_whose_parent_is_missing_is_refused_and_no_parent_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("pod").join("mount");
        assert!(matches!(
            execute(&FsOp::MakeTarget { path: t }),
            Err(SafeFsError::NoParent { .. })
        ));
        assert!(!dir.path().join("pod").exists());
    }

    #[test]
    fn targets_are_made_and_removed_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        execute(&FsOp::MakeTarget { path: t.clone() }).unwrap();
        execute(&FsOp::MakeTarget { path: t.clone() }).unwrap();
        std::fs::write(t.join("f"), b"").unwrap();
        assert!(matches!(
            execute(&FsOp::RemoveTarget { path: t.clone() }),
            Err(SafeFsError::NotEmpty { .. })
        ));
        std::fs::remove_file(t.join("f")).unwrap();
        assert_eq!(
            execute(&FsOp::RemoveTarget { path: t.clone() }).unwrap(),
            FsReply::Removed(RemoveOutcome::Removed)
        );
        assert_eq!(
            execute(&FsOp::RemoveTarget { path: t }).unwrap(),
            FsReply::Removed(RemoveOutcome::AlreadyGone)
        );
    }

    #[test]
    fn statfs_nfs_refuses_a_path_that_is_not_on_nfs() {
        let e = execute(&FsOp::StatfsNfs { path: "/".into() }).unwrap_err();
        assert!(matches!(e, SafeFsError::NotNfs { .. }), "{e:?}");
    }

    #[test]
    fn statfs_reports_sane_numbers() {
        let FsReply::Stats(s) = execute(&FsOp::Statfs { path: "/".into() }).unwrap() else {
            panic!("not stats")
        };
        assert!(s.total_bytes >= s.used_bytes);
        assert!(s.total_bytes >= s.available_bytes);
    }
}
