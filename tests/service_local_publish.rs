//! Service tier: the CSI services exactly as the server wires them, called through the
//! generated tonic traits, with the fake mount table (`FakeOs`) and real temporary
//! directories. Fast and unprivileged; the kernel proof is in the `real_*.rs` tests and
//! csi-sanity. The shared [`Rig`] and request builders are in `tests/common/service.rs`.
//!
//! This file: the local backend's node side: publish and unpublish (idempotency, read-only,
//! single-node-single-writer, class mount flags, malformed IDs), volume stats, and the
//! per-volume guards that abort concurrent calls until the work really ends.

#[allow(dead_code)]
mod common;

use std::path::Path;
use std::sync::Arc;

use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::node_server::Node as _;
use pvdir::os::MountFlags;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

#[tokio::test]
async fn publish_is_idempotent_and_incompatible_republish_is_already_exists() {
    let rig = Rig::local().await;
    let v = rig
        .create(create_req("pvc-p", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let t = rig.path().join("target");
    rig.publish(&v.volume_id, &t, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
    rig.publish(&v.volume_id, &t, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
    assert_eq!(
        rig.fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("mount"))
            .count(),
        1
    );
    assert_eq!(
        code(
            rig.publish(&v.volume_id, &t, Mode::SingleNodeWriter, true)
                .await
        ),
        Code::AlreadyExists
    );
    rig.unpublish(&v.volume_id, &t).await.unwrap();
    assert!(!rig.fake.is_mounted(&t));
    assert!(!t.exists(), "target directory is removed");
    rig.unpublish(&v.volume_id, &t).await.unwrap();
    rig.unpublish("v1#local#n1#never-existed", &t)
        .await
        .unwrap();
}

#[tokio::test]
async fn reader_only_mode_or_readonly_flag_mounts_read_only() {
    let rig = Rig::local().await;
    let v = rig
        .create(create_req("pvc-r", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let (a, b) = (rig.path().join("a"), rig.path().join("b"));
    rig.publish(&v.volume_id, &a, Mode::SingleNodeReaderOnly, false)
        .await
        .unwrap();
    rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, true)
        .await
        .unwrap();
    let table = rig.fake.table();
    for t in [&a, &b] {
        assert!(
            table.iter().any(|m| &m.mount_point == t && m.readonly()),
            "{t:?}"
        );
    }
}

#[tokio::test]
async fn single_node_single_writer_allows_one_target() {
    let rig = Rig::local().await;
    let v = rig
        .create(create_req("pvc-o", 1, Mode::SingleNodeSingleWriter, &[]))
        .await
        .unwrap();
    let (a, b) = (rig.path().join("a"), rig.path().join("b"));
    rig.publish(&v.volume_id, &a, Mode::SingleNodeSingleWriter, false)
        .await
        .unwrap();
    assert_eq!(
        code(
            rig.publish(&v.volume_id, &b, Mode::SingleNodeSingleWriter, false)
                .await
        ),
        Code::FailedPrecondition
    );
    assert!(!rig.fake.is_mounted(&b));
    rig.unpublish(&v.volume_id, &a).await.unwrap();
    rig.publish(&v.volume_id, &b, Mode::SingleNodeSingleWriter, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_calls_on_one_volume_are_aborted_until_the_work_ends() {
    let rig = Rig::local().await;
    let v = rig
        .create(create_req("pvc-c", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let (a, b) = (rig.path().join("a"), rig.path().join("b"));
    rig.fake.pause_mounts();
    let node = Arc::clone(&rig.node);
    let first = tokio::spawn({
        let req = publish_req(&v.volume_id, &a, Mode::SingleNodeWriter, false, &[]);
        async move {
            node.node_publish_volume(Request::new(req))
                .await
                .map(|_| ())
        }
    });
    // Wait until the first call is inside the (paused) mount.
    for _ in 0..200 {
        if !rig.fake.calls().is_empty() || a.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        a.exists(),
        "the first publish never reached its (paused) mount"
    );
    assert_eq!(
        code(
            rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, false)
                .await
        ),
        Code::Aborted
    );
    assert_eq!(code(rig.unpublish(&v.volume_id, &a).await), Code::Aborted);
    // Another volume is not held up.
    let w = rig
        .create(create_req("pvc-other", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    // Nor can the same process delete or re-create the volume while publishing it, however
    // the ID is spelled.
    assert_eq!(code(rig.delete(&v.volume_id).await), Code::Aborted);
    assert_eq!(code(rig.delete("v1#local#n1#pvc%2Dc").await), Code::Aborted);
    assert_eq!(
        code(
            rig.create(create_req("pvc-c", 1, Mode::SingleNodeWriter, &[]))
                .await
        ),
        Code::Aborted
    );
    rig.fake.resume_mounts();
    first.await.unwrap().unwrap();
    rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
    rig.delete(&w.volume_id).await.unwrap();
}

#[tokio::test]
async fn stats_need_a_published_path() {
    let rig = Rig::local().await;
    let v = rig
        .create(create_req("pvc-s", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let t = rig.path().join("t");
    let stats = |id: &str, p: &Path| {
        rig.node
            .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: p.to_string_lossy().into(),
                staging_target_path: String::new(),
            }))
    };
    assert_eq!(code(stats(&v.volume_id, &t).await), Code::NotFound);
    assert_eq!(code(stats("v1#local#n1#nope", &t).await), Code::NotFound);
    assert_eq!(code(stats("garbage", &t).await), Code::NotFound);
    rig.publish(&v.volume_id, &t, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
    let s = stats(&v.volume_id, &t).await.unwrap().into_inner();
    assert_eq!(s.usage.len(), 2);
    assert!(s.usage.iter().all(|u| u.total > 0));
    // A stats call racing an unpublish: the table still showed the mount, but by the statfs
    // the target is gone. That is not a publish any more (NOT_FOUND), not an internal error.
    std::fs::remove_dir(&t).unwrap();
    assert_eq!(code(stats(&v.volume_id, &t).await), Code::NotFound);
}

#[tokio::test]
async fn malformed_ids_are_invalid_and_foreign_ones_not_found_on_the_node() {
    let rig = Rig::local().await;
    let t = rig.path().join("t");
    assert_eq!(
        code(
            rig.publish("v1#local#n1#..", &t, Mode::SingleNodeWriter, false)
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            rig.publish("not-ours", &t, Mode::SingleNodeWriter, false)
                .await
        ),
        Code::NotFound
    );
    assert!(rig.fake.calls().is_empty());
}

#[tokio::test]
async fn local_bind_mounts_carry_the_class_mount_flags() {
    let rig = Rig::local().await;
    let mut req = create_req("pvc-flags", 1, Mode::SingleNodeWriter, &[]);
    req.volume_capabilities = vec![cap(Mode::SingleNodeWriter, &["nosuid", "noexec"])];
    let v = rig.create(req).await.unwrap();
    let t = rig.path().join("t");
    let req = publish_req(
        &v.volume_id,
        &t,
        Mode::SingleNodeWriter,
        false,
        &["nosuid", "noexec"],
    );
    rig.node
        .node_publish_volume(Request::new(req))
        .await
        .unwrap();
    let mounted = rig.fake.table();
    let at = mounted.iter().find(|m| m.mount_point == t).unwrap();
    assert!(
        at.flags.contains(MountFlags::NOSUID | MountFlags::NOEXEC),
        "{at:?}"
    );
    let bad = publish_req(
        &v.volume_id,
        &rig.path().join("u"),
        Mode::SingleNodeWriter,
        false,
        &["vers=4"],
    );
    assert_eq!(
        code(rig.node.node_publish_volume(Request::new(bad)).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_caller_giving_up_does_not_release_the_volume_while_work_continues() {
    let rig = Rig::local().await;
    let v = rig
        .create(create_req("pvc-cancel", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let (a, b) = (rig.path().join("a"), rig.path().join("b"));
    rig.fake.pause_mounts();
    // tonic drops a handler's future when the client's deadline passes; emulate that.
    let req = publish_req(&v.volume_id, &a, Mode::SingleNodeWriter, false, &[]);
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        rig.node.node_publish_volume(Request::new(req)),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the call was still in flight when its caller gave up"
    );
    // The work goes on in the background and still owns the volume.
    assert_eq!(
        code(
            rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, false)
                .await
        ),
        Code::Aborted
    );
    rig.fake.resume_mounts();
    for _ in 0..200 {
        if rig.fake.is_mounted(&a) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        rig.fake.is_mounted(&a),
        "the abandoned publish finished its work"
    );
    rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
}
