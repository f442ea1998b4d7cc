//! Per-volume state records: small JSON files written atomically (temp file, fsync, rename,
//! fsync of the directory) through the OS layer, on the local root or on the export. They are
//! the only state pvdir keeps, so a restarted driver knows everything it knew before.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ControllerError;
use crate::os::{FsOp, FsReply, Medium, Os};

fn os_step(step: &'static str, volume: &str) -> impl FnOnce(crate::os::OsError) -> ControllerError {
    let volume = volume.to_string();
    move |source| ControllerError::Os {
        step,
        volume,
        source,
    }
}

/// Read `dir/name`; `None` when there is no record.
pub async fn load<T: DeserializeOwned>(
    os: &dyn Os,
    medium: Medium,
    dir: &Path,
    name: &str,
    volume: &str,
) -> Result<Option<T>, ControllerError> {
    let op = FsOp::ReadRecord {
        dir: dir.to_path_buf(),
        name: name.to_string(),
    };
    match os
        .fs(op, medium)
        .await
        .map_err(os_step("read volume record", volume))?
    {
        FsReply::Record(Some(bytes)) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ControllerError::CorruptRecord {
                    path: dir.join(name),
                    reason: e.to_string(),
                })
        }
        _ => Ok(None),
    }
}

/// Replace `dir/name` atomically with `value`.
pub async fn store<T: Serialize>(
    os: &dyn Os,
    medium: Medium,
    dir: &Path,
    name: &str,
    value: &T,
    volume: &str,
) -> Result<(), ControllerError> {
    let contents = serde_json::to_vec(value).map_err(|e| ControllerError::CorruptRecord {
        path: dir.join(name),
        reason: e.to_string(),
    })?;
    let op = FsOp::WriteRecord {
        dir: dir.to_path_buf(),
        name: name.to_string(),
        contents,
    };
    os.fs(op, medium)
        .await
        .map_err(os_step("write volume record", volume))?;
    Ok(())
}

/// Remove `dir/name`; absent is fine.
pub async fn remove(
    os: &dyn Os,
    medium: Medium,
    dir: &Path,
    name: &str,
    volume: &str,
) -> Result<(), ControllerError> {
    let op = FsOp::RemoveRecord {
        dir: dir.to_path_buf(),
        name: name.to_string(),
    };
    os.fs(op, medium)
        .await
        .map_err(os_step("remove volume record", volume))?;
    Ok(())
}
