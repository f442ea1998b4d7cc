//! The NFS backend: one subdirectory per volume on an export, provisioned centrally.
//!
//! The controller mounts each export it is asked about once, under its staging directory
//! (`export.rs`), and works below that mount. Everything that touches the export runs as
//! [`Medium::Remote`]: in a killable child under a time bound, so a dead server costs one
//! bounded call and never a hung thread. Who owns which directory is recorded on the export
//! itself (`claims.rs`) and taken by CreateVolume (`create.rs`); `onDelete: archive` moves a
//! directory aside under a claimed name (`archive.rs`). Snapshots are copies in the export's
//! own `.pvdir` (`snapshots.rs`), and restores and clones fill a new volume from one or from
//! another volume (`fill.rs`). What killed writers leave among the records is swept
//! (`scratch.rs`). ListVolumes and ListSnapshots read the exports `--nfs-export` names
//! (`list.rs`); ControllerModifyVolume changes a directory's mode (`modify.rs`).
//!
//! DeleteVolume acts only while the record still names the ID's owner: a late retry for a
//! volume whose directory has since been taken by a new volume touches nothing. Calls for one
//! directory are serialised in this process (a create of one volume name never runs beside a
//! create or delete of another for the same directory), which is what lets a claim of this
//! process that is not being worked on be recognised as abandoned.

mod archive;
mod claims;
mod create;
mod expand;
mod export;
mod fill;
mod list;
mod modify;
mod scratch;
mod snapshots;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::access::{merged_mount_flags, Capability};
use super::error::ControllerError;
use super::guard::{InFlight, InFlightGuard};
use super::params::{from_map, NfsParams};
use super::record::RecordDir;
use super::volume::Deleted;
use super::volume_id::{owner_tag, NfsExport, NfsId, OnDelete};
use crate::os::{FsOp, FsReply, Medium, Os, OsError, RelPath};
use claims::{record_name, NfsRecord};
use export::Exports;
use scratch::ScratchSweeps;

pub use claims::{ClaimPolicy, RECORD_DIR};
pub use fill::NfsSource;

/// How long one call copies a snapshot or a new volume's content at most: well within the
/// server time bound that kills the helper doing it (see [`NfsBackend::copy_budget_for`]).
const COPY_BUDGET: Duration = Duration::from_secs(5);

/// A validated NFS CreateVolume: the volume it names and the directory mode.
pub struct NfsPlan {
    pub id: NfsId,
    mode: Option<u32>,
    reuse_existing: bool,
    /// A restore's or clone's source, checked to be an NFS one of this driver.
    pub source: Option<NfsSource>,
}

pub struct NfsBackend {
    exports: Exports,
    os: Arc<dyn Os>,
    claims: ClaimPolicy,
    /// Directories with a create or delete in flight in this process.
    dirs: InFlight,
    scratch: ScratchSweeps,
    copy_budget: Duration,
    /// The exports ListVolumes and ListSnapshots cover (see `list.rs`).
    listed: Vec<NfsExport>,
}

impl NfsBackend {
    pub fn new(staging: PathBuf, os: Arc<dyn Os>, claims: ClaimPolicy) -> Self {
        Self {
            exports: Exports::new(staging, Arc::clone(&os)),
            os,
            claims,
            dirs: InFlight::default(),
            scratch: ScratchSweeps::default(),
            copy_budget: COPY_BUDGET,
            listed: Vec::new(),
        }
    }

    /// Copy for at most `budget` per call (tests use tiny budgets to cut copies short).
    pub fn with_copy_budget(self, budget: Duration) -> Self {
        Self {
            copy_budget: budget,
            ..self
        }
    }

    /// A copy budget that leaves the helper time to sync and answer within the server time
    /// bound `remote_timeout`: a third of it, and never more than [`COPY_BUDGET`].
    pub fn copy_budget_for(remote_timeout: Duration) -> Duration {
        (remote_timeout / 3).min(COPY_BUDGET)
    }

    /// On a clean shutdown: unmount the exports the controller mounted (see
    /// [`Exports::release_all`]).
    pub async fn release_exports(&self) {
        self.exports.release_all().await;
    }

    /// Where the controller mounts exports.
    pub fn staging_dir(&self) -> &Path {
        self.exports.staging_dir()
    }

    /// The export mounted (see [`Exports::mount`]), with what killed writers left among its
    /// records swept first when that is due (see `scratch.rs`).
    async fn export(
        &self,
        server: &str,
        share: &str,
        options: &[String],
        volume: &str,
    ) -> Result<export::ExportMount, ControllerError> {
        let export = self.exports.mount(server, share, options, volume).await?;
        self.scratch
            .sweep_if_due(&export, &self.records(&export.path))
            .await;
        Ok(export)
    }

    /// The export a snapshot ID names, mounted and held.
    async fn export_of(
        &self,
        export: &NfsExport,
        volume: &str,
    ) -> Result<export::ExportMount, ControllerError> {
        self.export(&export.server, &export.share, &export.mount_options, volume)
            .await
    }

    fn records(&self, mount: &Path) -> RecordDir {
        // RECORD_DIR is a constant single segment; see meta_dir in local.rs.
        let dir = RelPath::parse(RECORD_DIR).unwrap_or_else(|_| unreachable!("valid segment"));
        RecordDir::new(
            Arc::clone(&self.os),
            Medium::Remote,
            mount.to_path_buf(),
            dir,
        )
        .flagging_scratch(self.scratch.flag(mount))
    }

    /// The in-flight guard of `id`'s directory (its export and path, whoever the owner).
    fn claim_dir(&self, id: &NfsId) -> Result<InFlightGuard, ControllerError> {
        let key = format!("{}\0{}\0{}", id.server, id.share, id.subdir);
        self.dirs
            .try_claim(&key)
            .ok_or_else(|| ControllerError::InFlight {
                key: format!("directory {} on {}:{}", id.subdir, id.server, id.share),
            })
    }

    async fn remote(
        &self,
        op: FsOp,
        step: &'static str,
        volume: &str,
    ) -> Result<FsReply, ControllerError> {
        self.os
            .fs(op, Medium::Remote)
            .await
            .map_err(ControllerError::os(step, volume))
    }

    /// The export mounted for `id`, its records, and the record of `id`'s directory when it
    /// is this ID's volume (not an archive, not another owner's).
    async fn owned(&self, id: &NfsId, raw: &str) -> Result<Owned, ControllerError> {
        // Held by the caller until it returns: no remount under its feet.
        let export = self
            .export(&id.server, &id.share, &id.mount_options, raw)
            .await?;
        let records = self.records(&export.path);
        let name = record_name(&id.subdir);
        let record = records
            .load::<NfsRecord>(&name, raw)
            .await?
            .filter(|r| r.is_volume() && owner_tag(&r.name) == id.owner);
        Ok(Owned {
            export,
            records,
            name,
            record,
        })
    }

    /// Acts only while the record names this ID's owner. The record goes last, so a retry
    /// after a crash finds it and finishes; once it is gone the volume is gone, whatever now
    /// lives in the directory.
    pub async fn delete(&self, id: &NfsId, raw: &str) -> Result<Deleted, ControllerError> {
        let _dir = self.claim_dir(id)?;
        let found = self.owned(id, raw).await?;
        let (export, records, name) = (found.export, found.records, found.name);
        let Some(record) = found.record else {
            return Ok(Deleted::NothingToDo);
        };
        if record.source.is_some() {
            // A restore or clone deleted before its copy completed leaves its work directory.
            self.remove_work(&export.path, &name, raw).await?;
        }
        let done = match id.on_delete {
            OnDelete::Retain => Deleted::Retained,
            OnDelete::Delete => {
                let op = FsOp::RemoveTree {
                    base: export.path.clone(),
                    rel: id.subdir.clone(),
                    prune_parents: true,
                };
                self.remote(op, "remove volume directory", raw).await?;
                Deleted::Removed
            }
            OnDelete::Archive => {
                let place = archive::Place {
                    records: &records,
                    os: &*self.os,
                    mount: &export.path,
                };
                place.archive(id, &name, record, raw).await?;
                Deleted::Archived
            }
        };
        records.remove(&name, raw).await?;
        Ok(done)
    }

    pub async fn exists(&self, id: &NfsId, raw: &str) -> Result<bool, ControllerError> {
        // Held until this function returns: no remount under our feet.
        let export = self
            .export(&id.server, &id.share, &id.mount_options, raw)
            .await?;
        let record: Option<NfsRecord> = self
            .records(&export.path)
            .load(&record_name(&id.subdir), raw)
            .await?;
        Ok(record.is_some_and(|r| r.is_volume() && owner_tag(&r.name) == id.owner))
    }

    /// Free bytes on the export named by StorageClass parameters, mounted with the mount
    /// options of the capabilities asked about (the class's mountOptions).
    pub async fn available_bytes(
        &self,
        parameters: &HashMap<String, String>,
        caps: &[Capability],
    ) -> Result<i64, ControllerError> {
        // Without parameters no export is named (csi-sanity asks so; the spec makes them
        // optional): there is no storage to report on.
        if parameters.is_empty() {
            return Ok(0);
        }
        let params: NfsParams = from_map(parameters)?;
        // Capacity is per export; the subdirectory template needs PVC metadata it lacks here.
        let share = params.export()?;
        let options = merged_mount_flags(caps);
        // Held until this function returns: no remount under our feet.
        let export = self.export(&params.server, &share, &options, "*").await?;
        let op = FsOp::StatfsNfs {
            path: export.path.clone(),
        };
        match self.remote(op, "statfs export", "*").await? {
            FsReply::Stats(s) => Ok(i64::try_from(s.available_bytes).unwrap_or(i64::MAX)),
            other => Err(ControllerError::os("statfs export", "*")(
                OsError::unexpected_reply("statfs", &other),
            )),
        }
    }
}

/// What [`NfsBackend::owned`] found.
struct Owned {
    export: export::ExportMount,
    records: RecordDir,
    name: String,
    record: Option<NfsRecord>,
}
