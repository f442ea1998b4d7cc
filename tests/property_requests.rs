//! Properties of what pvdir takes from the wire, over generated inputs (proptest): a valid ID
//! prints and parses back to itself exactly; every CreateVolume, DeleteVolume and
//! NodePublishVolume ends in OK or one of the codes the CSI spec names for a caller's mistake,
//! never INTERNAL and never a panic; and a refused call leaves the disk and the mount table as
//! they were. Service tier: the fake mount table and real temporary directories (the fuzz
//! targets in fuzz/ cover the parsers alone, much faster).

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::service::*;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::node_server::Node;
use pvdir::domain::volume_id::{owner_tag, LocalId, NfsId, OnDelete, VolumeId, VolumeKey};
use pvdir::os::RelPath;
use tonic::Code;

/// Codes a caller's mistake may get. INTERNAL, UNKNOWN and UNAVAILABLE are the driver's own
/// failures; none may follow from what a request says.
const CALLER_CODES: &[Code] = &[
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::FailedPrecondition,
    Code::OutOfRange,
];

/// Every path below `root`, with the contents of its files: what "nothing changed" compares.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path.clone());
                out.insert(path, None);
            } else {
                out.insert(path.clone(), std::fs::read(&path).ok());
            }
        }
    }
    out
}

fn segment() -> impl Strategy<Value = String> {
    // Bytes the ID format must escape ('#', '%', ',', ' ') among ordinary ones.
    "[a-z0-9_#%, -]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn local_id() -> impl Strategy<Value = VolumeId> {
    ("[a-zA-Z0-9.#%, -]{1,40}", "\\PC{1,80}").prop_map(|(node, name)| {
        VolumeId::Local(LocalId {
            node,
            key: VolumeKey::from_name(&name).expect("any non-empty name gives a key"),
        })
    })
}

fn nfs_id() -> impl Strategy<Value = VolumeId> {
    let server = prop_oneof![
        "[a-z]([a-z0-9-]{0,13}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,7}[a-z0-9])?){0,3}",
        (0u8..=255, 0u8..=255, 0u8..=255, 1u8..=254)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
    ];
    let share =
        prop::collection::vec("[a-z0-9_-]{1,8}", 1..4).prop_map(|s| format!("/{}", s.join("/")));
    let subdir = prop::collection::vec(segment(), 1..4)
        .prop_map(|s| s.join("/"))
        .prop_filter("not pvdir's own directory", |s| !s.starts_with(".pvdir"));
    let on_delete = prop_oneof![
        Just(OnDelete::Delete),
        Just(OnDelete::Retain),
        Just(OnDelete::Archive)
    ];
    let options = prop::sample::subsequence(vec!["vers=4.2", "hard", "nolock", "noatime"], 0..4);
    (server, share, subdir, on_delete, options, "\\PC{1,40}").prop_map(
        |(server, share, subdir, on_delete, options, name)| {
            VolumeId::Nfs(NfsId {
                server,
                share,
                subdir: RelPath::parse(&subdir).unwrap(),
                on_delete,
                mount_options: options.into_iter().map(String::from).collect(),
                owner: owner_tag(&name),
            })
        },
    )
}

/// Names: valid claim names, odd ones, empty and overlong.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "pvc-[a-z0-9]{1,12}",
        "\\PC{0,40}",
        Just(String::new()),
        Just("x".repeat(300)),
    ]
}

/// Parameter maps built from the keys both backends know, with values good and bad.
fn parameters() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop::sample::select(vec![
        "server",
        "share",
        "subDir",
        "onDelete",
        "mountPermissions",
        "reuseExisting",
        "sharee",
    ]);
    let value = prop_oneof![
        Just("10.0.0.1".to_string()),
        Just("/export".to_string()),
        Just("${pvc.metadata.namespace}/${pvc.metadata.name}".to_string()),
        Just("../../etc".to_string()),
        Just("0770".to_string()),
        Just("4777".to_string()),
        Just("retain".to_string()),
        "\\PC{0,20}",
    ];
    prop::collection::vec((key.prop_map(String::from), value), 0..5)
}

fn capability() -> impl Strategy<Value = csi::VolumeCapability> {
    (
        0i32..10,
        prop::option::of(prop::collection::vec("\\PC{0,12}", 0..3)),
        any::<bool>(),
    )
        .prop_map(|(mode, flags, block)| csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode { mode }),
            access_type: match (flags, block) {
                (_, true) => Some(csi::volume_capability::AccessType::Block(Default::default())),
                (Some(mount_flags), false) => Some(csi::volume_capability::AccessType::Mount(
                    csi::volume_capability::MountVolume {
                        mount_flags,
                        ..Default::default()
                    },
                )),
                (None, false) => None,
            },
        })
}

fn create_request() -> impl Strategy<Value = csi::CreateVolumeRequest> {
    (
        name(),
        prop_oneof![Just(None), (any::<i64>(), any::<i64>()).prop_map(Some)],
        prop::collection::vec(capability(), 0..3),
        parameters(),
    )
        .prop_map(|(name, range, caps, params)| csi::CreateVolumeRequest {
            name,
            capacity_range: range.map(|(required_bytes, limit_bytes)| csi::CapacityRange {
                required_bytes,
                limit_bytes,
            }),
            volume_capabilities: caps,
            parameters: params.into_iter().collect(),
            ..Default::default()
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The call's code, after checking that it is one a caller's mistake may get.
fn allowed<T>(result: &Result<T, tonic::Status>) -> Result<Code, TestCaseError> {
    let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
    prop_assert!(CALLER_CODES.contains(&code), "{:?}", result.as_ref().err());
    Ok(code)
}

proptest! {
    // A failing case found once is kept beside this file and tried first on every run.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/property_requests.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_valid_id_round_trips_exactly(id in prop_oneof![local_id(), nfs_id()]) {
        let printed = id.to_string();
        prop_assert_eq!(VolumeId::parse(&printed), Ok(id), "{}", printed);
    }

    #[test]
    fn any_create_is_ok_or_a_callers_code_and_a_refusal_changes_nothing(
        req in create_request(),
        nfs in any::<bool>(),
    ) {
        runtime().block_on(async {
            let rig = if nfs { Rig::nfs() } else { Rig::local().await };
            let (disk, mounts) = (snapshot(&rig.path()), rig.fake.table());
            let code = allowed(&rig.create(req).await)?;
            if code != Code::Ok {
                prop_assert_eq!(snapshot(&rig.path()), disk, "a refused create changed the disk");
                prop_assert_eq!(rig.fake.table(), mounts, "a refused create left a mount");
            }
            Ok(())
        })?;
    }

    #[test]
    fn any_delete_or_publish_of_any_id_is_ok_or_a_callers_code(
        id in prop_oneof![
            local_id().prop_map(|i| i.to_string()),
            nfs_id().prop_map(|i| i.to_string()),
            "\\PC{0,60}",
            "v1#(local|nfs)#[a-z0-9#%,./-]{0,40}",
        ],
        target in prop_oneof![Just("pod/mount".to_string()), Just("mount".to_string()), "\\PC{0,30}"],
        cap in capability(),
        nfs in any::<bool>(),
    ) {
        runtime().block_on(async {
            let rig = if nfs { Rig::nfs() } else { Rig::local().await };
            let (disk, mounts) = (snapshot(&rig.path()), rig.fake.table());
            let target = if target.starts_with('/') { target } else {
                rig.path().join(target).to_string_lossy().into_owned()
            };
            // A target that holds files already (the rig's own directory, for an empty
            // target) may be mounted over, but unpublish then keeps it and its files.
            let held_files = std::fs::read_dir(&target).is_ok_and(|mut d| d.next().is_some());
            let published = rig
                .node
                .node_publish_volume(tonic::Request::new(csi::NodePublishVolumeRequest {
                    volume_id: id.clone(),
                    target_path: target,
                    volume_capability: Some(cap),
                    ..Default::default()
                }))
                .await;
            let code = allowed(&published)?;
            if code == Code::Ok {
                // Only an NFS ID can get here: the node mounts its export path without asking
                // the server first, and the fake's server has every path. (A real server
                // refuses a path it does not have: tests/vm_nfs.rs.)
                prop_assert!(nfs && id.starts_with("v1#nfs#"));
                let target = rig.fake.table().last().unwrap().mount_point.clone();
                match rig.unpublish(&id, &target).await {
                    Ok(()) => {}
                    Err(s) if held_files => {
                        prop_assert_eq!(s.code(), Code::FailedPrecondition);
                    }
                    Err(s) => return Err(TestCaseError::fail(format!("unpublish: {s:?}"))),
                }
                prop_assert_eq!(rig.fake.table(), mounts.clone(), "unpublish left a mount");
            } else {
                prop_assert_eq!(rig.fake.table(), mounts.clone(), "a refused publish left a mount");
                prop_assert_eq!(snapshot(&rig.path()), disk.clone(), "a refused publish changed the disk");
            }
            let code = allowed(&rig.delete(&id).await)?;
            if code == Code::Ok {
                // Looking on an export for a volume that is not there mounts the export in
                // pvdir's staging directory (kept for later calls); nothing else may change.
                let outside = |m: BTreeMap<PathBuf, Option<Vec<u8>>>| -> Vec<_> {
                    m.into_iter().filter(|(p, _)| !p.starts_with(rig.path().join("staging"))).collect()
                };
                prop_assert_eq!(outside(snapshot(&rig.path())), outside(disk));
            } else {
                prop_assert_eq!(snapshot(&rig.path()), disk, "a refused delete changed the disk");
                prop_assert_eq!(rig.fake.table(), mounts, "a refused delete left a mount");
            }
            Ok(())
        })?;
    }
}
