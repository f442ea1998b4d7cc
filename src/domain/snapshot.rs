//! Snapshots and content sources: the IDs, the validated requests, what is reported, and the
//! record both backends keep of a snapshot.
//!
//! A snapshot ID is self-describing like a volume ID, `v1#snap#local#<node>#<key>` or
//! `v1#snap#nfs#<server>#<share>#<mount options>#<key>`, so DeleteSnapshot and a restore find
//! the snapshot from the ID alone (its record on the node's disk or on the export), with no
//! memory of the call that made it. The key is made from the snapshot's name by the same rules
//! as a local volume's directory name (see [`VolumeKey`]).

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::ControllerError;
use super::volume_id::{bad, decode, encode, NfsExport, VolumeId, VolumeIdError, VolumeKey};

const PREFIX: &str = "v1#snap";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotId {
    /// A copy kept on the node that holds the source volume, beside its volumes.
    Local { node: String, key: VolumeKey },
    /// A copy kept on the source volume's export, in pvdir's own directory there.
    Nfs { export: NfsExport, key: VolumeKey },
}

impl SnapshotId {
    pub fn key(&self) -> &VolumeKey {
        match self {
            Self::Local { key, .. } | Self::Nfs { key, .. } => key,
        }
    }

    pub fn parse(raw: &str) -> Result<Self, VolumeIdError> {
        let Some(rest) = raw.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('#')) else {
            return Err(VolumeIdError::Foreign);
        };
        let fields: Vec<&str> = rest.split('#').collect();
        let key = |k: &str| {
            VolumeKey::parse(&decode("key", k)?).ok_or_else(|| bad("key", "not a snapshot key"))
        };
        match fields.as_slice() {
            ["local", node, k] => {
                let node = decode("node", node)?;
                if node.is_empty() {
                    return Err(bad("node", "empty"));
                }
                Ok(Self::Local { node, key: key(k)? })
            }
            ["nfs", server, share, options, k] => Ok(Self::Nfs {
                export: NfsExport::parse_fields(server, share, options)?,
                key: key(k)?,
            }),
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
            Self::Nfs { export, key } => {
                write!(
                    f,
                    "{PREFIX}#nfs#{}#{}",
                    export.fields(),
                    encode(key.as_str())
                )
            }
        }
    }
}

/// What a CreateSnapshot names: its source volume, parsed (an ID pvdir never made is
/// NOT_FOUND, a malformed one INVALID_ARGUMENT), and the snapshot's key, made from its name.
/// Each backend then takes only its own kind of volume.
pub fn snapshot_parts(
    name: &str,
    source_volume: &str,
) -> Result<(VolumeId, VolumeKey), ControllerError> {
    let source = match VolumeId::parse(source_volume) {
        Ok(id) => id,
        Err(VolumeIdError::Foreign) => {
            return Err(ControllerError::NotFound {
                id: source_volume.to_string(),
            })
        }
        Err(source) => {
            return Err(ControllerError::MalformedId {
                id: source_volume.to_string(),
                source,
            })
        }
    };
    let key = VolumeKey::from_name(name).ok_or_else(|| ControllerError::UnusableName {
        name: name.to_string(),
    })?;
    Ok((source, key))
}

/// A snapshot's record, kept beside its copy by either backend. Written (and synced) before
/// the copy starts; `ready` only once the copy is complete and synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    /// The source volume's ID, in canonical form.
    pub source_volume: String,
    pub size_bytes: i64,
    created_secs: i64,
    created_nanos: i32,
    pub ready: bool,
    /// The group snapshot this one was taken for, by its ID (see `domain::group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl SnapshotRecord {
    /// A record of a snapshot being made now of `source_volume`, which holds `size_bytes`.
    pub fn started(name: &str, source_volume: &str, size_bytes: i64) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            name: name.to_string(),
            source_volume: source_volume.to_string(),
            size_bytes,
            created_secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            created_nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
            ready: false,
            group: None,
        }
    }

    /// The error for a CreateSnapshot of `name` from `source_volume` (as a member of `group`,
    /// if one) that this record, of the same key, does not match; `None` when it does.
    pub fn conflict(
        &self,
        name: &str,
        source_volume: &str,
        group: Option<&str>,
    ) -> Option<ControllerError> {
        let same = self.name == name
            && self.source_volume == source_volume
            && self.group.as_deref() == group;
        (!same).then(|| ControllerError::NameConflict {
            name: name.to_string(),
            difference: format!(
                "snapshot {:?} of {:?}; requested of {source_volume:?}",
                self.name, self.source_volume
            ),
        })
    }

    pub fn snapshot(&self, id: SnapshotId) -> Snapshot {
        Snapshot {
            id,
            source_volume: self.source_volume.clone(),
            size_bytes: self.size_bytes,
            created: (self.created_secs, self.created_nanos),
            ready: self.ready,
            group: self.group.clone(),
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
    /// The ID of the group snapshot it is a member of.
    pub group: Option<String>,
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
        let nfs = SnapshotId::Nfs {
            export: NfsExport {
                server: "10.0.0.1".into(),
                share: "/export".into(),
                mount_options: vec!["nfsvers=4.2".into(), "hard".into()],
            },
            key: VolumeKey::from_name("snapshot-1").unwrap(),
        };
        let raw = nfs.to_string();
        assert_eq!(
            raw,
            "v1#snap#nfs#10.0.0.1#/export#nfsvers=4.2,hard#snapshot-1"
        );
        assert_eq!(SnapshotId::parse(&raw).unwrap(), nfs);
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
            "v1#snap#nfs#-oops#/export##k",
            "v1#snap#nfs#10.0.0.1#export##k",
            "v1#snap#nfs#10.0.0.1#/export#k",
            "v1#snap#nfs#10.0.0.1#/export##..",
            "v1#snap#",
        ] {
            assert!(
                !matches!(SnapshotId::parse(bad), Ok(_) | Err(VolumeIdError::Foreign)),
                "{bad}"
            );
        }
    }
}
