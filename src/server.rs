//! Wiring and serving: builds the services for each configured backend and serves each on its
//! endpoint until SIGTERM/SIGINT, then lets in-flight calls finish and removes the sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::cli::{Mode, ServeArgs};
use crate::csi::controller::ControllerService;
use crate::csi::identity::IdentityService;
use crate::csi::node::NodeService;
use crate::csi::proto::{
    controller_server::ControllerServer, group_controller_server::GroupControllerServer,
    identity_server::IdentityServer, node_server::NodeServer,
};
use crate::domain::backend::Backend;
use crate::domain::controller::Controller;
use crate::domain::health::Health;
use crate::domain::inventory::Inventory;
use crate::domain::local::{LocalBackend, QuotaSetup};
use crate::domain::nfs::{ClaimPolicy, NfsBackend};
use crate::domain::node::Node;
use crate::http::{HealthTarget, Served};
use crate::kubelet::{Registrar, RegistrarError};
use crate::metrics::rpc::RpcLayer;
use crate::metrics::Metrics;
use crate::os::quota::Quotas;
use crate::os::{LocalDisk, Os};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`; the host may be a name, resolved when binding.
    Tcp(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("endpoint {0:?}: expected unix:///absolute/path or tcp://host:port")]
    BadEndpoint(String),
    #[error("preparing {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listening on {endpoint}: {source}")]
    Listen {
        endpoint: Endpoint,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot determine the node id; pass --node-id")]
    NoNodeId,
    #[error("preparing the OS layer: {0}")]
    Os(#[from] crate::os::OsError),
    #[error("--http-endpoint {0:?}: expected :port or host:port")]
    BadHttpEndpoint(String),
    #[error("listening for HTTP on {addr}: {source}")]
    HttpListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registrar(#[from] RegistrarError),
    #[error("replaying the local journal: {0}")]
    Journal(crate::domain::error::ControllerError),
    #[error("--nfs-export names {server}:{share} twice; give each export once, with the options of its volumes' StorageClass")]
    DuplicateExport { server: String, share: String },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, ServerError> {
        if let Some(path) = s.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            if path.is_absolute() {
                return Ok(Endpoint::Unix(path));
            }
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if port_ok {
                return Ok(Endpoint::Tcp(addr.to_string()));
            }
        }
        Err(ServerError::BadEndpoint(s.to_string()))
    }
}

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

enum Listener {
    Unix(UnixListener, crate::socket::OwnSocket),
    Tcp(TcpListener),
}

/// Bind one endpoint (see [`crate::socket::bind_unix`] for unix sockets).
async fn listen(endpoint: &Endpoint) -> Result<Listener, ServerError> {
    let err = |source| ServerError::Listen {
        endpoint: endpoint.clone(),
        source,
    };
    match endpoint {
        Endpoint::Unix(path) => {
            let (listener, socket) = crate::socket::bind_unix(path).await.map_err(err)?;
            Ok(Listener::Unix(listener, socket))
        }
        Endpoint::Tcp(addr) => Ok(Listener::Tcp(
            TcpListener::bind(addr.as_str()).await.map_err(err)?,
        )),
    }
}

/// Serve every plugin until `shutdown` resolves; then stop accepting, let in-flight calls
/// finish, and remove the unix sockets. `http`: where to serve `/healthz` and `/metrics`, if
/// anywhere. Every call is timed into `metrics`.
pub async fn serve(
    plugins: Vec<Plugin>,
    http: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    // What /healthz looks at, taken before the plugins are split up among their servers.
    let health: Vec<HealthTarget> = plugins
        .iter()
        .map(|p| HealthTarget {
            driver: p.identity.name().to_string(),
            health: p.health.clone(),
            registration: p.registrar.as_ref().map(Registrar::state),
        })
        .collect();
    let served = Served {
        targets: health,
        metrics: Arc::clone(&metrics),
        inventories: plugins.iter().map(|p| p.inventory.clone()).collect(),
    };
    let backends: Vec<(Arc<Backend>, bool)> = plugins
        .iter()
        .map(|p| (Arc::clone(&p.backend), p.controller.is_some()))
        .collect();
    // Bind everything first, so a failure leaves no socket of ours behind. The registration
    // sockets come last: kubelet calls the CSI socket as soon as it sees one.
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    let mut registrations = Vec::new();
    let binding = async {
        for plugin in plugins {
            let listener = listen(&plugin.endpoint).await?;
            bound.push((plugin, listener));
        }
        let http = match http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::HttpListen { addr, source })?,
            ),
            None => None,
        };
        for (plugin, _) in &mut bound {
            if let Some(registrar) = plugin.registrar.take() {
                let first = registrar.bind().await?;
                registrations.push((registrar, first));
            }
        }
        Ok::<_, ServerError>(http)
    };
    let http_listener = match binding.await {
        Ok(listener) => listener,
        Err(e) => {
            for (_, listener) in bound {
                if let Listener::Unix(_, socket) = listener {
                    socket.remove();
                }
            }
            for (_, (_, socket)) in registrations {
                socket.remove();
            }
            return Err(e);
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut tasks: tokio::task::JoinSet<Result<(), ServerError>> = tokio::task::JoinSet::new();
    for (registrar, first) in registrations {
        let stop_rx = stop_rx.clone();
        tasks.spawn(async move {
            registrar.run(first, stop_rx).await;
            Ok(())
        });
    }
    for (plugin, listener) in bound {
        tracing::info!(endpoint = %plugin.endpoint, driver = plugin.identity.name(), "serving");
        let layer = RpcLayer::new(Arc::clone(&metrics), plugin.health.kind().label());
        // Bounds against a client that never reads: HTTP/2 refuses streams past 64 on one
        // connection, and a connection that stops answering pings is closed (the socket's
        // own bounds are in socket::limit). Sidecars and kubelet make a call or two at once.
        let mut router = Server::builder()
            .max_concurrent_streams(Some(64))
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .layer(layer)
            .add_service(IdentityServer::new(plugin.identity));
        if let Some(c) = plugin.controller {
            if let Some(g) = c.groups() {
                router = router.add_service(GroupControllerServer::new(g));
            }
            router = router.add_service(ControllerServer::new(c));
        }
        if let Some(n) = plugin.node {
            router = router.add_service(NodeServer::new(n));
        }
        let stop = stopped(stop_rx.clone());
        match listener {
            Listener::Unix(listener, socket) => {
                sockets.push(socket);
                let serving =
                    router.serve_with_incoming_shutdown(crate::socket::incoming(listener), stop);
                tasks.spawn(async move { serving.await.map_err(ServerError::Serve) });
            }
            Listener::Tcp(listener) => {
                let serving = router.serve_with_incoming_shutdown(
                    crate::socket::limit::bounded(TcpListenerStream::new(listener)),
                    stop,
                );
                tasks.spawn(async move { serving.await.map_err(ServerError::Serve) });
            }
        }
    }
    if let (Some(listener), Some(addr)) = (http_listener, http) {
        tracing::info!(address = %addr, "serving /healthz and /metrics");
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            axum::serve(listener, crate::http::router(served))
                .with_graceful_shutdown(stop)
                .await
                .map_err(|source| ServerError::HttpListen { addr, source })
        });
    }
    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down: finishing in-flight calls"),
        Some(done) = tasks.join_next() => {
            // A server that ends on its own has failed; stop the others too.
            if let Ok(Err(e)) = done { result = Err(e); }
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    for socket in sockets {
        socket.remove();
    }
    // No call runs any more: what the controllers mounted for their work can go.
    for (backend, controller) in backends {
        if controller {
            backend.release().await;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:///run/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:10000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:10000".into())
        );
        assert_eq!(
            "tcp://localhost:10000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("localhost:10000".into())
        );
        for bad in [
            "unix://rel.sock",
            "/abs",
            "tcp://nohost",
            "tcp://:1",
            "tcp://h:99999",
            "http://x:1",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}
