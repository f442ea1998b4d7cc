//! `pvdir snapshot|delete-snapshot`: CreateSnapshot (repeated until the snapshot is ready, as
//! the snapshotter does) and DeleteSnapshot.

use std::time::{Duration, Instant};

use super::args::{DeleteSnapshotArgs, SnapshotArgs};
use super::values::format_size;
use super::volume::connect;
use super::CtlError;
use crate::csi::proto as csi;

/// Prints the snapshot; its ID alone on the last line, for scripts (`| tail -n1`). A driver
/// that answers `ready_to_use: false` (a copy still going on) is asked again, within
/// `--timeout-secs`; past that the snapshot is printed as not ready and the exit status is 1.
pub async fn create(args: SnapshotArgs) -> Result<(), CtlError> {
    let request = csi::CreateSnapshotRequest {
        name: args.name.clone(),
        source_volume_id: args.source.clone(),
        ..Default::default()
    };
    let c = connect(&args.driver).await?;
    let rpc = "CreateSnapshot";
    let deadline = Instant::now() + Duration::from_secs(args.driver.timeout_secs);
    let snapshot = loop {
        let reply = c
            .call(rpc, c.controller().create_snapshot(request.clone()))
            .await?;
        let snapshot = reply.snapshot.ok_or_else(|| CtlError::EmptyReply {
            rpc,
            endpoint: c.endpoint().clone(),
        })?;
        if snapshot.ready_to_use || Instant::now() >= deadline {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "snapshot {} of {}: size {}, {}",
        args.name,
        snapshot.source_volume_id,
        format_size(snapshot.size_bytes),
        match snapshot.ready_to_use {
            true => "ready",
            false => "still being copied",
        }
    );
    println!("{}", snapshot.snapshot_id);
    match snapshot.ready_to_use {
        true => Ok(()),
        false => Err(CtlError::NotReady {
            endpoint: c.endpoint().clone(),
            driver: format!("snapshot {}", args.name),
        }),
    }
}

pub async fn delete(args: DeleteSnapshotArgs) -> Result<(), CtlError> {
    let request = csi::DeleteSnapshotRequest {
        snapshot_id: args.snapshot_id.clone(),
        ..Default::default()
    };
    let c = connect(&args.driver).await?;
    c.call("DeleteSnapshot", c.controller().delete_snapshot(request))
        .await?;
    println!("deleted snapshot {}", args.snapshot_id);
    Ok(())
}
