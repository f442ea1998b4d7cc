//! Service tier (see `service_nfs_publish.rs` for the tier): stale NFS file handles. When the
//! server recreates an export (a restore, a failover), every existing mount of it answers ESTALE
//! forever. pvdir notices on the next call that needs the mount and replaces it; a server that
//! merely does not answer is not stale, and its mount is left alone. The kernel proof is in
//! `tests/vm_nfs.rs`.

#[allow(dead_code)]
mod common;

use std::path::Path;

use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use pvdir::csi::proto::node_server::Node as _;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

/// The mount-table changes made since `from`, as `unmount <path>` / `mount <path>`.
fn changes(rig: &Rig, from: usize) -> Vec<String> {
    rig.fake.calls()[from..]
        .iter()
        .map(|c| {
            let words: Vec<&str> = c.split(' ').collect();
            match words[0] {
                "unmount" => format!("unmount {}", words[1]),
                _ => format!(
                    "mount {}",
                    words[words.iter().position(|w| *w == "->").unwrap() + 1]
                ),
            }
        })
        .collect()
}

fn mounts_at(rig: &Rig, target: &Path) -> usize {
    rig.fake
        .table()
        .iter()
        .filter(|m| m.mount_point == target)
        .count()
}

#[tokio::test]
async fn republishing_a_stale_target_replaces_its_mount() {
    let rig = Rig::nfs();
    let v = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let t = rig.path().join("t");
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    let from = rig.fake.calls().len();
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    assert!(changes(&rig, from).is_empty(), "a healthy mount is kept");

    rig.fake.make_stale(&t);
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    let target = t.display();
    assert_eq!(
        changes(&rig, from),
        [format!("unmount {target}"), format!("mount {target}")]
    );
    assert_eq!(mounts_at(&rig, &t), 1, "replaced, not stacked");
}

#[tokio::test]
async fn republishing_against_a_dead_server_keeps_the_mount_and_says_unavailable() {
    let rig = Rig::nfs();
    let v = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let t = rig.path().join("t");
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    let from = rig.fake.calls().len();
    rig.fake.set_server_dead(true);
    let result = rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false).await;
    assert_eq!(code(result), Code::Unavailable, "retried until it answers");
    assert!(
        changes(&rig, from).is_empty(),
        "not stale: remounting would hang just the same"
    );
    rig.fake.set_server_dead(false);
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    assert_eq!(mounts_at(&rig, &t), 1);
}

#[tokio::test]
async fn a_stale_target_reports_an_abnormal_condition_and_still_unpublishes() {
    let rig = Rig::nfs();
    let v = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let t = rig.path().join("t");
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    rig.fake.make_stale(&t);
    let stats = rig
        .node
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: v.clone(),
            volume_path: t.to_string_lossy().into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(stats.volume_condition.is_some_and(|c| c.abnormal));
    rig.unpublish(&v, &t).await.unwrap();
    assert_eq!(mounts_at(&rig, &t), 0);
}

#[tokio::test]
async fn a_stale_export_mount_is_replaced_before_the_controller_works_below_it() {
    let rig = Rig::nfs();
    rig.create(seed_claim(0, "delete")).await.unwrap();
    let staging = rig.export_dir();
    let from = rig.fake.calls().len();
    rig.fake.make_stale(&staging);
    // Every step of this create runs below the staging mount; without the remount each would
    // answer ESTALE until the controller restarted.
    let v = rig.create(seed_claim(1, "delete")).await.unwrap().volume_id;
    let at = staging.display();
    assert_eq!(
        changes(&rig, from),
        [format!("unmount {at}"), format!("mount {at}")]
    );
    assert_eq!(mounts_at(&rig, &staging), 1, "replaced, not stacked");
    assert!(staging.join("default/www-web-1").is_dir());
    rig.delete(&v).await.unwrap();

    rig.fake.make_stale(&staging);
    let capacity = rig
        .controller
        .get_capacity(Request::new(csi::GetCapacityRequest {
            parameters: seed_claim(0, "delete").parameters,
            ..Default::default()
        }))
        .await;
    assert!(capacity.is_ok(), "{capacity:?}");
    assert_eq!(mounts_at(&rig, &staging), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_is_never_remounted_under_an_operation_in_flight() {
    let rig = std::sync::Arc::new(Rig::nfs());
    rig.create(seed_claim(0, "delete")).await.unwrap();
    let staging = rig.export_dir();
    // Claim 1's create is in the middle of its work below the mount...
    rig.fake.hold_op("read-records");
    let busy = {
        let rig = std::sync::Arc::clone(&rig);
        tokio::spawn(async move { rig.create(seed_claim(1, "delete")).await })
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), rig.fake.until_held())
        .await
        .expect("claim 1 reached its record read");
    // ...when the export goes stale and claim 2 wants it remounted.
    rig.fake.make_stale(&staging);
    let from = rig.fake.calls().len();
    let second = rig.create(seed_claim(2, "delete")).await;
    assert_eq!(
        code(second),
        Code::Aborted,
        "retried once the first is done"
    );
    assert!(
        changes(&rig, from).is_empty(),
        "no unmount while another operation works below the mount"
    );
    rig.fake.release_op();
    // The first fails on the stale handle (UNAVAILABLE, retried); what matters is that it
    // never ran against an unmounted staging directory.
    let _ = busy.await.unwrap();
    rig.create(seed_claim(2, "delete")).await.unwrap();
    let at = staging.display();
    assert_eq!(
        changes(&rig, from),
        [format!("unmount {at}"), format!("mount {at}")]
    );
}
