//! `copy_tree` against real directories (ext4 or tmpfs under the test's temp dir): what is kept,
//! what is refused, and that a copy cut short resumes to the same result.

use std::fs;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::super::test_support::{bind_mount, is_root, mount_tmpfs, rel, tmp};
use super::*;

struct Dirs {
    _t: tempfile::TempDir,
    base: PathBuf,
    plan: CopyPlan,
}

fn dirs() -> Dirs {
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

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn run(plan: &CopyPlan) -> CopyProgress {
    let p = copy_tree(plan, far()).expect("copy");
    assert!(p.complete);
    p
}

/// Every entry below `a` has its equal below `b`: type, mode, owner, mtime, content or
/// link target.
fn assert_same_tree(a: &Path, b: &Path) {
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

#[test]
fn a_tree_is_copied_with_modes_owners_times_links_fifos_and_xattrs() {
    if !is_root() {
        return;
    }
    let d = dirs();
    let vol = d.base.join("vol");
    fs::create_dir_all(vol.join("a/b/c")).unwrap();
    fs::write(vol.join("a/b/c/deep"), b"deep").unwrap();
    fs::write(vol.join("plain"), b"hello").unwrap();
    fs::write(vol.join("setgid"), b"x").unwrap();
    std::os::unix::fs::chown(vol.join("setgid"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(vol.join("setgid"), fs::Permissions::from_mode(0o2750)).unwrap();
    std::os::unix::fs::chown(vol.join("a"), Some(999), Some(998)).unwrap();
    fs::set_permissions(vol.join("a"), fs::Permissions::from_mode(0o1777)).unwrap();
    // Links are copied as links, whether they point inside, outside or nowhere.
    symlink("/etc/passwd", vol.join("out")).unwrap();
    symlink("a/b", vol.join("in")).unwrap();
    symlink("nowhere", vol.join("dangling")).unwrap();
    std::os::unix::fs::lchown(vol.join("out"), Some(77), Some(78)).unwrap();
    nix::unistd::mkfifo(&vol.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    xattr_set(&vol.join("plain"), "user.pvdir-test", b"kept");
    // The volume's root too: a restore keeps what the source's root had (an fsGroup chown).
    std::os::unix::fs::chown(&vol, Some(1000), Some(2000)).unwrap();
    fs::set_permissions(&vol, fs::Permissions::from_mode(0o2775)).unwrap();

    let p = run(&d.plan);
    let snap = d.base.join("snap");
    assert_same_tree(&vol, &snap);
    let (mv, ms) = (fs::metadata(&vol).unwrap(), fs::metadata(&snap).unwrap());
    assert_eq!(
        (mv.mode(), mv.uid(), mv.gid()),
        (ms.mode(), ms.uid(), ms.gid())
    );
    assert_eq!(xattr_get(&snap.join("plain"), "user.pvdir-test"), b"kept");
    assert_eq!(p.stats.entries, 10);
    assert_eq!(p.stats.bytes(), 4 + 5 + 1);
    assert_eq!(fs::read_dir(d.base.join("work")).unwrap().count(), 0);
}

#[test]
fn holes_stay_holes() {
    let d = dirs();
    let f = fs::File::create(d.base.join("vol/sparse")).unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(b"middle", 512 << 20).unwrap();
    drop(f);
    run(&d.plan);
    let copy = d.base.join("snap/sparse");
    let m = fs::metadata(&copy).unwrap();
    assert_eq!(m.len(), 1 << 30);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} blocks allocated",
        m.blocks()
    );
    let mut buf = [0u8; 6];
    fs::File::open(&copy)
        .unwrap()
        .read_exact_at(&mut buf, 512 << 20)
        .unwrap();
    assert_eq!(&buf, b"middle");
}

#[test]
fn device_nodes_are_left_out_and_counted() {
    if !is_root() {
        return;
    }
    let d = dirs();
    let null = d.base.join("vol/null");
    nix::sys::stat::mknod(
        &null,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    let p = run(&d.plan);
    assert_eq!(p.stats.skipped, 1);
    assert!(!d.base.join("snap/null").exists());
}

#[test]
fn a_mount_inside_the_source_stops_the_copy_and_nothing_of_it_is_copied() {
    if !is_root() {
        return;
    }
    let d = dirs();
    let inner = d.base.join("vol/mnt");
    fs::create_dir(&inner).unwrap();
    let _m = mount_tmpfs(&inner);
    fs::write(inner.join("secret"), b"other mount").unwrap();
    let e = copy_tree(&d.plan, far()).unwrap_err();
    assert!(matches!(e, SafeFsError::CrossesMount { .. }), "{e:?}");
    assert!(!d.base.join("snap/mnt/secret").exists());
}

#[test]
fn a_bind_mount_of_the_same_filesystem_is_seen_too() {
    if !is_root() {
        return;
    }
    let d = dirs();
    let elsewhere = d.base.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("secret"), b"x").unwrap();
    let inner = d.base.join("vol/bind");
    fs::create_dir(&inner).unwrap();
    let _m = bind_mount(&elsewhere, &inner);
    let e = copy_tree(&d.plan, far()).unwrap_err();
    assert!(matches!(e, SafeFsError::CrossesMount { .. }), "{e:?}");
    assert!(!d.base.join("snap/bind/secret").exists());
}

#[test]
fn a_symlinked_source_is_refused_not_followed() {
    let d = dirs();
    fs::remove_dir(d.base.join("vol")).unwrap();
    let outside = d.base.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("f"), b"x").unwrap();
    symlink(&outside, d.base.join("vol")).unwrap();
    let e = copy_tree(&d.plan, far()).unwrap_err();
    assert!(matches!(e, SafeFsError::SymlinkInPath { .. }), "{e:?}");
    assert_eq!(fs::read_dir(d.base.join("snap")).unwrap().count(), 0);
}

#[test]
fn a_copy_past_its_deadline_resumes_to_the_same_result() {
    let d = dirs();
    let vol = d.base.join("vol");
    for i in 0..50 {
        fs::create_dir_all(vol.join(format!("d{}", i % 7))).unwrap();
        fs::write(vol.join(format!("d{}/f{i}", i % 7)), format!("file {i}")).unwrap();
    }
    let p = copy_tree(&d.plan, Instant::now()).unwrap();
    assert!(!p.complete);
    let mut calls = 1;
    loop {
        // A tiny budget each time: every call gets somewhere, and none starts over.
        let p = copy_tree(&d.plan, Instant::now() + Duration::from_micros(300)).unwrap();
        calls += 1;
        if p.complete {
            break;
        }
        assert!(calls < 10_000, "the copy never completes");
    }
    assert_same_tree(&vol, &d.base.join("snap"));
}

/// The work directory as a call of this boot left it: what a resumed copy trusts.
fn same_boot(d: &Dirs) {
    let boot = fs::read("/proc/sys/kernel/random/boot_id").unwrap();
    fs::write(d.base.join("work/boot"), boot).unwrap();
}

/// A partial copy of `rel`'s source, as a call cut short after `data` left it.
fn partial(d: &Dirs, rel: &str, data: &[u8]) -> PathBuf {
    let fd = nix::fcntl::open(
        &d.base.join("work"),
        super::super::walk::dir_flags(),
        Mode::empty(),
    )
    .unwrap();
    let (mut work, _) = Work::open(fd, d.base.join("work")).unwrap();
    let st = nix::sys::stat::stat(&d.base.join("vol").join(rel)).unwrap();
    let (name, file) = work.file(Path::new(rel), &st).unwrap();
    nix::unistd::write(&file, data).unwrap();
    d.base.join("work").join(name.to_str().unwrap())
}

#[test]
fn a_partial_file_copy_is_continued_while_its_source_is_unchanged() {
    let d = dirs();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(d.base.join("vol/big"), &data).unwrap();
    // Marked, to see that the first 2 MiB are kept rather than copied again.
    let mut start = data[..2 << 20].to_vec();
    start[..4].copy_from_slice(b"KEPT");
    partial(&d, "big", &start);
    run(&d.plan);
    let copied = fs::read(d.base.join("snap/big")).unwrap();
    assert_eq!(&copied[..4], b"KEPT");
    assert_eq!(copied[4..], data[4..]);
}

#[test]
fn a_partial_copy_of_a_source_that_changed_is_replaced_not_kept_beside() {
    let d = dirs();
    fs::write(d.base.join("vol/f"), b"first").unwrap();
    let stale = partial(&d, "f", b"fir");
    std::thread::sleep(Duration::from_millis(10));
    fs::write(d.base.join("vol/f"), b"second version").unwrap();
    let p = copy_tree(&d.plan, far()).unwrap();
    assert!(p.complete);
    assert!(!stale.exists());
    assert_eq!(fs::read(d.base.join("snap/f")).unwrap(), b"second version");
}

#[test]
fn entries_already_in_place_are_kept_within_one_boot() {
    let d = dirs();
    fs::write(d.base.join("vol/f"), b"source").unwrap();
    fs::write(d.base.join("snap/f"), b"copied before").unwrap();
    same_boot(&d);
    run(&d.plan);
    assert_eq!(fs::read(d.base.join("snap/f")).unwrap(), b"copied before");
}

#[test]
fn after_a_restart_of_the_machine_the_copy_starts_again() {
    let d = dirs();
    fs::write(d.base.join("vol/f"), b"source").unwrap();
    // What a power cut can leave: a name renamed into place whose data never reached disk.
    fs::write(d.base.join("snap/f"), b"").unwrap();
    fs::create_dir(d.base.join("snap/gone")).unwrap();
    fs::write(d.base.join("work/boot"), b"another boot").unwrap();
    run(&d.plan);
    assert_eq!(fs::read(d.base.join("snap/f")).unwrap(), b"source");
    assert!(!d.base.join("snap/gone").exists());
}

#[test]
fn a_file_after_a_hole_is_never_skipped_by_a_short_budget() {
    let d = dirs();
    let f = fs::File::create(d.base.join("vol/late")).unwrap();
    f.write_all_at(b"data", 4 << 20).unwrap();
    drop(f);
    let mut calls = 0;
    while !copy_tree(&d.plan, Instant::now()).unwrap().complete {
        calls += 1;
        assert!(calls < 100);
    }
    let copied = fs::read(d.base.join("snap/late")).unwrap();
    assert_eq!(copied.len(), (4 << 20) + 4);
    assert_eq!(&copied[4 << 20..], b"data");
}

#[test]
fn an_entry_whose_kind_changed_between_calls_is_replaced() {
    let d = dirs();
    fs::write(d.base.join("vol/was-dir"), b"now a file").unwrap();
    fs::create_dir(d.base.join("vol/was-file")).unwrap();
    fs::write(d.base.join("vol/was-file/inner"), b"inner").unwrap();
    fs::create_dir_all(d.base.join("snap/was-dir/sub")).unwrap();
    fs::write(d.base.join("snap/was-dir/sub/old"), b"old").unwrap();
    fs::write(d.base.join("snap/was-file"), b"old file").unwrap();
    same_boot(&d);
    run(&d.plan);
    assert_same_tree(&d.base.join("vol"), &d.base.join("snap"));
}

#[test]
fn a_tree_deeper_than_the_limit_is_refused() {
    let d = dirs();
    let mut p = d.base.join("vol");
    for _ in 0..MAX_DEPTH + 1 {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    let e = copy_tree(&d.plan, far()).unwrap_err();
    assert!(matches!(e, SafeFsError::TooDeep { .. }), "{e:?}");
}

#[test]
fn a_missing_source_is_not_found() {
    let d = dirs();
    fs::remove_dir(d.base.join("vol")).unwrap();
    assert!(copy_tree(&d.plan, far()).unwrap_err().is_not_found());
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) {
    let (p, n) = (cstr(p), std::ffi::CString::new(name).unwrap());
    // SAFETY: NUL-terminated strings and a readable value.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", Errno::last());
}

fn xattr_get(p: &Path, name: &str) -> Vec<u8> {
    let (p, n) = (cstr(p), std::ffi::CString::new(name).unwrap());
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a writable buffer of its length.
    let n = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "getxattr: {}", Errno::last());
    buf.truncate(n as usize);
    buf
}

fn cstr(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}
