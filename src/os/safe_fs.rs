//! Blocking directory operations confined to a trusted base directory (an NFS export or a
//! node-local root), addressed by untrusted `RelPath`s.
//!
//! Invariants, each attacked by a test below:
//! - Symlinks are never followed: `base` is opened once by path (it is trusted configuration);
//!   every component below it is opened with `openat(.., O_NOFOLLOW | O_DIRECTORY)` relative to
//!   its parent's descriptor, never by string path. A symlink in `rel` is `SymlinkInPath`; a
//!   symlink inside a tree being removed is unlinked as a link, its target untouched.
//! - Removal never crosses into another mount: every directory is checked against the tree's
//!   `st_dev` and against statx's `STATX_ATTR_MOUNT_ROOT` (the only way to see a bind mount
//!   from the same filesystem); a mount is left alone and reported as `CrossesMount`.
//! - Removal is iterative with bounded depth (`MAX_DEPTH`) and a bounded number of open
//!   descriptors (`FD_WINDOW`), so a crafted tree cannot overflow the stack or exhaust fds.
//! - Pruning only removes directories holding nothing but `OWNED_MARKER`, which `ensure_dir`
//!   writes solely into parents it created itself; `base` is never removed or chmodded.

use std::borrow::Cow;
use std::ffi::{CStr, CString, OsStr};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use nix::NixPath;
use serde::{Deserialize, Serialize, Serializer};

use super::relpath::RelPath;

/// Marker file placed in every parent directory that `ensure_dir` itself created, so that
/// `prune_owned_parents` only ever removes directories the driver made.
pub const OWNED_MARKER: &str = ".pvdir-owned";
/// Deepest directory nesting `remove_tree` will descend into.
pub const MAX_DEPTH: usize = 4096;
/// Highest numeric suffix `archive` tries when the archived name is taken.
pub const MAX_ARCHIVE_SUFFIX: u32 = 1000;
/// Directory descriptors `remove_tree` keeps open at once; ancestors beyond this are closed
/// and reopened through "..", because containers commonly run with RLIMIT_NOFILE = 1024.
const FD_WINDOW: usize = 64;
/// Entries read per readdir pass; bounds memory on huge directories.
const READ_BATCH: usize = 256;
/// How often a concurrent writer may refill a directory before `remove_tree` gives up.
const MAX_REFILLS: u32 = 16;
/// Whole-walk retries when a concurrent prune removes a parent `ensure_dir` is creating in.
const MAX_ENSURE_ATTEMPTS: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SafeFsError {
    #[error("cannot open base directory {path:?}: {}", Errno::from_raw(*errno))]
    OpenBase {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
        errno: i32,
    },
    #[error("refusing to follow symlink at {path:?}")]
    SymlinkInPath {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("{path:?} exists and is not a directory")]
    NotADirectory {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("{path:?} is on another mount; refusing to cross into it")]
    CrossesMount {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("directory tree at {path:?} is nested deeper than {MAX_DEPTH} levels")]
    TooDeep {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("directory {path:?} is not empty")]
    NotEmpty {
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
    },
    #[error("invalid name {name:?}")]
    InvalidName { name: String },
    /// `step` is a static description on construction; it is a `Cow` only so that the error
    /// can be deserialised on the far side of a process boundary.
    #[error("{step} {path:?}: {}", Errno::from_raw(*errno))]
    Io {
        step: Cow<'static, str>,
        #[serde(serialize_with = "serialize_path_lossy")]
        path: PathBuf,
        errno: i32,
    },
}

impl SafeFsError {
    pub fn errno(&self) -> Option<Errno> {
        match self {
            SafeFsError::OpenBase { errno, .. } | SafeFsError::Io { errno, .. } => {
                Some(Errno::from_raw(*errno))
            }
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(Errno::ENOENT)
    }
}

/// Names found inside a tree are arbitrary bytes; JSON needs UTF-8, and losing a byte in a
/// diagnostic beats failing to report the error at all.
fn serialize_path_lossy<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsureOutcome {
    /// Whether this call created the leaf directory.
    pub created: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveOutcome {
    Removed,
    AlreadyGone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArchiveOutcome {
    Archived { to: RelPath },
    AlreadyGone,
}

fn io(step: &'static str, path: &Path, errno: Errno) -> SafeFsError {
    SafeFsError::Io {
        step: Cow::Borrowed(step),
        path: path.to_path_buf(),
        errno: errno as i32,
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn open_base(base: &Path) -> Result<OwnedFd, SafeFsError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(base, flags, Mode::empty()).map_err(|e| SafeFsError::OpenBase {
        path: base.to_path_buf(),
        errno: e as i32,
    })
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// Opens directory `name` in `parent` (whose path is `dir_path`, used only for errors)
/// without following a symlink; `None` if it is absent.
fn open_dir_at(
    parent: BorrowedFd<'_>,
    dir_path: &Path,
    name: &OsStr,
) -> Result<Option<OwnedFd>, SafeFsError> {
    match openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        // O_NOFOLLOW reports a symlink as ELOOP and O_DIRECTORY a non-directory as ENOTDIR;
        // rather than rely on which check the kernel makes first, ask lstat.
        Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
            let path = dir_path.join(name);
            match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).map(|st| file_type(&st)) {
                Ok(SFlag::S_IFLNK) => Err(SafeFsError::SymlinkInPath { path }),
                Ok(SFlag::S_IFDIR) => Err(io("open directory", &path, e)),
                Ok(_) => Err(SafeFsError::NotADirectory { path }),
                Err(Errno::ENOENT) => Ok(None),
                Err(e) => Err(io("stat", &path, e)),
            }
        }
        Err(e) => Err(io("open directory", &dir_path.join(name), e)),
    }
}

/// Opens the parent directory of `rel`'s leaf and returns it with its path; `None` if some
/// component is absent.
fn open_parent(base: &Path, rel: &RelPath) -> Result<Option<(OwnedFd, PathBuf)>, SafeFsError> {
    let mut cur = open_base(base)?;
    let mut path = base.to_path_buf();
    for seg in rel.parent().iter().flat_map(RelPath::segments) {
        match open_dir_at(cur.as_fd(), &path, OsStr::new(seg))? {
            Some(fd) => cur = fd,
            None => return Ok(None),
        }
        path.push(seg);
    }
    Ok(Some((cur, path)))
}

/// The leaf directory of a `RelPath`, opened and checked to be on its parent's mount.
struct Leaf {
    parent: OwnedFd,
    fd: OwnedFd,
    st: FileStat,
    path: PathBuf,
}

/// Opens `rel`'s leaf without following symlinks; `None` if it or a parent is absent.
/// A leaf that is itself a mount point (a different device, or a bind mount of the same
/// filesystem) is `CrossesMount`.
fn open_leaf(base: &Path, rel: &RelPath) -> Result<Option<Leaf>, SafeFsError> {
    let Some((parent, parent_path)) = open_parent(base, rel)? else {
        return Ok(None);
    };
    let name = OsStr::new(rel.file_name());
    let Some(fd) = open_dir_at(parent.as_fd(), &parent_path, name)? else {
        return Ok(None);
    };
    let parent_st = fstat(parent.as_fd()).map_err(|e| io("stat", &parent_path, e))?;
    let st = check_same_mount(fd.as_fd(), parent_st.st_dev, &parent_path, name)?;
    let path = parent_path.join(name);
    Ok(Some(Leaf {
        parent,
        fd,
        st,
        path,
    }))
}

/// statx's STATX_ATTR_MOUNT_ROOT for `name` in `dir` (or `dir` itself if `name` is empty),
/// or `None` where the kernel (< 5.8) or a seccomp filter cannot tell; `st_dev` checks
/// still apply then.
fn is_mount_root(dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<bool>, Errno> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    // AT_STATX_DONT_SYNC: the mount-root bit is local VFS state, so skip NFS revalidation.
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: `name` is a valid NUL-terminated string, `buf` is writable and sized for
    // `struct statx`, and `dir` is a live descriptor for the duration of the call.
    let rc = unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, 0, buf.as_mut_ptr()) };
    if rc != 0 {
        return match Errno::last() {
            Errno::ENOSYS | Errno::EPERM | Errno::EINVAL => Ok(None),
            e => Err(e),
        };
    }
    // SAFETY: statx succeeded and filled the buffer, which was zero-initialised anyway.
    let stx = unsafe { buf.assume_init() };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok((stx.stx_attributes_mask & bit != 0).then_some(stx.stx_attributes & bit != 0))
}

/// Fails with `CrossesMount` unless `fd` (entry `name` in `dir_path`) is on device `dev` and
/// is not a mount root. A bind mount from the same filesystem shares `st_dev`; only the
/// mount-root bit reveals it.
fn check_same_mount(
    fd: BorrowedFd<'_>,
    dev: u64,
    dir_path: &Path,
    name: &OsStr,
) -> Result<FileStat, SafeFsError> {
    let path = || dir_path.join(name);
    let st = fstat(fd).map_err(|e| io("stat", &path(), e))?;
    let root = is_mount_root(fd, c"").map_err(|e| io("statx", &path(), e))?;
    if st.st_dev != dev || root == Some(true) {
        return Err(SafeFsError::CrossesMount { path: path() });
    }
    Ok(st)
}

/// rmdir of `name` in `parent`; `Ok(false)` if it was already gone.
fn rmdir_at<P: ?Sized + NixPath>(
    parent: BorrowedFd<'_>,
    name: &P,
    path: &Path,
) -> Result<bool, SafeFsError> {
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => Err(SafeFsError::NotEmpty {
            path: path.to_path_buf(),
        }),
        // A mount point in our namespace; checks made before this should already catch it.
        Err(Errno::EBUSY) => Err(SafeFsError::CrossesMount {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io("remove directory", path, e)),
    }
}

fn create_marker(dir: BorrowedFd<'_>, path: &Path) -> Result<(), SafeFsError> {
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

/// One directory on `remove_tree`'s explicit stack.
struct Frame {
    /// `None` once closed to stay within `FD_WINDOW`; reopened through "..".
    dir: Option<Dir>,
    /// Name within the parent frame's directory.
    name: CString,
    dev: u64,
    ino: u64,
}

impl Frame {
    fn new(fd: OwnedFd, name: CString, st: &FileStat, path: &Path) -> Result<Frame, SafeFsError> {
        let dir = Dir::from_fd(fd).map_err(|e| io("read directory", path, e))?;
        Ok(Frame {
            dir: Some(dir),
            name,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// Removes directory `rel` and everything in it, never following symlinks, never entering
/// another mount, and never descending more than `MAX_DEPTH` levels.
pub fn remove_tree(base: &Path, rel: &RelPath) -> Result<RemoveOutcome, SafeFsError> {
    let Some(leaf) = open_leaf(base, rel)? else {
        return Ok(RemoveOutcome::AlreadyGone);
    };
    let name =
        CString::new(rel.file_name()).map_err(|_| io("remove", &leaf.path, Errno::EINVAL))?;
    let mut stack = vec![Frame::new(leaf.fd, name, &leaf.st, &leaf.path)?];
    empty_tree(&mut stack, leaf.path.clone(), leaf.st.st_dev)?;
    drop(stack);
    rmdir_at(leaf.parent.as_fd(), rel.file_name(), &leaf.path)?;
    Ok(RemoveOutcome::Removed)
}

/// Empties the bottom frame's directory depth-first; `path` tracks the top frame's path.
/// Each pass re-reads the top directory from the start: everything already handled is gone,
/// so no per-frame entry lists are kept that a wide, deep tree could blow up.
fn empty_tree(stack: &mut Vec<Frame>, mut path: PathBuf, dev: u64) -> Result<(), SafeFsError> {
    let mut refills = 0;
    loop {
        let Some(dir) = stack.last_mut().and_then(|f| f.dir.as_mut()) else {
            return Err(io("read directory", &path, Errno::EBADF));
        };
        let batch = read_batch(dir, &path)?;
        if batch.is_empty() {
            if stack.len() == 1 {
                return Ok(());
            }
            match pop_frame(stack, &path) {
                // A concurrent writer refilled it; the parent's next pass finds it again.
                Err(SafeFsError::NotEmpty { .. }) if refills < MAX_REFILLS => refills += 1,
                other => other?,
            }
            path.pop();
            continue;
        }
        let dir_fd = dir.as_fd();
        let mut child = None;
        for (name, kind) in batch {
            // An unknown or stale d_type is settled by unlinkat's EISDIR.
            if kind != Some(Type::Directory) && unlink_entry(dir_fd, &name, &path)? {
                continue;
            }
            if let Some(frame) = open_subdir(dir_fd, name, &path, dev)? {
                child = Some(frame);
                break;
            }
        }
        if let Some(frame) = child {
            let name = OsStr::from_bytes(frame.name.to_bytes());
            if stack.len() >= MAX_DEPTH {
                return Err(SafeFsError::TooDeep {
                    path: path.join(name),
                });
            }
            path.push(name);
            stack.push(frame);
            if let Some(old) = stack.len().checked_sub(FD_WINDOW + 1) {
                if let Some(f) = stack.get_mut(old) {
                    f.dir = None;
                }
            }
        }
    }
}

/// Reads up to `READ_BATCH` entries other than "." and ".."; the iterator rewinds on drop.
fn read_batch(dir: &mut Dir, path: &Path) -> Result<Vec<(CString, Option<Type>)>, SafeFsError> {
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| io("read directory", path, e))?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            out.push((name.to_owned(), entry.file_type()));
        }
        if out.len() >= READ_BATCH {
            break;
        }
    }
    Ok(out)
}

/// Unlinks a non-directory (a symlink is removed as a link). `false` means it is a directory.
fn unlink_entry(dir: BorrowedFd<'_>, name: &CStr, dir_path: &Path) -> Result<bool, SafeFsError> {
    let path = || dir_path.join(OsStr::from_bytes(name.to_bytes()));
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(Errno::EISDIR) => Ok(false),
        // EBUSY is either a file bind-mounted over this name (e.g. a subPath mount) or, on
        // NFS, a silly-renamed ".nfsXXXX" file still held open somewhere.
        Err(Errno::EBUSY) => match is_mount_root(dir, name) {
            Ok(Some(false)) => Err(io("unlink (file busy)", &path(), Errno::EBUSY)),
            _ => Err(SafeFsError::CrossesMount { path: path() }),
        },
        Err(e) => Err(io("unlink", &path(), e)),
    }
}

/// Opens a subdirectory for descent after checking it stays on the tree's mount. `None` if it
/// vanished or turned out not to be a directory (then it was unlinked instead).
fn open_subdir(
    dir: BorrowedFd<'_>,
    name: CString,
    dir_path: &Path,
    dev: u64,
) -> Result<Option<Frame>, SafeFsError> {
    let os_name = OsStr::from_bytes(name.to_bytes());
    let fd = match open_dir_at(dir, dir_path, os_name) {
        Ok(Some(fd)) => fd,
        Ok(None) => return Ok(None),
        // Swapped for a symlink or file since readdir: unlink it as a non-directory.
        Err(SafeFsError::SymlinkInPath { .. } | SafeFsError::NotADirectory { .. }) => {
            return if unlink_entry(dir, &name, dir_path)? {
                Ok(None)
            } else {
                Err(io("unlink", &dir_path.join(os_name), Errno::EISDIR))
            };
        }
        Err(e) => return Err(e),
    };
    let st = check_same_mount(fd.as_fd(), dev, dir_path, os_name)?;
    let path = dir_path.join(os_name);
    Frame::new(fd, name, &st, &path).map(Some)
}

/// Pops the (now empty) top frame, whose path is `path`, and removes it from its parent,
/// reopening the parent via ".." if it was closed.
fn pop_frame(stack: &mut Vec<Frame>, path: &Path) -> Result<(), SafeFsError> {
    let (Some(child), Some(parent)) = (stack.pop(), stack.last_mut()) else {
        return Err(io("remove directory", path, Errno::EBADF));
    };
    let parent_dir = match (parent.dir.as_ref(), child.dir.as_ref()) {
        (Some(dir), _) => dir,
        (None, Some(child_dir)) => {
            let fd = openat(child_dir.as_fd(), "..", dir_flags(), Mode::empty())
                .map_err(|e| io("reopen parent of", path, e))?;
            let st = fstat(fd.as_fd()).map_err(|e| io("stat parent of", path, e))?;
            // ".." is only trustworthy if it is still the directory we descended from; a
            // rename racing with us could otherwise lead the walk out of the tree.
            if st.st_dev != parent.dev || st.st_ino != parent.ino {
                return Err(io("reopen parent of", path, Errno::ESTALE));
            }
            let dir = Dir::from_fd(fd).map_err(|e| io("read directory", path, e))?;
            parent.dir.insert(dir)
        }
        (None, None) => return Err(io("reopen parent of", path, Errno::EBADF)),
    };
    drop(child.dir);
    rmdir_at(parent_dir.as_fd(), child.name.as_c_str(), path).map(drop)
}

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

/// Removes `rel` only if it is an empty directory and not a mount point: rmdir refuses a
/// mount point in our namespace (EBUSY), but since Linux 3.18 silently detaches one that
/// exists only in another namespace, so `open_leaf` checks first.
pub fn remove_empty_dir(base: &Path, rel: &RelPath) -> Result<RemoveOutcome, SafeFsError> {
    let Some(leaf) = open_leaf(base, rel)? else {
        return Ok(RemoveOutcome::AlreadyGone);
    };
    drop(leaf.fd);
    if rmdir_at(leaf.parent.as_fd(), rel.file_name(), &leaf.path)? {
        Ok(RemoveOutcome::Removed)
    } else {
        Ok(RemoveOutcome::AlreadyGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use std::fs;
    use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, PermissionsExt};
    use tempfile::TempDir;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).expect("valid test path")
    }

    fn tmp() -> TempDir {
        TempDir::new().expect("tempdir")
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    fn write(p: &Path) {
        fs::write(p, b"data").expect("write");
    }

    fn is_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        eprintln!("skipping: mount tests need root");
        false
    }

    /// Lazily unmounts on drop, so a failing assertion still cleans up.
    struct MountGuard(PathBuf);

    impl Drop for MountGuard {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }

    fn mount_tmpfs(target: &Path) -> MountGuard {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount tmpfs");
        MountGuard(target.to_path_buf())
    }

    fn bind_mount(source: &Path, target: &Path) -> MountGuard {
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind mount");
        MountGuard(target.to_path_buf())
    }

    /// Builds a `depth`-level chain of directories "d/d/d/..." below `dir` via descriptors,
    /// since the full path may exceed PATH_MAX; puts a file in the deepest one.
    fn deep_chain(dir: &Path, depth: usize) {
        let mut cur = nix::fcntl::open(dir, dir_flags(), Mode::empty()).expect("open");
        for _ in 0..depth {
            mkdirat(cur.as_fd(), "d", Mode::from_bits_truncate(0o755)).expect("mkdir");
            cur = openat(cur.as_fd(), "d", dir_flags(), Mode::empty()).expect("open");
        }
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC;
        openat(cur.as_fd(), "f", flags, Mode::from_bits_truncate(0o644)).expect("create");
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

    #[test]
    fn remove_tree_removes_files_dirs_symlinks_and_readonly_dirs() {
        let base = tmp();
        let b = base.path();
        let v = b.join("ns/vol");
        fs::create_dir_all(v.join("a/b/c")).expect("mkdir");
        write(&v.join("top"));
        write(&v.join("a/b/c/deep"));
        symlink("/nonexistent", v.join("a/dangling")).expect("symlink");
        symlink(v.join("a/b"), v.join("loop")).expect("symlink");
        nix::unistd::mkfifo(&v.join("fifo"), Mode::from_bits_truncate(0o600)).expect("fifo");
        fs::create_dir(v.join("ro")).expect("mkdir");
        write(&v.join("ro/locked"));
        // Only root (CAP_DAC_OVERRIDE) may empty a 0o500 directory, as the driver does locally.
        if nix::unistd::geteuid().is_root() {
            fs::set_permissions(v.join("ro"), fs::Permissions::from_mode(0o500)).expect("chmod");
        }
        fs::create_dir(v.join(OsStr::from_bytes(b"bad\xffname"))).expect("non-utf8 dir");

        assert_eq!(remove_tree(b, &rel("ns/vol")), Ok(RemoveOutcome::Removed));
        assert!(!v.exists());
        assert!(b.join("ns").is_dir(), "parent must survive");
        assert_eq!(
            remove_tree(b, &rel("ns/vol")),
            Ok(RemoveOutcome::AlreadyGone)
        );
        assert_eq!(
            remove_tree(b, &rel("gone/x/y")),
            Ok(RemoveOutcome::AlreadyGone)
        );
        write(&b.join("ns/file"));
        let err = remove_tree(b, &rel("ns/file")).expect_err("file leaf");
        assert!(matches!(err, SafeFsError::NotADirectory { .. }), "{err}");
        assert!(b.join("ns/file").is_file());
    }

    #[test]
    fn remove_tree_unlinks_symlink_to_outside_without_touching_target() {
        let base = tmp();
        let outside = tmp();
        write(&outside.path().join("precious"));
        let v = base.path().join("vol");
        fs::create_dir_all(v.join("sub")).expect("mkdir");
        symlink(outside.path(), v.join("escape")).expect("symlink");
        symlink(outside.path(), v.join("sub/escape")).expect("symlink");
        symlink(outside.path().join("precious"), v.join("file-link")).expect("symlink");

        assert_eq!(
            remove_tree(base.path(), &rel("vol")),
            Ok(RemoveOutcome::Removed)
        );
        assert!(outside.path().join("precious").is_file());
        assert_eq!(
            fs::read(outside.path().join("precious")).expect("read"),
            b"data"
        );
    }

    #[test]
    fn remove_tree_refuses_symlink_as_rel_or_component() {
        let base = tmp();
        let outside = tmp();
        write(&outside.path().join("precious"));
        fs::create_dir(outside.path().join("vol")).expect("mkdir");
        symlink(outside.path(), base.path().join("vol")).expect("symlink");
        symlink(outside.path(), base.path().join("ns")).expect("symlink");

        let err = remove_tree(base.path(), &rel("vol")).expect_err("symlink leaf");
        assert!(matches!(err, SafeFsError::SymlinkInPath { .. }), "{err}");
        let err = remove_tree(base.path(), &rel("ns/vol")).expect_err("symlink parent");
        assert_eq!(
            err,
            SafeFsError::SymlinkInPath {
                path: base.path().join("ns")
            }
        );
        assert!(
            fs::symlink_metadata(base.path().join("vol")).is_ok(),
            "link kept"
        );
        assert!(outside.path().join("precious").is_file());
        assert!(outside.path().join("vol").is_dir());
    }

    #[test]
    fn remove_tree_refuses_tmpfs_inside_tree() {
        if !is_root() {
            return;
        }
        let base = tmp();
        let v = base.path().join("vol");
        fs::create_dir_all(v.join("sub/mnt")).expect("mkdir");
        write(&v.join("sub/before"));
        let _guard = mount_tmpfs(&v.join("sub/mnt"));
        write(&v.join("sub/mnt/on-tmpfs"));

        let err = remove_tree(base.path(), &rel("vol")).expect_err("crosses");
        assert_eq!(
            err,
            SafeFsError::CrossesMount {
                path: v.join("sub/mnt")
            }
        );
        assert!(v.join("sub/mnt/on-tmpfs").is_file());
    }

    #[test]
    fn remove_tree_refuses_same_filesystem_bind_mount_inside_tree() {
        if !is_root() {
            return;
        }
        let base = tmp();
        let outside = base.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        write(&outside.join("precious"));
        let v = base.path().join("vol");
        fs::create_dir_all(v.join("bound")).expect("mkdir");
        let _guard = bind_mount(&outside, &v.join("bound"));
        let dev = |p: &Path| fs::metadata(p).expect("stat").dev();
        assert_eq!(
            dev(&v),
            dev(&v.join("bound")),
            "test needs a same-st_dev bind mount"
        );

        let err = remove_tree(base.path(), &rel("vol")).expect_err("crosses");
        assert_eq!(
            err,
            SafeFsError::CrossesMount {
                path: v.join("bound")
            }
        );
        assert!(outside.join("precious").is_file());
    }

    #[test]
    fn remove_tree_refuses_file_bind_mount_inside_tree() {
        if !is_root() {
            return;
        }
        let base = tmp();
        let outside = base.path().join("precious");
        write(&outside);
        let v = base.path().join("vol");
        fs::create_dir(&v).expect("mkdir");
        write(&v.join("over"));
        let _guard = bind_mount(&outside, &v.join("over"));

        let err = remove_tree(base.path(), &rel("vol")).expect_err("crosses");
        assert!(matches!(err, SafeFsError::CrossesMount { .. }), "{err}");
        assert!(outside.is_file());
    }

    #[test]
    fn remove_tree_refuses_rel_that_is_a_mount_point() {
        if !is_root() {
            return;
        }
        let base = tmp();
        let v = base.path().join("vol");
        fs::create_dir(&v).expect("mkdir");
        {
            let _guard = mount_tmpfs(&v);
            write(&v.join("on-tmpfs"));
            let err = remove_tree(base.path(), &rel("vol")).expect_err("tmpfs at rel");
            assert_eq!(err, SafeFsError::CrossesMount { path: v.clone() });
            assert!(v.join("on-tmpfs").is_file());
        }
        let outside = base.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        write(&outside.join("precious"));
        let _guard = bind_mount(&outside, &v);
        let err = remove_tree(base.path(), &rel("vol")).expect_err("bind mount at rel");
        assert_eq!(err, SafeFsError::CrossesMount { path: v.clone() });
        assert!(outside.join("precious").is_file());
    }

    #[test]
    fn remove_tree_handles_deep_tree_beyond_fd_window() {
        let base = tmp();
        fs::create_dir(base.path().join("vol")).expect("mkdir");
        deep_chain(&base.path().join("vol"), 300);
        assert_eq!(
            remove_tree(base.path(), &rel("vol")),
            Ok(RemoveOutcome::Removed)
        );
        assert!(!base.path().join("vol").exists());
    }

    #[test]
    fn remove_tree_handles_wide_directories() {
        let base = tmp();
        let v = base.path().join("vol");
        fs::create_dir(&v).expect("mkdir");
        for i in 0..(READ_BATCH * 3 + 7) {
            write(&v.join(format!("f{i}")));
            if i % 40 == 0 {
                fs::create_dir(v.join(format!("d{i}"))).expect("mkdir");
                write(&v.join(format!("d{i}/x")));
            }
        }
        assert_eq!(
            remove_tree(base.path(), &rel("vol")),
            Ok(RemoveOutcome::Removed)
        );
        assert!(!v.exists());
    }

    #[test]
    fn remove_tree_stops_at_max_depth() {
        let base = tmp();
        let v = base.path().join("vol");
        fs::create_dir(&v).expect("mkdir");
        deep_chain(&v, MAX_DEPTH + 1);
        let err = remove_tree(base.path(), &rel("vol")).expect_err("too deep");
        assert!(matches!(err, SafeFsError::TooDeep { .. }), "{err}");
        // The refusal leaves the tree intact below the limit; split it to clean up.
        let mut cur = nix::fcntl::open(&v, dir_flags(), Mode::empty()).expect("open");
        for _ in 0..MAX_DEPTH / 2 {
            cur = openat(cur.as_fd(), "d", dir_flags(), Mode::empty()).expect("open");
        }
        let base_fd = nix::fcntl::open(base.path(), dir_flags(), Mode::empty()).expect("open");
        nix::fcntl::renameat(cur.as_fd(), "d", base_fd.as_fd(), "lower").expect("rename");
        assert_eq!(
            remove_tree(base.path(), &rel("lower")),
            Ok(RemoveOutcome::Removed)
        );
        assert_eq!(
            remove_tree(base.path(), &rel("vol")),
            Ok(RemoveOutcome::Removed)
        );
    }

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

    #[test]
    fn remove_empty_dir_semantics() {
        let base = tmp();
        ensure_dir(base.path(), &rel("t/empty"), None).expect("ensure");
        ensure_dir(base.path(), &rel("t/full"), None).expect("ensure");
        write(&base.path().join("t/full/f"));
        assert_eq!(
            remove_empty_dir(base.path(), &rel("t/empty")),
            Ok(RemoveOutcome::Removed)
        );
        assert_eq!(
            remove_empty_dir(base.path(), &rel("t/empty")),
            Ok(RemoveOutcome::AlreadyGone)
        );
        assert_eq!(
            remove_empty_dir(base.path(), &rel("t/full")),
            Err(SafeFsError::NotEmpty {
                path: base.path().join("t/full")
            })
        );
        symlink("/tmp", base.path().join("t/link")).expect("symlink");
        let err = remove_empty_dir(base.path(), &rel("t/link")).expect_err("symlink");
        assert!(matches!(err, SafeFsError::SymlinkInPath { .. }), "{err}");
        if is_root() {
            fs::create_dir(base.path().join("t/mnt")).expect("mkdir");
            let _guard = mount_tmpfs(&base.path().join("t/mnt"));
            let err = remove_empty_dir(base.path(), &rel("t/mnt")).expect_err("mount point");
            assert!(matches!(err, SafeFsError::CrossesMount { .. }), "{err}");
        }
    }

    #[test]
    fn device_mismatch_alone_counts_as_crossing() {
        // Covers kernels without STATX_ATTR_MOUNT_ROOT, where st_dev is the only signal.
        let base = tmp();
        let fd = nix::fcntl::open(base.path(), dir_flags(), Mode::empty()).expect("open");
        let dev = fstat(fd.as_fd()).expect("stat").st_dev;
        let name = OsStr::new("x");
        assert!(check_same_mount(fd.as_fd(), dev, base.path(), name).is_ok());
        let err = check_same_mount(fd.as_fd(), dev ^ 1, base.path(), name).expect_err("dev");
        assert!(matches!(err, SafeFsError::CrossesMount { .. }), "{err}");
    }

    #[test]
    fn concurrent_ensure_remove_prune_do_not_fail() {
        let base = tmp();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let b = base.path().to_path_buf();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let r = rel(&format!("shared/p/vol-{t}-{i}"));
                        ensure_dir(&b, &r, Some(0o770)).expect("ensure");
                        write(&b.join(r.as_str()).join("f"));
                        assert_eq!(remove_tree(&b, &r), Ok(RemoveOutcome::Removed));
                        prune_owned_parents(&b, &r).expect("prune");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(fs::read_dir(base.path()).expect("ls").count(), 0);
    }

    #[test]
    fn errors_serialize_with_lossy_paths_and_expose_errno() {
        let err = io(
            "unlink",
            Path::new(OsStr::from_bytes(b"/b/\xff")),
            Errno::EACCES,
        );
        assert_eq!(err.errno(), Some(Errno::EACCES));
        assert!(!err.is_not_found());
        let json = serde_json::to_string(&err).expect("serialize");
        let back: SafeFsError = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.errno(), Some(Errno::EACCES));
        assert!(back.to_string().contains("unlink"), "{back}");
        let err = SafeFsError::CrossesMount {
            path: PathBuf::from("/b/x"),
        };
        let json = serde_json::to_string(&err).expect("serialize");
        assert_eq!(serde_json::from_str::<SafeFsError>(&json).expect("de"), err);
        assert_eq!(err.errno(), None);
    }
}
