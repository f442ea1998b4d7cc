//! Every gRPC client works over the unix socket, whatever `:authority` it sends: Python grpcio,
//! with its default channel options, sends the socket's path, which the h2 crate under tonic
//! refuses unless pvdir repairs it (`src/socket/authority.rs`). `tests/grpcio/probe.py` calls
//! Probe, GetPluginInfo, CreateVolume and DeleteVolume on the real binary's local backend.
//! (The Go client, which sends `localhost`, is csi-sanity.)
//!
//! Needs root like the other `real_*` tests, and grpcio with grpcio-tools 1.84.0 from PyPI in
//! the virtualenv `tests/setup.sh` makes, [`VENV_PYTHON`] (`PVDIR_PYTHON` names another
//! interpreter). Not Debian's python3-grpcio: its 1.51 sends `localhost` on unix sockets, so
//! the test would pass without the repair and prove nothing. With the repair disabled, 1.84
//! gets RST_STREAM (PROTOCOL_ERROR) on its first call. Without the interpreter or the modules
//! the test fails, unless `PVDIR_SKIP_GRPCIO=1` skips it deliberately.

#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::real::driver::*;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `tests/setup.sh` installs grpcio (a virtualenv, so the system's Python is untouched).
pub const VENV_PYTHON: &str = "/var/cache/pvdir-grpcio/bin/python";

fn python() -> String {
    std::env::var("PVDIR_PYTHON").unwrap_or_else(|_| VENV_PYTHON.into())
}

/// `false` when deliberately skipped; fails the test when grpcio cannot be imported.
fn grpcio_wanted(python: &str) -> bool {
    if std::env::var_os("PVDIR_SKIP_GRPCIO").is_some_and(|v| v == "1") {
        eprintln!("skipped: PVDIR_SKIP_GRPCIO=1");
        return false;
    }
    let import = std::process::Command::new(python)
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .output();
    assert!(
        import.as_ref().is_ok_and(|o| o.status.success()),
        "{python} cannot import grpc and grpc_tools ({import:?}); run tests/setup.sh, which \
         installs them, or set PVDIR_SKIP_GRPCIO=1 to skip"
    );
    true
}

#[tokio::test]
async fn grpcio_with_default_options_provisions_over_the_unix_socket() {
    require_root!();
    let python = python();
    if !grpcio_wanted(&python) {
        return;
    }
    let driver = Driver::start().await;
    let repo = env!("CARGO_MANIFEST_DIR");
    let script = Path::new(repo).join("tests/grpcio/probe.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(repo)
        .arg(driver.socket())
        .arg("pvc-grpcio")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLIENT_TIMEOUT, run)
        .await
        .expect("the grpcio client finished in time")
        .expect("start the grpcio client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpcio client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let id = format!("v1#local#{NODE_ID}#pvc-grpcio");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "Probe ready=True",
            "GetPluginInfo name=local.pvdir.io version=0.1.0",
            &format!("CreateVolume id={id}"),
            &format!("DeleteVolume id={id}"),
        ]
    );
    // The calls really happened on the driver's disk: created, then deleted.
    assert!(!driver.volume_dir(&id).exists());
    assert!(!driver.record(&id).exists());
}
