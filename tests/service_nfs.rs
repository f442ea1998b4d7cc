//! Service tier: the CSI services exactly as the server wires them, called through the
//! generated tonic traits, with the fake mount table (`FakeOs`) and real temporary
//! directories. Fast and unprivileged; the kernel proof is in the `real_*.rs` tests and
//! csi-sanity. The shared [`Rig`] and request builders are in `tests/common/service.rs`.
//!
//! This file: the NFS backend's provisioning and reclaim: the seed's StatefulSet story,
//! parameter validation, reclaim by delete/retain/archive, pruning of empty parents, escaping
//! IDs, crash recovery of an archive, ListVolumes not being offered, and failures (a dead
//! server, a failed mount).

#[allow(dead_code)]
mod common;

use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use pvdir::csi::proto::node_server::Node as _;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

fn list_code(
    rig: &Rig,
) -> impl std::future::Future<
    Output = Result<tonic::Response<csi::ListVolumesResponse>, tonic::Status>,
> + '_ {
    rig.controller
        .list_volumes(Request::new(csi::ListVolumesRequest::default()))
}

#[tokio::test]
async fn nfs_seed_story_creates_one_directory_per_claim_on_one_mount() {
    let rig = Rig::nfs();
    let mut ids = Vec::new();
    for i in 0..3 {
        let v = rig.create(seed_claim(i, "delete")).await.unwrap();
        assert!(v.accessible_topology.is_empty());
        ids.push(v.volume_id);
    }
    assert_eq!(
        ids[0],
        format!(
            "v1#nfs#10.0.0.1#/export#default/www-web-0#delete#hard,nfsvers=4.2#{}",
            pvdir::domain::volume_id::owner_tag("pvc-0")
        )
    );
    let mounts: Vec<_> = rig
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("mount"))
        .collect();
    assert_eq!(mounts.len(), 1, "the export is mounted once: {mounts:?}");
    assert!(mounts[0].starts_with("mount nfs4 10.0.0.1:/export -> "));
    let export = rig.export_dir();
    use std::os::unix::fs::PermissionsExt;
    for i in 0..3 {
        let d = export.join(format!("default/www-web-{i}"));
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o770
        );
    }
    // mountPermissions is for the volume directory only, never its parents.
    assert_eq!(
        std::fs::metadata(export.join("default"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // The node mounts exactly the claim's directory, with the class's mount options.
    let t = rig.path().join("pod-target");
    rig.publish(&ids[1], &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    let last = rig.fake.calls().last().cloned().unwrap();
    assert_eq!(
        last,
        format!(
            "mount nfs4 10.0.0.1:/export/default/www-web-1 -> {} ro=false opts=hard",
            t.display()
        )
    );
}

#[tokio::test]
async fn nfs_reclaim_delete_retain_archive() {
    let rig = Rig::nfs();
    let del = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let keep = rig.create(seed_claim(1, "retain")).await.unwrap().volume_id;
    let arch = rig
        .create(seed_claim(2, "archive"))
        .await
        .unwrap()
        .volume_id;
    let export = rig.export_dir();
    std::fs::write(export.join("unrelated.txt"), b"keep me").unwrap();
    for i in 0..3 {
        std::fs::write(
            export.join(format!("default/www-web-{i}/index.html")),
            b"hello",
        )
        .unwrap();
    }
    for id in [&del, &keep, &arch] {
        rig.delete(id).await.unwrap();
        rig.delete(id).await.unwrap(); // retried delete is idempotent
    }
    assert!(!export.join("default/www-web-0").exists());
    assert_eq!(
        std::fs::read(export.join("default/www-web-1/index.html")).unwrap(),
        b"hello"
    );
    assert!(!export.join("default/www-web-2").exists());
    assert_eq!(
        std::fs::read(export.join("default/archived-www-web-2/index.html")).unwrap(),
        b"hello"
    );
    assert_eq!(
        std::fs::read(export.join("unrelated.txt")).unwrap(),
        b"keep me"
    );
    // The records are gone: a new claim (another PV name) may take the deleted and the
    // archived directories (would be ALREADY_EXISTS while an old record remained).
    for i in [0, 2] {
        let mut again = seed_claim(i, "delete");
        again.name = format!("pvc-{i}-new");
        rig.create(again).await.unwrap();
    }
    // The retained directory still has its data: a new claim adopts it only when the class
    // says reuseExisting, and only because the old record is gone.
    let mut reuse = seed_claim(1, "delete");
    reuse.name = "pvc-1-new".into();
    assert_eq!(code(rig.create(reuse.clone()).await), Code::AlreadyExists);
    reuse
        .parameters
        .insert("reuseExisting".into(), "true".into());
    rig.create(reuse).await.unwrap();
    assert_eq!(
        std::fs::read(export.join("default/www-web-1/index.html")).unwrap(),
        b"hello"
    );
}

#[tokio::test]
async fn nfs_prunes_only_empty_parents_it_created() {
    let rig = Rig::nfs();
    let a = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let b = rig.create(seed_claim(1, "delete")).await.unwrap().volume_id;
    let export = rig.export_dir();
    rig.delete(&a).await.unwrap();
    assert!(export.join("default").is_dir(), "still holds www-web-1");
    rig.delete(&b).await.unwrap();
    assert!(
        !export.join("default").exists(),
        "driver-made empty parent is removed"
    );

    // A parent the driver did not create is never removed.
    std::fs::create_dir(export.join("default")).unwrap();
    let c = rig.create(seed_claim(2, "delete")).await.unwrap().volume_id;
    rig.delete(&c).await.unwrap();
    assert!(export.join("default").is_dir());
}

#[tokio::test]
async fn nfs_escaping_ids_change_nothing() {
    let rig = Rig::nfs();
    rig.create(seed_claim(0, "delete")).await.unwrap();
    let calls = rig.fake.calls().len();
    for id in [
        "v1#nfs#10.0.0.1#/export#..#delete##0123456789abcdef",
        "v1#nfs#10.0.0.1#/export#default/..#delete##0123456789abcdef",
        "v1#nfs#10.0.0.1#/export#%2Fetc#delete##0123456789abcdef",
        "v1#nfs#10.0.0.1#/export/..#x#delete##0123456789abcdef",
        "v1#nfs#-o#/export#x#delete##0123456789abcdef",
    ] {
        assert_eq!(code(rig.delete(id).await), Code::InvalidArgument, "{id}");
    }
    assert_eq!(
        rig.fake.calls().len(),
        calls,
        "nothing was mounted or unmounted"
    );
    assert!(rig.export_dir().join("default/www-web-0").is_dir());
    // A well-formed ID whose owner never made this directory: nothing of its own to delete.
    rig.delete(
        "v1#nfs#10.0.0.1#/export#default/www-web-0#delete#hard,nfsvers=4.2#0123456789abcdef",
    )
    .await
    .unwrap();
    assert!(rig.export_dir().join("default/www-web-0").is_dir());
    // A handle this driver never made: nothing of ours to delete.
    rig.delete("static-handle").await.unwrap();
}

#[tokio::test]
async fn nfs_dead_server_fails_create_reports_abnormal_stats_and_still_unpublishes() {
    let rig = Rig::nfs();
    let v = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let t = rig.path().join("t");
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    rig.fake.set_server_dead(true);
    assert_eq!(
        code(rig.create(seed_claim(1, "delete")).await),
        Code::Unavailable
    );
    let stats = rig
        .node
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: v.clone(),
            volume_path: t.to_string_lossy().into(),
            staging_target_path: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    // Reported as the volume's condition, not as a failed (or hung) call.
    assert!(stats.volume_condition.is_some_and(|c| c.abnormal));
    assert!(stats.usage.is_empty());
    rig.unpublish(&v, &t).await.unwrap();
    assert!(!rig.fake.is_mounted(&t));
    assert!(rig
        .fake
        .calls()
        .iter()
        .any(|c| c == &format!("unmount {} remote=true", t.display())));
}

#[tokio::test]
async fn failed_mount_leaves_no_mount_and_reports_internal() {
    let rig = Rig::nfs();
    let v = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let t = rig.path().join("t");
    rig.fake
        .fail_next_mount("mount.nfs: access denied by server");
    assert_eq!(
        code(rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false).await),
        Code::Internal
    );
    assert!(!rig.fake.is_mounted(&t));
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn nfs_parameters_are_validated_before_anything_happens() {
    let rig = Rig::nfs();
    for params in [
        vec![("server", "s")],
        vec![("share", "/e")],
        vec![("server", "s"), ("share", "/e"), ("onDelete", "shred")],
        vec![
            ("server", "s"),
            ("share", "/e"),
            ("subDir", "${pvc.metadata.name}"),
        ],
    ] {
        let err = rig
            .create(create_req("pvc-z", 1, Mode::SingleNodeWriter, &params))
            .await;
        assert_eq!(code(err), Code::InvalidArgument, "{params:?}");
    }
    assert!(rig.fake.calls().is_empty());
}

#[tokio::test]
async fn nfs_list_volumes_is_unimplemented_as_not_advertised() {
    let rig = Rig::nfs();
    assert_eq!(code(list_code(&rig).await), Code::Unimplemented);
}

#[tokio::test]
async fn capacity_without_parameters_names_no_export_and_is_zero() {
    let rig = Rig::nfs();
    let reply = rig
        .controller
        .get_capacity(Request::new(csi::GetCapacityRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.available_capacity, 0);
    assert!(rig.fake.calls().is_empty(), "nothing was mounted");
    let bad = csi::GetCapacityRequest {
        parameters: std::collections::HashMap::from([("share".to_string(), "/e".to_string())]),
        ..Default::default()
    };
    assert_eq!(
        code(rig.controller.get_capacity(Request::new(bad)).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn nfs_expansion_records_the_size_and_never_shrinks() {
    let rig = Rig::nfs();
    let v = rig.create(seed_claim(0, "delete")).await.unwrap();
    assert_eq!(rig.expand(&v.volume_id, 2 << 30).await.unwrap(), 2 << 30);
    assert_eq!(rig.expand(&v.volume_id, 1 << 30).await.unwrap(), 2 << 30);
    let records: Vec<serde_json::Value> = std::fs::read_dir(rig.export_dir().join(".pvdir"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["expanded_bytes"], 2u64 << 30);
    // The claim's create still matches its record.
    rig.create(seed_claim(0, "delete")).await.unwrap();
    rig.delete(&v.volume_id).await.unwrap();
    assert_eq!(
        code(rig.expand(&v.volume_id, 3 << 30).await),
        Code::NotFound
    );
}
