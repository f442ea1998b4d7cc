//! CSI Controller: short adapters over [`crate::domain::controller::Controller`].

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::proto as csi;
use super::request::{
    CapacitySpec, DeleteSpec, ExpandSpec, ListSnapshotsSpec, ListSpec, ModifySpec, SnapshotIdSpec,
    ValidateSpec,
};
use super::{detached, fail};
use crate::domain::controller::Controller;
use crate::domain::snapshot::{ContentSource, Snapshot, SnapshotSpec};
use crate::domain::volume::{CreateSpec, Volume, TOPOLOGY_KEY};

pub struct ControllerService {
    inner: Arc<Controller>,
}

impl ControllerService {
    pub fn new(inner: Controller) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The GroupController service on the same controller, where the backend has group
    /// snapshots.
    pub fn groups(&self) -> Option<super::group::GroupControllerService> {
        self.inner
            .groups()
            .then(|| super::group::GroupControllerService::new(Arc::clone(&self.inner)))
    }
}

fn to_csi(v: Volume) -> csi::Volume {
    csi::Volume {
        capacity_bytes: v.capacity_bytes,
        volume_id: v.id.to_string(),
        volume_context: HashMap::new(),
        content_source: v.source.map(content_source),
        accessible_topology: v
            .node
            .map(|n| {
                vec![csi::Topology {
                    segments: HashMap::from([(TOPOLOGY_KEY.to_string(), n)]),
                }]
            })
            .unwrap_or_default(),
    }
}

fn content_source(source: ContentSource) -> csi::VolumeContentSource {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    csi::VolumeContentSource {
        r#type: Some(match source {
            ContentSource::Snapshot(snapshot_id) => Type::Snapshot(SnapshotSource { snapshot_id }),
            ContentSource::Volume(volume_id) => Type::Volume(VolumeSource { volume_id }),
        }),
    }
}

pub(super) fn snapshot_to_csi(s: Snapshot) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: s.size_bytes,
        snapshot_id: s.id.to_string(),
        source_volume_id: s.source_volume,
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created.0,
            nanos: s.created.1,
        }),
        ready_to_use: s.ready,
        group_snapshot_id: s.group.unwrap_or_default(),
    }
}

fn rpc_capability(
    t: csi::controller_service_capability::rpc::Type,
) -> csi::ControllerServiceCapability {
    csi::ControllerServiceCapability {
        r#type: Some(csi::controller_service_capability::Type::Rpc(
            csi::controller_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        let name = req.name.clone();
        let spec = CreateSpec::try_from(req).map_err(|e| fail("CreateVolume", &name, None, e))?;
        let inner = Arc::clone(&self.inner);
        let volume = detached(async move { inner.create(spec).await })
            .await?
            .map_err(|e| fail("CreateVolume", &name, None, e))?;
        tracing::info!(volume.name = name, volume.id = %volume.id, "volume created");
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(to_csi(volume)),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        let spec = DeleteSpec::try_from(req).map_err(|e| fail("DeleteVolume", &id, None, e))?;
        let inner = Arc::clone(&self.inner);
        let outcome = detached(async move { inner.delete(&spec.volume_id).await })
            .await?
            .map_err(|e| fail("DeleteVolume", &id, None, e))?;
        tracing::info!(volume.id = id, ?outcome, "volume deleted");
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let rpc = "ValidateVolumeCapabilities";
        let spec = ValidateSpec::try_from(&req).map_err(|e| fail(rpc, &req.volume_id, None, e))?;
        let inner = Arc::clone(&self.inner);
        let unsupported =
            detached(async move { inner.validate(&spec.volume_id, &spec.capabilities).await })
                .await?
                .map_err(|e| fail(rpc, &req.volume_id, None, e))?;
        let reply = match unsupported {
            Some(message) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message,
            },
            None => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let spec = ListSpec::try_from(request.into_inner())
            .map_err(|e| fail("ListVolumes", "", None, e))?;
        let page = self
            .inner
            .list(&spec.starting_token, spec.max_entries)
            .await
            .map_err(|e| fail("ListVolumes", "", None, e))?;
        Ok(Response::new(csi::ListVolumesResponse {
            entries: page
                .volumes
                .into_iter()
                .map(|v| csi::list_volumes_response::Entry {
                    volume: Some(to_csi(v)),
                    status: None,
                })
                .collect(),
            next_token: page.next_token.unwrap_or_default(),
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let spec = CapacitySpec::try_from(request.into_inner())
            .map_err(|e| fail("GetCapacity", "", None, e))?;
        let inner = Arc::clone(&self.inner);
        let available = detached(async move {
            inner
                .capacity(&spec.parameters, &spec.capabilities, spec.topology.as_ref())
                .await
        })
        .await?
        .map_err(|e| fail("GetCapacity", "", None, e))?;
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: available,
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let (rpc, id) = ("ControllerExpandVolume", req.volume_id.clone());
        let spec = ExpandSpec::try_from(req).map_err(|e| fail(rpc, &id, None, e))?;
        let inner = Arc::clone(&self.inner);
        let expanded = detached(async move {
            inner
                .expand(&spec.volume_id, spec.capacity_bytes, &spec.capabilities)
                .await
        })
        .await?
        .map_err(|e| fail(rpc, &id, None, e))?;
        tracing::info!(
            volume.id = id,
            capacity_bytes = expanded.capacity_bytes,
            "volume expanded"
        );
        Ok(Response::new(csi::ControllerExpandVolumeResponse {
            capacity_bytes: expanded.capacity_bytes,
            // The limit is the filesystem's quota, raised by the call itself: nothing is left
            // for the node, unless another node holds the volume.
            node_expansion_required: expanded.on_node,
        }))
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        let (rpc, id) = ("ControllerModifyVolume", req.volume_id.clone());
        let spec = ModifySpec::try_from(req).map_err(|e| fail(rpc, &id, None, e))?;
        let inner = Arc::clone(&self.inner);
        detached(async move {
            inner
                .modify(&spec.volume_id, &spec.mutable_parameters)
                .await
        })
        .await?
        .map_err(|e| fail(rpc, &id, None, e))?;
        tracing::info!(volume.id = id, "volume modified");
        Ok(Response::new(csi::ControllerModifyVolumeResponse {}))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::rpc::Type;
        let mut capabilities = vec![
            rpc_capability(Type::CreateDeleteVolume),
            rpc_capability(Type::GetCapacity),
            rpc_capability(Type::SingleNodeMultiWriter),
            rpc_capability(Type::ExpandVolume),
        ];
        capabilities.extend(
            [
                Type::CreateDeleteSnapshot,
                Type::GetSnapshot,
                Type::CloneVolume,
            ]
            .map(rpc_capability),
        );
        // NFS volumes and snapshots are spread over every export named by any StorageClass;
        // the controller enumerates them only when told which exports those are.
        // Only NFS volumes have mutable parameters (see `params::LocalMutableParams`).
        if self.inner.modifies() {
            capabilities.push(rpc_capability(Type::ModifyVolume));
        }
        if self.inner.lists() {
            capabilities.extend([Type::ListVolumes, Type::ListSnapshots].map(rpc_capability));
        }
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let (rpc, name) = ("CreateSnapshot", req.name.clone());
        let spec = SnapshotSpec::try_from(req).map_err(|e| fail(rpc, &name, None, e))?;
        let inner = Arc::clone(&self.inner);
        let snapshot = detached(async move { inner.create_snapshot(spec).await })
            .await?
            .map_err(|e| fail(rpc, &name, None, e))?;
        tracing::info!(snapshot.name = name, snapshot.id = %snapshot.id,
            ready = snapshot.ready, "snapshot created");
        Ok(Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(snapshot_to_csi(snapshot)),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        let (rpc, id) = ("DeleteSnapshot", req.snapshot_id.clone());
        let spec = SnapshotIdSpec::try_from(req).map_err(|e| fail(rpc, &id, None, e))?;
        let inner = Arc::clone(&self.inner);
        detached(async move { inner.delete_snapshot(&spec.snapshot_id).await })
            .await?
            .map_err(|e| fail(rpc, &id, None, e))?;
        tracing::info!(snapshot.id = id, "snapshot deleted");
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let rpc = "ListSnapshots";
        let spec = ListSnapshotsSpec::try_from(request.into_inner())
            .map_err(|e| fail(rpc, "", None, e))?;
        let page = self
            .inner
            .list_snapshots(&spec.filter, &spec.starting_token, spec.max_entries)
            .await
            .map_err(|e| fail(rpc, "", None, e))?;
        Ok(Response::new(csi::ListSnapshotsResponse {
            entries: page
                .snapshots
                .into_iter()
                .map(|s| csi::list_snapshots_response::Entry {
                    snapshot: Some(snapshot_to_csi(s)),
                })
                .collect(),
            next_token: page.next_token.unwrap_or_default(),
        }))
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let rpc = "GetSnapshot";
        let spec =
            SnapshotIdSpec::try_from(request.into_inner()).map_err(|e| fail(rpc, "", None, e))?;
        let snapshot = self
            .inner
            .get_snapshot(&spec.snapshot_id)
            .await
            .map_err(|e| fail(rpc, &spec.snapshot_id, None, e))?;
        Ok(Response::new(csi::GetSnapshotResponse {
            snapshot: Some(snapshot_to_csi(snapshot)),
        }))
    }
}
