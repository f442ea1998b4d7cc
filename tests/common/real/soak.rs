//! The chaos soak's harness: `pvdir load`'s engine drives the real driver with the sidecars'
//! retries while the driver is SIGKILLed at random moments and restarted; then the world is
//! compared with what the load was told. Used by tests/real_chaos.rs (local backend, real bind
//! mounts) and tests/vm_nfs_chaos.rs (kernel NFS in the VM).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pvdir::ctl::load::engine::{self, Outcome, Progress, Settings, Until};
use pvdir::ctl::load::plan::{Mix, Rng};
use pvdir::ctl::load::record::Live;
use pvdir::ctl::load::session::{Shape, Volume};
use pvdir::ctl::load::usage::Sample;
use pvdir::server::Endpoint;

use super::driver::Driver;
use super::mounts::{mounts_at, mounts_below};
use super::requests::{capability, MIB};

/// How many kills: `PVDIR_SOAK_KILLS` (the long mode), else `default`.
pub fn kills_wanted(default: u32) -> u32 {
    std::env::var("PVDIR_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of the kill moments and the load's choices: `PVDIR_SOAK_SEED` to replay a run,
/// else the clock (printed, so a failure can be replayed).
pub fn seed() -> u64 {
    std::env::var("PVDIR_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Where the load makes its targets: `<base>/pods/<volume name>/mount`, as kubelet's pod dirs.
pub fn target_dir(d: &Driver) -> PathBuf {
    d.path("pods")
}

pub fn target_of(d: &Driver, v: &Volume) -> PathBuf {
    target_dir(d).join(&v.name).join("mount")
}

/// Where the load stages a volume, beside its target (see `ctl::load::session`).
pub fn stage_of(d: &Driver, v: &Volume) -> PathBuf {
    target_dir(d).join(&v.name).join("stage")
}

/// The load the soak runs: every operation, data written and read back, retried as the
/// sidecars do for up to a minute, left in place at the end for the checks.
pub fn settings(d: &Driver, seed: u64, parameters: &[(&str, &str)]) -> Settings {
    use pvdir::csi::proto::volume_capability::access_mode::Mode;
    Settings {
        endpoint: Endpoint::Unix(d.socket()),
        clients: 4,
        mix: Mix::DEFAULT.parse().unwrap(),
        until: Until::default(),
        prefill: 0,
        per_client: 4,
        shape: Shape {
            capacity_bytes: Some(MIB),
            parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capability: capability(Mode::SingleNodeWriter),
            write_bytes: 4096,
            target_dir: target_dir(d),
        },
        call_timeout: Duration::from_secs(20),
        retry: Some(Duration::from_secs(90)),
        pid: None,
        seed,
        name_prefix: "soak".into(),
        progress: Progress::Off,
        keep: true,
    }
}

pub struct Soaked {
    pub outcome: Outcome,
    pub kills: u32,
}

/// When to kill: `kills` times, each a random `gap` (in ms) after the driver is back; then
/// `settle` without kills before the load stops.
pub struct Chaos {
    pub kills: u32,
    pub gap: std::ops::Range<u64>,
    pub settle: Duration,
}

/// Run the load, SIGKILL and restart the driver at random moments as `chaos` says, and call
/// `after_kill(n)` after the n-th restart (for more chaos, such as restarting an NFS server).
pub async fn soak(
    d: &mut Driver,
    settings: Settings,
    chaos: Chaos,
    mut after_kill: impl FnMut(u32),
) -> Soaked {
    let Chaos { kills, gap, settle } = chaos;
    let mut rng = Rng::new(settings.seed ^ 0x5eed);
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live::default());
    let load = tokio::spawn(engine::run_counted(
        settings,
        Arc::clone(&stop),
        Arc::clone(&live),
    ));
    // The engine asks the driver what it offers before its clients start, without retries:
    // kill only once operations are done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while live.operations.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the load made no operation in a minute"
        );
        assert!(
            !load.is_finished(),
            "the load ended before its first operation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 1..=kills {
        let pause = gap.start + rng.below(gap.end.saturating_sub(gap.start).max(1));
        tokio::time::sleep(Duration::from_millis(pause)).await;
        assert!(
            !load.is_finished(),
            "the load ended early: {:?}",
            load.await.map(|r| r.map(|o| o.report))
        );
        d.kill();
        d.spawn().await;
        after_kill(n);
    }
    tokio::time::sleep(settle).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcome = load
        .await
        .expect("the load does not panic")
        .expect("the load runs");
    Soaked { outcome, kills }
}

/// What the load saw: nothing given up despite the retries, every create answered, no data
/// changed at any read-back, and some data written.
pub fn assert_nothing_lost(soaked: &Soaked) {
    let report = &soaked.outcome.report;
    assert_eq!(report.abandoned, 0, "steps given up despite retries");
    assert!(
        soaked.outcome.unsure.is_empty(),
        "creates without an answer"
    );
    assert_eq!(report.data.lost, 0, "data lost");
    assert!(report.data.written > 0, "no data was ever written");
}

/// Tear down what the soak kept: every kept volume's data must read back intact and every
/// volume go. Returns the read-backs made, for the caller's own count.
pub async fn assert_teardown_clean(settings: &Settings, soaked: &Soaked) -> u64 {
    let left = soaked.outcome.left.clone();
    let written = left.iter().filter(|v| v.written).count() as u64;
    let (data, failed) = engine::teardown(settings, &soaked.outcome.facts, left, Vec::new()).await;
    assert_eq!(failed, 0, "teardown failures");
    assert_eq!(data.lost, 0, "data lost by the time of the teardown");
    assert_eq!(
        data.unverified, 0,
        "kept volumes that could not be read back"
    );
    assert_eq!(data.verified, written, "every kept volume's data read back");
    data.verified
}

/// Every mount below the driver's directory is one the kept volumes account for: one at each
/// published target, none anywhere else, none stacked. The driver's own directories (`own`:
/// its mount staging directory, the NFS controller's export mounts) may hold one mount each
/// at themselves or directly inside.
pub fn assert_mounts_owned(d: &Driver, left: &[Volume], own: &[PathBuf]) {
    let published: BTreeSet<PathBuf> = left
        .iter()
        .filter(|v| v.published)
        .map(|v| target_of(d, v))
        .collect();
    // A driver that stages (the local backend) holds one more mount per staged volume.
    let staged: BTreeSet<PathBuf> = left
        .iter()
        .filter(|v| v.staged)
        .map(|v| stage_of(d, v))
        .collect();
    let mut seen: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for m in mounts_below(&d.path("")) {
        *seen.entry(m.mount_point).or_default() += 1;
    }
    for (point, count) in &seen {
        assert_eq!(*count, 1, "{} is mounted {count} times", point.display());
        let drivers_own = own
            .iter()
            .any(|dir| point == dir || point.parent() == Some(dir.as_path()));
        assert!(
            drivers_own || published.contains(point) || staged.contains(point),
            "a mount no published or staged volume owns: {}",
            point.display()
        );
    }
    for target in published.iter().chain(&staged) {
        assert_eq!(
            mounts_at(target).len(),
            1,
            "published target or stage {} is not mounted",
            target.display()
        );
    }
}

/// Nothing is left below the load's target directory after the teardown: no mount, no
/// directory.
pub fn assert_targets_gone(d: &Driver) {
    let dir = target_dir(d);
    assert!(
        mounts_below(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_below(&dir)
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "target directories left: {left:?}");
}

/// The driver after the soak against a fresh start of it on the same state: memory and open
/// descriptors within a small bound. Restarts the driver (SIGTERM, then a fresh process).
pub async fn assert_usage_near_fresh(d: &mut Driver) -> (Sample, Sample) {
    // Let the load's connections close on the driver's side.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let soaked = Sample::of(d.pid()).expect("sample the soaked driver");
    assert_eq!(d.terminate().await.code(), Some(0));
    d.spawn().await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = Sample::of(d.pid()).expect("sample the fresh driver");
    eprintln!(
        "usage: soaked driver RSS {} KiB, {} fds; fresh start {} KiB, {} fds ({:?} after start)",
        soaked.rss_kib,
        soaked.fds,
        fresh.rss_kib,
        fresh.fds,
        started.elapsed()
    );
    // A few connections may still be closing; a leak per kill or per call would be far more.
    assert!(
        soaked.fds <= fresh.fds + 8,
        "descriptors leak: {} after the soak, {} fresh",
        soaked.fds,
        fresh.fds
    );
    // Allocator arenas and the journal's bounded memory of deleted names grow with work;
    // a leak grows with it without bound, and the long mode shows which.
    assert!(
        soaked.rss_kib <= fresh.rss_kib * 2 + 16 * 1024,
        "memory: {} KiB after the soak, {} KiB fresh",
        soaked.rss_kib,
        fresh.rss_kib
    );
    (soaked, fresh)
}

/// The names in `dir` as a set (see [`crate::common::names_in`]); empty when `dir` does not
/// exist.
pub fn names(dir: &Path) -> BTreeSet<String> {
    match dir.exists() {
        true => crate::common::names_in(dir).into_iter().collect(),
        false => BTreeSet::new(),
    }
}

/// The soak's one-line summary, for the test output and the closing note.
pub fn summary(soaked: &Soaked) -> String {
    let r = &soaked.outcome.report;
    let errors: BTreeMap<&str, u64> = r.rpcs.iter().fold(BTreeMap::new(), |mut all, line| {
        for (code, n) in &line.errors {
            *all.entry(*code).or_default() += n;
        }
        all
    });
    format!(
        "soak: {} kills, {} operations in {:.1} s ({:?}), errors retried {:?}, data {} written, \
         {} read-backs intact, {} lost; {} volumes kept for the checks, seed {}",
        soaked.kills,
        r.operations,
        r.secs,
        r.by_op,
        errors,
        r.data.written,
        r.data.verified,
        r.data.lost,
        soaked.outcome.left.len(),
        r.seed
    )
}
