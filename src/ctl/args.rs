//! Flags of the operator subcommands (the `Command` variants in [`crate::cli`] point here).
//! Values are parsed by clap, so a bad size, pair, path or endpoint is a usage error (exit 2)
//! before anything is contacted.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::values::{parse_key_value, parse_size, parse_target};
use crate::server::Endpoint;

/// The driver to talk to, and the bound on each call.
#[derive(Debug, Args)]
pub struct DriverArgs {
    /// The driver's endpoint: unix:///absolute/path or tcp://host:port.
    #[arg(long)]
    pub endpoint: Endpoint,

    /// Bound, in seconds, on connecting and on every call. Longer than the driver's own
    /// bounds (one CreateVolume on NFS may spend --nfs-timeout-secs on several steps), so that
    /// a slow call is not reported as an unreachable driver while it goes on.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// An endpoint to probe (unix:///absolute/path or tcp://host:port); repeat for several.
    #[arg(long, required = true)]
    pub endpoint: Vec<Endpoint>,

    /// Bound, in seconds, on connecting and on every call.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_secs: u64,

    /// Wait for a driver that is still starting: while its socket does not exist yet or
    /// refuses connections, try again, for up to --timeout-secs.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub driver: DriverArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The volume ID (the PV's spec.csi.volumeHandle).
    pub volume_id: String,

    /// The mount table to look for the volume's mounts in.
    #[arg(long, default_value = "/proc/self/mountinfo")]
    pub mountinfo: PathBuf,

    /// The local backend's root on this node (the driver's --local-root).
    #[arg(long, default_value = "/var/lib/pvdir")]
    pub local_root: PathBuf,
}

/// CSI access modes (Kubernetes' names as aliases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Access {
    /// ReadWriteOnce.
    #[value(alias = "rwo")]
    SingleNodeWriter,
    SingleNodeReaderOnly,
    /// ReadWriteOncePod.
    #[value(alias = "rwop")]
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
    /// ReadOnlyMany.
    #[value(alias = "rox")]
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    /// ReadWriteMany.
    #[value(alias = "rwx")]
    MultiNodeMultiWriter,
}

/// How the volume will be mounted: one CSI volume capability.
#[derive(Debug, Args)]
pub struct CapabilityArgs {
    /// Access mode.
    #[arg(long, value_enum, default_value = "single-node-writer")]
    pub access: Access,

    /// A mount flag (e.g. noatime, nfsvers=4.2); repeat for several.
    #[arg(long = "mount-flag", value_name = "FLAG")]
    pub mount_flags: Vec<String>,
}

/// What a CreateVolume asks for: size, StorageClass parameters and the capability (for
/// `create`, and for each volume of `load`).
#[derive(Debug, Args)]
pub struct VolumeArgs {
    /// Requested capacity: plain bytes or Ki, Mi, Gi, Ti (e.g. 1Gi). Default: unspecified.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<i64>,

    /// A StorageClass parameter, key=value; repeat for several.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,

    #[command(flatten)]
    pub capability: CapabilityArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The volume name (Kubernetes uses the PV name, e.g. `pvc-<uid>`).
    pub name: String,

    #[command(flatten)]
    pub driver: DriverArgs,

    #[command(flatten)]
    pub volume: VolumeArgs,

    /// Require the volume on this node (local backend: the accessibility requirement).
    #[arg(long)]
    pub node: Option<String>,

    /// Fill the new volume from this snapshot (a restore).
    #[arg(long, conflicts_with = "from_volume")]
    pub from_snapshot: Option<String>,

    /// Fill the new volume from this volume (a clone).
    #[arg(long)]
    pub from_volume: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The snapshot name (Kubernetes uses `snapshot-<uid>`).
    pub name: String,

    /// The ID of the volume to take it of.
    #[arg(long)]
    pub source: String,

    #[command(flatten)]
    pub driver: DriverArgs,
}

#[derive(Debug, Args)]
pub struct DeleteSnapshotArgs {
    /// The snapshot ID (the VolumeSnapshotContent's status.snapshotHandle).
    pub snapshot_id: String,

    #[command(flatten)]
    pub driver: DriverArgs,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The volume ID (the PV's spec.csi.volumeHandle).
    pub volume_id: String,

    /// Absolute path to mount the volume at, on the driver's node.
    #[arg(value_parser = parse_target)]
    pub target_path: String,

    #[command(flatten)]
    pub driver: DriverArgs,

    /// Mount read-only.
    #[arg(long)]
    pub readonly: bool,

    #[command(flatten)]
    pub capability: CapabilityArgs,

    /// A volume context entry, key=value (e.g. server=… for a static NFS volume); repeatable.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub context: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct UnpublishArgs {
    /// The volume ID (the PV's spec.csi.volumeHandle).
    pub volume_id: String,

    /// The path the volume is mounted at.
    #[arg(value_parser = parse_target)]
    pub target_path: String,

    #[command(flatten)]
    pub driver: DriverArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The volume ID (the PV's spec.csi.volumeHandle).
    pub volume_id: String,

    #[command(flatten)]
    pub driver: DriverArgs,
}

#[derive(Debug, Args)]
pub struct ExpandArgs {
    /// The volume ID (the PV's spec.csi.volumeHandle).
    pub volume_id: String,

    /// The size to grow to: plain bytes or Ki, Mi, Gi, Ti (e.g. 2Gi).
    #[arg(long, value_parser = parse_size)]
    pub size: i64,

    #[command(flatten)]
    pub driver: DriverArgs,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};
    use crate::server::Endpoint;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("pvdir").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn probe_takes_several_endpoints_and_requires_one() {
        let Ok(Command::Probe(p)) = parse(&[
            "probe",
            "--endpoint",
            "unix:///a.sock",
            "--endpoint",
            "tcp://h:1",
        ]) else {
            panic!("probe with two endpoints")
        };
        assert_eq!(
            p.endpoint,
            [
                Endpoint::Unix("/a.sock".into()),
                Endpoint::Tcp("h:1".into())
            ]
        );
        assert_eq!(p.timeout_secs, 30);
        assert!(!p.wait);
        assert!(parse(&["probe"]).is_err());
        assert!(parse(&["probe", "--endpoint", "unix://rel.sock"]).is_err());
        assert!(parse(&["probe", "--endpoint", "unix:///a", "--timeout-secs", "0"]).is_err());
    }

    #[test]
    fn create_parses_sizes_pairs_and_access_aliases() {
        let Ok(Command::Create(c)) = parse(&[
            "create",
            "pvc-1",
            "--endpoint",
            "unix:///s",
            "--size",
            "2Gi",
            "--param",
            "a=b",
            "--access",
            "rwop",
            "--mount-flag",
            "noatime",
            "--node",
            "n1",
        ]) else {
            panic!("create")
        };
        assert_eq!(c.volume.size, Some(2 << 30));
        assert_eq!(c.volume.params, [("a".to_string(), "b".to_string())]);
        assert_eq!(
            c.volume.capability.access,
            super::Access::SingleNodeSingleWriter
        );
        assert_eq!(c.volume.capability.mount_flags, ["noatime"]);
        assert_eq!(c.node.as_deref(), Some("n1"));
        for bad in [
            ["--size", "1G"],
            ["--param", "novalue"],
            ["--access", "rwz"],
        ] {
            let mut args = vec!["create", "pvc-1", "--endpoint", "unix:///s"];
            args.extend(bad);
            assert!(parse(&args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn publish_needs_an_absolute_target() {
        let base = ["publish", "v1#local#n#k"];
        let ok = [&base[..], &["/t", "--endpoint", "unix:///s", "--readonly"]].concat();
        assert!(matches!(parse(&ok), Ok(Command::Publish(p)) if p.readonly));
        let rel = [&base[..], &["t", "--endpoint", "unix:///s"]].concat();
        assert!(parse(&rel).is_err());
    }

    #[test]
    fn show_has_node_defaults() {
        let Ok(Command::Show(s)) = parse(&["show", "v1#local#n#k"]) else {
            panic!("show")
        };
        assert_eq!(s.mountinfo, std::path::Path::new("/proc/self/mountinfo"));
        assert_eq!(s.local_root, std::path::Path::new("/var/lib/pvdir"));
    }
}
