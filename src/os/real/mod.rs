//! The real machine: binds through the mount API (see [`crate::os::mount`]), the kernel NFS
//! client through `mount.nfs`, and directory work either on the blocking pool or in
//! `pvdir internal` child processes ([`helper`]). Each operation is timed into the metrics
//! handle it was built with; so are the kills of helpers, the lazy detaches of NFS unmounts and
//! what NFS servers answer to a statfs.

pub mod helper;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::Command;

use super::fsop::{self, FsOp, FsReply};
use super::mount::op::{MountOp, Unmount};
use super::mount::staging::Staging;
use super::mount::{self, ApiChoice, MountApi, MountError};
use super::mount_watch::MountWatch;
use super::safe_fs::SafeFsError;
use super::{
    child, mountinfo, LocalDisk, Medium, MountEntry, MountSource, MountSpec, Os, OsError, Unmounted,
};
use crate::metrics::{DetachReason, Metrics, ProbeResult};
use helper::{INTERNAL_FS_ARGS, INTERNAL_MOUNT_ARGS};

pub use helper::{run_internal_fs, run_internal_mount};

/// The programs the driver runs, found on PATH. The container image must provide them
/// (Dockerfile; checked in tests/image.rs). Unmounting needs no program: pvdir's own helper
/// makes the syscall, so that it can refuse to follow a symlink at the target.
pub const MOUNT_NFS: &str = "mount.nfs";
pub const EXTERNAL_PROGRAMS: &[&str] = &[MOUNT_NFS];

pub struct RealOs {
    /// The pvdir binary, re-executed as the killable helper for remote work.
    helper: PathBuf,
    /// Bound on every operation that can block on an NFS server.
    remote_timeout: Duration,
    /// Where mounts are finished before they are attached (see [`crate::os::mount`]).
    staging: Arc<Staging>,
    api: Arc<ApiChoice>,
    metrics: Arc<Metrics>,
    /// The table local deletes check, read again only after a change.
    mount_watch: MountWatch,
}

impl RealOs {
    /// `staging_dir` must be absolute and free of symlinks; call [`RealOs::prepare`] before
    /// the first mount. Its metrics are its own, scraped by no one: see [`RealOs::observed`].
    pub fn new(
        helper: PathBuf,
        remote_timeout: Duration,
        staging_dir: PathBuf,
        api: MountApi,
    ) -> Self {
        Self::observed(
            helper,
            remote_timeout,
            staging_dir,
            api,
            Arc::new(Metrics::new()),
        )
    }

    /// [`RealOs::new`], recording into `metrics`.
    pub fn observed(
        helper: PathBuf,
        remote_timeout: Duration,
        staging_dir: PathBuf,
        api: MountApi,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            helper,
            remote_timeout,
            staging: Arc::new(Staging::new(staging_dir)),
            api: Arc::new(ApiChoice::new(api)),
            metrics,
            mount_watch: MountWatch::new(),
        }
    }

    /// `work`, timed as `operation`; `remote`: it runs in a helper process.
    async fn timed<T>(&self, operation: &str, remote: bool, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = work.await;
        self.metrics
            .observe_helper(operation, remote, started.elapsed());
        result
    }

    /// Make the staging directory a private mount of its own, and clear what an earlier
    /// process left there (a crash between making a mount and attaching it).
    pub async fn prepare(&self) -> Result<(), OsError> {
        let mounts = self.mounts().await?;
        let staging = Arc::clone(&self.staging);
        let left = Self::blocking(move || staging.prepare(&mounts).map_err(OsError::from)).await?;
        for m in left {
            tracing::warn!(target.path = %m.mount_point.display(), "removing a mount an earlier run left half-made");
            if let Err(e) = self.unmount(&m.mount_point, m.is_remote()).await {
                tracing::warn!(target.path = %m.mount_point.display(), error = %e, "could not remove a leftover staging mount");
            }
        }
        let staging = Arc::clone(&self.staging);
        Self::blocking(move || {
            staging.clear();
            Ok(())
        })
        .await
    }

    /// Local work on the blocking pool. Never spawn helpers from here: pool threads exit when
    /// idle, and a helper's parent-death signal is tied to the thread that spawned it (see
    /// child::die_with_parent).
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, OsError> + Send + 'static,
    ) -> Result<T, OsError> {
        // Local work is awaited to the end: callers hold their per-volume guard until it is done.
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| OsError::Helper {
                what: "blocking task".into(),
                message: e.to_string(),
            })?
    }

    /// One mount operation in the killable helper, under the remote bound.
    async fn in_helper(&self, op: MountOp) -> Result<(), OsError> {
        let call = helper::call(
            &self.helper,
            INTERNAL_MOUNT_ARGS,
            &op,
            op.name(),
            self.remote_timeout,
            &self.metrics,
        );
        let reply: Result<(), MountError> = self.timed(op.name(), true, call).await?;
        reply.map_err(OsError::from)
    }

    /// Gentlest first. A plain unmount flushes what the pod wrote and harms no one. Only when
    /// it cannot finish in time (a dead server with data to flush) is it forced: MNT_FORCE
    /// aborts every in-flight call on the NFS superblock, which the kernel shares between all
    /// mounts of one server and export (on the node: every pod's), so a forced unmount on a
    /// server that answers would fail other pods' I/O. A mount that is merely busy (a stats
    /// call still in it) is detached lazily instead, which aborts nothing. Between steps the
    /// table is read again: a step that was killed may still have done its work.
    async fn unmount_remote(&self, target: &Path) -> Result<Unmounted, OsError> {
        let top = |mounts: &[MountEntry]| mountinfo::top_at(mounts, target).map(|m| m.id);
        let before = top(&self.mounts().await?);
        let step = |how| MountOp::Unmount {
            target: target.to_path_buf(),
            how,
        };
        let Err(first) = self.in_helper(step(Unmount::Plain)).await else {
            return Ok(Unmounted::Cleanly);
        };
        // Only a plain unmount that ran out of time left data unwritten; one refused at once
        // (EBUSY) had nothing to wait for, and its lazy detach writes back later.
        let outcome = match first {
            OsError::TimedOut { .. } => Unmounted::WithoutWriteback,
            _ => Unmounted::Cleanly,
        };
        if top(&self.mounts().await?) != before {
            return Ok(outcome);
        }
        let (escalation, detach): (&[Unmount], _) = match first {
            OsError::TimedOut { .. } => (
                &[Unmount::Force, Unmount::Detach],
                DetachReason::Unresponsive,
            ),
            _ => (&[Unmount::Detach], DetachReason::Busy),
        };
        // A detach that goes through answers OK: the count is all that tells of it.
        let detached = |how: &Unmount| {
            if *how == Unmount::Detach {
                self.metrics.lazy_detach(detach);
            }
        };
        let mut last = first;
        for how in escalation {
            tracing::warn!(target.path = %target.display(), error = %last,
                "unmount did not complete; escalating to {how:?}");
            match self.in_helper(step(*how)).await {
                Ok(()) => {
                    detached(how);
                    return Ok(outcome);
                }
                Err(e) => last = e,
            }
            if top(&self.mounts().await?) != before {
                detached(how);
                return Ok(outcome);
            }
        }
        Err(last)
    }

    /// mount.nfs on a fresh staging point, then a move onto the target. mount.nfs resolves
    /// the path it is given (realpath) and mounts that string after talking to the server, so
    /// it is only ever given a point of pvdir's own.
    async fn mount_nfs(&self, server: &str, path: &str, spec: &MountSpec) -> Result<(), OsError> {
        let point = self.staging.point()?;
        let options = nfs_options(spec);
        // mount.nfs directly, not mount(8): a direct child dies with the driver (see
        // child::die_with_parent), a grandchild would not.
        let mut cmd = Command::new(MOUNT_NFS);
        cmd.arg(MountSource::nfs_device(server, path))
            .arg(point.path());
        if !options.is_empty() {
            cmd.arg("-o").arg(options.join(","));
        }
        let run = child::run(cmd, MOUNT_NFS, self.remote_timeout, &self.metrics);
        let mounted = match self.timed(MOUNT_NFS, true, run).await {
            Ok(done) if done.success => Ok(()),
            Ok(done) => Err(OsError::Mount {
                target: spec.target.clone(),
                message: format!("mount.nfs exited {:?}: {}", done.code, done.stderr_text()),
            }),
            Err(e) => Err(e),
        };
        let result = match mounted {
            Ok(()) => {
                let op = MountOp::Move {
                    from: point.path().to_path_buf(),
                    to: spec.target.clone(),
                    api: self.api.current(),
                };
                self.in_helper(op).await
            }
            Err(e) => Err(e),
        };
        if result.is_ok() {
            // The mount moved away: the point is an empty directory again.
            point.remove();
            return result;
        }
        // Whatever failed (a killed mount.nfs may still have mounted), nothing stays staged.
        let staged = self
            .mounts()
            .await
            .map(|m| mountinfo::top_at(&m, point.path()).is_some());
        match staged {
            Ok(false) => point.remove(),
            Ok(true) => match self.unmount_remote(point.path()).await {
                Ok(_) => point.remove(),
                Err(e) => {
                    tracing::warn!(target.path = %point.path().display(), error = %e, "could not remove a staged NFS mount; the next start retries")
                }
            },
            Err(e) => tracing::warn!(error = %e, "could not check the staging point"),
        }
        result
    }
}

/// One local directory operation on the calling thread, timed into `metrics`.
fn run_local(op: &FsOp, metrics: &Metrics) -> Result<FsReply, OsError> {
    let started = Instant::now();
    let result = fsop::execute(op).map_err(OsError::Fs);
    metrics.observe_helper(op.name(), false, started.elapsed());
    result
}

impl LocalDisk for RealOs {
    fn run(&self, op: FsOp) -> Result<FsReply, OsError> {
        run_local(&op, &self.metrics)
    }

    fn mount_table(&self) -> Result<Arc<Vec<MountEntry>>, OsError> {
        self.mount_watch.table()
    }
}

/// The options for mount.nfs: the asked ones, then the flags the mount must have. mount.nfs
/// lets the last of two contrary options win, so `ro` after a class's `rw` (or `nosuid` after
/// its `suid`) must come last to hold.
fn nfs_options(spec: &MountSpec) -> Vec<String> {
    let mut options = spec.options.clone();
    options.extend(spec.flags.names().into_iter().map(String::from));
    options
}

#[async_trait]
impl Os for RealOs {
    async fn mounts(&self) -> Result<Vec<MountEntry>, OsError> {
        Self::blocking(super::mount_watch::read_once).await
    }

    async fn mount(&self, spec: &MountSpec) -> Result<(), OsError> {
        match &spec.source {
            MountSource::Bind(source) => {
                let (source, target, flags) = (source.clone(), spec.target.clone(), spec.flags);
                let (api, staging) = (Arc::clone(&self.api), Arc::clone(&self.staging));
                let work = Self::blocking(move || {
                    mount::bind(&source, &target, flags, &api, &staging).map_err(OsError::from)
                });
                self.timed("bind", false, work).await
            }
            MountSource::Nfs { server, path } => self.mount_nfs(server, path, spec).await,
        }
    }

    async fn unmount(&self, target: &Path, remote: bool) -> Result<Unmounted, OsError> {
        if remote {
            self.unmount_remote(target).await
        } else {
            let op = MountOp::Unmount {
                target: target.to_path_buf(),
                how: Unmount::Plain,
            };
            let name = op.name();
            let work = Self::blocking(move || {
                mount::op::execute(&op)
                    .map(|()| Unmounted::Cleanly)
                    .map_err(OsError::from)
            });
            self.timed(name, false, work).await
        }
    }

    async fn fs(&self, op: FsOp, medium: Medium) -> Result<FsReply, OsError> {
        let name = op.name();
        let probe = matches!(op, FsOp::StatfsNfs { .. });
        let result = match medium {
            Medium::Local => {
                let metrics = Arc::clone(&self.metrics);
                Self::blocking(move || run_local(&op, &metrics)).await
            }
            Medium::Remote => {
                let call = helper::call(
                    &self.helper,
                    INTERNAL_FS_ARGS,
                    &op,
                    name,
                    self.remote_timeout,
                    &self.metrics,
                );
                let reply: Result<Result<FsReply, SafeFsError>, OsError> =
                    self.timed(name, true, call).await;
                reply.and_then(|r| r.map_err(OsError::Fs))
            }
        };
        if probe {
            self.metrics.nfs_probe(match &result {
                Ok(_) => ProbeResult::Answering,
                Err(e) if e.is_stale_handle() => ProbeResult::Stale,
                Err(OsError::TimedOut { .. }) => ProbeResult::Unreachable,
                Err(_) => ProbeResult::Error,
            });
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::MountFlags;

    #[test]
    fn the_flags_a_mount_must_have_come_after_contrary_options() {
        let spec = MountSpec {
            source: MountSource::Nfs {
                server: "s".into(),
                path: "/e".into(),
            },
            target: "/t".into(),
            flags: MountFlags::READ_ONLY | MountFlags::NOSUID,
            options: vec!["ro".into(), "rw".into(), "suid".into(), "hard".into()],
        };
        let options = nfs_options(&spec);
        assert_eq!(&options[..4], ["ro", "rw", "suid", "hard"]);
        let last_rw = options.iter().rposition(|o| o == "rw").unwrap();
        let last_ro = options.iter().rposition(|o| o == "ro").unwrap();
        let last_suid = options.iter().rposition(|o| o == "suid").unwrap();
        let last_nosuid = options.iter().rposition(|o| o == "nosuid").unwrap();
        assert!(last_ro > last_rw && last_nosuid > last_suid, "{options:?}");
    }
}
