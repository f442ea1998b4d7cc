//! Group snapshots through the controller (see `domain::group`): validation first, then the
//! guards of the group, of every source volume and of every member snapshot, held until the
//! backend's work ends. Only the local backend has them; its controller serves the group's
//! volumes only when all are on its own node.

use std::collections::BTreeSet;

use super::{ours, Controller};
use crate::domain::backend::Backend;
use crate::domain::error::ControllerError;
use crate::domain::group::{member_key, GroupId, GroupSnapshot, GroupSpec};
use crate::domain::guard::InFlightGuard;
use crate::domain::local::LocalBackend;
use crate::domain::params::{from_map, GroupSnapshotParams};
use crate::domain::snapshot::SnapshotId;
use crate::domain::volume_id::{LocalId, VolumeId, VolumeIdError, VolumeKey};

impl Controller {
    /// Whether the GroupController service is served: on the local backend.
    pub fn groups(&self) -> bool {
        matches!(&*self.backend, Backend::Local(_))
    }

    fn local(&self) -> Result<&LocalBackend, ControllerError> {
        match &*self.backend {
            Backend::Local(b) => Ok(b),
            Backend::Nfs(_) => Err(ControllerError::Unsupported {
                what: "group snapshots on the NFS backend",
            }),
        }
    }

    /// The guards of group `key` and of its `count` members on `node`.
    fn claim_group(
        &self,
        node: &str,
        key: &VolumeKey,
        name: &str,
        count: usize,
    ) -> Result<Vec<InFlightGuard>, ControllerError> {
        let group = GroupId::Local {
            node: node.to_string(),
            key: key.clone(),
        };
        let mut guards = vec![self.claim(&group.to_string())?];
        for index in 0..count {
            let member = SnapshotId::Local {
                node: node.to_string(),
                key: member_key(name, index)?,
            };
            guards.push(self.claim(&member.to_string())?);
        }
        Ok(guards)
    }

    /// Make, or continue making, a group snapshot; `ready: false` while a member's copy is
    /// unfinished (the snapshotter retries).
    pub async fn create_group(&self, spec: GroupSpec) -> Result<GroupSnapshot, ControllerError> {
        from_map::<GroupSnapshotParams>(&spec.parameters)?;
        let b = self.local()?;
        let key =
            VolumeKey::from_name(&spec.name).ok_or_else(|| ControllerError::UnusableName {
                name: spec.name.clone(),
            })?;
        // Canonical and sorted, so that a retry (whatever the order or spelling of the IDs)
        // finds the same member for each source.
        let mut sources: Vec<(String, LocalId)> = Vec::new();
        for raw in &spec.sources {
            let not_here = || ControllerError::NotFound { id: raw.clone() };
            match VolumeId::parse(raw) {
                Ok(VolumeId::Local(id)) if id.node == b.node_id() => {
                    sources.push((VolumeId::Local(id.clone()).to_string(), id))
                }
                // Another node's volume, an NFS one, or one this driver never made.
                Ok(_) | Err(VolumeIdError::Foreign) => return Err(not_here()),
                Err(source) => {
                    return Err(ControllerError::MalformedId {
                        id: raw.clone(),
                        source,
                    })
                }
            }
        }
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        sources.dedup_by(|a, b| a.0 == b.0);
        let mut guards = self.claim_group(b.node_id(), &key, &spec.name, sources.len())?;
        for (raw, _) in &sources {
            guards.push(self.claim(raw)?);
        }
        let sources = sources.into_iter().map(|(_, id)| id).collect();
        b.create_group(&spec.name, &key, sources).await
    }

    /// The group `raw` names, checked against the member IDs the CO gave (if any); `None`
    /// for an ID this driver never made or a group that does not exist.
    async fn find_group(
        &self,
        raw: &str,
        given: &[String],
    ) -> Result<Option<(String, VolumeKey, GroupSnapshot)>, ControllerError> {
        let b = self.local()?;
        let Some(GroupId::Local { node, key }) = ours(raw, GroupId::parse)? else {
            return Ok(None);
        };
        let Some(group) = b.group(&node, &key).await? else {
            return Ok(None);
        };
        let members: BTreeSet<String> = group.members.iter().map(|m| m.id.to_string()).collect();
        let asked: BTreeSet<String> = given
            .iter()
            .map(|g| SnapshotId::parse(g).map_or_else(|_| g.clone(), |id| id.to_string()))
            .collect();
        if !given.is_empty() && asked != members {
            return Err(ControllerError::GroupMembersMismatch {
                id: raw.to_string(),
                given: given.to_vec(),
            });
        }
        Ok(Some((node, key, group)))
    }

    /// NOT_FOUND for a group that does not exist (or is not pvdir's).
    pub async fn get_group(
        &self,
        raw: &str,
        given: &[String],
    ) -> Result<GroupSnapshot, ControllerError> {
        let found = match self.find_group(raw, given).await {
            // A malformed ID names no group either.
            Err(ControllerError::MalformedId { .. }) => None,
            other => other?,
        };
        found
            .map(|(_, _, group)| group)
            .ok_or_else(|| ControllerError::NotFound {
                id: raw.to_string(),
            })
    }

    /// Deleting a group that does not exist succeeds, as for snapshots. Its members go with
    /// it; volumes restored from them stay.
    pub async fn delete_group(&self, raw: &str, given: &[String]) -> Result<(), ControllerError> {
        let Some((node, key, group)) = self.find_group(raw, given).await? else {
            return Ok(());
        };
        let b = self.local()?;
        let _group = self.claim(&group.id.to_string())?;
        let _members = group
            .members
            .iter()
            .map(|m| self.claim(&m.id.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        b.delete_group(&node, &key, raw).await.map(drop)
    }
}
