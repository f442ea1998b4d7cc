//! The journal's engine: group commit (one leader writes and flushes every waiting entry),
//! segment rotation, and the checkpoint thread. [`super::Journal`] is its public face.
//!
//! Invariants (see the module header of `journal`): an LSN counts as synced only after the
//! flush that covers it; the older segment is written over only after a checkpoint that began
//! after the rotation; a failed write or flush breaks the journal for good.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::segment::{self, encode_entry, encode_header, slots_for, SLOT};
use super::{JournalError, GROW, SEGMENT_BYTES};
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    Replaying,
    Open,
    Broken(String),
}

pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) active: usize,
    /// Epoch of each segment; 0 for one that holds nothing.
    pub(super) epochs: [u64; 2],
    /// Zero-filled bytes of each segment file.
    pub(super) sizes: [u64; 2],
    pub(super) next_slot: u64,
    pub(super) next_lsn: u64,
    /// Every LSN up to this one is on disk.
    pub(super) synced: u64,
    pub(super) queue: Vec<(u64, Vec<u8>)>,
    pub(super) leading: bool,
    /// Segment switches so far, and the last one a finished checkpoint covers: the older
    /// segment may be written over only when they are equal.
    pub(super) rotations: u64,
    pub(super) checkpointed: u64,
    /// Filesystem syncs begun and finished by the checkpoint thread, and whether one is
    /// wanted without a rotation (see [`Journal::sync_ticket`](super::Journal::sync_ticket)).
    pub(super) syncs_started: u64,
    pub(super) syncs_done: u64,
    pub(super) sync_wanted: bool,
    pub(super) closing: bool,
}

pub(super) struct Shared {
    pub(super) dir: PathBuf,
    /// Flushes and checkpoints are timed as helper work (`journal_flush`, `journal_checkpoint`).
    pub(super) metrics: Arc<Metrics>,
    pub(super) files: [File; 2],
    /// Directories whose filesystems a checkpoint syncs.
    pub(super) roots: Vec<(PathBuf, OwnedFd)>,
    pub(super) state: Mutex<State>,
    /// Commits wait here for their flush or for a checkpoint.
    pub(super) progress: Condvar,
    /// The checkpoint thread waits here for work.
    pub(super) work: Condvar,
}

fn fdatasync(file: &File, path: &Path) -> Result<(), JournalError> {
    file.sync_data().map_err(|source| JournalError::Write {
        path: path.to_path_buf(),
        source,
    })
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-changed in a way that matters
        // more than refusing to go on; keep serving with what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn path(&self, segment: usize) -> PathBuf {
        self.dir.join(format!("segment-{segment}"))
    }

    pub(super) fn sync_roots(&self) -> Result<(), JournalError> {
        for (path, fd) in &self.roots {
            // SAFETY: syncfs on a directory descriptor owned by self.
            if unsafe { libc::syncfs(fd.as_raw_fd()) } != 0 {
                return Err(JournalError::Checkpoint {
                    path: path.clone(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// Zero-fill segment `i` up to at least `bytes`, durably, so that entries written there
    /// later change no metadata.
    pub(super) fn prepare(&self, i: usize, bytes: u64) -> Result<(), JournalError> {
        let have = self.lock().sizes[i];
        if have >= bytes {
            return Ok(());
        }
        let want = bytes.div_ceil(GROW) * GROW;
        let zeros = vec![0u8; (want - have) as usize];
        segment::write_at(&self.files[i], &zeros, have)
            .and_then(|()| self.files[i].sync_all())
            .map_err(|source| JournalError::Write {
                path: self.path(i),
                source,
            })?;
        self.lock().sizes[i] = want;
        Ok(())
    }

    pub(super) fn commit(&self, payload: Vec<u8>) -> Result<(), JournalError> {
        let mut st = self.lock();
        if st.phase == Phase::Replaying {
            return Err(JournalError::NotReplayed);
        }
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        st.queue.push((lsn, payload));
        loop {
            if let Phase::Broken(reason) = &st.phase {
                return Err(JournalError::Broken {
                    reason: reason.clone(),
                });
            }
            if st.synced >= lsn {
                return Ok(());
            }
            if st.leading {
                st = self.progress.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st = self.lead(st);
        }
    }

    /// Write and flush every queued entry as one batch; called with no other leader.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let batch = std::mem::take(&mut st.queue);
        let need: u64 = batch.iter().map(|(_, p)| slots_for(p.len())).sum();
        let max_slots = SEGMENT_BYTES / SLOT as u64;
        if st.next_slot + need > max_slots {
            if st.checkpointed < st.rotations {
                // Both segments hold entries not yet on disk by themselves: wait for the
                // checkpoint, with the batch queued again in order.
                st.queue.splice(0..0, batch);
                self.work.notify_all();
                return self.progress.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st = self.rotate(st);
            if st.phase != Phase::Open {
                st.queue.splice(0..0, batch);
                return st;
            }
        }
        st.leading = true;
        let (active, epoch, start) = (st.active, st.epochs[st.active], st.next_slot);
        st.next_slot += need;
        let last = batch.last().map_or(st.synced, |(lsn, _)| *lsn);
        drop(st);
        let mut bytes = Vec::with_capacity(need as usize * SLOT);
        for (lsn, payload) in &batch {
            bytes.extend(encode_entry(epoch, *lsn, payload));
        }
        let at = start * SLOT as u64;
        let started = Instant::now();
        let result = self
            .prepare(active, at + bytes.len() as u64)
            .and_then(|()| {
                segment::write_at(&self.files[active], &bytes, at).map_err(|source| {
                    JournalError::Write {
                        path: self.path(active),
                        source,
                    }
                })
            })
            .and_then(|()| fdatasync(&self.files[active], &self.path(active)));
        self.metrics
            .observe_helper("journal flush", false, started.elapsed());
        let mut st = self.lock();
        st.leading = false;
        match result {
            Ok(()) => st.synced = last,
            Err(e) => st.phase = Phase::Broken(e.to_string()),
        }
        self.progress.notify_all();
        st
    }

    /// Point new entries at the other segment, which a checkpoint has emptied, and ask for a
    /// checkpoint of the one just filled.
    fn rotate<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let next = 1 - st.active;
        let epoch = st.epochs[st.active] + 1;
        st.leading = true;
        drop(st);
        let result = segment::write_at(&self.files[next], &encode_header(epoch), 0)
            .and_then(|()| self.files[next].sync_data())
            .map_err(|source| JournalError::Write {
                path: self.path(next),
                source,
            });
        let mut st = self.lock();
        st.leading = false;
        match result {
            Ok(()) => {
                st.epochs[next] = epoch;
                st.active = next;
                st.next_slot = 1;
                st.rotations += 1;
                self.work.notify_all();
            }
            Err(e) => st.phase = Phase::Broken(e.to_string()),
        }
        st
    }

    pub(super) fn checkpoint_loop(&self) {
        let mut st = self.lock();
        loop {
            if st.closing {
                return;
            }
            if st.checkpointed == st.rotations && !st.sync_wanted {
                st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let target = st.rotations;
            st.sync_wanted = false;
            st.syncs_started += 1;
            let ticket = st.syncs_started;
            drop(st);
            let started = Instant::now();
            let result = self.sync_roots();
            self.metrics
                .observe_helper("journal checkpoint", false, started.elapsed());
            st = self.lock();
            match result {
                Ok(()) => {
                    st.checkpointed = target;
                    st.syncs_done = ticket;
                }
                Err(e) => {
                    // The old segment stays in use; commits go on until the other is full.
                    tracing::warn!(error = %e, "journal checkpoint failed; retrying in 1 s");
                    st.sync_wanted = true;
                    st = self
                        .work
                        .wait_timeout(st, Duration::from_secs(1))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
            self.progress.notify_all();
        }
    }
}
