//! README's Quick start works as written. The operator CLI demo (the ```sh block after the line
//! "Without a cluster, the operator CLI …") is read from README.md at test time, so the two
//! cannot drift, and run verbatim with `bash -euo pipefail` as root, `pvdir` on PATH, twice in
//! a row: each run must exit 0 and leave no process, mount or socket behind.
//!
//! The demo uses the real paths it names (/tmp/pvdir, /tmp/pod, /run/pvdir/local.sock), which
//! no other test touches (they all work in temporary directories of their own); runs of this
//! test in several processes are serialised by `flock` on [`LOCK`], held for the whole test.
//! Of those places, the ones that did not exist before the test are removed once it has
//! passed, so a passing run leaves the machine as it found it; one that existed is left alone
//! (it may be a user's own try of the demo), and a failing run leaves everything to look at.

#[allow(dead_code)]
mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
const MARKER: &str = "Without a cluster, the operator CLI";
const LOCK: &str = "/run/pvdir-readme-demo.lock";
/// Bound on one run of the demo (it takes about a second).
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// What the demo names and must leave unmounted and gone.
const SOCKET: &str = "/run/pvdir/local.sock";
const PLACES: [&str; 3] = ["/tmp/pvdir", "/tmp/pod", "/run/pvdir"];

/// The lines of the first ```sh block after the line containing `marker`.
fn sh_block_after(text: &str, marker: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|l| !l.contains(marker));
    assert!(lines.next().is_some(), "README has no line with {marker:?}");
    let mut lines = lines.skip_while(|l| l.trim() != "```sh");
    assert!(lines.next().is_some(), "no ```sh block after {marker:?}");
    let block: Vec<String> = lines
        .take_while(|l| l.trim() != "```")
        .map(String::from)
        .collect();
    assert!(!block.is_empty(), "empty demo block");
    block
}

/// Mount points at or below any of `places`.
fn mounts_below(places: &[&str]) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|point| {
            places
                .iter()
                .any(|p| *point == *p || point.starts_with(&format!("{p}/")))
        })
        .map(String::from)
        .collect()
}

/// Run the demo once in a process group of its own; `(exit code, output)`.
fn run_demo(script: &str) -> (Option<i32>, String) {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_pvdir"))
        .parent()
        .expect("binary directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("PATH", path)
        // As a user's shell would have it: no pvdir settings from elsewhere.
        .env_remove("PVDIR_LOCAL_ENDPOINT")
        .env_remove("PVDIR_LOCAL_ROOT")
        .env_remove("NODE_ID")
        .stdin(Stdio::null())
        .stdout(log.reopen().expect("log"))
        .stderr(log.reopen().expect("log"))
        .process_group(0)
        .spawn()
        .expect("start bash");
    let group = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(log.path()).unwrap_or_default();
    let Some(status) = status else {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
        panic!("the demo did not finish within {RUN_LIMIT:?}:\n{output}");
    };
    // Whatever the script left running in its group (a driver it never stopped) is a failure.
    // It is stopped the way the demo should have (SIGTERM: the driver removes its socket),
    // then killed, so that the next run starts clean.
    std::thread::sleep(Duration::from_millis(200));
    let leftover = killpg(group, None).is_ok();
    if leftover {
        let _ = killpg(group, Signal::SIGTERM);
        std::thread::sleep(Duration::from_secs(2));
        let _ = killpg(group, Signal::SIGKILL);
    }
    assert!(!leftover, "the demo left processes running:\n{output}");
    (status.code(), output)
}

#[test]
fn the_readme_cli_demo_runs_verbatim_twice_and_leaves_nothing_behind() {
    if !common::real::privileged() {
        return;
    }
    let readme = std::fs::read_to_string(README).expect("read README.md");
    let block = sh_block_after(&readme, MARKER);
    let script = block.join("\n");
    let lock_file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .expect("open the lock file");
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .expect("lock");
    let made: Vec<&str> = PLACES
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    // A socket file left by a killed driver is fine (the driver replaces a stale one); one
    // that answers is somebody's driver, which the demo must not meet.
    assert!(
        std::os::unix::net::UnixStream::connect(SOCKET).is_err(),
        "a driver already listens on {SOCKET}"
    );
    for round in 1..=2 {
        let (code, output) = run_demo(&script);
        assert_eq!(code, Some(0), "round {round}:\n{script}\n---\n{output}");
        assert_eq!(mounts_below(&PLACES), Vec::<String>::new(), "round {round}");
        assert!(!Path::new(SOCKET).exists(), "round {round}: socket left");
        assert!(
            !Path::new("/tmp/pod/www").exists(),
            "round {round}: target left"
        );
    }
    // Nothing is mounted below them (checked above), so this cannot reach into another
    // filesystem; remove_dir_all does not follow symbolic links.
    for place in made {
        std::fs::remove_dir_all(place).unwrap_or_else(|e| panic!("remove {place}: {e}"));
    }
}

/// README's test command is the one CI runs, and the demo block is found where it should be.
#[test]
fn readme_gives_the_command_ci_runs() {
    const COMMAND: &str = "tests/setup.sh && tests/run-all.sh";
    let readme = std::fs::read_to_string(README).expect("read README.md");
    let quick_start = sh_block_after(&readme, "## Quick start");
    assert!(
        quick_start.iter().any(|l| l.starts_with(COMMAND)),
        "{quick_start:?}"
    );
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run"))
        .expect("read .ci/run");
    assert!(ci.lines().any(|l| l.trim() == COMMAND), "{ci}");
    assert!(sh_block_after(&readme, MARKER)
        .iter()
        .any(|l| l.starts_with("pvdir serve")));
}
