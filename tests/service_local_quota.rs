//! Service tier: sizes of local volumes with project quotas, against [`FakeQuotas`], which
//! records which directory is in which project and each project's limit. It proves the
//! order of steps, the bookkeeping and the codes; it proves nothing about the kernel, which
//! `vm_quota.rs` does on real XFS and ext4 filesystems in the VM.

#[allow(dead_code)]
mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::service::*;
use pvdir::os::quota::fake::FakeQuotas;
use pvdir::os::quota::{ProjectId, Support};
use tonic::Code;

use pvdir::csi::proto::volume_capability::access_mode::Mode;

const MIB: i64 = 1 << 20;

fn req(name: &str, bytes: i64, quota: &str) -> pvdir::csi::proto::CreateVolumeRequest {
    create_req(name, bytes, Mode::SingleNodeWriter, &[("quota", quota)])
}

impl Rig {
    fn volume_dir(&self, name: &str) -> std::path::PathBuf {
        self.path().join("root/volumes").join(name)
    }

    fn project(&self, name: &str) -> Option<ProjectId> {
        self.quotas.project_of(&self.volume_dir(name))
    }

    async fn list_all(&self) -> Vec<pvdir::csi::proto::Volume> {
        use pvdir::csi::proto::controller_server::Controller as _;
        let page = self
            .controller
            .list_volumes(tonic::Request::new(Default::default()))
            .await
            .unwrap()
            .into_inner();
        page.entries.into_iter().filter_map(|e| e.volume).collect()
    }

    fn record(&self, name: &str) -> Option<serde_json::Value> {
        let text =
            std::fs::read(self.path().join("root/meta").join(format!("{name}.json"))).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// The rig's filesystem made to look like it has `room` bytes to promise: a 1 GiB disk
/// whose files outside volumes take all the rest. Then GetCapacity, as the provisioner asks
/// it every minute or so: it is what counts what the volumes hold.
async fn leave_room(rig: &Rig, room: u64) {
    let (total, outside) = (1 << 30, (1 << 30) - room);
    rig.fake.pretend_disk(total, outside);
    rig.quotas.charge(None, outside, 0);
    rig.capacity().await;
}

#[tokio::test]
async fn each_volume_gets_its_own_project_limited_to_its_size() {
    let rig = Rig::local_with(FakeQuotas::default()).await;
    let v = rig
        .create(req("pvc-a", 10 * MIB + 1, "auto"))
        .await
        .unwrap();
    assert_eq!(v.capacity_bytes, 10 * MIB + 1);
    let project = rig.project("pvc-a").expect("the directory is in a project");
    // Rounded up to whole KiB: never below the size promised.
    assert_eq!(rig.quotas.limit_of(project), 10 * (1 << 20) + 1024);
    assert_eq!(rig.record("pvc-a").unwrap()["project"], project.get());
    // A retry is the same volume in the same project.
    let again = rig
        .create(req("pvc-a", 10 * MIB + 1, "auto"))
        .await
        .unwrap();
    assert_eq!(again, v);
    assert_eq!(rig.project("pvc-a"), Some(project));
}

#[tokio::test]
async fn concurrent_creates_get_distinct_projects() {
    let rig = Arc::new(Rig::local_with(FakeQuotas::default()).await);
    let creates = (0..32).map(|i| {
        let rig = Arc::clone(&rig);
        tokio::spawn(async move { rig.create(req(&format!("pvc-{i}"), MIB, "required")).await })
    });
    for c in creates {
        c.await.unwrap().unwrap();
    }
    let projects: HashSet<_> = (0..32)
        .map(|i| rig.project(&format!("pvc-{i}")).unwrap())
        .collect();
    assert_eq!(projects.len(), 32);
}

#[tokio::test]
async fn delete_clears_the_quota_and_the_id_is_not_handed_out_again_at_once() {
    let rig = Rig::local_with(FakeQuotas::default()).await;
    let a = rig.create(req("pvc-a", MIB, "auto")).await.unwrap();
    let project = rig.project("pvc-a").unwrap();
    rig.delete(&a.volume_id).await.unwrap();
    assert_eq!(rig.quotas.limit_of(project), 0);
    assert!(!rig.volume_dir("pvc-a").exists());
    rig.create(req("pvc-b", MIB, "auto")).await.unwrap();
    assert_ne!(rig.project("pvc-b"), Some(project));
}

#[tokio::test]
async fn an_id_with_files_charged_to_it_is_skipped() {
    let quotas = FakeQuotas::default();
    // Another tool's project, or a deleted volume's file still held open.
    quotas.charge(ProjectId::new(1 << 20), 4096, 1);
    let rig = Rig::local_with(quotas).await;
    rig.create(req("pvc-a", MIB, "auto")).await.unwrap();
    assert_eq!(rig.project("pvc-a"), ProjectId::new((1 << 20) + 1));
}

#[tokio::test]
async fn required_without_enforcement_is_failed_precondition_and_makes_nothing() {
    for support in [Support::None, Support::AccountedOnly] {
        let rig = Rig::local_with(FakeQuotas::with_support(support)).await;
        let got = rig.create(req("pvc-a", MIB, "required")).await;
        assert_eq!(code(got), Code::FailedPrecondition, "{support:?}");
        assert!(!rig.volume_dir("pvc-a").exists());
        assert!(rig.record("pvc-a").is_none());
    }
}

#[tokio::test]
async fn auto_without_support_and_off_everywhere_make_unlimited_volumes() {
    let rig = Rig::local_with(FakeQuotas::with_support(Support::None)).await;
    rig.create(req("pvc-a", MIB, "auto")).await.unwrap();
    assert_eq!(rig.project("pvc-a"), None);
    assert!(rig.record("pvc-a").unwrap().get("project").is_none());

    let rig = Rig::local_with(FakeQuotas::default()).await;
    rig.create(req("pvc-b", MIB, "off")).await.unwrap();
    assert_eq!(rig.project("pvc-b"), None);
    let bad = rig.create(req("pvc-c", MIB, "sometimes")).await;
    assert_eq!(code(bad), Code::InvalidArgument);
}

#[tokio::test]
async fn expansion_raises_the_limit_and_a_smaller_size_is_answered_with_the_current_one() {
    let rig = Rig::local_with(FakeQuotas::default()).await;
    let v = rig.create(req("pvc-a", 4 * MIB, "auto")).await.unwrap();
    let project = rig.project("pvc-a").unwrap();
    assert_eq!(rig.expand(&v.volume_id, 8 * MIB).await.unwrap(), 8 * MIB);
    assert_eq!(rig.quotas.limit_of(project), 8 << 20);
    // Idempotent, and never a shrink (the spec: already large enough is OK).
    assert_eq!(rig.expand(&v.volume_id, 8 * MIB).await.unwrap(), 8 * MIB);
    assert_eq!(rig.expand(&v.volume_id, 2 * MIB).await.unwrap(), 8 * MIB);
    assert_eq!(rig.quotas.limit_of(project), 8 << 20);
    // The create that made it still matches: a retried create is not a conflict.
    let again = rig.create(req("pvc-a", 4 * MIB, "auto")).await.unwrap();
    assert_eq!(again.capacity_bytes, 8 * MIB);
    // Listed at its new size.
    let listed = rig.list_all().await;
    assert_eq!(listed[0].capacity_bytes, 8 * MIB);
}

#[tokio::test]
async fn expansion_refusals_have_the_spec_codes() {
    let rig = Rig::local_with(FakeQuotas::default()).await;
    let v = rig.create(req("pvc-a", MIB, "auto")).await.unwrap();
    let missing = rig.expand("local:v1:n1:pvc-none", 2 * MIB).await;
    assert_eq!(code(missing), Code::NotFound);
    assert_eq!(code(rig.expand("", 2 * MIB).await), Code::InvalidArgument);
    assert_eq!(
        code(rig.expand(&v.volume_id, 0).await),
        Code::InvalidArgument
    );
    use pvdir::csi::proto::controller_server::Controller as _;
    let no_range = rig
        .controller
        .controller_expand_volume(tonic::Request::new(
            pvdir::csi::proto::ControllerExpandVolumeRequest {
                volume_id: v.volume_id.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(no_range), Code::InvalidArgument);
    assert_eq!(
        code(rig.expand(&v.volume_id, 1 << 60).await),
        Code::ResourceExhausted
    );
    assert_eq!(rig.quotas.limit_of(rig.project("pvc-a").unwrap()), 1 << 20);
}

#[tokio::test]
async fn capacity_counts_what_quotas_promised_and_creates_past_it_are_refused() {
    let rig = Rig::local_with(FakeQuotas::default()).await;
    leave_room(&rig, (10 * MIB) as u64).await;
    assert_eq!(rig.capacity().await, 10 * MIB);
    let a = rig.create(req("pvc-a", 4 * MIB, "auto")).await.unwrap();
    assert_eq!(rig.capacity().await, 6 * MIB);
    let over = rig.create(req("pvc-b", 7 * MIB, "auto")).await;
    assert_eq!(code(over), Code::ResourceExhausted);
    assert!(!rig.volume_dir("pvc-b").exists() && rig.record("pvc-b").is_none());
    rig.create(req("pvc-b", 6 * MIB, "auto")).await.unwrap();
    assert_eq!(rig.capacity().await, 0);
    // Unlimited volumes promise nothing and may still be made.
    rig.create(req("pvc-c", 6 * MIB, "off")).await.unwrap();
    rig.delete(&a.volume_id).await.unwrap();
    assert_eq!(rig.capacity().await, 4 * MIB);
    // The promises are rebuilt from the records at start-up.
    let rig = rig.restart_local().await;
    assert_eq!(rig.capacity().await, 4 * MIB);
}

#[tokio::test]
async fn concurrent_creates_never_promise_more_than_the_room() {
    let rig = Arc::new(Rig::local_with(FakeQuotas::default()).await);
    leave_room(&rig, (10 * MIB) as u64).await;
    let creates = (0..8).map(|i| {
        let rig = Arc::clone(&rig);
        tokio::spawn(async move { rig.create(req(&format!("pvc-{i}"), 3 * MIB, "auto")).await })
    });
    let mut made = 0;
    for c in creates {
        match c.await.unwrap() {
            Ok(_) => made += 1,
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted),
        }
    }
    assert_eq!(made, 3, "3 × 3 MiB fit in 10 MiB, a fourth does not");
}

#[tokio::test]
async fn a_crash_between_the_steps_of_create_is_completed_by_the_replay() {
    let rig = Rig::local_with(FakeQuotas::default()).await;
    rig.quotas.fail_next("assign");
    let got = rig.create(req("pvc-a", MIB, "auto")).await;
    assert_eq!(code(got), Code::Internal);
    let recorded = rig.record("pvc-a").unwrap()["project"].as_u64().unwrap() as u32;
    assert_eq!(rig.project("pvc-a"), None);
    let rig = rig.restart_local().await;
    let project = ProjectId::new(recorded).unwrap();
    assert_eq!(rig.project("pvc-a"), Some(project));
    assert_eq!(rig.quotas.limit_of(project), 1 << 20);
    // And the retry the provisioner makes answers with the same volume.
    let v = rig.create(req("pvc-a", MIB, "auto")).await.unwrap();
    assert_eq!(v.capacity_bytes, MIB);
    assert_eq!(rig.project("pvc-a"), Some(project));
}

#[tokio::test]
async fn a_crash_between_the_steps_of_expand_and_delete_is_completed() {
    let rig = Rig::local_with(FakeQuotas::default()).await;
    let v = rig.create(req("pvc-a", MIB, "auto")).await.unwrap();
    let project = rig.project("pvc-a").unwrap();
    // The new size is committed; raising the limit fails.
    rig.quotas.fail_next("set_limit");
    assert_eq!(
        code(rig.expand(&v.volume_id, 3 * MIB).await),
        Code::Internal
    );
    let rig = rig.restart_local().await;
    assert_eq!(rig.quotas.limit_of(project), 3 << 20);
    assert_eq!(rig.expand(&v.volume_id, 3 * MIB).await.unwrap(), 3 * MIB);

    // The directory goes, clearing the limit fails: the record stays, so the retry knows the
    // project and clears it.
    rig.quotas.fail_next("set_limit");
    assert_eq!(code(rig.delete(&v.volume_id).await), Code::Internal);
    assert!(rig.record("pvc-a").is_some());
    assert_eq!(rig.quotas.limit_of(project), 3 << 20);
    rig.delete(&v.volume_id).await.unwrap();
    assert_eq!(rig.quotas.limit_of(project), 0);
    assert!(rig.record("pvc-a").is_none());
}

#[tokio::test]
async fn volumes_from_before_quotas_keep_working() {
    let rig = Rig::local_with(FakeQuotas::with_support(Support::None)).await;
    let v = rig.create(req("pvc-old", MIB, "auto")).await.unwrap();
    // The node's filesystem gains quotas; the old volume is served as it was.
    rig.quotas.set_support(Support::Enforced);
    let rig = rig.restart_local().await;
    assert_eq!(rig.create(req("pvc-old", MIB, "auto")).await.unwrap(), v);
    assert_eq!(rig.project("pvc-old"), None);
    assert_eq!(rig.expand(&v.volume_id, 2 * MIB).await.unwrap(), 2 * MIB);
    rig.create(req("pvc-new", MIB, "auto")).await.unwrap();
    assert!(rig.project("pvc-new").is_some());
    rig.delete(&v.volume_id).await.unwrap();
    assert!(!rig.volume_dir("pvc-old").exists());
}

#[tokio::test]
async fn another_nodes_volume_is_finished_on_its_node_and_node_expansion_raises_the_limit() {
    use pvdir::csi::proto as csi;
    use pvdir::csi::proto::controller_server::Controller as _;
    use pvdir::csi::proto::node_server::Node as _;
    let rig = Rig::local_with(FakeQuotas::default()).await;
    // The resizer may call any node's local controller: one that does not hold the volume
    // leaves the work to the node that does.
    let elsewhere = rig
        .controller
        .controller_expand_volume(tonic::Request::new(csi::ControllerExpandVolumeRequest {
            volume_id: "v1#local#n2#pvc-x".into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 5 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (elsewhere.capacity_bytes, elsewhere.node_expansion_required),
        (5 * MIB, true)
    );

    let v = rig.create(req("pvc-a", MIB, "auto")).await.unwrap();
    let project = rig.project("pvc-a").unwrap();
    let node_expand = |id: &str, path: &str, bytes: i64| csi::NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        capacity_range: (bytes > 0).then_some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let grown = rig
        .node
        .node_expand_volume(tonic::Request::new(node_expand(
            &v.volume_id,
            "/pod/mount",
            3 * MIB,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 3 * MIB);
    assert_eq!(rig.quotas.limit_of(project), 3 << 20);
    // Without a range: the size it has.
    let same = rig
        .node
        .node_expand_volume(tonic::Request::new(node_expand(
            &v.volume_id,
            "/pod/mount",
            0,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.capacity_bytes, 3 * MIB);
    for (bad, want) in [
        (node_expand("", "/pod/mount", MIB), Code::InvalidArgument),
        (node_expand(&v.volume_id, "", MIB), Code::InvalidArgument),
        (
            node_expand("v1#local#n1#pvc-none", "some/path", MIB),
            Code::NotFound,
        ),
        (
            node_expand("v1#local#n2#pvc-x", "/pod/mount", MIB),
            Code::NotFound,
        ),
        (
            node_expand("someone-elses", "some/path", MIB),
            Code::NotFound,
        ),
    ] {
        let got = rig.node.node_expand_volume(tonic::Request::new(bad)).await;
        assert_eq!(code(got), want);
    }
}
