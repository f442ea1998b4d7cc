//! The real [`Quotas`]: `FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR` for a directory's project and
//! `quotactl_fd(2)` (Linux 5.14) for limits and usage. Structures are the kernel's UAPI ones
//! (`linux/fs.h`, `linux/quota.h`, `linux/dqblk_xfs.h`), laid out as the kernel reads them.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{ProjectId, ProjectUsage, QuotaError, Quotas, Support};
use crate::os::relpath::RelPath;
use crate::os::safe_fs;

/// `struct fsxattr`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `FS_XFLAG_PROJINHERIT`: files made in the directory take its project.
const XFLAG_PROJINHERIT: u32 = 0x0000_0200;

nix::ioctl_read!(fs_get_xattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_set_xattr, b'X', 32, FsXattr);

/// `struct if_dqblk`; block limits are in 1 KiB units (`QIF_DQBLKSIZE`), space in bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct IfDqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
}

/// `struct fs_qfilestatv`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct QFileStatV {
    ino: u64,
    nblks: u64,
    nextents: u32,
    pad: u32,
}

/// `struct fs_quota_statv` (version 1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct QuotaStatV {
    version: i8,
    pad1: u8,
    flags: u16,
    incoredqs: u32,
    uquota: QFileStatV,
    gquota: QFileStatV,
    pquota: QFileStatV,
    btimelimit: i32,
    itimelimit: i32,
    rtbtimelimit: i32,
    bwarnlimit: u16,
    iwarnlimit: u16,
    rtbwarnlimit: u16,
    pad3: u16,
    pad4: u32,
    pad2: [u64; 7],
}

const PRJQUOTA: u32 = 2;
const Q_GETQUOTA: u32 = 0x80_0007;
const Q_SETQUOTA: u32 = 0x80_0008;
/// `XQM_CMD(8)`: answered by XFS and, through the generic quota code, by ext4.
const Q_XGETQSTATV: u32 = (b'X' as u32) << 8 | 8;
const QIF_BLIMITS: u32 = 1;
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
const FS_QSTATV_VERSION1: i8 = 1;
/// Quota block limits count 1 KiB blocks.
const QUOTA_BLOCK: u64 = 1024;

const fn qcmd(cmd: u32, kind: u32) -> u32 {
    (cmd << 8) | (kind & 0xff)
}

/// # Safety
/// `addr` must point to the structure `cmd` reads or writes, valid for the call.
unsafe fn quotactl_fd(
    fd: &OwnedFd,
    cmd: u32,
    id: u32,
    addr: *mut libc::c_void,
) -> std::io::Result<()> {
    let rc = libc::syscall(
        libc::SYS_quotactl_fd,
        fd.as_raw_fd() as libc::c_uint,
        qcmd(cmd, PRJQUOTA) as libc::c_uint,
        id as libc::c_uint,
        addr,
    );
    if rc == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd, QuotaError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(dir, flags, Mode::empty()).map_err(|e| QuotaError::Call {
        step: "open",
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

fn call(step: &'static str, dir: &Path) -> impl FnOnce(std::io::Error) -> QuotaError {
    let path = dir.to_path_buf();
    move |source| QuotaError::Call { step, path, source }
}

/// The errors that mean "no project quotas here" rather than a failure: no quota support in
/// the kernel or filesystem (ENOSYS, ENOTTY, EOPNOTSUPP, EINVAL), or quotas not on (ESRCH).
fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL | libc::ESRCH)
    )
}

fn get_quota(fd: &OwnedFd, id: u32, dir: &Path) -> Result<IfDqblk, QuotaError> {
    let mut q = IfDqblk::default();
    // SAFETY: Q_GETQUOTA writes one `if_dqblk` to the address given.
    unsafe { quotactl_fd(fd, Q_GETQUOTA, id, (&mut q as *mut IfDqblk).cast()) }
        .map_err(call("quotactl Q_GETQUOTA", dir))?;
    Ok(q)
}

fn usage_of(q: &IfDqblk) -> ProjectUsage {
    ProjectUsage {
        bytes: q.curspace,
        inodes: q.curinodes,
        limit_bytes: q.bhardlimit.saturating_mul(QUOTA_BLOCK),
    }
}

/// The project of the directory open at `fd`, when it passes its project on (a volume
/// directory); `None` for a directory in no project of its own.
fn inherited_project(fd: &OwnedFd) -> Option<ProjectId> {
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `fsxattr` to the address given.
    unsafe { fs_get_xattr(fd.as_raw_fd(), &mut attr) }.ok()?;
    if attr.xflags & XFLAG_PROJINHERIT == 0 {
        return None;
    }
    ProjectId::new(attr.projid)
}

/// The usage of the project of the volume directory at `path`, or `None` where it is in no
/// project of its own or the filesystem keeps no quotas (callers then report statfs).
pub fn volume_usage(path: &Path) -> Option<ProjectUsage> {
    let fd = open_dir(path).ok()?;
    let id = inherited_project(&fd)?;
    get_quota(&fd, id.get(), path).ok().map(|q| usage_of(&q))
}

/// The real quota calls; stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelQuotas;

impl Quotas for KernelQuotas {
    fn support(&self, dir: &Path) -> Result<Support, QuotaError> {
        let fd = open_dir(dir)?;
        let mut stat = QuotaStatV {
            version: FS_QSTATV_VERSION1,
            ..Default::default()
        };
        // SAFETY: Q_XGETQSTATV reads the version and writes one `fs_quota_statv`.
        match unsafe { quotactl_fd(&fd, Q_XGETQSTATV, 0, (&mut stat as *mut QuotaStatV).cast()) } {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) => return Ok(Support::None),
            Err(e) => return Err(call("quotactl Q_XGETQSTATV", dir)(e)),
        }
        // The directory must also take a project ID (ext4 needs the `project` feature).
        let mut attr = FsXattr::default();
        // SAFETY: FS_IOC_FSGETXATTR writes one `fsxattr` to the address given.
        if let Err(e) = unsafe { fs_get_xattr(fd.as_raw_fd(), &mut attr) } {
            let e = std::io::Error::from(e);
            return match is_unsupported(&e) {
                true => Ok(Support::None),
                false => Err(call("FS_IOC_FSGETXATTR", dir)(e)),
            };
        }
        Ok(
            match (
                stat.flags & FS_QUOTA_PDQ_ACCT != 0,
                stat.flags & FS_QUOTA_PDQ_ENFD != 0,
            ) {
                (true, true) => Support::Enforced,
                (true, false) => Support::AccountedOnly,
                (false, _) => Support::None,
            },
        )
    }

    fn assign(&self, base: &Path, rel: &RelPath, id: ProjectId) -> Result<(), QuotaError> {
        let path = base.join(rel.as_str());
        let fd = safe_fs::open_dir(base, rel)
            .map_err(|source| QuotaError::Open {
                path: path.clone(),
                source,
            })?
            .ok_or_else(|| QuotaError::Missing { path: path.clone() })?;
        let mut attr = FsXattr::default();
        // SAFETY: FS_IOC_FSGETXATTR writes one `fsxattr` to the address given.
        unsafe { fs_get_xattr(fd.as_raw_fd(), &mut attr) }
            .map_err(|e| call("FS_IOC_FSGETXATTR", &path)(e.into()))?;
        if attr.projid == id.get() && attr.xflags & XFLAG_PROJINHERIT != 0 {
            return Ok(());
        }
        attr.projid = id.get();
        attr.xflags |= XFLAG_PROJINHERIT;
        // SAFETY: FS_IOC_FSSETXATTR reads one `fsxattr` from the address given.
        unsafe { fs_set_xattr(fd.as_raw_fd(), &attr) }
            .map_err(|e| call("FS_IOC_FSSETXATTR", &path)(e.into()))?;
        Ok(())
    }

    fn set_limit(&self, dir: &Path, id: ProjectId, bytes: u64) -> Result<(), QuotaError> {
        let fd = open_dir(dir)?;
        let mut q = IfDqblk {
            // Rounded up: a limit is never below the size promised.
            bhardlimit: bytes.div_ceil(QUOTA_BLOCK),
            valid: QIF_BLIMITS,
            ..Default::default()
        };
        // SAFETY: Q_SETQUOTA reads one `if_dqblk` from the address given.
        unsafe { quotactl_fd(&fd, Q_SETQUOTA, id.get(), (&mut q as *mut IfDqblk).cast()) }
            .map_err(call("quotactl Q_SETQUOTA", dir))
    }

    fn usage(&self, dir: &Path, id: Option<ProjectId>) -> Result<ProjectUsage, QuotaError> {
        let fd = open_dir(dir)?;
        match get_quota(&fd, id.map_or(0, ProjectId::get), dir) {
            Ok(q) => Ok(usage_of(&q)),
            // XFS keeps no record of a project nothing was ever charged to and answers ENOENT
            // (ext4 answers zeros): nothing used, no limit.
            Err(QuotaError::Call { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                Ok(ProjectUsage::default())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel reads these by size: a wrong layout would corrupt the call silently.
    #[test]
    fn structures_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::size_of::<IfDqblk>(), 72);
        assert_eq!(std::mem::size_of::<QFileStatV>(), 24);
        assert_eq!(std::mem::size_of::<QuotaStatV>(), 160);
        assert_eq!(qcmd(Q_SETQUOTA, PRJQUOTA), 0x8000_0802);
        assert_eq!(qcmd(Q_XGETQSTATV, PRJQUOTA), 0x0058_0802);
    }

    /// This machine's kernel keeps no quotas: tmpfs and the host's disks answer `None`, never
    /// an error, so a node without quotas still serves.
    #[test]
    fn a_filesystem_without_quotas_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let support = KernelQuotas.support(dir.path()).unwrap();
        assert_ne!(support, Support::Enforced);
        assert!(volume_usage(dir.path()).is_none());
    }
}
