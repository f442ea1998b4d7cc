//! pvdir's own helper processes. `pvdir internal fs` runs one [`FsOp`] and `pvdir internal
//! mount` one [`MountOp`], given as JSON on stdin (or as the argument, for a person debugging);
//! each prints its result as JSON. Work that can
//! block on an NFS server runs there, in a child killed (with its process group) at its bound.
//! Both sides of that boundary live here: the parent's call and the child's entry points.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::process::Command;

use crate::metrics::Metrics;
use crate::os::child;
use crate::os::fsop::{self, FsOp, FsReply};
use crate::os::mount::op::{self, MountOp};
use crate::os::mount::MountError;
use crate::os::safe_fs::SafeFsError;
use crate::os::OsError;

/// `pvdir internal fs`, the operation on stdin.
pub const INTERNAL_FS_ARGS: [&str; 2] = ["internal", "fs"];
/// `pvdir internal mount`, the operation on stdin.
pub const INTERNAL_MOUNT_ARGS: [&str; 2] = ["internal", "mount"];

/// Run `op` in a helper (`helper` with `args`) under `limit` and decode its reply.
pub async fn call<Op: Serialize, R: DeserializeOwned>(
    helper: &Path,
    args: [&str; 2],
    op: &Op,
    what: &str,
    limit: Duration,
    metrics: &Metrics,
) -> Result<R, OsError> {
    let malformed = |message: String| OsError::Helper {
        what: what.into(),
        message,
    };
    let json = serde_json::to_vec(op).map_err(|e| malformed(e.to_string()))?;
    let mut cmd = Command::new(helper);
    cmd.args(args);
    // On stdin: an argument may hold at most 128 KiB, and a read of every record of a large
    // export names them all.
    let done = child::run_with_input(cmd, Some(json), what, limit, metrics).await?;
    serde_json::from_slice(&done.stdout)
        .map_err(|e| malformed(format!("{e}; stderr: {}", done.stderr_text())))
}

fn reply<T: Serialize>(result: &T) -> i32 {
    match serde_json::to_string(result) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(_) => 1,
    }
}

/// Entry point of `pvdir internal fs <json>`.
pub fn run_internal_fs(json: &str) -> i32 {
    let result: Result<FsReply, SafeFsError> = match serde_json::from_str::<FsOp>(json) {
        Ok(op) => fsop::execute(&op),
        Err(e) => Err(SafeFsError::InvalidName {
            name: format!("undecodable operation: {e}"),
        }),
    };
    reply(&result)
}

/// Entry point of `pvdir internal mount <json>`.
pub fn run_internal_mount(json: &str) -> i32 {
    let result: Result<(), MountError> = match serde_json::from_str::<MountOp>(json) {
        Ok(op) => op::execute(&op),
        Err(_) => Err(MountError::Step {
            step: "decode operation".into(),
            path: Default::default(),
            errno: libc::EINVAL,
        }),
    };
    reply(&result)
}
