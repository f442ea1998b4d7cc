//! `pvdir load`: a load generator for any CSI driver's endpoint, not only pvdir's. Clients
//! run a weighted mix of create, publish, stats, unpublish and delete at a set concurrency,
//! optionally over prefilled volumes and with the sidecars' retries; the run ends with a table
//! (or JSON) of latencies and error codes per RPC, throughput and the driver's memory.
//!
//! - plan.rs: which operation a client takes next (pure);
//! - session.rs: the CSI calls of each operation, bounded, counted and retried;
//! - engine.rs: the run's phases (prefill, clients) with discover.rs (what the driver offers),
//!   progress.rs (the live line) and teardown.rs (undoing what the run made);
//! - record.rs: counts, the report and its table; usage.rs: the driver's `/proc` figures;
//! - args.rs: the flags.
//!
//! The chaos soak (tests/real_chaos.rs) drives the same engine while killing the driver.

pub mod args;
mod discover;
pub mod engine;
pub mod plan;
mod progress;
pub mod record;
pub mod session;
mod teardown;
pub mod usage;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use args::LoadArgs;

use super::CtlError;

/// Run the load and print its report; a nonzero exit if any step was abandoned, any data lost
/// or any teardown failed.
pub async fn run(args: LoadArgs) -> Result<(), CtlError> {
    let settings = args.settings()?;
    let target_dir = settings.shape.target_dir.clone();
    let keep = settings.keep;
    let outcome = engine::run(settings, Arc::new(AtomicBool::new(false))).await?;
    let report = outcome.report;
    let table = report.table();
    match args.json.as_deref() {
        Some(path) if path.as_os_str() == "-" => {
            eprint!("{table}");
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        }
        Some(path) => {
            print!("{table}");
            let json = serde_json::to_string_pretty(&report).unwrap_or_default();
            std::fs::write(path, json + "\n").map_err(|source| CtlError::LoadWrite {
                path: path.to_path_buf(),
                source,
            })?;
        }
        None => print!("{table}"),
    }
    if !keep {
        // Only if empty: what a driver left mounted or behind stays for the user to see.
        let _ = std::fs::remove_dir(&target_dir);
    }
    if report.abandoned > 0 || report.data.lost > 0 || report.teardown_failed > 0 {
        return Err(CtlError::LoadFailures {
            abandoned: report.abandoned,
            lost: report.data.lost,
            teardown_failed: report.teardown_failed,
        });
    }
    Ok(())
}

/// `pvdir load` runs its clients on a runtime of all cores: one thread would measure itself.
pub fn main(args: LoadArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime);
    super::report(runtime.and_then(|rt| rt.block_on(run(args))))
}
