//! Service tier (fake mount table, real temporary directories): what the NFS side leaves behind
//! when things end. A failed export mount leaves no staging directory; a clean shutdown
//! unmounts the controller's exports; an unpublish that had to give up writing back to a dead
//! server says so in a warning with the volume and the target.

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use clap::Parser;
use common::names_in;
use common::service::*;
use pvdir::csi::proto as csi;
use pvdir::os::fake::FakeOs;
use tonic::Code;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use csi::volume_capability::access_mode::Mode;

#[tokio::test]
async fn a_failed_export_mount_leaves_no_staging_directory() {
    let rig = Rig::nfs();
    rig.fake
        .fail_next_mount("mount.nfs: access denied by server");
    assert_eq!(
        code(rig.create(seed_claim(0, "delete")).await),
        Code::Internal
    );
    assert!(names_in(&rig.path().join("staging")).is_empty());
    // The retry mounts and creates as if nothing had happened.
    rig.create(seed_claim(0, "delete")).await.unwrap();
    assert!(rig.export_dir().join("default/www-web-0").is_dir());
}

#[tokio::test]
async fn a_clean_shutdown_unmounts_the_controllers_exports() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let socket = base.join("nfs.sock");
    let staging = base.join("staging");
    let cli = pvdir::cli::Cli::try_parse_from([
        "pvdir".to_string(),
        "serve".into(),
        "--node-id=n1".into(),
        format!("--nfs-endpoint=unix://{}", socket.display()),
        format!("--nfs-staging-dir={}", staging.display()),
        format!("--mount-staging-dir={}", base.join("mounts").display()),
    ])
    .unwrap();
    let pvdir::cli::Command::Serve(args) = cli.command else {
        panic!("serve")
    };
    let fake = FakeOs::new();
    let metrics = Arc::new(pvdir::metrics::Metrics::new());
    let plugins = pvdir::server::assemble(
        &args,
        Arc::new(fake.clone()),
        Arc::new(fake.clone()),
        Arc::new(pvdir::os::quota::fake::FakeQuotas::default()),
        &metrics,
    )
    .await
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(pvdir::server::serve(plugins, None, metrics, async {
        let _ = stopped.await;
    }));
    for _ in 0..500 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let channel = common::real::driver::connect(&socket).await.unwrap();
    let mut controller = csi::controller_client::ControllerClient::new(channel);
    // GetCapacity mounts the export and writes nothing: the fake's export is the staging
    // directory itself, which is empty after the unmount only if nothing was written there.
    let capacity = csi::GetCapacityRequest {
        parameters: [("server", "10.0.0.1"), ("share", "/export")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    controller.get_capacity(capacity).await.unwrap();
    let exports = |fake: &FakeOs| -> Vec<_> {
        fake.table()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(&staging))
            .collect()
    };
    assert_eq!(
        exports(&fake).len(),
        1,
        "the export is mounted for the call"
    );
    assert_eq!(names_in(&staging).len(), 1);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(exports(&fake).is_empty(), "{:?}", fake.table());
    assert!(names_in(&staging).is_empty());
    assert!(!socket.exists());
}

/// The warning events logged while it is installed, each as its fields.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

impl Warnings {
    /// Warnings of abandoned writeback naming both this volume and this target.
    fn about(&self, id: &str, target: &std::path::Path) -> usize {
        let target = target.display().to_string();
        let logged = self.0.lock().unwrap();
        logged
            .iter()
            .filter(|f| {
                f.get("volume.id").map(String::as_str) == Some(id)
                    && f.get("target.path") == Some(&target)
                    && f.get("writeback").map(String::as_str) == Some("abandoned")
            })
            .count()
    }
}

#[tokio::test]
async fn an_unpublish_that_could_not_write_back_is_a_warning_with_volume_and_target() {
    let warnings = Warnings::default();
    let _log =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let rig = Rig::nfs();
    let id = rig.create(seed_claim(0, "delete")).await.unwrap().volume_id;
    let (healthy, dead) = (rig.path().join("pod-a"), rig.path().join("pod-b"));
    for target in [&healthy, &dead] {
        rig.publish(&id, target, Mode::MultiNodeMultiWriter, false)
            .await
            .unwrap();
    }
    rig.unpublish(&id, &healthy).await.unwrap();
    assert_eq!(
        warnings.about(&id, &healthy),
        0,
        "written back: nothing to say"
    );

    // The server dies with the pod's data unwritten: the pod can still go (OK), loudly.
    rig.fake.set_server_dead(true);
    rig.unpublish(&id, &dead).await.unwrap();
    assert!(!rig.fake.is_mounted(&dead));
    assert_eq!(warnings.about(&id, &dead), 1);
}
