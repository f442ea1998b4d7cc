//! Harness for `tests/manifests.rs`: reads the deploy/ YAML and the rendered Helm chart into
//! the Kubernetes API types, strictly. k8s-openapi's types skip fields they do not know, so
//! every skipped field is caught with serde_ignored and fails the parse: a misspelt
//! `mountPropagaton` or a field in the wrong place is an error here, as it is for
//! `kubectl apply --validate=strict`. Wrong types fail in the types themselves.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use serde::de::DeserializeOwned;

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// One manifest document, in its API type. `raw` is kept to compare renderings.
#[derive(Debug, Clone)]
pub struct Object {
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub typed: Typed,
    pub raw: serde_json::Value,
    pub origin: String,
}

/// Some kinds are parsed only to prove they are valid and are never inspected further.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub enum Typed {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
    CSIDriver(Box<CSIDriver>),
    StorageClass(Box<StorageClass>),
    Service(Box<Service>),
    PersistentVolume(Box<PersistentVolume>),
    PersistentVolumeClaim(Box<PersistentVolumeClaim>),
    Pod(Box<Pod>),
    ServiceMonitor(Box<ServiceMonitor>),
    VolumeSnapshotClass(Box<VolumeSnapshotClass>),
}

/// snapshot.storage.k8s.io/v1 VolumeSnapshotClass, from the external-snapshotter's CRD:
/// k8s-openapi has no type for it. Every field of the CRD is known here.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClass {
    pub api_version: String,
    pub kind: String,
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub driver: String,
    pub deletion_policy: String,
    #[serde(default)]
    pub parameters: std::collections::HashMap<String, String>,
}

/// The Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1), as far as the chart
/// uses it: k8s-openapi has no type for it. Every field the chart sets must be known here.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    pub namespace_selector: Option<NamespaceSelector>,
    pub endpoints: Vec<ScrapeEndpoint>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    pub match_names: Vec<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeEndpoint {
    pub port: String,
    pub path: Option<String>,
    pub interval: Option<String>,
}

/// `value` as `T`, failing on any field `T` does not have.
fn strict<T: DeserializeOwned>(value: &serde_yaml::Value, origin: &str) -> T {
    let mut ignored = Vec::new();
    let parsed: Result<T, _> =
        serde_ignored::deserialize(value.clone(), |path| ignored.push(path.to_string()));
    let parsed = parsed.unwrap_or_else(|e| panic!("{origin}: {e}"));
    assert!(
        ignored.is_empty(),
        "{origin}: fields the API does not have: {ignored:?}"
    );
    parsed
}

fn typed(kind: &str, doc: &serde_yaml::Value, origin: &str) -> Typed {
    match kind {
        "Namespace" => Typed::Namespace(Box::new(strict(doc, origin))),
        "ServiceAccount" => Typed::ServiceAccount(Box::new(strict(doc, origin))),
        "ClusterRole" => Typed::ClusterRole(Box::new(strict(doc, origin))),
        "ClusterRoleBinding" => Typed::ClusterRoleBinding(Box::new(strict(doc, origin))),
        "Role" => Typed::Role(Box::new(strict(doc, origin))),
        "RoleBinding" => Typed::RoleBinding(Box::new(strict(doc, origin))),
        "StatefulSet" => Typed::StatefulSet(Box::new(strict(doc, origin))),
        "DaemonSet" => Typed::DaemonSet(Box::new(strict(doc, origin))),
        "CSIDriver" => Typed::CSIDriver(Box::new(strict(doc, origin))),
        "StorageClass" => Typed::StorageClass(Box::new(strict(doc, origin))),
        "Service" => Typed::Service(Box::new(strict(doc, origin))),
        "PersistentVolume" => Typed::PersistentVolume(Box::new(strict(doc, origin))),
        "PersistentVolumeClaim" => Typed::PersistentVolumeClaim(Box::new(strict(doc, origin))),
        "Pod" => Typed::Pod(Box::new(strict(doc, origin))),
        "ServiceMonitor" => Typed::ServiceMonitor(Box::new(strict(doc, origin))),
        "VolumeSnapshotClass" => Typed::VolumeSnapshotClass(Box::new(strict(doc, origin))),
        other => panic!("{origin}: kind {other} is not one these tests know how to check"),
    }
}

/// Every document of a multi-document YAML text.
pub fn parse(text: &str, origin: &str) -> Vec<Object> {
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{origin} document {i}: {e}"));
        if value.is_null() {
            continue; // an empty document (a trailing `---`, a disabled template)
        }
        let origin = format!("{origin} document {i}");
        let field = |path: &[&str]| {
            let mut v = &value;
            for p in path {
                v = &v[*p];
            }
            v.as_str().map(str::to_string)
        };
        let kind = field(&["kind"]).unwrap_or_else(|| panic!("{origin}: no kind"));
        let name = field(&["metadata", "name"]).unwrap_or_else(|| panic!("{origin}: no name"));
        let namespace = field(&["metadata", "namespace"]);
        let typed = typed(&kind, &value, &origin);
        let raw = serde_json::to_value(&value).unwrap();
        objects.push(Object {
            kind,
            name,
            namespace,
            typed,
            raw,
            origin,
        });
    }
    objects
}

use serde::Deserialize as _;

pub fn load(path: &Path) -> Vec<Object> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    parse(&text, &path.display().to_string())
}

/// The plain manifests, as `kubectl apply -k deploy/` applies them: the files that
/// kustomization.yaml lists, and those of the directories it lists (each with its own
/// kustomization.yaml of plain resources, no patches).
pub fn plain() -> Vec<Object> {
    kustomized_files(&deploy_dir())
        .iter()
        .flat_map(|f| load(f))
        .collect()
}

/// The resource files a patch-free kustomization applies, in its order.
pub fn kustomized_files(dir: &Path) -> Vec<PathBuf> {
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    assert!(
        kustomization.get("patches").is_none(),
        "{dir:?}: read without kustomize, so no patches"
    );
    let resources = kustomization["resources"]
        .as_sequence()
        .expect("kustomization.yaml lists resources");
    resources
        .iter()
        .flat_map(|r| {
            let path = dir.join(r.as_str().expect("a file name"));
            if path.is_dir() {
                kustomized_files(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// kubectl, for `kubectl kustomize`: `PVDIR_KUBECTL`, the one tests/k8s/build.sh builds (its
/// cache directory), or `PATH`.
pub fn kubectl() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PVDIR_KUBECTL") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("PVDIR_K8S_CACHE").unwrap_or("/var/cache/pvdir-k8s".into());
    let built = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("kubectl")))
        .find(|p| p.exists());
    built.or_else(|| {
        Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success())
            .then(|| PathBuf::from("kubectl"))
    })
}

/// `kubectl kustomize dir`, as `kubectl apply -k dir` would apply it.
pub fn kustomize(kubectl: &Path, dir: &Path) -> Vec<Object> {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(
        &String::from_utf8_lossy(&out.stdout),
        &format!("kustomize {dir:?}"),
    )
}

/// The helm binary: `PVDIR_HELM`, `PATH`, or `go install`'s directory (where .ci/run puts it).
pub fn helm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PVDIR_HELM") {
        return Some(PathBuf::from(p));
    }
    if Command::new("helm").arg("version").output().is_ok() {
        return Some(PathBuf::from("helm"));
    }
    let gopath = Command::new("go").args(["env", "GOPATH"]).output().ok()?;
    let candidate = PathBuf::from(String::from_utf8_lossy(&gopath.stdout).trim()).join("bin/helm");
    candidate.exists().then_some(candidate)
}

/// `helm template` of the chart, as a user runs it, with `--set` overrides.
pub fn render_chart(helm: &Path, overrides: &[&str]) -> Vec<Object> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "pvdir"])
        .arg(deploy_dir().join("helm/pvdir"))
        .args(["--namespace", "pvdir"]);
    for o in overrides {
        cmd.args(["--set", o]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&String::from_utf8_lossy(&out.stdout), "helm template")
}

pub fn pod_specs(objects: &[Object]) -> Vec<(&Object, &PodSpec)> {
    objects
        .iter()
        .filter_map(|o| {
            let spec = match &o.typed {
                Typed::StatefulSet(s) => s.spec.as_ref()?.template.spec.as_ref(),
                Typed::DaemonSet(d) => d.spec.as_ref()?.template.spec.as_ref(),
                _ => None,
            }?;
            Some((o, spec))
        })
        .collect()
}

/// The RBAC rules a service account holds in `namespace`: cluster roles bound to it anywhere,
/// and roles bound to it in that namespace.
pub fn rules_of(objects: &[Object], account: &str, namespace: &str) -> Vec<PolicyRule> {
    let names_account = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == account
                && s.namespace.as_deref() == Some(namespace)
        })
    };
    let mut rules = Vec::new();
    for o in objects {
        let (role_kind, role_name, ns) = match &o.typed {
            Typed::ClusterRoleBinding(b) if names_account(&b.subjects) => {
                (b.role_ref.kind.clone(), b.role_ref.name.clone(), None)
            }
            Typed::RoleBinding(b) if names_account(&b.subjects) => (
                b.role_ref.kind.clone(),
                b.role_ref.name.clone(),
                o.namespace.clone(),
            ),
            _ => continue,
        };
        for r in objects {
            match (&r.typed, role_kind.as_str()) {
                (Typed::ClusterRole(c), "ClusterRole") if r.name == role_name => {
                    rules.extend(c.rules.clone().unwrap_or_default())
                }
                (Typed::Role(c), "Role") if r.name == role_name && r.namespace == ns => {
                    rules.extend(c.rules.clone().unwrap_or_default())
                }
                _ => {}
            }
        }
    }
    rules
}

/// Whether `rules` allow every verb on `group/resource`.
pub fn allows(rules: &[PolicyRule], group: &str, resource: &str, verbs: &[&str]) -> bool {
    verbs.iter().all(|verb| {
        rules.iter().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    })
}
