//! Per-key in-flight guards. A second call for a key that is already being worked on gets
//! ABORTED (the CSI spec's "operation pending for volume"), which every sidecar and kubelet retry.
//! The guard is an owned value: it lives until the handler's blocking work has really finished.
//! Its metrics follow it: the in-flight gauge goes up on a claim and down on the guard's drop,
//! so it counts work that outlives a caller who gave up.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::metrics::GuardMetrics;

#[derive(Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
    metrics: GuardMetrics,
}

#[must_use = "the key is released when the guard is dropped"]
pub struct InFlightGuard {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
    metrics: GuardMetrics,
}

impl InFlight {
    /// Guards whose claims and refusals are counted in `metrics`.
    pub fn observed(metrics: GuardMetrics) -> Self {
        Self {
            keys: Arc::default(),
            metrics,
        }
    }

    /// Claim `key`, or `None` when another call holds it.
    pub fn try_claim(&self, key: &str) -> Option<InFlightGuard> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.insert(key.to_string()) {
            self.metrics.claimed();
            Some(InFlightGuard {
                keys: Arc::clone(&self.keys),
                key: key.to_string(),
                metrics: self.metrics.clone(),
            })
        } else {
            self.metrics.refused();
            None
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&self.key);
        self.metrics.released();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_fails_until_release() {
        let f = InFlight::default();
        let g = f.try_claim("a").unwrap();
        assert!(f.try_claim("a").is_none());
        assert!(f.try_claim("b").is_some());
        drop(g);
        assert!(f.try_claim("a").is_some());
    }

    #[test]
    fn claims_and_refusals_are_counted() {
        let metrics = crate::metrics::Metrics::new();
        let f = InFlight::observed(metrics.guard("local"));
        let g = f.try_claim("a").unwrap();
        assert!(f.try_claim("a").is_none());
        let text = metrics.encode();
        assert!(text.contains("pvdir_operations_in_flight{backend=\"local\"} 1\n"));
        assert!(text.contains("pvdir_guard_refusals_total{backend=\"local\"} 1\n"));
        drop(g);
        let text = metrics.encode();
        assert!(text.contains("pvdir_operations_in_flight{backend=\"local\"} 0\n"));
    }
}
