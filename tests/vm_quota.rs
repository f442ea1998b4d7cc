//! VM tier: local volumes' sizes enforced by real project quotas. This machine's kernel has
//! no quotas, so these run in the guest that tests/vm/guest/quota-suite.sh prepares: once
//! with TMPDIR on a loop-mounted XFS (`-o prjquota`) and once on ext4 made with
//! `-O project,quota` (`-o prjquota`), so every driver's root is on that filesystem. They are
//! `#[ignore]`d on the host and run there with `--ignored`.
//!
//! What the kernel itself reports is the proof: the bytes a write gets in before it fails,
//! `statvfs` (what `df` in a pod shows) on the published target, and the project ID the
//! kernel keeps for a directory (`FS_IOC_FSGETXATTR`, read here by the test itself).

#[allow(dead_code)]
mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::real::driver::*;
use common::real::requests::*;
use common::real::strace::{kill_at_syscall, restart_after_kill};
use pvdir::csi::proto as csi;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use tonic::Code;

const CHUNK: usize = 64 << 10;

fn filesystem() -> String {
    std::env::var("PVDIR_VM_QUOTA_FS").expect("run inside the VM quota suite (PVDIR_VM_QUOTA_FS)")
}

fn sized(name: &str, bytes: i64, quota: &str) -> csi::CreateVolumeRequest {
    let mut req = create_request(name, Mode::SingleNodeWriter, bytes);
    req.parameters.insert("quota".into(), quota.into());
    req
}

async fn create(d: &Driver, req: csi::CreateVolumeRequest) -> String {
    let v = expect_ok(d.controller().create_volume(req).await, "create");
    v.volume.unwrap().volume_id
}

async fn expand(d: &Driver, id: &str, bytes: i64) -> Result<i64, tonic::Status> {
    d.controller()
        .controller_expand_volume(common::expand_request(id, bytes))
        .await
        .map(|r| r.into_inner().capacity_bytes)
}

async fn capacity(d: &Driver) -> i64 {
    expect_ok(
        d.controller()
            .get_capacity(csi::GetCapacityRequest::default())
            .await,
        "GetCapacity",
    )
    .available_capacity
}

/// The kernel's project ID of a directory, and whether it passes it on. Read with the test's own
/// ioctl, deliberately not through `pvdir::os::quota`, so the code under test is not its own
/// witness.
fn project_of(dir: &Path) -> (u32, bool) {
    #[repr(C)]
    #[derive(Default)]
    struct FsXattr {
        xflags: u32,
        extsize: u32,
        nextents: u32,
        projid: u32,
        cowextsize: u32,
        pad: [u8; 8],
    }
    nix::ioctl_read!(get, b'X', 31, FsXattr);
    let f = std::fs::File::open(dir).unwrap();
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `fsxattr` to the address given.
    unsafe { get(std::os::fd::AsRawFd::as_raw_fd(&f), &mut attr) }.unwrap();
    (attr.projid, attr.xflags & 0x200 != 0)
}

/// What `df` shows at `path`: (total, used) bytes.
fn df(path: &Path) -> (u64, u64) {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    let total = s.blocks() * s.fragment_size();
    (total, total - s.blocks_free() * s.fragment_size())
}

/// Drop CAP_SYS_RESOURCE from the calling thread, as container runtimes drop it from pods:
/// the generic quota code (ext4) lets a holder of it write past any hard limit.
fn as_a_pod() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_RESOURCE: u32 = 24;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset read and write one header and two data structs (version 3);
    // pid 0 is the calling thread.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_SYS_RESOURCE);
        data[0].permitted &= !(1 << CAP_SYS_RESOURCE);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

/// Write `file` in chunks until the filesystem refuses; the bytes that got in and the errno.
/// Runs on a thread of its own without CAP_SYS_RESOURCE (see [`as_a_pod`]).
fn fill(file: &Path, limit: u64) -> (u64, i32) {
    let file = file.to_path_buf();
    std::thread::spawn(move || {
        as_a_pod();
        fill_here(&file, limit)
    })
    .join()
    .unwrap()
}

fn fill_here(file: &Path, limit: u64) -> (u64, i32) {
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![0x5au8; CHUNK];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) => return (written, e.raw_os_error().unwrap_or(0)),
        }
        assert!(written <= 4 * limit, "no limit held after {written} bytes");
        // Delayed allocation: make the blocks count against the quota now.
        if written.is_multiple_of(1 << 20) {
            if let Err(e) = f.sync_data() {
                return (written, e.raw_os_error().unwrap_or(0));
            }
        }
    }
}

fn is_quota_error(errno: i32) -> bool {
    // ext4 answers EDQUOT; XFS answers ENOSPC for project quotas.
    errno == libc::EDQUOT || errno == libc::ENOSPC
}

async fn published(d: &Driver, id: &str, pod: &str) -> std::path::PathBuf {
    let target = target_in_pod(d, pod);
    publish(d, id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("publish");
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM quota suite's filesystems"]
async fn writes_stop_at_the_size_and_df_and_stats_show_the_volume() {
    let d = Driver::start().await;
    let size = 8 * MIB;
    let id = create(&d, sized("pvc-fill", size, "required")).await;
    let target = published(&d, &id, "fill").await;
    assert_eq!(
        df(&target).0,
        size as u64,
        "df in the pod shows the claim's size"
    );

    let (written, errno) = fill(&target.join("data"), size as u64);
    assert!(
        is_quota_error(errno),
        "{}: the write failed with errno {errno}",
        filesystem()
    );
    let slack = 256 * 1024;
    assert!(
        written + slack >= size as u64 && written <= size as u64,
        "{}: {written} bytes got into an {size}-byte volume",
        filesystem()
    );
    eprintln!(
        "{}: {written} of {size} bytes written, then errno {errno}",
        filesystem()
    );

    let stats = expect_ok(
        d.node()
            .node_get_volume_stats(stats_request(&id, &target))
            .await,
        "stats",
    );
    let bytes = stats.usage.iter().find(|u| u.unit == 1).expect("bytes");
    let inodes = stats.usage.iter().find(|u| u.unit == 2).expect("inodes");
    assert_eq!(bytes.total, size);
    assert!(
        bytes.used as u64 >= written && bytes.used <= size,
        "{bytes:?}"
    );
    // The volume's own files (its directory and one file), not the filesystem's.
    assert!((1..=3).contains(&inodes.used), "{inodes:?}");
    assert!(inodes.total > 1000, "{inodes:?}");
    // Another volume is not charged for this one's bytes.
    let other = create(&d, sized("pvc-other", size, "required")).await;
    let other_target = published(&d, &other, "other").await;
    assert!(df(&other_target).1 < 256 * 1024, "{:?}", df(&other_target));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM quota suite's filesystems"]
async fn online_expansion_under_a_running_writer() {
    let d = Driver::start().await;
    let id = create(&d, sized("pvc-grow", 4 * MIB, "required")).await;
    let target = published(&d, &id, "grow").await;
    let written = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, refused, stop) = (written.clone(), refused.clone(), stop.clone());
        let file = target.join("log");
        std::thread::spawn(move || {
            as_a_pod();
            let mut f = std::fs::File::create(file).unwrap();
            let chunk = vec![1u8; CHUNK];
            while !stop.load(Ordering::Relaxed) && written.load(Ordering::Relaxed) < 10 << 20 {
                match f.write(&chunk).and_then(|n| f.sync_data().map(|_| n)) {
                    Ok(n) => {
                        written.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if is_quota_error(e.raw_os_error().unwrap_or(0)) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("write: {e}"),
                }
            }
        })
    };
    // The writer fills the volume and is refused...
    let deadline = Instant::now() + Duration::from_secs(120);
    while refused.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the writer was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = written.load(Ordering::Relaxed);
    assert!(before <= 4 << 20, "{before} bytes in a 4 MiB volume");
    // ...and gets on once the volume grows, without being unpublished.
    assert_eq!(expand(&d, &id, 12 * MIB).await.unwrap(), 12 * MIB);
    assert_eq!(df(&target).0, 12 << 20);
    while written.load(Ordering::Relaxed) < 10 << 20 {
        assert!(
            Instant::now() < deadline,
            "the writer did not get past the old size"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!(
        "{}: writer refused at {before} bytes, past {} after the expansion",
        filesystem(),
        written.load(Ordering::Relaxed)
    );
    // Asking for less answers with the size it has.
    assert_eq!(expand(&d, &id, 2 * MIB).await.unwrap(), 12 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM quota suite's filesystems"]
async fn concurrent_creates_get_distinct_projects_and_delete_clears_them() {
    let d = Driver::start().await;
    let creates = (0..16).map(|i| {
        let mut c = d.controller();
        tokio::spawn(async move {
            c.create_volume(sized(&format!("pvc-{i}"), MIB, "required"))
                .await
        })
    });
    let mut ids = Vec::new();
    for c in creates {
        ids.push(
            c.await
                .unwrap()
                .unwrap()
                .into_inner()
                .volume
                .unwrap()
                .volume_id,
        );
    }
    let projects: HashSet<u32> = ids
        .iter()
        .map(|id| {
            let (project, inherit) = project_of(&d.volume_dir(id));
            assert!(
                inherit && project != 0,
                "{id}: project {project}, inherit {inherit}"
            );
            assert_eq!(df(&d.volume_dir(id)).0, 1 << 20);
            project
        })
        .collect();
    assert_eq!(projects.len(), 16, "one project per volume");

    // A deleted volume's project keeps no limit.
    let quotas = pvdir::os::quota::KernelQuotas;
    use pvdir::os::quota::{ProjectId, Quotas};
    let gone = project_of(&d.volume_dir(&ids[0])).0;
    expect_ok(
        d.controller().delete_volume(delete_request(&ids[0])).await,
        "delete",
    );
    let usage = quotas
        .usage(&d.root(), ProjectId::new(gone))
        .expect("project usage");
    assert_eq!(usage.limit_bytes, 0, "{usage:?}");
    assert_eq!(usage.bytes, 0, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM quota suite's filesystems"]
async fn capacity_counts_promises_and_a_create_past_them_is_resource_exhausted() {
    let d = Driver::start().await;
    let before = capacity(&d).await;
    create(&d, sized("pvc-a", 64 * MIB, "required")).await;
    let after = capacity(&d).await;
    // Nothing written yet, yet the 64 MiB are no longer offered (the volume's directory and
    // record move the figure by a few KiB).
    let drop = before - after;
    assert!(
        (64 * MIB..=65 * MIB).contains(&drop),
        "{}: capacity {before} -> {after}",
        filesystem()
    );
    let too_big = d
        .controller()
        .create_volume(sized("pvc-big", after + 16 * MIB, "required"))
        .await;
    assert_eq!(code(&too_big), Code::ResourceExhausted);
    assert!(!d.root().join("volumes/pvc-big").exists());
    let id = create(&d, sized("pvc-b", 16 * MIB, "required")).await;
    let grown = expand(&d, &id, after + 16 * MIB).await;
    assert_eq!(grown.unwrap_err().code(), Code::ResourceExhausted);
}

/// Killed between the steps of create, expand and delete (at the quota call that follows the
/// journal's commit), the driver's next start completes what was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM quota suite's filesystems"]
async fn a_driver_killed_between_quota_steps_is_completed_at_start_up() {
    let mut d = Driver::start().await;
    // A create asks about the room and a free ID, then sets the limit: the 3rd call.
    let strace = kill_at_syscall(&d, "quotactl_fd", 3);
    let lost = d
        .controller()
        .create_volume(sized("pvc-crash", 2 * MIB, "required"))
        .await;
    assert!(lost.is_err(), "the driver was killed mid-create");
    let dir = d.root().join("volumes/pvc-crash");
    assert!(dir.is_dir(), "killed after the directory was made");
    assert_eq!(
        project_of(&dir),
        (0, false),
        "killed before the quota was set"
    );
    restart_after_kill(&mut d, strace).await;
    let (project, inherit) = project_of(&dir);
    assert!(project != 0 && inherit);
    assert_eq!(df(&dir).0, 2 << 20);
    let id = create(&d, sized("pvc-crash", 2 * MIB, "required")).await;
    assert_eq!(
        project_of(&dir).0,
        project,
        "the retry finds the same volume"
    );

    // Expand: the room, then the limit (the 2nd call).
    let strace = kill_at_syscall(&d, "quotactl_fd", 2);
    assert!(expand(&d, &id, 6 * MIB).await.is_err());
    assert_eq!(df(&dir).0, 2 << 20, "killed before the limit was raised");
    restart_after_kill(&mut d, strace).await;
    assert_eq!(
        df(&dir).0,
        6 << 20,
        "the committed size is applied at start-up"
    );
    assert_eq!(expand(&d, &id, 6 * MIB).await.unwrap(), 6 * MIB);

    // Delete: the directory goes, then the limit is cleared (the 1st call).
    let strace = kill_at_syscall(&d, "quotactl_fd", 1);
    assert!(d
        .controller()
        .delete_volume(delete_request(&id))
        .await
        .is_err());
    assert!(
        !dir.exists() && d.record(&id).exists(),
        "killed between the two"
    );
    restart_after_kill(&mut d, strace).await;
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
    use pvdir::os::quota::{ProjectId, Quotas};
    let usage = pvdir::os::quota::KernelQuotas
        .usage(&d.root(), ProjectId::new(project))
        .unwrap();
    assert_eq!(usage.limit_bytes, 0);
    assert!(!dir.exists() && !d.record(&id).exists());
}

/// A filesystem mounted without project quotas (the suite's third run, with TMPDIR on XFS
/// mounted without `prjquota`): `required` is refused with the remedy, `auto` provisions an
/// unlimited volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM quota suite's filesystems"]
async fn without_prjquota_required_is_failed_precondition_and_auto_is_unlimited() {
    if filesystem() != "xfs-noquota" {
        eprintln!(
            "{}: has quotas; this test is for the run without",
            filesystem()
        );
        return;
    }
    let d = Driver::start().await;
    let refused = d
        .controller()
        .create_volume(sized("pvc-r", MIB, "required"))
        .await;
    assert_eq!(code(&refused), Code::FailedPrecondition);
    assert!(refused.unwrap_err().message().contains("prjquota"));
    let id = create(&d, sized("pvc-a", MIB, "auto")).await;
    assert_eq!(project_of(&d.volume_dir(&id)), (0, false));
    // Sizes are not enforced here: df shows the filesystem.
    assert!(df(&d.volume_dir(&id)).0 > 100 << 20);
}
