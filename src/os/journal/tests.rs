use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::segment::SLOT;
use super::*;
use crate::metrics::Metrics;

fn open(dir: &Path) -> (Journal, Vec<Vec<u8>>) {
    let (j, replay) =
        Journal::open(dir, &[dir.to_path_buf()], Arc::new(Metrics::new())).expect("open journal");
    (j, replay.entries)
}

fn ready(dir: &Path) -> Journal {
    let (j, _) = open(dir);
    j.replayed().expect("replayed");
    j
}

#[test]
fn committed_entries_come_back_in_order_until_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let j = ready(dir.path());
    for i in 0..5u8 {
        j.commit(vec![i; 10 + i as usize]).unwrap();
    }
    drop(j);
    let (j, entries) = open(dir.path());
    assert_eq!(
        entries,
        (0..5u8)
            .map(|i| vec![i; 10 + i as usize])
            .collect::<Vec<_>>()
    );
    j.replayed().unwrap();
    drop(j);
    assert!(
        open(dir.path()).1.is_empty(),
        "replayed() leaves nothing to replay"
    );
}

#[test]
fn commits_are_refused_before_the_replay_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path());
    assert!(matches!(
        j.commit(b"x".to_vec()),
        Err(JournalError::NotReplayed)
    ));
    assert!(matches!(
        ready(tempfile::tempdir().unwrap().path()).commit(vec![0; MAX_PAYLOAD + 1]),
        Err(JournalError::TooLarge { .. })
    ));
}

#[test]
fn concurrent_commits_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(ready(dir.path()));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                for i in 0..50u8 {
                    j.commit(vec![t, i]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(Arc::try_unwrap(j).ok().expect("sole owner"));
    let mut entries = open(dir.path()).1;
    assert_eq!(entries.len(), 400);
    entries.sort();
    entries.dedup();
    assert_eq!(entries.len(), 400, "every entry once");
}

#[test]
fn a_full_segment_rotates_and_both_segments_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let j = ready(dir.path());
    // Entries of 16 KiB take 33 slots: about a thousand fill a segment.
    let per_segment = SEGMENT_BYTES / (33 * SLOT as u64);
    let n = per_segment + 50;
    for i in 0..n {
        let mut payload = vec![0u8; MAX_PAYLOAD - 8];
        payload.extend(i.to_le_bytes());
        j.commit(payload).unwrap();
    }
    assert_eq!(j.position(), 1, "one switch of segments");
    drop(j);
    let entries = open(dir.path()).1;
    let order: Vec<u64> = entries
        .iter()
        .map(|e| u64::from_le_bytes(e[e.len() - 8..].try_into().unwrap()))
        .collect();
    assert_eq!(order, (0..n).collect::<Vec<_>>());
}

#[test]
fn a_torn_last_entry_is_dropped_and_earlier_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let j = ready(dir.path());
    j.commit(b"first".to_vec()).unwrap();
    j.commit(b"second".to_vec()).unwrap();
    drop(j);
    let path = dir.path().join("segment-0");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * SLOT + 32] ^= 0xff; // the payload of the second entry
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(open(dir.path()).1, vec![b"first".to_vec()]);
}

#[test]
fn one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _j = ready(dir.path());
    let other = File::open(dir.path().join("segment-0")).unwrap();
    // SAFETY: flock on a descriptor owned by this test.
    let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, -1, "the journal is locked while open");
}

#[test]
fn a_sync_ticket_is_covered_only_by_a_sync_that_starts_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = ready(dir.path());
    let first = j.sync_ticket();
    assert!(!j.synced(first));
    j.sync_now().unwrap();
    assert!(j.synced(first));
    let second = j.sync_ticket();
    assert!(second > first && !j.synced(second));
    j.request_sync();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !j.synced(second) {
        assert!(
            std::time::Instant::now() < deadline,
            "the requested sync never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
