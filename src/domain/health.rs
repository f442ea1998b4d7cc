//! Whether a backend can do its work, as CSI Probe and the HTTP `/healthz` both report it.
//!
//! A backend is healthy when the directories it works in answer a statfs within a short bound:
//! the local root (a disk that stopped answering makes every call hang), and for an NFS
//! controller its export staging directory. An NFS server that does not answer does not make
//! pvdir unhealthy: restarting the driver cannot fix a server, and each call already reports
//! that server's state under its own bound.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::os::{FsOp, Medium, Os, OsError};

use super::access::BackendKind;
use super::backend::Backend;

/// How long one check may take. kubelet's probes time out after a few seconds; answering
/// before they do keeps the reason in the reply instead of a bare timeout.
pub const CHECK_BOUND: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("checking the {what} {path}: {source}")]
    Check {
        what: &'static str,
        path: PathBuf,
        source: OsError,
    },
    #[error("the {what} {path} did not answer within {after:?}")]
    TimedOut {
        what: &'static str,
        path: PathBuf,
        after: Duration,
    },
}

/// The checks of one served backend. Cheap to clone: Probe and the HTTP server share it.
#[derive(Clone)]
pub struct Health {
    kind: BackendKind,
    dirs: Arc<[(&'static str, PathBuf)]>,
    os: Arc<dyn Os>,
}

impl Health {
    /// `controller`: whether this process serves the backend's controller (only the NFS
    /// controller has a staging directory to check).
    pub fn new(backend: &Backend, controller: bool, os: Arc<dyn Os>) -> Self {
        let dirs: Vec<(&'static str, PathBuf)> = match backend {
            Backend::Local(local) => vec![("local root", local.root().to_path_buf())],
            Backend::Nfs(nfs) if controller => {
                vec![("export staging directory", nfs.staging_dir().to_path_buf())]
            }
            Backend::Nfs(_) => Vec::new(),
        };
        Self {
            kind: backend.kind(),
            dirs: dirs.into(),
            os,
        }
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    pub async fn check(&self) -> Result<(), HealthError> {
        for (what, path) in self.dirs.iter() {
            let op = FsOp::Statfs { path: path.clone() };
            // A local statfs runs on the blocking pool; a hung disk keeps that thread, but the
            // answer still comes back within the bound.
            match tokio::time::timeout(CHECK_BOUND, self.os.fs(op, Medium::Local)).await {
                Ok(Ok(_)) => {}
                Ok(Err(source)) => {
                    return Err(HealthError::Check {
                        what,
                        path: path.clone(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(HealthError::TimedOut {
                        what,
                        path: path.clone(),
                        after: CHECK_BOUND,
                    })
                }
            }
        }
        Ok(())
    }
}
