//! VM tier: the NFS backend against a real kernel NFS server and client. These tests need the
//! guest that tests/vm/guest/nfs-suite.sh prepares (kernel nfsd exporting PVDIR_VM_EXPORT as the
//! NFSv4 root on 127.0.0.1), so they are `#[ignore]`d on the host and run there with
//! `--ignored`. This file: the failures users hit, each with a stated bound: a server that
//! stops answering, one that never answers, one that recreates its export (stale file
//! handles), and a driver killed between and in the middle of calls.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};

use sha2::Digest;
use std::time::{Duration, Instant};

use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use common::real::vm::*;
use pvdir::csi::proto as csi;
use tonic::Code;

/// Create and publish the `ordinal`th claim of `on_delete`'s class at a fresh target.
async fn published(d: &Driver, ordinal: u32, on_delete: &str, pod: &str) -> (String, PathBuf) {
    let v = expect_ok(
        d.controller()
            .create_volume(claim(ordinal, on_delete, OPTIONS))
            .await,
        "create",
    );
    let id = v.volume.unwrap().volume_id;
    let target = target_in_pod(d, pod);
    expect_ok(
        d.node()
            .node_publish_volume(nfs_publish(&id, &target, OPTIONS))
            .await,
        "publish",
    );
    (id, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn a_dead_server_never_hangs_unpublish_or_stats() {
    let d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let (a, target_a) = published(&d, 0, "delete", "dead-server-a").await;
    let (b, target_b) = published(&d, 1, "delete", "dead-server-b").await;
    std::fs::write(target_a.join("f"), b"x").unwrap();

    nfsd("0");
    // Unpublish may spend one bound on each of a plain, a forced and a lazy umount; stats
    // spends one.
    let bound = Duration::from_secs(3 * NFS_TIMEOUT_SECS + 5);
    // While A's stats waits on the dead server, calls for B and one that needs no server: none
    // waits for another. B's unmount must not cut A's call short: the kernel shares one NFS
    // superblock between both mounts, and a forced unmount would abort every call on it.
    let started = Instant::now();
    let mut node = d.node();
    let (mut node_b, mut node_c, mut node_d) = (d.node(), d.node(), d.node());
    let ((stats, stats_took), ((stats_b, _), (caps, caps_took), (unpublished_b, _))) = tokio::join!(
        timed(node.node_get_volume_stats(stats_request(&a, &target_a))),
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tokio::join!(
                timed(node_b.node_get_volume_stats(stats_request(&b, &target_b))),
                timed(node_c.node_get_capabilities(csi::NodeGetCapabilitiesRequest {})),
                timed(node_d.node_unpublish_volume(unpublish_request(&b, &target_b))),
            )
        }
    );
    let together = started.elapsed();
    let (unpublished, unpublish_took) =
        timed(node.node_unpublish_volume(unpublish_request(&a, &target_a))).await;
    let condition = stats
        .as_ref()
        .ok()
        .and_then(|r| r.get_ref().volume_condition.clone());
    println!(
        "dead server: stats answered {condition:?} in {stats_took:?}; capabilities in \
         {caps_took:?}; two volumes' stats and an unpublish together in {together:?}; \
         unpublish answered {:?} in {unpublish_took:?}",
        unpublished.as_ref().map(|_| ()).map_err(|s| s.code())
    );
    nfsd("8");
    assert!(stats_took < bound, "stats took {stats_took:?}");
    assert!(
        stats_took >= Duration::from_secs(NFS_TIMEOUT_SECS),
        "A's call ran to its own bound, not aborted by B's unmount: {stats_took:?}"
    );
    let stats = expect_ok(stats, "stats against a dead server");
    assert!(
        stats.volume_condition.is_some_and(|c| c.abnormal),
        "an unanswered statfs is reported as an abnormal volume, not hung"
    );
    assert!(stats.usage.is_empty(), "no made-up usage figures");
    assert!(caps.is_ok() && caps_took < Duration::from_secs(2));
    // B's stats races B's unpublish: it may find the volume gone (NOT_FOUND) or the server
    // dead (abnormal), but never the local disk a detached mount leaves beneath.
    match stats_b {
        Ok(r) => {
            let r = r.into_inner();
            assert!(r.usage.is_empty(), "no figures for B: {r:?}");
            assert!(r.volume_condition.is_some_and(|c| c.abnormal));
        }
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
    }
    expect_ok(unpublished_b, "the other volume's unpublish");
    assert!(
        together < bound,
        "calls for different volumes ran side by side, not one after another: {together:?}"
    );
    assert!(unpublish_took < bound, "unpublish took {unpublish_took:?}");
    expect_ok(unpublished, "unpublish against a dead server");
    for target in [&target_a, &target_b] {
        assert!(mounts_at(target).is_empty(), "no mount left behind");
        assert!(!target.exists(), "target removed");
    }
    // A's file was closed, and so written back, before the server died: no loss to report.
    let log = d.log();
    assert_eq!(abandoned_writeback(&log, &a, &target_a), 0, "{log}");
    assert_eq!(abandoned_writeback(&log, &b, &target_b), 0, "{log}");
    for id in [&a, &b] {
        expect_ok(
            d.controller().delete_volume(delete_request(id)).await,
            "delete after recovery",
        );
    }
}

/// Lines of the driver's log that report abandoned writeback for `id` at `target`.
fn abandoned_writeback(log: &str, id: &str, target: &Path) -> usize {
    let target = format!("target.path={}", target.display());
    log.lines()
        .filter(|l| l.contains(" WARN ") && l.contains("writeback=\"abandoned\""))
        .filter(|l| l.contains(id) && l.contains(&target))
        .count()
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
    assert_eq!(
        processes_named("mount.nfs"),
        [0; 0],
        "mount.nfs left running"
    );
    drop(held);
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
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
    // A clean stop takes the controller's export mount with it, and its directory.
    let staging = d.path("staging");
    assert_eq!(mounts_below(&staging).len(), 1, "the export is mounted");
    assert!(d.terminate().await.success());
    assert!(mounts_below(&staging).is_empty(), "export mount left");
    assert!(
        common::names_in(&staging).is_empty(),
        "staging directory left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn a_recreated_export_is_remounted_by_the_node_and_the_controller() {
    let d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let volatile = export().join("volatile");
    let stale_claim = |ordinal: u32| {
        let mut req = claim(ordinal, "delete", OPTIONS);
        req.name = format!("pvc-stale-{ordinal}");
        req.parameters.insert("share".into(), VOLATILE_SHARE.into());
        req.parameters
            .insert("csi.storage.k8s.io/pvc/namespace".into(), "stale".into());
        req
    };
    let id = expect_ok(d.controller().create_volume(stale_claim(0)).await, "create")
        .volume
        .unwrap()
        .volume_id;
    let target = target_in_pod(&d, "stale");
    expect_ok(
        d.node()
            .node_publish_volume(nfs_publish(&id, &target, OPTIONS))
            .await,
        "publish",
    );
    std::fs::write(target.join("index.html"), b"before the restore").unwrap();

    recreate_export(&volatile);
    let err = std::fs::read(target.join("index.html")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ESTALE),
        "the old mount is dead"
    );
    let (stats, stats_took) =
        timed(d.node().node_get_volume_stats(stats_request(&id, &target))).await;
    // kubelet publishes again for the pod (a container restart, kubelet's own restart).
    let (republished, republish_took) = timed(
        d.node()
            .node_publish_volume(nfs_publish(&id, &target, OPTIONS)),
    )
    .await;
    // The controller's own mount of the export is just as stale.
    let (created, create_took) = timed(d.controller().create_volume(stale_claim(1))).await;
    println!(
        "recreated export: stats answered in {stats_took:?}, republish {:?} in \
         {republish_took:?}, create {:?} in {create_took:?}",
        code(&republished),
        code(&created)
    );
    let stats = expect_ok(stats, "stats on a stale mount");
    assert!(
        stats.volume_condition.is_some_and(|c| c.abnormal),
        "a stale handle is an abnormal volume"
    );
    expect_ok(republished, "republish over a stale mount");
    assert_eq!(mounts_at(&target).len(), 1, "replaced, not stacked");
    assert_eq!(
        std::fs::read(target.join("index.html")).unwrap(),
        b"before the restore",
        "the pod sees the restored export"
    );
    let second = expect_ok(created, "create on a stale export mount")
        .volume
        .unwrap()
        .volume_id;
    assert!(volatile.join("stale/www-web-1").is_dir());
    let bound = Duration::from_secs(3 * NFS_TIMEOUT_SECS);
    for took in [stats_took, republish_took, create_took] {
        assert!(took < bound, "{took:?}");
    }
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish",
    );
    for id in [&id, &second] {
        expect_ok(
            d.controller().delete_volume(delete_request(id)).await,
            "delete",
        );
    }
    assert!(!volatile.join("stale").exists());
}

/// Files in the tree at `dir`, counted on the server side.
fn files_below(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_below(&e.path()),
            _ => 1,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn a_driver_killed_in_the_middle_of_delete_finishes_on_retry() {
    const FILES: usize = 6000;
    let mut d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let mut req = claim(0, "delete", OPTIONS);
    req.name = "pvc-big".into();
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "big".into());
    let id = expect_ok(d.controller().create_volume(req).await, "create")
        .volume
        .unwrap()
        .volume_id;
    let dir = export().join("big/www-web-0");
    // Written on the server side, where it is fast; the driver deletes it over NFS.
    for i in 0..FILES / 100 {
        let sub = dir.join(format!("d{i}"));
        std::fs::create_dir(&sub).unwrap();
        for j in 0..100 {
            std::fs::write(sub.join(format!("f{j}")), b"data").unwrap();
        }
    }
    let mut controller = d.controller();
    let raw = id.clone();
    let started = Instant::now();
    let call = tokio::spawn(async move { controller.delete_volume(delete_request(&raw)).await });
    while files_below(&dir) == FILES {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "delete never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killed outright while its helper is unlinking (OOM kill, node agent restart).
    d.kill();
    let killed_after = started.elapsed();
    let interrupted = call.await.unwrap();
    assert_ne!(code(&interrupted), Code::Ok, "the delete was cut short");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        processes_named("pvdir"),
        [0; 0],
        "the helper died with the driver"
    );
    let left = files_below(&dir);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(files_below(&dir), left, "nothing deletes behind our back");
    assert!(left > 0, "the kill came too late to interrupt anything");

    d.spawn().await;
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = d.controller().delete_volume(delete_request(&id)).await;
        match code(&result) {
            Code::Ok => break,
            // What the provisioner retries: a slice of a large tree ran out of time.
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted if attempts < 30 => {}
            other => panic!("retried delete: {other:?} {result:?}"),
        }
    }
    println!(
        "killed in delete after {killed_after:?} with {left} of {FILES} files left; the \
         retried delete finished in {:?} ({attempts} calls)",
        started.elapsed()
    );
    assert!(!dir.exists(), "the volume's directory is gone");
    assert!(!export().join("big").exists(), "its empty parent is pruned");
    let record = hex::encode(sha2::Sha256::digest(b"big/www-web-0"));
    assert!(
        !export()
            .join(format!(".pvdir/{}.json", &record[..32]))
            .exists(),
        "the record goes last, and it went"
    );
    // A late retry finds nothing left to do.
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete is idempotent",
    );
}
