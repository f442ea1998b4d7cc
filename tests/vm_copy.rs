//! VM tier: snapshots and restores of local volumes on real filesystems, copied the cheapest
//! way each allows. Run by tests/vm/guest/quota-suite.sh with TMPDIR on each of its loop
//! filesystems (`#[ignore]`d on the host): XFS with reflink, where a snapshot must share the
//! source's blocks; XFS made with `-m reflink=0` and ext4, where it must copy them.
//!
//! The witnesses are the kernel's: the physical address of a file's first extent and its
//! SHARED flag (FS_IOC_FIEMAP, read here with the test's own ioctl) and the bytes the
//! filesystem has in use (statvfs).

#[allow(dead_code)]
mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileExt, MetadataExt};
use std::path::Path;

use common::real::driver::*;
use common::real::requests::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::volume_capability::access_mode::Mode;

const BIG: usize = 32 << 20;

fn filesystem() -> String {
    std::env::var("PVDIR_VM_COPY_FS").expect("run inside the VM quota suite (PVDIR_VM_COPY_FS)")
}

#[repr(C)]
struct Extent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped: u32,
    count: u32,
    reserved: u32,
    extents: [Extent; 1],
}

nix::ioctl_readwrite_bad!(fiemap, 0xC020_660B, Fiemap);
const FIEMAP_FLAG_SYNC: u32 = 1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// The physical address and flags of a file's first extent.
fn first_extent(path: &Path) -> (u64, u32) {
    let f = fs::File::open(path).unwrap();
    // SAFETY: all-zero is a valid `Fiemap` (plain integers).
    let mut m: Fiemap = unsafe { std::mem::zeroed() };
    m.length = u64::MAX;
    m.flags = FIEMAP_FLAG_SYNC;
    m.count = 1;
    // SAFETY: FS_IOC_FIEMAP reads the header and writes at most `count` extents after it.
    unsafe { fiemap(std::os::fd::AsRawFd::as_raw_fd(&f), &mut m) }.unwrap();
    assert_eq!(m.mapped, 1, "{path:?} has data");
    (m.extents[0].physical, m.extents[0].flags)
}

fn used_bytes(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

async fn snapshot(d: &Driver, name: &str, source: &str) -> csi::Snapshot {
    let req = csi::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        ..Default::default()
    };
    loop {
        let s = expect_ok(
            d.controller().create_snapshot(req.clone()).await,
            "snapshot",
        )
        .snapshot
        .unwrap();
        if s.ready_to_use {
            return s;
        }
    }
}

fn xattr(path: &Path, name: &str, value: Option<&[u8]>) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    if let Some(v) = value {
        // SAFETY: NUL-terminated strings, a readable value.
        let rc = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        assert_eq!(rc, 0);
        return v.to_vec();
    }
    let mut buf = vec![0u8; 64];
    // SAFETY: NUL-terminated strings, a writable buffer of its length.
    let got = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert!(got >= 0, "{name} on {path:?}");
    buf.truncate(got as usize);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM quota suite's filesystems"]
async fn a_snapshot_shares_blocks_where_it_can_and_a_restore_keeps_everything() {
    let fs_name = filesystem();
    let d = Driver::start().await;
    // Room for the data under the quota the volume gets where the filesystem has them.
    let size = 1 << 30;
    let made = d
        .controller()
        .create_volume(create_request("pvc-src", Mode::SingleNodeWriter, size))
        .await;
    let src = expect_ok(made, "create").volume.unwrap().volume_id;
    let dir = d.volume_dir(&src);
    let data: Vec<u8> = (0..BIG)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(dir.join("big"), &data).unwrap();
    fs::create_dir(dir.join("conf")).unwrap();
    fs::write(dir.join("conf/app.ini"), b"[app]\nname=web\n").unwrap();
    std::os::unix::fs::chown(dir.join("conf/app.ini"), Some(33), Some(33)).unwrap();
    symlink("../big", dir.join("conf/big-link")).unwrap();
    xattr(&dir.join("conf/app.ini"), "user.origin", Some(b"seed"));
    let sparse = fs::File::create(dir.join("sparse")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    sparse.write_all_at(b"tail", (1 << 30) - 4).unwrap();
    drop(sparse);
    nix::unistd::sync();

    let before = used_bytes(&d.root());
    let snap = snapshot(&d, "snap", &src).await;
    nix::unistd::sync();
    let grown = used_bytes(&d.root()).saturating_sub(before);
    let copy = d.root().join("snapshots/snap/data/big");
    let (src_at, _) = first_extent(&dir.join("big"));
    let (copy_at, copy_flags) = first_extent(&copy);
    eprintln!("{fs_name}: the snapshot took {grown} bytes; extents at {src_at} and {copy_at}");
    if fs_name == "xfs" {
        assert_eq!(copy_at, src_at, "the snapshot's blocks are the source's");
        assert!(
            copy_flags & FIEMAP_EXTENT_SHARED != 0,
            "flags {copy_flags:#x}"
        );
        assert!(grown < (BIG as u64) / 4, "{grown} bytes for a 32 MiB file");
    } else {
        assert_ne!(copy_at, src_at);
        assert!(grown >= BIG as u64, "{grown} bytes for a 32 MiB file");
    }

    let mut req = create_request("pvc-restored", Mode::SingleNodeWriter, size);
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = loop {
        match d.controller().create_volume(req.clone()).await {
            Ok(r) => break r.into_inner().volume.unwrap().volume_id,
            Err(s) => assert_eq!(s.code(), tonic::Code::Aborted, "{s:?}"),
        }
    };
    let r = d.volume_dir(&restored);
    assert!(fs::read(r.join("big")).unwrap() == data, "big file intact");
    assert_eq!(
        fs::read(r.join("conf/app.ini")).unwrap(),
        b"[app]\nname=web\n"
    );
    let m = fs::metadata(r.join("conf/app.ini")).unwrap();
    assert_eq!((m.uid(), m.gid()), (33, 33));
    assert_eq!(xattr(&r.join("conf/app.ini"), "user.origin", None), b"seed");
    assert_eq!(
        fs::read_link(r.join("conf/big-link")).unwrap(),
        Path::new("../big")
    );
    let s = fs::metadata(r.join("sparse")).unwrap();
    assert_eq!(s.len(), 1 << 30);
    assert!(
        s.blocks() * 512 < 1 << 20,
        "holes kept: {} blocks",
        s.blocks()
    );
    let mut tail = [0u8; 4];
    fs::File::open(r.join("sparse"))
        .unwrap()
        .read_exact_at(&mut tail, (1 << 30) - 4)
        .unwrap();
    assert_eq!(&tail, b"tail");
    if fs_name != "xfs-noreflink" {
        // Filesystems with project quotas: the restore is a volume of its own, whose quota
        // holds its copy (statfs in a project directory answers with the project's limit).
        let st = nix::sys::statvfs::statvfs(&r).unwrap();
        let total = st.blocks() * st.fragment_size();
        let used = total - st.blocks_free() * st.fragment_size();
        assert_eq!(total, size as u64);
        assert!(
            used >= BIG as u64,
            "the copy is charged to the restore: {used}"
        );
    }
}
