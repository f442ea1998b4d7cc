//! Wiring and serving: builds the services for each configured backend
//! ([`assemble`](assemble())) and serves each on its endpoint until SIGTERM/SIGINT, then lets
//! in-flight calls finish and removes the sockets ([`serve`](serve())). Endpoints are parsed
//! into [`Endpoint`].

mod assemble;
mod endpoint;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::kubelet::RegistrarError;

pub use assemble::{assemble, prepare_dir, Plugin};
pub use endpoint::Endpoint;
pub use serve::serve;

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
