//! Local snapshots (restores and clones are in `fill`).
//!
//! Layout (beside the volumes, never inside one, so no pod can reach it):
//! `<root>/snapshots/<key>/data/` is the copy and `<root>/snapshots/<key>/work/` the copy's
//! scratch space; `<root>/snapmeta/<key>.json` is the snapshot's record.
//!
//! A snapshot's record is written (and synced) before its copy starts and says `ready` only
//! once the copy is complete and synced (see `safe_fs::copy_tree`): a snapshot is never
//! reported ready with partial content. Each call copies for at most the copy budget and
//! answers `ready: false` if it was not enough; the snapshotter's retries continue the copy
//! where it stopped, and so does the first retry after a crash. DeleteSnapshot removes the
//! copy and then the record, so a retry after a crash finishes it. Snapshots and volumes never
//! share a directory: deleting either never touches the other.

use std::time::Duration;

use super::fill::seg;
use super::store::{record_name, Store};
use super::VOLUMES;
use crate::domain::error::ControllerError;
use crate::domain::record::RECORD_SUFFIX;
use crate::domain::snapshot::{snapshot_parts, Snapshot, SnapshotId, SnapshotRecord};
use crate::domain::volume_id::{LocalId, VolumeId, VolumeKey};
use crate::os::safe_fs::CopyPlan;

pub(super) const SNAPSHOTS: &str = "snapshots";
pub(super) const SNAPMETA: &str = "snapmeta";
pub(super) const WORK: &str = "work";

impl Store {
    pub(super) fn snapshot_of(&self, key: &VolumeKey, r: &SnapshotRecord) -> Snapshot {
        r.snapshot(SnapshotId::Local {
            node: self.node_id.clone(),
            key: key.clone(),
        })
    }

    pub(super) fn read_snapshot(
        &self,
        key: &VolumeKey,
    ) -> Result<Option<SnapshotRecord>, ControllerError> {
        self.snap_records().load(&record_name(key), key.as_str())
    }

    /// Make (or continue making) snapshot `key` of volume `source` on this node; see the
    /// module header.
    pub(super) fn create_snapshot(
        &self,
        name: &str,
        key: &VolumeKey,
        source: &LocalId,
        budget: Duration,
        group: Option<&str>,
    ) -> Result<Snapshot, ControllerError> {
        let source_raw = VolumeId::Local(source.clone()).to_string();
        let mut record = match self.read_snapshot(key)? {
            Some(r) => {
                if let Some(conflict) = r.conflict(name, &source_raw, group) {
                    return Err(conflict);
                }
                if r.ready {
                    return Ok(self.snapshot_of(key, &r));
                }
                r
            }
            None => {
                let volume = self
                    .read_record(&source.key)?
                    .filter(|v| !v.populating)
                    .ok_or_else(|| ControllerError::NotFound {
                        id: source_raw.clone(),
                    })?;
                let mut r = SnapshotRecord::started(name, &source_raw, volume.size());
                r.group = group.map(str::to_string);
                // Synced before any copying: a crash leaves a record that the retry continues.
                if !self
                    .snap_records()
                    .store(&record_name(key), &r, true, name)?
                {
                    return Err(ControllerError::InFlight {
                        key: format!("snapshot {name}"),
                    });
                }
                r
            }
        };
        for rel in [
            key.as_str().to_string(),
            format!("{}/data", key.as_str()),
            format!("{}/work", key.as_str()),
        ] {
            self.ensure(SNAPSHOTS, &rel, name)?;
        }
        let plan = CopyPlan {
            src_base: self.root.join(VOLUMES),
            src: source.key.rel().clone(),
            dst_base: self.root.join(SNAPSHOTS),
            dst: seg(&format!("{}/data", key.as_str())),
            work_base: self.root.join(SNAPSHOTS),
            work: seg(&format!("{}/work", key.as_str())),
        };
        let progress = match self.copy(plan, budget, name) {
            Ok(p) => p,
            Err(e) => {
                // Never reported, and the snapshotter takes a final error to mean none
                // exists: leave nothing behind (a retry starts afresh).
                if let Err(undo) = self.delete_snapshot(key, name) {
                    tracing::warn!(snapshot.name = name, error = %undo, copy = %e,
                        "could not remove a snapshot whose copy failed");
                }
                return Err(e);
            }
        };
        if progress.complete {
            self.remove_dir(SNAPSHOTS, &format!("{}/work", key.as_str()), name)?;
            record.ready = true;
            self.snap_records()
                .store(&record_name(key), &record, false, name)?;
        }
        Ok(self.snapshot_of(key, &record))
    }

    /// The copy first, then the record: a retry after a crash still finds the record.
    pub(super) fn delete_snapshot(
        &self,
        key: &VolumeKey,
        raw: &str,
    ) -> Result<bool, ControllerError> {
        if self.read_snapshot(key)?.is_none() {
            return Ok(false);
        }
        self.remove_dir(SNAPSHOTS, key.as_str(), raw)?;
        self.snap_records().remove(&record_name(key), raw)?;
        Ok(true)
    }

    /// Every snapshot on this node, sorted by key (a stable order for pagination).
    pub(super) fn list_snapshots(&self) -> Result<Vec<Snapshot>, ControllerError> {
        let records = self.snap_records();
        let (keys, names): (Vec<VolumeKey>, Vec<String>) = records
            .names()?
            .into_iter()
            .filter_map(|n| Some((n.strip_suffix(RECORD_SUFFIX).and_then(VolumeKey::parse)?, n)))
            .unzip();
        let found: Vec<Option<SnapshotRecord>> = records.load_many(&names, "*")?;
        let mut all: Vec<Snapshot> = keys
            .iter()
            .zip(found)
            .filter_map(|(key, r)| Some(self.snapshot_of(key, &r?)))
            .collect();
        all.sort_by_key(|a| a.id.to_string());
        Ok(all)
    }
}

impl super::LocalBackend {
    /// The snapshot a CreateSnapshot names, of a volume on this node. Another node's volume
    /// is NOT_FOUND here: its own node's snapshotter takes it.
    pub fn snapshot_plan(
        &self,
        name: &str,
        source_volume: &str,
    ) -> Result<(SnapshotId, LocalId), ControllerError> {
        let (source, key) = match snapshot_parts(name, source_volume)? {
            (VolumeId::Local(id), key) if id.node == self.store.node_id => (id, key),
            _ => {
                return Err(ControllerError::NotFound {
                    id: source_volume.to_string(),
                })
            }
        };
        let id = SnapshotId::Local {
            node: self.store.node_id.clone(),
            key,
        };
        Ok((id, source))
    }

    pub async fn create_snapshot(
        &self,
        name: &str,
        key: &VolumeKey,
        source: &LocalId,
    ) -> Result<Snapshot, ControllerError> {
        let (name, key, source) = (name.to_string(), key.clone(), source.clone());
        let budget = self.copy_budget;
        self.run("create snapshot", &name.clone(), move |s| {
            s.create_snapshot(&name, &key, &source, budget, None)
        })
        .await
    }

    /// `false` when there was no such snapshot (deleted before, or never made); another
    /// node's snapshot is FAILED_PRECONDITION, as another node's volume is.
    pub async fn delete_snapshot(
        &self,
        node: &str,
        key: &VolumeKey,
        raw: &str,
    ) -> Result<bool, ControllerError> {
        if node != self.store.node_id {
            // Only its own node can remove the copy (as for volumes).
            return Err(ControllerError::WrongNode {
                id: raw.to_string(),
                node: node.to_string(),
            });
        }
        let (key, owned) = (key.clone(), raw.to_string());
        self.run("delete snapshot", raw, move |s| {
            s.delete_snapshot(&key, &owned)
        })
        .await
    }

    /// The snapshot `node` and `key` name, from its record alone; `None` for another node's.
    pub async fn snapshot(
        &self,
        node: &str,
        key: &VolumeKey,
    ) -> Result<Option<Snapshot>, ControllerError> {
        if node != self.store.node_id {
            return Ok(None);
        }
        let (key, raw) = (key.clone(), key.as_str().to_string());
        self.run("read snapshot record", &raw, move |s| {
            Ok(s.read_snapshot(&key)?.map(|r| s.snapshot_of(&key, &r)))
        })
        .await
    }

    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>, ControllerError> {
        self.run("list snapshots", "*", |s| s.list_snapshots())
            .await
    }
}
