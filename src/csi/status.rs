//! The one mapping from domain errors to gRPC status codes. Every match is exhaustive with no
//! wildcard arm, so a new error variant cannot compile until someone chooses its code.
//!
//! Codes are chosen for how the sidecars and kubelet react: ABORTED, UNAVAILABLE,
//! DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED mean "retry, may still be in progress";
//! INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS and FAILED_PRECONDITION are final answers.

use tonic::{Code, Status};

use super::request::Invalid;
use crate::domain::error::{ControllerError, NodeError};
use crate::domain::health::HealthError;
use crate::os::journal::JournalError;
use crate::os::mount::MountError;
use crate::os::safe_fs::SafeFsError;
use crate::os::OsError;

pub fn fs_code(e: &SafeFsError) -> Code {
    match e {
        // A volume directory that has been tampered with (a link or a mount planted in it) is
        // not something a retry fixes: an operator must look.
        SafeFsError::SymlinkInPath { .. }
        | SafeFsError::BadRecord { .. }
        | SafeFsError::CrossesMount { .. }
        | SafeFsError::NotADirectory { .. }
        | SafeFsError::NotEmpty { .. } => Code::FailedPrecondition,
        // A pod built a tree deeper than a copy follows: final until the tree changes.
        SafeFsError::TooDeep { .. } => Code::FailedPrecondition,
        // The CO's part of NodePublish (a target's parent exists) is not done: nothing pvdir
        // or a retry can fix until it is.
        SafeFsError::NoParent { .. } => Code::FailedPrecondition,
        SafeFsError::InvalidName { .. } => Code::Internal,
        // A mount went away while the call looked at it (a concurrent unmount): look again.
        SafeFsError::NotNfs { .. } => Code::Aborted,
        SafeFsError::OpenBase { errno, .. } | SafeFsError::Io { errno, .. } => match *errno {
            // root_squash exports and read-only exports: final until the export is fixed.
            libc::EACCES | libc::EPERM | libc::EROFS => Code::FailedPrecondition,
            libc::ENOSPC | libc::EDQUOT => Code::ResourceExhausted,
            libc::ESTALE | libc::ETIMEDOUT | libc::EIO => Code::Unavailable,
            // The kernel's own codes, leaked by the NFS client (ERESTARTSYS when a call was
            // aborted, EJUKEBOX while the server is busy): the server's trouble, retried.
            512.. => Code::Unavailable,
            _ => Code::Internal,
        },
    }
}

pub fn mount_code(e: &MountError) -> Code {
    match e {
        // A symlink or a file planted where a directory was made: someone must look.
        MountError::Target { errno, .. } if matches!(*errno, libc::ENOTDIR | libc::ELOOP) => {
            Code::FailedPrecondition
        }
        MountError::Target { .. } | MountError::Step { .. } => Code::Internal,
    }
}

pub fn journal_code(e: &JournalError) -> Code {
    match e {
        // Still starting: the replay runs before the socket is served, so only a race sees it.
        JournalError::NotReplayed | JournalError::Locked { .. } => Code::Unavailable,
        // The work was applied but cannot be made durable; a retry repeats it idempotently
        // and will succeed once the driver restarts and replays its journal.
        JournalError::Open { .. }
        | JournalError::Write { .. }
        | JournalError::Checkpoint { .. }
        | JournalError::Broken { .. }
        | JournalError::TooLarge { .. } => Code::Internal,
    }
}

pub fn os_code(e: &OsError) -> Code {
    match e {
        // A server that does not answer in time: the sidecar retries later.
        OsError::TimedOut { .. } => Code::Unavailable,
        OsError::Fs(fs) => fs_code(fs),
        OsError::MountCall(m) => mount_code(m),
        OsError::Journal(j) => journal_code(j),
        OsError::ReadMountTable { .. }
        | OsError::Mount { .. }
        | OsError::Spawn { .. }
        | OsError::Helper { .. } => Code::Internal,
    }
}

pub fn controller_code(e: &ControllerError) -> Code {
    match e {
        ControllerError::Parameters(_)
        | ControllerError::MalformedId { .. }
        | ControllerError::UnsupportedCapability { .. }
        | ControllerError::UnusableName { .. }
        | ControllerError::SourceIsTarget { .. } => Code::InvalidArgument,
        ControllerError::NameConflict { .. } | ControllerError::DirectoryClaimed { .. } => {
            Code::AlreadyExists
        }
        // The spec: the SP SHOULD report member IDs that do not match the group it knows.
        ControllerError::GroupMembersMismatch { .. } => Code::InvalidArgument,
        // The spec's answer when no requisite topology can be satisfied.
        ControllerError::TopologyUnsatisfiable { .. } => Code::ResourceExhausted,
        ControllerError::NotFound { .. } => Code::NotFound,
        ControllerError::WrongNode { .. }
        | ControllerError::InUse { .. }
        | ControllerError::WrongBackend { .. } => Code::FailedPrecondition,
        // Someone else's step landed between two of this call's: the retry sees the new state.
        ControllerError::BadPageToken { .. }
        | ControllerError::InFlight { .. }
        | ControllerError::RecordChanged { .. }
        | ControllerError::ClaimExpiring { .. } => Code::Aborted,
        // Not JSON pvdir wrote (planted through a static PV of the share root, or damaged):
        // no retry mends it, someone must look.
        ControllerError::CorruptRecord { .. } => Code::FailedPrecondition,
        ControllerError::Unsupported { .. } => Code::Unimplemented,
        ControllerError::Os { source, .. } => os_code(source),
        // The node's filesystem must be prepared (README: "Sizes"); no retry mends it.
        ControllerError::QuotaUnavailable { .. } => Code::FailedPrecondition,
        // The spec's code for a volume that cannot be provisioned here: the provisioner retries
        // and, with late binding, the scheduler picks another node. Space freed by a delete
        // makes a later retry succeed.
        ControllerError::NoRoom { .. } | ControllerError::NoProjectIds { .. } => {
            Code::ResourceExhausted
        }
        ControllerError::Quota { .. } => Code::Internal,
        // The spec's code for a restore or clone smaller than its source.
        ControllerError::SourceTooLarge { .. } => Code::OutOfRange,
        // In progress: the sidecars retry, and the retry continues the copy.
        ControllerError::SnapshotNotReady { .. } | ControllerError::Populating { .. } => {
            Code::Aborted
        }
    }
}

pub fn node_code(e: &NodeError) -> Code {
    match e {
        NodeError::NotFound { .. } | NodeError::NotPublishedAt { .. } => Code::NotFound,
        NodeError::Context(_)
        | NodeError::UnsupportedCapability { .. }
        | NodeError::MalformedId { .. } => Code::InvalidArgument,
        NodeError::VolumeLookup { source, .. } | NodeError::Expand { source, .. } => {
            controller_code(source)
        }
        NodeError::Unsupported { .. } => Code::Unimplemented,
        NodeError::TargetBusy { .. } => Code::AlreadyExists,
        NodeError::SingleWriterInUse { .. } | NodeError::TargetNotEmpty { .. } => {
            Code::FailedPrecondition
        }
        // The spec's answer for a publish whose volume the CO has not staged there.
        NodeError::NotStaged { .. } => Code::FailedPrecondition,
        NodeError::InFlight { .. } => Code::Aborted,
        NodeError::Os { source, .. } => os_code(source),
    }
}

pub fn health_code(e: &HealthError) -> Code {
    match e {
        // The spec's answer for "the plugin is unhealthy": the CO may restart it.
        HealthError::Check { .. } | HealthError::TimedOut { .. } => Code::FailedPrecondition,
    }
}

/// Longest status message sent. The message travels in an HTTP/2 trailer, and paths inside a
/// pod's volume (names of 255 bytes, nested deep) could make it too big for the peer's header
/// limit: the client then sees a broken connection (GOAWAY) instead of the error. The log line
/// at the boundary keeps the whole message.
pub const MAX_MESSAGE: usize = 1024;

/// `message` cut to [`MAX_MESSAGE`] bytes at a character boundary, marked as cut.
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        Status::invalid_argument(bounded(e.0))
    }
}

impl From<ControllerError> for Status {
    fn from(e: ControllerError) -> Self {
        Status::new(controller_code(&e), bounded(e.to_string()))
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        Status::new(node_code(&e), bounded(e.to_string()))
    }
}

impl From<HealthError> for Status {
    fn from(e: HealthError) -> Self {
        Status::new(health_code(&e), bounded(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn messages_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = format!("{}é{}", "x".repeat(MAX_MESSAGE - 4), "y".repeat(5000));
        let cut = bounded(long);
        assert!(
            cut.len() <= MAX_MESSAGE && cut.ends_with("..."),
            "{}",
            cut.len()
        );
        let deep = ControllerError::CorruptRecord {
            path: "/d".repeat(100_000).into(),
            reason: String::new(),
        };
        assert!(Status::from(deep).message().len() <= MAX_MESSAGE);
    }

    #[test]
    fn retryable_conditions_map_to_retry_codes() {
        let timed_out = OsError::TimedOut {
            what: "mount.nfs".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(os_code(&timed_out), Code::Unavailable);
        assert_eq!(
            controller_code(&ControllerError::InFlight { key: "v".into() }),
            Code::Aborted
        );
        assert_eq!(
            node_code(&NodeError::InFlight { key: "v".into() }),
            Code::Aborted
        );
        assert_eq!(
            controller_code(&ControllerError::BadPageToken { token: "x".into() }),
            Code::Aborted
        );
    }

    #[test]
    fn a_target_without_its_parent_is_the_callers_precondition() {
        let missing = SafeFsError::NoParent {
            path: "/pods/x/mount".into(),
        };
        assert_eq!(fs_code(&missing), Code::FailedPrecondition);
    }

    #[test]
    fn final_conditions_map_to_final_codes() {
        let squash = OsError::Fs(SafeFsError::Io {
            step: "mkdir".into(),
            path: "/e".into(),
            errno: libc::EACCES,
        });
        assert_eq!(os_code(&squash), Code::FailedPrecondition);
        assert_eq!(
            controller_code(&ControllerError::NameConflict {
                name: "a".into(),
                difference: String::new()
            }),
            Code::AlreadyExists
        );
        assert_eq!(
            controller_code(&ControllerError::CorruptRecord {
                path: "/e/.pvdir/x.json".into(),
                reason: "expected value".into()
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            node_code(&NodeError::SingleWriterInUse {
                id: "a".into(),
                other: "/t".into()
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            node_code(&NodeError::NotPublishedAt {
                id: "a".into(),
                path: "/p".into()
            }),
            Code::NotFound
        );
        assert_eq!(
            Status::from(Invalid("x".into())).code(),
            Code::InvalidArgument
        );
    }
}
