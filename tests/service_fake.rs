//! Service tier: the CSI services exactly as the server wires them, called through the
//! generated tonic traits, with the fake mount table ([`FakeOs`]) and real temporary
//! directories. Fast and unprivileged; the kernel proof is in real_mounts.rs and csi-sanity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pvdir::csi::controller::ControllerService;
use pvdir::csi::node::NodeService;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use pvdir::csi::proto::node_server::Node as _;
use pvdir::domain::access::BackendKind;
use pvdir::domain::backend::Backend;
use pvdir::domain::controller::Controller;
use pvdir::domain::guard::InFlight;
use pvdir::domain::local::LocalBackend;
use pvdir::domain::nfs::NfsBackend;
use pvdir::domain::node::Node;
use pvdir::os::fake::FakeOs;
use tonic::{Code, Request};

use csi::volume_capability::access_mode::Mode;

struct Rig {
    /// Mount flags the rig's StorageClass would carry: NFS options, or none for local.
    flags: &'static [&'static str],
    fake: FakeOs,
    dir: tempfile::TempDir,
    controller: ControllerService,
    node: Arc<NodeService>,
}

impl Rig {
    fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeOs::new();
        let root = dir.path().canonicalize().unwrap().join("root");
        let backend = LocalBackend::new(root, "n1".into(), Arc::new(fake.clone()));
        for d in backend.layout_dirs() {
            std::fs::create_dir_all(d).unwrap();
        }
        Self::wire(fake, dir, Backend::Local(backend), &[])
    }

    fn nfs() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeOs::new();
        let staging = dir.path().canonicalize().unwrap().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let backend = NfsBackend::new(staging, Arc::new(fake.clone()));
        Self::wire(fake, dir, Backend::Nfs(backend), &["hard"])
    }

    fn wire(
        fake: FakeOs,
        dir: tempfile::TempDir,
        backend: Backend,
        flags: &'static [&'static str],
    ) -> Self {
        let kind = backend.kind();
        let backend = Arc::new(backend);
        let os: Arc<dyn pvdir::os::Os> = Arc::new(fake.clone());
        let in_flight = InFlight::default();
        Self {
            flags,
            controller: ControllerService::new(
                Controller::new(Arc::clone(&backend), in_flight.clone()),
                kind,
            ),
            node: Arc::new(NodeService::new(
                Node::new(backend, os, in_flight),
                "n1".into(),
                kind,
            )),
            fake,
            dir,
        }
    }

    /// The single staging mount of the NFS rig (the export as the controller sees it).
    fn export_dir(&self) -> PathBuf {
        let staging = self.path().join("staging");
        let entries: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
        assert_eq!(entries.len(), 1, "one staging mount per export");
        entries[0].as_ref().unwrap().path()
    }

    async fn create(&self, req: csi::CreateVolumeRequest) -> Result<csi::Volume, tonic::Status> {
        self.controller
            .create_volume(Request::new(req))
            .await
            .map(|r| r.into_inner().volume.unwrap())
    }

    async fn delete(&self, id: &str) -> Result<(), tonic::Status> {
        self.controller
            .delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: id.into(),
                ..Default::default()
            }))
            .await
            .map(|_| ())
    }

    async fn publish(
        &self,
        id: &str,
        target: &Path,
        mode: Mode,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_publish_volume(Request::new(publish_req(
                id, target, mode, readonly, self.flags,
            )))
            .await
            .map(|_| ())
    }

    async fn unpublish(&self, id: &str, target: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.to_string_lossy().into(),
            }))
            .await
            .map(|_| ())
    }
}

fn cap(mode: Mode, flags: &[&str]) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                mount_flags: flags.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            },
        )),
    }
}

fn create_req(
    name: &str,
    bytes: i64,
    mode: Mode,
    params: &[(&str, &str)],
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap(mode, &[])],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn publish_req(
    id: &str,
    target: &Path,
    mode: Mode,
    readonly: bool,
    flags: &[&str],
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(cap(mode, flags)),
        readonly,
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

const SEED_CLASS: &[(&str, &str)] = &[
    ("server", "10.0.0.1"),
    ("share", "/export"),
    ("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}"),
    ("mountPermissions", "0770"),
];

fn seed_claim(ordinal: u32, on_delete: &str) -> csi::CreateVolumeRequest {
    let mut params: Vec<(&str, &str)> = SEED_CLASS.to_vec();
    params.push(("onDelete", on_delete));
    let mut req = create_req(
        &format!("pvc-{ordinal}"),
        1 << 30,
        Mode::MultiNodeMultiWriter,
        &params,
    );
    req.volume_capabilities = vec![cap(Mode::MultiNodeMultiWriter, &["hard", "nfsvers=4.2"])];
    req.parameters.insert(
        "csi.storage.k8s.io/pvc/name".into(),
        format!("www-web-{ordinal}"),
    );
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "default".into());
    req.parameters.insert(
        "csi.storage.k8s.io/pv/name".into(),
        format!("pvc-{ordinal}"),
    );
    req
}

// ---------------------------------------------------------------- local backend

#[tokio::test]
async fn local_create_is_idempotent_and_conflicts_are_already_exists() {
    let rig = Rig::local();
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
    let rig = Rig::local();
    let mut req = create_req("pvc-l", 0, Mode::SingleNodeWriter, &[]);
    req.capacity_range = Some(csi::CapacityRange {
        required_bytes: 0,
        limit_bytes: 4096,
    });
    assert_eq!(rig.create(req).await.unwrap().capacity_bytes, 4096);
}

#[tokio::test]
async fn unknown_parameter_is_invalid_argument_and_names_it() {
    let rig = Rig::local();
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
    let rig = Rig::local();
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
    // No name escaped the volumes directory.
    assert_eq!(
        std::fs::read_dir(rig.path().join("root")).unwrap().count(),
        2
    );
}

#[tokio::test]
async fn local_rejects_multi_node_and_block_everywhere() {
    let rig = Rig::local();
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
    let rig = Rig::local();
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
    let rig = Rig::local();
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
async fn publish_is_idempotent_and_incompatible_republish_is_already_exists() {
    let rig = Rig::local();
    let v = rig
        .create(create_req("pvc-p", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let t = rig.path().join("target");
    rig.publish(&v.volume_id, &t, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
    rig.publish(&v.volume_id, &t, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
    assert_eq!(
        rig.fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("mount"))
            .count(),
        1
    );
    assert_eq!(
        code(
            rig.publish(&v.volume_id, &t, Mode::SingleNodeWriter, true)
                .await
        ),
        Code::AlreadyExists
    );
    rig.unpublish(&v.volume_id, &t).await.unwrap();
    assert!(!rig.fake.is_mounted(&t));
    assert!(!t.exists(), "target directory is removed");
    rig.unpublish(&v.volume_id, &t).await.unwrap();
    rig.unpublish("v1#local#n1#never-existed", &t)
        .await
        .unwrap();
}

#[tokio::test]
async fn reader_only_mode_or_readonly_flag_mounts_read_only() {
    let rig = Rig::local();
    let v = rig
        .create(create_req("pvc-r", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let (a, b) = (rig.path().join("a"), rig.path().join("b"));
    rig.publish(&v.volume_id, &a, Mode::SingleNodeReaderOnly, false)
        .await
        .unwrap();
    rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, true)
        .await
        .unwrap();
    let table = rig.fake.table();
    for t in [&a, &b] {
        assert!(
            table.iter().any(|m| &m.mount_point == t && m.readonly),
            "{t:?}"
        );
    }
}

#[tokio::test]
async fn single_node_single_writer_allows_one_target() {
    let rig = Rig::local();
    let v = rig
        .create(create_req("pvc-o", 1, Mode::SingleNodeSingleWriter, &[]))
        .await
        .unwrap();
    let (a, b) = (rig.path().join("a"), rig.path().join("b"));
    rig.publish(&v.volume_id, &a, Mode::SingleNodeSingleWriter, false)
        .await
        .unwrap();
    assert_eq!(
        code(
            rig.publish(&v.volume_id, &b, Mode::SingleNodeSingleWriter, false)
                .await
        ),
        Code::FailedPrecondition
    );
    assert!(!rig.fake.is_mounted(&b));
    rig.unpublish(&v.volume_id, &a).await.unwrap();
    rig.publish(&v.volume_id, &b, Mode::SingleNodeSingleWriter, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_calls_on_one_volume_are_aborted_until_the_work_ends() {
    let rig = Rig::local();
    let v = rig
        .create(create_req("pvc-c", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let (a, b) = (rig.path().join("a"), rig.path().join("b"));
    rig.fake.pause_mounts();
    let node = Arc::clone(&rig.node);
    let first = tokio::spawn({
        let req = publish_req(&v.volume_id, &a, Mode::SingleNodeWriter, false, &[]);
        async move {
            node.node_publish_volume(Request::new(req))
                .await
                .map(|_| ())
        }
    });
    // Wait until the first call is inside the (paused) mount.
    for _ in 0..200 {
        if !rig.fake.calls().is_empty() || a.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        a.exists(),
        "the first publish never reached its (paused) mount"
    );
    assert_eq!(
        code(
            rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, false)
                .await
        ),
        Code::Aborted
    );
    assert_eq!(code(rig.unpublish(&v.volume_id, &a).await), Code::Aborted);
    // Another volume is not held up.
    let w = rig
        .create(create_req("pvc-other", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    // Nor can the same process delete or re-create the volume while publishing it, however
    // the ID is spelled.
    assert_eq!(code(rig.delete(&v.volume_id).await), Code::Aborted);
    assert_eq!(code(rig.delete("v1#local#n1#pvc%2Dc").await), Code::Aborted);
    assert_eq!(
        code(
            rig.create(create_req("pvc-c", 1, Mode::SingleNodeWriter, &[]))
                .await
        ),
        Code::Aborted
    );
    rig.fake.resume_mounts();
    first.await.unwrap().unwrap();
    rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
    rig.delete(&w.volume_id).await.unwrap();
}

#[tokio::test]
async fn stats_need_a_published_path() {
    let rig = Rig::local();
    let v = rig
        .create(create_req("pvc-s", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let t = rig.path().join("t");
    let stats = |id: &str, p: &Path| {
        rig.node
            .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: p.to_string_lossy().into(),
                staging_target_path: String::new(),
            }))
    };
    assert_eq!(code(stats(&v.volume_id, &t).await), Code::NotFound);
    assert_eq!(code(stats("v1#local#n1#nope", &t).await), Code::NotFound);
    assert_eq!(code(stats("garbage", &t).await), Code::NotFound);
    rig.publish(&v.volume_id, &t, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
    let s = stats(&v.volume_id, &t).await.unwrap().into_inner();
    assert_eq!(s.usage.len(), 2);
    assert!(s.usage.iter().all(|u| u.total > 0));
}

// ---------------------------------------------------------------- NFS backend

#[tokio::test]
async fn nfs_seed_story_creates_one_directory_per_claim_on_one_mount() {
    let rig = Rig::nfs();
    let mut ids = Vec::new();
    for i in 0..3 {
        let v = rig.create(seed_claim(i, "delete")).await.unwrap();
        assert!(v.accessible_topology.is_empty());
        ids.push(v.volume_id);
    }
    assert_eq!(
        ids[0],
        format!(
            "v1#nfs#10.0.0.1#/export#default/www-web-0#delete#hard,nfsvers=4.2#{}",
            pvdir::domain::volume_id::owner_tag("pvc-0")
        )
    );
    let mounts: Vec<_> = rig
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("mount"))
        .collect();
    assert_eq!(mounts.len(), 1, "the export is mounted once: {mounts:?}");
    assert!(mounts[0].starts_with("mount nfs4 10.0.0.1:/export -> "));
    let export = rig.export_dir();
    use std::os::unix::fs::PermissionsExt;
    for i in 0..3 {
        let d = export.join(format!("default/www-web-{i}"));
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o770
        );
    }
    // mountPermissions is for the volume directory only, never its parents.
    assert_eq!(
        std::fs::metadata(export.join("default"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // The node mounts exactly the claim's directory, with the class's mount options.
    let t = rig.path().join("pod-target");
    rig.publish(&ids[1], &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    let last = rig.fake.calls().last().cloned().unwrap();
    assert_eq!(
        last,
        format!(
            "mount nfs4 10.0.0.1:/export/default/www-web-1 -> {} ro=false opts=hard",
            t.display()
        )
    );
}

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
async fn nfs_reclaim_delete_retain_archive() {
    let rig = Rig::nfs();
    let del = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let keep = rig.create(seed_claim(1, "retain")).await.unwrap().volume_id;
    let arch = rig
        .create(seed_claim(2, "archive"))
        .await
        .unwrap()
        .volume_id;
    let export = rig.export_dir();
    std::fs::write(export.join("unrelated.txt"), b"keep me").unwrap();
    for i in 0..3 {
        std::fs::write(
            export.join(format!("default/www-web-{i}/index.html")),
            b"hello",
        )
        .unwrap();
    }
    for id in [&del, &keep, &arch] {
        rig.delete(id).await.unwrap();
        rig.delete(id).await.unwrap(); // retried delete is idempotent
    }
    assert!(!export.join("default/www-web-0").exists());
    assert_eq!(
        std::fs::read(export.join("default/www-web-1/index.html")).unwrap(),
        b"hello"
    );
    assert!(!export.join("default/www-web-2").exists());
    assert_eq!(
        std::fs::read(export.join("default/archived-www-web-2/index.html")).unwrap(),
        b"hello"
    );
    assert_eq!(
        std::fs::read(export.join("unrelated.txt")).unwrap(),
        b"keep me"
    );
    // The records are gone: a new claim (another PV name) may take the deleted and the
    // archived directories (would be ALREADY_EXISTS while an old record remained).
    for i in [0, 2] {
        let mut again = seed_claim(i, "delete");
        again.name = format!("pvc-{i}-new");
        rig.create(again).await.unwrap();
    }
    // The retained directory still has its data: a new claim adopts it only when the class
    // says reuseExisting, and only because the old record is gone.
    let mut reuse = seed_claim(1, "delete");
    reuse.name = "pvc-1-new".into();
    assert_eq!(code(rig.create(reuse.clone()).await), Code::AlreadyExists);
    reuse
        .parameters
        .insert("reuseExisting".into(), "true".into());
    rig.create(reuse).await.unwrap();
    assert_eq!(
        std::fs::read(export.join("default/www-web-1/index.html")).unwrap(),
        b"hello"
    );
}

#[tokio::test]
async fn nfs_prunes_only_empty_parents_it_created() {
    let rig = Rig::nfs();
    let a = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let b = rig.create(seed_claim(1, "delete")).await.unwrap().volume_id;
    let export = rig.export_dir();
    rig.delete(&a).await.unwrap();
    assert!(export.join("default").is_dir(), "still holds www-web-1");
    rig.delete(&b).await.unwrap();
    assert!(
        !export.join("default").exists(),
        "driver-made empty parent is removed"
    );

    // A parent the driver did not create is never removed.
    std::fs::create_dir(export.join("default")).unwrap();
    let c = rig.create(seed_claim(2, "delete")).await.unwrap().volume_id;
    rig.delete(&c).await.unwrap();
    assert!(export.join("default").is_dir());
}

#[tokio::test]
async fn nfs_escaping_ids_change_nothing() {
    let rig = Rig::nfs();
    rig.create(seed_claim(0, "delete")).await.unwrap();
    let calls = rig.fake.calls().len();
    for id in [
        "v1#nfs#10.0.0.1#/export#..#delete##0123456789abcdef",
        "v1#nfs#10.0.0.1#/export#default/..#delete##0123456789abcdef",
        "v1#nfs#10.0.0.1#/export#%2Fetc#delete##0123456789abcdef",
        "v1#nfs#10.0.0.1#/export/..#x#delete##0123456789abcdef",
        "v1#nfs#-o#/export#x#delete##0123456789abcdef",
    ] {
        assert_eq!(code(rig.delete(id).await), Code::InvalidArgument, "{id}");
    }
    assert_eq!(
        rig.fake.calls().len(),
        calls,
        "nothing was mounted or unmounted"
    );
    assert!(rig.export_dir().join("default/www-web-0").is_dir());
    // A well-formed ID whose owner never made this directory: nothing of its own to delete.
    rig.delete(
        "v1#nfs#10.0.0.1#/export#default/www-web-0#delete#hard,nfsvers=4.2#0123456789abcdef",
    )
    .await
    .unwrap();
    assert!(rig.export_dir().join("default/www-web-0").is_dir());
    // A handle this driver never made: nothing of ours to delete.
    rig.delete("static-handle").await.unwrap();
}

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
async fn nfs_dead_server_answers_unavailable_and_unpublish_still_completes() {
    let rig = Rig::nfs();
    let v = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let t = rig.path().join("t");
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
    rig.fake.set_server_dead(true);
    assert_eq!(
        code(rig.create(seed_claim(1, "delete")).await),
        Code::Unavailable
    );
    let stats = rig
        .node
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: v.clone(),
            volume_path: t.to_string_lossy().into(),
            staging_target_path: String::new(),
        }))
        .await;
    assert_eq!(code(stats), Code::Unavailable);
    rig.unpublish(&v, &t).await.unwrap();
    assert!(!rig.fake.is_mounted(&t));
    assert!(rig
        .fake
        .calls()
        .iter()
        .any(|c| c == &format!("unmount {} remote=true", t.display())));
}

#[tokio::test]
async fn failed_mount_leaves_no_mount_and_reports_internal() {
    let rig = Rig::nfs();
    let v = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let t = rig.path().join("t");
    rig.fake
        .fail_next_mount("mount.nfs: access denied by server");
    assert_eq!(
        code(rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false).await),
        Code::Internal
    );
    assert!(!rig.fake.is_mounted(&t));
    rig.publish(&v, &t, Mode::MultiNodeMultiWriter, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn nfs_parameters_are_validated_before_anything_happens() {
    let rig = Rig::nfs();
    for params in [
        vec![("server", "s")],
        vec![("share", "/e")],
        vec![("server", "s"), ("share", "/e"), ("onDelete", "shred")],
        vec![
            ("server", "s"),
            ("share", "/e"),
            ("subDir", "${pvc.metadata.name}"),
        ],
    ] {
        let err = rig
            .create(create_req("pvc-z", 1, Mode::SingleNodeWriter, &params))
            .await;
        assert_eq!(code(err), Code::InvalidArgument, "{params:?}");
    }
    assert!(rig.fake.calls().is_empty());
}

#[tokio::test]
async fn validate_volume_capabilities() {
    let rig = Rig::local();
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
    let local = types(Rig::local()).await;
    assert!(local.contains(&Type::ListVolumes));
    assert!(local.contains(&Type::CreateDeleteVolume));
    let nfs = types(Rig::nfs()).await;
    assert!(!nfs.contains(&Type::ListVolumes));
    assert!(!nfs.contains(&Type::CreateDeleteSnapshot));
    let _ = BackendKind::Nfs;
}

// ---------------------------------------------------------------- crash recovery

#[tokio::test]
async fn crash_between_record_and_directory_is_completed_by_the_retry() {
    let rig = Rig::local();
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
    let rig = Rig::local();
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
async fn nfs_crash_after_archive_is_completed_by_the_retry() {
    let rig = Rig::nfs();
    let v = rig
        .create(seed_claim(0, "archive"))
        .await
        .unwrap()
        .volume_id;
    let export = rig.export_dir();
    std::fs::write(export.join("default/www-web-0/data"), b"d").unwrap();
    // The rename happened, the record removal did not.
    std::fs::rename(
        export.join("default/www-web-0"),
        export.join("default/archived-www-web-0"),
    )
    .unwrap();
    rig.delete(&v).await.unwrap();
    assert_eq!(
        std::fs::read(export.join("default/archived-www-web-0/data")).unwrap(),
        b"d"
    );
    let mut again = seed_claim(0, "archive");
    again.name = "pvc-0-new".into();
    assert!(rig.create(again).await.is_ok(), "the record was removed");
}

// ---------------------------------------------------------------- ownership and contexts

fn list_code(
    rig: &Rig,
) -> impl std::future::Future<
    Output = Result<tonic::Response<csi::ListVolumesResponse>, tonic::Status>,
> + '_ {
    rig.controller
        .list_volumes(Request::new(csi::ListVolumesRequest::default()))
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
async fn malformed_ids_are_invalid_and_foreign_ones_not_found_on_the_node() {
    let rig = Rig::local();
    let t = rig.path().join("t");
    assert_eq!(
        code(
            rig.publish("v1#local#n1#..", &t, Mode::SingleNodeWriter, false)
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            rig.publish("not-ours", &t, Mode::SingleNodeWriter, false)
                .await
        ),
        Code::NotFound
    );
    assert!(rig.fake.calls().is_empty());
}

#[tokio::test]
async fn nfs_list_volumes_is_unimplemented_as_not_advertised() {
    let rig = Rig::nfs();
    assert_eq!(code(list_code(&rig).await), Code::Unimplemented);
}

#[tokio::test]
async fn local_bind_mounts_carry_the_class_mount_flags() {
    let rig = Rig::local();
    let mut req = create_req("pvc-flags", 1, Mode::SingleNodeWriter, &[]);
    req.volume_capabilities = vec![cap(Mode::SingleNodeWriter, &["nosuid", "noexec"])];
    let v = rig.create(req).await.unwrap();
    let t = rig.path().join("t");
    let req = publish_req(
        &v.volume_id,
        &t,
        Mode::SingleNodeWriter,
        false,
        &["nosuid", "noexec"],
    );
    rig.node
        .node_publish_volume(Request::new(req))
        .await
        .unwrap();
    assert!(rig
        .fake
        .calls()
        .last()
        .unwrap()
        .ends_with("opts=nosuid,noexec"));
    let bad = publish_req(
        &v.volume_id,
        &rig.path().join("u"),
        Mode::SingleNodeWriter,
        false,
        &["vers=4"],
    );
    assert_eq!(
        code(rig.node.node_publish_volume(Request::new(bad)).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_caller_giving_up_does_not_release_the_volume_while_work_continues() {
    let rig = Rig::local();
    let v = rig
        .create(create_req("pvc-cancel", 1, Mode::SingleNodeWriter, &[]))
        .await
        .unwrap();
    let (a, b) = (rig.path().join("a"), rig.path().join("b"));
    rig.fake.pause_mounts();
    // tonic drops a handler's future when the client's deadline passes; emulate that.
    let req = publish_req(&v.volume_id, &a, Mode::SingleNodeWriter, false, &[]);
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        rig.node.node_publish_volume(Request::new(req)),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the call was still in flight when its caller gave up"
    );
    // The work goes on in the background and still owns the volume.
    assert_eq!(
        code(
            rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, false)
                .await
        ),
        Code::Aborted
    );
    rig.fake.resume_mounts();
    for _ in 0..200 {
        if rig.fake.is_mounted(&a) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        rig.fake.is_mounted(&a),
        "the abandoned publish finished its work"
    );
    rig.publish(&v.volume_id, &b, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
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
        .any(|m| m.mount_point == t && m.readonly));
}

#[tokio::test]
async fn local_delete_never_touches_a_directory_it_has_no_record_of() {
    let rig = Rig::local();
    // Something put a directory where a volume of this name would live, but create never ran.
    let dir = rig.path().join("root/volumes/pvc-foreign");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("data"), b"not ours").unwrap();
    rig.delete("v1#local#n1#pvc-foreign").await.unwrap();
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"not ours");
}
