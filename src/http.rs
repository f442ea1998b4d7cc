//! The HTTP side of `pvdir serve`: `/healthz`, for kubelet's liveness and readiness probes
//! (no livenessprobe sidecar needed), and `/metrics` for Prometheus.
//!
//! - `/healthz`: every backend this process serves;
//! - `/healthz/local`, `/healthz/nfs`: one backend (404 if it is not served here);
//! - `/metrics`: [`crate::metrics`] in the OpenMetrics text format. The state gauges (volumes,
//!   mounts, health) are refreshed first, per scrape (see [`crate::domain::inventory`]).
//!
//! A backend is healthy when its own checks pass (the same as CSI Probe, see
//! [`crate::domain::health`]) and kubelet has not refused its registration. A registration
//! kubelet has not answered yet is healthy: kubelet may start after pvdir, and a liveness
//! restart would not make it come sooner.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::domain::access::BackendKind;
use crate::domain::health::Health;
use crate::domain::inventory::Inventory;
use crate::kubelet::RegistrationState;
use crate::metrics::Metrics;

/// What `/healthz` looks at for one served backend.
pub struct HealthTarget {
    pub driver: String,
    pub health: Health,
    pub registration: Option<watch::Receiver<RegistrationState>>,
}

impl HealthTarget {
    async fn check(&self) -> Result<(), String> {
        if let Some(RegistrationState::Refused(reason)) =
            self.registration.as_ref().map(|r| r.borrow().clone())
        {
            return Err(format!(
                "{}: kubelet refused the registration: {reason}",
                self.driver
            ));
        }
        self.health
            .check()
            .await
            .map_err(|e| format!("{}: {e}", self.driver))
    }
}

/// What the HTTP server answers from.
pub struct Served {
    pub targets: Vec<HealthTarget>,
    pub metrics: Arc<Metrics>,
    /// One per served backend.
    pub inventories: Vec<Inventory>,
}

type Targets = Arc<Served>;

/// `:port` (all addresses, as the sidecars' `--http-endpoint` takes it) or `host:port`.
pub fn parse_address(s: &str) -> Option<SocketAddr> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.to_string(),
    };
    full.parse().ok()
}

pub fn router(served: Served) -> Router {
    Router::new()
        .route("/healthz", get(all))
        .route("/healthz/{backend}", get(one))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(served))
}

async fn metrics(
    State(served): State<Targets>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    let m = &served.metrics;
    for inventory in &served.inventories {
        let backend = inventory.kind().label();
        let counts = inventory.count().await;
        if let Some(volumes) = counts.volumes {
            m.set_volumes(backend, volumes);
        }
        for mounts in counts.mounts {
            m.set_mounts(backend, mounts.role, mounts.count);
        }
    }
    for target in &served.targets {
        // The same verdict as /healthz/<backend>, bounded the same way.
        let healthy = target.check().await.is_ok();
        m.set_healthy(target.health.kind().label(), healthy);
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        m.encode(),
    )
}

async fn answer<'a>(targets: impl Iterator<Item = &'a HealthTarget>) -> (StatusCode, String) {
    let mut failures = Vec::new();
    for target in targets {
        if let Err(e) = target.check().await {
            failures.push(e);
        }
    }
    if failures.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        tracing::warn!(failures = ?failures, "health check failed");
        (StatusCode::SERVICE_UNAVAILABLE, failures.join("\n") + "\n")
    }
}

async fn all(State(targets): State<Targets>) -> (StatusCode, String) {
    answer(targets.targets.iter()).await
}

async fn one(State(targets): State<Targets>, Path(backend): Path<String>) -> (StatusCode, String) {
    let kind = match backend.as_str() {
        "local" => BackendKind::Local,
        "nfs" => BackendKind::Nfs,
        _ => return (StatusCode::NOT_FOUND, "no such backend\n".into()),
    };
    let targets = &targets.targets;
    if !targets.iter().any(|t| t.health.kind() == kind) {
        return (
            StatusCode::NOT_FOUND,
            format!("{backend} is not served here\n"),
        );
    }
    answer(targets.iter().filter(|t| t.health.kind() == kind)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_the_sidecars_flag() {
        assert_eq!(
            parse_address(":29741"),
            Some("0.0.0.0:29741".parse().unwrap())
        );
        assert_eq!(
            parse_address("127.0.0.1:8080"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(parse_address("[::1]:80"), Some("[::1]:80".parse().unwrap()));
        for bad in ["", ":", "29741", ":x", "host:1", ":99999"] {
            assert_eq!(parse_address(bad), None, "{bad}");
        }
    }
}
