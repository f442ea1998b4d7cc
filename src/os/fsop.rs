//! The directory operations the driver performs, as data.
//!
//! An [`FsOp`] is a plain serialisable value so that the same code runs either on the blocking
//! thread pool (local disk) or inside a killable child process (`pvdir internal fs`, for paths on
//! an NFS export that may stop answering). [`execute`] is the only place that performs them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::relpath::RelPath;
use super::safe_fs::{self, ArchiveOutcome, EnsureOutcome, RemoveOutcome, SafeFsError};
use super::FsStats;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// Capacity and inode counts of the filesystem holding `path`.
    Statfs { path: PathBuf },
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
    /// Rename `base/rel` to `archived_name` beside it.
    Archive {
        base: PathBuf,
        rel: RelPath,
        archived_name: String,
    },
    /// Read the small state file `dir/name`; absent is not an error.
    ReadRecord { dir: PathBuf, name: String },
    /// Replace `dir/name` atomically (write temp, fsync, rename, fsync dir).
    WriteRecord {
        dir: PathBuf,
        name: String,
        contents: Vec<u8>,
    },
    /// Remove `dir/name`; absent is not an error.
    RemoveRecord { dir: PathBuf, name: String },
    /// Names in `dir`, sorted; absent dir is empty.
    ListDir { dir: PathBuf },
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
    Archived(ArchiveOutcome),
    Record(Option<Vec<u8>>),
    Names(Vec<String>),
    Done,
}

impl FsOp {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            FsOp::Statfs { .. } => "statfs",
            FsOp::EnsureDir { .. } => "ensure-dir",
            FsOp::RemoveTree { .. } => "remove-tree",
            FsOp::Archive { .. } => "archive",
            FsOp::ReadRecord { .. } => "read-record",
            FsOp::WriteRecord { .. } => "write-record",
            FsOp::RemoveRecord { .. } => "remove-record",
            FsOp::ListDir { .. } => "list-dir",
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

/// Record names are single path segments chosen by the driver; refuse anything else so a record
/// operation can never address a file outside its directory.
fn record_path(dir: &Path, name: &str) -> Result<PathBuf, SafeFsError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(SafeFsError::InvalidName {
            name: name.to_string(),
        });
    }
    Ok(dir.join(name))
}

/// Perform one operation, blocking the calling thread.
pub fn execute(op: &FsOp) -> Result<FsReply, SafeFsError> {
    match op {
        FsOp::Statfs { path } => statfs(path).map(FsReply::Stats),
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
        FsOp::Archive {
            base,
            rel,
            archived_name,
        } => safe_fs::archive(base, rel, archived_name).map(FsReply::Archived),
        FsOp::ReadRecord { dir, name } => {
            let path = record_path(dir, name)?;
            match fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(mut f) => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut buf)
                        .map_err(|e| io("read record", &path, e))?;
                    Ok(FsReply::Record(Some(buf)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FsReply::Record(None)),
                Err(e) => Err(io("open record", &path, e)),
            }
        }
        FsOp::WriteRecord {
            dir,
            name,
            contents,
        } => {
            let path = record_path(dir, name)?;
            fs::create_dir_all(dir).map_err(|e| io("create record dir", dir, e))?;
            let mut tmp =
                tempfile::NamedTempFile::new_in(dir).map_err(|e| io("create temp", dir, e))?;
            tmp.write_all(contents)
                .and_then(|_| tmp.as_file().sync_all())
                .map_err(|e| io("write record", &path, e))?;
            tmp.persist(&path)
                .map_err(|e| io("rename record", &path, e.error))?;
            // The rename is durable only once the directory itself is synced.
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync record dir", dir, e))?;
            Ok(FsReply::Done)
        }
        FsOp::RemoveRecord { dir, name } => {
            let path = record_path(dir, name)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(FsReply::Done),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FsReply::Done),
                Err(e) => Err(io("remove record", &path, e)),
            }
        }
        FsOp::ListDir { dir } => {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(FsReply::Names(Vec::new()))
                }
                Err(e) => return Err(io("list", dir, e)),
            };
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| io("list", dir, e))?;
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
            names.sort();
            Ok(FsReply::Names(names))
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

fn statfs(path: &Path) -> Result<FsStats, SafeFsError> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| SafeFsError::Io {
        step: "statfs".into(),
        path: path.to_path_buf(),
        errno: e as i32,
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
    fn records_round_trip_and_reject_escaping_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("meta");
        let read = |name: &str| {
            execute(&FsOp::ReadRecord {
                dir: d.clone(),
                name: name.into(),
            })
        };
        assert_eq!(read("a").unwrap(), FsReply::Record(None));
        execute(&FsOp::WriteRecord {
            dir: d.clone(),
            name: "a".into(),
            contents: b"x".to_vec(),
        })
        .unwrap();
        assert_eq!(read("a").unwrap(), FsReply::Record(Some(b"x".to_vec())));
        for bad in ["", "..", "../x", "a/b"] {
            assert!(matches!(read(bad), Err(SafeFsError::InvalidName { .. })));
        }
        execute(&FsOp::RemoveRecord {
            dir: d.clone(),
            name: "a".into(),
        })
        .unwrap();
        execute(&FsOp::RemoveRecord {
            dir: d.clone(),
            name: "a".into(),
        })
        .unwrap();
        assert_eq!(
            execute(&FsOp::ListDir { dir: d }).unwrap(),
            FsReply::Names(vec![])
        );
    }

    #[test]
    fn record_read_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("rec")).unwrap();
        let r = execute(&FsOp::ReadRecord {
            dir: dir.path().into(),
            name: "rec".into(),
        });
        assert!(matches!(r, Err(SafeFsError::Io { .. })));
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
    fn statfs_reports_sane_numbers() {
        let FsReply::Stats(s) = execute(&FsOp::Statfs { path: "/".into() }).unwrap() else {
            panic!("not stats")
        };
        assert!(s.total_bytes >= s.used_bytes);
        assert!(s.total_bytes >= s.available_bytes);
    }
}
