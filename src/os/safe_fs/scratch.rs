//! Scratch files beside the records: the temporary file a record is written to before it is
//! renamed or linked into place, and the tomb a record is renamed to while it is compared and
//! swapped (swap.rs). Nothing ever reads them as records (their names start with a dot), and a
//! writer removes its own when it finishes; a writer killed in between leaves its scratch
//! file behind, which [`sweep_scratch`] deals with.
//!
//! Invariants:
//! - A tomb is never unlinked while it may be the only copy of a record: the sweep puts it
//!   back under the record's name, and drops it only if that name exists again. Since the
//!   swap that took it never answered its caller, putting the old record back is the state
//!   the caller's retry expects.
//! - A scratch file is only handled by its writer, or by a sweep that knows its writer is gone.
//!   Its name carries the writer's pid and a tag of its host, boot and pid namespace, so a
//!   sweep looks pids up only in its own process table and leaves every other host's files
//!   alone (a controller on another node may be writing on the same export). A process that
//!   cannot read its identity writes untagged names, which only [`Writers::All`] sweeps.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::record::{list_records, open_dir};
use super::swap::restore_record;
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

/// Whose scratch files a sweep may handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Writers {
    /// Those of processes of this host, boot and pid namespace that no longer run: for a
    /// directory other hosts may write (an export).
    ThisHostGone,
    /// Every one: for a directory only the caller writes, as the local root under the
    /// journal's exclusive lock (a restarted pod has a new pid namespace, so the tag of its
    /// predecessor's files is not its own).
    All,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swept {
    /// Temporaries removed, and tombs dropped because their record exists again.
    pub removed: Vec<String>,
    /// Tombs put back under their record's name.
    pub restored: Vec<String>,
    /// Scratch files of this host whose writer still runs (a helper stuck on a server that
    /// stopped answering, say): a later sweep should look again.
    pub waiting: usize,
}

const TAG_HEX_LEN: usize = 16;

/// This host, boot and pid namespace, as 16 hex digits: the same for every process of the
/// driver and its helpers on one node, different on another node, after a reboot or in
/// another container. `None` when any part cannot be read: then a pid in a name could be
/// mistaken for another host's.
fn writer_tag() -> Option<&'static str> {
    // A constant of the process: computed once, as record writes are on the hot path.
    static TAG: OnceLock<Option<String>> = OnceLock::new();
    TAG.get_or_init(|| {
        let host = nix::unistd::gethostname().ok()?;
        let boot = std::fs::read("/proc/sys/kernel/random/boot_id").ok()?;
        let pidns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let mut digest = Sha256::new();
        digest.update(host.as_encoded_bytes());
        digest.update([0]);
        digest.update(&boot);
        digest.update([0]);
        digest.update(pidns.as_os_str().as_encoded_bytes());
        Some(hex::encode(digest.finalize())[..TAG_HEX_LEN].to_string())
    })
    .as_deref()
}

/// A scratch name for `name` of this process: `.{name}{infix}{tag}-{pid}-{nanos}`, or without
/// the tag when this process cannot tell its identity.
pub fn scratch_name(name: &str, kind: Scratch) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tag = writer_tag().map(|t| format!("{t}-")).unwrap_or_default();
    format!(".{name}{}{tag}{}-{nanos}", kind.infix(), std::process::id())
}

/// A scratch file's parts: what it is, the record it belongs to, and its writer's tag (if
/// any) and pid.
#[derive(Debug, PartialEq, Eq)]
struct Parsed<'a> {
    kind: Scratch,
    record: &'a str,
    tag: Option<&'a str>,
    pid: i32,
}

fn parse(file: &str) -> Option<Parsed<'_>> {
    let rest = file.strip_prefix('.')?;
    let (kind, record, tail) =
        [Scratch::Temporary, Scratch::Tomb]
            .into_iter()
            .find_map(|kind| {
                let (record, tail) = rest.rsplit_once(kind.infix())?;
                Some((kind, record, tail))
            })?;
    let parts: Vec<&str> = tail.split('-').collect();
    let (tag, pid, nanos) = match parts.as_slice() {
        [tag, pid, nanos] => (Some(*tag), pid, nanos),
        [pid, nanos] => (None, pid, nanos),
        _ => return None,
    };
    nanos.parse::<u128>().ok()?;
    let pid: i32 = pid.parse().ok().filter(|pid| *pid > 0)?;
    let tag_ok =
        tag.is_none_or(|t| t.len() == TAG_HEX_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()));
    (tag_ok && !record.is_empty()).then_some(Parsed {
        kind,
        record,
        tag,
        pid,
    })
}

fn runs(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) != Err(Errno::ESRCH)
}

/// Deal with the scratch files in `base/dir` that `writers` allows: remove temporaries, put
/// tombs back (or drop them if their record exists again). Never touches a record.
pub fn sweep_scratch(base: &Path, dir: &RelPath, writers: Writers) -> Result<Swept, SafeFsError> {
    let Some((fd, path)) = open_dir(base, dir)? else {
        return Ok(Swept::default());
    };
    let own = std::process::id() as i32;
    let mine = writer_tag();
    let mut swept = Swept::default();
    for name in list_records(base, dir)? {
        let Some(file) = parse(&name) else {
            continue;
        };
        let ours = writers == Writers::All || (file.tag.is_some() && file.tag == mine);
        if !ours || file.pid == own {
            continue;
        }
        if writers == Writers::ThisHostGone && runs(file.pid) {
            swept.waiting += 1;
            continue;
        }
        match file.kind {
            Scratch::Temporary => {
                match unlinkat(fd.as_fd(), name.as_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => swept.removed.push(name),
                    Err(e) => return Err(io("remove scratch file", &path.join(&name), e)),
                }
            }
            Scratch::Tomb => match restore_record(base, dir, &name, file.record)? {
                true => swept.restored.push(name),
                false => swept.removed.push(name),
            },
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::super::record::{read_records, write_record};
    use super::super::test_support::{rel, tmp};
    use super::*;

    /// The pid of a child that has exited and been reaped: it runs no process (until reused).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn tag() -> &'static str {
        writer_tag().expect("this test process can read its identity")
    }

    #[test]
    fn scratch_names_name_their_writer() {
        for kind in [Scratch::Temporary, Scratch::Tomb] {
            let name = scratch_name("v.json", kind);
            let parsed = parse(&name).unwrap();
            assert_eq!(parsed.kind, kind);
            assert_eq!(parsed.record, "v.json");
            assert_eq!(parsed.tag, Some(tag()));
            assert_eq!(parsed.pid, std::process::id() as i32);
        }
    }

    #[test]
    fn only_exact_scratch_names_are_recognised() {
        let t = "0123456789abcdef";
        let p = |s: &str| {
            parse(s).map(|f| {
                (
                    f.kind,
                    f.record.to_string(),
                    f.tag.map(str::to_string),
                    f.pid,
                )
            })
        };
        assert_eq!(
            p(&format!(".v.json.tmp-{t}-42-1796")),
            Some((Scratch::Temporary, "v.json".into(), Some(t.into()), 42))
        );
        assert_eq!(
            p(&format!(".v.json.taken-{t}-42-1796")),
            Some((Scratch::Tomb, "v.json".into(), Some(t.into()), 42))
        );
        assert_eq!(
            p(".v.json.tmp-42-1796"),
            Some((Scratch::Temporary, "v.json".into(), None, 42))
        );
        for other in [
            format!("v.json.tmp-{t}-42-1796"),
            format!(".v.json.tmp-{t}-42"),
            format!(".v.json.tmp-{t}-0-1"),
            ".v.json.tmp-0123-42-1796".to_string(),
            ".v.json.tmp-a-b-c-d".to_string(),
            ".tmp-42-1796".to_string(),
            ".v.json".to_string(),
        ] {
            assert_eq!(p(&other), None, "{other}");
        }
    }

    #[test]
    fn gone_writers_of_this_host_are_swept_and_nothing_else() {
        let base = tmp();
        let dir = rel("meta");
        write_record(base.path(), &dir, "kept.json", b"{}", false).unwrap();
        write_record(base.path(), &dir, "again.json", b"{\"new\":1}", false).unwrap();
        let dead = dead_pid();
        let t = tag();
        let meta = base.path().join("meta");
        let stale_tmp = format!(".a.json.tmp-{t}-{dead}-123");
        // A tomb whose record is gone: the only copy, put back.
        let lone_tomb = format!(".lost.json.taken-{t}-{dead}-124");
        // A tomb whose record exists again (the swap published its new one): dropped.
        let old_tomb = format!(".again.json.taken-{t}-{dead}-125");
        let live = format!(".c.json.tmp-{t}-1-126");
        let elsewhere = format!(".d.json.tmp-fedcba9876543210-{dead}-127");
        let untagged = format!(".e.json.tmp-{dead}-128");
        let files = [
            (&stale_tmp, "x"),
            (&lone_tomb, "{\"old\":1}"),
            (&old_tomb, "{\"old\":2}"),
            (&live, "x"),
            (&elsewhere, "x"),
            (&untagged, "x"),
        ];
        for (name, content) in files {
            std::fs::write(meta.join(name), content).unwrap();
        }
        let swept = sweep_scratch(base.path(), &dir, Writers::ThisHostGone).unwrap();
        let mut removed = swept.removed.clone();
        removed.sort();
        let mut want = vec![stale_tmp, old_tomb];
        want.sort();
        assert_eq!(removed, want);
        assert_eq!(swept.restored, vec![lone_tomb]);
        assert_eq!(swept.waiting, 1, "pid 1 runs");
        let records = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            read_records(base.path(), &dir, &names).unwrap()
        };
        assert_eq!(
            records(&["lost.json", "again.json", "kept.json"]),
            [
                Some("{\"old\":1}".to_string()),
                Some("{\"new\":1}".to_string()),
                Some("{}".to_string())
            ]
        );
        let mut left = list_records(base.path(), &dir).unwrap();
        left.sort();
        let mut want = vec![
            live.clone(),
            elsewhere.clone(),
            untagged.clone(),
            "again.json".to_string(),
            "kept.json".to_string(),
            "lost.json".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);

        // The local root's sweep, under the journal's lock: every writer is gone.
        let swept = sweep_scratch(base.path(), &dir, Writers::All).unwrap();
        assert_eq!(swept.removed.len(), 3, "{swept:?}");
        assert_eq!(list_records(base.path(), &dir).unwrap().len(), 3);
        assert_eq!(
            sweep_scratch(base.path(), &rel("absent"), Writers::All).unwrap(),
            Swept::default()
        );
    }
}
