//! Service tier (fake mount table, real directories; see tests/service_nfs.rs): claims on an
//! NFS export that no volume was ever returned for, and `reuseExisting` never enclosing another
//! volume.
//!
//! A create writes its claim first. When it dies after that (a crash, or a server that stopped
//! answering, so that the release failed too), the claim stays. The PVC is then deleted and
//! re-created: same namespace and name, so with `subDir: ${namespace}/${name}` the same
//! directory, but a new PV name. The old code answered ALREADY_EXISTS to that for ever.
//! Failures are injected into the fake between the steps of a create.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};

use common::service::*;
use common::start_time;
use pvdir::csi::proto as csi;
use sha2::{Digest, Sha256};
use tonic::Code;

/// The record of `subdir` on the rig's export.
fn record_path(export: &Path, subdir: &str) -> PathBuf {
    let hash = hex::encode(Sha256::digest(subdir.as_bytes()));
    export.join(".pvdir").join(format!("{}.json", &hash[..32]))
}

fn record(export: &Path, subdir: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(record_path(export, subdir)).unwrap()).unwrap()
}

/// The seed's claim www-web-0 in `default`, provisioned as PV `pv`.
fn claim_as(pv: &str) -> csi::CreateVolumeRequest {
    let mut req = seed_claim(0, "delete");
    req.name = pv.into();
    req.parameters
        .insert("csi.storage.k8s.io/pv/name".into(), pv.into());
    req
}

const DIR: &str = "default/www-web-0";

/// A create of `pv` that dies after its claim: the directory cannot be made and the claim
/// cannot be released (the server answers with I/O errors).
async fn orphan_claim(rig: &Rig, pv: &str) {
    rig.fake.fail_next_fs("ensure-dir", libc::EIO);
    rig.fake.fail_next_fs("swap-record", libc::EIO);
    assert_eq!(code(rig.create(claim_as(pv)).await), Code::Unavailable);
}

#[tokio::test]
async fn a_claim_no_volume_was_returned_for_does_not_block_its_directory() {
    let rig = Rig::nfs();
    // The export mount exists from an earlier volume.
    rig.create(seed_claim(9, "delete")).await.unwrap();
    orphan_claim(&rig, "pvc-first").await;
    let export = rig.export_dir();
    let left = record(&export, DIR);
    assert_eq!(left["name"], "pvc-first");
    assert!(
        left["creating"].is_object(),
        "left as an unfinished claim: {left}"
    );

    // The PVC is re-created: a new PV name for the same directory.
    let v = rig.create(claim_as("pvc-second")).await.unwrap();
    let now = record(&export, DIR);
    assert_eq!(now["name"], "pvc-second");
    assert!(now.get("creating").is_none(), "complete: {now}");
    assert!(export.join(DIR).is_dir());
    // The first create's retry (had the provisioner kept it) finds the directory taken, and
    // the volume that owns it is untouched.
    assert_eq!(
        code(rig.create(claim_as("pvc-first")).await),
        Code::AlreadyExists
    );
    // A complete volume is never taken over.
    assert_eq!(
        code(rig.create(claim_as("pvc-third")).await),
        Code::AlreadyExists
    );
    rig.delete(&v.volume_id).await.unwrap();
    assert!(!export.join(DIR).exists());
}

#[tokio::test]
async fn the_same_create_retried_resumes_its_own_claim() {
    let rig = Rig::nfs();
    rig.create(seed_claim(9, "delete")).await.unwrap();
    orphan_claim(&rig, "pvc-first").await;
    let v = rig.create(claim_as("pvc-first")).await.unwrap();
    assert_eq!(record(&rig.export_dir(), DIR)["name"], "pvc-first");
    assert!(record(&rig.export_dir(), DIR).get("creating").is_none());
    rig.delete(&v.volume_id).await.unwrap();
}

/// What a process leaves behind: its claim of [`DIR`], naming it. `claimant` overrides fields
/// of this process's own claim (host, boot, pidns, pid, start, since).
fn plant_claim(export: &Path, pv: &str, claimant: serde_json::Value) {
    plant_claim_of(export, DIR, pv, claimant)
}

fn plant_claim_of(export: &Path, subdir: &str, pv: &str, claimant: serde_json::Value) {
    let start = start_time(std::process::id());
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let mut creating = serde_json::json!({
        "host": host, "boot": boot.trim(), "pidns": pidns.to_string_lossy(),
        "pid": std::process::id(), "start": start, "since": now,
    });
    for (k, v) in claimant.as_object().unwrap() {
        creating[k] = v.clone();
    }
    let rec = serde_json::json!({
        "name": pv, "capacity_bytes": 1i64 << 30, "subdir": subdir, "on_delete": "delete",
        "mount_permissions": 0o770, "creating": creating,
    });
    std::fs::create_dir_all(export.join(".pvdir")).unwrap();
    std::fs::write(record_path(export, subdir), rec.to_string()).unwrap();
}

#[tokio::test]
async fn a_claim_of_a_process_that_may_still_run_waits_for_its_expiry() {
    let rig = Rig::nfs();
    rig.create(seed_claim(9, "delete")).await.unwrap();
    let export = rig.export_dir();
    // Another host's controller (during a leader handover) may still be working on it.
    plant_claim(
        &export,
        "pvc-elsewhere",
        serde_json::json!({"host": "another-host"}),
    );
    assert_eq!(
        code(rig.create(claim_as("pvc-mine")).await),
        Code::AlreadyExists
    );
    // Once older than the expiry (600 s in the rig) it is taken over.
    plant_claim(
        &export,
        "pvc-elsewhere",
        serde_json::json!({"host": "another-host", "since": 1}),
    );
    rig.create(claim_as("pvc-mine")).await.unwrap();
    assert_eq!(record(&export, DIR)["name"], "pvc-mine");
}

#[tokio::test]
async fn a_claim_of_a_driver_that_died_on_this_host_is_taken_over_at_once() {
    let rig = Rig::nfs();
    rig.create(seed_claim(9, "delete")).await.unwrap();
    let export = rig.export_dir();
    // The driver before a restart: same host and boot, its process is gone.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    plant_claim(&export, "pvc-before-crash", serde_json::json!({"pid": pid}));
    rig.create(claim_as("pvc-after-crash")).await.unwrap();
    assert_eq!(record(&export, DIR)["name"], "pvc-after-crash");
    // A live process of this host (pid 1 with its real start time) is honoured.
    let stat = std::fs::read_to_string("/proc/1/stat").unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    plant_claim(
        &export,
        "pvc-live",
        serde_json::json!({"pid": 1, "start": start}),
    );
    assert_eq!(
        code(rig.create(claim_as("pvc-other")).await),
        Code::AlreadyExists
    );
}

/// A pid means something only in its pid namespace: a claim of another namespace on the same
/// host (another pod of the same name) is never known to be gone.
#[tokio::test]
async fn a_claim_from_another_pid_namespace_is_not_known_to_be_gone() {
    let rig = Rig::nfs();
    rig.create(seed_claim(9, "delete")).await.unwrap();
    let export = rig.export_dir();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    plant_claim(
        &export,
        "pvc-other-ns",
        serde_json::json!({"pid": pid, "pidns": "pid:[1]"}),
    );
    assert_eq!(
        code(rig.create(claim_as("pvc-mine")).await),
        Code::AlreadyExists
    );
}

/// A claim that will never finish holds nothing back: not its own directory, nor a directory
/// inside or around it.
#[tokio::test]
async fn an_abandoned_claim_does_not_block_directories_inside_it() {
    let rig = Rig::nfs();
    rig.create(seed_claim(9, "delete")).await.unwrap();
    let export = rig.export_dir();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    plant_claim_of(
        &export,
        "default",
        "pvc-dead-ns",
        serde_json::json!({"pid": pid}),
    );
    rig.create(claim_as("pvc-inside")).await.unwrap();
    // A live claim there does block it.
    plant_claim_of(
        &export,
        "default",
        "pvc-live-ns",
        serde_json::json!({"host": "elsewhere"}),
    );
    let mut other = claim_as("pvc-inside-2");
    other
        .parameters
        .insert("csi.storage.k8s.io/pvc/name".into(), "www-web-1".into());
    assert_eq!(code(rig.create(other).await), Code::AlreadyExists);
}

/// Create `pv`'s volume with the fake holding operation `op`, do `meanwhile` (another
/// process's step) while it is held, then let the create go on to its end.
async fn create_with_a_step_between(
    rig: &std::sync::Arc<Rig>,
    pv: &'static str,
    op: &'static str,
    meanwhile: impl FnOnce(),
) -> Result<csi::Volume, tonic::Status> {
    rig.fake.hold_op(op);
    let call = {
        let rig = std::sync::Arc::clone(rig);
        tokio::spawn(async move { rig.create(claim_as(pv)).await })
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), rig.fake.until_held())
        .await
        .expect("the create reached the held step");
    meanwhile();
    rig.fake.release_op();
    call.await.unwrap()
}

/// Between a create's look at an abandoned claim and its takeover, another process takes the
/// claim over first: the late taker must lose, never overwrite the winner's claim.
#[tokio::test]
async fn a_takeover_never_overwrites_a_claim_changed_since_it_looked() {
    let rig = std::sync::Arc::new(Rig::nfs());
    rig.create(seed_claim(9, "delete")).await.unwrap();
    let export = rig.export_dir();
    plant_claim(
        &export,
        "pvc-stale",
        serde_json::json!({"host": "elsewhere", "since": 1}),
    );
    let late = create_with_a_step_between(&rig, "pvc-late", "swap-record", || {
        // The winner, another controller: its fresh claim replaced the stale one.
        plant_claim(
            &export,
            "pvc-winner",
            serde_json::json!({"host": "elsewhere"}),
        );
    })
    .await;
    assert_eq!(code(late), Code::AlreadyExists);
    assert_eq!(
        record(&export, DIR)["name"],
        "pvc-winner",
        "the winner's claim stands"
    );
}

/// A create that fails its last check gives its claim back, but only its own: a claim that
/// replaced it meanwhile stays.
#[tokio::test]
async fn a_failed_create_releases_only_its_own_claim() {
    let rig = std::sync::Arc::new(Rig::nfs());
    rig.create(seed_claim(9, "delete")).await.unwrap();
    let export = rig.export_dir();
    let failing = create_with_a_step_between(&rig, "pvc-failing", "ensure-dir", || {
        // Content appears (its last check fails on it) and another process took the claim
        // over.
        std::fs::create_dir_all(export.join(DIR)).unwrap();
        std::fs::write(export.join(DIR).join("foreign"), b"x").unwrap();
        plant_claim(
            &export,
            "pvc-other",
            serde_json::json!({"host": "elsewhere"}),
        );
    })
    .await;
    assert_eq!(code(failing), Code::AlreadyExists);
    assert_eq!(
        record(&export, DIR)["name"],
        "pvc-other",
        "the other claim stands"
    );
}

#[tokio::test]
async fn creates_of_one_directory_run_one_at_a_time() {
    let rig = std::sync::Arc::new(Rig::nfs());
    rig.create(seed_claim(9, "delete")).await.unwrap();
    rig.fake.hold_op("read-records");
    let first = {
        let rig = std::sync::Arc::clone(&rig);
        tokio::spawn(async move { rig.create(claim_as("pvc-first")).await })
    };
    // The first create holds the directory while its first record read is held; the second
    // is refused before it touches anything.
    tokio::time::timeout(std::time::Duration::from_secs(20), rig.fake.until_held())
        .await
        .expect("the first create reached its record read");
    assert_eq!(
        code(rig.create(claim_as("pvc-second")).await),
        Code::Aborted
    );
    rig.fake.release_op();
    first.await.unwrap().unwrap();
    assert_eq!(record(&rig.export_dir(), DIR)["name"], "pvc-first");
}

#[tokio::test]
async fn a_create_past_half_its_claim_expiry_hands_nothing_out() {
    // An expiry of 20 ms, and the create held at its directory step for longer than that:
    // past half the expiry by the time it would hand the volume out, however fast the machine.
    let rig = std::sync::Arc::new(Rig::nfs_with_claim_expiry(
        std::time::Duration::from_millis(20),
    ));
    rig.fake.hold_op("ensure-dir");
    let slow = {
        let rig = std::sync::Arc::clone(&rig);
        tokio::spawn(async move { rig.create(claim_as("pvc-slow")).await })
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), rig.fake.until_held())
        .await
        .expect("the create reached its directory step");
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    rig.fake.release_op();
    assert_eq!(code(slow.await.unwrap()), Code::Aborted);
    let left = record(&rig.export_dir(), DIR);
    assert!(
        left["creating"].is_object(),
        "still a claim, never a volume: {left}"
    );
}

/// `reuseExisting` adopts a directory with content; it must never adopt one that holds other
/// volumes. With `subDir: ${pvc.metadata.namespace}` a class could take `default`, which holds
/// another class's `default/www-web-0`: its pods would share that volume's data, and deleting
/// it would delete that data while its record survives.
#[tokio::test]
async fn reuse_never_adopts_a_directory_holding_other_volumes() {
    let rig = Rig::nfs();
    let inner = rig.create(seed_claim(0, "delete")).await.unwrap();
    let export = rig.export_dir();
    std::fs::write(export.join(DIR).join("data"), b"inner").unwrap();
    let mut outer = seed_claim(1, "delete");
    outer
        .parameters
        .insert("subDir".into(), "${pvc.metadata.namespace}".into());
    outer
        .parameters
        .insert("reuseExisting".into(), "true".into());
    assert_eq!(code(rig.create(outer.clone()).await), Code::AlreadyExists);
    assert!(!record_path(&export, "default").exists(), "nothing claimed");
    // Retained data alone is adopted, as asked.
    rig.delete(&inner.volume_id).await.unwrap();
    std::fs::create_dir_all(export.join("default/kept")).unwrap();
    std::fs::write(export.join("default/kept/data"), b"kept").unwrap();
    rig.create(outer).await.unwrap();
    assert_eq!(
        std::fs::read(export.join("default/kept/data")).unwrap(),
        b"kept"
    );
}

#[tokio::test]
async fn reuse_never_adopts_a_directory_holding_an_archive() {
    let rig = Rig::nfs();
    let inner = rig.create(seed_claim(0, "archive")).await.unwrap();
    rig.delete(&inner.volume_id).await.unwrap();
    let export = rig.export_dir();
    assert!(export.join("default/archived-www-web-0").is_dir());
    let mut outer = seed_claim(1, "delete");
    outer
        .parameters
        .insert("subDir".into(), "${pvc.metadata.namespace}".into());
    outer
        .parameters
        .insert("reuseExisting".into(), "true".into());
    assert_eq!(code(rig.create(outer).await), Code::AlreadyExists);
}

/// Found by the chaos soak (tests/vm_nfs_chaos.rs): a driver killed while its helper wrote a
/// record, or held one aside to swap it, left the scratch file in `.pvdir/` for ever. Each
/// fresh mount of the export (a new process's first, or a remount), and the next call after a
/// failed record write, sweeps those of gone writers of this host, and leaves another host's
/// and every record alone; a tomb (a record held aside for a swap) goes back under its name.
#[tokio::test]
async fn scratch_files_of_a_killed_driver_are_swept_when_the_export_is_mounted_afresh() {
    use pvdir::os::safe_fs::{scratch_name, Scratch};
    let rig = Rig::nfs();
    rig.create(seed_claim(0, "delete")).await.unwrap();
    let export = rig.export_dir();
    let records = export.join(".pvdir");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let of_dead = |name: &str, kind| {
        scratch_name(name, kind).replace(&format!("-{}-", std::process::id()), &format!("-{dead}-"))
    };
    let stale = [
        of_dead("a.json", Scratch::Temporary),
        of_dead("b.json", Scratch::Tomb),
    ];
    let other_host = ".c.json.tmp-0123456789abcdef-42-1796".to_string();
    for name in stale.iter().chain([&other_host]) {
        std::fs::write(records.join(name), b"{}").unwrap();
    }
    // Not swept while the mount lives: the sweep is for a new process's (or a new mount's)
    // first look.
    rig.create(seed_claim(1, "delete")).await.unwrap();
    assert_eq!(common::names_in(&records).len(), 5);
    // The export recreated on the server: the controller mounts it afresh, as a restarted
    // driver does.
    rig.fake.make_stale(&export);
    rig.create(seed_claim(2, "delete")).await.unwrap();
    let left = common::names_in(&records);
    for name in &stale {
        assert!(!left.contains(name), "{name} left: {left:?}");
    }
    assert!(left.contains(&other_host), "{left:?}");
    // The tomb held the only copy of b.json: it is put back, never deleted.
    assert!(left.contains(&"b.json".to_string()), "{left:?}");
    assert_eq!(
        left.len(),
        5,
        "the other host's file and 4 records: {left:?}"
    );
    // A helper killed mid-write while the driver lives on (here: a write failing at the
    // server) makes the sweep due again on the next call.
    let later = of_dead("f.json", Scratch::Temporary);
    std::fs::write(records.join(&later), b"{}").unwrap();
    rig.fake.fail_next_fs("write-record", libc::EIO);
    assert_eq!(
        code(rig.create(seed_claim(3, "delete")).await),
        Code::Unavailable
    );
    assert!(common::names_in(&records).contains(&later));
    rig.create(seed_claim(3, "delete")).await.unwrap();
    assert!(!common::names_in(&records).contains(&later));
}
