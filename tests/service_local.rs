//! Service tier: the CSI services exactly as the server wires them, called through the
//! generated tonic traits, with the fake mount table (`FakeOs`) and real temporary
//! directories. Fast and unprivileged; the kernel proof is in the `real_*.rs` tests and
//! csi-sanity. The shared [`Rig`] and request builders are in `tests/common/service.rs`.
//!
//! This file: the local backend's controller side: CreateVolume (idempotency, conflicts,
//! capacity, names, parameters, access modes, topology), ListVolumes paging,
//! ValidateVolumeCapabilities, the advertised capabilities of both backends, and recovery
//! from a crash in the middle of create or delete.

#[allow(dead_code)]
mod common;

use std::collections::HashMap;

use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use pvdir::domain::access::BackendKind;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

#[tokio::test]
async fn local_create_is_idempotent_and_conflicts_are_already_exists() {
    let rig = Rig::local().await;
    let a = rig
        .create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let again = rig
        .create(create_req("pvc-a", 1000, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    assert_eq!(a, again);
    assert_eq!(a.capacity_bytes, 1000);
    assert_eq!(
        a.accessible_topology[0].segments["topology.pvdir.io/node"],
        "n1"
    );
    assert!(rig.path().join("root/volumes/pvc-a").is_dir());
    assert_eq!(
        code(
            rig.create(create_req("pvc-a", 2000, Mode::SingleNodeWriter, &[]))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            rig.create(create_req(
                "pvc-a",
                1000,
                Mode::SingleNodeWriter,
                &[("mountPermissions", "0700")]
            ))
            .await
        ),
        Code::AlreadyExists
    );
}

#[tokio::test]
async fn local_limit_only_capacity_is_reported_exactly() {
    let rig = Rig::local().await;
    let mut req = create_req("pvc-l", 0, Mode::SingleNodeWriter, &[]);
    req.capacity_range = Some(csi::CapacityRange {
        required_bytes: 0,
        limit_bytes: 4096,
    });
    assert_eq!(rig.create(req).await.unwrap().capacity_bytes, 4096);
}

#[tokio::test]
async fn unknown_parameter_is_invalid_argument_and_names_it() {
    let rig = Rig::local().await;
    let err = rig
        .create(create_req(
            "pvc-x",
            1,
            Mode::SingleNodeWriter,
            &[("mountPermission", "0777")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The issue asks that the message name the offending parameter.
    assert!(err.message().contains("mountPermission"));
    assert!(std::fs::read_dir(rig.path().join("root/volumes"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn any_name_up_to_128_characters_gets_its_own_directory() {
    let rig = Rig::local().await;
    let names = [
        "a/b",
        "a_b",
        "ünïcode 名前",
        "..",
        ".hidden",
        &"x".repeat(128),
        &"y".repeat(200),
    ];
    let mut ids = std::collections::HashSet::new();
    for name in names {
        let v = rig
            .create(create_req(name, 1, Mode::SingleNodeWriter, &[]))
            .await
            .unwrap();
        assert!(ids.insert(v.volume_id.clone()), "{name}");
        // Idempotent for the odd names too.
        assert_eq!(
            rig.create(create_req(name, 1, Mode::SingleNodeWriter, &[]))
                .await
                .unwrap(),
            v
        );
    }
    let dirs = std::fs::read_dir(rig.path().join("root/volumes"))
        .unwrap()
        .count();
    assert_eq!(dirs, names.len());
    // No name escaped the volumes directory: the root holds only the layout.
    let mut layout = common::names_in(&rig.path().join("root"));
    layout.sort();
    assert_eq!(
        layout,
        [
            "groups",
            "journal",
            "meta",
            "snapmeta",
            "snapshots",
            "volumes",
            "work"
        ]
    );
}

#[tokio::test]
async fn local_rejects_multi_node_and_block_everywhere() {
    let rig = Rig::local().await;
    for mode in [
        Mode::MultiNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter,
    ] {
        assert_eq!(
            code(rig.create(create_req("pvc-m", 1, mode, &[])).await),
            Code::InvalidArgument
        );
    }
    let mut block = create_req("pvc-b", 1, Mode::SingleNodeWriter, &[]);
    block.volume_capabilities[0].access_type =
        Some(csi::volume_capability::AccessType::Block(Default::default()));
    assert_eq!(code(rig.create(block).await), Code::InvalidArgument);
    let v = rig
        .create(create_req("pvc-ok", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let t = rig.path().join("t");
    assert_eq!(
        code(
            rig.publish(&v.volume_id, &t, Mode::MultiNodeMultiWriter, false)
                .await
        ),
        Code::InvalidArgument
    );
    assert!(rig.fake.calls().is_empty());
}

#[tokio::test]
async fn topology_must_include_this_node() {
    let rig = Rig::local().await;
    let mut req = create_req("pvc-t", 1, Mode::SingleNodeWriter, &[]);
    let other = csi::Topology {
        segments: HashMap::from([("topology.pvdir.io/node".to_string(), "n2".to_string())]),
    };
    req.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![other.clone()],
        preferred: vec![],
    });
    assert_eq!(code(rig.create(req.clone()).await), Code::ResourceExhausted);
    let mine = csi::Topology {
        segments: HashMap::from([("topology.pvdir.io/node".to_string(), "n1".to_string())]),
    };
    req.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![other.clone(), mine],
        preferred: vec![],
    });
    assert!(rig.create(req).await.is_ok());
    let cap = |t: Option<csi::Topology>| csi::GetCapacityRequest {
        accessible_topology: t,
        ..Default::default()
    };
    let here = rig
        .controller
        .get_capacity(Request::new(cap(None)))
        .await
        .unwrap()
        .into_inner();
    assert!(here.available_capacity > 0);
    let there = rig
        .controller
        .get_capacity(Request::new(cap(Some(other))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(there.available_capacity, 0);
}

#[tokio::test]
async fn list_volumes_pages_and_rejects_bad_tokens() {
    let rig = Rig::local().await;
    for i in 0..5 {
        rig.create(create_req(
            &format!("pvc-{i}"),
            i + 1,
            Mode::SingleNodeWriter,
            &[],
        ))
        .await
        .unwrap();
    }
    let list = |token: &str, max: i32| {
        rig.controller
            .list_volumes(Request::new(csi::ListVolumesRequest {
                max_entries: max,
                starting_token: token.into(),
            }))
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(&token, 2).await.unwrap().into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().capacity_bytes),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    assert_eq!(code(list("bogus", 2).await), Code::Aborted);
    assert_eq!(code(list("99", 2).await), Code::Aborted);
    assert_eq!(
        code(
            rig.controller
                .list_volumes(Request::new(csi::ListVolumesRequest {
                    max_entries: -1,
                    ..Default::default()
                }))
                .await
        ),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn validate_volume_capabilities() {
    let rig = Rig::local().await;
    let v = rig
        .create(create_req("pvc-v", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let validate = |id: &str, mode: Mode| {
        rig.controller.validate_volume_capabilities(Request::new(
            csi::ValidateVolumeCapabilitiesRequest {
                volume_id: id.into(),
                volume_capabilities: vec![cap(mode, &[])],
                ..Default::default()
            },
        ))
    };
    assert!(validate(&v.volume_id, Mode::SingleNodeWriter)
        .await
        .unwrap()
        .into_inner()
        .confirmed
        .is_some());
    assert!(validate(&v.volume_id, Mode::MultiNodeMultiWriter)
        .await
        .unwrap()
        .into_inner()
        .confirmed
        .is_none());
    assert_eq!(
        code(validate("v1#local#n1#missing", Mode::SingleNodeWriter).await),
        Code::NotFound
    );
    assert_eq!(
        code(validate("v1#local#n2#elsewhere", Mode::SingleNodeWriter).await),
        Code::NotFound
    );
    assert_eq!(
        code(validate("", Mode::SingleNodeWriter).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn capabilities_advertise_only_what_is_implemented() {
    use csi::controller_service_capability::rpc::Type;
    let types = |rig: Rig| async move {
        let caps = rig
            .controller
            .controller_get_capabilities(Request::new(Default::default()))
            .await
            .unwrap()
            .into_inner()
            .capabilities;
        caps.into_iter()
            .filter_map(|c| match c.r#type {
                Some(csi::controller_service_capability::Type::Rpc(r)) => {
                    Type::try_from(r.r#type).ok()
                }
                None => None,
            })
            .collect::<Vec<_>>()
    };
    let local = types(Rig::local().await).await;
    for t in [
        Type::ListVolumes,
        Type::CreateDeleteVolume,
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::GetSnapshot,
        Type::CloneVolume,
    ] {
        assert!(local.contains(&t), "{t:?}");
    }
    // Nothing here is attached, listed by node or modified: see README, "Capabilities".
    for t in [
        Type::PublishUnpublishVolume,
        Type::ListVolumesPublishedNodes,
        Type::GetVolume,
        Type::ModifyVolume,
    ] {
        assert!(!local.contains(&t), "{t:?}");
    }
    let nfs = types(Rig::nfs()).await;
    for t in [
        Type::CreateDeleteVolume,
        Type::CreateDeleteSnapshot,
        Type::GetSnapshot,
        Type::CloneVolume,
    ] {
        assert!(nfs.contains(&t), "{t:?}");
    }
    // NFS volumes and snapshots lie on every export of every class: not enumerable.
    assert!(!nfs.contains(&Type::ListVolumes));
    assert!(!nfs.contains(&Type::ListSnapshots));
    let _ = BackendKind::Nfs;
}

#[tokio::test]
async fn crash_between_record_and_directory_is_completed_by_the_retry() {
    let rig = Rig::local().await;
    let v = rig
        .create(create_req("pvc-crash", 7, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    // The state a crash after writing the record but before mkdir leaves behind.
    std::fs::remove_dir(rig.path().join("root/volumes/pvc-crash")).unwrap();
    assert_eq!(
        rig.create(create_req("pvc-crash", 7, Mode::SingleNodeWriter, &[]))
            .await
            .unwrap(),
        v
    );
    assert!(rig.path().join("root/volumes/pvc-crash").is_dir());
}

#[tokio::test]
async fn crash_in_the_middle_of_delete_is_completed_by_the_retry() {
    let rig = Rig::local().await;
    let v = rig
        .create(create_req("pvc-half", 7, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let dir = rig.path().join("root/volumes/pvc-half");
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::fs::write(dir.join("a/b/f"), b"x").unwrap();
    // A crash after the directory was removed but before the record: the volume still lists.
    std::fs::remove_dir_all(&dir).unwrap();
    let listed = rig
        .controller
        .list_volumes(Request::new(csi::ListVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.len(), 1);
    rig.delete(&v.volume_id).await.unwrap();
    assert!(!rig.path().join("root/meta/pvc-half.json").exists());
    let listed = rig
        .controller
        .list_volumes(Request::new(csi::ListVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(listed.is_empty());
}

#[tokio::test]
async fn local_delete_never_touches_a_directory_it_has_no_record_of() {
    let rig = Rig::local().await;
    // Something put a directory where a volume of this name would live, but create never ran.
    let dir = rig.path().join("root/volumes/pvc-foreign");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("data"), b"not ours").unwrap();
    rig.delete("v1#local#n1#pvc-foreign").await.unwrap();
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"not ours");
}
