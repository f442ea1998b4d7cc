//! The backend an endpoint serves. One process may serve both, each on its own endpoint under
//! its own driver name, because the two are provisioned differently (per node vs centrally).

use super::access::BackendKind;
use super::local::LocalBackend;
use super::nfs::NfsBackend;

// Made once per endpoint and shared behind an Arc: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Local(LocalBackend),
    Nfs(NfsBackend),
}

impl Backend {
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Local(_) => BackendKind::Local,
            Backend::Nfs(_) => BackendKind::Nfs,
        }
    }
}

impl Backend {
    /// On shutdown, after the last call: release what the controller side holds on the
    /// machine (the NFS controller's export mounts; the local backend holds nothing).
    pub async fn release(&self) {
        match self {
            Backend::Local(_) => {}
            Backend::Nfs(nfs) => nfs.release_exports().await,
        }
    }
}
