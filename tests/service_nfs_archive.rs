//! Service tier (fake mount table, real directories; see tests/service_nfs.rs):
//! `onDelete: archive` when a step fails or the driver dies between steps.
//!
//! The NFS client has no RENAME_NOREPLACE, so the old archive claimed `archived-<leaf>` with an
//! empty directory and renamed onto it. Killed between the two, it left that empty directory:
//! the retry archived to `-2`, and meanwhile a new volume whose subDir was `archived-<leaf>`
//! could adopt the empty placeholder and then have its directory replaced by the old volume's
//! data. Failures are injected into the fake between the steps.

#[allow(dead_code)]
mod common;

use common::names_but_markers;
use common::service::*;
use tonic::Code;

/// A rig with the seed's claim www-web-0 of the archive class: the rig, the volume ID and
/// the export.
async fn archive_class_volume() -> (Rig, String, std::path::PathBuf) {
    let rig = Rig::nfs();
    let v = rig
        .create(seed_claim(0, "archive"))
        .await
        .unwrap()
        .volume_id;
    let export = rig.export_dir();
    (rig, v, export)
}

/// A volume whose subDir is `default/archived-www-web-0`, the first archive name of www-web-0.
fn claim_on_archive_name() -> pvdir::csi::proto::CreateVolumeRequest {
    let mut req = seed_claim(7, "delete");
    req.parameters
        .insert("subDir".into(), "default/archived-www-web-0".into());
    req
}

#[tokio::test]
async fn an_archive_interrupted_before_its_rename_resumes_with_the_same_name() {
    let (rig, v, export) = archive_class_volume().await;
    std::fs::write(export.join("default/www-web-0/data"), b"d").unwrap();
    rig.fake.fail_next_fs("rename-aside", libc::EIO);
    assert_eq!(code(rig.delete(&v).await), Code::Unavailable);
    // No placeholder: nothing on disk looks like a free directory for a new volume, and the
    // name is claimed, so a volume cannot be created there.
    assert_eq!(names_but_markers(&export.join("default")), ["www-web-0"]);
    assert_eq!(
        code(rig.create(claim_on_archive_name()).await),
        Code::AlreadyExists
    );
    rig.delete(&v).await.unwrap();
    assert_eq!(
        names_but_markers(&export.join("default")),
        ["archived-www-web-0"]
    );
    assert_eq!(
        std::fs::read(export.join("default/archived-www-web-0/data")).unwrap(),
        b"d"
    );
    // The archive stays pvdir's: still no volume on its name.
    assert_eq!(
        code(rig.create(claim_on_archive_name()).await),
        Code::AlreadyExists
    );
}

#[tokio::test]
async fn an_archive_name_holding_someone_elses_content_is_skipped_and_left_alone() {
    let (rig, v, export) = archive_class_volume().await;
    // An admin's directory, and a file, on the first two names.
    std::fs::create_dir(export.join("default/archived-www-web-0")).unwrap();
    std::fs::write(export.join("default/archived-www-web-0/notes"), b"mine").unwrap();
    std::fs::write(export.join("default/archived-www-web-0-2"), b"file").unwrap();
    rig.delete(&v).await.unwrap();
    assert_eq!(
        names_but_markers(&export.join("default")),
        [
            "archived-www-web-0",
            "archived-www-web-0-2",
            "archived-www-web-0-3"
        ]
    );
    assert_eq!(
        std::fs::read(export.join("default/archived-www-web-0/notes")).unwrap(),
        b"mine"
    );
    // The names it could not use were given back: the admin can still make a volume there.
    let mut on_admins = seed_claim(5, "delete");
    on_admins
        .parameters
        .insert("subDir".into(), "default/archived-www-web-0".into());
    on_admins
        .parameters
        .insert("reuseExisting".into(), "true".into());
    rig.create(on_admins).await.unwrap();
}

#[tokio::test]
async fn each_archive_of_a_directory_gets_its_own_name() {
    let rig = Rig::nfs();
    for (round, pv) in ["pvc-a", "pvc-b", "pvc-c"].iter().enumerate() {
        let mut req = seed_claim(0, "archive");
        req.name = pv.to_string();
        req.parameters
            .insert("csi.storage.k8s.io/pv/name".into(), pv.to_string());
        let v = rig.create(req).await.unwrap().volume_id;
        let export = rig.export_dir();
        std::fs::write(export.join("default/www-web-0/round"), round.to_string()).unwrap();
        rig.delete(&v).await.unwrap();
        // A late retry of the delete changes nothing.
        rig.delete(&v).await.unwrap();
    }
    let export = rig.export_dir();
    for (name, round) in [("", "0"), ("-2", "1"), ("-3", "2")] {
        let dir = export.join(format!("default/archived-www-web-0{name}"));
        assert_eq!(std::fs::read_to_string(dir.join("round")).unwrap(), round);
    }
}

#[tokio::test]
async fn nfs_crash_after_archive_is_completed_by_the_retry() {
    let (rig, v, export) = archive_class_volume().await;
    std::fs::write(export.join("default/www-web-0/data"), b"d").unwrap();
    // The rename happened, the record removal did not.
    std::fs::rename(
        export.join("default/www-web-0"),
        export.join("default/archived-www-web-0"),
    )
    .unwrap();
    rig.delete(&v).await.unwrap();
    assert_eq!(
        std::fs::read(export.join("default/archived-www-web-0/data")).unwrap(),
        b"d"
    );
    let mut again = seed_claim(0, "archive");
    again.name = "pvc-0-new".into();
    assert!(rig.create(again).await.is_ok(), "the record was removed");
}

/// The record of `subdir` on the export, if any.
fn record_of(export: &std::path::Path, subdir: &str) -> Option<serde_json::Value> {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(subdir.as_bytes()));
    let path = export.join(".pvdir").join(format!("{}.json", &hash[..32]));
    std::fs::read(path)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap())
}

/// An archive skipped a name someone else filled, archived to the next, and died before the
/// volume's record went. The retry must finish with the name it used, and never claim the
/// skipped one: that would record an admin's directory as this volume's archive.
#[tokio::test]
async fn a_retry_resumes_the_name_it_archived_to() {
    let (rig, v, export) = archive_class_volume().await;
    std::fs::write(export.join("default/www-web-0/data"), b"d").unwrap();
    std::fs::create_dir(export.join("default/archived-www-web-0")).unwrap();
    std::fs::write(export.join("default/archived-www-web-0/notes"), b"mine").unwrap();
    rig.fake.fail_next_fs("remove-record", libc::EIO);
    assert_eq!(code(rig.delete(&v).await), Code::Unavailable);
    rig.delete(&v).await.unwrap();
    assert_eq!(
        std::fs::read(export.join("default/archived-www-web-0-2/data")).unwrap(),
        b"d"
    );
    assert!(
        record_of(&export, "default/archived-www-web-0").is_none(),
        "the admin's directory is recorded as nobody's archive"
    );
    assert!(record_of(&export, "default/archived-www-web-0-2").is_some());
}

/// A volume whose directory is gone (removed by hand) has nothing to archive: no archive
/// record may claim a name for nothing.
#[tokio::test]
async fn nothing_to_archive_leaves_no_archive_record() {
    let (rig, v, export) = archive_class_volume().await;
    std::fs::remove_dir(export.join("default/www-web-0")).unwrap();
    rig.delete(&v).await.unwrap();
    assert!(record_of(&export, "default/archived-www-web-0").is_none());
    assert!(!export.join("default/archived-www-web-0").exists());
    // And the name stays free for a volume.
    let mut on_name = seed_claim(5, "delete");
    on_name
        .parameters
        .insert("subDir".into(), "default/archived-www-web-0".into());
    rig.create(on_name).await.unwrap();
}
