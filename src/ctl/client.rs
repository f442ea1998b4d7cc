//! One connection to a driver endpoint (unix socket or TCP) and calls on it, each bounded in
//! time: a dead, wedged or absent driver gives an error, never a hang.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Uri};
use tonic::{Response, Status};

use super::values::code_name;
use super::CtlError;
use crate::csi::proto::controller_client::ControllerClient;
use crate::csi::proto::identity_client::IdentityClient;
use crate::csi::proto::node_client::NodeClient;
use crate::server::Endpoint;

pub struct Client {
    endpoint: Endpoint,
    channel: Channel,
    timeout: Duration,
}

/// An error with its causes, which is where tonic keeps the useful part ("No such file …").
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Why a dial failed, and whether it was only that nothing listens there yet.
struct DialError {
    reason: String,
    /// No socket file, or nobody accepting on it (ENOENT, ECONNREFUSED): a driver that is
    /// still starting, which `--wait` waits for.
    not_listening: bool,
}

impl DialError {
    fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut not_listening = false;
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                not_listening |= matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                );
            }
            next = e.source();
        }
        Self {
            reason: chain(error),
            not_listening,
        }
    }
}

async fn dial(endpoint: &Endpoint, timeout: Duration) -> Result<Channel, DialError> {
    let fail = |e: tonic::transport::Error| DialError::of(&e);
    match endpoint {
        Endpoint::Unix(path) => {
            let path = path.clone();
            // The URI is required by tonic but unused: the connector dials the socket.
            tonic::transport::Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(fail)
        }
        Endpoint::Tcp(addr) => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(fail)?
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(fail),
    }
}

/// Pause between attempts while waiting for a driver to listen.
const RETRY: Duration = Duration::from_millis(100);

impl Client {
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Self, CtlError> {
        let channel = tokio::time::timeout(timeout, dial(endpoint, timeout))
            .await
            .map_err(|_| CtlError::Timeout {
                step: "connect",
                endpoint: endpoint.clone(),
                after: timeout,
            })?
            .map_err(|e| CtlError::Connect {
                endpoint: endpoint.clone(),
                reason: e.reason,
            })?;
        Ok(Self {
            endpoint: endpoint.clone(),
            channel,
            timeout,
        })
    }

    /// Like [`Client::connect`], but while nothing listens at the endpoint yet (no socket
    /// file, or connection refused: a driver still starting) try again until `timeout` has
    /// passed. Any other failure ends the wait at once.
    pub async fn connect_waiting(endpoint: &Endpoint, timeout: Duration) -> Result<Self, CtlError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let dialed = tokio::time::timeout(left, dial(endpoint, left))
                .await
                .map_err(|_| CtlError::Timeout {
                    step: "connect",
                    endpoint: endpoint.clone(),
                    after: timeout,
                })?;
            match dialed {
                Ok(channel) => {
                    return Ok(Self {
                        endpoint: endpoint.clone(),
                        channel,
                        timeout,
                    })
                }
                Err(e) if e.not_listening && tokio::time::Instant::now() + RETRY < deadline => {
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => {
                    return Err(CtlError::Connect {
                        endpoint: endpoint.clone(),
                        reason: e.reason,
                    })
                }
            }
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The connection itself, for callers that make their own clients on it (`pvdir load`).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }

    /// The call's raw outcome, bounded by the timeout; only the timeout is an error here.
    async fn bounded<T>(
        &self,
        rpc: &'static str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Result<T, Status>, CtlError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result.map(Response::into_inner)),
            Err(_) => Err(CtlError::Timeout {
                step: rpc,
                endpoint: self.endpoint.clone(),
                after: self.timeout,
            }),
        }
    }

    /// The error for a status the driver answered `rpc` with.
    pub fn refused(&self, rpc: &'static str, status: &Status) -> CtlError {
        CtlError::Call {
            rpc,
            endpoint: self.endpoint.clone(),
            code: code_name(status.code()),
            message: status.message().to_string(),
        }
    }

    /// Make one call; an error status is a [`CtlError::Call`].
    pub async fn call<T>(
        &self,
        rpc: &'static str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, CtlError> {
        self.bounded(rpc, call)
            .await?
            .map_err(|status| self.refused(rpc, &status))
    }

    /// Like [`Client::call`], but UNIMPLEMENTED (a service or RPC the plugin does not serve)
    /// is `None`.
    pub async fn call_optional<T>(
        &self,
        rpc: &'static str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Option<T>, CtlError> {
        match self.bounded(rpc, call).await? {
            Ok(reply) => Ok(Some(reply)),
            Err(status) if status.code() == tonic::Code::Unimplemented => Ok(None),
            Err(status) => Err(self.refused(rpc, &status)),
        }
    }
}
