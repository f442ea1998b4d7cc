//! Sizes of local volumes: which get a project quota, the quota's limit through create,
//! expand, delete and replay, and how many bytes can still be promised (GetCapacity).
//!
//! Order of steps, so that a crash anywhere leaves what the replay completes: a create
//! reserves its project ID in memory, commits the record that names it to the journal, then
//! makes the directory, sets the limit and assigns the project (the replay redoes the last
//! three from the record). An expansion commits the record with its new size before it raises
//! the limit. A delete clears the limit after the directory is gone and before the record
//! goes, so a retried or replayed delete still knows which project to clear.

use crate::domain::error::ControllerError;
use crate::domain::params::QuotaPolicy;
use crate::domain::volume_id::VolumeKey;
use crate::os::quota::{ProjectId, Support};

use super::journal::Entry;
use super::projects::{Refused, FIRST, LAST};
use super::store::{record_name, Store};
use super::{LocalRecord, VOLUMES};
use crate::domain::volume::Expanded;

fn bytes(size: i64) -> u64 {
    u64::try_from(size).unwrap_or(0)
}

impl Store {
    /// What the root's filesystem does with project quotas; logged, since it decides what
    /// `quota: auto` does on this node.
    pub(super) fn detect_support(&self) -> Support {
        match self.quota.quotas.support(&self.root) {
            Ok(Support::Enforced) => {
                tracing::info!(root = %self.root.display(), "project quotas enforced: volume sizes are limits");
                Support::Enforced
            }
            Ok(support) => {
                tracing::warn!(
                    root = %self.root.display(),
                    ?support,
                    remedy = support.remedy(),
                    "volume sizes are not enforced on this node"
                );
                support
            }
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e, "cannot tell whether project quotas work here; sizes are not enforced");
                Support::None
            }
        }
    }

    /// Hold the project IDs the records name, with their limits: what the quotas promise;
    /// and measure what the volumes hold (see [`Store::measure_room`]).
    pub(super) fn hold_projects(&self) -> Result<(), ControllerError> {
        for (_, record) in self.all_records()? {
            if let Some(project) = record.project() {
                self.projects.hold(project, bytes(record.size()));
            }
        }
        self.measure_room(true)?;
        Ok(())
    }

    /// The project a new volume gets under `policy`, reserved with its size; `None` for no
    /// quota.
    pub(super) fn reserve_project(
        &self,
        policy: QuotaPolicy,
        size: i64,
        volume: &str,
    ) -> Result<Option<ProjectId>, ControllerError> {
        match (policy, self.support) {
            (QuotaPolicy::Off, _) => return Ok(None),
            (_, Support::Enforced) => {}
            (QuotaPolicy::Auto, _) => return Ok(None),
            (QuotaPolicy::Required, support) => {
                return Err(ControllerError::QuotaUnavailable {
                    root: self.root.clone(),
                    remedy: support.remedy(),
                })
            }
        }
        let room = self.room_check()?;
        let quotas = &self.quota.quotas;
        let unused = |id: ProjectId| {
            quotas
                .usage(&self.root, Some(id))
                .map(|u| u.is_unused())
                .map_err(ControllerError::quota("read project usage", volume))
        };
        match self.projects.reserve(bytes(size), room, unused) {
            Ok(id) => Ok(Some(id)),
            Err(Refused::Check(e)) => Err(e),
            Err(Refused::Exhausted) => Err(ControllerError::NoProjectIds {
                volume: volume.to_string(),
                first: FIRST,
                last: LAST,
            }),
        }
    }

    /// Give the volume's directory its project and the project its limit (a create, a replay
    /// of one, or an expansion). Idempotent. Skipped where the filesystem has no quotas (it
    /// lost them since the volume was made): the volume is served, unlimited, and start-up
    /// said why in the log.
    pub(super) fn apply_quota(
        &self,
        key: &VolumeKey,
        record: &LocalRecord,
        volume: &str,
    ) -> Result<(), ControllerError> {
        let Some(project) = record.project() else {
            return Ok(());
        };
        if self.support == Support::None {
            return Ok(());
        }
        let quotas = &self.quota.quotas;
        // The limit first: the directory is never in the project without it.
        quotas
            .set_limit(&self.root, project, bytes(record.size()))
            .map_err(ControllerError::quota("set quota limit", volume))?;
        quotas
            .assign(&self.root.join(VOLUMES), key.rel(), project)
            .map_err(ControllerError::quota("assign project", volume))?;
        self.projects.hold(project, bytes(record.size()));
        Ok(())
    }

    pub(super) fn clear_quota(
        &self,
        project: ProjectId,
        volume: &str,
    ) -> Result<(), ControllerError> {
        if self.support == Support::None {
            return Ok(());
        }
        self.quota
            .quotas
            .set_limit(&self.root, project, 0)
            .map_err(ControllerError::quota("clear quota limit", volume))
    }

    /// Bytes a new volume may still be promised (see [`Room`]).
    pub(super) fn room(&self) -> Result<u64, ControllerError> {
        Ok(self.measure_room(true)?.left(self.projects.promised()))
    }

    /// The room as the filesystem shows it now. With `count_volumes`, what the volumes hold
    /// is summed (one quota call per volume) to tell it from the filesystem's metadata and
    /// other tools' projects, and remembered; creates use the last such figure, so that their
    /// cost does not grow with the number of volumes. GetCapacity, which the provisioner asks
    /// every minute or so, and start-up count.
    fn measure_room(&self, count_volumes: bool) -> Result<Room, ControllerError> {
        let fs = self.statfs_root()?;
        // Files in no project: anything outside the volumes, and volumes made without a
        // quota. One call; where there is no quota to ask, everything used counts.
        let outside = match self.support {
            Support::None => fs.used_bytes,
            _ => self
                .quota
                .quotas
                .usage(&self.root, None)
                .map_or(fs.used_bytes, |u| u.bytes),
        };
        let held = fs.used_bytes.saturating_sub(outside);
        if count_volumes && self.support != Support::None {
            let volumes: u64 = self
                .projects
                .ids()
                .into_iter()
                .filter_map(|id| self.quota.quotas.usage(&self.root, Some(id)).ok())
                .map(|u| u.bytes)
                .sum();
            self.unusable.store(
                held.saturating_sub(volumes),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let unusable = self.unusable.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Room {
            // What volumes may use: free now (to whoever pvdir's pods run as) plus what they
            // hold already. Files outside volumes, the filesystem's own metadata, other
            // tools' projects and the blocks ext4 keeps for root are never room.
            usable: (fs.available_bytes + held).saturating_sub(unusable),
            available: fs.available_bytes,
            overcommit: self.quota.overcommit,
        })
    }

    /// A check for [`Projects::reserve`](super::projects::Projects::reserve) and
    /// [`Projects::grow`](super::projects::Projects::grow): refuse a promise beyond the
    /// room. The figures are read before the lock is taken; the promises are counted under
    /// it, so side-by-side creates cannot both take the last bytes.
    fn room_check(
        &self,
    ) -> Result<impl FnOnce(u64, u64) -> Result<(), ControllerError>, ControllerError> {
        let room = self.measure_room(false)?;
        Ok(move |promised: u64, more: u64| {
            let left = room.left(promised);
            match more <= left {
                true => Ok(()),
                false => Err(ControllerError::NoRoom {
                    requested: more,
                    available: left,
                }),
            }
        })
    }

    fn statfs_root(&self) -> Result<crate::os::FsStats, ControllerError> {
        let op = crate::os::FsOp::Statfs {
            path: self.root.clone(),
        };
        match self.fs(op, "statfs local root", "*")? {
            crate::os::FsReply::Stats(s) => Ok(s),
            other => Err(ControllerError::os("statfs local root", "*")(
                crate::os::OsError::unexpected_reply("statfs", &other),
            )),
        }
    }

    /// Raise the volume's size to `size`: commit the new record, then raise the limit.
    pub(super) fn expand(
        &self,
        key: &VolumeKey,
        raw: &str,
        size: i64,
    ) -> Result<Expanded, ControllerError> {
        let journal = self.journal()?;
        let mut record = self
            .read_record(key)?
            .ok_or_else(|| ControllerError::NotFound {
                id: raw.to_string(),
            })?;
        if size <= record.size() {
            // The spec: a volume already at or above the size asked for is a success.
            return Ok(Expanded {
                capacity_bytes: record.size(),
                on_node: false,
            });
        }
        let project = record.project().filter(|_| self.support != Support::None);
        if let Some(project) = project {
            let room = self.room_check()?;
            self.projects.grow(project, bytes(size), room)?;
        }
        let old = record.size();
        record.expanded_bytes = Some(size);
        let entry = Entry::Create {
            key: key.as_str().to_string(),
            record: record.clone(),
        };
        if let Err(e) = journal.commit(&entry, raw) {
            // Not promised after all.
            if let Some(project) = project {
                self.projects.hold(project, bytes(old));
            }
            return Err(e);
        }
        self.records()
            .store(&record_name(key), &record, false, raw)?;
        self.apply_quota(key, &record, raw)?;
        Ok(Expanded {
            capacity_bytes: size,
            on_node: false,
        })
    }
}

/// The local root's filesystem, as room for promises.
struct Room {
    /// Bytes volumes may use in all: those free and those volumes hold now.
    usable: u64,
    /// Free now.
    available: u64,
    overcommit: f64,
}

impl Room {
    /// What can still be promised when `promised` bytes are: what volumes may use, times the
    /// overcommit ratio, less the promises; and never more than is free now, since a new
    /// volume's bytes must exist to be written.
    fn left(&self, promised: u64) -> u64 {
        let promisable = self.usable as f64 * self.overcommit;
        (promisable as u64)
            .saturating_sub(promised)
            .min(self.available)
    }
}

#[cfg(test)]
mod tests {
    use super::Room;

    #[test]
    fn room_is_the_disk_less_outside_files_and_promises_and_at_most_what_is_free() {
        // A 100-byte disk: 5 outside volumes, a volume promised 50 has written 40, 55 free.
        let room = |overcommit| Room {
            usable: 95,
            available: 55,
            overcommit,
        };
        // 10 more of the volume's may still come.
        assert_eq!(room(1.0).left(50), 45);
        assert_eq!(room(1.0).left(0), 55);
        assert_eq!(room(1.0).left(200), 0);
        // Overcommit promises beyond the disk, never beyond what is free.
        assert_eq!(room(2.0).left(100), 55);
        assert_eq!(room(2.0).left(180), 10);
    }
}
