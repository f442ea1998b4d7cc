//! VM tier (kernel NFS server and client; see tests/vm_nfs_faults.rs for how it runs): the
//! chaos soak of tests/real_chaos.rs on the NFS backend. The driver serves controller and node
//! over a real export while it is SIGKILLed at random moments, and every fourth restart the
//! NFS server is stopped and started again too. Then:
//!
//! - the export holds exactly the kept volumes' directories, with their data, and exactly
//!   their records in `.pvdir/` (beside the records other tests left before);
//! - every mount is a published target's or the driver's own, none stacked;
//! - the driver's memory and descriptors are near a fresh start's;
//! - the teardown leaves no directory, record, empty parent or mount.
//!
//! `PVDIR_SOAK_KILLS` sets the kills (12 by default: the guest is emulated and slow).

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::real::driver::*;
use common::real::soak::*;
use common::real::vm::*;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use sha2::{Digest, Sha256};

/// The volumes' parent on the export; pvdir makes it and removes it once empty.
const PARENT: &str = "chaos";

/// The record name pvdir keeps for a volume directory (claims.rs: a digest of the path).
fn record_of(subdir: &str) -> String {
    format!(
        "{}.json",
        &hex::encode(Sha256::digest(subdir.as_bytes()))[..32]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn nfs_driver_and_server_killed_at_random_under_load_lose_and_leak_nothing() {
    let mut d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let export = export();
    let records = export.join(".pvdir");
    let records_before = names(&records);
    let seed = seed();
    let sub_dir = format!("{PARENT}/${{pv.metadata.name}}");
    let mut settings = settings(
        &d,
        seed,
        &[
            ("server", "127.0.0.1"),
            ("share", "/"),
            ("subDir", &sub_dir),
            ("onDelete", "delete"),
        ],
    );
    settings.shape.capability = nfs_capability(Mode::MultiNodeMultiWriter, OPTIONS);
    let kills = kills_wanted(12);
    let mut server_restarts = 0;
    // The guest is emulated: a restart and the export's first mount take about a second.
    let chaos = Chaos {
        kills,
        gap: 1000..3000,
        settle: Duration::from_secs(20),
    };
    let soaked = soak(&mut d, settings.clone(), chaos, |n| {
        if n % 4 == 0 {
            nfsd("0");
            std::thread::sleep(Duration::from_millis(200));
            nfsd("8");
            server_restarts += 1;
        }
    })
    .await;
    eprintln!(
        "{}; {server_restarts} NFS server restarts",
        summary(&soaked)
    );
    let report = &soaked.outcome.report;
    // Under emulation few volumes come round to a second publish; the teardown reads back
    // every kept volume's data below.
    assert_nothing_lost(&soaked);

    let left = soaked.outcome.left.clone();
    let own = [d.path("mounts"), d.path("staging")];
    let dirs: BTreeSet<String> = left.iter().map(|v| v.name.clone()).collect();
    let expected_records: BTreeSet<String> = left
        .iter()
        .map(|v| record_of(&format!("{PARENT}/{}", v.name)))
        .collect();
    let new_records = |names: BTreeSet<String>| -> BTreeSet<String> {
        names.difference(&records_before).cloned().collect()
    };
    let parent = export.join(PARENT);
    let mut on_export = names(&parent);
    on_export.remove(pvdir::os::safe_fs::OWNED_MARKER);
    assert_eq!(on_export, dirs, "volume directories on the export");
    assert_eq!(new_records(names(&records)), expected_records, "records");
    assert_mounts_owned(&d, &left, &own);

    assert_usage_near_fresh(&mut d).await;
    assert_mounts_owned(&d, &left, &own);

    let read_back = assert_teardown_clean(&settings, &soaked).await;
    assert!(
        report.data.verified + read_back > 0,
        "no data was ever read back"
    );
    assert!(
        !parent.exists(),
        "the emptied parent {} is left",
        parent.display()
    );
    assert!(new_records(names(&records)).is_empty(), "records left");
    assert_targets_gone(&d);
    assert_mounts_owned(&d, &[], &own);
}
