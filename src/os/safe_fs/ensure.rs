//! `ensure_dir`: creating a directory below `base`, and the owner markers it leaves in the
//! parents it creates.
//!
//! Invariants: `OWNED_MARKER` is written only into parents this call itself created (never
//! into one that already existed, nor into the leaf), so `prune` can tell the driver's
//! directories from anyone else's. Only the leaf is ever chmodded, never a parent or `base`.
//! Every component is (re)opened with O_NOFOLLOW, even after our own mkdir, since a racing
//! creator may have put a symlink there.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};

use super::walk::{open_base, open_dir_at};
use super::{io, EnsureOutcome, SafeFsError};
use crate::os::relpath::RelPath;

/// Marker file placed in every parent directory that `ensure_dir` itself created, so that
/// `prune_owned_parents` only ever removes directories the driver made.
pub const OWNED_MARKER: &str = ".pvdir-owned";
/// Whole-walk retries when a concurrent prune removes a parent `ensure_dir` is creating in.
const MAX_ENSURE_ATTEMPTS: u32 = 16;

/// Creates `OWNED_MARKER` in `dir` (whose path is `path`, used only for errors); an existing
/// marker is fine.
pub(super) fn create_marker(dir: BorrowedFd<'_>, path: &Path) -> Result<(), SafeFsError> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir, OWNED_MARKER, flags, Mode::from_bits_truncate(0o644)) {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(io("create owner marker in", path, e)),
    }
}

/// Creates `rel` below `base` (parents 0o755, each marked with `OWNED_MARKER` if this call
/// created it) and, if `mode` is given, sets the leaf's permission bits (0o7777 mask) to it
/// explicitly, since mkdir's mode is subject to umask. Parents and `base` are never chmodded.
pub fn ensure_dir(
    base: &Path,
    rel: &RelPath,
    mode: Option<u32>,
) -> Result<EnsureOutcome, SafeFsError> {
    let mut attempt = 1;
    loop {
        match ensure_walk(base, rel, mode) {
            // A concurrent prune may remove a parent between our open and our mkdir in it.
            Err(e) if e.is_not_found() && attempt < MAX_ENSURE_ATTEMPTS => attempt += 1,
            other => return other,
        }
    }
}

fn ensure_walk(
    base: &Path,
    rel: &RelPath,
    mode: Option<u32>,
) -> Result<EnsureOutcome, SafeFsError> {
    let mut cur = open_base(base)?;
    let mut path = base.to_path_buf();
    let mut created = false;
    let mut segments = rel.segments().map(OsStr::new).peekable();
    while let Some(name) = segments.next() {
        created = false;
        let fd = match open_dir_at(cur.as_fd(), &path, name)? {
            Some(fd) => fd,
            None => {
                match mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => created = true,
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io("create directory", &path.join(name), e)),
                }
                // Reopen with O_NOFOLLOW: whoever won an EEXIST race may have made a symlink.
                open_dir_at(cur.as_fd(), &path, name)?
                    .ok_or_else(|| io("open directory", &path.join(name), Errno::ENOENT))?
            }
        };
        path.push(name);
        if created && segments.peek().is_some() {
            create_marker(fd.as_fd(), &path)?;
        }
        cur = fd;
    }
    if let Some(mode) = mode {
        let want = Mode::from_bits_truncate(mode & 0o7777);
        let st = fstat(cur.as_fd()).map_err(|e| io("stat", &path, e))?;
        // Skipping a no-op chmod avoids a spurious EPERM on root_squash NFS.
        if Mode::from_bits_truncate(st.st_mode & 0o7777) != want {
            fchmod(cur.as_fd(), want).map_err(|e| io("chmod", &path, e))?;
        }
    }
    Ok(EnsureOutcome { created })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{rel, tmp, write};
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn ensure_dir_creates_nested_marks_created_parents_and_chmods_only_leaf() {
        let base = tmp();
        let b = base.path();
        fs::DirBuilder::new()
            .mode(0o755)
            .create(b.join("pre"))
            .expect("mkdir");
        let reference = b.join("reference");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&reference)
            .expect("mkdir");
        fs::set_permissions(b, fs::Permissions::from_mode(0o711)).expect("chmod base");

        let out = ensure_dir(b, &rel("pre/a/b/leaf"), Some(0o2770)).expect("ensure");
        assert_eq!(out, EnsureOutcome { created: true });
        assert!(
            !b.join("pre").join(OWNED_MARKER).exists(),
            "pre-existing dir marked"
        );
        assert!(b.join("pre/a").join(OWNED_MARKER).is_file());
        assert!(b.join("pre/a/b").join(OWNED_MARKER).is_file());
        assert!(
            !b.join("pre/a/b/leaf").join(OWNED_MARKER).exists(),
            "leaf marked"
        );
        assert_eq!(mode_of(&b.join("pre/a/b/leaf")), 0o2770);
        assert_eq!(mode_of(&b.join("pre/a")), mode_of(&reference));
        assert_eq!(mode_of(&b.join("pre/a/b")), mode_of(&reference));
        assert_eq!(mode_of(&b.join("pre")), mode_of(&reference));
        assert_eq!(mode_of(b), 0o711);

        let again = ensure_dir(b, &rel("pre/a/b/leaf"), Some(0o2770)).expect("ensure again");
        assert_eq!(again, EnsureOutcome { created: false });
    }

    #[test]
    fn ensure_dir_mode_is_not_masked_by_umask_and_none_leaves_mode() {
        let base = tmp();
        ensure_dir(base.path(), &rel("open"), Some(0o777)).expect("ensure");
        assert_eq!(mode_of(&base.path().join("open")), 0o777);
        ensure_dir(base.path(), &rel("open"), None).expect("ensure without mode");
        assert_eq!(mode_of(&base.path().join("open")), 0o777);
    }

    #[test]
    fn ensure_dir_refuses_symlink_components() {
        let base = tmp();
        let outside = tmp();
        symlink(outside.path(), base.path().join("link")).expect("symlink");
        let err = ensure_dir(base.path(), &rel("link/x/y"), None).expect_err("symlink parent");
        assert_eq!(
            err,
            SafeFsError::SymlinkInPath {
                path: base.path().join("link")
            }
        );
        let err = ensure_dir(base.path(), &rel("link"), Some(0o777)).expect_err("symlink leaf");
        assert!(matches!(err, SafeFsError::SymlinkInPath { .. }), "{err}");
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
        assert_ne!(mode_of(outside.path()), 0o777);
    }

    #[test]
    fn ensure_dir_rejects_file_and_missing_base() {
        let base = tmp();
        write(&base.path().join("file"));
        let err = ensure_dir(base.path(), &rel("file"), None).expect_err("file leaf");
        assert!(matches!(err, SafeFsError::NotADirectory { .. }), "{err}");
        let err = ensure_dir(base.path(), &rel("file/x"), None).expect_err("file parent");
        assert!(matches!(err, SafeFsError::NotADirectory { .. }), "{err}");
        let missing = base.path().join("missing");
        let err = ensure_dir(&missing, &rel("x"), None).expect_err("no base");
        assert!(matches!(err, SafeFsError::OpenBase { .. }), "{err}");
        assert!(err.is_not_found());
    }
}
