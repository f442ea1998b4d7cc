//! Running helper processes (mount.nfs, umount, pvdir's own `internal` helper) under a time
//! bound.
//!
//! Invariant: a helper that overruns is killed, never abandoned. Each helper gets its own process
//! group so that grandchildren (mount.nfs forks, `mount` execs helpers) die with it, and the
//! child is reaped before we return. NFS waits are TASK_KILLABLE, so SIGKILL does end a helper
//! stuck on a dead server. What a helper writes is bounded too: one that writes more than
//! [`MAX_STDOUT`] or [`MAX_STDERR`] is killed, so a reply inflated by whatever it found on an
//! export cannot grow the driver's memory. Every kill is counted in the metrics, with its reason.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};

use super::OsError;
use crate::metrics::{KillReason, Metrics};

/// After SIGKILL, how long we wait to reap before leaving the zombie to tokio's orphan reaper.
const REAP_GRACE: Duration = Duration::from_secs(5);
/// Most a helper may write to stdout: its JSON reply. The largest is every record of an export
/// (a reuseExisting create reads them all), a few hundred bytes each: about 200,000 records.
pub const MAX_STDOUT: u64 = 64 << 20;
/// Most a helper may write to stderr: diagnostics.
pub const MAX_STDERR: u64 = 64 << 10;

#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Kills the helper's whole process group if the run is abandoned part-way (its future
/// dropped), so grandchildren such as mount.nfs never outlive the call. Disarmed once the
/// helper has been reaped, before its group id could be reused.
struct GroupKiller<'a> {
    group: Option<Pid>,
    what: &'a str,
    metrics: &'a Metrics,
}

impl GroupKiller<'_> {
    fn kill(&mut self, reason: KillReason) {
        if let Some(group) = self.group.take() {
            let _ = killpg(group, Signal::SIGKILL);
            self.metrics.helper_killed(self.what, reason);
        }
    }

    fn disarm(&mut self) {
        self.group = None;
    }
}

impl Drop for GroupKiller<'_> {
    fn drop(&mut self) {
        self.kill(KillReason::Abandoned);
    }
}

/// A driver that is killed outright (OOM, SIGKILL, a node agent restart) runs no destructors,
/// so the group kill above never happens: the kernel must do it. PR_SET_PDEATHSIG fires when the
/// spawning *thread* exits; helpers are spawned from the runtime's worker threads, which live as
/// long as the driver. Grandchildren are not covered, which is why NFS mounts run mount.nfs
/// itself rather than mount(8), which would fork it.
fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes two syscalls (no
    // allocation, no locks), which is what pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before the prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Run `cmd` to completion or until `limit`, whichever is first. `what` names it in errors and
/// in the metrics (a name compiled into pvdir, never a path).
pub async fn run(
    cmd: Command,
    what: &str,
    limit: Duration,
    metrics: &Metrics,
) -> Result<Finished, OsError> {
    run_with_input(cmd, None, what, limit, metrics).await
}

/// [`run`], with `input` written to the helper's stdin (which is then closed). Input travels
/// there rather than in an argument: one argument may hold at most 128 KiB.
pub async fn run_with_input(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    what: &str,
    limit: Duration,
    metrics: &Metrics,
) -> Result<Finished, OsError> {
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().map_err(|source| OsError::Spawn {
        program: program.clone(),
        source,
    })?;
    // The group id equals the helper's pid because of process_group(0).
    let mut killer = GroupKiller {
        group: child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw),
        what,
        metrics,
    };
    let out = child.stdout.take();
    let err = child.stderr.take();
    let feed = feed(child.stdin.take(), input);
    let work = async {
        let ((), stdout, stderr) =
            tokio::try_join!(feed, capped(out, MAX_STDOUT), capped(err, MAX_STDERR))?;
        Ok::<_, u64>((child.wait().await, stdout, stderr))
    };
    let (failure, reason) = match tokio::time::timeout(limit, work).await {
        Ok(Ok((status, stdout, stderr))) => {
            killer.disarm();
            let status = status.map_err(|source| OsError::Spawn { program, source })?;
            return Ok(Finished {
                success: status.success(),
                code: status.code(),
                stdout,
                stderr,
            });
        }
        Ok(Err(cap)) => (
            OsError::Helper {
                what: what.to_string(),
                message: format!("wrote more than {cap} bytes; killed"),
            },
            KillReason::OutputCap,
        ),
        Err(_) => (
            OsError::TimedOut {
                what: what.to_string(),
                after: limit,
            },
            KillReason::Timeout,
        ),
    };
    killer.kill(reason);
    let _ = child.start_kill();
    let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
    Err(failure)
}

/// Write `input` to the helper's stdin and close it. A helper that stops reading early (it
/// failed, or was killed) simply ends the write.
async fn feed(stdin: Option<ChildStdin>, input: Option<Vec<u8>>) -> Result<(), u64> {
    if let (Some(mut stdin), Some(input)) = (stdin, input) {
        let _ = stdin.write_all(&input).await;
    }
    Ok(())
}

/// Everything `pipe` yields until it closes, unless that is more than `cap` bytes: then the cap
/// as the error. A pipe that fails to read simply ends the output.
async fn capped(pipe: Option<impl AsyncRead + Unpin>, cap: u64) -> Result<Vec<u8>, u64> {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        let _ = pipe.take(cap + 1).read_to_end(&mut buf).await;
    }
    if buf.len() as u64 > cap {
        Err(cap)
    } else {
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collects_output_and_status() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let f = run(c, "sh", Duration::from_secs(10), &Metrics::new())
            .await
            .unwrap();
        assert!(!f.success);
        assert_eq!(f.code, Some(3));
        assert_eq!(f.stdout, b"out\n");
        assert_eq!(f.stderr_text(), "err");
    }

    /// A `sh` that starts a `sleep 60` grandchild, records its pid in `pidfile` and waits.
    fn sleeper(pidfile: &std::path::Path) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("sleep 60 & echo $! > {}; wait", pidfile.display()));
        c
    }

    /// Whether the grandchild recorded in `pidfile` is gone (reaped or a zombie) within a
    /// second, the time the kernel may take to deliver a group kill.
    fn grandchild_gone(pidfile: &std::path::Path) -> bool {
        let pid: i32 = std::fs::read_to_string(pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[tokio::test]
    async fn overrun_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let started = std::time::Instant::now();
        let metrics = Metrics::new();
        let e = run(
            sleeper(&pidfile),
            "sleeper",
            Duration::from_millis(300),
            &metrics,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, OsError::TimedOut { .. }));
        let text = metrics.encode();
        assert!(text.contains("pvdir_helper_timeouts_total{operation=\"sleeper\"} 1\n"));
        assert!(
            text.contains("pvdir_helper_kills_total{operation=\"sleeper\",reason=\"timeout\"} 1\n")
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            grandchild_gone(&pidfile),
            "the grandchild survived the timeout"
        );
    }

    #[tokio::test]
    async fn an_abandoned_run_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        // The caller gives up (its future is dropped) long before the helper's own bound.
        let metrics = Metrics::new();
        let _ = tokio::time::timeout(
            Duration::from_millis(300),
            run(
                sleeper(&pidfile),
                "sleeper",
                Duration::from_secs(60),
                &metrics,
            ),
        )
        .await;
        assert!(metrics
            .encode()
            .contains("pvdir_helper_kills_total{operation=\"sleeper\",reason=\"abandoned\"} 1\n"));
        assert!(
            grandchild_gone(&pidfile),
            "the grandchild outlived the abandoned call"
        );
    }

    /// A driver killed outright runs no destructors; the kernel must end its helpers. The
    /// spawning thread exiting stands in for the driver dying (the signal is tied to it).
    #[test]
    fn a_helper_dies_with_the_thread_that_spawned_it() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("helper");
        let recorded = pidfile.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("echo $$ > {}; exec sleep 60", recorded.display()));
            let recorded = recorded.clone();
            let metrics = Metrics::new();
            let mut call = Box::pin(run(c, "sleeper", Duration::from_secs(60), &metrics));
            rt.block_on(async {
                // Start the helper and let it record its pid (slow on a loaded machine), then
                // stop polling as if the process had died.
                for _ in 0..500 {
                    let _ = tokio::time::timeout(Duration::from_millis(20), call.as_mut()).await;
                    if std::fs::read_to_string(&recorded).is_ok_and(|p| p.ends_with('\n')) {
                        break;
                    }
                }
            });
            // Skip every destructor, as SIGKILL would.
            std::mem::forget(call);
            std::mem::forget(rt);
        })
        .join()
        .unwrap();
        assert!(grandchild_gone(&pidfile), "the helper outlived its parent");
    }

    #[tokio::test]
    async fn a_helper_that_writes_too_much_is_killed_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let mut c = Command::new("sh");
        // Endless output from a grandchild: without the cap, memory grows until the bound.
        c.arg("-c")
            .arg(format!("yes pvdir & echo $! > {}; wait", pidfile.display()));
        let started = std::time::Instant::now();
        let metrics = Metrics::new();
        let e = run(c, "chatty", Duration::from_secs(60), &metrics)
            .await
            .unwrap_err();
        assert!(metrics
            .encode()
            .contains("pvdir_helper_kills_total{operation=\"chatty\",reason=\"output_cap\"} 1\n"));
        assert!(matches!(e, OsError::Helper { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(grandchild_gone(&pidfile), "the writer survived the cap");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let c = Command::new("/nonexistent/helper");
        let e = run(c, "x", Duration::from_secs(1), &Metrics::new())
            .await
            .unwrap_err();
        assert!(matches!(e, OsError::Spawn { .. }));
    }
}
