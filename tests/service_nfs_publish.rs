//! Service tier: the CSI services exactly as the server wires them, called through the
//! generated tonic traits, with the fake mount table (`FakeOs`) and real temporary
//! directories. Fast and unprivileged; the kernel proof is in the `real_*.rs` tests and
//! csi-sanity. The shared [`Rig`] and request builders are in `tests/common/service.rs`.
//!
//! This file: NFS node publish and volume contexts: static PVs (the attributes' path, stats
//! without a context), the keys Kubernetes adds to a dynamic volume's context, and classes
//! with the `ro` mount option.

#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::path::Path;

use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::node_server::Node as _;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

#[tokio::test]
async fn nfs_static_pv_mounts_the_attributes_path() {
    let rig = Rig::nfs();
    let t = rig.path().join("static");
    let mut req = publish_req(
        "my-static-pv",
        &t,
        Mode::MultiNodeReaderOnly,
        false,
        &["hard"],
    );
    req.volume_context = HashMap::from([
        ("server".to_string(), "nfs.example".to_string()),
        ("share".to_string(), "/srv/nfs".to_string()),
        ("subDir".to_string(), "web/html".to_string()),
        (
            "csi.storage.k8s.io/pod.name".to_string(),
            "web-0".to_string(),
        ),
    ]);
    rig.node
        .node_publish_volume(Request::new(req.clone()))
        .await
        .unwrap();
    let last = rig.fake.calls().last().cloned().unwrap();
    assert_eq!(
        last,
        format!(
            "mount nfs4 nfs.example:/srv/nfs/web/html -> {} ro=true opts=hard",
            t.display()
        )
    );
    req.volume_context.insert("subDir".into(), "../etc".into());
    req.target_path = rig.path().join("static2").to_string_lossy().into();
    assert_eq!(
        code(
            rig.node
                .node_publish_volume(Request::new(req.clone()))
                .await
        ),
        Code::InvalidArgument
    );
    req.volume_context.insert("colour".into(), "blue".into());
    assert_eq!(
        code(rig.node.node_publish_volume(Request::new(req)).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn nfs_dynamic_publish_ignores_the_keys_kubernetes_adds_to_the_context() {
    let rig = Rig::nfs();
    let v = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let t = rig.path().join("t");
    let mut req = publish_req(&v, &t, Mode::MultiNodeMultiWriter, false, &["hard"]);
    req.volume_context = HashMap::from([
        (
            "storage.kubernetes.io/csiProvisionerIdentity".to_string(),
            "1732-nfs.pvdir.io".to_string(),
        ),
        (
            "csi.storage.k8s.io/pod.name".to_string(),
            "web-0".to_string(),
        ),
        (
            "csi.storage.k8s.io/pod.namespace".to_string(),
            "default".to_string(),
        ),
        (
            "csi.storage.k8s.io/ephemeral".to_string(),
            "false".to_string(),
        ),
    ]);
    rig.node
        .node_publish_volume(Request::new(req))
        .await
        .unwrap();
    assert!(rig.fake.is_mounted(&t));
}

#[tokio::test]
async fn static_nfs_volumes_report_stats_without_their_context() {
    let rig = Rig::nfs();
    let t = rig.path().join("static");
    let mut req = publish_req(
        "my-static-pv",
        &t,
        Mode::MultiNodeMultiWriter,
        false,
        &["hard"],
    );
    req.volume_context = HashMap::from([
        ("server".to_string(), "nfs.example".to_string()),
        ("share".to_string(), "/srv/nfs".to_string()),
    ]);
    rig.node
        .node_publish_volume(Request::new(req))
        .await
        .unwrap();
    let stats = |p: &Path| {
        rig.node
            .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
                volume_id: "my-static-pv".into(),
                volume_path: p.to_string_lossy().into(),
                staging_target_path: String::new(),
            }))
    };
    assert_eq!(stats(&t).await.unwrap().into_inner().usage.len(), 2);
    assert_eq!(
        code(stats(&rig.path().join("elsewhere")).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn a_class_with_ro_mount_option_publishes_idempotently() {
    let rig = Rig::nfs();
    let mut req = seed_claim(0, "delete");
    req.volume_capabilities = vec![cap(Mode::MultiNodeReaderOnly, &["ro", "nfsvers=4.2"])];
    // The controller still writes below the export: its staging mount drops `ro`.
    let v = rig.create(req).await.unwrap().volume_id;
    assert!(
        rig.fake.calls()[0].ends_with("opts=nfsvers=4.2"),
        "{:?}",
        rig.fake.calls()
    );
    let t = rig.path().join("t");
    for _ in 0..2 {
        let req = publish_req(
            &v,
            &t,
            Mode::MultiNodeMultiWriter,
            false,
            &["ro", "nfsvers=4.2"],
        );
        rig.node
            .node_publish_volume(Request::new(req))
            .await
            .unwrap();
    }
    assert!(rig
        .fake
        .table()
        .iter()
        .any(|m| m.mount_point == t && m.readonly()));
}

/// A PV's `mountOptions` reach the node unchecked by the controller (a static PV never passes
/// CreateVolume). One option must stay one option: `hard,remount` would be joined into the
/// `-o` list as two.
#[tokio::test]
async fn node_refuses_a_mount_option_that_smuggles_in_others() {
    let rig = Rig::nfs();
    for bad in [
        "hard,remount",
        "vers=4.2 sync",
        "remount",
        "make-shared",
        "",
    ] {
        let t = rig.path().join("static");
        let mut req = publish_req(
            "my-static-pv",
            &t,
            Mode::MultiNodeMultiWriter,
            false,
            &[bad],
        );
        req.volume_context = HashMap::from([
            ("server".to_string(), "nfs.example".to_string()),
            ("share".to_string(), "/srv/nfs".to_string()),
        ]);
        assert_eq!(
            code(rig.node.node_publish_volume(Request::new(req)).await),
            Code::InvalidArgument,
            "{bad:?}"
        );
    }
    assert!(rig.fake.calls().is_empty(), "{:?}", rig.fake.calls());
}
