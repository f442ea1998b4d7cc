//! The local backend's work on disk: each public method here is one request's steps, run to
//! the end on a blocking thread (see [`crate::os::LocalDisk`]), so that a create or delete
//! costs one hand-off from the runtime however many steps it takes.
//!
//! Order of steps (see the module header of `local`): check what can be refused, commit the
//! intent to the journal, then apply it unsynced; the journal's replay at start-up redoes an
//! applied step a crash or power cut interrupted.

use std::path::PathBuf;
use std::sync::Arc;

use super::groups::GROUPS;
use super::journal::{Entry, LocalJournal};
use super::projects::Projects;
use super::snapshots::{SNAPMETA, SNAPSHOTS, WORK};
use super::{LocalPlan, LocalRecord, QuotaSetup, JOURNAL, META, VOLUMES};
use crate::domain::error::ControllerError;
use crate::domain::record::{DiskRecords, RecordSpec, RECORD_SUFFIX};
use crate::domain::volume::{CreateSpec, Deleted, Volume};
use crate::domain::volume_id::{LocalId, VolumeId, VolumeKey};
use crate::os::quota::Support;
use crate::os::{mountinfo, FsOp, FsReply, LocalDisk, MountEntry, OsError, RelPath};

fn state_dir(name: &'static str) -> RelPath {
    // A constant plain segment always parses; the fallback only keeps this panic-free.
    RelPath::parse(name).unwrap_or_else(|_| unreachable!("{name:?} is a valid RelPath"))
}

pub(super) struct Store {
    pub(super) root: PathBuf,
    pub(super) node_id: String,
    disk: Arc<dyn LocalDisk>,
    /// Records are synced by the journal, not one by one.
    records: RecordSpec,
    /// Snapshot records are synced one by one (see `snapshots`).
    snap_records: RecordSpec,
    /// Group snapshot records, synced one by one too (see `groups`).
    group_records: RecordSpec,
    /// Present where this process creates and deletes volumes (see [`Store::open`]).
    pub(super) journal: Option<LocalJournal>,
    pub(super) quota: QuotaSetup,
    /// What the root's filesystem does with project quotas, as found at start-up.
    pub(super) support: Support,
    /// Project IDs held by volumes, and what their quotas promise.
    pub(super) projects: Projects,
    /// Bytes in use in neither a volume's project nor project 0, as last counted (see
    /// `Store::measure_room`).
    pub(super) unusable: std::sync::atomic::AtomicU64,
}

impl Store {
    pub(super) fn new(
        root: PathBuf,
        node_id: String,
        disk: Arc<dyn LocalDisk>,
        quota: QuotaSetup,
    ) -> Self {
        // META is a constant single segment; the records are reached without following links.
        let records = RecordSpec::new(root.clone(), state_dir(META)).journaled();
        let snap_records = RecordSpec::new(root.clone(), state_dir(SNAPMETA));
        let group_records = RecordSpec::new(root.clone(), state_dir(GROUPS));
        Self {
            root,
            node_id,
            disk,
            records,
            snap_records,
            group_records,
            journal: None,
            quota,
            support: Support::None,
            projects: Projects::new(),
            unusable: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The journal covers the first two (see [`Store::open`]).
    pub(super) fn layout_dirs(&self) -> Vec<PathBuf> {
        [VOLUMES, META, JOURNAL, SNAPSHOTS, SNAPMETA, GROUPS, WORK]
            .iter()
            .map(|d| self.root.join(d))
            .collect()
    }

    pub(super) fn journal(&self) -> Result<&LocalJournal, ControllerError> {
        // Only a wiring mistake gets here: the controller is always given an opened backend.
        self.journal.as_ref().ok_or_else(|| {
            ControllerError::os("commit to journal", "*")(OsError::Journal(
                crate::os::journal::JournalError::NotReplayed,
            ))
        })
    }

    pub(super) fn volume_dir(&self, key: &VolumeKey) -> PathBuf {
        self.root.join(VOLUMES).join(key.as_str())
    }

    pub(super) fn volume(&self, key: VolumeKey, record: &LocalRecord) -> Volume {
        Volume {
            id: VolumeId::Local(LocalId {
                node: self.node_id.clone(),
                key,
            }),
            capacity_bytes: record.size(),
            node: Some(self.node_id.clone()),
            source: record.source.clone(),
        }
    }

    pub(super) fn fs(
        &self,
        op: FsOp,
        step: &'static str,
        volume: &str,
    ) -> Result<FsReply, ControllerError> {
        self.disk.run(op).map_err(ControllerError::os(step, volume))
    }

    pub(super) fn records(&self) -> DiskRecords<'_> {
        DiskRecords {
            disk: &*self.disk,
            spec: &self.records,
        }
    }

    pub(super) fn snap_records(&self) -> DiskRecords<'_> {
        DiskRecords {
            disk: &*self.disk,
            spec: &self.snap_records,
        }
    }

    pub(super) fn group_records(&self) -> DiskRecords<'_> {
        DiskRecords {
            disk: &*self.disk,
            spec: &self.group_records,
        }
    }

    pub(super) fn read_record(
        &self,
        key: &VolumeKey,
    ) -> Result<Option<LocalRecord>, ControllerError> {
        self.records().load(&record_name(key), key.as_str())
    }

    pub(super) fn create(
        &self,
        spec: &CreateSpec,
        plan: LocalPlan,
    ) -> Result<Volume, ControllerError> {
        let (key, mode, policy) = (plan.id.key, plan.mode, plan.quota);
        let mut wanted = LocalRecord {
            name: spec.name.clone(),
            capacity_bytes: spec.capacity_bytes,
            mount_permissions: mode,
            project: None,
            expanded_bytes: None,
            source: spec.source.clone(),
            populating: spec.source.is_some(),
        };
        let journal = self.journal()?;
        let conflict = |existing: LocalRecord| ControllerError::NameConflict {
            name: spec.name.clone(),
            difference: format!(
                "existing capacity {} bytes, mode {:?}; requested {} bytes, mode {:?}",
                existing.capacity_bytes, existing.mount_permissions, spec.capacity_bytes, mode
            ),
        };
        // Refuse a conflict before the intent is logged: a replay would overwrite the record.
        let existing = self.read_record(&key)?;
        if let Some(other) = existing.clone().filter(|r| !r.same_request(&wanted)) {
            return Err(conflict(other));
        }
        let filling = existing
            .as_ref()
            .map_or(wanted.populating, |r| r.populating);
        if let (Some(source), true) = (&plan.source, filling) {
            self.resolve_source(source, spec.capacity_bytes)?;
        }
        // A retry finds the record as the first call left it, project and expansion included.
        let reserved = match existing.clone() {
            Some(found) => {
                wanted = found;
                None
            }
            None => self.reserve_project(policy, spec.capacity_bytes, &spec.name)?,
        };
        wanted.project = wanted.project.or(reserved.map(|p| p.get()));
        let logged = self.log_create(journal, &key, &wanted, &spec.name);
        if let (Err(_), Some(project)) = (&logged, reserved) {
            // Nothing names the reservation yet: give it back.
            self.projects.release(project);
        }
        logged?;
        if existing.is_none() {
            // Exclusive all the same: only another process could have written it meanwhile,
            // and the journal's lock keeps others out, but a record is never overwritten.
            if !self
                .records()
                .store(&record_name(&key), &wanted, true, &spec.name)?
            {
                if let Some(other) = self.read_record(&key)?.filter(|r| !r.same_request(&wanted)) {
                    return Err(conflict(other));
                }
            }
        }
        self.ensure_dir(&key, mode, &spec.name)?;
        self.apply_quota(&key, &wanted, &spec.name)?;
        if let (Some(source), true) = (&plan.source, wanted.populating) {
            let filled = self.fill(&key, &wanted, source, plan.budget);
            if let Err(e) = &filled {
                // No volume was handed out, and the provisioner takes a final error to mean
                // none exists: leave nothing behind (a retry starts afresh).
                if let Err(undo) = self.abandon(&key, &wanted, &spec.name) {
                    tracing::warn!(volume.name = %spec.name, error = %undo, fill = %e,
                        "could not remove a volume whose content could not be copied");
                }
            }
            if !filled? {
                return Err(ControllerError::Populating {
                    volume: spec.name.clone(),
                });
            }
            // The content is complete and synced: from now on the volume may be handed out.
            wanted.populating = false;
            self.log_create(journal, &key, &wanted, &spec.name)?;
            self.records()
                .store(&record_name(&key), &wanted, false, &spec.name)?;
        }
        Ok(self.volume(key, &wanted))
    }

    /// Commit a create's intent to the journal: once it is on disk, a crash at any later step
    /// (or a power cut that keeps a record's name but not its contents) is redone at
    /// start-up. Committed again on an idempotent retry, which costs one shared flush.
    fn log_create(
        &self,
        journal: &LocalJournal,
        key: &VolumeKey,
        record: &LocalRecord,
        volume: &str,
    ) -> Result<(), ControllerError> {
        journal.before_create(key, volume)?;
        let entry = Entry::Create {
            key: key.as_str().to_string(),
            record: record.clone(),
        };
        journal.commit(&entry, volume)
    }

    pub(super) fn ensure_dir(
        &self,
        key: &VolumeKey,
        mode: Option<u32>,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let op = FsOp::EnsureDir {
            base: self.root.join(VOLUMES),
            rel: key.rel().clone(),
            mode,
        };
        self.fs(op, "create volume directory", volume)?;
        Ok(())
    }

    /// Acts only while the volume's record exists. The record goes last, so a retry after a
    /// crash finds it and finishes; a directory without a record was never made by create.
    pub(super) fn delete(&self, key: &VolumeKey, raw: &str) -> Result<Deleted, ControllerError> {
        let journal = self.journal()?;
        let Some(record) = self.read_record(key)? else {
            // Never made, or its deletion is in the journal already and redone at start-up.
            return Ok(Deleted::NothingToDo);
        };
        refuse_if_mounted(&self.mount_table(raw)?, &self.volume_dir(key), raw)?;
        // Write-ahead, as in create: from here on, a crash is completed at start-up.
        let entry = Entry::Delete {
            key: key.as_str().to_string(),
        };
        journal.commit(&entry, raw)?;
        if record.populating {
            self.remove_fill(key, raw)?;
        }
        self.remove(key, record.project(), raw)?;
        journal.deleted(key, raw)?;
        Ok(Deleted::Removed)
    }

    /// Remove a volume that was never handed out, as a delete would.
    fn abandon(
        &self,
        key: &VolumeKey,
        record: &LocalRecord,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let journal = self.journal()?;
        let entry = Entry::Delete {
            key: key.as_str().to_string(),
        };
        journal.commit(&entry, volume)?;
        self.remove_fill(key, volume)?;
        self.remove(key, record.project(), volume)?;
        journal.deleted(key, volume)
    }

    pub(super) fn mount_table(&self, raw: &str) -> Result<Arc<Vec<MountEntry>>, ControllerError> {
        self.disk
            .mount_table()
            .map_err(ControllerError::os("read mount table", raw))
    }

    /// Remove the volume's directory, clear its quota and then remove its record; the caller
    /// checked for mounts. The record goes last: a retry still knows the project to clear.
    pub(super) fn remove(
        &self,
        key: &VolumeKey,
        project: Option<crate::os::quota::ProjectId>,
        raw: &str,
    ) -> Result<(), ControllerError> {
        let op = FsOp::RemoveTree {
            base: self.root.join(VOLUMES),
            rel: key.rel().clone(),
            prune_parents: false,
        };
        self.fs(op, "remove volume directory", raw)?;
        if let Some(project) = project {
            self.clear_quota(project, raw)?;
        }
        self.records().remove(&record_name(key), raw)?;
        if let Some(project) = project {
            self.projects.release(project);
        }
        Ok(())
    }

    pub(super) fn count(&self) -> Result<usize, ControllerError> {
        let names = self.records().names()?;
        Ok(names
            .iter()
            .filter(|n| {
                n.strip_suffix(RECORD_SUFFIX)
                    .and_then(VolumeKey::parse)
                    .is_some()
            })
            .count())
    }

    pub(super) fn list(&self) -> Result<Vec<Volume>, ControllerError> {
        Ok(self
            .all_records()?
            .into_iter()
            .filter(|(_, r)| !r.populating)
            .map(|(key, r)| self.volume(key, &r))
            .collect())
    }

    /// Every volume's record, sorted by key: one read of the record directory and one
    /// batched read of the records.
    pub(super) fn all_records(&self) -> Result<Vec<(VolumeKey, LocalRecord)>, ControllerError> {
        let records = self.records();
        // Temp files of an interrupted write and foreign files are not volumes.
        let (keys, names): (Vec<VolumeKey>, Vec<String>) = records
            .names()?
            .into_iter()
            .filter_map(|n| Some((n.strip_suffix(RECORD_SUFFIX).and_then(VolumeKey::parse)?, n)))
            .unzip();
        let found: Vec<Option<LocalRecord>> = records.load_many(&names, "*")?;
        // A record deleted between listing and reading is simply no longer a volume.
        Ok(keys
            .into_iter()
            .zip(found)
            .filter_map(|(key, record)| Some((key, record?)))
            .collect())
    }
}

pub(super) fn record_name(key: &VolumeKey) -> String {
    crate::domain::record::key_record_name(key)
}

/// Deleting the source of a live bind mount would delete a running pod's data. That includes
/// binds of a subdirectory (kubelet's subPath mounts), hence the prefix match.
pub(super) fn refuse_if_mounted(
    mounts: &[MountEntry],
    dir: &std::path::Path,
    raw: &str,
) -> Result<(), ControllerError> {
    match mountinfo::mounts_of_tree(mounts, dir).next() {
        Some(m) => Err(ControllerError::InUse {
            id: raw.to_string(),
            at: m.mount_point.clone(),
        }),
        None => Ok(()),
    }
}
