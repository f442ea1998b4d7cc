//! The values the controller and node work with once a request has been validated.

use std::collections::HashMap;
use std::path::PathBuf;

use super::access::Capability;
use super::volume_id::VolumeId;
use crate::os::MountFlags;

/// Topology key of local volumes: the node that holds the directory.
pub const TOPOLOGY_KEY: &str = "topology.pvdir.io/node";

/// A provisioned volume as reported to the CO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub id: VolumeId,
    pub capacity_bytes: i64,
    /// For local volumes: the only node it is reachable from.
    pub node: Option<String>,
    /// The snapshot or volume it was filled from.
    pub source: Option<super::snapshot::ContentSource>,
}

/// What DeleteVolume did; every case is a success for the CO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The directory (and its record) were removed.
    Removed,
    /// `onDelete: retain`: the directory stays, the record is gone.
    Retained,
    /// `onDelete: archive`: the directory was renamed, the record is gone.
    Archived,
    /// No record of this volume: deleted before, never made, or its directory now belongs to
    /// another volume. Nothing was touched.
    NothingToDo,
}

/// What an expansion left: the volume's size now (at least the size asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expanded {
    pub capacity_bytes: i64,
    /// The node that holds the volume must finish it (NodeExpandVolume): a local volume
    /// asked about on another node's controller.
    pub on_node: bool,
}

/// A validated CreateVolume request.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub name: String,
    /// Exactly what will be reported back: the required bytes, else the limit, else 0.
    pub capacity_bytes: i64,
    pub capabilities: Vec<Capability>,
    pub parameters: HashMap<String, String>,
    /// A VolumeAttributesClass's parameters, which ControllerModifyVolume may change later.
    pub mutable_parameters: HashMap<String, String>,
    /// Topology segments the volume must be reachable from (any one of them).
    pub requisite: Vec<HashMap<String, String>>,
    /// The snapshot or volume whose content the new volume starts with.
    pub source: Option<super::snapshot::ContentSource>,
}

/// A validated NodePublishVolume request.
#[derive(Debug, Clone)]
pub struct PublishSpec {
    pub volume_id: String,
    pub target: PathBuf,
    /// Where NodeStageVolume mounted the volume, for a backend that stages (the publish binds
    /// from there); `None` from a client that publishes directly.
    pub staging: Option<PathBuf>,
    pub capability: Capability,
    /// The CO's `readonly` flag; a reader-only access mode also makes the mount read-only.
    pub readonly: bool,
    pub context: HashMap<String, String>,
}

impl PublishSpec {
    /// The per-mount flags this publish asks for: those named among the mount options, and
    /// `ro` when the CO says so or the access mode only reads.
    pub fn mount_flags(&self) -> MountFlags {
        capability_flags(&self.capability, self.readonly)
    }
}

/// A validated NodeStageVolumeRequest: the local backend's one mount of a volume on a node
/// (a bind of its directory), which every publish on the node then binds from.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub volume_id: String,
    pub staging: PathBuf,
    pub capability: Capability,
}

impl StageSpec {
    /// The flags named among the mount options, and `ro` when the access mode only reads;
    /// a pod's own `readonly` is its publish's business.
    pub fn mount_flags(&self) -> MountFlags {
        capability_flags(&self.capability, false)
    }
}

fn capability_flags(capability: &Capability, readonly: bool) -> MountFlags {
    let named = MountFlags::from_names(capability.mount_flags().iter().map(String::as_str));
    if readonly || capability.mode.is_read_only() {
        named | MountFlags::READ_ONLY
    } else {
        named
    }
}

/// What NodeGetVolumeStats reports: usage when the filesystem answered, and the volume's
/// condition. A server that does not answer is a finding about the volume, not a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeHealth {
    pub usage: Option<VolumeStats>,
    /// `Some(why)` when the volume is abnormal.
    pub abnormal: Option<String>,
}

/// Usage figures for NodeGetVolumeStats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeStats {
    pub total_bytes: i64,
    pub available_bytes: i64,
    pub used_bytes: i64,
    pub total_inodes: i64,
    pub free_inodes: i64,
    pub used_inodes: i64,
}

impl From<crate::os::FsStats> for VolumeStats {
    fn from(s: crate::os::FsStats) -> Self {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Self {
            total_bytes: clamp(s.total_bytes),
            available_bytes: clamp(s.available_bytes),
            used_bytes: clamp(s.used_bytes),
            total_inodes: clamp(s.total_inodes),
            free_inodes: clamp(s.free_inodes),
            used_inodes: clamp(s.used_inodes),
        }
    }
}
