//! The "real thing" tier: the real `pvdir` binary, real bind mounts, real tmpfs, real signals.
//!
//! Every test starts `pvdir serve --mode all` with the local backend on a unix socket inside its
//! own temporary directory, talks CSI gRPC to it, and checks the effects on the machine by reading
//! `/proc/self/mountinfo` and the filesystem directly (never through the driver's own parsers).
//!
//! These tests need root (mount(2), umount2(2)). Without root they FAIL with a clear message:
//! a privileged test that silently passes would be a test that cannot fail. To skip them
//! explicitly (e.g. on a developer laptop), set `PVDIR_SKIP_PRIVILEGED=1`.
//!
//! Hygiene: the [`Driver`] harness (`tests/common/real/`) stops its process on drop (SIGTERM,
//! bounded wait, SIGKILL) and detaches every mount left under its temporary directory, deepest
//! first, before the directory is removed, so a failing test leaves neither processes nor mounts
//! behind. If a mount cannot be removed, the directory is kept rather than deleted through the
//! mount.
//!
//! Assertions are on gRPC status codes, never on message text.
//!
//! This file: publish as a real bind mount (idempotent, read-only that really is read-only,
//! ReadWriteOncePod), volume stats, and targets behind a symlinked kubelet directory.

#[allow(dead_code)]
mod common;

use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_a_real_bind_mount_and_idempotent() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-publish", Mode::SingleNodeWriter).await;
    let source = d.volume_dir(&id);
    let target = target_in_pod(&d, "a");
    assert!(!target.exists());

    publish(&d, &id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("publish");
    let at = mounts_at(&target);
    assert_eq!(at.len(), 1, "one mount at the target: {at:?}");
    assert!(
        at[0].root.ends_with(format!("volumes/{}", key_of(&id))),
        "bind of the volume dir: {at:?}"
    );
    assert!(!at[0].readonly, "writable publish: {at:?}");

    std::fs::write(target.join("hello.txt"), b"through the mount")
        .expect("write through the target");
    assert_eq!(
        std::fs::read(source.join("hello.txt")).expect("file in volume dir"),
        b"through the mount"
    );

    publish(&d, &id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("identical publish is idempotent");
    assert_eq!(
        mounts_at(&target).len(),
        1,
        "a repeated publish must not stack a second mount"
    );

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish",
    );
    assert!(mounts_at(&target).is_empty(), "no mount left at the target");
    assert!(!target.exists(), "target directory removed");
    assert_eq!(
        std::fs::read(source.join("hello.txt")).expect("data survives unpublish"),
        b"through the mount"
    );

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "repeated unpublish",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_is_really_readonly() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-readonly", Mode::SingleNodeWriter).await;
    let source = d.volume_dir(&id);

    // The CO's readonly flag.
    let ro = target_in_pod(&d, "ro-flag");
    publish(&d, &id, &ro, Mode::SingleNodeWriter, true)
        .await
        .expect("readonly publish");
    let at = mounts_at(&ro);
    assert_eq!(at.len(), 1, "{at:?}");
    assert!(at[0].readonly, "mount must be ro in mountinfo: {at:?}");
    assert_read_only(&ro);

    // A reader-only access mode without the flag.
    let reader = target_in_pod(&d, "reader-mode");
    publish(&d, &id, &reader, Mode::SingleNodeReaderOnly, false)
        .await
        .expect("reader-only publish");
    assert!(
        mounts_at(&reader).iter().all(|m| m.readonly),
        "reader-only mode must mount ro"
    );
    assert_read_only(&reader);

    // The source itself stays writable: the ro remount must affect only the bind.
    std::fs::write(source.join("written-at-source"), b"x").expect("volume dir stays writable");
    assert!(
        ro.join("written-at-source").exists(),
        "the ro mount shows the same directory"
    );

    // A writable publish over the read-only one is incompatible.
    expect_code(
        d.node()
            .node_publish_volume(publish_request(&id, &ro, Mode::SingleNodeWriter, false))
            .await,
        Code::AlreadyExists,
        "writable publish over a read-only one",
    );
    let at = mounts_at(&ro);
    assert_eq!(at.len(), 1, "nothing stacked: {at:?}");
    assert!(at[0].readonly, "still read-only: {at:?}");
    assert_read_only(&ro);

    // The identical read-only publish is still idempotent.
    publish(&d, &id, &ro, Mode::SingleNodeWriter, true)
        .await
        .expect("repeated readonly publish");

    for target in [&ro, &reader] {
        expect_ok(
            d.node()
                .node_unpublish_volume(unpublish_request(&id, target))
                .await,
            "unpublish",
        );
        assert!(mounts_at(target).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_single_writer_is_enforced() {
    require_root!();
    let d = Driver::start().await;
    let mode = Mode::SingleNodeSingleWriter;
    let id = create_volume(&d, "pvc-rwop", mode).await;
    let a = target_in_pod(&d, "a");
    let b = target_in_pod(&d, "b");

    publish(&d, &id, &a, mode, false)
        .await
        .expect("publish at A");
    publish(&d, &id, &a, mode, false)
        .await
        .expect("repeated publish at A is idempotent");
    expect_code(
        d.node()
            .node_publish_volume(publish_request(&id, &b, mode, false))
            .await,
        Code::FailedPrecondition,
        "second target of a single-writer volume",
    );
    assert!(mounts_at(&b).is_empty(), "B must not be mounted");
    assert_eq!(mounts_at(&a).len(), 1, "A is untouched");

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &a))
            .await,
        "unpublish A",
    );
    publish(&d, &id, &b, mode, false)
        .await
        .expect("publish at B once A is gone");
    assert_eq!(mounts_at(&b).len(), 1);
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &b))
            .await,
        "unpublish B",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_bytes_and_inodes() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-stats", Mode::SingleNodeWriter).await;
    let target = target_in_pod(&d, "stats");
    publish(&d, &id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("publish");

    let reply = expect_ok(
        d.node()
            .node_get_volume_stats(stats_request(&id, &target))
            .await,
        "stats",
    );
    assert_eq!(reply.usage.len(), 2, "{reply:?}");
    for unit in [
        csi::volume_usage::Unit::Bytes,
        csi::volume_usage::Unit::Inodes,
    ] {
        let u = reply
            .usage
            .iter()
            .find(|u| u.unit == unit as i32)
            .unwrap_or_else(|| panic!("no {unit:?} entry in {reply:?}"));
        assert!(u.total > 0, "{unit:?}: {u:?}");
        assert!(
            u.used >= 0 && u.available >= 0 && u.used <= u.total,
            "{unit:?}: {u:?}"
        );
    }

    // Paths that are not a publish of this volume.
    for path in [d.path("pods/nowhere"), d.path("pods"), d.volume_dir(&id)] {
        expect_code(
            d.node()
                .node_get_volume_stats(stats_request(&id, &path))
                .await,
            Code::NotFound,
            &format!("stats at unpublished {}", path.display()),
        );
    }
    // A volume that does not exist, at a path that is a mount (of another volume).
    expect_code(
        d.node()
            .node_get_volume_stats(stats_request("v1#local#test-node#no-such-volume", &target))
            .await,
        Code::NotFound,
        "stats of an unknown volume",
    );

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish",
    );
    expect_code(
        d.node()
            .node_get_volume_stats(stats_request(&id, &target))
            .await,
        Code::NotFound,
        "stats after unpublish",
    );
}

/// kubelet's root dir may sit behind a symlink (`/var/lib/kubelet -> /data/kubelet`), while
/// mountinfo always shows the resolved path: publish, stats and unpublish must still recognise
/// the mount, or publish would stack mounts and unpublish would never unmount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_behind_a_symlinked_kubelet_dir_are_recognised() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-linked-kubelet", Mode::SingleNodeWriter).await;
    std::fs::create_dir_all(d.path("real-kubelet/pods/a")).unwrap();
    std::os::unix::fs::symlink(d.path("real-kubelet"), d.path("kubelet")).unwrap();
    let target = d.path("kubelet/pods/a/mount");
    let resolved = d.path("real-kubelet/pods/a/mount");
    for _ in 0..2 {
        publish(&d, &id, &target, Mode::SingleNodeWriter, false)
            .await
            .expect("publish through the symlinked path");
    }
    assert_eq!(
        mounts_at(&resolved).len(),
        1,
        "exactly one mount, not stacked"
    );
    let stats = d
        .node()
        .node_get_volume_stats(stats_request(&id, &target))
        .await;
    expect_ok(stats, "stats through the symlinked path");
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish through the symlinked path",
    );
    assert!(mounts_at(&resolved).is_empty(), "unmounted");
    assert!(!resolved.exists(), "target directory removed");
}
