//! The content of a volume made from a snapshot or another volume (a restore or a clone):
//! its source checked, then copied in through `<root>/work/<key>/` for at most the copy
//! budget per call (see `safe_fs::copy_tree`). The volume is handed out only once the copy is
//! complete; until then CreateVolume answers ABORTED and the provisioner's retries continue.

use std::time::Duration;

use super::snapshots::{SNAPSHOTS, WORK};
use super::store::Store;
use super::{LocalRecord, VOLUMES};
use crate::domain::error::ControllerError;
use crate::domain::snapshot::{ContentSource, SnapshotId};
use crate::domain::volume_id::{VolumeId, VolumeKey};
use crate::os::safe_fs::{CopyPlan, CopyProgress};
use crate::os::{FsOp, FsReply, OsError, RelPath};

/// A path of keys and constant names, which are single plain segments.
pub(super) fn seg(s: &str) -> RelPath {
    // Keys and the constant names here are single plain segments.
    RelPath::parse(s).unwrap_or_else(|_| unreachable!("{s:?} is a valid RelPath"))
}

/// Where a new volume's content comes from, checked to exist (see [`Store::resolve_source`]).
#[derive(Debug, Clone)]
pub enum LocalSource {
    Snapshot { raw: String, key: VolumeKey },
    Volume { raw: String, key: VolumeKey },
}

impl LocalSource {
    /// The in-flight key of the source: the same key its own calls take, so a source is
    /// neither deleted nor written by pvdir while it is being copied.
    pub fn guard_key(&self) -> &str {
        match self {
            LocalSource::Snapshot { raw, .. } | LocalSource::Volume { raw, .. } => raw,
        }
    }
}

impl Store {
    /// Check a new volume's content source before anything is made: it exists here and is
    /// complete, and the volume (if sized) is at least as large.
    pub(super) fn resolve_source(
        &self,
        source: &LocalSource,
        capacity_bytes: i64,
    ) -> Result<(), ControllerError> {
        let (raw, size) = match source {
            LocalSource::Snapshot { raw, key } => {
                let r = self
                    .read_snapshot(key)?
                    .ok_or_else(|| ControllerError::NotFound { id: raw.clone() })?;
                if !r.ready {
                    return Err(ControllerError::SnapshotNotReady { id: raw.clone() });
                }
                (raw, r.size_bytes)
            }
            LocalSource::Volume { raw, key } => {
                let r = self
                    .read_record(key)?
                    .filter(|r| !r.populating)
                    .ok_or_else(|| ControllerError::NotFound { id: raw.clone() })?;
                (raw, r.size())
            }
        };
        // 0 asks for no size: the volume is then not limited, and holds the source whatever
        // its size.
        if capacity_bytes > 0 && capacity_bytes < size {
            return Err(ControllerError::SourceTooLarge {
                from: raw.clone(),
                size,
                requested: capacity_bytes,
            });
        }
        Ok(())
    }

    /// Copy `source` into volume `key` for at most `budget`; `true` once it is all there. The
    /// work directory joins the volume's project first: a file renamed into a directory of
    /// another project is refused (EXDEV) by both XFS and ext4.
    pub(super) fn fill(
        &self,
        key: &VolumeKey,
        record: &LocalRecord,
        source: &LocalSource,
        budget: Duration,
    ) -> Result<bool, ControllerError> {
        let volume = record.name.as_str();
        self.ensure(WORK, key.as_str(), volume)?;
        if let (Some(project), false) = (
            record.project(),
            self.support == crate::os::quota::Support::None,
        ) {
            self.quota
                .quotas
                .assign(&self.root.join(WORK), key.rel(), project)
                .map_err(ControllerError::quota("assign project", volume))?;
        }
        let (src_base, src) = match source {
            LocalSource::Snapshot { key, .. } => (
                self.root.join(SNAPSHOTS),
                seg(&format!("{}/data", key.as_str())),
            ),
            LocalSource::Volume { key, .. } => (self.root.join(VOLUMES), key.rel().clone()),
        };
        let plan = CopyPlan {
            src_base,
            src,
            dst_base: self.root.join(VOLUMES),
            dst: key.rel().clone(),
            work_base: self.root.join(WORK),
            work: key.rel().clone(),
        };
        let progress = self.copy(plan, budget, volume)?;
        if progress.complete {
            self.remove_dir(WORK, key.as_str(), volume)?;
        }
        Ok(progress.complete)
    }

    /// The work directory of a volume that was being filled, when the volume goes.
    pub(super) fn remove_fill(&self, key: &VolumeKey, volume: &str) -> Result<(), ControllerError> {
        self.remove_dir(WORK, key.as_str(), volume)
    }

    pub(super) fn copy(
        &self,
        plan: CopyPlan,
        budget: Duration,
        volume: &str,
    ) -> Result<CopyProgress, ControllerError> {
        let step = "copy content";
        let op = FsOp::CopyTree {
            plan,
            budget_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
        };
        match self.fs(op, step, volume)? {
            FsReply::Copied(progress) => {
                tracing::debug!(volume, complete = progress.complete, stats = ?progress.stats, "copied");
                Ok(progress)
            }
            other => Err(ControllerError::os(step, volume)(
                OsError::unexpected_reply("copy-tree", &other),
            )),
        }
    }

    pub(super) fn ensure(
        &self,
        area: &str,
        rel: &str,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let op = FsOp::EnsureDir {
            base: self.root.join(area),
            rel: seg(rel),
            mode: Some(0o700),
        };
        self.fs(op, "create directory", volume).map(drop)
    }

    pub(super) fn remove_dir(
        &self,
        area: &str,
        rel: &str,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let op = FsOp::RemoveTree {
            base: self.root.join(area),
            rel: seg(rel),
            prune_parents: false,
        };
        self.fs(op, "remove directory", volume).map(drop)
    }
}

impl super::LocalBackend {
    /// The content source of a CreateVolume, when it is one of this node's; NOT_FOUND for
    /// anything else (another node's, another backend's, or an ID pvdir never made).
    pub(super) fn source(&self, source: &ContentSource) -> Result<LocalSource, ControllerError> {
        let node = &self.store.node_id;
        match source {
            ContentSource::Snapshot(raw) => match SnapshotId::parse(raw) {
                Ok(SnapshotId::Local { node: n, key }) if &n == node => Ok(LocalSource::Snapshot {
                    raw: SnapshotId::Local {
                        node: n,
                        key: key.clone(),
                    }
                    .to_string(),
                    key,
                }),
                _ => Err(ControllerError::NotFound { id: raw.clone() }),
            },
            ContentSource::Volume(raw) => match VolumeId::parse(raw) {
                Ok(VolumeId::Local(id)) if &id.node == node => Ok(LocalSource::Volume {
                    raw: VolumeId::Local(id.clone()).to_string(),
                    key: id.key,
                }),
                _ => Err(ControllerError::NotFound { id: raw.clone() }),
            },
        }
    }
}
