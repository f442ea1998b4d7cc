//! Killing the real driver at an exact step: strace attached to the running process, armed
//! with its fault injection to SIGKILL it at the `when`th call of one syscall.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use super::driver::Driver;

/// Attach strace to the running driver, armed to SIGKILL it at the `when`th `syscall` of any
/// one thread (strace counts each tracee apart). Counting starts at the attach, and each
/// call's steps run on one thread of the blocking pool, so the count is that call's; a
/// helper's worker threads count apart from each other.
pub fn kill_at_syscall(d: &Driver, syscall: &str, when: u32) -> Child {
    let inject = format!("inject={syscall}:signal=KILL:when={when}");
    let trace = format!("trace={syscall}");
    let mut strace = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "-e", &trace, "-e", &inject, "-p"])
        .arg(d.pid().to_string())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strace");
    let mut lines = std::io::BufReader::new(strace.stderr.take().unwrap()).lines();
    let attached = lines.any(|l| l.is_ok_and(|l| l.contains("attached")));
    assert!(attached, "strace did not attach");
    // strace reports later tracees (a helper's threads) on stderr too: a closed pipe would
    // kill it with SIGPIPE at the first, and the driver would run on untraced.
    std::thread::spawn(move || lines.for_each(drop));
    strace
}

/// After the kill: reap strace, and start the driver again on the same directory.
pub async fn restart_after_kill(d: &mut Driver, mut strace: Child) {
    let _ = strace.wait();
    d.kill();
    d.spawn().await;
}
