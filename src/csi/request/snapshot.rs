//! Validation of the snapshot requests: CreateSnapshot, DeleteSnapshot, ListSnapshots and
//! GetSnapshot.

use super::{required, Invalid};
use crate::csi::proto as csi;
use crate::domain::snapshot::{SnapshotFilter, SnapshotSpec};

impl TryFrom<csi::CreateSnapshotRequest> for SnapshotSpec {
    type Error = Invalid;
    fn try_from(req: csi::CreateSnapshotRequest) -> Result<Self, Invalid> {
        required(&req.name, "name")?;
        required(&req.source_volume_id, "source_volume_id")?;
        Ok(Self {
            name: req.name,
            source_volume: req.source_volume_id,
            parameters: req.parameters,
        })
    }
}

/// DeleteSnapshot and GetSnapshot: a snapshot ID, required.
pub struct SnapshotIdSpec {
    pub snapshot_id: String,
}

impl TryFrom<csi::DeleteSnapshotRequest> for SnapshotIdSpec {
    type Error = Invalid;
    fn try_from(req: csi::DeleteSnapshotRequest) -> Result<Self, Invalid> {
        Self::new(req.snapshot_id)
    }
}

impl TryFrom<csi::GetSnapshotRequest> for SnapshotIdSpec {
    type Error = Invalid;
    fn try_from(req: csi::GetSnapshotRequest) -> Result<Self, Invalid> {
        Self::new(req.snapshot_id)
    }
}

impl SnapshotIdSpec {
    fn new(snapshot_id: String) -> Result<Self, Invalid> {
        required(&snapshot_id, "snapshot_id")?;
        Ok(Self { snapshot_id })
    }
}

pub struct ListSnapshotsSpec {
    pub filter: SnapshotFilter,
    pub starting_token: String,
    pub max_entries: usize,
}

impl TryFrom<csi::ListSnapshotsRequest> for ListSnapshotsSpec {
    type Error = Invalid;
    fn try_from(req: csi::ListSnapshotsRequest) -> Result<Self, Invalid> {
        let max_entries = usize::try_from(req.max_entries)
            .map_err(|_| Invalid("max_entries must not be negative".into()))?;
        let given = |s: String| (!s.is_empty()).then_some(s);
        Ok(Self {
            filter: SnapshotFilter {
                snapshot_id: given(req.snapshot_id),
                source_volume: given(req.source_volume_id),
            },
            starting_token: req.starting_token,
            max_entries,
        })
    }
}
