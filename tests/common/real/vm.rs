//! Harness for the VM tier (`tests/vm_nfs*.rs`): the guest's kernel NFS server (see
//! tests/vm/guest/nfs-server.sh), and requests for the seed's NFS StorageClass.

use std::path::{Path, PathBuf};
use std::process::Command;

use pvdir::csi::proto as csi;

use super::requests::create_request;
use csi::volume_capability::access_mode::Mode;

/// Bound given to the driver for anything that can block on the server.
pub const NFS_TIMEOUT_SECS: u64 = 5;

pub fn export() -> PathBuf {
    PathBuf::from(
        std::env::var("PVDIR_VM_EXPORT").expect("run inside the VM suite (PVDIR_VM_EXPORT)"),
    )
}

pub fn claim(ordinal: u32, on_delete: &str, options: &[&str]) -> csi::CreateVolumeRequest {
    let mut req = create_request(
        &format!("pvc-{on_delete}-{ordinal}"),
        Mode::MultiNodeMultiWriter,
        1 << 30,
    );
    req.volume_capabilities[0] = nfs_capability(Mode::MultiNodeMultiWriter, options);
    for (k, v) in [
        ("server", "127.0.0.1".to_string()),
        ("share", "/".to_string()),
        (
            "subDir",
            "${pvc.metadata.namespace}/${pvc.metadata.name}".to_string(),
        ),
        ("onDelete", on_delete.to_string()),
        (
            "csi.storage.k8s.io/pvc/namespace",
            format!("seed-{on_delete}"),
        ),
        ("csi.storage.k8s.io/pvc/name", format!("www-web-{ordinal}")),
        (
            "csi.storage.k8s.io/pv/name",
            format!("pvc-{on_delete}-{ordinal}"),
        ),
    ] {
        req.parameters.insert(k.to_string(), v);
    }
    req
}

pub fn nfs_capability(mode: Mode, options: &[&str]) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                mount_flags: options.iter().map(|o| o.to_string()).collect(),
                ..Default::default()
            },
        )),
    }
}

pub fn nfs_publish(id: &str, target: &Path, options: &[&str]) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(nfs_capability(Mode::MultiNodeMultiWriter, options)),
        ..Default::default()
    }
}

/// Stop (`"0"`) or start kernel nfsd (NFSv3 and v4, as nfs-server.sh starts it).
pub fn nfsd(threads: &str) {
    let ok = Command::new("rpc.nfsd")
        .arg(threads)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "rpc.nfsd {threads}");
    if threads != "0" {
        // A restarted server would hold new OPENs for its grace period; no client here has
        // state to reclaim (see nfs-server.sh).
        std::fs::write("/proc/fs/nfsd/v4_end_grace", b"Y").expect("end the grace period");
    }
}

/// Live processes (not zombies) whose command name is `comm`, such as `mount.nfs` or `pvdir`.
pub fn processes_named(comm: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(&format!("({comm})")) && !stat.contains(") Z ")
        })
        .collect()
}

pub const OPTIONS: &[&str] = &["vers=4.2", "hard", "timeo=20", "retrans=1"];

/// An export that tests may destroy and recreate: a plain directory of the guest's export
/// tmpfs, exported on its own (see nfs-server.sh), reached as `127.0.0.1:/volatile`.
pub const VOLATILE_SHARE: &str = "/volatile";

/// What a restore from backup or a failover to a replica does: the export's tree comes back
/// with the same names and content but new inodes, so every file handle a client holds on it
/// is stale. The server is stopped meanwhile, as for a real restore.
pub fn recreate_export(dir: &Path) {
    nfsd("0");
    let restored = dir.with_extension("restored");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(dir)
        .arg(&restored)
        .status()
        .is_ok_and(|s| s.success());
    assert!(copied, "copy {}", dir.display());
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::rename(&restored, dir).unwrap();
    // The kernel caches the export's old root; have it look the path up again.
    let flushed = Command::new("exportfs")
        .arg("-f")
        .status()
        .is_ok_and(|s| s.success());
    assert!(flushed, "exportfs -f");
    nfsd("8");
}

/// Run `call` and say how long it took.
pub async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = call.await;
    (out, started.elapsed())
}
