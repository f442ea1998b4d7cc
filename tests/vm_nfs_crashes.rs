//! VM tier (kernel NFS server and client; see tests/vm_nfs_faults.rs for how it runs): the
//! driver SIGKILLed between two steps of a call, on real NFS. strace holds the step's syscall
//! in the driver's helper process (`-f` follows the helpers) while the test kills the driver.
//!
//! - Archive: the NFS client has no RENAME_NOREPLACE. The old driver claimed `archived-<leaf>`
//!   with an empty directory and renamed onto it; killed between the two, it left that empty
//!   directory, which a new volume could adopt, and the retry archived to `-2`.
//! - Create: the old driver wrote its claim and then made the directory; killed between the
//!   two, it left a claim that blocked the directory for ever once the PVC was re-created.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::names_but_markers;
use common::real::driver::*;
use common::real::requests::*;
use common::real::vm::*;
use tonic::Code;

/// Restart `d` under strace holding the first `syscall` of each of its processes, start
/// `call`, wait until it is held, and kill the driver; then restart it plainly.
async fn kill_while_held<F, T>(d: &mut Driver, syscall: &str, call: F)
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    assert_eq!(d.terminate().await.code(), Some(0));
    let trace = format!("trace={syscall}");
    let hold = format!("inject={syscall}:delay_enter=120000000:when=1");
    d.trace_next(Some(&["-e", &trace, "-e", &hold]));
    d.spawn().await;
    let pending = tokio::spawn(call);
    assert!(
        d.wait_for_pending_call(&format!("{syscall}("), Duration::from_secs(60))
            .await,
        "the call never reached {syscall}; strace log:\n{}",
        std::fs::read_to_string(d.strace_log()).unwrap_or_default()
    );
    d.kill();
    let _ = pending.await;
    d.trace_next(None);
    d.spawn().await;
}

/// The `ordinal`th claim of `on_delete`'s class in namespace `ns`, apart from the other VM
/// tests' claims on the same export.
fn claim_in(ns: &str, ordinal: u32, on_delete: &str) -> pvdir::csi::proto::CreateVolumeRequest {
    let mut req = claim(ordinal, on_delete, OPTIONS);
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), ns.into());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn a_driver_killed_between_archive_steps_leaves_nothing_to_confuse() {
    let mut d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    let v = expect_ok(
        d.controller()
            .create_volume(claim_in("crash-archive", 0, "archive"))
            .await,
        "create",
    );
    let id = v.volume.unwrap().volume_id;
    let ns = export().join("crash-archive");
    std::fs::write(ns.join("www-web-0/data"), b"kept").unwrap();

    let mut controller = d.controller();
    let raw = id.clone();
    kill_while_held(&mut d, "renameat", async move {
        controller.delete_volume(delete_request(&raw)).await
    })
    .await;

    // Nothing that looks like a free directory was left, and the archive's name is taken:
    // a volume whose subDir is that name is refused.
    assert_eq!(names_but_markers(&ns), ["www-web-0"], "no placeholder left");
    let mut intruder = claim_in("crash-archive", 7, "delete");
    intruder
        .parameters
        .insert("subDir".into(), "crash-archive/archived-www-web-0".into());
    expect_code(
        d.controller().create_volume(intruder).await,
        Code::AlreadyExists,
        "a volume on the name the interrupted archive claimed",
    );
    // The retry finishes the same archive, under the first name.
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "the retried delete",
    );
    assert_eq!(names_but_markers(&ns), ["archived-www-web-0"]);
    assert_eq!(
        std::fs::read(ns.join("archived-www-web-0/data")).unwrap(),
        b"kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the VM suite's kernel NFS server"]
async fn a_driver_killed_after_its_claim_does_not_block_the_directory() {
    let mut d = Driver::start_nfs(NFS_TIMEOUT_SECS).await;
    // An earlier volume, so the export's state directory exists and the held mkdir is the
    // volume directory's.
    expect_ok(
        d.controller()
            .create_volume(claim_in("crash-create", 9, "delete"))
            .await,
        "create an earlier volume",
    );
    let mut controller = d.controller();
    kill_while_held(&mut d, "mkdirat", async move {
        controller
            .create_volume(claim_in("crash-create", 0, "delete"))
            .await
    })
    .await;
    assert!(
        !export().join("crash-create/www-web-0").exists(),
        "killed before the directory was made"
    );
    // The PVC is deleted and re-created: the same directory under a new PV name.
    let mut again = claim_in("crash-create", 0, "delete");
    again.name = "pvc-recreated".into();
    again
        .parameters
        .insert("csi.storage.k8s.io/pv/name".into(), "pvc-recreated".into());
    let v = expect_ok(
        d.controller().create_volume(again).await,
        "create of the re-created claim",
    );
    let id = v.volume.unwrap().volume_id;
    assert!(export().join("crash-create/www-web-0").is_dir());
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
}
