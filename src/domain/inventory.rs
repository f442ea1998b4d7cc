//! What a served backend holds right now, counted for the metrics at scrape time: its volumes
//! (local backend only) and its mounts in the mount table.
//!
//! Counting is cheap and bounded by design: one listing of the local record directory and one
//! read of `/proc/self/mountinfo` (both on the blocking pool, never on the runtime's threads),
//! no tree walk and nothing that asks an NFS server. That is why NFS volumes are not counted:
//! they live on the exports, and counting them would mean reading every export per scrape.
//! Reading the table at scrape rather than counting publishes as they happen keeps the number
//! right across restarts and unmounts made behind pvdir's back.

use std::path::Path;
use std::sync::Arc;

use super::backend::Backend;
use crate::os::{mountinfo, MountEntry, Os};

/// Mounts of one role: `target` (a pod's volume) or `export` (the NFS controller's).
pub struct MountCount {
    pub role: &'static str,
    pub count: u64,
}

pub struct Counts {
    /// `None` where counting would be expensive (NFS).
    pub volumes: Option<u64>,
    pub mounts: Vec<MountCount>,
}

#[derive(Clone)]
pub struct Inventory {
    backend: Arc<Backend>,
    os: Arc<dyn Os>,
    controller: bool,
    node: bool,
}

impl Inventory {
    pub fn new(backend: Arc<Backend>, os: Arc<dyn Os>, controller: bool, node: bool) -> Self {
        Self {
            backend,
            os,
            controller,
            node,
        }
    }

    pub fn kind(&self) -> super::access::BackendKind {
        self.backend.kind()
    }

    /// The counts; what cannot be read now is left out (logged), not reported as zero.
    pub async fn count(&self) -> Counts {
        let mounts = match self.os.mounts().await {
            Ok(mounts) => self.count_mounts(&mounts),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the mount table");
                Vec::new()
            }
        };
        let volumes = match &*self.backend {
            Backend::Local(local) => match local.count().await {
                Ok(n) => Some(n as u64),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: cannot count local volumes");
                    None
                }
            },
            _ => None,
        };
        Counts { volumes, mounts }
    }

    fn count_mounts(&self, mounts: &[MountEntry]) -> Vec<MountCount> {
        let mut out = Vec::new();
        match &*self.backend {
            Backend::Local(local) => {
                // Binds of a volume directory (or below one), wherever they are.
                let volumes = local.root().join("volumes");
                let count = mountinfo::mounts_of_tree(mounts, &volumes).count();
                out.push(MountCount {
                    role: "target",
                    count: count as u64,
                });
            }
            Backend::Nfs(nfs) => {
                let staging = nfs.staging_dir();
                let export = |m: &&MountEntry| m.mount_point.parent() == Some(staging);
                if self.controller {
                    out.push(MountCount {
                        role: "export",
                        count: remote(mounts).filter(export).count() as u64,
                    });
                }
                if self.node {
                    // Every other NFS mount: pvdir cannot tell its own from another driver's
                    // without the kubelet directory, so a node with foreign NFS mounts counts
                    // them too.
                    let count = remote(mounts)
                        .filter(|m| !under(&m.mount_point, staging))
                        .count();
                    out.push(MountCount {
                        role: "target",
                        count: count as u64,
                    });
                }
            }
        }
        out
    }
}

fn remote(mounts: &[MountEntry]) -> impl Iterator<Item = &MountEntry> {
    mounts.iter().filter(|m| m.is_remote())
}

fn under(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}
