//! Small state files in one directory below `base` (`meta/` on the local root, `.pvdir/` on an
//! export), reached through descriptors: the state directory and each record are opened with
//! O_NOFOLLOW, so a symlink planted in their place can never redirect a read, write or unlink.
//!
//! Writes are atomic (temp file, fsync, rename or link, fsync of the directory). An exclusive
//! write publishes with link(2), which fails if the record exists even on NFS, so two creators
//! racing for one record cannot both win.
//!
//! Reads trust nothing about what they find: whoever can write the state directory (on an
//! export, anyone with a static PV of the share root) may put a FIFO, a device node or a file of
//! many gigabytes where a record should be. A record is looked at through an `O_PATH`
//! descriptor first and only opened for reading if it is a regular file of at most
//! [`MAX_RECORD_BYTES`]; the read itself is bounded too, in case it grows meanwhile.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};
use nix::unistd::{fsync, linkat, unlinkat, UnlinkatFlags};

use super::scratch::{scratch_name, Scratch};
use super::walk::open_leaf;
use super::{ensure_dir, io, SafeFsError};
use crate::os::relpath::RelPath;

pub(super) fn check_name(name: &str) -> Result<(), SafeFsError> {
    if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
        return Err(SafeFsError::InvalidName {
            name: name.to_string(),
        });
    }
    Ok(())
}

pub(super) fn open_dir(
    base: &Path,
    dir: &RelPath,
) -> Result<Option<(OwnedFd, PathBuf)>, SafeFsError> {
    Ok(open_leaf(base, dir)?.map(|leaf| (leaf.fd, leaf.path)))
}

/// Largest record accepted. Records are a few hundred bytes of JSON.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

pub(super) fn read_one(
    dir: BorrowedFd<'_>,
    path: &Path,
    name: &str,
) -> Result<Option<String>, SafeFsError> {
    let record = path.join(name);
    // O_PATH opens nothing: a FIFO is not waited on and a device's driver is not called.
    let look = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let probe = match openat(dir, name, look, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(io("open record", &record, e)),
    };
    let st = fstat(probe.as_fd()).map_err(|e| io("stat record", &record, e))?;
    check_record(&record, &st)?;
    // Reopened through the descriptor, not the name: the very inode that was checked, even if
    // the name was swapped for something else meanwhile.
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let reopen = format!("/proc/self/fd/{}", probe.as_raw_fd());
    let fd = nix::fcntl::open(reopen.as_str(), flags, Mode::empty())
        .map_err(|e| io("open record", &record, e))?;
    // Sized from the stat, so a record is one read plus the one that finds its end.
    let mut buf = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0).saturating_add(1));
    std::fs::File::from(fd)
        .take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            io(
                "read record",
                &record,
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    if buf.len() as u64 > MAX_RECORD_BYTES {
        return Err(SafeFsError::BadRecord {
            path: record,
            reason: format!("grew past {MAX_RECORD_BYTES} bytes while being read"),
        });
    }
    // pvdir writes JSON; as text the reply to the driver is a quarter of the size.
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| SafeFsError::BadRecord {
            path: record,
            reason: "not UTF-8".into(),
        })
}

/// A record must be a regular file of at most [`MAX_RECORD_BYTES`].
fn check_record(record: &Path, st: &FileStat) -> Result<(), SafeFsError> {
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG {
        return Err(SafeFsError::BadRecord {
            path: record.to_path_buf(),
            reason: format!("not a regular file (mode {:o})", st.st_mode),
        });
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > MAX_RECORD_BYTES {
        return Err(SafeFsError::BadRecord {
            path: record.to_path_buf(),
            reason: format!("{size} bytes, more than a record can be ({MAX_RECORD_BYTES})"),
        });
    }
    Ok(())
}

/// The records `names` in `base/dir`, `None` for each that does not exist.
pub fn read_records(
    base: &Path,
    dir: &RelPath,
    names: &[String],
) -> Result<Vec<Option<String>>, SafeFsError> {
    for name in names {
        check_name(name)?;
    }
    let Some((fd, path)) = open_dir(base, dir)? else {
        return Ok(vec![None; names.len()]);
    };
    names
        .iter()
        .map(|name| read_one(fd.as_fd(), &path, name))
        .collect()
}

/// Write `base/dir/name` durably. With `exclusive`, an existing record is left alone and
/// `Ok(false)` says so; otherwise it is replaced.
pub fn write_record(
    base: &Path,
    dir: &RelPath,
    name: &str,
    contents: &[u8],
    exclusive: bool,
) -> Result<bool, SafeFsError> {
    write_record_with(base, dir, name, contents, exclusive, true)
}

/// [`write_record`], syncing the file and the directory only if `durable`. Without, the write
/// is still atomic for readers and after a crash of the process, but a power cut may lose it:
/// only for callers whose journal makes it durable (see `crate::os::journal`).
pub fn write_record_with(
    base: &Path,
    dir: &RelPath,
    name: &str,
    contents: &[u8],
    exclusive: bool,
    durable: bool,
) -> Result<bool, SafeFsError> {
    check_name(name)?;
    // The directory almost always exists: make it only when it is not there.
    let opened = match open_dir(base, dir)? {
        Some(found) => Some(found),
        None => {
            ensure_dir(base, dir, None)?;
            open_dir(base, dir)?
        }
    };
    let (fd, path) = opened.ok_or_else(|| {
        io(
            "open record directory",
            &base.join(dir.as_str()),
            Errno::ENOENT,
        )
    })?;
    let tmp = scratch_name(name, Scratch::Temporary);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let file = openat(
        fd.as_fd(),
        tmp.as_str(),
        flags,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| io("create temporary record", &path.join(&tmp), e))?;
    let result = publish(
        fd.as_fd(),
        &path,
        file,
        &tmp,
        name,
        contents,
        exclusive,
        durable,
    );
    // The temporary name is gone after a rename; after a link (or a failure) remove it.
    let _ = unlinkat(fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    let stored = result?;
    if durable {
        // A rename or link is durable only once the directory itself is synced.
        fsync(fd.as_fd()).map_err(|e| io("sync record directory", &path, e))?;
    }
    Ok(stored)
}

#[allow(clippy::too_many_arguments)]
fn publish(
    dir: BorrowedFd<'_>,
    path: &Path,
    file: OwnedFd,
    tmp: &str,
    name: &str,
    contents: &[u8],
    exclusive: bool,
    durable: bool,
) -> Result<bool, SafeFsError> {
    let target = path.join(name);
    let mut file = std::fs::File::from(file);
    file.write_all(contents)
        .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
        .map_err(|e| {
            io(
                "write record",
                &target,
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    if exclusive {
        match linkat(dir, tmp, dir, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(io("link record", &target, e)),
        }
    } else {
        renameat(dir, tmp, dir, name).map_err(|e| io("rename record", &target, e))?;
        Ok(true)
    }
}

/// Remove `base/dir/name`; absent is fine.
pub fn remove_record(base: &Path, dir: &RelPath, name: &str) -> Result<(), SafeFsError> {
    check_name(name)?;
    let Some((fd, path)) = open_dir(base, dir)? else {
        return Ok(());
    };
    match unlinkat(fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io("remove record", &path.join(name), e)),
    }
}

/// Names in `base/dir`, sorted; an absent directory is empty.
pub fn list_records(base: &Path, dir: &RelPath) -> Result<Vec<String>, SafeFsError> {
    let Some((fd, path)) = open_dir(base, dir)? else {
        return Ok(Vec::new());
    };
    let mut d = Dir::from_fd(fd).map_err(|e| io("read directory", &path, e))?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| io("read directory", &path, e))?;
        let name = OsStr::new(std::str::from_utf8(entry.file_name().to_bytes()).unwrap_or(""));
        if let Some(name) = name
            .to_str()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{rel, tmp};
    use super::*;

    #[test]
    fn round_trip_exclusive_and_absent() {
        let base = tmp();
        let dir = rel("meta");
        assert_eq!(
            read_records(base.path(), &dir, &["a".into()]).unwrap(),
            vec![None]
        );
        assert!(write_record(base.path(), &dir, "a", b"1", true).unwrap());
        assert!(
            !write_record(base.path(), &dir, "a", b"2", true).unwrap(),
            "exclusive keeps the first"
        );
        assert_eq!(
            read_records(base.path(), &dir, &["a".into(), "b".into()]).unwrap(),
            vec![Some("1".to_string()), None]
        );
        assert!(write_record(base.path(), &dir, "a", b"3", false).unwrap());
        assert_eq!(
            read_records(base.path(), &dir, &["a".into()]).unwrap(),
            vec![Some("3".to_string())]
        );
        assert_eq!(
            list_records(base.path(), &dir).unwrap(),
            vec!["a".to_string()],
            "no temp files left"
        );
        remove_record(base.path(), &dir, "a").unwrap();
        remove_record(base.path(), &dir, "a").unwrap();
        assert!(list_records(base.path(), &dir).unwrap().is_empty());
    }

    #[test]
    fn bad_names_are_refused() {
        let base = tmp();
        for bad in ["", ".", "..", "../x", "a/b", "a\0b"] {
            assert!(matches!(
                write_record(base.path(), &rel("meta"), bad, b"", false),
                Err(SafeFsError::InvalidName { .. })
            ));
        }
    }

    #[test]
    fn a_symlinked_state_directory_is_never_followed() {
        let base = tmp();
        let outside = tmp();
        std::fs::write(outside.path().join("victim"), b"keep").unwrap();
        std::os::unix::fs::symlink(outside.path(), base.path().join(".pvdir")).unwrap();
        let dir = rel(".pvdir");
        assert!(matches!(
            write_record(base.path(), &dir, "victim", b"x", false),
            Err(SafeFsError::SymlinkInPath { .. })
        ));
        assert!(matches!(
            remove_record(base.path(), &dir, "victim"),
            Err(SafeFsError::SymlinkInPath { .. })
        ));
        assert!(matches!(
            read_records(base.path(), &dir, &["victim".into()]),
            Err(SafeFsError::SymlinkInPath { .. })
        ));
        assert!(matches!(
            list_records(base.path(), &dir),
            Err(SafeFsError::SymlinkInPath { .. })
        ));
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"keep"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    /// Reads `name` on another thread; `None` if it did not answer within two seconds (the
    /// old code waited for ever on a FIFO).
    fn read_bounded(base: &Path, name: &str) -> Option<Result<Vec<Option<String>>, SafeFsError>> {
        let (base, name) = (base.to_path_buf(), name.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_records(&base, &rel("meta"), &[name]));
        });
        rx.recv_timeout(std::time::Duration::from_secs(2)).ok()
    }

    #[test]
    fn what_is_not_a_small_regular_file_is_never_read() {
        let base = tmp();
        let meta = base.path().join("meta");
        std::fs::create_dir(&meta).unwrap();
        nix::unistd::mkfifo(&meta.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        // Sparse: claims 8 GiB, occupies nothing.
        let huge = std::fs::File::create(meta.join("huge")).unwrap();
        huge.set_len(8 << 30).unwrap();
        std::fs::create_dir(meta.join("dir")).unwrap();
        std::fs::write(meta.join("max"), vec![b' '; MAX_RECORD_BYTES as usize]).unwrap();
        for name in ["fifo", "huge", "dir"] {
            let got = read_bounded(base.path(), name)
                .unwrap_or_else(|| panic!("reading {name} did not return"));
            assert!(
                matches!(got, Err(SafeFsError::BadRecord { .. })),
                "{name}: {got:?}"
            );
        }
        let max = read_bounded(base.path(), "max")
            .expect("answers")
            .expect("read");
        assert_eq!(
            max[0].as_ref().map(String::len),
            Some(MAX_RECORD_BYTES as usize)
        );
    }

    #[test]
    fn a_symlinked_record_is_never_followed() {
        let base = tmp();
        let outside = tmp();
        std::fs::create_dir(base.path().join("meta")).unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), base.path().join("meta/r"))
            .unwrap();
        assert!(read_records(base.path(), &rel("meta"), &["r".into()]).is_err());
        // Replacing or removing the record replaces or removes the link, never its target.
        write_record(base.path(), &rel("meta"), "r", b"new", false).unwrap();
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
        remove_record(base.path(), &rel("meta"), "r").unwrap();
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
    }
}
