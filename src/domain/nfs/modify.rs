//! ControllerModifyVolume on NFS: a VolumeAttributesClass's `mountPermissions` applied to the
//! volume's directory. The record takes the new mode first and the directory follows, so a
//! call cut short is finished by the resizer's retry, and a retried CreateVolume keeps the
//! modified mode instead of restoring the original one.

use super::claims::NfsRecord;
use super::NfsBackend;
use crate::domain::error::ControllerError;
use crate::domain::volume_id::NfsId;
use crate::os::FsOp;

impl NfsBackend {
    /// Give the volume's directory `mode`; `None` changes nothing (no mutable parameter of
    /// pvdir's was given).
    pub async fn modify(
        &self,
        id: &NfsId,
        raw: &str,
        mode: Option<u32>,
    ) -> Result<(), ControllerError> {
        let _dir = self.claim_dir(id)?;
        let found = self.owned(id, raw).await?;
        // A create still in progress has not answered yet: the CO cannot know the volume.
        let Some(record) = found.record.filter(|r| r.creating.is_none()) else {
            return Err(ControllerError::NotFound {
                id: raw.to_string(),
            });
        };
        let Some(mode) = mode else {
            return Ok(());
        };
        if record.mode() != Some(mode) {
            let changed = NfsRecord {
                modified_permissions: Some(mode),
                ..record.clone()
            };
            if found
                .records
                .swap(&found.name, &record, Some(&changed), raw)
                .await?
                .is_some()
            {
                // Another process changed it between our read and the swap: the retry sees it.
                return Err(ControllerError::RecordChanged {
                    subdir: id.subdir.to_string(),
                });
            }
        }
        // Also when the record had the mode already: an earlier call may have stopped between
        // the record and the directory. A no-op chmod is skipped (see `safe_fs::ensure_dir`).
        let op = FsOp::EnsureDir {
            base: found.export.path.clone(),
            rel: id.subdir.clone(),
            mode: Some(mode),
        };
        self.remote(op, "change volume directory mode", raw).await?;
        Ok(())
    }
}
