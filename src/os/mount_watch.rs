//! The mount table, read again only when the kernel says it changed.
//!
//! Every local DeleteVolume must know whether the volume's directory is the source of a live
//! bind mount, and parsing `/proc/self/mountinfo` for that was a tenth of a delete's CPU. The
//! kernel tells an open mountinfo file when its namespace's mounts change (proc(5): after a
//! mount, unmount or remount, `poll` reports `POLLPRI | POLLERR` on it). So the parsed table is
//! kept beside the open file and re-read only when a non-blocking poll reports a change.
//!
//! Why this observes the world as well as a fresh read does: the file's "last seen" event is
//! set when it is opened, before its contents are read, and each poll that reports a change
//! moves it on. A change that lands during or after a read is therefore reported by the next
//! poll, and never lost; at worst the table is read once more than needed. A poll that fails
//! counts as a change. The table answers "what is mounted now" exactly as a fresh read would,
//! with the same race either way (a mount made after the answer), which callers already bear.
//!
//! One thing changes the table's text without an event: a bind's root is the path of its
//! source directory as of the read, so renaming that directory changes it. What a delete asks
//! ("is anything mounted from this volume's tree?") survives that. Only a process that sees the
//! source and the destination through one mount can rename (across mounts, rename fails with
//! EXDEV), and a pod sees a volume only through a bind of that volume's own directory, which it
//! cannot rename (a mount's root is busy). So a pod's renames stay inside one volume, and a
//! cached root inside a volume's tree stays inside it. pvdir's own renames (a copy putting
//! entries in place) are into volumes not yet handed out, which nothing mounts.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::mountinfo::{self, MountEntry};
use super::OsError;

const MOUNTINFO: &str = "/proc/self/mountinfo";

struct Seen {
    /// Open since `table` was read from it: its poll reports changes since then.
    file: File,
    table: Arc<Vec<MountEntry>>,
}

/// This process's mount table, cached until the kernel reports a change.
#[derive(Default)]
pub struct MountWatch {
    seen: Mutex<Option<Seen>>,
}

impl MountWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current mount table. Blocks briefly on the kernel when the table changed.
    pub fn table(&self) -> Result<Arc<Vec<MountEntry>>, OsError> {
        // A poisoned lock only means another reader panicked; the cache is dropped below if
        // it is stale, so it is safe to go on.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = seen.as_ref().filter(|s| !changed(&s.file)) {
            return Ok(Arc::clone(&s.table));
        }
        let fresh = read()?;
        let table = Arc::clone(&fresh.table);
        *seen = Some(fresh);
        Ok(table)
    }
}

/// Has the namespace's mount table changed since this file was opened or last polled?
fn changed(file: &File) -> bool {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_none_or(|r| {
            r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR | PollFlags::POLLNVAL)
        }),
        Err(_) => true,
    }
}

/// Open the table and read it: the open comes first, so the file reports what changes after.
fn read() -> Result<Seen, OsError> {
    let (file, table) = open_and_parse()?;
    Ok(Seen {
        file,
        table: Arc::new(table),
    })
}

/// Read the table once, for a caller that keeps no cache.
pub fn read_once() -> Result<Vec<MountEntry>, OsError> {
    open_and_parse().map(|(_, table)| table)
}

fn open_and_parse() -> Result<(File, Vec<MountEntry>), OsError> {
    let mut file = File::open(MOUNTINFO).map_err(|source| OsError::ReadMountTable { source })?;
    // Bytes, not text: mount paths are whatever bytes someone gave a directory name.
    let mut text = Vec::with_capacity(16 * 1024);
    file.read_to_end(&mut text)
        .map_err(|source| OsError::ReadMountTable { source })?;
    Ok((file, mountinfo::parse(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_table_is_not_read_again() {
        let watch = MountWatch::new();
        let first = watch.table().expect("mount table");
        let second = watch.table().expect("mount table");
        // The same allocation: no read happened. A mount by anything else on the machine in
        // between would make a second read right, so one retry is allowed.
        if !Arc::ptr_eq(&first, &second) {
            let third = watch.table().expect("mount table");
            assert!(Arc::ptr_eq(&second, &third), "the table was read again");
        }
    }
}
