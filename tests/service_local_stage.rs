//! Service tier: staging local volumes (NodeStageVolume, NodeUnstageVolume, and publishes
//! that bind from the staging mount), through the generated CSI traits with the fake mount
//! table. The real mounts are proven by csi-sanity against the binary as root
//! (`tests/csi-sanity.sh`, whose lifecycle specs stage before they publish) and by kubelet in
//! the cluster tier.

#[allow(dead_code)]
mod common;

use std::path::Path;

use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::node_server::Node as _;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

async fn stage(rig: &Rig, id: &str, staging: &Path, mode: Mode) -> Result<(), tonic::Status> {
    rig.node
        .node_stage_volume(Request::new(csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_string_lossy().into(),
            volume_capability: Some(cap(mode, &[])),
            ..Default::default()
        }))
        .await
        .map(drop)
}

async fn unstage(rig: &Rig, id: &str, staging: &Path) -> Result<(), tonic::Status> {
    rig.node
        .node_unstage_volume(Request::new(csi::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_string_lossy().into(),
        }))
        .await
        .map(drop)
}

async fn publish_staged(
    rig: &Rig,
    id: &str,
    staging: &Path,
    target: &Path,
    mode: Mode,
) -> Result<(), tonic::Status> {
    let mut req = publish_req(id, target, mode, false, &[]);
    req.staging_target_path = staging.to_string_lossy().into();
    rig.node
        .node_publish_volume(Request::new(req))
        .await
        .map(drop)
}

async fn stages(rig: &Rig) -> bool {
    use csi::node_service_capability::rpc::Type;
    rig.node_rpcs().await.contains(&Type::StageUnstageVolume)
}

async fn volume(rig: &Rig, name: &str) -> String {
    rig.create(create_req(name, 1 << 20, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap()
        .volume_id
}

#[tokio::test]
async fn a_staged_volume_is_published_from_its_stage_and_unstaged_last() {
    let rig = Rig::local().await;
    assert!(stages(&rig).await);
    let v = volume(&rig, "pvc-s").await;
    let (staging, a, b) = (
        rig.path().join("stage"),
        rig.path().join("pod-a"),
        rig.path().join("pod-b"),
    );
    stage(&rig, &v, &staging, Mode::SingleNodeMultiWriter)
        .await
        .unwrap();
    stage(&rig, &v, &staging, Mode::SingleNodeMultiWriter)
        .await
        .unwrap();
    assert!(rig.fake.is_mounted(&staging));
    publish_staged(&rig, &v, &staging, &a, Mode::SingleNodeMultiWriter)
        .await
        .unwrap();
    publish_staged(&rig, &v, &staging, &b, Mode::SingleNodeMultiWriter)
        .await
        .unwrap();
    // Each pod's mount is its own, bound from the stage (the fake mounts nothing for real:
    // what the pods see is proven with real binds in `real_publish.rs`).
    let binds: Vec<String> = rig
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("mount"))
        .collect();
    assert_eq!(binds.len(), 3, "{binds:?}");
    // A staged volume is in use: DeleteVolume refuses it.
    assert_eq!(
        rig.delete(&v).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    for t in [&a, &b] {
        rig.unpublish(&v, t).await.unwrap();
    }
    unstage(&rig, &v, &staging).await.unwrap();
    unstage(&rig, &v, &staging).await.unwrap();
    assert!(!rig.fake.is_mounted(&staging) && !staging.exists());
    rig.delete(&v).await.unwrap();
}

#[tokio::test]
async fn single_writer_counts_pods_not_the_stage() {
    let rig = Rig::local().await;
    let v = volume(&rig, "pvc-rwop").await;
    let staging = rig.path().join("stage");
    let (a, b) = (rig.path().join("pod-a"), rig.path().join("pod-b"));
    stage(&rig, &v, &staging, Mode::SingleNodeSingleWriter)
        .await
        .unwrap();
    publish_staged(&rig, &v, &staging, &a, Mode::SingleNodeSingleWriter)
        .await
        .unwrap();
    let status = publish_staged(&rig, &v, &staging, &b, Mode::SingleNodeSingleWriter)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(!rig.fake.is_mounted(&b));
}

#[tokio::test]
async fn publishing_from_a_stage_that_is_not_there_or_not_this_volume_fails() {
    let rig = Rig::local().await;
    let (v, w) = (volume(&rig, "pvc-v").await, volume(&rig, "pvc-w").await);
    let (staging, target) = (rig.path().join("stage"), rig.path().join("pod"));
    let status = publish_staged(&rig, &v, &staging, &target, Mode::SingleNodeWriter)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    stage(&rig, &w, &staging, Mode::SingleNodeWriter)
        .await
        .unwrap();
    let status = publish_staged(&rig, &v, &staging, &target, Mode::SingleNodeWriter)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(!rig.fake.is_mounted(&target));
    // Another volume's stage at the path is ALREADY_EXISTS, and stays.
    assert_eq!(
        stage(&rig, &v, &staging, Mode::SingleNodeWriter)
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert!(rig.fake.is_mounted(&staging));
}

#[tokio::test]
async fn bad_stage_requests_are_refused_and_mount_nothing() {
    let rig = Rig::local().await;
    let v = volume(&rig, "pvc-b").await;
    let staging = rig.path().join("stage");
    let full = csi::NodeStageVolumeRequest {
        volume_id: v.clone(),
        staging_target_path: staging.to_string_lossy().into(),
        volume_capability: Some(cap(Mode::SingleNodeWriter, &[])),
        ..Default::default()
    };
    let mut cases = Vec::new();
    let mut r = full.clone();
    r.volume_id.clear();
    cases.push((r, Code::InvalidArgument));
    let mut r = full.clone();
    r.staging_target_path.clear();
    cases.push((r, Code::InvalidArgument));
    let mut r = full.clone();
    r.staging_target_path = "relative/stage".into();
    cases.push((r, Code::InvalidArgument));
    let mut r = full.clone();
    r.volume_capability = None;
    cases.push((r, Code::InvalidArgument));
    let mut r = full.clone();
    r.volume_capability = Some(cap(Mode::MultiNodeMultiWriter, &[]));
    cases.push((r, Code::InvalidArgument));
    let mut r = full.clone();
    r.volume_id = "v1#local#n1#never-made".into();
    cases.push((r, Code::NotFound));
    let mut r = full.clone();
    r.volume_id = "v1#local#other-node#pvc-b".into();
    cases.push((r, Code::NotFound));
    for (req, code) in cases {
        let status = rig
            .node
            .node_stage_volume(Request::new(req.clone()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{req:?}: {status:?}");
    }
    assert!(rig.fake.calls().is_empty(), "{:?}", rig.fake.calls());
    for (id, path) in [("", "/x"), ("v", "")] {
        let status = rig
            .node
            .node_unstage_volume(Request::new(csi::NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: path.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn nfs_volumes_are_not_staged() {
    let rig = Rig::nfs();
    assert!(!stages(&rig).await);
    let v = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let status = stage(
        &rig,
        &v,
        &rig.path().join("stage"),
        Mode::MultiNodeMultiWriter,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}
