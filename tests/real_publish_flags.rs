//! Publish flags with real mounts: a bind keeps every security flag of the filesystem its
//! volume is on, a target mounted with other flags is refused, and a driver killed in the middle
//! of a publish leaves nothing that a retry trips over.
//!
//! The local root of these tests is a tmpfs mounted `nosuid,nodev,noexec`, as a node's data
//! disk often is. A read-only publish used to be made by a bind and then a bind remount with
//! `MS_RDONLY`, which replaces every per-mount flag: the reader pod got a plain `ro` mount on
//! which a setuid binary or device node written by a writer pod was honoured.
//!
//! The crash tests run the driver under `strace -f` with syscall delay injection: the call that
//! attaches the mount is held, the driver is SIGKILLed while it waits, and a new driver gets the
//! kubelet's retry. Needs root and strace (see tests/real_publish.rs for the tier's rules).

#[allow(dead_code)]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;
use nix::mount::{mount, MsFlags};
use pvdir::csi::proto as csi;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use tonic::Code;

/// The driver's local root on a tmpfs mounted `nosuid,nodev,noexec`.
fn hardened_root(base: &Path) {
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), &root, Some("tmpfs"), flags, Some("size=8m")).unwrap();
}

fn request(
    id: &str,
    target: &Path,
    readonly: bool,
    flags: &[&str],
) -> csi::NodePublishVolumeRequest {
    let mut req = publish_request(id, target, Mode::SingleNodeWriter, readonly);
    if let Some(csi::volume_capability::AccessType::Mount(m)) = req
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        m.mount_flags = flags.iter().map(|f| f.to_string()).collect();
    }
    req
}

/// The per-mount options of the single mount at `target`, as the kernel lists them.
#[track_caller]
fn options_at(target: &Path) -> Vec<String> {
    let at = mounts_at(target);
    assert_eq!(
        at.len(),
        1,
        "exactly one mount at {}: {at:?}",
        target.display()
    );
    at[0].options.clone()
}

#[track_caller]
fn assert_has(options: &[String], wanted: &[&str]) {
    for w in wanted {
        assert!(
            options.iter().any(|o| o == w),
            "{w} missing from {options:?}"
        );
    }
}

/// An executable file in the volume that the reader must not be able to run.
fn plant_executable(dir: &Path) {
    let exe = dir.join("run-me");
    std::fs::write(&exe, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_keep_the_security_flags_of_the_volume_filesystem() {
    require_root!();
    let d = Driver::start_with(hardened_root).await;
    let id = create_volume(&d, "pvc-hardened", Mode::SingleNodeWriter).await;
    plant_executable(&d.volume_dir(&id));

    let reader = target_in_pod(&d, "reader");
    expect_ok(
        d.node()
            .node_publish_volume(request(&id, &reader, true, &[]))
            .await,
        "read-only publish",
    );
    assert_has(&options_at(&reader), &["ro", "nosuid", "nodev", "noexec"]);
    assert_read_only(&reader);
    let run = std::process::Command::new(reader.join("run-me")).status();
    assert_eq!(
        run.map_err(|e| e.raw_os_error()).err(),
        Some(Some(libc::EACCES)),
        "noexec must hold in the reader's mount"
    );

    // Flags asked by the class are added, never swapped for the filesystem's.
    let writer = target_in_pod(&d, "writer");
    expect_ok(
        d.node()
            .node_publish_volume(request(&id, &writer, false, &["noatime"]))
            .await,
        "publish with a class flag",
    );
    let options = options_at(&writer);
    assert_has(&options, &["rw", "nosuid", "nodev", "noexec", "noatime"]);

    for t in [&reader, &writer] {
        expect_ok(
            d.node()
                .node_unpublish_volume(unpublish_request(&id, t))
                .await,
            "unpublish",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_mounted_with_other_flags_is_already_exists() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-other-flags", Mode::SingleNodeWriter).await;
    let t = target_in_pod(&d, "a");
    expect_ok(
        d.node()
            .node_publish_volume(request(&id, &t, false, &[]))
            .await,
        "plain publish",
    );
    // The same volume and target, but noexec asked: the existing mount does not have it.
    expect_code(
        d.node()
            .node_publish_volume(request(&id, &t, false, &["noexec"]))
            .await,
        Code::AlreadyExists,
        "publish asking for noexec over a mount without it",
    );
    // And the other way round: a mount with a flag the request does not ask for.
    let u = target_in_pod(&d, "b");
    expect_ok(
        d.node()
            .node_publish_volume(request(&id, &u, false, &["nosuid"]))
            .await,
        "nosuid publish",
    );
    expect_code(
        d.node()
            .node_publish_volume(request(&id, &u, false, &[]))
            .await,
        Code::AlreadyExists,
        "plain publish over a nosuid mount",
    );
    // The identical request stays idempotent.
    expect_ok(
        d.node()
            .node_publish_volume(request(&id, &u, false, &["nosuid"]))
            .await,
        "repeated nosuid publish",
    );
    for t in [&t, &u] {
        assert_eq!(mounts_at(t).len(), 1, "nothing stacked at {}", t.display());
        expect_ok(
            d.node()
                .node_unpublish_volume(unpublish_request(&id, t))
                .await,
            "unpublish",
        );
    }
}

/// The driver is SIGKILLed while the syscall that would attach a read-only, noexec publish is
/// held by strace. The old two-step bind had already put a writable bind at the target by then,
/// and every retry answered ALREADY_EXISTS for ever. `needle` names the held call in the strace
/// log; `args` are extra `serve` flags.
async fn killed_mid_publish_then_retried(args: &[&str], inject: &[&str], needle: &str) {
    let mut d = Driver::start_with(hardened_root).await;
    let id = create_volume(&d, "pvc-crash", Mode::SingleNodeWriter).await;
    assert_eq!(d.terminate().await.code(), Some(0));
    d.set_args(args);
    let mut strace = vec!["-e", "trace=mount,open_tree,mount_setattr,move_mount"];
    strace.extend_from_slice(inject);
    d.trace_next(Some(&strace));
    d.spawn().await;

    let t = target_in_pod(&d, "a");
    let mut node = d.node();
    let req = request(&id, &t, true, &["noexec"]);
    let call = tokio::spawn(async move { node.node_publish_volume(req).await });
    assert!(
        d.wait_for_pending_call(needle, Duration::from_secs(20))
            .await,
        "the publish never reached {needle}; strace log:\n{}",
        std::fs::read_to_string(d.strace_log()).unwrap_or_default()
    );
    d.kill();
    let _ = call.await;

    d.trace_next(None);
    d.spawn().await;
    expect_ok(
        d.node()
            .node_publish_volume(request(&id, &t, true, &["noexec"]))
            .await,
        "the retry after the crash",
    );
    assert_has(&options_at(&t), &["ro", "nosuid", "nodev", "noexec"]);
    assert_read_only(&t);
    let staged: Vec<_> = std::fs::read_dir(d.path("mounts")).unwrap().collect();
    assert!(
        staged.is_empty(),
        "the staging directory is clear: {staged:?}"
    );
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &t))
            .await,
        "unpublish",
    );
    assert!(mounts_at(&t).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_mid_publish_leaves_nothing_a_retry_trips_over() {
    require_root!();
    // Hold the attach: move_mount with the new API, or the second mount(2) (the flag remount
    // of a two-step bind, which is what the driver used to do at the target).
    let hold = "delay_enter=60000000";
    killed_mid_publish_then_retried(
        &[],
        &[
            "-e",
            &format!("inject=move_mount:{hold}:when=1"),
            "-e",
            &format!("inject=mount:{hold}:when=2"),
        ],
        "mo", // move_mount( or mount(
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_api_killed_mid_publish_leaves_only_staging_which_is_cleared() {
    require_root!();
    // Classic: bind into staging (mount 1), flag remount there (mount 2), move (mount 3).
    // Held at the remount, a half-made bind sits in the staging directory when the driver
    // dies; the next start clears it.
    killed_mid_publish_then_retried(
        &["--mount-api", "classic"],
        &["-e", "inject=mount:delay_enter=60000000:when=2"],
        "MS_REMOUNT",
    )
    .await;
}
