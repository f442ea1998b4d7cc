//! The remote medium for real: directory operations run in `pvdir internal fs` child processes,
//! results and errors cross the process boundary as JSON, and a helper that blocks is killed
//! within the bound. A FIFO stands in for a dead NFS server: opening it for reading blocks in
//! the kernel exactly like an NFS call that never gets an answer.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pvdir::os::mount::MountApi;
use pvdir::os::real::RealOs;
use pvdir::os::safe_fs::{RemoveOutcome, SafeFsError};
use pvdir::os::{FsOp, FsReply, Medium, Os, OsError, RelPath};

fn os(timeout: Duration) -> RealOs {
    // Directory work only: the staging directory is never prepared or used.
    let unused = std::env::temp_dir().join("pvdir-remote-helper-unused");
    RealOs::new(
        PathBuf::from(env!("CARGO_BIN_EXE_pvdir")),
        timeout,
        unused,
        MountApi::Auto,
    )
}

fn helpers_running_for(marker: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("internal") && cmd.contains(marker) {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn remote_operations_round_trip_through_the_helper() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let os = os(Duration::from_secs(20));
    let rel = RelPath::parse("ns/claim").unwrap();
    let ensure = FsOp::EnsureDir {
        base: base.clone(),
        rel: rel.clone(),
        mode: Some(0o750),
    };
    assert!(
        matches!(os.fs(ensure, Medium::Remote).await.unwrap(), FsReply::Ensured(e) if e.created)
    );
    std::fs::write(base.join("ns/claim/data"), b"x").unwrap();
    let FsReply::Stats(s) = os
        .fs(FsOp::Statfs { path: base.clone() }, Medium::Remote)
        .await
        .unwrap()
    else {
        panic!("statfs reply")
    };
    assert!(s.total_bytes > 0);
    let remove = FsOp::RemoveTree {
        base: base.clone(),
        rel: rel.clone(),
        prune_parents: true,
    };
    assert_eq!(
        os.fs(remove.clone(), Medium::Remote).await.unwrap(),
        FsReply::Removed(RemoveOutcome::Removed)
    );
    assert!(
        !base.join("ns").exists(),
        "the parent the helper created is pruned"
    );
    assert_eq!(
        os.fs(remove, Medium::Remote).await.unwrap(),
        FsReply::Removed(RemoveOutcome::AlreadyGone)
    );
}

#[tokio::test]
async fn typed_errors_cross_the_process_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
    let os = os(Duration::from_secs(20));
    let op = FsOp::RemoveTree {
        base: dir.path().into(),
        rel: RelPath::parse("link/x").unwrap(),
        prune_parents: false,
    };
    let err = os.fs(op, Medium::Remote).await.unwrap_err();
    assert!(
        matches!(err, OsError::Fs(SafeFsError::SymlinkInPath { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_blocked_helper_is_killed_within_the_bound() {
    let dir = tempfile::Builder::new()
        .prefix("pvdir-fifo-test")
        .tempdir()
        .unwrap();
    std::fs::create_dir(dir.path().join("meta")).unwrap();
    let fifo = dir.path().join("meta/record.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let bound = Duration::from_millis(800);
    let os = os(bound);
    let marker = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let started = Instant::now();
    let op = FsOp::ReadRecords {
        base: dir.path().into(),
        dir: RelPath::parse("meta").unwrap(),
        names: vec!["record.json".into()],
    };
    let err = os.fs(op, Medium::Remote).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, OsError::TimedOut { .. }), "{err:?}");
    // Bound plus the reap grace, never an open-ended wait.
    assert!(took < bound + Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        helpers_running_for(&marker),
        0,
        "the stuck helper was left running"
    );
}
