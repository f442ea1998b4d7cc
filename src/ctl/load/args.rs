//! Flags of `pvdir load`, and the run's [`Settings`] made from them.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};

use super::engine::{Progress, Settings, Until};
use super::plan::Mix;
use super::session::Shape;
use crate::ctl::args::{DriverArgs, VolumeArgs};
use crate::ctl::values::to_map;
use crate::ctl::volume::capability;
use crate::ctl::CtlError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A line rewritten in place on a terminal, else a line every 10 seconds.
    Auto,
    Live,
    Lines,
    Off,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub driver: DriverArgs,

    /// Clients calling at once, each on its own connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,

    /// Relative weights of the operations (create, publish, stats, unpublish, delete); an
    /// operation left out or given 0 is not made.
    #[arg(long, default_value = Mix::DEFAULT)]
    pub mix: Mix,

    /// Run for this many seconds (default 10 when --operations is not given either).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub duration_secs: Option<u64>,

    /// Stop after this many operations (the first of this and --duration-secs ends the run).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub operations: Option<u64>,

    /// Volumes created before the measured run and deleted after it, so the driver works at
    /// that many existing volumes.
    #[arg(long, default_value_t = 0)]
    pub prefill: usize,

    /// The most volumes one client holds at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub volumes_per_client: u32,

    /// Each volume's size, parameters and capability, as for `create`.
    #[command(flatten)]
    pub volume: VolumeArgs,

    /// Where targets and staging paths are made (the driver's node must see it). Default: a
    /// new directory under the temporary directory, removed at the end if empty.
    #[arg(long)]
    pub target_dir: Option<PathBuf>,

    /// Write this many bytes into each volume at its first publish, and read them back at
    /// each later publish and in the teardown; data gone or different counts as lost.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=(64 << 20)))]
    pub write_bytes: u64,

    /// Retry each failed step for up to this many seconds, as the sidecars and kubelet do
    /// (0: a failed step is counted and the volume set aside for the teardown).
    #[arg(long, default_value_t = 0)]
    pub retry_secs: u64,

    /// The driver's process ID: report its memory, open descriptors and CPU per operation.
    #[arg(long)]
    pub pid: Option<u32>,

    /// Seed of the operation choices (default: from the clock); the same seed makes the same
    /// choices.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Prefix of the volume names (default: load-SECS-PID, the seconds since 1970 and the
    /// process ID).
    #[arg(long)]
    pub name_prefix: Option<String>,

    /// Also write the report as JSON to this file (`-`: standard output, and the table goes
    /// to standard error).
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Leave the volumes (and mounts) in place at the end instead of tearing them down.
    #[arg(long)]
    pub keep: bool,

    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressArg,
}

impl LoadArgs {
    pub fn settings(&self) -> Result<Settings, CtlError> {
        use std::io::IsTerminal;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let name_prefix = self
            .name_prefix
            .clone()
            .unwrap_or_else(|| format!("load-{}-{}", now.as_secs(), std::process::id()));
        let target_dir = self
            .target_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("pvdir-{name_prefix}")));
        let until = match (self.duration_secs, self.operations) {
            (None, None) => Until {
                duration: Some(Duration::from_secs(10)),
                operations: None,
            },
            (secs, operations) => Until {
                duration: secs.map(Duration::from_secs),
                operations,
            },
        };
        let progress = match self.progress {
            ProgressArg::Off => Progress::Off,
            ProgressArg::Live => Progress::Live,
            ProgressArg::Lines => Progress::Lines(Duration::from_secs(10)),
            ProgressArg::Auto if std::io::stderr().is_terminal() => Progress::Live,
            ProgressArg::Auto => Progress::Lines(Duration::from_secs(10)),
        };
        Ok(Settings {
            endpoint: self.driver.endpoint.clone(),
            clients: self.clients as usize,
            mix: self.mix,
            until,
            prefill: self.prefill,
            per_client: self.volumes_per_client as usize,
            shape: Shape {
                capacity_bytes: self.volume.size,
                parameters: to_map("--param", &self.volume.params)?,
                capability: capability(&self.volume.capability),
                write_bytes: self.write_bytes as usize,
                target_dir,
            },
            call_timeout: Duration::from_secs(self.driver.timeout_secs),
            retry: (self.retry_secs > 0).then(|| Duration::from_secs(self.retry_secs)),
            pid: self.pid,
            seed: self.seed.unwrap_or(now.as_nanos() as u64),
            name_prefix,
            progress,
            keep: self.keep,
        })
    }
}
