//! Service tier: ListVolumes and ListSnapshots on NFS through the generated CSI traits, with the
//! fake mount table and a temporary directory standing in for the export named by
//! `--nfs-export`. csi-sanity runs the same RPCs against real NFS in the VM
//! (`tests/vm/guest/csi-sanity-nfs.sh`).

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;

use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use tonic::{Code, Request};

const SEED_EXPORT: &str = "server=10.0.0.1;share=/export/;mountOptions=hard,nfsvers=4.2";

/// Every volume ID, page by page of `max` entries.
async fn list_all(rig: &Rig, max: i32) -> Vec<String> {
    let (mut ids, mut token) = (Vec::new(), String::new());
    loop {
        let page = rig
            .controller
            .list_volumes(Request::new(csi::ListVolumesRequest {
                max_entries: max,
                starting_token: token,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(max == 0 || page.entries.len() <= max as usize);
        ids.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id),
        );
        if page.next_token.is_empty() {
            return ids;
        }
        token = page.next_token;
    }
}

#[tokio::test]
async fn nfs_lists_exactly_the_volumes_it_answered_with() {
    use csi::controller_service_capability::rpc::Type;
    let rig = Rig::nfs_listing(&[SEED_EXPORT]);
    let caps = rig.controller_rpcs().await;
    assert!(caps.contains(&Type::ListVolumes));
    assert!(caps.contains(&Type::ListSnapshots));

    let mut made = BTreeSet::new();
    for (ordinal, on_delete) in [(0, "delete"), (1, "retain"), (2, "archive")] {
        made.insert(
            rig.create(seed_claim(ordinal, on_delete))
                .await
                .unwrap()
                .volume_id,
        );
    }
    // An archive and a claim still being made are no volumes the CO knows.
    let gone = rig
        .create(seed_claim(3, "archive"))
        .await
        .unwrap()
        .volume_id;
    rig.delete(&gone).await.unwrap();
    let listed = list_all(&rig, 2).await;
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), made);
    assert_eq!(listed.len(), made.len(), "each volume once: {listed:?}");
    assert_eq!(list_all(&rig, 0).await, listed, "one page, same order");

    // The entries carry what CreateVolume answered.
    let page = rig
        .controller
        .list_volumes(Request::new(Default::default()))
        .await
        .unwrap()
        .into_inner();
    for v in page.entries.iter().map(|e| e.volume.as_ref().unwrap()) {
        assert_eq!(v.capacity_bytes, 1 << 30);
        assert!(v.accessible_topology.is_empty());
    }
    assert_eq!(
        rig.controller
            .list_volumes(Request::new(csi::ListVolumesRequest {
                max_entries: 1,
                starting_token: "not-a-token".into(),
            }))
            .await
            .unwrap_err()
            .code(),
        Code::Aborted
    );
}

#[tokio::test]
async fn nfs_lists_snapshots_by_source_and_page() {
    let rig = Rig::nfs_listing(&[SEED_EXPORT]);
    let a = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let b = rig.create(seed_claim(1, "delete")).await.unwrap().volume_id;
    let mut made = BTreeSet::new();
    for (name, source) in [("s1", &a), ("s2", &a), ("s3", &b)] {
        made.insert(rig.snapshot_ready(name, source).await.0.snapshot_id);
    }
    let all = rig
        .list_snapshots(Default::default())
        .await
        .unwrap()
        .entries;
    let ids: BTreeSet<String> = all
        .iter()
        .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
        .collect();
    assert_eq!(ids, made);
    let of_a = rig
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: a.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .entries;
    assert_eq!(of_a.len(), 2);
    // Paged one by one, a snapshot deleted between pages shifts nothing.
    let first = rig
        .list_snapshots(csi::ListSnapshotsRequest {
            max_entries: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let first_id = first.entries[0]
        .snapshot
        .as_ref()
        .unwrap()
        .snapshot_id
        .clone();
    rig.delete_snapshot(&first_id).await.unwrap();
    let rest = rig
        .list_snapshots(csi::ListSnapshotsRequest {
            starting_token: first.next_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .entries;
    assert_eq!(rest.len(), 2);
}

#[tokio::test]
async fn nfs_listing_fails_whole_on_a_dead_server_and_is_off_without_exports() {
    use csi::controller_service_capability::rpc::Type;
    let rig = Rig::nfs_listing(&[SEED_EXPORT]);
    rig.create(seed_claim(0, "delete")).await.unwrap();
    rig.fake.set_server_dead(true);
    let status = rig
        .controller
        .list_volumes(Request::new(Default::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    rig.fake.set_server_dead(false);
    assert_eq!(list_all(&rig, 0).await.len(), 1);

    let plain = Rig::nfs();
    let caps = plain.controller_rpcs().await;
    assert!(!caps.contains(&Type::ListVolumes));
    assert!(!caps.contains(&Type::ListSnapshots));
    assert_eq!(
        plain
            .controller
            .list_volumes(Request::new(Default::default()))
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented
    );
}
