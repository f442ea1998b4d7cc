//! VM tier: NFS snapshots, restores and clones against a real kernel NFS 4.2 server and client
//! (see `vm_nfs.rs` for how these tests are run). Data is written and read through real NFS
//! mounts published to "pods", and the copy is shown to be the server's own: the client sends
//! COPY operations, not the file's bytes in WRITEs.

#[allow(dead_code)]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::real::driver::*;
use common::real::requests::*;
use common::real::vm::*;
use pvdir::csi::proto as csi;
use tonic::Code;

const BIG: u64 = 32 << 20;

/// The client's per-operation counters of the NFS mount at `point` (from
/// /proc/self/mountstats, which this process shares with the driver it started): for `op`,
/// the operation count and the bytes sent.
fn op_stats(point: &Path, op: &str) -> (u64, u64) {
    let stats = std::fs::read_to_string("/proc/self/mountstats").unwrap();
    let header = format!(" mounted on {} with fstype nfs", point.display());
    let section = stats
        .split("device ")
        .find(|s| s.lines().next().is_some_and(|l| l.contains(&header)))
        .unwrap_or_else(|| panic!("no NFS mount at {}", point.display()));
    let line = section
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{op}:")))
        .unwrap_or_else(|| panic!("no {op} counters"));
    // OP: ops transmissions timeouts bytes_sent bytes_received ...
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    (f[0], f[3])
}

/// The controller's mount of the export (its only staging mount).
fn staging_mount(d: &Driver) -> PathBuf {
    let staging = d.path("staging");
    let entries: Vec<PathBuf> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

async fn snapshot_ready(d: &Driver, name: &str, source: &str) -> csi::Snapshot {
    for _ in 0..200 {
        let s = expect_ok(
            d.controller()
                .create_snapshot(csi::CreateSnapshotRequest {
                    name: name.into(),
                    source_volume_id: source.into(),
                    ..Default::default()
                })
                .await,
            "create snapshot",
        )
        .snapshot
        .unwrap();
        if s.ready_to_use {
            return s;
        }
    }
    panic!("snapshot {name} never became ready");
}

async fn create_from(d: &Driver, pvc: &str, source: csi::volume_content_source::Type) -> String {
    let mut req = claim(7, "delete", OPTIONS);
    req.name = format!("pvc-{pvc}");
    req.parameters
        .insert("csi.storage.k8s.io/pvc/name".into(), pvc.into());
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(source),
    });
    for _ in 0..200 {
        match d.controller().create_volume(req.clone()).await {
            Ok(r) => return r.into_inner().volume.unwrap().volume_id,
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    panic!("{pvc} never completed");
}

/// Publish `id` to a new pod directory and return its mount.
async fn publish(d: &Driver, id: &str, pod: &str) -> PathBuf {
    let target = target_in_pod(d, pod);
    expect_ok(
        d.node()
            .node_publish_volume(nfs_publish(id, &target, OPTIONS))
            .await,
        "publish",
    );
    target
}

fn write_tree(dir: &Path) {
    std::fs::create_dir(dir.join("conf")).unwrap();
    std::fs::set_permissions(dir.join("conf"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(dir.join("conf"), Some(1000), Some(1000)).unwrap();
    std::fs::write(dir.join("conf/app.conf"), "a=1\n").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", dir.join("secret")).unwrap();
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("big"), &big).unwrap();
    // Sparse: 64 MiB apparent, 1 MiB of data at its end.
    let f = std::fs::File::create(dir.join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&vec![7u8; 1 << 20], 63 << 20).unwrap();
}

fn check_tree(dir: &Path, index: &str) {
    assert_eq!(
        std::fs::read_to_string(dir.join("index.html")).unwrap(),
        index
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("conf/app.conf")).unwrap(),
        "a=1\n"
    );
    let conf = std::fs::metadata(dir.join("conf")).unwrap();
    assert_eq!(
        (conf.mode() & 0o7777, conf.uid(), conf.gid()),
        (0o750, 1000, 1000)
    );
    assert_eq!(
        std::fs::read_link(dir.join("secret")).unwrap(),
        Path::new("/etc/shadow")
    );
    let big = std::fs::read(dir.join("big")).unwrap();
    assert_eq!(big.len() as u64, BIG);
    assert!(big.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    let sparse = std::fs::metadata(dir.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(
        sparse.blocks() * 512 < 8 << 20,
        "holes stay holes: {} blocks",
        sparse.blocks()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn snapshot_restore_and_clone_over_real_nfs_copy_on_the_server() {
    let d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let src = expect_ok(
        d.controller()
            .create_volume(claim(0, "delete", OPTIONS))
            .await,
        "create",
    )
    .volume
    .unwrap()
    .volume_id;
    let pod = publish(&d, &src, "writer").await;
    write_tree(&pod);
    std::fs::write(pod.join("index.html"), "v1").unwrap();

    let staging = staging_mount(&d);
    let (copies, _) = op_stats(&staging, "COPY");
    let (_, written) = op_stats(&staging, "WRITE");
    let snap = snapshot_ready(&d, "snapshot-1", &src).await;
    let (copies_after, _) = op_stats(&staging, "COPY");
    let (_, written_after) = op_stats(&staging, "WRITE");
    eprintln!(
        "snapshot of {BIG} bytes over NFS 4.2: {} COPY operations, {} bytes sent in WRITEs",
        copies_after - copies,
        written_after - written
    );
    assert!(copies_after > copies, "the client asked the server to copy");
    assert!(
        written_after - written < 4 << 20,
        "{} bytes crossed the wire in WRITEs for a {BIG}-byte file",
        written_after - written
    );
    let data = export().join(".pvdir/snapshots/snapshot-1/data");
    check_tree(&data, "v1");

    // Changed after the snapshot: the restore has the old content, the clone the new.
    std::fs::write(pod.join("index.html"), "v2").unwrap();
    let restored = create_from(
        &d,
        "restored",
        csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        }),
    )
    .await;
    let cloned = create_from(
        &d,
        "cloned",
        csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource {
            volume_id: src.clone(),
        }),
    )
    .await;
    let r = publish(&d, &restored, "reader-r").await;
    let c = publish(&d, &cloned, "reader-c").await;
    check_tree(&r, "v1");
    check_tree(&c, "v2");

    // Independence: the snapshot and the source go, the copies stay.
    expect_ok(
        d.controller()
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await,
        "delete snapshot",
    );
    assert!(!export().join(".pvdir/snapshots/snapshot-1").exists());
    for (id, target) in [(&src, &pod), (&restored, &r), (&cloned, &c)] {
        expect_ok(
            d.node()
                .node_unpublish_volume(unpublish_request(id, target))
                .await,
            "unpublish",
        );
    }
    expect_ok(
        d.controller().delete_volume(delete_request(&src)).await,
        "delete source",
    );
    let c = publish(&d, &cloned, "reader-c2").await;
    check_tree(&c, "v2");
    for (id, target) in [(&cloned, &c)] {
        expect_ok(
            d.node()
                .node_unpublish_volume(unpublish_request(id, target))
                .await,
            "unpublish",
        );
    }
    for id in [&restored, &cloned] {
        expect_ok(
            d.controller().delete_volume(delete_request(id)).await,
            "delete",
        );
    }
    let left: Vec<_> = std::fs::read_dir(export().join(".pvdir/work"))
        .map(|r| r.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n != pvdir::os::safe_fs::OWNED_MARKER)
        .collect();
    assert!(left.is_empty(), "work directories left: {left:?}");
}
