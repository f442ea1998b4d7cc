//! What the driver offers, asked once before the load starts: its name, whether it has a node
//! service, and which optional steps (ControllerPublish, NodeStage, stats) a CO would make.

use super::plan::{Mix, Op};
use super::session::Facts;
use crate::csi::proto as csi;
use crate::ctl::client::Client;
use crate::ctl::CtlError;

fn capability_names<T>(list: &[T], name: impl Fn(&T) -> Option<i32>, wanted: i32) -> bool {
    list.iter().any(|c| name(c) == Some(wanted))
}

/// Ask the driver who it is and which optional steps it wants.
pub async fn discover(client: &Client) -> Result<Facts, CtlError> {
    use csi::controller_service_capability::{rpc::Type as Ctl, Type as CtlKind};
    use csi::node_service_capability::{rpc::Type as Nd, Type as NdKind};
    let info = client
        .call(
            "GetPluginInfo",
            client
                .identity()
                .get_plugin_info(csi::GetPluginInfoRequest {}),
        )
        .await?;
    let controller = client
        .call(
            "ControllerGetCapabilities",
            client
                .controller()
                .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}),
        )
        .await?;
    let controller_rpc =
        |c: &csi::ControllerServiceCapability| c.r#type.as_ref().map(|CtlKind::Rpc(r)| r.r#type);
    if !capability_names(
        &controller.capabilities,
        controller_rpc,
        Ctl::CreateDeleteVolume as i32,
    ) {
        return Err(CtlError::LoadUnsupported {
            endpoint: client.endpoint().clone(),
            what: "CREATE_DELETE_VOLUME",
        });
    }
    let node_info = client
        .call_optional(
            "NodeGetInfo",
            client.node().node_get_info(csi::NodeGetInfoRequest {}),
        )
        .await?;
    let node_caps = match node_info {
        None => Vec::new(),
        Some(_) => {
            client
                .call(
                    "NodeGetCapabilities",
                    client
                        .node()
                        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {}),
                )
                .await?
                .capabilities
        }
    };
    let node_rpc =
        |c: &csi::NodeServiceCapability| c.r#type.as_ref().map(|NdKind::Rpc(r)| r.r#type);
    Ok(Facts {
        driver: format!("{} {}", info.name, info.vendor_version),
        topology: node_info
            .as_ref()
            .and_then(|n| n.accessible_topology.clone()),
        node_id: node_info.map(|n| n.node_id),
        controller_publish: capability_names(
            &controller.capabilities,
            controller_rpc,
            Ctl::PublishUnpublishVolume as i32,
        ),
        stage: capability_names(&node_caps, node_rpc, Nd::StageUnstageVolume as i32),
        stats: capability_names(&node_caps, node_rpc, Nd::GetVolumeStats as i32),
    })
}

/// The mix the driver can serve: no node service, no publish; no stats capability, no stats.
pub fn effective_mix(mix: Mix, facts: &Facts) -> Mix {
    let mut mix = mix;
    if facts.node_id.is_none() {
        mix = mix
            .without(Op::Publish)
            .without(Op::Stats)
            .without(Op::Unpublish);
    }
    if !facts.stats {
        mix = mix.without(Op::Stats);
    }
    mix
}
