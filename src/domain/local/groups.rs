//! Local group snapshots (see `domain::group` for what a group is).
//!
//! Layout: `<root>/groups/<key>.json` is the group's record, beside the members' own records
//! in `<root>/snapmeta/`. A member's record names its group, and only such members are ever
//! deleted with the group: a snapshot that happens to have a member's key but was made by a
//! plain CreateSnapshot is never touched.

use std::time::{Duration, Instant};

use super::store::{record_name, Store};
use crate::domain::error::ControllerError;
use crate::domain::group::{member_key, member_name, GroupId, GroupRecord, GroupSnapshot};
use crate::domain::snapshot::Snapshot;
use crate::domain::volume_id::{LocalId, VolumeId, VolumeKey};

pub(super) const GROUPS: &str = "groups";

impl Store {
    fn group_id(&self, key: &VolumeKey) -> GroupId {
        GroupId::Local {
            node: self.node_id.clone(),
            key: key.clone(),
        }
    }

    fn read_group(&self, key: &VolumeKey) -> Result<Option<GroupRecord>, ControllerError> {
        self.group_records().load(&record_name(key), key.as_str())
    }

    /// The members of `record` that still exist, in source order.
    fn members(
        &self,
        record: &GroupRecord,
        id: &GroupId,
    ) -> Result<Vec<(VolumeKey, Snapshot)>, ControllerError> {
        let raw = id.to_string();
        let mut found = Vec::new();
        for index in 0..record.sources.len() {
            let key = member_key(&record.name, index)?;
            if let Some(r) = self.read_snapshot(&key)? {
                if r.group.as_deref() == Some(raw.as_str()) {
                    found.push((key.clone(), self.snapshot_of(&key, &r)));
                }
            }
        }
        Ok(found)
    }

    /// Make (or continue making) group `key` of `sources` (sorted by canonical ID): the record
    /// first, then each member in turn within one copy budget for the whole call.
    pub(super) fn create_group(
        &self,
        name: &str,
        key: &VolumeKey,
        sources: &[LocalId],
        budget: Duration,
    ) -> Result<GroupSnapshot, ControllerError> {
        let started = Instant::now();
        let id = self.group_id(key);
        let raw: Vec<String> = sources
            .iter()
            .map(|s| VolumeId::Local(s.clone()).to_string())
            .collect();
        let mut record = match self.read_group(key)? {
            Some(r) => match r.conflict(name, &raw) {
                Some(conflict) => return Err(conflict),
                None => r,
            },
            None => {
                // Every source must be a complete volume before anything is written.
                for (source, raw) in sources.iter().zip(&raw) {
                    let complete = self.read_record(&source.key)?.filter(|v| !v.populating);
                    if complete.is_none() {
                        return Err(ControllerError::NotFound { id: raw.clone() });
                    }
                }
                let r = GroupRecord::started(name, raw);
                // Synced before any copy: a crash leaves a record the retry continues.
                if !self
                    .group_records()
                    .store(&record_name(key), &r, true, name)?
                {
                    return Err(ControllerError::InFlight {
                        key: format!("group snapshot {name}"),
                    });
                }
                r
            }
        };
        let group = id.to_string();
        let mut members = Vec::with_capacity(sources.len());
        for (index, source) in sources.iter().enumerate() {
            let member = member_name(name, index);
            let left = budget.saturating_sub(started.elapsed());
            match self.create_snapshot(
                &member,
                &member_key(name, index)?,
                source,
                left,
                Some(&group),
            ) {
                Ok(snapshot) => members.push(snapshot),
                Err(e) => {
                    // Never reported as made, and the snapshotter takes a final error to mean
                    // none exists: leave nothing behind (a retry starts afresh).
                    if let Err(undo) = self.delete_group(key, name) {
                        tracing::warn!(group.name = name, error = %undo, member = %e,
                            "could not remove a group snapshot whose member failed");
                    }
                    return Err(e);
                }
            }
        }
        if !record.ready && members.iter().all(|m| m.ready) {
            record.ready = true;
            self.group_records()
                .store(&record_name(key), &record, false, name)?;
        }
        Ok(record.group(id, members))
    }

    /// The group, from its record and its members' records; `None` when there is none.
    pub(super) fn group(&self, key: &VolumeKey) -> Result<Option<GroupSnapshot>, ControllerError> {
        let Some(record) = self.read_group(key)? else {
            return Ok(None);
        };
        let id = self.group_id(key);
        let members = self.members(&record, &id)?;
        Ok(Some(
            record.group(id, members.into_iter().map(|(_, s)| s).collect()),
        ))
    }

    /// The members first, then the record: a retry after a crash still finds the record.
    /// `false` when there was no such group.
    pub(super) fn delete_group(&self, key: &VolumeKey, raw: &str) -> Result<bool, ControllerError> {
        let Some(record) = self.read_group(key)? else {
            return Ok(false);
        };
        for (member, _) in self.members(&record, &self.group_id(key))? {
            self.delete_snapshot(&member, raw)?;
        }
        self.group_records().remove(&record_name(key), raw)?;
        Ok(true)
    }
}

impl super::LocalBackend {
    /// Group `key` of `sources`, volumes of this node sorted by canonical ID (see
    /// `Controller::create_group`).
    pub async fn create_group(
        &self,
        name: &str,
        key: &VolumeKey,
        sources: Vec<LocalId>,
    ) -> Result<GroupSnapshot, ControllerError> {
        let (name, key, budget) = (name.to_string(), key.clone(), self.copy_budget);
        self.run("create group snapshot", &name.clone(), move |s| {
            s.create_group(&name, &key, &sources, budget)
        })
        .await
    }

    /// `None` for another node's group or one that does not exist.
    pub async fn group(
        &self,
        node: &str,
        key: &VolumeKey,
    ) -> Result<Option<GroupSnapshot>, ControllerError> {
        if node != self.node_id() {
            return Ok(None);
        }
        let (key, raw) = (key.clone(), key.as_str().to_string());
        self.run("read group snapshot", &raw, move |s| s.group(&key))
            .await
    }

    /// Another node's group is FAILED_PRECONDITION, as another node's snapshot is.
    pub async fn delete_group(
        &self,
        node: &str,
        key: &VolumeKey,
        raw: &str,
    ) -> Result<bool, ControllerError> {
        if node != self.node_id() {
            return Err(ControllerError::WrongNode {
                id: raw.to_string(),
                node: node.to_string(),
            });
        }
        let (key, owned) = (key.clone(), raw.to_string());
        self.run("delete group snapshot", raw, move |s| {
            s.delete_group(&key, &owned)
        })
        .await
    }
}
