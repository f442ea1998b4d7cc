//! Controller-side operations: create, delete, validate, list and capacity, dispatched to the
//! backend under per-volume in-flight guards.

mod groups;

use std::collections::HashMap;
use std::sync::Arc;

use super::access::{unsupported_reason, Capability};
use super::backend::Backend;
use super::error::ControllerError;
use super::guard::{InFlight, InFlightGuard};
use super::params::{from_map, parse_mode, NfsMutableParams};
use super::snapshot::{Snapshot, SnapshotFilter, SnapshotId, SnapshotPage, SnapshotSpec};
use super::volume::{CreateSpec, Deleted, Expanded, Volume, TOPOLOGY_KEY};
use super::volume_id::{VolumeId, VolumeIdError};

pub struct Controller {
    backend: Arc<Backend>,
    in_flight: InFlight,
}

/// One page of ListVolumes.
pub struct Page {
    pub volumes: Vec<Volume>,
    pub next_token: Option<String>,
}

impl Controller {
    /// `in_flight` is shared with the node service of the same backend, so that a delete
    /// cannot run while the same process is publishing that volume.
    pub fn new(backend: Arc<Backend>, in_flight: InFlight) -> Self {
        Self { backend, in_flight }
    }

    fn claim(&self, key: &str) -> Result<InFlightGuard, ControllerError> {
        self.in_flight
            .try_claim(key)
            .ok_or_else(|| ControllerError::InFlight {
                key: key.to_string(),
            })
    }

    /// The guard of a new volume's content source (canonical ID `source`), so that it is not
    /// deleted, snapshotted or copied over meanwhile; a volume cannot be its own source.
    fn claim_source(
        &self,
        source: Option<&str>,
        own: &str,
    ) -> Result<Option<InFlightGuard>, ControllerError> {
        match source {
            Some(source) if source == own => Err(ControllerError::SourceIsTarget {
                id: source.to_string(),
            }),
            Some(source) => self.claim(source).map(Some),
            None => Ok(None),
        }
    }

    /// `None` for an ID this driver never made; an error for one that claims to be ours but is
    /// malformed (for example one whose path would leave the share).
    fn parse_ours(raw: &str) -> Result<Option<VolumeId>, ControllerError> {
        ours(raw, VolumeId::parse)
    }

    /// Validation comes first and touches nothing; the guard is then keyed by the volume ID the
    /// request names, the same key delete and publish use.
    pub async fn create(&self, spec: CreateSpec) -> Result<Volume, ControllerError> {
        match &*self.backend {
            Backend::Local(b) => {
                let plan = b.plan(&spec)?;
                let own = VolumeId::Local(plan.id.clone()).to_string();
                let _guard = self.claim(&own)?;
                let _source =
                    self.claim_source(plan.source.as_ref().map(|s| s.guard_key()), &own)?;
                b.create(&spec, plan).await
            }
            Backend::Nfs(b) => {
                let plan = b.plan(&spec)?;
                let own = VolumeId::Nfs(plan.id.clone()).to_string();
                let _guard = self.claim(&own)?;
                let _source =
                    self.claim_source(plan.source.as_ref().map(|s| s.guard_key()), &own)?;
                b.create(&spec, plan).await
            }
        }
    }

    /// Deleting a volume that does not exist succeeds (the CSI spec's idempotency rule), and
    /// so does an ID this driver never made: there is nothing of ours to delete.
    pub async fn delete(&self, raw: &str) -> Result<Deleted, ControllerError> {
        let Some(id) = Self::parse_ours(raw)? else {
            return Ok(Deleted::NothingToDo);
        };
        let _guard = self.claim(&id.to_string())?;
        match (&*self.backend, &id) {
            (Backend::Local(b), VolumeId::Local(l)) => b.delete(l, raw).await,
            (Backend::Nfs(b), VolumeId::Nfs(n)) => b.delete(n, raw).await,
            (_, VolumeId::Local(_)) => Err(ControllerError::WrongBackend { backend: "local" }),
            (_, VolumeId::Nfs(_)) => Err(ControllerError::WrongBackend { backend: "nfs" }),
        }
    }

    /// Grow a volume to `bytes` (ONLINE: published or not). The guard is the volume's, as
    /// for delete and publish.
    pub async fn expand(
        &self,
        raw: &str,
        bytes: i64,
        caps: &[Capability],
    ) -> Result<Expanded, ControllerError> {
        // An ID this driver never made names no volume of ours.
        let Some(id) = Self::parse_ours(raw)? else {
            return Err(ControllerError::NotFound {
                id: raw.to_string(),
            });
        };
        if let Some(reason) = caps
            .iter()
            .find_map(|c| unsupported_reason(self.backend.kind(), c))
        {
            return Err(ControllerError::UnsupportedCapability { reason });
        }
        if let (Backend::Local(b), VolumeId::Local(l)) = (&*self.backend, &id) {
            if l.node != b.node_id() {
                // Local controllers run on every node, and the resizer sidecar (which has no
                // per-node mode) calls whichever holds its lease. Only the volume's own node
                // can raise its quota: kubelet there finishes with NodeExpandVolume.
                return Ok(Expanded {
                    capacity_bytes: bytes,
                    on_node: true,
                });
            }
        }
        let _guard = self.claim(&id.to_string())?;
        match (&*self.backend, &id) {
            (Backend::Local(b), VolumeId::Local(l)) => b.expand(l, raw, bytes).await,
            (Backend::Nfs(b), VolumeId::Nfs(n)) => b.expand(n, raw, bytes).await,
            (_, VolumeId::Local(_)) => Err(ControllerError::WrongBackend { backend: "local" }),
            (_, VolumeId::Nfs(_)) => Err(ControllerError::WrongBackend { backend: "nfs" }),
        }
    }

    /// ControllerModifyVolume, on NFS only (see `LocalMutableParams`). The parameters are
    /// checked before anything is looked at, so an unknown key is INVALID_ARGUMENT whatever
    /// the volume.
    pub async fn modify(
        &self,
        raw: &str,
        mutable: &HashMap<String, String>,
    ) -> Result<(), ControllerError> {
        let Backend::Nfs(b) = &*self.backend else {
            return Err(ControllerError::Unsupported {
                what: "ControllerModifyVolume on the local backend",
            });
        };
        let params: NfsMutableParams = from_map(mutable)?;
        let mode = parse_mode(params.mount_permissions.as_deref())?;
        match Self::parse_ours(raw)? {
            Some(VolumeId::Nfs(id)) => {
                let _guard = self.claim(&VolumeId::Nfs(id.clone()).to_string())?;
                b.modify(&id, raw, mode).await
            }
            Some(VolumeId::Local(_)) => Err(ControllerError::WrongBackend { backend: "local" }),
            None => Err(ControllerError::NotFound {
                id: raw.to_string(),
            }),
        }
    }

    async fn exists(&self, raw: &str) -> Result<bool, ControllerError> {
        let Some(id) = Self::parse_ours(raw)? else {
            return Ok(false);
        };
        match (&*self.backend, &id) {
            (Backend::Local(b), VolumeId::Local(l)) => b.exists(l).await,
            (Backend::Nfs(b), VolumeId::Nfs(n)) => b.exists(n, raw).await,
            _ => Ok(false),
        }
    }

    /// `Ok(None)` when every capability is supported, else the reason one is not.
    pub async fn validate(
        &self,
        raw: &str,
        caps: &[Capability],
    ) -> Result<Option<String>, ControllerError> {
        if !self.exists(raw).await? {
            return Err(ControllerError::NotFound {
                id: raw.to_string(),
            });
        }
        Ok(caps
            .iter()
            .find_map(|c| unsupported_reason(self.backend.kind(), c)))
    }

    /// Whether ControllerModifyVolume is served: on NFS (see `LocalMutableParams`).
    pub fn modifies(&self) -> bool {
        matches!(&*self.backend, Backend::Nfs(_))
    }

    /// Whether ListVolumes and ListSnapshots answer for every volume and snapshot: always on
    /// the local backend, on NFS only when the exports are named.
    pub fn lists(&self) -> bool {
        match &*self.backend {
            Backend::Local(_) => true,
            Backend::Nfs(b) => b.lists(),
        }
    }

    /// Pages are offsets into the sorted listing; the token is the decimal offset.
    pub async fn list(&self, token: &str, max_entries: usize) -> Result<Page, ControllerError> {
        let all = match &*self.backend {
            Backend::Local(b) => b.list().await?,
            Backend::Nfs(b) if b.lists() => b.list().await?,
            // NFS volumes are spread over every export of every StorageClass: listable only
            // when the exports are named.
            Backend::Nfs(_) => {
                return Err(ControllerError::Unsupported {
                    what: "ListVolumes without --nfs-export",
                })
            }
        };
        let start = if token.is_empty() {
            0
        } else {
            match token.parse::<usize>() {
                Ok(n) if n <= all.len() => n,
                _ => {
                    return Err(ControllerError::BadPageToken {
                        token: token.to_string(),
                    })
                }
            }
        };
        let end = if max_entries == 0 {
            all.len()
        } else {
            start.saturating_add(max_entries).min(all.len())
        };
        let next_token = (end < all.len()).then(|| end.to_string());
        let volumes = all.into_iter().skip(start).take(end - start).collect();
        Ok(Page {
            volumes,
            next_token,
        })
    }

    /// Free bytes for new volumes with these capabilities and this topology; 0 when they cannot
    /// be served here at all.
    pub async fn capacity(
        &self,
        parameters: &HashMap<String, String>,
        caps: &[Capability],
        topology: Option<&HashMap<String, String>>,
    ) -> Result<i64, ControllerError> {
        if caps
            .iter()
            .any(|c| unsupported_reason(self.backend.kind(), c).is_some())
        {
            return Ok(0);
        }
        match &*self.backend {
            Backend::Local(b) => {
                if topology.is_some_and(|t| t.get(TOPOLOGY_KEY).is_some_and(|n| n != b.node_id())) {
                    return Ok(0);
                }
                super::params::from_map::<super::params::LocalParams>(parameters)?;
                b.available_bytes().await
            }
            Backend::Nfs(b) => b.available_bytes(parameters, caps).await,
        }
    }

    /// Make, or continue making, a snapshot; `ready: false` while its copy is unfinished
    /// (the snapshotter retries). Guarded by the snapshot's ID and by its source volume.
    pub async fn create_snapshot(&self, spec: SnapshotSpec) -> Result<Snapshot, ControllerError> {
        super::params::from_map::<super::params::SnapshotParams>(&spec.parameters)?;
        match &*self.backend {
            Backend::Local(b) => {
                let (id, source) = b.snapshot_plan(&spec.name, &spec.source_volume)?;
                let _guard = self.claim(&id.to_string())?;
                let _source = self.claim(&VolumeId::Local(source.clone()).to_string())?;
                b.create_snapshot(&spec.name, id.key(), &source).await
            }
            Backend::Nfs(b) => {
                let (id, source) = b.snapshot_plan(&spec.name, &spec.source_volume)?;
                let _guard = self.claim(&id.to_string())?;
                let _source = self.claim(&VolumeId::Nfs(source.clone()).to_string())?;
                b.create_snapshot(&spec.name, id.key(), &source).await
            }
        }
    }

    /// Deleting a snapshot that does not exist succeeds, as for volumes.
    pub async fn delete_snapshot(&self, raw: &str) -> Result<(), ControllerError> {
        let Some(id) = ours(raw, SnapshotId::parse)? else {
            return Ok(());
        };
        let _guard = self.claim(&id.to_string())?;
        match (&*self.backend, &id) {
            (Backend::Local(b), SnapshotId::Local { node, key }) => {
                b.delete_snapshot(node, key, raw).await.map(drop)
            }
            (Backend::Nfs(b), SnapshotId::Nfs { export, key }) => {
                b.delete_snapshot(export, key, raw).await.map(drop)
            }
            (_, SnapshotId::Local { .. }) => {
                Err(ControllerError::WrongBackend { backend: "local" })
            }
            (_, SnapshotId::Nfs { .. }) => Err(ControllerError::WrongBackend { backend: "nfs" }),
        }
    }

    /// The snapshot `id` names, from its record alone; `None` when there is none (or it is
    /// another backend's).
    async fn snapshot(
        &self,
        id: &SnapshotId,
        raw: &str,
    ) -> Result<Option<Snapshot>, ControllerError> {
        match (&*self.backend, id) {
            (Backend::Local(b), SnapshotId::Local { node, key }) => b.snapshot(node, key).await,
            (Backend::Nfs(b), SnapshotId::Nfs { export, key }) => {
                b.snapshot(export, key, raw).await
            }
            _ => Ok(None),
        }
    }

    /// Pages are keyed by the last snapshot ID returned, in ID order: a snapshot made or
    /// deleted between two pages never shifts another one out of the listing or into it twice.
    /// Without `--nfs-export` the NFS backend lists only by snapshot ID: its snapshots lie on
    /// every export of every class, which it then has no list of.
    pub async fn list_snapshots(
        &self,
        filter: &SnapshotFilter,
        token: &str,
        max_entries: usize,
    ) -> Result<SnapshotPage, ControllerError> {
        if !token.is_empty() && SnapshotId::parse(token).is_err() {
            return Err(ControllerError::BadPageToken {
                token: token.to_string(),
            });
        }
        // One record read when an ID is asked for (an ID not of this driver names none).
        let candidates = match (filter.snapshot_id.as_deref(), &*self.backend) {
            (Some(raw), _) => match SnapshotId::parse(raw) {
                Ok(id) => self.snapshot(&id, raw).await?.into_iter().collect(),
                Err(_) => Vec::new(),
            },
            (None, Backend::Local(b)) => b.list_snapshots().await?,
            (None, Backend::Nfs(b)) if b.lists() => b.list_snapshots().await?,
            (None, Backend::Nfs(_)) => {
                return Err(ControllerError::Unsupported {
                    what: "ListSnapshots without a snapshot ID or --nfs-export",
                })
            }
        };
        // Compared in canonical form, so an ID spelled with other escapes still matches.
        let wanted_source = filter
            .source_volume
            .as_deref()
            .map(|raw| VolumeId::parse(raw).map_or_else(|_| raw.to_string(), |id| id.to_string()));
        let mut matching = candidates.into_iter().filter(|s| {
            wanted_source.as_ref().is_none_or(|w| *w == s.source_volume)
                && (token.is_empty() || s.id.to_string().as_str() > token)
        });
        let limit = if max_entries == 0 {
            usize::MAX
        } else {
            max_entries
        };
        let snapshots: Vec<Snapshot> = matching.by_ref().take(limit).collect();
        let next_token = match matching.next() {
            Some(_) => snapshots.last().map(|s| s.id.to_string()),
            None => None,
        };
        Ok(SnapshotPage {
            snapshots,
            next_token,
        })
    }

    /// The snapshot `raw` names; NOT_FOUND for one that does not exist (or is not pvdir's).
    pub async fn get_snapshot(&self, raw: &str) -> Result<Snapshot, ControllerError> {
        let not_found = || ControllerError::NotFound {
            id: raw.to_string(),
        };
        let id = SnapshotId::parse(raw).map_err(|_| not_found())?;
        self.snapshot(&id, raw).await?.ok_or_else(not_found)
    }
}

/// `None` for an ID (of a volume or a snapshot) this driver never made; an error for one that
/// claims to be ours but is malformed.
fn ours<T>(
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, VolumeIdError>,
) -> Result<Option<T>, ControllerError> {
    match parse(raw) {
        Ok(id) => Ok(Some(id)),
        Err(VolumeIdError::Foreign) => Ok(None),
        Err(source) => Err(ControllerError::MalformedId {
            id: raw.to_string(),
            source,
        }),
    }
}
