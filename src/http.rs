//! The HTTP side of `pvdir serve`: `/healthz`, for kubelet's liveness and readiness probes
//! (no livenessprobe sidecar needed).
//!
//! - `/healthz`: every backend this process serves;
//! - `/healthz/local`, `/healthz/nfs`: one backend (404 if it is not served here).
//!
//! A backend is healthy when its own checks pass (the same as CSI Probe, see
//! [`crate::domain::health`]) and kubelet has not refused its registration. A registration
//! kubelet has not answered yet is healthy: kubelet may start after pvdir, and a liveness
//! restart would not make it come sooner.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::domain::access::BackendKind;
use crate::domain::health::Health;
use crate::kubelet::RegistrationState;

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

type Targets = Arc<Vec<HealthTarget>>;

/// `:port` (all addresses, as the sidecars' `--http-endpoint` takes it) or `host:port`.
pub fn parse_address(s: &str) -> Option<SocketAddr> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.to_string(),
    };
    full.parse().ok()
}

pub fn router(targets: Vec<HealthTarget>) -> Router {
    Router::new()
        .route("/healthz", get(all))
        .route("/healthz/{backend}", get(one))
        .with_state(Arc::new(targets))
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
    answer(targets.iter()).await
}

async fn one(State(targets): State<Targets>, Path(backend): Path<String>) -> (StatusCode, String) {
    let kind = match backend.as_str() {
        "local" => BackendKind::Local,
        "nfs" => BackendKind::Nfs,
        _ => return (StatusCode::NOT_FOUND, "no such backend\n".into()),
    };
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
