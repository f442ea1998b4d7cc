//! Mount operations as data, for the `pvdir internal mount <json>` helper: the steps that may
//! block on an NFS server (moving a fresh NFS mount onto its target looks up the mount's root;
//! unmounting flushes what the pod wrote) run in that killable child under a time bound.

use std::path::PathBuf;

use nix::mount::MntFlags;
use serde::{Deserialize, Serialize};

use super::{move_onto, sys, MountApi, MountError};

/// How hard to unmount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unmount {
    /// A plain unmount: flushes dirty data, fails if busy.
    Plain,
    /// `MNT_FORCE`: aborts every in-flight call on the (NFS) superblock.
    Force,
    /// `MNT_DETACH`: detach now, release when no longer busy.
    Detach,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountOp {
    /// Move the mount whose root is `from` onto the directory `to`.
    Move {
        from: PathBuf,
        to: PathBuf,
        api: MountApi,
    },
    /// Unmount the topmost mount at `target`, never following a symlink there.
    Unmount { target: PathBuf, how: Unmount },
}

impl MountOp {
    pub fn name(&self) -> &'static str {
        match self {
            MountOp::Move { .. } => "move mount",
            MountOp::Unmount { .. } => "umount",
        }
    }
}

/// Perform one operation, blocking the calling thread.
pub fn execute(op: &MountOp) -> Result<(), MountError> {
    match op {
        MountOp::Move { from, to, api } => move_onto(from, to, *api),
        MountOp::Unmount { target, how } => {
            let flags = match how {
                Unmount::Plain => MntFlags::empty(),
                Unmount::Force => MntFlags::MNT_FORCE,
                Unmount::Detach => MntFlags::MNT_DETACH,
            };
            sys::unmount(target, flags).map_err(MountError::step("unmount", target))
        }
    }
}
