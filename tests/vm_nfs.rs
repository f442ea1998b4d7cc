//! VM tier: the NFS backend against a real kernel NFS server and client. These tests need the
//! guest that tests/vm/guest/nfs-suite.sh prepares (kernel nfsd exporting PVDIR_VM_EXPORT as the
//! NFSv4 root on 127.0.0.1), so they are `#[ignore]`d on the host and run there with
//! `--ignored`. This file: the seed's StatefulSet story end to end, NFSv3, mountPermissions, and
//! a root_squash export. The failures users hit are in `vm_nfs_faults.rs`.

#[allow(dead_code)]
mod common;

use std::path::Path;

use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use common::real::vm::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn seed_story_three_claims_two_pods_each_and_every_reclaim_policy() {
    let d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let export = export();
    std::fs::write(export.join("unrelated.txt"), b"the export's own content").unwrap();
    for on_delete in ["delete", "retain", "archive"] {
        let ns = export.join(format!("seed-{on_delete}"));
        let mut ids = Vec::new();
        for i in 0..3 {
            let v = expect_ok(
                d.controller()
                    .create_volume(claim(i, on_delete, OPTIONS))
                    .await,
                "create",
            );
            let id = v.volume.unwrap().volume_id;
            assert!(
                ns.join(format!("www-web-{i}")).is_dir(),
                "one directory per claim"
            );
            // Pod web-i, then the same pod rescheduled: the data follows the claim.
            let first = target_in_pod(&d, &format!("{on_delete}-{i}-a"));
            let second = target_in_pod(&d, &format!("{on_delete}-{i}-b"));
            expect_ok(
                d.node()
                    .node_publish_volume(nfs_publish(&id, &first, OPTIONS))
                    .await,
                "publish a",
            );
            assert!(
                mounts_at(&first)
                    .iter()
                    .any(|m| m.fs_type.starts_with("nfs")),
                "a real NFS mount"
            );
            std::fs::write(first.join("index.html"), format!("web-{i}")).unwrap();
            expect_ok(
                d.node()
                    .node_unpublish_volume(unpublish_request(&id, &first))
                    .await,
                "unpublish a",
            );
            assert!(mounts_at(&first).is_empty());
            expect_ok(
                d.node()
                    .node_publish_volume(nfs_publish(&id, &second, OPTIONS))
                    .await,
                "publish b",
            );
            assert_eq!(
                std::fs::read_to_string(second.join("index.html")).unwrap(),
                format!("web-{i}")
            );
            expect_ok(
                d.node()
                    .node_unpublish_volume(unpublish_request(&id, &second))
                    .await,
                "unpublish b",
            );
            ids.push(id);
        }
        for (i, id) in ids.iter().enumerate() {
            expect_ok(
                d.controller().delete_volume(delete_request(id)).await,
                "delete",
            );
            let dir = ns.join(format!("www-web-{i}"));
            match on_delete {
                "delete" => assert!(!dir.exists(), "deleted"),
                "retain" => assert_eq!(
                    std::fs::read_to_string(dir.join("index.html")).unwrap(),
                    format!("web-{i}")
                ),
                _ => {
                    assert!(!dir.exists(), "renamed away");
                    let archived = ns.join(format!("archived-www-web-{i}/index.html"));
                    assert_eq!(
                        std::fs::read_to_string(archived).unwrap(),
                        format!("web-{i}")
                    );
                }
            }
        }
        if on_delete == "delete" {
            assert!(
                !ns.exists(),
                "the namespace directory pvdir made is pruned once empty"
            );
        }
    }
    assert_eq!(
        std::fs::read(export.join("unrelated.txt")).unwrap(),
        b"the export's own content"
    );
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn mount_permissions_apply_to_the_volume_directory_only() {
    let d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let export = export();
    let root_mode = mode_of(&export);
    let mut req = claim(0, "retain", OPTIONS);
    req.name = "pvc-perm".into();
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "perm".into());
    req.parameters
        .insert("mountPermissions".into(), "0770".into());
    let id = expect_ok(d.controller().create_volume(req).await, "create")
        .volume
        .unwrap()
        .volume_id;
    assert_eq!(
        mode_of(&export.join("perm/www-web-0")),
        0o770,
        "the volume directory"
    );
    assert_eq!(
        mode_of(&export.join("perm")),
        0o755,
        "its parent is left alone"
    );
    assert_eq!(mode_of(&export), root_mode, "the export root is left alone");
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn a_root_squash_export_is_a_clear_error_and_leaves_nothing_behind() {
    let d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let mut req = claim(0, "delete", OPTIONS);
    req.name = "pvc-squashed".into();
    req.parameters.insert("share".into(), "/squash".into());
    let result = d.controller().create_volume(req).await;
    println!(
        "root_squash export: create answered {:?}",
        result
            .as_ref()
            .map(|_| ())
            .map_err(|s| (s.code(), s.message().to_string()))
    );
    assert_eq!(
        code(&result),
        Code::FailedPrecondition,
        "permission denied is final, not retried"
    );
    let left: Vec<_> = std::fs::read_dir(export().join("squash"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "no half-made volume or record: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn an_nfsv3_class_works_end_to_end() {
    // NFSv3 names the export by its path on the server, and without rpc.statd (the image runs
    // none) needs nolock.
    const V3: &[&str] = &["vers=3", "nolock", "hard", "timeo=20", "retrans=1"];
    let d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let mut req = claim(0, "delete", V3);
    req.name = "pvc-v3".into();
    req.parameters
        .insert("share".into(), export().display().to_string());
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "v3".into());
    let id = expect_ok(d.controller().create_volume(req).await, "create")
        .volume
        .unwrap()
        .volume_id;
    assert!(export().join("v3/www-web-0").is_dir());
    for pod in ["v3-a", "v3-b"] {
        let target = target_in_pod(&d, pod);
        expect_ok(
            d.node()
                .node_publish_volume(nfs_publish(&id, &target, V3))
                .await,
            "publish",
        );
        let mounts = mounts_at(&target);
        assert!(
            mounts.len() == 1 && mounts[0].fs_type == "nfs",
            "an NFSv3 mount: {mounts:?}"
        );
        let file = target.join("index.html");
        if pod == "v3-a" {
            std::fs::write(&file, b"over v3").unwrap();
        } else {
            assert_eq!(std::fs::read(&file).unwrap(), b"over v3");
        }
        expect_ok(
            d.node()
                .node_unpublish_volume(unpublish_request(&id, &target))
                .await,
            "unpublish",
        );
        assert!(mounts_at(&target).is_empty());
    }
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
    assert!(!export().join("v3").exists());
}
