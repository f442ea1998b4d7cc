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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pvdir::csi::proto as csi;

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod common;

use common::{connect, env_or, pvdir_binary, start_pvdir};

fn used(path: &Path) -> u64 {
    nix::unistd::sync();
    let s = nix::sys::statvfs::statvfs(path).expect("statvfs");
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

fn request(
    name: &str,
    source: Option<csi::volume_content_source::Type>,
) -> csi::CreateVolumeRequest {
    use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType};
    csi::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![csi::VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Mount(Default::default())),
        }],
        parameters: [("quota".to_string(), "off".to_string())].into(),
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
    let dir = tempfile::tempdir_in(&base).expect("bench directory");
    let driver = start_pvdir("pvdir", &pvdir_binary(), dir.path(), "controller");
    driver.ready().await;
    let mut c = connect(&driver.socket).await;
    let root = dir.path().join("pvdir/pvdir-root");
    c.create_volume(request("pvc-src", None))
        .await
        .expect("create");
    let vol = root.join("volumes/pvc-src");
    make_tree(&vol, files, bytes);
    let mut rows = Vec::new();

    let before = used(&base);
    let started = Instant::now();
    let snap_req = csi::CreateSnapshotRequest {
        name: "snap".into(),
        source_volume_id: "v1#local#bench#pvc-src".into(),
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
    loop {
        calls += 1;
        match c
            .create_volume(request("pvc-restored", Some(from.clone())))
            .await
        {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Aborted => {}
            Err(s) => panic!("restore: {s:?}"),
        }
    }
    rows.push(Row {
        what: "pvdir restore",
        secs: started.elapsed().as_secs_f64(),
        calls,
        gained: used(&base).saturating_sub(before),
    });

    // csi-driver-nfs's way: a gzipped tar of the directory, unpacked into a new one.
    let archive = dir.path().join("snap.tar.gz");
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
    let out = dir.path().join("untarred");
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
    drop(driver);
    tokio::time::sleep(Duration::from_millis(100)).await;
}
