//! Prometheus metrics: one [`Metrics`] per process, made in `main` and handed down through
//! constructors as an `Arc<Metrics>` (no global registry), encoded on `/metrics` by
//! [`crate::http`] in the OpenMetrics text format.
//!
//! Invariants: every family is registered once, in [`Metrics::new`], so the set of names is
//! fixed at start-up; every label value comes from a closed set (backend kinds, CSI method
//! names, gRPC code names, operation names compiled into pvdir) and never from a request: no
//! volume ID, name or path ever becomes a label. This module sits below the OS layer (it imports
//! neither [`crate::domain`] nor [`crate::os`]) so that every layer may take the handle.

pub mod rpc;

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// What `/metrics` answers with: the OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub backend: &'static str,
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MountLabels {
    backend: &'static str,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HelperLabels {
    operation: String,
    medium: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KillLabels {
    operation: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// RPCs range from a microsecond (GetPluginInfo) to the NFS bound times a few steps: 1 ms to
/// about 4 minutes in ×2.5 steps.
fn rpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.5, 14))
}

/// Helper work ranges from a statfs (well under a millisecond) to a killed helper at the NFS
/// bound: 0.5 ms to about 2 minutes in ×2.5 steps.
fn helper_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.5, 14))
}

/// Why a helper's process group was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// It overran its time bound (also counted in `pvdir_helper_timeouts_total`).
    Timeout,
    /// It wrote more than the output cap.
    OutputCap,
    /// Its caller went away before it finished.
    Abandoned,
}

impl KillReason {
    fn label(self) -> &'static str {
        match self {
            KillReason::Timeout => "timeout",
            KillReason::OutputCap => "output_cap",
            KillReason::Abandoned => "abandoned",
        }
    }
}

/// Why an NFS unmount ended in a lazy detach (MNT_DETACH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachReason {
    /// The plain unmount timed out: the server does not answer, and whatever the pod had not
    /// yet written back is lost although the call answers OK.
    Unresponsive,
    /// The mount was merely busy; nothing is lost.
    Busy,
}

/// What an NFS server answered to a statfs of one of its mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Answering,
    /// ESTALE: the export was recreated; a probe before publish or controller work replaces
    /// the mount (a stale-handle recovery), volume stats report the volume abnormal.
    Stale,
    /// No answer within the bound.
    Unreachable,
    /// Any other failure (the path is no longer on NFS, an I/O error).
    Error,
}

/// The process's metrics. Cheap to share: every metric is an `Arc` inside.
pub struct Metrics {
    registry: Registry,
    rpc_duration: Histograms<RpcLabels>,
    in_flight: Family<BackendLabel, Gauge>,
    guard_refusals: Family<BackendLabel, Counter>,
    helper_duration: Histograms<HelperLabels>,
    helper_timeouts: Family<OperationLabel, Counter>,
    helper_kills: Family<KillLabels, Counter>,
    lazy_detaches: Family<ReasonLabel, Counter>,
    nfs_probes: Family<ResultLabel, Counter>,
    volumes: Family<BackendLabel, Gauge>,
    mounts: Family<MountLabels, Gauge>,
    healthy: Family<BackendLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let rpc_duration =
            Histograms::<RpcLabels>::new_with_constructor(rpc_histogram as fn() -> _);
        registry.register_with_unit(
            "pvdir_grpc_request_duration",
            "CSI calls by method and final gRPC code, from request to the last byte of the reply",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let in_flight = Family::default();
        registry.register(
            "pvdir_operations_in_flight",
            "Volume operations holding their per-volume guard, including work that outlives a \
             caller who gave up",
            in_flight.clone(),
        );
        let guard_refusals = Family::default();
        registry.register(
            "pvdir_guard_refusals",
            "Calls refused with ABORTED because another call for the same volume was in flight",
            guard_refusals.clone(),
        );
        let helper_duration =
            Histograms::<HelperLabels>::new_with_constructor(helper_histogram as fn() -> _);
        registry.register_with_unit(
            "pvdir_helper_duration",
            "OS work by operation: medium=remote runs in a killable child process (mount.nfs, \
             pvdir internal), medium=local on the blocking thread pool",
            Unit::Seconds,
            helper_duration.clone(),
        );
        let helper_timeouts = Family::default();
        registry.register(
            "pvdir_helper_timeouts",
            "Helper processes that overran their time bound (each is then killed)",
            helper_timeouts.clone(),
        );
        let helper_kills = Family::default();
        registry.register(
            "pvdir_helper_kills",
            "Helper process groups killed, by operation and reason",
            helper_kills.clone(),
        );
        let lazy_detaches = Family::default();
        registry.register(
            "pvdir_nfs_lazy_detaches",
            "NFS unmounts that ended in a lazy detach; reason=unresponsive means the server did \
             not answer and unwritten data may have been lost although the call answered OK",
            lazy_detaches.clone(),
        );
        let nfs_probes = Family::default();
        registry.register(
            "pvdir_nfs_probes",
            "Answers of NFS servers to a statfs of their mounts (mount checks and volume stats)",
            nfs_probes.clone(),
        );
        let volumes = Family::default();
        registry.register(
            "pvdir_volumes",
            "Volumes this process keeps (local backend: records on the node's disk), at scrape",
            volumes.clone(),
        );
        let mounts = Family::default();
        registry.register(
            "pvdir_mounts",
            "Mounts in the mount table at scrape: role=target for pods' volumes, role=export \
             for the NFS controller's export mounts",
            mounts.clone(),
        );
        let healthy = Family::default();
        registry.register(
            "pvdir_backend_healthy",
            "1 when the backend's health check (the same as /healthz and Probe: its directories \
             answer a statfs within 2 s) passes at scrape, else 0",
            healthy.clone(),
        );
        // Series that alerts watch start at 0 rather than appearing on their first event, so
        // that increase() sees the first one too.
        for reason in ["unresponsive", "busy"] {
            drop(lazy_detaches.get_or_create(&ReasonLabel { reason }));
        }
        for result in ["answering", "stale", "unreachable", "error"] {
            drop(nfs_probes.get_or_create(&ResultLabel { result }));
        }
        Self {
            registry,
            rpc_duration,
            in_flight,
            guard_refusals,
            helper_duration,
            helper_timeouts,
            helper_kills,
            lazy_detaches,
            nfs_probes,
            volumes,
            mounts,
            healthy,
        }
    }

    /// Everything, in the OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoding error would be a bug in a label.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    pub fn observe_rpc(&self, labels: &RpcLabels, took: Duration) {
        self.rpc_duration
            .get_or_create(labels)
            .observe(took.as_secs_f64());
    }

    /// The guard metrics of one backend, for [`crate::domain::guard::InFlight`].
    pub fn guard(&self, backend: &'static str) -> GuardMetrics {
        let label = BackendLabel { backend };
        GuardMetrics {
            in_flight: self.in_flight.get_or_create_owned(&label),
            refused: self.guard_refusals.get_or_create_owned(&label),
        }
    }

    /// One helper operation finished (or was killed) after `took`. `remote`: in a child
    /// process rather than on the blocking pool. `operation` is one of pvdir's own operation
    /// names ("statfs", "move mount", "mount.nfs"): spelled snake_case here.
    pub fn observe_helper(&self, operation: &str, remote: bool, took: Duration) {
        let labels = HelperLabels {
            operation: operation_label(operation),
            medium: if remote { "remote" } else { "local" },
        };
        self.helper_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// A helper's process group was killed. Timeouts are also counted on their own.
    pub fn helper_killed(&self, operation: &str, reason: KillReason) {
        let operation = operation_label(operation);
        if reason == KillReason::Timeout {
            self.helper_timeouts
                .get_or_create(&OperationLabel {
                    operation: operation.clone(),
                })
                .inc();
        }
        self.helper_kills
            .get_or_create(&KillLabels {
                operation,
                reason: reason.label(),
            })
            .inc();
    }

    /// An NFS unmount ended in a lazy detach. Called where the detach is made
    /// ([`crate::os::real::RealOs`]'s remote unmount); callers above must not count it again.
    pub fn lazy_detach(&self, reason: DetachReason) {
        let reason = match reason {
            DetachReason::Unresponsive => "unresponsive",
            DetachReason::Busy => "busy",
        };
        self.lazy_detaches
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn nfs_probe(&self, result: ProbeResult) {
        let result = match result {
            ProbeResult::Answering => "answering",
            ProbeResult::Stale => "stale",
            ProbeResult::Unreachable => "unreachable",
            ProbeResult::Error => "error",
        };
        self.nfs_probes.get_or_create(&ResultLabel { result }).inc();
    }

    /// State read at scrape time (see [`crate::http`]).
    pub fn set_volumes(&self, backend: &'static str, count: u64) {
        self.volumes
            .get_or_create(&BackendLabel { backend })
            .set(clamp(count));
    }

    pub fn set_mounts(&self, backend: &'static str, role: &'static str, count: u64) {
        self.mounts
            .get_or_create(&MountLabels { backend, role })
            .set(clamp(count));
    }

    pub fn set_healthy(&self, backend: &'static str, healthy: bool) {
        self.healthy
            .get_or_create(&BackendLabel { backend })
            .set(i64::from(healthy));
    }
}

fn clamp(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// pvdir's operation names as label values: `move mount` → `move_mount`, `mount.nfs` →
/// `mount_nfs`. The names are compiled in, so the set stays closed.
fn operation_label(name: &str) -> String {
    name.replace(['-', ' ', '.'], "_")
}

/// The in-flight gauge and refusal counter of one backend's guards. `Default` gives metrics
/// that count but are registered nowhere (for guards nobody scrapes, such as in unit tests).
#[derive(Clone, Default)]
pub struct GuardMetrics {
    in_flight: Gauge,
    refused: Counter,
}

impl GuardMetrics {
    pub fn claimed(&self) {
        self.in_flight.inc();
    }

    pub fn released(&self) {
        self.in_flight.dec();
    }

    pub fn refused(&self) {
        self.refused.inc();
    }
}

#[cfg(test)]
mod tests;
