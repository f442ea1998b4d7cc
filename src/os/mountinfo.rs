//! Parsing `/proc/self/mountinfo`, the driver's source of truth for "is this published?".
//!
//! Publish and unpublish decide what to do by observing the mount table rather than by stat-ing
//! the target: a stat on a mount of a dead NFS server blocks, reading mountinfo never does.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::mount_flags::MountFlags;

/// One line of mountinfo (see proc(5)). Paths and the source are bytes, as the kernel gives
/// them: anyone who can rename a directory that is bind-mounted somewhere (a pod renaming the
/// source of a kubelet subPath mount) chooses bytes that appear here, and none of them may
/// make the table unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent_id: u32,
    /// `major:minor` of the mounted filesystem.
    pub device: String,
    /// The directory inside that filesystem which is mounted here (differs from `/` for binds).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount flags (`ro`, `nosuid`, …).
    pub flags: MountFlags,
    /// Whether the mount is in a shared peer group (`shared:N`), so that mounts made below it
    /// propagate to its peers.
    pub shared: bool,
    pub fs_type: String,
    pub source: OsString,
}

impl MountEntry {
    /// NFS mounts are the ones whose operations can block on a server.
    pub fn is_remote(&self) -> bool {
        matches!(self.fs_type.as_str(), "nfs" | "nfs4")
    }

    pub fn readonly(&self) -> bool {
        self.flags.contains(MountFlags::READ_ONLY)
    }

    /// Whether the mount source is exactly `source` (such as `server:/export/dir`).
    pub fn source_is(&self, source: &str) -> bool {
        self.source.as_bytes() == source.as_bytes()
    }
}

/// Parse the whole table. A line that does not parse is skipped rather than failing the
/// table: one odd mount somewhere on the node must not stop every call for every volume.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|b| *b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let (left, right) = (&line[..sep], &line[sep + 3..]);
    let mut l = left.split(|b| *b == b' ');
    let id = ascii(l.next()?)?.parse().ok()?;
    let parent_id = ascii(l.next()?)?.parse().ok()?;
    let device = ascii(l.next()?)?.to_string();
    let root = PathBuf::from(unescape(l.next()?));
    let mount_point = PathBuf::from(unescape(l.next()?));
    let flags = MountFlags::from_mountinfo(l.next()?);
    // Optional fields (`shared:1 master:2`) run up to the separator.
    let shared = l.any(|field| field.starts_with(b"shared:"));
    let mut r = right.split(|b| *b == b' ');
    let fs_type = unescape(r.next()?).to_string_lossy().into_owned();
    let source = unescape(r.next()?);
    Some(MountEntry {
        id,
        parent_id,
        device,
        root,
        mount_point,
        flags,
        shared,
        fs_type,
        source,
    })
}

fn ascii(field: &[u8]) -> Option<&str> {
    std::str::from_utf8(field).ok()
}

/// The kernel escapes space, tab, newline and backslash as `\ooo` octal; every other byte,
/// including bytes that are not UTF-8, is written as it is.
fn unescape(field: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let oct = &field[i + 1..i + 4];
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
        out.push(field[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// The topmost mount at `path`, if `path` is a mount point: of several stacked there, the one
/// no other mount at `path` sits on (its ID is no other's parent). Table order alone is not
/// enough: a mount propagated in beneath an existing one (tucked, since Linux 4.11) or moved
/// there is listed after the mount that covers it. Without such a relation (a malformed
/// table), the last listed.
pub fn top_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    topmost(entries.iter().filter(|e| e.mount_point == path))
}

/// Of mounts at one mount point, the one none of the others sits on; else the last.
fn topmost<'a>(at: impl Iterator<Item = &'a MountEntry>) -> Option<&'a MountEntry> {
    let stack: Vec<&MountEntry> = at.collect();
    let covered = |m: &MountEntry| stack.iter().any(|o| o.parent_id == m.id && o.id != m.id);
    stack
        .iter()
        .rev()
        .find(|m| !covered(m))
        .or(stack.last())
        .copied()
}

/// The mount that holds `path`: the longest mount point that is a prefix, and of several
/// stacked there the topmost (the last listed), which is the one a lookup of `path` sees.
pub fn containing<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    // Of the stack at the longest prefix, the topmost (see top_at). Taking the covered one
    // once meant that on a machine with two tmpfs stacked at /dev/shm a local root below it
    // never recognised its own publishes.
    let point = entries
        .iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| e.mount_point.as_os_str().len())?
        .mount_point
        .clone();
    top_at(entries, &point)
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

    const TABLE: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /var/lib/pvdir rw,nosuid shared:9 - tmpfs tmpfs rw,size=1024k
41 22 0:40 /volumes/a /var/lib/kubelet/pods/x/mount ro,relatime shared:9 - tmpfs tmpfs rw
42 22 0:52 / /mnt/with\\040space rw,relatime - nfs4 10.0.0.1:/export/a\\040b rw,vers=4.2
bad line
";

    fn os(bytes: &[u8]) -> PathBuf {
        PathBuf::from(OsString::from_vec(bytes.to_vec()))
    }

    #[test]
    fn parses_fields_and_escapes() {
        let e = parse(TABLE);
        assert_eq!(e.len(), 4);
        assert_eq!(e[2].root, PathBuf::from("/volumes/a"));
        assert!(e[2].readonly());
        assert!(!e[1].readonly());
        assert_eq!(e[1].flags, MountFlags::NOSUID);
        assert!(e[1].shared && !e[3].shared);
        assert_eq!(e[3].mount_point, PathBuf::from("/mnt/with space"));
        assert!(e[3].source_is("10.0.0.1:/export/a b"));
        assert!(e[3].is_remote());
        assert!(!e[1].is_remote());
    }

    #[test]
    fn optional_fields_are_skipped() {
        let e = parse(b"5 1 0:3 / /x rw shared:1 master:2 - proc proc rw\n");
        assert_eq!(e[0].fs_type, "proc");
        assert!(e[0].source_is("proc"));
        assert!(e[0].shared);
    }

    /// A pod that renames the source of its subPath mount to a name that is not UTF-8 puts
    /// those bytes into the plugin's mount table (the root field), and can do the same to a
    /// mount point or a source. Every other line must still be read.
    #[test]
    fn bytes_that_are_not_utf8_are_kept_and_spoil_nothing() {
        let mut table = TABLE.to_vec();
        table.extend_from_slice(
            b"60 22 0:40 /volumes/\xff /pods/\xfe/sub rw - tmpfs tmpfs\xff rw\n\
              61 22 0:53 / /mnt/n rw - nfs4 srv:/export/\xc3\x28 rw\n\
              \xff\xfe garbage \x00\n\
              62 22 0:40 /volumes/b /pods/ok rw - tmpfs tmpfs rw\n",
        );
        let e = parse(&table);
        assert_eq!(e.len(), 7, "{e:#?}");
        assert_eq!(e[4].root, os(b"/volumes/\xff"));
        assert_eq!(e[4].mount_point, os(b"/pods/\xfe/sub"));
        assert_eq!(e[5].source.as_bytes(), b"srv:/export/\xc3\x28");
        assert!(!e[5].source_is("srv:/export/\u{fffd}("), "no lossy matches");
        assert_eq!(e[6].mount_point, PathBuf::from("/pods/ok"));
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
            b"50 22 0:40 /volumes/a/sub /pods/y/subpath rw - tmpfs tmpfs rw\n\
              51 22 0:40 /volumes/ab /pods/z rw - tmpfs tmpfs rw\n",
        ));
        let found: Vec<u32> = mounts_of_tree(&e, Path::new("/var/lib/pvdir/volumes/a"))
            .map(|m| m.id)
            .collect();
        // Not 51: /volumes/ab only shares a string prefix, not a path prefix.
        assert_eq!(found, vec![41, 50]);
    }

    /// Found by `pvdir load` with the local root in /dev/shm on a machine where two tmpfs are
    /// stacked there: the covered one was taken, so a publish retry found "a different mount"
    /// and NodeGetVolumeStats found no volume.
    #[test]
    fn containing_takes_the_topmost_of_stacked_mounts() {
        let e = parse(
            b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
              25 22 0:23 / /dev/shm rw - tmpfs tmpfs rw\n\
              30 25 0:27 / /dev/shm rw - tmpfs tmpfs rw\n",
        );
        let path = Path::new("/dev/shm/pvdir/volumes/a");
        assert_eq!(containing(&e, path).unwrap().id, 30);
        assert_eq!(
            bind_identity(&e, path),
            Some(("0:27".to_string(), PathBuf::from("/pvdir/volumes/a")))
        );
    }

    /// A mount propagated in beneath an existing one is listed after it, though covered.
    #[test]
    fn the_topmost_is_found_by_parents_not_by_order() {
        let e = parse(
            b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
              30 22 0:27 / /data rw - tmpfs tmpfs rw\n\
              25 22 0:23 / /data rw - tmpfs tmpfs rw\n",
        );
        // 30 sits on 22, 25 on 22: neither covers the other; the last listed wins.
        assert_eq!(top_at(&e, Path::new("/data")).unwrap().id, 25);
        let tucked = parse(
            b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
              30 22 0:27 / /data rw - tmpfs tmpfs rw\n\
              25 22 0:23 / /data rw - tmpfs tmpfs rw\n\
              31 25 0:27 / /data rw - tmpfs tmpfs rw\n",
        );
        // 31 sits on 25: 25 is covered although listed after 30; 31 is on top.
        assert_eq!(top_at(&tucked, Path::new("/data")).unwrap().id, 31);
        let moved_under = parse(
            b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
              30 25 0:27 / /data rw - tmpfs tmpfs rw\n\
              25 22 0:23 / /data rw - tmpfs tmpfs rw\n",
        );
        // 30 sits on 25, which is listed later: 30 is still the top.
        assert_eq!(top_at(&moved_under, Path::new("/data")).unwrap().id, 30);
        assert_eq!(
            containing(&moved_under, Path::new("/data/x")).unwrap().id,
            30
        );
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
        assert_eq!(unescape(b"a\\04"), OsString::from("a\\04"));
        assert_eq!(unescape(b"\\"), OsString::from("\\"));
        assert_eq!(unescape(b"\\777"), OsString::from("\\777"));
    }
}
