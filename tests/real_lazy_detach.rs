//! The lazy detach of a remote unmount is counted, by why it happened: a plain unmount that
//! timed out (a dead server: what the pod had not written back is lost although the call
//! answers OK) or one that was merely busy.
//!
//! A busy tmpfs stands in for the NFS mount (an open file keeps plain and forced unmounts
//! failing with EBUSY), and strace holding the first helper's umount2 stands in for a server
//! that never answers. Needs root like the other `real_*` tests.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::real::mounts::*;
use nix::mount::{mount, MsFlags};
use pvdir::metrics::Metrics;
use pvdir::os::mount::MountApi;
use pvdir::os::real::RealOs;
use pvdir::os::Os;

/// A tmpfs at `<base>/m`, held busy by an open file until dropped.
struct BusyMount {
    _dir: tempfile::TempDir,
    base: PathBuf,
    target: PathBuf,
    file: Option<std::fs::File>,
}

impl BusyMount {
    fn new() -> BusyMount {
        let dir = tempfile::Builder::new()
            .prefix("pvdir-detach-")
            .tempdir()
            .unwrap();
        let base = dir.path().canonicalize().unwrap();
        let target = base.join("m");
        std::fs::create_dir(&target).unwrap();
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mount tmpfs");
        let file = std::fs::File::create(target.join("open")).unwrap();
        BusyMount {
            _dir: dir,
            base,
            target,
            file: Some(file),
        }
    }

    /// A RealOs whose helper is the real one, except that the first helper call, if `hold`,
    /// runs under strace with its umount2 held for a minute.
    fn os(&self, hold: bool, metrics: &Arc<Metrics>) -> RealOs {
        let pvdir = env!("CARGO_BIN_EXE_pvdir");
        let held = self.base.join("held");
        if !hold {
            std::fs::write(&held, b"").unwrap();
        }
        let script = format!(
            "#!/bin/sh\nif [ ! -e {held} ]; then : > {held}; exec strace -f -qq -o /dev/null \
             -e trace=umount2 -e inject=umount2:delay_enter=60000000 {pvdir} \"$@\"; fi\n\
             exec {pvdir} \"$@\"\n",
            held = held.display()
        );
        let helper = self.base.join("helper.sh");
        std::fs::write(&helper, script).unwrap();
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        RealOs::observed(
            helper,
            Duration::from_millis(1500),
            self.base.join("staging"),
            MountApi::Auto,
            Arc::clone(metrics),
        )
    }
}

impl Drop for BusyMount {
    fn drop(&mut self) {
        self.file.take();
        let left = unmount_all_under(&self.base);
        assert!(left.is_empty() || std::thread::panicking(), "{left:?}");
    }
}

fn has(text: &str, series: &str) -> bool {
    text.lines().any(|l| l == series)
}

fn mounted(target: &Path) -> bool {
    !mounts_at(target).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_after_a_timed_out_unmount_counts_as_unresponsive() {
    require_root!();
    let busy = BusyMount::new();
    let metrics = Arc::new(Metrics::new());
    let os = busy.os(true, &metrics);
    os.unmount(&busy.target, true)
        .await
        .expect("the detach answers OK");
    assert!(!mounted(&busy.target), "detached");
    let text = metrics.encode();
    for series in [
        "pvdir_nfs_lazy_detaches_total{reason=\"unresponsive\"} 1",
        "pvdir_nfs_lazy_detaches_total{reason=\"busy\"} 0",
        "pvdir_helper_timeouts_total{operation=\"umount\"} 1",
        "pvdir_helper_kills_total{operation=\"umount\",reason=\"timeout\"} 1",
        // Plain (killed), forced (busy) and lazy: three helpers.
        "pvdir_helper_duration_seconds_count{operation=\"umount\",medium=\"remote\"} 3",
    ] {
        assert!(has(&text, series), "{series} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_of_a_busy_mount_counts_as_busy() {
    require_root!();
    let busy = BusyMount::new();
    let metrics = Arc::new(Metrics::new());
    let os = busy.os(false, &metrics);
    os.unmount(&busy.target, true)
        .await
        .expect("the detach answers OK");
    assert!(!mounted(&busy.target), "detached");
    let text = metrics.encode();
    for series in [
        "pvdir_nfs_lazy_detaches_total{reason=\"busy\"} 1",
        "pvdir_nfs_lazy_detaches_total{reason=\"unresponsive\"} 0",
        "pvdir_helper_duration_seconds_count{operation=\"umount\",medium=\"remote\"} 2",
    ] {
        assert!(has(&text, series), "{series} missing from:\n{text}");
    }
    assert!(!text.contains("pvdir_helper_kills_total{"), "{text}");
}
