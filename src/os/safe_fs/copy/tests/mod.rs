//! `copy_tree` against real directories (ext4 or tmpfs under the test's temp dir): what is kept
//! and refused ([`kept`]), and that a copy cut short resumes to the same result ([`resume`]).

mod kept;
mod resume;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::test_support::{rel, tmp};
use super::{copy_tree, CopyPlan, CopyProgress};

pub(super) struct Dirs {
    _t: tempfile::TempDir,
    pub(super) base: PathBuf,
    pub(super) plan: CopyPlan,
}

pub(super) fn dirs() -> Dirs {
    let t = tmp();
    let base = t.path().to_path_buf();
    for d in ["vol", "snap", "work"] {
        fs::create_dir(base.join(d)).unwrap();
    }
    let plan = CopyPlan {
        src_base: base.clone(),
        src: rel("vol"),
        dst_base: base.clone(),
        dst: rel("snap"),
        work_base: base.clone(),
        work: rel("work"),
    };
    Dirs { _t: t, base, plan }
}

pub(super) fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

pub(super) fn run(plan: &CopyPlan) -> CopyProgress {
    let p = copy_tree(plan, far()).expect("copy");
    assert!(p.complete);
    p
}

/// Every entry below `a` has its equal below `b`: type, mode, owner, mtime, content or
/// link target.
pub(super) fn assert_same_tree(a: &Path, b: &Path) {
    let mut names: Vec<_> = fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut other: Vec<_> = fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    other.sort();
    assert_eq!(names, other, "entries of {a:?}");
    for n in names {
        let (x, y) = (a.join(&n), b.join(&n));
        let (mx, my) = (
            fs::symlink_metadata(&x).unwrap(),
            fs::symlink_metadata(&y).unwrap(),
        );
        assert_eq!(mx.file_type(), my.file_type(), "{x:?}");
        assert_eq!((mx.uid(), mx.gid()), (my.uid(), my.gid()), "owner of {x:?}");
        assert_eq!(
            (mx.mtime(), mx.mtime_nsec()),
            (my.mtime(), my.mtime_nsec()),
            "{x:?}"
        );
        if mx.file_type().is_symlink() {
            assert_eq!(fs::read_link(&x).unwrap(), fs::read_link(&y).unwrap());
            continue;
        }
        assert_eq!(mx.mode(), my.mode(), "mode of {x:?}");
        if mx.is_dir() {
            assert_same_tree(&x, &y);
        } else if mx.is_file() {
            assert_eq!(fs::read(&x).unwrap(), fs::read(&y).unwrap(), "{x:?}");
        }
    }
}
