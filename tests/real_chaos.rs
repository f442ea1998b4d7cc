//! The chaos soak on the local backend (real binary, real bind mounts; README: Tests): many
//! volumes churning through create, publish, stats, unpublish and delete from 4 clients with
//! the sidecars' retries, while the driver is SIGKILLed at random moments and restarted. Then:
//!
//! - every volume acknowledged as created and not deleted exists, with the data written into
//!   it, and every acknowledged delete is gone (directories and records match exactly);
//! - no mount is left that no published volume owns, and none is stacked twice;
//! - the driver's memory and open descriptors after the soak are near a fresh start's;
//! - the teardown then leaves nothing: no volume, record, mount or target.
//!
//! `PVDIR_SOAK_KILLS` sets the kills (25 by default, the short mode `.ci/run` runs), and
//! `PVDIR_SOAK_SEED` replays a run's kill moments and choices.

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::real::driver::Driver;
use common::real::requests::key_of;
use common::real::soak::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_at_random_under_load_loses_and_leaks_nothing() {
    require_root!();
    let mut d = Driver::start().await;
    let seed = seed();
    let settings = settings(&d, seed, &[]);
    let kills = kills_wanted(25);
    let chaos = Chaos {
        kills,
        gap: 20..400,
        settle: Duration::from_secs(3),
    };
    let soaked = soak(&mut d, settings.clone(), chaos, |_| {}).await;
    eprintln!("{}", summary(&soaked));
    let report = &soaked.outcome.report;
    assert_nothing_lost(&soaked);
    assert!(report.data.verified > 0, "no data was ever read back");
    assert!(
        report.operations > u64::from(kills) * 5,
        "too little load between kills: {} operations",
        report.operations
    );

    let left = soaked.outcome.left.clone();
    let own = [d.path("mounts")];
    let keys: BTreeSet<String> = left.iter().map(|v| key_of(&v.id).to_string()).collect();
    let records: BTreeSet<String> = keys.iter().map(|k| format!("{k}.json")).collect();
    assert_eq!(names(&d.root().join("volumes")), keys, "volume directories");
    assert_eq!(names(&d.root().join("meta")), records, "volume records");
    assert_mounts_owned(&d, &left, &own);

    assert_usage_near_fresh(&mut d).await;
    // A fresh start on the soaked state changes nothing.
    assert_mounts_owned(&d, &left, &own);
    assert_eq!(names(&d.root().join("volumes")), keys);

    assert_teardown_clean(&settings, &soaked).await;
    assert!(names(&d.root().join("volumes")).is_empty());
    assert!(names(&d.root().join("meta")).is_empty());
    assert_targets_gone(&d);
    assert_mounts_owned(&d, &[], &own);
}
