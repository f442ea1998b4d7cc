//! Wiring and serving: builds the services for each configured backend and serves each on its
//! endpoint until SIGTERM/SIGINT, then lets in-flight calls finish and removes the sockets.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

use crate::cli::{Mode, ServeArgs};
use crate::csi::controller::ControllerService;
use crate::csi::identity::IdentityService;
use crate::csi::node::NodeService;
use crate::csi::proto::{
    controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer,
};
use crate::domain::backend::Backend;
use crate::domain::controller::Controller;
use crate::domain::local::LocalBackend;
use crate::domain::nfs::{ClaimPolicy, NfsBackend};
use crate::domain::node::Node;
use crate::os::Os;

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

/// Build the plugins that `args` asks for. Creates the local root and staging directories.
pub fn assemble(args: &ServeArgs, os: Arc<dyn Os>) -> Result<Vec<Plugin>, ServerError> {
    let node_id = node_id(args)?;
    let (local, nfs) = args.endpoints();
    if local.is_some() && local == nfs {
        return Err(ServerError::BadEndpoint(format!(
            "{} is given for both backends; each needs its own",
            local.unwrap_or_default()
        )));
    }
    let (local_mode, nfs_mode) = args.modes();
    let mut plugins = Vec::new();
    let mut add =
        |endpoint: &str, name: &str, mode: Mode, backend: Backend| -> Result<(), ServerError> {
            let kind = backend.kind();
            let backend = Arc::new(backend);
            let in_flight = crate::domain::guard::InFlight::default();
            plugins.push(Plugin {
                endpoint: endpoint.parse()?,
                identity: IdentityService::new(name.to_string(), kind, mode.controller()),
                controller: mode.controller().then(|| {
                    ControllerService::new(
                        Controller::new(Arc::clone(&backend), in_flight.clone()),
                        kind,
                    )
                }),
                node: mode.node().then(|| {
                    NodeService::new(
                        Node::new(Arc::clone(&backend), Arc::clone(&os), in_flight.clone()),
                        node_id.clone(),
                        kind,
                    )
                }),
            });
            Ok(())
        };
    if let Some(endpoint) = local {
        let root = prepare_dir(&args.local_root)?;
        let backend = LocalBackend::new(root, node_id.clone(), Arc::clone(&os));
        for dir in backend.layout_dirs() {
            prepare_dir(&dir)?;
        }
        add(
            &endpoint,
            &args.local_driver_name,
            local_mode,
            Backend::Local(backend),
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
            Backend::Nfs(NfsBackend::new(
                staging,
                Arc::clone(&os),
                ClaimPolicy::new(ClaimPolicy::expiry_for(args.nfs_timeout())),
            )),
        )?;
    }
    Ok(plugins)
}

enum Listener {
    Unix(UnixListener, OwnSocket),
    Tcp(TcpListener),
}

/// A socket file this process bound, remembered by inode so that shutdown removes only our
/// own: after an overlapping rollout the path may already hold the successor's socket.
struct OwnSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl OwnSocket {
    fn new(path: &std::path::Path, meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == (self.dev, self.ino) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Bind one endpoint. A stale socket left by a killed predecessor is replaced (bind would fail
/// with EADDRINUSE); any other file at that path is refused, never deleted.
async fn listen(endpoint: &Endpoint) -> Result<Listener, ServerError> {
    let err = |source| ServerError::Listen {
        endpoint: endpoint.clone(),
        source,
    };
    match endpoint {
        Endpoint::Unix(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(err)?;
            }
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_socket() => {
                    // A socket someone still answers on belongs to a live instance (an
                    // overlapping rollout): never steal it.
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        return Err(err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "another process is serving on this socket",
                        )));
                    }
                    std::fs::remove_file(path).map_err(err)?
                }
                Ok(_) => {
                    return Err(err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "not a socket",
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
            let listener = UnixListener::bind(path).map_err(err)?;
            let identity = std::fs::symlink_metadata(path).map_err(err)?;
            Ok(Listener::Unix(listener, OwnSocket::new(path, &identity)))
        }
        Endpoint::Tcp(addr) => Ok(Listener::Tcp(
            TcpListener::bind(addr.as_str()).await.map_err(err)?,
        )),
    }
}

/// Serve every plugin until `shutdown` resolves; then stop accepting, let in-flight calls
/// finish, and remove the unix sockets.
pub async fn serve(
    plugins: Vec<Plugin>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    // Bind everything first, so a failure leaves no socket of ours behind.
    let mut bound = Vec::new();
    for plugin in plugins {
        match listen(&plugin.endpoint).await {
            Ok(listener) => bound.push((plugin, listener)),
            Err(e) => {
                for (_, listener) in bound {
                    if let Listener::Unix(_, socket) = listener {
                        socket.remove();
                    }
                }
                return Err(e);
            }
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sockets = Vec::new();
    for (plugin, listener) in bound {
        tracing::info!(endpoint = %plugin.endpoint, driver = plugin.identity.name(), "serving");
        let mut router = Server::builder().add_service(IdentityServer::new(plugin.identity));
        if let Some(c) = plugin.controller {
            router = router.add_service(ControllerServer::new(c));
        }
        if let Some(n) = plugin.node {
            router = router.add_service(NodeServer::new(n));
        }
        let mut rx = stop_rx.clone();
        let stopped = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        match listener {
            Listener::Unix(listener, socket) => {
                sockets.push(socket);
                tasks.spawn(
                    router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped),
                );
            }
            Listener::Tcp(listener) => {
                tasks.spawn(
                    router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped),
                );
            }
        }
    }
    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down: finishing in-flight calls"),
        Some(done) = tasks.join_next() => {
            // A server that ends on its own has failed; stop the others too.
            if let Ok(Err(e)) = done { result = Err(ServerError::Serve(e)); }
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            if result.is_ok() {
                result = Err(ServerError::Serve(e));
            }
        }
    }
    for socket in sockets {
        socket.remove();
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

#[cfg(test)]
mod listen_tests {
    use super::*;

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        std::fs::write(&path, b"precious").unwrap();
        assert!(listen(&Endpoint::Unix(path.clone())).await.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn a_live_socket_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(listen(&Endpoint::Unix(path.clone())).await.is_err());
        assert!(path.exists());
    }

    #[tokio::test]
    async fn shutdown_removes_only_its_own_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let Ok(Listener::Unix(_listener, ours)) = listen(&Endpoint::Unix(path.clone())).await
        else {
            panic!("bind")
        };
        // A successor replaced the socket file meanwhile.
        std::fs::remove_file(&path).unwrap();
        let _successor = std::os::unix::net::UnixListener::bind(&path).unwrap();
        ours.remove();
        assert!(path.exists(), "the successor's socket was removed");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(matches!(
            listen(&Endpoint::Unix(path)).await,
            Ok(Listener::Unix(..))
        ));
    }
}
