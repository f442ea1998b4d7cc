//! Snapshots and content sources: the IDs, the validated requests and what is reported.
//!
//! A snapshot ID is self-describing like a volume ID, `v1#snap#local#<node>#<key>`, so
//! DeleteSnapshot and a restore find the snapshot from the ID alone (its record on disk), with
//! no memory of the call that made it. The key is made from the snapshot's name by the same
//! rules as a volume's directory name (see [`VolumeKey`]).

use std::collections::HashMap;
use std::fmt;

use super::volume_id::{bad, decode, encode, VolumeIdError, VolumeKey};

const PREFIX: &str = "v1#snap";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotId {
    /// A copy kept on the node that holds the source volume, beside its volumes.
    Local { node: String, key: VolumeKey },
}

impl SnapshotId {
    /// The node that holds the snapshot.
    pub fn node(&self) -> &str {
        match self {
            Self::Local { node, .. } => node,
        }
    }

    pub fn key(&self) -> &VolumeKey {
        match self {
            Self::Local { key, .. } => key,
        }
    }

    pub fn parse(raw: &str) -> Result<Self, VolumeIdError> {
        let Some(rest) = raw.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('#')) else {
            return Err(VolumeIdError::Foreign);
        };
        let fields: Vec<&str> = rest.split('#').collect();
        match fields.as_slice() {
            ["local", node, key] => {
                let node = decode("node", node)?;
                if node.is_empty() {
                    return Err(bad("node", "empty"));
                }
                let key = VolumeKey::parse(&decode("key", key)?)
                    .ok_or_else(|| bad("key", "not a snapshot key"))?;
                Ok(Self::Local { node, key })
            }
            [backend, ..] => Err(bad("backend", format!("unknown backend {backend:?}"))),
            [] => Err(VolumeIdError::Foreign),
        }
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local { node, key } => {
                write!(
                    f,
                    "{PREFIX}#local#{}#{}",
                    encode(node),
                    encode(key.as_str())
                )
            }
        }
    }
}

/// A snapshot as reported to the CO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: SnapshotId,
    /// The ID of the volume it was taken of.
    pub source_volume: String,
    /// The source's size when it was taken: a restore must be at least this large.
    pub size_bytes: i64,
    /// When CreateSnapshot first saw it (seconds and nanoseconds since the epoch).
    pub created: (i64, i32),
    /// Whether the copy is complete and on disk; until then the snapshot cannot be restored.
    pub ready: bool,
}

/// A validated CreateSnapshot request.
#[derive(Debug, Clone)]
pub struct SnapshotSpec {
    pub name: String,
    pub source_volume: String,
    pub parameters: HashMap<String, String>,
}

/// Where a new volume's content comes from (CreateVolume's `volume_content_source`); kept in
/// the volume's record as given, since a repeated create must name the same source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentSource {
    Snapshot(String),
    Volume(String),
}

/// ListSnapshots' filters: both optional, both exact.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    pub snapshot_id: Option<String>,
    pub source_volume: Option<String>,
}

/// One page of ListSnapshots.
pub struct SnapshotPage {
    pub snapshots: Vec<Snapshot>,
    pub next_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_others_are_foreign_or_malformed() {
        let id = SnapshotId::Local {
            node: "node #1".into(),
            key: VolumeKey::from_name("snap-1").unwrap(),
        };
        let raw = id.to_string();
        assert_eq!(SnapshotId::parse(&raw).unwrap(), id);
        assert_eq!(
            SnapshotId::parse("v1#local#n#k"),
            Err(VolumeIdError::Foreign)
        );
        assert_eq!(SnapshotId::parse("snap"), Err(VolumeIdError::Foreign));
        for bad in [
            "v1#snap#local#n",
            "v1#snap#local##k",
            "v1#snap#local#n#..",
            "v1#snap#local#n#a%2Fb",
            "v1#snap#nfs#x",
            "v1#snap#",
        ] {
            assert!(
                !matches!(SnapshotId::parse(bad), Ok(_) | Err(VolumeIdError::Foreign)),
                "{bad}"
            );
        }
    }
}
