//! Per-volume state records: small JSON files in pvdir's own state directory (`meta/` on the
//! local root, `.pvdir/` on an export), written atomically through the OS layer. They are the
//! only state pvdir keeps, so a restarted driver knows everything it knew before.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ControllerError;
use crate::os::safe_fs::{SwapOutcome, Swept, Writers};
use crate::os::{FsOp, FsReply, LocalDisk, Medium, Os, OsError, RelPath};

/// What [`RecordDir::claim`] found.
pub enum Claim<T> {
    /// There was no record; ours is now stored.
    Fresh,
    /// A record exists (ours from an earlier call, or someone else's); it is returned.
    Existing(T),
}

impl<T: PartialEq> Claim<T> {
    /// `Fresh` also when the existing record equals `wanted` (an idempotent retry).
    pub fn filter_same(self, wanted: &T) -> Claim<T> {
        match self {
            Claim::Existing(e) if e == *wanted => Claim::Fresh,
            other => other,
        }
    }
}

/// File names of records in a state directory; other entries (temporary files of an
/// interrupted write) are not records.
pub const RECORD_SUFFIX: &str = ".json";

/// The file name of the record of `key` (a volume's on a node, a snapshot's anywhere).
pub fn key_record_name(key: &crate::domain::volume_id::VolumeKey) -> String {
    format!("{}{RECORD_SUFFIX}", key.as_str())
}

/// One state directory, `base/dir`, reached without following symlinks: the operations on
/// it and what their replies mean, whoever runs them ([`RecordDir`] through [`Os`],
/// [`DiskRecords`] on a blocking thread).
#[derive(Clone)]
pub struct RecordSpec {
    base: PathBuf,
    dir: RelPath,
    /// Whether each write is synced before it returns; false where a journal makes the
    /// caller's work durable as a whole.
    durable: bool,
}

impl RecordSpec {
    pub fn new(base: PathBuf, dir: RelPath) -> Self {
        Self {
            base,
            dir,
            durable: true,
        }
    }

    /// Writes that are not synced one by one: the caller commits its work to a journal.
    pub fn journaled(self) -> Self {
        Self {
            durable: false,
            ..self
        }
    }

    pub fn path(&self) -> PathBuf {
        self.base.join(self.dir.as_str())
    }

    fn decode<T: DeserializeOwned>(&self, name: &str, text: &str) -> Result<T, ControllerError> {
        serde_json::from_str(text).map_err(|e| ControllerError::CorruptRecord {
            path: self.path().join(name),
            reason: e.to_string(),
        })
    }

    fn read_op(&self, names: &[String]) -> FsOp {
        FsOp::ReadRecords {
            base: self.base.clone(),
            dir: self.dir.clone(),
            names: names.to_vec(),
        }
    }

    fn read_reply<T: DeserializeOwned>(
        &self,
        names: &[String],
        reply: Result<FsReply, OsError>,
        volume: &str,
    ) -> Result<Vec<Option<T>>, ControllerError> {
        let step = "read volume record";
        match reply.map_err(ControllerError::os(step, volume))? {
            FsReply::Records(found) if found.len() == names.len() => names
                .iter()
                .zip(found)
                .map(|(name, bytes)| bytes.map(|b| self.decode(name, &b)).transpose())
                .collect(),
            other => Err(ControllerError::os(step, volume)(
                OsError::unexpected_reply("read-records", &other),
            )),
        }
    }

    fn write_op<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        exclusive: bool,
    ) -> Result<FsOp, ControllerError> {
        let contents = serde_json::to_vec(value).map_err(|e| ControllerError::CorruptRecord {
            path: self.path().join(name),
            reason: e.to_string(),
        })?;
        Ok(FsOp::WriteRecord {
            base: self.base.clone(),
            dir: self.dir.clone(),
            name: name.to_string(),
            contents,
            exclusive,
            durable: self.durable,
        })
    }

    fn write_reply(reply: Result<FsReply, OsError>, volume: &str) -> Result<bool, ControllerError> {
        let step = "write volume record";
        match reply.map_err(ControllerError::os(step, volume))? {
            FsReply::Written(stored) => Ok(stored),
            other => Err(ControllerError::os(step, volume)(
                OsError::unexpected_reply("write-record", &other),
            )),
        }
    }

    fn remove_op(&self, name: &str) -> FsOp {
        FsOp::RemoveRecord {
            base: self.base.clone(),
            dir: self.dir.clone(),
            name: name.to_string(),
        }
    }

    fn remove_reply(reply: Result<FsReply, OsError>, volume: &str) -> Result<(), ControllerError> {
        reply.map_err(ControllerError::os("remove volume record", volume))?;
        Ok(())
    }

    fn list_op(&self) -> FsOp {
        FsOp::ListRecords {
            base: self.base.clone(),
            dir: self.dir.clone(),
        }
    }

    fn sweep_op(&self, writers: Writers) -> FsOp {
        FsOp::SweepScratch {
            base: self.base.clone(),
            dir: self.dir.clone(),
            writers,
        }
    }

    fn sweep_reply(reply: Result<FsReply, OsError>) -> Result<Swept, ControllerError> {
        let step = "sweep scratch files";
        match reply.map_err(ControllerError::os(step, "*"))? {
            FsReply::Swept(swept) => Ok(swept),
            other => Err(ControllerError::os(step, "*")(OsError::unexpected_reply(
                "sweep-scratch",
                &other,
            ))),
        }
    }

    fn list_reply(reply: Result<FsReply, OsError>) -> Result<Vec<String>, ControllerError> {
        let step = "list volume records";
        match reply.map_err(ControllerError::os(step, "*"))? {
            FsReply::Names(names) => Ok(names),
            other => Err(ControllerError::os(step, "*")(OsError::unexpected_reply(
                "list-records",
                &other,
            ))),
        }
    }
}

/// A state directory worked on through [`Os`], on the medium it lives on.
pub struct RecordDir {
    os: Arc<dyn Os>,
    medium: Medium,
    spec: RecordSpec,
    /// Set when a write or swap failed: its writer (a helper killed at its time bound, or
    /// one that could not clean up on a failing server) may have left a scratch file.
    scratch_due: Option<Arc<AtomicBool>>,
}

impl RecordDir {
    pub fn new(os: Arc<dyn Os>, medium: Medium, base: PathBuf, dir: RelPath) -> Self {
        Self {
            os,
            medium,
            spec: RecordSpec::new(base, dir),
            scratch_due: None,
        }
    }

    /// Raise `flag` whenever a write or swap here fails (see [`RecordDir::sweep_scratch`]).
    pub fn flagging_scratch(self, flag: Arc<AtomicBool>) -> Self {
        Self {
            scratch_due: Some(flag),
            ..self
        }
    }

    pub fn path(&self) -> PathBuf {
        self.spec.path()
    }

    async fn run(&self, op: FsOp) -> Result<FsReply, OsError> {
        let writes = matches!(op, FsOp::WriteRecord { .. } | FsOp::SwapRecord { .. });
        let result = self.os.fs(op, self.medium).await;
        if let (true, Err(_), Some(flag)) = (writes, &result, &self.scratch_due) {
            flag.store(true, Ordering::Relaxed);
        }
        result
    }

    /// The records `names`, `None` for each that does not exist.
    pub async fn load_many<T: DeserializeOwned>(
        &self,
        names: &[String],
        volume: &str,
    ) -> Result<Vec<Option<T>>, ControllerError> {
        let reply = self.run(self.spec.read_op(names)).await;
        self.spec.read_reply(names, reply, volume)
    }

    pub async fn load<T: DeserializeOwned>(
        &self,
        name: &str,
        volume: &str,
    ) -> Result<Option<T>, ControllerError> {
        let mut found = self.load_many(&[name.to_string()], volume).await?;
        Ok(found.pop().flatten())
    }

    /// Write `name`. With `exclusive`, an existing record is kept and `Ok(false)` returned.
    pub async fn store<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        exclusive: bool,
        volume: &str,
    ) -> Result<bool, ControllerError> {
        let op = self.spec.write_op(name, value, exclusive)?;
        RecordSpec::write_reply(self.run(op).await, volume)
    }

    /// Store `wanted` as `name` unless a record is there already. Exclusive, so of two
    /// racing creators exactly one stores and the other sees its record.
    pub async fn claim<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        wanted: &T,
        volume: &str,
    ) -> Result<Claim<T>, ControllerError> {
        // A record can appear between the read and the exclusive write, or vanish again
        // (a concurrent delete); one more round settles the first case.
        for _ in 0..2 {
            match self.load::<T>(name, volume).await? {
                Some(existing) => return Ok(Claim::Existing(existing)),
                None if self.store(name, wanted, true, volume).await? => return Ok(Claim::Fresh),
                None => {}
            }
        }
        Err(ControllerError::InFlight {
            key: self.path().join(name).display().to_string(),
        })
    }

    /// Replace `name` by `new` (remove it, if `None`) only while it still is `expected`:
    /// never a blind overwrite of a record someone else changed meanwhile. `Ok(None)` when
    /// swapped, else what is there now (`Some(None)`: nothing).
    pub async fn swap<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        expected: &T,
        new: Option<&T>,
        volume: &str,
    ) -> Result<Option<Option<T>>, ControllerError> {
        let encode = |value: &T| {
            serde_json::to_string(value).map_err(|e| ControllerError::CorruptRecord {
                path: self.spec.path().join(name),
                reason: e.to_string(),
            })
        };
        let op = FsOp::SwapRecord {
            base: self.spec.base.clone(),
            dir: self.spec.dir.clone(),
            name: name.to_string(),
            expected: encode(expected)?,
            new: new.map(encode).transpose()?,
        };
        let step = "swap volume record";
        match self
            .run(op)
            .await
            .map_err(ControllerError::os(step, volume))?
        {
            FsReply::Swapped(SwapOutcome::Swapped) => Ok(None),
            FsReply::Swapped(SwapOutcome::Changed(now)) => Ok(Some(
                now.map(|text| self.spec.decode(name, &text)).transpose()?,
            )),
            other => Err(ControllerError::os(step, volume)(
                OsError::unexpected_reply("swap-record", &other),
            )),
        }
    }

    /// Remove `name`; absent is fine.
    pub async fn remove(&self, name: &str, volume: &str) -> Result<(), ControllerError> {
        RecordSpec::remove_reply(self.run(self.spec.remove_op(name)).await, volume)
    }

    /// Every record in the directory with its file name, in name order. One listing and one
    /// batched read.
    pub async fn load_all<T: DeserializeOwned>(
        &self,
        volume: &str,
    ) -> Result<Vec<(String, T)>, ControllerError> {
        let names: Vec<String> = self
            .names()
            .await?
            .into_iter()
            .filter(|n| n.ends_with(RECORD_SUFFIX) && !n.starts_with('.'))
            .collect();
        let found: Vec<Option<T>> = self.load_many(&names, volume).await?;
        // A record deleted between listing and reading is simply gone.
        Ok(names
            .into_iter()
            .zip(found)
            .filter_map(|(n, r)| Some((n, r?)))
            .collect())
    }

    /// Every name in the directory, sorted.
    pub async fn names(&self) -> Result<Vec<String>, ControllerError> {
        RecordSpec::list_reply(self.run(self.spec.list_op()).await)
    }

    /// Deal with what writers of this host killed mid-write left (scratch files): a directory
    /// other hosts may write too.
    pub async fn sweep_scratch(&self) -> Result<Swept, ControllerError> {
        let op = self.spec.sweep_op(Writers::ThisHostGone);
        RecordSpec::sweep_reply(self.run(op).await)
    }
}

/// A state directory on the node's own disk, worked on from a blocking thread (see
/// [`LocalDisk`]).
pub struct DiskRecords<'a> {
    pub disk: &'a dyn LocalDisk,
    pub spec: &'a RecordSpec,
}

impl DiskRecords<'_> {
    /// The records `names`, `None` for each that does not exist.
    pub fn load_many<T: DeserializeOwned>(
        &self,
        names: &[String],
        volume: &str,
    ) -> Result<Vec<Option<T>>, ControllerError> {
        let reply = self.disk.run(self.spec.read_op(names));
        self.spec.read_reply(names, reply, volume)
    }

    pub fn load<T: DeserializeOwned>(
        &self,
        name: &str,
        volume: &str,
    ) -> Result<Option<T>, ControllerError> {
        let mut found = self.load_many(&[name.to_string()], volume)?;
        Ok(found.pop().flatten())
    }

    /// Write `name`. With `exclusive`, an existing record is kept and `Ok(false)` returned.
    pub fn store<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        exclusive: bool,
        volume: &str,
    ) -> Result<bool, ControllerError> {
        let op = self.spec.write_op(name, value, exclusive)?;
        RecordSpec::write_reply(self.disk.run(op), volume)
    }

    /// Remove `name`; absent is fine.
    pub fn remove(&self, name: &str, volume: &str) -> Result<(), ControllerError> {
        RecordSpec::remove_reply(self.disk.run(self.spec.remove_op(name)), volume)
    }

    /// Every name in the directory, sorted.
    pub fn names(&self) -> Result<Vec<String>, ControllerError> {
        RecordSpec::list_reply(self.disk.run(self.spec.list_op()))
    }

    /// Deal with every scratch file here: for a directory only this process writes (the
    /// local root, under the journal's exclusive lock), so every other writer is gone.
    pub fn sweep_all_scratch(&self) -> Result<Swept, ControllerError> {
        RecordSpec::sweep_reply(self.disk.run(self.spec.sweep_op(Writers::All)))
    }
}
