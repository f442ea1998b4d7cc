//! Harness code shared by the integration tests. A directory module, so cargo does not build
//! it as a test crate of its own; each test file declares `mod common;`.

pub mod real;
pub mod service;

use std::path::Path;

use pvdir::csi::proto as csi;

/// ControllerExpandVolume of `volume_id` to `bytes`.
pub fn expand_request(volume_id: &str, bytes: i64) -> csi::ControllerExpandVolumeRequest {
    csi::ControllerExpandVolumeRequest {
        volume_id: volume_id.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    }
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// The names in `dir` but the marker pvdir leaves in parent directories it made.
pub fn names_but_markers(dir: &Path) -> Vec<String> {
    let mut names = names_in(dir);
    names.retain(|n| n != pvdir::os::safe_fs::OWNED_MARKER);
    names
}

/// The start time of process `pid` (`/proc/<pid>/stat` field 22), as a claim names it.
pub fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}
