//! The operator CLI (`pvdir probe|list|show|create|publish|unpublish|delete|expand|snapshot|
//! delete-snapshot|load`): a CSI *client*
//! adapter, the counterpart of [`crate::csi`]. It may see tonic and the generated proto; it
//! reuses the domain's volume ID parser and the OS layer's mountinfo parser, and never changes
//! anything except through the driver's own RPCs.
//!
//! This file owns the error type, the exit codes and the runner that turns a handler's result
//! into a process exit status. Handlers live one per file: probe.rs, list.rs, show.rs, and
//! volume.rs (create, publish, unpublish, delete, expand), snapshot.rs (snapshot,
//! delete-snapshot), and load/ (the load generator).

pub mod args;
pub mod client;
pub mod list;
pub mod load;
pub mod probe;
pub mod show;
pub mod snapshot;
pub mod values;
pub mod volume;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::domain::volume_id::VolumeIdError;
use crate::server::Endpoint;

/// Exit status when the driver is reachable but not ready, or local work (decoding an ID,
/// reading the mount table) failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status of a malformed command line (clap's own code, kept for ours too).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the driver answered the call with an error status.
pub const EXIT_REFUSED: u8 = 3;
/// Exit status when the driver could not be reached or did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 4;

/// What went wrong, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("connecting to {endpoint}: {reason}")]
    Connect { endpoint: Endpoint, reason: String },
    #[error("{step} on {endpoint}: no answer within {after:?}")]
    Timeout {
        step: &'static str,
        endpoint: Endpoint,
        after: Duration,
    },
    #[error("{rpc} on {endpoint} failed: {code}: {message}")]
    Call {
        rpc: &'static str,
        endpoint: Endpoint,
        code: &'static str,
        message: String,
    },
    #[error("{endpoint} ({driver}) is reachable but not ready")]
    NotReady { endpoint: Endpoint, driver: String },
    #[error("{failed} of {total} endpoints failed the probe")]
    SomeProbesFailed {
        failed: usize,
        total: usize,
        exit_code: u8,
    },
    #[error(
        "ListVolumes on {endpoint}: UNIMPLEMENTED: listing is not supported by this backend \
         (NFS volumes are spread over every export and cannot be enumerated) or this endpoint \
         serves no controller"
    )]
    ListUnsupported { endpoint: Endpoint },
    #[error("ListVolumes on {endpoint}: the driver returned the page token {token:?} twice")]
    ListLoop { endpoint: Endpoint, token: String },
    #[error("ListVolumes on {endpoint}: more than {pages} pages; giving up")]
    ListTooLong { endpoint: Endpoint, pages: usize },
    #[error("{rpc} on {endpoint}: the reply carries no volume")]
    EmptyReply {
        rpc: &'static str,
        endpoint: Endpoint,
    },
    #[error("{flag} {key}: given more than once")]
    DuplicateKey { flag: &'static str, key: String },
    #[error("decoding volume ID {id:?}: {source}")]
    DecodeId { id: String, source: VolumeIdError },
    #[error("reading the mount table {path}: {source}")]
    ReadMountinfo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{endpoint} does not offer {what}, which the load needs")]
    LoadUnsupported {
        endpoint: Endpoint,
        what: &'static str,
    },
    #[error("making the target directory {path}: {source}")]
    LoadTargetDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the report to {path}: {source}")]
    LoadWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the load finished with {abandoned} abandoned steps, {lost} volumes whose data was \
         lost and {teardown_failed} volumes not torn down"
    )]
    LoadFailures {
        abandoned: u64,
        lost: u64,
        teardown_failed: u64,
    },
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } => EXIT_UNREACHABLE,
            Self::Call { .. }
            | Self::ListUnsupported { .. }
            | Self::ListLoop { .. }
            | Self::ListTooLong { .. }
            | Self::EmptyReply { .. }
            | Self::LoadUnsupported { .. } => EXIT_REFUSED,
            Self::DuplicateKey { .. } => EXIT_USAGE,
            Self::SomeProbesFailed { exit_code, .. } => *exit_code,
            Self::NotReady { .. }
            | Self::DecodeId { .. }
            | Self::ReadMountinfo { .. }
            | Self::Runtime(_)
            | Self::LoadTargetDir { .. }
            | Self::LoadWrite { .. }
            | Self::LoadFailures { .. } => EXIT_FAILED,
        }
    }
}

/// Let a closed pipe end the process quietly, as it does `ls` or `grep` (`pvdir list | head`).
/// Rust ignores SIGPIPE, which would make every later `println!` panic instead.
pub fn die_on_broken_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: restores the default disposition before any thread is started; no handler runs.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}

/// Print a failure to stderr and turn it into the exit status.
pub fn report(result: Result<(), CtlError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvdir: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Run an async handler to completion on a small runtime of its own.
pub fn block_on(work: impl Future<Output = Result<(), CtlError>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime);
    report(runtime.and_then(|rt| rt.block_on(work)))
}
