//! Service tier: group snapshots on the local backend through the generated GroupController
//! and Controller traits, as the server wires them, over the fake mount table and real
//! temporary directories (the copy is the real one). csi-sanity runs the GroupController's
//! validation specs against the real binary (`tests/csi-sanity.sh`).

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use common::service::*;
use pvdir::csi::group::GroupControllerService;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use pvdir::csi::proto::group_controller_server::GroupController as _;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

async fn volume(rig: &Rig, name: &str) -> String {
    rig.create(create_req(name, 1 << 20, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap()
        .volume_id
}

fn groups(rig: &Rig) -> GroupControllerService {
    rig.controller
        .groups()
        .expect("the local backend serves groups")
}

async fn create(
    g: &GroupControllerService,
    name: &str,
    sources: &[&str],
) -> Result<csi::VolumeGroupSnapshot, tonic::Status> {
    g.create_volume_group_snapshot(Request::new(csi::CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: sources.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }))
    .await
    .map(|r| r.into_inner().group_snapshot.unwrap())
}

/// CreateVolumeGroupSnapshot repeated until ready, as the snapshotter does; the group and the
/// calls it took.
async fn create_ready(
    g: &GroupControllerService,
    name: &str,
    sources: &[&str],
) -> (csi::VolumeGroupSnapshot, usize) {
    for calls in 1..10_000 {
        let group = create(g, name, sources).await.unwrap();
        if group.ready_to_use {
            return (group, calls);
        }
    }
    panic!("{name} never became ready");
}

async fn get(
    g: &GroupControllerService,
    id: &str,
    members: &[String],
) -> Result<csi::VolumeGroupSnapshot, tonic::Status> {
    g.get_volume_group_snapshot(Request::new(csi::GetVolumeGroupSnapshotRequest {
        group_snapshot_id: id.into(),
        snapshot_ids: members.to_vec(),
        ..Default::default()
    }))
    .await
    .map(|r| r.into_inner().group_snapshot.unwrap())
}

async fn delete(
    g: &GroupControllerService,
    id: &str,
    members: &[String],
) -> Result<(), tonic::Status> {
    g.delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: id.into(),
        snapshot_ids: members.to_vec(),
        ..Default::default()
    }))
    .await
    .map(drop)
}

fn member_ids(group: &csi::VolumeGroupSnapshot) -> Vec<String> {
    group
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.clone())
        .collect()
}

fn names_in(dir: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_group_snapshots_each_volume_restores_and_deletes_as_one() {
    let rig = Rig::local().await;
    let g = groups(&rig);
    let (a, b) = (volume(&rig, "pvc-a").await, volume(&rig, "pvc-b").await);
    fs::write(rig.local_dir(&a).join("data"), "a1").unwrap();
    fs::write(rig.local_dir(&b).join("data"), "b1").unwrap();

    let (group, _) = create_ready(&g, "groupsnapshot-1", &[&b, &a]).await;
    assert!(group.group_snapshot_id.starts_with("v1#group#local#n1#"));
    assert!(group.creation_time.is_some());
    let sources: BTreeSet<&str> = group
        .snapshots
        .iter()
        .map(|s| s.source_volume_id.as_str())
        .collect();
    assert_eq!(sources, BTreeSet::from([a.as_str(), b.as_str()]));
    for member in &group.snapshots {
        assert!(member.ready_to_use);
        assert_eq!(member.group_snapshot_id, group.group_snapshot_id);
    }
    // The same request in another order is the same group; other sources under its name
    // are not.
    let again = create(&g, "groupsnapshot-1", &[&a, &b]).await.unwrap();
    assert_eq!(again, group);
    let c = volume(&rig, "pvc-c").await;
    assert_eq!(
        create(&g, "groupsnapshot-1", &[&a, &c])
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );

    // Members are ordinary snapshots: listed with their group, and restorable.
    let listed = rig
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .entries;
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|e| e.snapshot.as_ref().unwrap().group_snapshot_id == group.group_snapshot_id));
    fs::write(rig.local_dir(&a).join("data"), "a2").unwrap();
    let of_a = group
        .snapshots
        .iter()
        .find(|s| s.source_volume_id == a)
        .unwrap();
    let restored = rig
        .create(create_from(
            "pvc-r",
            1 << 20,
            from_snapshot(&of_a.snapshot_id),
        ))
        .await
        .unwrap();
    assert_eq!(
        fs::read_to_string(rig.local_dir(&restored.volume_id).join("data")).unwrap(),
        "a1"
    );

    let members = member_ids(&group);
    assert_eq!(
        get(&g, &group.group_snapshot_id, &members).await.unwrap(),
        group
    );
    assert_eq!(get(&g, &group.group_snapshot_id, &[]).await.unwrap(), group);
    let wrong = vec![members[0].clone()];
    assert_eq!(
        get(&g, &group.group_snapshot_id, &wrong)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        delete(&g, &group.group_snapshot_id, &wrong)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    delete(&g, &group.group_snapshot_id, &members)
        .await
        .unwrap();
    delete(&g, &group.group_snapshot_id, &members)
        .await
        .unwrap();
    assert_eq!(
        get(&g, &group.group_snapshot_id, &[])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let root = rig.path().join("root");
    for dir in ["snapshots", "snapmeta", "groups"] {
        assert!(names_in(&root.join(dir)).is_empty(), "{dir} left");
    }
    // Neither the sources nor the restore lost anything.
    assert_eq!(
        fs::read_to_string(rig.local_dir(&a).join("data")).unwrap(),
        "a2"
    );
    assert_eq!(
        fs::read_to_string(rig.local_dir(&restored.volume_id).join("data")).unwrap(),
        "a1"
    );
}

#[tokio::test]
async fn a_group_cut_short_answers_not_ready_and_its_retries_finish() {
    let rig = Rig::local_with_copy_budget(Duration::from_millis(1)).await;
    let g = groups(&rig);
    let (a, b) = (volume(&rig, "pvc-a").await, volume(&rig, "pvc-b").await);
    for (i, v) in [&a, &b].into_iter().enumerate() {
        for f in 0..300 {
            fs::write(rig.local_dir(v).join(format!("f{f}")), format!("{i}-{f}")).unwrap();
        }
    }
    let first = create(&g, "gs", &[&a, &b]).await.unwrap();
    assert!(!first.ready_to_use);
    let (group, calls) = create_ready(&g, "gs", &[&a, &b]).await;
    assert!(calls > 1, "a 1 ms budget finished 600 files in one call");
    assert_eq!(group.group_snapshot_id, first.group_snapshot_id);
    assert!(group.snapshots.iter().all(|s| s.ready_to_use));
}

#[tokio::test]
async fn bad_group_requests_are_refused_and_change_nothing() {
    let rig = Rig::local().await;
    let g = groups(&rig);
    let a = volume(&rig, "pvc-a").await;
    for (name, sources, code) in [
        ("", vec![a.as_str()], Code::InvalidArgument),
        ("gs", vec![], Code::InvalidArgument),
        ("gs", vec![a.as_str(), a.as_str()], Code::InvalidArgument),
        ("gs", vec![a.as_str(), ""], Code::InvalidArgument),
        ("gs", vec![a.as_str(), "v1#local#n1#never"], Code::NotFound),
        (
            "gs",
            vec![a.as_str(), "v1#local#other-node#pvc-x"],
            Code::NotFound,
        ),
        ("gs", vec![a.as_str(), "some-other-driver"], Code::NotFound),
        (
            "gs",
            vec![a.as_str(), "v1#local#n1#.."],
            Code::InvalidArgument,
        ),
    ] {
        let status = create(&g, name, &sources).await.unwrap_err();
        assert_eq!(status.code(), code, "{name:?} {sources:?}: {status:?}");
    }
    let root = rig.path().join("root");
    for dir in ["snapshots", "snapmeta", "groups"] {
        assert!(names_in(&root.join(dir)).is_empty(), "{dir} written");
    }
    for (id, code) in [("", Code::InvalidArgument), ("fake-id", Code::NotFound)] {
        assert_eq!(get(&g, id, &[]).await.unwrap_err().code(), code, "{id:?}");
    }
    assert_eq!(
        delete(&g, "", &[]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    delete(&g, "fake-id", &[]).await.unwrap();
}

#[tokio::test]
async fn a_failed_group_never_deletes_a_snapshot_it_did_not_make() {
    let rig = Rig::local().await;
    let g = groups(&rig);
    let (a, b) = (volume(&rig, "pvc-a").await, volume(&rig, "pvc-b").await);
    // A plain snapshot that happens to take the name (and so the key) of member 0 of "gs".
    let (mine, _) = rig.snapshot_ready("gs/0", &a).await;
    let status = create(&g, "gs", &[&a, &b]).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let got = rig
        .controller
        .get_snapshot(Request::new(csi::GetSnapshotRequest {
            snapshot_id: mine.snapshot_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(got, mine, "the plain snapshot is untouched");
    assert!(names_in(&rig.path().join("root/groups")).is_empty());
}

#[tokio::test]
async fn the_nfs_backend_serves_no_groups() {
    let rig = Rig::nfs();
    assert!(rig.controller.groups().is_none());
}
