//! Volume IDs: self-describing and versioned, so DeleteVolume and the node never need a
//! StorageClass or any memory of the creating call.
//!
//! Format (fields percent-encoded, so `#`, `%` and `,` inside a field never split it):
//! - `v1#local#<node>#<key>`
//! - `v1#nfs#<server>#<share>#<subdir>#<onDelete>#<opt1,opt2,...>#<owner>`
//!
//! `<owner>` is a short hash of the CSI volume name. A claim deleted and re-created under the
//! same namespace and name gets the same directory but a new name (the PV name), so a late
//! retry of the old volume's DeleteVolume can tell that the directory is no longer its own.
//!
//! Invariant: a parsed ID can only name a directory below its root or share: the key is one
//! safe segment, the subdir a [`RelPath`] (no `..`, no absolute path, no empty segment).

use std::fmt;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::access::check_mount_option;
use super::host::check_host;
use super::nfs::RECORD_DIR;
use crate::os::relpath::{RelPath, RelPathError};

const PREFIX: &str = "v1";
const SEP: char = '#';
const FIELD: &AsciiSet = &CONTROLS.add(b'#').add(b'%').add(b',').add(b' ');

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeId {
    Local(LocalId),
    Nfs(NfsId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalId {
    pub node: String,
    pub key: VolumeKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsId {
    pub server: String,
    pub share: String,
    pub subdir: RelPath,
    pub on_delete: OnDelete,
    pub mount_options: Vec<String>,
    /// [`owner_tag`] of the volume name that created the directory.
    pub owner: String,
}

const OWNER_HEX_LEN: usize = 16;

/// The owner tag of a CSI volume name: 64 bits of its SHA-256, in hex.
pub fn owner_tag(name: &str) -> String {
    hex::encode(Sha256::digest(name.as_bytes()))[..OWNER_HEX_LEN].to_string()
}

/// What DeleteVolume does with an NFS volume's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    #[default]
    Delete,
    Retain,
    Archive,
}

impl OnDelete {
    fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Retain => "retain",
            Self::Archive => "archive",
        }
    }
}

/// The directory name of a local volume: the CSI name itself when it is a plain, short,
/// unambiguous name (so operators recognise `pvc-…` directories), else `h-` and a hash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeKey(RelPath);

const HASH_PREFIX: &str = "h-";
const HASH_HEX_LEN: usize = 48;

impl VolumeKey {
    /// The key for a CSI volume name. `None` only if the name cannot be a key at all, which
    /// the construction rules out (plain names and hex digests are single safe segments).
    pub fn from_name(name: &str) -> Option<Self> {
        if is_plain(name) {
            Self::parse(name)
        } else {
            let digest = Sha256::digest(name.as_bytes());
            Self::parse(&format!(
                "{HASH_PREFIX}{}",
                &hex::encode(digest)[..HASH_HEX_LEN]
            ))
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let hashed = s.strip_prefix(HASH_PREFIX).is_some_and(|h| {
            h.len() == HASH_HEX_LEN
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if is_plain(s) || hashed {
            RelPath::parse(s).ok().map(Self)
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The key as the one-segment path of the volume directory.
    pub fn rel(&self) -> &RelPath {
        &self.0
    }
}

fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(HASH_PREFIX)
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeIdError {
    /// Not an ID this driver made (e.g. a static PV's free-form handle).
    #[error("not a pvdir volume ID")]
    Foreign,
    #[error("field {field}: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("expected {expected} fields, found {found}")]
    FieldCount { expected: usize, found: usize },
    #[error("subdirectory: {0}")]
    Subdir(#[from] RelPathError),
}

pub(super) fn encode(s: &str) -> String {
    utf8_percent_encode(s, FIELD).to_string()
}

pub(super) fn decode(field: &'static str, s: &str) -> Result<String, VolumeIdError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|e| VolumeIdError::BadField {
            field,
            reason: e.to_string(),
        })
}

pub(super) fn bad(field: &'static str, reason: impl Into<String>) -> VolumeIdError {
    VolumeIdError::BadField {
        field,
        reason: reason.into(),
    }
}

/// An NFS server as mount.nfs takes it: an address or a host name (see [`check_host`]), never
/// something that could be read as an option or a path.
pub fn validate_server(server: &str) -> Result<(), VolumeIdError> {
    check_host(server).map_err(|e| bad("server", format!("{server:?} {e}")))
}

/// The directory of a provisioned NFS volume below its share: never inside pvdir's own records
/// ([`RECORD_DIR`]). One check for the controller (a class's `subDir`) and the node (the ID it
/// is asked to mount), so a forged ID cannot mount the records into a pod.
pub fn validate_volume_subdir(subdir: &RelPath) -> Result<(), VolumeIdError> {
    if subdir.segments().next() == Some(RECORD_DIR) {
        return Err(bad(
            "subdir",
            format!("{subdir} is inside {RECORD_DIR}, pvdir's own state directory"),
        ));
    }
    Ok(())
}

/// An export path: absolute, normalised (`/` alone is allowed).
pub fn validate_share(share: &str) -> Result<(), VolumeIdError> {
    let Some(rest) = share.strip_prefix('/') else {
        return Err(bad("share", format!("{share:?} must be an absolute path")));
    };
    if rest.is_empty() {
        return Ok(());
    }
    RelPath::parse(rest)
        .map(|_| ())
        .map_err(|e| bad("share", format!("{share:?}: {e}")))
}

pub fn validate_mount_option(option: &str) -> Result<(), VolumeIdError> {
    check_mount_option(option).map_err(|e| bad("mountOptions", e.to_string()))
}

/// An export as the controller mounts it: the part of an NFS ID that names where a volume or
/// a snapshot lives (the volume's own fields are in [`NfsId`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsExport {
    pub server: String,
    pub share: String,
    pub mount_options: Vec<String>,
}

impl NfsExport {
    /// The three ID fields server, share and mount options, each checked as a create checks
    /// them: an ID never makes the controller mount what a StorageClass could not name.
    pub(super) fn parse_fields(
        server: &str,
        share: &str,
        options: &str,
    ) -> Result<Self, VolumeIdError> {
        let server = decode("server", server)?;
        validate_server(&server)?;
        let share = decode("share", share)?;
        validate_share(&share)?;
        let mut mount_options = Vec::new();
        for raw in options.split(',').filter(|s| !s.is_empty()) {
            let option = decode("mountOptions", raw)?;
            validate_mount_option(&option)?;
            mount_options.push(option);
        }
        Ok(Self {
            server,
            share,
            mount_options,
        })
    }

    /// The same three fields, encoded, joined by the ID separator.
    pub(super) fn fields(&self) -> String {
        let opts: Vec<String> = self.mount_options.iter().map(|o| encode(o)).collect();
        format!(
            "{}{SEP}{}{SEP}{}",
            encode(&self.server),
            encode(&self.share),
            opts.join(",")
        )
    }
}

impl NfsId {
    /// The export this volume lives on.
    pub fn export(&self) -> NfsExport {
        NfsExport {
            server: self.server.clone(),
            share: self.share.clone(),
            mount_options: self.mount_options.clone(),
        }
    }
}

impl VolumeId {
    pub fn parse(id: &str) -> Result<Self, VolumeIdError> {
        let fields: Vec<&str> = id.split(SEP).collect();
        if fields.first() != Some(&PREFIX) || fields.len() < 2 {
            return Err(VolumeIdError::Foreign);
        }
        let expect = |n: usize| {
            if fields.len() == n {
                Ok(())
            } else {
                Err(VolumeIdError::FieldCount {
                    expected: n,
                    found: fields.len(),
                })
            }
        };
        match fields[1] {
            "local" => {
                expect(4)?;
                let node = decode("node", fields[2])?;
                if node.is_empty() {
                    return Err(bad("node", "empty"));
                }
                let key = VolumeKey::parse(&decode("key", fields[3])?)
                    .ok_or_else(|| bad("key", "not a volume directory name"))?;
                Ok(Self::Local(LocalId { node, key }))
            }
            "nfs" => {
                expect(8)?;
                let export = NfsExport::parse_fields(fields[2], fields[3], fields[6])?;
                let subdir = RelPath::parse(&decode("subdir", fields[4])?)?;
                validate_volume_subdir(&subdir)?;
                let on_delete = match fields[5] {
                    "delete" => OnDelete::Delete,
                    "retain" => OnDelete::Retain,
                    "archive" => OnDelete::Archive,
                    other => return Err(bad("onDelete", format!("{other:?}"))),
                };
                let owner = fields[7].to_string();
                if owner.len() != OWNER_HEX_LEN
                    || !owner
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return Err(bad("owner", format!("{owner:?} is not an owner tag")));
                }
                Ok(Self::Nfs(NfsId {
                    server: export.server,
                    share: export.share,
                    subdir,
                    on_delete,
                    mount_options: export.mount_options,
                    owner,
                }))
            }
            other => Err(bad("backend", format!("unknown backend {other:?}"))),
        }
    }
}

/// The key that serialises calls on one volume: the canonical spelling of a pvdir ID (so
/// `pvc%2D1` and `pvc-1` are one volume), or the handle itself for IDs that are not ours.
pub fn guard_key(raw: &str) -> String {
    VolumeId::parse(raw).map_or_else(|_| raw.to_string(), |id| id.to_string())
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(l) => write!(
                f,
                "{PREFIX}#local#{}#{}",
                encode(&l.node),
                encode(l.key.as_str())
            ),
            Self::Nfs(n) => {
                let opts: Vec<String> = n.mount_options.iter().map(|o| encode(o)).collect();
                write!(
                    f,
                    "{PREFIX}#nfs#{}#{}#{}#{}#{}#{}",
                    encode(&n.server),
                    encode(&n.share),
                    encode(n.subdir.as_str()),
                    n.on_delete.as_str(),
                    opts.join(","),
                    n.owner
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nfs() -> VolumeId {
        VolumeId::Nfs(NfsId {
            server: "10.0.0.1".into(),
            share: "/export/k8s".into(),
            subdir: RelPath::parse("default/www-web-0").unwrap(),
            on_delete: OnDelete::Archive,
            mount_options: vec!["vers=4.2".into(), "hard".into()],
            owner: owner_tag("pvc-123"),
        })
    }

    #[test]
    fn round_trips() {
        let local = VolumeId::Local(LocalId {
            node: "node#1 %".into(),
            key: VolumeKey::from_name("pvc-1").unwrap(),
        });
        for id in [nfs(), local] {
            assert_eq!(VolumeId::parse(&id.to_string()).unwrap(), id);
        }
        assert_eq!(
            nfs().to_string(),
            format!(
                "v1#nfs#10.0.0.1#/export/k8s#default/www-web-0#archive#vers=4.2,hard#{}",
                owner_tag("pvc-123")
            )
        );
    }

    #[test]
    fn keys_are_plain_or_hashed_never_ambiguous() {
        assert_eq!(
            VolumeKey::from_name("pvc-abc.1").unwrap().as_str(),
            "pvc-abc.1"
        );
        for odd in [
            "a/b",
            "..",
            ".hidden",
            "h-looks-hashed",
            "ünï",
            &"x".repeat(129),
            "",
        ] {
            let k = VolumeKey::from_name(odd).unwrap();
            assert!(k.as_str().starts_with("h-"), "{odd}");
            assert_eq!(VolumeKey::parse(k.as_str()), Some(k.clone()));
        }
        assert_ne!(VolumeKey::from_name("a"), VolumeKey::from_name("b/"));
        assert_eq!(VolumeKey::parse("h-short"), None);
        assert_eq!(VolumeKey::parse("../x"), None);
    }

    #[test]
    fn escaping_ids_are_refused() {
        for id in [
            "v1#nfs#srv#/export#../etc#delete##0123456789abcdef",
            "v1#nfs#srv#/export#/abs#delete##0123456789abcdef",
            "v1#nfs#srv#/export#a//b#delete##0123456789abcdef",
            "v1#nfs#srv#/export#a/%2E%2E/b#delete##0123456789abcdef",
            "v1#nfs#srv#/export#a%2F..#delete##0123456789abcdef",
            "v1#nfs#srv#relative#a#delete##0123456789abcdef",
            "v1#nfs#srv#/ex/../port#a#delete##0123456789abcdef",
            "v1#nfs#-oexec#/export#a#delete##0123456789abcdef",
            "v1#nfs#srv#/export##delete##0123456789abcdef",
            "v1#nfs#srv#/export#.pvdir#delete##0123456789abcdef",
            "v1#nfs#srv#/export#.pvdir/x.json#delete##0123456789abcdef",
            "v1#nfs#256.1.1.1#/export#a#delete##0123456789abcdef",
            "v1#local#n#..",
            "v1#local#n#a%2Fb",
            "v1#local##k",
        ] {
            let e = VolumeId::parse(id).unwrap_err();
            assert_ne!(e, VolumeIdError::Foreign, "{id}");
        }
    }

    #[test]
    fn malformed_ids_error_without_panicking() {
        for id in [
            "",
            "#",
            "v1",
            "v1#",
            "v1#nfs",
            "v1#local#a",
            "v1#zfs#a#b",
            "v2#local#n#k",
            "v1#nfs#s#/e#a#sometimes##0123456789abcdef",
            "v1#nfs#%ff#/e#a#delete##0123456789abcdef",
            "v1#local#n#k#extra",
            "reallyfakevolumeid",
        ] {
            let _ = VolumeId::parse(id).unwrap_err();
        }
        assert_eq!(
            VolumeId::parse("some-static-handle"),
            Err(VolumeIdError::Foreign)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every short string over an alphabet of the separators.
        let alphabet = ['v', '1', '#', '%', '2', 'F', '/', '.', 'l', 'n', ','];
        let mut s = String::new();
        for i in 0..20_000u32 {
            s.clear();
            let mut x = i;
            for _ in 0..8 {
                s.push(alphabet[(x % alphabet.len() as u32) as usize]);
                x /= alphabet.len() as u32;
            }
            let _ = VolumeId::parse(&s);
            let _ = VolumeId::parse(&format!("v1#nfs#{s}"));
        }
    }
}
