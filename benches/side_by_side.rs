//! Benchmark: pvdir beside csi-driver-host-path over gRPC, the same client in the same run.
//!
//! What it shows: the latency of a CreateVolume + DeleteVolume pair at 0 existing volumes (one
//! client, p50/p99) and the pairs per second that 8 concurrent clients get (with the driver
//! process's CPU time per pair in that run, from /proc), on tmpfs and on a
//! real disk filesystem, with the disk quiet and with a concurrent writer filling it. pvdir makes
//! every acknowledged create and delete durable; host-path syncs nothing, so on a disk this
//! measures what durability costs.
//!
//! The drivers run as the real binaries on unix sockets. host-path is found at
//! `PVDIR_BENCH_HOSTPATH` or in `../shared/anchors/` beside the checkout; without it only pvdir
//! runs. The writer is a thread writing 1 MiB buffers to a file on the same filesystem, without
//! syncing, the way a busy application or `dd` does: the kernel's writeback keeps the disk
//! busy. Rounds alternate between the drivers so that drift in the machine hits both alike.
//! Run as root: `cargo bench --bench side_by_side`. `PVDIR_BENCH_DISK` (default `/var/tmp`)
//! chooses the disk directory, `PVDIR_BENCH_PAIRS` (default 300) the sequential pairs per
//! driver and condition, `PVDIR_BENCH_SECS` (default 3) each concurrent run, and
//! `PVDIR_BENCH_ON=tmpfs` or `disk` one filesystem only. `PVDIR_BENCH_BINARY` runs another
//! pvdir binary than the one just built, and `PVDIR_BENCH_BASELINE` adds other builds beside
//! it: a `:`-separated list of paths, each row named after its file (an identical copy of the
//! binary under test shows this machine's noise within the run).
//!
//! Two figures bound what any durable driver can reach here, and are printed after the table:
//! - the flush floor, one 512-byte `pwrite` + `fdatasync` into a pre-zeroed, pre-synced file on
//!   the same filesystem (what pvdir's journal does once per acknowledged call when calls do
//!   not overlap), timed in the same rounds as the pairs: a one-client pair cannot be faster
//!   than host-path's by less than two of these if host-path's other work were free;
//! - the client's own CPU per pair at 8 clients (this process, less the writer thread), which
//!   shares the two cores with the driver and so caps the pairs per second of both.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_client::ControllerClient;
use pvdir::ctl::load::usage::Sample;
use tonic::transport::Channel;

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod common;

use common::{connect, env_or, hostpath_binary, start_hostpath, start_pvdir, Driver};

const CLIENTS: usize = 8;

fn create_request(name: String) -> csi::CreateVolumeRequest {
    use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType};
    csi::CreateVolumeRequest {
        name,
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 1 << 20,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![csi::VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Mount(Default::default())),
        }],
        ..Default::default()
    }
}

/// One CreateVolume and its DeleteVolume; returns the two latencies.
async fn pair(client: &mut ControllerClient<Channel>, name: String) -> (Duration, Duration) {
    let start = Instant::now();
    let created = client
        .create_volume(create_request(name))
        .await
        .expect("CreateVolume")
        .into_inner();
    let made = start.elapsed();
    let volume_id = created.volume.expect("a volume").volume_id;
    let start = Instant::now();
    client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id,
            ..Default::default()
        })
        .await
        .expect("DeleteVolume");
    (made, start.elapsed())
}

static NAMES: AtomicU64 = AtomicU64::new(0);

fn next_name() -> String {
    format!("pvc-bench-{}", NAMES.fetch_add(1, Ordering::Relaxed))
}

#[derive(Default)]
struct Samples {
    create: Vec<Duration>,
    delete: Vec<Duration>,
    pair: Vec<Duration>,
}

fn pct(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1e6
}

/// CPU time (user + system) the process `pid` has used so far, in seconds (the same reading
/// `pvdir load --pid` reports).
fn cpu_secs(pid: u32) -> f64 {
    Sample::of(pid).expect("driver usage").cpu_us as f64 / 1e6
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory this function owns.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    // It cannot fail for this clock on Linux; a 0 here would overstate the client's CPU.
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// What one concurrent run measured.
#[derive(Default, Clone, Copy)]
struct Rate {
    pairs_per_sec: f64,
    /// The driver process's CPU time per pair, µs (a figure less at the mercy of a noisy
    /// machine than the rate).
    driver_cpu_us: f64,
    /// This process's CPU time per pair, µs, less the writer thread's.
    client_cpu_us: f64,
}

/// The writer thread's CPU seconds so far, as it last reported them (bits of an `f64`).
type WriterCpu = Arc<AtomicU64>;

fn writer_cpu(w: Option<&WriterCpu>) -> f64 {
    w.map_or(0.0, |w| f64::from_bits(w.load(Ordering::Relaxed)))
}

/// 8 clients, each on its own connection, doing pairs for `secs`.
async fn throughput(socket: &Path, pid: u32, secs: u64, writer: Option<&WriterCpu>) -> Rate {
    let cpu_before = cpu_secs(pid);
    let own_before = cpu_secs(std::process::id()) - writer_cpu(writer);
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = connect(socket).await;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                pair(&mut client, next_name()).await;
                n += 1;
            }
            n
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client task");
    }
    let cpu = cpu_secs(pid) - cpu_before;
    let own = cpu_secs(std::process::id()) - writer_cpu(writer) - own_before;
    let per_pair = |secs: f64| secs * 1e6 / total.max(1) as f64;
    Rate {
        pairs_per_sec: total as f64 / start.elapsed().as_secs_f64(),
        driver_cpu_us: per_pair(cpu),
        client_cpu_us: per_pair(own),
    }
}

/// A file laid out as the journal lays out its segments: zero-filled and synced ahead of the
/// entries written into it, so that a flush writes one data block and no metadata.
fn flush_file(dir: &Path) -> std::fs::File {
    let path = dir.join("flush-floor.bin");
    let mut file = std::fs::File::create(&path).expect("flush file");
    file.write_all(&vec![0u8; 1 << 20])
        .expect("flush file zeroes");
    file.sync_all().expect("flush file sync");
    file
}

/// `n` journal-like commits into `file`, one 512-byte block each: their latencies.
fn flushes(file: &std::fs::File, n: usize) -> Vec<Duration> {
    use std::os::unix::fs::FileExt;
    let block = [0xa5u8; 512];
    (0..n)
        .map(|i| {
            let start = Instant::now();
            file.write_all_at(&block, (i as u64 % 2048) * 512)
                .expect("flush write");
            file.sync_data().expect("fdatasync");
            start.elapsed()
        })
        .collect()
}

/// Writes without syncing until told to stop, rewinding at 2 GiB so the disk never fills; it
/// reports its own CPU time after each buffer, so that the client's can be told apart.
fn start_writer(dir: &Path) -> (Arc<AtomicBool>, WriterCpu, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let cpu: WriterCpu = Arc::default();
    let reported = Arc::clone(&cpu);
    let path = dir.join("writer.bin");
    let handle = std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).expect("writer file");
        let buf = vec![0x5au8; 1 << 20];
        let mut written = 0u64;
        while !flag.load(Ordering::Relaxed) {
            file.write_all(&buf).expect("writer write");
            reported.store(thread_cpu_secs().to_bits(), Ordering::Relaxed);
            written += 1;
            if written.is_multiple_of(2048) {
                file.set_len(0).expect("writer truncate");
                std::io::Seek::rewind(&mut file).expect("writer rewind");
            }
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        written
    });
    (stop, cpu, handle)
}

/// One condition (filesystem, writer or not): each driver's samples and best concurrent run,
/// and the flush floor's latencies taken in the same rounds.
async fn condition(
    drivers: &[Driver],
    dir: &Path,
    pairs: usize,
    secs: u64,
    writer: Option<&WriterCpu>,
) -> (Vec<(Samples, Rate)>, Vec<Duration>) {
    let mut results: Vec<(Samples, Rate)> = drivers.iter().map(|_| Default::default()).collect();
    let flush = Arc::new(flush_file(dir));
    let mut floor = Vec::new();
    let mut clients = Vec::new();
    for d in drivers {
        let mut c = connect(&d.socket).await;
        for _ in 0..30 {
            pair(&mut c, next_name()).await; // warm-up: connections, caches, first records
        }
        clients.push(c);
    }
    // Alternate in rounds of 50 so both drivers see the same moments of the writer.
    let rounds = pairs.div_ceil(50);
    for _ in 0..rounds {
        for (client, (s, _)) in clients.iter_mut().zip(results.iter_mut()) {
            for _ in 0..50 {
                let start = Instant::now();
                let (c, d) = pair(client, next_name()).await;
                s.pair.push(start.elapsed());
                s.create.push(c);
                s.delete.push(d);
            }
        }
        let file = Arc::clone(&flush);
        let round = tokio::task::spawn_blocking(move || flushes(&file, 50));
        floor.extend(round.await.expect("flush round"));
    }
    // Two alternating concurrent runs each; the better one counts (less disturbed by the rest).
    for _ in 0..2 {
        for (d, (_, best)) in drivers.iter().zip(results.iter_mut()) {
            let run = throughput(&d.socket, d.pid(), secs, writer).await;
            if run.pairs_per_sec > best.pairs_per_sec {
                *best = run;
            }
        }
    }
    (results, floor)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("side_by_side: needs root (pvdir serve prepares mounts); skipped");
        return;
    }
    let pairs = env_or("PVDIR_BENCH_PAIRS", 300usize);
    let secs = env_or("PVDIR_BENCH_SECS", 3u64);
    let disk: PathBuf = env_or("PVDIR_BENCH_DISK", PathBuf::from("/var/tmp"));
    let hostpath = hostpath_binary();
    let pvdir = common::pvdir_binary();
    let baselines: Vec<(String, PathBuf)> = std::env::var_os("PVDIR_BENCH_BASELINE")
        .map(|list| std::env::split_paths(&list).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            (name, path)
        })
        .collect();
    // Each driver's root and socket are named after it: two of one name would share them.
    let mut names: Vec<&str> = baselines.iter().map(|(n, _)| n.as_str()).collect();
    names.push("pvdir");
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        panic!(
            "PVDIR_BENCH_BASELINE: two builds named {:?}; give each its own file name",
            pair[0]
        );
    }
    if hostpath.is_none() {
        println!("csi-driver-host-path not found: measuring pvdir alone");
    }
    println!("| on | writer | driver | create p50/p99 µs | delete p50/p99 µs | pair p50/p99 µs | pairs/s, {CLIENTS} clients | driver CPU µs/pair | client CPU µs/pair |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut floors = Vec::new();
    let only = std::env::var("PVDIR_BENCH_ON").unwrap_or_default();
    for (fs, parent) in [("tmpfs", PathBuf::from("/dev/shm")), ("disk", disk)] {
        if !only.is_empty() && only != fs {
            continue;
        }
        let dir = tempfile::Builder::new()
            .prefix("pvdir-bench-")
            .tempdir_in(&parent)
            .expect("bench directory");
        let mut drivers = vec![start_pvdir("pvdir", &pvdir, dir.path(), "controller")];
        for (name, other) in &baselines {
            drivers.push(start_pvdir(name, other, dir.path(), "controller"));
        }
        if let Some(binary) = &hostpath {
            drivers.push(start_hostpath(binary, dir.path()));
        }
        for d in &drivers {
            d.ready().await;
        }
        for writer in [false, true] {
            let running = writer.then(|| start_writer(dir.path()));
            let cpu = running.as_ref().map(|(_, cpu, _)| cpu);
            let (results, mut floor) = condition(&drivers, dir.path(), pairs, secs, cpu).await;
            let written = running.map(|(stop, _, handle)| {
                stop.store(true, Ordering::Relaxed);
                handle.join().expect("writer thread")
            });
            let writer = written.map_or("none".to_string(), |mib| format!("{mib} MiB written"));
            let on = format!("{fs} ({})", parent.display());
            floors.push(format!(
                "| {on} | {writer} | {:.0}/{:.0} |",
                pct(&mut floor, 0.5),
                pct(&mut floor, 0.99)
            ));
            for (d, (mut s, rate)) in drivers.iter().zip(results) {
                println!(
                    "| {on} | {writer} | {} | {:.0}/{:.0} | {:.0}/{:.0} | {:.0}/{:.0} | {:.0} | {:.0} | {:.0} |",
                    d.name,
                    pct(&mut s.create, 0.5),
                    pct(&mut s.create, 0.99),
                    pct(&mut s.delete, 0.5),
                    pct(&mut s.delete, 0.99),
                    pct(&mut s.pair, 0.5),
                    pct(&mut s.pair, 0.99),
                    rate.pairs_per_sec,
                    rate.driver_cpu_us,
                    rate.client_cpu_us
                );
            }
        }
        drop(drivers);
    }
    println!();
    println!("| on | writer | flush floor p50/p99 µs (512 B pwrite + fdatasync) |");
    println!("|---|---|---|");
    for line in floors {
        println!("{line}");
    }
}
