//! Service-tier harness: a [`Rig`] wiring the CSI services exactly as the server does, over
//! the fake mount table ([`FakeOs`]) and a real temporary directory, plus the request builders
//! and seed helpers the `service_*.rs` tests share.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pvdir::csi::controller::ControllerService;
use pvdir::csi::node::NodeService;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use pvdir::csi::proto::node_server::Node as _;
use pvdir::domain::backend::Backend;
use pvdir::domain::controller::Controller;
use pvdir::domain::guard::InFlight;
use pvdir::domain::local::{LocalBackend, QuotaSetup, COPY_BUDGET};
use pvdir::domain::nfs::{ClaimPolicy, NfsBackend};
use pvdir::domain::node::Node;
use pvdir::os::fake::FakeOs;
use pvdir::os::quota::fake::FakeQuotas;
use pvdir::os::quota::Support;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

pub struct Rig {
    /// Mount flags the rig's StorageClass would carry: NFS options, or none for local.
    flags: &'static [&'static str],
    pub fake: FakeOs,
    /// The local backend's quotas (no support unless the rig was made with some).
    pub quotas: FakeQuotas,
    dir: tempfile::TempDir,
    /// How long one call of the local backend copies content.
    copy_budget: Duration,
    pub controller: ControllerService,
    pub node: Arc<NodeService>,
}

impl Rig {
    pub fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    pub async fn local() -> Self {
        Self::local_with(FakeQuotas::with_support(Support::None)).await
    }

    /// A local rig whose filesystem does with project quotas what `quotas` says.
    pub async fn local_with(quotas: FakeQuotas) -> Self {
        let budget = pvdir::domain::local::COPY_BUDGET;
        Self::open_local(FakeOs::new(), quotas, tempfile::tempdir().unwrap(), budget).await
    }

    /// A local rig whose calls copy content for at most `budget` each.
    pub async fn local_with_copy_budget(budget: Duration) -> Self {
        let (quotas, dir) = (FakeQuotas::with_support(Support::None), tempfile::tempdir());
        Self::open_local(FakeOs::new(), quotas, dir.unwrap(), budget).await
    }

    /// The same local root opened again, as a driver restarted after a crash opens it: the
    /// services are dropped (releasing the journal) and what the journal holds is replayed.
    pub async fn restart_local(self) -> Self {
        let Rig {
            fake,
            quotas,
            dir,
            controller,
            node,
            copy_budget,
            ..
        } = self;
        drop((controller, node));
        Self::open_local(fake, quotas, dir, copy_budget).await
    }

    async fn open_local(
        fake: FakeOs,
        quotas: FakeQuotas,
        dir: tempfile::TempDir,
        copy_budget: Duration,
    ) -> Self {
        let root = dir.path().canonicalize().unwrap().join("root");
        let quota = QuotaSetup {
            quotas: Arc::new(quotas.clone()),
            overcommit: 1.0,
        };
        let backend = LocalBackend::open(
            root,
            "n1".into(),
            Arc::new(fake.clone()),
            quota,
            Arc::new(pvdir::metrics::Metrics::new()),
        )
        .await
        .expect("open the local backend")
        .with_copy_budget(copy_budget);
        let mut rig = Self::wire(fake, quotas, dir, Backend::Local(backend), &[]);
        rig.copy_budget = copy_budget;
        rig
    }

    pub fn nfs() -> Self {
        Self::nfs_with_claim_expiry(Duration::from_secs(600))
    }

    /// An NFS rig whose claims of other processes expire after `expiry`.
    pub fn nfs_with_claim_expiry(expiry: Duration) -> Self {
        Self::nfs_with(expiry, COPY_BUDGET)
    }

    /// An NFS rig whose snapshots and restores copy for at most `budget` per call.
    pub fn nfs_with_copy_budget(budget: Duration) -> Self {
        Self::nfs_with(Duration::from_secs(600), budget)
    }

    /// An NFS rig whose controller lists the volumes and snapshots of these `--nfs-export`s.
    pub fn nfs_listing(exports: &[&str]) -> Self {
        let listed = exports
            .iter()
            .map(|e| pvdir::domain::params::parse_export_flag(e).unwrap())
            .collect();
        Self::nfs_with_listed(Duration::from_secs(600), COPY_BUDGET, listed)
    }

    fn nfs_with(expiry: Duration, copy_budget: Duration) -> Self {
        Self::nfs_with_listed(expiry, copy_budget, Vec::new())
    }

    fn nfs_with_listed(
        expiry: Duration,
        copy_budget: Duration,
        listed: Vec<pvdir::domain::volume_id::NfsExport>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeOs::new();
        let staging = dir.path().canonicalize().unwrap().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let backend = NfsBackend::new(staging, Arc::new(fake.clone()), ClaimPolicy::new(expiry))
            .with_copy_budget(copy_budget)
            .with_listed_exports(listed);
        let quotas = FakeQuotas::with_support(Support::None);
        Self::wire(fake, quotas, dir, Backend::Nfs(backend), &["hard"])
    }

    fn wire(
        fake: FakeOs,
        quotas: FakeQuotas,
        dir: tempfile::TempDir,
        backend: Backend,
        flags: &'static [&'static str],
    ) -> Self {
        let kind = backend.kind();
        let backend = Arc::new(backend);
        let os: Arc<dyn pvdir::os::Os> = Arc::new(fake.clone());
        let in_flight = InFlight::default();
        Self {
            flags,
            controller: ControllerService::new(Controller::new(
                Arc::clone(&backend),
                in_flight.clone(),
            )),
            node: Arc::new(NodeService::new(
                Node::new(backend, os, in_flight),
                "n1".into(),
                kind,
            )),
            fake,
            quotas,
            dir,
            copy_budget: pvdir::domain::local::COPY_BUDGET,
        }
    }

    /// The single staging mount of the NFS rig (the export as the controller sees it).
    pub fn export_dir(&self) -> PathBuf {
        let staging = self.path().join("staging");
        let entries: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
        assert_eq!(entries.len(), 1, "one staging mount per export");
        entries[0].as_ref().unwrap().path()
    }

    pub async fn create(
        &self,
        req: csi::CreateVolumeRequest,
    ) -> Result<csi::Volume, tonic::Status> {
        self.controller
            .create_volume(Request::new(req))
            .await
            .map(|r| r.into_inner().volume.unwrap())
    }

    /// ControllerExpandVolume to `bytes`; the size the volume has after it.
    pub async fn expand(&self, id: &str, bytes: i64) -> Result<i64, tonic::Status> {
        self.controller
            .controller_expand_volume(Request::new(super::expand_request(id, bytes)))
            .await
            .map(|r| r.into_inner().capacity_bytes)
    }

    /// GetCapacity for the local backend with no parameters.
    pub async fn capacity(&self) -> i64 {
        self.controller
            .get_capacity(Request::new(csi::GetCapacityRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .available_capacity
    }

    /// CreateSnapshot of `source` under `name`.
    pub async fn snapshot(&self, name: &str, source: &str) -> Result<csi::Snapshot, tonic::Status> {
        self.controller
            .create_snapshot(Request::new(csi::CreateSnapshotRequest {
                name: name.into(),
                source_volume_id: source.into(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().snapshot.unwrap())
    }

    /// CreateSnapshot, retried as the snapshotter does until the snapshot is ready; the
    /// number of calls it took.
    pub async fn snapshot_ready(&self, name: &str, source: &str) -> (csi::Snapshot, usize) {
        for calls in 1..10_000 {
            let s = self.snapshot(name, source).await.unwrap();
            if s.ready_to_use {
                return (s, calls);
            }
        }
        panic!("snapshot {name} never became ready");
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<(), tonic::Status> {
        self.controller
            .delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
                snapshot_id: id.into(),
                ..Default::default()
            }))
            .await
            .map(|_| ())
    }

    pub async fn list_snapshots(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, tonic::Status> {
        self.controller
            .list_snapshots(Request::new(req))
            .await
            .map(|r| r.into_inner())
    }

    /// The directory of local volume `id` (`v1#local#n1#<key>`).
    pub fn local_dir(&self, id: &str) -> PathBuf {
        let key = id.rsplit('#').next().unwrap();
        self.path().join("root/volumes").join(key)
    }

    pub async fn delete(&self, id: &str) -> Result<(), tonic::Status> {
        self.controller
            .delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: id.into(),
                ..Default::default()
            }))
            .await
            .map(|_| ())
    }

    pub async fn publish(
        &self,
        id: &str,
        target: &Path,
        mode: Mode,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_publish_volume(Request::new(publish_req(
                id, target, mode, readonly, self.flags,
            )))
            .await
            .map(|_| ())
    }

    /// The RPC capabilities ControllerGetCapabilities advertises.
    pub async fn controller_rpcs(&self) -> Vec<csi::controller_service_capability::rpc::Type> {
        use csi::controller_service_capability::Type;
        self.controller
            .controller_get_capabilities(Request::new(Default::default()))
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .into_iter()
            .filter_map(|c| c.r#type.map(|Type::Rpc(r)| r.r#type()))
            .collect()
    }

    /// The RPC capabilities NodeGetCapabilities advertises.
    pub async fn node_rpcs(&self) -> Vec<csi::node_service_capability::rpc::Type> {
        use csi::node_service_capability::Type;
        self.node
            .node_get_capabilities(Request::new(Default::default()))
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .into_iter()
            .filter_map(|c| c.r#type.map(|Type::Rpc(r)| r.r#type()))
            .collect()
    }

    pub async fn unpublish(&self, id: &str, target: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.to_string_lossy().into(),
            }))
            .await
            .map(|_| ())
    }
}

pub fn cap(mode: Mode, flags: &[&str]) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                mount_flags: flags.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            },
        )),
    }
}

/// A CreateVolume of `name` with its content from `source`.
pub fn create_from(
    name: &str,
    bytes: i64,
    source: csi::volume_content_source::Type,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        volume_content_source: Some(csi::VolumeContentSource {
            r#type: Some(source),
        }),
        ..create_req(name, bytes, Mode::SingleNodeWriter, &[])
    }
}

pub fn from_snapshot(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
        snapshot_id: id.into(),
    })
}

pub fn from_volume(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource {
        volume_id: id.into(),
    })
}

pub fn create_req(
    name: &str,
    bytes: i64,
    mode: Mode,
    params: &[(&str, &str)],
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap(mode, &[])],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

pub fn publish_req(
    id: &str,
    target: &Path,
    mode: Mode,
    readonly: bool,
    flags: &[&str],
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(cap(mode, flags)),
        readonly,
        ..Default::default()
    }
}

pub fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

pub const SEED_CLASS: &[(&str, &str)] = &[
    ("server", "10.0.0.1"),
    ("share", "/export"),
    ("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}"),
    ("mountPermissions", "0770"),
];

pub fn seed_claim(ordinal: u32, on_delete: &str) -> csi::CreateVolumeRequest {
    let mut params: Vec<(&str, &str)> = SEED_CLASS.to_vec();
    params.push(("onDelete", on_delete));
    let mut req = create_req(
        &format!("pvc-{ordinal}"),
        1 << 30,
        Mode::MultiNodeMultiWriter,
        &params,
    );
    req.volume_capabilities = vec![cap(Mode::MultiNodeMultiWriter, &["hard", "nfsvers=4.2"])];
    req.parameters.insert(
        "csi.storage.k8s.io/pvc/name".into(),
        format!("www-web-{ordinal}"),
    );
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "default".into());
    req.parameters.insert(
        "csi.storage.k8s.io/pv/name".into(),
        format!("pvc-{ordinal}"),
    );
    req
}
