//! Per-key in-flight guards. A second call for a key that is already being worked on gets
//! ABORTED (the CSI spec's "operation pending for volume"), which every sidecar and kubelet retry.
//! The guard is an owned value: it lives until the handler's blocking work has really finished.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

#[must_use = "the key is released when the guard is dropped"]
pub struct InFlightGuard {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claim `key`, or `None` when another call holds it.
    pub fn try_claim(&self, key: &str) -> Option<InFlightGuard> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.insert(key.to_string()) {
            Some(InFlightGuard {
                keys: Arc::clone(&self.keys),
                key: key.to_string(),
            })
        } else {
            None
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&self.key);
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
}
