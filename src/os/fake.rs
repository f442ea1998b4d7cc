//! An in-memory mount table for service tests: mounts are recorded, not performed, and
//! directory work runs for real on the test's temporary directories. Failures and a dead NFS
//! server can be injected. Used only by tests; the proof against the kernel is the real tier.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::fsop::{self, FsOp, FsReply};
use super::safe_fs::SafeFsError;
use super::{
    LocalDisk, Medium, MountEntry, MountFlags, MountSource, MountSpec, Os, OsError, Unmounted,
};

#[derive(Default)]
struct State {
    table: Vec<MountEntry>,
    next_id: u32,
    server_dead: bool,
    /// IDs of mounts whose file handle the server no longer knows (see `make_stale`).
    stale: Vec<u32>,
    fail_next_mount: Option<String>,
    /// Directory operations (by name) whose next call fails with this errno.
    fail_fs: Vec<(&'static str, i32)>,
    calls: Vec<String>,
    /// What a local statfs answers instead of the real figures (see `pretend_disk`).
    disk: Option<super::FsStats>,
}

/// Clones share one state, so a test keeps a handle while the service owns another.
#[derive(Clone)]
pub struct FakeOs {
    state: Arc<Mutex<State>>,
    /// While true, `mount` waits: lets tests hold an operation in flight.
    paused: Arc<tokio::sync::watch::Sender<bool>>,
    /// While set, directory operations of that name wait: another process's step can then
    /// land between two steps of a call.
    held_op: Arc<tokio::sync::watch::Sender<Option<&'static str>>>,
    /// How many operations have waited on the hold since it was set.
    held_count: Arc<tokio::sync::watch::Sender<u32>>,
}

impl Default for FakeOs {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            paused: Arc::new(tokio::sync::watch::channel(false).0),
            held_op: Arc::new(tokio::sync::watch::channel(None).0),
            held_count: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

/// Device string of the single filesystem the fake pretends everything local lives on.
pub const FAKE_ROOT_DEVICE: &str = "0:1";

impl FakeOs {
    pub fn new() -> Self {
        let fake = Self::default();
        fake.with(|s| {
            s.next_id = 100;
            s.table.push(MountEntry {
                id: 1,
                parent_id: 0,
                device: FAKE_ROOT_DEVICE.into(),
                root: "/".into(),
                mount_point: "/".into(),
                flags: MountFlags::RELATIME,
                shared: false,
                fs_type: "ext4".into(),
                source: "/dev/fake".into(),
            });
        });
        fake
    }

    /// Make a local statfs answer a disk of `total` bytes with `used` in use, all the rest
    /// available, instead of the real filesystem's figures.
    pub fn pretend_disk(&self, total: u64, used: u64) {
        self.with(|s| {
            s.disk = Some(super::FsStats {
                total_bytes: total,
                available_bytes: total - used,
                used_bytes: used,
                ..Default::default()
            })
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means another test thread panicked; the state is still usable.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Make every remote operation behave like a hung NFS server: it times out.
    pub fn set_server_dead(&self, dead: bool) {
        self.with(|s| s.server_dead = dead);
    }

    /// Hold every `mount` call until [`FakeOs::resume_mounts`].
    pub fn pause_mounts(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume_mounts(&self) {
        self.paused.send_replace(false);
    }

    /// Hold every directory operation named `op` (see [`FsOp::name`]) until
    /// [`FakeOs::release_op`].
    pub fn hold_op(&self, op: &'static str) {
        self.held_count.send_replace(0);
        self.held_op.send_replace(Some(op));
    }

    /// Wait until an operation is held by [`FakeOs::hold_op`].
    pub async fn until_held(&self) {
        let mut count = self.held_count.subscribe();
        let _ = count.wait_for(|n| *n > 0).await;
    }

    pub fn release_op(&self) {
        self.held_op.send_replace(None);
    }

    /// Make the mount now at `target` stale, as after the export was recreated on the server:
    /// remote operations at or below it fail with ESTALE until it is unmounted.
    pub fn make_stale(&self, target: &Path) {
        self.with(|s| {
            if let Some(e) = s.table.iter().rev().find(|e| e.mount_point == target) {
                s.stale.push(e.id);
            }
        });
    }

    fn on_fake_nfs(&self, path: &Path) -> bool {
        self.with(|s| {
            s.table
                .iter()
                .any(|e| e.is_remote() && path.starts_with(&e.mount_point))
        })
    }

    fn stale_at(&self, path: &Path) -> bool {
        self.with(|s| {
            s.table
                .iter()
                .any(|e| s.stale.contains(&e.id) && path.starts_with(&e.mount_point))
        })
    }

    /// Make the next directory operation named `op` (see [`FsOp::name`]) fail with `errno`, as
    /// a server or disk failing at that step would; with several, each fails once, in turn.
    pub fn fail_next_fs(&self, op: &'static str, errno: i32) {
        self.with(|s| s.fail_fs.push((op, errno)));
    }

    pub fn fail_next_mount(&self, message: &str) {
        self.with(|s| s.fail_next_mount = Some(message.into()));
    }

    pub fn table(&self) -> Vec<MountEntry> {
        self.with(|s| s.table.clone())
    }

    pub fn is_mounted(&self, target: &Path) -> bool {
        self.with(|s| s.table.iter().any(|e| e.mount_point == target))
    }

    /// The calls made so far, e.g. `mount nfs srv:/export/a -> /t ro=false opts=vers=4.2`.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    /// A receiver that shows whether `name` is held, counting this operation as held if so.
    fn until_released(
        &self,
        name: &'static str,
    ) -> tokio::sync::watch::Receiver<Option<&'static str>> {
        let held = self.held_op.subscribe();
        if *held.borrow() == Some(name) {
            self.held_count.send_modify(|n| *n += 1);
        }
        held
    }

    /// What a directory operation meets before it runs: a dead or stale server, an injected
    /// failure; and the operation to run in its place (fake NFS mounts are plain directories).
    fn gate(&self, op: FsOp, medium: Medium) -> Result<FsOp, OsError> {
        if medium == Medium::Remote && self.with(|s| s.server_dead) {
            return Err(Self::timed_out(op.name()));
        }
        let injected = self.with(|s| {
            let i = s.fail_fs.iter().position(|(name, _)| *name == op.name())?;
            Some(s.fail_fs.remove(i).1)
        });
        if let Some(errno) = injected {
            return Err(OsError::Fs(SafeFsError::Io {
                step: op.name().into(),
                path: op.path().to_path_buf(),
                errno,
            }));
        }
        // An NFS statfs is answered for real when the path is at or below a fake NFS mount,
        // and refused like the real one when it is not.
        let op = match op {
            FsOp::StatfsNfs { path } if self.on_fake_nfs(&path) => FsOp::Statfs { path },
            FsOp::StatfsNfs { path } => return Err(OsError::Fs(SafeFsError::NotNfs { path })),
            other => other,
        };
        if medium == Medium::Remote && self.stale_at(op.path()) {
            return Err(OsError::Fs(SafeFsError::Io {
                step: op.name().into(),
                path: op.path().to_path_buf(),
                errno: nix::errno::Errno::ESTALE as i32,
            }));
        }
        Ok(op)
    }

    fn timed_out(what: &str) -> OsError {
        OsError::TimedOut {
            what: what.into(),
            after: Duration::from_secs(0),
        }
    }
}

#[async_trait]
impl Os for FakeOs {
    async fn mounts(&self) -> Result<Vec<MountEntry>, OsError> {
        Ok(self.table())
    }

    async fn mount(&self, spec: &MountSpec) -> Result<(), OsError> {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
        self.with(|s| {
            // As the kernel does: a bind shows the filesystem and path its source is on (so
            // a bind of a bind shows the original directory) and keeps the flags of the
            // mount its source is on, gaining the asked ones; a new NFS mount starts from
            // relatime.
            let (fs_type, source, root, device, holder) = match &spec.source {
                MountSource::Bind(p) => {
                    let (device, root) = super::mountinfo::bind_identity(&s.table, p)
                        .unwrap_or_else(|| (FAKE_ROOT_DEVICE.to_string(), p.clone()));
                    (
                        "ext4".to_string(),
                        "/dev/fake".to_string(),
                        root,
                        device,
                        super::mountinfo::containing(&s.table, p)
                            .map_or(MountFlags::RELATIME, |m| m.flags),
                    )
                }
                MountSource::Nfs { server, path } => (
                    "nfs4".to_string(),
                    MountSource::nfs_device(server, path),
                    PathBuf::from("/"),
                    format!("0:{}", s.next_id),
                    MountFlags::RELATIME,
                ),
            };
            s.calls.push(format!(
                "mount {fs_type} {source} -> {} ro={} opts={}",
                spec.target.display(),
                spec.flags.contains(MountFlags::READ_ONLY),
                spec.options.join(",")
            ));
            if let Some(message) = s.fail_next_mount.take() {
                return Err(OsError::Mount {
                    target: spec.target.clone(),
                    message,
                });
            }
            if fs_type == "nfs4" && s.server_dead {
                return Err(Self::timed_out("mount.nfs"));
            }
            s.next_id += 1;
            let id = s.next_id;
            s.table.push(MountEntry {
                id,
                parent_id: 1,
                device,
                root,
                mount_point: spec.target.clone(),
                flags: spec.flags.over(holder),
                shared: false,
                fs_type,
                source: source.into(),
            });
            Ok(())
        })
    }

    /// A remote unmount while the server is dead is what the real one does after its plain
    /// step timed out: the mount goes, its unwritten data with it.
    async fn unmount(&self, target: &Path, remote: bool) -> Result<Unmounted, OsError> {
        self.with(|s| {
            s.calls
                .push(format!("unmount {} remote={remote}", target.display()));
            match s.table.iter().rposition(|e| e.mount_point == target) {
                Some(i) => {
                    s.table.remove(i);
                    Ok(if remote && s.server_dead {
                        Unmounted::WithoutWriteback
                    } else {
                        Unmounted::Cleanly
                    })
                }
                None => Err(OsError::MountCall(super::mount::MountError::Step {
                    step: "unmount".into(),
                    path: target.to_path_buf(),
                    errno: libc::EINVAL,
                })),
            }
        })
    }

    async fn fs(&self, op: FsOp, medium: Medium) -> Result<FsReply, OsError> {
        let mut held = self.until_released(op.name());
        let _ = held.wait_for(|h| *h != Some(op.name())).await;
        let op = self.gate(op, medium)?;
        tokio::task::spawn_blocking(move || fsop::execute(&op).map_err(OsError::Fs))
            .await
            .map_err(|e| OsError::Helper {
                what: "fake fs".into(),
                message: e.to_string(),
            })?
    }
}

/// The same directory work as [`Os::fs`] on [`Medium::Local`], with the same holds and
/// injected failures, run on the caller's (blocking) thread.
impl LocalDisk for FakeOs {
    fn run(&self, op: FsOp) -> Result<FsReply, OsError> {
        let mut held = self.until_released(op.name());
        let _ = futures::executor::block_on(held.wait_for(|h| *h != Some(op.name())));
        let op = self.gate(op, Medium::Local)?;
        if let (FsOp::Statfs { .. }, Some(disk)) = (&op, self.with(|s| s.disk)) {
            return Ok(FsReply::Stats(disk));
        }
        fsop::execute(&op).map_err(OsError::Fs)
    }

    fn mount_table(&self) -> Result<std::sync::Arc<Vec<MountEntry>>, OsError> {
        Ok(std::sync::Arc::new(self.table()))
    }
}
