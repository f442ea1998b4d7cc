//! CSI requests and small helpers for the real-mount tests.

use std::path::{Path, PathBuf};

use pvdir::csi::proto as csi;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use tonic::{Code, Response, Status};

use super::driver::{Driver, NODE_ID};

pub const MIB: i64 = 1 << 20;

pub fn capability(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume::default(),
        )),
    }
}

pub fn create_request(name: &str, mode: Mode, capacity: i64) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: capacity,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability(mode)],
        ..Default::default()
    }
}

pub fn delete_request(volume_id: &str) -> csi::DeleteVolumeRequest {
    csi::DeleteVolumeRequest {
        volume_id: volume_id.to_string(),
        ..Default::default()
    }
}

pub fn publish_request(
    volume_id: &str,
    target: &Path,
    mode: Mode,
    readonly: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.to_string(),
        target_path: target.to_str().expect("UTF-8 target").to_string(),
        volume_capability: Some(capability(mode)),
        readonly,
        ..Default::default()
    }
}

pub fn unpublish_request(volume_id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.to_string(),
        target_path: target.to_str().expect("UTF-8 target").to_string(),
    }
}

pub fn stats_request(volume_id: &str, path: &Path) -> csi::NodeGetVolumeStatsRequest {
    csi::NodeGetVolumeStatsRequest {
        volume_id: volume_id.to_string(),
        volume_path: path.to_str().expect("UTF-8 path").to_string(),
        staging_target_path: String::new(),
    }
}

/// The key (last field) of a local volume ID; plain names are not percent-encoded.
pub fn key_of(volume_id: &str) -> &str {
    volume_id.rsplit('#').next().expect("split yields one item")
}

/// The code of a call's result (OK for success).
pub fn code<T>(result: &Result<Response<T>, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Assert a call ended with `want`, showing the full status otherwise.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<Response<T>, Status>,
    want: Code,
    what: &str,
) {
    let got = code(&result);
    assert_eq!(got, want, "{what}: expected {want:?}, got {result:?}");
}

/// Assert a call succeeded and return its reply.
#[track_caller]
pub fn expect_ok<T>(result: Result<Response<T>, Status>, what: &str) -> T {
    match result {
        Ok(r) => r.into_inner(),
        Err(status) => panic!("{what}: expected OK, got {status:?}"),
    }
}

pub async fn create_volume(driver: &Driver, name: &str, mode: Mode) -> String {
    let reply = expect_ok(
        driver
            .controller()
            .create_volume(create_request(name, mode, MIB))
            .await,
        "CreateVolume",
    );
    let id = reply
        .volume
        .expect("CreateVolume returns a volume")
        .volume_id;
    assert!(
        id.starts_with(&format!("v1#local#{NODE_ID}#")),
        "unexpected volume id {id:?}"
    );
    assert!(
        driver.volume_dir(&id).is_dir(),
        "volume directory of {id} not created"
    );
    id
}

pub async fn publish(
    driver: &Driver,
    id: &str,
    target: &Path,
    mode: Mode,
    readonly: bool,
) -> Result<(), Status> {
    driver
        .node()
        .node_publish_volume(publish_request(id, target, mode, readonly))
        .await
        .map(|_| ())
}

/// Make `<base>/pods/<pod>` (the CO creates the target's parent) and return `<…>/mount`.
pub fn target_in_pod(driver: &Driver, pod: &str) -> PathBuf {
    let parent = driver.path(&format!("pods/{pod}"));
    std::fs::create_dir_all(&parent).expect("create pod directory");
    parent.join("mount")
}

#[track_caller]
pub fn assert_read_only(dir: &Path) {
    let err = std::fs::write(dir.join("probe"), b"x")
        .expect_err("a write through a read-only publish must fail");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "write in {}: {err}",
        dir.display()
    );
}
