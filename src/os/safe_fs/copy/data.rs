//! A regular file's data, copied the cheapest way the filesystem allows:
//! 1. `FICLONE`: the destination shares the source's blocks (XFS with reflink, btrfs), so a
//!    file of any size costs a metadata update and no data is written;
//! 2. `copy_file_range`: the kernel copies (on XFS and ext4 without sharing; on NFS 4.2 the
//!    server copies, and the data never crosses the network);
//! 3. `pread`/`pwrite`, where neither is supported (an older NFS server, or across filesystems).
//!
//! Holes stay holes: only the source's data segments (`SEEK_DATA`/`SEEK_HOLE`) are copied, and
//! the size is set at the end. The deadline is checked between chunks, so one huge file never
//! holds a call past its bound; the copy continues from the destination's length next time.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use nix::errno::Errno;

use super::CopyStats;

/// `_IOW(0x94, 9, int)`, from linux/fs.h.
const FICLONE: libc::c_ulong = 0x4004_9409;
/// Bytes per `copy_file_range` call between deadline checks.
const CHUNK: usize = 64 << 20;
/// The buffer of the plain copy.
const BUFFER: usize = 1 << 20;
/// A continued copy restarts at a multiple of this below the destination's length.
const RESUME_ALIGN: i64 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Kernel,
    Plain,
}

/// Copy `size` bytes of `src` into `dst`, from `from` on (what a cut-short call wrote before).
/// `Ok(false)`: the deadline came first.
pub(super) fn copy(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: i64,
    from: i64,
    deadline: Instant,
    stats: &mut CopyStats,
) -> Result<bool, Errno> {
    if from == 0 && size > 0 {
        // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
        // source descriptor as its integer argument.
        let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
        if rc == 0 {
            stats.cloned_bytes += size as u64;
            return Ok(true);
        }
        // Any failure (EOPNOTSUPP, EXDEV, EINVAL, ENOTTY...) means: copy instead.
    }
    let mut pos = (from - from % RESUME_ALIGN).min(size).max(0);
    let mut way = Way::Kernel;
    // Bytes copied by this call: one chunk at least before the deadline may stop it (see the
    // header of `copy`), whatever holes come first.
    let mut copied = 0u64;
    while pos < size {
        let start = match lseek(src, pos, libc::SEEK_DATA) {
            Ok(p) => p,
            // No data past `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            // The filesystem cannot tell: treat everything as data.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => pos,
            Err(e) => return Err(e),
        };
        let end = match lseek(src, start, libc::SEEK_HOLE) {
            Ok(p) => p.min(size),
            Err(Errno::ENXIO) => break, // shrank meanwhile
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => size,
            Err(e) => return Err(e),
        };
        let mut at = start;
        while at < end {
            if copied > 0 && Instant::now() >= deadline {
                return Ok(false);
            }
            let want = usize::try_from(end - at).unwrap_or(CHUNK).min(CHUNK);
            let n = match way {
                Way::Kernel => match copy_range(src, dst, at, want) {
                    Ok(n) => {
                        stats.kernel_bytes += n as u64;
                        n
                    }
                    Err(Errno::EXDEV | Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => {
                        way = Way::Plain;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                Way::Plain => {
                    let n = plain(src, dst, at, want, deadline)?;
                    stats.written_bytes += n as u64;
                    n
                }
            };
            if n == 0 {
                let now = nix::sys::stat::fstat(src)?.st_size;
                if now > at && way == Way::Kernel {
                    // Some filesystems' copy_file_range copies nothing rather than fail.
                    way = Way::Plain;
                    continue;
                }
                // The source shrank while being copied: what it holds now is copied.
                return finish(dst, at.min(now.max(0)));
            }
            copied += n as u64;
            at += n as i64;
        }
        pos = end.max(start + 1);
    }
    finish(dst, size)
}

/// The size is set last, so trailing holes are kept.
fn finish(dst: BorrowedFd<'_>, size: i64) -> Result<bool, Errno> {
    nix::unistd::ftruncate(dst, size)?;
    Ok(true)
}

fn lseek(fd: BorrowedFd<'_>, at: i64, whence: libc::c_int) -> Result<i64, Errno> {
    // SAFETY: plain syscall on a live descriptor.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), at, whence) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    at: i64,
    len: usize,
) -> Result<usize, Errno> {
    let (mut off_in, mut off_out) = (at, at);
    // SAFETY: both descriptors are live; the offsets are local variables the kernel updates.
    let n = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            len,
            0,
        )
    };
    if n < 0 {
        Err(Errno::last())
    } else {
        Ok(n as usize)
    }
}

/// Up to `len` bytes at `at` through a buffer; fewer only at the source's end.
fn plain(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    at: i64,
    len: usize,
    deadline: Instant,
) -> Result<usize, Errno> {
    let mut buf = vec![0u8; BUFFER.min(len)];
    let mut done = 0;
    // At least one read: 0 bytes back means the source's end, never the deadline.
    while done < len && (done == 0 || Instant::now() < deadline) {
        let want = buf.len().min(len - done);
        let off = at + done as i64;
        let n = nix::sys::uio::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut written = 0;
        while written < n {
            written += nix::sys::uio::pwrite(dst, &buf[written..n], off + written as i64)?;
        }
        done += n;
    }
    Ok(done)
}
