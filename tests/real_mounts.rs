//! The "real thing" tier: the real `pvdir` binary, real bind mounts, real tmpfs, real signals.
//!
//! Every test starts `pvdir serve --mode all` with the local backend on a unix socket inside its
//! own temporary directory, talks CSI gRPC to it, and checks the effects on the machine by reading
//! `/proc/self/mountinfo` and the filesystem directly (never through the driver's own parsers).
//!
//! These tests need root (mount(2), umount2(2)). Without root they FAIL with a clear message:
//! a privileged test that silently passes would be a test that cannot fail. To skip them
//! explicitly (e.g. on a developer laptop), set `PVDIR_SKIP_PRIVILEGED=1`.
//!
//! Hygiene: the [`Driver`] harness stops its process on drop (SIGTERM, bounded wait, SIGKILL)
//! and detaches every mount left under its temporary directory, deepest first, before the
//! directory is removed, so a failing test leaves neither processes nor mounts behind. If a
//! mount cannot be removed, the directory is kept rather than deleted through the mount.
//!
//! Assertions are on gRPC status codes, never on message text.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_client::ControllerClient;
use pvdir::csi::proto::identity_client::IdentityClient;
use pvdir::csi::proto::node_client::NodeClient;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Response, Status};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

const NODE_ID: &str = "test-node";
/// How long the driver may take to create its socket and answer Probe.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the driver may take to exit after SIGTERM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on every gRPC call, so a hung driver fails the test instead of hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `true` when the privileged tests should run. Panics (fails the test) when they cannot run
/// and were not explicitly skipped.
fn privileged() -> bool {
    if std::env::var_os("PVDIR_SKIP_PRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!(
            "skipped: PVDIR_SKIP_PRIVILEGED=1 (these tests need root for bind mounts and tmpfs)"
        );
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/real_mounts.rs needs root (it performs real bind and tmpfs mounts); \
         run it as root, or set PVDIR_SKIP_PRIVILEGED=1 to skip it explicitly"
    );
    true
}

/// Start of every test: return early (skipped) or fail when not root.
macro_rules! require_root {
    () => {
        if !privileged() {
            return;
        }
    };
}

/// A running `pvdir serve` with its own temporary directory:
/// `<base>/csi.sock`, `<base>/root` (local root), `<base>/driver.log`, and room for targets.
struct Driver {
    /// `None` once deliberately kept (a mount under it could not be removed).
    dir: Option<tempfile::TempDir>,
    /// Canonical path of `dir`, so it compares equal to what the kernel reports in mountinfo.
    base: PathBuf,
    child: Option<Child>,
    channel: Option<Channel>,
    /// Number of processes started so far (each gets its own log file).
    generation: u32,
}

impl Driver {
    /// A fresh directory and a driver serving on it.
    async fn start() -> Driver {
        Self::start_with(|_| {}).await
    }

    /// Like [`Driver::start`], but `setup` runs on the new (canonical) directory before the
    /// driver starts.
    async fn start_with(setup: impl FnOnce(&Path)) -> Driver {
        let dir = tempfile::Builder::new()
            .prefix("pvdir-real-")
            .tempdir()
            .expect("create temporary directory");
        let base = std::fs::canonicalize(dir.path()).expect("canonicalize temporary directory");
        let mut driver = Driver {
            dir: Some(dir),
            base,
            child: None,
            channel: None,
            generation: 0,
        };
        setup(&driver.base);
        driver.spawn().await;
        driver
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    fn socket(&self) -> PathBuf {
        self.path("csi.sock")
    }

    fn root(&self) -> PathBuf {
        self.path("root")
    }

    fn log_path(&self, generation: u32) -> PathBuf {
        self.path(&format!("driver-{generation}.log"))
    }

    /// `<root>/volumes/<key>` of a local volume ID.
    fn volume_dir(&self, volume_id: &str) -> PathBuf {
        self.root().join("volumes").join(key_of(volume_id))
    }

    /// `<root>/meta/<key>.json` of a local volume ID.
    fn record(&self, volume_id: &str) -> PathBuf {
        self.root()
            .join("meta")
            .join(format!("{}.json", key_of(volume_id)))
    }

    /// Start a driver process on this directory (again, after [`Driver::terminate`]) and wait
    /// until it answers Probe.
    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "a driver is already running");
        self.generation += 1;
        let log = File::create(self.log_path(self.generation)).expect("create driver log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvdir"));
        cmd.arg("serve")
            .arg("--local-endpoint")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--local-root")
            .arg(self.root())
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

    fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel())
    }

    fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel())
    }

    /// SIGTERM the driver while our connection is still open (as kubelet's would be) and
    /// return its exit status; fails the test if it does not exit within `SHUTDOWN_TIMEOUT`.
    async fn terminate(&mut self) -> ExitStatus {
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

    fn read_log(&self, generation: u32) -> String {
        std::fs::read_to_string(self.log_path(generation))
            .unwrap_or_else(|e| format!("<no log: {e}>"))
    }
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
async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
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

// ---------------------------------------------------------------------------------------------
// The mount table, read independently of the driver's own parser
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct MountLine {
    /// The directory inside the mounted filesystem shown here (the bind source for binds).
    root: PathBuf,
    mount_point: PathBuf,
    readonly: bool,
    fs_type: String,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

fn mount_table() -> Vec<MountLine> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            Some(MountLine {
                root: unescape(f.get(3)?),
                mount_point: unescape(f.get(4)?),
                readonly: f.get(5)?.split(',').any(|o| o == "ro"),
                fs_type: right.split(' ').next()?.to_string(),
            })
        })
        .collect()
}

/// Every mount whose mount point is exactly `path`, oldest first.
fn mounts_at(path: &Path) -> Vec<MountLine> {
    mount_table()
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

/// Detach every mount at or below `base`, deepest first, stacked mounts included; returns the
/// mount points that are still there afterwards.
fn unmount_all_under(base: &Path) -> Vec<PathBuf> {
    for _ in 0..64 {
        let mut points: Vec<PathBuf> = mount_table()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(base))
            .collect();
        if points.is_empty() {
            return points;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in &points {
            let _ = umount2(point, MntFlags::MNT_DETACH);
        }
    }
    mount_table()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(base))
        .collect()
}

fn bind_mount(source: &Path, target: &Path) {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("bind {} on {}: {e}", source.display(), target.display()));
}

fn tmpfs_mount(target: &Path) {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap_or_else(|e| panic!("tmpfs on {}: {e}", target.display()));
}

fn unmount(target: &Path) {
    umount2(target, MntFlags::empty())
        .unwrap_or_else(|e| panic!("umount {}: {e}", target.display()));
}

// ---------------------------------------------------------------------------------------------
// Requests and small helpers
// ---------------------------------------------------------------------------------------------

const MIB: i64 = 1 << 20;

fn capability(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume::default(),
        )),
    }
}

fn create_request(name: &str, mode: Mode, capacity: i64) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: capacity,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability(mode)],
        ..Default::default()
    }
}

fn delete_request(volume_id: &str) -> csi::DeleteVolumeRequest {
    csi::DeleteVolumeRequest {
        volume_id: volume_id.to_string(),
        ..Default::default()
    }
}

fn publish_request(
    volume_id: &str,
    target: &Path,
    mode: Mode,
    readonly: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.to_string(),
        target_path: target.to_str().expect("UTF-8 target").to_string(),
        volume_capability: Some(capability(mode)),
        readonly,
        ..Default::default()
    }
}

fn unpublish_request(volume_id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.to_string(),
        target_path: target.to_str().expect("UTF-8 target").to_string(),
    }
}

fn stats_request(volume_id: &str, path: &Path) -> csi::NodeGetVolumeStatsRequest {
    csi::NodeGetVolumeStatsRequest {
        volume_id: volume_id.to_string(),
        volume_path: path.to_str().expect("UTF-8 path").to_string(),
        staging_target_path: String::new(),
    }
}

/// The key (last field) of a local volume ID; plain names are not percent-encoded.
fn key_of(volume_id: &str) -> &str {
    volume_id.rsplit('#').next().expect("split yields one item")
}

/// The code of a call's result (OK for success).
fn code<T>(result: &Result<Response<T>, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Assert a call ended with `want`, showing the full status otherwise.
#[track_caller]
fn expect_code<T: std::fmt::Debug>(result: Result<Response<T>, Status>, want: Code, what: &str) {
    let got = code(&result);
    assert_eq!(got, want, "{what}: expected {want:?}, got {result:?}");
}

/// Assert a call succeeded and return its reply.
#[track_caller]
fn expect_ok<T>(result: Result<Response<T>, Status>, what: &str) -> T {
    match result {
        Ok(r) => r.into_inner(),
        Err(status) => panic!("{what}: expected OK, got {status:?}"),
    }
}

async fn create_volume(driver: &Driver, name: &str, mode: Mode) -> String {
    let reply = expect_ok(
        driver
            .controller()
            .create_volume(create_request(name, mode, MIB))
            .await,
        "CreateVolume",
    );
    let id = reply
        .volume
        .expect("CreateVolume returns a volume")
        .volume_id;
    assert!(
        id.starts_with(&format!("v1#local#{NODE_ID}#")),
        "unexpected volume id {id:?}"
    );
    assert!(
        driver.volume_dir(&id).is_dir(),
        "volume directory of {id} not created"
    );
    id
}

async fn publish(
    driver: &Driver,
    id: &str,
    target: &Path,
    mode: Mode,
    readonly: bool,
) -> Result<(), Status> {
    driver
        .node()
        .node_publish_volume(publish_request(id, target, mode, readonly))
        .await
        .map(|_| ())
}

/// Make `<base>/pods/<pod>` (the CO creates the target's parent) and return `<…>/mount`.
fn target_in_pod(driver: &Driver, pod: &str) -> PathBuf {
    let parent = driver.path(&format!("pods/{pod}"));
    std::fs::create_dir_all(&parent).expect("create pod directory");
    parent.join("mount")
}

#[track_caller]
fn assert_read_only(dir: &Path) {
    let err = std::fs::write(dir.join("probe"), b"x")
        .expect_err("a write through a read-only publish must fail");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "write in {}: {err}",
        dir.display()
    );
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_a_real_bind_mount_and_idempotent() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-publish", Mode::SingleNodeWriter).await;
    let source = d.volume_dir(&id);
    let target = target_in_pod(&d, "a");
    assert!(!target.exists());

    publish(&d, &id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("publish");
    let at = mounts_at(&target);
    assert_eq!(at.len(), 1, "one mount at the target: {at:?}");
    assert!(
        at[0].root.ends_with(format!("volumes/{}", key_of(&id))),
        "bind of the volume dir: {at:?}"
    );
    assert!(!at[0].readonly, "writable publish: {at:?}");

    std::fs::write(target.join("hello.txt"), b"through the mount")
        .expect("write through the target");
    assert_eq!(
        std::fs::read(source.join("hello.txt")).expect("file in volume dir"),
        b"through the mount"
    );

    publish(&d, &id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("identical publish is idempotent");
    assert_eq!(
        mounts_at(&target).len(),
        1,
        "a repeated publish must not stack a second mount"
    );

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish",
    );
    assert!(mounts_at(&target).is_empty(), "no mount left at the target");
    assert!(!target.exists(), "target directory removed");
    assert_eq!(
        std::fs::read(source.join("hello.txt")).expect("data survives unpublish"),
        b"through the mount"
    );

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "repeated unpublish",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_is_really_readonly() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-readonly", Mode::SingleNodeWriter).await;
    let source = d.volume_dir(&id);

    // The CO's readonly flag.
    let ro = target_in_pod(&d, "ro-flag");
    publish(&d, &id, &ro, Mode::SingleNodeWriter, true)
        .await
        .expect("readonly publish");
    let at = mounts_at(&ro);
    assert_eq!(at.len(), 1, "{at:?}");
    assert!(at[0].readonly, "mount must be ro in mountinfo: {at:?}");
    assert_read_only(&ro);

    // A reader-only access mode without the flag.
    let reader = target_in_pod(&d, "reader-mode");
    publish(&d, &id, &reader, Mode::SingleNodeReaderOnly, false)
        .await
        .expect("reader-only publish");
    assert!(
        mounts_at(&reader).iter().all(|m| m.readonly),
        "reader-only mode must mount ro"
    );
    assert_read_only(&reader);

    // The source itself stays writable: the ro remount must affect only the bind.
    std::fs::write(source.join("written-at-source"), b"x").expect("volume dir stays writable");
    assert!(
        ro.join("written-at-source").exists(),
        "the ro mount shows the same directory"
    );

    // A writable publish over the read-only one is incompatible.
    expect_code(
        d.node()
            .node_publish_volume(publish_request(&id, &ro, Mode::SingleNodeWriter, false))
            .await,
        Code::AlreadyExists,
        "writable publish over a read-only one",
    );
    let at = mounts_at(&ro);
    assert_eq!(at.len(), 1, "nothing stacked: {at:?}");
    assert!(at[0].readonly, "still read-only: {at:?}");
    assert_read_only(&ro);

    // The identical read-only publish is still idempotent.
    publish(&d, &id, &ro, Mode::SingleNodeWriter, true)
        .await
        .expect("repeated readonly publish");

    for target in [&ro, &reader] {
        expect_ok(
            d.node()
                .node_unpublish_volume(unpublish_request(&id, target))
                .await,
            "unpublish",
        );
        assert!(mounts_at(target).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_single_writer_is_enforced() {
    require_root!();
    let d = Driver::start().await;
    let mode = Mode::SingleNodeSingleWriter;
    let id = create_volume(&d, "pvc-rwop", mode).await;
    let a = target_in_pod(&d, "a");
    let b = target_in_pod(&d, "b");

    publish(&d, &id, &a, mode, false)
        .await
        .expect("publish at A");
    publish(&d, &id, &a, mode, false)
        .await
        .expect("repeated publish at A is idempotent");
    expect_code(
        d.node()
            .node_publish_volume(publish_request(&id, &b, mode, false))
            .await,
        Code::FailedPrecondition,
        "second target of a single-writer volume",
    );
    assert!(mounts_at(&b).is_empty(), "B must not be mounted");
    assert_eq!(mounts_at(&a).len(), 1, "A is untouched");

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &a))
            .await,
        "unpublish A",
    );
    publish(&d, &id, &b, mode, false)
        .await
        .expect("publish at B once A is gone");
    assert_eq!(mounts_at(&b).len(), 1);
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &b))
            .await,
        "unpublish B",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_node_modes_rejected_on_local() {
    require_root!();
    let d = Driver::start().await;
    for (name, mode) in [
        ("pvc-mnmw", Mode::MultiNodeMultiWriter),
        ("pvc-mnro", Mode::MultiNodeReaderOnly),
        ("pvc-mnsw", Mode::MultiNodeSingleWriter),
    ] {
        expect_code(
            d.controller()
                .create_volume(create_request(name, mode, MIB))
                .await,
            Code::InvalidArgument,
            name,
        );
        assert!(
            !d.root().join("volumes").join(name).exists(),
            "{name}: no directory"
        );
        assert!(
            !d.root().join("meta").join(format!("{name}.json")).exists(),
            "{name}: no record"
        );
    }
    assert_eq!(names_in(&d.root().join("volumes")), Vec::<String>::new());
    assert_eq!(names_in(&d.root().join("meta")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_does_not_follow_symlinks() {
    require_root!();
    let d = Driver::start().await;
    let outside = d.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"do not delete").unwrap();
    std::fs::create_dir(outside.join("subdir")).unwrap();
    std::fs::write(outside.join("subdir/also-precious"), b"nor this").unwrap();
    let check_outside = || {
        assert_eq!(
            names_in(&outside),
            ["precious", "subdir"],
            "outside directory intact"
        );
        assert_eq!(
            std::fs::read(outside.join("precious")).unwrap(),
            b"do not delete"
        );
        assert_eq!(
            std::fs::read(outside.join("subdir/also-precious")).unwrap(),
            b"nor this"
        );
    };

    // Links inside the volume, at the top and deeper down.
    let id = create_volume(&d, "pvc-links", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::os::unix::fs::symlink(&outside, dir.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), dir.join("escape-file")).unwrap();
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("a/b/deep-escape")).unwrap();
    std::os::unix::fs::symlink("../../../../../outside", dir.join("a/relative-escape")).unwrap();
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "DeleteVolume",
    );
    check_outside();
    assert!(!dir.exists(), "volume directory removed");
    assert!(!d.record(&id).exists(), "volume record removed");

    // The volume directory itself swapped for a link to the outside: the driver refuses
    // (an operator must look) and does not touch the link's target.
    let id = create_volume(&d, "pvc-swapped", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::fs::remove_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&outside, &dir).unwrap();
    let result = d.controller().delete_volume(delete_request(&id)).await;
    assert_eq!(
        code(&result),
        Code::FailedPrecondition,
        "delete of a volume swapped for a symlink: {result:?}"
    );
    check_outside();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_does_not_cross_mounts() {
    require_root!();
    let d = Driver::start().await;

    // A bind mount of an outside directory planted inside the volume.
    let outside = d.path("outside2");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"bound").unwrap();
    let id = create_volume(&d, "pvc-bind-inside", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::fs::write(dir.join("data"), b"d").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    bind_mount(&outside, &dir.join("sub"));
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete with a bind mount inside",
    );
    assert_eq!(
        std::fs::read(outside.join("precious")).unwrap(),
        b"bound",
        "bound directory intact"
    );
    assert_eq!(
        mounts_at(&dir.join("sub")).len(),
        1,
        "the planted mount is left alone"
    );
    unmount(&dir.join("sub"));
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!dir.exists());
    assert!(!d.record(&id).exists());
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"bound");

    // A file bind-mounted over a file inside the volume (a subPath-style mount).
    let id = create_volume(&d, "pvc-file-bind", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::fs::write(dir.join("file"), b"placeholder").unwrap();
    bind_mount(&outside.join("precious"), &dir.join("file"));
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete with a file bind mount inside",
    );
    assert_eq!(
        std::fs::read(outside.join("precious")).unwrap(),
        b"bound",
        "bound file intact"
    );
    unmount(&dir.join("file"));
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!dir.exists());

    // A tmpfs mounted inside the volume.
    let id = create_volume(&d, "pvc-tmpfs-inside", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    std::fs::create_dir(dir.join("t")).unwrap();
    tmpfs_mount(&dir.join("t"));
    std::fs::write(dir.join("t/in-tmpfs"), b"t").unwrap();
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete with a tmpfs inside",
    );
    assert_eq!(
        std::fs::read(dir.join("t/in-tmpfs")).unwrap(),
        b"t",
        "tmpfs content intact"
    );
    let at = mounts_at(&dir.join("t"));
    assert!(
        at.len() == 1 && at[0].fs_type == "tmpfs",
        "the planted tmpfs is left alone: {at:?}"
    );
    unmount(&dir.join("t"));
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!dir.exists());

    // A tmpfs mounted over the volume directory itself.
    let id = create_volume(&d, "pvc-tmpfs-over", Mode::SingleNodeWriter).await;
    let dir = d.volume_dir(&id);
    tmpfs_mount(&dir);
    std::fs::write(dir.join("in-tmpfs"), b"t").unwrap();
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete of a volume directory that is a mount point",
    );
    assert_eq!(
        std::fs::read(dir.join("in-tmpfs")).unwrap(),
        b"t",
        "tmpfs content intact"
    );
    let at = mounts_at(&dir);
    assert!(
        at.len() == 1 && at[0].fs_type == "tmpfs",
        "the planted tmpfs is left alone: {at:?}"
    );
    unmount(&dir);
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_escaping_ids() {
    require_root!();
    let d = Driver::start().await;
    let keep = create_volume(&d, "pvc-bystander", Mode::SingleNodeWriter).await;
    std::fs::write(d.volume_dir(&keep).join("data"), b"bystander").unwrap();
    let sentinels = [d.root().join("sentinel"), d.path("sentinel")];
    for s in &sentinels {
        std::fs::write(s, b"sentinel").unwrap();
    }

    for id in [
        "v1#local#test-node#..",
        "v1#local#test-node#.",
        "v1#local#test-node#%2E%2E",
        "v1#local#test-node#%2e%2e",
        "v1#local#test-node#a%2Fb",
        "v1#local#test-node#%2Fetc",
        "v1#local#test-node#..%2F..%2Fsentinel",
        "v1#local#test-node#..%2Fsentinel",
        "v1#local#test-node#a%00b",
        "v1#local#test-node#",
    ] {
        expect_code(
            d.controller().delete_volume(delete_request(id)).await,
            Code::InvalidArgument,
            id,
        );
    }
    // An ID this driver never made: nothing of ours to delete, so OK (CSI idempotency).
    expect_ok(
        d.controller()
            .delete_volume(delete_request("not-ours"))
            .await,
        "foreign id",
    );

    for s in &sentinels {
        assert_eq!(
            std::fs::read(s).unwrap(),
            b"sentinel",
            "{} untouched",
            s.display()
        );
    }
    assert_eq!(names_in(&d.root()), ["meta", "sentinel", "volumes"]);
    assert_eq!(
        std::fs::read(d.volume_dir(&keep).join("data")).unwrap(),
        b"bystander"
    );
    assert!(d.record(&keep).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_a_volume_still_mounted() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-busy", Mode::SingleNodeWriter).await;
    let target = target_in_pod(&d, "busy");
    publish(&d, &id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("publish");
    std::fs::write(target.join("data"), b"live").unwrap();

    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete of a published volume",
    );
    assert_eq!(
        std::fs::read(d.volume_dir(&id).join("data")).unwrap(),
        b"live",
        "data kept"
    );
    assert_eq!(
        std::fs::read(target.join("data")).unwrap(),
        b"live",
        "still visible in the pod"
    );
    assert!(d.record(&id).exists(), "record kept");

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish",
    );
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete after unpublish",
    );
    assert!(!d.volume_dir(&id).exists());
    assert!(!d.record(&id).exists());
}

/// In a DaemonSet the local root is usually a hostPath, i.e. itself a bind mount whose
/// mountinfo `root` differs from its mount point. The driver must still recognise its volumes'
/// publishes there (idempotency, single-writer, delete-while-mounted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_recognised_when_the_root_is_a_bind_mount() {
    require_root!();
    let d = Driver::start_with(|base| {
        let host = base.join("host-root");
        let root = base.join("root");
        std::fs::create_dir(&host).unwrap();
        std::fs::create_dir(&root).unwrap();
        bind_mount(&host, &root);
    })
    .await;
    let mode = Mode::SingleNodeSingleWriter;
    let id = create_volume(&d, "pvc-hostpath", mode).await;
    assert!(d.path("host-root/volumes/pvc-hostpath").is_dir());
    let a = target_in_pod(&d, "a");
    let b = target_in_pod(&d, "b");

    publish(&d, &id, &a, mode, false)
        .await
        .expect("publish at A");
    publish(&d, &id, &a, mode, false)
        .await
        .expect("repeated publish at A");
    assert_eq!(mounts_at(&a).len(), 1);
    expect_code(
        d.node()
            .node_publish_volume(publish_request(&id, &b, mode, false))
            .await,
        Code::FailedPrecondition,
        "second target of a single-writer volume",
    );
    std::fs::write(a.join("data"), b"live").unwrap();
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete of a published volume",
    );
    assert_eq!(std::fs::read(a.join("data")).unwrap(), b"live");
    let stats = d.node().node_get_volume_stats(stats_request(&id, &a)).await;
    expect_ok(stats, "stats at the publish");

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &a))
            .await,
        "unpublish",
    );
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );
    assert!(!d.path("host-root/volumes/pvc-hostpath").exists());
}

// Regression test for a DRIVER BUG found while writing this tier: `LocalBackend::delete` used to
// refuse only when some mount's (device, root) EQUALED the volume directory's, so a bind of a
// SUBDIRECTORY of the volume (root `<volume dir>/sub`) went unnoticed and `remove_tree` emptied
// and removed the directory under the live mount (DeleteVolume returned OK, the data was gone).
// src/ now matches mounts whose root lies at or below the volume directory
// (`mountinfo::mounts_of_tree`); this test keeps it that way.
/// A subdirectory of the volume bind-mounted elsewhere (what kubelet does for a `subPath`, and
/// what stays behind when a subPath mount leaks) is live data too: deleting the volume must be
/// refused rather than empty the directory under the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_a_volume_whose_subdirectory_is_mounted() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-subpath", Mode::SingleNodeWriter).await;
    let sub = d.volume_dir(&id).join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("data"), b"live").unwrap();
    let elsewhere = d.path("pods/subpath/volume-subpaths/0");
    std::fs::create_dir_all(&elsewhere).unwrap();
    bind_mount(&sub, &elsewhere);

    let result = d.controller().delete_volume(delete_request(&id)).await;
    let data = std::fs::read(elsewhere.join("data"));
    assert_eq!(
        code(&result),
        Code::FailedPrecondition,
        "delete of a volume with a subdirectory mounted elsewhere: {result:?}; \
         data at the mount afterwards: {data:?}"
    );
    assert_eq!(data.expect("data visible at the mount"), b"live");

    unmount(&elsewhere);
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete once unmounted",
    );
    assert!(!d.volume_dir(&id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_bytes_and_inodes() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-stats", Mode::SingleNodeWriter).await;
    let target = target_in_pod(&d, "stats");
    publish(&d, &id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("publish");

    let reply = expect_ok(
        d.node()
            .node_get_volume_stats(stats_request(&id, &target))
            .await,
        "stats",
    );
    assert_eq!(reply.usage.len(), 2, "{reply:?}");
    for unit in [
        csi::volume_usage::Unit::Bytes,
        csi::volume_usage::Unit::Inodes,
    ] {
        let u = reply
            .usage
            .iter()
            .find(|u| u.unit == unit as i32)
            .unwrap_or_else(|| panic!("no {unit:?} entry in {reply:?}"));
        assert!(u.total > 0, "{unit:?}: {u:?}");
        assert!(
            u.used >= 0 && u.available >= 0 && u.used <= u.total,
            "{unit:?}: {u:?}"
        );
    }

    // Paths that are not a publish of this volume.
    for path in [d.path("pods/nowhere"), d.path("pods"), d.volume_dir(&id)] {
        expect_code(
            d.node()
                .node_get_volume_stats(stats_request(&id, &path))
                .await,
            Code::NotFound,
            &format!("stats at unpublished {}", path.display()),
        );
    }
    // A volume that does not exist, at a path that is a mount (of another volume).
    expect_code(
        d.node()
            .node_get_volume_stats(stats_request("v1#local#test-node#no-such-volume", &target))
            .await,
        Code::NotFound,
        "stats of an unknown volume",
    );

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish",
    );
    expect_code(
        d.node()
            .node_get_volume_stats(stats_request(&id, &target))
            .await,
        Code::NotFound,
        "stats after unpublish",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_volumes() {
    require_root!();
    let mut d = Driver::start().await;
    let one = create_volume(&d, "pvc-restart-1", Mode::SingleNodeWriter).await;
    let two = create_volume(&d, "pvc-restart-2", Mode::SingleNodeSingleWriter).await;
    let a = target_in_pod(&d, "a");
    publish(&d, &two, &a, Mode::SingleNodeSingleWriter, false)
        .await
        .expect("publish before restart");

    let status = d.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "driver must exit 0 on SIGTERM, got {status}"
    );
    assert!(!d.socket().exists(), "socket file removed on shutdown");

    d.spawn().await;
    let listed = expect_ok(
        d.controller()
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes",
    );
    let ids: HashSet<String> = listed
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    assert_eq!(ids, HashSet::from([one.clone(), two.clone()]), "{listed:?}");

    let again = expect_ok(
        d.controller()
            .create_volume(create_request("pvc-restart-1", Mode::SingleNodeWriter, MIB))
            .await,
        "idempotent CreateVolume after restart",
    );
    assert_eq!(again.volume.expect("volume").volume_id, one);
    expect_code(
        d.controller()
            .create_volume(create_request(
                "pvc-restart-1",
                Mode::SingleNodeWriter,
                2 * MIB,
            ))
            .await,
        Code::AlreadyExists,
        "same name, different capacity",
    );

    // Publish state lives in the mount table, not in the process: the new driver still sees
    // the single-writer publish, treats a repeat as idempotent, and can undo it.
    let b = target_in_pod(&d, "b");
    expect_code(
        d.node()
            .node_publish_volume(publish_request(
                &two,
                &b,
                Mode::SingleNodeSingleWriter,
                false,
            ))
            .await,
        Code::FailedPrecondition,
        "second target of a single-writer volume published before the restart",
    );
    publish(&d, &two, &a, Mode::SingleNodeSingleWriter, false)
        .await
        .expect("repeat of a publish made before the restart");
    assert_eq!(mounts_at(&a).len(), 1);
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&two, &a))
            .await,
        "unpublish after restart",
    );
    assert!(mounts_at(&a).is_empty() && !a.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_same_name() {
    require_root!();
    let d = Driver::start().await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = d.controller();
        calls.spawn(async move {
            client
                .create_volume(create_request(
                    "pvc-concurrent",
                    Mode::SingleNodeWriter,
                    MIB,
                ))
                .await
        });
    }
    let mut ids = HashSet::new();
    let mut aborted = 0;
    while let Some(joined) = calls.join_next().await {
        match joined.expect("task") {
            Ok(reply) => {
                ids.insert(reply.into_inner().volume.expect("volume").volume_id);
            }
            Err(status) if status.code() == Code::Aborted => aborted += 1,
            Err(status) => {
                panic!("concurrent CreateVolume: expected OK or ABORTED, got {status:?}")
            }
        }
    }
    assert_eq!(
        ids.len(),
        1,
        "every successful call returns the same volume id: {ids:?} ({aborted} aborted)"
    );
    assert_eq!(names_in(&d.root().join("volumes")), ["pvc-concurrent"]);
    assert_eq!(names_in(&d.root().join("meta")), ["pvc-concurrent.json"]);
}

/// kubelet's root dir may sit behind a symlink (`/var/lib/kubelet -> /data/kubelet`), while
/// mountinfo always shows the resolved path: publish, stats and unpublish must still recognise
/// the mount, or publish would stack mounts and unpublish would never unmount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_behind_a_symlinked_kubelet_dir_are_recognised() {
    require_root!();
    let d = Driver::start().await;
    let id = create_volume(&d, "pvc-linked-kubelet", Mode::SingleNodeWriter).await;
    std::fs::create_dir_all(d.path("real-kubelet/pods/a")).unwrap();
    std::os::unix::fs::symlink(d.path("real-kubelet"), d.path("kubelet")).unwrap();
    let target = d.path("kubelet/pods/a/mount");
    let resolved = d.path("real-kubelet/pods/a/mount");
    for _ in 0..2 {
        publish(&d, &id, &target, Mode::SingleNodeWriter, false)
            .await
            .expect("publish through the symlinked path");
    }
    assert_eq!(
        mounts_at(&resolved).len(),
        1,
        "exactly one mount, not stacked"
    );
    let stats = d
        .node()
        .node_get_volume_stats(stats_request(&id, &target))
        .await;
    expect_ok(stats, "stats through the symlinked path");
    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish through the symlinked path",
    );
    assert!(mounts_at(&resolved).is_empty(), "unmounted");
    assert!(!resolved.exists(), "target directory removed");
}
