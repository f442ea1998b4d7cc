//! The content of an NFS volume made from a snapshot or another volume (a restore or a
//! clone). The source is checked before anything is claimed; the volume's claim then stays
//! `creating` while its directory is filled, at most the copy budget per call, through
//! `.pvdir/work/<record>/` on the destination export. Until the copy is complete CreateVolume
//! answers ABORTED and the provisioner's retries continue it; the volume is handed out only
//! once it is. The source may lie on another export than the new volume (a restore into a
//! class of another share): both exports are held mounted for the call.
//!
//! A copy that fails for good removes what it made and releases the claim, since the
//! provisioner takes a final error to mean no volume exists.

use std::path::Path;

use super::claims::RECORD_DIR;
use super::export::ExportMount;
use super::snapshots::{rel, snapshot_dir};
use super::NfsBackend;
use crate::domain::error::ControllerError;
use crate::domain::params::ParamsError;
use crate::domain::record::key_record_name;
use crate::domain::snapshot::{ContentSource, SnapshotId, SnapshotRecord};
use crate::domain::volume_id::{NfsExport, NfsId, VolumeId, VolumeKey};
use crate::os::safe_fs::{CopyPlan, CopyProgress};
use crate::os::{FsOp, FsReply, OsError, RelPath};

/// Where a new NFS volume's content comes from.
#[derive(Debug, Clone)]
pub enum NfsSource {
    Snapshot {
        raw: String,
        export: NfsExport,
        key: VolumeKey,
    },
    Volume {
        raw: String,
        id: NfsId,
    },
}

impl NfsSource {
    /// A CreateVolume's content source, when it is an NFS snapshot or volume of this driver;
    /// NOT_FOUND for anything else (a local one, or an ID pvdir never made).
    pub fn parse(source: &ContentSource) -> Result<Self, ControllerError> {
        match source {
            ContentSource::Snapshot(raw) => match SnapshotId::parse(raw) {
                Ok(SnapshotId::Nfs { export, key }) => Ok(Self::Snapshot {
                    raw: SnapshotId::Nfs {
                        export: export.clone(),
                        key: key.clone(),
                    }
                    .to_string(),
                    export,
                    key,
                }),
                _ => Err(ControllerError::NotFound { id: raw.clone() }),
            },
            ContentSource::Volume(raw) => match VolumeId::parse(raw) {
                Ok(VolumeId::Nfs(id)) => Ok(Self::Volume {
                    raw: VolumeId::Nfs(id.clone()).to_string(),
                    id,
                }),
                _ => Err(ControllerError::NotFound { id: raw.clone() }),
            },
        }
    }

    /// The in-flight key of the source: the key its own calls take (its canonical ID).
    pub fn guard_key(&self) -> &str {
        match self {
            Self::Snapshot { raw, .. } | Self::Volume { raw, .. } => raw,
        }
    }

    /// As kept in the volume's record: a repeated create must name the same source.
    pub fn content(&self) -> ContentSource {
        match self {
            Self::Snapshot { raw, .. } => ContentSource::Snapshot(raw.clone()),
            Self::Volume { raw, .. } => ContentSource::Volume(raw.clone()),
        }
    }
}

/// The error for a class that adopts existing content asked to fill a volume from a source.
pub fn reuse_with_source() -> ControllerError {
    ControllerError::Parameters(ParamsError::Value {
        key: "reuseExisting",
        reason: "a volume made from a snapshot or a volume holds only its source's content".into(),
    })
}

/// A checked source, its export held mounted for the call.
pub struct Resolved {
    export: ExportMount,
    rel: RelPath,
}

/// The work directory of a fill, named after the volume's record on the destination export.
pub(super) fn work_dir(record_name: &str) -> RelPath {
    let stem = record_name.strip_suffix(".json").unwrap_or(record_name);
    rel(&format!("{RECORD_DIR}/work/{stem}"))
}

impl NfsBackend {
    /// Check `source` before anything is made: it exists and is complete, and a sized volume
    /// is at least as large.
    pub(super) async fn resolve(
        &self,
        source: &NfsSource,
        capacity_bytes: i64,
        volume: &str,
    ) -> Result<Resolved, ControllerError> {
        let (raw, size, export, rel) = match source {
            NfsSource::Snapshot { raw, export, key } => {
                let mount = self.export_of(export, volume).await?;
                let record: SnapshotRecord = self
                    .snap_records(&mount.path)
                    .load(&key_record_name(key), volume)
                    .await?
                    .ok_or_else(|| ControllerError::NotFound { id: raw.clone() })?;
                if !record.ready {
                    return Err(ControllerError::SnapshotNotReady { id: raw.clone() });
                }
                let data = rel(&format!("{}/data", snapshot_dir(key)));
                (raw, record.size_bytes, mount, data)
            }
            NfsSource::Volume { raw, id } => {
                let found = self.owned(id, volume).await?;
                let record = found
                    .record
                    .filter(|r| r.creating.is_none())
                    .ok_or_else(|| ControllerError::NotFound { id: raw.clone() })?;
                (raw, record.size(), found.export, id.subdir.clone())
            }
        };
        // 0 asks for no size; on NFS sizes are recorded, not enforced, but a restore smaller
        // than its source is refused as on the local backend.
        if capacity_bytes > 0 && capacity_bytes < size {
            return Err(ControllerError::SourceTooLarge {
                from: raw.clone(),
                size,
                requested: capacity_bytes,
            });
        }
        Ok(Resolved { export, rel })
    }

    /// Copy the source into the volume `id` (mounted at `mount`) for at most the copy budget;
    /// `true` once all of it is there and synced.
    pub(super) async fn fill(
        &self,
        from: &Resolved,
        mount: &Path,
        id: &NfsId,
        record_name: &str,
        volume: &str,
    ) -> Result<bool, ControllerError> {
        let work = work_dir(record_name);
        let op = FsOp::EnsureDir {
            base: mount.to_path_buf(),
            rel: work.clone(),
            mode: Some(0o700),
        };
        self.remote(op, "create work directory", volume).await?;
        let plan = CopyPlan {
            src_base: from.export.path.clone(),
            src: from.rel.clone(),
            dst_base: mount.to_path_buf(),
            dst: id.subdir.clone(),
            work_base: mount.to_path_buf(),
            work: work.clone(),
        };
        let progress = self.copy(plan, volume).await?;
        if progress.complete {
            self.remove_work(mount, record_name, volume).await?;
        }
        Ok(progress.complete)
    }

    /// The work directory of a fill, when it completed, failed, or its volume goes.
    pub(super) async fn remove_work(
        &self,
        mount: &Path,
        record_name: &str,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let op = FsOp::RemoveTree {
            base: mount.to_path_buf(),
            rel: work_dir(record_name),
            prune_parents: false,
        };
        self.remote(op, "remove work directory", volume)
            .await
            .map(drop)
    }

    /// A failed fill: its directory and work directory go first, then the claim, so that no
    /// other volume can claim the directory while its content is being removed.
    pub(super) async fn undo_fill(
        &self,
        mount: &Path,
        id: &NfsId,
        record_name: &str,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let op = FsOp::RemoveTree {
            base: mount.to_path_buf(),
            rel: id.subdir.clone(),
            prune_parents: true,
        };
        self.remote(op, "remove volume directory", volume).await?;
        self.remove_work(mount, record_name, volume).await
    }

    /// One call of the copy, in the killable helper, bounded by the copy budget.
    pub(super) async fn copy(
        &self,
        plan: CopyPlan,
        volume: &str,
    ) -> Result<CopyProgress, ControllerError> {
        let step = "copy content";
        let op = FsOp::CopyTree {
            plan,
            budget_ms: u64::try_from(self.copy_budget.as_millis()).unwrap_or(u64::MAX),
        };
        match self.remote(op, step, volume).await? {
            FsReply::Copied(progress) => {
                tracing::debug!(volume, complete = progress.complete, stats = ?progress.stats, "copied");
                Ok(progress)
            }
            other => Err(ControllerError::os(step, volume)(
                OsError::unexpected_reply("copy-tree", &other),
            )),
        }
    }
}
