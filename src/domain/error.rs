//! Domain errors, one enum per area (controller, node). Variants are named after the step that
//! failed and carry the volume ID or path; the CSI adapter maps each to exactly one gRPC code.

use std::path::PathBuf;

use super::params::ParamsError;
use super::volume_id::VolumeIdError;
use crate::os::quota::QuotaError;
use crate::os::OsError;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("invalid parameters: {0}")]
    Parameters(#[from] ParamsError),
    #[error("volume ID {id:?} is malformed: {source}")]
    MalformedId { id: String, source: VolumeIdError },
    #[error("unsupported capability: {reason}")]
    UnsupportedCapability { reason: String },
    #[error("volume name {name:?} cannot be turned into a directory name")]
    UnusableName { name: String },
    #[error("volume {name:?} already exists with different properties: {difference}")]
    NameConflict { name: String, difference: String },
    #[error("group snapshot {id:?} has other members than the {given:?} given")]
    GroupMembersMismatch { id: String, given: Vec<String> },
    #[error("directory {subdir:?} on the share already belongs to volume {owner:?}")]
    DirectoryClaimed { subdir: String, owner: String },
    #[error("no requisite topology is served by node {node:?}")]
    TopologyUnsatisfiable { node: String },
    #[error("volume {id:?} lives on node {node:?}, not on this one")]
    WrongNode { id: String, node: String },
    /// A volume, or a snapshot or volume named as a content source.
    #[error("{id:?} does not exist")]
    NotFound { id: String },
    #[error("volume {id:?} is still mounted at {at}")]
    InUse { id: String, at: PathBuf },
    #[error("page token {token:?} is not valid for this listing")]
    BadPageToken { token: String },
    #[error("an operation on {key:?} is already in progress")]
    InFlight { key: String },
    #[error("the record of {subdir:?} changed while this call worked on it")]
    RecordChanged { subdir: String },
    #[error("the create of {volume:?} took past half its claim's expiry; a retry resumes it")]
    ClaimExpiring { volume: String },
    #[error("{what} is not supported by this backend")]
    Unsupported { what: &'static str },
    #[error("backend {backend} is not served by this endpoint")]
    WrongBackend { backend: &'static str },
    #[error("record {path} is corrupt: {reason}")]
    CorruptRecord { path: PathBuf, reason: String },
    #[error("{step} for volume {volume:?}: {source}")]
    Os {
        step: &'static str,
        volume: String,
        source: OsError,
    },
    #[error("quota: required, but the local root {root} cannot enforce sizes: {remedy}")]
    QuotaUnavailable { root: PathBuf, remedy: &'static str },
    #[error(
        "{requested} more bytes asked for, but only {available} can still be promised on this node"
    )]
    NoRoom { requested: u64, available: u64 },
    #[error("no free project ID in {first}..={last} for volume {volume:?}")]
    NoProjectIds {
        volume: String,
        first: u32,
        last: u32,
    },
    #[error("snapshot {id:?} is still being copied; it cannot be restored yet")]
    SnapshotNotReady { id: String },
    #[error("source {from:?} holds {size} bytes, more than the {requested} asked for")]
    SourceTooLarge {
        from: String,
        size: i64,
        requested: i64,
    },
    #[error("volume {id:?} cannot be its own content source")]
    SourceIsTarget { id: String },
    #[error("volume {volume:?} is still being filled from its source; a retry continues")]
    Populating { volume: String },
    #[error("{step} for volume {volume:?}: {source}")]
    Quota {
        step: &'static str,
        volume: String,
        source: QuotaError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("volume {id:?} does not exist on this node: {reason}")]
    NotFound { id: String, reason: String },
    #[error("volume ID {id:?} is malformed: {source}")]
    MalformedId { id: String, source: VolumeIdError },
    #[error("looking up volume {id:?}: {source}")]
    VolumeLookup {
        id: String,
        source: Box<ControllerError>,
    },
    #[error("volume context: {0}")]
    Context(#[from] ParamsError),
    #[error("expanding volume {id:?}: {source}")]
    Expand {
        id: String,
        source: Box<ControllerError>,
    },
    #[error("{what} is not supported by this backend")]
    Unsupported { what: &'static str },
    #[error("unsupported capability: {reason}")]
    UnsupportedCapability { reason: String },
    #[error("target {target} already has a different or incompatible mount ({existing})")]
    TargetBusy { target: PathBuf, existing: String },
    #[error("volume {id:?} is single-writer and already published at {other}")]
    SingleWriterInUse { id: String, other: PathBuf },
    #[error("volume {id:?} is not published at {path}")]
    NotPublishedAt { id: String, path: PathBuf },
    #[error("volume {id:?} is not staged at {staging}")]
    NotStaged { id: String, staging: PathBuf },
    #[error("target {target} still holds files after unmounting; refusing to delete them")]
    TargetNotEmpty { target: PathBuf },
    #[error("an operation on {key:?} is already in progress")]
    InFlight { key: String },
    #[error("{step} at {target}: {source}")]
    Os {
        step: &'static str,
        target: PathBuf,
        source: OsError,
    },
}

impl ControllerError {
    /// For `map_err`: a quota call failed during `step` of work on `volume`.
    pub fn quota(step: &'static str, volume: &str) -> impl FnOnce(QuotaError) -> ControllerError {
        let volume = volume.to_string();
        move |source| ControllerError::Quota {
            step,
            volume,
            source,
        }
    }

    /// For `map_err`: an OS failure during `step` of work on `volume`.
    pub fn os(step: &'static str, volume: &str) -> impl FnOnce(OsError) -> ControllerError {
        let volume = volume.to_string();
        move |source| ControllerError::Os {
            step,
            volume,
            source,
        }
    }
}
