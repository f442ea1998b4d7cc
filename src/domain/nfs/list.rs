//! ListVolumes and ListSnapshots on NFS: read from the records on the exports named by
//! `--nfs-export`, the only exports the controller knows of before a call names one (volumes
//! and snapshots live wherever a StorageClass put them). Without that list the backend does
//! not advertise either RPC.
//!
//! Each export is mounted and read in the killable helper under the server time bound like
//! every other export operation. One unreachable export fails the whole listing (UNAVAILABLE,
//! retried): a partial list would tell the CO that volumes are gone which are not.
//!
//! Only what a CreateVolume or CreateSnapshot has answered with is listed: no claim still
//! being created or filled, and no archive.

use super::claims::{record_name, NfsRecord};
use super::NfsBackend;
use crate::domain::error::ControllerError;
use crate::domain::record::RECORD_SUFFIX;
use crate::domain::snapshot::{Snapshot, SnapshotId, SnapshotRecord};
use crate::domain::volume::Volume;
use crate::domain::volume_id::{owner_tag, NfsExport, NfsId, VolumeId, VolumeKey};
use crate::os::RelPath;

impl NfsBackend {
    /// List these exports' volumes and snapshots (the controller's `--nfs-export`s).
    pub fn with_listed_exports(self, exports: Vec<NfsExport>) -> Self {
        Self {
            listed: exports,
            ..self
        }
    }

    /// Whether ListVolumes and ListSnapshots can answer: an export list was given.
    pub fn lists(&self) -> bool {
        !self.listed.is_empty()
    }

    /// Every complete volume on the listed exports, sorted by ID (the order pages keep).
    pub async fn list(&self) -> Result<Vec<Volume>, ControllerError> {
        let mut all = Vec::new();
        for export in &self.listed {
            let mount = self.export_of(export, "*").await?;
            let records = self.records(&mount.path).load_all::<NfsRecord>("*").await?;
            all.extend(
                records
                    .into_iter()
                    .filter_map(|(file, record)| listed_volume(export, &file, record)),
            );
        }
        all.sort_by_cached_key(|v| v.id.to_string());
        Ok(all)
    }

    /// Every snapshot on the listed exports, sorted by ID (see `Controller::list_snapshots`).
    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>, ControllerError> {
        let mut all = Vec::new();
        for export in &self.listed {
            let mount = self.export_of(export, "*").await?;
            let records = self
                .snap_records(&mount.path)
                .load_all::<SnapshotRecord>("*")
                .await?;
            all.extend(
                records
                    .into_iter()
                    .filter_map(|(file, record)| listed_snapshot(export, &file, &record)),
            );
        }
        all.sort_by_cached_key(|s| s.id.to_string());
        Ok(all)
    }
}

/// The volume a record in `export`'s `.pvdir/<file>` stands for, if it is a complete volume
/// whose record lies where its directory's record belongs (a stray copy names nothing).
fn listed_volume(export: &NfsExport, file: &str, record: NfsRecord) -> Option<Volume> {
    if !record.is_volume() || record.creating.is_some() {
        return None;
    }
    let subdir = RelPath::parse(&record.subdir).ok()?;
    if record_name(&subdir) != file {
        return None;
    }
    let id = NfsId {
        server: export.server.clone(),
        share: export.share.clone(),
        subdir,
        on_delete: record.on_delete,
        mount_options: record
            .mount_options
            .clone()
            .unwrap_or_else(|| export.mount_options.clone()),
        owner: owner_tag(&record.name),
    };
    Some(Volume {
        id: VolumeId::Nfs(id),
        capacity_bytes: record.size(),
        node: None,
        source: record.source,
    })
}

/// The snapshot a record in `export`'s `.pvdir/snapmeta/<file>` stands for. Its ID names the
/// export as its source volume's ID does (the mount options included).
fn listed_snapshot(export: &NfsExport, file: &str, record: &SnapshotRecord) -> Option<Snapshot> {
    let key = VolumeKey::parse(file.strip_suffix(RECORD_SUFFIX)?)?;
    let on = match VolumeId::parse(&record.source_volume) {
        Ok(VolumeId::Nfs(source))
            if (source.server.as_str(), source.share.as_str())
                == (export.server.as_str(), export.share.as_str()) =>
        {
            source.export()
        }
        // A record that names another export (or none) was not made here.
        _ => return None,
    };
    Some(record.snapshot(SnapshotId::Nfs { export: on, key }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::volume_id::OnDelete;

    fn export(options: &[&str]) -> NfsExport {
        NfsExport {
            server: "10.0.0.1".into(),
            share: "/export".into(),
            mount_options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn record(subdir: &str) -> NfsRecord {
        NfsRecord {
            name: "pvc-1".into(),
            capacity_bytes: 5,
            subdir: subdir.into(),
            on_delete: OnDelete::Retain,
            mount_permissions: None,
            creating: None,
            archive_of: None,
            archive_to: None,
            expanded_bytes: Some(7),
            source: None,
            mount_options: Some(vec!["hard".into()]),
            modified_permissions: None,
        }
    }

    fn file(subdir: &str) -> String {
        record_name(&RelPath::parse(subdir).unwrap())
    }

    #[test]
    fn a_volume_keeps_the_options_it_was_made_with() {
        let v = listed_volume(&export(&["soft"]), &file("ns/a"), record("ns/a")).unwrap();
        let VolumeId::Nfs(id) = &v.id else {
            panic!("not an NFS ID: {:?}", v.id)
        };
        assert_eq!(id.mount_options, ["hard"]);
        assert_eq!((id.on_delete, v.capacity_bytes), (OnDelete::Retain, 7));
        assert_eq!(id.owner, owner_tag("pvc-1"));
        let old = NfsRecord {
            mount_options: None,
            ..record("ns/a")
        };
        let v = listed_volume(&export(&["soft"]), &file("ns/a"), old).unwrap();
        let VolumeId::Nfs(id) = &v.id else {
            panic!("not an NFS ID")
        };
        assert_eq!(
            id.mount_options,
            ["soft"],
            "older records: the flag's options"
        );
    }

    #[test]
    fn claims_archives_and_strays_are_not_listed() {
        let e = export(&[]);
        let creating = NfsRecord {
            creating: Some(
                super::super::ClaimPolicy::new(std::time::Duration::from_secs(1)).creating(),
            ),
            ..record("ns/a")
        };
        assert!(listed_volume(&e, &file("ns/a"), creating).is_none());
        let archive = NfsRecord {
            archive_of: Some("ns/a".into()),
            ..record("archived-ns/a")
        };
        assert!(listed_volume(&e, &file("archived-ns/a"), archive).is_none());
        assert!(listed_volume(&e, &file("ns/b"), record("ns/a")).is_none());
        assert!(listed_volume(&e, &file("ns/a"), record("../a")).is_none());
    }

    #[test]
    fn a_snapshot_is_listed_on_its_source_export_only() {
        let source = VolumeId::Nfs(NfsId {
            server: "10.0.0.1".into(),
            share: "/export".into(),
            subdir: RelPath::parse("ns/a").unwrap(),
            on_delete: OnDelete::Delete,
            mount_options: vec!["hard".into()],
            owner: owner_tag("pvc-1"),
        })
        .to_string();
        let record = SnapshotRecord::started("snap-1", &source, 3);
        let s = listed_snapshot(&export(&[]), "k1.json", &record).unwrap();
        let SnapshotId::Nfs { export: on, key } = &s.id else {
            panic!("not an NFS snapshot ID")
        };
        assert_eq!(
            (on.mount_options.as_slice(), key.as_str()),
            (&["hard".to_string()][..], "k1")
        );
        let elsewhere = NfsExport {
            share: "/other".into(),
            ..export(&[])
        };
        assert!(listed_snapshot(&elsewhere, "k1.json", &record).is_none());
        assert!(listed_snapshot(&export(&[]), "not-a-record", &record).is_none());
    }
}
