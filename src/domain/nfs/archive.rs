//! `onDelete: archive`: a deleted volume's directory is renamed aside to
//! `archived-<leaf>` (`-2`, `-3`, … when taken) beside it.
//!
//! Crash-safe and never confused with a volume: before anything moves, the new name is claimed
//! by an archive record naming the volume and the directory it comes from, and written into
//! the volume's own record. A retry after a crash resumes with that very name; a create of a
//! volume at that name finds the record and is refused; and no placeholder directory is ever
//! made (the NFS client
//! has no RENAME_NOREPLACE, so the old way claimed the name with an empty directory, which a
//! crash left behind looking like a free place for a new volume).

use std::path::Path;

use sha2::{Digest, Sha256};

use super::claims::{record_name, NfsRecord};
use crate::domain::error::ControllerError;
use crate::domain::record::{Claim, RecordDir};
use crate::domain::volume_id::{owner_tag, NfsId, OnDelete};
use crate::os::safe_fs::RenameOutcome;
use crate::os::{FsOp, FsReply, Medium, Os, OsError, RelPath};

/// Longest archived name kept readable; longer leaves are archived under a hash.
const MAX_ARCHIVE_NAME: usize = 200;
/// Highest numeric suffix tried when `archived-<leaf>` is taken.
pub const MAX_ARCHIVE_SUFFIX: u32 = 1000;
/// Candidate names whose records are read in one go.
const BATCH: u32 = 16;

/// `archived-<leaf>`, or `archived-<hash>` when the leaf is too long to prefix.
fn archived_name(subdir: &RelPath) -> String {
    let leaf = subdir.file_name();
    if leaf.len() <= MAX_ARCHIVE_NAME {
        format!("archived-{leaf}")
    } else {
        format!(
            "archived-{}",
            &hex::encode(Sha256::digest(leaf.as_bytes()))[..32]
        )
    }
}

/// The `n`th candidate for archiving `subdir`, or `None` if it is no valid path.
fn candidate(subdir: &RelPath, n: u32) -> Option<RelPath> {
    let base = archived_name(subdir);
    let name = if n == 1 { base } else { format!("{base}-{n}") };
    sibling(subdir, &name)
}

/// Where an archive happens: an export's records and its mount.
pub struct Place<'a> {
    pub records: &'a RecordDir,
    pub os: &'a dyn Os,
    pub mount: &'a Path,
}

impl Place<'_> {
    /// Archive the directory of volume `id`, whose record is `volume` under the name `own`.
    /// Returns once the data is at its archived name (or was never there); the caller then
    /// removes the volume's record.
    ///
    /// The steps, each safe to repeat after a crash: claim a name with an archive record;
    /// write that name into the volume's record; rename. A retry finds the name in the
    /// volume's record and resumes with it, so a name claimed once is the only one used.
    pub async fn archive(
        &self,
        id: &NfsId,
        own: &str,
        volume: NfsRecord,
        raw: &str,
    ) -> Result<(), ControllerError> {
        let ours = |r: &NfsRecord| {
            r.archive_of.as_deref() == Some(id.subdir.as_str()) && owner_tag(&r.name) == id.owner
        };
        let mut volume = volume;
        // An earlier attempt chose a name (and may have renamed already): resume with it.
        if let Some(to) = volume
            .archive_to
            .as_deref()
            .and_then(|n| sibling(&id.subdir, n))
        {
            let name = record_name(&to);
            if let Some(claim) = self.records.load::<NfsRecord>(&name, raw).await? {
                if ours(&claim) {
                    match self.rename(id, &to, raw).await? {
                        RenameOutcome::Renamed | RenameOutcome::SourceGone => return Ok(()),
                        RenameOutcome::TargetTaken => self.release(&name, &claim, raw).await?,
                    }
                }
            }
        }
        let mut n = 1;
        while n <= MAX_ARCHIVE_SUFFIX {
            let batch: Vec<RelPath> = (n..n + BATCH)
                .take_while(|k| *k <= MAX_ARCHIVE_SUFFIX)
                .map_while(|k| candidate(&id.subdir, k))
                .collect();
            if batch.is_empty() {
                break;
            }
            n += BATCH;
            let names: Vec<String> = batch.iter().map(record_name).collect();
            let found: Vec<Option<NfsRecord>> = self.records.load_many(&names, raw).await?;
            for ((to, name), existing) in batch.iter().zip(&names).zip(found) {
                let claim = match existing {
                    // Claimed by an attempt that died before recording its choice, so
                    // before its rename.
                    Some(r) if ours(&r) => r,
                    Some(_) => continue,
                    None => {
                        let record = NfsRecord {
                            name: volume.name.clone(),
                            capacity_bytes: volume.capacity_bytes,
                            subdir: to.to_string(),
                            on_delete: OnDelete::Retain,
                            mount_permissions: None,
                            creating: None,
                            archive_of: Some(id.subdir.to_string()),
                            archive_to: None,
                            expanded_bytes: volume.expanded_bytes,
                            source: None,
                            mount_options: volume.mount_options.clone(),
                            modified_permissions: None,
                        };
                        match self.records.claim(name, &record, raw).await? {
                            Claim::Fresh => record,
                            Claim::Existing(r) if ours(&r) => r,
                            Claim::Existing(_) => continue,
                        }
                    }
                };
                let chosen = NfsRecord {
                    archive_to: Some(to.file_name().to_string()),
                    ..volume.clone()
                };
                if self
                    .records
                    .swap(own, &volume, Some(&chosen), raw)
                    .await?
                    .is_some()
                {
                    return Err(ControllerError::RecordChanged {
                        subdir: id.subdir.to_string(),
                    });
                }
                volume = chosen;
                match self.rename(id, to, raw).await? {
                    RenameOutcome::Renamed => return Ok(()),
                    // Nothing to archive (the directory was never made, or was removed by
                    // hand): no archive record may claim a name for nothing.
                    RenameOutcome::SourceGone => return self.release(name, &claim, raw).await,
                    // Someone else's content appeared there (an admin, a static PV): leave
                    // it alone, give the name back, and try the next one.
                    RenameOutcome::TargetTaken => self.release(name, &claim, raw).await?,
                }
            }
        }
        Err(ControllerError::DirectoryClaimed {
            subdir: id.subdir.to_string(),
            owner: format!("every archive name up to -{MAX_ARCHIVE_SUFFIX} is taken"),
        })
    }

    async fn rename(
        &self,
        id: &NfsId,
        to: &RelPath,
        raw: &str,
    ) -> Result<RenameOutcome, ControllerError> {
        let op = FsOp::RenameAside {
            base: self.mount.to_path_buf(),
            rel: id.subdir.clone(),
            to: to.file_name().to_string(),
        };
        let step = "archive volume directory";
        match self
            .os
            .fs(op, Medium::Remote)
            .await
            .map_err(ControllerError::os(step, raw))?
        {
            FsReply::Renamed(outcome) => Ok(outcome),
            other => Err(ControllerError::os(step, raw)(OsError::unexpected_reply(
                "rename-aside",
                &other,
            ))),
        }
    }

    /// Give back the archive name `name` claimed by `claim`, unless it changed meanwhile.
    async fn release(
        &self,
        name: &str,
        claim: &NfsRecord,
        raw: &str,
    ) -> Result<(), ControllerError> {
        self.records.swap(name, claim, None, raw).await.map(drop)
    }
}

/// `name` beside `subdir`, if it is a valid path.
fn sibling(subdir: &RelPath, name: &str) -> Option<RelPath> {
    match subdir.parent() {
        Some(parent) => parent.join(name).ok(),
        None => RelPath::parse(name).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_names_stay_valid_for_long_leaves() {
        let short = RelPath::parse("ns/www-web-0").unwrap();
        assert_eq!(archived_name(&short), "archived-www-web-0");
        assert_eq!(
            candidate(&short, 3).unwrap().as_str(),
            "ns/archived-www-web-0-3"
        );
        let long = RelPath::parse(&format!("ns/{}", "x".repeat(250))).unwrap();
        let name = archived_name(&long);
        assert!(name.len() < 255 && name.starts_with("archived-"));
        assert!(candidate(&long, MAX_ARCHIVE_SUFFIX).is_some());
        let top = RelPath::parse("vol").unwrap();
        assert_eq!(candidate(&top, 1).unwrap().as_str(), "archived-vol");
    }
}
