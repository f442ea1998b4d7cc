//! The real machine: mount(2)/umount2(2) for binds, the kernel NFS client through `mount.nfs`, and
//! directory work either on the blocking pool or in `pvdir internal fs` child processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use nix::mount::MntFlags;
use sys_mount::{Mount, MountFlags, UnmountFlags};
use tokio::process::Command;

use super::fsop::{self, FsOp, FsReply};
use super::safe_fs::SafeFsError;
use super::{child, mountinfo, Medium, MountEntry, MountSource, MountSpec, Os, OsError};

/// The programs the driver runs, found on PATH. The container image must provide them
/// (Dockerfile; checked in tests/image.rs).
pub const MOUNT_NFS: &str = "mount.nfs";
pub const UMOUNT: &str = "umount";
pub const EXTERNAL_PROGRAMS: &[&str] = &[MOUNT_NFS, UMOUNT];

/// The argument that makes the pvdir binary run one [`FsOp`] and print its result as JSON.
pub const INTERNAL_FS_ARGS: [&str; 2] = ["internal", "fs"];

pub struct RealOs {
    /// The pvdir binary, re-executed as the killable helper for remote directory work.
    helper: PathBuf,
    /// Bound on every operation that can block on an NFS server.
    remote_timeout: Duration,
}

impl RealOs {
    pub fn new(helper: PathBuf, remote_timeout: Duration) -> Self {
        Self {
            helper,
            remote_timeout,
        }
    }

    /// Local work on the blocking pool. Never spawn helpers from here: pool threads exit when
    /// idle, and a helper's parent-death signal is tied to the thread that spawned it (see
    /// child::die_with_parent).
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, OsError> + Send + 'static,
    ) -> Result<T, OsError> {
        // Local work is awaited to the end: callers hold their per-volume guard until it is done.
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| OsError::Helper {
                what: "blocking task".into(),
                message: e.to_string(),
            })?
    }

    /// Gentlest first. A plain unmount flushes what the pod wrote and harms no one. Only when
    /// it cannot finish in time (a dead server with data to flush) is it forced: MNT_FORCE
    /// aborts every in-flight call on the NFS superblock, which the kernel shares between all
    /// mounts of one server and export (on the node: every pod's), so a forced unmount on a
    /// server that answers would fail other pods' I/O. A mount that is merely busy (a stats
    /// call still in it) is detached lazily instead, which aborts nothing. Between steps the
    /// table is read again: a step that was killed may still have done its work.
    async fn unmount_remote(&self, target: &Path) -> Result<(), OsError> {
        let top = |mounts: &[MountEntry]| mountinfo::top_at(mounts, target).map(|m| m.id);
        let before = top(&self.mounts().await?);
        let plain = self.umount_helper(target, None).await;
        let Err(first) = plain else { return Ok(()) };
        if top(&self.mounts().await?) != before {
            return Ok(());
        }
        let escalation: &[&str] = match first {
            OsError::TimedOut { .. } => &["-f", "-l"],
            _ => &["-l"],
        };
        let mut last = first;
        for flag in escalation {
            tracing::warn!(target.path = %target.display(), error = %last,
                "unmount did not complete; escalating to umount {flag}");
            match self.umount_helper(target, Some(flag)).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if top(&self.mounts().await?) != before {
                return Ok(());
            }
        }
        Err(last)
    }

    async fn umount_helper(&self, target: &Path, flag: Option<&str>) -> Result<(), OsError> {
        let mut cmd = Command::new(UMOUNT);
        // -c (no canonicalize): util-linux would otherwise stat the target, which blocks on a
        // dead server. -i: no umount.nfs helper, which would be a grandchild that outlives a
        // killed driver, and for NFSv3 first asks the (perhaps dead) server's mountd.
        cmd.args(["-i", "-c"]).args(flag).arg(target);
        let done = child::run(cmd, "umount", self.remote_timeout).await?;
        if done.success {
            Ok(())
        } else {
            Err(OsError::Unmount {
                target: target.to_path_buf(),
                message: done.stderr_text(),
            })
        }
    }
}

/// Per-mount flags a bind can take, by their mount(8) names; the domain refuses other options.
fn bind_flag(option: &str) -> Option<MountFlags> {
    Some(match option {
        "ro" => MountFlags::RDONLY,
        "nosuid" => MountFlags::NOSUID,
        "nodev" => MountFlags::NODEV,
        "noexec" => MountFlags::NOEXEC,
        "noatime" => MountFlags::NOATIME,
        "nodiratime" => MountFlags::NODIRATIME,
        "relatime" => MountFlags::RELATIME,
        _ => return None,
    })
}

fn bind(source: &Path, target: &Path, readonly: bool, options: &[String]) -> Result<(), OsError> {
    let err = |e: std::io::Error| OsError::Mount {
        target: target.to_path_buf(),
        message: e.to_string(),
    };
    Mount::builder()
        .flags(MountFlags::BIND)
        .mount(source, target)
        .map_err(err)?;
    let mut flags = options
        .iter()
        .filter_map(|o| bind_flag(o))
        .fold(MountFlags::empty(), |a, f| a | f);
    if readonly {
        flags |= MountFlags::RDONLY;
    }
    if !flags.is_empty() {
        // Per-mount flags (MS_RDONLY above all) are ignored on the initial bind (kernel
        // quirk); they take a remount of the bind itself. If that fails, undo the bind so no
        // writable half-publish is left.
        let remount = Mount::builder()
            .flags(MountFlags::BIND | MountFlags::REMOUNT | flags)
            .mount(source, target);
        if let Err(e) = remount {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            return Err(err(e));
        }
    }
    Ok(())
}

#[async_trait]
impl Os for RealOs {
    async fn mounts(&self) -> Result<Vec<MountEntry>, OsError> {
        // Bytes, not text: mount paths are whatever bytes someone gave a directory name.
        let text = tokio::fs::read("/proc/self/mountinfo")
            .await
            .map_err(|source| OsError::ReadMountTable { source })?;
        Ok(mountinfo::parse(&text))
    }

    async fn mount(&self, spec: &MountSpec) -> Result<(), OsError> {
        match &spec.source {
            MountSource::Bind(source) => {
                let (source, target, ro) = (source.clone(), spec.target.clone(), spec.readonly);
                let options = spec.options.clone();
                Self::blocking(move || bind(&source, &target, ro, &options)).await
            }
            MountSource::Nfs { server, path } => {
                let mut options = spec.options.clone();
                if spec.readonly {
                    options.push("ro".into());
                }
                // mount.nfs directly, not mount(8): a direct child dies with the driver (see
                // child::die_with_parent), a grandchild would not.
                let mut cmd = Command::new(MOUNT_NFS);
                cmd.arg(MountSource::nfs_device(server, path))
                    .arg(&spec.target);
                if !options.is_empty() {
                    cmd.arg("-o").arg(options.join(","));
                }
                let done = child::run(cmd, "mount.nfs", self.remote_timeout).await?;
                if done.success {
                    Ok(())
                } else {
                    Err(OsError::Mount {
                        target: spec.target.clone(),
                        message: format!(
                            "mount.nfs exited {:?}: {}",
                            done.code,
                            done.stderr_text()
                        ),
                    })
                }
            }
        }
    }

    async fn unmount(&self, target: &Path, remote: bool) -> Result<(), OsError> {
        if remote {
            self.unmount_remote(target).await
        } else {
            let target = target.to_path_buf();
            Self::blocking(move || {
                sys_mount::unmount(&target, UnmountFlags::empty()).map_err(|e| OsError::Unmount {
                    target: target.clone(),
                    message: e.to_string(),
                })
            })
            .await
        }
    }

    async fn fs(&self, op: FsOp, medium: Medium) -> Result<FsReply, OsError> {
        match medium {
            Medium::Local => Self::blocking(move || fsop::execute(&op).map_err(OsError::Fs)).await,
            Medium::Remote => {
                let json = serde_json::to_string(&op).map_err(|e| OsError::Helper {
                    what: op.name().into(),
                    message: e.to_string(),
                })?;
                let mut cmd = Command::new(&self.helper);
                cmd.args(INTERNAL_FS_ARGS).arg(json);
                let done = child::run(cmd, op.name(), self.remote_timeout).await?;
                let reply: Result<FsReply, SafeFsError> = serde_json::from_slice(&done.stdout)
                    .map_err(|e| OsError::Helper {
                        what: op.name().into(),
                        message: format!("{e}; stderr: {}", done.stderr_text()),
                    })?;
                reply.map_err(OsError::Fs)
            }
        }
    }
}

/// Entry point of `pvdir internal fs <json>`: run one operation in this (child) process and
/// print the result for the parent.
pub fn run_internal_fs(json: &str) -> i32 {
    let result: Result<FsReply, SafeFsError> = match serde_json::from_str::<FsOp>(json) {
        Ok(op) => fsop::execute(&op),
        Err(e) => Err(SafeFsError::InvalidName {
            name: format!("undecodable operation: {e}"),
        }),
    };
    match serde_json::to_string(&result) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(_) => 1,
    }
}
