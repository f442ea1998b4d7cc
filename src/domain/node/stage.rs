//! NodeStageVolume and NodeUnstageVolume, on the local backend.
//!
//! Staging makes the node's one mount of a volume: a bind of its directory at kubelet's
//! staging path, with the flags its capability names (and `ro` for a reader-only access mode).
//! Each publish on the node then binds from that mount and may only add flags (a pod's
//! `readonly`). Unstaging removes it once kubelet has unpublished every pod; the pods' own
//! mounts are separate binds, so even an unstage out of order never takes a pod's files away.
//! While a volume is staged its directory is mounted, so DeleteVolume refuses it.
//!
//! NFS volumes are not staged: each publish mounts the server directly, under its own time
//! bounds, and a stage mount would be one more mount of a server that may not answer.

use std::collections::HashMap;
use std::path::Path;

use super::{busy, Identity, Node};
use crate::domain::access::unsupported_reason;
use crate::domain::backend::Backend;
use crate::domain::error::NodeError;
use crate::domain::volume::StageSpec;
use crate::domain::volume_id::guard_key;
use crate::os::{mountinfo, MountFlags, MountSource, MountSpec};

impl Node {
    /// Whether this backend stages its volumes (NodeGetCapabilities says so to kubelet).
    pub fn stages(&self) -> bool {
        matches!(&*self.backend, Backend::Local(_))
    }

    /// Bind the volume's directory at the staging path; done already when it is mounted there
    /// with the same flags, ALREADY_EXISTS when something else is.
    pub async fn stage(&self, spec: StageSpec) -> Result<(), NodeError> {
        let _guard = self.claim(&guard_key(&spec.volume_id))?;
        if !self.stages() {
            return Err(NodeError::Unsupported {
                what: "NodeStageVolume",
            });
        }
        if let Some(reason) = unsupported_reason(self.backend.kind(), &spec.capability) {
            return Err(NodeError::UnsupportedCapability { reason });
        }
        let dir = match self.resolve(&spec.volume_id, &HashMap::new()).await? {
            Some(MountSource::Bind(dir)) => dir,
            // The local backend resolves every volume it has to its directory.
            _ => {
                return Err(NodeError::NotFound {
                    id: spec.volume_id.clone(),
                    reason: "no such volume".into(),
                })
            }
        };
        let staging = Self::canonical(&spec.staging).await;
        let mounts = self.mounts(&staging).await?;
        // As for a publish: a bind keeps every flag of the mount its source is on.
        let flags = spec.mount_flags();
        let wanted = flags
            .over(mountinfo::containing(&mounts, &dir).map_or(MountFlags::empty(), |m| m.flags));
        let source = MountSource::Bind(dir);
        let identity = Identity::of(&source, &mounts);
        if let Some(top) = mountinfo::top_at(&mounts, &staging) {
            if identity.matches(top) && top.flags.matches(wanted) {
                return Ok(());
            }
            return Err(busy(staging, top, wanted));
        }
        self.attach(MountSpec {
            source,
            target: staging,
            flags,
            options: Vec::new(),
        })
        .await
    }

    /// Unmount whatever is at the staging path and remove the directory, as unpublish does
    /// at a target; succeeds when nothing is there.
    pub async fn unstage(&self, volume_id: &str, staging: &Path) -> Result<(), NodeError> {
        if !self.stages() {
            return Err(NodeError::Unsupported {
                what: "NodeUnstageVolume",
            });
        }
        self.unpublish(volume_id, staging).await
    }
}
