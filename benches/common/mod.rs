//! The drivers the benchmarks compare, as real processes on unix sockets: pvdir and
//! csi-driver-host-path v1.18.0 (found at `PVDIR_BENCH_HOSTPATH` or in `../shared/anchors/`
//! beside the checkout). A directory module, so cargo does not take it for a bench of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pvdir::csi::proto::controller_client::ControllerClient;
use tonic::transport::Channel;

/// A controller client on the unix socket `socket`, dialled as the operator CLI dials.
pub async fn connect(socket: &Path) -> ControllerClient<Channel> {
    let endpoint = pvdir::server::Endpoint::Unix(socket.to_path_buf());
    pvdir::ctl::client::Client::connect(&endpoint, Duration::from_secs(10))
        .await
        .expect("connect")
        .controller()
}

/// A driver process serving CSI on `socket`, killed when dropped.
pub struct Driver {
    pub name: String,
    pub socket: PathBuf,
    pub child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (at most 30 s) until the driver has made its socket.
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                self.socket.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `pvdir serve` of the NFS backend in `dir/<name>`, controller and node, with its staging
/// mounts in `dir/<name>/staging`.
pub fn start_pvdir_nfs(name: &str, binary: &Path, dir: &Path) -> Driver {
    spawn_pvdir(name, binary, dir, "all", |cmd, dir, socket| {
        cmd.arg("--nfs-endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--nfs-staging-dir")
            .arg(dir.join("staging"));
    })
}

/// `pvdir serve` of the local backend in `dir/<name>`, serving the CSI services `mode` names.
pub fn start_pvdir(name: &str, binary: &Path, dir: &Path, mode: &str) -> Driver {
    spawn_pvdir(name, binary, dir, mode, |cmd, dir, socket| {
        cmd.arg("--local-endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--local-root")
            .arg(dir.join("pvdir-root"));
    })
}

/// `pvdir serve` in `dir/<name>` on the socket `pvdir.sock` there, with the backend's
/// arguments added by `backend`.
fn spawn_pvdir(
    name: &str,
    binary: &Path,
    dir: &Path,
    mode: &str,
    backend: impl FnOnce(&mut Command, &Path, &Path),
) -> Driver {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("driver directory");
    let socket = dir.join("pvdir.sock");
    let mut cmd = Command::new(binary);
    cmd.args(["serve", "--mode", mode]);
    backend(&mut cmd, &dir, &socket);
    let child = cmd
        .arg("--mount-staging-dir")
        .arg(dir.join("pvdir-mounts"))
        .args(["--node-id", "bench", "--log", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start pvdir serve");
    Driver {
        name: name.to_string(),
        socket,
        child,
    }
}

pub fn hostpath_binary() -> Option<PathBuf> {
    let given = std::env::var_os("PVDIR_BENCH_HOSTPATH").map(PathBuf::from);
    let anchor =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/anchors/hostpathplugin-v1.18.0");
    given.or(Some(anchor)).filter(|p| p.is_file())
}

/// csi-driver-host-path with its state directory in `dir`.
pub fn start_hostpath(binary: &Path, dir: &Path) -> Driver {
    let socket = dir.join("hostpath.sock");
    let child = Command::new(binary)
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .arg("--nodeid")
        .arg("bench")
        .arg("--statedir")
        .arg(dir.join("hostpath-state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hostpathplugin");
    Driver {
        name: "host-path".to_string(),
        socket,
        child,
    }
}

/// The pvdir binary to measure: `PVDIR_BENCH_BINARY`, else the one just built.
pub fn pvdir_binary() -> PathBuf {
    std::env::var_os("PVDIR_BENCH_BINARY")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pvdir")), PathBuf::from)
}
