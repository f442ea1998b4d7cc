//! Benchmark: snapshot and restore of a volume holding a tree of many files, through the real
//! binary over gRPC, beside what csi-driver-nfs does for a snapshot (a `tar -czf` of the whole
//! directory, restored with `tar -xzf`) on the same tree, in the same run.
//!
//! For each it reports the wall time (for pvdir: from the first CreateSnapshot to the one
//! answering `ready_to_use`, and from the first CreateVolume to the one returning the volume,
//! however many retries the 5 s copy budget took) and the bytes the filesystem gained (its used
//! space, read with statvfs after a sync): on a filesystem with reflink a snapshot shares the
//! source's blocks and gains almost nothing.
//!
//! Run as root with `PVDIR_BENCH_DIR` on the filesystem to measure (default `/var/tmp`), for
//! example a loop-mounted XFS made with `-m reflink=1` and one with `-m reflink=0` on a real
//! disk; `PVDIR_BENCH_LABEL` names it in the output. `PVDIR_BENCH_FILES` (default 10,000) and
//! `PVDIR_BENCH_BYTES` (default 1 GiB) shape the tree. `PVDIR_BENCH_BINARY` runs another
//! pvdir binary than the one just built.
//!
//! With `PVDIR_BENCH_NFS_EXPORT` (the server's path of the export 127.0.0.1:/, as in the VM's
//! `tests/vm/guest/copy-bench.sh`) it measures the NFS backend instead: pvdir's copies run as
//! NFS 4.2 COPY on the server, and the tar runs on the controller's mount of the export, as
//! csi-driver-nfs does. The tree is written on the server's filesystem directly, and the
//! bytes gained are that filesystem's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pvdir::csi::proto as csi;

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod common;

use common::{connect, env_or, pvdir_binary, start_pvdir, start_pvdir_nfs};

fn used(path: &Path) -> u64 {
    nix::unistd::sync();
    let s = nix::sys::statvfs::statvfs(path).expect("statvfs");
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

/// A CreateVolume of `name`: local without a quota, or on NFS in the directory `name`.
fn request(
    name: &str,
    nfs: bool,
    source: Option<csi::volume_content_source::Type>,
) -> csi::CreateVolumeRequest {
    use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
    let (parameters, mount_flags) = if nfs {
        (
            [("server", "127.0.0.1"), ("share", "/"), ("subDir", name)]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            vec!["vers=4.2".to_string(), "hard".to_string()],
        )
    } else {
        (
            [("quota".to_string(), "off".to_string())].into(),
            Vec::new(),
        )
    };
    csi::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![csi::VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Mount(MountVolume {
                mount_flags,
                ..Default::default()
            })),
        }],
        parameters,
        volume_content_source: source.map(|t| csi::VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    }
}

/// `files` files of `bytes / files` bytes each in 100 directories, of data gzip cannot shrink
/// much (a fast xorshift stream), as media, packed logs or databases are.
fn make_tree(dir: &Path, files: usize, bytes: u64) {
    let each = (bytes / files as u64) as usize;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; each];
    for i in 0..files {
        let sub = dir.join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&sub).expect("mkdir");
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(sub.join(format!("f{i:05}")), &buf).expect("write");
    }
}

struct Row {
    what: &'static str,
    secs: f64,
    calls: usize,
    gained: u64,
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run");
    assert!(status.success(), "{cmd:?}: {status}");
}

#[tokio::main]
async fn main() {
    let base = PathBuf::from(std::env::var("PVDIR_BENCH_DIR").unwrap_or("/var/tmp".into()));
    let label = std::env::var("PVDIR_BENCH_LABEL").unwrap_or_else(|_| base.display().to_string());
    let files: usize = env_or("PVDIR_BENCH_FILES", 10_000);
    let bytes: u64 = env_or("PVDIR_BENCH_BYTES", 1 << 30);
    let export = std::env::var("PVDIR_BENCH_NFS_EXPORT")
        .ok()
        .map(PathBuf::from);
    let nfs = export.is_some();
    // Where the bytes land: the local root's filesystem, or the NFS server's.
    let base = export.clone().unwrap_or(base);
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("bench directory");
    // The local driver's root lies on the filesystem measured; removed with `local`.
    let local = tempfile::tempdir_in(&base).expect("bench directory");
    let driver = if nfs {
        start_pvdir_nfs("pvdir", &pvdir_binary(), dir.path())
    } else {
        start_pvdir("pvdir", &pvdir_binary(), local.path(), "controller")
    };
    driver.ready().await;
    let mut c = connect(&driver.socket).await;
    let src = c
        .create_volume(request("pvc-src", nfs, None))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("a volume")
        .volume_id;
    let vol = match &export {
        Some(export) => export.join("pvc-src"),
        None => local_root(&driver).join("volumes/pvc-src"),
    };
    make_tree(&vol, files, bytes);
    let mut rows = Vec::new();

    let before = used(&base);
    let started = Instant::now();
    let snap_req = csi::CreateSnapshotRequest {
        name: "snap".into(),
        source_volume_id: src.clone(),
        ..Default::default()
    };
    let mut calls = 0;
    let snap = loop {
        let s = c.create_snapshot(snap_req.clone()).await.expect("snapshot");
        calls += 1;
        let s = s.into_inner().snapshot.expect("a snapshot");
        if s.ready_to_use {
            break s;
        }
    };
    rows.push(Row {
        what: "pvdir snapshot",
        secs: started.elapsed().as_secs_f64(),
        calls,
        gained: used(&base).saturating_sub(before),
    });

    let before = used(&base);
    let started = Instant::now();
    let from =
        csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        });
    let mut calls = 0;
    let restored = loop {
        calls += 1;
        match c
            .create_volume(request("pvc-restored", nfs, Some(from.clone())))
            .await
        {
            Ok(v) => break v.into_inner().volume.expect("a volume").volume_id,
            Err(s) if s.code() == tonic::Code::Aborted => {}
            Err(s) => panic!("restore: {s:?}"),
        }
    };
    rows.push(Row {
        what: "pvdir restore",
        secs: started.elapsed().as_secs_f64(),
        calls,
        gained: used(&base).saturating_sub(before),
    });

    // csi-driver-nfs's way: a gzipped tar of the directory, unpacked into a new one, on the
    // filesystem measured (through the controller's mount of the export, on NFS).
    let work = match &export {
        Some(_) => staging_mount(dir.path()),
        None => local_root(&driver),
    };
    let vol = if nfs { work.join("pvc-src") } else { vol };
    let archive = work.join("snap.tar.gz");
    let before = used(&base);
    let started = Instant::now();
    run(Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&vol)
        .arg("."));
    rows.push(Row {
        what: "tar -czf (csi-driver-nfs)",
        secs: started.elapsed().as_secs_f64(),
        calls: 1,
        gained: used(&base).saturating_sub(before),
    });
    let out = work.join("untarred");
    std::fs::create_dir(&out).expect("mkdir");
    let before = used(&base);
    let started = Instant::now();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&out));
    rows.push(Row {
        what: "tar -xzf (csi-driver-nfs)",
        secs: started.elapsed().as_secs_f64(),
        calls: 1,
        gained: used(&base).saturating_sub(before),
    });

    println!(
        "{label}: a tree of {files} files, {:.0} MiB",
        bytes as f64 / (1 << 20) as f64
    );
    println!("| on | step | seconds | calls | MiB the filesystem gained |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {label} | {} | {:.2} | {} | {:.1} |",
            r.what,
            r.secs,
            r.calls,
            r.gained as f64 / (1 << 20) as f64
        );
    }
    for leftover in [&archive, &out] {
        let _ = std::fs::remove_file(leftover);
        let _ = std::fs::remove_dir_all(leftover);
    }
    // Through the driver, which removes what it made (on NFS, the export outlives this run).
    // A removal longer than the helper's bound (10,000 files over emulated NFS) is killed and
    // answered UNAVAILABLE with what it removed gone; the sidecars retry, and so does this.
    let snapshot_id = snap.snapshot_id.clone();
    retried("delete snapshot", || {
        let mut c = c.clone();
        let snapshot_id = snapshot_id.clone();
        async move {
            let req = csi::DeleteSnapshotRequest {
                snapshot_id,
                ..Default::default()
            };
            c.delete_snapshot(req).await.map(drop)
        }
    })
    .await;
    for id in [src, restored] {
        retried("delete volume", || {
            let mut c = c.clone();
            let volume_id = id.clone();
            async move {
                let req = csi::DeleteVolumeRequest {
                    volume_id,
                    ..Default::default()
                };
                c.delete_volume(req).await.map(drop)
            }
        })
        .await;
    }
    drop(driver);
    drop(local);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// `call` until it succeeds, retrying the codes a sidecar retries, a few dozen times at most.
async fn retried<F, Fut>(what: &str, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    for _ in 0..40 {
        match call().await {
            Ok(()) => return,
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Aborted) => {
                eprintln!("{what}: {:?}, retrying", s.code());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
    panic!("{what}: still unfinished after 40 tries");
}

/// The local root of the local driver `driver` (its directory holds the socket).
fn local_root(driver: &common::Driver) -> PathBuf {
    driver.socket.with_file_name("pvdir-root")
}

/// The NFS driver's only staging mount (its mount of the export).
fn staging_mount(dir: &Path) -> PathBuf {
    let staging = dir.join("pvdir/staging");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&staging)
        .expect("staging directory")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(entries.len(), 1, "one export mount: {entries:?}");
    entries.remove(0)
}
