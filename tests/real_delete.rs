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
//! This file: DeleteVolume under attack: symlinks, mounts planted in or over the volume,
//! escaping IDs, a volume still published, a subdirectory mounted elsewhere (subPath), and a
//! tree deeper than anything a path can name.

#[allow(dead_code)]
mod common;

use common::names_in;
use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_does_not_follow_symlinks() {
    require_root!();
    let d = Driver::start().await;
    let outside = d.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"do not delete").unwrap();
    std::fs::create_dir(outside.join("subdir")).unwrap();
    std::fs::write(outside.join("subdir/also-precious"), b"nor this").unwrap();
    let check_outside = || {
        assert_eq!(
            names_in(&outside),
            ["precious", "subdir"],
            "outside directory intact"
        );
        assert_eq!(
            std::fs::read(outside.join("precious")).unwrap(),
            b"do not delete"
        );
        assert_eq!(
            std::fs::read(outside.join("subdir/also-precious")).unwrap(),
            b"nor this"
        );
    };

    // Links inside the volume, at the top and deeper down.
    let id = create_volume(&d, "pvc-links", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::os::unix::fs::symlink(&outside, dir.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), dir.join("escape-file")).unwrap();
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("a/b/deep-escape")).unwrap();
    std::os::unix::fs::symlink("../../../../../outside", dir.join("a/relative-escape")).unwrap();
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "DeleteVolume",
    );
    check_outside();
    assert!(!dir.exists(), "volume directory removed");
    assert!(!d.record(&id).exists(), "volume record removed");

    // The volume directory itself swapped for a link to the outside: the driver refuses
    // (an operator must look) and does not touch the link's target.
    let id = create_volume(&d, "pvc-swapped", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::fs::remove_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&outside, &dir).unwrap();
    let result = d.controller().delete_volume(delete_request(&id)).await;
    assert_eq!(
        code(&result),
        Code::FailedPrecondition,
        "delete of a volume swapped for a symlink: {result:?}"
    );
    check_outside();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_does_not_cross_mounts() {
    require_root!();
    let d = Driver::start().await;

    // A bind mount of an outside directory planted inside the volume.
    let outside = d.path("outside2");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"bound").unwrap();
    let id = create_volume(&d, "pvc-bind-inside", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::fs::write(dir.join("data"), b"d").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    bind_mount(&outside, &dir.join("sub"));
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete with a bind mount inside",
    );
    assert_eq!(
        std::fs::read(outside.join("precious")).unwrap(),
        b"bound",
        "bound directory intact"
    );
    assert_eq!(
        mounts_at(&dir.join("sub")).len(),
        1,
        "the planted mount is left alone"
    );
    unmount(&dir.join("sub"));
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!dir.exists());
    assert!(!d.record(&id).exists());
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"bound");

    // A file bind-mounted over a file inside the volume (a subPath-style mount).
    let id = create_volume(&d, "pvc-file-bind", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::fs::write(dir.join("file"), b"placeholder").unwrap();
    bind_mount(&outside.join("precious"), &dir.join("file"));
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete with a file bind mount inside",
    );
    assert_eq!(
        std::fs::read(outside.join("precious")).unwrap(),
        b"bound",
        "bound file intact"
    );
    unmount(&dir.join("file"));
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!dir.exists());

    // A tmpfs mounted inside the volume.
    let id = create_volume(&d, "pvc-tmpfs-inside", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::fs::create_dir(dir.join("t")).unwrap();
    tmpfs_mount(&dir.join("t"));
    std::fs::write(dir.join("t/in-tmpfs"), b"t").unwrap();
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete with a tmpfs inside",
    );
    assert_eq!(
        std::fs::read(dir.join("t/in-tmpfs")).unwrap(),
        b"t",
        "tmpfs content intact"
    );
    let at = mounts_at(&dir.join("t"));
    assert!(
        at.len() == 1 && at[0].fs_type == "tmpfs",
        "the planted tmpfs is left alone: {at:?}"
    );
    unmount(&dir.join("t"));
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!dir.exists());

    // A tmpfs mounted over the volume directory itself.
    let id = create_volume(&d, "pvc-tmpfs-over", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    tmpfs_mount(&dir);
    std::fs::write(dir.join("in-tmpfs"), b"t").unwrap();
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete of a volume directory that is a mount point",
    );
    assert_eq!(
        std::fs::read(dir.join("in-tmpfs")).unwrap(),
        b"t",
        "tmpfs content intact"
    );
    let at = mounts_at(&dir);
    assert!(
        at.len() == 1 && at[0].fs_type == "tmpfs",
        "the planted tmpfs is left alone: {at:?}"
    );
    unmount(&dir);
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_escaping_ids() {
    require_root!();
    let d = Driver::start().await;
    let keep = create_volume(&d, "pvc-bystander", Mode::SingleNodeWriter).await;
    std::fs::write(d.volume_dir(&keep).join("data"), b"bystander").unwrap();
    let sentinels = [d.root().join("sentinel"), d.path("sentinel")];
    for s in &sentinels {
        std::fs::write(s, b"sentinel").unwrap();
    }

    for id in [
        "v1#local#test-node#..",
        "v1#local#test-node#.",
        "v1#local#test-node#%2E%2E",
        "v1#local#test-node#%2e%2e",
        "v1#local#test-node#a%2Fb",
        "v1#local#test-node#%2Fetc",
        "v1#local#test-node#..%2F..%2Fsentinel",
        "v1#local#test-node#..%2Fsentinel",
        "v1#local#test-node#a%00b",
        "v1#local#test-node#",
    ] {
        expect_code(
            d.controller().delete_volume(delete_request(id)).await,
            Code::InvalidArgument,
            id,
        );
    }
    // An ID this driver never made: nothing of ours to delete, so OK (CSI idempotency).
    expect_ok(
        d.controller()
            .delete_volume(delete_request("not-ours"))
            .await,
        "foreign id",
    );
    // Snapshot IDs are confined the same way: DeleteSnapshot never leaves the snapshot area.
    for id in [
        "v1#snap#local#test-node#..",
        "v1#snap#local#test-node#%2E%2E",
        "v1#snap#local#test-node#..%2F..%2Fsentinel",
        "v1#snap#local#test-node#..%2Fvolumes",
        "v1#snap#local#test-node#a%2Fb",
        "v1#snap#local#test-node#",
    ] {
        let req = pvdir::csi::proto::DeleteSnapshotRequest {
            snapshot_id: id.into(),
            ..Default::default()
        };
        expect_code(
            d.controller().delete_snapshot(req).await,
            Code::InvalidArgument,
            id,
        );
    }

    for s in &sentinels {
        assert_eq!(
            std::fs::read(s).unwrap(),
            b"sentinel",
            "{} untouched",
            s.display()
        );
    }
    assert_eq!(
        names_in(&d.root()),
        [
            "groups",
            "journal",
            "meta",
            "sentinel",
            "snapmeta",
            "snapshots",
            "volumes",
            "work"
        ]
    );
    assert_eq!(
        std::fs::read(d.volume_dir(&keep).join("data")).unwrap(),
        b"bystander"
    );
    assert!(d.record(&keep).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_a_volume_still_mounted() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-busy", Mode::SingleNodeWriter).await;
    let target = target_in_pod(&d, "busy");
    publish(&d, &id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("publish");
    std::fs::write(target.join("data"), b"live").unwrap();

    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete of a published volume",
    );
    assert_eq!(
        std::fs::read(d.volume_dir(&id).join("data")).unwrap(),
        b"live",
        "data kept"
    );
    assert_eq!(
        std::fs::read(target.join("data")).unwrap(),
        b"live",
        "still visible in the pod"
    );
    assert!(d.record(&id).exists(), "record kept");

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish",
    );
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete after unpublish",
    );
    assert!(!d.volume_dir(&id).exists());
    assert!(!d.record(&id).exists());
}

/// The driver keeps the mount table it last read until the kernel reports a change. Attack
/// that: a delete fills the cache, a bind of another volume appears afterwards (made by another
/// process, as kubelet's are), and the next delete must still see it; once it is gone, must see
/// that too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_sees_mounts_made_after_an_earlier_delete() {
    require_root!();
    let d = Driver::start().await;
    let first = create_volume(&d, "pvc-first", Mode::SingleNodeWriter).await;
    let busy = create_volume(&d, "pvc-bound-later", Mode::SingleNodeWriter).await;
    expect_ok(
        d.controller().delete_volume(delete_request(&first)).await,
        "a delete that reads the mount table",
    );
    std::fs::write(d.volume_dir(&busy).join("data"), b"live").unwrap();
    let elsewhere = d.path("pods/later/volumes/busy");
    std::fs::create_dir_all(&elsewhere).unwrap();
    bind_mount(&d.volume_dir(&busy), &elsewhere);

    expect_code(
        d.controller().delete_volume(delete_request(&busy)).await,
        Code::FailedPrecondition,
        "delete of a volume bound after the table was first read",
    );
    assert_eq!(std::fs::read(elsewhere.join("data")).unwrap(), b"live");

    unmount(&elsewhere);
    expect_ok(
        d.controller().delete_volume(delete_request(&busy)).await,
        "delete once the bind is gone",
    );
    assert!(!d.volume_dir(&busy).exists());
}

/// A rename changes a bind's root in the mount table without telling anyone. What a pod can
/// rename stays inside its volume: a subPath source renamed after the driver last read the
/// table must still keep its volume from being deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_sees_a_mounted_subdirectory_renamed_after_the_table_was_read() {
    require_root!();
    let d = Driver::start().await;
    let busy = create_volume(&d, "pvc-renamed-sub", Mode::SingleNodeWriter).await;
    let other = create_volume(&d, "pvc-other", Mode::SingleNodeWriter).await;
    let sub = d.volume_dir(&busy).join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("data"), b"live").unwrap();
    let elsewhere = d.path("pods/renamed/volume-subpaths/0");
    std::fs::create_dir_all(&elsewhere).unwrap();
    bind_mount(&sub, &elsewhere);
    // The driver reads the table (with the bind at `sub`), then the pod renames it, twice
    // deeper, through its own view of the volume.
    expect_ok(
        d.controller().delete_volume(delete_request(&other)).await,
        "a delete that reads the mount table",
    );
    let deeper = d.volume_dir(&busy).join("a/b");
    std::fs::create_dir_all(&deeper).unwrap();
    std::fs::rename(&sub, deeper.join("moved")).unwrap();

    expect_code(
        d.controller().delete_volume(delete_request(&busy)).await,
        Code::FailedPrecondition,
        "delete of a volume whose mounted subdirectory was renamed",
    );
    assert_eq!(std::fs::read(elsewhere.join("data")).unwrap(), b"live");
    unmount(&elsewhere);
}

// Regression test for a DRIVER BUG found while writing this tier: `LocalBackend::delete` used to
// refuse only when some mount's (device, root) EQUALED the volume directory's, so a bind of a
// SUBDIRECTORY of the volume (root `<volume dir>/sub`) went unnoticed and `remove_tree` emptied
// and removed the directory under the live mount (DeleteVolume returned OK, the data was gone).
// src/ now matches mounts whose root lies at or below the volume directory
// (`mountinfo::mounts_of_tree`); this test keeps it that way.
/// A subdirectory of the volume bind-mounted elsewhere (what kubelet does for a `subPath`, and
/// what stays behind when a subPath mount leaks) is live data too: deleting the volume must be
/// refused rather than empty the directory under the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_a_volume_whose_subdirectory_is_mounted() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-subpath", Mode::SingleNodeWriter).await;
    let sub = d.volume_dir(&id).join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("data"), b"live").unwrap();
    let elsewhere = d.path("pods/subpath/volume-subpaths/0");
    std::fs::create_dir_all(&elsewhere).unwrap();
    bind_mount(&sub, &elsewhere);

    let result = d.controller().delete_volume(delete_request(&id)).await;
    let data = std::fs::read(elsewhere.join("data"));
    assert_eq!(
        code(&result),
        Code::FailedPrecondition,
        "delete of a volume with a subdirectory mounted elsewhere: {result:?}; \
         data at the mount afterwards: {data:?}"
    );
    assert_eq!(data.expect("data visible at the mount"), b"live");

    unmount(&elsewhere);
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!d.volume_dir(&id).exists());
}

/// A pod can nest directories without end (mkdir d && cd d, over and over: no path is ever
/// longer than PATH_MAX). The old code refused trees deeper than 4096 levels with
/// FAILED_PRECONDITION on every retry, and the PV stayed Released until someone cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_a_tree_of_any_depth() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-deep", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    // What the pod does, relative to its current directory, with names of the longest kind.
    let name = "d".repeat(255);
    let mut cur = std::fs::File::open(&dir).unwrap();
    for level in 0..20_000 {
        use std::os::fd::AsFd;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o755);
        nix::sys::stat::mkdirat(cur.as_fd(), name.as_str(), mode).unwrap();
        let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY;
        let next = nix::fcntl::openat(cur.as_fd(), name.as_str(), flags, mode).unwrap();
        if level % 1000 == 0 {
            let f = nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CREAT;
            drop(nix::fcntl::openat(next.as_fd(), "data", f, mode).unwrap());
        }
        cur = std::fs::File::from(next);
    }
    drop(cur);
    let deleted = d.controller().delete_volume(delete_request(&id)).await;
    if deleted.is_err() {
        // Leave nothing the temporary directory's own (recursive) cleanup would choke on.
        let volumes = d.root().join("volumes");
        let key = pvdir::os::RelPath::parse(key_of(&id)).unwrap();
        pvdir::os::safe_fs::remove_tree(&volumes, &key).unwrap();
    }
    expect_ok(deleted, "delete of a 20000-level tree");
    assert!(!dir.exists(), "the volume directory is gone");
    assert!(!d.record(&id).exists(), "and its record");
}
