//! Scratch files beside the records: the temporary file a record is written to before it is
//! renamed or linked into place, and the tomb a record is renamed to while it is compared and
//! swapped (swap.rs). Nothing ever reads them as records (their names start with a dot), and a
//! writer removes its own when it finishes; a writer killed in between leaves its scratch
//! file behind, which [`sweep_scratch`] removes.
//!
//! Invariant: a scratch file is only removed by its writer, or by a sweep that knows its
//! writer is gone. Its name carries the writer's pid and a tag of its host, boot and pid
//! namespace, so a sweep looks pids up only in its own process table and leaves every other
//! host's scratch files alone (a controller on another node may be writing on the same
//! export). Names without a tag, written before tags existed, are never swept.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::unistd::{unlinkat, UnlinkatFlags};
use sha2::{Digest, Sha256};

use super::record::{list_records, open_dir};
use super::{io, SafeFsError};
use crate::os::relpath::RelPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scratch {
    Temporary,
    Tomb,
}

impl Scratch {
    fn infix(self) -> &'static str {
        match self {
            Scratch::Temporary => ".tmp-",
            Scratch::Tomb => ".taken-",
        }
    }
}

const TAG_HEX_LEN: usize = 16;

/// This host, boot and pid namespace, as 16 hex digits: the same for every process of the
/// driver and its helpers on one node, different on another node or after a reboot.
fn writer_tag() -> &'static str {
    // A constant of the process: computed once, as record writes are on the hot path.
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let host = nix::unistd::gethostname().unwrap_or_default();
        let boot = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let pidns = std::fs::read_link("/proc/self/ns/pid").unwrap_or_default();
        let mut digest = Sha256::new();
        digest.update(host.as_encoded_bytes());
        digest.update([0]);
        digest.update(&boot);
        digest.update([0]);
        digest.update(pidns.as_os_str().as_encoded_bytes());
        hex::encode(digest.finalize())[..TAG_HEX_LEN].to_string()
    })
}

/// A scratch name for `name` of this process: `.{name}{infix}{tag}-{pid}-{nanos}`.
pub fn scratch_name(name: &str, kind: Scratch) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        ".{name}{}{}-{}-{nanos}",
        kind.infix(),
        writer_tag(),
        std::process::id()
    )
}

/// The writer's tag and pid of a scratch name, if `file` is one.
fn writer_of(file: &str) -> Option<(&str, i32)> {
    let rest = file.strip_prefix('.')?;
    let tail = [Scratch::Temporary, Scratch::Tomb]
        .into_iter()
        .find_map(|kind| Some(rest.rsplit_once(kind.infix())?.1))?;
    let mut parts = tail.splitn(3, '-');
    let tag = parts.next()?;
    let pid: i32 = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u128>().ok()?;
    let hex = tag.len() == TAG_HEX_LEN && tag.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && pid > 0).then_some((tag, pid))
}

/// Remove the scratch files in `base/dir` whose writer was a process of this host, boot and
/// pid namespace that no longer runs. Returns their names. A pid reused since stays
/// unswept until a later sweep finds it gone.
pub fn sweep_scratch(base: &Path, dir: &RelPath) -> Result<Vec<String>, SafeFsError> {
    let Some((fd, path)) = open_dir(base, dir)? else {
        return Ok(Vec::new());
    };
    let own = std::process::id() as i32;
    let mut swept = Vec::new();
    for name in list_records(base, dir)? {
        let Some((tag, pid)) = writer_of(&name) else {
            continue;
        };
        let gone = tag == writer_tag()
            && pid != own
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(Errno::ESRCH);
        if gone {
            match unlinkat(fd.as_fd(), name.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => swept.push(name),
                Err(e) => return Err(io("remove scratch file", &path.join(&name), e)),
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::super::record::write_record;
    use super::super::test_support::{rel, tmp};
    use super::*;

    /// The pid of a child that has exited and been reaped: it runs no process (until reused).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn scratch_names_name_their_writer() {
        for kind in [Scratch::Temporary, Scratch::Tomb] {
            let name = scratch_name("v.json", kind);
            assert!(name.starts_with(".v.json"), "{name}");
            assert_eq!(
                writer_of(&name),
                Some((writer_tag(), std::process::id() as i32))
            );
        }
    }

    #[test]
    fn only_exact_scratch_names_are_recognised() {
        let tag = "0123456789abcdef";
        assert_eq!(
            writer_of(&format!(".v.json.tmp-{tag}-42-1796")),
            Some((tag, 42))
        );
        assert_eq!(
            writer_of(&format!(".v.json.taken-{tag}-42-1796")),
            Some((tag, 42))
        );
        assert_eq!(
            writer_of(&format!(".v.tmp-x.json.tmp-{tag}-42-1")),
            Some((tag, 42))
        );
        for other in [
            format!("v.json.tmp-{tag}-42-1796"),
            format!(".v.json.tmp-{tag}-42"),
            format!(".v.json.tmp-{tag}-0-1"),
            ".v.json.tmp-42-1796".to_string(),
            ".v.json.tmp-0123-42-1796".to_string(),
            ".v.json".to_string(),
        ] {
            assert_eq!(writer_of(&other), None, "{other}");
        }
    }

    #[test]
    fn scratch_of_gone_writers_of_this_host_is_swept_and_nothing_else() {
        let base = tmp();
        let dir = rel("meta");
        write_record(base.path(), &dir, "kept.json", b"{}", false).unwrap();
        let dead = dead_pid();
        let tag = writer_tag();
        let other_host = "fedcba9876543210";
        let meta = base.path().join("meta");
        let stale_tmp = format!(".a.json.tmp-{tag}-{dead}-123");
        let stale_tomb = format!(".b.json.taken-{tag}-{dead}-124");
        let ours = scratch_name("c.json", Scratch::Temporary);
        let elsewhere = format!(".d.json.tmp-{other_host}-{dead}-125");
        let untagged = format!(".e.json.tmp-{dead}-126");
        for name in [&stale_tmp, &stale_tomb, &ours, &elsewhere, &untagged] {
            std::fs::write(meta.join(name), b"x").unwrap();
        }
        let mut swept = sweep_scratch(base.path(), &dir).unwrap();
        swept.sort();
        assert_eq!(swept, vec![stale_tmp, stale_tomb]);
        let mut left = list_records(base.path(), &dir).unwrap();
        left.sort();
        let mut want = vec![ours, elsewhere, untagged, "kept.json".to_string()];
        want.sort();
        assert_eq!(left, want);
        assert!(sweep_scratch(base.path(), &rel("absent"))
            .unwrap()
            .is_empty());
    }
}
