//! One registration socket per driver name, kept in place for as long as pvdir serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::transport::Server;

use super::proto;
use super::service::{RegistrationService, RegistrationState};
use crate::socket::{bind_unix, OwnSocket};

/// CSI spec versions pvdir speaks, as kubelet expects them in GetInfo.
const CSI_VERSIONS: &[&str] = &["1.0.0"];

/// How often the socket is checked. kubelet only registers what appears in its directory, so a
/// socket deleted under us (the directory wiped by a kubelet reinstall) must be made again; the
/// real node-driver-registrar only reports that through /healthz and waits to be restarted.
pub const RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    #[error(
        "registering {driver} with kubelet: its CSI endpoint must be a unix socket (kubelet dials \
         no other kind)"
    )]
    NotUnix { driver: String },
    #[error("binding the registration socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Registrar {
    socket: PathBuf,
    info: proto::PluginInfo,
    state: watch::Sender<RegistrationState>,
    recheck: Duration,
}

impl Registrar {
    /// `dir`: kubelet's plugins_registry directory as this process sees it. `csi_socket`: the
    /// driver's CSI socket as kubelet sees it on the host (inside a pod the two differ).
    pub fn new(dir: &Path, driver: &str, csi_socket: &Path, recheck: Duration) -> Self {
        // The name kubelet's own registrar uses, so that switching between pvdir's
        // registration and the sidecar replaces the socket instead of adding a second one.
        let socket = dir.join(format!("{driver}-reg.sock"));
        let info = proto::PluginInfo {
            r#type: "CSIPlugin".into(),
            name: driver.into(),
            endpoint: csi_socket.to_string_lossy().into_owned(),
            supported_versions: CSI_VERSIONS.iter().map(|v| v.to_string()).collect(),
        };
        Self {
            socket,
            info,
            state: watch::Sender::new(RegistrationState::Waiting),
            recheck,
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.subscribe()
    }

    pub async fn bind(&self) -> Result<(UnixListener, OwnSocket), RegistrarError> {
        bind_unix(&self.socket)
            .await
            .map_err(|source| RegistrarError::Bind {
                path: self.socket.clone(),
                source,
            })
    }

    /// Serve on `first` (from [`Registrar::bind`]) until `stop` turns true, making the socket
    /// again whenever it disappears; then remove it, as kubelet expects of a plugin that goes
    /// away (it deregisters the driver).
    pub async fn run(self, first: (UnixListener, OwnSocket), mut stop: watch::Receiver<bool>) {
        let mut bound = Some(first);
        loop {
            let (listener, socket) = match bound.take() {
                Some(b) => b,
                None => match self.bind().await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot make the registration socket; trying again");
                        tokio::select! {
                            _ = tokio::time::sleep(self.recheck) => continue,
                            _ = stop.wait_for(|s| *s) => return,
                        }
                    }
                },
            };
            self.state.send_replace(RegistrationState::Waiting);
            tracing::info!(driver = self.info.name, socket = %self.socket.display(), "registration socket ready for kubelet");
            let service = RegistrationService::new(self.info.clone(), self.state.clone());
            let recheck = self.recheck;
            let mut stop_here = stop.clone();
            let gone = async {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(recheck) => if !socket.still_ours() { return false },
                        _ = stop_here.wait_for(|s| *s) => return true,
                    }
                }
            };
            let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
            let served = Server::builder()
                .add_service(proto::registration_server::RegistrationServer::new(service))
                .serve_with_incoming_shutdown(crate::socket::incoming(listener), async {
                    let _ = stopped_tx.send(gone.await);
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the registration server failed; making it again");
            }
            if stopped_rx.await.unwrap_or(*stop.borrow()) {
                socket.remove();
                return;
            }
            tracing::warn!(socket = %self.socket.display(), "the registration socket disappeared; making it again");
            // Whatever stands at the path now is not ours (a file, someone else's socket):
            // bind_unix refuses it and we keep trying, never deleting it.
            socket.remove();
        }
    }
}
