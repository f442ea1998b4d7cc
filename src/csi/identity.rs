//! CSI Identity: who this endpoint is and what it offers.

use tonic::{Request, Response, Status};

use super::proto as csi;
use crate::domain::access::BackendKind;
use crate::domain::health::Health;

pub struct IdentityService {
    name: String,
    kind: BackendKind,
    controller: bool,
    health: Health,
}

impl IdentityService {
    /// The driver name this endpoint answers to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `controller`: whether this endpoint also serves the Controller service.
    pub fn new(name: String, controller: bool, health: Health) -> Self {
        Self {
            name,
            kind: health.kind(),
            controller,
            health,
        }
    }
}

fn plugin_capability(t: csi::plugin_capability::service::Type) -> csi::PluginCapability {
    csi::PluginCapability {
        r#type: Some(csi::plugin_capability::Type::Service(
            csi::plugin_capability::Service { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use csi::plugin_capability::service::Type;
        let mut capabilities = Vec::new();
        if self.controller {
            capabilities.push(plugin_capability(Type::ControllerService));
            // Sizes grow while a pod uses the volume: a quota limit is raised in place.
            capabilities.push(csi::PluginCapability {
                r#type: Some(csi::plugin_capability::Type::VolumeExpansion(
                    csi::plugin_capability::VolumeExpansion {
                        r#type: csi::plugin_capability::volume_expansion::Type::Online as i32,
                    },
                )),
            });
        }
        if self.kind == BackendKind::Local {
            capabilities.push(plugin_capability(Type::VolumeAccessibilityConstraints));
            // Group snapshots of a node's volumes (see `domain::group`).
            if self.controller {
                capabilities.push(plugin_capability(Type::GroupControllerService));
            }
        }
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        // The same checks as the HTTP /healthz, so kubelet's probes and a CO's Probe agree.
        match self.health.check().await {
            Ok(()) => Ok(Response::new(csi::ProbeResponse { ready: Some(true) })),
            Err(e) => Err(super::fail("Probe", "", None, e)),
        }
    }
}
