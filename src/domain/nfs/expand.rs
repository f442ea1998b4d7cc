//! ControllerExpandVolume on NFS: the new size is recorded, not enforced (the export's server
//! decides what a directory may hold). Recorded so that a claim can grow and a later
//! expansion compares against what was granted.

use super::claims::NfsRecord;
use super::NfsBackend;
use crate::domain::error::ControllerError;
use crate::domain::volume::Expanded;
use crate::domain::volume_id::NfsId;

impl NfsBackend {
    /// Record a larger size; a volume already that large is left as it is.
    pub async fn expand(
        &self,
        id: &NfsId,
        raw: &str,
        size: i64,
    ) -> Result<Expanded, ControllerError> {
        let _dir = self.claim_dir(id)?;
        let found = self.owned(id, raw).await?;
        let (records, name) = (found.records, found.name);
        // A create still in progress has not answered yet: the CO cannot know the volume.
        let Some(record) = found.record.filter(|r| r.creating.is_none()) else {
            return Err(ControllerError::NotFound {
                id: raw.to_string(),
            });
        };
        if size <= record.size() {
            return Ok(Expanded {
                capacity_bytes: record.size(),
                on_node: false,
            });
        }
        let grown = NfsRecord {
            expanded_bytes: Some(size),
            ..record.clone()
        };
        match records.swap(&name, &record, Some(&grown), raw).await? {
            None => Ok(Expanded {
                capacity_bytes: size,
                on_node: false,
            }),
            // Another process changed it between our read and the swap: the retry sees it.
            Some(_) => Err(ControllerError::RecordChanged {
                subdir: id.subdir.to_string(),
            }),
        }
    }
}
