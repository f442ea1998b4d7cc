//! NodeExpandVolume: a local volume's size raised on the node that holds it.
//!
//! Local controllers run on every node, and the resizer sidecar has no per-node mode: the
//! controller holding its lease answers for volumes of other nodes with "finish on the node"
//! (see `Controller::expand`), and kubelet then calls this on the volume's own node, where the
//! local backend raises the quota as ControllerExpandVolume would. NFS volumes are expanded by
//! the central controller alone; the NFS node service does not advertise this.

use super::Node;
use crate::domain::backend::Backend;
use crate::domain::error::NodeError;
use crate::domain::volume::Expanded;
use crate::domain::volume_id::guard_key;

impl Node {
    /// Raise volume `raw` to `bytes` (`None`: leave it as it is and say its size). The guard
    /// is the volume's, shared with the controller's calls for it.
    pub async fn expand(&self, raw: &str, bytes: Option<i64>) -> Result<Expanded, NodeError> {
        let Backend::Local(local) = &*self.backend else {
            return Err(NodeError::Unsupported {
                what: "NodeExpandVolume",
            });
        };
        let id = Self::local_id(raw, local.node_id())?;
        let _guard = self.claim(&guard_key(raw))?;
        let expanded = local
            .expand(&id, raw, bytes.unwrap_or(0))
            .await
            .map_err(|source| NodeError::Expand {
                id: raw.to_string(),
                source: Box::new(source),
            })?;
        Ok(expanded)
    }
}
