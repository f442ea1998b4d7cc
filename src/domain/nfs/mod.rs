//! The NFS backend: one subdirectory per volume on an export, provisioned centrally.
//!
//! The controller mounts each export it is asked about once, under its staging directory
//! (`export.rs`), and works below that mount. Everything that touches the export runs as
//! [`Medium::Remote`]: in a killable child under a time bound, so a dead server costs one
//! bounded call and never a hung thread. Who owns which directory is recorded on the export
//! itself (`claims.rs`); `onDelete: archive` moves a directory aside under a claimed name
//! (`archive.rs`). What killed writers leave among the records is swept (`scratch.rs`).
//!
//! DeleteVolume acts only while the record still names the ID's owner: a late retry for a
//! volume whose directory has since been taken by a new volume touches nothing. Calls for one
//! directory are serialised in this process (a create of one volume name never runs beside a
//! create or delete of another for the same directory), which is what lets a claim of this
//! process that is not being worked on be recognised as abandoned.

mod archive;
mod claims;
mod expand;
mod export;
mod fill;
mod scratch;
mod snapshots;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::access::{merged_mount_flags, unsupported_reason, BackendKind, Capability};
use super::error::ControllerError;
use super::guard::{InFlight, InFlightGuard};
use super::params::{from_map, NfsParams};
use super::record::{Claim, RecordDir};
use super::volume::{CreateSpec, Deleted, Volume};
use super::volume_id::{owner_tag, NfsExport, NfsId, OnDelete, VolumeId};
use crate::os::{FsOp, FsReply, Medium, Os, OsError, RelPath};
use claims::{claimed_by, record_name, NfsRecord, Placement};
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

    /// Validate a CreateVolume request and work out the volume it names, touching nothing.
    pub fn plan(&self, spec: &CreateSpec) -> Result<NfsPlan, ControllerError> {
        let params: NfsParams = from_map(&spec.parameters)?;
        let resolved = params.resolve(&spec.name)?;
        let source = spec.source.as_ref().map(NfsSource::parse).transpose()?;
        if source.is_some() && resolved.reuse_existing {
            return Err(fill::reuse_with_source());
        }
        if let Some(reason) = spec
            .capabilities
            .iter()
            .find_map(|c| unsupported_reason(BackendKind::Nfs, c))
        {
            return Err(ControllerError::UnsupportedCapability { reason });
        }
        // Each option was checked when the request was parsed (csi::request::capability).
        let mount_options = merged_mount_flags(&spec.capabilities);
        Ok(NfsPlan {
            mode: resolved.mode,
            reuse_existing: resolved.reuse_existing,
            source,
            id: NfsId {
                server: resolved.server,
                share: resolved.share,
                subdir: resolved.subdir,
                on_delete: resolved.on_delete,
                mount_options,
                owner: owner_tag(&spec.name),
            },
        })
    }

    /// An existing record of this volume decides an idempotent retry. Otherwise the directory
    /// must be free (see `claims.rs`): the claim is made `creating`, the directory is made, the
    /// placement is checked again, and only then is the record made ready and the ID returned.
    pub async fn create(
        &self,
        spec: &CreateSpec,
        plan: NfsPlan,
    ) -> Result<Volume, ControllerError> {
        let started = Instant::now();
        let (id, mode, reuse, source) = (plan.id, plan.mode, plan.reuse_existing, plan.source);
        let volume = spec.name.as_str();
        let _dir = self.claim_dir(&id)?;
        // Held until this function returns: no remount under our feet.
        let export = self
            .export(&id.server, &id.share, &id.mount_options, volume)
            .await?;
        let records = self.records(&export.path);
        let placement = Placement {
            records: &records,
            os: &*self.os,
            mount: &export.path,
            volume,
            claims: &self.claims,
        };
        let own = record_name(&id.subdir);
        let wanted = NfsRecord {
            name: spec.name.clone(),
            capacity_bytes: spec.capacity_bytes,
            subdir: id.subdir.to_string(),
            on_delete: id.on_delete,
            mount_permissions: mode,
            creating: Some(self.claims.creating()),
            archive_of: None,
            archive_to: None,
            expanded_bytes: None,
            source: source.as_ref().map(NfsSource::content),
        };
        let busy = || ControllerError::RecordChanged {
            subdir: id.subdir.to_string(),
        };
        let existing = records.load::<NfsRecord>(&own, volume).await?;
        // A source is checked (and its export held) before anything is claimed, unless this
        // is a retry of a create that is complete: its source may be gone by now.
        let complete = existing
            .as_ref()
            .is_some_and(|e| e.is_volume() && e.name == wanted.name && e.creating.is_none());
        let from = match (&source, complete) {
            (Some(s), false) => Some(self.resolve(s, spec.capacity_bytes, volume).await?),
            _ => None,
        };
        let mine = match existing {
            // This volume, complete: an idempotent retry.
            Some(e) if e.is_volume() && e.name == wanted.name && e.creating.is_none() => {
                check_same(&e, &wanted)?;
                e
            }
            // This volume, unfinished (an earlier attempt, or the same create in another
            // process), or another volume's claim that will never finish: replace it by this
            // call's own claim, unless it changed meanwhile.
            Some(e) if e.is_volume() && (e.name == wanted.name || self.claims.abandoned(&e)) => {
                if e.name == wanted.name {
                    check_same(&e, &wanted)?;
                } else {
                    placement.check(&id.subdir, reuse).await?;
                    tracing::warn!(volume.name = volume, previous = %e.name,
                        "taking over the claim of a create that never finished");
                }
                match records.swap(&own, &e, Some(&wanted), volume).await? {
                    None => wanted.clone(),
                    Some(Some(now)) if now.name != wanted.name => {
                        return Err(claimed_by(&now, &id.subdir))
                    }
                    Some(_) => return Err(busy()),
                }
            }
            Some(e) => return Err(claimed_by(&e, &id.subdir)),
            None => {
                placement.check(&id.subdir, reuse).await?;
                match records.claim(&own, &wanted, volume).await? {
                    Claim::Fresh => wanted.clone(),
                    // Claimed by someone else since the look: theirs, or this volume being
                    // created by another process at this moment (its retry sorts it out).
                    Claim::Existing(e) if e.name == wanted.name => return Err(busy()),
                    Claim::Existing(e) => return Err(claimed_by(&e, &id.subdir)),
                }
            }
        };
        let op = FsOp::EnsureDir {
            base: export.path.clone(),
            rel: id.subdir.clone(),
            mode,
        };
        let made = self.remote(op, "create volume directory", volume).await;
        if mine.creating.is_none() {
            made?;
        } else {
            // Check again now that the claim and the directory exist: a racing create of an
            // enclosing or enclosed volume may have claimed in between. A directory being
            // filled holds what earlier calls of this create copied: other volumes are looked
            // for by their records, as for reuse.
            let checked = match made {
                Ok(_) => placement.check(&id.subdir, reuse || from.is_some()).await,
                Err(e) => Err(e),
            };
            let filled = match (checked, &from) {
                (Ok(()), Some(from)) => {
                    match self.fill(from, &export.path, &id, &own, volume).await {
                        Ok(true) => Ok(()),
                        // The claim stays this create's; the provisioner's retry continues.
                        Ok(false) => {
                            return Err(ControllerError::Populating {
                                volume: volume.to_string(),
                            })
                        }
                        Err(e) => match self.undo_fill(&export.path, &id, &own, volume).await {
                            Ok(()) => Err(e),
                            Err(undo) => {
                                // Keep the claim: its directory still holds copied content.
                                tracing::warn!(volume.name = volume, error = %undo, copy = %e,
                                    "could not remove the content of a failed restore");
                                return Err(e);
                            }
                        },
                    }
                }
                (checked, _) => checked,
            };
            if let Err(e) = filled {
                // No volume was returned for this claim: give the directory back, if the claim
                // is still this call's. Should that fail, the claim is abandoned and a later
                // create takes it over.
                if let Err(release) = records.swap(&own, &wanted, None, volume).await {
                    tracing::warn!(volume.name = volume, error = %release, "could not release the claim of a failed create");
                }
                return Err(e);
            }
            self.mark_ready(&records, &own, &wanted, &id.subdir, started)
                .await?;
        }
        Ok(Volume {
            id: VolumeId::Nfs(id),
            capacity_bytes: spec.capacity_bytes,
            node: None,
            source: source.as_ref().map(NfsSource::content),
        })
    }

    /// Make this call's claim `own` ready, after which the volume ID may be returned. Only
    /// while the record is still exactly that claim: one taken over meanwhile stays theirs.
    async fn mark_ready(
        &self,
        records: &RecordDir,
        own: &str,
        wanted: &NfsRecord,
        subdir: &RelPath,
        started: Instant,
    ) -> Result<(), ControllerError> {
        let volume = wanted.name.as_str();
        // Past half the expiry another controller may soon take this claim over: hand nothing
        // out. The provisioner's retry resumes (or, much later, someone takes it over).
        if self.claims.past_deadline(started) {
            return Err(ControllerError::ClaimExpiring {
                volume: volume.to_string(),
            });
        }
        let ready = wanted.clone().ready();
        match records.swap(own, wanted, Some(&ready), volume).await? {
            None => Ok(()),
            Some(Some(now)) if now.name != wanted.name => Err(claimed_by(&now, subdir)),
            Some(_) => Err(ControllerError::RecordChanged {
                subdir: subdir.to_string(),
            }),
        }
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

/// An existing record of this volume must have been asked for the same way.
fn check_same(existing: &NfsRecord, wanted: &NfsRecord) -> Result<(), ControllerError> {
    if existing.same_request(wanted) {
        Ok(())
    } else {
        Err(ControllerError::NameConflict {
            name: wanted.name.clone(),
            difference: format!("existing {existing:?}, requested {wanted:?}"),
        })
    }
}
