//! Parsing `/proc/self/mountinfo`, the driver's source of truth for "is this published?".
//!
//! Publish and unpublish decide what to do by observing the mount table rather than by stat-ing
//! the target: a stat on a mount of a dead NFS server blocks, reading mountinfo never does.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo (see proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent_id: u32,
    /// `major:minor` of the mounted filesystem.
    pub device: String,
    /// The directory inside that filesystem which is mounted here (differs from `/` for binds).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub readonly: bool,
    pub fs_type: String,
    pub source: String,
}

impl MountEntry {
    /// NFS mounts are the ones whose operations can block on a server.
    pub fn is_remote(&self) -> bool {
        matches!(self.fs_type.as_str(), "nfs" | "nfs4")
    }
}

/// Parse the whole table; lines that do not parse are skipped (the kernel format is stable, a
/// bad line means a format we do not understand and must not make every RPC fail).
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let parent_id = l.next()?.parse().ok()?;
    let device = l.next()?.to_string();
    let root = unescape(l.next()?);
    let mount_point = unescape(l.next()?);
    let options = l.next()?;
    let mut r = right.split(' ');
    let fs_type = r.next()?.to_string();
    let source =
        String::from_utf8_lossy(unescape(r.next()?).as_os_str().as_encoded_bytes()).into_owned();
    Some(MountEntry {
        id,
        parent_id,
        device,
        root,
        mount_point,
        readonly: options.split(',').any(|o| o == "ro"),
        fs_type,
        source,
    })
}

/// The kernel escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The topmost mount at `path`, if `path` is a mount point. Later lines are mounted later, so
/// the last match is the one a lookup of `path` sees.
pub fn top_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

/// The mount that holds `path` (longest mount point that is a prefix), topmost first.
pub fn containing<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .rev()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| e.mount_point.as_os_str().len())
}

/// Identity of the directory `path` as a bind-mount source: the filesystem's device and the
/// path inside it. Two mounts whose (device, root) match show the same directory.
pub fn bind_identity(entries: &[MountEntry], path: &Path) -> Option<(String, PathBuf)> {
    let holder = containing(entries, path)?;
    let rest = path.strip_prefix(&holder.mount_point).ok()?;
    let root = if rest.as_os_str().is_empty() {
        holder.root.clone()
    } else {
        holder.root.join(rest)
    };
    Some((holder.device.clone(), root))
}

/// Mounts elsewhere that show `dir` or anything below it (binds of the directory or of a
/// subdirectory), found by the filesystem's device and the path inside it.
pub fn mounts_of_tree<'a>(
    entries: &'a [MountEntry],
    dir: &Path,
) -> impl Iterator<Item = &'a MountEntry> {
    let identity = bind_identity(entries, dir);
    entries.iter().filter(move |e| {
        identity
            .as_ref()
            .is_some_and(|(dev, root)| &e.device == dev && e.root.starts_with(root))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /var/lib/pvdir rw,nosuid shared:9 - tmpfs tmpfs rw,size=1024k
41 22 0:40 /volumes/a /var/lib/kubelet/pods/x/mount ro,relatime shared:9 - tmpfs tmpfs rw
42 22 0:52 / /mnt/with\\040space rw,relatime - nfs4 10.0.0.1:/export/a\\040b rw,vers=4.2
bad line
";

    #[test]
    fn parses_fields_and_escapes() {
        let e = parse(TABLE);
        assert_eq!(e.len(), 4);
        assert_eq!(e[2].root, PathBuf::from("/volumes/a"));
        assert!(e[2].readonly);
        assert!(!e[1].readonly);
        assert_eq!(e[3].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(e[3].source, "10.0.0.1:/export/a b");
        assert!(e[3].is_remote());
        assert!(!e[1].is_remote());
    }

    #[test]
    fn optional_fields_are_skipped() {
        let e = parse("5 1 0:3 / /x rw shared:1 master:2 - proc proc rw\n");
        assert_eq!(e[0].fs_type, "proc");
        assert_eq!(e[0].source, "proc");
    }

    #[test]
    fn bind_identity_matches_bind_root() {
        let e = parse(TABLE);
        let id = bind_identity(&e, Path::new("/var/lib/pvdir/volumes/a")).unwrap();
        assert_eq!(id, ("0:40".to_string(), PathBuf::from("/volumes/a")));
        let target = top_at(&e, Path::new("/var/lib/kubelet/pods/x/mount")).unwrap();
        assert_eq!((target.device.clone(), target.root.clone()), id);
    }

    #[test]
    fn tree_mounts_include_subdirectory_binds_only() {
        let mut e = parse(TABLE);
        e.extend(parse(
            "50 22 0:40 /volumes/a/sub /pods/y/subpath rw - tmpfs tmpfs rw\n\
             51 22 0:40 /volumes/ab /pods/z rw - tmpfs tmpfs rw\n",
        ));
        let found: Vec<u32> = mounts_of_tree(&e, Path::new("/var/lib/pvdir/volumes/a"))
            .map(|m| m.id)
            .collect();
        // Not 51: /volumes/ab only shares a string prefix, not a path prefix.
        assert_eq!(found, vec![41, 50]);
    }

    #[test]
    fn containing_prefers_longest_and_respects_components() {
        let e = parse(TABLE);
        assert_eq!(
            containing(&e, Path::new("/var/lib/pvdirx"))
                .unwrap()
                .mount_point,
            PathBuf::from("/")
        );
        assert_eq!(
            containing(&e, Path::new("/var/lib/pvdir/q")).unwrap().id,
            30
        );
    }

    #[test]
    fn truncated_escape_is_kept_literally() {
        assert_eq!(unescape("a\\04"), PathBuf::from("a\\04"));
        assert_eq!(unescape("\\"), PathBuf::from("\\"));
    }
}
