//! The [`Driver`] harness: a real `pvdir serve` process on a unix socket in its own temporary
//! directory, stopped and cleaned up (processes and mounts) on drop.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_client::ControllerClient;
use pvdir::csi::proto::identity_client::IdentityClient;
use pvdir::csi::proto::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint, Uri};

use super::mounts::unmount_all_under;
use super::requests::key_of;

pub const NODE_ID: &str = "test-node";
/// How long the driver may take to create its socket and answer Probe.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the driver may take to exit after SIGTERM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on every gRPC call, so a hung driver fails the test instead of hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `pvdir serve` with its own temporary directory:
/// `<base>/csi.sock`, `<base>/root` (local root), `<base>/driver.log`, and room for targets.
pub struct Driver {
    /// `None` once deliberately kept (a mount under it could not be removed).
    dir: Option<tempfile::TempDir>,
    /// Canonical path of `dir`, so it compares equal to what the kernel reports in mountinfo.
    base: PathBuf,
    child: Option<Child>,
    channel: Option<Channel>,
    /// Number of processes started so far (each gets its own log file).
    generation: u32,
    /// `Some(bound)`: serve the NFS backend with this `--nfs-timeout-secs`; else the local one.
    nfs_timeout_secs: Option<u64>,
    /// More `serve` flags for the next spawns.
    extra_args: Vec<String>,
    /// `Some(args)`: the next spawn runs under `strace -f` with these arguments (fault
    /// injection), logging to `strace-<generation>.log`.
    strace: Option<Vec<String>>,
}

impl Driver {
    /// A fresh directory and a driver serving on it.
    pub async fn start() -> Driver {
        Self::start_with(|_| {}).await
    }

    /// Like [`Driver::start`], but `setup` runs on the new (canonical) directory before the
    /// driver starts.
    pub async fn start_with(setup: impl FnOnce(&Path)) -> Driver {
        Self::start_backend(setup, None).await
    }

    /// A driver serving the NFS backend (in the VM suite), with operations that can block on
    /// the server bounded by `timeout_secs`.
    pub async fn start_nfs(timeout_secs: u64) -> Driver {
        Self::start_backend(|_| {}, Some(timeout_secs)).await
    }

    /// A local driver started with these extra `serve` flags; `{base}` in a flag is replaced
    /// by the driver's directory.
    pub async fn start_with_args(args: &[&str]) -> Driver {
        let mut driver = Self::prepare(None);
        let base = driver.base.display().to_string();
        driver.extra_args = args.iter().map(|a| a.replace("{base}", &base)).collect();
        driver.spawn().await;
        driver
    }

    async fn start_backend(setup: impl FnOnce(&Path), nfs_timeout_secs: Option<u64>) -> Driver {
        let mut driver = Self::prepare(nfs_timeout_secs);
        setup(&driver.base);
        driver.spawn().await;
        driver
    }

    fn prepare(nfs_timeout_secs: Option<u64>) -> Driver {
        let dir = tempfile::Builder::new()
            .prefix("pvdir-real-")
            .tempdir()
            .expect("create temporary directory");
        let base = std::fs::canonicalize(dir.path()).expect("canonicalize temporary directory");
        Driver {
            dir: Some(dir),
            base,
            child: None,
            channel: None,
            generation: 0,
            nfs_timeout_secs,
            extra_args: Vec::new(),
            strace: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("csi.sock")
    }

    /// The running driver's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("driver is running").id()
    }

    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    fn log_path(&self, generation: u32) -> PathBuf {
        self.path(&format!("driver-{generation}.log"))
    }

    /// The strace log of the driver process started last (see [`Driver::trace_next`]).
    pub fn strace_log(&self) -> PathBuf {
        self.path(&format!("strace-{}.log", self.generation))
    }

    /// Give the next spawns these extra `serve` flags.
    pub fn set_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Run the next spawn under `strace -f` with `args` (for example syscall fault
    /// injection); `None` runs it plainly again.
    pub fn trace_next(&mut self, args: Option<&[&str]>) {
        self.strace = args.map(|a| a.iter().map(|s| s.to_string()).collect());
    }

    /// `<root>/volumes/<key>` of a local volume ID.
    pub fn volume_dir(&self, volume_id: &str) -> PathBuf {
        self.root().join("volumes").join(key_of(volume_id))
    }

    /// `<root>/meta/<key>.json` of a local volume ID.
    pub fn record(&self, volume_id: &str) -> PathBuf {
        self.root()
            .join("meta")
            .join(format!("{}.json", key_of(volume_id)))
    }

    /// Start a driver process on this directory (again, after [`Driver::terminate`]) and wait
    /// until it answers Probe.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "a driver is already running");
        self.generation += 1;
        let log = File::create(self.log_path(self.generation)).expect("create driver log");
        let mut cmd = match &self.strace {
            None => Command::new(env!("CARGO_BIN_EXE_pvdir")),
            Some(args) => {
                let mut c = Command::new("strace");
                c.args(["-f", "-qq", "-o"])
                    .arg(self.strace_log())
                    .args(args)
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_pvdir"));
                c
            }
        };
        cmd.arg("serve");
        match self.nfs_timeout_secs {
            None => cmd
                .arg("--local-endpoint")
                .arg(format!("unix://{}", self.socket().display()))
                .arg("--local-root")
                .arg(self.root()),
            Some(secs) => cmd
                .arg("--nfs-endpoint")
                .arg(format!("unix://{}", self.socket().display()))
                .arg("--nfs-staging-dir")
                .arg(self.path("staging"))
                .arg("--nfs-timeout-secs")
                .arg(secs.to_string()),
        };
        cmd.args(&self.extra_args)
            .arg("--mount-staging-dir")
            .arg(self.path("mounts"))
            .arg("--node-id")
            .arg(NODE_ID)
            .arg("--mode")
            .arg("all")
            .arg("--log")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // Hermetic: flags only, no configuration leaking in from the environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PVDIR_") || key == "NODE_ID" {
                cmd.env_remove(key);
            }
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // A test process that is killed outright must not leave drivers running.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("start the pvdir binary"));

        let socket = self.socket();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let channel = loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "driver exited during startup with {status}; log:\n{}",
                    self.read_log(self.generation)
                );
            }
            if socket.exists() {
                if let Ok(channel) = connect(&socket).await {
                    let probe = IdentityClient::new(channel.clone())
                        .probe(csi::ProbeRequest {})
                        .await;
                    if probe.is_ok_and(|r| r.into_inner().ready != Some(false)) {
                        break channel;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "driver did not serve {} within {STARTUP_TIMEOUT:?}; log:\n{}",
                socket.display(),
                self.read_log(self.generation)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.channel = Some(channel);
    }

    fn channel(&self) -> Channel {
        self.channel.clone().expect("driver is running")
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel())
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel())
    }

    /// SIGTERM the driver while our connection is still open (as kubelet's would be) and
    /// return its exit status; fails the test if it does not exit within `SHUTDOWN_TIMEOUT`.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("driver is running");
        kill(pid_of(&child), Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for driver") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "driver did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.read_log(self.generation)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.channel = None;
        status
    }

    /// SIGKILL the driver, as an OOM kill or a node crash would: no chance to clean up.
    /// Under strace, the traced driver is killed, and strace only once every process it
    /// traced has finished or has its SIGKILL pending (a process held in a syscall stays held
    /// until strace lets go, then dies without running the syscall). A dying strace detaches
    /// the processes it holds: a helper whose parent-death SIGKILL is not yet queued would then
    /// run its held syscall, which no real crash does.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("driver is running");
        if self.strace.is_some() {
            let traced = self.traced_pids();
            if let Some(driver) = traced.first() {
                let _ = kill(*driver, Signal::SIGKILL);
            }
            let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
            while Instant::now() < deadline && traced.iter().any(|p| !doomed(*p)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        self.channel = None;
    }

    /// The processes strace logged, the driver first.
    fn traced_pids(&self) -> Vec<Pid> {
        let log = std::fs::read_to_string(self.strace_log()).unwrap_or_default();
        let mut pids: Vec<Pid> = Vec::new();
        for pid in log
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .map(Pid::from_raw)
        {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Wait (at most `limit`) until the strace log shows a call whose line contains `needle`
    /// and that has not returned yet (a delayed call in progress).
    pub async fn wait_for_pending_call(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(self.strace_log()).unwrap_or_default();
            if log
                .lines()
                .any(|l| l.contains(needle) && !l.contains(") = "))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The log of the driver process started last.
    pub fn log(&self) -> String {
        self.read_log(self.generation)
    }

    fn read_log(&self, generation: u32) -> String {
        std::fs::read_to_string(self.log_path(generation))
            .unwrap_or_else(|e| format!("<no log: {e}>"))
    }
}

/// Whether process `pid` has finished (gone, or a zombie) or has SIGKILL pending.
fn doomed(pid: Pid) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    let pending = |name| u64::from_str_radix(&field(name), 16).is_ok_and(|m| m & sigkill != 0);
    field("State:").starts_with(['Z', 'X']) || pending("ShdPnd:") || pending("SigPnd:")
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"))
}

/// Stop a child from a destructor: SIGTERM, a bounded wait, then SIGKILL.
fn stop_blocking(mut child: Child) {
    let _ = kill(pid_of(&child), Signal::SIGTERM);
    let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.channel = None;
        if self.child.is_some() && self.strace.is_some() {
            // A driver under strace outlives a killed strace: end it first.
            if let Some(pid) = self.traced_pids().first() {
                let _ = kill(*pid, Signal::SIGKILL);
            }
        }
        if let Some(child) = self.child.take() {
            stop_blocking(child);
        }
        let leftover = unmount_all_under(&self.base);
        if std::thread::panicking() {
            for generation in 1..=self.generation {
                eprintln!(
                    "---- driver log #{generation} ----\n{}",
                    self.read_log(generation)
                );
            }
        }
        if !leftover.is_empty() {
            eprintln!(
                "could not unmount {leftover:?}; keeping {} rather than deleting through a mount",
                self.base.display()
            );
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

/// A tonic channel over the driver's unix socket.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .expect("static URI parses")
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}
