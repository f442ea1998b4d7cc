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

use tokio::time::timeout;

use super::backend::Backend;
use super::health::CHECK_BOUND;
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

    /// The counts; what cannot be read now is left out (logged; its gauge keeps its last value
    /// and the same disk fails `pvdir_backend_healthy`), not reported as zero. Each
    /// read is bounded like a health check: a disk that stops answering must not hang the
    /// scrape (the blocking thread stays stuck, as it does for the health check).
    pub async fn count(&self) -> Counts {
        let mounts = match timeout(CHECK_BOUND, self.os.mounts()).await {
            Ok(Ok(mounts)) => self.count_mounts(&mounts),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: cannot read the mount table");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!("metrics: the mount table did not answer in time");
                Vec::new()
            }
        };
        let volumes = match &*self.backend {
            Backend::Local(local) => match timeout(CHECK_BOUND, local.count()).await {
                Ok(Ok(n)) => Some(n as u64),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "metrics: cannot count local volumes");
                    None
                }
                Err(_) => {
                    tracing::warn!("metrics: the local root did not answer in time");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::local::LocalBackend;
    use crate::domain::nfs::{ClaimPolicy, NfsBackend};
    use crate::os::fake::FakeOs;
    use crate::os::{MountFlags, MountSource, MountSpec};

    async fn mount(os: &FakeOs, source: MountSource, target: &str) {
        let spec = MountSpec {
            source,
            target: target.into(),
            flags: MountFlags::empty(),
            options: Vec::new(),
        };
        os.mount(&spec).await.unwrap();
    }

    fn nfs(server: &str) -> MountSource {
        MountSource::Nfs {
            server: server.into(),
            path: "/export".into(),
        }
    }

    fn roles(counts: &Counts) -> Vec<(&'static str, u64)> {
        counts.mounts.iter().map(|m| (m.role, m.count)).collect()
    }

    #[tokio::test]
    async fn nfs_mounts_are_exports_under_the_staging_dir_and_targets_elsewhere() {
        let fake = FakeOs::new();
        mount(&fake, nfs("a"), "/run/exports/k1").await;
        mount(&fake, nfs("b"), "/run/exports/k2").await;
        mount(&fake, nfs("a"), "/kubelet/pods/p/mount").await;
        mount(
            &fake,
            MountSource::Bind("/x".into()),
            "/kubelet/pods/q/mount",
        )
        .await;
        let os: Arc<dyn Os> = Arc::new(fake);
        let policy = ClaimPolicy::new(ClaimPolicy::expiry_for(std::time::Duration::from_secs(30)));
        let backend = Arc::new(Backend::Nfs(NfsBackend::new(
            "/run/exports".into(),
            Arc::clone(&os),
            policy,
        )));
        let both = Inventory::new(Arc::clone(&backend), Arc::clone(&os), true, true);
        let counts = both.count().await;
        assert_eq!(counts.volumes, None, "NFS volumes are never counted");
        assert_eq!(roles(&counts), [("export", 2), ("target", 1)]);
        let node = Inventory::new(backend, os, false, true);
        assert_eq!(roles(&node.count().await), [("target", 1)]);
    }

    #[tokio::test]
    async fn local_targets_are_binds_of_volume_directories() {
        let fake = FakeOs::new();
        let volume = MountSource::Bind("/var/lib/pvdir/volumes/k".into());
        mount(&fake, volume, "/kubelet/pods/p/mount").await;
        let other = MountSource::Bind("/var/lib/other".into());
        mount(&fake, other, "/kubelet/pods/q/mount").await;
        let local = LocalBackend::new("/var/lib/pvdir".into(), "n".into(), Arc::new(fake.clone()));
        let os: Arc<dyn Os> = Arc::new(fake);
        let inventory = Inventory::new(Arc::new(Backend::Local(local)), os, true, true);
        let counts = inventory.count().await;
        assert_eq!(roles(&counts), [("target", 1)]);
    }
}
