//! The Registration gRPC service kubelet calls on a registration socket.

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::proto;

/// What kubelet last said about this plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// The socket is there and kubelet has not answered yet (kubelet not running, or not yet
    /// seen the socket). Not a failure: kubelet may start after pvdir.
    Waiting,
    Registered,
    /// kubelet refused the plugin, with its reason (a driver name already taken by another
    /// socket, an endpoint it cannot use, a version it does not speak).
    Refused(String),
}

pub(super) struct RegistrationService {
    info: proto::PluginInfo,
    state: watch::Sender<RegistrationState>,
}

impl RegistrationService {
    pub(super) fn new(info: proto::PluginInfo, state: watch::Sender<RegistrationState>) -> Self {
        Self { info, state }
    }
}

#[tonic::async_trait]
impl proto::registration_server::Registration for RegistrationService {
    async fn get_info(
        &self,
        _: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::PluginInfo>, Status> {
        tracing::debug!(driver = self.info.name, "kubelet asked for plugin info");
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<proto::RegistrationStatus>,
    ) -> Result<Response<proto::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let state = if status.plugin_registered {
            tracing::info!(
                driver = self.info.name,
                endpoint = self.info.endpoint,
                "registered with kubelet"
            );
            RegistrationState::Registered
        } else {
            tracing::error!(
                driver = self.info.name,
                error = status.error,
                "kubelet refused the plugin"
            );
            RegistrationState::Refused(status.error)
        };
        self.state.send_replace(state);
        Ok(Response::new(proto::RegistrationStatusResponse {}))
    }
}
