//! Benchmark: `pvdir load` (its engine, `pvdir::ctl::load`) against pvdir and
//! csi-driver-host-path v1.18.0 side by side, in one run, on tmpfs and on a real disk
//! filesystem. The load is a CO's whole lifecycle: CreateVolume, NodePublishVolume (host-path
//! also wants NodeStageVolume), NodeGetVolumeStats, NodeUnpublishVolume, DeleteVolume, in the
//! default mix, with 4 KiB written into each volume at its first publish and read back at
//! each later one. Both drivers serve controller and node in one process (`--mode all`),
//! with real bind mounts, so this needs root.
//!
//! `PVDIR_BENCH_SECS` (default 5) sets each run, `PVDIR_BENCH_DISK` (default `/var/tmp`) the
//! disk directory, `PVDIR_BENCH_ON=tmpfs|disk` one filesystem only, `PVDIR_BENCH_PREFILL`
//! (default 100) the volumes made before each run. Runs alternate between the drivers.

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::{env_or, hostpath_binary, start_hostpath, start_pvdir, Driver};
use pvdir::csi::proto as csi;
use pvdir::ctl::load::engine::{self, Progress, Settings, Until};
use pvdir::ctl::load::plan::Mix;
use pvdir::ctl::load::record::Report;
use pvdir::ctl::load::session::Shape;
use pvdir::server::Endpoint;

fn settings(d: &Driver, dir: &Path, clients: usize, secs: u64, prefill: usize) -> Settings {
    use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType};
    Settings {
        endpoint: Endpoint::Unix(d.socket.clone()),
        clients,
        mix: Mix::DEFAULT.parse().expect("the default mix parses"),
        until: Until {
            duration: Some(Duration::from_secs(secs)),
            operations: None,
        },
        prefill,
        per_client: 4,
        shape: Shape {
            capacity_bytes: Some(1 << 20),
            parameters: Default::default(),
            capability: csi::VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(Default::default())),
            },
            write_bytes: 4096,
            target_dir: dir.join(format!("targets-{}-{clients}", d.name)),
        },
        call_timeout: Duration::from_secs(60),
        retry: None,
        pid: Some(d.pid()),
        seed: 42,
        name_prefix: format!("bench-{clients}"),
        progress: Progress::Off,
        keep: false,
    }
}

fn p50_99(r: &Report, rpc: &str) -> String {
    r.rpcs
        .iter()
        .find(|l| l.rpc == rpc)
        .map_or("-".into(), |l| format!("{}/{}", l.p50_us, l.p99_us))
}

fn row(fs: &str, r: &Report, name: &str) -> String {
    let usage = r.driver_process.as_ref();
    format!(
        "| {fs} | {} | {name} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r.clients,
        r.ops_per_sec,
        p50_99(r, "CreateVolume"),
        p50_99(r, "NodePublishVolume"),
        p50_99(r, "NodeGetVolumeStats"),
        p50_99(r, "NodeUnpublishVolume"),
        p50_99(r, "DeleteVolume"),
        r.errors() + r.abandoned + r.data.lost,
        usage.map_or("-".into(), |u| format!(
            "{:.1}→{:.1}",
            u.before.rss_kib as f64 / 1024.0,
            u.peak_rss_kib as f64 / 1024.0
        )),
        usage.map_or("-".into(), |u| format!("{:.0}", u.cpu_us_per_op)),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("load: needs root (both drivers make bind mounts); skipped");
        return;
    }
    let secs = env_or("PVDIR_BENCH_SECS", 5u64);
    let prefill = env_or("PVDIR_BENCH_PREFILL", 100usize);
    let disk: PathBuf = env_or("PVDIR_BENCH_DISK", PathBuf::from("/var/tmp"));
    let only = std::env::var("PVDIR_BENCH_ON").unwrap_or_default();
    let hostpath = hostpath_binary();
    if hostpath.is_none() {
        println!("csi-driver-host-path not found: measuring pvdir alone");
    }
    let mut rows = Vec::new();
    for (fs, parent) in [("tmpfs", PathBuf::from("/dev/shm")), ("disk", disk)] {
        if !only.is_empty() && only != fs {
            continue;
        }
        let dir = tempfile::Builder::new()
            .prefix("pvdir-bench-load-")
            .tempdir_in(&parent)
            .expect("bench directory");
        let mut drivers = vec![start_pvdir(
            "pvdir",
            &common::pvdir_binary(),
            dir.path(),
            "all",
        )];
        if let Some(binary) = &hostpath {
            drivers.push(start_hostpath(binary, dir.path()));
        }
        for d in &drivers {
            d.ready().await;
        }
        let label = format!("{fs} ({})", parent.display());
        for clients in [1, 8] {
            for d in &drivers {
                let run = settings(d, dir.path(), clients, secs, prefill);
                let outcome = engine::run(run, Arc::new(AtomicBool::new(false)))
                    .await
                    .unwrap_or_else(|e| panic!("load on {}: {e}", d.name));
                println!("== {label}, {}\n{}", d.name, outcome.report.table());
                rows.push(row(&label, &outcome.report, &d.name));
            }
        }
        drop(drivers);
    }
    println!(
        "| on | clients | driver | operations/s | create | publish | stats | unpublish | delete | errors | RSS MiB (start→peak) | driver CPU µs/op |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
