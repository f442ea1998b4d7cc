//! The local backend: one directory per volume under the node's root.
//!
//! Layout (all owned by pvdir): `<root>/volumes/<key>/` is the volume, bind-mounted into pods;
//! `<root>/meta/<key>.json` records the CreateVolume request that made it; `<root>/journal/`
//! makes both durable (see [`journal`]). Create writes the record first and then the directory;
//! delete removes the directory first and then the record. So a crash of the process between
//! the two steps leaves a record that the retried call completes, and ListVolumes (which reads
//! records) never misses a directory that exists. Neither step is synced on its own: each call
//! ends by committing its outcome to the journal, and is answered once that is on disk.

mod journal;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::access::{unsupported_reason, BackendKind};
use super::error::ControllerError;
use super::params::{from_map, parse_mode, LocalParams};
use super::record::{RecordDir, RECORD_SUFFIX};
use super::volume::{CreateSpec, Deleted, Volume, TOPOLOGY_KEY};
use super::volume_id::{LocalId, VolumeId, VolumeKey};
use crate::os::{mountinfo, FsOp, FsReply, Medium, MountEntry, Os, OsError, RelPath};
use journal::{Entry, LocalJournal};

const VOLUMES: &str = "volumes";
const META: &str = "meta";
const JOURNAL: &str = "journal";

fn meta_dir() -> RelPath {
    // A constant plain segment always parses; the fallback only keeps this panic-free.
    RelPath::parse(META).unwrap_or_else(|_| unreachable!("\"meta\" is a valid RelPath"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LocalRecord {
    name: String,
    capacity_bytes: i64,
    mount_permissions: Option<u32>,
}

/// A validated local CreateVolume: the volume it names and the directory mode.
pub struct LocalPlan {
    pub id: LocalId,
    mode: Option<u32>,
}

pub struct LocalBackend {
    root: PathBuf,
    node_id: String,
    os: Arc<dyn Os>,
    /// Present where this process creates and deletes volumes (see [`LocalBackend::open`]).
    journal: Option<LocalJournal>,
}

impl LocalBackend {
    /// A backend that only reads: enough for the node service. `root` must be an absolute,
    /// symlink-free path (main canonicalises it).
    pub fn new(root: PathBuf, node_id: String, os: Arc<dyn Os>) -> Self {
        Self {
            root,
            node_id,
            os,
            journal: None,
        }
    }

    /// A backend that also creates and deletes: makes the layout, takes the journal (waiting
    /// while another process holds it) and redoes what it holds, before any call is served.
    /// Journal flushes and checkpoints are timed into `metrics`.
    pub async fn open(
        root: PathBuf,
        node_id: String,
        os: Arc<dyn Os>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, ControllerError> {
        let mut backend = Self::new(root, node_id, os);
        let roots = backend.layout_dirs()[..2].to_vec();
        let pending = LocalJournal::open(backend.root.join(JOURNAL), roots, metrics).await?;
        // One read of the mount table for the whole replay, and none without a delete in it.
        let mounts = match pending
            .last
            .iter()
            .any(|(_, e)| matches!(e, Entry::Delete { .. }))
        {
            true => backend.mount_table("*").await?,
            false => Vec::new(),
        };
        for (key, entry) in &pending.last {
            backend.redo(key, entry, &mounts).await?;
        }
        if !pending.last.is_empty() {
            tracing::info!(
                volumes = pending.last.len(),
                "local journal replayed after an unclean stop"
            );
        }
        backend.journal = Some(pending.finish().await?);
        Ok(backend)
    }

    /// Make the disk match a journal entry: the volume exists as recorded, or not at all.
    async fn redo(
        &self,
        key: &VolumeKey,
        entry: &Entry,
        mounts: &[MountEntry],
    ) -> Result<(), ControllerError> {
        match entry {
            Entry::Create { record, .. } => {
                let name = Self::record_name(key);
                // After a power cut the record may be missing or empty (its name made it to
                // disk, its data did not): both are rewritten from the entry.
                let found = match self.read_record(key).await {
                    Ok(found) => found,
                    Err(ControllerError::CorruptRecord { .. }) => None,
                    Err(e) => return Err(e),
                };
                if found.as_ref() != Some(record) {
                    self.records()
                        .journaled()
                        .store(&name, record, false, &record.name)
                        .await?;
                }
                self.ensure_dir(key, record.mount_permissions, &record.name)
                    .await
            }
            Entry::Delete { .. } => {
                refuse_if_mounted(mounts, &self.volume_dir(key), key.as_str())?;
                self.remove(key, key.as_str()).await
            }
        }
    }

    fn journal(&self) -> Result<&LocalJournal, ControllerError> {
        // Only a wiring mistake gets here: the controller is always given an opened backend.
        self.journal.as_ref().ok_or_else(|| {
            ControllerError::os("commit to journal", "*")(OsError::Journal(
                crate::os::journal::JournalError::NotReplayed,
            ))
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directories the backend needs before it serves.
    pub fn layout_dirs(&self) -> [PathBuf; 3] {
        [
            self.root.join(VOLUMES),
            self.root.join(META),
            self.root.join(JOURNAL),
        ]
    }

    pub fn volume_dir(&self, key: &VolumeKey) -> PathBuf {
        Self::volume_dir_in(&self.root, key)
    }

    /// Where a backend rooted at `root` keeps volume `key` (also for tools that only know the
    /// root, such as `pvdir show`).
    pub fn volume_dir_in(root: &Path, key: &VolumeKey) -> PathBuf {
        root.join(VOLUMES).join(key.as_str())
    }

    fn record_name(key: &VolumeKey) -> String {
        format!("{}{RECORD_SUFFIX}", key.as_str())
    }

    fn volume(&self, key: VolumeKey, capacity_bytes: i64) -> Volume {
        Volume {
            id: VolumeId::Local(LocalId {
                node: self.node_id.clone(),
                key,
            }),
            capacity_bytes,
            node: Some(self.node_id.clone()),
        }
    }

    async fn fs(
        &self,
        op: FsOp,
        step: &'static str,
        volume: &str,
    ) -> Result<FsReply, ControllerError> {
        self.os
            .fs(op, Medium::Local)
            .await
            .map_err(ControllerError::os(step, volume))
    }

    fn records(&self) -> RecordDir {
        // META is a constant single segment; RecordDir reaches it without following links.
        RecordDir::new(
            Arc::clone(&self.os),
            Medium::Local,
            self.root.clone(),
            meta_dir(),
        )
    }

    async fn read_record(&self, key: &VolumeKey) -> Result<Option<LocalRecord>, ControllerError> {
        self.records()
            .load(&Self::record_name(key), key.as_str())
            .await
    }

    /// Does this node hold the volume? False for other nodes' volumes.
    pub async fn exists(&self, id: &LocalId) -> Result<bool, ControllerError> {
        if id.node != self.node_id {
            return Ok(false);
        }
        Ok(self.read_record(&id.key).await?.is_some())
    }

    /// Validate a CreateVolume request and work out the volume it names, touching nothing.
    pub fn plan(&self, spec: &CreateSpec) -> Result<LocalPlan, ControllerError> {
        let params: LocalParams = from_map(&spec.parameters)?;
        let mode = parse_mode(params.mount_permissions.as_deref())?;
        if let Some(reason) = spec
            .capabilities
            .iter()
            .find_map(|c| unsupported_reason(BackendKind::Local, c))
        {
            return Err(ControllerError::UnsupportedCapability { reason });
        }
        let reachable = spec.requisite.is_empty()
            || spec
                .requisite
                .iter()
                .any(|t| t.get(TOPOLOGY_KEY) == Some(&self.node_id));
        if !reachable {
            return Err(ControllerError::TopologyUnsatisfiable {
                node: self.node_id.clone(),
            });
        }
        let key =
            VolumeKey::from_name(&spec.name).ok_or_else(|| ControllerError::UnusableName {
                name: spec.name.clone(),
            })?;
        Ok(LocalPlan {
            id: LocalId {
                node: self.node_id.clone(),
                key,
            },
            mode,
        })
    }

    pub async fn create(
        &self,
        spec: &CreateSpec,
        plan: LocalPlan,
    ) -> Result<Volume, ControllerError> {
        let (key, mode) = (plan.id.key, plan.mode);
        let wanted = LocalRecord {
            name: spec.name.clone(),
            capacity_bytes: spec.capacity_bytes,
            mount_permissions: mode,
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
        let existing = self.read_record(&key).await?;
        if let Some(other) = existing.clone().filter(|r| *r != wanted) {
            return Err(conflict(other));
        }
        journal.before_create(&key, &spec.name).await?;
        // Write-ahead: once the intent is on disk, a crash at any later step (or a power cut
        // that keeps a record's name but not its contents) is redone at start-up. Committed
        // again on an idempotent retry, which costs one shared flush.
        let entry = Entry::Create {
            key: key.as_str().to_string(),
            record: wanted.clone(),
        };
        journal.commit(&entry, &spec.name).await?;
        if existing.is_none() {
            let name = Self::record_name(&key);
            let records = self.records().journaled();
            // Exclusive all the same: only another process could have written it meanwhile,
            // and the journal's lock keeps others out, but a record is never overwritten.
            if !records.store(&name, &wanted, true, &spec.name).await? {
                if let Some(other) = self.read_record(&key).await?.filter(|r| *r != wanted) {
                    return Err(conflict(other));
                }
            }
        }
        self.ensure_dir(&key, mode, &spec.name).await?;
        Ok(self.volume(key, spec.capacity_bytes))
    }

    async fn ensure_dir(
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
        self.fs(op, "create volume directory", volume).await?;
        Ok(())
    }

    /// Acts only while the volume's record exists. The record goes last, so a retry after a
    /// crash finds it and finishes; a directory without a record was never made by create.
    pub async fn delete(&self, id: &LocalId, raw: &str) -> Result<Deleted, ControllerError> {
        if id.node != self.node_id {
            return Err(ControllerError::WrongNode {
                id: raw.to_string(),
                node: id.node.clone(),
            });
        }
        let journal = self.journal()?;
        if self.read_record(&id.key).await?.is_none() {
            // Never made, or its deletion is in the journal already and redone at start-up.
            return Ok(Deleted::NothingToDo);
        }
        let dir = self.volume_dir(&id.key);
        refuse_if_mounted(&self.mount_table(raw).await?, &dir, raw)?;
        // Write-ahead, as in create: from here on, a crash is completed at start-up.
        let entry = Entry::Delete {
            key: id.key.as_str().to_string(),
        };
        journal.commit(&entry, raw).await?;
        self.remove(&id.key, raw).await?;
        journal.deleted(&id.key);
        Ok(Deleted::Removed)
    }

    async fn mount_table(&self, raw: &str) -> Result<Vec<MountEntry>, ControllerError> {
        self.os
            .mounts()
            .await
            .map_err(ControllerError::os("read mount table", raw))
    }

    /// Remove the volume's directory and then its record; the caller checked for mounts.
    async fn remove(&self, key: &VolumeKey, raw: &str) -> Result<(), ControllerError> {
        let op = FsOp::RemoveTree {
            base: self.root.join(VOLUMES),
            rel: key.rel().clone(),
            prune_parents: false,
        };
        self.fs(op, "remove volume directory", raw).await?;
        self.records().remove(&Self::record_name(key), raw).await
    }

    /// Every volume on this node, sorted by key (a stable order for pagination). One read of
    /// the record directory and one batched read of the records.
    /// How many volumes there are: one directory listing, no record read (for metrics).
    pub async fn count(&self) -> Result<usize, ControllerError> {
        let names = self.records().names().await?;
        Ok(names
            .iter()
            .filter(|n| {
                n.strip_suffix(RECORD_SUFFIX)
                    .and_then(VolumeKey::parse)
                    .is_some()
            })
            .count())
    }

    pub async fn list(&self) -> Result<Vec<Volume>, ControllerError> {
        let records = self.records();
        // Temp files of an interrupted write and foreign files are not volumes.
        let (keys, names): (Vec<VolumeKey>, Vec<String>) = records
            .names()
            .await?
            .into_iter()
            .filter_map(|n| Some((n.strip_suffix(RECORD_SUFFIX).and_then(VolumeKey::parse)?, n)))
            .unzip();
        let found: Vec<Option<LocalRecord>> = records.load_many(&names, "*").await?;
        // A record deleted between listing and reading is simply no longer a volume.
        Ok(keys
            .into_iter()
            .zip(found)
            .filter_map(|(key, record)| record.map(|r| self.volume(key, r.capacity_bytes)))
            .collect())
    }

    pub async fn available_bytes(&self) -> Result<i64, ControllerError> {
        let op = FsOp::Statfs {
            path: self.root.clone(),
        };
        match self.fs(op, "statfs local root", "*").await? {
            FsReply::Stats(s) => Ok(i64::try_from(s.available_bytes).unwrap_or(i64::MAX)),
            other => Err(ControllerError::os("statfs local root", "*")(
                OsError::unexpected_reply("statfs", &other),
            )),
        }
    }
}

/// Deleting the source of a live bind mount would delete a running pod's data. That includes
/// binds of a subdirectory (kubelet's subPath mounts), hence the prefix match.
fn refuse_if_mounted(mounts: &[MountEntry], dir: &Path, raw: &str) -> Result<(), ControllerError> {
    match mountinfo::mounts_of_tree(mounts, dir).next() {
        Some(m) => Err(ControllerError::InUse {
            id: raw.to_string(),
            at: m.mount_point.clone(),
        }),
        None => Ok(()),
    }
}
