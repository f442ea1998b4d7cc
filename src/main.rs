//! The `pvdir` binary: parse flags, set up logging, serve until SIGTERM; or run one operator
//! command against a driver (see [`pvdir::ctl`]).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use pvdir::cli::{Cli, Command, Internal, LogFormat, ServeArgs};
use pvdir::ctl;
use pvdir::os::quota::KernelQuotas;
use pvdir::os::real::{run_internal_fs, run_internal_mount, RealOs};
use tokio::signal::unix::{signal, SignalKind};

// Each gRPC call allocates and frees many small buffers across threads (tonic, hyper, the
// blocking pool); glibc's malloc spent a tenth of a create+delete's CPU on them, with
// consolidations and arena locks. mimalloc's per-thread free lists cost less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(args: &ServeArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn terminated() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can only run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(&args);
    let helper = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            tracing::error!(error = %e, "cannot locate the pvdir binary for its helpers");
            return ExitCode::FAILURE;
        }
    };
    let staging = match pvdir::server::prepare_dir(&args.mount_staging_dir) {
        Ok(dir) => dir,
        Err(e) => {
            tracing::error!(error = %e, "cannot prepare the mount staging directory");
            return ExitCode::FAILURE;
        }
    };
    // One registry for the process, handed to every layer that records into it.
    let metrics = Arc::new(pvdir::metrics::Metrics::new());
    let os = Arc::new(RealOs::observed(
        helper,
        args.nfs_timeout(),
        staging,
        args.mount_api,
        Arc::clone(&metrics),
    ));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        os.prepare().await?;
        let http = args
            .http_endpoint
            .as_deref()
            .map(|e| {
                pvdir::http::parse_address(e)
                    .ok_or_else(|| pvdir::server::ServerError::BadHttpEndpoint(e.into()))
            })
            .transpose()?;
        let plugins =
            pvdir::server::assemble(&args, os.clone(), os, Arc::new(KernelQuotas), &metrics)
                .await?;
        pvdir::server::serve(plugins, http, metrics, terminated()).await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "pvdir failed");
            ExitCode::FAILURE
        }
    }
}

/// A helper's operation: the argument, else all of stdin (what the driver sends). What cannot
/// be read is passed on empty and refused as undecodable.
fn op_or_stdin(op: Option<String>) -> String {
    op.unwrap_or_else(|| {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text);
        text
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Internal(_)) {
        ctl::die_on_broken_pipe();
    }
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Probe(args) => ctl::block_on(ctl::probe::run(args)),
        Command::List(args) => ctl::block_on(ctl::list::run(args)),
        Command::Show(args) => ctl::report(ctl::show::run(args)),
        Command::Create(args) => ctl::block_on(ctl::volume::create(args)),
        Command::Publish(args) => ctl::block_on(ctl::volume::publish(args)),
        Command::Unpublish(args) => ctl::block_on(ctl::volume::unpublish(args)),
        Command::Delete(args) => ctl::block_on(ctl::volume::delete(args)),
        Command::Expand(args) => ctl::block_on(ctl::volume::expand(args)),
        Command::Snapshot(args) => ctl::block_on(ctl::snapshot::create(args)),
        Command::DeleteSnapshot(args) => ctl::block_on(ctl::snapshot::delete(args)),
        Command::Load(args) => ctl::load::main(args),
        Command::Internal(Internal::Fs { op }) => {
            ExitCode::from(u8::try_from(run_internal_fs(&op_or_stdin(op))).unwrap_or(1))
        }
        Command::Internal(Internal::Mount { op }) => {
            ExitCode::from(u8::try_from(run_internal_mount(&op_or_stdin(op))).unwrap_or(1))
        }
    }
}
