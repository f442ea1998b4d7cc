//! CSI Node: short adapters over [`crate::domain::node::Node`].

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::proto as csi;
use super::request::{NodeExpandSpec, VolumeAtPath};
use super::{detached, fail};
use crate::domain::access::BackendKind;
use crate::domain::node::Node;
use crate::domain::volume::{PublishSpec, StageSpec, TOPOLOGY_KEY};

pub struct NodeService {
    inner: Arc<Node>,
    node_id: String,
    /// Local volumes are reachable only from this node (topology); NFS volumes from anywhere.
    kind: BackendKind,
}

impl NodeService {
    pub fn new(inner: Node, node_id: String, kind: BackendKind) -> Self {
        Self {
            inner: Arc::new(inner),
            node_id,
            kind,
        }
    }
}

fn rpc_capability(t: csi::node_service_capability::rpc::Type) -> csi::NodeServiceCapability {
    csi::NodeServiceCapability {
        r#type: Some(csi::node_service_capability::Type::Rpc(
            csi::node_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        let spec =
            PublishSpec::try_from(req).map_err(|e| fail("NodePublishVolume", &id, None, e))?;
        let target = spec.target.clone();
        let inner = Arc::clone(&self.inner);
        detached(async move { inner.publish(spec).await })
            .await?
            .map_err(|e| fail("NodePublishVolume", &id, Some(&target), e))?;
        tracing::info!(volume.id = id, target.path = %target.display(), "volume published");
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let (rpc, id) = ("NodeStageVolume", req.volume_id.clone());
        let spec = StageSpec::try_from(req).map_err(|e| fail(rpc, &id, None, e))?;
        let staging = spec.staging.clone();
        let inner = Arc::clone(&self.inner);
        detached(async move { inner.stage(spec).await })
            .await?
            .map_err(|e| fail(rpc, &id, Some(&staging), e))?;
        tracing::info!(volume.id = id, target.path = %staging.display(), "volume staged");
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let (rpc, id) = ("NodeUnstageVolume", req.volume_id.clone());
        let spec = VolumeAtPath::try_from(req).map_err(|e| fail(rpc, &id, None, e))?;
        let inner = Arc::clone(&self.inner);
        let (volume_id, path) = (spec.volume_id, spec.path.clone());
        detached(async move { inner.unstage(&volume_id, &path).await })
            .await?
            .map_err(|e| fail(rpc, &id, Some(&spec.path), e))?;
        tracing::info!(volume.id = id, target.path = %spec.path.display(), "volume unstaged");
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        let spec =
            VolumeAtPath::try_from(req).map_err(|e| fail("NodeUnpublishVolume", &id, None, e))?;
        let inner = Arc::clone(&self.inner);
        let (volume_id, path) = (spec.volume_id, spec.path.clone());
        detached(async move { inner.unpublish(&volume_id, &path).await })
            .await?
            .map_err(|e| fail("NodeUnpublishVolume", &id, Some(&spec.path), e))?;
        tracing::info!(volume.id = id, target.path = %spec.path.display(), "volume unpublished");
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        use csi::volume_usage::Unit;
        let req = request.into_inner();
        let id = req.volume_id.clone();
        let spec =
            VolumeAtPath::try_from(req).map_err(|e| fail("NodeGetVolumeStats", &id, None, e))?;
        let health = self
            .inner
            .stats(&spec.volume_id, &spec.path)
            .await
            .map_err(|e| fail("NodeGetVolumeStats", &id, Some(&spec.path), e))?;
        if let Some(why) = &health.abnormal {
            tracing::warn!(volume.id = id, target.path = %spec.path.display(), reason = %why, "volume abnormal");
        }
        let usage = health.usage.map_or_else(Vec::new, |s| {
            vec![
                csi::VolumeUsage {
                    available: s.available_bytes,
                    total: s.total_bytes,
                    used: s.used_bytes,
                    unit: Unit::Bytes as i32,
                },
                csi::VolumeUsage {
                    available: s.free_inodes,
                    total: s.total_inodes,
                    used: s.used_inodes,
                    unit: Unit::Inodes as i32,
                },
            ]
        });
        Ok(Response::new(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(csi::VolumeCondition {
                abnormal: health.abnormal.is_some(),
                message: health
                    .abnormal
                    .unwrap_or_else(|| "volume is healthy".into()),
            }),
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let (rpc, id) = ("NodeExpandVolume", req.volume_id.clone());
        let spec = NodeExpandSpec::try_from(req).map_err(|e| fail(rpc, &id, None, e))?;
        let inner = Arc::clone(&self.inner);
        let expanded =
            detached(async move { inner.expand(&spec.volume_id, spec.capacity_bytes).await })
                .await?
                .map_err(|e| fail(rpc, &id, None, e))?;
        tracing::info!(
            volume.id = id,
            capacity_bytes = expanded.capacity_bytes,
            "volume expanded on the node"
        );
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes: expanded.capacity_bytes,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::rpc::Type;
        let mut capabilities = vec![
            rpc_capability(Type::GetVolumeStats),
            // Stats carry the volume's condition: a server that stops answering shows up
            // as an abnormal volume instead of a hung or failed call.
            rpc_capability(Type::VolumeCondition),
            rpc_capability(Type::SingleNodeMultiWriter),
        ];
        // A local volume's quota is raised on its own node when another node's controller
        // was asked (see domain::node::expand). NFS volumes are grown centrally.
        if self.kind == BackendKind::Local {
            capabilities.push(rpc_capability(Type::ExpandVolume));
        }
        // The node's one bind of a local volume, which its publishes bind from (see
        // domain::node::stage).
        if self.inner.stages() {
            capabilities.push(rpc_capability(Type::StageUnstageVolume));
        }
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let accessible_topology = (self.kind == BackendKind::Local).then(|| csi::Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), self.node_id.clone())]),
        });
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology,
        }))
    }
}
