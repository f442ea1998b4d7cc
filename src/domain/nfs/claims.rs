//! Who owns a directory on an export: the records in `<share>/.pvdir/`, kept on the export
//! itself so they survive controller restarts, and the rules that keep them honest.
//!
//! - A record names the volume that owns a directory. It is published exclusively (link(2)),
//!   so two volumes never own one directory.
//! - A record is `creating` until the create is complete, and is made ready only just before
//!   the volume ID is returned. A record still `creating` was never handed to anyone, so a
//!   create that will never finish (a crash, or a dead server that made the release of a failed
//!   create fail) cannot block its directory for ever: a create for another volume takes it
//!   over, at once if the claiming process is known to be gone or idle (this very process, not
//!   making it now; or a process of this host and boot that no longer runs, such as the driver
//!   before a restart), else once the claim is older than the expiry (another host's process
//!   may still be working on it). A creator that passed half the expiry hands nothing out, so it
//!   never races a takeover.
//! - An archive record marks a directory as the archive of a deleted volume: never a volume,
//!   never deleted by DeleteVolume, never taken by a create.
//! - A volume's directory never lies inside another record's directory nor encloses one, and a
//!   fresh volume never adopts content it did not make unless its class says `reuseExisting`.
//!   The checks run before the claim and again once claim and directory exist, so of two racing
//!   creates of an enclosing and an enclosed directory at least one backs out.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::error::ControllerError;
use crate::domain::record::RecordDir;
use crate::domain::snapshot::ContentSource;
use crate::domain::volume_id::OnDelete;
use crate::os::{FsOp, FsReply, Medium, Os, OsError, RelPath};

/// pvdir's own state directory on each export.
pub const RECORD_DIR: &str = ".pvdir";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfsRecord {
    /// The CSI volume name that owns the directory (for an archive: that the data was).
    pub name: String,
    pub capacity_bytes: i64,
    pub subdir: String,
    pub on_delete: OnDelete,
    pub mount_permissions: Option<u32>,
    /// Present until the create is complete. Records from before this field are complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creating: Option<Creating>,
    /// Present on an archive record: the directory the data was archived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_of: Option<String>,
    /// Present on a volume being archived: the name its archive claimed, so that a retry
    /// resumes with that very name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_to: Option<String>,
    /// The size after the last ControllerExpandVolume (recorded, not enforced on NFS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expanded_bytes: Option<i64>,
    /// The snapshot or volume a restore or clone is filled from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ContentSource>,
    /// The mount options of the volume's ID, so that ListVolumes rebuilds the very ID even
    /// when two classes mount one export with different options. Absent on records from
    /// before ListVolumes on NFS: those are listed with the options of `--nfs-export`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_options: Option<Vec<String>>,
    /// The directory's mode after the last ControllerModifyVolume (`mount_permissions` stays
    /// what CreateVolume asked, which a retried create must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_permissions: Option<u32>,
}

/// Who is creating a volume, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creating {
    #[serde(flatten)]
    pub by: Claimant,
    /// Wall-clock seconds since the epoch.
    pub since: u64,
}

/// A process, named so that another process can tell whether it still runs: the host name,
/// the kernel's boot ID, and the pid with the process's start time (pids are reused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimant {
    pub host: String,
    pub boot: String,
    /// The pid namespace (`/proc/self/ns/pid`): a pid means something only within it.
    #[serde(default)]
    pub pidns: String,
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat`, field 22).
    pub start: u64,
}

impl Claimant {
    pub fn this_process() -> Claimant {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string();
        let pidns = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pid = std::process::id();
        Claimant {
            host,
            boot,
            pidns,
            pid,
            start: start_time(pid).unwrap_or_default(),
        }
    }

    /// Whether this claimant is a process of the same host, boot and pid namespace as `me`
    /// that no longer runs. A process elsewhere cannot be looked at, so it is never known to
    /// be gone.
    fn known_gone(&self, me: &Claimant) -> bool {
        self.host == me.host
            && !self.boot.is_empty()
            && self.boot == me.boot
            && !self.pidns.is_empty()
            && self.pidns == me.pidns
            && start_time(self.pid) != Some(self.start)
    }
}

/// The start time of process `pid` (`/proc/<pid>/stat` field 22), if it runs.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl NfsRecord {
    pub fn is_volume(&self) -> bool {
        self.archive_of.is_none()
    }

    /// The same volume asked for the same way: what a repeated CreateVolume must match.
    pub fn same_request(&self, other: &NfsRecord) -> bool {
        (
            &self.name,
            self.capacity_bytes,
            &self.subdir,
            self.on_delete,
            self.mount_permissions,
            &self.source,
        ) == (
            &other.name,
            other.capacity_bytes,
            &other.subdir,
            other.on_delete,
            other.mount_permissions,
            &other.source,
        )
    }

    /// The volume's size now.
    pub fn size(&self) -> i64 {
        self.expanded_bytes.unwrap_or(self.capacity_bytes)
    }

    /// The directory's mode now, where one was asked for.
    pub fn mode(&self) -> Option<u32> {
        self.modified_permissions.or(self.mount_permissions)
    }

    pub fn ready(mut self) -> NfsRecord {
        self.creating = None;
        self
    }
}

/// The record's file name: a hash of the directory, so any directory has one bounded name.
pub fn record_name(subdir: &RelPath) -> String {
    let digest = Sha256::digest(subdir.as_str().as_bytes());
    format!("{}.json", &hex::encode(digest)[..32])
}

/// The error for a directory that `record` holds.
pub fn claimed_by(record: &NfsRecord, subdir: &RelPath) -> ControllerError {
    let owner = match &record.archive_of {
        Some(from) => format!("the archive of {} (from {from})", record.name),
        None if record.subdir == subdir.as_str() => record.name.clone(),
        None => format!("{} (directory {})", record.name, record.subdir),
    };
    ControllerError::DirectoryClaimed {
        subdir: subdir.to_string(),
        owner,
    }
}

/// This process's identity in claims, and how long a claim of a process that may still run
/// elsewhere is honoured.
pub struct ClaimPolicy {
    pub me: Claimant,
    pub expiry: Duration,
}

impl ClaimPolicy {
    pub fn new(expiry: Duration) -> Self {
        Self::as_claimant(Claimant::this_process(), expiry)
    }

    /// A policy claiming as `me` (tests act as other processes with it).
    pub fn as_claimant(me: Claimant, expiry: Duration) -> Self {
        Self { me, expiry }
    }

    /// The expiry that suits a time bound on server operations: far longer than any create
    /// can take (each of its steps is bounded), and never under ten minutes.
    pub fn expiry_for(remote_timeout: Duration) -> Duration {
        (remote_timeout * 20).max(Duration::from_secs(600))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }

    pub fn creating(&self) -> Creating {
        Creating {
            by: self.me.clone(),
            since: Self::now(),
        }
    }

    /// Whether `record`, found where another volume wants to be, belongs to a create that will
    /// never finish. The caller holds the directory's in-flight guard, so a claim of this very
    /// process is not being worked on now.
    pub fn abandoned(&self, record: &NfsRecord) -> bool {
        match (&record.creating, record.is_volume()) {
            (Some(c), true) => {
                c.by == self.me
                    || c.by.known_gone(&self.me)
                    || Self::now().saturating_sub(c.since) > self.expiry.as_secs()
            }
            _ => false,
        }
    }

    /// Whether a create that started at `started` is too old to hand out its volume: past half
    /// the expiry, another process may soon take its claim over.
    pub fn past_deadline(&self, started: Instant) -> bool {
        started.elapsed() > self.expiry / 2
    }
}

/// The placement rules for a volume directory, checked against one export's records. A claim
/// that will never finish ([`ClaimPolicy::abandoned`]) is no volume and holds nothing back.
pub struct Placement<'a> {
    pub records: &'a RecordDir,
    pub os: &'a dyn Os,
    pub mount: &'a Path,
    pub volume: &'a str,
    pub claims: &'a ClaimPolicy,
}

impl Placement<'_> {
    /// A volume at `subdir` may not lie inside another record's directory, may not enclose
    /// one, and unless `reuse` may not adopt content it did not make.
    pub async fn check(&self, subdir: &RelPath, reuse: bool) -> Result<(), ControllerError> {
        self.check_not_inside(subdir).await?;
        if reuse {
            // Emptiness is what shows other volumes below a fresh directory; reuse skips it,
            // so look for their records instead.
            self.check_not_enclosing(subdir).await
        } else {
            self.check_empty(subdir).await
        }
    }

    async fn check_not_inside(&self, subdir: &RelPath) -> Result<(), ControllerError> {
        let ancestors: Vec<RelPath> =
            std::iter::successors(subdir.parent(), RelPath::parent).collect();
        let names: Vec<String> = ancestors.iter().map(record_name).collect();
        let found: Vec<Option<NfsRecord>> = self.records.load_many(&names, self.volume).await?;
        match found
            .into_iter()
            .flatten()
            .find(|r| !self.claims.abandoned(r))
        {
            Some(outer) => Err(claimed_by(&outer, subdir)),
            None => Ok(()),
        }
    }

    /// One read of every record on the export: only `reuseExisting` creates pay for it.
    async fn check_not_enclosing(&self, subdir: &RelPath) -> Result<(), ControllerError> {
        let prefix = format!("{subdir}/");
        let all: Vec<(String, NfsRecord)> = self.records.load_all(self.volume).await?;
        match all
            .into_iter()
            .find(|(_, r)| r.subdir.starts_with(&prefix) && !self.claims.abandoned(r))
        {
            Some((_, inner)) => Err(claimed_by(&inner, subdir)),
            None => Ok(()),
        }
    }

    async fn check_empty(&self, subdir: &RelPath) -> Result<(), ControllerError> {
        let step = "inspect volume directory";
        let op = FsOp::HasEntries {
            base: self.mount.to_path_buf(),
            rel: subdir.clone(),
        };
        match self
            .os
            .fs(op, Medium::Remote)
            .await
            .map_err(ControllerError::os(step, self.volume))?
        {
            FsReply::Entries(None | Some(false)) => Ok(()),
            FsReply::Entries(Some(true)) => Err(ControllerError::DirectoryClaimed {
                subdir: subdir.to_string(),
                owner: "content pvdir did not create for this volume (other volumes, or retained data: use a static PV or reuseExisting)".into(),
            }),
            other => Err(ControllerError::os(step, self.volume)(
                OsError::unexpected_reply("has-entries", &other),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, creating: Option<Creating>) -> NfsRecord {
        NfsRecord {
            name: name.into(),
            capacity_bytes: 1,
            subdir: "ns/x".into(),
            on_delete: OnDelete::Delete,
            mount_permissions: None,
            creating,
            archive_of: None,
            archive_to: None,
            expanded_bytes: None,
            source: None,
            mount_options: None,
            modified_permissions: None,
        }
    }

    #[test]
    fn records_from_before_states_are_complete_volumes() {
        let old = r#"{"name":"pvc-1","capacity_bytes":1,"subdir":"ns/x","on_delete":"delete","mount_permissions":null}"#;
        let r: NfsRecord = serde_json::from_str(old).unwrap();
        assert!(r.creating.is_none() && r.is_volume());
        let policy = ClaimPolicy::new(Duration::from_secs(600));
        assert!(
            !policy.abandoned(&r),
            "a complete volume is never taken over"
        );
    }

    fn elsewhere() -> ClaimPolicy {
        let mut me = Claimant::this_process();
        me.host = "another-host".into();
        ClaimPolicy::as_claimant(me, Duration::from_secs(600))
    }

    #[test]
    fn only_unfinished_claims_of_gone_idle_or_expired_processes_are_abandoned() {
        let policy = ClaimPolicy::new(Duration::from_secs(600));
        assert!(policy.me.start > 0 && !policy.me.boot.is_empty());
        let other = elsewhere();
        assert!(policy.abandoned(&record("a", Some(policy.creating()))));
        assert!(
            !policy.abandoned(&record("a", Some(other.creating()))),
            "another host's process may still run"
        );
        // A process of this host and boot that is gone: a pid that exited, or a reused pid
        // with another start time.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        for (pid, start) in [(gone, policy.me.start), (1, policy.me.start + 1)] {
            let mut dead = policy.creating();
            dead.by.pid = pid;
            dead.by.start = start;
            assert!(policy.abandoned(&record("a", Some(dead))), "pid {pid}");
        }
        // A live process of this host (pid 1) is not gone.
        let mut init = policy.creating();
        init.by.pid = 1;
        init.by.start = start_time(1).unwrap();
        assert!(!policy.abandoned(&record("a", Some(init))));
        let old = Creating {
            by: other.me.clone(),
            since: ClaimPolicy::now() - 601,
        };
        assert!(policy.abandoned(&record("a", Some(old.clone()))));
        let mut archive = record("a", Some(old));
        archive.archive_of = Some("ns/y".into());
        assert!(
            !policy.abandoned(&archive),
            "an archive is never taken over"
        );
    }

    #[test]
    fn same_request_ignores_the_claim_state() {
        let policy = ClaimPolicy::new(Duration::from_secs(600));
        let a = record("a", Some(policy.creating()));
        assert!(a.same_request(&a.clone().ready()));
        let mut b = a.clone();
        b.capacity_bytes = 2;
        assert!(!a.same_request(&b));
    }

    #[test]
    fn expiry_is_long_and_grows_with_the_bound() {
        assert_eq!(
            ClaimPolicy::expiry_for(Duration::from_secs(5)),
            Duration::from_secs(600)
        );
        assert_eq!(
            ClaimPolicy::expiry_for(Duration::from_secs(60)),
            Duration::from_secs(1200)
        );
    }
}
