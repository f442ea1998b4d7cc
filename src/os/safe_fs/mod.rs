//! Blocking directory operations confined to a trusted base directory (an NFS export or a
//! node-local root), addressed by untrusted `RelPath`s.
//!
//! Invariants, each attacked by a test in the submodule that upholds it:
//! - Symlinks are never followed: `base` is opened once by path (it is trusted configuration);
//!   every component below it is opened with `openat(.., O_NOFOLLOW | O_DIRECTORY)` relative to
//!   its parent's descriptor, never by string path. A symlink in `rel` is `SymlinkInPath`; a
//!   symlink inside a tree being removed is unlinked as a link, its target untouched.
//! - Removal never crosses into another mount: every directory is checked against the tree's
//!   `st_dev` and against statx's `STATX_ATTR_MOUNT_ROOT` (the only way to see a bind mount
//!   from the same filesystem); a mount is left alone and reported as `CrossesMount`.
//! - Removal is iterative with a bounded number of open directories and bounded memory, and
//!   finishes for a tree of any depth: what lies deeper than it holds open is first moved up
//!   inside the tree, so no crafted tree can overflow the stack, exhaust fds or make a volume
//!   undeletable.
//! - Pruning only removes directories holding nothing but `OWNED_MARKER`, which `ensure_dir`
//!   writes solely into parents it created itself; `base` is never removed or chmodded.
//!
//! Layout: `walk` opens components safely and checks mounts (shared by all operations);
//! `ensure`, `remove`, `prune`, `archive`, `copy`, `record` and `swap` each own one operation. This file holds the
//! error and outcome types that cross the process boundary to `fsop`'s helper.

mod archive;
mod copy;
mod ensure;
mod prune;
mod record;
mod remove;
mod scratch;
mod swap;
mod walk;

#[cfg(test)]
mod test_support;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use serde::{Deserialize, Serialize, Serializer};

pub use archive::rename_aside;
pub use copy::{copy_tree, CopyPlan, CopyProgress, CopyStats, MAX_DEPTH};
pub use ensure::{ensure_dir, OWNED_MARKER};
pub use prune::prune_owned_parents;
pub use record::{
    list_records, read_records, remove_record, write_record, write_record_with, MAX_RECORD_BYTES,
};
pub use remove::remove_tree;
pub use scratch::{scratch_name, sweep_scratch, Scratch, Swept, Writers};
pub use swap::{swap_record, SwapOutcome};
pub use walk::{has_entries, open_dir};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SafeFsError {
    #[error("cannot open base directory {path:?}: {}", Errno::from_raw(*errno))]
    OpenBase {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
        errno: i32,
    },
    #[error("refusing to follow symlink at {path:?}")]
    SymlinkInPath {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("{path:?} exists and is not a directory")]
    NotADirectory {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("the parent directory of {path:?} does not exist")]
    NoParent {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("{path:?} is on another mount; refusing to cross into it")]
    CrossesMount {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    /// A tree deeper than a copy holds open at once (see `copy`).
    #[error("{path:?} is more than {limit} directories deep; refusing to copy it")]
    TooDeep {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
        limit: usize,
    },
    #[error("directory {path:?} is not empty")]
    NotEmpty {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("{path:?} is not on NFS (no longer mounted?)")]
    NotNfs {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("invalid name {name:?}")]
    InvalidName { name: String },
    /// Something that cannot be a record of pvdir's sits where one should be.
    #[error("{path:?} is not a record pvdir wrote: {reason}")]
    BadRecord {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
        reason: String,
    },
    /// `step` is a static description on construction; it is a `Cow` only so that the error
    /// can be deserialised on the far side of a process boundary.
    #[error("{step} {path:?}: {} (errno {errno})", Errno::from_raw(*errno))]
    Io {
        step: Cow<'static, str>,
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
        errno: i32,
    },
}

impl SafeFsError {
    pub fn errno(&self) -> Option<Errno> {
        self.raw_errno().map(Errno::from_raw)
    }

    /// The errno as the kernel gave it, including codes nix has no name for.
    pub fn raw_errno(&self) -> Option<i32> {
        match self {
            SafeFsError::OpenBase { errno, .. } | SafeFsError::Io { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(Errno::ENOENT)
    }
}

/// Names found inside a tree are arbitrary bytes; JSON needs UTF-8, and losing a byte in a
/// diagnostic beats failing to report the error at all.
fn serialize_path_lossy<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsureOutcome {
    /// Whether this call created the leaf directory.
    pub created: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveOutcome {
    Removed,
    AlreadyGone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameOutcome {
    Renamed,
    /// The directory to rename is not there (renamed before, or never made).
    SourceGone,
    /// The new name is taken by something that is not an empty directory.
    TargetTaken,
}

/// The `Io` error for `step` on `path`.
fn io(step: &'static str, path: &Path, errno: Errno) -> SafeFsError {
    // Before any allocation, which may touch the thread's errno.
    let errno = raw_errno(errno);
    SafeFsError::Io {
        step: Cow::Borrowed(step),
        path: path.to_path_buf(),
        errno,
    }
}

/// The number behind `errno`, read from the thread's errno when nix does not know it: the NFS
/// client leaks kernel-internal codes (ERESTARTSYS, 512, when a forced unmount aborts a call),
/// and nix would turn them all into 0. Call right after the failing syscall.
pub(crate) fn raw_errno(errno: Errno) -> i32 {
    match errno {
        Errno::UnknownErrno => Errno::last_raw(),
        known => known as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{rel, tmp, write};
    use super::*;

    #[test]
    fn unknown_errnos_keep_their_number() {
        Errno::set_raw(512);
        assert_eq!(raw_errno(Errno::UnknownErrno), 512);
        assert_eq!(raw_errno(Errno::ESTALE), libc::ESTALE);
    }
    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn concurrent_ensure_remove_prune_do_not_fail() {
        let base = tmp();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let b = base.path().to_path_buf();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let r = rel(&format!("shared/p/vol-{t}-{i}"));
                        ensure_dir(&b, &r, Some(0o770)).expect("ensure");
                        write(&b.join(r.as_str()).join("f"));
                        assert_eq!(remove_tree(&b, &r), Ok(RemoveOutcome::Removed));
                        prune_owned_parents(&b, &r).expect("prune");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(fs::read_dir(base.path()).expect("ls").count(), 0);
    }

    #[test]
    fn errors_serialize_with_lossy_paths_and_expose_errno() {
        let err = io(
            "unlink",
            Path::new(OsStr::from_bytes(b"/b/\xff")),
            Errno::EACCES,
        );
        assert_eq!(err.errno(), Some(Errno::EACCES));
        assert!(!err.is_not_found());
        let json = serde_json::to_string(&err).expect("serialize");
        let back: SafeFsError = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.errno(), Some(Errno::EACCES));
        assert!(back.to_string().contains("unlink"), "{back}");
        let err = SafeFsError::CrossesMount {
            path: PathBuf::from("/b/x"),
        };
        let json = serde_json::to_string(&err).expect("serialize");
        assert_eq!(serde_json::from_str::<SafeFsError>(&json).expect("de"), err);
        assert_eq!(err.errno(), None);
    }
}
