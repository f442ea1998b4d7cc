//! Request validation, one `TryFrom` per request type: everything a handler needs is parsed
//! into typed domain values here, so missing or malformed fields give INVALID_ARGUMENT before any
//! lookup or side effect (the order the CSI spec and csi-sanity expect).

mod group;
mod snapshot;

pub use group::GroupIdSpec;
pub use snapshot::{ListSnapshotsSpec, SnapshotIdSpec};

use std::collections::HashMap;
use std::path::PathBuf;

use super::proto as csi;
use crate::domain::access::{check_mount_option, AccessMode, AccessType, Capability};
use crate::domain::snapshot::ContentSource;
use crate::domain::volume::{CreateSpec, PublishSpec, StageSpec};

/// A request that is malformed; always INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Invalid> {
    if value.is_empty() {
        Err(Invalid(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

fn required_path(value: &str, field: &str) -> Result<PathBuf, Invalid> {
    let path = PathBuf::from(required(value, field)?);
    if !path.is_absolute() || value.contains('\0') {
        return Err(Invalid(format!("{field} must be an absolute path")));
    }
    Ok(path)
}

fn access_mode(mode: Option<&csi::volume_capability::AccessMode>) -> Result<AccessMode, Invalid> {
    use csi::volume_capability::access_mode::Mode;
    let raw = mode.ok_or_else(|| Invalid("volume capability access_mode is required".into()))?;
    match Mode::try_from(raw.mode) {
        Ok(Mode::SingleNodeWriter) => Ok(AccessMode::SingleNodeWriter),
        Ok(Mode::SingleNodeReaderOnly) => Ok(AccessMode::SingleNodeReaderOnly),
        Ok(Mode::MultiNodeReaderOnly) => Ok(AccessMode::MultiNodeReaderOnly),
        Ok(Mode::MultiNodeSingleWriter) => Ok(AccessMode::MultiNodeSingleWriter),
        Ok(Mode::MultiNodeMultiWriter) => Ok(AccessMode::MultiNodeMultiWriter),
        Ok(Mode::SingleNodeSingleWriter) => Ok(AccessMode::SingleNodeSingleWriter),
        Ok(Mode::SingleNodeMultiWriter) => Ok(AccessMode::SingleNodeMultiWriter),
        Ok(Mode::Unknown) | Err(_) => Err(Invalid(format!(
            "access mode {} is not a known mode",
            raw.mode
        ))),
    }
}

/// Every capability of every request passes here, so a mount option is checked in this one
/// place before the controller or the node sees it.
pub fn capability(cap: &csi::VolumeCapability) -> Result<Capability, Invalid> {
    use csi::volume_capability::AccessType as Raw;
    let mode = access_mode(cap.access_mode.as_ref())?;
    let access = match &cap.access_type {
        Some(Raw::Mount(m)) => {
            for option in &m.mount_flags {
                check_mount_option(option).map_err(|e| Invalid(e.to_string()))?;
            }
            AccessType::Mount {
                fs_type: m.fs_type.clone(),
                mount_flags: m.mount_flags.clone(),
            }
        }
        Some(Raw::Block(_)) => AccessType::Block,
        None => return Err(Invalid("volume capability access_type is required".into())),
    };
    Ok(Capability { mode, access })
}

pub fn capabilities(caps: &[csi::VolumeCapability]) -> Result<Vec<Capability>, Invalid> {
    if caps.is_empty() {
        return Err(Invalid("volume_capabilities is required".into()));
    }
    caps.iter().map(capability).collect()
}

/// CSI capacity: report exactly what was asked (required, else limit, else 0 = unspecified).
fn capacity(range: Option<&csi::CapacityRange>) -> Result<i64, Invalid> {
    let Some(r) = range else { return Ok(0) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Invalid("capacity_range bytes must not be negative".into()));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Invalid(format!(
            "capacity_range required_bytes {} exceeds limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok(if r.required_bytes > 0 {
        r.required_bytes
    } else {
        r.limit_bytes
    })
}

/// A content source names exactly one snapshot or volume, by a non-empty ID.
fn content_source(source: &csi::VolumeContentSource) -> Result<ContentSource, Invalid> {
    use csi::volume_content_source::Type;
    match &source.r#type {
        Some(Type::Snapshot(s)) => {
            required(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?;
            Ok(ContentSource::Snapshot(s.snapshot_id.clone()))
        }
        Some(Type::Volume(v)) => {
            required(&v.volume_id, "volume_content_source.volume.volume_id")?;
            Ok(ContentSource::Volume(v.volume_id.clone()))
        }
        None => Err(Invalid("volume_content_source names no source".into())),
    }
}

impl TryFrom<csi::CreateVolumeRequest> for CreateSpec {
    type Error = Invalid;
    fn try_from(req: csi::CreateVolumeRequest) -> Result<Self, Invalid> {
        required(&req.name, "name")?;
        let source = req
            .volume_content_source
            .as_ref()
            .map(content_source)
            .transpose()?;
        let capabilities = capabilities(&req.volume_capabilities)?;
        let requisite = req
            .accessibility_requirements
            .map(|a| a.requisite.into_iter().map(|t| t.segments).collect())
            .unwrap_or_default();
        Ok(Self {
            capacity_bytes: capacity(req.capacity_range.as_ref())?,
            name: req.name,
            capabilities,
            parameters: req.parameters,
            mutable_parameters: req.mutable_parameters,
            requisite,
            source,
        })
    }
}

/// ControllerModifyVolume: the ID and the parameters to change (checked by the backend,
/// which knows which it has).
pub struct ModifySpec {
    pub volume_id: String,
    pub mutable_parameters: HashMap<String, String>,
}

impl TryFrom<csi::ControllerModifyVolumeRequest> for ModifySpec {
    type Error = Invalid;
    fn try_from(req: csi::ControllerModifyVolumeRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        Ok(Self {
            volume_id: req.volume_id,
            mutable_parameters: req.mutable_parameters,
        })
    }
}

/// DeleteVolume: just the ID.
pub struct DeleteSpec {
    pub volume_id: String,
}

impl TryFrom<csi::DeleteVolumeRequest> for DeleteSpec {
    type Error = Invalid;
    fn try_from(req: csi::DeleteVolumeRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        Ok(Self {
            volume_id: req.volume_id,
        })
    }
}

/// A validated ControllerExpandVolume request.
pub struct ExpandSpec {
    pub volume_id: String,
    /// The size asked for: required bytes, else the limit.
    pub capacity_bytes: i64,
    /// The capability the CO will publish with, when it says.
    pub capabilities: Vec<Capability>,
}

impl TryFrom<csi::ControllerExpandVolumeRequest> for ExpandSpec {
    type Error = Invalid;
    fn try_from(req: csi::ControllerExpandVolumeRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        let range = req
            .capacity_range
            .ok_or_else(|| Invalid("capacity_range is required".into()))?;
        let capacity_bytes = capacity(Some(&range))?;
        if capacity_bytes == 0 {
            return Err(Invalid("capacity_range must ask for a size".into()));
        }
        Ok(Self {
            volume_id: req.volume_id,
            capacity_bytes,
            capabilities: req
                .volume_capability
                .as_ref()
                .map(capability)
                .transpose()?
                .into_iter()
                .collect(),
        })
    }
}

/// A validated NodeExpandVolumeRequest.
pub struct NodeExpandSpec {
    pub volume_id: String,
    /// `None` when the CO gave no range: the volume keeps its size.
    pub capacity_bytes: Option<i64>,
}

impl TryFrom<csi::NodeExpandVolumeRequest> for NodeExpandSpec {
    type Error = Invalid;
    fn try_from(req: csi::NodeExpandVolumeRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        // Required, but not used: the quota belongs to the volume's directory, wherever it
        // is published. Not checked further, so an unknown volume is NOT_FOUND whatever
        // path came with it (what csi-sanity asks).
        required(&req.volume_path, "volume_path")?;
        if let Some(cap) = &req.volume_capability {
            capability(cap)?;
        }
        let capacity_bytes = match req.capacity_range.as_ref() {
            None => None,
            Some(range) => Some(capacity(Some(range))?).filter(|b| *b > 0),
        };
        Ok(Self {
            volume_id: req.volume_id,
            capacity_bytes,
        })
    }
}

pub struct ValidateSpec {
    pub volume_id: String,
    pub capabilities: Vec<Capability>,
}

impl TryFrom<&csi::ValidateVolumeCapabilitiesRequest> for ValidateSpec {
    type Error = Invalid;
    fn try_from(req: &csi::ValidateVolumeCapabilitiesRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        Ok(Self {
            volume_id: req.volume_id.clone(),
            capabilities: capabilities(&req.volume_capabilities)?,
        })
    }
}

pub struct ListSpec {
    pub starting_token: String,
    pub max_entries: usize,
}

impl TryFrom<csi::ListVolumesRequest> for ListSpec {
    type Error = Invalid;
    fn try_from(req: csi::ListVolumesRequest) -> Result<Self, Invalid> {
        let max_entries = usize::try_from(req.max_entries)
            .map_err(|_| Invalid("max_entries must not be negative".into()))?;
        Ok(Self {
            starting_token: req.starting_token,
            max_entries,
        })
    }
}

pub struct CapacitySpec {
    pub capabilities: Vec<Capability>,
    pub parameters: std::collections::HashMap<String, String>,
    pub topology: Option<std::collections::HashMap<String, String>>,
}

impl TryFrom<csi::GetCapacityRequest> for CapacitySpec {
    type Error = Invalid;
    fn try_from(req: csi::GetCapacityRequest) -> Result<Self, Invalid> {
        // Capabilities are optional here: none means "any".
        let capabilities = req
            .volume_capabilities
            .iter()
            .map(capability)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            capabilities,
            parameters: req.parameters,
            topology: req.accessible_topology.map(|t| t.segments),
        })
    }
}

impl TryFrom<csi::NodePublishVolumeRequest> for PublishSpec {
    type Error = Invalid;
    fn try_from(req: csi::NodePublishVolumeRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        let target = required_path(&req.target_path, "target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Invalid("volume_capability is required".into()))?;
        // Optional here: given by kubelet for a backend that stages, absent from direct
        // clients (pvdir's own CLI) that publish without staging first.
        let staging = match req.staging_target_path.as_str() {
            "" => None,
            path => Some(required_path(path, "staging_target_path")?),
        };
        Ok(Self {
            capability: capability(cap)?,
            volume_id: req.volume_id,
            target,
            staging,
            readonly: req.readonly,
            context: req.volume_context,
        })
    }
}

impl TryFrom<csi::NodeStageVolumeRequest> for StageSpec {
    type Error = Invalid;
    fn try_from(req: csi::NodeStageVolumeRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        let staging = required_path(&req.staging_target_path, "staging_target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Invalid("volume_capability is required".into()))?;
        Ok(Self {
            capability: capability(cap)?,
            volume_id: req.volume_id,
            staging,
        })
    }
}

impl TryFrom<csi::NodeUnstageVolumeRequest> for VolumeAtPath {
    type Error = Invalid;
    fn try_from(req: csi::NodeUnstageVolumeRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        Ok(Self {
            path: required_path(&req.staging_target_path, "staging_target_path")?,
            volume_id: req.volume_id,
        })
    }
}

/// NodeUnpublishVolume, NodeUnstageVolume and NodeGetVolumeStats name a volume and a path.
pub struct VolumeAtPath {
    pub volume_id: String,
    pub path: PathBuf,
}

impl TryFrom<csi::NodeUnpublishVolumeRequest> for VolumeAtPath {
    type Error = Invalid;
    fn try_from(req: csi::NodeUnpublishVolumeRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        Ok(Self {
            path: required_path(&req.target_path, "target_path")?,
            volume_id: req.volume_id,
        })
    }
}

impl TryFrom<csi::NodeGetVolumeStatsRequest> for VolumeAtPath {
    type Error = Invalid;
    fn try_from(req: csi::NodeGetVolumeStatsRequest) -> Result<Self, Invalid> {
        required(&req.volume_id, "volume_id")?;
        // Not required to be absolute: a path that is not a mount of the volume, relative or
        // not, is NOT_FOUND (the spec's answer, and csi-sanity's expectation).
        Ok(Self {
            path: PathBuf::from(required(&req.volume_path, "volume_path")?),
            volume_id: req.volume_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_cap(mode: i32) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode { mode }),
            access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
        }
    }

    fn create(
        name: &str,
        caps: Vec<csi::VolumeCapability>,
        range: Option<(i64, i64)>,
    ) -> Result<CreateSpec, Invalid> {
        CreateSpec::try_from(csi::CreateVolumeRequest {
            name: name.into(),
            volume_capabilities: caps,
            capacity_range: range.map(|(r, l)| csi::CapacityRange {
                required_bytes: r,
                limit_bytes: l,
            }),
            ..Default::default()
        })
    }

    #[test]
    fn create_requires_name_and_capabilities() {
        assert!(create("", vec![mount_cap(1)], None).is_err());
        assert!(create("a", vec![], None).is_err());
        assert!(create("a", vec![mount_cap(0)], None).is_err());
        assert!(create("a", vec![mount_cap(99)], None).is_err());
        let no_type = csi::VolumeCapability {
            access_mode: mount_cap(1).access_mode,
            access_type: None,
        };
        assert!(create("a", vec![no_type], None).is_err());
    }

    #[test]
    fn capacity_is_required_else_limit() {
        assert_eq!(
            create("a", vec![mount_cap(1)], None)
                .unwrap()
                .capacity_bytes,
            0
        );
        assert_eq!(
            create("a", vec![mount_cap(1)], Some((10, 20)))
                .unwrap()
                .capacity_bytes,
            10
        );
        assert_eq!(
            create("a", vec![mount_cap(1)], Some((0, 20)))
                .unwrap()
                .capacity_bytes,
            20
        );
        assert!(create("a", vec![mount_cap(1)], Some((30, 20))).is_err());
        assert!(create("a", vec![mount_cap(1)], Some((-1, 0))).is_err());
    }

    #[test]
    fn publish_requires_absolute_target_and_capability() {
        let ok = csi::NodePublishVolumeRequest {
            volume_id: "v".into(),
            target_path: "/t".into(),
            volume_capability: Some(mount_cap(1)),
            ..Default::default()
        };
        assert!(PublishSpec::try_from(ok.clone()).is_ok());
        let mut rel = ok.clone();
        rel.target_path = "t".into();
        assert!(PublishSpec::try_from(rel).is_err());
        let mut nocap = ok.clone();
        nocap.volume_capability = None;
        assert!(PublishSpec::try_from(nocap).is_err());
        let mut noid = ok;
        noid.volume_id.clear();
        assert!(PublishSpec::try_from(noid).is_err());
    }

    #[test]
    fn mount_options_are_checked_for_every_request() {
        let mut cap = mount_cap(1);
        if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
            m.mount_flags = vec!["hard,remount".into()];
        }
        let publish = csi::NodePublishVolumeRequest {
            volume_id: "v".into(),
            target_path: "/t".into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        };
        assert!(PublishSpec::try_from(publish).is_err());
        assert!(create("a", vec![cap], None).is_err());
    }

    #[test]
    fn negative_max_entries_is_invalid() {
        assert!(ListSpec::try_from(csi::ListVolumesRequest {
            max_entries: -1,
            ..Default::default()
        })
        .is_err());
    }
}
