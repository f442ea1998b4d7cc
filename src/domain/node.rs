//! Node-side operations: publish, unpublish and stats.
//!
//! Every decision is made by observing the mount table, never by remembering: a publish that
//! finds its target already mounted with the same source and flags is done; an unpublish
//! unmounts whatever is at the target, however it got there. Volume-level guards serialise calls
//! for one volume, which is what makes the ReadWriteOncePod check race-free.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::access::unsupported_reason;
use super::access::AccessMode;
use super::backend::Backend;
use super::error::NodeError;
use super::guard::InFlight;
use super::guard::InFlightGuard;
use super::params::{from_map, join_export, without_kubelet_keys, NfsContext};
use super::volume::{PublishSpec, VolumeStats};
use super::volume_id::{guard_key, VolumeId};
use crate::os::{mountinfo, FsOp, FsReply, Medium, MountEntry, MountSource, MountSpec, Os};

/// Bound on stacked mounts removed by one unpublish (a loop guard, not a real-world limit).
const MAX_STACKED_MOUNTS: usize = 16;

pub struct Node {
    backend: Arc<Backend>,
    os: Arc<dyn Os>,
    in_flight: InFlight,
}

/// What a volume is mounted from, and how to recognise its mounts in the table.
struct Source {
    mount: MountSource,
}

impl Source {
    fn matches(&self, entry: &MountEntry, bind_identity: Option<&(String, PathBuf)>) -> bool {
        match &self.mount {
            MountSource::Bind(_) => {
                bind_identity.is_some_and(|(dev, root)| &entry.device == dev && &entry.root == root)
            }
            MountSource::Nfs { server, path } => {
                entry.is_remote() && entry.source == MountSource::nfs_device(server, path)
            }
        }
    }

    fn medium(&self) -> Medium {
        match self.mount {
            MountSource::Bind(_) => Medium::Local,
            MountSource::Nfs { .. } => Medium::Remote,
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

    fn os_err(step: &'static str, target: &Path) -> impl FnOnce(crate::os::OsError) -> NodeError {
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

    /// Work out the mount source of a volume from its ID, or for static NFS PVs from the
    /// volume context.
    async fn resolve(
        &self,
        raw: &str,
        context: &std::collections::HashMap<String, String>,
    ) -> Result<Source, NodeError> {
        let not_found = |reason: String| NodeError::NotFound {
            id: raw.to_string(),
            reason,
        };
        match &*self.backend {
            Backend::Local(local) => {
                let id = match VolumeId::parse(raw) {
                    Ok(VolumeId::Local(id)) => id,
                    Ok(_) => return Err(not_found("not a local volume".into())),
                    Err(e) => return Err(not_found(e.to_string())),
                };
                if id.node != local.node_id() {
                    return Err(not_found(format!("it lives on node {:?}", id.node)));
                }
                let exists = local
                    .exists(&id)
                    .await
                    .map_err(|e| not_found(e.to_string()))?;
                if !exists {
                    return Err(not_found("no such volume".into()));
                }
                Ok(Source {
                    mount: MountSource::Bind(local.volume_dir(&id.key)),
                })
            }
            Backend::Nfs(_) => {
                let context = without_kubelet_keys(context);
                if !context.is_empty() {
                    let (server, path) = from_map::<NfsContext>(&context)?.resolve()?;
                    return Ok(Source {
                        mount: MountSource::Nfs { server, path },
                    });
                }
                match VolumeId::parse(raw) {
                    Ok(VolumeId::Nfs(id)) => Ok(Source {
                        mount: MountSource::Nfs {
                            server: id.server.clone(),
                            path: join_export(&id.share, &id.subdir),
                        },
                    }),
                    Ok(_) => Err(not_found("not an NFS volume".into())),
                    Err(e) => Err(not_found(e.to_string())),
                }
            }
        }
    }

    pub async fn publish(&self, spec: PublishSpec) -> Result<(), NodeError> {
        let _guard = self.claim(&guard_key(&spec.volume_id))?;
        if let Some(reason) = unsupported_reason(self.backend.kind(), &spec.capability) {
            return Err(NodeError::UnsupportedCapability { reason });
        }
        let source = self.resolve(&spec.volume_id, &spec.context).await?;
        let readonly = spec.mount_readonly();
        let target = &spec.target;
        let mounts = self.mounts(target).await?;
        let identity = match &source.mount {
            MountSource::Bind(dir) => mountinfo::bind_identity(&mounts, dir),
            MountSource::Nfs { .. } => None,
        };
        if let Some(top) = mountinfo::top_at(&mounts, target) {
            if source.matches(top, identity.as_ref()) && top.readonly == readonly {
                return Ok(()); // already published exactly like this
            }
            return Err(NodeError::TargetBusy {
                target: target.clone(),
                existing: format!("{} {} ro={}", top.fs_type, top.source, top.readonly),
            });
        }
        if spec.capability.mode == AccessMode::SingleNodeSingleWriter {
            if let Some(other) = mounts
                .iter()
                .find(|m| m.mount_point != *target && source.matches(m, identity.as_ref()))
            {
                return Err(NodeError::SingleWriterInUse {
                    id: spec.volume_id.clone(),
                    other: other.mount_point.clone(),
                });
            }
        }
        self.os
            .fs(
                FsOp::MakeTarget {
                    path: target.clone(),
                },
                Medium::Local,
            )
            .await
            .map_err(Self::os_err("create target directory", target))?;
        let options = match &source.mount {
            MountSource::Nfs { .. } => spec.capability.mount_flags().to_vec(),
            // A bind mount has no filesystem options of its own; read-only is handled below.
            MountSource::Bind(_) => Vec::new(),
        };
        let mount = MountSpec {
            source: source.mount,
            target: target.clone(),
            readonly,
            options,
        };
        self.os
            .mount(&mount)
            .await
            .map_err(Self::os_err("mount volume", target))
    }

    /// Unmount everything at `target` and remove the directory. Succeeds when nothing is there,
    /// including for volumes this node never heard of (kubelet retries until it gets OK).
    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), NodeError> {
        let _guard = self.claim(&guard_key(volume_id))?;
        for _ in 0..MAX_STACKED_MOUNTS {
            let mounts = self.mounts(target).await?;
            let Some(top) = mountinfo::top_at(&mounts, target) else {
                break;
            };
            self.os
                .unmount(target, top.is_remote())
                .await
                .map_err(Self::os_err("unmount target", target))?;
        }
        match self
            .os
            .fs(
                FsOp::RemoveTarget {
                    path: target.to_path_buf(),
                },
                Medium::Local,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(crate::os::OsError::Fs(crate::os::safe_fs::SafeFsError::NotEmpty { .. })) => {
                Err(NodeError::TargetNotEmpty {
                    target: target.to_path_buf(),
                })
            }
            Err(e) => Err(Self::os_err("remove target directory", target)(e)),
        }
    }

    /// Usage of the volume published at `path`; NOT_FOUND unless that path really is a mount of
    /// this volume.
    pub async fn stats(&self, volume_id: &str, path: &Path) -> Result<VolumeStats, NodeError> {
        let source = self.resolve(volume_id, &Default::default()).await?;
        let mounts = self.mounts(path).await?;
        let identity = match &source.mount {
            MountSource::Bind(dir) => mountinfo::bind_identity(&mounts, dir),
            MountSource::Nfs { .. } => None,
        };
        let published =
            mountinfo::top_at(&mounts, path).is_some_and(|m| source.matches(m, identity.as_ref()));
        if !published {
            return Err(NodeError::NotPublishedAt {
                id: volume_id.to_string(),
                path: path.to_path_buf(),
            });
        }
        match self
            .os
            .fs(
                FsOp::Statfs {
                    path: path.to_path_buf(),
                },
                source.medium(),
            )
            .await
            .map_err(Self::os_err("statfs volume", path))?
        {
            FsReply::Stats(s) => Ok(s.into()),
            other => Err(NodeError::Os {
                step: "statfs volume",
                target: path.to_path_buf(),
                source: crate::os::OsError::Helper {
                    what: "statfs".into(),
                    message: format!("unexpected reply {other:?}"),
                },
            }),
        }
    }
}
