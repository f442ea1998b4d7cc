//! An in-memory [`Quotas`] for service tests: it records which directory is in which project
//! and each project's limit, and can be told what the filesystem supports, what a project
//! holds and to fail a call. It proves nothing about the kernel; the VM tier does that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{ProjectId, ProjectUsage, QuotaError, Quotas, Support};
use crate::os::relpath::RelPath;

#[derive(Debug)]
struct State {
    support: Support,
    dirs: HashMap<PathBuf, ProjectId>,
    limits: HashMap<ProjectId, u64>,
    /// Bytes and inodes charged to a project (or to no project, under `None`).
    charged: HashMap<Option<ProjectId>, (u64, u64)>,
    /// The next call of this name fails with EIO.
    fail: Option<&'static str>,
}

/// Clones share state.
#[derive(Debug, Clone)]
pub struct FakeQuotas {
    state: Arc<Mutex<State>>,
}

impl Default for FakeQuotas {
    fn default() -> Self {
        Self::with_support(Support::Enforced)
    }
}

impl FakeQuotas {
    pub fn with_support(support: Support) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                support,
                dirs: HashMap::new(),
                limits: HashMap::new(),
                charged: HashMap::new(),
                fail: None,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change what the filesystem supports (as a remount would, between two starts).
    pub fn set_support(&self, support: Support) {
        self.state().support = support;
    }

    /// The project directory `path` was put in.
    pub fn project_of(&self, path: &Path) -> Option<ProjectId> {
        self.state().dirs.get(path).copied()
    }

    /// Project `id`'s limit in bytes; 0 when it has none.
    pub fn limit_of(&self, id: ProjectId) -> u64 {
        self.state().limits.get(&id).copied().unwrap_or(0)
    }

    /// Charge bytes and inodes to a project (`None`: to files in no project).
    pub fn charge(&self, id: Option<ProjectId>, bytes: u64, inodes: u64) {
        self.state().charged.insert(id, (bytes, inodes));
    }

    /// The next call named `call` (`assign`, `set_limit`, `usage`) fails.
    pub fn fail_next(&self, call: &'static str) {
        self.state().fail = Some(call);
    }

    fn check(&self, call: &'static str, path: &Path) -> Result<(), QuotaError> {
        let mut state = self.state();
        if state.fail == Some(call) {
            state.fail = None;
            return Err(QuotaError::Call {
                step: call,
                path: path.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        Ok(())
    }
}

impl Quotas for FakeQuotas {
    fn support(&self, _dir: &Path) -> Result<Support, QuotaError> {
        Ok(self.state().support)
    }

    fn assign(&self, base: &Path, rel: &RelPath, id: ProjectId) -> Result<(), QuotaError> {
        let path = base.join(rel.as_str());
        self.check("assign", &path)?;
        if !path.is_dir() {
            return Err(QuotaError::Missing { path });
        }
        self.state().dirs.insert(path, id);
        Ok(())
    }

    fn set_limit(&self, dir: &Path, id: ProjectId, bytes: u64) -> Result<(), QuotaError> {
        self.check("set_limit", dir)?;
        let mut state = self.state();
        match bytes {
            0 => state.limits.remove(&id),
            _ => state.limits.insert(id, bytes.div_ceil(1024) * 1024),
        };
        Ok(())
    }

    fn usage(&self, dir: &Path, id: Option<ProjectId>) -> Result<ProjectUsage, QuotaError> {
        self.check("usage", dir)?;
        let state = self.state();
        let (bytes, inodes) = state.charged.get(&id).copied().unwrap_or_default();
        Ok(ProjectUsage {
            bytes,
            inodes,
            limit_bytes: id
                .and_then(|id| state.limits.get(&id).copied())
                .unwrap_or(0),
        })
    }
}
