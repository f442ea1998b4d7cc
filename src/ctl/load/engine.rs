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

use super::plan::{Mix, Op, Pool, Rng};
use super::record::{DataCheck, DriverUsage, Heading, Live, Report, Tally};
use super::session::{Facts, Session, Shape, Volume};
use super::usage::Sample;
use crate::csi::proto as csi;
use crate::ctl::client::Client;
use crate::ctl::CtlError;
use crate::server::Endpoint;

/// When the measured run ends (the first that comes; a stop request always ends it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Until {
    pub duration: Option<Duration>,
    pub operations: Option<u64>,
}

/// How progress is shown on stderr while the load runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Off,
    /// One line rewritten in place each second (a terminal).
    Live,
    /// A new line every this long (a log file or CI).
    Lines(Duration),
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

/// What a run measured, and the volumes it left (only with `keep`).
pub struct Outcome {
    pub report: Report,
    pub facts: Arc<Facts>,
    pub left: Vec<Volume>,
}

fn capability_names<T>(list: &[T], name: impl Fn(&T) -> Option<i32>, wanted: i32) -> bool {
    list.iter().any(|c| name(c) == Some(wanted))
}

/// Ask the driver who it is and which optional steps it wants.
async fn discover(client: &Client) -> Result<Facts, CtlError> {
    use csi::controller_service_capability::{rpc::Type as Ctl, Type as CtlKind};
    use csi::node_service_capability::{rpc::Type as Nd, Type as NdKind};
    let info = client
        .call(
            "GetPluginInfo",
            client
                .identity()
                .get_plugin_info(csi::GetPluginInfoRequest {}),
        )
        .await?;
    let controller = client
        .call(
            "ControllerGetCapabilities",
            client
                .controller()
                .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}),
        )
        .await?;
    let controller_rpc =
        |c: &csi::ControllerServiceCapability| c.r#type.as_ref().map(|CtlKind::Rpc(r)| r.r#type);
    if !capability_names(
        &controller.capabilities,
        controller_rpc,
        Ctl::CreateDeleteVolume as i32,
    ) {
        return Err(CtlError::LoadUnsupported {
            endpoint: client.endpoint().clone(),
            what: "CREATE_DELETE_VOLUME",
        });
    }
    let node_info = client
        .call_optional(
            "NodeGetInfo",
            client.node().node_get_info(csi::NodeGetInfoRequest {}),
        )
        .await?;
    let node_caps = match node_info {
        None => Vec::new(),
        Some(_) => {
            client
                .call(
                    "NodeGetCapabilities",
                    client
                        .node()
                        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {}),
                )
                .await?
                .capabilities
        }
    };
    let node_rpc =
        |c: &csi::NodeServiceCapability| c.r#type.as_ref().map(|NdKind::Rpc(r)| r.r#type);
    Ok(Facts {
        driver: format!("{} {}", info.name, info.vendor_version),
        topology: node_info
            .as_ref()
            .and_then(|n| n.accessible_topology.clone()),
        node_id: node_info.map(|n| n.node_id),
        controller_publish: capability_names(
            &controller.capabilities,
            controller_rpc,
            Ctl::PublishUnpublishVolume as i32,
        ),
        stage: capability_names(&node_caps, node_rpc, Nd::StageUnstageVolume as i32),
        stats: capability_names(&node_caps, node_rpc, Nd::GetVolumeStats as i32),
    })
}

/// The mix the driver can serve: no node service, no publish; no stats capability, no stats.
fn effective_mix(mix: Mix, facts: &Facts) -> Mix {
    let mut mix = mix;
    if facts.node_id.is_none() {
        mix = mix
            .without(Op::Publish)
            .without(Op::Stats)
            .without(Op::Unpublish);
    }
    if !facts.stats {
        mix = mix.without(Op::Stats);
    }
    mix
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
    abandoned: u64,
}

/// What every session of a run shares.
#[derive(Clone)]
struct Common {
    settings: Settings,
    facts: Arc<Facts>,
    shape: Arc<Shape>,
    live: Arc<Live>,
}

impl Common {
    async fn session(&self) -> Result<Session, CtlError> {
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
                session.create(name).await.map(|v| {
                    live.volumes.fetch_add(1, Ordering::Relaxed);
                    pool.idle.push(v);
                })
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
                match session.delete(&v).await {
                    Ok(()) => {
                        live.volumes.fetch_sub(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        broken.push(suspect(v, &facts));
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
        abandoned,
    }
}

/// Create `count` volumes up front with all clients, outside the measured run.
async fn prefill(common: &Common, count: usize) -> Result<Vec<Volume>, CtlError> {
    let clients = common.settings.clients.max(1);
    let mut tasks = Vec::new();
    for index in 0..clients {
        let mut session = common.session().await?;
        let live = Arc::clone(&common.live);
        let prefix = common.settings.name_prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in (index..count).step_by(clients) {
                if let Ok(v) = session.create(format!("{prefix}-fill-{i}")).await {
                    live.volumes.fetch_add(1, Ordering::Relaxed);
                    made.push(v);
                }
            }
            made
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a prefill client does not panic"));
    }
    Ok(all)
}

fn progress_line(started: Instant, live: &Live, pid: Option<u32>) -> String {
    let (ops, errors, volumes) = live.get();
    let secs = started.elapsed().as_secs_f64();
    let rss = pid
        .and_then(|p| Sample::of(p).ok())
        .map(|s| format!(", driver RSS {:.1} MiB", s.rss_kib as f64 / 1024.0))
        .unwrap_or_default();
    format!(
        "[{secs:>6.1} s] {ops} operations ({:.0}/s), {errors} errors, {volumes} volumes{rss}",
        ops as f64 / secs.max(1e-9)
    )
}

/// Show progress until `done`; returns the peak RSS of the driver seen meanwhile.
async fn watch(
    progress: Progress,
    live: Arc<Live>,
    pid: Option<u32>,
    done: Arc<AtomicBool>,
) -> u64 {
    use std::io::Write;
    let started = Instant::now();
    let mut peak = 0;
    let mut last_line = Instant::now();
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(s) = pid.and_then(|p| Sample::of(p).ok()) {
            peak = peak.max(s.rss_kib);
        }
        match progress {
            Progress::Off => {}
            Progress::Live => {
                eprint!("\r\x1b[K{}", progress_line(started, &live, pid));
                let _ = std::io::stderr().flush();
            }
            Progress::Lines(every) if last_line.elapsed() >= every => {
                last_line = Instant::now();
                eprintln!("{}", progress_line(started, &live, pid));
            }
            Progress::Lines(_) => {}
        }
    }
    if progress == Progress::Live {
        eprintln!();
    }
    peak
}

/// Run the load. `stop` ends the measured run early when set (clients finish the operation in
/// hand).
pub async fn run(settings: Settings, stop: Arc<AtomicBool>) -> Result<Outcome, CtlError> {
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
        live: Arc::new(Live::default()),
        settings,
    };
    let fill_started = Instant::now();
    let filled = prefill(&common, common.settings.prefill).await?;
    let prefilled = filled.len();
    let prefill_secs = fill_started.elapsed().as_secs_f64();

    let mut sessions = Vec::new();
    for _ in 0..common.settings.clients.max(1) {
        sessions.push(common.session().await?);
    }
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
    let mut volumes = filled;
    let mut abandoned = 0;
    for task in tasks {
        let end = task.await.expect("a load client does not panic");
        tally.merge(end.tally);
        volumes.extend(end.volumes);
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
        });
    }
    let (data, failed) = teardown(settings, &facts, volumes).await?;
    report.data.add(data);
    report.teardown_failed = failed;
    Ok(Outcome {
        report,
        facts,
        left: Vec::new(),
    })
}

/// Read written data back through a target (publishing for it if need be), then unpublish and
/// delete every volume, spread over the clients. Returns the data check and the number of
/// volumes whose teardown failed.
pub async fn teardown(
    settings: &Settings,
    facts: &Arc<Facts>,
    volumes: Vec<Volume>,
) -> Result<(DataCheck, u64), CtlError> {
    let clients = settings.clients.max(1);
    let mut shares: Vec<Vec<Volume>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, v) in volumes.into_iter().enumerate() {
        shares[i % clients].push(v);
    }
    let common = Common {
        settings: settings.clone(),
        facts: Arc::clone(facts),
        shape: Arc::new(settings.shape.clone()),
        live: Arc::new(Live::default()),
    };
    let mut tasks = Vec::new();
    for share in shares {
        let mut session = common.session().await?;
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for mut v in share {
                if v.written {
                    // Publish again from the start (each step is idempotent): a volume whose
                    // step failed may be anywhere along the way. Publish reads the data back.
                    v.attached = false;
                    v.staged = false;
                    if session.publish(&mut v).await.is_err() {
                        session.tally.data(false);
                    }
                }
                let gone = match session.unpublish(&mut v).await {
                    Ok(()) => session.delete(&v).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = gone {
                    failed += 1;
                    tracing::warn!(volume.id = %v.id, step = e.step, code = ?e.code, message = %e.message, "teardown failed");
                }
            }
            (session.tally.data, failed)
        }));
    }
    let mut data = DataCheck::default();
    let mut failed = 0;
    for task in tasks {
        let (d, f) = task.await.expect("a teardown client does not panic");
        data.add(d);
        failed += f;
    }
    Ok((data, failed))
}
