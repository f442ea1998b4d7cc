//! Compare-and-swap on a record, for filesystems (NFS) that have no atomic compare.
//!
//! [`swap_record`] renames the record to a tomb name only this caller uses (of several callers
//! taking one record, exactly one gets it) and compares what it held with what the caller
//! expects, as JSON values (so the order of the fields does not matter). If they are the same it
//! publishes the new record exclusively (link(2), which fails if the name was taken meanwhile)
//! and drops the tomb; if not, it puts the record back. So a record is never overwritten
//! blindly: a writer that lost a race finds the name taken, never someone else's record
//! replaced.

use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{renameat, AtFlags};
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};

use serde::{Deserialize, Serialize};

use super::record::{check_name, open_dir, read_one, write_record};
use super::scratch::{scratch_name, Scratch};
use super::{io, SafeFsError};
use crate::os::relpath::RelPath;

/// What [`swap_record`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwapOutcome {
    /// The record was the one expected, and is now the new one (or gone, if there was none).
    Swapped,
    /// The record was not the one expected: what is there now (`None`: no record), untouched.
    Changed(Option<String>),
}

/// Replace `base/dir/name` by `new` (or remove it, if `None`) only if it still holds exactly
/// `expected`.
pub fn swap_record(
    base: &Path,
    dir: &RelPath,
    name: &str,
    expected: &str,
    new: Option<&str>,
) -> Result<SwapOutcome, SafeFsError> {
    let tomb = scratch_name(name, Scratch::Tomb);
    let Some(taken) = take_record(base, dir, name, &tomb)? else {
        return Ok(SwapOutcome::Changed(None));
    };
    if !same_json(&taken, expected) {
        restore_record(base, dir, &tomb, name)?;
        return Ok(SwapOutcome::Changed(Some(taken)));
    }
    if let Some(new) = new {
        if !write_record(base, dir, name, new.as_bytes(), true)? {
            // Published by someone else since the take: theirs now; the taken one was ours to
            // replace, so it goes.
            remove_tomb(base, dir, &tomb)?;
            let now = super::read_records(base, dir, &[name.to_string()])?;
            return Ok(SwapOutcome::Changed(now.into_iter().next().flatten()));
        }
    }
    remove_tomb(base, dir, &tomb)?;
    Ok(SwapOutcome::Swapped)
}

/// Equal as JSON values (field order and spacing aside); text that is not JSON only equals
/// itself.
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn remove_tomb(base: &Path, dir: &RelPath, tomb: &str) -> Result<(), SafeFsError> {
    super::remove_record(base, dir, tomb)
}

/// Rename `base/dir/name` to `tomb` (a name unique to the caller) and return its content;
/// `None` if there was no record. A record that cannot be read is put back and is the error.
fn take_record(
    base: &Path,
    dir: &RelPath,
    name: &str,
    tomb: &str,
) -> Result<Option<String>, SafeFsError> {
    check_name(name)?;
    check_name(tomb)?;
    let Some((fd, path)) = open_dir(base, dir)? else {
        return Ok(None);
    };
    match renameat(fd.as_fd(), name, fd.as_fd(), tomb) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(io("take record", &path.join(name), e)),
    }
    match read_one(fd.as_fd(), &path, tomb) {
        Ok(content) => Ok(content),
        Err(e) => {
            // Not a record (a directory, a FIFO): back where it was, for someone to look at.
            let _ = renameat(fd.as_fd(), tomb, fd.as_fd(), name);
            Err(e)
        }
    }
}

/// Put the record taken to `tomb` back as `name`, unless `name` was taken meanwhile; the tomb
/// is removed either way. `Ok(true)` when it is back.
pub(super) fn restore_record(
    base: &Path,
    dir: &RelPath,
    tomb: &str,
    name: &str,
) -> Result<bool, SafeFsError> {
    check_name(name)?;
    check_name(tomb)?;
    let Some((fd, path)) = open_dir(base, dir)? else {
        return Ok(false);
    };
    let restored = match linkat(fd.as_fd(), tomb, fd.as_fd(), name, AtFlags::empty()) {
        Ok(()) => true,
        Err(Errno::EEXIST | Errno::ENOENT) => false,
        Err(e) => return Err(io("restore record", &path.join(name), e)),
    };
    match unlinkat(fd.as_fd(), tomb, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(restored),
        Err(e) => Err(io("remove taken record", &path.join(tomb), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{rel, tmp};
    use super::super::{read_records, write_record};
    use super::*;

    #[test]
    fn a_record_is_taken_once_and_put_back_unless_the_name_was_taken() {
        let base = tmp();
        let dir = rel("meta");
        write_record(base.path(), &dir, "r", b"first", true).unwrap();
        assert_eq!(
            take_record(base.path(), &dir, "r", ".r.tomb-a").unwrap(),
            Some("first".into())
        );
        // A second taker finds nothing: the first one has it.
        assert_eq!(
            take_record(base.path(), &dir, "r", ".r.tomb-b").unwrap(),
            None
        );
        assert!(restore_record(base.path(), &dir, ".r.tomb-a", "r").unwrap());
        assert_eq!(
            read_records(base.path(), &dir, &["r".into(), ".r.tomb-a".into()]).unwrap(),
            vec![Some("first".into()), None]
        );
        // Taken, and meanwhile someone published a record of that name: it is not replaced.
        take_record(base.path(), &dir, "r", ".r.tomb-c").unwrap();
        write_record(base.path(), &dir, "r", b"second", true).unwrap();
        assert!(!restore_record(base.path(), &dir, ".r.tomb-c", "r").unwrap());
        assert_eq!(
            read_records(base.path(), &dir, &["r".into(), ".r.tomb-c".into()]).unwrap(),
            vec![Some("second".into()), None]
        );
    }

    #[test]
    fn a_record_is_swapped_only_while_it_is_the_one_expected() {
        let base = tmp();
        let dir = rel("meta");
        write_record(base.path(), &dir, "r", b"old", true).unwrap();
        assert_eq!(
            swap_record(base.path(), &dir, "r", "other", Some("new")).unwrap(),
            SwapOutcome::Changed(Some("old".into()))
        );
        assert_eq!(
            swap_record(base.path(), &dir, "r", "old", Some("new")).unwrap(),
            SwapOutcome::Swapped
        );
        assert_eq!(
            swap_record(base.path(), &dir, "r", "old", None).unwrap(),
            SwapOutcome::Changed(Some("new".into()))
        );
        assert_eq!(
            swap_record(base.path(), &dir, "r", "new", None).unwrap(),
            SwapOutcome::Swapped
        );
        assert_eq!(
            swap_record(base.path(), &dir, "r", "new", None).unwrap(),
            SwapOutcome::Changed(None)
        );
        assert!(
            std::fs::read_dir(base.path().join("meta"))
                .unwrap()
                .next()
                .is_none(),
            "no tombs left"
        );
    }

    #[test]
    fn records_compare_as_values() {
        assert!(same_json(r#"{"a":1,"b":"x"}"#, r#"{ "b": "x", "a": 1 }"#));
        assert!(!same_json(r#"{"a":1}"#, r#"{"a":2}"#));
        assert!(!same_json(r#"{"a":1}"#, "not json"));
    }

    #[test]
    fn a_taken_record_that_is_no_record_goes_back() {
        let base = tmp();
        std::fs::create_dir(base.path().join("meta")).unwrap();
        std::fs::create_dir(base.path().join("meta/r")).unwrap();
        let err = take_record(base.path(), &rel("meta"), "r", ".r.tomb").unwrap_err();
        assert!(matches!(err, SafeFsError::BadRecord { .. }), "{err:?}");
        assert!(base.path().join("meta/r").is_dir());
    }
}
