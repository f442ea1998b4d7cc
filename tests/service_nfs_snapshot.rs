//! Service tier: NFS snapshots, restores and clones through the generated CSI traits, with the
//! fake mount table and the real copy on temporary directories standing in for the export.
//! The kernel proof (real NFS 4.2, server-side copy) is in `vm_nfs.rs`.

#[allow(dead_code)]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::service::*;
use common::{names_but_markers, names_in};
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use tonic::{Code, Request};

/// A claim of the seed class named `name` (directory `default/<pvc>`), filled from `source`.
fn restore(
    name: &str,
    pvc: &str,
    bytes: i64,
    source: csi::volume_content_source::Type,
) -> csi::CreateVolumeRequest {
    let mut req = seed_claim(9, "delete");
    req.name = name.into();
    req.capacity_range = Some(csi::CapacityRange {
        required_bytes: bytes,
        limit_bytes: 0,
    });
    req.parameters
        .insert("csi.storage.k8s.io/pvc/name".into(), pvc.into());
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(source),
    });
    req
}

/// CreateVolume retried on ABORTED, as the provisioner does; the volume and the calls it took.
async fn create_retrying(rig: &Rig, req: csi::CreateVolumeRequest) -> (csi::Volume, usize) {
    for calls in 1..10_000 {
        match rig.create(req.clone()).await {
            Ok(v) => return (v, calls),
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    panic!("{} never completed", req.name);
}

fn fill(dir: &Path) {
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    std::fs::set_permissions(dir.join("conf"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(dir.join("index.html"), "v1").unwrap();
    std::fs::write(dir.join("conf/app.conf"), "a=1").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", dir.join("secret")).unwrap();
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[tokio::test]
async fn nfs_snapshot_restore_and_clone_keep_content_and_stay_independent() {
    let rig = Rig::nfs();
    let src = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let export = rig.export_dir();
    let src_dir = export.join("default/www-web-0");
    fill(&src_dir);

    let (snap, _) = rig.snapshot_ready("snapshot-1", &src).await;
    assert!(
        snap.snapshot_id
            .starts_with("v1#snap#nfs#10.0.0.1#/export#hard,nfsvers=4.2#"),
        "{}",
        snap.snapshot_id
    );
    assert_eq!(snap.source_volume_id, src);
    assert_eq!(snap.size_bytes, 1 << 30);
    let data = export.join(".pvdir/snapshots/snapshot-1/data");
    assert_eq!(read(&data, "index.html"), "v1");
    assert!(export.join(".pvdir/snapmeta/snapshot-1.json").is_file());
    // The source changes after the snapshot: a restore has the old content, a clone the new.
    std::fs::write(src_dir.join("index.html"), "v2").unwrap();

    let (restored, _) = create_retrying(
        &rig,
        restore(
            "pvc-r",
            "restored",
            1 << 30,
            from_snapshot(&snap.snapshot_id),
        ),
    )
    .await;
    let (cloned, _) =
        create_retrying(&rig, restore("pvc-c", "cloned", 2 << 30, from_volume(&src))).await;
    let (r_dir, c_dir) = (
        export.join("default/restored"),
        export.join("default/cloned"),
    );
    assert_eq!(read(&r_dir, "index.html"), "v1");
    assert_eq!(read(&c_dir, "index.html"), "v2");
    for dir in [&r_dir, &c_dir] {
        assert_eq!(read(dir, "conf/app.conf"), "a=1");
        assert_eq!(
            std::fs::read_link(dir.join("secret")).unwrap(),
            Path::new("/etc/shadow")
        );
        let conf = std::fs::metadata(dir.join("conf")).unwrap();
        assert_eq!(conf.permissions().mode() & 0o7777, 0o750);
        assert_eq!(
            conf.uid(),
            std::fs::metadata(src_dir.join("conf")).unwrap().uid()
        );
    }
    assert_eq!(
        restored.content_source.unwrap().r#type,
        Some(from_snapshot(&snap.snapshot_id))
    );
    assert_eq!(
        cloned.content_source.unwrap().r#type,
        Some(from_volume(&src))
    );
    let work = names_but_markers(&export.join(".pvdir/work"));
    assert!(work.is_empty(), "no work directory left: {work:?}");

    // Deleting the snapshot leaves the restore; deleting the source leaves the clone.
    rig.delete_snapshot(&snap.snapshot_id).await.unwrap();
    rig.delete_snapshot(&snap.snapshot_id).await.unwrap();
    assert!(!export.join(".pvdir/snapshots/snapshot-1").exists());
    assert!(!export.join(".pvdir/snapmeta/snapshot-1.json").exists());
    rig.delete(&src).await.unwrap();
    assert_eq!(read(&r_dir, "index.html"), "v1");
    assert_eq!(read(&c_dir, "index.html"), "v2");
    // A volume's snapshot outlives the volume too.
    let (snap2, _) = rig.snapshot_ready("snapshot-2", &restored.volume_id).await;
    rig.delete(&restored.volume_id).await.unwrap();
    assert!(!r_dir.exists());
    assert_eq!(
        read(
            &export.join(".pvdir/snapshots/snapshot-2/data"),
            "index.html"
        ),
        "v1"
    );
    rig.delete_snapshot(&snap2.snapshot_id).await.unwrap();
}

#[tokio::test]
async fn nfs_copies_cut_short_answer_not_ready_and_aborted_until_complete() {
    let rig = Rig::nfs_with_copy_budget(Duration::ZERO);
    let src = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let src_dir = rig.export_dir().join("default/www-web-0");
    for i in 0..20 {
        std::fs::write(src_dir.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    let first = rig.snapshot("s", &src).await.unwrap();
    assert!(!first.ready_to_use);
    // Not ready: a restore is refused with a code the provisioner retries.
    let req = restore("pvc-r", "r", 1 << 30, from_snapshot(&first.snapshot_id));
    assert_eq!(code(rig.create(req.clone()).await), Code::Aborted);
    let (snap, calls) = rig.snapshot_ready("s", &src).await;
    assert!(calls > 5, "a zero budget copies a little per call: {calls}");
    assert_eq!(snap.snapshot_id, first.snapshot_id);
    let (v, calls) = create_retrying(&rig, req.clone()).await;
    assert!(calls > 5, "{calls}");
    let dir = rig.export_dir().join("default/r");
    for i in 0..20 {
        assert_eq!(read(&dir, &format!("f{i}")), format!("{i}"));
    }
    // Idempotent, and the same name with another source is another volume.
    assert_eq!(rig.create(req).await.unwrap().volume_id, v.volume_id);
    let other = restore("pvc-r", "r", 1 << 30, from_volume(&src));
    assert_eq!(code(rig.create(other).await), Code::AlreadyExists);
    // The same snapshot name of another volume is another snapshot.
    assert_eq!(
        code(rig.snapshot("s", &v.volume_id).await),
        Code::AlreadyExists
    );
}

#[tokio::test]
async fn nfs_restores_refuse_bad_sources_and_make_nothing() {
    let rig = Rig::nfs();
    let src = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let (snap, _) = rig.snapshot_ready("s", &src).await;
    let export = rig.export_dir();
    let before = names_in(&export.join("default"));
    let local_snap = "v1#snap#local#n1#s";
    let missing = snap.snapshot_id.replace("#s", "#gone");
    for (req, want) in [
        (
            restore("a", "a", 1 << 20, from_snapshot(&snap.snapshot_id)),
            Code::OutOfRange,
        ),
        (
            restore("a", "a", 1 << 20, from_volume(&src)),
            Code::OutOfRange,
        ),
        (
            restore("a", "a", 1 << 30, from_snapshot(&missing)),
            Code::NotFound,
        ),
        (
            restore("a", "a", 1 << 30, from_snapshot(local_snap)),
            Code::NotFound,
        ),
        (
            restore("a", "a", 1 << 30, from_volume("v1#local#n1#x")),
            Code::NotFound,
        ),
    ] {
        assert_eq!(code(rig.create(req).await), want);
    }
    let mut reuse = restore("a", "a", 1 << 30, from_snapshot(&snap.snapshot_id));
    reuse
        .parameters
        .insert("reuseExisting".into(), "true".into());
    assert_eq!(code(rig.create(reuse).await), Code::InvalidArgument);
    // A volume named as its own source.
    let mut own = seed_claim(0, "delete");
    own.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(from_volume(&src)),
    });
    assert_eq!(code(rig.create(own).await), Code::InvalidArgument);
    assert_eq!(names_in(&export.join("default")), before, "nothing made");
    assert_eq!(
        names_but_markers(&export.join(".pvdir"))
            .into_iter()
            .filter(|n| n.ends_with(".json"))
            .count(),
        1,
        "only the source's record"
    );
}

#[tokio::test]
async fn nfs_snapshots_are_found_by_id_and_not_listed_without_one() {
    let rig = Rig::nfs();
    let src = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    assert_eq!(
        code(rig.snapshot("s", "v1#local#n1#x").await),
        Code::NotFound
    );
    assert_eq!(
        code(rig.snapshot("s", "v1#nfs#bad").await),
        Code::InvalidArgument
    );
    let (snap, _) = rig.snapshot_ready("s", &src).await;
    let got = rig
        .controller
        .get_snapshot(Request::new(csi::GetSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(got, snap);
    let by_id = rig
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_id.entries.len(), 1);
    assert_eq!(
        code(
            rig.list_snapshots(csi::ListSnapshotsRequest::default())
                .await
        ),
        Code::Unimplemented
    );
    // DeleteSnapshot of one never made, of a foreign ID, and twice: all fine.
    rig.delete_snapshot(&snap.snapshot_id.replace("#s", "#never"))
        .await
        .unwrap();
    rig.delete_snapshot("some-other-driver-id").await.unwrap();
    rig.delete_snapshot(&snap.snapshot_id).await.unwrap();
    rig.delete_snapshot(&snap.snapshot_id).await.unwrap();
    assert_eq!(
        code(
            rig.controller
                .get_snapshot(Request::new(csi::GetSnapshotRequest {
                    snapshot_id: snap.snapshot_id.clone(),
                    ..Default::default()
                }))
                .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn nfs_snapshot_of_a_dead_server_is_bounded_and_leaves_a_retry_that_finishes() {
    let rig = Rig::nfs();
    let src = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    std::fs::write(rig.export_dir().join("default/www-web-0/f"), "x").unwrap();
    rig.fake.set_server_dead(true);
    let status = rig.snapshot("s", &src).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    rig.fake.set_server_dead(false);
    let (snap, _) = rig.snapshot_ready("s", &src).await;
    assert_eq!(
        read(&rig.export_dir().join(".pvdir/snapshots/s/data"), "f"),
        "x"
    );
    rig.delete_snapshot(&snap.snapshot_id).await.unwrap();
}
