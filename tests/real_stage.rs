//! The "real thing" tier (see `real_publish.rs` for the harness and its hygiene): staging a
//! local volume with real bind mounts, as kubelet does it (NodeStageVolume, then each pod's
//! NodePublishVolume from the staging path), checked through `/proc/self/mountinfo` and the
//! files themselves.

#[allow(dead_code)]
mod common;

use std::path::Path;

use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use tonic::Code;

async fn stage(d: &Driver, id: &str, staging: &Path, mode: Mode) {
    let req = csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.to_str().expect("UTF-8 path").into(),
        volume_capability: Some(capability(mode)),
        ..Default::default()
    };
    expect_ok(d.node().node_stage_volume(req).await, "stage");
}

async fn unstage(d: &Driver, id: &str, staging: &Path) {
    let req = csi::NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.to_str().expect("UTF-8 path").into(),
    };
    expect_ok(d.node().node_unstage_volume(req).await, "unstage");
}

async fn unpublish(d: &Driver, id: &str, target: &Path) {
    let req = unpublish_request(id, target);
    expect_ok(d.node().node_unpublish_volume(req).await, "unpublish");
}

async fn publish_staged(d: &Driver, id: &str, staging: &Path, target: &Path) {
    let mut req = publish_request(id, target, Mode::SingleNodeMultiWriter, false);
    req.staging_target_path = staging.to_str().expect("UTF-8 path").into();
    expect_ok(
        d.node().node_publish_volume(req).await,
        "publish from stage",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_volume_is_one_bind_and_each_pod_binds_from_it() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-staged", Mode::SingleNodeMultiWriter).await;
    let staging = d.path("plugins/kubernetes.io/csi/local.pvdir.io/h/globalmount");
    std::fs::create_dir_all(staging.parent().unwrap()).expect("kubelet's staging parent");
    // Twice: the second finds it done.
    for _ in 0..2 {
        stage(&d, &id, &staging, Mode::SingleNodeMultiWriter).await;
    }
    let at = mounts_at(&staging);
    assert_eq!(at.len(), 1, "one stage mount: {at:?}");
    assert!(
        at[0].root.ends_with(format!("volumes/{}", key_of(&id))),
        "{at:?}"
    );

    let (a, b) = (target_in_pod(&d, "a"), target_in_pod(&d, "b"));
    publish_staged(&d, &id, &staging, &a).await;
    publish_staged(&d, &id, &staging, &b).await;
    for t in [&a, &b] {
        let at = mounts_at(t);
        assert_eq!(at.len(), 1, "{at:?}");
        assert!(
            at[0].root.ends_with(format!("volumes/{}", key_of(&id))),
            "{at:?}"
        );
    }
    std::fs::write(a.join("f"), b"from a").expect("write through pod a");
    assert_eq!(
        std::fs::read(b.join("f")).expect("read in pod b"),
        b"from a"
    );
    assert_eq!(
        std::fs::read(d.volume_dir(&id).join("f")).expect("in the volume"),
        b"from a"
    );
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete while staged and published",
    );

    // Unstaged out of order: the pods' mounts are binds of their own and keep working.
    unstage(&d, &id, &staging).await;
    assert!(mounts_at(&staging).is_empty() && !staging.exists());
    std::fs::write(b.join("g"), b"from b").expect("pod b still writes");
    assert_eq!(
        std::fs::read(a.join("g")).expect("pod a still reads"),
        b"from b"
    );
    for t in [&a, &b] {
        unpublish(&d, &id, t).await;
    }
    unstage(&d, &id, &staging).await;
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_only_stage_is_read_only_for_every_pod() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-ro-stage", Mode::SingleNodeReaderOnly).await;
    std::fs::write(d.volume_dir(&id).join("f"), b"x").expect("seed");
    let staging = d.path("stage-ro");
    stage(&d, &id, &staging, Mode::SingleNodeReaderOnly).await;
    assert!(mounts_at(&staging)[0].readonly);
    let target = target_in_pod(&d, "r");
    let mut req = publish_request(&id, &target, Mode::SingleNodeReaderOnly, false);
    req.staging_target_path = staging.to_str().unwrap().into();
    expect_ok(d.node().node_publish_volume(req).await, "publish");
    assert_read_only(&target);
    unpublish(&d, &id, &target).await;
    unstage(&d, &id, &staging).await;
}
