//! Service tier: the local backend's journal. Each test stands in for a power cut by undoing on
//! disk, by hand, the changes that were not synced (the kernel would have lost them with its
//! page cache), then restarts the backend on the same root and checks that the replay brings
//! back exactly what was acknowledged. The real power cut, a hard reset of a VM with nothing
//! synced, is tests/vm/durability.sh.

#[allow(dead_code)]
mod common;

use common::service::*;
use csi::volume_capability::access_mode::Mode;
use pvdir::csi::proto as csi;
use tonic::Code;

fn volume_dir(rig: &Rig, key: &str) -> std::path::PathBuf {
    rig.path().join("root/volumes").join(key)
}

fn record(rig: &Rig, key: &str) -> std::path::PathBuf {
    rig.path().join(format!("root/meta/{key}.json"))
}

#[tokio::test]
async fn an_acknowledged_create_whose_files_were_lost_is_redone() {
    let rig = Rig::local().await;
    let a = rig
        .create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    rig.create(create_req("pvc-b", 2000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    // pvc-a lost both; pvc-b kept its record's name but not its contents.
    std::fs::remove_dir(volume_dir(&rig, "pvc-a")).unwrap();
    std::fs::remove_file(record(&rig, "pvc-a")).unwrap();
    std::fs::write(record(&rig, "pvc-b"), b"").unwrap();
    let rig = rig.restart_local().await;
    assert!(volume_dir(&rig, "pvc-a").is_dir() && volume_dir(&rig, "pvc-b").is_dir());
    let again = rig
        .create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    assert_eq!(again, a, "the same volume, not a conflict");
    let other = rig
        .create(create_req("pvc-b", 999, Mode::SingleNodeWriter, &[]))
        .await;
    assert_eq!(
        code(other),
        Code::AlreadyExists,
        "pvc-b's record is back in full"
    );
}

#[tokio::test]
async fn an_acknowledged_delete_whose_removal_was_lost_is_redone() {
    let rig = Rig::local().await;
    let a = rig
        .create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let kept = std::fs::read(record(&rig, "pvc-a")).unwrap();
    rig.delete(&a.volume_id).await.unwrap();
    // The removal never reached the disk: the directory, its data and the record are back.
    std::fs::create_dir(volume_dir(&rig, "pvc-a")).unwrap();
    std::fs::write(volume_dir(&rig, "pvc-a").join("data"), b"old").unwrap();
    std::fs::write(record(&rig, "pvc-a"), kept).unwrap();
    let rig = rig.restart_local().await;
    assert!(!volume_dir(&rig, "pvc-a").exists());
    assert!(!record(&rig, "pvc-a").exists());
}

#[tokio::test]
async fn a_replay_happens_once() {
    let rig = Rig::local().await;
    rig.create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let rig = rig.restart_local().await;
    // Synced and emptied by the first restart: what happens on disk afterwards is not undone.
    std::fs::remove_dir(volume_dir(&rig, "pvc-a")).unwrap();
    let rig = rig.restart_local().await;
    assert!(!volume_dir(&rig, "pvc-a").exists());
}

#[tokio::test]
async fn a_refused_create_logs_nothing_that_a_replay_could_apply() {
    let rig = Rig::local().await;
    rig.create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let conflict = rig
        .create(create_req("pvc-a", 5000, Mode::SingleNodeWriter, &[]))
        .await;
    assert_eq!(code(conflict), Code::AlreadyExists);
    let rig = rig.restart_local().await;
    let again = rig
        .create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    assert_eq!(again.capacity_bytes, 1000, "the first record stands");
}

#[tokio::test]
async fn a_name_deleted_and_made_again_keeps_the_new_volumes_files() {
    let rig = Rig::local().await;
    let a = rig
        .create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    std::fs::write(volume_dir(&rig, "pvc-a").join("old"), b"old").unwrap();
    rig.delete(&a.volume_id).await.unwrap();
    rig.create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    std::fs::write(volume_dir(&rig, "pvc-a").join("new"), b"new").unwrap();
    // Only the name's last entry counts: replaying its delete would remove the new files.
    let rig = rig.restart_local().await;
    let names: Vec<_> = std::fs::read_dir(volume_dir(&rig, "pvc-a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["new"]);
}
