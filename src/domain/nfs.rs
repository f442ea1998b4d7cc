//! The NFS backend: one subdirectory per volume on an export, provisioned centrally.
//!
//! The controller mounts each export it is asked about once, under its staging directory, and
//! works below that mount. Everything that touches the export runs as [`Medium::Remote`]: in a
//! killable child under a time bound, so a dead server costs one bounded call and never a hung
//! thread.
//!
//! Ownership invariants, kept on the export itself so they survive controller restarts:
//! - `<share>/.pvdir/<hash of subdir>.json` records which volume name owns a subdirectory; it
//!   is published exclusively, so two volumes can never own one directory;
//! - a volume cannot be created inside another volume, nor over a directory the driver made as
//!   a parent of other volumes, nor inside `.pvdir`;
//! - DeleteVolume acts only while the record still names the ID's owner: a late retry for a
//!   volume whose directory has since been taken by a new volume touches nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::access::{merged_mount_flags, unsupported_reason, BackendKind, Capability};
use super::error::ControllerError;
use super::params::{from_map, NfsParams};
use super::record::{Claim, RecordDir};
use super::volume::{CreateSpec, Deleted, Volume};
use super::volume_id::{owner_tag, NfsId, OnDelete, VolumeId};
use crate::os::{
    mountinfo, probe_nfs_mount, FsOp, FsReply, Medium, MountFlags, MountSource, MountSpec,
    NfsMountProbe, Os, OsError, RelPath,
};

/// pvdir's own state directory on each export.
pub const RECORD_DIR: &str = ".pvdir";

/// Longest archived name kept readable; longer leaves are archived under a hash.
const MAX_ARCHIVE_NAME: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NfsRecord {
    name: String,
    capacity_bytes: i64,
    subdir: String,
    on_delete: OnDelete,
    mount_permissions: Option<u32>,
}

/// An export mounted under the staging directory, held (shared) against remounts while the
/// holder works below it.
struct ExportMount {
    path: PathBuf,
    _hold: OwnedRwLockReadGuard<()>,
}

/// A validated NFS CreateVolume: the volume it names and the directory mode.
pub struct NfsPlan {
    pub id: NfsId,
    mode: Option<u32>,
    reuse_existing: bool,
}

pub struct NfsBackend {
    staging: PathBuf,
    os: Arc<dyn Os>,
    /// One lock per export mount. Every operation below the mount holds it shared for its
    /// whole length; mounting and replacing a stale mount hold it exclusively, so no operation
    /// can run while the staging directory is briefly a plain local directory (its writes would
    /// land on the controller's own disk). Never waited for: a caller that cannot have it gets
    /// ABORTED instead of queueing behind a mount of a dead server.
    share_locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

fn record_name(subdir: &RelPath) -> String {
    let digest = Sha256::digest(subdir.as_str().as_bytes());
    format!("{}.json", &hex::encode(digest)[..32])
}

/// `archived-<leaf>`, or `archived-<hash>` when the leaf is too long to prefix.
fn archived_name(subdir: &RelPath) -> String {
    let leaf = subdir.file_name();
    if leaf.len() <= MAX_ARCHIVE_NAME {
        format!("archived-{leaf}")
    } else {
        format!(
            "archived-{}",
            &hex::encode(Sha256::digest(leaf.as_bytes()))[..32]
        )
    }
}

impl NfsBackend {
    pub fn new(staging: PathBuf, os: Arc<dyn Os>) -> Self {
        Self {
            staging,
            os,
            share_locks: Mutex::new(HashMap::new()),
        }
    }

    fn records(&self, mount: &std::path::Path) -> RecordDir {
        // RECORD_DIR is a constant single segment; see meta_dir in local.rs.
        let dir = RelPath::parse(RECORD_DIR).unwrap_or_else(|_| unreachable!("valid segment"));
        RecordDir::new(
            Arc::clone(&self.os),
            Medium::Remote,
            mount.to_path_buf(),
            dir,
        )
    }

    /// Mount `server:share` under the staging dir unless it already is, replacing a mount whose
    /// file handle went stale. Returns the mount point and the shared hold on it, which the
    /// caller keeps until its work below the mount is done.
    async fn share_mount(
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
            let mut locks = self.share_locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let busy = || ControllerError::InFlight {
            key: format!("mount of {device}"),
        };
        let shared = Arc::clone(&lock).try_read_owned().map_err(|_| busy())?;
        if self.mount_state(&target, &device, volume).await? == NfsMountProbe::Answering {
            return Ok(ExportMount {
                path: target,
                _hold: shared,
            });
        }
        drop(shared);
        let exclusive = lock.try_write_owned().map_err(|_| busy())?;
        // Someone may have finished mounting between our look and our lock.
        match self.mount_state(&target, &device, volume).await? {
            NfsMountProbe::Answering => {
                return Ok(ExportMount {
                    path: target,
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
        self.os
            .mount(&spec)
            .await
            .map_err(ControllerError::os("mount export", volume))?;
        Ok(ExportMount {
            path: target,
            _hold: exclusive.downgrade(),
        })
    }

    /// Whether `device` (`server:/path`) is the topmost mount at `target` (`Gone` if not), and if
    /// so whether the server still knows its file handle. A server that does not answer is an
    /// error.
    async fn mount_state(
        &self,
        target: &std::path::Path,
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
        if resolved.subdir.segments().next() == Some(RECORD_DIR) {
            return Err(ControllerError::Parameters(
                super::params::ParamsError::Value {
                    key: "subDir",
                    reason: format!("{RECORD_DIR} is pvdir's own state directory"),
                },
            ));
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

    /// An existing record decides an idempotent retry. A fresh volume must not lie inside
    /// another volume and, unless the class says `reuseExisting: "true"`, must not adopt a
    /// directory with content: that content was not created for it (other volumes below it, a
    /// previous claim's retained or archived data, an admin's files), and `onDelete` would
    /// later remove or move it. The claim is exclusive and
    /// re-checked after the directory exists, so a racing create of an enclosing or enclosed
    /// volume makes one of the two back out.
    pub async fn create(
        &self,
        spec: &CreateSpec,
        plan: NfsPlan,
    ) -> Result<Volume, ControllerError> {
        let (id, mode, reuse) = (plan.id, plan.mode, plan.reuse_existing);
        let volume = spec.name.as_str();
        // Held until this function returns: no remount under our feet.
        let export = self
            .share_mount(&id.server, &id.share, &id.mount_options, volume)
            .await?;
        let mount = export.path.clone();
        let records = self.records(&mount);
        let own = record_name(&id.subdir);
        let wanted = NfsRecord {
            name: spec.name.clone(),
            capacity_bytes: spec.capacity_bytes,
            subdir: id.subdir.to_string(),
            on_delete: id.on_delete,
            mount_permissions: mode,
        };
        let fresh = match records.load::<NfsRecord>(&own, volume).await? {
            Some(existing) => {
                check_same(&existing, &wanted)?;
                false
            }
            None => {
                self.check_no_enclosing_volume(&records, &id.subdir, volume)
                    .await?;
                if !reuse {
                    self.check_empty(&mount, &id.subdir, volume).await?;
                }
                match records.claim(&own, &wanted, volume).await? {
                    Claim::Fresh => true,
                    Claim::Matching => false, // an identical create raced us and won
                    // Someone else's record appeared between our look and our claim.
                    Claim::Conflict(existing) => {
                        check_same(&existing, &wanted)?;
                        false
                    }
                }
            }
        };
        let op = FsOp::EnsureDir {
            base: mount.clone(),
            rel: id.subdir.clone(),
            mode,
        };
        let made = self.remote(op, "create volume directory", volume).await;
        if fresh {
            // Re-check now that our claim and directory exist (see the doc comment).
            let checked = match made {
                Ok(_) => match self
                    .check_no_enclosing_volume(&records, &id.subdir, volume)
                    .await
                {
                    Ok(()) if !reuse => self.check_empty(&mount, &id.subdir, volume).await,
                    other => other,
                },
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                // Leave no orphaned claim that would block this directory forever.
                if let Err(release) = records.remove(&own, volume).await {
                    tracing::warn!(volume.name = volume, error = %release, "could not release the claim of a failed create");
                }
                return Err(e);
            }
        } else {
            made?;
        }
        Ok(Volume {
            id: VolumeId::Nfs(id),
            capacity_bytes: spec.capacity_bytes,
            node: None,
        })
    }

    async fn check_no_enclosing_volume(
        &self,
        records: &RecordDir,
        subdir: &RelPath,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let ancestors: Vec<RelPath> =
            std::iter::successors(subdir.parent(), RelPath::parent).collect();
        let names: Vec<String> = ancestors.iter().map(record_name).collect();
        let found: Vec<Option<NfsRecord>> = records.load_many(&names, volume).await?;
        match found.into_iter().flatten().next() {
            Some(outer) => Err(ControllerError::DirectoryClaimed {
                subdir: subdir.to_string(),
                owner: format!("{} (inside its directory {})", outer.name, outer.subdir),
            }),
            None => Ok(()),
        }
    }

    async fn check_empty(
        &self,
        mount: &std::path::Path,
        subdir: &RelPath,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let op = FsOp::HasEntries {
            base: mount.to_path_buf(),
            rel: subdir.clone(),
        };
        match self.remote(op, "inspect volume directory", volume).await? {
            FsReply::Entries(None | Some(false)) => Ok(()),
            FsReply::Entries(Some(true)) => Err(ControllerError::DirectoryClaimed {
                subdir: subdir.to_string(),
                owner: "content pvdir did not create for this volume (other volumes, or retained data: use a static PV)".into(),
            }),
            other => Err(ControllerError::os("inspect volume directory", volume)(OsError::unexpected_reply("has-entries", &other))),
        }
    }

    /// Acts only while the record names this ID's owner. The record goes last, so a retry
    /// after a crash finds it and finishes; once it is gone the volume is gone, whatever now
    /// lives in the directory.
    pub async fn delete(&self, id: &NfsId, raw: &str) -> Result<Deleted, ControllerError> {
        // Held until this function returns: no remount under our feet.
        let export = self
            .share_mount(&id.server, &id.share, &id.mount_options, raw)
            .await?;
        let mount = export.path.clone();
        let records = self.records(&mount);
        let name = record_name(&id.subdir);
        let owned = records
            .load::<NfsRecord>(&name, raw)
            .await?
            .is_some_and(|r| owner_tag(&r.name) == id.owner);
        if !owned {
            return Ok(Deleted::NothingToDo);
        }
        let done = match id.on_delete {
            OnDelete::Retain => Deleted::Retained,
            OnDelete::Delete => {
                let op = FsOp::RemoveTree {
                    base: mount.clone(),
                    rel: id.subdir.clone(),
                    prune_parents: true,
                };
                self.remote(op, "remove volume directory", raw).await?;
                Deleted::Removed
            }
            OnDelete::Archive => {
                let op = FsOp::Archive {
                    base: mount.clone(),
                    rel: id.subdir.clone(),
                    archived_name: archived_name(&id.subdir),
                };
                self.remote(op, "archive volume directory", raw).await?;
                Deleted::Archived
            }
        };
        records.remove(&name, raw).await?;
        Ok(done)
    }

    pub async fn exists(&self, id: &NfsId, raw: &str) -> Result<bool, ControllerError> {
        // Held until this function returns: no remount under our feet.
        let export = self
            .share_mount(&id.server, &id.share, &id.mount_options, raw)
            .await?;
        let mount = export.path.clone();
        let record: Option<NfsRecord> = self
            .records(&mount)
            .load(&record_name(&id.subdir), raw)
            .await?;
        Ok(record.is_some_and(|r| owner_tag(&r.name) == id.owner))
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
        let export = self
            .share_mount(&params.server, &share, &options, "*")
            .await?;
        let mount = export.path.clone();
        match self
            .remote(FsOp::StatfsNfs { path: mount }, "statfs export", "*")
            .await?
        {
            FsReply::Stats(s) => Ok(i64::try_from(s.available_bytes).unwrap_or(i64::MAX)),
            other => Err(ControllerError::os("statfs export", "*")(
                OsError::unexpected_reply("statfs", &other),
            )),
        }
    }
}

/// An existing record for the directory must be this very volume, asked for the same way.
fn check_same(existing: &NfsRecord, wanted: &NfsRecord) -> Result<(), ControllerError> {
    if existing.name != wanted.name {
        return Err(ControllerError::DirectoryClaimed {
            subdir: wanted.subdir.clone(),
            owner: existing.name.clone(),
        });
    }
    if existing != wanted {
        return Err(ControllerError::NameConflict {
            name: wanted.name.clone(),
            difference: format!("existing {existing:?}, requested {wanted:?}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_names_stay_valid_for_long_leaves() {
        let short = RelPath::parse("ns/www-web-0").unwrap();
        assert_eq!(archived_name(&short), "archived-www-web-0");
        let long = RelPath::parse(&format!("ns/{}", "x".repeat(250))).unwrap();
        let name = archived_name(&long);
        assert!(name.len() < 255 && name.starts_with("archived-"));
    }
}
