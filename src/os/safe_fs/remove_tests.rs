//! Tests for `remove_tree`: symlinks inside and above the tree, mounts
//! (tmpfs, same-filesystem binds, file binds) inside and at the tree, and trees deeper than
//! `MAX_FRAMES`, wider than `READ_BATCH`, and of any depth.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::mkdirat;
use nix::sys::stat::Mode;

use super::super::test_support::{bind_mount, is_root, mount_tmpfs, rel, tmp, write};
use super::super::walk::dir_flags;
use super::*;

/// Builds a `depth`-level chain of directories "d/d/d/..." below `dir` via descriptors,
/// since the full path may exceed PATH_MAX; puts a file in the deepest one.
fn deep_chain(dir: &Path, depth: usize) {
    let mut cur = nix::fcntl::open(dir, dir_flags(), Mode::empty()).expect("open");
    for _ in 0..depth {
        mkdirat(cur.as_fd(), "d", Mode::from_bits_truncate(0o755)).expect("mkdir");
        cur = openat(cur.as_fd(), "d", dir_flags(), Mode::empty()).expect("open");
    }
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC;
    openat(cur.as_fd(), "f", flags, Mode::from_bits_truncate(0o644)).expect("create");
}

#[test]
fn remove_tree_removes_files_dirs_symlinks_and_readonly_dirs() {
    let base = tmp();
    let b = base.path();
    let v = b.join("ns/vol");
    fs::create_dir_all(v.join("a/b/c")).expect("mkdir");
    write(&v.join("top"));
    write(&v.join("a/b/c/deep"));
    symlink("/nonexistent", v.join("a/dangling")).expect("symlink");
    symlink(v.join("a/b"), v.join("loop")).expect("symlink");
    nix::unistd::mkfifo(&v.join("fifo"), Mode::from_bits_truncate(0o600)).expect("fifo");
    fs::create_dir(v.join("ro")).expect("mkdir");
    write(&v.join("ro/locked"));
    // Only root (CAP_DAC_OVERRIDE) may empty a 0o500 directory, as the driver does locally.
    if nix::unistd::geteuid().is_root() {
        fs::set_permissions(v.join("ro"), fs::Permissions::from_mode(0o500)).expect("chmod");
    }
    fs::create_dir(v.join(OsStr::from_bytes(b"bad\xffname"))).expect("non-utf8 dir");

    assert_eq!(remove_tree(b, &rel("ns/vol")), Ok(RemoveOutcome::Removed));
    assert!(!v.exists());
    assert!(b.join("ns").is_dir(), "parent must survive");
    assert_eq!(
        remove_tree(b, &rel("ns/vol")),
        Ok(RemoveOutcome::AlreadyGone)
    );
    assert_eq!(
        remove_tree(b, &rel("gone/x/y")),
        Ok(RemoveOutcome::AlreadyGone)
    );
    write(&b.join("ns/file"));
    let err = remove_tree(b, &rel("ns/file")).expect_err("file leaf");
    assert!(matches!(err, SafeFsError::NotADirectory { .. }), "{err}");
    assert!(b.join("ns/file").is_file());
}

#[test]
fn remove_tree_unlinks_symlink_to_outside_without_touching_target() {
    let base = tmp();
    let outside = tmp();
    write(&outside.path().join("precious"));
    let v = base.path().join("vol");
    fs::create_dir_all(v.join("sub")).expect("mkdir");
    symlink(outside.path(), v.join("escape")).expect("symlink");
    symlink(outside.path(), v.join("sub/escape")).expect("symlink");
    symlink(outside.path().join("precious"), v.join("file-link")).expect("symlink");

    assert_eq!(
        remove_tree(base.path(), &rel("vol")),
        Ok(RemoveOutcome::Removed)
    );
    assert!(outside.path().join("precious").is_file());
    assert_eq!(
        fs::read(outside.path().join("precious")).expect("read"),
        b"data"
    );
}

#[test]
fn remove_tree_refuses_symlink_as_rel_or_component() {
    let base = tmp();
    let outside = tmp();
    write(&outside.path().join("precious"));
    fs::create_dir(outside.path().join("vol")).expect("mkdir");
    symlink(outside.path(), base.path().join("vol")).expect("symlink");
    symlink(outside.path(), base.path().join("ns")).expect("symlink");

    let err = remove_tree(base.path(), &rel("vol")).expect_err("symlink leaf");
    assert!(matches!(err, SafeFsError::SymlinkInPath { .. }), "{err}");
    let err = remove_tree(base.path(), &rel("ns/vol")).expect_err("symlink parent");
    assert_eq!(
        err,
        SafeFsError::SymlinkInPath {
            path: base.path().join("ns")
        }
    );
    assert!(
        fs::symlink_metadata(base.path().join("vol")).is_ok(),
        "link kept"
    );
    assert!(outside.path().join("precious").is_file());
    assert!(outside.path().join("vol").is_dir());
}

#[test]
fn remove_tree_refuses_tmpfs_inside_tree() {
    if !is_root() {
        return;
    }
    let base = tmp();
    let v = base.path().join("vol");
    fs::create_dir_all(v.join("sub/mnt")).expect("mkdir");
    write(&v.join("sub/before"));
    let _guard = mount_tmpfs(&v.join("sub/mnt"));
    write(&v.join("sub/mnt/on-tmpfs"));

    let err = remove_tree(base.path(), &rel("vol")).expect_err("crosses");
    assert_eq!(
        err,
        SafeFsError::CrossesMount {
            path: v.join("sub/mnt")
        }
    );
    assert!(v.join("sub/mnt/on-tmpfs").is_file());
}

#[test]
fn remove_tree_refuses_same_filesystem_bind_mount_inside_tree() {
    if !is_root() {
        return;
    }
    let base = tmp();
    let outside = base.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    write(&outside.join("precious"));
    let v = base.path().join("vol");
    fs::create_dir_all(v.join("bound")).expect("mkdir");
    let _guard = bind_mount(&outside, &v.join("bound"));
    let dev = |p: &Path| fs::metadata(p).expect("stat").dev();
    assert_eq!(
        dev(&v),
        dev(&v.join("bound")),
        "test needs a same-st_dev bind mount"
    );

    let err = remove_tree(base.path(), &rel("vol")).expect_err("crosses");
    assert_eq!(
        err,
        SafeFsError::CrossesMount {
            path: v.join("bound")
        }
    );
    assert!(outside.join("precious").is_file());
}

#[test]
fn remove_tree_refuses_file_bind_mount_inside_tree() {
    if !is_root() {
        return;
    }
    let base = tmp();
    let outside = base.path().join("precious");
    write(&outside);
    let v = base.path().join("vol");
    fs::create_dir(&v).expect("mkdir");
    write(&v.join("over"));
    let _guard = bind_mount(&outside, &v.join("over"));

    let err = remove_tree(base.path(), &rel("vol")).expect_err("crosses");
    assert!(matches!(err, SafeFsError::CrossesMount { .. }), "{err}");
    assert!(outside.is_file());
}

#[test]
fn remove_tree_refuses_rel_that_is_a_mount_point() {
    if !is_root() {
        return;
    }
    let base = tmp();
    let v = base.path().join("vol");
    fs::create_dir(&v).expect("mkdir");
    {
        let _guard = mount_tmpfs(&v);
        write(&v.join("on-tmpfs"));
        let err = remove_tree(base.path(), &rel("vol")).expect_err("tmpfs at rel");
        assert_eq!(err, SafeFsError::CrossesMount { path: v.clone() });
        assert!(v.join("on-tmpfs").is_file());
    }
    let outside = base.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    write(&outside.join("precious"));
    let _guard = bind_mount(&outside, &v);
    let err = remove_tree(base.path(), &rel("vol")).expect_err("bind mount at rel");
    assert_eq!(err, SafeFsError::CrossesMount { path: v.clone() });
    assert!(outside.join("precious").is_file());
}

#[test]
fn remove_tree_handles_deep_tree_beyond_max_frames() {
    let base = tmp();
    fs::create_dir(base.path().join("vol")).expect("mkdir");
    deep_chain(&base.path().join("vol"), 300);
    assert_eq!(
        remove_tree(base.path(), &rel("vol")),
        Ok(RemoveOutcome::Removed)
    );
    assert!(!base.path().join("vol").exists());
}

#[test]
fn remove_tree_handles_wide_directories() {
    let base = tmp();
    let v = base.path().join("vol");
    fs::create_dir(&v).expect("mkdir");
    for i in 0..(READ_BATCH * 3 + 7) {
        write(&v.join(format!("f{i}")));
        if i % 40 == 0 {
            fs::create_dir(v.join(format!("d{i}"))).expect("mkdir");
            write(&v.join(format!("d{i}/x")));
        }
    }
    assert_eq!(
        remove_tree(base.path(), &rel("vol")),
        Ok(RemoveOutcome::Removed)
    );
    assert!(!v.exists());
}

/// A pod can build a chain of any depth (mkdir and cd, relative paths never hit PATH_MAX).
/// The old code gave up past 4096 levels, and the PV stayed Released for ever.
#[test]
fn remove_tree_removes_a_chain_of_any_depth() {
    let base = tmp();
    let v = base.path().join("vol");
    fs::create_dir(&v).expect("mkdir");
    deep_chain(&v, 20_000);
    assert_eq!(
        remove_tree(base.path(), &rel("vol")),
        Ok(RemoveOutcome::Removed)
    );
    assert_eq!(fs::read_dir(base.path()).expect("ls").count(), 0);
}

/// A pod cannot make the moving up fail by choosing names: here the tree is full of entries
/// named as the moved-up directories once were (`.pvdir-deep-<pid>-<n>`, filled in advance,
/// which made every retry fail alike), each holding a chain deeper than the frames held open.
#[test]
fn remove_tree_moves_deep_directories_whatever_names_the_tree_holds() {
    let base = tmp();
    let v = base.path().join("vol");
    fs::create_dir(&v).expect("mkdir");
    let pid = std::process::id();
    for n in 1..=70 {
        let taken = v.join(format!(".pvdir-deep-{pid:x}-{n}"));
        fs::create_dir(&taken).expect("mkdir");
        deep_chain(&taken, MAX_FRAMES + 5);
    }
    assert_eq!(
        remove_tree(base.path(), &rel("vol")),
        Ok(RemoveOutcome::Removed)
    );
    assert!(!v.exists());
}
