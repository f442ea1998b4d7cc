//! Benchmark: per-call latency as the number of existing volumes grows, and idle memory.
//!
//! Claims under test: Create/Delete/Publish touch only their own volume, so their latency stays
//! flat from 10 to 10,000 existing volumes; the node process idles in well under 16 MiB, and
//! stays within its 64 MiB limit after 10,000 volumes went through it.
//! Runs the real services (as the server wires them) with the real OS layer: real directories,
//! fsync'd records and real bind mounts, so it must run as root. The volume root is on
//! /dev/shm by default, where fsync costs nothing; PVDIR_BENCH_DIR puts it on a disk instead.
//! Run: `cargo bench --bench scale` (PVDIR_BENCH_SIZES=10,1000,10000, PVDIR_BENCH_ROUNDS=200
//! and PVDIR_BENCH_DIR=/dev/shm by default).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pvdir::csi::controller::ControllerService;
use pvdir::csi::node::NodeService;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_server::Controller as _;
use pvdir::csi::proto::node_server::Node as _;
use pvdir::domain::backend::Backend;
use pvdir::domain::controller::Controller;
use pvdir::domain::guard::InFlight;
use pvdir::domain::local::LocalBackend;
use pvdir::domain::node::Node;
use pvdir::os::mount::MountApi;
use pvdir::os::real::RealOs;
use tonic::Request;

use csi::volume_capability::access_mode::Mode;

fn cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
    }
}

struct Services {
    controller: ControllerService,
    node: NodeService,
}

async fn services(root: &Path) -> Services {
    let os = Arc::new(RealOs::new(
        PathBuf::from(env!("CARGO_BIN_EXE_pvdir")),
        Duration::from_secs(30),
        root.join("mounts"),
        MountApi::Auto,
    ));
    os.prepare()
        .await
        .expect("prepare the mount staging directory");
    let backend = LocalBackend::open(
        root.to_path_buf(),
        "bench".into(),
        os.clone(),
        pvdir::domain::local::QuotaSetup {
            quotas: Arc::new(pvdir::os::quota::KernelQuotas),
            overcommit: 1.0,
        },
        Arc::new(pvdir::metrics::Metrics::new()),
    )
    .await
    .expect("open the local backend");
    let backend = Arc::new(Backend::Local(backend));
    let kind = backend.kind();
    let in_flight = InFlight::default();
    Services {
        controller: ControllerService::new(Controller::new(backend.clone(), in_flight.clone())),
        node: NodeService::new(Node::new(backend, os, in_flight), "bench".into(), kind),
    }
}

async fn create(s: &Services, name: &str) -> String {
    let req = csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 1 << 20,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap()],
        ..Default::default()
    };
    let v = s
        .controller
        .create_volume(Request::new(req))
        .await
        .expect("create");
    v.into_inner().volume.expect("volume").volume_id
}

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn add(&mut self, d: Duration) {
        self.0.push(d);
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.0.sort();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i].as_secs_f64() * 1e6
    }
}

async fn measure(size: usize, rounds: usize) {
    let dir = tempfile::Builder::new()
        .prefix("pvdir-bench")
        .tempdir_in(bench_dir())
        .expect("tmp");
    let root = dir.path().join("root");
    let pods = dir.path().join("pods");
    std::fs::create_dir_all(&pods).expect("pods");
    let s = services(&root).await;
    let fill = Instant::now();
    for i in 0..size {
        create(&s, &format!("existing-{i:05}")).await;
    }
    let fill = fill.elapsed();
    let (mut c, mut p, mut u, mut d) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    for r in 0..rounds {
        let t = Instant::now();
        let id = create(&s, &format!("probe-{r}")).await;
        c.add(t.elapsed());
        let target = pods.join(format!("p{r}"));
        let t = Instant::now();
        s.node
            .node_publish_volume(Request::new(csi::NodePublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.to_string_lossy().into(),
                volume_capability: Some(cap()),
                ..Default::default()
            }))
            .await
            .expect("publish");
        p.add(t.elapsed());
        let t = Instant::now();
        s.node
            .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.to_string_lossy().into(),
            }))
            .await
            .expect("unpublish");
        u.add(t.elapsed());
        let t = Instant::now();
        s.controller
            .delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            }))
            .await
            .expect("delete");
        d.add(t.elapsed());
    }
    let t = Instant::now();
    let listed = s
        .controller
        .list_volumes(Request::new(csi::ListVolumesRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .entries
        .len();
    let list = t.elapsed();
    println!(
        "{size:>6} existing | create p50 {:>7.0} p99 {:>7.0} | publish p50 {:>7.0} p99 {:>7.0} | unpublish p50 {:>7.0} p99 {:>7.0} | delete p50 {:>7.0} p99 {:>7.0} µs | list {listed} in {:.1} ms | fill {:.1} s",
        c.pct(0.5), c.pct(0.99), p.pct(0.5), p.pct(0.99), u.pct(0.5), u.pct(0.99), d.pct(0.5), d.pct(0.99),
        list.as_secs_f64() * 1e3, fill.as_secs_f64()
    );
}

/// A real `pvdir serve` process on the local backend below `dir`; returns it and its socket.
fn spawn_server(dir: &Path, mode: &str) -> Option<(std::process::Child, PathBuf)> {
    let sock = dir.join("csi.sock");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pvdir"))
        .args([
            "serve",
            "--mode",
            mode,
            "--node-id",
            "bench",
            "--local-root",
        ])
        .arg(dir.join("root"))
        .arg("--mount-staging-dir")
        .arg(dir.join("mounts"))
        .arg("--local-endpoint")
        .arg(format!("unix://{}", sock.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    Some((child, sock))
}

/// A `kB` figure from `/proc/<pid>/status` (`VmRSS`, `VmHWM`), then the process is killed.
fn kib_then_kill(mut child: std::process::Child, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok();
    let _ = child.kill();
    let _ = child.wait();
    status?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory of a freshly started node process after it has settled.
fn idle_rss(mode: &str) -> Option<u64> {
    let dir = tempfile::tempdir().ok()?;
    let (child, _) = spawn_server(dir.path(), mode)?;
    std::thread::sleep(Duration::from_secs(2));
    kib_then_kill(child, "VmRSS")
}

/// Peak resident memory (VmHWM) of a real `pvdir serve --mode all` process, in KiB, after it
/// has created `volumes` volumes, published and unpublished each, and listed them all: the
/// figure the node plugin's memory limit is sized from.
async fn loaded_peak_rss(volumes: usize) -> Option<u64> {
    let dir = tempfile::tempdir_in(bench_dir()).ok()?;
    let (child, sock) = spawn_server(dir.path(), "all")?;
    // Whatever happens below, the server is killed once its figure is read.
    let worked = drive(&sock, &dir.path().join("target"), volumes).await;
    let peak = kib_then_kill(child, "VmHWM");
    worked.then_some(peak?)
}

/// `volumes` creates, publishes and unpublishes, then one full listing; whether all succeeded.
async fn drive(sock: &Path, target: &Path, volumes: usize) -> bool {
    use pvdir::ctl::client::Client;
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Ok(endpoint) = format!("unix://{}", sock.display()).parse() else {
        return false;
    };
    let Ok(client) = Client::connect(&endpoint, Duration::from_secs(30)).await else {
        return false;
    };
    let mut ok = true;
    for i in 0..volumes {
        let created = client
            .controller()
            .create_volume(csi::CreateVolumeRequest {
                name: format!("pvc-{i}"),
                volume_capabilities: vec![cap()],
                ..Default::default()
            })
            .await;
        let Ok(created) = created else {
            ok = false;
            break;
        };
        let id = created
            .into_inner()
            .volume
            .map(|v| v.volume_id)
            .unwrap_or_default();
        let published = client
            .node()
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.to_string_lossy().into(),
                volume_capability: Some(cap()),
                ..Default::default()
            })
            .await;
        let unpublished = client
            .node()
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id,
                target_path: target.to_string_lossy().into(),
            })
            .await;
        ok &= published.is_ok() && unpublished.is_ok();
    }
    let listed = client
        .controller()
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .map(|r| r.into_inner().entries.len());
    ok && listed.is_ok_and(|n| n == volumes)
}

/// Where the benchmark's volumes live (PVDIR_BENCH_DIR, default /dev/shm).
fn bench_dir() -> PathBuf {
    std::env::var_os("PVDIR_BENCH_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the scale benchmark needs root (real bind mounts)");
        std::process::exit(1);
    }
    let sizes: Vec<usize> = std::env::var("PVDIR_BENCH_SIZES")
        .unwrap_or_else(|_| "10,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds = std::env::var("PVDIR_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "pvdir scale benchmark: {rounds} rounds of create/publish/unpublish/delete per size, \
         volumes in {}",
        bench_dir().display()
    );
    for size in sizes {
        rt.block_on(measure(size, rounds));
    }
    for mode in ["node", "all"] {
        match idle_rss(mode) {
            Some(kb) => println!("idle RSS, --mode {mode}: {:.1} MiB", kb as f64 / 1024.0),
            None => println!("idle RSS, --mode {mode}: could not measure"),
        }
    }
    let loaded = std::env::var("PVDIR_BENCH_LOADED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    match rt.block_on(loaded_peak_rss(loaded)) {
        Some(kb) => println!(
            "peak RSS of a serving process after {loaded} creates, publishes, unpublishes and one full listing: {:.1} MiB",
            kb as f64 / 1024.0
        ),
        None => println!("peak RSS under load: could not measure"),
    }
}
