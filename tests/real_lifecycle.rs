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
//! This file: the driver's lifecycle and setup: multi-node modes rejected on local, a local
//! root that is itself a bind mount (hostPath), restart with SIGTERM, and concurrent creates.

#[allow(dead_code)]
mod common;

use std::collections::HashSet;

use common::names_in;
use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use pvdir::os::safe_fs::{scratch_name, Scratch};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_node_modes_rejected_on_local() {
    require_root!();
    let d = Driver::start().await;
    for (name, mode) in [
        ("pvc-mnmw", Mode::MultiNodeMultiWriter),
        ("pvc-mnro", Mode::MultiNodeReaderOnly),
        ("pvc-mnsw", Mode::MultiNodeSingleWriter),
    ] {
        expect_code(
            d.controller()
                .create_volume(create_request(name, mode, MIB))
                .await,
            Code::InvalidArgument,
            name,
        );
        assert!(
            !d.root().join("volumes").join(name).exists(),
            "{name}: no directory"
        );
        assert!(
            !d.root().join("meta").join(format!("{name}.json")).exists(),
            "{name}: no record"
        );
    }
    assert_eq!(names_in(&d.root().join("volumes")), Vec::<String>::new());
    assert_eq!(names_in(&d.root().join("meta")), Vec::<String>::new());
}

/// In a DaemonSet the local root is usually a hostPath, i.e. itself a bind mount whose
/// mountinfo `root` differs from its mount point. The driver must still recognise its volumes'
/// publishes there (idempotency, single-writer, delete-while-mounted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_recognised_when_the_root_is_a_bind_mount() {
    require_root!();
    let d = Driver::start_with(|base| {
        let host = base.join("host-root");
        let root = base.join("root");
        std::fs::create_dir(&host).unwrap();
        std::fs::create_dir(&root).unwrap();
        bind_mount(&host, &root);
    })
    .await;
    let mode = Mode::SingleNodeSingleWriter;
    let id = create_volume(&d, "pvc-hostpath", mode).await;
    assert!(d.path("host-root/volumes/pvc-hostpath").is_dir());
    let a = target_in_pod(&d, "a");
    let b = target_in_pod(&d, "b");

    publish(&d, &id, &a, mode, false)
        .await
        .expect("publish at A");
    publish(&d, &id, &a, mode, false)
        .await
        .expect("repeated publish at A");
    assert_eq!(mounts_at(&a).len(), 1);
    expect_code(
        d.node()
            .node_publish_volume(publish_request(&id, &b, mode, false))
            .await,
        Code::FailedPrecondition,
        "second target of a single-writer volume",
    );
    std::fs::write(a.join("data"), b"live").unwrap();
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete of a published volume",
    );
    assert_eq!(std::fs::read(a.join("data")).unwrap(), b"live");
    let stats = d.node().node_get_volume_stats(stats_request(&id, &a)).await;
    expect_ok(stats, "stats at the publish");

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &a))
            .await,
        "unpublish",
    );
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
    assert!(!d.path("host-root/volumes/pvc-hostpath").exists());
}

/// Found by `pvdir load` on a machine with two tmpfs stacked at /dev/shm: with the local root
/// below such a stack, the driver looked at the covered filesystem, so a repeated publish got
/// ALREADY_EXISTS ("a different mount") and stats NOT_FOUND. Here two binds are stacked at
/// the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_recognised_when_the_root_is_below_stacked_mounts() {
    require_root!();
    let d = Driver::start_with(|base| {
        let root = base.join("root");
        for dir in [&root, &base.join("lower"), &base.join("upper")] {
            std::fs::create_dir(dir).unwrap();
        }
        bind_mount(&base.join("lower"), &root);
        bind_mount(&base.join("upper"), &root);
    })
    .await;
    assert_eq!(mounts_at(&d.root()).len(), 2, "two stacked mounts");
    assert!(
        d.path("upper/volumes").is_dir(),
        "the driver sees the upper"
    );
    let mode = Mode::SingleNodeWriter;
    let id = create_volume(&d, "pvc-stacked", mode).await;
    let a = target_in_pod(&d, "a");
    for attempt in ["publish", "repeated publish"] {
        publish(&d, &id, &a, mode, false).await.expect(attempt);
    }
    assert_eq!(mounts_at(&a).len(), 1);
    let stats = d.node().node_get_volume_stats(stats_request(&id, &a)).await;
    expect_ok(stats, "stats at the publish");
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &a))
            .await,
        "unpublish",
    );
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_volumes() {
    require_root!();
    let mut d = Driver::start().await;
    let one = create_volume(&d, "pvc-restart-1", Mode::SingleNodeWriter).await;
    let two = create_volume(&d, "pvc-restart-2", Mode::SingleNodeSingleWriter).await;
    let a = target_in_pod(&d, "a");
    publish(&d, &two, &a, Mode::SingleNodeSingleWriter, false)
        .await
        .expect("publish before restart");

    let status = d.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "driver must exit 0 on SIGTERM, got {status}"
    );
    assert!(!d.socket().exists(), "socket file removed on shutdown");

    d.spawn().await;
    let listed = expect_ok(
        d.controller()
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes",
    );
    let ids: HashSet<String> = listed
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    assert_eq!(ids, HashSet::from([one.clone(), two.clone()]), "{listed:?}");

    let again = expect_ok(
        d.controller()
            .create_volume(create_request("pvc-restart-1", Mode::SingleNodeWriter, MIB))
            .await,
        "idempotent CreateVolume after restart",
    );
    assert_eq!(again.volume.expect("volume").volume_id, one);
    expect_code(
        d.controller()
            .create_volume(create_request(
                "pvc-restart-1",
                Mode::SingleNodeWriter,
                2 * MIB,
            ))
            .await,
        Code::AlreadyExists,
        "same name, different capacity",
    );

    // Publish state lives in the mount table, not in the process: the new driver still sees
    // the single-writer publish, treats a repeat as idempotent, and can undo it.
    let b = target_in_pod(&d, "b");
    expect_code(
        d.node()
            .node_publish_volume(publish_request(
                &two,
                &b,
                Mode::SingleNodeSingleWriter,
                false,
            ))
            .await,
        Code::FailedPrecondition,
        "second target of a single-writer volume published before the restart",
    );
    publish(&d, &two, &a, Mode::SingleNodeSingleWriter, false)
        .await
        .expect("repeat of a publish made before the restart");
    assert_eq!(mounts_at(&a).len(), 1);
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&two, &a))
            .await,
        "unpublish after restart",
    );
    assert!(mounts_at(&a).is_empty() && !a.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_same_name() {
    require_root!();
    let d = Driver::start().await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = d.controller();
        calls.spawn(async move {
            client
                .create_volume(create_request(
                    "pvc-concurrent",
                    Mode::SingleNodeWriter,
                    MIB,
                ))
                .await
        });
    }
    let mut ids = HashSet::new();
    let mut aborted = 0;
    while let Some(joined) = calls.join_next().await {
        match joined.expect("task") {
            Ok(reply) => {
                ids.insert(reply.into_inner().volume.expect("volume").volume_id);
            }
            Err(status) if status.code() == Code::Aborted => aborted += 1,
            Err(status) => {
                panic!("concurrent CreateVolume: expected OK or ABORTED, got {status:?}")
            }
        }
    }
    assert_eq!(
        ids.len(),
        1,
        "every successful call returns the same volume id: {ids:?} ({aborted} aborted)"
    );
    assert_eq!(names_in(&d.root().join("volumes")), ["pvc-concurrent"]);
    assert_eq!(names_in(&d.root().join("meta")), ["pvc-concurrent.json"]);
}

/// Found by the chaos soak (tests/real_chaos.rs): a driver killed between writing a record's
/// temporary file and renaming it left the file in `meta/` for ever. A restart removes such
/// files of writers that are gone, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_sweeps_temporary_records_of_a_killed_driver() {
    require_root!();
    let mut d = Driver::start().await;
    create_volume(&d, "pvc-kept", Mode::SingleNodeWriter).await;
    let killed = d.pid();
    d.kill();
    let meta = d.root().join("meta");
    // A scratch name as the killed driver made it: this host's tag, the driver's pid.
    let ours = scratch_name("pvc-lost.json", Scratch::Temporary);
    let stale = ours.replace(&format!("-{}-", std::process::id()), &format!("-{killed}-"));
    let foreign = "notes.txt";
    std::fs::write(meta.join(&stale), b"{\"name\":").unwrap();
    std::fs::write(meta.join(foreign), b"an operator's file").unwrap();
    d.spawn().await;
    assert_eq!(names_in(&meta), [foreign, "pvc-kept.json"]);
    assert_eq!(names_in(&d.root().join("volumes")), ["pvc-kept"]);
}
