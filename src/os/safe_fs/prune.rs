//! `prune_owned_parents`: removing the empty parents that `ensure_dir` created, bottom-up.
//!
//! Invariants: a directory is removed only if it holds nothing but `OWNED_MARKER` (so it was
//! created by `ensure_dir` and is unused); pruning stops at the first foreign or non-empty
//! parent and never touches `base`. If an entry races in after the marker is unlinked, the
//! marker is put back, so the directory stays recognisably ours.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::ensure::{create_marker, OWNED_MARKER};
use super::walk::{open_base, open_dir_at, rmdir_at};
use super::{io, SafeFsError};
use crate::os::relpath::RelPath;

/// Removes the parents of `rel` that `ensure_dir` created (they hold only `OWNED_MARKER`),
/// bottom-up from the deepest one that exists, stopping at the first that is foreign or in
/// use. Never touches `base`. Returns how many directories were removed.
pub fn prune_owned_parents(base: &Path, rel: &RelPath) -> Result<u32, SafeFsError> {
    let base_fd = open_base(base)?;
    let parent_rel = rel.parent();
    let mut chain: Vec<(Dir, &OsStr)> = Vec::new();
    let mut path = base.to_path_buf();
    // Starting from the deepest existing parent lets a retry finish a partial prune.
    for name in parent_rel
        .iter()
        .flat_map(RelPath::segments)
        .map(OsStr::new)
    {
        let parent = chain.last().map_or(base_fd.as_fd(), |(d, _)| d.as_fd());
        let Some(fd) = open_dir_at(parent, &path, name)? else {
            break;
        };
        path.push(name);
        let dir = Dir::from_fd(fd).map_err(|e| io("read directory", &path, e))?;
        chain.push((dir, name));
    }
    let mut removed = 0;
    while let Some((mut dir, name)) = chain.pop() {
        if !holds_only_marker(&mut dir, &path)? {
            break;
        }
        match unlinkat(dir.as_fd(), OWNED_MARKER, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => {}
            // Another pruner got here first, or the "marker" is a directory: not ours.
            Err(Errno::ENOENT | Errno::EISDIR) => break,
            Err(e) => return Err(io("unlink owner marker in", &path, e)),
        }
        let parent = chain.last().map_or(base_fd.as_fd(), |(d, _)| d.as_fd());
        match rmdir_at(parent, name, &path) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                // Someone raced a new entry in (or rmdir failed): it lives on, still ours.
                create_marker(dir.as_fd(), &path)?;
                return match e {
                    SafeFsError::NotEmpty { .. } => Ok(removed),
                    e => Err(e),
                };
            }
        }
        path.pop();
    }
    Ok(removed)
}

fn holds_only_marker(dir: &mut Dir, path: &Path) -> Result<bool, SafeFsError> {
    let mut found = false;
    for entry in dir.iter() {
        let entry = entry.map_err(|e| io("read directory", path, e))?;
        match entry.file_name().to_bytes() {
            b"." | b".." => {}
            name if name == OWNED_MARKER.as_bytes() => found = true,
            _ => return Ok(false),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{rel, tmp, write};
    use super::super::{ensure_dir, remove_tree};
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn prune_removes_owned_empty_parents_but_never_base() {
        let base = tmp();
        write(&base.path().join(OWNED_MARKER));
        ensure_dir(base.path(), &rel("a/b/c/leaf"), None).expect("ensure");
        remove_tree(base.path(), &rel("a/b/c/leaf")).expect("remove");
        assert_eq!(prune_owned_parents(base.path(), &rel("a/b/c/leaf")), Ok(3));
        assert!(base.path().is_dir());
        assert!(!base.path().join("a").exists());
        assert_eq!(prune_owned_parents(base.path(), &rel("a/b/c/leaf")), Ok(0));
        assert_eq!(prune_owned_parents(base.path(), &rel("single")), Ok(0));
    }

    #[test]
    fn prune_stops_at_not_owned_and_not_empty() {
        let base = tmp();
        fs::create_dir(base.path().join("pre")).expect("mkdir");
        ensure_dir(base.path(), &rel("pre/a/one"), None).expect("ensure");
        ensure_dir(base.path(), &rel("pre/a/two"), None).expect("ensure");
        remove_tree(base.path(), &rel("pre/a/one")).expect("remove");
        assert_eq!(prune_owned_parents(base.path(), &rel("pre/a/one")), Ok(0));
        assert!(base.path().join("pre/a").join(OWNED_MARKER).is_file());

        remove_tree(base.path(), &rel("pre/a/two")).expect("remove");
        assert_eq!(prune_owned_parents(base.path(), &rel("pre/a/two")), Ok(1));
        assert!(base.path().join("pre").is_dir(), "not owned");
        assert!(!base.path().join("pre/a").exists());
    }

    #[test]
    fn prune_resumes_from_deepest_existing_parent() {
        let base = tmp();
        ensure_dir(base.path(), &rel("a/b/leaf"), None).expect("ensure");
        remove_tree(base.path(), &rel("a/b/leaf")).expect("remove");
        fs::remove_file(base.path().join("a/b").join(OWNED_MARKER)).expect("rm marker");
        fs::remove_dir(base.path().join("a/b")).expect("rmdir");
        assert_eq!(prune_owned_parents(base.path(), &rel("a/b/leaf")), Ok(1));
        assert!(!base.path().join("a").exists());
    }

    #[test]
    fn prune_refuses_symlink_parent() {
        let base = tmp();
        let outside = tmp();
        write(&outside.path().join(OWNED_MARKER));
        symlink(outside.path(), base.path().join("link")).expect("symlink");
        let err = prune_owned_parents(base.path(), &rel("link/leaf")).expect_err("symlink");
        assert!(matches!(err, SafeFsError::SymlinkInPath { .. }), "{err}");
        assert!(outside.path().join(OWNED_MARKER).is_file());
    }
}
