//! Service tier: snapshots, restores and clones on the local backend, through the CSI
//! services as the server wires them, over the fake mount table and real temporary
//! directories (the copy itself is the real one; the kernel-specific ways of copying are
//! proven in the VM).

#[allow(dead_code)]
mod common;

use std::fs;
use std::time::Duration;

use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use pvdir::os::quota::fake::FakeQuotas;
use pvdir::os::quota::Support;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

async fn volume(rig: &Rig, name: &str) -> String {
    rig.create(create_req(name, 1 << 20, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap()
        .volume_id
}

fn fill(dir: &std::path::Path, files: usize) {
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 5));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join(format!("f{i}")), format!("content {i}")).unwrap();
    }
}

#[tokio::test]
async fn a_snapshot_keeps_the_content_it_was_taken_with_and_restores_and_clones_copy_it() {
    let rig = Rig::local().await;
    let src = volume(&rig, "pvc-src").await;
    let dir = rig.local_dir(&src);
    fs::write(dir.join("before"), b"taken").unwrap();
    fs::create_dir(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("sub/link")).unwrap();
    let (snap, _) = rig.snapshot_ready("snap-1", &src).await;
    assert_eq!(snap.source_volume_id, src);
    assert_eq!(snap.size_bytes, 1 << 20);
    assert!(snap.creation_time.is_some());
    fs::write(dir.join("after"), b"not in the snapshot").unwrap();

    let restored = rig
        .create(create_from(
            "pvc-restored",
            1 << 20,
            from_snapshot(&snap.snapshot_id),
        ))
        .await
        .unwrap();
    assert!(restored.content_source.is_some());
    let rdir = rig.local_dir(&restored.volume_id);
    assert_eq!(fs::read(rdir.join("before")).unwrap(), b"taken");
    assert!(!rdir.join("after").exists());
    assert_eq!(
        fs::read_link(rdir.join("sub/link")).unwrap(),
        std::path::Path::new("/etc/passwd")
    );

    let clone = rig
        .create(create_from("pvc-clone", 2 << 20, from_volume(&src)))
        .await
        .unwrap();
    let cdir = rig.local_dir(&clone.volume_id);
    assert_eq!(
        fs::read(cdir.join("after")).unwrap(),
        b"not in the snapshot"
    );

    // Deleting the source leaves the snapshot and both copies; deleting the snapshot leaves
    // what was restored from it.
    rig.delete(&src).await.unwrap();
    rig.delete_snapshot(&snap.snapshot_id).await.unwrap();
    assert_eq!(fs::read(rdir.join("before")).unwrap(), b"taken");
    assert!(cdir.join("before").exists());
    assert!(!rig.path().join("root/snapshots/snap-1").exists());
    assert!(!rig.path().join("root/snapmeta/snap-1.json").exists());
    rig.delete_snapshot(&snap.snapshot_id).await.unwrap();
}

#[tokio::test]
async fn create_snapshot_is_idempotent_and_refuses_what_it_cannot_do() {
    let rig = Rig::local().await;
    let a = volume(&rig, "pvc-a").await;
    let b = volume(&rig, "pvc-b").await;
    let (first, _) = rig.snapshot_ready("snap", &a).await;
    let again = rig.snapshot("snap", &a).await.unwrap();
    assert_eq!(first, again, "same name and source: the same snapshot");
    assert_eq!(code(rig.snapshot("snap", &b).await), Code::AlreadyExists);
    assert_eq!(
        code(rig.snapshot("other", "v1#local#n1#pvc-gone").await),
        Code::NotFound
    );
    assert_eq!(
        code(rig.snapshot("other", "not-ours").await),
        Code::NotFound
    );
    assert_eq!(
        code(rig.snapshot("other", "v1#local#n2#pvc-a").await),
        Code::NotFound
    );
    assert_eq!(
        code(rig.snapshot("other", "v1#local#n1#..").await),
        Code::InvalidArgument
    );
    assert_eq!(code(rig.snapshot("", &a).await), Code::InvalidArgument);
    assert_eq!(code(rig.snapshot("other", "").await), Code::InvalidArgument);
    let with_param = rig
        .controller
        .create_snapshot(Request::new(csi::CreateSnapshotRequest {
            name: "other".into(),
            source_volume_id: a.clone(),
            parameters: [("nope".to_string(), "1".to_string())].into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(with_param), Code::InvalidArgument);
    assert!(!rig.path().join("root/snapmeta/other.json").exists());
    // Deleting: an ID pvdir never made is done already; a malformed one of pvdir's is not.
    rig.delete_snapshot("not-ours").await.unwrap();
    assert_eq!(
        code(rig.delete_snapshot("v1#snap#local#n1#..").await),
        Code::InvalidArgument
    );
    assert_eq!(code(rig.delete_snapshot("").await), Code::InvalidArgument);
}

#[tokio::test]
async fn restores_and_clones_refuse_missing_and_larger_sources_and_make_nothing() {
    let rig = Rig::local().await;
    let src = volume(&rig, "pvc-src").await;
    let (snap, _) = rig.snapshot_ready("snap", &src).await;
    let small = |source| create_from("pvc-small", 1 << 19, source);
    assert_eq!(
        code(rig.create(small(from_snapshot(&snap.snapshot_id))).await),
        Code::OutOfRange
    );
    assert_eq!(
        code(rig.create(small(from_volume(&src))).await),
        Code::OutOfRange
    );
    let missing = |source| create_from("pvc-x", 1 << 20, source);
    assert_eq!(
        code(
            rig.create(missing(from_snapshot("v1#snap#local#n1#nope")))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(rig.create(missing(from_snapshot("nope"))).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            rig.create(missing(from_volume("v1#local#n1#pvc-nope")))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(rig.create(missing(from_snapshot(""))).await),
        Code::InvalidArgument
    );
    for name in ["pvc-small", "pvc-x"] {
        assert!(!rig.path().join("root/volumes").join(name).exists());
        assert!(!rig
            .path()
            .join("root/meta")
            .join(format!("{name}.json"))
            .exists());
    }
    // No size asked for: the volume is not limited and holds the source.
    let any = rig
        .create(create_from("pvc-any", 0, from_snapshot(&snap.snapshot_id)))
        .await
        .unwrap();
    assert_eq!(any.capacity_bytes, 0);
    // The same name with another source is another request.
    assert_eq!(
        code(
            rig.create(create_from("pvc-any", 0, from_volume(&src)))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            rig.create(create_req("pvc-any", 0, Mode::SingleNodeWriter, &[]))
                .await
        ),
        Code::AlreadyExists
    );
}

#[tokio::test]
async fn a_long_copy_answers_not_ready_and_the_retries_finish_it() {
    let rig = Rig::local_with_copy_budget(Duration::ZERO).await;
    let src = volume(&rig, "pvc-src").await;
    fill(&rig.local_dir(&src), 40);
    let first = rig.snapshot("snap", &src).await.unwrap();
    assert!(!first.ready_to_use, "no budget: nothing copied yet");
    // Not ready: not restorable yet (the CO waits for ready; a retry would be answered).
    assert_eq!(
        code(
            rig.create(create_from(
                "pvc-early",
                1 << 20,
                from_snapshot(&first.snapshot_id)
            ))
            .await
        ),
        Code::Aborted
    );
    let (snap, calls) = rig.snapshot_ready("snap", &src).await;
    assert!(calls > 1, "{calls} calls");
    assert_eq!(snap.creation_time, first.creation_time);
    // A restore takes retries too; until done the volume is neither listed nor publishable.
    let req = || create_from("pvc-restored", 1 << 20, from_snapshot(&snap.snapshot_id));
    assert_eq!(code(rig.create(req()).await), Code::Aborted);
    let listed = rig
        .controller
        .list_volumes(Request::new(csi::ListVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1, "only the source: {listed:?}");
    let target = rig.path().join("target");
    fs::create_dir(&target).unwrap();
    let publish = rig
        .publish(
            "v1#local#n1#pvc-restored",
            &target,
            Mode::SingleNodeWriter,
            false,
        )
        .await;
    assert_eq!(code(publish), Code::NotFound);
    let restored = loop {
        match rig.create(req()).await {
            Ok(v) => break v,
            Err(s) => assert_eq!(s.code(), Code::Aborted),
        }
    };
    let rdir = rig.local_dir(&restored.volume_id);
    for i in 0..40 {
        let f = rdir.join(format!("d{}/f{i}", i % 5));
        assert_eq!(fs::read_to_string(f).unwrap(), format!("content {i}"));
    }
    assert!(!rig.path().join("root/work/pvc-restored").exists());
}

#[tokio::test]
async fn a_copy_cut_by_a_restart_is_finished_by_the_retry() {
    let rig = Rig::local_with_copy_budget(Duration::ZERO).await;
    let src = volume(&rig, "pvc-src").await;
    fill(&rig.local_dir(&src), 30);
    // Some progress, then the driver goes away.
    for _ in 0..5 {
        rig.snapshot("snap", &src).await.unwrap();
    }
    let rig = rig.restart_local().await;
    let (snap, _) = rig.snapshot_ready("snap", &src).await;
    let restored = loop {
        match rig
            .create(create_from(
                "pvc-r",
                1 << 20,
                from_snapshot(&snap.snapshot_id),
            ))
            .await
        {
            Ok(v) => break v,
            Err(s) => assert_eq!(s.code(), Code::Aborted),
        }
    };
    let rdir = rig.local_dir(&restored.volume_id);
    assert_eq!(common::names_in(&rdir).len(), 5);
    assert_eq!(
        fs::read_to_string(rdir.join("d4/f29")).unwrap(),
        "content 29"
    );
}

#[tokio::test]
async fn calls_on_a_snapshot_or_its_source_wait_for_a_copy_in_progress() {
    let rig = std::sync::Arc::new(Rig::local().await);
    let src = volume(&rig, "pvc-src").await;
    rig.fake.hold_op("copy-tree");
    let busy = {
        let (rig, src) = (rig.clone(), src.clone());
        tokio::spawn(async move { rig.snapshot("snap", &src).await })
    };
    rig.fake.until_held().await;
    assert_eq!(code(rig.snapshot("snap", &src).await), Code::Aborted);
    assert_eq!(code(rig.delete(&src).await), Code::Aborted);
    assert_eq!(
        code(
            rig.create(create_from("pvc-c", 1 << 20, from_volume(&src)))
                .await
        ),
        Code::Aborted
    );
    rig.fake.release_op();
    assert!(busy.await.unwrap().unwrap().ready_to_use);
}

#[tokio::test]
async fn list_snapshots_pages_stay_stable_across_creates_and_deletes_and_filter() {
    let rig = Rig::local().await;
    let a = volume(&rig, "pvc-a").await;
    let b = volume(&rig, "pvc-b").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let source = if i % 2 == 0 { &a } else { &b };
        ids.push(
            rig.snapshot_ready(&format!("snap-{i}"), source)
                .await
                .0
                .snapshot_id,
        );
    }
    let page = |token: &str, max: i32| csi::ListSnapshotsRequest {
        starting_token: token.into(),
        max_entries: max,
        ..Default::default()
    };
    let first = rig.list_snapshots(page("", 2)).await.unwrap();
    assert_eq!(first.entries.len(), 2);
    let seen: Vec<String> = first
        .entries
        .iter()
        .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
        .collect();
    // A snapshot already listed goes, and one sorting before the token comes: neither
    // shifts the next page.
    rig.delete_snapshot(&seen[0]).await.unwrap();
    rig.snapshot_ready("snap-0a", &a).await;
    let rest = rig
        .list_snapshots(page(&first.next_token, 0))
        .await
        .unwrap();
    let rest_ids: Vec<String> = rest
        .entries
        .iter()
        .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
        .collect();
    assert_eq!(rest_ids, ids[2..].to_vec());
    assert!(rest.next_token.is_empty());

    let by_source = rig
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: b.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_source.entries.len(), 2);
    let by_id = rig
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: ids[3].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_id.entries.len(), 1);
    for absent in ["nope", "v1#snap#local#n1#nope"] {
        let none = rig
            .list_snapshots(csi::ListSnapshotsRequest {
                snapshot_id: absent.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.entries.is_empty());
    }
    assert_eq!(
        code(rig.list_snapshots(page("garbage", 0)).await),
        Code::Aborted
    );
    assert_eq!(
        code(rig.list_snapshots(page("", -1)).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_restored_volume_gets_its_own_quota() {
    let quotas = FakeQuotas::with_support(Support::Enforced);
    let rig = Rig::local_with(quotas.clone()).await;
    let src = volume(&rig, "pvc-src").await;
    fs::write(rig.local_dir(&src).join("f"), b"x").unwrap();
    let (snap, _) = rig.snapshot_ready("snap", &src).await;
    let restored = rig
        .create(create_from(
            "pvc-r",
            4 << 20,
            from_snapshot(&snap.snapshot_id),
        ))
        .await
        .unwrap();
    let (s, r) = (rig.local_dir(&src), rig.local_dir(&restored.volume_id));
    let (ps, pr) = (
        quotas.project_of(&s).unwrap(),
        quotas.project_of(&r).unwrap(),
    );
    assert_ne!(ps, pr);
    assert_eq!(quotas.limit_of(pr), 4 << 20);
    assert!(r.join("f").exists());
}

#[tokio::test]
async fn a_copy_that_cannot_be_made_leaves_nothing_behind() {
    let rig = Rig::local().await;
    let src = volume(&rig, "pvc-src").await;
    let (ok, _) = rig.snapshot_ready("snap-ok", &src).await;
    // A pod builds a tree deeper than a copy follows.
    let mut deep = rig.local_dir(&src);
    for _ in 0..=pvdir::os::safe_fs::MAX_DEPTH {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    assert_eq!(
        code(rig.snapshot("snap", &src).await),
        Code::FailedPrecondition
    );
    assert!(!rig.path().join("root/snapmeta/snap.json").exists());
    assert!(!rig.path().join("root/snapshots/snap").exists());
    let clone = rig
        .create(create_from("pvc-clone", 1 << 20, from_volume(&src)))
        .await;
    assert_eq!(code(clone), Code::FailedPrecondition);
    for gone in ["volumes/pvc-clone", "meta/pvc-clone.json", "work/pvc-clone"] {
        assert!(!rig.path().join("root").join(gone).exists(), "{gone}");
    }
    // The provisioner may try again later: the same name is free, and a restore from the
    // snapshot taken before works.
    rig.create(create_from(
        "pvc-clone",
        1 << 20,
        from_snapshot(&ok.snapshot_id),
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn nonsense_sources_and_other_nodes_snapshots_are_refused() {
    let rig = Rig::local().await;
    let req = create_from("pvc-self", 1 << 20, from_volume("v1#local#n1#pvc-self"));
    assert_eq!(code(rig.create(req).await), Code::InvalidArgument);
    assert_eq!(
        code(rig.delete_snapshot("v1#snap#local#n2#snap").await),
        Code::FailedPrecondition
    );
}
