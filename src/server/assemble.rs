//! Building each configured backend's services: one [`Plugin`] per endpoint, with its
//! guards, health checks, inventory and kubelet registrar. The local journal is replayed here,
//! before anything is served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Endpoint, ServerError};
use crate::cli::{Mode, ServeArgs};
use crate::csi::controller::ControllerService;
use crate::csi::identity::IdentityService;
use crate::csi::node::NodeService;
use crate::domain::backend::Backend;
use crate::domain::controller::Controller;
use crate::domain::health::Health;
use crate::domain::inventory::Inventory;
use crate::domain::local::{LocalBackend, QuotaSetup};
use crate::domain::nfs::{ClaimPolicy, NfsBackend};
use crate::domain::node::Node;
use crate::kubelet::{Registrar, RegistrarError};
use crate::metrics::Metrics;
use crate::os::quota::Quotas;
use crate::os::{LocalDisk, Os};

/// One backend's services on one endpoint.
pub struct Plugin {
    pub endpoint: Endpoint,
    pub identity: IdentityService,
    pub controller: Option<ControllerService>,
    pub node: Option<NodeService>,
    /// The checks behind Probe, also served on `/healthz`.
    pub health: Health,
    /// Registers the node side with kubelet, if asked to.
    pub registrar: Option<Registrar>,
    /// What `/metrics` counts for this backend.
    pub inventory: Inventory,
    /// The backend, for what it releases on shutdown.
    pub backend: Arc<Backend>,
}

/// The registrar for a plugin serving the node side on `endpoint`, when `dir` is given.
/// kubelet only dials unix sockets.
fn registrar(
    dir: Option<&Path>,
    driver: &str,
    endpoint: &Endpoint,
    kubelet_path: Option<&Path>,
) -> Result<Option<Registrar>, ServerError> {
    let Some(dir) = dir else { return Ok(None) };
    let csi_socket = match (kubelet_path, endpoint) {
        (Some(path), _) => path,
        (None, Endpoint::Unix(path)) => path.as_path(),
        (None, Endpoint::Tcp(_)) => {
            return Err(RegistrarError::NotUnix {
                driver: driver.into(),
            }
            .into())
        }
    };
    Ok(Some(Registrar::new(
        dir,
        driver,
        csi_socket,
        crate::kubelet::RECHECK,
    )))
}

/// Create `path` if missing and return it canonical.
pub fn prepare_dir(path: &Path) -> Result<PathBuf, ServerError> {
    std::fs::create_dir_all(path).map_err(|source| ServerError::Prepare {
        path: path.to_path_buf(),
        source,
    })?;
    // Canonical, so that mount-table comparisons see the same path the kernel reports.
    std::fs::canonicalize(path).map_err(|source| ServerError::Prepare {
        path: path.to_path_buf(),
        source,
    })
}

fn node_id(args: &ServeArgs) -> Result<String, ServerError> {
    match &args.node_id {
        Some(id) if !id.is_empty() => Ok(id.clone()),
        _ => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .ok_or(ServerError::NoNodeId),
    }
}

/// Build the plugins that `args` asks for. Creates the local root and staging directories, and
/// replays the local journal where this process creates and deletes local volumes. Their
/// guards count into `metrics`. `disk` does the local backend's work on the node's own disk
/// (usually the same machine as `os`), and `quotas` enforces local volumes' sizes.
pub async fn assemble(
    args: &ServeArgs,
    os: Arc<dyn Os>,
    disk: Arc<dyn LocalDisk>,
    quotas: Arc<dyn Quotas>,
    metrics: &Arc<Metrics>,
) -> Result<Vec<Plugin>, ServerError> {
    let node_id = node_id(args)?;
    let (local, nfs) = args.endpoints();
    if local.is_some() && local == nfs {
        return Err(ServerError::BadEndpoint(format!(
            "{} is given for both backends; each needs its own",
            local.unwrap_or_default()
        )));
    }
    let (local_mode, nfs_mode) = args.modes();
    // Records from before ListVolumes on NFS take their mount options from the flag: one
    // export given twice would list each of those volumes twice, under two IDs.
    for (i, e) in args.nfs_exports.iter().enumerate() {
        if args.nfs_exports[..i]
            .iter()
            .any(|o| (&o.server, &o.share) == (&e.server, &e.share))
        {
            return Err(ServerError::DuplicateExport {
                server: e.server.clone(),
                share: e.share.clone(),
            });
        }
    }
    let mut plugins = Vec::new();
    let mut add = |endpoint: &str,
                   name: &str,
                   mode: Mode,
                   backend: Backend,
                   kubelet_path: Option<&Path>|
     -> Result<(), ServerError> {
        let kind = backend.kind();
        let health = Health::new(&backend, mode.controller(), Arc::clone(&os));
        let backend = Arc::new(backend);
        let in_flight = crate::domain::guard::InFlight::observed(metrics.guard(kind.label()));
        let inventory = Inventory::new(
            Arc::clone(&backend),
            Arc::clone(&os),
            mode.controller(),
            mode.node(),
        );
        let endpoint: Endpoint = endpoint.parse()?;
        let registrar = match mode.node() {
            true => registrar(
                args.kubelet_registration_dir.as_deref(),
                name,
                &endpoint,
                kubelet_path,
            )?,
            false => None,
        };
        plugins.push(Plugin {
            endpoint,
            identity: IdentityService::new(name.to_string(), mode.controller(), health.clone()),
            controller: mode.controller().then(|| {
                ControllerService::new(Controller::new(Arc::clone(&backend), in_flight.clone()))
            }),
            node: mode.node().then(|| {
                NodeService::new(
                    Node::new(Arc::clone(&backend), Arc::clone(&os), in_flight.clone()),
                    node_id.clone(),
                    kind,
                )
            }),
            health,
            registrar,
            inventory,
            backend: Arc::clone(&backend),
        });
        Ok(())
    };
    if let Some(endpoint) = local {
        let root = prepare_dir(&args.local_root)?;
        let backend = LocalBackend::new(root.clone(), node_id.clone(), Arc::clone(&disk));
        for dir in backend.layout_dirs() {
            prepare_dir(&dir)?;
        }
        let backend = match local_mode.controller() {
            true => {
                let quota = QuotaSetup {
                    quotas,
                    overcommit: args.local_overcommit,
                };
                LocalBackend::open(root, node_id.clone(), disk, quota, Arc::clone(metrics))
                    .await
                    .map_err(ServerError::Journal)?
            }
            false => backend,
        };
        add(
            &endpoint,
            &args.local_driver_name,
            local_mode,
            Backend::Local(backend),
            args.local_registration_path.as_deref(),
        )?;
    }
    if let Some(endpoint) = nfs {
        let staging = if nfs_mode.controller() {
            prepare_dir(&args.nfs_staging_dir)?
        } else {
            args.nfs_staging_dir.clone()
        };
        add(
            &endpoint,
            &args.nfs_driver_name,
            nfs_mode,
            Backend::Nfs(
                NfsBackend::new(
                    staging,
                    Arc::clone(&os),
                    ClaimPolicy::new(ClaimPolicy::expiry_for(args.nfs_timeout())),
                )
                .with_copy_budget(NfsBackend::copy_budget_for(args.nfs_timeout()))
                .with_listed_exports(args.nfs_exports.clone()),
            ),
            args.nfs_registration_path.as_deref(),
        )?;
    }
    Ok(plugins)
}
