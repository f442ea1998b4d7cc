//! `archive`: renaming a volume's directory aside (within its parent) instead of deleting it.
//!
//! Invariants: an archive never replaces anything. The name is taken with renameat2's
//! RENAME_NOREPLACE where the filesystem supports it; the Linux NFS client rejects every
//! renameat2 flag with EINVAL, so there the name is first claimed atomically with mkdir and
//! the rename goes onto that (empty, ours) directory. The archived name must be a single
//! valid component, and a symlink, file or mount at the leaf is refused as `walk` reports it.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::walk::open_leaf;
use super::{io, ArchiveOutcome, SafeFsError};
use crate::os::relpath::RelPath;

/// Highest numeric suffix `archive` tries when the archived name is taken.
pub const MAX_ARCHIVE_SUFFIX: u32 = 1000;

/// Renames the leaf of `rel` within its parent to `archived_name`, or to
/// `archived_name-N` (N = 2..=`MAX_ARCHIVE_SUFFIX`) if taken; never replaces anything.
pub fn archive(
    base: &Path,
    rel: &RelPath,
    archived_name: &str,
) -> Result<ArchiveOutcome, SafeFsError> {
    archive_with(base, rel, archived_name, true)
}

fn archive_with(
    base: &Path,
    rel: &RelPath,
    archived_name: &str,
    mut native_noreplace: bool,
) -> Result<ArchiveOutcome, SafeFsError> {
    let invalid = |name: &str| SafeFsError::InvalidName {
        name: name.to_owned(),
    };
    match RelPath::parse(archived_name) {
        Ok(p) if p.parent().is_none() => {}
        _ => return Err(invalid(archived_name)),
    }
    let Some(leaf) = open_leaf(base, rel)? else {
        return Ok(ArchiveOutcome::AlreadyGone);
    };
    drop(leaf.fd);
    let dir = leaf.parent.as_fd();
    let mut n = 1;
    while n <= MAX_ARCHIVE_SUFFIX {
        let candidate = match n {
            1 => archived_name.to_owned(),
            _ => format!("{archived_name}-{n}"),
        };
        // Re-validating also rejects a suffixed name longer than NAME_MAX.
        let to = rel
            .parent()
            .map_or_else(|| RelPath::parse(&candidate), |p| p.join(&candidate))
            .map_err(|_| invalid(&candidate))?;
        let result = if native_noreplace {
            rename_noreplace(dir, rel.file_name(), &candidate)
        } else {
            claim_and_rename(dir, rel.file_name(), &candidate)
        };
        match result {
            Ok(()) => return Ok(ArchiveOutcome::Archived { to }),
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => n += 1,
            Err(Errno::ENOENT) => return Ok(ArchiveOutcome::AlreadyGone),
            // The Linux NFS client rejects every renameat2 flag with EINVAL: fall back and
            // retry the same candidate.
            Err(Errno::EINVAL | Errno::ENOSYS) if native_noreplace => native_noreplace = false,
            Err(Errno::EBUSY) => return Err(SafeFsError::CrossesMount { path: leaf.path }),
            Err(e) => return Err(io("rename", &leaf.path, e)),
        }
    }
    Err(io("rename", &leaf.path, Errno::EEXIST))
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

/// No-replace rename for filesystems without RENAME_NOREPLACE: claim `to` atomically with
/// mkdir, then rename onto the claimed (empty) directory, which rename may replace.
fn claim_and_rename(dir: BorrowedFd<'_>, from: &str, to: &str) -> Result<(), Errno> {
    mkdirat(dir, to, Mode::from_bits_truncate(0o700))?;
    nix::fcntl::renameat(dir, from, dir, to).inspect_err(|_| {
        // Best effort: if someone wrote into the claim it is no longer ours to remove.
        let _ = unlinkat(dir, to, UnlinkatFlags::RemoveDir);
    })
}

#[cfg(test)]
mod tests {
    use super::super::ensure_dir;
    use super::super::test_support::{rel, tmp, write};
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn check_archive(native: bool) {
        let base = tmp();
        let b = base.path();
        ensure_dir(b, &rel("ns/vol"), None).expect("ensure");
        write(&b.join("ns/vol/data"));
        let got = archive_with(b, &rel("ns/vol"), "archived-vol", native).expect("archive");
        assert_eq!(
            got,
            ArchiveOutcome::Archived {
                to: rel("ns/archived-vol")
            }
        );
        assert!(b.join("ns/archived-vol/data").is_file());
        assert!(!b.join("ns/vol").exists());
        let again = archive_with(b, &rel("ns/vol"), "archived-vol", native);
        assert_eq!(again, Ok(ArchiveOutcome::AlreadyGone));

        for expected in ["ns/archived-vol-2", "ns/archived-vol-3"] {
            ensure_dir(b, &rel("ns/vol"), None).expect("ensure");
            let got = archive_with(b, &rel("ns/vol"), "archived-vol", native).expect("archive");
            assert_eq!(got, ArchiveOutcome::Archived { to: rel(expected) });
        }
        assert!(b.join("ns/archived-vol/data").is_file(), "never replaced");
        let got = archive_with(b, &rel("ns"), "old-ns", native).expect("archive top");
        assert_eq!(got, ArchiveOutcome::Archived { to: rel("old-ns") });
    }

    #[test]
    fn archive_renames_without_replacing() {
        check_archive(true);
    }

    #[test]
    fn archive_fallback_for_filesystems_without_noreplace() {
        check_archive(false);
    }

    #[test]
    fn archive_rejects_bad_names_symlinks_and_files() {
        let base = tmp();
        let outside = tmp();
        ensure_dir(base.path(), &rel("vol"), None).expect("ensure");
        for bad in ["", "a/b", ".", "..", "x\0y", "/abs", &"x".repeat(256)] {
            let err = archive(base.path(), &rel("vol"), bad).expect_err("bad name");
            assert!(
                matches!(err, SafeFsError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
        let err = archive(base.path(), &rel("vol"), &"x".repeat(254)).expect("fits");
        assert!(matches!(err, ArchiveOutcome::Archived { .. }));
        ensure_dir(base.path(), &rel("vol"), None).expect("ensure");
        let err = archive(base.path(), &rel("vol"), &"x".repeat(254)).expect_err("no room");
        assert!(matches!(err, SafeFsError::InvalidName { .. }), "{err}");

        symlink(outside.path(), base.path().join("link")).expect("symlink");
        let err = archive(base.path(), &rel("link"), "old").expect_err("symlink");
        assert!(matches!(err, SafeFsError::SymlinkInPath { .. }), "{err}");
        write(&base.path().join("file"));
        let err = archive(base.path(), &rel("file"), "old").expect_err("file");
        assert!(matches!(err, SafeFsError::NotADirectory { .. }), "{err}");
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
    }
}
