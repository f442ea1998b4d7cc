//! What a copy keeps (modes, owners, times, links, FIFOs, xattrs, holes) and what it refuses
//! or leaves out (other mounts, symlinked sources, device nodes, trees too deep).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag};

use super::super::super::test_support::{bind_mount, is_root, mount_tmpfs};
use super::super::{copy_tree, SafeFsError, MAX_DEPTH};
use super::{assert_same_tree, dirs, far, run};

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

#[test]
fn a_bind_mounted_file_among_many_stops_the_copy_and_is_not_copied() {
    if !is_root() {
        return;
    }
    let d = dirs();
    let vol = d.base.join("vol");
    for i in 0..100 {
        fs::write(vol.join(format!("f{i:03}")), b"x").unwrap();
    }
    fs::write(d.base.join("secret"), b"another mount's file").unwrap();
    fs::write(vol.join("f050"), b"").unwrap();
    let _m = bind_mount(&d.base.join("secret"), &vol.join("f050"));
    let e = copy_tree(&d.plan, far()).unwrap_err();
    assert!(matches!(e, SafeFsError::CrossesMount { .. }), "{e:?}");
    let copied = fs::read(d.base.join("snap/f050")).unwrap_or_default();
    assert!(copied.is_empty(), "{copied:?}");
}
