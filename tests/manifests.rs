//! The install manifests (deploy/) and the Helm chart, checked against the API types and
//! against the binary. A driver whose manifests name a wrong socket, lack an RBAC verb or a
//! mount propagation does not work for anyone, whatever csi-sanity says; these tests catch that
//! without a cluster:
//! - every document parses strictly into its Kubernetes type (see `common/manifests.rs`);
//! - the plain manifests equal `helm template` of the chart with default values;
//! - the pvdir containers' arguments are accepted by the binary's own parser;
//! - sidecars reach the sockets pvdir serves, and pvdir (or, in the standard-sidecars
//!   variant, the registrars) tells kubelet the host path of those same sockets, in kubelet's
//!   plugin directory for the driver name served there;
//! - kustomize's rendering of deploy/ and of the variant equal the chart's (kubectl from
//!   tests/k8s/build.sh renders them);
//! - each sidecar's service account holds the RBAC it needs, and no rule uses a wildcard.
//!
//! helm comes from `go install` (tests/setup.sh); without it the chart tests fail unless
//! `PVDIR_SKIP_HELM=1` says to skip them.

#[path = "common/manifests.rs"]
mod manifests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use clap::Parser;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use manifests::*;
use pvdir::cli::{Cli, Command, Mode, ServeArgs};
use pvdir::domain::params::{from_map, LocalParams, NfsContext, NfsParams};

const NAMESPACE: &str = "pvdir";

fn args_of(c: &Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect()
}

/// `--flag=value` or `--flag value` from a sidecar's arguments.
fn flag(c: &Container, name: &str) -> Option<String> {
    let args = args_of(c);
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("--{name}="))
            .map(str::to_string)
            .or_else(|| {
                (a == &format!("--{name}")).then(|| args.get(i + 1).cloned().unwrap_or_default())
            })
    })
}

fn has_flag(c: &Container, name: &str) -> bool {
    args_of(c)
        .iter()
        .any(|a| a == &format!("--{name}") || a == &format!("--{name}=true"))
}

/// The pvdir container's arguments, parsed by the binary's own parser, with `$(VAR)`
/// references resolved from the container's environment (as kubelet does). Its `PVDIR_*`
/// environment is passed as the flags of the same name, which is what the binary reads them
/// as; a variable that names no flag fails the parse.
fn serve_args(c: &Container) -> ServeArgs {
    let env: Vec<String> = c.env.iter().flatten().map(|e| e.name.clone()).collect();
    let from_env = c.env.iter().flatten().filter_map(|e| {
        let flag = e
            .name
            .strip_prefix("PVDIR_")?
            .to_lowercase()
            .replace('_', "-");
        Some(format!("--{flag}={}", e.value.clone().unwrap_or_default()))
    });
    let args: Vec<String> = args_of(c)
        .into_iter()
        .chain(from_env)
        .map(|a| {
            let mut a = a;
            while let Some(start) = a.find("$(") {
                let end = a[start..].find(')').expect("closed $(") + start;
                let var = &a[start + 2..end];
                assert!(
                    env.iter().any(|e| e == var),
                    "{}: $({var}) is not in its env",
                    c.name
                );
                a.replace_range(start..=end, "value-of-env");
            }
            a
        })
        .collect();
    let cli = Cli::try_parse_from(std::iter::once("pvdir".to_string()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("the binary rejects {args:?}: {e}"));
    match cli.command {
        Command::Serve(args) => args,
        other => panic!("{}: not `serve`: {other:?}", c.name),
    }
}

fn pvdir_container(spec: &PodSpec) -> &Container {
    spec.containers
        .iter()
        .find(|c| c.image.as_deref().is_some_and(|i| i.contains("/pvdir:")))
        .expect("a pvdir container")
}

/// Where a path inside a container lives: (volume name, path below the volume's root).
fn locate(spec: &PodSpec, c: &Container, path: &Path) -> (String, PathBuf) {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| panic!("{}: {path:?} is on no volume", c.name));
    assert!(
        spec.volumes.iter().flatten().any(|v| v.name == mount.name),
        "{}: volume {} is not defined",
        c.name,
        mount.name
    );
    let rel = path.strip_prefix(&mount.mount_path).unwrap().to_path_buf();
    (mount.name.clone(), rel)
}

fn host_path(spec: &PodSpec, volume: &str) -> Option<PathBuf> {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .and_then(|v| v.host_path.as_ref())
        .map(|h| PathBuf::from(&h.path))
}

fn unix_path(endpoint: &str) -> PathBuf {
    PathBuf::from(
        endpoint
            .strip_prefix("unix://")
            .unwrap_or_else(|| panic!("{endpoint} is not a unix socket")),
    )
}

/// The sockets a pvdir container serves: driver name → (mode, location).
fn served(spec: &PodSpec) -> BTreeMap<String, (Mode, (String, PathBuf))> {
    let c = pvdir_container(spec);
    let args = serve_args(c);
    let (local_mode, nfs_mode) = args.modes();
    let mut out = BTreeMap::new();
    if let Some(e) = &args.local_endpoint {
        out.insert(
            args.local_driver_name.clone(),
            (local_mode, locate(spec, c, &unix_path(e))),
        );
    }
    if let Some(e) = &args.nfs_endpoint {
        out.insert(
            args.nfs_driver_name.clone(),
            (nfs_mode, locate(spec, c, &unix_path(e))),
        );
    }
    out
}

fn sidecars<'a>(spec: &'a PodSpec, image: &str) -> Vec<&'a Container> {
    spec.containers
        .iter()
        .filter(|c| {
            c.image
                .as_deref()
                .is_some_and(|i| i.contains(&format!("/{image}:")))
        })
        .collect()
}

/// The driver whose socket a sidecar's `--csi-address` reaches, and that driver's mode.
fn driver_of(spec: &PodSpec, c: &Container) -> (String, Mode) {
    let address = flag(c, "csi-address").unwrap_or_else(|| panic!("{}: no --csi-address", c.name));
    let at = locate(spec, c, Path::new(&address));
    served(spec)
        .into_iter()
        .find(|(_, (_, loc))| *loc == at)
        .map(|(name, (mode, _))| (name, mode))
        .unwrap_or_else(|| panic!("{}: {address} is not a socket pvdir serves", c.name))
}

fn check_workloads(objects: &[Object]) {
    let defaults = match Cli::parse_from(["pvdir", "serve"]).command {
        Command::Serve(a) => a,
        _ => unreachable!(),
    };
    let drivers: Vec<String> = objects
        .iter()
        .filter(|o| o.kind == "CSIDriver")
        .map(|o| o.name.clone())
        .collect();
    assert_eq!(
        drivers.iter().collect::<std::collections::BTreeSet<_>>(),
        [&defaults.local_driver_name, &defaults.nfs_driver_name]
            .into_iter()
            .collect(),
        "CSIDriver objects for exactly the binary's two driver names"
    );
    let pods = pod_specs(objects);
    assert!(pods.len() >= 2, "a controller and a node workload");
    let mut registered = Vec::new();
    let mut provisioned = Vec::new();
    for (o, spec) in pods {
        let pvdir = pvdir_container(spec);
        registered.extend(self_registered(spec));
        for (driver, _) in served(spec).iter() {
            assert!(
                drivers.contains(driver),
                "{}: serves unknown {driver}",
                o.name
            );
        }
        for c in sidecars(spec, "csi-node-driver-registrar") {
            let (driver, mode) = driver_of(spec, c);
            assert!(
                mode.node(),
                "{}: registers {driver}, which serves no Node service",
                c.name
            );
            // kubelet dials the host path the registrar reports; it must be the very socket.
            let reported = PathBuf::from(flag(c, "kubelet-registration-path").unwrap());
            let (volume, rel) = locate(spec, c, Path::new(&flag(c, "csi-address").unwrap()));
            let host = host_path(spec, &volume).expect("registrar socket dir is a hostPath");
            assert_eq!(reported, host.join(rel), "{}", c.name);
            assert_eq!(
                host,
                Path::new("/var/lib/kubelet/plugins").join(&driver),
                "{}: kubelet's plugin directory for {driver}",
                c.name
            );
            let registration = locate(spec, c, Path::new("/registration"));
            assert_eq!(
                host_path(spec, &registration.0),
                Some("/var/lib/kubelet/plugins_registry".into())
            );
            registered.push(driver);
        }
        for c in sidecars(spec, "csi-provisioner") {
            let (driver, mode) = driver_of(spec, c);
            assert!(
                mode.controller(),
                "{}: {driver} serves no Controller",
                c.name
            );
            assert!(
                has_flag(c, "extra-create-metadata"),
                "{}: subDir templates need PVC metadata",
                c.name
            );
            if has_flag(c, "node-deployment") {
                for f in ["enable-capacity", "strict-topology"] {
                    assert!(has_flag(c, f), "{}: --{f}", c.name);
                }
                assert_eq!(flag(c, "immediate-topology").as_deref(), Some("false"));
                let env: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
                assert!(
                    env.contains(&"NODE_NAME"),
                    "node deployment needs NODE_NAME"
                );
            } else {
                assert!(
                    has_flag(c, "leader-election"),
                    "{}: one active provisioner",
                    c.name
                );
            }
            provisioned.push(driver);
        }
        for c in sidecars(spec, "livenessprobe") {
            driver_of(spec, c);
        }
        check_probe_ports(o, spec);
        if served(spec).values().any(|(mode, _)| mode.node()) {
            // Mounts made in the container must reach kubelet and the pods.
            let kubelet = locate(spec, pvdir, Path::new("/var/lib/kubelet/pods"));
            let m = pvdir
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == kubelet.0)
                .unwrap();
            assert_eq!(m.mount_propagation.as_deref(), Some("Bidirectional"));
            assert_eq!(m.mount_path, "/var/lib/kubelet", "same path as on the host");
            let privileged = pvdir.security_context.as_ref().and_then(|s| s.privileged);
            assert_eq!(privileged, Some(true), "Bidirectional propagation needs it");
            let args = serve_args(pvdir);
            if args.local_endpoint.is_some() {
                let (volume, rel) = locate(spec, pvdir, &args.local_root);
                assert_eq!(
                    host_path(spec, &volume).map(|h| h.join(rel)),
                    Some(args.local_root.clone()),
                    "local volumes live on the host, at the path the binary is given"
                );
            }
        }
    }
    for driver in &drivers {
        assert!(
            registered.contains(driver),
            "{driver} is registered with kubelet"
        );
        assert!(provisioned.contains(driver), "{driver} has a provisioner");
    }
}

/// The drivers the pvdir container registers with kubelet itself: each serves the Node
/// service, the socket it tells kubelet is the very socket it serves on the host, and it
/// registers in kubelet's own plugins_registry. A registrar sidecar for the same driver
/// would fight it for the same socket name.
fn self_registered(spec: &PodSpec) -> Vec<String> {
    let pvdir = pvdir_container(spec);
    let args = serve_args(pvdir);
    let Some(dir) = &args.kubelet_registration_dir else {
        return Vec::new();
    };
    let (volume, rel) = locate(spec, pvdir, dir);
    assert_eq!(
        host_path(spec, &volume).map(|h| h.join(rel)),
        Some("/var/lib/kubelet/plugins_registry".into()),
        "pvdir registers where kubelet looks"
    );
    let mut out = Vec::new();
    for (driver, (mode, (volume, rel))) in served(spec) {
        if !mode.node() {
            continue;
        }
        let told = if driver == args.local_driver_name {
            args.local_registration_path.clone()
        } else {
            args.nfs_registration_path.clone()
        };
        let host = host_path(spec, &volume).expect("the socket dir is a hostPath");
        assert_eq!(
            told,
            Some(host.join(&rel)),
            "{driver}: kubelet is told the socket's host path"
        );
        assert_eq!(
            host,
            Path::new("/var/lib/kubelet/plugins").join(&driver),
            "kubelet's plugin directory for {driver}"
        );
        for c in sidecars(spec, "csi-node-driver-registrar") {
            assert_ne!(driver_of(spec, c).0, driver, "{driver} registered twice");
        }
        out.push(driver);
    }
    out
}

/// Every HTTP probe asks a port that a container of the pod really serves (a livenessprobe's
/// `--health-port`, a registrar's `--http-endpoint`), and on the host's network no two
/// containers claim one port.
fn check_probe_ports(o: &Object, spec: &PodSpec) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let pvdir = pvdir_container(spec);
    let served: Vec<i32> = spec
        .containers
        .iter()
        .filter_map(|c| {
            let http = match c.name == pvdir.name {
                true => serve_args(c).http_endpoint,
                false => flag(c, "http-endpoint"),
            };
            flag(c, "health-port").or_else(|| http.map(|e| e.trim_start_matches(':').to_string()))
        })
        .map(|p| p.parse().expect("a port number"))
        .collect();
    for c in &spec.containers {
        let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
        for get in probes
            .into_iter()
            .flatten()
            .filter_map(|p| p.http_get.as_ref())
        {
            let port = match &get.port {
                IntOrString::Int(p) => *p,
                IntOrString::String(name) => {
                    c.ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(name))
                        .unwrap_or_else(|| panic!("{}/{}: no port named {name}", o.name, c.name))
                        .container_port
                }
            };
            assert!(
                served.contains(&port),
                "{}/{}: nothing serves port {port}",
                o.name,
                c.name
            );
        }
    }
    if spec.host_network == Some(true) {
        let declared: Vec<i32> = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten().map(|p| p.container_port))
            .collect();
        for ports in [declared, served] {
            let mut unique = ports.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                ports.len(),
                "{}: a host port twice: {ports:?}",
                o.name
            );
        }
    }
}

/// What each sidecar does with the API, from its documentation: (group, resource, verbs).
fn needs(c: &Container) -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    let mut out: Vec<(&str, &str, &[&str])> = Vec::new();
    let image = c.image.as_deref().unwrap_or_default();
    let known = [
        "/pvdir:",
        "/csi-provisioner:",
        "/csi-node-driver-registrar:",
        "/livenessprobe:",
        "/csi-resizer:",
        "/csi-snapshotter:",
    ];
    assert!(
        known.iter().any(|k| image.contains(k)),
        "{}: {image} is a container these tests do not know the needs of",
        c.name
    );
    if image.contains("/csi-provisioner:") {
        out.extend([
            // patch: v5 puts its own finalizer on the PVs it provisions.
            (
                "",
                "persistentvolumes",
                &["get", "list", "watch", "create", "delete", "patch"][..],
            ),
            (
                "",
                "persistentvolumeclaims",
                &["get", "list", "watch", "update"][..],
            ),
            (
                "storage.k8s.io",
                "storageclasses",
                &["get", "list", "watch"][..],
            ),
            (
                "",
                "events",
                &["list", "watch", "create", "update", "patch"][..],
            ),
            ("storage.k8s.io", "csinodes", &["get", "list", "watch"][..]),
            ("", "nodes", &["get", "list", "watch"][..]),
            // A claim restored from a VolumeSnapshot: the provisioner reads the snapshot and
            // its content to find the handle (both drivers restore).
            (
                "snapshot.storage.k8s.io",
                "volumesnapshots",
                &["get", "list"][..],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents",
                &["get", "list"][..],
            ),
        ]);
        if has_flag(c, "enable-capacity") {
            out.extend([
                (
                    "storage.k8s.io",
                    "csistoragecapacities",
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ][..],
                ),
                ("", "pods", &["get"][..]),
                ("apps", "daemonsets", &["get"][..]),
            ]);
        }
    }
    if image.contains("/csi-resizer:") {
        out.extend([
            (
                "",
                "persistentvolumes",
                &["get", "list", "watch", "patch"][..],
            ),
            ("", "persistentvolumeclaims", &["get", "list", "watch"][..]),
            ("", "persistentvolumeclaims/status", &["patch"][..]),
            (
                "",
                "events",
                &["list", "watch", "create", "update", "patch"][..],
            ),
        ]);
    }
    if image.contains("/csi-snapshotter:") {
        out.extend([
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotclasses",
                &["get", "list", "watch"][..],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents",
                &["get", "list", "watch", "update", "patch"][..],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents/status",
                &["update", "patch"][..],
            ),
            (
                "",
                "events",
                &["list", "watch", "create", "update", "patch"][..],
            ),
        ]);
    }
    if has_flag(c, "leader-election") {
        out.push((
            "coordination.k8s.io",
            "leases",
            &["get", "watch", "list", "delete", "update", "create"][..],
        ));
    }
    out
}

fn check_rbac(objects: &[Object]) {
    for o in objects {
        let rules = match &o.typed {
            Typed::ClusterRole(r) => r.rules.clone().unwrap_or_default(),
            Typed::Role(r) => r.rules.clone().unwrap_or_default(),
            _ => continue,
        };
        for r in rules {
            let all = r
                .verbs
                .iter()
                .chain(r.resources.iter().flatten())
                .chain(r.api_groups.iter().flatten());
            assert!(
                all.clone().all(|x| x != "*"),
                "{}: wildcard in {r:?}",
                o.name
            );
        }
    }
    for (o, spec) in pod_specs(objects) {
        let account = spec
            .service_account_name
            .as_deref()
            .expect("a service account");
        let namespace = o.namespace.as_deref().unwrap_or(NAMESPACE);
        assert!(
            objects
                .iter()
                .any(|x| x.kind == "ServiceAccount" && x.name == account),
            "{account} exists"
        );
        let rules = rules_of(objects, account, namespace);
        for c in &spec.containers {
            for (group, resource, verbs) in needs(c) {
                assert!(
                    allows(&rules, group, resource, verbs),
                    "{}/{}: {account} lacks {verbs:?} on {group}/{resource}",
                    o.name,
                    c.name
                );
            }
        }
    }
}

#[test]
fn every_manifest_and_example_parses_strictly() {
    let dir = deploy_dir();
    // The variants hold patches, not objects: they are checked rendered, below.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("base"))
        .unwrap()
        .chain(std::fs::read_dir(dir.join("examples")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    let objects: Vec<Object> = files.iter().flat_map(|f| load(f)).collect();
    assert!(objects.len() > 15, "{} objects", objects.len());
    // Every plain file is applied by kustomize; examples are applied by hand.
    let listed: Vec<String> = plain().iter().map(|o| o.origin.clone()).collect();
    for f in files
        .iter()
        .filter(|f| !f.starts_with(dir.join("examples")))
    {
        assert!(
            listed
                .iter()
                .any(|o| o.starts_with(&f.display().to_string())),
            "{f:?} is not in kustomization.yaml"
        );
    }
}

#[test]
fn plain_manifests_agree_with_the_binary_and_each_other() {
    let objects = plain();
    check_workloads(&objects);
    check_rbac(&objects);
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    for (o, spec) in pod_specs(&objects) {
        let image = pvdir_container(spec).image.clone().unwrap();
        assert!(
            image.ends_with(&format!(":{version}")),
            "{}: {image} is not this release",
            o.name
        );
    }
}

#[test]
fn static_pvs_in_the_examples_name_an_export_the_node_accepts() {
    let examples = deploy_dir().join("examples");
    let mut found = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        for o in load(&entry.unwrap().path()) {
            let Typed::PersistentVolume(pv) = &o.typed else {
                continue;
            };
            let csi = pv
                .spec
                .as_ref()
                .and_then(|s| s.csi.as_ref())
                .expect("a CSI PV");
            assert_eq!(csi.driver, "nfs.pvdir.io");
            let attributes: HashMap<String, String> = csi
                .volume_attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            let context = from_map::<NfsContext>(&attributes).and_then(|c| c.resolve());
            assert!(context.is_ok(), "{}: {context:?}", o.name);
            found += 1;
        }
    }
    assert!(found > 0, "an example of a static PV");
}

#[test]
fn storage_classes_use_the_served_drivers_and_local_waits_for_the_pod() {
    let objects: Vec<Object> = plain();
    let drivers: Vec<&str> = objects
        .iter()
        .filter(|o| o.kind == "CSIDriver")
        .map(|o| o.name.as_str())
        .collect();
    let mut seen = BTreeMap::new();
    for o in &objects {
        let (Typed::StorageClass(sc), _) = (&o.typed, ()) else {
            continue;
        };
        assert!(drivers.contains(&sc.provisioner.as_str()), "{}", o.name);
        for option in sc.mount_options.iter().flatten() {
            let valid = pvdir::domain::access::check_mount_option(option);
            assert!(valid.is_ok(), "{}: {option}: {valid:?}", o.name);
        }
        seen.insert(
            o.name.clone(),
            (
                sc.reclaim_policy.clone(),
                sc.volume_binding_mode.clone(),
                sc.parameters.clone().unwrap_or_default(),
            ),
        );
    }
    // The binary accepts every class's parameters, as CreateVolume would receive them (the
    // provisioner adds the PVC metadata that subDir templates use).
    for (name, (_, _, params)) in &seen {
        let mut params: HashMap<String, String> = params.clone().into_iter().collect();
        params.insert("csi.storage.k8s.io/pvc/name".into(), "www-web-0".into());
        params.insert("csi.storage.k8s.io/pvc/namespace".into(), "default".into());
        params.insert("csi.storage.k8s.io/pv/name".into(), "pvc-1".into());
        let accepted = if name.starts_with("pvdir-nfs") {
            from_map::<NfsParams>(&params).and_then(|p| p.resolve("pvc-1").map(|_| ()))
        } else {
            from_map::<LocalParams>(&params).map(|_| ())
        };
        assert!(accepted.is_ok(), "{name}: {accepted:?}");
    }
    let on_delete = |name: &str| seen[name].2.get("onDelete").cloned();
    assert_eq!(on_delete("pvdir-nfs").as_deref(), Some("delete"));
    assert_eq!(on_delete("pvdir-nfs-retain").as_deref(), Some("retain"));
    assert_eq!(seen["pvdir-nfs-retain"].0.as_deref(), Some("Retain"));
    assert_eq!(on_delete("pvdir-nfs-archive").as_deref(), Some("archive"));
    assert_eq!(
        seen["pvdir-local"].1.as_deref(),
        Some("WaitForFirstConsumer")
    );
    let local = objects.iter().find_map(|o| match &o.typed {
        Typed::CSIDriver(d) if o.name == "local.pvdir.io" => Some(d.spec.clone()),
        _ => None,
    });
    assert_eq!(
        local.unwrap().storage_capacity,
        Some(true),
        "the scheduler needs capacity"
    );
}

/// The exports the NFS controllers of `objects` list (their `--nfs-export`s).
fn listed_exports(objects: &[Object]) -> Vec<pvdir::domain::volume_id::NfsExport> {
    pod_specs(objects)
        .into_iter()
        .map(|(_, spec)| serve_args(pvdir_container(spec)))
        .filter(|args| args.nfs_endpoint.is_some() && args.modes().1.controller())
        .flat_map(|args| args.nfs_exports)
        .collect()
}

/// ListVolumes and ListSnapshots cover an export only when the controller names it, with the
/// options its class mounts it with (volume IDs carry them): every NFS class's export must be
/// among the controller's `--nfs-export`s.
fn check_nfs_classes_listed(objects: &[Object]) {
    let listed = listed_exports(objects);
    let mut classes = 0;
    for o in objects {
        let Typed::StorageClass(sc) = &o.typed else {
            continue;
        };
        if sc.provisioner != "nfs.pvdir.io" {
            continue;
        }
        classes += 1;
        let params = sc.parameters.clone().unwrap_or_default();
        let options = sc.mount_options.clone().unwrap_or_default().join(",");
        let wanted = pvdir::domain::params::parse_export_flag(&format!(
            "server={};share={};mountOptions={options}",
            params["server"], params["share"]
        ))
        .unwrap_or_else(|e| panic!("{}: {e}", o.name));
        assert!(
            listed.contains(&wanted),
            "{}: {wanted:?} is not among the controller's --nfs-export {listed:?}",
            o.name
        );
    }
    assert!(classes > 0, "no NFS StorageClass checked");
}

#[test]
fn the_nfs_controller_lists_the_exports_of_its_classes() {
    check_nfs_classes_listed(&plain());
}

fn helm_or_skip() -> Option<PathBuf> {
    if std::env::var_os("PVDIR_SKIP_HELM").is_some_and(|v| v == "1") {
        eprintln!("skipped: PVDIR_SKIP_HELM=1");
        return None;
    }
    Some(helm().expect(
        "helm is needed to render the chart: go install helm.sh/helm/v3/cmd/helm@v3.22.0 \
         (or set PVDIR_SKIP_HELM=1 to skip these tests explicitly)",
    ))
}

fn by_identity(
    objects: &[Object],
) -> BTreeMap<(String, Option<String>, String), serde_json::Value> {
    objects
        .iter()
        .map(|o| {
            (
                (o.kind.clone(), o.namespace.clone(), o.name.clone()),
                o.raw.clone(),
            )
        })
        .collect()
}

fn assert_same(rendered: &[Object], plain: &[Object]) {
    let (rendered, plain) = (by_identity(rendered), by_identity(plain));
    let names = |m: &BTreeMap<_, _>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&rendered), names(&plain), "the same objects");
    for (key, value) in &plain {
        assert_eq!(
            &rendered[key], value,
            "{key:?} differs between chart and plain manifests"
        );
    }
}

#[test]
fn the_chart_renders_the_plain_manifests() {
    let Some(helm) = helm_or_skip() else { return };
    // `helm install` wants the namespace to exist already, so by default the chart leaves it
    // out; everything else is the same.
    let without_namespace: Vec<Object> = plain()
        .into_iter()
        .filter(|o| o.kind != "Namespace")
        .collect();
    assert_same(&render_chart(&helm, &[]), &without_namespace);
    assert_same(&render_chart(&helm, &["createNamespace=true"]), &plain());
}

fn kubectl_or_skip() -> Option<PathBuf> {
    if std::env::var_os("PVDIR_SKIP_KUSTOMIZE").is_some_and(|v| v == "1") {
        eprintln!("skipped: PVDIR_SKIP_KUSTOMIZE=1");
        return None;
    }
    Some(kubectl().expect(
        "kubectl is needed to render the kustomize variants: tests/k8s/build.sh builds it \
         (or set PVDIR_SKIP_KUSTOMIZE=1 to skip these tests explicitly)",
    ))
}

/// What users apply: kustomize's own rendering of deploy/ is the plain files read here.
#[test]
fn kustomize_applies_the_plain_files() {
    let Some(kubectl) = kubectl_or_skip() else {
        return;
    };
    assert_same(&kustomize(&kubectl, &deploy_dir()), &plain());
}

/// The standard-sidecars variant is the chart with standardSidecars=true, and it is wired as
/// the plain manifests are: each driver registered once (by a registrar now), every probe on
/// a port something serves.
#[test]
fn the_standard_sidecars_variant_is_the_chart_with_them_on() {
    let Some(kubectl) = kubectl_or_skip() else {
        return;
    };
    let Some(helm) = helm_or_skip() else { return };
    let variant = kustomize(&kubectl, &deploy_dir().join("variants/standard-sidecars"));
    assert_same(
        &render_chart(&helm, &["createNamespace=true", "standardSidecars=true"]),
        &variant,
    );
    check_workloads(&variant);
    check_rbac(&variant);
    for (o, spec) in pod_specs(&variant) {
        assert!(
            serve_args(pvdir_container(spec))
                .kubelet_registration_dir
                .is_none(),
            "{}: pvdir registers beside the registrars",
            o.name
        );
        assert!(
            !sidecars(spec, "livenessprobe").is_empty(),
            "{}: a livenessprobe",
            o.name
        );
    }
}

/// The default install runs no registrar and no livenessprobe: pvdir does both itself.
#[test]
fn the_default_install_needs_no_registrar_or_livenessprobe() {
    for (o, spec) in pod_specs(&plain()) {
        for image in ["csi-node-driver-registrar", "livenessprobe"] {
            assert!(sidecars(spec, image).is_empty(), "{}: {image}", o.name);
        }
        assert!(
            serve_args(pvdir_container(spec)).http_endpoint.is_some(),
            "{}: pvdir serves /healthz",
            o.name
        );
    }
}

#[test]
fn the_chart_with_every_option_on_is_still_consistent() {
    let Some(helm) = helm_or_skip() else { return };
    let objects = render_chart(
        &helm,
        &[
            "controller.resizer.enabled=true",
            "controller.snapshotter.enabled=true",
            "standardSidecars=true",
            "controller.nfsExports[0]=server=10.0.0.9;share=/other/",
            "controller.resizer.volumeAttributesClasses=true",
        ],
    );
    // ControllerModifyVolume reaches the NFS driver only through a resizer with the gate on.
    let gates: Vec<Option<String>> = pod_specs(&objects)
        .iter()
        .flat_map(|(_, s)| s.containers.iter())
        .filter(|c| {
            c.image
                .as_deref()
                .is_some_and(|i| i.contains("/csi-resizer:"))
        })
        .filter(|c| flag(c, "csi-address").as_deref() == Some("/csi/csi.sock"))
        .map(|c| flag(c, "feature-gates"))
        .collect();
    assert_eq!(
        gates,
        [Some("VolumeAttributesClass=true".to_string())],
        "the NFS controller's resizer applies VolumeAttributesClasses"
    );
    let other = pvdir::domain::params::parse_export_flag("server=10.0.0.9;share=/other").unwrap();
    assert!(listed_exports(&objects).contains(&other));
    let images: Vec<String> = pod_specs(&objects)
        .iter()
        .flat_map(|(_, s)| s.containers.iter().filter_map(|c| c.image.clone()))
        .collect();
    for sidecar in ["/csi-resizer:", "/csi-snapshotter:"] {
        assert!(
            images.iter().any(|i| i.contains(sidecar)),
            "{sidecar} switched on"
        );
    }
    check_workloads(&objects);
    check_rbac(&objects);
    check_nfs_classes_listed(&objects);
}

/// The provisioner learns the topology key from the driver (NodeGetInfo), so no manifest needs
/// it; where the docs and examples name it for users, they spell it as the binary does.
#[test]
fn the_topology_key_is_spelt_as_the_binary_spells_it() {
    let mut texts = vec![std::fs::read_to_string(deploy_dir().join("../README.md")).unwrap()];
    for dir in [deploy_dir(), deploy_dir().join("examples")] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                texts.push(std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let key = pvdir::domain::volume::TOPOLOGY_KEY;
    let mut seen = 0;
    for text in &texts {
        for (i, _) in text.match_indices("topology.pvdir.io") {
            assert!(text[i..].starts_with(key), "{}", &text[i..i + 30]);
            seen += 1;
        }
    }
    assert!(seen > 0, "the docs name the key");
}

/// The pod template's labels and annotations of a workload.
fn template_meta(
    o: &Object,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta> {
    let template = match &o.typed {
        Typed::StatefulSet(s) => &s.spec.as_ref()?.template,
        Typed::DaemonSet(d) => &d.spec.as_ref()?.template,
        _ => return None,
    };
    template.metadata.as_ref()
}

/// The port pvdir's `--http-endpoint` (`:port`) listens on.
fn http_port(c: &Container) -> i32 {
    let endpoint = serve_args(c).http_endpoint.expect("pvdir serves HTTP");
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("--http-endpoint {endpoint}"))
}

/// With the ServiceMonitor on, Prometheus reaches /metrics of every pvdir pod: the monitor
/// selects a Service per component, whose named port leads to the pvdir container's port that
/// pvdir's own --http-endpoint listens on. Pod annotations, when asked for, name that port too.
#[test]
fn the_service_monitor_points_at_the_port_pvdir_serves_metrics_on() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(helm) = helm_or_skip() else { return };
    for o in render_chart(&helm, &[]) {
        assert_ne!(o.kind, "ServiceMonitor", "off by default");
        let annotations = template_meta(&o).and_then(|m| m.annotations.clone());
        assert!(
            annotations.is_none(),
            "{}: no annotations by default",
            o.name
        );
    }
    let objects = render_chart(
        &helm,
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.podAnnotations=true",
        ],
    );
    check_workloads(&objects);
    let monitors: Vec<_> = objects
        .iter()
        .filter_map(|o| match &o.typed {
            Typed::ServiceMonitor(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(monitors.len(), 1, "one ServiceMonitor");
    let monitor = monitors[0];
    assert_eq!(monitor.api_version, "monitoring.coreos.com/v1");
    assert_eq!(monitor.kind, "ServiceMonitor");
    assert_eq!(monitor.metadata.namespace.as_deref(), Some(NAMESPACE));
    let names = &monitor
        .spec
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_names;
    assert_eq!(names, &[NAMESPACE.to_string()]);
    let selects = |labels: &BTreeMap<String, String>| {
        let s = &monitor.spec.selector;
        s.match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
            && s.match_expressions.iter().flatten().all(|e| {
                assert_eq!(e.operator, "In", "only In is evaluated here");
                labels
                    .get(&e.key)
                    .is_some_and(|v| e.values.iter().flatten().any(|w| w == v))
            })
    };
    let services: Vec<_> = objects
        .iter()
        .filter_map(|o| match &o.typed {
            Typed::Service(s) => Some((o, s)),
            _ => None,
        })
        .filter(|(_, s)| selects(s.metadata.labels.as_ref().unwrap()))
        .collect();
    let workloads: Vec<_> = pod_specs(&objects);
    assert_eq!(
        services.len(),
        workloads.len(),
        "a Service for each workload"
    );
    let endpoint = &monitor.spec.endpoints[..];
    assert_eq!(endpoint.len(), 1);
    assert_eq!(endpoint[0].path.as_deref(), Some("/metrics"));
    assert!(endpoint[0].interval.is_some(), "a scrape interval");
    for (o, service) in services {
        let spec = service.spec.as_ref().unwrap();
        let port = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(endpoint[0].port.as_str()))
            .unwrap_or_else(|| panic!("{}: no port {}", o.name, endpoint[0].port));
        let selector = spec.selector.as_ref().unwrap();
        let matched: Vec<_> = workloads
            .iter()
            .filter(|(w, _)| {
                let labels = template_meta(w).and_then(|m| m.labels.as_ref()).unwrap();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        assert_eq!(matched.len(), 1, "{}: selects one workload", o.name);
        let (workload, pod) = matched[0];
        let pvdir = pvdir_container(pod);
        let target = match port.target_port.as_ref().unwrap() {
            IntOrString::String(name) => {
                pvdir
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .unwrap_or_else(|| panic!("{}: no container port {name}", workload.name))
                    .container_port
            }
            IntOrString::Int(n) => *n,
        };
        assert_eq!(target, http_port(pvdir), "{}", o.name);
        assert_eq!(port.port, target, "{}", o.name);
        let annotations = template_meta(workload)
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
        assert_eq!(
            annotations["prometheus.io/port"],
            http_port(pvdir).to_string()
        );
    }
}

/// Each example snapshot class names a driver that is installed, that has a csi-snapshotter
/// on its socket (for local.pvdir.io: on every node, --node-deployment), and whose binary
/// accepts the class's parameters as the snapshotter sends them.
#[test]
fn snapshot_classes_name_a_driver_with_a_snapshotter() {
    let objects = plain();
    let mut classes = 0;
    for entry in std::fs::read_dir(deploy_dir().join("examples")).unwrap() {
        for o in load(&entry.unwrap().path()) {
            let Typed::VolumeSnapshotClass(class) = &o.typed else {
                continue;
            };
            classes += 1;
            assert_eq!(
                (class.api_version.as_str(), class.kind.as_str()),
                ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass")
            );
            assert_eq!(class.metadata.name.as_deref(), Some(o.name.as_str()));
            assert!(
                ["Delete", "Retain"].contains(&class.deletion_policy.as_str()),
                "{}",
                o.name
            );
            assert!(
                objects
                    .iter()
                    .any(|d| d.kind == "CSIDriver" && d.name == class.driver),
                "{}: driver {} is not installed",
                o.name,
                class.driver
            );
            // local.pvdir.io is served on every node (one socket per backend there), nfs.pvdir.io
            // by the controller StatefulSet, whose pod serves it alone.
            let (kind, socket) = match class.driver.as_str() {
                "local.pvdir.io" => ("DaemonSet", "--csi-address=/csi/local/csi.sock"),
                "nfs.pvdir.io" => ("StatefulSet", "--csi-address=/csi/csi.sock"),
                other => panic!("{}: unknown driver {other}", o.name),
            };
            let snapshotters: Vec<&Container> = pod_specs(&objects)
                .into_iter()
                .filter(|(w, _)| w.kind == kind)
                .flat_map(|(_, s)| s.containers.iter())
                .filter(|c| {
                    c.image
                        .as_deref()
                        .is_some_and(|i| i.contains("/csi-snapshotter:"))
                })
                .filter(|c| c.args.iter().flatten().any(|a| *a == socket))
                .collect();
            assert_eq!(
                snapshotters.len(),
                1,
                "{}: one snapshotter on {socket}",
                o.name
            );
            if class.driver == "local.pvdir.io" {
                assert!(has_flag(snapshotters[0], "node-deployment"), "{}", o.name);
            }
            let mut params: HashMap<String, String> = class.parameters.clone();
            params.insert("csi.storage.k8s.io/volumesnapshot/name".into(), "s".into());
            params.insert(
                "csi.storage.k8s.io/volumesnapshot/namespace".into(),
                "d".into(),
            );
            params.insert(
                "csi.storage.k8s.io/volumesnapshotcontent/name".into(),
                "c".into(),
            );
            let accepted = from_map::<pvdir::domain::params::SnapshotParams>(&params);
            assert!(accepted.is_ok(), "{}: {accepted:?}", o.name);
        }
    }
    assert_eq!(classes, 2, "an example snapshot class per driver");
}
