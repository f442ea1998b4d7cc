//! Service tier: VolumeAttributesClass parameters (CreateVolume's `mutable_parameters` and
//! ControllerModifyVolume) through the generated CSI traits, with the fake mount table and a
//! temporary directory standing in for the export. csi-sanity's ModifyVolume specs run against
//! real NFS in the VM (`tests/vm/guest/csi-sanity-nfs.sh`).

#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use tonic::{Code, Request};

fn mode_of(dir: &Path) -> u32 {
    std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777
}

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn modify(rig: &Rig, id: &str, pairs: &[(&str, &str)]) -> Result<(), tonic::Status> {
    rig.controller
        .controller_modify_volume(Request::new(csi::ControllerModifyVolumeRequest {
            volume_id: id.into(),
            mutable_parameters: params(pairs),
            ..Default::default()
        }))
        .await
        .map(drop)
}

async fn has_modify(rig: &Rig) -> bool {
    use csi::controller_service_capability::rpc::Type;
    rig.controller_rpcs().await.contains(&Type::ModifyVolume)
}

#[tokio::test]
async fn nfs_mode_follows_the_attributes_class_and_survives_a_retried_create() {
    let rig = Rig::nfs();
    assert!(has_modify(&rig).await);
    // The class says 0770; the claim's VolumeAttributesClass says 0750 and wins.
    let mut req = seed_claim(0, "delete");
    req.mutable_parameters = params(&[("mountPermissions", "0750")]);
    let id = rig.create(req.clone()).await.unwrap().volume_id;
    let dir = rig.export_dir().join("default/www-web-0");
    assert_eq!(mode_of(&dir), 0o750);

    modify(&rig, &id, &[("mountPermissions", "0775")])
        .await
        .unwrap();
    assert_eq!(mode_of(&dir), 0o775);
    // Again: nothing to do, still OK.
    modify(&rig, &id, &[("mountPermissions", "0775")])
        .await
        .unwrap();
    // No parameter of pvdir's: nothing changes.
    modify(&rig, &id, &[]).await.unwrap();
    assert_eq!(mode_of(&dir), 0o775);
    // A late retry of the original create is the same request: OK, and the mode stays.
    assert_eq!(rig.create(req).await.unwrap().volume_id, id);
    assert_eq!(mode_of(&dir), 0o775);
}

#[tokio::test]
async fn nfs_modify_refuses_bad_input_and_changes_nothing() {
    let rig = Rig::nfs();
    let id = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let dir = rig.export_dir().join("default/www-web-0");
    assert_eq!(mode_of(&dir), 0o770);
    for (pairs, code) in [
        (&[("XXX_FakeKey", "x")][..], Code::InvalidArgument),
        (&[("mountPermissions", "4777")][..], Code::InvalidArgument),
        (&[("mountPermissions", "rwx")][..], Code::InvalidArgument),
        (&[("onDelete", "retain")][..], Code::InvalidArgument),
    ] {
        let status = modify(&rig, &id, pairs).await.unwrap_err();
        assert_eq!(status.code(), code, "{pairs:?}: {status:?}");
    }
    assert_eq!(mode_of(&dir), 0o770);
    let ok = &[("mountPermissions", "0700")][..];
    assert_eq!(
        modify(&rig, "", ok).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // Another driver's ID names no volume; a local one is of the other backend, as for
    // ControllerExpandVolume.
    for (other, code) in [
        ("non-existing-volume-id", Code::NotFound),
        ("v1#local#n1#pvc-0", Code::FailedPrecondition),
    ] {
        assert_eq!(
            modify(&rig, other, ok).await.unwrap_err().code(),
            code,
            "{other}"
        );
    }
    rig.delete(&id).await.unwrap();
    assert_eq!(
        modify(&rig, &id, ok).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut bad_create = seed_claim(1, "delete");
    bad_create.mutable_parameters = params(&[("XXX_FakeKey", "x")]);
    assert_eq!(
        rig.create(bad_create).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(!rig.export_dir().join("default/www-web-1").exists());
}

#[tokio::test]
async fn nfs_modify_on_a_dead_server_is_unavailable_and_the_retry_finishes() {
    let rig = Rig::nfs();
    let id = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    rig.fake.set_server_dead(true);
    let status = modify(&rig, &id, &[("mountPermissions", "0755")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    rig.fake.set_server_dead(false);
    modify(&rig, &id, &[("mountPermissions", "0755")])
        .await
        .unwrap();
    assert_eq!(mode_of(&rig.export_dir().join("default/www-web-0")), 0o755);
}

#[tokio::test]
async fn local_volumes_have_no_mutable_parameters() {
    let rig = Rig::local().await;
    assert!(!has_modify(&rig).await);
    let mut req = create_req("pvc-1", 1 << 20, csi_mode(), &[]);
    req.mutable_parameters = params(&[("mountPermissions", "0750")]);
    assert_eq!(
        rig.create(req.clone()).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    req.mutable_parameters.clear();
    let id = rig.create(req).await.unwrap().volume_id;
    assert_eq!(
        modify(&rig, &id, &[("mountPermissions", "0750")])
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented
    );
}

fn csi_mode() -> csi::volume_capability::access_mode::Mode {
    csi::volume_capability::access_mode::Mode::SingleNodeWriter
}
