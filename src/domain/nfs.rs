//! The NFS backend: one subdirectory per volume on an export, provisioned centrally.
//!
//! The controller mounts each export it is asked about once, under its staging directory, and
//! works below that mount. Everything that touches the export runs as [`Medium::Remote`]: in a
//! killable child under a time bound, so a dead server costs one bounded call and never a hung
//! thread. Per-volume state lives on the export itself, in `<share>/.pvdir/<hash of subdir>.json`,
//! so it survives controller restarts and rescheduling, and two volumes can never own one
//! directory (the record names its owner).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::access::{merged_mount_flags, unsupported_reason, BackendKind};
use super::error::ControllerError;
use super::params::{from_map, NfsParams};
use super::record;
use super::volume::{CreateSpec, Volume};
use super::volume_id::{NfsId, OnDelete, VolumeId};
use crate::os::{mountinfo, FsOp, FsReply, Medium, MountSource, MountSpec, Os, RelPath};

/// pvdir's own state directory on each export.
pub const RECORD_DIR: &str = ".pvdir";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NfsRecord {
    name: String,
    capacity_bytes: i64,
    subdir: String,
    on_delete: OnDelete,
    mount_permissions: Option<u32>,
}

/// A validated NFS CreateVolume: the volume it names and the directory mode.
pub struct NfsPlan {
    pub id: NfsId,
    mode: Option<u32>,
}

pub struct NfsBackend {
    staging: PathBuf,
    os: Arc<dyn Os>,
    /// One lock per export, so concurrent calls do not stack two mounts on one staging dir,
    /// while a dead server only holds up calls for its own export.
    share_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn os_err(step: &'static str, volume: &str) -> impl FnOnce(crate::os::OsError) -> ControllerError {
    let volume = volume.to_string();
    move |source| ControllerError::Os {
        step,
        volume,
        source,
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

    fn record_name(subdir: &RelPath) -> String {
        let digest = Sha256::digest(subdir.as_str().as_bytes());
        format!("{}.json", &hex::encode(digest)[..32])
    }

    /// Mount `server:share` under the staging dir unless it already is; returns the mount point.
    async fn share_mount(
        &self,
        server: &str,
        share: &str,
        options: &[String],
        volume: &str,
    ) -> Result<PathBuf, ControllerError> {
        let key = hex::encode(
            &Sha256::digest(format!("{server}\0{share}\0{}", options.join(",")).as_bytes())[..12],
        );
        let lock = {
            let mut locks = self.share_locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let _held = lock.lock().await;
        let target = self.staging.join(&key);
        let device = MountSource::nfs_device(server, share);
        let mounts = self
            .os
            .mounts()
            .await
            .map_err(os_err("read mount table", volume))?;
        if mountinfo::top_at(&mounts, &target).is_some_and(|m| m.is_remote() && m.source == device)
        {
            return Ok(target);
        }
        self.os
            .fs(
                FsOp::MakeTarget {
                    path: target.clone(),
                },
                Medium::Local,
            )
            .await
            .map_err(os_err("create staging directory", volume))?;
        let spec = MountSpec {
            source: MountSource::Nfs {
                server: server.to_string(),
                path: share.to_string(),
            },
            target: target.clone(),
            readonly: false,
            options: options.to_vec(),
        };
        self.os
            .mount(&spec)
            .await
            .map_err(os_err("mount export", volume))?;
        Ok(target)
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
            .map_err(os_err(step, volume))
    }

    async fn read_record(
        &self,
        mount: &Path,
        subdir: &RelPath,
        volume: &str,
    ) -> Result<Option<NfsRecord>, ControllerError> {
        let dir = mount.join(RECORD_DIR);
        record::load(
            &*self.os,
            Medium::Remote,
            &dir,
            &Self::record_name(subdir),
            volume,
        )
        .await
    }

    /// Validate a CreateVolume request and work out the volume it names, touching nothing.
    pub fn plan(&self, spec: &CreateSpec) -> Result<NfsPlan, ControllerError> {
        let params: NfsParams = from_map(&spec.parameters)?;
        let resolved = params.resolve(&spec.name)?;
        if let Some(reason) = spec
            .capabilities
            .iter()
            .find_map(|c| unsupported_reason(BackendKind::Nfs, c))
        {
            return Err(ControllerError::UnsupportedCapability { reason });
        }
        let mount_options = merged_mount_flags(&spec.capabilities);
        for option in &mount_options {
            super::volume_id::validate_mount_option(option).map_err(|e| {
                ControllerError::UnsupportedCapability {
                    reason: e.to_string(),
                }
            })?;
        }
        Ok(NfsPlan {
            mode: resolved.mode,
            id: NfsId {
                server: resolved.server,
                share: resolved.share,
                subdir: resolved.subdir,
                on_delete: resolved.on_delete,
                mount_options,
            },
        })
    }

    pub async fn create(
        &self,
        spec: &CreateSpec,
        plan: NfsPlan,
    ) -> Result<Volume, ControllerError> {
        let (id, mode) = (plan.id, plan.mode);
        let mount = self
            .share_mount(&id.server, &id.share, &id.mount_options, &spec.name)
            .await?;
        let wanted = NfsRecord {
            name: spec.name.clone(),
            capacity_bytes: spec.capacity_bytes,
            subdir: id.subdir.to_string(),
            on_delete: id.on_delete,
            mount_permissions: mode,
        };
        match self.read_record(&mount, &id.subdir, &spec.name).await? {
            Some(existing) if existing.name != wanted.name => {
                return Err(ControllerError::DirectoryClaimed {
                    subdir: wanted.subdir,
                    owner: existing.name,
                })
            }
            Some(existing) if existing != wanted => {
                return Err(ControllerError::NameConflict {
                    name: spec.name.clone(),
                    difference: format!("existing {existing:?}, requested {wanted:?}"),
                })
            }
            Some(_) => {}
            None => {
                let dir = mount.join(RECORD_DIR);
                let name = Self::record_name(&id.subdir);
                record::store(&*self.os, Medium::Remote, &dir, &name, &wanted, &spec.name).await?;
            }
        }
        let op = FsOp::EnsureDir {
            base: mount.clone(),
            rel: id.subdir.clone(),
            mode,
        };
        self.remote(op, "create volume directory", &spec.name)
            .await?;
        Ok(Volume {
            id: VolumeId::Nfs(id),
            capacity_bytes: spec.capacity_bytes,
            node: None,
        })
    }

    pub async fn delete(&self, id: &NfsId, raw: &str) -> Result<(), ControllerError> {
        let mount = self
            .share_mount(&id.server, &id.share, &id.mount_options, raw)
            .await?;
        match id.on_delete {
            OnDelete::Retain => {}
            OnDelete::Delete => {
                let op = FsOp::RemoveTree {
                    base: mount.clone(),
                    rel: id.subdir.clone(),
                    prune_parents: true,
                };
                self.remote(op, "remove volume directory", raw).await?;
            }
            OnDelete::Archive => {
                let op = FsOp::Archive {
                    base: mount.clone(),
                    rel: id.subdir.clone(),
                    archived_name: format!("archived-{}", id.subdir.file_name()),
                };
                self.remote(op, "archive volume directory", raw).await?;
            }
        }
        let name = Self::record_name(&id.subdir);
        record::remove(
            &*self.os,
            Medium::Remote,
            &mount.join(RECORD_DIR),
            &name,
            raw,
        )
        .await?;
        Ok(())
    }

    pub async fn exists(&self, id: &NfsId, raw: &str) -> Result<bool, ControllerError> {
        let mount = self
            .share_mount(&id.server, &id.share, &id.mount_options, raw)
            .await?;
        Ok(self.read_record(&mount, &id.subdir, raw).await?.is_some())
    }

    /// Free bytes on the export named by StorageClass parameters.
    pub async fn available_bytes(
        &self,
        parameters: &HashMap<String, String>,
    ) -> Result<i64, ControllerError> {
        let params: NfsParams = from_map(parameters)?;
        // Capacity is per export; the subdirectory template needs PVC metadata it lacks here.
        let share = params.export()?;
        let mount = self.share_mount(&params.server, &share, &[], "*").await?;
        match self
            .remote(FsOp::Statfs { path: mount }, "statfs export", "*")
            .await?
        {
            FsReply::Stats(s) => Ok(i64::try_from(s.available_bytes).unwrap_or(i64::MAX)),
            _ => Ok(0),
        }
    }
}
