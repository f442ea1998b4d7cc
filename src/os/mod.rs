//! OS effects, the bottom layer: mounting, unmounting, reading the mount table, and the
//! filesystem operations that touch volume directories.
//!
//! Everything the driver does to the machine goes through the [`Os`] trait so that the domain can
//! be tested against [`fake::FakeOs`] and run against [`real::RealOs`]. Nothing here knows about
//! CSI or gRPC. Invariant: no method may block the async runtime; work that can hang on an NFS
//! server runs in a child process that is killed (process group included) when its time is up.

pub mod child;
pub mod fake;
pub mod fsop;
pub mod journal;
pub mod mount;
pub mod mount_flags;
pub mod mount_watch;
pub mod mountinfo;
pub mod quota;
pub mod real;
pub mod relpath;
pub mod safe_fs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

pub use fsop::{FsOp, FsReply};
pub use mount_flags::MountFlags;
pub use mountinfo::MountEntry;
pub use relpath::RelPath;

/// What to mount at a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A bind mount of a local directory.
    Bind(PathBuf),
    /// The kernel NFS client: `server:/export/path`.
    Nfs { server: String, path: String },
}

impl MountSource {
    /// The source as `/proc/self/mountinfo` spells it for an NFS mount (`server:/path`; IPv6
    /// servers in brackets, as mount.nfs requires).
    pub fn nfs_device(server: &str, path: &str) -> String {
        if server.contains(':') && !server.starts_with('[') {
            format!("[{server}]:{path}")
        } else {
            format!("{server}:{path}")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: MountSource,
    /// A directory; a symlink there is refused, never followed.
    pub target: PathBuf,
    /// Per-mount flags to add. A bind keeps every flag of the mount its source is on and
    /// gains these; for NFS they are passed to mount.nfs among the options.
    pub flags: MountFlags,
    /// NFS only: options for mount.nfs (`mountOptions`), each one option (see
    /// `domain::access::MountOption`).
    pub options: Vec<String>,
}

/// Where a filesystem operation runs. `Remote` paths live on an NFS server that may stop
/// answering, so the work runs in a killable child process under a time bound; `Local` paths
/// are on the node's own disk and run on the blocking thread pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Local,
    Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FsStats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

/// Failures of OS effects, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("reading the mount table: {source}")]
    ReadMountTable { source: std::io::Error },
    #[error("mounting {target}: {message}")]
    Mount { target: PathBuf, message: String },
    #[error(transparent)]
    MountCall(#[from] mount::MountError),
    #[error("starting helper {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{what} did not finish within {after:?}; the helper was killed")]
    TimedOut { what: String, after: Duration },
    #[error("helper {what} failed: {message}")]
    Helper { what: String, message: String },
    #[error(transparent)]
    Fs(#[from] safe_fs::SafeFsError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

impl OsError {
    /// An operation answered with the wrong kind of reply: a bug, never "absent" or "zero".
    pub fn unexpected_reply(op: &'static str, reply: &FsReply) -> Self {
        OsError::Helper {
            what: op.into(),
            message: format!("unexpected reply {reply:?}"),
        }
    }

    /// ESTALE: the server no longer knows the file handle behind a mount (the export was
    /// recreated, restored or moved). Unlike a server that does not answer, remounting cures it.
    pub fn is_stale_handle(&self) -> bool {
        matches!(self, OsError::Fs(fs) if fs.errno() == Some(nix::errno::Errno::ESTALE))
    }
}

/// How an unmount ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// A plain unmount finished: the kernel wrote back what was written through the mount
    /// first. Or the mount was busy and was detached lazily on an answering server: the kernel
    /// writes back when its last user leaves.
    Cleanly,
    /// The plain unmount did not finish within the bound. A plain unmount writes back what
    /// was written through the mount before it lets go, so the kernel was still waiting on a
    /// server that does not answer: to write back dirty data, or for the last calls of the
    /// unmount itself, which pvdir cannot tell apart. The mount was then forced or detached
    /// (or went while the unmount was killed), and data written through it may never reach
    /// the server. The timed-out plain unmount serves as the bounded sync: a separate syncfs
    /// first would wait on the same dead server for the same bound again.
    WithoutWriteback,
}

/// What an NFS mount at a path answers (see [`probe_nfs_mount`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NfsMountProbe {
    /// The server answers for it.
    Answering,
    /// The server no longer knows its file handle (the export was recreated): only a new
    /// mount can reach the export again.
    Stale,
    /// The path is not on NFS any more: the mount went away since the table was read.
    Gone,
}

/// Ask the server about the NFS mount at `path`, within the remote bound. A server that does not
/// answer is an error, not `Stale`: a new mount would hang just the same.
pub async fn probe_nfs_mount(os: &dyn Os, path: &Path) -> Result<NfsMountProbe, OsError> {
    let probe = FsOp::StatfsNfs {
        path: path.to_path_buf(),
    };
    match os.fs(probe, Medium::Remote).await {
        Ok(_) => Ok(NfsMountProbe::Answering),
        Err(e) if e.is_stale_handle() => Ok(NfsMountProbe::Stale),
        Err(OsError::Fs(safe_fs::SafeFsError::NotNfs { .. })) => Ok(NfsMountProbe::Gone),
        Err(e) => Err(e),
    }
}

/// The narrow interface to the machine. Implementations must be cheap to share across tasks.
#[async_trait]
pub trait Os: Send + Sync + 'static {
    /// The current mount table of this process's mount namespace.
    async fn mounts(&self) -> Result<Vec<MountEntry>, OsError>;
    /// Mount `spec`; the target directory must exist. The target shows either nothing or the
    /// finished mount, never a symlink's destination (see [`mount`]).
    async fn mount(&self, spec: &MountSpec) -> Result<(), OsError>;
    /// Unmount the topmost mount at `target`, never following a symlink there; `remote` says
    /// it is an NFS mount that may hang.
    async fn unmount(&self, target: &Path, remote: bool) -> Result<Unmounted, OsError>;
    /// Run one directory operation.
    async fn fs(&self, op: FsOp, medium: Medium) -> Result<FsReply, OsError>;
}

/// Work on the node's own disk, for code that already runs on a thread allowed to block.
///
/// The local backend runs each call's steps (read the record, commit to the journal, write
/// the record, make the directory) as one unit on the blocking pool: one hand-off from the
/// runtime per call instead of one per step, which is what a local create or delete spends
/// most of its time on. Beside [`Os`], not in it: only local disks may be worked on this way;
/// anything that can hang on a server goes through [`Os::fs`] with [`Medium::Remote`].
pub trait LocalDisk: Send + Sync + 'static {
    /// Run one directory operation to its end.
    fn run(&self, op: FsOp) -> Result<FsReply, OsError>;
    /// The current mount table of this process's mount namespace (shared: the real one is
    /// read again only when the kernel reports a change, see [`mount_watch`]).
    fn mount_table(&self) -> Result<std::sync::Arc<Vec<MountEntry>>, OsError>;
}
