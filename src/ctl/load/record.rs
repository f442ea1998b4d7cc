//! Counting what a load run did and saying it: per RPC, the latency of every call the driver
//! answered OK (an HDR histogram, so memory stays fixed however long the run) and the count of
//! each error code; per operation, how many finished. Each client keeps its own [`Tally`] (no
//! lock on the hot path) and they are merged at the end into a [`Report`], printed as a table
//! for people or written as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::plan::Op;
use super::usage::Sample;
use crate::ctl::values::code_name;

/// Latencies up to an hour, to 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

#[derive(Debug)]
struct RpcTally {
    ok: Histogram<u64>,
    errors: BTreeMap<&'static str, u64>,
}

/// Counts all clients share while the load runs, for the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub operations: AtomicU64,
    pub errors: AtomicU64,
    pub volumes: AtomicI64,
}

impl Live {
    pub fn get(&self) -> (u64, u64, i64) {
        (
            self.operations.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.volumes.load(Ordering::Relaxed),
        )
    }
}

/// One client's counts.
#[derive(Debug, Default)]
pub struct Tally {
    rpcs: BTreeMap<&'static str, RpcTally>,
    ops: BTreeMap<Op, u64>,
    pub data: DataCheck,
}

impl Tally {
    /// One attempt at `rpc`: its latency if it was answered OK, else its code.
    pub fn call(&mut self, rpc: &'static str, took: Duration, failed: Option<tonic::Code>) {
        let entry = self.rpcs.entry(rpc).or_insert_with(|| RpcTally {
            ok: histogram(),
            errors: BTreeMap::new(),
        });
        match failed {
            None => entry.ok.saturating_record(took.as_micros().max(1) as u64),
            Some(code) => *entry.errors.entry(code_name(code)).or_default() += 1,
        }
    }

    pub fn data_written(&mut self) {
        self.data.written += 1;
    }

    pub fn data_unverified(&mut self) {
        self.data.unverified += 1;
    }

    /// One read-back of a volume's data.
    pub fn data(&mut self, intact: bool) {
        match intact {
            true => self.data.verified += 1,
            false => self.data.lost += 1,
        }
    }

    pub fn op(&mut self, op: Op) {
        *self.ops.entry(op).or_default() += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        for (rpc, theirs) in other.rpcs {
            match self.rpcs.get_mut(rpc) {
                None => {
                    self.rpcs.insert(rpc, theirs);
                }
                Some(ours) => {
                    ours.ok
                        .add(&theirs.ok)
                        .expect("histograms of the same bounds add");
                    for (code, n) in theirs.errors {
                        *ours.errors.entry(code).or_default() += n;
                    }
                }
            }
        }
        for (op, n) in other.ops {
            *self.ops.entry(op).or_default() += n;
        }
        self.data.add(other.data);
    }

    pub fn operations(&self) -> u64 {
        self.ops.values().sum()
    }
}

/// One RPC's line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RpcLine {
    pub rpc: &'static str,
    pub ok: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// OK answers per second of the measured run.
    pub per_sec: f64,
    /// Error answers by gRPC code (every attempt, retries included).
    pub errors: BTreeMap<&'static str, u64>,
}

/// The driver process before and after the measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DriverUsage {
    pub pid: u32,
    pub before: Sample,
    pub after: Sample,
    /// The largest resident size seen while the load ran (sampled each progress tick).
    pub peak_rss_kib: u64,
    /// The driver's CPU time per finished operation, in µs.
    pub cpu_us_per_op: f64,
}

/// Data written into volumes and read back (`--write-bytes`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DataCheck {
    /// Volumes written (once each, at their first publish).
    pub written: u64,
    /// Read-backs that found the data intact.
    pub verified: u64,
    /// Read-backs that found it missing or different.
    pub lost: u64,
    /// Volumes the teardown could not publish to read back (counted as teardown trouble,
    /// not as lost data).
    pub unverified: u64,
}

impl DataCheck {
    pub fn add(&mut self, other: DataCheck) {
        self.written += other.written;
        self.verified += other.verified;
        self.lost += other.lost;
        self.unverified += other.unverified;
    }
}

/// Everything a run measured; printed by [`Report::table`], or as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub endpoint: String,
    pub driver: String,
    pub clients: usize,
    pub mix: String,
    pub seed: u64,
    pub prefilled: usize,
    pub prefill_secs: f64,
    pub secs: f64,
    pub operations: u64,
    pub ops_per_sec: f64,
    pub by_op: BTreeMap<Op, u64>,
    pub rpcs: Vec<RpcLine>,
    pub driver_process: Option<DriverUsage>,
    pub data: DataCheck,
    /// Steps that failed for good (without `--retry`, any error; with it, once the retry
    /// budget was spent). Their volumes are torn down at the end like the rest.
    pub abandoned: u64,
    /// Volumes left on the driver (`--keep`), else 0.
    pub kept: usize,
    /// Volumes the teardown could not finish.
    pub teardown_failed: u64,
}

/// The fixed part of a report, known before the run.
pub struct Heading {
    pub endpoint: String,
    pub driver: String,
    pub clients: usize,
    pub mix: String,
    pub seed: u64,
}

impl Report {
    pub fn new(heading: Heading, tally: &Tally, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let rpcs = tally
            .rpcs
            .iter()
            .map(|(rpc, t)| RpcLine {
                rpc,
                ok: t.ok.len(),
                p50_us: t.ok.value_at_quantile(0.5),
                p99_us: t.ok.value_at_quantile(0.99),
                max_us: t.ok.max(),
                per_sec: t.ok.len() as f64 / secs,
                errors: t.errors.clone(),
            })
            .collect();
        let operations = tally.operations();
        Report {
            endpoint: heading.endpoint,
            driver: heading.driver,
            clients: heading.clients,
            mix: heading.mix,
            seed: heading.seed,
            prefilled: 0,
            prefill_secs: 0.0,
            secs,
            operations,
            ops_per_sec: operations as f64 / secs,
            by_op: tally.ops.clone(),
            rpcs,
            driver_process: None,
            data: tally.data,
            abandoned: 0,
            kept: 0,
            teardown_failed: 0,
        }
    }

    /// Errors of every RPC together.
    pub fn errors(&self) -> u64 {
        self.rpcs.iter().flat_map(|r| r.errors.values()).sum()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} ({}), {} clients, mix {}, seed {}",
            self.endpoint, self.driver, self.clients, self.mix, self.seed
        );
        if self.prefilled > 0 {
            let _ = writeln!(
                out,
                "prefilled {} volumes in {:.1} s",
                self.prefilled, self.prefill_secs
            );
        }
        let ops: Vec<String> = self
            .by_op
            .iter()
            .map(|(op, n)| format!("{} {n}", op.name()))
            .collect();
        let _ = writeln!(
            out,
            "{} operations in {:.1} s: {:.0}/s ({})\n",
            self.operations,
            self.secs,
            self.ops_per_sec,
            ops.join(", ")
        );
        let _ = writeln!(
            out,
            "{:<26} {:>8} {:>9} {:>9} {:>9} {:>9}  errors",
            "rpc", "ok", "p50 µs", "p99 µs", "max µs", "ok/s"
        );
        for r in &self.rpcs {
            let errors: Vec<String> = r.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
            let _ = writeln!(
                out,
                "{:<26} {:>8} {:>9} {:>9} {:>9} {:>9.0}  {}",
                r.rpc,
                r.ok,
                r.p50_us,
                r.p99_us,
                r.max_us,
                r.per_sec,
                if errors.is_empty() {
                    "-".to_string()
                } else {
                    errors.join(", ")
                }
            );
        }
        if let Some(u) = &self.driver_process {
            let _ = writeln!(
                out,
                "\ndriver pid {}: RSS {:.1} → {:.1} MiB (peak {:.1}), fds {} → {}, CPU {:.0} µs per operation",
                u.pid,
                u.before.rss_kib as f64 / 1024.0,
                u.after.rss_kib as f64 / 1024.0,
                u.peak_rss_kib as f64 / 1024.0,
                u.before.fds,
                u.after.fds,
                u.cpu_us_per_op
            );
        }
        if self.data.written > 0 {
            let _ = writeln!(
                out,
                "data: {} volumes written, {} read-backs intact, {} lost, {} not read back",
                self.data.written, self.data.verified, self.data.lost, self.data.unverified
            );
        }
        let _ = writeln!(
            out,
            "abandoned steps {}, kept volumes {}, teardown failures {}",
            self.abandoned, self.kept, self.teardown_failed
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heading() -> Heading {
        Heading {
            endpoint: "unix:///x".into(),
            driver: "d".into(),
            clients: 2,
            mix: "create=1,delete=1".into(),
            seed: 1,
        }
    }

    #[test]
    fn merged_tallies_count_every_call_and_code() {
        let mut a = Tally::default();
        let mut b = Tally::default();
        for us in [100, 200, 300] {
            a.call("CreateVolume", Duration::from_micros(us), None);
        }
        b.call("CreateVolume", Duration::from_micros(10_000), None);
        b.call(
            "CreateVolume",
            Duration::ZERO,
            Some(tonic::Code::Unavailable),
        );
        b.call("DeleteVolume", Duration::ZERO, Some(tonic::Code::Aborted));
        a.op(Op::Create);
        b.op(Op::Create);
        b.op(Op::Delete);
        a.merge(b);
        let report = Report::new(heading(), &a, Duration::from_secs(2));
        assert_eq!(report.operations, 3);
        assert_eq!(report.ops_per_sec, 1.5);
        let create = &report.rpcs[0];
        assert_eq!((create.rpc, create.ok), ("CreateVolume", 4));
        assert_eq!(create.errors.get("UNAVAILABLE"), Some(&1));
        assert!((199..=201).contains(&create.p50_us), "{}", create.p50_us);
        assert!(
            (9_990..=10_010).contains(&create.max_us),
            "{}",
            create.max_us
        );
        assert_eq!(report.rpcs[1].ok, 0);
        assert_eq!(report.errors(), 2);
        let table = report.table();
        assert!(table.contains("UNAVAILABLE 1"), "{table}");
    }

    #[test]
    fn a_report_serialises_to_json() {
        let report = Report::new(heading(), &Tally::default(), Duration::from_secs(1));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["clients"], 2);
        assert_eq!(json["rpcs"], serde_json::json!([]));
    }
}
