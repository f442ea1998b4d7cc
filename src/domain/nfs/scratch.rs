//! When to sweep the scratch files a killed writer left among an export's records (see
//! `crate::os::safe_fs::sweep_scratch`): on the first use of the export by this process (so
//! after a driver was killed mid-write, whose mount the new process finds and keeps), on a
//! remount, and on the next use after a record write or swap there failed (a helper killed at
//! its time bound leaves its scratch file while the driver lives on). Nothing else would ever
//! remove them.
//!
//! A sweep that fails only costs clutter: it is logged, stays due, and the call goes on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::export::ExportMount;
use crate::domain::record::RecordDir;

/// One "a sweep is due" flag per export mount path.
#[derive(Default)]
pub struct ScratchSweeps {
    due: Mutex<HashMap<PathBuf, Arc<AtomicBool>>>,
}

impl ScratchSweeps {
    /// The flag of the export mounted at `mount`, for its [`RecordDir`] to raise. It starts
    /// raised: the first use of an export by this process sweeps, even when the mount is one a
    /// killed predecessor left and this process adopted (not fresh).
    pub fn flag(&self, mount: &Path) -> Arc<AtomicBool> {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            due.entry(mount.to_path_buf())
                .or_insert_with(|| Arc::new(AtomicBool::new(true))),
        )
    }

    /// Sweep `records` if the export was just mounted or a write there failed since the last
    /// sweep.
    pub async fn sweep_if_due(&self, export: &ExportMount, records: &RecordDir) {
        let flag = self.flag(&export.path);
        if !(flag.swap(false, Ordering::Relaxed) | export.fresh) {
            return;
        }
        match records.sweep_scratch().await {
            Ok(swept) => {
                if !swept.removed.is_empty() || !swept.restored.is_empty() {
                    tracing::info!(export.path = %export.path.display(),
                        removed = swept.removed.len(), restored = swept.restored.len(),
                        "dealt with the scratch files of killed writers");
                }
                // A writer of this host still runs (a helper stuck on a server that stopped
                // answering dies only once its call returns): look again next time.
                if swept.waiting > 0 {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => {
                flag.store(true, Ordering::Relaxed);
                tracing::warn!(export.path = %export.path.display(), error = %e,
                    "could not sweep scratch files; trying again on the next call");
            }
        }
    }
}
