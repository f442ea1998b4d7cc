//! The mount table under attack, with real mounts: whatever bytes a pod can put into
//! `/proc/self/mountinfo` must not stop the node plugin.
//!
//! A pod with a writable emptyDir and a `subPath` mount can rename the directory that kubelet
//! bind-mounted (`mv /data/sub /data/$'\xff'`); the kernel then reports the bind's root with that
//! byte, in every mount namespace the mount propagated to, the plugin's included. Directory
//! names are bytes, not UTF-8. Needs root (see tests/real_publish.rs for the tier's rules).

#[allow(dead_code)]
mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use pvdir::csi::proto::volume_capability::access_mode::Mode;

/// `dir/<bytes>`, for names that are not UTF-8.
fn odd(dir: PathBuf, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_utf8_in_the_mount_table_stop_nothing() {
    require_root!();
    let d = Driver::start().await;
    let mode = Mode::SingleNodeWriter;
    let a = create_volume(&d, "pvc-before", mode).await;
    let ta = target_in_pod(&d, "a");
    publish(&d, &a, &ta, mode, false)
        .await
        .expect("publish before the attack");

    // The pod's trick: kubelet binds the emptyDir's `sub` for a subPath mount, and the pod
    // renames `sub` to a name that is not UTF-8. The bind's root now carries that byte.
    let empty_dir = d.path("pod-emptydir");
    std::fs::create_dir_all(empty_dir.join("sub")).unwrap();
    let sub_path = d.path("pods/victim/subpath");
    std::fs::create_dir_all(&sub_path).unwrap();
    bind_mount(&empty_dir.join("sub"), &sub_path);
    std::fs::rename(empty_dir.join("sub"), odd(empty_dir.clone(), b"\xff")).unwrap();
    // And a mount point and a source that are not UTF-8 either.
    let odd_point = odd(d.path("pods"), b"\xfe\xc3\x28");
    std::fs::create_dir_all(&odd_point).unwrap();
    tmpfs_mount(&odd_point);
    let table = std::fs::read("/proc/self/mountinfo").unwrap();
    assert!(
        std::str::from_utf8(&table).is_err(),
        "the attack must really put bytes that are not UTF-8 into the mount table"
    );

    // Every call that reads the mount table still works, for old and new volumes alike.
    expect_ok(
        d.node().node_get_volume_stats(stats_request(&a, &ta)).await,
        "stats of a volume published before the attack",
    );
    let b = create_volume(&d, "pvc-after", mode).await;
    let tb = target_in_pod(&d, "b");
    publish(&d, &b, &tb, mode, false)
        .await
        .expect("publish after the attack");
    publish(&d, &b, &tb, mode, false)
        .await
        .expect("a repeated publish still sees the mount (idempotent)");
    assert_eq!(mounts_at(&tb).len(), 1, "nothing stacked");
    for (id, target) in [(&a, &ta), (&b, &tb)] {
        expect_ok(
            d.node()
                .node_unpublish_volume(unpublish_request(id, target))
                .await,
            "unpublish after the attack",
        );
        assert!(mounts_at(target).is_empty(), "unmounted");
        expect_ok(
            d.controller().delete_volume(delete_request(id)).await,
            "delete after the attack (it checks the mount table for users)",
        );
        assert!(!d.volume_dir(id).exists(), "volume directory removed");
    }
    unmount(&odd_point);
    unmount(&sub_path);
}
