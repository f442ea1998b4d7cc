//! The OS layer against the kernel, with real mounts: a mount or an unmount acts on the target
//! directory that was checked, never on where a symlink swapped in at that path points, and the
//! staging directory is kept apart from mount propagation.
//!
//! The driver checks a target (it creates it, reads the mount table) and then mounts on it or
//! unmounts it; a symlink put there in between must not redirect the act. These tests give the
//! OS layer such a symlink directly, which is the state the race would leave. Needs root.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::real::mounts::*;
use nix::mount::{mount, MsFlags};
use pvdir::csi::status::os_code;
use pvdir::os::mount::MountApi;
use pvdir::os::real::RealOs;
use pvdir::os::{MountFlags, MountSource, MountSpec, Os};
use tonic::Code;

struct Scratch {
    dir: tempfile::TempDir,
    base: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("pvdir-os-")
            .tempdir()
            .unwrap();
        let base = dir.path().canonicalize().unwrap();
        Scratch { dir, base }
    }

    fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.base.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    async fn os(&self, api: MountApi) -> RealOs {
        let os = RealOs::new(
            PathBuf::from(env!("CARGO_BIN_EXE_pvdir")),
            Duration::from_secs(10),
            self.base.join("staging"),
            api,
        );
        os.prepare().await.expect("prepare");
        os
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let left = unmount_all_under(&self.base);
        assert!(left.is_empty() || std::thread::panicking(), "{left:?}");
        let _ = self.dir.path();
    }
}

fn bind_spec(source: &Path, target: &Path) -> MountSpec {
    MountSpec {
        source: MountSource::Bind(source.to_path_buf()),
        target: target.to_path_buf(),
        flags: MountFlags::READ_ONLY,
        options: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_never_follows_a_symlink_at_the_target() {
    require_root!();
    let s = Scratch::new();
    let source = s.mkdir("volume");
    let elsewhere = s.mkdir("elsewhere");
    let target = s.mkdir("pods/a").join("mount");
    std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
    for api in [MountApi::Auto, MountApi::Classic] {
        let os = s.os(api).await;
        let e = os
            .mount(&bind_spec(&source, &target))
            .await
            .expect_err("a symlinked target is refused");
        assert_eq!(os_code(&e), Code::FailedPrecondition, "{api:?}: {e}");
        assert!(
            mounts_at(&elsewhere).is_empty(),
            "{api:?}: the symlink's destination was mounted on"
        );
    }
    let left: Vec<_> = std::fs::read_dir(s.base.join("staging")).unwrap().collect();
    assert!(left.is_empty(), "nothing left staged: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmount_never_follows_a_symlink_at_the_target() {
    require_root!();
    let s = Scratch::new();
    let os = s.os(MountApi::Auto).await;
    let mounted = s.mkdir("someone-elses-mount");
    tmpfs_mount(&mounted);
    let target = s.mkdir("pods/a").join("mount");
    std::os::unix::fs::symlink(&mounted, &target).unwrap();
    // Local (in process) and remote (in the killable helper) unmounts alike.
    for remote in [false, true] {
        os.unmount(&target, remote)
            .await
            .expect_err("unmounting through a symlink is refused");
        assert_eq!(
            mounts_at(&mounted).len(),
            1,
            "remote={remote}: the symlink's destination was unmounted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_get_their_flags_before_they_reach_the_target() {
    require_root!();
    let s = Scratch::new();
    let fs = s.mkdir("fs");
    // nosymfollow: MS_NOSYMFOLLOW (Linux 5.10), which nix does not name.
    let nosymfollow = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);
    mount(
        Some("tmpfs"),
        &fs,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | nosymfollow,
        Some("size=1m"),
    )
    .unwrap();
    let source = fs.join("volume");
    std::fs::create_dir(&source).unwrap();
    for (api, name) in [(MountApi::Auto, "new"), (MountApi::Classic, "classic")] {
        let os = s.os(api).await;
        let target = s.mkdir(&format!("pods/{name}"));
        os.mount(&bind_spec(&source, &target)).await.expect("bind");
        let at = mounts_at(&target);
        assert_eq!(
            at.len(),
            1,
            "{api:?}: one mount, not a bind and a remount: {at:?}"
        );
        for flag in ["ro", "nosuid", "nodev", "nosymfollow"] {
            assert!(at[0].options.iter().any(|o| o == flag), "{api:?}: {at:?}");
        }
        os.unmount(&target, false).await.expect("unmount");
        assert!(mounts_at(&target).is_empty());
    }
}

/// On a host whose /run is a shared mount, mounts staged there would show in every peer, and
/// the kernel refuses to move a mount out of a shared parent: the staging directory must become
/// a private mount of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_directory_below_a_shared_mount_is_made_private() {
    require_root!();
    let s = Scratch::new();
    let shared = s.mkdir("shared");
    tmpfs_mount(&shared);
    mount(
        None::<&str>,
        &shared,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    let peer = s.mkdir("peer");
    bind_mount(&shared, &peer);
    let os = RealOs::new(
        PathBuf::from(env!("CARGO_BIN_EXE_pvdir")),
        Duration::from_secs(10),
        shared.join("staging"),
        MountApi::Classic,
    );
    os.prepare().await.expect("prepare");
    os.prepare().await.expect("prepare is idempotent");
    assert_eq!(mounts_at(&shared.join("staging")).len(), 1, "one self-bind");
    assert!(
        mounts_at(&peer.join("staging")).len() <= 1,
        "the peer sees the self-bind at most, never more"
    );
    // The classic API moves the bind out of the staging directory: refused by the kernel
    // below a shared parent, so this publish proves the directory is private.
    let source = s.mkdir("volume");
    let target = s.mkdir("pods/a");
    os.mount(&bind_spec(&source, &target))
        .await
        .expect("bind through staging");
    assert_eq!(mounts_at(&target).len(), 1);
    let in_peer: Vec<_> = std::fs::read_dir(peer.join("staging")).unwrap().collect();
    assert!(
        in_peer.is_empty(),
        "nothing staged shows in the peer: {in_peer:?}"
    );
}
