//! `pvdir create|publish|unpublish|delete|expand`: one CSI call each, built from the flags.

use std::collections::HashMap;
use std::time::Duration;

use super::args::{
    Access, CapabilityArgs, CreateArgs, DeleteArgs, ExpandArgs, PublishArgs, UnpublishArgs,
};
pub(super) use super::client::Client;
use super::values::{format_size, to_map, topologies};
use super::CtlError;
use crate::csi::proto as csi;
use crate::csi::proto::volume_capability::access_mode::Mode;
use crate::domain::volume::TOPOLOGY_KEY;

fn mode(access: Access) -> Mode {
    match access {
        Access::SingleNodeWriter => Mode::SingleNodeWriter,
        Access::SingleNodeReaderOnly => Mode::SingleNodeReaderOnly,
        Access::SingleNodeSingleWriter => Mode::SingleNodeSingleWriter,
        Access::SingleNodeMultiWriter => Mode::SingleNodeMultiWriter,
        Access::MultiNodeReaderOnly => Mode::MultiNodeReaderOnly,
        Access::MultiNodeSingleWriter => Mode::MultiNodeSingleWriter,
        Access::MultiNodeMultiWriter => Mode::MultiNodeMultiWriter,
    }
}

/// A mount (never block) capability: pvdir volumes are directories.
pub fn capability(args: &CapabilityArgs) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: mode(args.access) as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                mount_flags: args.mount_flags.clone(),
                ..Default::default()
            },
        )),
    }
}

pub(super) async fn connect(driver: &super::args::DriverArgs) -> Result<Client, CtlError> {
    Client::connect(&driver.endpoint, Duration::from_secs(driver.timeout_secs)).await
}

fn create_request(args: &CreateArgs) -> Result<csi::CreateVolumeRequest, CtlError> {
    let on_node = args.node.as_ref().map(|node| csi::Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.clone())]),
    });
    Ok(csi::CreateVolumeRequest {
        name: args.name.clone(),
        capacity_range: args.volume.size.map(|bytes| csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability(&args.volume.capability)],
        parameters: to_map("--param", &args.volume.params)?,
        accessibility_requirements: on_node.map(|t| csi::TopologyRequirement {
            requisite: vec![t.clone()],
            preferred: vec![t],
        }),
        volume_content_source: content_source(args),
        ..Default::default()
    })
}

fn content_source(args: &CreateArgs) -> Option<csi::VolumeContentSource> {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let source = match (&args.from_snapshot, &args.from_volume) {
        (Some(id), _) => Type::Snapshot(SnapshotSource {
            snapshot_id: id.clone(),
        }),
        (None, Some(id)) => Type::Volume(VolumeSource {
            volume_id: id.clone(),
        }),
        (None, None) => return None,
    };
    Some(csi::VolumeContentSource {
        r#type: Some(source),
    })
}

/// Prints the volume; its ID alone on the last line, for scripts (`| tail -n1`). A volume
/// filled from a snapshot or volume is asked for again while the driver answers ABORTED
/// (still copying), as the provisioner does, within `--timeout-secs`.
pub async fn create(args: CreateArgs) -> Result<(), CtlError> {
    let request = create_request(&args)?;
    let c = connect(&args.driver).await?;
    let rpc = "CreateVolume";
    let deadline = std::time::Instant::now() + Duration::from_secs(args.driver.timeout_secs);
    let reply = loop {
        match c
            .call(rpc, c.controller().create_volume(request.clone()))
            .await
        {
            Err(CtlError::Call {
                code: "ABORTED", ..
            }) if request.volume_content_source.is_some()
                && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => break other?,
        }
    };
    let volume = reply.volume.ok_or_else(|| CtlError::EmptyReply {
        rpc,
        endpoint: c.endpoint().clone(),
    })?;
    println!(
        "created {}: capacity {}, topology {}",
        args.name,
        format_size(volume.capacity_bytes),
        topologies(&volume.accessible_topology)
    );
    println!("{}", volume.volume_id);
    Ok(())
}

pub async fn publish(args: PublishArgs) -> Result<(), CtlError> {
    let request = csi::NodePublishVolumeRequest {
        volume_id: args.volume_id.clone(),
        target_path: args.target_path.clone(),
        volume_capability: Some(capability(&args.capability)),
        readonly: args.readonly,
        volume_context: to_map("--context", &args.context)?,
        ..Default::default()
    };
    let c = connect(&args.driver).await?;
    c.call("NodePublishVolume", c.node().node_publish_volume(request))
        .await?;
    println!("published {} at {}", args.volume_id, args.target_path);
    Ok(())
}

pub async fn unpublish(args: UnpublishArgs) -> Result<(), CtlError> {
    let request = csi::NodeUnpublishVolumeRequest {
        volume_id: args.volume_id.clone(),
        target_path: args.target_path.clone(),
    };
    let c = connect(&args.driver).await?;
    c.call(
        "NodeUnpublishVolume",
        c.node().node_unpublish_volume(request),
    )
    .await?;
    println!("unpublished {} from {}", args.volume_id, args.target_path);
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> Result<(), CtlError> {
    let request = csi::DeleteVolumeRequest {
        volume_id: args.volume_id.clone(),
        secrets: HashMap::new(),
    };
    let c = connect(&args.driver).await?;
    c.call("DeleteVolume", c.controller().delete_volume(request))
        .await?;
    println!("deleted {}", args.volume_id);
    Ok(())
}

pub async fn expand(args: ExpandArgs) -> Result<(), CtlError> {
    let request = csi::ControllerExpandVolumeRequest {
        volume_id: args.volume_id.clone(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: args.size,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let c = connect(&args.driver).await?;
    let reply = c
        .call(
            "ControllerExpandVolume",
            c.controller().controller_expand_volume(request),
        )
        .await?;
    println!(
        "expanded {}: capacity {}{}",
        args.volume_id,
        format_size(reply.capacity_bytes),
        match reply.node_expansion_required {
            true => " (its node finishes it: NodeExpandVolume there)",
            false => "",
        }
    );
    Ok(())
}
