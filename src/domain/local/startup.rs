//! The local backend's start-up: the layout made, the journal taken and what it holds redone,
//! the scratch files of a killed driver swept, and the quota projects in use held again,
//! before any call is served.

use std::sync::Arc;

use super::journal::{Entry, LocalJournal};
use super::store::{record_name, refuse_if_mounted, Store};
use super::JOURNAL;
use crate::domain::error::ControllerError;
use crate::domain::volume_id::VolumeKey;
use crate::os::safe_fs::Swept;
use crate::os::{MountEntry, OsError};

impl Store {
    /// Take the journal and redo what it holds; then this store creates and deletes.
    pub(super) fn open(
        mut self,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, ControllerError> {
        let roots = self.layout_dirs()[..2].to_vec();
        for dir in &self.layout_dirs()[3..] {
            std::fs::create_dir_all(dir).map_err(|e| {
                ControllerError::os("create layout", "*")(OsError::Helper {
                    what: format!("mkdir {}", dir.display()),
                    message: e.to_string(),
                })
            })?;
        }
        let pending = LocalJournal::open(self.root.join(JOURNAL), roots, metrics)?;
        self.support = self.detect_support();
        // One read of the mount table for the whole replay, and none without a delete in it.
        let mounts = match pending
            .last
            .iter()
            .any(|(_, e)| matches!(e, Entry::Delete { .. }))
        {
            true => self.mount_table("*")?,
            false => Default::default(),
        };
        for (key, entry) in &pending.last {
            self.redo(key, entry, &mounts)?;
        }
        // A process killed between writing a record's temporary file and renaming it leaves
        // that file, and nothing else would ever remove it. The journal's lock is held: no
        // other process writes here now. Only clutter is at stake, so a failure is logged.
        match self.records().sweep_all_scratch() {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(
                    removed = swept.removed.len(),
                    restored = swept.restored.len(),
                    "dealt with the scratch files of a killed driver"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not sweep scratch files"),
        }
        self.journal = Some(pending.finish()?);
        self.hold_projects()?;
        Ok(self)
    }

    /// Make the disk match a journal entry: the volume exists as recorded, or not at all.
    fn redo(
        &self,
        key: &VolumeKey,
        entry: &Entry,
        mounts: &[MountEntry],
    ) -> Result<(), ControllerError> {
        match entry {
            Entry::Create { record, .. } => {
                // After a power cut the record may be missing or empty (its name made it to
                // disk, its data did not): both are rewritten from the entry.
                let found = match self.read_record(key) {
                    Ok(found) => found,
                    Err(ControllerError::CorruptRecord { .. }) => None,
                    Err(e) => return Err(e),
                };
                if found.as_ref() != Some(record) {
                    self.records()
                        .store(&record_name(key), record, false, &record.name)?;
                }
                self.ensure_dir(key, record.mount_permissions, &record.name)?;
                self.apply_quota(key, record, &record.name)
            }
            Entry::Delete { .. } => {
                refuse_if_mounted(mounts, &self.volume_dir(key), key.as_str())?;
                let project = match self.read_record(key) {
                    Ok(found) => found.and_then(|r| r.project()),
                    Err(ControllerError::CorruptRecord { .. }) => None,
                    Err(e) => return Err(e),
                };
                self.remove_fill(key, key.as_str())?;
                self.remove(key, project, key.as_str())
            }
        }
    }
}
