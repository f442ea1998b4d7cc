//! A load run's phases: ask the driver what it offers, prefill, run the clients until the
//! duration, the operation count or a stop request ends them, then tear down everything the
//! run made (reading written data back first) unless told to keep it.
//!
//! Invariant: every volume the run created is either deleted by the teardown, counted as a
//! teardown failure, or handed back to the caller in [`Outcome::left`]; none is forgotten.
//! Clients finish the operation in hand when told to stop, so with a retry budget the state
//! they hand back is what the driver acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::discover::{discover, effective_mix};
use super::plan::{Mix, Op, Pool, Rng};
use super::progress::watch;
pub use super::progress::Progress;
use super::record::{DriverUsage, Heading, Live, Report, Tally};
use super::session::{Facts, Session, Shape, Volume};
pub use super::teardown::teardown;
use super::teardown::uncertain;
use super::usage::Sample;
use crate::ctl::client::Client;
use crate::ctl::CtlError;
use crate::server::Endpoint;

/// When the measured run ends (the first that comes; a stop request always ends it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Until {
    pub duration: Option<Duration>,
    pub operations: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: Endpoint,
    pub clients: usize,
    pub mix: Mix,
    pub until: Until,
    pub prefill: usize,
    /// The most volumes one client holds at a time.
    pub per_client: usize,
    pub shape: Shape,
    pub call_timeout: Duration,
    /// `Some(budget)`: retry each failed step for up to this long, as the sidecars do.
    pub retry: Option<Duration>,
    /// The driver's process, for memory, descriptors and CPU.
    pub pid: Option<u32>,
    pub seed: u64,
    pub name_prefix: String,
    pub progress: Progress,
    /// Leave every volume in place at the end and hand it back instead of tearing down.
    pub keep: bool,
}

/// What a run measured, and what it left (only with `keep`): its volumes, and the names of
/// creates that got no clear answer (the driver may have made them).
pub struct Outcome {
    pub report: Report,
    pub facts: Arc<Facts>,
    pub left: Vec<Volume>,
    pub unsure: Vec<String>,
}

async fn channel(settings: &Settings) -> Result<Channel, CtlError> {
    Ok(Client::connect(&settings.endpoint, settings.call_timeout)
        .await?
        .channel())
}

/// The state one client hands back when it stops.
struct ClientEnd {
    tally: Tally,
    volumes: Vec<Volume>,
    unsure: Vec<String>,
    abandoned: u64,
}

/// What every session of a run shares.
#[derive(Clone)]
pub(super) struct Common {
    pub(super) settings: Settings,
    pub(super) facts: Arc<Facts>,
    pub(super) shape: Arc<Shape>,
    pub(super) live: Arc<Live>,
}

impl Common {
    pub(super) async fn session(&self) -> Result<Session, CtlError> {
        Ok(Session::new(
            channel(&self.settings).await?,
            self.settings.call_timeout,
            self.settings.retry,
            Arc::clone(&self.facts),
            Arc::clone(&self.shape),
            Arc::clone(&self.live),
        ))
    }
}

/// The measured run's clients and when they stop.
struct Shared {
    common: Common,
    mix: Mix,
    stop: Arc<AtomicBool>,
    deadline: Option<Instant>,
    issued: AtomicU64,
}

impl Shared {
    fn settings(&self) -> &Settings {
        &self.common.settings
    }

    /// Whether the client may start one more operation (and counts it if so).
    fn go_on(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        match self.settings().until.operations {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) < limit,
            None => true,
        }
    }
}

/// A volume whose step failed: assume every step may have happened, so that the teardown
/// undoes them all (each undo is idempotent in CSI).
fn suspect(mut v: Volume, facts: &Facts) -> Volume {
    v.published = facts.node_id.is_some();
    v.staged = facts.stage;
    v.attached = facts.controller_publish;
    v
}

async fn client(shared: Arc<Shared>, index: usize, mut session: Session) -> ClientEnd {
    let facts = Arc::clone(&shared.common.facts);
    let live = Arc::clone(&shared.common.live);
    let mut rng = Rng::new(
        shared
            .settings()
            .seed
            .wrapping_add((index as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
    );
    let mut pool: Pool<Volume> = Pool::new(shared.settings().per_client);
    let mut broken = Vec::new();
    let mut unsure = Vec::new();
    let mut abandoned = 0;
    let mut made = 0u64;
    while shared.go_on() {
        let Some(op) = pool.choose(&shared.mix, &mut rng) else {
            break;
        };
        let result = match op {
            Op::Create => {
                let name = format!("{}-{index}-{made}", shared.settings().name_prefix);
                made += 1;
                match session.create(name.clone()).await {
                    Ok(v) => {
                        live.volumes.fetch_add(1, Ordering::Relaxed);
                        pool.idle.push(v);
                        Ok(())
                    }
                    Err(e) => {
                        if uncertain(e.code) {
                            unsure.push(name);
                        }
                        Err(e)
                    }
                }
            }
            Op::Publish => {
                let Some(mut v) = pool.take(false, &mut rng) else {
                    continue;
                };
                match session.publish(&mut v).await {
                    Ok(()) => {
                        pool.published.push(v);
                        Ok(())
                    }
                    Err(e) => {
                        broken.push(suspect(v, &facts));
                        Err(e)
                    }
                }
            }
            Op::Stats => {
                let Some(v) = pool.take(true, &mut rng) else {
                    continue;
                };
                let result = session.stats(&v).await;
                pool.published.push(v);
                result
            }
            Op::Unpublish => {
                let Some(mut v) = pool.take(true, &mut rng) else {
                    continue;
                };
                match session.unpublish(&mut v).await {
                    Ok(()) => {
                        pool.idle.push(v);
                        Ok(())
                    }
                    Err(e) => {
                        broken.push(suspect(v, &facts));
                        Err(e)
                    }
                }
            }
            Op::Delete => {
                let Some(v) = pool.take(false, &mut rng) else {
                    continue;
                };
                let mut v = v;
                match session.delete(&v).await {
                    Ok(()) => {
                        live.volumes.fetch_sub(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        // Unpublished already: the teardown only deletes it again.
                        v.deleting = true;
                        broken.push(v);
                        Err(e)
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                session.tally.op(op);
                live.operations.fetch_add(1, Ordering::Relaxed);
            }
            Err(failed) => {
                abandoned += 1;
                tracing::debug!(step = failed.step, code = ?failed.code, message = %failed.message, "load step failed");
            }
        }
    }
    let mut volumes = pool.idle;
    volumes.extend(pool.published);
    volumes.extend(broken);
    ClientEnd {
        tally: session.tally,
        volumes,
        unsure,
        abandoned,
    }
}

/// What the prefill made, and what it could not.
#[derive(Default)]
struct Filled {
    volumes: Vec<Volume>,
    unsure: Vec<String>,
    failed: u64,
}

/// Create `count` volumes up front with the clients' sessions, outside the measured run, and
/// hand the sessions back with their counts cleared.
async fn prefill(common: &Common, sessions: Vec<Session>, count: usize) -> (Vec<Session>, Filled) {
    let clients = sessions.len().max(1);
    let mut tasks = Vec::new();
    for (index, mut session) in sessions.into_iter().enumerate() {
        let live = Arc::clone(&common.live);
        let prefix = common.settings.name_prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut filled = Filled::default();
            for i in (index..count).step_by(clients) {
                let name = format!("{prefix}-fill-{i}");
                match session.create(name.clone()).await {
                    Ok(v) => {
                        live.volumes.fetch_add(1, Ordering::Relaxed);
                        filled.volumes.push(v);
                    }
                    Err(e) => {
                        filled.failed += 1;
                        if uncertain(e.code) {
                            filled.unsure.push(name);
                        }
                    }
                }
            }
            session.tally = Tally::default();
            (session, filled)
        }));
    }
    let mut sessions = Vec::new();
    let mut all = Filled::default();
    for task in tasks {
        let (session, filled) = task.await.expect("a prefill client does not panic");
        sessions.push(session);
        all.volumes.extend(filled.volumes);
        all.unsure.extend(filled.unsure);
        all.failed += filled.failed;
    }
    (sessions, all)
}

/// Run the load. `stop` ends the measured run early when set (clients finish the operation in
/// hand).
pub async fn run(settings: Settings, stop: Arc<AtomicBool>) -> Result<Outcome, CtlError> {
    run_counted(settings, stop, Arc::new(Live::default())).await
}

/// [`run`], counting into `live` as it goes (for a caller that watches, as the chaos soak
/// waits for the first operations before it kills).
pub async fn run_counted(
    settings: Settings,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
) -> Result<Outcome, CtlError> {
    let first = Client::connect(&settings.endpoint, settings.call_timeout).await?;
    let facts = Arc::new(discover(&first).await?);
    drop(first);
    tokio::fs::create_dir_all(&settings.shape.target_dir)
        .await
        .map_err(|source| CtlError::LoadTargetDir {
            path: settings.shape.target_dir.clone(),
            source,
        })?;
    let common = Common {
        shape: Arc::new(settings.shape.clone()),
        facts: Arc::clone(&facts),
        live,
        settings,
    };
    // Every connection first: a failure now leaves nothing made.
    let mut sessions = Vec::new();
    for _ in 0..common.settings.clients.max(1) {
        sessions.push(common.session().await?);
    }
    let fill_started = Instant::now();
    let (sessions, filled) = prefill(&common, sessions, common.settings.prefill).await;
    let prefilled = filled.volumes.len();
    let prefill_secs = fill_started.elapsed().as_secs_f64();
    let pid = common.settings.pid;
    let before = pid.map(Sample::of).transpose();
    let watching = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch(
        common.settings.progress,
        Arc::clone(&common.live),
        pid,
        Arc::clone(&watching),
    ));
    // The clock starts once every client is connected.
    let started = Instant::now();
    let shared = Arc::new(Shared {
        mix: effective_mix(common.settings.mix, &facts),
        deadline: common.settings.until.duration.map(|d| started + d),
        stop,
        issued: AtomicU64::new(0),
        common,
    });
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, session)| tokio::spawn(client(Arc::clone(&shared), i, session)))
        .collect();
    let mut tally = Tally::default();
    let mut volumes = filled.volumes;
    let mut unsure = filled.unsure;
    let mut abandoned = filled.failed;
    for task in tasks {
        let end = task.await.expect("a load client does not panic");
        tally.merge(end.tally);
        volumes.extend(end.volumes);
        unsure.extend(end.unsure);
        abandoned += end.abandoned;
    }
    let elapsed = started.elapsed();
    watching.store(true, Ordering::Relaxed);
    let peak = watcher.await.unwrap_or(0);

    let settings = shared.settings();
    let mut report = Report::new(
        Heading {
            endpoint: settings.endpoint.to_string(),
            driver: facts.driver.clone(),
            clients: settings.clients,
            mix: shared.mix.to_string(),
            seed: settings.seed,
        },
        &tally,
        elapsed,
    );
    // What the driver made, which a refusing driver may leave short of what was asked.
    report.prefilled = prefilled;
    report.prefill_secs = prefill_secs;
    // Prefill failures count too: those volumes were asked for and not made.
    report.abandoned = abandoned;
    if let (Some(pid), Ok(Some(before))) = (pid, before) {
        if let Ok(after) = Sample::of(pid) {
            report.driver_process = Some(DriverUsage {
                pid,
                before,
                after,
                peak_rss_kib: peak.max(after.rss_kib),
                cpu_us_per_op: after.cpu_us.saturating_sub(before.cpu_us) as f64
                    / report.operations.max(1) as f64,
            });
        }
    }
    if settings.keep {
        report.kept = volumes.len();
        return Ok(Outcome {
            report,
            facts,
            left: volumes,
            unsure,
        });
    }
    let (data, failed) = teardown(settings, &facts, volumes, unsure).await;
    report.data.add(data);
    report.teardown_failed = failed;
    Ok(Outcome {
        report,
        facts,
        left: Vec::new(),
        unsure: Vec::new(),
    })
}
