//! NFS snapshots (restores and clones are in `fill.rs`), kept on the source volume's export in
//! pvdir's own directory there, which no volume may lie in (see `validate_volume_subdir`), so no
//! pod reaches a snapshot:
//!
//! - `.pvdir/snapshots/<key>/data/` is the copy, `.pvdir/snapshots/<key>/work/` its scratch;
//! - `.pvdir/snapmeta/<key>.json` is the record (a directory of its own, so the volume records
//!   in `.pvdir/*.json` stay exactly the volume records).
//!
//! As on the local backend: the record is stored exclusively before the copy starts and says
//! `ready` only once the copy is complete and synced; each call copies for at most the copy
//! budget, in the killable helper under the server time bound like every other export
//! operation, and answers `ready: false` when that was not enough (the snapshotter's retries
//! continue, and so does the first retry after a crash). A copy that fails for good leaves
//! nothing. DeleteSnapshot removes the copy and then the record.

use super::claims::RECORD_DIR;
use super::NfsBackend;
use crate::domain::error::ControllerError;
use crate::domain::record::{key_record_name, RecordDir};
use crate::domain::snapshot::{snapshot_parts, Snapshot, SnapshotId, SnapshotRecord};
use crate::domain::volume_id::{NfsExport, NfsId, VolumeId, VolumeKey};
use crate::os::safe_fs::CopyPlan;
use crate::os::{FsOp, Medium, RelPath};

/// pvdir-made paths below the export root: constant names and keys, single plain segments.
pub(super) fn rel(s: &str) -> RelPath {
    RelPath::parse(s).unwrap_or_else(|_| unreachable!("{s:?} is a valid RelPath"))
}

pub(super) fn snapshot_dir(key: &VolumeKey) -> RelPath {
    rel(&format!("{RECORD_DIR}/snapshots/{}", key.as_str()))
}

impl NfsBackend {
    pub(super) fn snap_records(&self, mount: &std::path::Path) -> RecordDir {
        RecordDir::new(
            std::sync::Arc::clone(&self.os),
            Medium::Remote,
            mount.to_path_buf(),
            rel(&format!("{RECORD_DIR}/snapmeta")),
        )
        .flagging_scratch(self.scratch.flag(mount))
    }

    /// The snapshot a CreateSnapshot names: on the export of its source, an NFS volume of
    /// this driver (anything else is NOT_FOUND).
    pub fn snapshot_plan(
        &self,
        name: &str,
        source_volume: &str,
    ) -> Result<(SnapshotId, NfsId), ControllerError> {
        let (source, key) = match snapshot_parts(name, source_volume)? {
            (VolumeId::Nfs(id), key) => (id, key),
            _ => {
                return Err(ControllerError::NotFound {
                    id: source_volume.to_string(),
                })
            }
        };
        let id = SnapshotId::Nfs {
            export: source.export(),
            key,
        };
        Ok((id, source))
    }

    /// Make, or continue making, snapshot `key` of `source`; see the module header.
    pub async fn create_snapshot(
        &self,
        name: &str,
        key: &VolumeKey,
        source: &NfsId,
    ) -> Result<Snapshot, ControllerError> {
        let source_raw = VolumeId::Nfs(source.clone()).to_string();
        let id = SnapshotId::Nfs {
            export: source.export(),
            key: key.clone(),
        };
        // Held until this returns: the source's export stays mounted, and no create or delete
        // of the source's directory runs meanwhile.
        let _dir = self.claim_dir(source)?;
        let found = self.owned(source, &source_raw).await?;
        let export = found.export;
        let snaps = self.snap_records(&export.path);
        let record_name = key_record_name(key);
        let mut record = match snaps.load::<SnapshotRecord>(&record_name, name).await? {
            Some(r) => {
                if let Some(conflict) = r.conflict(name, &source_raw, None) {
                    return Err(conflict);
                }
                if r.ready {
                    return Ok(r.snapshot(id));
                }
                r
            }
            None => {
                let volume = found
                    .record
                    .filter(|r| r.creating.is_none())
                    .ok_or_else(|| ControllerError::NotFound {
                        id: source_raw.clone(),
                    })?;
                let r = SnapshotRecord::started(name, &source_raw, volume.size());
                if !snaps.store(&record_name, &r, true, name).await? {
                    return Err(ControllerError::InFlight {
                        key: format!("snapshot {name}"),
                    });
                }
                r
            }
        };
        let dir = snapshot_dir(key);
        let (data, work) = (rel(&format!("{dir}/data")), rel(&format!("{dir}/work")));
        for d in [&data, &work] {
            let op = FsOp::EnsureDir {
                base: export.path.clone(),
                rel: d.clone(),
                mode: Some(0o700),
            };
            self.remote(op, "create snapshot directory", name).await?;
        }
        let plan = CopyPlan {
            src_base: export.path.clone(),
            src: source.subdir.clone(),
            dst_base: export.path.clone(),
            dst: data,
            work_base: export.path.clone(),
            work: work.clone(),
        };
        let progress = match self.copy(plan, name).await {
            Ok(p) => p,
            Err(e) => {
                // The snapshotter takes a final error to mean none exists: leave nothing.
                if let Err(undo) = self.remove_snapshot(&export.path, &snaps, key, name).await {
                    tracing::warn!(snapshot.name = name, error = %undo, copy = %e,
                        "could not remove a snapshot whose copy failed");
                }
                return Err(e);
            }
        };
        if progress.complete {
            let op = FsOp::RemoveTree {
                base: export.path.clone(),
                rel: work,
                prune_parents: false,
            };
            self.remote(op, "remove snapshot work directory", name)
                .await?;
            let mut ready = record.clone();
            ready.ready = true;
            match snaps
                .swap(&record_name, &record, Some(&ready), name)
                .await?
            {
                None => record = ready,
                // Deleted or changed by another controller meanwhile: its retry decides.
                Some(_) => {
                    return Err(ControllerError::InFlight {
                        key: format!("snapshot {name}"),
                    })
                }
            }
        }
        Ok(record.snapshot(id))
    }

    async fn remove_snapshot(
        &self,
        mount: &std::path::Path,
        snaps: &RecordDir,
        key: &VolumeKey,
        raw: &str,
    ) -> Result<(), ControllerError> {
        let op = FsOp::RemoveTree {
            base: mount.to_path_buf(),
            rel: snapshot_dir(key),
            prune_parents: false,
        };
        self.remote(op, "remove snapshot", raw).await?;
        snaps.remove(&key_record_name(key), raw).await
    }

    /// `false` when there was no such snapshot. The copy goes first, the record last, so a
    /// retry after a crash still finds the record and finishes.
    pub async fn delete_snapshot(
        &self,
        export: &NfsExport,
        key: &VolumeKey,
        raw: &str,
    ) -> Result<bool, ControllerError> {
        let mount = self.export_of(export, raw).await?;
        let snaps = self.snap_records(&mount.path);
        if snaps
            .load::<SnapshotRecord>(&key_record_name(key), raw)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        self.remove_snapshot(&mount.path, &snaps, key, raw).await?;
        Ok(true)
    }

    /// The snapshot an ID names, from its record alone.
    pub async fn snapshot(
        &self,
        export: &NfsExport,
        key: &VolumeKey,
        raw: &str,
    ) -> Result<Option<Snapshot>, ControllerError> {
        let mount = self.export_of(export, raw).await?;
        let found: Option<SnapshotRecord> = self
            .snap_records(&mount.path)
            .load(&key_record_name(key), raw)
            .await?;
        Ok(found.map(|r| {
            r.snapshot(SnapshotId::Nfs {
                export: export.clone(),
                key: key.clone(),
            })
        }))
    }
}
