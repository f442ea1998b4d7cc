//! Service tier: the CSI services exactly as the server wires them, called through the
//! generated tonic traits, with the fake mount table (`FakeOs`) and real temporary
//! directories. Fast and unprivileged; the kernel proof is in the `real_*.rs` tests and
//! csi-sanity. The shared [`Rig`] and request builders are in `tests/common/service.rs`.
//!
//! This file: which volume owns a directory on an NFS export: conflicting creates, late
//! delete retries after a re-create, nesting and the state directory, two classes on one
//! directory, and never adopting content the driver did not make.

#[allow(dead_code)]
mod common;

use common::service::*;
use pvdir::csi::proto as csi;
use tonic::Code;

use csi::volume_capability::access_mode::Mode;

#[tokio::test]
async fn nfs_conflicts_are_already_exists() {
    let rig = Rig::nfs();
    rig.create(seed_claim(0, "delete")).await.unwrap();
    let mut bigger = seed_claim(0, "delete");
    bigger.capacity_range = Some(csi::CapacityRange {
        required_bytes: 5 << 30,
        limit_bytes: 0,
    });
    assert_eq!(code(rig.create(bigger).await), Code::AlreadyExists);
    // Another volume whose template lands on the same directory cannot take it over.
    let mut thief = seed_claim(0, "delete");
    thief.name = "pvc-thief".into();
    assert_eq!(code(rig.create(thief).await), Code::AlreadyExists);
}

#[tokio::test]
async fn a_late_delete_retry_never_touches_the_directory_of_a_newer_volume() {
    let rig = Rig::nfs();
    // The StatefulSet's claim www-web-0 is provisioned as pvc-0, deleted, then re-created
    // (new PV name, same namespace/name, so the same directory).
    let old = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    rig.delete(&old).await.unwrap();
    let mut again = seed_claim(0, "delete");
    again.name = "pvc-0-recreated".into();
    again.parameters.insert(
        "csi.storage.k8s.io/pv/name".into(),
        "pvc-0-recreated".into(),
    );
    let new = rig.create(again).await.unwrap().volume_id;
    assert_ne!(old, new, "a new volume gets a new ID");
    let export = rig.export_dir();
    std::fs::write(export.join("default/www-web-0/new-data"), b"fresh").unwrap();
    // The sidecar's backed-off retry of the old delete arrives now.
    rig.delete(&old).await.unwrap();
    assert_eq!(
        std::fs::read(export.join("default/www-web-0/new-data")).unwrap(),
        b"fresh"
    );
    rig.delete(&new).await.unwrap();
    assert!(!export.join("default/www-web-0").exists());
}

#[tokio::test]
async fn volumes_cannot_nest_or_take_the_state_directory() {
    let rig = Rig::nfs();
    rig.create(seed_claim(0, "delete")).await.unwrap();
    // A class whose template lands on the namespace directory holding www-web-0.
    let mut outer = create_req(
        "pvc-outer",
        1,
        Mode::MultiNodeMultiWriter,
        &[
            ("server", "10.0.0.1"),
            ("share", "/export"),
            ("subDir", "default"),
        ],
    );
    outer.volume_capabilities = vec![cap(Mode::MultiNodeMultiWriter, &["hard", "nfsvers=4.2"])];
    assert_eq!(code(rig.create(outer).await), Code::AlreadyExists);
    // And one inside a volume.
    let mut inner = create_req(
        "pvc-inner",
        1,
        Mode::MultiNodeMultiWriter,
        &[
            ("server", "10.0.0.1"),
            ("share", "/export"),
            ("subDir", "default/www-web-0/inner"),
        ],
    );
    inner.volume_capabilities = vec![cap(Mode::MultiNodeMultiWriter, &["hard", "nfsvers=4.2"])];
    assert_eq!(code(rig.create(inner).await), Code::AlreadyExists);
    assert!(!rig.export_dir().join("default/www-web-0/inner").exists());
    let state = create_req(
        "pvc-state",
        1,
        Mode::MultiNodeMultiWriter,
        &[
            ("server", "10.0.0.1"),
            ("share", "/export"),
            ("subDir", ".pvdir/x"),
        ],
    );
    assert_eq!(code(rig.create(state).await), Code::InvalidArgument);
}

#[tokio::test]
async fn two_classes_cannot_share_one_directory() {
    let rig = Rig::nfs();
    rig.create(seed_claim(0, "delete")).await.unwrap();
    // Same subDir from a class with another reclaim policy: a different ID, the same directory.
    let mut other = seed_claim(0, "retain");
    other.name = "pvc-other-class".into();
    assert_eq!(code(rig.create(other).await), Code::AlreadyExists);
}

#[tokio::test]
async fn a_directory_with_content_is_never_adopted_unasked() {
    let rig = Rig::nfs();
    // Make the export mount exist, then an admin's hand-made parent with a volume inside it.
    rig.create(seed_claim(9, "delete")).await.unwrap();
    let export = rig.export_dir();
    std::fs::create_dir(export.join("team")).unwrap();
    let mut inner = seed_claim(0, "delete");
    inner.parameters.insert("subDir".into(), "team/x".into());
    rig.create(inner).await.unwrap();
    std::fs::write(export.join("team/x/data"), b"inner").unwrap();
    // A class whose subDir is the hand-made parent: no marker there, but it is not empty.
    let mut outer = seed_claim(1, "delete");
    outer.parameters.insert("subDir".into(), "team".into());
    assert_eq!(code(rig.create(outer).await), Code::AlreadyExists);
    // An admin's files are not adopted either, and nothing was claimed for them.
    std::fs::create_dir(export.join("admin")).unwrap();
    std::fs::write(export.join("admin/notes"), b"mine").unwrap();
    let mut admin = seed_claim(2, "delete");
    admin.parameters.insert("subDir".into(), "admin".into());
    assert_eq!(code(rig.create(admin.clone()).await), Code::AlreadyExists);
    assert_eq!(std::fs::read(export.join("team/x/data")).unwrap(), b"inner");
    assert_eq!(std::fs::read(export.join("admin/notes")).unwrap(), b"mine");
    admin
        .parameters
        .insert("reuseExisting".into(), "maybe".into());
    assert_eq!(code(rig.create(admin).await), Code::InvalidArgument);
}
