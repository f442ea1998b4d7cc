//! The CSI adapter, the top layer: with the kubelet adapter beside it, the only code that sees
//! tonic (the wiring in server.rs and socket/ aside). Handlers parse the request
//! into domain values (request.rs), call the domain, and build the reply; errors are mapped to
//! status codes in status.rs and logged once, here, with structured fields.

pub mod controller;
pub mod group;
pub mod identity;
pub mod node;
pub mod proto;
pub mod request;
pub mod status;

use std::fmt::Display;
use std::future::Future;

use tonic::Status;

/// Run a domain call to completion even if its caller goes away. tonic drops a handler's future
/// when the client's deadline (`grpc-timeout`) passes; the domain work, and the per-volume guard
/// it holds, must not be cut short there, or the sidecar's retry would run alongside it.
async fn detached<T, E>(
    work: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<Result<T, E>, Status>
where
    T: Send + 'static,
    E: Send + 'static,
{
    tokio::spawn(work)
        .await
        .map_err(|e| Status::internal(format!("the call's task failed: {e}")))
}

/// Log a failed call once, at the boundary, and turn it into its status.
fn fail<E: Display + Into<Status>>(
    rpc: &'static str,
    volume_id: &str,
    target: Option<&std::path::Path>,
    e: E,
) -> Status {
    let message = e.to_string();
    let status: Status = e.into();
    let target = target.map(|t| t.display().to_string()).unwrap_or_default();
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::NotFound
        | tonic::Code::AlreadyExists
        | tonic::Code::Aborted => {
            tracing::info!(rpc, volume.id = volume_id, target.path = target, code = ?status.code(), error = %message, "call refused")
        }
        _ => {
            tracing::warn!(rpc, volume.id = volume_id, target.path = target, code = ?status.code(), error = %message, "call failed")
        }
    }
    status
}
