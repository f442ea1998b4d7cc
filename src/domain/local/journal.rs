//! What the local backend writes to its journal, and the replay that redoes it after a crash.
//!
//! A create or delete first commits one entry saying what the volume's state is to be (see
//! [`crate::os::journal`]), then changes the record and the volume directory without syncing
//! them. The replay at start-up takes each volume's last entry
//! and makes the disk match it: the record and the directory exist, or neither does. Only the
//! last entry counts, because an earlier one may describe a volume of the same name that was
//! deleted and made again since.
//!
//! One hazard the last entry alone cannot cover: a name deleted and created again before a
//! checkpoint. A power cut could then bring the old directory, with the old volume's files, back
//! under the new volume. So a create of a name whose deletion is not yet on disk by itself
//! syncs the filesystem before it makes the directory (rare: claim names are unique).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::LocalRecord;
use crate::domain::error::ControllerError;
use crate::domain::volume_id::VolumeKey;
use crate::metrics::Metrics;
use crate::os::journal::{Journal, JournalError};
use crate::os::OsError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Entry {
    /// The volume exists with this record, and its directory.
    Create { key: String, record: LocalRecord },
    /// Neither the record nor the directory exists.
    Delete { key: String },
}

impl Entry {
    fn key(&self) -> &str {
        match self {
            Entry::Create { key, .. } | Entry::Delete { key } => key,
        }
    }
}

fn failed(step: &'static str, volume: &str) -> impl FnOnce(OsError) -> ControllerError {
    ControllerError::os(step, volume)
}

async fn off_runtime<T: Send + 'static>(
    step: &'static str,
    volume: &str,
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, ControllerError> {
    // Awaited to the end, like all local work: the caller's guard is held until it is done.
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OsError::Helper {
            what: step.into(),
            message: e.to_string(),
        })
        .and_then(|r| r.map_err(OsError::Journal))
        .map_err(failed(step, volume))
}

/// Deleted names remembered before a sync is asked for: a few hundred KiB at most.
const REMEMBERED: usize = 1024;

pub(super) struct LocalJournal {
    journal: Arc<Journal>,
    /// Names deleted since the filesystem sync whose ticket each carries.
    deleted: Mutex<HashMap<VolumeKey, u64>>,
}

/// The journal as found at start-up: the last entry of each volume, to redo before serving.
pub(super) struct Pending {
    journal: Journal,
    pub last: Vec<(VolumeKey, Entry)>,
}

impl LocalJournal {
    /// Open the journal in `dir`, covering the filesystems of `roots`; waits while another
    /// process holds it.
    pub async fn open(
        dir: PathBuf,
        roots: Vec<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Pending, ControllerError> {
        let where_ = dir.display().to_string();
        let (journal, replay) = off_runtime("open journal", &where_, move || {
            // The layout too: what the journal covers must exist before it is opened.
            for d in roots.iter().chain([&dir]) {
                std::fs::create_dir_all(d).map_err(|source| JournalError::Open {
                    path: d.clone(),
                    source,
                })?;
            }
            Journal::open(&dir, &roots, metrics)
        })
        .await?;
        let mut last: BTreeMap<VolumeKey, Entry> = BTreeMap::new();
        for payload in replay.entries {
            let entry: Entry =
                serde_json::from_slice(&payload).map_err(|e| ControllerError::CorruptRecord {
                    path: PathBuf::from(&where_),
                    reason: format!("journal entry: {e}"),
                })?;
            let key =
                VolumeKey::parse(entry.key()).ok_or_else(|| ControllerError::CorruptRecord {
                    path: PathBuf::from(&where_),
                    reason: format!("journal entry names {:?}, not a volume key", entry.key()),
                })?;
            last.insert(key, entry);
        }
        Ok(Pending {
            journal,
            last: last.into_iter().collect(),
        })
    }

    pub async fn commit(&self, entry: &Entry, volume: &str) -> Result<(), ControllerError> {
        let payload = serde_json::to_vec(entry).map_err(|e| ControllerError::CorruptRecord {
            path: PathBuf::from("journal"),
            reason: e.to_string(),
        })?;
        let journal = Arc::clone(&self.journal);
        off_runtime("commit to journal", volume, move || journal.commit(payload)).await
    }

    /// After a committed delete of `key`.
    pub fn deleted(&self, key: &VolumeKey) {
        let ticket = self.journal.sync_ticket();
        let mut deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        deleted.insert(key.clone(), ticket);
        if deleted.len() > REMEMBERED {
            // Bounded: forget what a sync has covered, and ask for one if that was not enough.
            deleted.retain(|_, t| !self.journal.synced(*t));
            if deleted.len() > REMEMBERED / 2 {
                self.journal.request_sync();
            }
        }
    }

    /// Before making the directory of `key`: if its deletion may still be undone by a power
    /// cut, sync it to disk first (see the module header).
    pub async fn before_create(
        &self,
        key: &VolumeKey,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let pending = {
            let deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
            deleted.get(key).is_some_and(|t| !self.journal.synced(*t))
        };
        if pending {
            let journal = Arc::clone(&self.journal);
            off_runtime("sync an earlier deletion", volume, move || {
                journal.sync_now()
            })
            .await?;
            let mut deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
            deleted.remove(key);
        }
        Ok(())
    }
}

impl Pending {
    /// The redo is done: sync it and take commits.
    pub async fn finish(self) -> Result<LocalJournal, ControllerError> {
        let journal = Arc::new(self.journal);
        let j = Arc::clone(&journal);
        off_runtime("finish journal replay", "*", move || j.replayed()).await?;
        Ok(LocalJournal {
            journal,
            deleted: Mutex::new(HashMap::new()),
        })
    }
}
