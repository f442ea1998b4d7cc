//! Serving the plugins: bind every endpoint first (a failure leaves no socket behind), serve
//! gRPC and `/healthz` + `/metrics` until shutdown, then let in-flight calls finish, remove the
//! sockets and release what the controllers mounted.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use super::{Endpoint, Plugin, ServerError};
use crate::csi::proto::{
    controller_server::ControllerServer, group_controller_server::GroupControllerServer,
    identity_server::IdentityServer, node_server::NodeServer,
};
use crate::domain::backend::Backend;
use crate::http::{HealthTarget, Served};
use crate::kubelet::Registrar;
use crate::metrics::rpc::RpcLayer;
use crate::metrics::Metrics;

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
