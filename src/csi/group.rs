//! CSI GroupController: short adapters over the controller's group snapshots
//! (`domain::controller::groups`). Served beside the Controller service, on the same
//! controller, wherever the backend has group snapshots.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::controller::snapshot_to_csi;
use super::proto as csi;
use super::request::GroupIdSpec;
use super::{detached, fail};
use crate::domain::controller::Controller;
use crate::domain::group::{GroupSnapshot, GroupSpec};

pub struct GroupControllerService {
    inner: Arc<Controller>,
}

impl GroupControllerService {
    pub(super) fn new(inner: Arc<Controller>) -> Self {
        Self { inner }
    }
}

fn group_to_csi(g: GroupSnapshot) -> csi::VolumeGroupSnapshot {
    csi::VolumeGroupSnapshot {
        group_snapshot_id: g.id.to_string(),
        snapshots: g.members.into_iter().map(snapshot_to_csi).collect(),
        creation_time: Some(prost_types::Timestamp {
            seconds: g.created.0,
            nanos: g.created.1,
        }),
        ready_to_use: g.ready,
    }
}

#[tonic::async_trait]
impl csi::group_controller_server::GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        use csi::group_controller_service_capability::{rpc::Type, Rpc, Type as Kind};
        Ok(Response::new(csi::GroupControllerGetCapabilitiesResponse {
            capabilities: vec![csi::GroupControllerServiceCapability {
                r#type: Some(Kind::Rpc(Rpc {
                    r#type: Type::CreateDeleteGetVolumeGroupSnapshot as i32,
                })),
            }],
        }))
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let (rpc, name) = ("CreateVolumeGroupSnapshot", req.name.clone());
        let spec = GroupSpec::try_from(req).map_err(|e| fail(rpc, &name, None, e))?;
        let inner = Arc::clone(&self.inner);
        let group = detached(async move { inner.create_group(spec).await })
            .await?
            .map_err(|e| fail(rpc, &name, None, e))?;
        tracing::info!(group.name = name, group.id = %group.id, ready = group.ready,
            members = group.members.len(), "group snapshot created");
        Ok(Response::new(csi::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_to_csi(group)),
        }))
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let (rpc, id) = ("DeleteVolumeGroupSnapshot", req.group_snapshot_id.clone());
        let spec = GroupIdSpec::try_from(req).map_err(|e| fail(rpc, &id, None, e))?;
        let inner = Arc::clone(&self.inner);
        detached(async move { inner.delete_group(&spec.group_id, &spec.snapshot_ids).await })
            .await?
            .map_err(|e| fail(rpc, &id, None, e))?;
        tracing::info!(group.id = id, "group snapshot deleted");
        Ok(Response::new(csi::DeleteVolumeGroupSnapshotResponse {}))
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let (rpc, id) = ("GetVolumeGroupSnapshot", req.group_snapshot_id.clone());
        let spec = GroupIdSpec::try_from(req).map_err(|e| fail(rpc, &id, None, e))?;
        let group = self
            .inner
            .get_group(&spec.group_id, &spec.snapshot_ids)
            .await
            .map_err(|e| fail(rpc, &id, None, e))?;
        Ok(Response::new(csi::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_to_csi(group)),
        }))
    }
}
