//! The driver process as the kernel sees it (`/proc/<pid>`): resident memory, open file
//! descriptors and CPU time. Only the process given, not its helper children, which come and
//! go with each call.

use std::path::PathBuf;

/// One reading of the driver process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub rss_kib: u64,
    pub fds: u64,
    /// User plus system time, in clock ticks turned to microseconds.
    pub cpu_us: u64,
}

/// What `/proc/<pid>` could not tell, with the path.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {reason}")]
pub struct UsageError {
    pub path: PathBuf,
    pub reason: String,
}

fn read(path: PathBuf) -> Result<String, UsageError> {
    std::fs::read_to_string(&path).map_err(|e| UsageError {
        reason: e.to_string(),
        path,
    })
}

/// `VmRSS:` of a `/proc/<pid>/status` text, in KiB.
fn rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` text, in ticks. The command name
/// in parentheses may hold spaces and parentheses itself, so fields count from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ').skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

impl Sample {
    pub fn of(pid: u32) -> Result<Sample, UsageError> {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let malformed = |path: PathBuf| UsageError {
            path,
            reason: "unexpected format".into(),
        };
        let status = read(base.join("status"))?;
        let rss_kib = rss_kib(&status).ok_or_else(|| malformed(base.join("status")))?;
        let stat = read(base.join("stat"))?;
        let ticks = cpu_ticks(&stat).ok_or_else(|| malformed(base.join("stat")))?;
        let fd_dir = base.join("fd");
        let fds = std::fs::read_dir(&fd_dir)
            .map_err(|e| UsageError {
                path: fd_dir,
                reason: e.to_string(),
            })?
            .count() as u64;
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
            .unwrap_or(100)
            .max(1);
        Ok(Sample {
            rss_kib,
            fds,
            cpu_us: ticks.saturating_mul(1_000_000) / hz,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_status() {
        assert_eq!(rss_kib("Name:\tx\nVmRSS:\t   12345 kB\n"), Some(12345));
        assert_eq!(rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_counts_fields_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may choose.
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 99";
        assert_eq!(cpu_ticks(stat), Some(12));
        assert_eq!(cpu_ticks("42 (x"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = Sample::of(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.fds > 0, "{s:?}");
        assert!(matches!(Sample::of(u32::MAX), Err(UsageError { .. })));
    }
}
