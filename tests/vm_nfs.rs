//! VM tier: the NFS backend against a real kernel NFS server and client. These tests need the
//! guest that tests/vm/guest/nfs-suite.sh prepares (kernel nfsd exporting PVDIR_VM_EXPORT as the
//! NFSv4 root on 127.0.0.1), so they are `#[ignore]`d on the host and run there with
//! `--ignored`. This file: the seed's StatefulSet story end to end, and the failures users hit
//! (a server that stops answering, one that never answers).

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use pvdir::csi::proto as csi;
use tonic::Code;

use csi::volume_capability::access_mode::Mode;

/// Bound given to the driver for anything that can block on the server.
const NFS_TIMEOUT_SECS: u64 = 5;

fn export() -> PathBuf {
    PathBuf::from(
        std::env::var("PVDIR_VM_EXPORT").expect("run inside the VM suite (PVDIR_VM_EXPORT)"),
    )
}

fn claim(ordinal: u32, on_delete: &str, options: &[&str]) -> csi::CreateVolumeRequest {
    let mut req = create_request(
        &format!("pvc-{on_delete}-{ordinal}"),
        Mode::MultiNodeMultiWriter,
        1 << 30,
    );
    req.volume_capabilities[0] = nfs_capability(Mode::MultiNodeMultiWriter, options);
    for (k, v) in [
        ("server", "127.0.0.1".to_string()),
        ("share", "/".to_string()),
        (
            "subDir",
            "${pvc.metadata.namespace}/${pvc.metadata.name}".to_string(),
        ),
        ("onDelete", on_delete.to_string()),
        (
            "csi.storage.k8s.io/pvc/namespace",
            format!("seed-{on_delete}"),
        ),
        ("csi.storage.k8s.io/pvc/name", format!("www-web-{ordinal}")),
        (
            "csi.storage.k8s.io/pv/name",
            format!("pvc-{on_delete}-{ordinal}"),
        ),
    ] {
        req.parameters.insert(k.to_string(), v);
    }
    req
}

fn nfs_capability(mode: Mode, options: &[&str]) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                mount_flags: options.iter().map(|o| o.to_string()).collect(),
                ..Default::default()
            },
        )),
    }
}

fn nfs_publish(id: &str, target: &Path, options: &[&str]) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(nfs_capability(Mode::MultiNodeMultiWriter, options)),
        ..Default::default()
    }
}

/// Stop (`"0"`) or start kernel nfsd, NFSv4 only (v3 would need rpcbind, which the guest does
/// not run).
fn nfsd(threads: &str) {
    let ok = Command::new("rpc.nfsd")
        .args(["-N", "3", threads])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "rpc.nfsd {threads}");
    if threads != "0" {
        // A restarted server would hold new OPENs for its grace period; no client here has
        // state to reclaim (see nfs-server.sh).
        std::fs::write("/proc/fs/nfsd/v4_end_grace", b"Y").expect("end the grace period");
    }
}

fn mount_nfs_helpers_running() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with("/sbin/mount.nfs"))
        })
        .count()
}

const OPTIONS: &[&str] = &["vers=4.2", "hard", "timeo=20", "retrans=1"];

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn a_dead_server_never_hangs_unpublish_or_stats() {
    let d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let v = expect_ok(
        d.controller()
            .create_volume(claim(0, "delete", OPTIONS))
            .await,
        "create",
    );
    let id = v.volume.unwrap().volume_id;
    let target = target_in_pod(&d, "dead-server");
    expect_ok(
        d.node()
            .node_publish_volume(nfs_publish(&id, &target, OPTIONS))
            .await,
        "publish",
    );
    std::fs::write(target.join("f"), b"x").unwrap();

    nfsd("0");
    let bound = Duration::from_secs(3 * NFS_TIMEOUT_SECS + 5);
    let started = Instant::now();
    let stats = d
        .node()
        .node_get_volume_stats(stats_request(&id, &target))
        .await;
    let stats_took = started.elapsed();
    // Meanwhile, calls that do not touch the dead server keep answering at once.
    let started = Instant::now();
    let caps = d
        .node()
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await;
    assert!(
        caps.is_ok() && started.elapsed() < Duration::from_secs(2),
        "other RPCs answer"
    );
    let started = Instant::now();
    let unpublished = d
        .node()
        .node_unpublish_volume(unpublish_request(&id, &target))
        .await;
    let unpublish_took = started.elapsed();
    let condition = stats
        .as_ref()
        .ok()
        .and_then(|r| r.get_ref().volume_condition.clone());
    println!("dead server: stats answered {condition:?} in {stats_took:?}; unpublish answered {:?} in {unpublish_took:?}",
        unpublished.as_ref().map(|_| ()).map_err(|s| s.code()));
    nfsd("8");
    assert!(stats_took < bound, "stats took {stats_took:?}");
    let stats = expect_ok(stats, "stats against a dead server");
    assert!(
        stats.volume_condition.is_some_and(|c| c.abnormal),
        "an unanswered statfs is reported as an abnormal volume, not hung"
    );
    assert!(stats.usage.is_empty(), "no made-up usage figures");
    assert!(unpublish_took < bound, "unpublish took {unpublish_took:?}");
    expect_ok(unpublished, "unpublish against a dead server");
    assert!(mounts_at(&target).is_empty(), "no mount left behind");
    assert!(!target.exists(), "target removed");
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete after recovery",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn a_server_that_never_answers_fails_publish_within_the_bound() {
    let d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let v = expect_ok(
        d.controller()
            .create_volume(claim(1, "delete", OPTIONS))
            .await,
        "create",
    );
    let id = v.volume.unwrap().volume_id;
    // A loopback port that accepts connections and never says a word: an NFS server that is
    // reachable but not answering (no traffic leaves the machine).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(8).flatten() {
            conns.push(c);
        }
    });
    let port_opt = format!("port={port}");
    let options = ["vers=4.2", "hard", port_opt.as_str()];
    let target = target_in_pod(&d, "silent-server");
    let started = Instant::now();
    let result = d
        .node()
        .node_publish_volume(nfs_publish(&id, &target, &options))
        .await;
    let took = started.elapsed();
    println!(
        "silent server: publish answered {:?} in {took:?}",
        result.as_ref().map(|_| ()).map_err(|s| s.code())
    );
    assert_eq!(code(&result), Code::Unavailable);
    assert!(
        took < Duration::from_secs(NFS_TIMEOUT_SECS + 10),
        "publish took {took:?}"
    );
    assert!(mounts_at(&target).is_empty(), "no half mount");
    // The helper and its mount.nfs child were killed, not left waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mount_nfs_helpers_running(), 0, "mount.nfs left running");
    drop(held);
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
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
async fn a_driver_restarted_between_create_and_publish_loses_nothing() {
    let mut d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let mut req = claim(0, "delete", OPTIONS);
    req.name = "pvc-restart".into();
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "restart".into());
    let id = expect_ok(d.controller().create_volume(req.clone()).await, "create")
        .volume
        .unwrap()
        .volume_id;
    // Killed outright, as a node reboot or an OOM kill would.
    d.kill();
    d.spawn().await;
    let again = expect_ok(d.controller().create_volume(req).await, "retried create")
        .volume
        .unwrap()
        .volume_id;
    assert_eq!(again, id, "the retried create finds the same volume");
    let target = target_in_pod(&d, "after-restart");
    expect_ok(
        d.node()
            .node_publish_volume(nfs_publish(&id, &target, OPTIONS))
            .await,
        "publish after restart",
    );
    std::fs::write(target.join("f"), b"x").unwrap();
    assert!(export().join("restart/www-web-0/f").exists());
    d.kill();
    d.spawn().await;
    // Idempotent across the restart: the mount is found in the mount table, not in memory.
    expect_ok(
        d.node()
            .node_publish_volume(nfs_publish(&id, &target, OPTIONS))
            .await,
        "republish",
    );
    assert_eq!(mounts_at(&target).len(), 1, "not stacked");
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish",
    );
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
    assert!(!export().join("restart").exists());
}
