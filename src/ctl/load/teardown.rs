//! The end of a run: read written data back, then unpublish and delete everything the run
//! made, spread over the clients.
//!
//! Invariant: every volume handed in is either deleted or counted as failed; a name whose
//! create got no clear answer is asked for again (CreateVolume is idempotent by name) so that
//! a volume the driver made without saying so is deleted too.

use std::sync::Arc;

use tonic::Code;

use super::engine::{Common, Settings};
use super::record::{DataCheck, Live};
use super::session::{Facts, Session, Volume};

/// Whether a create failed without saying whether the volume exists: the call may have
/// completed on the driver (a lost answer, a timeout, a crash, one still in progress).
pub fn uncertain(code: Code) -> bool {
    matches!(
        code,
        Code::DeadlineExceeded
            | Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
            | Code::Aborted
    )
}

/// Undo one volume, reading its data back first.
async fn undo(session: &mut Session, mut v: Volume) -> bool {
    if v.written && !v.deleting {
        // Publish again from the start (each step is idempotent): a volume whose step failed
        // may be anywhere along the way. Publish reads the data back.
        v.attached = false;
        v.staged = false;
        if session.publish(&mut v).await.is_err() {
            session.tally.data_unverified();
        }
    }
    let gone = match v.deleting {
        true => session.delete(&v).await,
        false => match session.unpublish(&mut v).await {
            Ok(()) => session.delete(&v).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = &gone {
        tracing::warn!(volume.id = %v.id, step = e.step, code = ?e.code, message = %e.message, "teardown failed");
    }
    gone.is_ok()
}

/// Read written data back through a target (publishing for it if need be), then unpublish and
/// delete every volume, and find out about `unsure` names (creates that got no clear answer).
/// Returns the data check and the number of volumes whose teardown failed.
pub async fn teardown(
    settings: &Settings,
    facts: &Arc<Facts>,
    volumes: Vec<Volume>,
    unsure: Vec<String>,
) -> (DataCheck, u64) {
    let clients = settings.clients.max(1);
    let mut shares: Vec<(Vec<Volume>, Vec<String>)> =
        (0..clients).map(|_| Default::default()).collect();
    for (i, v) in volumes.into_iter().enumerate() {
        shares[i % clients].0.push(v);
    }
    for (i, name) in unsure.into_iter().enumerate() {
        shares[i % clients].1.push(name);
    }
    let common = Common {
        settings: settings.clone(),
        facts: Arc::clone(facts),
        shape: Arc::new(settings.shape.clone()),
        live: Arc::new(Live::default()),
    };
    let mut tasks = Vec::new();
    let mut failed = 0u64;
    for (share, names) in shares {
        let mut session = match common.session().await {
            Ok(session) => session,
            Err(e) => {
                // Counted, not lost: the caller reports them as left behind.
                tracing::warn!(error = %e, "teardown client could not connect");
                failed += (share.len() + names.len()) as u64;
                continue;
            }
        };
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            let mut share = share;
            for name in names {
                match session.create(name).await {
                    Ok(v) => share.push(v),
                    Err(e) if uncertain(e.code) => failed += 1,
                    // Refused for good: no such volume was made.
                    Err(_) => {}
                }
            }
            for v in share {
                if !undo(&mut session, v).await {
                    failed += 1;
                }
            }
            (session.tally.data, failed)
        }));
    }
    let mut data = DataCheck::default();
    for task in tasks {
        let (d, f) = task.await.expect("a teardown client does not panic");
        data.add(d);
        failed += f;
    }
    (data, failed)
}
