//! A write-ahead journal that makes finished directory work durable with one shared flush.
//!
//! The local backend commits an entry describing a create or delete here, and once it is on
//! disk applies it to its directories without syncing them. A crash or power cut after the
//! answer loses nothing: the next start replays the entries and brings the directories to the
//! state they describe (see `domain::local::journal`).
//!
//! Why: the alternative is syncing each changed file and directory in order, three to five
//! flushes per create and delete, and a flush is what a busy disk makes slow. Here a commit is
//! one `fdatasync` of a pre-written file, and concurrent commits share it (group commit): the
//! first caller to find no flush running becomes the leader and writes every waiting entry in
//! one go; the others sleep until their entry is covered.
//!
//! Two segment files take turns. When the active one is full, new entries go to the other one
//! and a checkpoint thread runs `syncfs` on the backend's filesystem, after which everything the
//! old segment describes is on disk by itself and the segment may be written over. Commits wait
//! only if both are full before the checkpoint ends. Invariants: an entry is acknowledged only
//! after the flush that covers it; a segment is re-used only after a checkpoint that started
//! after its last entry was written; after a failed write or flush the journal refuses every
//! later commit (the kernel may have dropped the failed pages), until a restart replays it.

mod engine;
mod segment;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::metrics::Metrics;
use engine::{Phase, Shared, State};
use segment::encode_header;

pub use segment::MAX_PAYLOAD;

/// Bytes a segment grows by, zero-filled ahead of the entries that will use them.
const GROW: u64 = 1 << 20;
/// Largest segment; at a few hundred bytes an entry, tens of thousands of entries.
const SEGMENT_BYTES: u64 = 16 << 20;
/// How long a starting driver waits for a previous one to let go of the journal.
const LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("opening journal {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path} is held by another pvdir process (waited {LOCK_WAIT:?})")]
    Locked { path: PathBuf },
    #[error("writing journal {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("syncing the filesystem of {path} for a journal checkpoint: {source}")]
    Checkpoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal refuses commits after an earlier write failed: {reason}")]
    Broken { reason: String },
    #[error("journal not replayed yet")]
    NotReplayed,
    #[error("journal entry of {len} bytes is larger than {MAX_PAYLOAD}")]
    TooLarge { len: usize },
}

fn io(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

pub struct Journal {
    shared: Arc<Shared>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// What [`Journal::open`] found on disk: entries to replay before the journal takes commits.
pub struct Replay {
    pub entries: Vec<Vec<u8>>,
}

fn open_dir(path: &Path) -> Result<OwnedFd, JournalError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| JournalError::Open {
        path: path.to_path_buf(),
        source: io(e),
    })
}

fn lock(file: &File, path: &Path) -> Result<(), JournalError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor this function borrows; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(JournalError::Open {
                path: path.to_path_buf(),
                source: err,
            });
        }
        if Instant::now() > deadline {
            return Err(JournalError::Locked {
                path: path.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Journal {
    /// Open (or make) the journal in `dir`, which must be pvdir's own, symlink-free directory.
    /// `roots` are the directories whose filesystems hold what the entries describe. Blocks:
    /// call it off the async runtime. Waits while another process holds the journal.
    pub fn open(
        dir: &Path,
        roots: &[PathBuf],
        metrics: Arc<Metrics>,
    ) -> Result<(Journal, Replay), JournalError> {
        let mut files = Vec::new();
        let mut sizes = [0u64; 2];
        let mut found = Vec::new();
        for (i, size) in sizes.iter_mut().enumerate() {
            let path = dir.join(format!("segment-{i}"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o600)
                .open(&path)
                .map_err(|source| JournalError::Open {
                    path: path.clone(),
                    source,
                })?;
            if i == 0 {
                lock(&file, &path)?;
            }
            *size = file
                .metadata()
                .map_err(|source| JournalError::Open {
                    path: path.clone(),
                    source,
                })?
                .len();
            let (epoch, entries, _) = segment::read(&file);
            found.push((epoch, entries));
            files.push(file);
        }
        // The older segment's entries come first; both may be valid (see the module header).
        found.sort_by_key(|(epoch, _)| *epoch);
        let newest = found.last().map_or(0, |(epoch, _)| *epoch);
        let entries: Vec<segment::Entry> = found
            .into_iter()
            .filter(|(epoch, _)| *epoch != 0)
            .flat_map(|(_, e)| e)
            .collect();
        let next_lsn = entries.last().map_or(1, |e| e.lsn + 1);
        let roots = roots
            .iter()
            .map(|p| Ok((p.clone(), open_dir(p)?)))
            .collect::<Result<Vec<_>, JournalError>>()?;
        let [f0, f1]: [File; 2] = files.try_into().unwrap_or_else(|_| unreachable!("two"));
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            metrics,
            files: [f0, f1],
            roots,
            state: Mutex::new(State {
                phase: Phase::Replaying,
                active: 0,
                epochs: [newest, 0],
                sizes,
                next_slot: 1,
                next_lsn,
                synced: next_lsn - 1,
                queue: Vec::new(),
                leading: false,
                rotations: 0,
                checkpointed: 0,
                syncs_started: 0,
                syncs_done: 0,
                sync_wanted: false,
                closing: false,
            }),
            progress: Condvar::new(),
            work: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let checkpointer = std::thread::Builder::new()
            .name("pvdir-journal".into())
            .spawn(move || worker.checkpoint_loop())
            .map_err(|source| JournalError::Open {
                path: dir.to_path_buf(),
                source,
            })?;
        let replay = Replay {
            entries: entries.into_iter().map(|e| e.payload).collect(),
        };
        Ok((
            Journal {
                shared,
                checkpointer: Some(checkpointer),
            },
            replay,
        ))
    }

    /// The replayed work is done: sync it to disk, empty both segments and take commits.
    /// Blocks.
    pub fn replayed(&self) -> Result<(), JournalError> {
        let s = &self.shared;
        s.sync_roots()?;
        let epoch = s.lock().epochs[0] + 1;
        for (i, e) in [(0, epoch), (1, 0)] {
            s.prepare(i, GROW)?;
            segment::write_at(&s.files[i], &encode_header(e), 0)
                .and_then(|()| s.files[i].sync_data())
                .map_err(|source| JournalError::Write {
                    path: s.path(i),
                    source,
                })?;
        }
        let mut st = s.lock();
        st.epochs = [epoch, 0];
        st.active = 0;
        st.next_slot = 1;
        st.phase = Phase::Open;
        Ok(())
    }

    /// Make `payload` durable. Blocks until a flush covers it: call it off the async runtime.
    pub fn commit(&self, payload: Vec<u8>) -> Result<(), JournalError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(JournalError::TooLarge { len: payload.len() });
        }
        self.shared.commit(payload)
    }

    /// Segment switches so far.
    pub fn position(&self) -> u64 {
        self.shared.lock().rotations
    }

    /// A ticket for the work applied so far: the first filesystem sync that covers it.
    pub fn sync_ticket(&self) -> u64 {
        self.shared.lock().syncs_started + 1
    }

    /// Whether the work a ticket was taken for is on disk by itself.
    pub fn synced(&self, ticket: u64) -> bool {
        self.shared.lock().syncs_done >= ticket
    }

    /// Ask the checkpoint thread for a filesystem sync soon; returns at once.
    pub fn request_sync(&self) {
        self.shared.lock().sync_wanted = true;
        self.shared.work.notify_all();
    }

    /// Sync everything applied so far to disk, through the checkpoint thread. Blocks.
    pub fn sync_now(&self) -> Result<(), JournalError> {
        let s = &self.shared;
        let mut st = s.lock();
        let ticket = st.syncs_started + 1;
        st.sync_wanted = true;
        s.work.notify_all();
        while st.syncs_done < ticket {
            if let Phase::Broken(reason) = &st.phase {
                return Err(JournalError::Broken {
                    reason: reason.clone(),
                });
            }
            st = s.progress.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
