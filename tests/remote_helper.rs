//! The remote medium for real: directory operations run in `pvdir internal fs` child processes,
//! results and errors cross the process boundary as JSON, and a helper that blocks is killed
//! within the bound. A statfs held by strace's delay injection stands in for a dead NFS server:
//! the helper waits in the syscall exactly as it would for a server that never answers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pvdir::os::mount::MountApi;
use pvdir::os::real::RealOs;
use pvdir::os::safe_fs::{RemoveOutcome, SafeFsError};
use pvdir::os::{FsOp, FsReply, Medium, Os, OsError, RelPath};

fn os(timeout: Duration) -> RealOs {
    os_with_helper(PathBuf::from(env!("CARGO_BIN_EXE_pvdir")), timeout)
}

fn os_with_helper(helper: PathBuf, timeout: Duration) -> RealOs {
    // Directory work only: the staging directory is never prepared or used.
    let unused = std::env::temp_dir().join("pvdir-remote-helper-unused");
    RealOs::new(helper, timeout, unused, MountApi::Auto)
}

/// A helper program in `dir` that runs `sh` `prelude` and then execs the real helper with
/// `runner` before it (for strace, say), passing its arguments on. Every process it starts
/// carries `dir`'s name in PVDIR_TEST_MARKER (see [`helpers_running_for`]).
fn wrapped_helper(dir: &std::path::Path, prelude: &str, runner: &str) -> PathBuf {
    let wrapper = dir.join("helper.sh");
    let marker = dir.file_name().unwrap().to_string_lossy();
    let script = format!(
        "#!/bin/sh\nexport PVDIR_TEST_MARKER={marker}\n{prelude}\nexec {runner} {} \"$@\"\n",
        env!("CARGO_BIN_EXE_pvdir")
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

/// Live processes started by a [`wrapped_helper`] with `marker` (zombies have no environment).
fn helpers_running_for(marker: &str) -> usize {
    let wanted = format!("PVDIR_TEST_MARKER={marker}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read(entry.path().join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
        })
        .count()
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
        .prefix("pvdir-hung-test")
        .tempdir()
        .unwrap();
    // The real helper, held for a minute in its statfs call.
    let wrapper = wrapped_helper(
        dir.path(),
        "",
        "strace -f -qq -o /dev/null -e trace=statfs -e inject=statfs:delay_enter=60000000",
    );
    let bound = Duration::from_millis(1500);
    let os = os_with_helper(wrapper, bound);
    let marker = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let started = Instant::now();
    let op = FsOp::Statfs {
        path: dir.path().into(),
    };
    let (result, seen) = tokio::join!(os.fs(op, Medium::Remote), async {
        tokio::time::sleep(bound / 2).await;
        helpers_running_for(&marker)
    });
    let err = result.unwrap_err();
    let took = started.elapsed();
    assert!(
        seen > 0,
        "the held helper was not seen running (the count proves nothing)"
    );
    assert!(matches!(err, OsError::TimedOut { .. }), "{err:?}");
    // Bound plus the reap grace, never an open-ended wait.
    assert!(took < bound + Duration::from_secs(3), "took {took:?}");
    // The group kill is delivered at once; give the kernel a moment to finish the processes.
    let mut left = helpers_running_for(&marker);
    for _ in 0..50 {
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        left = helpers_running_for(&marker);
    }
    assert_eq!(left, 0, "the stuck helper was left running");
}

/// What a dead server costs shows in the metrics: the held probe counts as an unreachable
/// server, a timeout and a kill of its helper, and its time as remote helper work.
#[tokio::test]
async fn a_held_probe_is_counted_as_unreachable_timed_out_and_killed() {
    let dir = tempfile::Builder::new()
        .prefix("pvdir-hung-metrics")
        .tempdir()
        .unwrap();
    let wrapper = wrapped_helper(
        dir.path(),
        "",
        "strace -f -qq -o /dev/null -e trace=statfs -e inject=statfs:delay_enter=60000000",
    );
    let bound = Duration::from_millis(1500);
    let metrics = std::sync::Arc::new(pvdir::metrics::Metrics::new());
    let unused = std::env::temp_dir().join("pvdir-remote-helper-unused");
    let os = RealOs::observed(wrapper, bound, unused, MountApi::Auto, metrics.clone());
    let op = FsOp::StatfsNfs {
        path: dir.path().into(),
    };
    let err = os.fs(op, Medium::Remote).await.unwrap_err();
    assert!(matches!(err, OsError::TimedOut { .. }), "{err:?}");
    let text = metrics.encode();
    for series in [
        "pvdir_nfs_probes_total{result=\"unreachable\"} 1",
        "pvdir_nfs_probes_total{result=\"answering\"} 0",
        "pvdir_helper_timeouts_total{operation=\"statfs_nfs\"} 1",
        "pvdir_helper_kills_total{operation=\"statfs_nfs\",reason=\"timeout\"} 1",
        "pvdir_helper_duration_seconds_count{operation=\"statfs_nfs\",medium=\"remote\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series} missing from:\n{text}"
        );
    }
}

/// A static PV of the share root lets a pod put anything where the controller reads records:
/// a FIFO (the old helper waited on it until killed at the bound) or a sparse file claiming
/// gigabytes (the old helper read it whole, and the driver read its reply whole again).
#[tokio::test]
async fn things_planted_as_records_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta");
    std::fs::create_dir(&meta).unwrap();
    nix::unistd::mkfifo(
        &meta.join("fifo.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::File::create(meta.join("huge.json"))
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let bound = Duration::from_secs(2);
    let os = os(bound);
    for name in ["fifo.json", "huge.json"] {
        let started = Instant::now();
        let op = FsOp::ReadRecords {
            base: dir.path().into(),
            dir: RelPath::parse("meta").unwrap(),
            names: vec![name.into()],
        };
        let err = os.fs(op, Medium::Remote).await.unwrap_err();
        assert!(
            matches!(err, OsError::Fs(SafeFsError::BadRecord { .. })),
            "{name}: {err:?}"
        );
        assert!(started.elapsed() < bound, "{name}: {:?}", started.elapsed());
    }
}

/// The NFS path deletes in the helper. However deep the tree, the helper needs a bounded number
/// of descriptors and bounded memory: here it runs with 100 descriptors and 256 MiB of address
/// space and removes a chain 5000 levels deep (past the old limit of 4096).
#[tokio::test]
async fn a_deep_tree_is_removed_within_small_limits() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = wrapped_helper(dir.path(), "ulimit -n 100 && ulimit -v 262144", "");
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let mut cur = std::fs::File::open(&vol).unwrap();
    for _ in 0..5000 {
        use std::os::fd::AsFd;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o755);
        nix::sys::stat::mkdirat(cur.as_fd(), "d", mode).unwrap();
        let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY;
        cur = std::fs::File::from(nix::fcntl::openat(cur.as_fd(), "d", flags, mode).unwrap());
    }
    drop(cur);
    let os = os_with_helper(wrapper, Duration::from_secs(60));
    let op = FsOp::RemoveTree {
        base: dir.path().into(),
        rel: RelPath::parse("vol").unwrap(),
        prune_parents: false,
    };
    assert_eq!(
        os.fs(op, Medium::Remote).await.unwrap(),
        FsReply::Removed(RemoveOutcome::Removed)
    );
    assert!(!vol.exists());
}

/// The operation travels to the helper on stdin: as an argument it was limited to 128 KiB, and
/// a reuseExisting create reads every record of the export in one call (about 3,300 records
/// made an argument too long to start the helper at all).
#[tokio::test]
async fn an_operation_larger_than_an_argument_reaches_the_helper() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta");
    std::fs::create_dir(&meta).unwrap();
    let names: Vec<String> = (0..5000)
        .map(|i| format!("{:032x}.json", i as u128 * 7919))
        .collect();
    for name in names.iter().step_by(100) {
        std::fs::write(meta.join(name), b"{}").unwrap();
    }
    let op = FsOp::ReadRecords {
        base: dir.path().into(),
        dir: RelPath::parse("meta").unwrap(),
        names: names.clone(),
    };
    let FsReply::Records(found) = os(Duration::from_secs(20))
        .fs(op, Medium::Remote)
        .await
        .unwrap()
    else {
        panic!("records reply")
    };
    assert_eq!(found.len(), 5000);
    assert_eq!(found.iter().flatten().count(), 50);
}
