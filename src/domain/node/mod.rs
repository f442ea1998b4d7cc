//! Node-side operations: publish, unpublish and stats; expansion is in [`expand`], staging
//! (local volumes) in [`stage`].
//!
//! Every decision is made by observing the mount table, never by remembering: a publish that
//! finds its target already mounted with the same source and flags is done; an unpublish
//! unmounts whatever is at the target, however it got there. Volume-level guards serialise calls
//! for one volume, which is what makes the ReadWriteOncePod check race-free. Target paths are
//! compared in canonical form, because that is how the kernel writes them into mountinfo.

mod expand;
mod stage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::access::{unsupported_reason, AccessMode};
use super::backend::Backend;
use super::error::NodeError;
use super::guard::{InFlight, InFlightGuard};
use super::params::{from_map, join_export, without_kubelet_keys, NfsContext};
use super::volume::{PublishSpec, VolumeHealth};
use super::volume_id::{guard_key, LocalId, VolumeId, VolumeIdError};
use crate::os::safe_fs::SafeFsError;
use crate::os::{
    mountinfo, probe_nfs_mount, FsOp, FsReply, Medium, MountEntry, MountFlags, MountSource,
    MountSpec, NfsMountProbe, Os, OsError, Unmounted,
};

/// Errors that describe the volume's state rather than a failure of the call: the server did not
/// answer, or the NFS client gave up on it. Codes of 512 and above are the kernel's own
/// (ERESTARTSYS when a forced unmount aborts the call, EBADHANDLE, EJUKEBOX), which the NFS
/// client lets through to user space.
fn is_volume_fault(e: &OsError) -> bool {
    match e {
        OsError::TimedOut { .. } => true,
        _ if e.is_stale_handle() => true,
        OsError::Fs(fs) => fs.raw_errno().is_some_and(|raw| {
            raw >= 512 || [libc::EIO, libc::ETIMEDOUT, libc::ENOTCONN].contains(&raw)
        }),
        _ => false,
    }
}

/// The one place where a pod's data may be lost: unpublishing had to give up on writing back
/// what was written through an NFS mount (the server did not answer within the bound; see
/// [`Unmounted::WithoutWriteback`]). The call still answers OK, because kubelet must be able
/// to tear the pod down and a retry would find nothing left to unmount, so this warning is the
/// loss's only trace. A metric of such losses belongs here too.
fn report_unwritten_data(volume_id: &str, target: &Path) {
    tracing::warn!(
        volume.id = volume_id,
        target.path = %target.display(),
        writeback = "abandoned",
        "unmounted without writing back: data the pod wrote may never reach the NFS server"
    );
}

/// The spec's ALREADY_EXISTS for a target (or staging path) that holds another mount than
/// the one asked for: `top`, where a mount with `wanted` flags was asked.
fn busy(target: PathBuf, top: &MountEntry, wanted: MountFlags) -> NodeError {
    NodeError::TargetBusy {
        target,
        existing: format!(
            "{} {} ({}; wanted {wanted})",
            top.fs_type,
            top.source.to_string_lossy(),
            top.flags
        ),
    }
}

/// Bound on stacked mounts removed by one unpublish (a loop guard, not a real-world limit).
const MAX_STACKED_MOUNTS: usize = 16;

pub struct Node {
    backend: Arc<Backend>,
    os: Arc<dyn Os>,
    in_flight: InFlight,
}

/// How to recognise a volume's mounts in the table.
enum Identity {
    /// A bind of this (device, path inside the device) directory.
    Bind(Option<(String, PathBuf)>),
    /// An NFS mount of exactly this `server:/path`.
    Nfs(String),
    /// Any NFS mount: a static PV asked about without its volume context (stats).
    AnyNfs,
}

impl Identity {
    fn of(source: &MountSource, mounts: &[MountEntry]) -> Self {
        match source {
            MountSource::Bind(dir) => Identity::Bind(mountinfo::bind_identity(mounts, dir)),
            MountSource::Nfs { server, path } => {
                Identity::Nfs(MountSource::nfs_device(server, path))
            }
        }
    }

    fn matches(&self, entry: &MountEntry) -> bool {
        match self {
            Identity::Bind(id) => id
                .as_ref()
                .is_some_and(|(dev, root)| &entry.device == dev && &entry.root == root),
            Identity::Nfs(device) => entry.is_remote() && entry.source_is(device),
            Identity::AnyNfs => entry.is_remote(),
        }
    }
}

impl Node {
    /// `in_flight` is shared with the controller of the same backend (see `Controller::new`).
    pub fn new(backend: Arc<Backend>, os: Arc<dyn Os>, in_flight: InFlight) -> Self {
        Self {
            backend,
            os,
            in_flight,
        }
    }

    fn claim(&self, key: &str) -> Result<InFlightGuard, NodeError> {
        self.in_flight
            .try_claim(key)
            .ok_or_else(|| NodeError::InFlight {
                key: key.to_string(),
            })
    }

    fn os_err(step: &'static str, target: &Path) -> impl FnOnce(OsError) -> NodeError {
        let target = target.to_path_buf();
        move |source| NodeError::Os {
            step,
            target,
            source,
        }
    }

    async fn mounts(&self, target: &Path) -> Result<Vec<MountEntry>, NodeError> {
        self.os
            .mounts()
            .await
            .map_err(Self::os_err("read mount table", target))
    }

    /// `path` with its parent resolved (symlinks, `..`), as mountinfo spells mount points. The
    /// path itself is not touched: it may be a mount of a server that no longer answers.
    async fn canonical(path: &Path) -> PathBuf {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return path.to_path_buf();
        };
        match tokio::fs::canonicalize(parent).await {
            Ok(parent) => parent.join(name),
            // A missing parent: nothing can be mounted below it; keep the path as given.
            Err(_) => path.to_path_buf(),
        }
    }

    fn parse(raw: &str) -> Result<Option<VolumeId>, NodeError> {
        match VolumeId::parse(raw) {
            Ok(id) => Ok(Some(id)),
            Err(VolumeIdError::Foreign) => Ok(None),
            Err(source) => Err(NodeError::MalformedId {
                id: raw.to_string(),
                source,
            }),
        }
    }

    /// The local volume `raw` names, when it is one of this node's (`node`); NOT_FOUND else.
    fn local_id(raw: &str, node: &str) -> Result<LocalId, NodeError> {
        let not_found = |reason: &str| NodeError::NotFound {
            id: raw.to_string(),
            reason: reason.to_string(),
        };
        let id = match Self::parse(raw)? {
            Some(VolumeId::Local(id)) => id,
            Some(VolumeId::Nfs(_)) => return Err(not_found("an NFS volume on the local endpoint")),
            None => return Err(not_found("not a pvdir volume")),
        };
        if id.node != node {
            return Err(not_found("it lives on another node"));
        }
        Ok(id)
    }

    /// The mount source of a volume: from its ID, or for static NFS PVs (whose context names a
    /// `server`) from the volume context. `None` for a static NFS handle without context.
    async fn resolve(
        &self,
        raw: &str,
        context: &HashMap<String, String>,
    ) -> Result<Option<MountSource>, NodeError> {
        let not_found = |reason: &str| NodeError::NotFound {
            id: raw.to_string(),
            reason: reason.to_string(),
        };
        match &*self.backend {
            Backend::Local(local) => {
                let id = Self::local_id(raw, local.node_id())?;
                let exists = local
                    .exists(&id)
                    .await
                    .map_err(|source| NodeError::VolumeLookup {
                        id: raw.to_string(),
                        source: Box::new(source),
                    })?;
                if !exists {
                    return Err(not_found("no such volume"));
                }
                Ok(Some(MountSource::Bind(local.volume_dir(&id.key))))
            }
            Backend::Nfs(_) => {
                // kubelet and the provisioner add their own keys (pod info, provisioner
                // identity) to every context; only a `server` makes it a static PV.
                if context.contains_key("server") {
                    let (server, path) =
                        from_map::<NfsContext>(&without_kubelet_keys(context))?.resolve()?;
                    return Ok(Some(MountSource::Nfs { server, path }));
                }
                match Self::parse(raw)? {
                    Some(VolumeId::Nfs(id)) => Ok(Some(MountSource::Nfs {
                        server: id.server.clone(),
                        path: join_export(&id.share, &id.subdir),
                    })),
                    Some(VolumeId::Local(_)) => {
                        Err(not_found("a local volume on the NFS endpoint"))
                    }
                    None => Ok(None),
                }
            }
        }
    }

    pub async fn publish(&self, spec: PublishSpec) -> Result<(), NodeError> {
        let _guard = self.claim(&guard_key(&spec.volume_id))?;
        if let Some(reason) = unsupported_reason(self.backend.kind(), &spec.capability) {
            return Err(NodeError::UnsupportedCapability { reason });
        }
        let Some(source) = self.resolve(&spec.volume_id, &spec.context).await? else {
            return Err(NodeError::NotFound {
                id: spec.volume_id.clone(),
                reason: "not a pvdir volume and no server in the volume context".into(),
            });
        };
        let asked = spec.mount_flags();
        let target = Self::canonical(&spec.target).await;
        let mounts = self.mounts(&target).await?;
        let identity = Identity::of(&source, &mounts);
        // A staged local volume is bound from its staging mount (see `stage.rs`), which must
        // be this volume's.
        let staged = match (&spec.staging, &source) {
            (Some(staging), MountSource::Bind(_)) => {
                let staging = Self::canonical(staging).await;
                match mountinfo::top_at(&mounts, &staging) {
                    Some(top) if identity.matches(top) => Some(staging),
                    _ => {
                        return Err(NodeError::NotStaged {
                            id: spec.volume_id.clone(),
                            staging,
                        })
                    }
                }
            }
            _ => None,
        };
        let source = match &staged {
            Some(staging) => MountSource::Bind(staging.clone()),
            None => source,
        };
        // What a finished publish shows: a bind keeps every flag of the mount its source is
        // on (the OS layer only ever adds), an NFS mount has just the asked ones.
        let wanted = match &source {
            MountSource::Bind(dir) => asked
                .over(mountinfo::containing(&mounts, dir).map_or(MountFlags::empty(), |m| m.flags)),
            MountSource::Nfs { .. } => asked.over(MountFlags::empty()),
        };
        if let Some(top) = mountinfo::top_at(&mounts, &target) {
            // The spec's ALREADY_EXISTS for a target published with another source, access
            // mode or flags. pvdir never leaves a half-made mount at a target (see
            // os::mount), so a mismatch is never its own unfinished publish.
            if !(identity.matches(top) && top.flags.matches(wanted)) {
                return Err(busy(target, top, wanted));
            }
            if !top.is_remote() {
                return Ok(()); // already published exactly like this
            }
            let probe = probe_nfs_mount(&*self.os, &target)
                .await
                .map_err(Self::os_err("check existing mount", &target))?;
            match probe {
                NfsMountProbe::Answering => return Ok(()),
                // Unmounted behind our back since we read the table: mount it again below.
                NfsMountProbe::Gone => {}
                // The server recreated the export (restore, failover, a new disk): this mount
                // can never work again, and kubelet is asking because the pod needs it.
                NfsMountProbe::Stale => {
                    tracing::warn!(volume.id = %spec.volume_id, target.path = %target.display(), "replacing a mount with a stale file handle");
                    self.os
                        .unmount(&target, true)
                        .await
                        .map_err(Self::os_err("unmount stale target", &target))?;
                }
            }
        }
        if spec.capability.mode == AccessMode::SingleNodeSingleWriter {
            // The staging mount is the node's own, not another publish.
            if let Some(other) = mounts.iter().find(|m| {
                m.mount_point != target
                    && Some(&m.mount_point) != staged.as_ref()
                    && identity.matches(m)
            }) {
                return Err(NodeError::SingleWriterInUse {
                    id: spec.volume_id.clone(),
                    other: other.mount_point.clone(),
                });
            }
        }
        let options = match &source {
            MountSource::Nfs { .. } => spec.capability.mount_flags().to_vec(),
            // A bind takes per-mount flags only, and `asked` holds them all.
            MountSource::Bind(_) => Vec::new(),
        };
        self.attach(MountSpec {
            source,
            target,
            flags: asked,
            options,
        })
        .await
    }

    /// Make the mount's target directory if it is missing, then mount.
    async fn attach(&self, mount: MountSpec) -> Result<(), NodeError> {
        let target = &mount.target;
        self.os
            .fs(
                FsOp::MakeTarget {
                    path: target.clone(),
                },
                Medium::Local,
            )
            .await
            .map_err(Self::os_err("create target directory", target))?;
        self.os
            .mount(&mount)
            .await
            .map_err(Self::os_err("mount volume", target))
    }

    /// Unmount everything at `target` and remove the directory. Succeeds when nothing is there,
    /// including for volumes this node never heard of (kubelet retries until it gets OK).
    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), NodeError> {
        let _guard = self.claim(&guard_key(volume_id))?;
        let target = Self::canonical(target).await;
        for _ in 0..MAX_STACKED_MOUNTS {
            let mounts = self.mounts(&target).await?;
            let Some(top) = mountinfo::top_at(&mounts, &target) else {
                break;
            };
            let unmounted = self
                .os
                .unmount(&target, top.is_remote())
                .await
                .map_err(Self::os_err("unmount target", &target))?;
            if unmounted == Unmounted::WithoutWriteback {
                report_unwritten_data(volume_id, &target);
            }
        }
        match self
            .os
            .fs(
                FsOp::RemoveTarget {
                    path: target.clone(),
                },
                Medium::Local,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(OsError::Fs(SafeFsError::NotEmpty { .. })) => {
                Err(NodeError::TargetNotEmpty { target })
            }
            Err(e) => Err(Self::os_err("remove target directory", &target)(e)),
        }
    }

    /// Usage of the volume published at `path`; NOT_FOUND unless that path really is a mount of
    /// this volume.
    pub async fn stats(&self, volume_id: &str, path: &Path) -> Result<VolumeHealth, NodeError> {
        let source = self.resolve(volume_id, &HashMap::new()).await?;
        let path = Self::canonical(path).await;
        let mounts = self.mounts(&path).await?;
        let (identity, medium) = match &source {
            Some(s @ MountSource::Bind(_)) => (Identity::of(s, &mounts), Medium::Local),
            Some(s @ MountSource::Nfs { .. }) => (Identity::of(s, &mounts), Medium::Remote),
            None => (Identity::AnyNfs, Medium::Remote),
        };
        if !mountinfo::top_at(&mounts, &path).is_some_and(|m| identity.matches(m)) {
            return Err(NodeError::NotPublishedAt {
                id: volume_id.to_string(),
                path,
            });
        }
        let op = match medium {
            Medium::Local => FsOp::Statfs { path: path.clone() },
            Medium::Remote => FsOp::StatfsNfs { path: path.clone() },
        };
        let reply = match self.os.fs(op, medium).await {
            Ok(reply) => reply,
            // Unpublished between our look at the table and the statfs (a concurrent unpublish):
            // what is there now is the local disk, not the volume, or nothing at all.
            Err(OsError::Fs(e)) if matches!(e, SafeFsError::NotNfs { .. }) || e.is_not_found() => {
                return Err(NodeError::NotPublishedAt {
                    id: volume_id.to_string(),
                    path,
                })
            }
            // The server did not answer, or answered that the volume is gone or broken: the
            // volume is abnormal (kubelet reports it as an event on the pod), the call is fine.
            Err(e) if is_volume_fault(&e) => {
                return Ok(VolumeHealth {
                    usage: None,
                    abnormal: Some(e.to_string()),
                })
            }
            Err(e) => return Err(Self::os_err("statfs volume", &path)(e)),
        };
        match reply {
            FsReply::Stats(s) => Ok(VolumeHealth {
                usage: Some(s.into()),
                abnormal: None,
            }),
            other => Err(NodeError::Os {
                step: "statfs volume",
                target: path,
                source: OsError::unexpected_reply("statfs", &other),
            }),
        }
    }
}
