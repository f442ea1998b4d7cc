//! Service tier (fake mount table, real temporary directories): requests that can never
//! succeed are refused at once with INVALID_ARGUMENT and change nothing, whichever side is
//! asked. `mountPermissions` outside what a shared volume directory can use, an NFS `server`
//! that names no host, an absolute `subDir`, and a volume ID that names pvdir's own records.

#[allow(dead_code)]
mod common;

use std::os::unix::fs::PermissionsExt;

use common::names_in;
use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

const NFS_CLASS: &[(&str, &str)] = &[("server", "10.0.0.1"), ("share", "/export")];

fn nfs_req(name: &str, extra: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    let params: Vec<(&str, &str)> = NFS_CLASS.iter().chain(extra).copied().collect();
    create_req(name, 1 << 20, Mode::MultiNodeMultiWriter, &params)
}

#[tokio::test]
async fn local_mount_permissions_outside_a_directory_mode_are_refused_and_change_nothing() {
    let rig = Rig::local().await;
    let root = rig.path().join("root");
    for bad in ["4777", "6775", "0644", "0", "17777", "+777", "0x1ff"] {
        let req = create_req(
            "pvc-1",
            1 << 20,
            Mode::SingleNodeWriter,
            &[("mountPermissions", bad)],
        );
        assert_eq!(code(rig.create(req).await), Code::InvalidArgument, "{bad}");
    }
    assert!(names_in(&root.join("volumes")).is_empty());
    assert!(names_in(&root.join("meta")).is_empty());
    assert!(rig.fake.calls().is_empty(), "{:?}", rig.fake.calls());
}

#[tokio::test]
async fn setgid_and_sticky_are_applied_to_the_volume_directory() {
    let rig = Rig::local().await;
    for (name, raw, mode) in [("pvc-g", "2775", 0o2775), ("pvc-t", "1777", 0o1777)] {
        let req = create_req(
            name,
            1 << 20,
            Mode::SingleNodeWriter,
            &[("mountPermissions", raw)],
        );
        rig.create(req).await.unwrap();
        let dir = rig.path().join("root/volumes").join(name);
        let got = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(got, mode, "{raw}");
    }
}

#[tokio::test]
async fn nfs_refusals_touch_neither_the_export_nor_the_mount_table() {
    let rig = Rig::nfs();
    // Were any of these to reach the server, the dead server would answer UNAVAILABLE after
    // the bound instead.
    rig.fake.set_server_dead(true);
    for extra in [
        [("mountPermissions", "4777")],
        [("server", "256.1.1.1")],
        [("server", "1.2.3")],
        [("server", "host.1")],
        [("subDir", "/abs")],
        [("subDir", ".pvdir")],
        [("subDir", ".pvdir/records")],
    ] {
        let mut req = nfs_req("pvc-1", &[]);
        for (k, v) in extra {
            req.parameters.insert(k.into(), v.into());
        }
        assert_eq!(
            code(rig.create(req).await),
            Code::InvalidArgument,
            "{extra:?}"
        );
    }
    let capacity = rig
        .controller
        .get_capacity(Request::new(csi::GetCapacityRequest {
            parameters: [("server", "256.1.1.1"), ("share", "/export")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(capacity), Code::InvalidArgument);
    assert!(names_in(&rig.path().join("staging")).is_empty());
    assert!(rig.fake.calls().is_empty(), "{:?}", rig.fake.calls());
}

#[tokio::test]
async fn the_node_refuses_an_id_that_names_pvdirs_records_as_the_controller_does() {
    let rig = Rig::nfs();
    let owner = pvdir::domain::volume_id::owner_tag("pvc-1");
    // A class cannot make these (CreateVolume refuses the subDir), so the IDs are forged.
    for subdir in [".pvdir", ".pvdir/x.json", "%2Epvdir"] {
        let id = format!("v1#nfs#10.0.0.1#/export#{subdir}#delete#hard#{owner}");
        let target = rig.path().join("pod");
        let published = rig.publish(&id, &target, Mode::MultiNodeMultiWriter, false);
        assert_eq!(code(published.await), Code::InvalidArgument, "{id}");
        assert_eq!(code(rig.delete(&id).await), Code::InvalidArgument, "{id}");
        assert!(!target.exists());
    }
    // The same directory name below the share's top is an ordinary volume directory.
    let id = format!("v1#nfs#10.0.0.1#/export#team/.pvdir#delete#hard#{owner}");
    let target = rig.path().join("pod");
    rig.publish(&id, &target, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    let mounts: Vec<String> = rig
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("mount"))
        .collect();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert!(mounts[0].starts_with("mount nfs4 10.0.0.1:/export/team/.pvdir -> "));
}
