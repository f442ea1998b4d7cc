//! The mount table, read independently of the driver's own parser, and the mounts tests plant.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, Clone)]
pub struct MountLine {
    /// The directory inside the mounted filesystem shown here (the bind source for binds).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub readonly: bool,
    /// Per-mount options as the kernel lists them (`ro,nosuid,relatime`).
    pub options: Vec<String>,
    pub fs_type: String,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`; other bytes (also ones that
/// are not UTF-8) are written as they are.
fn unescape(b: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

fn mount_table() -> Vec<MountLine> {
    let text = std::fs::read("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let sep = line.windows(3).position(|w| w == b" - ")?;
            let f: Vec<&[u8]> = line[..sep].split(|b| *b == b' ').collect();
            let options: Vec<String> = f
                .get(5)?
                .split(|b| *b == b',')
                .map(|o| String::from_utf8_lossy(o).into_owned())
                .collect();
            Some(MountLine {
                root: unescape(f.get(3)?),
                mount_point: unescape(f.get(4)?),
                readonly: options.iter().any(|o| o == "ro"),
                options,
                fs_type: String::from_utf8_lossy(line[sep + 3..].split(|b| *b == b' ').next()?)
                    .into_owned(),
            })
        })
        .collect()
}

/// Every mount whose mount point is exactly `path`, oldest first.
pub fn mounts_at(path: &Path) -> Vec<MountLine> {
    mount_table()
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

/// Every mount whose mount point is at or below `base`.
pub fn mounts_below(base: &Path) -> Vec<MountLine> {
    mount_table()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(base))
        .collect()
}

/// Detach every mount at or below `base`, deepest first, stacked mounts included; returns the
/// mount points that are still there afterwards.
pub fn unmount_all_under(base: &Path) -> Vec<PathBuf> {
    for _ in 0..64 {
        let mut points: Vec<PathBuf> = mount_table()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(base))
            .collect();
        if points.is_empty() {
            return points;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in &points {
            let _ = umount2(point, MntFlags::MNT_DETACH);
        }
    }
    mount_table()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(base))
        .collect()
}

pub fn bind_mount(source: &Path, target: &Path) {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("bind {} on {}: {e}", source.display(), target.display()));
}

pub fn tmpfs_mount(target: &Path) {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap_or_else(|e| panic!("tmpfs on {}: {e}", target.display()));
}

pub fn unmount(target: &Path) {
    umount2(target, MntFlags::empty())
        .unwrap_or_else(|e| panic!("umount {}: {e}", target.display()));
}
