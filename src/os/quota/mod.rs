//! Filesystem project quotas: the kernel interfaces that make a directory's size a limit.
//!
//! A volume directory is put into its own project (`FS_IOC_FSSETXATTR` with the inherit flag,
//! so everything made below it joins the project) and the project gets a hard byte limit
//! (`quotactl_fd`, `Q_SETQUOTA`). XFS mounted with `prjquota` and ext4 with the `project` and
//! `quota` features mounted with `prjquota` both enforce it, and both then answer `statfs` on
//! the directory with the project's limit and usage: `df` in a pod shows the claim's size.
//!
//! No helper program is run (`xfs_quota`, `setquota`, `chattr`): these are single syscalls on
//! the node's own disk, and `quotactl_fd` needs no block device path, so it works the same in
//! a container that cannot see `/dev`. Behind [`Quotas`] so the domain can be tested against
//! [`fake::FakeQuotas`]; nothing here knows about volumes or records.

pub mod fake;
mod kernel;

use std::path::{Path, PathBuf};

pub use kernel::{volume_usage, KernelQuotas};

use super::relpath::RelPath;
use super::safe_fs::SafeFsError;

/// A filesystem project ID. 0 is every file's default project, never a volume's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProjectId(u32);

impl ProjectId {
    /// `None` for 0, which is not a project of ours.
    pub fn new(id: u32) -> Option<Self> {
        (id != 0).then_some(Self(id))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// What the filesystem under a directory does with project quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Project quotas are accounted and enforced: a limit holds.
    Enforced,
    /// Usage is accounted but limits are not enforced (ext4 with the `quota` feature mounted
    /// without `prjquota`, XFS with `pqnoenforce`).
    AccountedOnly,
    /// No project quotas at all: not enabled, or the filesystem (tmpfs, btrfs, overlayfs) or
    /// the kernel has none.
    None,
}

impl Support {
    /// What an operator must do to get enforcement, for logs and errors.
    pub fn remedy(self) -> &'static str {
        match self {
            Support::Enforced => "nothing",
            Support::AccountedOnly => {
                "project quotas are accounted but not enforced: mount with prjquota \
                 (XFS: not pqnoenforce)"
            }
            Support::None => {
                "no project quotas: use XFS mounted with -o prjquota, or ext4 made with \
                 -O project,quota and mounted with -o prjquota"
            }
        }
    }
}

/// A project's usage and limit, as the quota subsystem keeps them (no tree walk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProjectUsage {
    pub bytes: u64,
    pub inodes: u64,
    /// The hard byte limit; 0 means none.
    pub limit_bytes: u64,
}

impl ProjectUsage {
    /// Nothing is charged to the project and it has no limit: no one uses it.
    pub fn is_unused(&self) -> bool {
        *self == ProjectUsage::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: SafeFsError },
    #[error("directory {path} does not exist")]
    Missing { path: PathBuf },
    #[error("{step} on {path}: {source}")]
    Call {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The quota calls pvdir makes. Every method blocks briefly on the local disk: callers run on
/// the blocking pool, as the local backend's steps do.
pub trait Quotas: Send + Sync + 'static {
    /// Project quota support of the filesystem holding `dir`.
    fn support(&self, dir: &Path) -> Result<Support, QuotaError>;
    /// Put directory `base/rel` (reached without following symlinks) into project `id`, with
    /// the inherit flag so what is made inside joins it. Idempotent.
    fn assign(&self, base: &Path, rel: &RelPath, id: ProjectId) -> Result<(), QuotaError>;
    /// Set project `id`'s hard byte limit on the filesystem holding `dir`; 0 removes it.
    fn set_limit(&self, dir: &Path, id: ProjectId, bytes: u64) -> Result<(), QuotaError>;
    /// Usage and limit of project `id` on the filesystem holding `dir`; `None` for project 0
    /// asks about everything in no project.
    fn usage(&self, dir: &Path, id: Option<ProjectId>) -> Result<ProjectUsage, QuotaError>;
}

/// For a process that sets no quotas (a node-only service): no support, and every change
/// refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unavailable;

impl Unavailable {
    fn refused(path: &Path) -> QuotaError {
        QuotaError::Call {
            step: "quota",
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::ENOSYS),
        }
    }
}

impl Quotas for Unavailable {
    fn support(&self, _dir: &Path) -> Result<Support, QuotaError> {
        Ok(Support::None)
    }

    fn assign(&self, base: &Path, rel: &RelPath, _id: ProjectId) -> Result<(), QuotaError> {
        Err(Self::refused(&base.join(rel.as_str())))
    }

    fn set_limit(&self, dir: &Path, _id: ProjectId, _bytes: u64) -> Result<(), QuotaError> {
        Err(Self::refused(dir))
    }

    fn usage(&self, dir: &Path, _id: Option<ProjectId>) -> Result<ProjectUsage, QuotaError> {
        Err(Self::refused(dir))
    }
}
