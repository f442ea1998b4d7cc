//! Command-line flags of the `pvdir` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::ctl::args::{
    CreateArgs, DeleteArgs, ListArgs, ProbeArgs, PublishArgs, ShowArgs, UnpublishArgs,
};

#[derive(Debug, Parser)]
#[command(
    name = "pvdir",
    version,
    about = "CSI driver: a directory per volume, on NFS or local disk"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the CSI API.
    Serve(ServeArgs),
    /// Ask drivers who they are, whether they are ready and what they serve.
    Probe(ProbeArgs),
    /// List the volumes a driver's controller knows (ListVolumes).
    List(ListArgs),
    /// Decode a volume ID and show where that volume is mounted on this machine (no driver).
    Show(ShowArgs),
    /// Create a volume (CreateVolume) and print its ID.
    Create(CreateArgs),
    /// Mount a volume at a target path on the driver's node (NodePublishVolume).
    Publish(PublishArgs),
    /// Unmount a volume from a target path (NodeUnpublishVolume).
    Unpublish(UnpublishArgs),
    /// Delete a volume (DeleteVolume).
    Delete(DeleteArgs),
    /// Grow a volume (ControllerExpandVolume); on the local backend this raises its quota.
    Expand(crate::ctl::args::ExpandArgs),
    /// Take a snapshot of a volume (CreateSnapshot, repeated until it is ready, as the
    /// snapshotter does) and print its ID.
    Snapshot(crate::ctl::args::SnapshotArgs),
    /// Delete a snapshot (DeleteSnapshot).
    DeleteSnapshot(crate::ctl::args::DeleteSnapshotArgs),
    /// Drive any CSI driver with a mix of calls at a set concurrency and report latency,
    /// errors, throughput and the driver's memory.
    Load(crate::ctl::load::args::LoadArgs),
    /// Helpers the driver runs as its own child processes (not for people).
    #[command(hide = true, subcommand)]
    Internal(Internal),
}

#[derive(Debug, Subcommand)]
pub enum Internal {
    /// Run one directory operation (JSON, else read from stdin) and print the result as JSON.
    Fs { op: Option<String> },
    /// Run one mount operation (JSON, else read from stdin) and print the result as JSON.
    Mount { op: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Identity + Controller (CreateVolume, DeleteVolume, …).
    Controller,
    /// Identity + Node (NodePublishVolume, …).
    Node,
    /// Both in one process (the local backend in the node DaemonSet, or a single-host setup).
    All,
}

impl Mode {
    pub fn controller(self) -> bool {
        matches!(self, Mode::Controller | Mode::All)
    }
    pub fn node(self) -> bool {
        matches!(self, Mode::Node | Mode::All)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which CSI services to serve.
    #[arg(long, value_enum, default_value = "all", env = "PVDIR_MODE")]
    pub mode: Mode,

    /// Overrides --mode for the local backend. The node DaemonSet serves `--mode node
    /// --local-mode all`: local volumes are provisioned on the node that holds them, NFS
    /// volumes centrally.
    #[arg(long, value_enum, env = "PVDIR_LOCAL_MODE")]
    pub local_mode: Option<Mode>,

    /// Overrides --mode for the NFS backend.
    #[arg(long, value_enum, env = "PVDIR_NFS_MODE")]
    pub nfs_mode: Option<Mode>,

    /// Endpoint of the local backend (unix:///path or tcp://host:port). If neither endpoint is
    /// given, the local backend is served on unix:///run/pvdir/local.sock.
    #[arg(long, env = "PVDIR_LOCAL_ENDPOINT")]
    pub local_endpoint: Option<String>,

    /// Endpoint of the NFS backend (unix:///path or tcp://host:port).
    #[arg(long, env = "PVDIR_NFS_ENDPOINT")]
    pub nfs_endpoint: Option<String>,

    /// Driver name of the local backend (the StorageClass provisioner).
    #[arg(
        long,
        default_value = "local.pvdir.io",
        env = "PVDIR_LOCAL_DRIVER_NAME"
    )]
    pub local_driver_name: String,

    /// Driver name of the NFS backend.
    #[arg(long, default_value = "nfs.pvdir.io", env = "PVDIR_NFS_DRIVER_NAME")]
    pub nfs_driver_name: String,

    /// This node's ID (defaults to the host name); also the local topology value.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Directory holding local volumes; created if missing.
    #[arg(long, default_value = "/var/lib/pvdir", env = "PVDIR_LOCAL_ROOT")]
    pub local_root: PathBuf,

    /// How much the local volumes' quotas may promise in all, as a multiple of the disk's
    /// size (less what lies outside volumes). 1.0 never promises more than the disk holds;
    /// above it, claims may be promised more space than exists (see README, "Sizes").
    #[arg(long, default_value_t = 1.0, env = "PVDIR_LOCAL_OVERCOMMIT", value_parser = parse_overcommit)]
    pub local_overcommit: f64,

    /// Where the NFS controller mounts exports to create and delete volume directories.
    #[arg(
        long,
        default_value = "/run/pvdir/exports",
        env = "PVDIR_NFS_STAGING_DIR"
    )]
    pub nfs_staging_dir: PathBuf,

    /// Where mounts are finished before they are attached to a target (a private mount of
    /// its own, made at start-up; what a crashed run left there is removed).
    #[arg(
        long,
        default_value = "/run/pvdir/mounts",
        env = "PVDIR_MOUNT_STAGING_DIR"
    )]
    pub mount_staging_dir: PathBuf,

    /// Mount API: `auto` uses open_tree/mount_setattr/move_mount (Linux 5.12) and falls back
    /// to the classic one on older kernels; `classic` always uses mount(2) with MS_MOVE (for
    /// seccomp profiles that refuse the new syscalls).
    #[arg(long, value_enum, default_value = "auto", env = "PVDIR_MOUNT_API")]
    pub mount_api: crate::os::mount::MountApi,

    /// Serve `/healthz` over HTTP here (`:port` for all addresses, or `host:port`), for
    /// kubelet's liveness and readiness probes. Off unless given.
    #[arg(long, env = "PVDIR_HTTP_ENDPOINT")]
    pub http_endpoint: Option<String>,

    /// kubelet's plugin registration directory (`<kubelet dir>/plugins_registry` on the host,
    /// wherever it is mounted here). When given, each backend this process serves the node
    /// side of registers itself with kubelet there, with no node-driver-registrar sidecar.
    #[arg(long, env = "PVDIR_KUBELET_REGISTRATION_DIR")]
    pub kubelet_registration_dir: Option<PathBuf>,

    /// The local backend's CSI socket as kubelet sees it on the host (what kubelet dials).
    /// Defaults to the path of --local-endpoint, right when pvdir runs on the host itself.
    #[arg(long, env = "PVDIR_LOCAL_REGISTRATION_PATH")]
    pub local_registration_path: Option<PathBuf>,

    /// The NFS backend's CSI socket as kubelet sees it on the host.
    #[arg(long, env = "PVDIR_NFS_REGISTRATION_PATH")]
    pub nfs_registration_path: Option<PathBuf>,

    /// An export the NFS controller serves, named as its StorageClass names it:
    /// `server=<host>;share=<path>[;mountOptions=<option>,<option>]` (once per export).
    /// ListVolumes and ListSnapshots cover the volumes and snapshots on these; without any,
    /// the NFS backend does not advertise them.
    #[arg(long = "nfs-export", value_parser = parse_nfs_export)]
    pub nfs_exports: Vec<crate::domain::volume_id::NfsExport>,

    /// Bound, in seconds, on every operation that can block on an NFS server.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), env = "PVDIR_NFS_TIMEOUT")]
    pub nfs_timeout_secs: u64,

    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "PVDIR_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `pvdir=debug`).
    #[arg(long, default_value = "info", env = "PVDIR_LOG")]
    pub log: String,
}

/// Default endpoint when none is given.
pub const DEFAULT_LOCAL_ENDPOINT: &str = "unix:///run/pvdir/local.sock";

fn parse_overcommit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 1.0 => Ok(r),
        _ => Err(format!("{s:?} is not a ratio of at least 1.0")),
    }
}

fn parse_nfs_export(s: &str) -> Result<crate::domain::volume_id::NfsExport, String> {
    crate::domain::params::parse_export_flag(s).map_err(|e| e.to_string())
}

impl ServeArgs {
    pub fn nfs_timeout(&self) -> Duration {
        Duration::from_secs(self.nfs_timeout_secs)
    }

    /// (local, nfs) services after applying the per-backend overrides.
    pub fn modes(&self) -> (Mode, Mode) {
        (
            self.local_mode.unwrap_or(self.mode),
            self.nfs_mode.unwrap_or(self.mode),
        )
    }

    /// (local, nfs) endpoints after applying the default.
    pub fn endpoints(&self) -> (Option<String>, Option<String>) {
        match (&self.local_endpoint, &self.nfs_endpoint) {
            (None, None) => (Some(DEFAULT_LOCAL_ENDPOINT.into()), None),
            (l, n) => (l.clone(), n.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_backend_modes_override_the_common_one() {
        let cli = Cli::try_parse_from(["pvdir", "serve", "--mode", "node", "--local-mode", "all"])
            .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.modes(), (Mode::All, Mode::Node));
    }

    #[test]
    fn defaults_serve_local_on_default_socket() {
        let cli = Cli::try_parse_from(["pvdir", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            args.endpoints(),
            (Some(DEFAULT_LOCAL_ENDPOINT.into()), None)
        );
        assert_eq!(args.mode, Mode::All);
        assert_eq!(args.nfs_timeout(), Duration::from_secs(30));
    }

    #[test]
    fn nfs_only_does_not_add_local() {
        let cli =
            Cli::try_parse_from(["pvdir", "serve", "--nfs-endpoint", "tcp://127.0.0.1:1"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.endpoints(), (None, Some("tcp://127.0.0.1:1".into())));
    }

    #[test]
    fn zero_timeout_is_refused() {
        assert!(Cli::try_parse_from(["pvdir", "serve", "--nfs-timeout-secs", "0"]).is_err());
    }
}
