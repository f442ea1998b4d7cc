//! The progress line on stderr while the load runs, and the driver's peak memory sampled
//! meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::Live;
use super::usage::Sample;

/// How progress is shown on stderr while the load runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Off,
    /// One line rewritten in place, four times a second (a terminal).
    Live,
    /// A new line every this long (a log file or CI).
    Lines(Duration),
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
pub async fn watch(
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
