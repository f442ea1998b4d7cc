//! The controller's mounts of exports: one per server, share and mount options, under the
//! staging directory. Every operation below a mount holds it shared for its whole length;
//! mounting it and replacing a stale one hold it exclusively, so no operation can run while
//! the staging directory is briefly a plain local directory (its writes would land on the
//! controller's own disk). A lock is never waited for: a caller that cannot have it gets
//! ABORTED instead of queueing behind a mount of a dead server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::domain::error::ControllerError;
use crate::os::{
    mountinfo, probe_nfs_mount, FsOp, Medium, MountFlags, MountSource, MountSpec, NfsMountProbe, Os,
};

/// An export mounted under the staging directory, held (shared) against remounts while the
/// holder works below it.
pub struct ExportMount {
    pub path: PathBuf,
    /// Whether this call made the mount (the first use of the export by this process, or a
    /// remount of a stale one).
    pub fresh: bool,
    _hold: OwnedRwLockReadGuard<()>,
}

pub struct Exports {
    staging: PathBuf,
    os: Arc<dyn Os>,
    locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

impl Exports {
    pub fn new(staging: PathBuf, os: Arc<dyn Os>) -> Self {
        Self {
            staging,
            os,
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// Mount `server:share` under the staging dir unless it already is, replacing a mount
    /// whose file handle went stale. The caller keeps the returned hold until its work below
    /// the mount is done.
    pub async fn mount(
        &self,
        server: &str,
        share: &str,
        options: &[String],
        volume: &str,
    ) -> Result<ExportMount, ControllerError> {
        // The controller writes below the export: a class's `ro` is for the pods' mounts only.
        let options: Vec<String> = options.iter().filter(|o| *o != "ro").cloned().collect();
        let key = hex::encode(
            &Sha256::digest(format!("{server}\0{share}\0{}", options.join(",")).as_bytes())[..12],
        );
        let target = self.staging.join(&key);
        let device = MountSource::nfs_device(server, share);
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let busy = || ControllerError::InFlight {
            key: format!("mount of {device}"),
        };
        let shared = Arc::clone(&lock).try_read_owned().map_err(|_| busy())?;
        if self.state(&target, &device, volume).await? == NfsMountProbe::Answering {
            return Ok(ExportMount {
                path: target,
                fresh: false,
                _hold: shared,
            });
        }
        drop(shared);
        let exclusive = lock.try_write_owned().map_err(|_| busy())?;
        // Someone may have finished mounting between our look and our lock.
        match self.state(&target, &device, volume).await? {
            NfsMountProbe::Answering => {
                return Ok(ExportMount {
                    path: target,
                    fresh: false,
                    _hold: exclusive.downgrade(),
                })
            }
            NfsMountProbe::Gone => {}
            NfsMountProbe::Stale => {
                // The export was recreated on the server: every handle below the old mount is
                // dead, and only a new mount sees the new export.
                tracing::warn!(volume.name = volume, export = %device, "remounting an export whose file handle went stale");
                self.os
                    .unmount(&target, true)
                    .await
                    .map_err(ControllerError::os("unmount stale export", volume))?;
            }
        }
        self.os
            .fs(
                FsOp::MakeTarget {
                    path: target.clone(),
                },
                Medium::Local,
            )
            .await
            .map_err(ControllerError::os("create staging directory", volume))?;
        let spec = MountSpec {
            source: MountSource::Nfs {
                server: server.to_string(),
                path: share.to_string(),
            },
            target: target.clone(),
            // The controller only makes and removes directories there: whatever a pod with a
            // static PV of the share root planted is never run or opened as a device here.
            flags: MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            options,
        };
        if let Err(e) = self.os.mount(&spec).await {
            self.remove_point(&target).await;
            return Err(ControllerError::os("mount export", volume)(e));
        }
        Ok(ExportMount {
            path: target,
            fresh: true,
            _hold: exclusive.downgrade(),
        })
    }

    /// Remove the staging directory `target` if it is empty, as after a failed mount: pvdir
    /// made it (it is a name of its own under its own staging directory), and an empty one is
    /// only clutter. rmdir never follows a symlink and refuses a mount point or content, so
    /// whatever else is there stays.
    async fn remove_point(&self, target: &Path) {
        let op = FsOp::RemoveTarget {
            path: target.to_path_buf(),
        };
        if let Err(e) = self.os.fs(op, Medium::Local).await {
            tracing::warn!(target.path = %target.display(), error = %e, "could not remove an export's staging directory");
        }
    }

    /// Unmount every export mounted under the staging directory and remove its directory: on
    /// a clean shutdown, after the last call finished, so that the controller's mounts do not
    /// outlive it. Each unmount is bounded like any other (the killable helper, forced and
    /// then detached on a dead server). Failures are logged, never fatal: the next start
    /// mounts again over whatever stayed.
    pub async fn release_all(&self) {
        let mounts = match self.os.mounts().await {
            Ok(mounts) => mounts,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the mount table to release exports");
                return;
            }
        };
        let mut points: Vec<PathBuf> = mounts
            .iter()
            .filter(|m| m.is_remote() && m.mount_point.parent() == Some(self.staging.as_path()))
            .map(|m| m.mount_point.clone())
            .collect();
        points.sort();
        points.dedup();
        for point in points {
            tracing::info!(target.path = %point.display(), "unmounting an export on shutdown");
            // A replaced stale mount may lie under the current one: a few rounds, not a loop
            // that a mount coming back could keep going.
            for _ in 0..4 {
                let mounted =
                    self.os.mounts().await.is_ok_and(|m| {
                        mountinfo::top_at(&m, &point).is_some_and(|t| t.is_remote())
                    });
                if !mounted {
                    break;
                }
                if let Err(e) = self.os.unmount(&point, true).await {
                    tracing::warn!(target.path = %point.display(), error = %e, "could not unmount an export on shutdown");
                    break;
                }
            }
            self.remove_point(&point).await;
        }
    }

    /// Whether `device` (`server:/path`) is the topmost mount at `target` (`Gone` if not), and
    /// if so whether the server still knows its file handle. A server that does not answer is
    /// an error.
    async fn state(
        &self,
        target: &Path,
        device: &str,
        volume: &str,
    ) -> Result<NfsMountProbe, ControllerError> {
        let mounts = self
            .os
            .mounts()
            .await
            .map_err(ControllerError::os("read mount table", volume))?;
        if !mountinfo::top_at(&mounts, target).is_some_and(|m| m.is_remote() && m.source_is(device))
        {
            return Ok(NfsMountProbe::Gone);
        }
        probe_nfs_mount(&*self.os, target)
            .await
            .map_err(ControllerError::os("check export mount", volume))
    }
}
