//! The local backend: one directory per volume under the node's root.
//!
//! Layout (all owned by pvdir): `<root>/volumes/<key>/` is the volume, bind-mounted into pods;
//! `<root>/meta/<key>.json` records the CreateVolume request that made it; `<root>/journal/`
//! makes both durable (see [`journal`]). Create writes the record first and then the directory;
//! delete removes the directory first and then the record. So a crash of the process between
//! the two steps leaves a record that the retried call completes, and ListVolumes (which reads
//! records) never misses a directory that exists. Neither step is synced on its own: each call
//! ends by committing its outcome to the journal, and is answered once that is on disk.
//!
//! Each call's steps run as one unit on the blocking pool ([`store`]): they are short work on
//! the node's own disk, and a hand-off per step used to cost more than the steps themselves.

mod fill;
mod groups;
mod journal;
mod projects;
mod sizes;
mod snapshots;
mod startup;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::access::{unsupported_reason, BackendKind};
use super::error::ControllerError;
use super::params::{from_map, parse_mode, LocalMutableParams, LocalParams, QuotaPolicy};
use super::volume::{CreateSpec, Deleted, Expanded, Volume, TOPOLOGY_KEY};
use super::volume_id::{LocalId, VolumeKey};
use crate::os::quota::{ProjectId, Quotas};
use crate::os::{LocalDisk, OsError};
use store::Store;

pub use fill::LocalSource;

const VOLUMES: &str = "volumes";
const META: &str = "meta";
const JOURNAL: &str = "journal";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LocalRecord {
    name: String,
    /// The size CreateVolume asked for (a retried create must ask the same).
    capacity_bytes: i64,
    mount_permissions: Option<u32>,
    /// The volume's filesystem project, whose quota enforces its size. Absent on volumes
    /// made without a quota, including every volume from before quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    project: Option<u32>,
    /// The size after the last ControllerExpandVolume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expanded_bytes: Option<i64>,
    /// The content source CreateVolume named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<super::snapshot::ContentSource>,
    /// Still being filled from `source`: not yet handed out, so neither published, listed,
    /// cloned nor snapshotted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    populating: bool,
}

impl LocalRecord {
    /// What a repeated CreateVolume must match: the request, not what was done since.
    fn same_request(&self, other: &LocalRecord) -> bool {
        (
            &self.name,
            self.capacity_bytes,
            self.mount_permissions,
            &self.source,
        ) == (
            &other.name,
            other.capacity_bytes,
            other.mount_permissions,
            &other.source,
        )
    }

    /// The volume's size now.
    fn size(&self) -> i64 {
        self.expanded_bytes.unwrap_or(self.capacity_bytes)
    }

    fn project(&self) -> Option<ProjectId> {
        self.project.and_then(ProjectId::new)
    }
}

/// A validated local CreateVolume: the volume it names, the directory mode and whether its
/// size is to be enforced.
pub struct LocalPlan {
    pub id: LocalId,
    mode: Option<u32>,
    quota: QuotaPolicy,
    /// The content to copy in, and for how long one call may copy.
    pub source: Option<LocalSource>,
    budget: Duration,
}

/// How the local backend enforces sizes (see [`crate::os::quota`]).
#[derive(Clone)]
pub struct QuotaSetup {
    pub quotas: Arc<dyn Quotas>,
    /// How many times the disk's size (less what is outside volumes) the quotas may promise
    /// in all: 1.0 never promises more than the disk holds.
    pub overcommit: f64,
}

/// How long one call copies content (a snapshot, a restore, a clone) before it answers and
/// leaves the rest to the sidecar's retry: well inside the sidecars' default timeouts (10 s
/// for the provisioner, 60 s for the snapshotter).
pub const COPY_BUDGET: Duration = Duration::from_secs(5);

pub struct LocalBackend {
    store: Arc<Store>,
    copy_budget: Duration,
}

impl LocalBackend {
    /// A backend that only reads: enough for the node service. `root` must be an absolute,
    /// symlink-free path (main canonicalises it).
    pub fn new(root: PathBuf, node_id: String, disk: Arc<dyn LocalDisk>) -> Self {
        // The node service never sets a quota: it only reads what the controller made.
        let quota = QuotaSetup {
            quotas: Arc::new(crate::os::quota::Unavailable),
            overcommit: 1.0,
        };
        Self {
            store: Arc::new(Store::new(root, node_id, disk, quota)),
            copy_budget: COPY_BUDGET,
        }
    }

    /// A backend that also creates and deletes: makes the layout, takes the journal (waiting
    /// while another process holds it) and redoes what it holds, before any call is served.
    /// Journal flushes and checkpoints are timed into `metrics`.
    pub async fn open(
        root: PathBuf,
        node_id: String,
        disk: Arc<dyn LocalDisk>,
        quota: QuotaSetup,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, ControllerError> {
        let store = Store::new(root, node_id, disk, quota);
        let store = blocking("open journal", "*", move || store.open(metrics)).await?;
        Ok(Self {
            store: Arc::new(store),
            copy_budget: COPY_BUDGET,
        })
    }

    /// How long one call copies content (see [`COPY_BUDGET`]).
    pub fn with_copy_budget(self, copy_budget: Duration) -> Self {
        Self {
            copy_budget,
            ..self
        }
    }

    /// Run `work` on the store on the blocking pool, to its end: the caller's guard is held
    /// until it is done.
    async fn run<T: Send + 'static>(
        &self,
        step: &'static str,
        volume: &str,
        work: impl FnOnce(&Store) -> Result<T, ControllerError> + Send + 'static,
    ) -> Result<T, ControllerError> {
        let store = Arc::clone(&self.store);
        blocking(step, volume, move || work(&store)).await
    }

    pub fn node_id(&self) -> &str {
        &self.store.node_id
    }

    pub fn root(&self) -> &Path {
        &self.store.root
    }

    /// The directories the backend needs before it serves.
    pub fn layout_dirs(&self) -> Vec<PathBuf> {
        self.store.layout_dirs()
    }

    pub fn volume_dir(&self, key: &VolumeKey) -> PathBuf {
        Self::volume_dir_in(&self.store.root, key)
    }

    /// Where a backend rooted at `root` keeps volume `key` (also for tools that only know the
    /// root, such as `pvdir show`).
    pub fn volume_dir_in(root: &Path, key: &VolumeKey) -> PathBuf {
        root.join(VOLUMES).join(key.as_str())
    }

    /// Does this node hold the volume? False for other nodes' volumes.
    pub async fn exists(&self, id: &LocalId) -> Result<bool, ControllerError> {
        if id.node != self.store.node_id {
            return Ok(false);
        }
        let key = id.key.clone();
        self.run("read volume record", id.key.as_str(), move |s| {
            Ok(s.read_record(&key)?.is_some_and(|r| !r.populating))
        })
        .await
    }

    /// Validate a CreateVolume request and work out the volume it names, touching nothing.
    pub fn plan(&self, spec: &CreateSpec) -> Result<LocalPlan, ControllerError> {
        let params: LocalParams = from_map(&spec.parameters)?;
        let mode = parse_mode(params.mount_permissions.as_deref())?;
        from_map::<LocalMutableParams>(&spec.mutable_parameters)?;
        if let Some(reason) = spec
            .capabilities
            .iter()
            .find_map(|c| unsupported_reason(BackendKind::Local, c))
        {
            return Err(ControllerError::UnsupportedCapability { reason });
        }
        let node = &self.store.node_id;
        let reachable = spec.requisite.is_empty()
            || spec
                .requisite
                .iter()
                .any(|t| t.get(TOPOLOGY_KEY) == Some(node));
        if !reachable {
            return Err(ControllerError::TopologyUnsatisfiable { node: node.clone() });
        }
        let key =
            VolumeKey::from_name(&spec.name).ok_or_else(|| ControllerError::UnusableName {
                name: spec.name.clone(),
            })?;
        let source = match &spec.source {
            None => None,
            Some(source) => Some(self.source(source)?),
        };
        Ok(LocalPlan {
            id: LocalId {
                node: node.clone(),
                key,
            },
            mode,
            quota: params.quota,
            source,
            budget: self.copy_budget,
        })
    }

    pub async fn create(
        &self,
        spec: &CreateSpec,
        plan: LocalPlan,
    ) -> Result<Volume, ControllerError> {
        let owned = spec.clone();
        self.run("create volume", &spec.name, move |s| s.create(&owned, plan))
            .await
    }

    /// Acts only while the volume's record exists (see [`Store::delete`]).
    pub async fn delete(&self, id: &LocalId, raw: &str) -> Result<Deleted, ControllerError> {
        if id.node != self.store.node_id {
            return Err(ControllerError::WrongNode {
                id: raw.to_string(),
                node: id.node.clone(),
            });
        }
        let (key, owned) = (id.key.clone(), raw.to_string());
        self.run("delete volume", raw, move |s| s.delete(&key, &owned))
            .await
    }

    /// Raise the volume's size (and its quota's limit) to `bytes`; a volume already that
    /// large is left as it is.
    pub async fn expand(
        &self,
        id: &LocalId,
        raw: &str,
        bytes: i64,
    ) -> Result<Expanded, ControllerError> {
        if id.node != self.store.node_id {
            return Err(ControllerError::WrongNode {
                id: raw.to_string(),
                node: id.node.clone(),
            });
        }
        let (key, owned) = (id.key.clone(), raw.to_string());
        self.run("expand volume", raw, move |s| s.expand(&key, &owned, bytes))
            .await
    }

    /// How many volumes there are: one directory listing, no record read (for metrics).
    pub async fn count(&self) -> Result<usize, ControllerError> {
        self.run("list volume records", "*", |s| s.count()).await
    }

    /// Every volume on this node, sorted by key (a stable order for pagination). One read of
    /// the record directory and one batched read of the records.
    pub async fn list(&self) -> Result<Vec<Volume>, ControllerError> {
        self.run("list volume records", "*", |s| s.list()).await
    }

    /// Bytes a new volume can still be promised (see [`Store::room`]).
    pub async fn available_bytes(&self) -> Result<i64, ControllerError> {
        self.run("statfs local root", "*", |s| {
            Ok(i64::try_from(s.room()?).unwrap_or(i64::MAX))
        })
        .await
    }
}

/// `work` on the blocking pool, awaited to its end.
async fn blocking<T: Send + 'static>(
    step: &'static str,
    volume: &str,
    work: impl FnOnce() -> Result<T, ControllerError> + Send + 'static,
) -> Result<T, ControllerError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ControllerError::os(step, volume)(OsError::Helper {
            what: step.into(),
            message: e.to_string(),
        })
    })?
}
