//! Group snapshots (the CSI GroupController): several volumes snapshotted by one call, their
//! snapshots kept, restored and deleted as one group. Served by the local backend, whose
//! volumes of one group all live on the node whose controller is asked.
//!
//! A group is a record plus ordinary snapshots, its members: member `i` is the snapshot
//! named `<group name>/<i>` of the `i`-th source in canonical ID order, so a retry finds
//! the same members and continues their copies. The record is written (and synced) before any
//! copy; it is `ready` once every member is, and each member is `ready` only once its own copy
//! is complete and synced, as for any snapshot. Members are copied one after another: pvdir
//! cannot stop writers across directories, so a group is a point in time only for an
//! application that is quiet during the call (the same holds for csi-driver-host-path, which
//! tars one volume after another).
//!
//! Group IDs are self-describing like snapshot IDs, `v1#group#local#<node>#<key>`, the key
//! made from the group's name by the rules of [`VolumeKey`].

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::ControllerError;
use super::snapshot::Snapshot;
use super::volume_id::{bad, decode, encode, VolumeIdError, VolumeKey};

const PREFIX: &str = "v1#group";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupId {
    /// A group of volumes on one node, its members kept there beside the volumes.
    Local { node: String, key: VolumeKey },
}

impl GroupId {
    pub fn parse(raw: &str) -> Result<Self, VolumeIdError> {
        let Some(rest) = raw.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('#')) else {
            return Err(VolumeIdError::Foreign);
        };
        match rest.split('#').collect::<Vec<_>>().as_slice() {
            ["local", node, key] => {
                let node = decode("node", node)?;
                if node.is_empty() {
                    return Err(bad("node", "empty"));
                }
                let key = VolumeKey::parse(&decode("key", key)?)
                    .ok_or_else(|| bad("key", "not a group snapshot key"))?;
                Ok(Self::Local { node, key })
            }
            [backend, ..] => Err(bad("backend", format!("unknown backend {backend:?}"))),
            [] => Err(VolumeIdError::Foreign),
        }
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local { node, key } => write!(
                f,
                "{PREFIX}#local#{}#{}",
                encode(node),
                encode(key.as_str())
            ),
        }
    }
}

/// A validated CreateVolumeGroupSnapshot request.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub name: String,
    /// The source volumes' IDs as given (at least one, none twice).
    pub sources: Vec<String>,
    pub parameters: HashMap<String, String>,
}

/// The name of member `index` of group `group`: not a Kubernetes object name (it holds a
/// slash), so no snapshot made through a VolumeSnapshot can take it.
pub fn member_name(group: &str, index: usize) -> String {
    format!("{group}/{index}")
}

/// The key of member `index` of group `group` (see [`member_name`]).
pub fn member_key(group: &str, index: usize) -> Result<VolumeKey, ControllerError> {
    let name = member_name(group, index);
    VolumeKey::from_name(&name).ok_or(ControllerError::UnusableName { name })
}

/// A group's record, kept beside its members' records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    /// The sources' IDs in canonical form, sorted: member `i` is of `sources[i]`.
    pub sources: Vec<String>,
    created_secs: i64,
    created_nanos: i32,
    pub ready: bool,
}

impl GroupRecord {
    /// A record of a group being made now of `sources` (canonical and sorted).
    pub fn started(name: &str, sources: Vec<String>) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            name: name.to_string(),
            sources,
            created_secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            created_nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
            ready: false,
        }
    }

    /// The error for a CreateVolumeGroupSnapshot of `name` from `sources` that this record,
    /// of the same key, does not match; `None` when it does.
    pub fn conflict(&self, name: &str, sources: &[String]) -> Option<ControllerError> {
        (self.name != name || self.sources != sources).then(|| ControllerError::NameConflict {
            name: name.to_string(),
            difference: format!(
                "group snapshot {:?} of {:?}; requested of {sources:?}",
                self.name, self.sources
            ),
        })
    }

    pub fn group(&self, id: GroupId, members: Vec<Snapshot>) -> GroupSnapshot {
        GroupSnapshot {
            id,
            // A member deleted on its own leaves the group incomplete, never ready again.
            ready: self.ready && members.len() == self.sources.len(),
            members,
            created: (self.created_secs, self.created_nanos),
        }
    }
}

/// A group snapshot as reported to the CO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub id: GroupId,
    pub members: Vec<Snapshot>,
    pub created: (i64, i32),
    /// Whether every member is ready.
    pub ready: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_others_are_foreign_or_malformed() {
        let id = GroupId::Local {
            node: "node #1".into(),
            key: VolumeKey::from_name("groupsnapshot-1").unwrap(),
        };
        assert_eq!(GroupId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(
            GroupId::parse("v1#snap#local#n#k"),
            Err(VolumeIdError::Foreign)
        );
        for bad in [
            "v1#group#local##k",
            "v1#group#nfs#x#k",
            "v1#group#local#n",
            "v1#group#local#n#..",
        ] {
            assert!(
                !matches!(GroupId::parse(bad), Ok(_) | Err(VolumeIdError::Foreign)),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_group_conflicts_on_another_name_or_source_set() {
        let r = GroupRecord::started("g", vec!["a".into(), "b".into()]);
        assert!(r.conflict("g", &["a".into(), "b".into()]).is_none());
        assert!(r.conflict("g", &["a".into()]).is_some());
        assert!(r.conflict("h", &["a".into(), "b".into()]).is_some());
        assert_ne!(member_name("g", 0), member_name("g", 1));
    }
}
