//! `rename_aside`: renaming a volume's directory to a given name beside it (the archive of
//! `onDelete: archive`), never over anything with content.
//!
//! Invariants: the new name is a single valid component; a symlink, file or mount at the leaf
//! is refused as `walk` reports it. Where the filesystem has renameat2's RENAME_NOREPLACE the
//! rename never replaces anything. The Linux NFS client rejects every renameat2 flag, so there
//! the name is looked up first and a plain rename follows: rename(2) cannot replace a file or a
//! directory with content, so the most it can replace is an empty directory that appeared in
//! between. The caller makes sure no volume can be at that name (it holds the name's record),
//! so no placeholder directory is ever made, which a crash could leave looking like a volume.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;

use super::walk::open_leaf;
use super::{io, RenameOutcome, SafeFsError};
use crate::os::relpath::RelPath;

/// Renames the leaf of `rel` within its parent to `to`.
pub fn rename_aside(base: &Path, rel: &RelPath, to: &str) -> Result<RenameOutcome, SafeFsError> {
    rename_with(base, rel, to, true)
}

fn rename_with(
    base: &Path,
    rel: &RelPath,
    to: &str,
    native_noreplace: bool,
) -> Result<RenameOutcome, SafeFsError> {
    let invalid = || SafeFsError::InvalidName {
        name: to.to_owned(),
    };
    match RelPath::parse(to) {
        Ok(p) if p.parent().is_none() => {}
        _ => return Err(invalid()),
    }
    let Some(leaf) = open_leaf(base, rel)? else {
        return Ok(RenameOutcome::SourceGone);
    };
    drop(leaf.fd);
    let dir = leaf.parent.as_fd();
    let mut result = if native_noreplace {
        rename_noreplace(dir, rel.file_name(), to)
    } else {
        Err(Errno::EINVAL)
    };
    // The Linux NFS client rejects every renameat2 flag with EINVAL.
    if matches!(result, Err(Errno::EINVAL | Errno::ENOSYS)) {
        result = match fstatat(dir, to, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => Err(Errno::EEXIST),
            Err(Errno::ENOENT) => nix::fcntl::renameat(dir, rel.file_name(), dir, to),
            Err(e) => Err(e),
        };
    }
    match result {
        Ok(()) => Ok(RenameOutcome::Renamed),
        Err(Errno::EEXIST | Errno::ENOTEMPTY | Errno::ENOTDIR | Errno::EISDIR) => {
            Ok(RenameOutcome::TargetTaken)
        }
        Err(Errno::ENOENT) => Ok(RenameOutcome::SourceGone),
        Err(Errno::EBUSY) => Err(SafeFsError::CrossesMount { path: leaf.path }),
        Err(e) => Err(io("rename", &leaf.path, e)),
    }
}

/// renameat2(RENAME_NOREPLACE) via libc, which (unlike nix's wrapper) also exists on musl.
fn rename_noreplace(dir: BorrowedFd<'_>, from: &str, to: &str) -> Result<(), Errno> {
    let (from, to) = match (CString::new(from), CString::new(to)) {
        (Ok(from), Ok(to)) => (from, to),
        _ => return Err(Errno::EINVAL),
    };
    let fd = dir.as_raw_fd();
    // SAFETY: both paths are valid NUL-terminated strings and `fd` is a live descriptor.
    let rc = unsafe { libc::renameat2(fd, from.as_ptr(), fd, to.as_ptr(), libc::RENAME_NOREPLACE) };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::super::ensure_dir;
    use super::super::test_support::{rel, tmp, write};
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn check_rename(native: bool) {
        let base = tmp();
        let b = base.path();
        ensure_dir(b, &rel("ns/vol"), None).expect("ensure");
        write(&b.join("ns/vol/data"));
        let got = rename_with(b, &rel("ns/vol"), "archived-vol", native).expect("rename");
        assert_eq!(got, RenameOutcome::Renamed);
        assert!(b.join("ns/archived-vol/data").is_file());
        assert!(!b.join("ns/vol").exists());
        // A retry after the rename (a crash before the record went) finds the source gone.
        let again = rename_with(b, &rel("ns/vol"), "archived-vol", native);
        assert_eq!(again, Ok(RenameOutcome::SourceGone));

        // A name with content, a file or a symlink there is never replaced.
        ensure_dir(b, &rel("ns/vol"), None).expect("ensure");
        write(&b.join("ns/file"));
        symlink("/", b.join("ns/link")).expect("symlink");
        for taken in ["archived-vol", "file", "link"] {
            let got = rename_with(b, &rel("ns/vol"), taken, native).expect("rename");
            assert_eq!(got, RenameOutcome::TargetTaken, "{taken}");
        }
        assert!(b.join("ns/archived-vol/data").is_file(), "never replaced");
        assert!(b.join("ns/vol").is_dir());
    }

    #[test]
    fn rename_aside_never_replaces_content() {
        check_rename(true);
    }

    #[test]
    fn rename_aside_without_noreplace_never_replaces_content() {
        check_rename(false);
    }

    #[test]
    fn rename_aside_rejects_bad_names_symlinks_and_files() {
        let base = tmp();
        let outside = tmp();
        ensure_dir(base.path(), &rel("vol"), None).expect("ensure");
        for bad in ["", "a/b", ".", "..", "x\0y", "/abs", &"x".repeat(256)] {
            let err = rename_aside(base.path(), &rel("vol"), bad).expect_err("bad name");
            assert!(
                matches!(err, SafeFsError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
        symlink(outside.path(), base.path().join("link")).expect("symlink");
        let err = rename_aside(base.path(), &rel("link"), "old").expect_err("symlink");
        assert!(matches!(err, SafeFsError::SymlinkInPath { .. }), "{err}");
        write(&base.path().join("file"));
        let err = rename_aside(base.path(), &rel("file"), "old").expect_err("file");
        assert!(matches!(err, SafeFsError::NotADirectory { .. }), "{err}");
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
    }
}
