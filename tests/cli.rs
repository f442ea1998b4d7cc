//! The operator CLI (`pvdir probe|list|show|create|publish|unpublish|delete|load`) run as a
//! process against a real `pvdir serve` (the [`Driver`] harness, local backend, temporary
//! root).
//!
//! Assertions are on exit codes, volume IDs and paths, never on prose. Exit codes: 0 success,
//! 1 local failure or not ready, 2 bad command line, 3 the driver refused the call, 4 the
//! driver was unreachable or silent. Only the publish story needs root (a real bind mount).

#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::real::driver::*;
use common::real::mounts::*;
use common::real::requests::*;

/// Bound on one CLI run, so a hung CLI fails the test instead of hanging it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    #[track_caller]
    fn expect(self, code: i32, what: &str) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

fn pvdir(args: &[&str]) -> Run {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_pvdir"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the pvdir binary");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(RUN_LIMIT) {
        Ok(output) => output.expect("wait for pvdir"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("pvdir {args:?} did not finish within {RUN_LIMIT:?}");
        }
    };
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

fn endpoint(d: &Driver) -> String {
    format!("unix://{}", d.socket().display())
}

fn show(d: &Driver, id: &str) -> Run {
    let root = d.root();
    pvdir(&[
        "show",
        id,
        "--local-root",
        root.to_str().expect("UTF-8 root"),
    ])
    .expect(0, "show")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_prints_the_driver_name_and_node() {
    let d = Driver::start().await;
    let run = pvdir(&["probe", "--endpoint", &endpoint(&d)]).expect(0, "probe");
    assert!(run.stdout.contains("local.pvdir.io"), "{}", run.stdout);
    assert!(run.stdout.contains(NODE_ID), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_of_several_endpoints_probes_all_and_fails_if_one_fails() {
    let d = Driver::start().await;
    let missing = format!("unix://{}", d.path("missing.sock").display());
    let run = pvdir(&[
        "probe",
        "--endpoint",
        &missing,
        "--endpoint",
        &endpoint(&d),
        "--timeout-secs",
        "2",
    ])
    .expect(4, "probe of a missing and a live endpoint");
    assert!(run.stdout.contains("local.pvdir.io"), "{}", run.stdout);
}

#[test]
fn probe_of_a_missing_socket_fails_within_the_timeout() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("nothing-here.sock");
    let run = pvdir(&[
        "probe",
        "--endpoint",
        &format!("unix://{}", socket.display()),
        "--timeout-secs",
        "2",
    ])
    .expect(4, "probe of a missing socket");
    assert!(run.took < Duration::from_secs(10), "took {:?}", run.took);
    assert!(run.stderr.contains(path(&socket)), "{}", run.stderr);
}

#[test]
fn probe_wait_gives_up_on_a_socket_that_never_appears_at_the_timeout() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("not-yet.sock");
    let run = pvdir(&[
        "probe",
        "--wait",
        "--endpoint",
        &format!("unix://{}", socket.display()),
        "--timeout-secs",
        "2",
    ])
    .expect(4, "probe --wait of a socket that never appears");
    assert!(
        run.took >= Duration::from_millis(1900) && run.took < Duration::from_secs(10),
        "took {:?}",
        run.took
    );
}

/// The README's demo starts `pvdir serve &` and probes at once: `--wait` covers the start.
#[test]
fn probe_wait_answers_once_a_driver_started_after_it_listens() {
    if !common::real::privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let base = dir
        .path()
        .canonicalize()
        .expect("canonical temporary directory");
    let socket = base.join("late.sock");
    let endpoint = format!("unix://{}", socket.display());
    let probe = {
        let endpoint = endpoint.clone();
        std::thread::spawn(move || {
            pvdir(&[
                "probe",
                "--wait",
                "--endpoint",
                &endpoint,
                "--timeout-secs",
                "30",
            ])
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let mut serve = Command::new(env!("CARGO_BIN_EXE_pvdir"))
        .args(["serve", "--node-id", NODE_ID, "--local-endpoint", &endpoint])
        .arg("--local-root")
        .arg(base.join("root"))
        .arg("--mount-staging-dir")
        .arg(base.join("mounts"))
        .env_remove("PVDIR_LOCAL_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the driver");
    let run = probe.join().expect("probe thread");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let stopped = serve.wait().expect("wait for the driver");
    let run = run.expect(0, "probe --wait of a driver started after it");
    assert!(run.stdout.contains(NODE_ID), "{}", run.stdout);
    assert!(stopped.success(), "{stopped}");
}

#[test]
fn probe_of_a_socket_that_never_answers_times_out() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("silent.sock");
    // Bound and listening, so connect succeeds, but nobody ever accepts or answers.
    let _silent = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let run = pvdir(&[
        "probe",
        "--endpoint",
        &format!("unix://{}", socket.display()),
        "--timeout-secs",
        "2",
    ])
    .expect(4, "probe of a silent socket");
    assert!(run.took < Duration::from_secs(10), "took {:?}", run.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_show_publish_expand_unpublish_delete() {
    require_root!();
    let d = Driver::start().await;
    let ep = endpoint(&d);

    let created =
        pvdir(&["create", "pvc-cli", "--endpoint", &ep, "--size", "1Gi"]).expect(0, "create");
    let id = created.last_line().to_string();
    assert_eq!(id, format!("v1#local#{NODE_ID}#pvc-cli"));
    let dir = d.volume_dir(&id);
    assert!(dir.is_dir(), "{} was not created", dir.display());

    let listed = pvdir(&["list", "--endpoint", &ep]).expect(0, "list");
    let row = listed
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("{id} not listed:\n{}", listed.stdout));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        columns,
        [
            id.as_str(),
            "1Gi",
            &format!("topology.pvdir.io/node={NODE_ID}")
        ]
    );

    let target = target_in_pod(&d, "cli");
    let before = show(&d, &id);
    assert!(before.stdout.contains(path(&dir)), "{}", before.stdout);
    assert!(before.stdout.contains("not mounted"), "{}", before.stdout);
    assert!(!before.stdout.contains(path(&target)), "{}", before.stdout);

    pvdir(&["publish", &id, path(&target), "--endpoint", &ep]).expect(0, "publish");
    assert_eq!(mounts_at(&target).len(), 1, "one bind mount at the target");
    let published = show(&d, &id);
    assert!(
        published.stdout.contains(path(&target)),
        "{}",
        published.stdout
    );

    // Grown while published: the listing shows the new size; less is answered with it.
    let grown = pvdir(&["expand", &id, "--size", "2Gi", "--endpoint", &ep]).expect(0, "expand");
    assert!(grown.stdout.contains("capacity 2Gi"), "{}", grown.stdout);
    let same = pvdir(&["expand", &id, "--size", "1Gi", "--endpoint", &ep]).expect(0, "expand");
    assert!(same.stdout.contains("capacity 2Gi"), "{}", same.stdout);
    let listed = pvdir(&["list", "--endpoint", &ep]).expect(0, "list after expand");
    assert!(listed.stdout.contains("2Gi"), "{}", listed.stdout);

    pvdir(&["unpublish", &id, path(&target), "--endpoint", &ep]).expect(0, "unpublish");
    assert!(mounts_at(&target).is_empty(), "target still mounted");
    let after = show(&d, &id);
    assert!(!after.stdout.contains(path(&target)), "{}", after.stdout);

    pvdir(&["delete", &id, "--endpoint", &ep]).expect(0, "delete");
    assert!(!dir.exists(), "{} was not removed", dir.display());
    let listed = pvdir(&["list", "--endpoint", &ep]).expect(0, "list after delete");
    assert!(!listed.stdout.contains(&id), "{}", listed.stdout);
}

#[test]
fn show_refuses_malformed_ids() {
    for id in [
        "v1#local#node#..",
        "v1#local#node",
        "v1#nfs#srv#/export#../etc#delete##0123456789abcdef",
        "v1#zfs#a#b",
        "not-a-pvdir-id",
        "",
    ] {
        let run = pvdir(&["show", id]);
        assert_eq!(run.code, Some(1), "show {id:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "show {id:?}: {}", run.stdout);
    }
}

#[test]
fn show_decodes_an_nfs_id_and_finds_its_mounts() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let table = dir.path().join("mountinfo");
    std::fs::write(
        &table,
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
         41 22 0:52 / /pods/a/mount rw,relatime - nfs4 10.0.0.1:/export/k8s/default/www-web-0 rw\n\
         42 22 0:53 / /pods/b/mount ro,relatime - nfs4 10.0.0.1:/export/k8s/default/www-web-1 ro\n\
         43 22 0:54 / /run/pvdir/exports/x rw - nfs4 10.0.0.1:/export/k8s rw\n",
    )
    .expect("write mount table");
    let id =
        "v1#nfs#10.0.0.1#/export/k8s#default/www-web-0#retain#nfsvers=4.2,hard#5f1c0e9a3b2d4c6e";
    let run = pvdir(&["show", id, "--mountinfo", path(&table)]).expect(0, "show");
    assert!(
        run.stdout
            .contains("10.0.0.1:/export/k8s/default/www-web-0"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("nfsvers=4.2,hard"), "{}", run.stdout);
    assert!(run.stdout.contains("/pods/a/mount"), "{}", run.stdout);
    assert!(!run.stdout.contains("/pods/b/mount"), "{}", run.stdout);
    assert!(
        !run.stdout.contains("/run/pvdir/exports/x"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_a_bad_size_fails_before_contacting_the_driver() {
    let d = Driver::start().await;
    for size in ["1G", "1.5Gi", "-1", "Gi", "1Pi"] {
        let run = pvdir(&[
            "create",
            "pvc-bad-size",
            "--endpoint",
            &endpoint(&d),
            "--size",
            size,
        ]);
        assert_eq!(run.code, Some(2), "--size {size}: {}", run.stderr);
    }
    // Not 4 (unreachable): the size is refused before any connection is tried.
    let missing = format!("unix://{}", d.path("missing.sock").display());
    pvdir(&[
        "create",
        "pvc-bad-size",
        "--endpoint",
        &missing,
        "--size",
        "1G",
    ])
    .expect(2, "bad size against a missing socket");
    assert!(!d.volume_dir("v1#local#test-node#pvc-bad-size").exists());
    assert!(!d.record("v1#local#test-node#pvc-bad-size").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_errors_give_the_code_and_exit_3() {
    let d = Driver::start().await;
    let run = pvdir(&[
        "delete",
        "v1#local#test-node#..",
        "--endpoint",
        &endpoint(&d),
    ])
    .expect(3, "delete of a malformed ID");
    assert!(run.stderr.contains("INVALID_ARGUMENT"), "{}", run.stderr);
    let run = pvdir(&[
        "create",
        "pvc-multi",
        "--endpoint",
        &endpoint(&d),
        "--access",
        "multi-node-multi-writer",
    ])
    .expect(3, "multi-node volume on the local backend");
    assert!(run.stderr.contains("INVALID_ARGUMENT"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_on_the_nfs_backend_is_unsupported() {
    let d = Driver::start_nfs(5).await;
    let run = pvdir(&["list", "--endpoint", &endpoint(&d)]).expect(3, "list on NFS");
    assert!(run.stderr.contains("UNIMPLEMENTED"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

/// `pvdir load` against the real driver: the JSON report counts what was done, the data came
/// back intact, and nothing is left (no volume, target or mount).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_as_json_and_leaves_nothing() {
    require_root!();
    let d = Driver::start().await;
    let targets = d.path("load-targets");
    let ep = endpoint(&d);
    let pid = d.pid().to_string();
    let run = pvdir(&[
        "load",
        "--endpoint",
        &ep,
        "--operations",
        "300",
        "--clients",
        "3",
        "--write-bytes",
        "512",
        "--target-dir",
        path(&targets),
        "--pid",
        &pid,
        "--seed",
        "7",
        "--json",
        "-",
        "--progress",
        "off",
    ])
    .expect(0, "load");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(report["operations"], 300);
    assert_eq!(report["abandoned"], 0);
    assert_eq!(report["data"]["lost"], 0);
    assert!(report["data"]["written"].as_u64() > Some(0), "{report}");
    assert!(report["driver_process"]["after"]["rss_kib"].as_u64() > Some(0));
    let rpcs: Vec<&str> = report["rpcs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rpc"].as_str().unwrap())
        .collect();
    assert!(rpcs.contains(&"NodePublishVolume") && rpcs.contains(&"NodeGetVolumeStats"));
    assert!(common::names_in(&d.root().join("volumes")).is_empty());
    assert!(!targets.exists(), "the emptied target directory is removed");
    assert!(mounts_below(&d.path(""))
        .iter()
        .all(|m| m.mount_point == d.path("mounts")));
}

/// Refused calls are counted by code and make the exit status 1; a malformed mix is a usage
/// error before anything is contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counts_refusals_and_fails_on_them() {
    require_root!();
    let d = Driver::start().await;
    let ep = endpoint(&d);
    let run = pvdir(&[
        "load",
        "--endpoint",
        &ep,
        "--operations",
        "20",
        "--param",
        "no-such-parameter=1",
        "--json",
        "-",
        "--progress",
        "off",
    ])
    .expect(1, "every create refused");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(report["abandoned"], 20);
    assert_eq!(report["rpcs"][0]["rpc"], "CreateVolume");
    assert_eq!(report["rpcs"][0]["errors"]["INVALID_ARGUMENT"], 20);
    pvdir(&["load", "--endpoint", &ep, "--mix", "create=1"]).expect(2, "no delete in the mix");
}
