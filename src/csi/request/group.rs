//! Validation of the group snapshot requests: CreateVolumeGroupSnapshot,
//! DeleteVolumeGroupSnapshot and GetVolumeGroupSnapshot.

use super::{required, Invalid};
use crate::csi::proto as csi;
use crate::domain::group::GroupSpec;

impl TryFrom<csi::CreateVolumeGroupSnapshotRequest> for GroupSpec {
    type Error = Invalid;
    fn try_from(req: csi::CreateVolumeGroupSnapshotRequest) -> Result<Self, Invalid> {
        required(&req.name, "name")?;
        if req.source_volume_ids.is_empty() {
            return Err(Invalid("source_volume_ids is required".into()));
        }
        for (i, id) in req.source_volume_ids.iter().enumerate() {
            required(id, "source_volume_ids[]")?;
            if req.source_volume_ids[..i].contains(id) {
                return Err(Invalid(format!("source volume {id:?} is given twice")));
            }
        }
        Ok(Self {
            name: req.name,
            sources: req.source_volume_ids,
            parameters: req.parameters,
        })
    }
}

/// DeleteVolumeGroupSnapshot and GetVolumeGroupSnapshot: the group's ID, required, and the
/// member IDs the CO knows of. The spec calls those required too, but csi-sanity and older
/// snapshotters send none: when given, they must match the group's members.
pub struct GroupIdSpec {
    pub group_id: String,
    pub snapshot_ids: Vec<String>,
}

impl TryFrom<csi::DeleteVolumeGroupSnapshotRequest> for GroupIdSpec {
    type Error = Invalid;
    fn try_from(req: csi::DeleteVolumeGroupSnapshotRequest) -> Result<Self, Invalid> {
        Self::new(req.group_snapshot_id, req.snapshot_ids)
    }
}

impl TryFrom<csi::GetVolumeGroupSnapshotRequest> for GroupIdSpec {
    type Error = Invalid;
    fn try_from(req: csi::GetVolumeGroupSnapshotRequest) -> Result<Self, Invalid> {
        Self::new(req.group_snapshot_id, req.snapshot_ids)
    }
}

impl GroupIdSpec {
    fn new(group_id: String, snapshot_ids: Vec<String>) -> Result<Self, Invalid> {
        required(&group_id, "group_snapshot_id")?;
        Ok(Self {
            group_id,
            snapshot_ids,
        })
    }
}
