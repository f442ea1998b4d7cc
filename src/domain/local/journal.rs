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
//!
//! Everything here blocks (a commit waits for its flush): it runs inside the local backend's
//! one blocking call per request.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
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

fn failed(step: &'static str, volume: &str) -> impl FnOnce(JournalError) -> ControllerError {
    let os = ControllerError::os(step, volume);
    move |e| os(OsError::Journal(e))
}

/// Deleted names remembered before a filesystem sync is asked for. A sync is what lets them
/// be forgotten, and a sync is costly beside a busy writer (it writes out everyone's dirty
/// data): with 1,024 a delete-heavy load asked for several a second and lost half its rate
/// beside a writer. At about 40 bytes each this is ~320 KiB at most.
const REMEMBERED: usize = 8192;

/// Names deleted since the filesystem sync that covers each (its ticket), oldest first.
/// Names are kept as keyed 64-bit hashes: a collision costs one needless sync, never safety.
#[derive(Default)]
struct Deleted {
    order: VecDeque<(u64, u64)>,
    /// Each hash's latest ticket.
    latest: HashMap<u64, u64>,
    hasher: RandomState,
}

impl Deleted {
    fn hash(&self, key: &VolumeKey) -> u64 {
        self.hasher.hash_one(key.as_str())
    }

    /// Forget what a finished sync covers. Tickets grow along `order`, so this stops at the
    /// first one not yet synced.
    fn prune(&mut self, synced: impl Fn(u64) -> bool) {
        while let Some(&(hash, ticket)) = self.order.front() {
            if !synced(ticket) {
                break;
            }
            self.order.pop_front();
            if self.latest.get(&hash) == Some(&ticket) {
                self.latest.remove(&hash);
            }
        }
    }
}

pub(super) struct LocalJournal {
    journal: Journal,
    deleted: Mutex<Deleted>,
}

/// The journal as found at start-up: the last entry of each volume, to redo before serving.
pub(super) struct Pending {
    journal: Journal,
    pub last: Vec<(VolumeKey, Entry)>,
}

impl LocalJournal {
    /// Open the journal in `dir`, covering the filesystems of `roots`, and read what it holds;
    /// waits while another process holds it. Blocks: called from the blocking pool.
    pub fn open(
        dir: PathBuf,
        roots: Vec<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Pending, ControllerError> {
        let where_ = dir.display().to_string();
        // The layout too: what the journal covers must exist before it is opened.
        for d in roots.iter().chain([&dir]) {
            std::fs::create_dir_all(d)
                .map_err(|source| JournalError::Open {
                    path: d.clone(),
                    source,
                })
                .map_err(failed("open journal", &where_))?;
        }
        let (journal, replay) =
            Journal::open(&dir, &roots, metrics).map_err(failed("open journal", &where_))?;
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

    /// Write `entry` and return once it is on disk (a flush shared with concurrent commits).
    pub fn commit(&self, entry: &Entry, volume: &str) -> Result<(), ControllerError> {
        let payload = serde_json::to_vec(entry).map_err(|e| ControllerError::CorruptRecord {
            path: PathBuf::from("journal"),
            reason: e.to_string(),
        })?;
        self.journal
            .commit(payload)
            .map_err(failed("commit to journal", volume))
    }

    /// After a committed delete of `key`.
    pub fn deleted(&self, key: &VolumeKey, volume: &str) -> Result<(), ControllerError> {
        let waiting = {
            let mut deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
            // Taken under the lock, so that tickets grow along `order` (see `prune`).
            let ticket = self.journal.sync_ticket();
            let hash = deleted.hash(key);
            deleted.order.push_back((hash, ticket));
            deleted.latest.insert(hash, ticket);
            deleted.prune(|t| self.journal.synced(t));
            deleted.order.len()
        };
        if waiting > 2 * REMEMBERED {
            // The syncs asked for have not kept up (or keep failing): wait for one, so that
            // memory stays bounded.
            self.journal
                .sync_now()
                .map_err(failed("sync deletions", volume))?;
        } else if waiting > REMEMBERED {
            self.journal.request_sync();
        }
        Ok(())
    }

    /// Before making the directory of `key`: if its deletion may still be undone by a power
    /// cut, sync it to disk first (see the module header).
    pub fn before_create(&self, key: &VolumeKey, volume: &str) -> Result<(), ControllerError> {
        let pending = {
            let deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
            deleted
                .latest
                .get(&deleted.hash(key))
                .is_some_and(|t| !self.journal.synced(*t))
        };
        if pending {
            self.journal
                .sync_now()
                .map_err(failed("sync an earlier deletion", volume))?;
            let mut deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
            deleted.prune(|t| self.journal.synced(t));
        }
        Ok(())
    }
}

impl Pending {
    /// The redo is done: sync it and take commits.
    pub fn finish(self) -> Result<LocalJournal, ControllerError> {
        self.journal
            .replayed()
            .map_err(failed("finish journal replay", "*"))?;
        Ok(LocalJournal {
            journal: self.journal,
            deleted: Mutex::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(dir: &std::path::Path) -> LocalJournal {
        let roots = vec![dir.join("volumes"), dir.join("meta")];
        LocalJournal::open(dir.join("journal"), roots, Arc::new(Metrics::new()))
            .unwrap()
            .finish()
            .unwrap()
    }

    fn key(name: &str) -> VolumeKey {
        VolumeKey::parse(name).unwrap()
    }

    #[test]
    fn a_name_made_again_waits_for_the_sync_of_its_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let j = opened(dir.path());
        let ticket = j.journal.sync_ticket();
        j.deleted(&key("a"), "a").unwrap();
        j.before_create(&key("b"), "b").unwrap();
        assert!(!j.journal.synced(ticket), "another name needs no sync");
        j.before_create(&key("a"), "a").unwrap();
        assert!(
            j.journal.synced(ticket),
            "the deletion of a is on disk first"
        );
        assert!(j.deleted.lock().unwrap().order.is_empty(), "and forgotten");
    }

    #[test]
    fn deletions_past_the_bound_ask_for_a_sync_and_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let j = opened(dir.path());
        let ticket = j.journal.sync_ticket();
        for i in 0..=REMEMBERED {
            j.deleted(&key(&format!("k{i}")), "k").unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !j.journal.synced(ticket) {
            assert!(
                std::time::Instant::now() < deadline,
                "no sync was asked for"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        j.deleted(&key("last"), "last").unwrap();
        assert_eq!(
            j.deleted.lock().unwrap().order.len(),
            1,
            "synced names pruned"
        );
    }

    #[test]
    fn pruning_stops_at_the_first_unsynced_ticket_and_keeps_a_later_delete() {
        let mut d = Deleted::default();
        let (a, b) = (d.hash(&key("a")), d.hash(&key("b")));
        for (hash, ticket) in [(a, 1), (b, 2), (a, 3)] {
            d.order.push_back((hash, ticket));
            d.latest.insert(hash, ticket);
        }
        d.prune(|t| t <= 2);
        assert_eq!(d.order, [(a, 3)]);
        assert_eq!(
            d.latest.get(&a),
            Some(&3),
            "a's later deletion is still unsynced"
        );
        assert_eq!(d.latest.get(&b), None);
    }
}
