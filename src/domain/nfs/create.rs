//! CreateVolume on NFS: the request validated into a plan touching nothing, then the claim
//! on the export (see `claims.rs`), the directory, a fill from a content source when there is
//! one (see `fill.rs`), and the claim made ready just before the volume ID is returned.

use std::time::Instant;

use super::claims::{claimed_by, record_name, NfsRecord, Placement};
use super::fill;
use super::{NfsBackend, NfsPlan, NfsSource};
use crate::domain::access::{merged_mount_flags, unsupported_reason, BackendKind};
use crate::domain::error::ControllerError;
use crate::domain::params::{from_map, parse_mode, NfsMutableParams, NfsParams};
use crate::domain::record::{Claim, RecordDir};
use crate::domain::volume::{CreateSpec, Volume};
use crate::domain::volume_id::{owner_tag, NfsId, VolumeId};
use crate::os::{FsOp, RelPath};

impl NfsBackend {
    /// Validate a CreateVolume request and work out the volume it names, touching nothing.
    pub fn plan(&self, spec: &CreateSpec) -> Result<NfsPlan, ControllerError> {
        let params: NfsParams = from_map(&spec.parameters)?;
        let resolved = params.resolve(&spec.name)?;
        let mutable: NfsMutableParams = from_map(&spec.mutable_parameters)?;
        // A VolumeAttributesClass's mode is chosen per claim: it wins over the class's.
        let mode = match mutable.mount_permissions.as_deref() {
            Some(given) => parse_mode(Some(given))?,
            None => resolved.mode,
        };
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
            mode,
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
            mount_options: Some(id.mount_options.clone()),
            modified_permissions: None,
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
            // A retry after a ControllerModifyVolume keeps the modified mode.
            mode: mine.mode(),
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
