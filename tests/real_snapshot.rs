//! The real tier (see `real_delete.rs` for its rules): snapshots, restores and clones on the
//! real binary with real bind mounts. Data is written and read back through published targets,
//! as a pod would; the copy is attacked as delete is: links planted to outside data, a mount
//! planted inside the source.

#[allow(dead_code)]
mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use common::real::strace::{kill_at_syscall, restart_after_kill};
use pvdir::csi::proto as csi;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use tonic::Code;

async fn snapshot(d: &Driver, name: &str, source: &str) -> Result<csi::Snapshot, tonic::Status> {
    let req = csi::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        ..Default::default()
    };
    d.controller()
        .create_snapshot(req)
        .await
        .map(|r| r.into_inner().snapshot.unwrap())
}

async fn restore(d: &Driver, name: &str, source: csi::volume_content_source::Type) -> String {
    let mut req = create_request(name, Mode::SingleNodeWriter, MIB);
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(source),
    });
    let reply = expect_ok(
        d.controller().create_volume(req).await,
        "CreateVolume from a source",
    );
    let volume = reply.volume.unwrap();
    assert!(volume.content_source.is_some());
    volume.volume_id
}

fn of_snapshot(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
        snapshot_id: id.into(),
    })
}

fn of_volume(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource {
        volume_id: id.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_pod_wrote_comes_back_in_a_restore_and_a_clone() {
    require_root!();
    let d = Driver::start().await;
    let src = create_volume(&d, "pvc-src", Mode::SingleNodeWriter).await;
    let t = target_in_pod(&d, "writer");
    publish(&d, &src, &t, Mode::SingleNodeWriter, false)
        .await
        .unwrap();
    fs::create_dir(t.join("www")).unwrap();
    fs::write(t.join("www/index.html"), b"hello from web-0").unwrap();
    std::os::unix::fs::chown(t.join("www/index.html"), Some(101), Some(101)).unwrap();
    fs::set_permissions(t.join("www"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("/etc/shadow", t.join("www/shadow")).unwrap();
    let sparse = fs::File::create(t.join("sparse")).unwrap();
    sparse.set_len(256 << 20).unwrap();
    drop(sparse);

    let snap = snapshot(&d, "snap-web", &src).await.unwrap();
    assert!(snap.ready_to_use, "a small tree is copied within one call");
    fs::write(t.join("www/index.html"), b"changed after the snapshot").unwrap();

    let restored = restore(&d, "pvc-restored", of_snapshot(&snap.snapshot_id)).await;
    let clone = restore(&d, "pvc-clone", of_volume(&src)).await;
    for (id, want) in [
        (&restored, &b"hello from web-0"[..]),
        (&clone, &b"changed after the snapshot"[..]),
    ] {
        let r = target_in_pod(&d, &format!("reader-{}", key_of(id)));
        publish(&d, id, &r, Mode::SingleNodeWriter, false)
            .await
            .unwrap();
        assert_eq!(fs::read(r.join("www/index.html")).unwrap(), want);
        let meta = fs::metadata(r.join("www/index.html")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (101, 101));
        assert_eq!(fs::metadata(r.join("www")).unwrap().mode() & 0o7777, 0o750);
        // The link is a link: the restore holds no copy of what it pointed at.
        assert_eq!(
            fs::read_link(r.join("www/shadow")).unwrap(),
            std::path::Path::new("/etc/shadow")
        );
        let s = fs::metadata(r.join("sparse")).unwrap();
        assert_eq!(s.len(), 256 << 20);
        assert!(
            s.blocks() * 512 < 1 << 20,
            "holes kept: {} blocks",
            s.blocks()
        );
        expect_ok(
            d.node()
                .node_unpublish_volume(unpublish_request(id, &r))
                .await,
            "unpublish",
        );
    }
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&src, &t))
            .await,
        "unpublish",
    );
    // The source goes; the snapshot and its restore stay, and the other way round.
    expect_ok(
        d.controller().delete_volume(delete_request(&src)).await,
        "delete source",
    );
    assert_eq!(
        fs::read(d.volume_dir(&restored).join("www/index.html")).unwrap(),
        b"hello from web-0"
    );
    let req = csi::DeleteSnapshotRequest {
        snapshot_id: snap.snapshot_id.clone(),
        ..Default::default()
    };
    expect_ok(d.controller().delete_snapshot(req).await, "delete snapshot");
    assert!(d.volume_dir(&restored).join("www/index.html").exists());
    assert!(fs::read_dir(d.root().join("snapshots"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_planted_in_a_volume_stops_its_snapshot_and_nothing_is_read_through_it() {
    require_root!();
    let d = Driver::start().await;
    let src = create_volume(&d, "pvc-src", Mode::SingleNodeWriter).await;
    let outside = d.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"another tenant's data").unwrap();
    let planted = d.volume_dir(&src).join("mnt");
    fs::create_dir(&planted).unwrap();
    bind_mount(&outside, &planted);
    let result = snapshot(&d, "snap", &src).await;
    assert_eq!(result.unwrap_err().code(), Code::FailedPrecondition);
    let copied: Vec<_> = walkdir(&d.root().join("snapshots"));
    assert!(
        !copied.iter().any(|p| p.ends_with("secret")),
        "nothing behind the mount was copied: {copied:?}"
    );
    // Once the mount is gone, the retry of the same snapshot completes.
    unmount(&planted);
    assert!(snapshot(&d, "snap", &src).await.unwrap().ready_to_use);
    assert_eq!(
        fs::read(outside.join("secret")).unwrap(),
        b"another tenant's data"
    );
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Killed in the middle of a snapshot's copy (when one of its copying threads starts its
/// second file: strace counts each thread's calls apart, and ten files of a directory go to
/// eight threads), the driver leaves a snapshot that is not ready, with some entries in
/// place; after a restart the snapshotter's retry continues and the finished copy equals the
/// source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_mid_copy_finishes_the_snapshot_after_a_restart() {
    require_root!();
    let mut d = Driver::start().await;
    let src = create_volume(&d, "pvc-src", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&src);
    for i in 0..40u32 {
        let sub = dir.join(format!("d{}", i % 4));
        fs::create_dir_all(&sub).unwrap();
        let body: Vec<u8> = (0..64 * 1024).map(|b| (b as u32 ^ i) as u8).collect();
        fs::write(sub.join(format!("f{i}")), body).unwrap();
    }
    let strace = kill_at_syscall(&d, "copy_file_range", 2);
    assert!(snapshot(&d, "snap", &src).await.is_err(), "killed mid-copy");
    let record = d.root().join("snapmeta/snap.json");
    let text = fs::read_to_string(&record).unwrap();
    assert!(text.contains("\"ready\":false"), "{text}");
    let copy = d.root().join("snapshots/snap/data");
    let part = walkdir(&copy).len();
    assert!(
        (1..44).contains(&part),
        "{part} entries in place when killed"
    );
    restart_after_kill(&mut d, strace).await;
    let snap = snapshot(&d, "snap", &src).await.unwrap();
    assert!(snap.ready_to_use);
    for i in 0..40u32 {
        let rel = format!("d{}/f{i}", i % 4);
        assert_eq!(
            fs::read(copy.join(&rel)).unwrap(),
            fs::read(dir.join(&rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(walkdir(&copy).len(), 44);
    assert!(!d.root().join("snapshots/snap/work").exists());
}
