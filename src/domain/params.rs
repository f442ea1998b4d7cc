//! StorageClass parameters and volume context, deserialised with serde from the string maps CSI
//! carries. Unknown keys are refused (naming the key) so a typo in a StorageClass fails loudly at
//! provisioning instead of silently doing something else.

use std::collections::HashMap;

use serde::Deserialize;

use super::volume_id::{
    validate_mount_option, validate_server, validate_share, validate_volume_subdir, NfsExport,
    OnDelete, VolumeKey,
};
use crate::os::relpath::RelPath;

pub use super::mode::parse_mode;

/// A VolumeSnapshotClass's parameters: none of pvdir's own yet. What the snapshotter adds
/// with `--extra-create-metadata` is accepted and unused; anything else is refused, so a typo
/// is not silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotParams {
    #[serde(rename = "csi.storage.k8s.io/volumesnapshot/name", default)]
    _name: Option<String>,
    #[serde(rename = "csi.storage.k8s.io/volumesnapshot/namespace", default)]
    _namespace: Option<String>,
    #[serde(rename = "csi.storage.k8s.io/volumesnapshotcontent/name", default)]
    _content: Option<String>,
}

/// A VolumeGroupSnapshotClass's parameters: none of pvdir's own, only what the snapshotter
/// adds with `--extra-create-metadata`; anything else is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSnapshotParams {
    #[serde(rename = "csi.storage.k8s.io/volumegroupsnapshot/name", default)]
    _name: Option<String>,
    #[serde(rename = "csi.storage.k8s.io/volumegroupsnapshot/namespace", default)]
    _namespace: Option<String>,
    #[serde(rename = "csi.storage.k8s.io/volumegroupsnapshotcontent/name", default)]
    _content: Option<String>,
}

/// The mutable parameters of an NFS volume (a VolumeAttributesClass's `parameters`), given at
/// CreateVolume and changed by ControllerModifyVolume. At create they override the class's
/// parameter of the same name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsMutableParams {
    #[serde(rename = "mountPermissions", default)]
    pub mount_permissions: Option<String>,
}

/// The local backend has no mutable parameters: its controllers run on every node, and the
/// resizer that calls ControllerModifyVolume reaches only the one holding its lease, which
/// cannot change another node's volume. Any key given is refused, naming it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalMutableParams {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalParams {
    #[serde(rename = "mountPermissions", default)]
    pub mount_permissions: Option<String>,
    /// Whether the claim's size is enforced with a project quota (see [`QuotaPolicy`]).
    #[serde(default)]
    pub quota: QuotaPolicy,
    // Accepted and unused: the local directory is named by the volume name.
    #[serde(rename = "csi.storage.k8s.io/pvc/name", default)]
    _pvc_name: Option<String>,
    #[serde(rename = "csi.storage.k8s.io/pvc/namespace", default)]
    _pvc_namespace: Option<String>,
    #[serde(rename = "csi.storage.k8s.io/pv/name", default)]
    _pv_name: Option<String>,
}

/// The StorageClass parameter `quota` of the local backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPolicy {
    /// Enforce the size, or fail CreateVolume with FAILED_PRECONDITION where the node's
    /// filesystem cannot.
    Required,
    /// Enforce the size where the filesystem can; elsewhere provision without a limit (what
    /// every pvdir before quotas did, so existing StorageClasses keep working).
    #[default]
    Auto,
    /// Never set a limit.
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsParams {
    pub server: String,
    pub share: String,
    #[serde(rename = "subDir", default)]
    pub sub_dir: Option<String>,
    #[serde(rename = "mountPermissions", default)]
    pub mount_permissions: Option<String>,
    #[serde(rename = "onDelete", default)]
    pub on_delete: OnDelete,
    #[serde(rename = "reuseExisting", default)]
    pub reuse_existing: Option<String>,
    #[serde(rename = "csi.storage.k8s.io/pvc/name", default)]
    pvc_name: Option<String>,
    #[serde(rename = "csi.storage.k8s.io/pvc/namespace", default)]
    pvc_namespace: Option<String>,
    #[serde(rename = "csi.storage.k8s.io/pv/name", default)]
    pv_name: Option<String>,
}

/// The volume context of a static NFS PV (`volumeAttributes`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsContext {
    pub server: String,
    pub share: String,
    #[serde(rename = "subDir", default)]
    pub sub_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// Unknown key, missing key or wrong value type, as serde words it (it names the key).
    #[error("{0}")]
    Shape(String),
    #[error("parameter {key}: {reason}")]
    Value { key: &'static str, reason: String },
}

fn value(key: &'static str, reason: impl Into<String>) -> ParamsError {
    ParamsError::Value {
        key,
        reason: reason.into(),
    }
}

/// Deserialise `T` from a CSI string map.
pub fn from_map<T: for<'de> Deserialize<'de>>(
    map: &HashMap<String, String>,
) -> Result<T, ParamsError> {
    // Through serde_json's value model: it handles optional fields and string enums, and its
    // errors name the offending key ("unknown field `sharee`").
    let object: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| ParamsError::Shape(e.to_string()))
}

/// Volume context without the keys Kubernetes adds itself: kubelet's pod info
/// (`csi.storage.k8s.io/pod.name`, …) and the provisioner's
/// `storage.kubernetes.io/csiProvisionerIdentity`.
pub fn without_kubelet_keys(map: &HashMap<String, String>) -> HashMap<String, String> {
    map.iter()
        .filter(|(k, _)| {
            !k.starts_with("csi.storage.k8s.io/") && !k.starts_with("storage.kubernetes.io/")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub struct ResolvedNfs {
    pub server: String,
    pub share: String,
    pub subdir: RelPath,
    pub mode: Option<u32>,
    pub on_delete: OnDelete,
    /// Adopt a directory that already has content (a re-created claim's retained data).
    pub reuse_existing: bool,
}

impl NfsParams {
    /// The validated export path (`server` is validated too).
    pub fn export(&self) -> Result<String, ParamsError> {
        checked_share(&self.server, &self.share)
    }

    /// Validate the share and expand `subDir` for the volume `name` (the PV name).
    pub fn resolve(&self, name: &str) -> Result<ResolvedNfs, ParamsError> {
        let share = self.export()?;
        let pv_name = self.pv_name.as_deref().unwrap_or(name);
        let subdir = match &self.sub_dir {
            // The PV name as is when it is a plain name (always, for Kubernetes' pvc-<uid>),
            // else its hashed key, as for local volumes: any CSI name gives one directory.
            None => VolumeKey::from_name(pv_name)
                .map(|k| k.as_str().to_string())
                .ok_or_else(|| value("subDir", format!("no directory name for {pv_name:?}")))?,
            Some(template) => expand(template, |var| match var {
                "pvc.metadata.name" => self.pvc_name.as_deref(),
                "pvc.metadata.namespace" => self.pvc_namespace.as_deref(),
                "pv.metadata.name" => Some(pv_name),
                _ => None,
            })?,
        };
        // An absolute subDir would be read as relative to the share, which is not what it
        // says: refused rather than silently changed. A trailing slash changes nothing.
        if subdir.starts_with('/') {
            return Err(value(
                "subDir",
                format!("{subdir:?} is absolute; subDir is relative to the share"),
            ));
        }
        let subdir = RelPath::parse(subdir.trim_end_matches('/'))
            .map_err(|e| value("subDir", format!("{subdir:?}: {e}")))?;
        validate_volume_subdir(&subdir).map_err(|e| value("subDir", e.to_string()))?;
        Ok(ResolvedNfs {
            server: self.server.clone(),
            share,
            subdir,
            mode: parse_mode(self.mount_permissions.as_deref())?,
            on_delete: self.on_delete,
            reuse_existing: match self.reuse_existing.as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(value(
                        "reuseExisting",
                        format!("{other:?} is not true or false"),
                    ))
                }
            },
        })
    }
}

impl NfsContext {
    /// The export path to mount for a static PV.
    pub fn resolve(&self) -> Result<(String, String), ParamsError> {
        validate_server(&self.server).map_err(|e| value("server", e.to_string()))?;
        let share = normalise_share(&self.share);
        validate_share(&share).map_err(|e| value("share", e.to_string()))?;
        let path = match self.sub_dir.as_deref().map(|s| s.trim_matches('/')) {
            None | Some("") => share,
            Some(sub) => {
                let sub = RelPath::parse(sub).map_err(|e| value("subDir", e.to_string()))?;
                join_export(&share, &sub)
            }
        };
        Ok((self.server.clone(), path))
    }
}

/// `share` with a trailing slash dropped (`/export/` and `/export` are the same export).
/// The share in the form IDs hold, once `server` and it are checked.
fn checked_share(server: &str, share: &str) -> Result<String, ParamsError> {
    validate_server(server).map_err(|e| value("server", e.to_string()))?;
    let share = normalise_share(share);
    validate_share(&share).map_err(|e| value("share", e.to_string()))?;
    Ok(share)
}

/// One `--nfs-export`: an export the NFS controller serves, whose volumes and snapshots
/// ListVolumes and ListSnapshots cover. Named with a StorageClass's own keys and values,
/// `server=<host>;share=<path>[;mountOptions=<option>,<option>…]`, where the options are the
/// class's `mountOptions` (volume IDs carry them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportParams {
    server: String,
    share: String,
    #[serde(rename = "mountOptions", default)]
    mount_options: Option<String>,
}

pub fn parse_export_flag(text: &str) -> Result<NfsExport, ParamsError> {
    let mut map = HashMap::new();
    for part in text.split(';').filter(|p| !p.trim().is_empty()) {
        let (key, val) = part
            .split_once('=')
            .ok_or_else(|| ParamsError::Shape(format!("{part:?} is not key=value")))?;
        if map
            .insert(key.trim().to_string(), val.trim().to_string())
            .is_some()
        {
            return Err(ParamsError::Shape(format!("{:?} given twice", key.trim())));
        }
    }
    let params: ExportParams = from_map(&map)?;
    let share = checked_share(&params.server, &params.share)?;
    let mut mount_options: Vec<String> = Vec::new();
    let given = params.mount_options.unwrap_or_default();
    for option in given.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        validate_mount_option(option).map_err(|e| value("mountOptions", e.to_string()))?;
        // As a create merges a class's options: in order, each once.
        if !mount_options.iter().any(|o| o == option) {
            mount_options.push(option.to_string());
        }
    }
    Ok(NfsExport {
        server: params.server,
        share,
        mount_options,
    })
}

fn normalise_share(share: &str) -> String {
    let trimmed = share.trim_end_matches('/');
    if trimmed.is_empty() && share.starts_with('/') {
        "/".into()
    } else {
        trimmed.into()
    }
}

/// The server-side path of `subdir` on `share`.
pub fn join_export(share: &str, subdir: &RelPath) -> String {
    if share == "/" {
        format!("/{subdir}")
    } else {
        format!("{share}/{subdir}")
    }
}

/// Replace every `${var}`; an unknown variable or one without a value is an error, because a
/// literal `${...}` directory name is never what the StorageClass author meant.
fn expand<'a>(
    template: &str,
    lookup: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, ParamsError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| value("subDir", format!("unclosed ${{ in {template:?}")))?;
        let var = &after[..end];
        let v = lookup(var).ok_or_else(|| {
            value(
                "subDir",
                format!("${{{var}}} is unknown or not provided (does the provisioner run with --extra-create-metadata?)"),
            )
        })?;
        out.push_str(v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn seed_params() -> HashMap<String, String> {
        map(&[
            ("server", "10.0.0.1"),
            ("share", "/export/"),
            ("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}"),
            ("csi.storage.k8s.io/pvc/name", "www-web-0"),
            ("csi.storage.k8s.io/pvc/namespace", "default"),
            ("csi.storage.k8s.io/pv/name", "pvc-123"),
        ])
    }

    #[test]
    fn template_expands_from_metadata() {
        let p: NfsParams = from_map(&seed_params()).unwrap();
        let r = p.resolve("pvc-123").unwrap();
        assert_eq!(r.subdir.as_str(), "default/www-web-0");
        assert_eq!(r.share, "/export");
        assert_eq!(r.on_delete, OnDelete::Delete);
    }

    #[test]
    fn default_subdir_is_pv_name() {
        let p: NfsParams = from_map(&map(&[("server", "s"), ("share", "/e")])).unwrap();
        assert_eq!(p.resolve("pvc-9").unwrap().subdir.as_str(), "pvc-9");
    }

    #[test]
    fn unknown_parameter_is_named() {
        let mut m = seed_params();
        m.insert("sharee".into(), "x".into());
        let ParamsError::Shape(msg) = from_map::<NfsParams>(&m).unwrap_err() else {
            panic!()
        };
        assert!(msg.contains("sharee"));
    }

    #[test]
    fn bad_values_are_refused() {
        for (k, v) in [
            ("subDir", "../escape"),
            ("subDir", "${pvc.metadata.labels}"),
            ("subDir", "${pvc.metadata.name"),
            ("mountPermissions", "0999"),
            ("mountPermissions", "rwx"),
            ("share", "relative"),
            ("share", "/a/../b"),
            ("server", "-oexec"),
            ("server", "256.1.1.1"),
            ("server", "1.2.3"),
            ("subDir", "/abs"),
            ("subDir", "/${pvc.metadata.name}"),
            ("subDir", ".pvdir"),
            ("subDir", ".pvdir/${pvc.metadata.name}"),
            ("mountPermissions", "4777"),
        ] {
            let mut m = seed_params();
            m.insert(k.into(), v.into());
            let r = from_map::<NfsParams>(&m).and_then(|p| p.resolve("pvc-1").map(|_| ()));
            assert!(matches!(r, Err(ParamsError::Value { .. })), "{k}={v}");
        }
        let mut m = seed_params();
        m.insert("onDelete".into(), "shred".into());
        assert!(matches!(
            from_map::<NfsParams>(&m),
            Err(ParamsError::Shape(_))
        ));
    }

    #[test]
    fn template_needs_metadata() {
        let m = map(&[
            ("server", "s"),
            ("share", "/e"),
            ("subDir", "${pvc.metadata.name}"),
        ]);
        let p: NfsParams = from_map(&m).unwrap();
        assert!(p.resolve("pv").is_err());
    }

    #[test]
    fn static_context_resolves_export_path() {
        let c: NfsContext = from_map(&without_kubelet_keys(&map(&[
            ("server", "s"),
            ("share", "/"),
            ("subDir", "a/b/"),
            ("csi.storage.k8s.io/pod.name", "web-0"),
        ])))
        .unwrap();
        assert_eq!(c.resolve().unwrap(), ("s".into(), "/a/b".into()));
        let bad: NfsContext =
            from_map(&map(&[("server", "s"), ("share", "/e"), ("subDir", "..")])).unwrap();
        assert!(bad.resolve().is_err());
    }

    #[test]
    fn local_params_accept_metadata_only() {
        let mut m = map(&[
            ("csi.storage.k8s.io/pv/name", "p"),
            ("mountPermissions", "0770"),
        ]);
        let p: LocalParams = from_map(&m).unwrap();
        assert_eq!(
            parse_mode(p.mount_permissions.as_deref()).unwrap(),
            Some(0o770)
        );
        m.insert("server".into(), "x".into());
        assert!(from_map::<LocalParams>(&m).is_err());
    }

    #[test]
    fn export_flag_names_an_export_as_a_class_does() {
        let e =
            parse_export_flag("server=10.0.0.1; share=/export/;mountOptions=nfsvers=4.2,hard,hard")
                .unwrap();
        assert_eq!(
            (e.server.as_str(), e.share.as_str()),
            ("10.0.0.1", "/export")
        );
        assert_eq!(e.mount_options, ["nfsvers=4.2", "hard"]);
        let bare = parse_export_flag("server=nfs.example;share=/").unwrap();
        assert!(bare.mount_options.is_empty());
    }

    #[test]
    fn export_flag_refuses_what_a_class_could_not_name() {
        for bad in [
            "",
            "server=10.0.0.1",
            "share=/export",
            "server=10.0.0.1;share=export",
            "server=256.1.1.1;share=/export",
            "server=10.0.0.1;share=/export;subDir=x",
            "server=10.0.0.1;share=/export;share=/other",
            "server=10.0.0.1;share=/export;mountOptions=a b",
            "server=10.0.0.1;share=/export;noequals",
        ] {
            assert!(parse_export_flag(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
